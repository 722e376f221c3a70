/**
 * What a step's SQL may do, decided on its parse tree (libpg-query, the real
 * PostgreSQL parser): transaction control, holdable cursors and visible role
 * changes are refused; statements PostgreSQL refuses inside a transaction
 * block run in autocommit (at least once instead of exactly once).
 */
import { parse as parseSync } from '../dsl/parser.js';
import { planInPool, STEP_CHECK_BUDGET_MS } from '../dsl/edge-pool.js';
export { loadParser } from '../dsl/parser.js';
import { parserBroken } from '../dsl/parser.js';

export type StepPlan =
  | {
      readonly kind: 'transaction';
      /**
       * One INSERT, UPDATE, DELETE or MERGE without RETURNING: its result is
       * known before it runs (no rows), so its checkpoint can go out with it
       * in one Query message (steps.ts).
       */
      readonly rowless?: true;
    }
  | { readonly kind: 'autocommit'; readonly why: string }
  | { readonly kind: 'refuse'; readonly error: string };

const CURSOR_OPT_HOLD = 0x20;

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

function findRoleChange(node: Json): string | undefined {
  if (Array.isArray(node)) {
    for (const x of node) {
      const r = findRoleChange(x);
      if (r) return r;
    }
    return undefined;
  }
  if (node === null || typeof node !== 'object') return undefined;
  const fc = node['FuncCall'] as { [k: string]: Json } | undefined;
  if (fc) {
    const names =
      (fc['funcname'] as Json[] | undefined)?.map((n) =>
        ((n as { String?: { sval?: string } }).String?.sval ?? '').toLowerCase(),
      ) ?? [];
    if (names[names.length - 1] === 'set_config') {
      const first = (fc['args'] as Json[] | undefined)?.[0] as
        { A_Const?: { sval?: { sval?: string } } } | undefined;
      const setting = first?.A_Const?.sval?.sval?.toLowerCase();
      if (setting === 'role' || setting === 'session_authorization')
        return `set_config('${setting}', …)`;
    }
  }
  for (const v of Object.values(node)) {
    const r = findRoleChange(v);
    if (r) return r;
  }
  return undefined;
}

/**
 * Plans of recently seen step texts, by planKey: at most PLAN_CACHE_MAX,
 * each up to PLAN_CACHE_TEXT_MAX characters. A step of a chain or loop
 * repeats its text, and the steps of many instances of one workflow differ
 * only in the numbers substituted into them.
 */
const planCache = new Map<string, StepPlan>();
const PLAN_CACHE_MAX = 1000;
const PLAN_CACHE_TEXT_MAX = 16 * 1024;

/**
 * A standalone run of up to nine digits: no letter, digit, underscore,
 * dollar or non-ASCII character on either side. Nine digits always make an
 * integer; a longer run past 2^31 - 1 is lexed as a numeric constant, which
 * places that take only an integer (FETCH n, float(n), timestamp(n)) do not
 * parse, so it stays as it is in the key.
 */
const NUMBER = /(?<![A-Za-z0-9_$\u0080-\uffff])[0-9]{1,9}(?![A-Za-z0-9_$\u0080-\uffff])/g;

/**
 * The text a step's plan is cached under: every standalone run of up to
 * nine digits made 0. A plan never depends on such a number: it depends on statement types,
 * setting names, cursor options and set_config's first argument, none of
 * which such a run can be part of, and a number stays a number (in a
 * string or a comment, any digits do). Only escapes read digits as
 * characters (E'\101', U&'\0041', UESCAPE): a text with a backslash or a
 * Unicode string or identifier is its own key.
 */
export function planKey(sql: string): string {
  if (sql.includes('\\') || /[uU]&/.test(sql)) return sql;
  return sql.replace(NUMBER, '0');
}

/** The longest step text checked (and so run) when the result limit is the default: 16 Mi characters. */
export const STEP_TEXT_MAX = 16 * 1024 * 1024;

/**
 * The longest step text a dfgate with this result limit runs: four times
 * the limit, at least STEP_TEXT_MAX, so a result substituted into the text
 * once or twice always fits. The parse that checks a text takes time and
 * memory with its length (a compile worker's, past PLAN_INLINE_MAX), so an
 * unbounded text would hold the checks of every other session.
 */
export function stepTextMax(maxResultBytes: number): number {
  return Math.max(STEP_TEXT_MAX, 4 * maxResultBytes);
}

export function planStep(sql: string, maxChars = STEP_TEXT_MAX): StepPlan {
  if (sql.length > maxChars)
    return {
      kind: 'refuse',
      error: `the step's SQL text is ${sql.length} characters long, more than the ${maxChars} dfgate checks before it runs a step (four times --max-result-bytes, at least 16 MiB); keep large data in tables`,
    };
  const key = planKey(sql);
  return cachedPlan(key) ?? rememberPlan(key, planUncached(sql));
}

