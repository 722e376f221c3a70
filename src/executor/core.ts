/**
 * The deterministic core (DESIGN.md §4, STYLE.md 6): given the stored graph,
 * the instance's recorded events and the current time, decide the outcome so
 * far and the actions to take next. Pure: no I/O; time comes in as `now`.
 *
 * The graph is re-walked from the root on every tick. A leaf (SQL, SLEEP,
 * WAIT_SCHEDULE, SIGNAL) is identified by its activation key
 * `<scope>::<generation>/<node id>` (the stamp format of spec §5.6 plus the
 * node); its recorded event, if any, is its outcome. Branches of JOIN/RACE
 * and non-root loops run in child scopes; a loop at the root of the graph or
 * of a branch iterates as generations of that scope. Completed loop
 * iterations are summarised by `iter` events so replay starts at the latest.
 *
 * Retries (df.start's max_attempts / max_backoff): attempt 1 of a SQL or HTTP
 * leaf uses its activation key, attempt k > 1 the key `<key>@<k>`. When
 * attempt k has a recorded failure and k < max_attempts, the next attempt's
 * key first gets an `armed` event with its due time (the backoff, recorded so
 * replay and a restart keep it), and runs once that time has passed. The
 * failure reaches the enclosing nodes only after the last attempt.
 */
import type { GraphNode } from './graph.js';
import {
  attemptKey,
  backoffMs,
  type EventKind,
  type StoredEvent,
  type CoreInput,
  type AttemptInfo,
  type Action,
  type Stamp,
  type Outcome,
  type CoreResult,
} from './core-types.js';

import { buildRequest, HttpStepError, type HttpRequest } from './http-request.js';
import { tryParseJson, stringify } from './json.js';
import { substitute, SubstitutionError, type SubstitutionContext } from './substitute.js';
import { truthyResult } from './truthy.js';

export * from './core-types.js';

interface Scope {
  readonly name: string;
  readonly gen: number;
  readonly results: Map<string, string>;
}

const stampOf = (s: Scope): string => `${s.name}::${s.gen}`;
const keyOf = (s: Scope, n: GraphNode): string => `${stampOf(s)}/${n.id}`;

export const BREAK_OUTSIDE_LOOP =
  'df.break() was called outside of a loop. df.break() may only be used inside df.loop().';

/** Break values: JSON kept (compacted), other text as a JSON string, no value → null. */
export function breakValue(query: string | null): string {
  const cfg = query === null ? undefined : tryParseJson(query);
  const bv = cfg && cfg.t === 'obj' ? cfg.v.find(([k]) => k === 'break_value')?.[1] : undefined;
  if (!bv || bv.t === 'null') return 'null';
  if (bv.t !== 'str') return stringify(bv);
  const parsed = tryParseJson(bv.v);
  return parsed ? stringify(parsed) : JSON.stringify(bv.v);
}

/** Why a wait of `seconds` cannot be kept: it would end past the latest time JavaScript (and so dfgate) can represent. */
function outOfRange(what: string, seconds: string | null): string {
  return `${what} '${seconds ?? ''}' seconds is out of range: it would end after the year 275760`;
}

function configOf(query: string | null): Record<string, unknown> {
  try {
    const v = JSON.parse(query ?? 'null') as unknown;
    return typeof v === 'object' && v !== null ? (v as Record<string, unknown>) : {};
  } catch {
    return {};
  }
}

/**
 * runCore, or the reason it cannot evaluate the workflow (a value nested
 * too deeply to handle, say): deterministic, so every later attempt would
 * fail alike, and the driver fails the instance with it.
 */
export function tryCore(input: CoreInput): CoreResult | string {
  try {
    return runCore(input);
  } catch (err) {
    return `the workflow could not be evaluated: ${String((err as Error)?.message ?? err)}`;
  }
}

