/**
 * A SQL step's result is capped (--max-result-bytes, default 4 MiB) while it
 * streams in (issue 10): a 300 MB value or ten million rows fail their
 * instance with the cap error, and the dfgate process (proxy and executor
 * together) stays small and alive and keeps serving everyone else. A step
 * whose outcome cannot be checkpointed fails once instead of running forever.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { useTestDatabase, type TestRole } from '../harness/db.js';
import {
  procKb,
  spawnDfgate,
  viaPort,
  whileAliveOf,
  type DfgateProcess,
} from '../harness/dfgate.js';
import { finished } from '../harness/executor.js';

const db = useTestDatabase();
const CAP = 4 * 1024 * 1024;
let big: TestRole;
let other: TestRole;
let d: DfgateProcess;
let peak = 0;
let sampler: NodeJS.Timeout | undefined;
const whileAlive = <T>(p: Promise<T>): Promise<T> => whileAliveOf(d, p);

beforeAll(async () => {
  big = await db.role('big');
  other = await db.role('other');
  d = await spawnDfgate(
    ['--upstream', `${db.url}?sslmode=disable`, '--no-migrate', '--poll-interval', '0.2'],
    { DFGATE_STEP_SECRET: 'result-cap-secret' },
  );
  const pid = d.proc.pid as number;
  sampler = setInterval(() => {
    if (d.proc.exitCode === null) peak = Math.max(peak, procKb(pid, 'VmRSS'));
  }, 20);
});

afterAll(async () => {
  if (sampler) clearInterval(sampler);
  await d?.stop();
});

async function nodeOf(id: string): Promise<{ status: string; result: unknown; attempts: number }> {
  const r = await db.admin.query(
    `SELECT n.status, n.result, n.attempts FROM df.nodes n JOIN df.instances i ON i.id = n.instance_id AND n.id = i.root_node
      WHERE i.id = $1`,
    [id],
  );
  return r.rows[0] as { status: string; result: unknown; attempts: number };
}

const capError = new RegExp(
  `^SQL execution failed: the (step's result exceeds the limit of ${CAP} bytes|server sent a message for the step .* \\(${CAP} bytes\\)).*--max-result-bytes \\(DFGATE_MAX_RESULT_BYTES\\)$`,
);

describe('the result cap (--max-result-bytes)', () => {
  it('a 300 MB value and ten million rows fail their instances; dfgate stays under 300 MB, alive, serving others', async () => {
    const c = await db.connect(viaPort(big.url, d.port));
    const huge = (await c.query(`SELECT df.start('SELECT repeat(''x'', 300*1024*1024)') AS id`))
      .rows[0].id as string;
    const many = (
      await c.query(`SELECT df.start('SELECT g FROM generate_series(1, 10000000) g') AS id`)
    ).rows[0].id as string;
    // an error whose text alone (50 MB) is past what one step may receive
    const loud = (await c.query(`SELECT df.start('SELECT repeat(''x'', 50*1024*1024)::int') AS id`))
      .rows[0].id as string;
    // meanwhile another role's workflow and another session's queries go through the same process
    const o = await db.connect(viaPort(other.url, d.port));
    const small = (await o.query(`SELECT df.start('SELECT 1 AS one' ~> 'SELECT 2 AS two') AS id`))
      .rows[0].id as string;
    const s = await db.connect(viaPort(other.url, d.port));
    for (let i = 0; i < 20; i++) expect((await s.query('SELECT 1 AS x')).rows).toEqual([{ x: 1 }]);

    expect(await whileAlive(finished(o, small, 60_000))).toEqual({
      status: 'completed',
      result: '{"rows": [{"two": 2}], "row_count": 1}',
    });
    expect((await whileAlive(finished(c, huge, 120_000))).status).toBe('failed');
    expect((await whileAlive(finished(c, many, 120_000))).status).toBe('failed');
    for (const id of [huge, many]) {
      const n = await nodeOf(id);
      expect(n.status).toBe('failed');
      expect(n.result).toMatch(capError);
      // failed once, not re-run
      expect(n.attempts).toBe(1);
    }
    expect((await nodeOf(many)).result).toMatch(/result exceeds the limit/);
    expect((await whileAlive(finished(c, loud, 120_000))).status).toBe('failed');
    expect((await nodeOf(loud)).result).toMatch(
      /^SQL execution failed: the server sent a message for the step \(a row, an error or a notice\) larger than/,
    );

    expect(d.proc.exitCode).toBeNull();
    expect((await s.query('SELECT 1 AS x')).rows).toEqual([{ x: 1 }]);
    const after = (await o.query(`SELECT df.start('SELECT 3 AS three') AS id`)).rows[0]
      .id as string;
    expect((await finished(o, after, 30_000)).status).toBe('completed');
    const hwm = procKb(d.proc.pid as number, 'VmHWM');
    process.stdout.write(`[result-cap] dfgate VmHWM ${hwm} kB, sampled VmRSS peak ${peak} kB\n`);
    expect(hwm).toBeLessThan(300 * 1024);
    expect(peak).toBeLessThan(300 * 1024);
  }, 240_000);

  it('a signal whose data passes the cap fails the wait it reaches, once; dfgate stays small and alive', async () => {
    const c = await db.connect(viaPort(big.url, d.port));
    const start = async (label: string): Promise<string> =>
      (
        await c.query(
          `SELECT df.start(df.wait_for_signal('go', 3600) |=> 'sig' ~> 'SELECT $sig AS got', $1) AS id`,
          [label],
        )
      ).rows[0].id as string;
    const signalNode = async (id: string): Promise<{ status: string; result: unknown }> =>
      (
        await db.admin.query(
          `SELECT status, result FROM df.nodes WHERE instance_id = $1 AND node_type = 'SIGNAL'`,
          [id],
        )
      ).rows[0] as { status: string; result: unknown };
    const huge = await start('huge-signal');
    const fits = await start('small-signal');
    // 200 MB of data: a few MB once stored (jsonb compresses it), so it costs the database little
    await c.query(
      `SELECT df.signal($1, 'go', json_build_object('blob', repeat('x', 200 * 1024 * 1024))::text)`,
      [huge],
    );
    await c.query(`SELECT df.signal($1, 'go', '{"ok": true}')`, [fits]);
    expect((await whileAlive(finished(c, huge, 120_000))).status).toBe('failed');
    expect(await signalNode(huge)).toEqual({
      status: 'failed',
      result: `signal 'go' carries ${200 * 1024 * 1024 + 12} bytes of data, more than the limit of ${CAP} bytes; the signal was consumed and the wait failed (raise the limit with dfgate --max-result-bytes, DFGATE_MAX_RESULT_BYTES)`,
    });
    // consumed: nothing delivers it again
    const consumed = await db.admin.query(
      `SELECT consumed_at IS NOT NULL AS consumed FROM df.signals WHERE instance_id = $1`,
      [huge],
    );
    expect(consumed.rows).toEqual([{ consumed: true }]);
    expect(await whileAlive(finished(c, fits, 60_000))).toEqual({
      status: 'completed',
      result:
        '{"rows": [{"got": "{\\"signal_name\\":\\"go\\",\\"timed_out\\":false,\\"data\\":{\\"ok\\":true}}"}], "row_count": 1}',
    });
    expect(d.proc.exitCode).toBeNull();
    expect(procKb(d.proc.pid as number, 'VmHWM')).toBeLessThan(300 * 1024);
  }, 240_000);

  it('an instance whose variables pass 4 MiB fails without them being read; dfgate stays small', async () => {
    const v = await db.role('bigvars');
    const c = await db.connect(viaPort(v.url, d.port));
    // twenty instances with 20 MB of variables each: 400 MB, were they read
    await c.query(`SELECT df.setvar('blob', repeat('x', 20 * 1024 * 1024))`);
    const ids = (
      await c.query<{ id: string }>(
        `SELECT df.start('SELECT 1 AS one', 'heavy-' || g) AS id FROM generate_series(1, 20) g`,
      )
    ).rows.map((r) => r.id);
    for (const id of ids) {
      expect((await whileAlive(finished(c, id, 120_000))).status).toBe('failed');
      const e = await db.admin.query(`SELECT error FROM df.instances WHERE id = $1`, [id]);
      expect(e.rows[0].error).toBe(
        `Instance ${id}: its variables (df.setvar, copied at its start) take ${20 * 1024 * 1024 + 12} bytes, more than the 4194304 dfgate loads; keep large data in tables`,
      );
    }
    // without them the role's workflows run
    await c.query(`SELECT df.unsetvar('blob')`);
    const ok = (await c.query(`SELECT df.start('SELECT 1 AS one') AS id`)).rows[0].id as string;
    expect((await whileAlive(finished(c, ok, 60_000))).status).toBe('completed');
    expect(d.proc.exitCode).toBeNull();
    expect(procKb(d.proc.pid as number, 'VmHWM')).toBeLessThan(300 * 1024);
  }, 240_000);

  it('a result of exactly the cap is stored as it is; one byte more fails', async () => {
    const c = await db.connect(viaPort(big.url, d.port));
    // {"rows":[{"v":"…"}],"row_count":1} is 33 bytes around the value
    const fits = CAP - 33;
    const a = (await c.query(`SELECT df.start($1) AS id`, [`SELECT repeat('x', ${fits}) AS v`]))
      .rows[0].id as string;
    const b = (await c.query(`SELECT df.start($1) AS id`, [`SELECT repeat('x', ${fits + 1}) AS v`]))
      .rows[0].id as string;
    expect((await finished(c, a, 60_000)).status).toBe('completed');
    expect((await finished(c, b, 60_000)).status).toBe('failed');
    const r = await db.admin.query(
      `SELECT length(n.result -> 'rows' -> 0 ->> 'v') AS len, n.result ->> 'row_count' AS rc,
              octet_length((e.detail ->> 'result')) AS stored
         FROM df.nodes n JOIN df.instances i ON i.id = n.instance_id AND n.id = i.root_node
         JOIN df.events e ON e.instance_id = i.id AND e.node_id = n.id AND e.kind = 'done'
        WHERE i.id = $1`,
      [a],
    );
    expect(r.rows).toEqual([{ len: fits, rc: '1', stored: CAP }]);
    expect((await nodeOf(b)).result).toMatch(/^SQL execution failed: the step's result exceeds/);
    // many small rows up to the cap: the count is exact there too
    const rows = (
      await c.query(`SELECT df.start($1) AS id`, [`SELECT g FROM generate_series(1, 100000) g`])
    ).rows[0].id as string;
    expect((await finished(c, rows, 60_000)).status).toBe('completed');
    const n = await db.admin.query(
      `SELECT jsonb_array_length(n.result -> 'rows') AS len FROM df.nodes n JOIN df.instances i ON i.id = n.instance_id AND n.id = i.root_node WHERE i.id = $1`,
      [rows],
    );
    expect(n.rows[0].len).toBe(100000);
    expect(d.proc.exitCode).toBeNull();
  }, 120_000);

  it('a step whose outcome the step connection cannot checkpoint fails once, with the reason', async () => {
    // any event a step login writes for this label's instances raises 54000, as a result the
    // checkpoint cannot store would; the control connection (the executor's login) still can
    await db.admin.query(`
      CREATE FUNCTION public.refuse_step_events() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        IF session_user::text LIKE 'dfgate_step_%'
           AND EXISTS (SELECT 1 FROM df.instances WHERE id = NEW.instance_id AND label = 'unrecordable') THEN
          RAISE EXCEPTION 'string too long to represent as jsonb string' USING ERRCODE = '54000';
        END IF;
        RETURN NEW;
      END $$;
      CREATE TRIGGER refuse_step_events BEFORE INSERT ON df.events
        FOR EACH ROW EXECUTE FUNCTION public.refuse_step_events();`);
    try {
      const c = await db.connect(viaPort(big.url, d.port));
      const id = (await c.query(`SELECT df.start('SELECT 1 AS one', 'unrecordable') AS id`)).rows[0]
        .id as string;
      expect((await finished(c, id, 30_000)).status).toBe('failed');
      const n = await nodeOf(id);
      expect(n).toEqual({
        status: 'failed',
        result:
          "SQL execution failed: the step's outcome could not be recorded: string too long to represent as jsonb string",
        attempts: 1,
      });
      // and it stays that way: nothing runs it again
      await new Promise((r) => setTimeout(r, 1000));
      expect((await nodeOf(id)).attempts).toBe(1);
    } finally {
      await db.admin.query(`DROP TRIGGER refuse_step_events ON df.events`);
    }
  }, 60_000);
});
