/**
 * The authentication exchange, relayed end to end between the client and
 * PostgreSQL (SCRAM, md5, password, trust): dfgate only hides SCRAM channel
 * binding, which cannot hold across a proxy that ends TLS on both sides, and
 * says so when a client insists on it. In transaction mode it also gives the
 * client a cancel key of dfgate's own.
 */
import { randomBytes, randomInt } from 'node:crypto';
import { SqlState } from '../db/sqlstate.js';
import { decodeAuth, encodeAuthSASL, type ErrorFields } from './protocol/backend.js';
import { AuthCode, Backend } from './protocol/codes.js';
import { decodeAuthMessage, type AuthMessage } from './protocol/frontend.js';

export class AuthRelay {
  private expect: AuthMessage['type'] | undefined;

  /** Is a client 'p' message part of the exchange now? */
  get expecting(): boolean {
    return this.expect !== undefined;
  }

  /** A server Authentication request: what the client gets instead (undefined: as is). */
  request(body: Buffer): Buffer | undefined {
    const req = decodeAuth(body);
    switch (req.code) {
      case AuthCode.SASL: {
        this.expect = 'SASLInitialResponse';
        const mechs = (req as { mechanisms: readonly string[] }).mechanisms;
        // Channel binding cannot hold across a proxy that terminates TLS on both sides.
        const kept = mechs.filter((m) => !m.endsWith('-PLUS'));
        return kept.length === mechs.length ? undefined : encodeAuthSASL(kept);
      }
      case AuthCode.SASLContinue:
        this.expect = 'SASLResponse';
        return undefined;
      case AuthCode.CleartextPassword:
      case AuthCode.MD5Password:
        this.expect = 'PasswordMessage';
        return undefined;
      default:
        return undefined;
    }
  }

  /** A client 'p' message: the FATAL to send if it cannot pass, else undefined. */
  response(body: Buffer, upstreamTls: boolean): ErrorFields | undefined {
    if (!this.expect) return undefined;
    const m = decodeAuthMessage(body, this.expect);
    if (
      m.type === 'SASLInitialResponse' &&
      m.data !== null &&
      m.data[0] === 0x79 /* y */ &&
      upstreamTls
    ) {
      // The client supports channel binding but dfgate hid SCRAM-SHA-256-PLUS; a TLS
      // server that supports binding must then refuse ("downgrade"), so say what to change.
      return {
        severity: 'FATAL',
        code: SqlState.InvalidAuthorization,
        message:
          "SCRAM channel binding cannot pass through dfgate: the client's TLS session ends at dfgate, and the upstream server's TLS session is a different one",
        hint: 'Connect to dfgate with channel_binding=disable (for example psql "host=... sslmode=require channel_binding=disable"), or without TLS on a trusted network.',
      };
    }
    return undefined;
  }
}

/** A BackendKeyData of dfgate's own (transaction mode): its message and its key. */
export function ownBackendKey(): {
  readonly message: Buffer;
  readonly pid: number;
  readonly key: Buffer;
} {
  const pid = randomInt(1, 0x7fffffff);
  const key = randomBytes(4);
  const message = Buffer.alloc(13);
  message[0] = Backend.BackendKeyData;
  message.writeInt32BE(12, 1);
  message.writeInt32BE(pid, 5);
  key.copy(message, 9);
  return { message, pid, key };
}
