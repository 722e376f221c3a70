/** A bounds-checked reader over one message body (never reads past its end). */
import { SqlState } from '../../db/sqlstate.js';

/**
 * A malformed message. `code` is the SQLSTATE PostgreSQL reports for it
 * (08P01 protocol_violation unless stated otherwise).
 */
export class ProtocolError extends Error {
  override readonly name: string = 'ProtocolError';
  readonly code: string;
  /** Which part of the message was malformed (for dfgate's log; PostgreSQL's text does not say). */
  readonly field: string | undefined;
  constructor(message: string, opts: { readonly code?: string; readonly field?: string } = {}) {
    super(message);
    this.code = opts.code ?? SqlState.ProtocolViolation;
    this.field = opts.field;
  }
}

/**
 * A framing error PostgreSQL reports only in its own log (COMMERROR) before
 * closing the connection without a word to the client: a bad message or
 * startup-packet length, a malformed CancelRequest. dfgate does the same.
 */
export class SilentClose extends ProtocolError {
  override readonly name = 'SilentClose';
}

export class Reader {
  private pos = 0;
  constructor(private readonly buf: Buffer) {}

  get remaining(): number {
    return this.buf.length - this.pos;
  }

  private need(n: number, what: string): void {
    // PostgreSQL's pq_getmsg* wording (src/backend/libpq/pqformat.c)
    if (n < 0 || this.pos + n > this.buf.length) {
      throw new ProtocolError(
        this.remaining === 0 && n === 1
          ? 'no data left in message'
          : 'insufficient data left in message',
        { field: what },
      );
    }
  }

  byte(what = 'byte'): number {
    this.need(1, what);
    return this.buf[this.pos++] as number;
  }

  /** An unsigned 16-bit count, as PostgreSQL reads counts (pq_getmsgint(msg, 2)). */
  uint16(what = 'uint16'): number {
    this.need(2, what);
    const v = this.buf.readUInt16BE(this.pos);
    this.pos += 2;
    return v;
  }

  int16(what = 'int16'): number {
    this.need(2, what);
    const v = this.buf.readInt16BE(this.pos);
    this.pos += 2;
    return v;
  }

  int32(what = 'int32'): number {
    this.need(4, what);
    const v = this.buf.readInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  /** A NUL-terminated string (UTF-8). */
  cstring(what = 'string'): string {
    const end = this.buf.indexOf(0, this.pos);
    if (end < 0) throw new ProtocolError('invalid string in message', { field: what });
    const s = this.buf.toString('utf8', this.pos, end);
    this.pos = end + 1;
    return s;
  }

  bytes(n: number, what = 'bytes'): Buffer {
    this.need(n, what);
    const b = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }

  rest(): Buffer {
    const b = this.buf.subarray(this.pos);
    this.pos = this.buf.length;
    return b;
  }

  end(what: string): void {
    if (this.remaining !== 0)
      throw new ProtocolError('invalid message format', {
        field: `${what}: ${this.remaining} unexpected trailing bytes`,
      });
  }
}

/** Builds one message: optional type byte, int32 length (counting itself), body. */
export class Writer {
  private parts: Buffer[] = [];
  private size = 0;

  byte(v: number): this {
    return this.push(Buffer.from([v & 0xff]));
  }
  int16(v: number): this {
    const b = Buffer.allocUnsafe(2);
    b.writeInt16BE(v);
    return this.push(b);
  }
  uint16(v: number): this {
    const b = Buffer.allocUnsafe(2);
    b.writeUInt16BE(v);
    return this.push(b);
  }
  int32(v: number): this {
    const b = Buffer.allocUnsafe(4);
    b.writeInt32BE(v);
    return this.push(b);
  }
  cstring(s: string): this {
    return this.push(Buffer.from(s + '\0', 'utf8'));
  }
  bytes(b: Buffer): this {
    return this.push(b);
  }
  private push(b: Buffer): this {
    this.parts.push(b);
    this.size += b.length;
    return this;
  }
  /** The framed message; `type` undefined for startup-phase packets. */
  finish(type?: number): Buffer {
    const head = Buffer.allocUnsafe(type === undefined ? 4 : 5);
    if (type === undefined) head.writeInt32BE(this.size + 4, 0);
    else {
      head[0] = type;
      head.writeInt32BE(this.size + 4, 1);
    }
    return Buffer.concat([head, ...this.parts], head.length + this.size);
  }
}
