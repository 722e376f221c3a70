/** One instance: the live graph, node details, df.explain, signals, and the signal / cancel actions. */
import { useEffect, useRef, useState } from 'preact/hooks';
import { ApiError, get, post, subscribe, type InstanceDetail, type NodeView } from '../api';
import { GraphView } from '../GraphView';
import { describe, shownStatus } from '../graph';
import { Link } from '../router';
import { pretty, StatusBadge, when } from '../ui';

const FINISHED = ['completed', 'failed', 'cancelled'];

function NodePanel({ n }: { n: NodeView }): preact.JSX.Element {
  const d = describe(n);
  return (
    <section class="card node-panel" aria-labelledby="node-title" data-testid="node-panel">
      <h2 id="node-title">
        {d.title} <span class="mono muted">{n.id}</span> <StatusBadge status={shownStatus(n)} />
      </h2>
      <dl class="facts">
        <dt>Type</dt>
        <dd>{n.type}</dd>
        <dt>Attempts</dt>
        <dd>{n.attempts}</dd>
        <dt>Last change</dt>
        <dd>{when(n.updatedAt)}</dd>
        <dt>Finished</dt>
        <dd>{when(n.finishedAt)}</dd>
        {n.iteration !== null ? (
          <>
            <dt>Loop iterations done</dt>
            <dd>{n.iteration}</dd>
          </>
        ) : null}
      </dl>
      {n.query !== null && !['THEN', 'JOIN', 'RACE'].includes(n.type) ? (
        <>
          <h3>{n.type === 'SQL' ? 'Query' : 'Configuration'}</h3>
          <pre class="code" data-testid="node-query">
            {n.type === 'SQL' ? n.query : pretty(n.query)}
          </pre>
        </>
      ) : null}
      {n.substituted !== null ? (
        <>
          <h3>Query after substitution</h3>
          <pre class="code">{n.substituted}</pre>
        </>
      ) : null}
      {n.result !== null ? (
        <>
          <h3>Result</h3>
          <pre class="code" data-testid="node-result">
            {pretty(n.result)}
          </pre>
        </>
      ) : null}
      {n.error !== null ? (
        <>
          <h3>Error</h3>
          <pre class="code error-text">{n.error}</pre>
        </>
      ) : null}
    </section>
  );
}

function SignalForm({
  id,
  onDone,
}: {
  id: string;
  onDone: (m: string) => void;
}): preact.JSX.Element {
  const [name, setName] = useState('');
  const [payload, setPayload] = useState('{}');
  const [error, setError] = useState('');
  let payloadError = '';
  try {
    JSON.parse(payload);
  } catch (err) {
    payloadError = `not JSON: ${(err as Error).message}`;
  }
  const send = async (e: Event): Promise<void> => {
    e.preventDefault();
    if (payloadError || !name.trim()) return;
    try {
      const r = await post<{ message: string }>(`/api/instances/${id}/signal`, { name, payload });
      setError('');
      onDone(r.message || `signal ${name} sent`);
    } catch (err) {
      setError(err instanceof ApiError ? err.message : String(err));
    }
  };
  return (
    <form class="card action-form" onSubmit={(e) => void send(e)} aria-labelledby="signal-title">
      <h2 id="signal-title">Send a signal</h2>
      <label for="signal-name">Name</label>
      <input
        id="signal-name"
        required
        value={name}
        onInput={(e) => setName((e.target as HTMLInputElement).value)}
      />
      <label for="signal-payload">Payload (JSON)</label>
      <textarea
        id="signal-payload"
        rows={4}
        class="mono"
        value={payload}
        aria-invalid={payloadError !== ''}
        aria-describedby="signal-payload-error"
        onInput={(e) => setPayload((e.target as HTMLTextAreaElement).value)}
      />
      <div id="signal-payload-error" class="error" role="status">
        {payloadError}
      </div>
      <div role="alert" class="error">
        {error}
      </div>
      <button type="submit" disabled={payloadError !== '' || name.trim() === ''}>
        Send signal
      </button>
    </form>
  );
}