export function runCore(input: CoreInput): CoreResult {
  const { graph, events } = input;
  const stamps = new Map<string, Stamp>();
  const obsolete: string[] = [];

  const ev = (key: string, kind: EventKind): StoredEvent | undefined => events.get(key)?.get(kind);
  const maxAttempts = Math.max(1, Math.floor(input.retry?.maxAttempts ?? 1));
  /** Attempt info of the leaf just run, taken by its stamp. */
  const attemptInfo = new Map<string, AttemptInfo>();
  const stamp = (n: GraphNode, s: Scope, o: Outcome): Outcome => {
    const st = stampOf(s);
    const info = attemptInfo.get(n.id);
    attemptInfo.delete(n.id);
    switch (o.k) {
      case 'done':
        stamps.set(n.id, {
          status: 'completed',
          result: o.result,
          stamp: st,
          ...(info ? { attempts: info } : {}),
        });
        break;
      case 'break':
        stamps.set(n.id, { status: 'completed', result: o.value, stamp: st });
        return { ...o, via: [...o.via, n.id] };
      case 'failed':
        stamps.set(n.id, {
          status: 'failed',
          result: o.error,
          stamp: st,
          ...(info ? { attempts: info } : {}),
        });
        break;
      case 'blocked':
        stamps.set(n.id, {
          status: 'running',
          result: null,
          stamp: st,
          ...(info ? { attempts: info } : {}),
        });
        break;
    }
    return o;
  };
  const node = (id: string | null): GraphNode => {
    const n = id === null ? undefined : graph.nodes.get(id);
    if (!n) throw new Error(`graph references a missing node ${String(id)}`);
    return n;
  };
  const named = (n: GraphNode, s: Scope, o: Outcome): Outcome => {
    if (o.k === 'done' && n.resultName && !['SLEEP', 'WAIT_SCHEDULE', 'BREAK'].includes(n.type))
      s.results.set(n.resultName, o.result);
    return o;
  };
  const ctx = (s: Scope): SubstitutionContext => ({
    vars: input.vars,
    instanceId: input.instanceId,
    label: input.label,
    results: s.results,
    ...(input.stepTextMax !== undefined ? { maxChars: input.stepTextMax } : {}),
  });

  function leafEvent(key: string): Outcome | undefined {
    const done = ev(key, 'done');
    if (done) return { k: 'done', result: String(done.detail['result']), seq: done.seq };
    const failed = ev(key, 'failed');
    if (failed) return { k: 'failed', error: String(failed.detail['error']), seq: failed.seq };
    return undefined;
  }

  /**
   * The attempts of a SQL/HTTP leaf: the outcome of the latest attempt when it
   * is final (done, or failed with no attempt left), else blocked with either
   * a backoff action or the attempt to run now (`run` gets its key and number).
   */
  function attempts(
    n: GraphNode,
    key: string,
    acts: Action[],
    run: (key: string, attempt: number) => Outcome,
  ): Outcome {
    let lastError: string | undefined;
    const note = (attempt: number, extra: { retry_at?: string } = {}): void => {
      if (maxAttempts > 1)
        attemptInfo.set(n.id, {
          attempt,
          max_attempts: maxAttempts,
          ...(lastError !== undefined ? { last_error: lastError } : {}),
          ...extra,
        });
    };
    for (let k = 1; ; k++) {
      const cur = attemptKey(key, k);
      const recorded = leafEvent(cur);
      if (!recorded) {
        note(k);
        return run(cur, k);
      }
      if (recorded.k === 'failed') {
        if (k >= maxAttempts) {
          note(k);
          return recorded;
        }
        lastError = recorded.error;
      } else {
        note(k);
        return recorded;
      }
      const next = attemptKey(key, k + 1);
      if (leafEvent(next)) continue;
      const armed = ev(next, 'armed');
      const at = armed
        ? new Date(String(armed.detail['at']))
        : new Date(
            input.now.getTime() +
              backoffMs(input.instanceId, key, k, input.retry?.maxBackoffMs ?? null),
          );
      if (armed && at.getTime() <= input.now.getTime()) continue;
      note(k, { retry_at: at.toISOString() });
      acts.push({
        a: 'backoff',
        key: next,
        node: n.id,
        at,
        armed: armed !== undefined,
        attempt: k + 1,
      });
      return { k: 'blocked' };
    }
  }

  function evaluate(id: string | null, s: Scope, acts: Action[]): Outcome {
    const n = node(id);
    const o = named(n, s, run(n, s, acts));
    // a LOOP stamps itself with the generation it ended in
    return n.type === 'LOOP' ? o : stamp(n, s, o);
  }

  function run(n: GraphNode, s: Scope, acts: Action[]): Outcome {
    const key = keyOf(s, n);
    switch (n.type) {
      case 'SQL':
        return attempts(n, key, acts, (akey, attempt) => {
          let sql: string;
          try {
            sql = substitute(n.query ?? '', ctx(s), 'sql');
          } catch (err) {
            if (err instanceof SubstitutionError)
              return { k: 'failed', error: err.message, seq: 0 };
            throw err;
          }
          acts.push({ a: 'sql', key: akey, node: n.id, sql, attempt });
          return { k: 'blocked' };
        });
      case 'SLEEP':
      case 'WAIT_SCHEDULE': {
        const recorded = leafEvent(key);
        if (recorded) return recorded;
        const armed = ev(key, 'armed');
        let at: Date;
        let result: string;
        if (n.type === 'SLEEP') {
          const secs = Number(n.query ?? '0');
          if (!Number.isFinite(secs) || secs < 0)
            return { k: 'failed', error: `invalid sleep duration '${n.query ?? ''}'`, seq: 0 };
          at = armed
            ? new Date(String(armed.detail['at']))
            : new Date(input.now.getTime() + secs * 1000);
          if (Number.isNaN(at.getTime()))
            return { k: 'failed', error: outOfRange('sleep duration', n.query), seq: 0 };
          result = `{"slept": true, "seconds": ${n.query ?? '0'}}`;
        } else {
          const expr = String(configOf(n.query)['cron_expr'] ?? '');
          try {
            at = armed ? new Date(String(armed.detail['at'])) : input.nextCron(expr, input.now);
          } catch (err) {
            return {
              k: 'failed',
              error: `Invalid cron expression '${expr}': ${(err as Error).message}`,
              seq: 0,
            };
          }
          result = '{"scheduled": true}';
        }
        acts.push({ a: 'timer', key, node: n.id, at, armed: armed !== undefined, result });
        return { k: 'blocked' };
      }
      case 'SIGNAL': {
        const recorded = leafEvent(key);
        if (recorded) return recorded;
        const cfg = configOf(n.query);
        // df.start never writes one without a name; rows written by hand may
        const name = cfg['signal_name'];
        if (typeof name !== 'string' || name === '')
          return {
            k: 'failed',
            error: 'Invalid signal config: signal_name must be a non-empty string',
            seq: 0,
          };
        const armed = ev(key, 'armed');
        const timeout =
          typeof cfg['timeout_seconds'] === 'number' ? (cfg['timeout_seconds'] as number) : null;
        const timeoutAt = armed
          ? armed.detail['at'] === null || armed.detail['at'] === undefined
            ? null
            : new Date(String(armed.detail['at']))
          : timeout === null
            ? null
            : new Date(input.now.getTime() + timeout * 1000);
        if (timeoutAt !== null && Number.isNaN(timeoutAt.getTime()))
          return {
            k: 'failed',
            error: outOfRange('signal timeout', String(cfg['timeout_seconds'])),
            seq: 0,
          };
        acts.push({
          a: 'signal',
          key,
          node: n.id,
          name,
          timeoutAt,
          armed: armed !== undefined,
        });
        return { k: 'blocked' };
      }
      case 'HTTP':
      case 'HTTP_MULTIPART': {
        const type = n.type;
        return attempts(n, key, acts, (akey, attempt) => {
          let request: HttpRequest;
          try {
            request = buildRequest(type, n.id, n.query, (t) => substitute(t, ctx(s), 'raw'));
          } catch (err) {
            if (err instanceof SubstitutionError || err instanceof HttpStepError)
              return { k: 'failed', error: err.message, seq: 0 };
            throw err;
          }
          acts.push({ a: 'http', key: akey, node: n.id, request, attempt });
          return { k: 'blocked' };
        });
      }
      case 'BREAK':
        return { k: 'break', value: breakValue(n.query), seq: 0, via: [] };
      case 'THEN': {
        const a = evaluate(n.left, s, acts);
        if (a.k !== 'done') return a;
        const b = evaluate(n.right, s, acts);
        // a break or failure on the right ends no earlier than the left did (RACE compares seq)
        return b.k === 'blocked' ? b : { ...b, seq: Math.max(a.seq, b.seq) };
      }
      case 'IF': {
        let truth: boolean;
        let seq = 0;
        if (n.condition) {
          const c = evaluate(n.condition, s, acts);
          if (c.k !== 'done') return c;
          truth = truthyResult(c.result);
          seq = c.seq;
        } else {
          const cfg = configOf(n.query);
          const rn = String(cfg['result_name'] ?? '');
          const text = s.results.get(rn);
          if (text === undefined)
            return { k: 'failed', error: `df.if_rows: result '${rn}' not found`, seq: 0 };
          let parsed: unknown;
          try {
            parsed = JSON.parse(text);
          } catch (err) {
            return {
              k: 'failed',
              error: `df.if_rows: invalid result JSON: ${(err as Error).message}`,
              seq: 0,
            };
          }
          const rc =
            typeof parsed === 'object' && parsed !== null
              ? (parsed as { row_count?: unknown }).row_count
              : undefined;
          if (typeof rc !== 'number')
            return {
              k: 'failed',
              error: `df.if_rows: result '${rn}' is not a SQL result (missing row_count)`,
              seq: 0,
            };
          truth = rc > 0;
        }
        const r = evaluate(truth ? n.left : n.right, s, acts);
        return r.k === 'done' || r.k === 'failed' || r.k === 'break'
          ? { ...r, seq: Math.max(seq, r.seq) }
          : r;
      }
      case 'JOIN':
        return join(n, s, acts);
      case 'RACE':
        return race(n, s, acts);
      case 'LOOP':
        return loop(n, s, acts);
    }
  }

  function branchScope(s: Scope, b: string): Scope {
    return { name: `${stampOf(s)}::${b}`, gen: 1, results: new Map(s.results) };
  }

  /** Runs a branch root in its own scope; a LOOP there iterates as generations of that scope. */
  function branch(id: string, s: Scope, acts: Action[]): { out: Outcome; scope: Scope } {
    const bs = branchScope(s, id);
    const n = node(id);
    if (n.type === 'LOOP') {
      const r = iterate(n, bs, acts, 'branch');
      return { out: r.out, scope: r.scope };
    }
    return { out: evaluate(id, bs, acts), scope: bs };
  }

  function join(n: GraphNode, s: Scope, acts: Action[]): Outcome {
    const ids = [n.left, n.right, ...n.extras].filter((x): x is string => x !== null);
    const runs = ids.map((id) => branch(id, s, acts));
    if (runs.some((r) => r.out.k === 'blocked')) return { k: 'blocked' };
    let seq = 0;
    const texts: string[] = [];
    for (let i = 0; i < runs.length; i++) {
      const r = runs[i] as { out: Outcome; scope: Scope };
      const o = r.out;
      if (o.k === 'failed') {
        const bn = node(ids[i] as string);
        const error = `JOIN branch ${i + 1} failed: ${o.error}`;
        if (bn.type === 'LOOP')
          stamps.set(bn.id, { status: 'failed', result: error, stamp: stampOf(r.scope) });
        return { k: 'failed', error, seq: o.seq };
      }
      if (o.k === 'break') return o;
      if (o.k === 'done') {
        if (!tryParseJson(o.result))
          return {
            k: 'failed',
            error: `JOIN branch ${i + 1} result parse error: not valid JSON`,
            seq: o.seq,
          };
        texts.push(o.result);
        seq = Math.max(seq, o.seq);
      }
    }
    for (const r of runs) for (const [k, v] of r.scope.results) s.results.set(k, v);
    return { k: 'done', result: `[${texts.join(',')}]`, seq };
  }

  function race(n: GraphNode, s: Scope, acts: Action[]): Outcome {
    const la: Action[] = [];
    const ra: Action[] = [];
    const l = branch(n.left as string, s, la);
    const r = branch(n.right as string, s, ra);
    const finished = (o: Outcome): boolean => o.k !== 'blocked';
    if (!finished(l.out) && !finished(r.out)) {
      acts.push(...la, ...ra);
      return { k: 'blocked' };
    }
    const seqOf = (o: Outcome): number => (o.k === 'blocked' ? Number.POSITIVE_INFINITY : o.seq);
    const leftWins = seqOf(l.out) <= seqOf(r.out);
    const [win, lose, side] = leftWins ? [l, r, 'left'] : [r, l, 'right'];
    const loserRoot = node(leftWins ? (n.right as string) : (n.left as string));
    if (loserRoot.type === 'LOOP' && lose.out.k === 'blocked') {
      stamps.set(loserRoot.id, {
        status: 'failed',
        result: 'Loop branch cancelled after losing RACE',
        stamp: stampOf(lose.scope),
      });
    }
    const o = win.out;
    if (o.k === 'failed')
      return { k: 'failed', error: `RACE ${side} branch failed: ${o.error}`, seq: o.seq };
    if (o.k === 'done') for (const [k, v] of win.scope.results) s.results.set(k, v);
    return o;
  }

  function loop(n: GraphNode, s: Scope, acts: Action[]): Outcome {
    if (n.id === graph.root) return iterate(n, s, acts, 'root').out;
    // a non-root loop runs in a child scope that carries its map forward and merges it back
    const child: Scope = { name: `${stampOf(s)}::${n.id}`, gen: 1, results: new Map(s.results) };
    const r = iterate(n, child, acts, 'child');
    if (r.out.k === 'done' || r.out.k === 'break')
      for (const [k, v] of r.scope.results) s.results.set(k, v);
    return r.out;
  }

  /** The iterations of a loop as generations of `base` (whose gen is replaced). */
  function iterate(
    n: GraphNode,
    base: Scope,
    acts: Action[],
    kind: 'root' | 'branch' | 'child',
  ): { out: Outcome; scope: Scope } {
    const iterKey = `${base.name}#iter/${n.id}`;
    const snap = ev(iterKey, 'iter');
    let i = 1;
    let results = base.results;
    let last: string | null = null;
    let seq = 0;
    if (snap) {
      i = Number(snap.detail['i']) + 1;
      results = new Map((snap.detail['results'] as Array<[string, string]>) ?? []);
      last = (snap.detail['last'] as string | null) ?? null;
      seq = Number(snap.detail['seq'] ?? 0);
    }
    for (;;) {
      if (i > input.maxLoopIterations) {
        const out: Outcome = {
          k: 'failed',
          error: `Loop exceeded maximum iteration count of ${input.maxLoopIterations}. Use df.break() to exit the loop or restructure the workflow.`,
          seq,
        };
        const sc: Scope = { name: base.name, gen: i - 1, results };
        stamp(n, sc, out);
        return { out, scope: sc };
      }
      const sc: Scope = { name: base.name, gen: i, results: kind === 'root' ? new Map() : results };
      const body = evaluate(n.left, sc, acts);
      let out: Outcome | undefined;
      if (body.k === 'blocked') out = body;
      else if (body.k === 'failed') out = body;
      else if (body.k === 'break')
        out = { k: 'done', result: body.value, seq: Math.max(seq, body.seq) };
      else if (n.condition) {
        const c = evaluate(n.condition, sc, acts);
        if (c.k === 'blocked' || c.k === 'failed') out = c;
        else if (c.k === 'break') out = { k: 'done', result: c.value, seq: Math.max(seq, c.seq) };
        else if (!truthyResult(c.result))
          out = { k: 'done', result: body.result, seq: Math.max(seq, body.seq, c.seq) };
        else seq = Math.max(seq, body.seq, c.seq);
      } else seq = Math.max(seq, body.seq);
      if (out) {
        if (out.k !== 'blocked') {
          named(n, sc, out);
          stamp(n, sc, out);
        } else stamps.set(n.id, { status: 'running', result: null, stamp: stampOf(sc) });
        return { out, scope: sc };
      }
      // iteration i finished and the loop goes on: summarise it so replay can start after it
      last = body.k === 'done' ? body.result : last;
      const detail = { i, results: [...sc.results], last, seq };
      acts.push({ a: 'iter', key: iterKey, node: n.id, detail });
      obsolete.push(`${base.name}::${i}/`, `${base.name}::${i}::`);
      results = sc.results;
      i++;
    }
  }

  const acts: Action[] = [];
  let outcome = evaluate(graph.root, { name: input.instanceId, gen: 1, results: new Map() }, acts);
  if (outcome.k === 'break') {
    // No loop caught it (spec §6.8, §6.13): the BREAK node carries the error and
    // every node it passed through on the way to the root fails with it.
    for (const id of outcome.via) {
      const st = stamps.get(id);
      if (st) stamps.set(id, { status: 'failed', result: BREAK_OUTSIDE_LOOP, stamp: st.stamp });
    }
    outcome = { k: 'failed', error: BREAK_OUTSIDE_LOOP, seq: outcome.seq };
  }
  return { outcome, actions: acts, stamps, obsolete };
}
