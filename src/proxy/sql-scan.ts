/**
 * A small lexical pass over SQL text for transaction mode: splits a query
 * into its statements at top-level semicolons and blanks out what is not
 * code (string and identifier quotes, dollar quotes, comments) without
 * moving any offset, so keyword checks never match inside a literal.
 * It follows PostgreSQL's lexer (scan.l) for these tokens; it is no parser.
 *
 * It reads a JS string either of decoded text or of UTF-8 bytes one char per
 * byte (latin1: `buf.toString('latin1')`, a copy without decoding). Every token it
 * looks for is ASCII, and every non-ASCII character (a UTF-16 unit or a
 * UTF-8 byte, all >= 0x80) counts as an identifier character, as PostgreSQL
 * counts bytes \200-\377; so both views split the same text identically.
 * Literal and comment bodies are skipped with native indexOf, and the code
 * view is built from slices: a long statement costs about as much as copying it.
 * https://www.postgresql.org/docs/current/sql-syntax-lexical.html
 */

export interface ScannedStatement {
  /** Offsets of the statement in the scanned string, PostgreSQL whitespace trimmed. */
  readonly start: number;
  readonly end: number;
  /** The statement's text as the client wrote it (trimmed). */
  readonly text: string;
  /**
   * The same text with literals, quoted identifiers and comments blanked to
   * spaces, ASCII letters lowercased; as long as `text`, offsets aligned.
   */
  readonly code: string;
}

export interface ScanOptions {
  /**
   * standard_conforming_strings is off: a backslash escapes the next
   * character in every '…' string, not only in E'…' strings.
   */
  readonly backslashQuotes?: boolean | undefined;
}

const DOLLAR = 0x24; // $

/** PostgreSQL's whitespace: space, \t, \n, \v, \f, \r. */
function isSpace(c: number): boolean {
  return c === 0x20 || (c >= 0x09 && c <= 0x0d);
}

