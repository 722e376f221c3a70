/**
 * Framing of typed protocol messages (1 type byte, int32 length counting
 * itself, body) over a byte stream split into arbitrary chunks.
 *
 * The hot path copies nothing: messages the caller does not ask to inspect
 * are forwarded as slices of the chunk they arrived in (a whole chunk when it
 * holds only such messages), their bodies never read. A message the caller
 * inspects is handed over complete (a slice when it sits inside one chunk,
 * else assembled into a buffer allocated once from its length), and the
 * caller may replace or drop it. The length is checked against the maximum
 * message size on the header, before anything is buffered. A message that
 * spans chunks is held as slices of the chunks it arrived in (small ones
 * copied together), so that a caller can forward it as it arrived, without
 * a copy the size of the message (transaction mode holds a long Query until
 * it has looked at all of it).
 *
 * An inspected message longer than the framer's `inspectMax` is not
 * assembled: its first bytes are kept (at most `inspectMax` of its body) and
 * handed to the `truncated` hook, then the message streams through like any
 * other (its kept bytes possibly replaced, its name rewritten, say), or is
 * dropped as it streams. Memory held per stream stays bounded by
 * `inspectMax` whatever the peer sends.
 */
import { SqlState } from '../../db/sqlstate.js';
import { ProtocolError, SilentClose } from './reader.js';

export class MessageTooLarge extends ProtocolError {
  constructor(
    readonly type: number,
    readonly size: number,
    readonly max: number,
  ) {
    super(
      `message of type ${JSON.stringify(String.fromCharCode(type))} is ${size} bytes, over the ${max}-byte limit`,
      { code: SqlState.ProgramLimitExceeded },
    );
  }
}

/** A replacement decided asynchronously: forwarded, in order, once it resolves. */
export type Deferred = () => Promise<Buffer[]>;
export type Piece = Buffer | Deferred;

/** What becomes of an inspected message too long to assemble (FramerHooks.truncated). */
export interface Cut {
  /**
   * Forwarded instead of the kept bytes (type byte and length included, so
   * it may declare another length: a renamed Bind); undefined: them as they are.
   */
  readonly head?: Piece | undefined;
  /** Drop the rest of the message as it streams (`head` then stands for all of it). */
  readonly drop?: boolean | undefined;
  /** Each further part of the message as it streams by (bytes [from, to) of `src`, not to be kept). */
  readonly rest?: ((src: Buffer, from: number, to: number) => void) | undefined;
  /** The message has gone by: pieces to forward right after it. */
  readonly end?: (() => Piece[]) | undefined;
}

export interface FramerHooks {
  /** Whether a message of this type and length (as in its header) must be seen whole. Called once per message. */
  inspect(type: number, length: number): boolean;
  /**
   * A complete inspected message: `raw` is the framed message, `body` its
   * payload. Return undefined to forward `raw`, a buffer to forward instead,
   * a Deferred to decide later (what follows waits for it), or null to drop it.
   */
  message(type: number, body: Buffer, raw: Buffer): Piece | null | undefined;
  /**
   * Optional check of every header (type byte and length) before it is
   * forwarded; called before the length checks, so that an unknown type is
   * reported as such whatever its length (PostgreSQL reads the type first).
   */
  header?(type: number, length: number): void;
  /**
   * Optional: the bytes [from, to) of `src` were added to an inspected
   * message being assembled across chunks (`first`: its first ones, the
   * header included), so that a long message can be looked at as it
   * arrives. `src` must not be kept. A message within one chunk gets none.
   */
  part?(type: number, src: Buffer, from: number, to: number, first: boolean): void;
  /**
   * Optional: a complete inspected message that spanned chunks, as its parts
   * (slices of those chunks, in order; the first starts with the type byte).
   * Return the pieces to forward instead, or undefined to have it joined
   * into one buffer and handed to `message`.
   */
  assembled?(type: number, parts: readonly Buffer[]): Piece[] | undefined;
  /**
   * Optional: an inspected message whose body is longer than `inspectMax`
   * (see Framer), which is never assembled nor handed to `message`, `part` or
   * `assembled`. Once its first `inspectMax` body bytes are in, they are
   * handed over here (`head`, a copy the hook may keep; `length`, the whole
   * body's; `framed`, the kept bytes from the type byte on, header
   * included). Return undefined to forward the message unchanged as it
   * streams (the bytes kept first), null to drop it, or a Cut. Without this
   * hook it is forwarded unchanged.
   */
  truncated?(type: number, head: Buffer, length: number, framed: Buffer): Cut | null | undefined;
}

