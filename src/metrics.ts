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
