/**
 * SQL step results (spec §6.2): rows as JSON objects by column type, from
 * the server's text format (so int8 and numeric never pass through a JS
 * number). Returns the in-memory result text {"rows":[…],"row_count":n}.
 */

export class EncodeError extends Error {
  override readonly name = 'EncodeError';
}

export interface Column {
  readonly name: string;
  readonly typeOid: number;
}

const SUPPORTED =
  'bool, int2, int4, int8, float4, float8, text, varchar, numeric, uuid, timestamptz, timestamp, date, jsonb, json, void';

/** Upper-case names of common unsupported types, for the error message. */
const TYPE_NAMES: Readonly<Record<number, string>> = {
  17: 'BYTEA',
  18: '"CHAR"',
  26: 'OID',
  142: 'XML',
  650: 'CIDR',
  651: 'CIDR[]',
  790: 'MONEY',
  829: 'MACADDR',
  869: 'INET',
  1000: 'BOOL[]',
  1001: 'BYTEA[]',
  1005: 'INT2[]',
  1007: 'INT4[]',
  1009: 'TEXT[]',
  1015: 'VARCHAR[]',
  1016: 'INT8[]',
  1021: 'FLOAT4[]',
  1022: 'FLOAT8[]',
  1083: 'TIME',
  1115: 'TIMESTAMP[]',
  1182: 'DATE[]',
  1185: 'TIMESTAMPTZ[]',
  1186: 'INTERVAL',
  1231: 'NUMERIC[]',
  1266: 'TIMETZ',
  1560: 'BIT',
  1562: 'VARBIT',
  2249: 'RECORD',
  2287: 'RECORD[]',
  2951: 'UUID[]',
  3807: 'JSONB[]',
  3904: 'INT4RANGE',
  3906: 'NUMRANGE',
  3908: 'TSRANGE',
  3910: 'TSTZRANGE',
  3912: 'DATERANGE',
  3926: 'INT8RANGE',
  3614: 'TSVECTOR',
  3615: 'TSQUERY',
  600: 'POINT',
  1028: 'OID[]',
  199: 'JSON[]',
  1014: 'BPCHAR[]',
  1003: 'NAME[]',
};

function typeName(oid: number): string {
  return TYPE_NAMES[oid] ?? `OID ${oid}`;
}

/** Rust/serde-style float printing: integral values keep ".0", exponents without "+". */
function printFloat(x: number): string | null {
  if (!Number.isFinite(x)) return null;
  let s = String(x);
  if (/e/.test(s)) s = s.replace('e+', 'e');
  else if (!s.includes('.')) s += '.0';
  return s;
}

/** 0, 3, 6 or 9 fraction digits, as needed. */
function fraction(frac: string): string {
  const digits = (frac + '000000000').slice(0, 9);
  const n = Number(digits);
  if (n === 0) return '';
  if (n % 1_000_000 === 0) return '.' + digits.slice(0, 3);
  if (n % 1_000 === 0) return '.' + digits.slice(0, 6);
  return '.' + digits;
}

const TS =
  /^(\d{4,})-(\d\d)-(\d\d)[ T](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:([+-])(\d\d)(?::?(\d\d))?(?::?(\d\d))?)?$/;

function timestamptz(text: string, col: string): string {
  const m = TS.exec(text);
  if (!m || !m[8])
    throw new EncodeError(
      `Failed to decode TIMESTAMPTZ column '${col}': cannot represent '${text}'`,
    );
  const sign = m[8] === '-' ? -1 : 1;
  const offsetMs =
    sign * ((Number(m[9]) * 60 + Number(m[10] ?? 0)) * 60 + Number(m[11] ?? 0)) * 1000;
  const local = Date.UTC(
    Number(m[1]),
    Number(m[2]) - 1,
    Number(m[3]),
    Number(m[4]),
    Number(m[5]),
    Number(m[6]),
  );
  const d = new Date(local - offsetMs);
  const iso = d.toISOString().slice(0, 19);
  return `${iso}${fraction(m[7] ?? '')}+00:00`;
}

