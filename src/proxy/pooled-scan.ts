/**
 * What transaction mode looks for in a client's statements (PooledClient,
 * pooled.ts): the statements whose session state could not follow the client
 * to another server connection (refused with 0A000), and the SET and RESET
 * statements it carries. A lexical look at the bytes, see lookAt.
 */
import { SqlState } from '../db/sqlstate.js';
import { refusal } from './edge/errors.js';
import {
  headOf,
  scanStatements,
  splitStatements,
  WordWatch,
  type ScanOptions,
  type ScannedStatement,
} from './sql-scan.js';

/** Reported parameters dfgate sets on a lent connection when they differ from the client's. */
export const REPORTED_SYNC = [
  'application_name',
  'client_encoding',
  'DateStyle',
  'IntervalStyle',
  'TimeZone',
  'standard_conforming_strings',
  'search_path',
] as const;
/** Settings kept in step through ParameterStatus rather than by tracking SET (lowercase). */
const REPORTED_LOWER = new Set(
  REPORTED_SYNC.filter((k) => k !== 'search_path').map((k) => k.toLowerCase()),
);

export type SetOp =
  | { readonly kind: 'set'; readonly key: string; readonly sql: string }
  | { readonly kind: 'reset'; readonly key: string }
  | { readonly kind: 'resetAll' };

const HINT =
  'Use --pool-mode session for clients that need it (a second dfgate, or a separate listener), or keep the state inside one transaction.';

export function refuse(what: string, hint = HINT): Map<string, string> {
  return refusal(
    SqlState.FeatureNotSupported,
    `${what} is not supported in dfgate's transaction pooling mode (--pool-mode transaction): the next transaction may run on another server connection`,
    hint,
  );
}

/**
 * Words one of which a statement transaction mode looks at contains (a cheap
 * test of the raw bytes before scanning): the first words below, and what
 * refusalOf finds anywhere in a statement (advisory locks, INTO TEMP).
 */
export const MAYBE = 'listen prepare deallocate discard declare advisory_lock temp set'.split(' ');
const maybe = new WordWatch(MAYBE);
/** First words of the statements looked at (CREATE only with TEMP, which is looked for anywhere). */
const HEAD = /(?:listen|prepare|set|reset|deallocate|discard|declare)\b/iy;
const ANYWHERE = /advisory_lock|temp/gi;

/**
 * The statements of a query text (`body` bytes [from, to)) that transaction
 * mode must look at, decoded, and how many statements there are in all;
 * undefined if none (`seen`: whether a word of MAYBE occurs, if known from
 * the message's chunks). The text is split as bytes (one latin1 char per byte,
 * no decoding, see sql-scan.ts); a statement is looked at if it starts with
 * a word of HEAD or holds a word of ANYWHERE (even in a literal: the check
 * on its code decides). Only those are decoded and scanned again as text,
 * so that offsets in `text` and `code` line up. Leading comments are cut
 * from both, so `code` starts with the statement's first word.
 */
export function lookAt(
  body: Buffer,
  from: number,
  to: number,
  opts: ScanOptions,
  seen: boolean | undefined,
): { readonly count: number; readonly statements: ScannedStatement[] } | undefined {
  if (!(seen ?? maybe.test(body, from, to))) return undefined;
  const bytes = body.toString('latin1', from, to);
  const spans = splitStatements(bytes, opts);
  // where ANYWHERE matches, in order (one pass over the text)
  const hits: number[] = [];
  ANYWHERE.lastIndex = 0;
  for (let m = ANYWHERE.exec(bytes); m; m = ANYWHERE.exec(bytes)) hits.push(m.index);
  const statements: ScannedStatement[] = [];
  let h = 0;
  for (const s of spans) {
    while (h < hits.length && (hits[h] as number) < s.start) h++;
    HEAD.lastIndex = headOf(bytes, s);
    if (!HEAD.test(bytes) && !(h < hits.length && (hits[h] as number) < s.end)) continue;
    const text = body.toString('utf8', from + s.start, from + s.end);
    for (const t of scanStatements(text, opts)) {
      const lead = leadingBlanks(t.code);
      statements.push({
        start: t.start + lead,
        end: t.end,
        text: t.text.slice(lead),
        code: t.code.slice(lead),
      });
    }
  }
  return statements.length ? { count: spans.length, statements } : undefined;
}