export function InstancePage({ id }: { id: string }): preact.JSX.Element {
  const [d, setD] = useState<InstanceDetail | undefined>(undefined);
  const [missing, setMissing] = useState(false);
  const [error, setError] = useState('');
  const [selected, setSelected] = useState<string | undefined>(undefined);
  const [panel, setPanel] = useState<'none' | 'signal' | 'cancel'>('none');
  const [notice, setNotice] = useState('');
  const seq = useRef(0);

  const load = (): void => {
    const mine = ++seq.current;
    get<InstanceDetail>(`/api/instances/${encodeURIComponent(id)}`).then(
      (x) => {
        if (mine !== seq.current) return;
        setD(x);
        setError('');
      },
      (err: unknown) => {
        if (mine !== seq.current) return;
        if (err instanceof ApiError && err.status === 404) setMissing(true);
        else setError(err instanceof ApiError ? err.message : String(err));
      },
    );
  };
  useEffect(() => {
    setD(undefined);
    setMissing(false);
    setSelected(undefined);
    load();
    let timer: number | undefined;
    const off = subscribe((ids) => {
      if (ids !== null && !ids.includes(id)) return;
      timer ??= window.setTimeout(() => {
        timer = undefined;
        load();
      }, 100);
    });
    return () => {
      off();
      if (timer !== undefined) clearTimeout(timer);
    };
  }, [id]);

  if (missing)
    return (
      <section class="card narrow" aria-labelledby="nf">
        <h1 id="nf">Instance not found</h1>
        <p>
          There is no instance <span class="mono">{id}</span> that your role may see.
        </p>
        <p>
          <Link href="/instances">Back to the instances</Link>
        </p>
      </section>
    );
  if (!d)
    return error ? (
      <p role="alert" class="error">
        {error}
      </p>
    ) : (
      <p class="loading">Loading…</p>
    );

  const inst = d.instance;
  const finished = FINISHED.includes(inst.status);
  const node = d.nodes.find((n) => n.id === selected);
  const cancel = async (): Promise<void> => {
    try {
      const r = await post<{ message: string }>(`/api/instances/${id}/cancel`, {});
      setNotice(r.message);
      setPanel('none');
      load();
    } catch (err) {
      setNotice(err instanceof ApiError ? err.message : String(err));
    }
  };
  return (
    <section aria-labelledby="inst-title">
      <div class="page-head">
        <h1 id="inst-title">
          Instance <span class="mono">{inst.id}</span> <StatusBadge status={inst.status} />
        </h1>
        <div class="actions">
          <button
            type="button"
            disabled={finished}
            aria-expanded={panel === 'signal'}
            onClick={() => setPanel(panel === 'signal' ? 'none' : 'signal')}
          >
            Signal…
          </button>
          <button
            type="button"
            class="danger"
            disabled={finished}
            aria-expanded={panel === 'cancel'}
            onClick={() => setPanel(panel === 'cancel' ? 'none' : 'cancel')}
          >
            Cancel…
          </button>
        </div>
      </div>
      <p class="sub">
        <span class="label-cell" data-testid="instance-label">
          {inst.label ?? 'no label'}
        </span>{' '}
        · started {when(inst.created_at)} · last change {when(inst.updated_at)}
      </p>
      <div role="status" class="notice">
        {notice}
      </div>
      {panel === 'signal' && !finished ? (
        <SignalForm
          id={id}
          onDone={(m) => {
            setNotice(m);
            setPanel('none');
          }}
        />
      ) : null}
      {panel === 'cancel' && !finished ? (
        <div class="card confirm" role="alertdialog" aria-labelledby="cancel-q">
          <p id="cancel-q">
            Cancel instance <span class="mono">{inst.id}</span>? Running steps are stopped and it
            never runs again.
          </p>
          <button type="button" class="danger" onClick={() => void cancel()}>
            Yes, cancel it
          </button>{' '}
          <button type="button" class="secondary" onClick={() => setPanel('none')}>
            Keep it running
          </button>
        </div>
      ) : null}
      {inst.error ? (
        <pre class="code error-text" data-testid="instance-error">
          {inst.error}
        </pre>
      ) : null}
      <div class="split">
        <div class="card graph-card">
          <h2>Graph</h2>
          <p class="muted hint">
            Select a step for its query, timings, attempts, result and error.
          </p>
          <GraphView
            nodes={d.nodes}
            root={inst.root_node}
            selected={selected}
            onSelect={(n) => setSelected(n.id)}
            label={`Workflow graph of instance ${inst.id}`}
          />
        </div>
        <div class="side">
          {node ? <NodePanel n={node} /> : null}
          <section class="card" aria-labelledby="sig-title">
            <h2 id="sig-title">Signals</h2>
            <p>
              Waiting for:{' '}
              {inst.waiting_signals?.length ? (
                inst.waiting_signals.map((s) => (
                  <span class="chip" key={s}>
                    {s}
                  </span>
                ))
              ) : (
                <span class="muted">nothing</span>
              )}
            </p>
            {d.signals.length ? (
              <table class="list compact">
                <caption class="sr-only">Signals received</caption>
                <thead>
                  <tr>
                    <th scope="col">Name</th>
                    <th scope="col">Payload</th>
                    <th scope="col">Received</th>
                    <th scope="col">Taken</th>
                  </tr>
                </thead>
                <tbody>
                  {d.signals.map((s) => (
                    <tr key={s.id}>
                      <td>{s.name}</td>
                      <td class="mono">{s.payload}</td>
                      <td>{when(s.created_at)}</td>
                      <td>{s.consumed_at ? when(s.consumed_at) : 'not yet'}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            ) : (
              <p class="muted">No signals received.</p>
            )}
          </section>
          {inst.output !== null ? (
            <section class="card" aria-labelledby="out-title">
              <h2 id="out-title">Output</h2>
              <pre class="code" data-testid="instance-output">
                {pretty(inst.output)}
              </pre>
            </section>
          ) : null}
        </div>
      </div>
      <section class="card" aria-labelledby="explain-title">
        <h2 id="explain-title">df.explain</h2>
        <pre class="code explain" data-testid="explain">
          {d.explain}
        </pre>
      </section>
    </section>
  );
}
