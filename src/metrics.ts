/**
 * Process-wide counters for the admin port's /metrics (Prometheus text
 * exposition format 0.0.4). Gauges are read at scrape time from their owners;
 * counters only ever grow. Label values are bounded sets (outcomes, SQLSTATEs).
 */

type Labels = Readonly<Record<string, string>>;

function labelText(labels: Labels): string {
  const parts = Object.entries(labels).map(
    ([k, v]) => `${k}="${v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"')}"`,
  );
  return parts.length ? `{${parts.join(',')}}` : '';
}

export class Counter {
  private readonly values = new Map<string, number>();

  constructor(
    readonly name: string,
    readonly help: string,
  ) {
    registry.push(this);
  }

  inc(labels: Labels = {}, n = 1): void {
    const key = labelText(labels);
    this.values.set(key, (this.values.get(key) ?? 0) + n);
  }

  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} counter`];
    if (this.values.size === 0) lines.push(`${this.name} 0`);
    for (const [k, v] of this.values) lines.push(`${this.name}${k} ${v}`);
    return lines.join('\n');
  }
}

const registry: Counter[] = [];

export const metrics = {
  clientConnections: new Counter(
    'dfgate_client_connections_total',
    'Client connections accepted by the proxy.',
  ),
  clientsRefused: new Counter(
    'dfgate_client_connections_refused_total',
    'Client connections refused by dfgate itself, by reason.',
  ),
  edgeRewrites: new Counter(
    'dfgate_edge_rewrites_total',
    'Statements whose df.start calls dfgate compiled into df._start_graph.',
  ),
  edgeBatches: new Counter(
    'dfgate_edge_batches_total',
    'Messages of many df.start statements sent as one df._start_batch call, by outcome (started, replayed, error).',
  ),
  edgeRefusals: new Counter(
    'dfgate_edge_refusals_total',
    'Statements and Binds dfgate refused before they ran, by SQLSTATE.',
  ),
  newModeStarts: new Counter(
    'dfgate_new_mode_starts_total',
    "Instances started with transaction_mode => 'new' on dfgate's own connection.",
  ),
  steps: new Counter(
    'dfgate_executor_steps_total',
    'SQL step attempts finished by the executor, by outcome (done, failed, retried, abandoned).',
  ),
  reconciled: new Counter(
    'dfgate_retention_deleted_instances_total',
    'Finished instances deleted by retention (df.config retention_days, retention_max_instances).',
  ),
  instancesFinished: new Counter(
    'dfgate_executor_instances_finished_total',
    'Instances the executor finished, by status.',
  ),
};

export interface Gauge {
  readonly name: string;
  readonly help: string;
  readonly value: number;
  readonly labels?: Labels;
}

/** The whole exposition: the counters, then gauges computed by the caller. */
export function renderMetrics(gauges: readonly Gauge[]): string {
  const out = registry.map((c) => c.render());
  const seen = new Set<string>();
  for (const g of gauges) {
    if (!seen.has(g.name)) {
      out.push(`# HELP ${g.name} ${g.help}\n# TYPE ${g.name} gauge`);
      seen.add(g.name);
    }
    out.push(`${g.name}${labelText(g.labels ?? {})} ${g.value}`);
  }
  return out.join('\n') + '\n';
}

/** Upper bounds (seconds) of the event-loop delay histogram's buckets. */
const DELAY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5] as const;
/** How often the event loop is sampled, and how many samples the p99/max gauges look at. */
const DELAY_TICK_MS = 10;
const DELAY_WINDOW = 6000;

/**
 * The proxy's event-loop delay: a timer due every 10 ms notes how late it
 * runs, which is how long any client's message would have waited for the
 * loop at that moment (compiling, copying, logging on the main thread).
 * A late tick also stands for the ticks it displaced, so that the samples
 * measure time. Exposed as a cumulative histogram (diffable between
 * scrapes) and as p99 and max gauges over the last 6,000 samples (a minute).
 */
export class LoopDelay {
  private readonly counts = new Array<number>(DELAY_BUCKETS.length + 1).fill(0);
  private sum = 0;
  private readonly ring = new Float64Array(DELAY_WINDOW);
  private filled = 0;
  private next = 0;
  private timer: NodeJS.Timeout | undefined;
  private last = 0;
  /** Admin servers using it (tests run several in one process). */
  private users = 0;

  start(): void {
    if (this.users++ > 0) return;
    this.last = performance.now();
    this.timer = setInterval(() => {
      const now = performance.now();
      // a loop held for 50 ms also missed the ticks due at 10, 20, 30 and 40 ms: they are
      // recorded too (as HdrHistogram corrects for coordinated omission), so that the
      // samples stand for time, not for the ticks that happened to run
      for (let late = now - this.last - DELAY_TICK_MS; ; late -= DELAY_TICK_MS) {
        this.record(Math.max(0, late) / 1000);
        if (late < DELAY_TICK_MS) break;
      }
      this.last = now;
    }, DELAY_TICK_MS);
    this.timer.unref();
  }

  stop(): void {
    if (--this.users > 0) return;
    clearInterval(this.timer);
    this.timer = undefined;
  }

  private record(s: number): void {
    let b = 0;
    while (b < DELAY_BUCKETS.length && s > (DELAY_BUCKETS[b] as number)) b++;
    this.counts[b] = (this.counts[b] as number) + 1;
    this.sum += s;
    this.ring[this.next] = s;
    this.next = (this.next + 1) % DELAY_WINDOW;
    this.filled = Math.min(DELAY_WINDOW, this.filled + 1);
  }

  /** The histogram (Prometheus text) and the window's gauges; nothing before start(). */
  render(): string {
    if (!this.timer) return '';
    const h = 'dfgate_event_loop_delay_histogram_seconds';
    const lines = [
      `# HELP ${h} How late a timer due every ${DELAY_TICK_MS} ms ran on the proxy's event loop.`,
      `# TYPE ${h} histogram`,
    ];
    let cum = 0;
    DELAY_BUCKETS.forEach((le, i) => {
      cum += this.counts[i] as number;
      lines.push(`${h}_bucket{le="${le}"} ${cum}`);
    });
    cum += this.counts[DELAY_BUCKETS.length] as number;
    lines.push(`${h}_bucket{le="+Inf"} ${cum}`, `${h}_sum ${this.sum}`, `${h}_count ${cum}`);
    const w = Array.from(this.ring.subarray(0, this.filled)).sort((a, b) => a - b);
    const at = (q: number): number => w[Math.min(w.length - 1, Math.floor(q * w.length))] ?? 0;
    const g = 'dfgate_event_loop_delay_seconds';
    lines.push(
      `# HELP ${g} Event-loop delay over the last ${DELAY_WINDOW} samples (${(DELAY_WINDOW * DELAY_TICK_MS) / 1000} s at most): quantile 0.99 and 1 (the maximum).`,
      `# TYPE ${g} gauge`,
      `${g}{quantile="0.99"} ${at(0.99)}`,
      `${g}{quantile="1"} ${w.length ? (w[w.length - 1] as number) : 0}`,
    );
    return lines.join('\n') + '\n';
  }
}

export const loopDelay = new LoopDelay();