/** Length of the blanks (comments, PostgreSQL whitespace) a statement's code starts with. */
function leadingBlanks(code: string): number {
  return /^[ \t\n\v\f\r]*/.exec(code)?.[0].length ?? 0;
}

export function refusalOf(c: string): Map<string, string> | undefined {
  if (/^listen\b/.test(c)) return refuse('LISTEN');
  if (/^prepare\b/.test(c))
    return refuse(
      'PREPARE (SQL-level)',
      'Use protocol-level prepared statements (named queries of your driver), which dfgate carries between connections, or --pool-mode session.',
    );
  if (/\bpg_(try_)?advisory_lock(_shared)?\s*\(/.test(c))
    return refuse(
      'a session-level advisory lock',
      'Use pg_advisory_xact_lock (held until the transaction ends), or --pool-mode session.',
    );
  if (/^declare\b[\s\S]*\bwith\s+hold\b/.test(c)) return refuse('a WITH HOLD cursor');
  if (
    (/^create\s+(?:(?:global|local)\s+)?(?:temp|temporary)\s+(?:table|view|sequence)\b/.test(c) &&
      !/\bon\s+commit\s+drop\b/.test(c)) ||
    /\binto\s+(?:temp|temporary)\b/.test(c)
  )
    return refuse(
      'a temporary object that outlives its transaction',
      'Create it with ON COMMIT DROP inside the transaction that uses it, or use --pool-mode session.',
    );
  if (/^set\s+session\s+authorization\b/.test(c)) return refuse('SET SESSION AUTHORIZATION');
  if (/^set\s+session\s+characteristics\b/.test(c)) return refuse('SET SESSION CHARACTERISTICS');
  return undefined;
}

/** The session setting a SET or RESET statement changes (undefined: none to track). */
export function setOp(text: string, c: string): SetOp | 'refuse' | undefined {
  if (/^set\s+local\b/.test(c) || /^set\s+(?:session\s+)?(?:transaction|constraints)\b/.test(c))
    return undefined; // ends with the transaction
  if (/^(?:set\s+(?:session\s+)?time\s+zone|reset\s+time\s+zone)\b/.test(c)) return undefined; // TimeZone is reported
  if (/^reset\s+all\s*$/.test(c)) return { kind: 'resetAll' };
  const role = /^set\s+(?:session\s+)?role\s+/.exec(c);
  if (role) return setOrReset('role', text, text.slice(role[0].length));
  const reset = /^reset\s+([a-z_][\w.$]*|"[^"]*")\s*$/.exec(c);
  if (reset) {
    const key = unquote(text.slice(6).trim()).toLowerCase();
    return REPORTED_LOWER.has(key) ? undefined : { kind: 'reset', key };
  }
  const m = /^set\s+(?:session\s+)?([a-z_][\w.$]*|"[^"]*")\s*(?:=|\bto\b)\s*/.exec(c);
  if (!m) return /^set\b/.test(c) ? 'refuse' : undefined;
  const nameText = text.slice(
    m[0].indexOf(m[1] as string),
    m[0].indexOf(m[1] as string) + (m[1] as string).length,
  );
  const key = unquote(nameText).toLowerCase();
  if (REPORTED_LOWER.has(key)) return undefined;
  return setOrReset(key, text, text.slice(m[0].length));
}

function setOrReset(key: string, stmt: string, value: string): SetOp {
  return /^default\s*$/i.test(value.trim())
    ? { kind: 'reset', key }
    : { kind: 'set', key, sql: stmt };
}

export function unquote(s: string): string {
  const t = s.trim();
  return t.startsWith('"') ? t.slice(1, -1).replace(/""/g, '"') : t.toLowerCase();
}

export function lit(s: string): string {
  return `'${s.replace(/'/g, "''")}'`;
}