/** ident_start: [A-Za-z\200-\377_] (any non-ASCII unit here). */
function isIdentStart(c: number): boolean {
  return (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || c === 0x5f || c >= 0x80;
}

/** ident_cont: ident_start, digits and $. */
function isIdentCont(c: number): boolean {
  return isIdentStart(c) || (c >= 0x30 && c <= 0x39) || c === DOLLAR;
}

const SPACES = ' '.repeat(256);
function spaces(n: number): string {
  return n <= SPACES.length ? SPACES.slice(0, n) : ' '.repeat(n);
}

/** Lowercases ASCII letters only, keeping the length. */
function lowerAscii(s: string): string {
  const l = s.toLowerCase();
  if (l.length === s.length) return l;
  // a non-ASCII character whose lowercase is longer (U+0130): ASCII only, by hand
  return s.replace(/[A-Z]+/g, (m) => m.toLowerCase());
}

/**
 * The end (exclusive) of the dollar-quote tag starting at `i` (sql[i] is $),
 * or -1 if no tag starts there: $$ or $tag$ with tag [ident_start][ident_start|digit]*.
 */
function dollarTagEnd(sql: string, i: number): number {
  const n = sql.length;
  let j = i + 1;
  if (j < n && sql.charCodeAt(j) === DOLLAR) return j + 1;
  if (j >= n || !isIdentStart(sql.charCodeAt(j))) return -1;
  j++;
  while (j < n) {
    const c = sql.charCodeAt(j);
    if (c === DOLLAR) return j + 1;
    if (!isIdentStart(c) && !(c >= 0x30 && c <= 0x39)) return -1;
    j++;
  }
  return -1;
}

/** The end of a /* comment starting at `i` (comments nest), or the end of `sql`. */
function blockCommentEnd(sql: string, i: number): number {
  const n = sql.length;
  let depth = 1;
  let j = i + 2;
  while (depth > 0) {
    const open = sql.indexOf('/*', j);
    const close = sql.indexOf('*/', j);
    if (close < 0) return n;
    if (open >= 0 && open < close) {
      depth++;
      j = open + 2;
    } else {
      depth--;
      j = close + 2;
    }
  }
  return j;
}

/** The offset of the quote closing a '…' (or "…") body starting at `j`, or the end of `sql`. */
function quoteEnd(sql: string, j: number, q: string, escapes: boolean): number {
  const n = sql.length;
  for (;;) {
    const e = sql.indexOf(q, j);
    if (escapes) {
      const b = sql.indexOf('\\', j);
      if (b >= 0 && (e < 0 || b < e)) {
        j = b + 2;
        continue;
      }
    }
    if (e < 0) return n;
    if (e + 1 < n && sql.charCodeAt(e + 1) === q.charCodeAt(0)) {
      j = e + 2;
      continue;
    }
    return e;
  }
}

/** A statement found by splitStatements: offsets in the scanned string. */
export interface StatementSpan {
  /** PostgreSQL whitespace trimmed. */
  readonly start: number;
  readonly end: number;
}

/** Where the first word of a statement is: after whitespace and comments (`end` if none). */
export function headOf(sql: string, span: StatementSpan): number {
  let i = span.start;
  while (i < span.end) {
    const c = sql.charCodeAt(i);
    if (isSpace(c)) i++;
    else if (c === 0x2d && sql.charCodeAt(i + 1) === 0x2d) {
      const e = sql.indexOf('\n', i);
      i = e < 0 ? span.end : e;
    } else if (c === 0x2f && sql.charCodeAt(i + 1) === 0x2a) i = blockCommentEnd(sql, i);
    else return i;
  }
  return span.end;
}

/**
 * The lexer: calls `blank(from, to)` for each part of `sql` that is not code
 * (a literal's or quoted identifier's body without its quotes, a whole
 * dollar quote or comment) and `end(at)` at each top-level semicolon and at
 * the end. It jumps from one character that can start a token of interest
 * (' " $ ; -- /*) to the next with native indexOf; what lies between is code.
 */
function lex(
  sql: string,
  opts: ScanOptions,
  blank: (from: number, to: number) => void,
  end: (at: number) => void,
): void {
  const n = sql.length;
  const backslash = opts.backslashQuotes === true;
  // the next occurrence of each (-1: none left)
  let nQuote = -2;
  let nDquote = -2;
  let nDollar = -2;
  let nSemi = -2;
  let nLine = -2;
  let nBlock = -2;
  /** Where code resumed after the last literal, quoted identifier, dollar quote or comment. */
  let codeFrom = 0;
  /** The last $ that opened no dollar quote, and whether it was inside a name. */
  let lastDollar = -1;
  let lastDollarInName = false;
  let i = 0;
  for (;;) {
    if (nQuote !== -1 && nQuote < i) nQuote = sql.indexOf("'", i);
    if (nDquote !== -1 && nDquote < i) nDquote = sql.indexOf('"', i);
    if (nDollar !== -1 && nDollar < i) nDollar = sql.indexOf('$', i);
    if (nSemi !== -1 && nSemi < i) nSemi = sql.indexOf(';', i);
    if (nLine !== -1 && nLine < i) nLine = sql.indexOf('--', i);
    if (nBlock !== -1 && nBlock < i) nBlock = sql.indexOf('/*', i);
    let at = n;
    if (nQuote >= 0 && nQuote < at) at = nQuote;
    if (nDquote >= 0 && nDquote < at) at = nDquote;
    if (nDollar >= 0 && nDollar < at) at = nDollar;
    if (nSemi >= 0 && nSemi < at) at = nSemi;
    if (nLine >= 0 && nLine < at) at = nLine;
    if (nBlock >= 0 && nBlock < at) at = nBlock;
    if (at >= n) break;
    i = at;
    if (at === nLine) {
      const e = sql.indexOf('\n', i);
      const to = e < 0 ? n : e;
      blank(i, to);
      i = codeFrom = to;
    } else if (at === nBlock) {
      const to = blockCommentEnd(sql, i);
      blank(i, to);
      i = codeFrom = to;
    } else if (at === nQuote) {
      // E'…' (not the end of a name: xE'…' is the name xE, then a string) honours backslashes
      const p = i > codeFrom ? sql.charCodeAt(i - 1) : 0;
      const escapes =
        backslash ||
        ((p === 0x45 || p === 0x65) && !(i - 1 > codeFrom && isIdentCont(sql.charCodeAt(i - 2))));
      const j = quoteEnd(sql, i + 1, "'", escapes);
      blank(i + 1, Math.min(j, n));
      i = codeFrom = Math.min(j + 1, n);
    } else if (at === nDquote) {
      const j = quoteEnd(sql, i + 1, '"', false);
      blank(i + 1, Math.min(j, n));
      i = codeFrom = Math.min(j + 1, n);
    } else if (at === nSemi) {
      end(i);
      i++;
    } else {
      // $ inside a name opens nothing (ident_cont takes $: `a$q$` is one name); after a
      // number or a parameter it does (`1$q$…` and `$1$q$…` open a dollar quote), unless a
      // letter follows the digits: `1e$q$` and `$1E$q$` are one token of trailing junk, as
      // PostgreSQL's lexer reads them (an error, but no dollar quote). The name or number it
      // ends started after codeFrom, and goes back to the last $ at most.
      let k = i - 1;
      let letter = false;
      for (let ch = sql.charCodeAt(k); k >= codeFrom && k > lastDollar && isIdentCont(ch);) {
        letter ||= isIdentStart(ch);
        ch = sql.charCodeAt(--k);
      }
      const inName: boolean = letter || (k >= codeFrom && k === lastDollar && lastDollarInName);
      const t = inName ? -1 : dollarTagEnd(sql, i);
      if (t < 0) {
        lastDollar = i;
        lastDollarInName = inName;
        i++;
        continue;
      }
      const close = sql.indexOf(sql.slice(i, t), t);
      const to = close < 0 ? n : close + (t - i);
      blank(i, to);
      i = codeFrom = to;
    }
  }
  end(n);
}

/** Trims PostgreSQL whitespace off [start, end) of `sql`. */
function trimmed(sql: string, start: number, end: number): StatementSpan {
  let a = start;
  let b = end;
  while (a < b && isSpace(sql.charCodeAt(a))) a++;
  while (b > a && isSpace(sql.charCodeAt(b - 1))) b--;
  return { start: a, end: b };
}

/** Where each statement of `sql` is (empty ones left out), without building its code. */
export function splitStatements(sql: string, opts: ScanOptions = {}): StatementSpan[] {
  const out: StatementSpan[] = [];
  let from = 0;
  lex(
    sql,
    opts,
    () => undefined,
    (at) => {
      const t = trimmed(sql, from, at);
      if (t.end > t.start) out.push(t);
      from = at + 1;
    },
  );
  return out;
}

/** Statements of `sql` with their code, empty ones left out. */
export function scanStatements(sql: string, opts: ScanOptions = {}): ScannedStatement[] {
  const out: ScannedStatement[] = [];
  let parts: string[] = [];
  let from = 0;
  /** Start of the code not yet copied into `parts`. */
  let seg = 0;
  lex(
    sql,
    opts,
    (a, b) => {
      if (a > seg) parts.push(sql.slice(seg, a));
      if (b > a) parts.push(spaces(b - a));
      seg = b;
    },
    (at) => {
      if (at > seg) parts.push(sql.slice(seg, at));
      const code = parts.length === 1 ? (parts[0] as string) : parts.join('');
      parts = [];
      const t = trimmed(sql, from, at);
      if (t.end > t.start)
        out.push({
          ...t,
          text: sql.slice(t.start, t.end),
          code: lowerAscii(code.slice(t.start - from, t.end - from)),
        });
      from = seg = at + 1;
    },
  );
  return out;
}

const EXPRESSIONS = new Map<string, RegExp>();

/** Bytes read into one string by WordWatch: young-generation garbage, quick to collect. */
const WINDOW = 64 * 1024;

/**
 * Looks for any of a few ASCII words, in any letter case, in bytes that
 * arrive in parts (a long message as its chunks come in), reading them as
 * latin1 strings of at most WINDOW bytes: a string of a megabyte lands in
 * V8's old generation, and a few of them a second made the full collections
 * that pause the event loop twice as frequent (issue 13). Fed part by part,
 * the work is spread over the chunks as they arrive instead of falling on
 * the last one. A word split between two parts is found: the last bytes of
 * a part are kept.
 */
export class WordWatch {
  private readonly re: RegExp;
  private readonly longest: number;
  /** The last longest - 1 bytes fed (latin1). */
  private tail = '';
  private watching = false;
  private found = false;

  constructor(words: readonly string[]) {
    const source = words.map((w) => w.replace(/[^\w]/g, '\\$&')).join('|');
    // one expression per word list, shared by every client's watch
    this.re = EXPRESSIONS.get(source) ?? new RegExp(source, 'i');
    EXPRESSIONS.set(source, this.re);
    this.longest = Math.max(...words.map((w) => w.length));
  }

  /** Whether bytes [from, to) of `buf` hold one of the words (in one piece). */
  test(buf: Buffer, from: number, to: number): boolean {
    for (let at = from; at < to; at += WINDOW) {
      const start = Math.max(from, at - this.longest + 1);
      if (this.re.test(buf.toString('latin1', start, Math.min(to, at + WINDOW)))) return true;
    }
    return false;
  }

  /** The next bytes of a message (`first`: the start of a new one). */
  feed(buf: Buffer, from: number, to: number, first: boolean): void {
    if (first) {
      this.watching = true;
      this.found = false;
      this.tail = '';
    }
    if (!this.watching || this.found || to <= from) return;
    const keep = this.longest - 1;
    // a word across the boundary: the kept bytes and this part's first ones
    const seam = this.tail + buf.toString('latin1', from, Math.min(to, from + keep));
    if (this.re.test(seam) || this.test(buf, from, to)) {
      this.found = true;
      return;
    }
    this.tail = to - from >= keep ? buf.toString('latin1', to - keep, to) : seam.slice(-keep);
  }

  /**
   * What was found in the message fed since its start (then forgotten):
   * undefined if none was fed (it arrived in one piece).
   */
  take(): boolean | undefined {
    const seen = this.watching ? this.found : undefined;
    this.watching = false;
    return seen;
  }
}

const DF_MARKS = ['df.', 'DF.', 'Df.', 'dF.', '"df".'].map((m) => Buffer.from(m));

/** Does a Query or Parse body mention df. (any case, or quoted)? Native scans only. */
export function mentionsDf(body: Buffer): boolean {
  for (const m of DF_MARKS) if (body.indexOf(m) >= 0) return true;
  return false;
}
