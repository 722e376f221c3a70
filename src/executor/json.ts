/**
 * A JSON reader that keeps what JSON.parse loses: the exact text of numbers
 * (int8 and numeric must not pass through a JS number) and object key order
 * (including integer-like keys). Used for substitution and result handling.
 */

export type JValue =
  | { readonly t: 'null' }
  | { readonly t: 'bool'; readonly v: boolean }
  | { readonly t: 'num'; readonly v: string }
  | { readonly t: 'str'; readonly v: string }
  | { readonly t: 'arr'; readonly v: readonly JValue[] }
  | { readonly t: 'obj'; readonly v: ReadonlyArray<readonly [string, JValue]> };

export class JsonError extends Error {
  override readonly name = 'JsonError';
}

export function parseJson(text: string): JValue {
  let i = 0;
  const ws = (): void => {
    while (i < text.length && ' \t\n\r'.includes(text[i] as string)) i++;
  };
  const fail = (what: string): never => {
    throw new JsonError(`${what} at position ${i}`);
  };
  const value = (): JValue => {
    ws();
    const c = text[i];
    if (c === '{') {
      i++;
      const entries: Array<readonly [string, JValue]> = [];
      ws();
      if (text[i] === '}') {
        i++;
        return { t: 'obj', v: entries };
      }
      for (;;) {
        ws();
        if (text[i] !== '"') fail('expected a key');
        const k = str();
        ws();
        if (text[i] !== ':') fail('expected ":"');
        i++;
        entries.push([k, value()]);
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === '}') {
          i++;
          return { t: 'obj', v: entries };
        }
        fail('expected "," or "}"');
      }
    }
    if (c === '[') {
      i++;
      const items: JValue[] = [];
      ws();
      if (text[i] === ']') {
        i++;
        return { t: 'arr', v: items };
      }
      for (;;) {
        items.push(value());
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === ']') {
          i++;
          return { t: 'arr', v: items };
        }
        fail('expected "," or "]"');
      }
    }
    if (c === '"') return { t: 'str', v: str() };
    if (text.startsWith('true', i)) {
      i += 4;
      return { t: 'bool', v: true };
    }
    if (text.startsWith('false', i)) {
      i += 5;
      return { t: 'bool', v: false };
    }
    if (text.startsWith('null', i)) {
      i += 4;
      return { t: 'null' };
    }
    const m = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(i, i + 400));
    if (!m) return fail('unexpected character');
    i += m[0].length;
    return { t: 'num', v: m[0] };
  };
  const str = (): string => {
    const start = i;
    i++;
    let simple = true;
    while (i < text.length && text[i] !== '"') {
      if (text[i] === '\\') {
        simple = false;
        i += 2;
      } else i++;
    }
    if (i >= text.length) fail('unterminated string');
    i++;
    const raw = text.slice(start, i);
    return simple ? raw.slice(1, -1) : (JSON.parse(raw) as string);
  };
  const v = value();
  ws();
  if (i !== text.length) fail('trailing characters');
  return v;
}

export function tryParseJson(text: string): JValue | undefined {
  try {
    return parseJson(text);
  } catch {
    return undefined;
  }
}

/** Compact JSON text. */
export function stringify(v: JValue): string {
  switch (v.t) {
    case 'null':
      return 'null';
    case 'bool':
      return v.v ? 'true' : 'false';
    case 'num':
      return v.v;
    case 'str':
      return JSON.stringify(v.v);
    case 'arr':
      return '[' + v.v.map(stringify).join(',') + ']';
    case 'obj':
      return '{' + v.v.map(([k, x]) => JSON.stringify(k) + ':' + stringify(x)).join(',') + '}';
  }
}

export function field(v: JValue, key: string): JValue | undefined {
  if (v.t !== 'obj') return undefined;
  let found: JValue | undefined;
  for (const [k, x] of v.v) if (k === key) found = x; // last one wins, as in most parsers
  return found;
}