/** The cached plan of a text of this planKey, made the most recently used. */
function cachedPlan(key: string): StepPlan | undefined {
  const hit = planCache.get(key);
  if (hit) {
    // most recently used last: the oldest entry goes first when full
    planCache.delete(key);
    planCache.set(key, hit);
  }
  return hit;
}

function rememberPlan(key: string, plan: StepPlan): StepPlan {
  if (key.length <= PLAN_CACHE_TEXT_MAX && plan !== UNPARSED) {
    if (planCache.size >= PLAN_CACHE_MAX) planCache.delete(planCache.keys().next().value as string);
    planCache.set(key, plan);
  }
  return plan;
}

/**
 * Step texts up to this many characters are checked on the calling thread;
 * a longer one in a compile worker (planStepSoon), since the event loop
 * relays every session's traffic and runs every other step. The parse's cost
 * grows with the text's tokens: 4 KiB of `a,a,a,…` takes about 4 ms, 64 KiB
 * of it 100 ms and more, which held every session of the process. Plans of
 * texts up to PLAN_CACHE_TEXT_MAX are cached either way.
 */
export const PLAN_INLINE_MAX = 4 * 1024;

/**
 * planStep, with a text longer than PLAN_INLINE_MAX checked off the event
 * loop, in `owner`'s turn (edge-pool.ts). A check that runs past the
 * worker's budget refuses the step: an unchecked text never runs.
 */
export function planStepSoon(
  sql: string,
  maxChars: number,
  owner: string,
): StepPlan | Promise<StepPlan> {
  if (sql.length > maxChars || (sql.length <= PLAN_INLINE_MAX && !deepInside(sql)))
    return planStep(sql, maxChars);
  // cached as a short text's plan is (a long one is not: its key alone would be a copy of it)
  const key = sql.length <= PLAN_CACHE_TEXT_MAX ? planKey(sql) : undefined;
  const hit = key === undefined ? undefined : cachedPlan(key);
  if (hit) return hit;
  const pooled = planInPool(sql, owner);
  if (!pooled)
    return deepInside(sql)
      ? {
          kind: 'refuse',
          error: `the step's SQL could not be checked before it runs: it is nested too deeply to check without a compile worker`,
        }
      : planStep(sql, maxChars);
  return pooled.then((plan) =>
    plan === 'abandoned'
      ? {
          kind: 'refuse',
          error: `the step's SQL could not be checked before it runs: the check of its ${sql.length} characters did not finish (it ran past ${STEP_CHECK_BUDGET_MS} ms, or its worker stopped)`,
        }
      : 'failed' in plan
        ? {
            kind: 'refuse',
            error: `the step's SQL could not be checked before it runs: the check failed (${plan.failed})`,
          }
        : key === undefined
          ? plan
          : rememberPlan(key, plan),
  );
}

/**
 * More parentheses, brackets and operator characters than this anywhere in a
 * text (literals and comments included, so nothing can hide them) and its
 * parse could run out of stack inside the parser, whose memory is then not
 * to be trusted again (parser.ts): such a text is checked in a compile
 * worker, which is replaced if it happens. Hand-written steps stay far below.
 */
const INLINE_NODES_MAX = 1000;

/** Is a text one the event loop does not parse (see INLINE_NODES_MAX), or has its parser broken? */
function deepInside(sql: string): boolean {
  if (parserBroken()) return true;
  let n = 0;
  for (let i = 0; i < sql.length; i++) {
    const c = sql.charCodeAt(i);
    // ( ) [ ] + - * / < > = ~ ! @ # % ^ & | ?
    if (STRUCTURAL[c] === 1 && ++n > INLINE_NODES_MAX) return true;
  }
  return false;
}

const STRUCTURAL = new Uint8Array(128);
for (const ch of '()[]+-*/<>=~!@#%^&|?') STRUCTURAL[ch.charCodeAt(0)] = 1;

/**
 * Checks these statements ahead of their steps (the wake path: while the
 * claim is on its way), so that a step's own planStep finds them cached.
 */
export function planAhead(sqls: readonly string[]): void {
  for (const sql of sqls) {
    // a long or deep text is checked by its step, off the event loop
    if (sql.length > PLAN_INLINE_MAX || deepInside(sql)) continue;
    try {
      planStep(sql);
    } catch {
      // the step's own check meets it again and reports it
    }
  }
}

const DML = new Set(['InsertStmt', 'UpdateStmt', 'DeleteStmt', 'MergeStmt']);

/**
 * A DML statement that returns no rows, which its step may send with its
 * checkpoint in one simple Query message (steps.ts): only a text PostgreSQL
 * reads there as exactly the one statement parsed here. No backslash (with
 * standard_conforming_strings off, a role's setting, a backslash escapes a
 * quote, and the string would run on into what follows), no NUL (it ends a
 * message's text), no parameter (`$1` fails with the words of the extended
 * protocol in the other path, and must fail the same way). Data-modifying
 * WITH parts return nothing either.
 */
