/**
 * A small lexical pass over SQL text for transaction mode: splits a query
 * into its statements at top-level semicolons and blanks out what is not
 * code (string and identifier quotes, dollar quotes, comments) without
 * moving any offset, so keyword checks never match inside a literal.
 * It follows PostgreSQL's lexer for these tokens (standard_conforming_strings
 * on; E'' strings honour backslashes); it is no parser.
 */

export interface ScannedStatement {
  /** The statement's text as the client wrote it (trimmed). */
  readonly text: string;
  /** The same text, lowercased, with literals, quoted identifiers and comments blanked to spaces. */
  readonly code: string;
}

/** Statements of `sql`, empty ones left out. */
export function scanStatements(sql: string): ScannedStatement[] {
  const n = sql.length;
  const code: string[] = [];
  const out: ScannedStatement[] = [];
  let start = 0;
  let i = 0;
  const blank = (from: number, to: number): void => {
    for (let k = from; k < to; k++) code.push(sql[k] === '\n' ? '\n' : ' ');
  };
  const flush = (end: number): void => {
    const text = sql.slice(start, end);
    const c = code.join('');
    code.length = 0;
    const lead = text.length - text.trimStart().length;
    const trimmed = text.trim();
    if (trimmed)
      out.push({ text: trimmed, code: c.slice(lead, lead + trimmed.length).toLowerCase() });
  };
  while (i < n) {
    const ch = sql[i] as string;
    const next = sql[i + 1];
    if (ch === '-' && next === '-') {
      const end = sql.indexOf('\n', i);
      const to = end < 0 ? n : end;
      blank(i, to);
      i = to;
    } else if (ch === '/' && next === '*') {
      let depth = 1;
      let j = i + 2;
      while (j < n && depth > 0) {
        if (sql[j] === '/' && sql[j + 1] === '*') {
          depth++;
          j += 2;
        } else if (sql[j] === '*' && sql[j + 1] === '/') {
          depth--;
          j += 2;
        } else j++;
      }
      blank(i, j);
      i = j;
    } else if (ch === "'") {
      const escapes = i > 0 && /[eE]/.test(sql[i - 1] as string) && !/\w/.test(sql[i - 2] ?? ' ');
      let j = i + 1;
      while (j < n) {
        if (escapes && sql[j] === '\\') j += 2;
        else if (sql[j] === "'" && sql[j + 1] === "'") j += 2;
        else if (sql[j] === "'") break;
        else j++;
      }
      code.push("'");
      blank(i + 1, Math.min(j, n));
      if (j < n) code.push("'");
      i = Math.min(j + 1, n);
    } else if (ch === '"') {
      let j = i + 1;
      while (j < n) {
        if (sql[j] === '"' && sql[j + 1] === '"') j += 2;
        else if (sql[j] === '"') break;
        else j++;
      }
      code.push('"');
      blank(i + 1, Math.min(j, n));
      if (j < n) code.push('"');
      i = Math.min(j + 1, n);
    } else if (ch === '$' && !/[\w$]/.test(sql[i - 1] ?? ' ')) {
      const m = /^\$([A-Za-z_\u0080-\uffff][\w\u0080-\uffff]*)?\$/.exec(sql.slice(i, i + 64));
      if (!m) {
        code.push(ch);
        i++;
        continue;
      }
      const tag = m[0];
      const end = sql.indexOf(tag, i + tag.length);
      const to = end < 0 ? n : end + tag.length;
      blank(i, to);
      i = to;
    } else if (ch === ';') {
      flush(i);
      start = i + 1;
      i++;
    } else {
      code.push(ch);
      i++;
    }
  }
  flush(n);
  return out;
}
