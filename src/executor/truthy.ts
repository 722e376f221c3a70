/** Truthiness of node results (spec §6.4). */

export function truthyValue(v: unknown): boolean {
  if (v === null || v === undefined) return false;
  if (typeof v === 'boolean') return v;
  if (typeof v === 'number') return v !== 0;
  if (typeof v === 'string') {
    const s = v.trim().toLowerCase();
    if (s === 'true' || s === 't' || s === 'yes') return true;
    if (s === 'false' || s === 'f' || s === 'no' || s === '') return false;
    const n = parseFloatLike(s);
    if (n !== undefined) return n !== 0 || Number.isNaN(n);
    return true;
  }
  if (Array.isArray(v)) return v.length > 0;
  if (typeof v === 'object') return Object.keys(v as object).length > 0;
  return false;
}

/** Rust's f64 parsing accepts nan, inf, infinity, exponents and a leading sign. */
function parseFloatLike(s: string): number | undefined {
  if (/^[+-]?(nan|inf|infinity)$/.test(s))
    return s.includes('nan') ? NaN : s.startsWith('-') ? -Infinity : Infinity;
  if (/^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/.test(s)) return Number(s);
  return undefined;
}

/** Truthiness of a result text: a SQL result by its first column of its first row. */
export function truthyResult(text: string): boolean {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return truthyValue(text);
  }
  if (
    typeof v === 'object' &&
    v !== null &&
    !Array.isArray(v) &&
    Array.isArray((v as { rows?: unknown }).rows)
  ) {
    const rows = (v as { rows: unknown[] }).rows;
    if (rows.length === 0) return false;
    const first = rows[0];
    if (typeof first === 'object' && first !== null && !Array.isArray(first)) {
      const keys = Object.keys(first);
      if (keys.length > 0)
        return truthyValue((first as Record<string, unknown>)[keys[0] as string]);
    }
    return true;
  }
  return truthyValue(v);
}
