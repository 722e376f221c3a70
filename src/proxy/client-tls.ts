/**
 * TLS towards the client: after an SSLRequest answered 'S', or from the
 * first byte (PostgreSQL 17's sslnegotiation=direct, ALPN "postgresql").
 */
import type net from 'node:net';
import { Duplex } from 'node:stream';
import tls from 'node:tls';

/**
 * Wraps the client socket in TLS. `initial` holds bytes already read (a direct
 * ClientHello): they reach the TLS layer first, through a stream that replays them.
 */
export function upgradeClient(
  raw: net.Socket,
  context: tls.SecureContext,
  initial: Buffer[],
): tls.TLSSocket {
  raw.removeAllListeners('data');
  raw.removeAllListeners('close');
  raw.removeAllListeners('error');
  raw.on('error', () => undefined);
  let transport: net.Socket | Duplex = raw;
  if (initial.length) {
    const replay = new Duplex({
      read: () => undefined,
      write: (chunk: Buffer, _enc, cb) => raw.write(chunk, cb),
      final: (cb) => {
        raw.end();
        cb();
      },
    });
    replay.push(Buffer.concat(initial));
    raw.on('data', (d: Buffer) => replay.push(d));
    raw.on('end', () => replay.push(null));
    raw.on('close', () => replay.destroy());
    transport = replay;
  }
  return new tls.TLSSocket(transport as net.Socket, {
    isServer: true,
    secureContext: context,
    ALPNProtocols: ['postgresql'],
  });
}
