/**
 * The cost benchmark's counting relay (bench/cost.ts), run as a child
 * process: a TCP relay to 127.0.0.1:<argv[2]> that counts the client's Query
 * ('Q') and Sync ('S') messages, one per round trip. Sends {port} once
 * listening; answers 'count' with {rt}.
 */
import { connect, createServer, type Socket } from 'node:net';

const target = Number(process.argv[2]);
let roundTrips = 0;

function pipe(client: Socket): void {
  const server = connect(target, '127.0.0.1');
  let buf = Buffer.alloc(0);
  let startup = true;
  client.on('data', (d: Buffer) => {
    server.write(d);
    buf = Buffer.concat([buf, d]);
    for (;;) {
      if (startup) {
        if (buf.length < 4) break;
        const len = buf.readInt32BE(0);
        if (buf.length < len) break;
        const code = buf.readInt32BE(4);
        buf = buf.subarray(len);
        // SSLRequest / GSSENCRequest are answered with one byte, then a real startup follows
        if (code !== 80877103 && code !== 80877104) startup = false;
        continue;
      }
      if (buf.length < 5) break;
      const len = buf.readInt32BE(1);
      if (buf.length < 1 + len) break;
      const t = String.fromCharCode(buf[0] as number);
      if (t === 'Q' || t === 'S') roundTrips++;
      buf = buf.subarray(1 + len);
    }
  });
  server.on('data', (d: Buffer) => client.write(d));
  const end = (): void => {
    client.destroy();
    server.destroy();
  };
  client.on('close', end).on('error', end);
  server.on('close', end).on('error', end);
}

const listener = createServer(pipe);
listener.listen(0, '127.0.0.1', () => {
  const a = listener.address();
  process.send?.({ port: typeof a === 'object' && a ? a.port : 0 });
});
process.on('message', (m) => {
  if (m === 'count') process.send?.({ rt: roundTrips });
});
process.on('SIGTERM', () => process.exit(0));
process.on('disconnect', () => process.exit(0));
