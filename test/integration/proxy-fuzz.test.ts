/**
 * Fuzz: at least 100,000 random and mutated frames sent to a dfgate process.
 * dfgate must not crash; an offending client gets FATAL 08P01/54000 or is
 * closed; a bystander session stays usable throughout. The seed is printed;
 * DFGATE_FUZZ_SEED=<n> replays a run.
 */
import net from 'node:net';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  encodeFrontend,
  encodeStartup,
  type FrontendMessage,
} from '../../src/proxy/protocol/frontend.js';
import { useTestDatabase, type TestRole } from '../harness/db.js';
import { spawnDfgate, viaPort, type DfgateProcess } from '../harness/dfgate.js';

const db = useTestDatabase();
let trust: TestRole;
let scram: TestRole;
let dfgate: DfgateProcess;
const seed = Number(process.env['DFGATE_FUZZ_SEED'] ?? Date.now() % 1_000_000);

function prng(s: number): () => number {
  let x = s >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 4294967296;
  };
}

beforeAll(async () => {
  trust = await db.role('fuzz', { grant: false });
  scram = await db.role('bystander');
  await db.admin.query(`GRANT dfgate_trust_logins TO ${trust.ident}`);
  dfgate = await spawnDfgate([
    '--upstream',
    `${db.url}?sslmode=disable`,
    '--no-migrate',
    '--no-executor',
    '--max-message-size',
    '65536',
  ]);
  process.stdout.write(`[fuzz] seed ${seed} (DFGATE_FUZZ_SEED=${seed} to replay)\n`);
});

const rnd = prng(seed);
const int = (n: number): number => Math.floor(rnd() * n);
const bytes = (n: number): Buffer => Buffer.from(Array.from({ length: n }, () => int(256)));
const SQL = [
  'SELECT 1',
  "SELECT 'x'",
  'SELECT $1',
  'SELECT now()',
  'SHOW server_version',
  '',
  'SELEC',
  'SELECT 1; SELECT 2',
  // statements dfgate rewrites, refuses or tracks (the fuzz role has no df usage: the server refuses them too)
  "SELECT df.start('SELECT 1' ~> 'SELECT 2')",
  "SELECT df.start('SELECT 1' ~> df.slep(1))",
  'SELECT df.start($1)',
  "SELECT df.start($1, transaction_mode => 'new')",
  "SELECT df.start('SELECT 1', transaction_mode => 'new')",
  'SELECT 1; SELECT df.start(df.sleep(-1))',
];

function validMessage(): FrontendMessage {
  switch (int(12)) {
    case 0:
      return { type: 'Query', sql: SQL[int(SQL.length)] as string };
    case 1:
      return {
        type: 'Parse',
        name: int(2) ? '' : 's' + int(5),
        sql: SQL[int(SQL.length)] as string,
        paramTypes: int(2) ? [] : [23],
      };
    case 2:
      return {
        type: 'Bind',
        portal: '',
        statement: int(2) ? '' : 's' + int(5),
        paramFormats: [],
        params: int(2) ? [] : [Buffer.from('1')],
        resultFormats: [],
      };
    case 3:
      return { type: 'Describe', kind: int(2) ? 'S' : 'P', name: '' };
    case 4:
      return { type: 'Execute', portal: '', maxRows: int(3) };
    case 5:
      return { type: 'Sync' };
    case 6:
      return { type: 'Flush' };
    case 7:
      return { type: 'Close', kind: int(2) ? 'S' : 'P', name: 's' + int(5) };
    case 8:
      return { type: 'CopyData', data: bytes(int(30)) };
    case 9:
      return { type: 'CopyFail', message: 'fuzz' };
    case 10:
      return { type: 'FunctionCall', oid: int(5000), argFormats: [], args: [], resultFormat: 0 };
    default:
      return { type: 'CopyDone' };
  }
}

/** A broken frame: a mutated body, a random type, a bad or huge length, or pure noise. */
function brokenFrame(): Buffer {
  const b = Buffer.from(encodeFrontend(validMessage()));
  const r = rnd();
  if (r < 0.3) {
    for (let i = 0; i < 1 + int(3); i++) if (b.length > 5) b[5 + int(b.length - 5)] = int(256);
    return b;
  }
  if (r < 0.55) {
    b[0] = int(256);
    return b;
  }
  if (r < 0.8) {
    b.writeInt32BE([0, 3, -1, 0x7fffffff, 65536 + 10, int(1 << 20)][int(6)] as number, 1);
    return b;
  }
  return bytes(1 + int(40));
}

interface Outcome {
  /** Types of the server's answers after login, the last ErrorResponse marked with its SQLSTATE. */
  readonly answers: string;
  readonly fatal?: string;
}