/** Parts of an inspected message at least this long are kept as slices of their chunk... */
const MIN_PART = 16 * 1024;
/** ...shorter ones are copied together into buffers of this size (at most). */
const JOINED_PART = 64 * 1024;

export class Framer {
  private readonly head = Buffer.alloc(5);
  private headFill = 0;
  /** Body bytes still to come of the current message. */
  private remaining = 0;
  /** The inspected message being assembled across chunks: its parts so far. */
  private whole: Buffer[] | undefined;
  private wholeFill = 0;
  private wholeType = 0;
  /** Where short parts of it are copied together. */
  private joined: Buffer | undefined;
  private joinedFill = 0;
  /** An inspected message over `inspectMax`: its first bytes (header included) until they are handed over. */
  private cut: Buffer | undefined;
  private cutFill = 0;
  private cutType = 0;
  private cutLength = 0;
  /** The rest of the current message is dropped, not forwarded (`truncated` returned null). */
  private dropping = false;
  /** The Cut of the long message now streaming by, if it watches the rest or its end. */
  private streaming: Cut | undefined;

  /**
   * `maxMessageSize`: the longest body accepted at all (longer is an error);
   * `inspectMax`: the longest body of an inspected message that is assembled
   * whole (longer ones go to `truncated`).
   */
  constructor(
    private readonly hooks: FramerHooks,
    private readonly maxMessageSize = Number.POSITIVE_INFINITY,
    private readonly inspectMax = Number.POSITIVE_INFINITY,
  ) {}

  /** True between messages (nothing partial held or half-forwarded). */
  get atBoundary(): boolean {
    return this.headFill === 0 && this.remaining === 0 && this.whole === undefined;
  }

  /** Starts keeping the first bytes of an inspected message of `len` (as in its header) over `inspectMax`. */
  private startCut(type: number, len: number): void {
    this.cut = Buffer.allocUnsafe(5 + this.inspectMax);
    this.cutFill = 0;
    this.cutType = type;
    this.cutLength = len - 4;
    this.remaining = len + 1;
  }

  /** Copies bytes [start, end) of `src` (no more than the kept bytes still missing) into them. */
  private fillCut(src: Buffer, start: number, end: number, out: Piece[]): void {
    const cut = this.cut as Buffer;
    src.copy(cut, this.cutFill, start, end);
    this.cutFill += end - start;
    this.remaining -= end - start;
    if (this.cutFill < cut.length) return;
    // a message longer than inspectMax always has bytes left after these
    this.cut = undefined;
    const res = this.hooks.truncated?.(this.cutType, cut.subarray(5), this.cutLength, cut);
    if (res === null) this.dropping = true;
    else if (res === undefined) out.push(cut);
    else {
      if (res.head) out.push(res.head);
      else if (!res.drop) out.push(cut);
      this.dropping = res.drop === true;
      if (res.rest || res.end) this.streaming = res;
    }
  }

  /** Bytes [from, to) of `src` belong to the long message streaming by; `out` gets what follows its end. */
  private streamed(src: Buffer, from: number, to: number, out: Piece[]): void {
    const s = this.streaming;
    if (!s) return;
    s.rest?.(src, from, to);
    if (this.remaining > 0) return;
    this.streaming = undefined;
    if (s.end) out.push(...s.end());
  }

  private check(type: number, len: number): void {
    this.hooks.header?.(type, len);
    // PostgreSQL's pq_getmessage logs this (COMMERROR) and closes without answering
    if (len < 4)
      throw new SilentClose('invalid message length', {
        field: `length ${len} for type ${JSON.stringify(String.fromCharCode(type))}`,
      });
    if (len - 4 > this.maxMessageSize)
      throw new MessageTooLarge(type, len - 4, this.maxMessageSize);
  }

