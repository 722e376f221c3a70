/**
 * Connections from dfgate to the upstream PostgreSQL: TCP or a Unix socket,
 * then TLS per the upstream URL's sslmode (disable, allow/prefer, require,
 * verify-ca, verify-full; sslrootcert for the CA). The client's own
 * credentials travel inside the relayed protocol; the URL's user and
 * password are not used here.
 * https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-SSL
 */
import { readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { encodeStartup } from './protocol/frontend.js';

export type SslMode = 'disable' | 'allow' | 'prefer' | 'require' | 'verify-ca' | 'verify-full';

export interface UpstreamTarget {
  readonly host: string;
  readonly port: number;
  readonly sslmode: SslMode;
  readonly ca?: Buffer | undefined;
}

export class UpstreamError extends Error {
  override readonly name = 'UpstreamError';
}

const SSL_MODES: readonly SslMode[] = [
  'disable',
  'allow',
  'prefer',
  'require',
  'verify-ca',
  'verify-full',
];

/** The upstream target of a postgres:// URL. */
export function targetFromUrl(text: string): UpstreamTarget {
  const url = new URL(text);
  const host =
    url.searchParams.get('host') ??
    decodeURIComponent(url.hostname.replace(/^\[|\]$/g, '')) ??
    '127.0.0.1';
  const port = Number(url.searchParams.get('port') ?? (url.port || 5432));
  const mode = (url.searchParams.get('sslmode') ?? 'prefer') as SslMode;
  if (!SSL_MODES.includes(mode))
    throw new UpstreamError(`unsupported sslmode "${mode}" (use one of ${SSL_MODES.join(', ')})`);
  const rootcert = url.searchParams.get('sslrootcert');
  if ((mode === 'verify-ca' || mode === 'verify-full') && !rootcert) {
    throw new UpstreamError(
      `sslmode=${mode} needs sslrootcert=/path/to/ca.pem in the upstream URL`,
    );
  }
  return {
    host: host || '127.0.0.1',
    port,
    sslmode: mode,
    ca: rootcert ? readFileSync(rootcert) : undefined,
  };
}

function rawConnect(t: UpstreamTarget, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const sock = t.host.startsWith('/')
      ? net.connect({ path: `${t.host}/.s.PGSQL.${t.port}` })
      : net.connect({ host: t.host, port: t.port });
    const timer = setTimeout(() => {
      sock.destroy();
      reject(
        new UpstreamError(`timed out after ${timeoutMs} ms connecting to ${t.host}:${t.port}`),
      );
    }, timeoutMs);
    sock.once('connect', () => {
      clearTimeout(timer);
      sock.setNoDelay(true);
      sock.setKeepAlive(true, 60_000);
      resolve(sock);
    });
    sock.once('error', (err) => {
      clearTimeout(timer);
      reject(new UpstreamError(`cannot connect to ${t.host}:${t.port}: ${err.message}`));
    });
  });
}

function readOneByte(sock: net.Socket, timeoutMs: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => done(new UpstreamError('timed out waiting for the answer to SSLRequest')),
      timeoutMs,
    );
    const onData = (b: Buffer): void => {
      if (b.length !== 1) {
        done(new UpstreamError('upstream sent unexpected data after SSLRequest'));
        return;
      }
      done(undefined, b[0]);
    };
    const onErr = (e: Error): void =>
      done(new UpstreamError(`upstream failed during SSL negotiation: ${e.message}`));
    const onEnd = (): void =>
      done(new UpstreamError('upstream closed the connection during SSL negotiation'));
    function done(err?: Error, v?: number): void {
      clearTimeout(timer);
      sock.off('data', onData).off('error', onErr).off('end', onEnd);
      sock.pause();
      if (err) reject(err);
      else resolve(v as number);
    }
    sock.on('data', onData).once('error', onErr).once('end', onEnd);
    sock.resume();
  });
}

export interface UpstreamSocket {
  readonly socket: net.Socket;
  readonly tls: boolean;
}

/** Connects and negotiates TLS; the returned socket is paused. */
export async function connectUpstream(
  t: UpstreamTarget,
  timeoutMs: number,
): Promise<UpstreamSocket> {
  const deadline = Date.now() + timeoutMs;
  const sock = await rawConnect(t, timeoutMs);
  sock.pause();
  if (t.sslmode === 'disable' || t.sslmode === 'allow' || t.host.startsWith('/')) {
    return { socket: sock, tls: false };
  }
  sock.write(encodeStartup({ type: 'SSLRequest' }));
  let answer: number;
  try {
    answer = await readOneByte(sock, Math.max(1, deadline - Date.now()));
  } catch (err) {
    sock.destroy();
    throw err;
  }
  if (answer === 0x4e /* N */) {
    if (t.sslmode === 'prefer') return { socket: sock, tls: false };
    sock.destroy();
    throw new UpstreamError(
      `the upstream server does not support SSL, but sslmode=${t.sslmode} requires it`,
    );
  }
  if (answer !== 0x53 /* S */) {
    sock.destroy();
    throw new UpstreamError(`unexpected answer 0x${answer.toString(16)} to SSLRequest`);
  }
  const verify = t.sslmode === 'verify-ca' || t.sslmode === 'verify-full';
  const secure = tls.connect({
    socket: sock,
    ...(t.host.match(/^[\d.]+$|:/) ? {} : { servername: t.host }),
    rejectUnauthorized: verify,
    ...(t.ca ? { ca: t.ca } : {}),
    checkServerIdentity: t.sslmode === 'verify-full' ? tls.checkServerIdentity : () => undefined,
  });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(
      () => {
        secure.destroy();
        reject(new UpstreamError('timed out during the TLS handshake with the upstream'));
      },
      Math.max(1, deadline - Date.now()),
    );
    secure.once('secureConnect', () => {
      clearTimeout(timer);
      resolve();
    });
    secure.once('error', (e) => {
      clearTimeout(timer);
      secure.destroy();
      reject(new UpstreamError(`TLS to the upstream failed (sslmode=${t.sslmode}): ${e.message}`));
    });
  });
  secure.pause();
  return { socket: secure, tls: true };
}
