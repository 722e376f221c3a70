/** Start a workflow: a DSL editor with live validation (the server's src/dsl, as `dfgate check`), a preview, a label. */
import { useEffect, useMemo, useRef, useState } from 'preact/hooks';
import { ApiError, post } from '../api';
import { GraphView } from '../GraphView';
import { nodesFromGraph } from '../graph';
import { navigate } from '../router';

const EXAMPLES: Record<string, string> = {
  Sequence: `'SELECT 1 AS one' |=> 'first'
  ~> 'SELECT $first.one + 1 AS two'`,
  'Wait for a signal': `'SELECT now() AS asked'
  ~> df.wait_for_signal('approve', 3600) |=> 'decision'
  ~> 'SELECT $decision AS approved'`,
  'Branch (IF)': `df.if('SELECT random() < 0.5',
      'SELECT ''heads'' AS side',
      'SELECT ''tails'' AS side')`,
  'Parallel (JOIN)': `df.join3('SELECT 1 AS a', 'SELECT 2 AS b', df.sleep(1) ~> 'SELECT 3 AS c')`,
  'Loop until BREAK': `@> (df.sleep(1) ~> df.if('SELECT random() < 0.2', df.break('done'), 'SELECT 0'))`,
};

type Check =
  | { ok: true; graph: string }
  | { ok: false; error: { line: number; column: number; message: string } };

export function StartPage(): preact.JSX.Element {
  const [source, setSource] = useState(EXAMPLES['Sequence'] as string);
  const [label, setLabel] = useState('');
  const [check, setCheck] = useState<Check | undefined>(undefined);
  const [lastGood, setLastGood] = useState<string | undefined>(undefined);
  const [error, setError] = useState('');
  const [busy, setBusy] = useState(false);
  const seq = useRef(0);

  useEffect(() => {
    const mine = ++seq.current;
    const t = window.setTimeout(() => {
      post<Check>('/api/check', { source }).then(
        (c) => {
          if (mine !== seq.current) return;
          setCheck(c);
          if (c.ok) setLastGood(c.graph);
        },
        (err: unknown) => {
          if (mine === seq.current) setError(err instanceof ApiError ? err.message : String(err));
        },
      );
    }, 250);
    return () => clearTimeout(t);
  }, [source]);

  const preview = useMemo(() => {
    if (!lastGood) return undefined;
    try {
      return nodesFromGraph(lastGood);
    } catch {
      return undefined;
    }
  }, [lastGood]);

  const start = async (e: Event): Promise<void> => {
    e.preventDefault();
    setBusy(true);
    setError('');
    try {
      const r = await post<{ id: string }>('/api/start', { source, label });
      navigate(`/instances/${r.id}`);
    } catch (err) {
      setError(err instanceof ApiError ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  };

  const valid = check?.ok === true;
  return (
    <section aria-labelledby="start-title">
      <div class="page-head">
        <h1 id="start-title">Start a workflow</h1>
        <label class="inline">
          Example{' '}
          <select
            onChange={(e) => {
              const v = EXAMPLES[(e.target as HTMLSelectElement).value];
              if (v) setSource(v);
            }}
          >
            {Object.keys(EXAMPLES).map((k) => (
              <option key={k} value={k}>
                {k}
              </option>
            ))}
          </select>
        </label>
      </div>
      <form class="split" onSubmit={(e) => void start(e)}>
        <div class="card">
          <label for="dsl">
            Workflow (a DSL expression, the argument of <code>df.start</code>)
          </label>
          <textarea
            id="dsl"
            class="editor mono"
            rows={12}
            spellcheck={false}
            value={source}
            aria-invalid={check !== undefined && !check.ok}
            aria-describedby="dsl-check"
            onInput={(e) => setSource((e.target as HTMLTextAreaElement).value)}
          />
          <div id="dsl-check" role="status" data-testid="dsl-check" class={valid ? 'ok' : 'error'}>
            {check === undefined
              ? 'checking…'
              : check.ok
                ? '✓ valid workflow'
                : `line ${check.error.line}, column ${check.error.column}: ${check.error.message}`}
          </div>
          <label for="label">Label</label>
          <input
            id="label"
            value={label}
            onInput={(e) => setLabel((e.target as HTMLInputElement).value)}
          />
          <div role="alert" class="error">
            {error}
          </div>
          <button type="submit" disabled={!valid || busy}>
            {busy ? 'Starting…' : 'Start'}
          </button>
        </div>
        <div class="card graph-card">
          <h2>Preview</h2>
          {preview && preview[0] ? (
            <GraphView nodes={preview} root="p0" label="Preview of the workflow graph" />
          ) : (
            <p class="muted">The graph appears here once the workflow is valid.</p>
          )}
        </div>
      </form>
    </section>
  );
}