  /**
   * Starts assembling an inspected message of `size` bytes (type byte
   * included). It is held as the bytes arrive instead of in a buffer
   * allocated from the declared length: a header alone (up to
   * --max-message-size, 1 GiB by default) costs no memory.
   */
  private startWhole(type: number, size: number): void {
    this.whole = [];
    this.wholeType = type;
    this.wholeFill = 0;
    this.remaining = size;
  }

  /** Adds bytes [start, end) of `src` to the message being assembled. */
  private appendWhole(src: Buffer, start: number, end: number): void {
    this.hooks.part?.(this.wholeType, src, start, end, this.wholeFill === 0);
    const parts = this.whole as Buffer[];
    this.wholeFill += end - start;
    this.remaining -= end - start;
    if (end - start >= MIN_PART && src !== this.head) {
      this.closeJoined();
      parts.push(src.subarray(start, end));
      return;
    }
    while (start < end) {
      if (!this.joined) {
        this.joined = Buffer.allocUnsafe(Math.min(JOINED_PART, end - start + this.remaining));
        this.joinedFill = 0;
      }
      const n = Math.min(end - start, this.joined.length - this.joinedFill);
      src.copy(this.joined, this.joinedFill, start, start + n);
      this.joinedFill += n;
      start += n;
      if (this.joinedFill === this.joined.length) this.closeJoined();
    }
  }

  private closeJoined(): void {
    if (this.joined && this.joinedFill > 0)
      this.whole?.push(this.joined.subarray(0, this.joinedFill));
    this.joined = undefined;
  }

  /** Bytes of a partly received inspected message held in memory. */
  get held(): number {
    return (this.whole === undefined ? 0 : this.wholeFill) + (this.cut ? this.cutFill : 0);
  }

