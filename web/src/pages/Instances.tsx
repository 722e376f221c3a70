/** The instances list: counts per status, filters, id search, keyset pages, live updates. */
import { useEffect, useRef, useState } from 'preact/hooks';
import { ApiError, get, subscribe, type InstanceRow } from '../api';
import { Link, navigate } from '../router';
import { StatusBadge, when } from '../ui';

const STATUSES = ['pending', 'running', 'completed', 'failed', 'cancelled'];

interface Page {
  rows: InstanceRow[];
  next: string | null;
}

export function InstancesPage({ query }: { query: string }): preact.JSX.Element {
  const params = new URLSearchParams(query);
  const status = params.get('status') ?? '';
  const label = params.get('label') ?? '';
  const id = params.get('id') ?? '';
  const after = params.get('after') ?? '';
  const [data, setData] = useState<Page | undefined>(undefined);
  const [counts, setCounts] = useState<Record<string, number>>({});
  const [error, setError] = useState('');
  const [labelInput, setLabelInput] = useState(label);
  const [idInput, setIdInput] = useState(id);
  const [history, setHistory] = useState<string[]>([]);
  const seq = useRef(0);

  const load = (): void => {
    const mine = ++seq.current;
    const q = new URLSearchParams();
    if (status) q.set('status', status);
    if (label) q.set('label', label);
    if (id) q.set('id', id);
    if (after) q.set('after', after);
    get<Page>(`/api/instances?${q.toString()}`).then(
      (d) => {
        if (mine !== seq.current) return;
        setData(d);
        setError('');
      },
      (err: unknown) => {
        if (mine === seq.current) setError(err instanceof ApiError ? err.message : String(err));
      },
    );
    get<Record<string, number>>(
      `/api/counts${label ? '?label=' + encodeURIComponent(label) : ''}`,
    ).then(
      (c) => {
        if (mine === seq.current) setCounts(c);
      },
      () => undefined,
    );
  };

  useEffect(load, [query]);
  useEffect(() => {
    let timer: number | undefined;
    const off = subscribe(() => {
      // coalesce bursts: one reload per half second at most
      timer ??= window.setTimeout(() => {
        timer = undefined;
        load();
      }, 300);
    });
    return () => {
      off();
      if (timer !== undefined) clearTimeout(timer);
    };
  }, [query]);

  const go = (changes: Record<string, string>, keepHistory = false): void => {
    const q = new URLSearchParams(query);
    for (const [k, v] of Object.entries(changes)) {
      if (v) q.set(k, v);
      else q.delete(k);
    }
    if (!('after' in changes)) q.delete('after');
    if (!keepHistory) setHistory([]);
    const s = q.toString();
    navigate(`/instances${s ? '?' + s : ''}`);
  };

  const total = Object.values(counts).reduce((a, b) => a + b, 0);

  return (
    <section aria-labelledby="instances-title">
      <div class="page-head">
        <h1 id="instances-title">Instances</h1>
        <Link href="/start" class="button">
          Start a workflow
        </Link>
      </div>
      <div class="counts" role="group" aria-label="Filter by status">
        <button
          type="button"
          class={`count${status === '' ? ' active' : ''}`}
          aria-pressed={status === ''}
          onClick={() => go({ status: '' })}
        >
          <span class="n">{total}</span> all
        </button>
        {STATUSES.map((s) => (
          <button
            type="button"
            key={s}
            class={`count st-${s}${status === s ? ' active' : ''}`}
            aria-pressed={status === s}
            data-testid={`count-${s}`}
            onClick={() => go({ status: status === s ? '' : s })}
          >
            <span class="n">{counts[s] ?? 0}</span> {s}
          </button>
        ))}
      </div>
      <form
        class="filters"
        role="search"
        onSubmit={(e) => {
          e.preventDefault();
          go({ label: labelInput, id: idInput.trim().toLowerCase() });
        }}
      >
        <label>
          Label
          <input
            name="label"
            value={labelInput}
            placeholder="exact label"
            onInput={(e) => setLabelInput((e.target as HTMLInputElement).value)}
          />
        </label>
        <label>
          Instance id
          <input
            name="id"
            value={idInput}
            placeholder="id or its start"
            pattern="[0-9a-fA-F]{1,8}"
            onInput={(e) => setIdInput((e.target as HTMLInputElement).value)}
          />
        </label>
        <button type="submit">Filter</button>
        {label || id || status ? (
          <button
            type="button"
            class="secondary"
            onClick={() => {
              setLabelInput('');
              setIdInput('');
              navigate('/instances');
            }}
          >
            Clear
          </button>
        ) : null}
      </form>
      {error ? (
        <p role="alert" class="error">
          {error}
        </p>
      ) : null}
      {!data ? (
        <p class="loading">Loading…</p>
      ) : data.rows.length === 0 ? (
        <p class="empty">
          No instances{status || label || id ? ' match these filters' : ' yet'}.{' '}
          <Link href="/start">Start one</Link>.
        </p>
      ) : (
        <table class="list">
          <caption class="sr-only">Workflow instances, newest first</caption>
          <thead>
            <tr>
              <th scope="col">Id</th>
              <th scope="col">Label</th>
              <th scope="col">Status</th>
              <th scope="col">Started</th>
              <th scope="col">Last change</th>
            </tr>
          </thead>
          <tbody>
            {data.rows.map((r) => (
              <tr key={r.id} data-id={r.id}>
                <td>
                  <Link href={`/instances/${r.id}`} class="mono">
                    {r.id}
                  </Link>
                </td>
                <td class="label-cell">{r.label ?? <span class="muted">—</span>}</td>
                <td>
                  <StatusBadge status={r.status} />
                </td>
                <td>{when(r.created_at)}</td>
                <td>{when(r.updated_at)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <nav class="pager" aria-label="Pages">
        <button
          type="button"
          class="secondary"
          disabled={!after}
          onClick={() => {
            const prev = history.slice(0, -1);
            const target = history[history.length - 1] ?? '';
            setHistory(prev);
            go({ after: target }, true);
          }}
        >
          ← Newer
        </button>
        <button
          type="button"
          class="secondary"
          disabled={!data?.next}
          onClick={() => {
            setHistory([...history, after]);
            go({ after: data?.next ?? '' }, true);
          }}
        >
          Older →
        </button>
      </nav>
    </section>
  );
}