/** One connection: log in with `startup` (or send raw noise), send `payload`, collect the answers. */
function attack(port: number, startup: Buffer | undefined, payload: Buffer): Promise<Outcome> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: '127.0.0.1', port });
    let buf = Buffer.alloc(0);
    let fatal: string | undefined;
    let ready = startup === undefined;
    const answers: string[] = [];
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`connection hung (seed ${seed})`));
    }, 20_000);
    sock.on('error', () => undefined);
    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 5 && buf.readInt32BE(1) >= 4 && buf.length >= buf.readInt32BE(1) + 1) {
        const len = buf.readInt32BE(1);
        const t = String.fromCharCode(buf[0] as number);
        const body = buf.subarray(5, len + 1);
        buf = buf.subarray(len + 1);
        const code = t === 'E' ? /C(\w{5})/.exec(body.toString('latin1'))?.[1] : undefined;
        if (t === 'E' && body.includes(Buffer.from('VFATAL'))) fatal = code;
        if (!ready) {
          if (t === 'Z') {
            ready = true;
            sock.write(payload);
            sock.end(encodeFrontend({ type: 'Terminate' }));
          }
        } else answers.push(t === 'E' ? `E${code}` : t);
      }
    });
    sock.on('close', () => {
      clearTimeout(timer);
      resolve({ answers: answers.join(' '), ...(fatal ? { fatal } : {}) });
    });
    sock.once('connect', () => {
      if (startup) sock.write(startup);
      else sock.end(payload);
    });
  });
}

function startupNoise(): Buffer {
  const p = encodeStartup({
    type: 'StartupMessage',
    version: 196608,
    params: [
      ['user', 'nobody'],
      ['database', 'nowhere'],
    ],
  });
  const b = int(2) ? bytes(1 + int(64)) : Buffer.from(p);
  b[int(b.length)] = int(256);
  return b;
}

describe('fuzzing dfgate', () => {
  it('survives 100,000 random and mutated frames, answering like PostgreSQL; other sessions are unaffected', async () => {
    const bystander = await db.connect(viaPort(scram.url, dfgate.port));
    await bystander.query('BEGIN');
    await bystander.query('CREATE TEMP TABLE alive (n int) ON COMMIT DROP');
    const directPort = Number(new URL(db.url).port);
    const startup = encodeStartup({
      type: 'StartupMessage',
      version: 196608,
      params: [
        ['user', trust.name],
        ['database', db.name],
      ],
    });
    let sent = 0;
    let checks = 0;
    let same = 0;
    let zVia = 0;
    let zDirect = 0;
    const silent: string[] = [];
    const fatals = new Map<string, number>();
    const jobs: Array<() => Promise<void>> = [];
    for (let i = 0; i < 300; i++) {
      const noise = startupNoise();
      jobs.push(async () => {
        await attack(dfgate.port, undefined, noise);
        sent += 1;
      });
    }
    for (let i = 0; i < 250; i++) {
      // 400 well-framed messages (the server answers, mostly with errors), then one broken frame
      const frames = Array.from({ length: 400 }, () => encodeFrontend(validMessage()));
      const broken = brokenFrame();
      const payload = Buffer.concat([...frames, broken]);
      jobs.push(async () => {
        const [via, direct] = await Promise.all([
          attack(dfgate.port, startup, payload),
          attack(directPort, startup, payload),
        ]);
        sent += frames.length + 1;
        if (via.fatal) fatals.set(via.fatal, (fatals.get(via.fatal) ?? 0) + 1);
        // Both got the server's answers to the well-framed messages. (Where exactly the
        // server stops answering depends on how the bytes arrived, so the tails differ.)
        const zs = (a: string): number => a.split(' ').filter((t) => t === 'Z').length;
        zVia += zs(via.answers);
        zDirect += zs(direct.answers);
        if (zs(direct.answers) > 0 && zs(via.answers) === 0)
          silent.push(`batch ${i}: ${broken.subarray(0, 12).toString('hex')}`);
        same++;
      });
    }
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < jobs.length) {
        const job = jobs[next++] as () => Promise<void>;
        await job();
        if (next % 25 === 0) {
          await bystander.query('INSERT INTO alive VALUES ($1)', [next]);
          checks++;
        }
      }
    };
    await Promise.all(Array.from({ length: 4 }, worker));
    expect(sent).toBeGreaterThanOrEqual(100_000);
    expect(same).toBe(250);
    expect(silent).toEqual([]);
    expect(zVia).toBeGreaterThanOrEqual(Math.floor(zDirect * 0.9));
    expect(dfgate.proc.exitCode).toBeNull();
    expect((await bystander.query('SELECT count(*)::int AS n FROM alive')).rows[0].n).toBe(checks);
    await bystander.query('COMMIT');
    expect((fatals.get('08P01') ?? 0) + (fatals.get('54000') ?? 0)).toBeGreaterThan(50);
    expect(dfgate.output()).not.toMatch(/internal error in session/);
    process.stdout.write(
      `[fuzz] ${sent} frames, ReadyForQuery via dfgate ${zVia} vs direct ${zDirect}, FATALs by SQLSTATE: ${JSON.stringify(Object.fromEntries(fatals))}\n`,
    );
  }, 300_000);
});