  private finishWhole(out: Piece[]): void {
    this.closeJoined();
    const parts = this.whole as Buffer[];
    this.whole = undefined;
    this.wholeFill = 0;
    const instead = this.hooks.assembled?.(this.wholeType, parts);
    if (instead) {
      out.push(...instead);
      return;
    }
    const raw = parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts);
    const res = this.hooks.message(this.wholeType, raw.subarray(5), raw);
    if (res !== null) out.push(res ?? raw);
  }

  /**
   * The framing error that stopped this stream, if any. Everything before the
   * offending message was returned by push(); nothing after it ever is.
   */
  failed: Error | undefined;

  /** Splits a chunk; returns the pieces to forward, in order (see `failed`). */
  push(chunk: Buffer): Piece[] {
    const out: Piece[] = [];
    if (this.failed) return out;
    const state = { pos: 0, runStart: 0 };
    try {
      this.scan(chunk, out, state);
    } catch (err) {
      this.failed = err instanceof Error ? err : new Error(String(err));
      // forward what came before the offending header, never what follows
      if (state.pos > state.runStart && !this.whole && this.headFill === 0)
        out.push(chunk.subarray(state.runStart, state.pos));
    }
    return out;
  }

  private scan(chunk: Buffer, out: Piece[], state: { pos: number; runStart: number }): void {
    let pos = 0;
    let runStart = 0;
    const n = chunk.length;
    const sync = (): void => {
      state.pos = pos;
      state.runStart = runStart;
    };
    while (pos < n) {
      sync();
      if (this.remaining > 0) {
        const take = Math.min(this.remaining, n - pos);
        if (this.whole) {
          this.appendWhole(chunk, pos, pos + take);
          pos += take;
          runStart = pos;
          if (this.remaining === 0) this.finishWhole(out);
        } else if (this.cut) {
          const end = pos + Math.min(take, this.cut.length - this.cutFill);
          this.fillCut(chunk, pos, end, out);
          pos = end;
          runStart = pos;
        } else if (this.dropping) {
          if (pos > runStart) out.push(chunk.subarray(runStart, pos));
          pos += take;
          runStart = pos;
          this.remaining -= take;
          if (this.remaining === 0) this.dropping = false;
          this.streamed(chunk, pos - take, pos, out);
        } else if (this.streaming) {
          pos += take;
          this.remaining -= take;
          if (this.remaining > 0) this.streaming.rest?.(chunk, pos - take, pos);
          else {
            // what its end brings goes right after it
            if (pos > runStart) out.push(chunk.subarray(runStart, pos));
            runStart = pos;
            this.streamed(chunk, pos - take, pos, out);
          }
        } else {
          pos += take;
          this.remaining -= take;
        }
        continue;
      }
      if (this.headFill === 0 && n - pos >= 5) {
        const type = chunk[pos] as number;
        const len = chunk.readInt32BE(pos + 1);
        this.check(type, len);
        if (!this.hooks.inspect(type, len)) {
          pos += 5;
          this.remaining = len - 4;
          continue;
        }
        if (len - 4 > this.inspectMax) {
          // kept from its header on, out of the run (see fillCut)
          if (pos > runStart) out.push(chunk.subarray(runStart, pos));
          runStart = pos;
          this.startCut(type, len);
          continue;
        }
        if (n - pos >= len + 1) {
          // Whole inside this chunk: forwarded unchanged it stays part of the run.
          const raw = chunk.subarray(pos, pos + len + 1);
          const res = this.hooks.message(type, raw.subarray(5), raw);
          if (res !== undefined) {
            if (pos > runStart) out.push(chunk.subarray(runStart, pos));
            if (res !== null) out.push(res);
            runStart = pos + len + 1;
          }
          pos += len + 1;
        } else {
          if (pos > runStart) out.push(chunk.subarray(runStart, pos));
          this.startWhole(type, len + 1);
          this.appendWhole(chunk, pos, n);
          pos = n;
          runStart = n;
        }
        continue;
      }
      // A header split across chunks: hold its bytes until it is complete.
      if (this.headFill === 0 && pos > runStart) out.push(chunk.subarray(runStart, pos));
      runStart = pos;
      sync();
      const take = Math.min(5 - this.headFill, n - pos);
      chunk.copy(this.head, this.headFill, pos, pos + take);
      this.headFill += take;
      pos += take;
      runStart = pos;
      if (this.headFill < 5) break;
      this.headFill = 0;
      const type = this.head[0] as number;
      const len = this.head.readInt32BE(1);
      this.check(type, len);
      const inspect = this.hooks.inspect(type, len);
      if (inspect && len - 4 > this.inspectMax) {
        this.startCut(type, len);
        this.fillCut(this.head, 0, 5, out);
      } else if (inspect) {
        this.startWhole(type, len + 1);
        this.appendWhole(this.head, 0, 5);
        if (this.remaining === 0) this.finishWhole(out);
      } else {
        out.push(Buffer.from(this.head));
        this.remaining = len - 4;
      }
    }
    if (pos > runStart && !this.whole) out.push(chunk.subarray(runStart, pos));
  }
}

/**
 * Collects one untyped startup-phase packet (int32 length counting itself,
 * then the body), refusing lengths outside [8, max].
 */
export class StartupFramer {
  private buf: Buffer = Buffer.alloc(0);

  constructor(private readonly max: number) {}

  /** Adds bytes; returns the packet body and any bytes after it, or undefined if incomplete. */
  push(chunk: Buffer): { readonly body: Buffer; readonly rest: Buffer } | undefined {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    if (this.buf.length < 4) return undefined;
    const len = this.buf.readInt32BE(0);
    // PostgreSQL logs this (COMMERROR) and closes without answering
    if (len < 8 || len > this.max)
      throw new SilentClose('invalid length of startup packet', { field: `length ${len}` });
    if (this.buf.length < len) return undefined;
    const body = this.buf.subarray(4, len);
    const rest = this.buf.subarray(len);
    this.buf = Buffer.alloc(0);
    return { body, rest };
  }

  get buffered(): number {
    return this.buf.length;
  }
}