function timestamp(text: string, col: string): string {
  const m = TS.exec(text);
  if (!m || m[8])
    throw new EncodeError(`Failed to decode TIMESTAMP column '${col}': cannot represent '${text}'`);
  return `${m[1]}-${m[2]}-${m[3]}T${m[4]}:${m[5]}:${m[6]}${fraction(m[7] ?? '')}`;
}

/** The JSON text of one value. */
function encodeValue(oid: number, text: string, col: string): string {
  switch (oid) {
    case 16:
      return text === 't' ? 'true' : 'false';
    case 20:
    case 21:
    case 23:
      return text;
    case 700:
      return printFloat(Math.fround(Number(text))) ?? 'null';
    case 701:
      return printFloat(Number(text)) ?? 'null';
    case 25:
    case 1043:
    case 1042:
    case 19:
    case 2950:
      return JSON.stringify(text);
    case 1700:
      if (!/^-?\d/.test(text))
        throw new EncodeError(
          `Failed to decode NUMERIC column '${col}': ${text} cannot be represented`,
        );
      return JSON.stringify(text);
    case 1184:
      return JSON.stringify(timestamptz(text, col));
    case 1114:
      return JSON.stringify(timestamp(text, col));
    case 1082:
      if (!/^\d{4}-\d\d-\d\d$/.test(text))
        throw new EncodeError(`Failed to decode DATE column '${col}': cannot represent '${text}'`);
      return JSON.stringify(text);
    case 114:
    case 3802:
      return compactJson(text);
    case 2278:
      return 'null';
    default:
      throw new EncodeError(
        `Unsupported column type '${typeName(oid)}' for column '${col}'. Supported types: ${SUPPORTED}.`,
      );
  }
}

/** jsonb text has spaces after ':' and ','; results are compact. */
export function compactJson(text: string): string {
  let out = '';
  let inStr = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i] as string;
    if (inStr) {
      out += c;
      if (c === '\\') out += text[++i] ?? '';
      else if (c === '"') inStr = false;
    } else if (c === '"') {
      inStr = true;
      out += c;
    } else if (c !== ' ' && c !== '\n' && c !== '\t' && c !== '\r') out += c;
  }
  return out;
}

/**
 * Encodes rows one at a time (the step reader streams them and counts the
 * bytes as it goes). Of columns sharing a name only the first is kept, as in
 * a JSON object built column by column.
 */
export class RowEncoder {
  private readonly keep: ReadonlyArray<{ readonly i: number; readonly key: string }>;

  constructor(private readonly columns: readonly Column[]) {
    const seen = new Set<string>();
    const keep: Array<{ i: number; key: string }> = [];
    columns.forEach((c, i) => {
      if (!seen.has(c.name)) {
        seen.add(c.name);
        keep.push({ i, key: `${JSON.stringify(c.name)}:` });
      }
    });
    this.keep = keep;
  }

  /** The JSON object text of one row. */
  row(values: ReadonlyArray<string | null>): string {
    let out = '{';
    for (let k = 0; k < this.keep.length; k++) {
      const { i, key } = this.keep[k] as { i: number; key: string };
      const c = this.columns[i] as Column;
      const v = values[i];
      out +=
        (k > 0 ? ',' : '') +
        key +
        (v === null || v === undefined ? 'null' : encodeValue(c.typeOid, v, c.name));
    }
    return out + '}';
  }
}

/** The result text around the rows: `{"rows":[` … `],"row_count":n}`. */
export const RESULT_HEAD = '{"rows":[';
export function resultTail(rowCount: number): string {
  return `],"row_count":${rowCount}}`;
}

export function encodeRows(
  columns: readonly Column[],
  rows: ReadonlyArray<ReadonlyArray<string | null>>,
): string {
  const enc = new RowEncoder(columns);
  return RESULT_HEAD + rows.map((r) => enc.row(r)).join(',') + resultTail(rows.length);
}
