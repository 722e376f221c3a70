/** The console's JSON API: same-origin fetches, with the session's CSRF token on every write. */

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly code: string,
    readonly body: Record<string, unknown> = {},
  ) {
    super(message);
  }
}

let csrf = '';
export function setCsrf(token: string): void {
  csrf = token;
}

/** Called when any request answers 401 (session gone). */
let onUnauthorized: () => void = () => undefined;
export function setOnUnauthorized(f: () => void): void {
  onUnauthorized = f;
}

async function call<T>(method: string, url: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { Accept: 'application/json' };
  if (method !== 'GET') {
    headers['Content-Type'] = 'application/json';
    headers['X-CSRF-Token'] = csrf;
  }
  const res = await fetch(url, {
    method,
    headers,
    credentials: 'same-origin',
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  let data: Record<string, unknown> = {};
  try {
    data = (await res.json()) as Record<string, unknown>;
  } catch {
    // not JSON
  }
  if (!res.ok) {
    if (res.status === 401 && !url.endsWith('/api/login')) onUnauthorized();
    throw new ApiError(
      res.status,
      typeof data['error'] === 'string' ? data['error'] : `request failed (${res.status})`,
      typeof data['code'] === 'string' ? data['code'] : 'error',
      data,
    );
  }
  return data as T;
}

export const get = <T>(url: string): Promise<T> => call<T>('GET', url);
export const post = <T>(url: string, body: unknown): Promise<T> => call<T>('POST', url, body);

export interface SessionInfo {
  readonly role: string;
  readonly csrf: string;
  readonly usage: boolean;
}

export interface InstanceRow {
  readonly id: string;
  readonly label: string | null;
  readonly status: string;
  readonly created_at: string;
  readonly updated_at: string;
  readonly error: string | null;
}

export interface NodeView {
  readonly id: string;
  readonly type: string;
  readonly query: string | null;
  readonly resultName: string | null;
  readonly left: string | null;
  readonly right: string | null;
  readonly status: string;
  readonly inferred: string | null;
  readonly result: string | null;
  readonly error: string | null;
  readonly attempts: number;
  readonly updatedAt: string;
  readonly finishedAt: string | null;
  readonly iteration: number | null;
  readonly substituted: string | null;
}

export interface SignalRow {
  readonly id: string;
  readonly name: string;
  readonly payload: string;
  readonly sent_by: string;
  readonly created_at: string;
  readonly consumed_at: string | null;
}

export interface InstanceDetail {
  readonly instance: {
    readonly id: string;
    readonly label: string | null;
    readonly status: string;
    readonly root_node: string;
    readonly created_at: string;
    readonly updated_at: string;
    readonly completed_at: string | null;
    readonly error: string | null;
    readonly output: string | null;
    readonly waiting_signals: string[] | null;
  };
  readonly nodes: NodeView[];
  readonly explain: string;
  readonly signals: SignalRow[];
}

/** Live updates: one EventSource per page load; listeners get the changed ids (null: anything). */
type Listener = (ids: string[] | null) => void;
const listeners = new Set<Listener>();
let source: EventSource | undefined;

export function subscribe(f: Listener): () => void {
  listeners.add(f);
  if (!source) {
    source = new EventSource('/api/events');
    source.addEventListener('change', (e) => {
      let ids: string[] | null = null;
      try {
        ids = (JSON.parse((e as MessageEvent<string>).data) as { ids: string[] | null }).ids;
      } catch {
        ids = null;
      }
      for (const l of listeners) l(ids);
    });
    // after a reconnect, anything may have changed meanwhile
    source.addEventListener('open', () => {
      for (const l of listeners) l(null);
    });
  }
  return () => listeners.delete(f);
}

export function closeEvents(): void {
  source?.close();
  source = undefined;
}