function isRowless(sql: string, type: string, body: { [k: string]: Json }): boolean {
  if (!DML.has(type) || /[\\\0]/.test(sql)) return false;
  // returningClause in this parser (PostgreSQL 18), returningList before it
  if (Object.keys(body).some((k) => /^returning/i.test(k))) return false;
  return !JSON.stringify(body).includes('"ParamRef"');
}

/** The plan of one text, from its parse tree (exported for the tests). */
export function planUncached(sql: string): StepPlan {
  try {
    return planOf(sql);
  } catch (err) {
    // unchecked, so it does not run (and the check never ends the thread it runs on)
    return {
      kind: 'refuse',
      error:
        err instanceof RangeError
          ? "the step's SQL could not be checked before it runs: it is nested too deeply"
          : `the step's SQL could not be checked before it runs: ${(err as Error).message}`,
    };
  }
}

/**
 * The plan of a text the parser cannot read: PostgreSQL reports the syntax
 * error when the step runs. Never cached: a text of the same planKey that
 * does parse (a number that only fits where the other's does not) is
 * checked on its own. A compile worker's answer says so (`unparsed`), its
 * copy of the plan being another object.
 */
export const UNPARSED: StepPlan = Object.freeze({ kind: 'transaction' });

function planOf(sql: string): StepPlan {
  let stmts: Array<{ stmt?: Json }>;
  try {
    stmts = (parseSync(sql) as unknown as { stmts?: Array<{ stmt?: Json }> }).stmts ?? [];
  } catch (err) {
    if (err instanceof RangeError) throw err; // nested too deeply: planUncached says so
    // a syntax error: PostgreSQL reports it itself when the step runs
    const e = err as { sqlDetails?: unknown; message?: unknown };
    if (e.sqlDetails !== undefined && !/memory|stack depth/i.test(String(e.message)))
      return UNPARSED;
    // anything else (the parser out of memory, say) leaves the text unchecked: it does not run
    return {
      kind: 'refuse',
      error: `the step's SQL could not be checked before it runs: ${(err as Error).message}`,
    };
  }
  for (const s of stmts) {
    const stmt = (s.stmt ?? {}) as { [k: string]: { [k: string]: Json } };
    const [type, body] = Object.entries(stmt)[0] ?? ['', {}];
    if (type === 'TransactionStmt') {
      return {
        kind: 'refuse',
        error:
          'transaction control statements (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, …) cannot be used in a workflow step: each step already runs in its own transaction',
      };
    }
    if (
      type === 'VariableSetStmt' &&
      (body['name'] === 'role' || body['name'] === 'session_authorization')
    ) {
      return {
        kind: 'refuse',
        error: `changing the role (${body['kind'] === 'VAR_RESET' ? 'RESET' : 'SET'} ${String(body['name']).toUpperCase().replace('_', ' ')}) is not allowed in a workflow step: steps run as the role that started the workflow`,
      };
    }
    if (type === 'DeclareCursorStmt' && (Number(body['options'] ?? 0) & CURSOR_OPT_HOLD) !== 0) {
      return {
        kind: 'refuse',
        error: 'holdable cursors (WITH HOLD) cannot be used in a workflow step',
      };
    }
    const rc = findRoleChange(body as Json);
    if (rc)
      return {
        kind: 'refuse',
        error: `changing the role (${rc}) is not allowed in a workflow step: steps run as the role that started the workflow`,
      };
  }
  if (stmts.length === 1) {
    const stmt = (stmts[0]?.stmt ?? {}) as { [k: string]: { [k: string]: Json } };
    const [type, body] = Object.entries(stmt)[0] ?? ['', {}];
    if (isRowless(sql, type, body)) return { kind: 'transaction', rowless: true };
    const params = JSON.stringify(body);
    if (type === 'VacuumStmt') return { kind: 'autocommit', why: 'VACUUM/ANALYZE' };
    if (type === 'IndexStmt' && body['concurrent'])
      return { kind: 'autocommit', why: 'CREATE INDEX CONCURRENTLY' };
    if (type === 'ReindexStmt' && params.includes('"concurrently"'))
      return { kind: 'autocommit', why: 'REINDEX CONCURRENTLY' };
    if (type === 'DropStmt' && body['concurrent'])
      return { kind: 'autocommit', why: 'DROP INDEX CONCURRENTLY' };
    if (
      [
        'CreatedbStmt',
        'DropdbStmt',
        'AlterSystemStmt',
        'CreateTableSpaceStmt',
        'DropTableSpaceStmt',
      ].includes(type)
    ) {
      return { kind: 'autocommit', why: type };
    }
  }
  return { kind: 'transaction' };
}
