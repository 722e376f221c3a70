/** Reading df.start's arguments out of a Bind message (text and binary formats). */
import { isUtf8 } from 'node:buffer';
import { SqlState } from '../../db/sqlstate.js';
import type { NewCall, StartParam } from '../../dsl/edge.js';
import type { FrontendMessage } from '../protocol/frontend.js';
import { refusal } from './errors.js';

export type BindMessage = Extract<FrontendMessage, { type: 'Bind' }>;

export class BindRefusal extends Error {
  constructor(
    readonly fields: ReadonlyMap<string, string>,
    /** Leave the Bind to the server, which reports the problem itself. */
    readonly server = false,
  ) {
    super(fields.get('M'));
  }
}

/** Types whose binary format is their text (text, varchar, name, unknown, bpchar) and "unspecified". */
const TEXT_LIKE = new Set([0, 25, 1043, 19, 705, 1042]);

/** A Bind parameter as text (NULL and binary values of other types: undefined). */
export function textParam(
  m: BindMessage,
  i: number,
  paramTypes: readonly number[],
): string | undefined {
  const v = m.params[i];
  if (!v || !isUtf8(v)) return undefined; // invalid UTF-8: the server refuses it (22021)
  return paramFormat(m, i) === 0 || TEXT_LIKE.has(paramTypes[i] ?? 0)
    ? v.toString('utf8')
    : undefined;
}

/** The format code of Bind parameter i (0 text, 1 binary), as the protocol assigns them. */
function paramFormat(m: BindMessage, i: number): number {
  return m.paramFormats.length <= 1 ? (m.paramFormats[0] ?? 0) : (m.paramFormats[i] ?? 0);
}

/** df.start's arguments of a 'new' call from the constants and the values of a Bind. */
export function boundArgs(
  call: NewCall,
  m: BindMessage,
  paramTypes: readonly number[],
): Map<StartParam, string | null> {
  const out = new Map<StartParam, string | null>();
  for (const [name, a] of call.args) {
    if (name === 'transaction_mode') continue;
    if ('value' in a) {
      out.set(name, a.value);
      continue;
    }
    const i = a.param - 1;
    if (i < 0 || i >= m.params.length) throw new BindRefusal(new Map(), true);
    const v = m.params[i] ?? null;
    if (v === null) {
      out.set(name, null);
      continue;
    }
    // max_attempts may come as a binary integer; everything else is text
    if (paramFormat(m, i) !== 0 && name === 'max_attempts' && (v.length === 4 || v.length === 8)) {
      out.set(name, v.length === 4 ? String(v.readInt32BE(0)) : v.readBigInt64BE(0).toString());
      continue;
    }
    if (!isUtf8(v)) throw new BindRefusal(new Map(), true); // the server's 22021
    const text = textParam(m, i, paramTypes);
    if (text === undefined)
      throw new BindRefusal(
        refusal(
          SqlState.FeatureNotSupported,
          `df.start(..., transaction_mode => 'new') through dfgate takes ${name} in text format; this Bind sends it in binary`,
        ),
      );
    out.set(name, text);
  }
  return out;
}
