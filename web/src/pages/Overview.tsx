/** Overview: steps per second and instances finished over the last hour, instances by status, executor health. */
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
import { useEffect, useRef, useState } from 'preact/hooks';
import { ApiError, get, subscribe } from '../api';
import { Link } from '../router';

interface Overview {
  now: number;
  steps: Array<{ t: number; done: number; failed: number }>;
  finished: Array<{ t: number; status: string; n: number }>;
  counts: Record<string, number>;
  metrics: Record<string, string> | null;
  process: {
    executor: { listening: boolean; activeInstances: number } | null;
    consoleListening: boolean;
    consoleSessions: number;
    liveStreams: number;
    counters: Record<string, number>;
    uptimeSeconds: number;
  };
}

const STATUSES = ['pending', 'running', 'completed', 'failed', 'cancelled'];

function css(name: string): string {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || '#888';
}

/** 61 minute slots ending at `now`. */
function minutes(now: number): number[] {
  return Array.from({ length: 61 }, (_, i) => now - (60 - i) * 60);
}

function Chart(props: {
  title: string;
  x: number[];
  series: Array<{ label: string; values: number[]; color: string }>;
  unit: string;
}): preact.JSX.Element {
  const ref = useRef<HTMLDivElement>(null);
  useEffect(() => {
    const el = ref.current;
    if (!el) return;
    const width = Math.max(280, el.clientWidth - 8);
    const plot = new uPlot(
      {
        width,
        height: 220,
        legend: { show: true },
        cursor: { drag: { x: false, y: false } },
        scales: {
          x: { time: true },
          y: { range: (_u, _min, max) => [0, Math.max(1, max * 1.15)] },
        },
        axes: [
          {
            stroke: css('--muted'),
            grid: { stroke: css('--grid') },
            ticks: { stroke: css('--grid') },
          },
          {
            stroke: css('--muted'),
            grid: { stroke: css('--grid') },
            ticks: { stroke: css('--grid') },
            label: props.unit,
          },
        ],
        series: [
          {},
          ...props.series.map((s) => ({
            label: s.label,
            stroke: s.color,
            width: 2,
            fill: s.color + '22',
            points: { show: false },
          })),
        ],
      },
      [props.x, ...props.series.map((s) => s.values)],
      el,
    );
    return () => plot.destroy();
  }, [JSON.stringify(props)]);
  const total = props.series.map(
    (s) =>
      `${s.label} ${s.values.reduce((a, b) => a + b, 0).toFixed(props.unit.includes('/s') ? 2 : 0)}`,
  );
  return (
    <figure class="chart">
      <figcaption>{props.title}</figcaption>
      <div
        ref={ref}
        role="img"
        aria-label={`${props.title}: chart of the last hour (${total.join(', ')})`}
      />
    </figure>
  );
}

export function OverviewPage(): preact.JSX.Element {
  const [d, setD] = useState<Overview | undefined>(undefined);
  const [error, setError] = useState('');
  useEffect(() => {
    const load = (): void => {
      get<Overview>('/api/overview').then(
        (x) => {
          setD(x);
          setError('');
        },
        (err: unknown) => setError(err instanceof ApiError ? err.message : String(err)),
      );
    };
    load();
    let timer: number | undefined;
    const off = subscribe(() => {
      timer ??= window.setTimeout(() => {
        timer = undefined;
        load();
      }, 2000);
    });
    const every = window.setInterval(load, 30_000);
    return () => {
      off();
      clearInterval(every);
      if (timer !== undefined) clearTimeout(timer);
    };
  }, []);
  if (!d)
    return error ? (
      <p role="alert" class="error">
        {error}
      </p>
    ) : (
      <p class="loading">Loading…</p>
    );
  const x = minutes(d.now);
  const at = <R extends { t: number }>(rows: readonly R[], f: (r: R) => number): number[] =>
    x.map((t) => rows.filter((r) => r.t === t).reduce((a, r) => a + f(r), 0));
  const stepsDone = at(d.steps, (r) => r.done / 60);
  const stepsFailed = at(d.steps, (r) => r.failed / 60);
  const fin = (s: string): number[] =>
    at(
      d.finished.filter((r) => r.status === s),
      (r) => r.n,
    );
  const c = d.process.counters;
  const counter = (prefix: string): Array<[string, number]> =>
    Object.entries(c).filter(([k]) => k.startsWith(prefix));
  return (
    <section aria-labelledby="ov-title">
      <h1 id="ov-title">Overview</h1>
      <div class="cards">
        {STATUSES.map((s) => (
          <Link key={s} href={`/instances?status=${s}`} class={`stat st-${s}`}>
            <span class="n">{d.counts[s] ?? 0}</span>
            <span>{s}</span>
          </Link>
        ))}
      </div>
      <div class="charts">
        <div class="card">
          <Chart
            title="Steps finished per second (per-minute average), last hour"
            unit="steps/s"
            x={x}
            series={[
              { label: 'done', values: stepsDone, color: css('--ok') },
              { label: 'failed', values: stepsFailed, color: css('--bad') },
            ]}
          />
        </div>
        <div class="card">
          <Chart
            title="Instances finished per minute, last hour"
            unit="instances/min"
            x={x}
            series={[
              { label: 'completed', values: fin('completed'), color: css('--ok') },
              { label: 'failed', values: fin('failed'), color: css('--bad') },
              { label: 'cancelled', values: fin('cancelled'), color: css('--warn') },
            ]}
          />
        </div>
      </div>
      <div class="split">
        <section class="card" aria-labelledby="health-title">
          <h2 id="health-title">Executor health (this dfgate)</h2>
          <dl class="facts">
            <dt>Executor</dt>
            <dd>
              {d.process.executor
                ? d.process.executor.listening
                  ? `up, driving ${d.process.executor.activeInstances} instance(s)`
                  : 'LISTEN connection down'
                : 'not running in this process (--no-executor or a separate worker)'}
            </dd>
            <dt>Live updates</dt>
            <dd>
              {d.process.consoleListening ? 'listening' : 'LISTEN connection down'},{' '}
              {d.process.liveStreams} browser stream(s), {d.process.consoleSessions} session(s)
            </dd>
            <dt>Uptime</dt>
            <dd>{Math.round(d.process.uptimeSeconds / 60)} min</dd>
            {[
              ...counter('dfgate_executor_steps_total'),
              ...counter('dfgate_executor_instances_finished_total'),
              ...counter('dfgate_retention_deleted_instances_total'),
            ].map(([k, v]) => (
              <>
                <dt class="mono small">{k}</dt>
                <dd>{v}</dd>
              </>
            ))}
          </dl>
        </section>
        <section class="card" aria-labelledby="metrics-title">
          <h2 id="metrics-title">df.metrics() — all roles</h2>
          {d.metrics ? (
            <dl class="facts">
              {Object.entries(d.metrics).map(([k, v]) => (
                <>
                  <dt class="mono small">{k}</dt>
                  <dd>{v}</dd>
                </>
              ))}
            </dl>
          ) : (
            <p class="muted">
              Your role may not run <code>df.metrics()</code> (it reads every role's rows). An
              administrator can allow it: <code>GRANT EXECUTE ON FUNCTION df.metrics() TO …</code>
            </p>
          )}
        </section>
      </div>
    </section>
  );
}
