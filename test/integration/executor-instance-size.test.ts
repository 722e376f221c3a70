/**
 * What the executor holds for one instance is bounded (claim-sql.ts,
 * instanceBytesMax: four times --max-result-bytes, at least 16 MiB): an
 * instance whose graph and recorded results pass it fails with the reason,
 * and one whose graph alone passes it is never read. The dfgate process runs
 * with a 384 MB heap: without the bound, eight chains of 3 MB results (600 MB)
 * or six 20 MB step texts in one claim would end it.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { INLINE_MAX, instanceColumns } from '../../src/executor/claim-sql.js';
import { useTestDatabase, type TestRole } from '../harness/db.js';
import { spawnDfgate, viaPort, whileAliveOf, type DfgateProcess } from '../harness/dfgate.js';
import { finished } from '../harness/executor.js';

const db = useTestDatabase();
const MAX = 16 * 1024 * 1024;
let d: DfgateProcess;
let app: TestRole;

beforeAll(async () => {
  app = await db.role('sizes');
  d = await spawnDfgate(
    ['--upstream', `${db.url}?sslmode=disable`, '--no-migrate', '--poll-interval', '0.2'],
    { DFGATE_STEP_SECRET: 'instance-size-secret', NODE_OPTIONS: '--max-old-space-size=384' },
  );
});

afterAll(async () => {
  await d?.stop();
});

const whileAlive = <T>(p: Promise<T>): Promise<T> => whileAliveOf(d, p);

/** A chain of `n` steps, each naming a result of `mb` MB. */
const chain = (n: number, mb: number): string =>
  Array.from(
    { length: n },
    (_, k) => `'SELECT repeat(''x'', ${mb * 1_000_000}) AS v' |=> 'r${k}'`,
  ).join(' ~> ');

async function errorOf(id: string): Promise<{ error: string; ran: number }> {
  const r = await db.admin.query(
    `SELECT error, (SELECT count(*)::int FROM df.nodes n
                     WHERE n.instance_id = i.id AND n.node_type = 'SQL' AND n.status = 'completed') AS ran
       FROM df.instances i WHERE id = $1`,
    [id],
  );
  return r.rows[0] as { error: string; ran: number };
}

describe('what the executor holds for one instance', () => {
  it('eight chains of 25 results of 3 MB each fail once past 16 MiB, with the reason; dfgate lives', async () => {
    const c = await db.connect(viaPort(app.url, d.port));
    const ids = (
      await c.query<{ id: string }>(
        `SELECT df.start(${chain(25, 3)}, 'chain-' || g) AS id FROM generate_series(1, 8) g`,
      )
    ).rows.map((r) => r.id);
    for (const id of ids) {
      expect((await whileAlive(finished(c, id, 180_000))).status).toBe('failed');
      const { error, ran } = await errorOf(id);
      expect(error).toMatch(
        new RegExp(
          `^Instance ${id}: its graph and recorded results take \\d+ bytes, more than the ${MAX} dfgate holds for one instance \\(four times --max-result-bytes, at least 16 MiB\\); keep large data in tables and return keys or counts$`,
        ),
      );
      // it stopped at the bound: five results fit in 16 MiB, the sixth or seventh passes it
      expect(ran).toBeGreaterThanOrEqual(5);
      expect(ran).toBeLessThanOrEqual(8);
    }
    expect(d.proc.exitCode).toBeNull();
  }, 240_000);

  it('an instance within the bound runs to the end', async () => {
    const c = await db.connect(viaPort(app.url, d.port));
    const id = (await c.query(`SELECT df.start(${chain(4, 3)} ~> 'SELECT 1 AS ok') AS id`)).rows[0]
      .id as string;
    expect(await whileAlive(finished(c, id, 120_000))).toEqual({
      status: 'completed',
      result: '{"rows": [{"ok": 1}], "row_count": 1}',
    });
  }, 180_000);

  it('six 20 MB step texts started directly fail without being read; dfgate lives', async () => {
    const c = await db.connect(app.url);
    const text = 20 * 1024 * 1024;
    const ids = (
      await c.query<{ id: string }>(
        `SELECT df.start('SELECT 1 /*' || repeat('x', ${text}) || '*/', 'text-' || g) AS id
           FROM generate_series(1, 6) g`,
      )
    ).rows.map((r) => r.id);
    for (const id of ids) {
      expect((await whileAlive(finished(c, id, 120_000))).status).toBe('failed');
      expect((await errorOf(id)).error).toBe(
        `Instance ${id}: its graph and recorded results take ${text + 13} bytes, more than the ${MAX} dfgate holds for one instance (four times --max-result-bytes, at least 16 MiB); keep large data in tables and return keys or counts`,
      );
      // its step never ran, and does not read as running (no claim marked it)
      const node = await db.admin.query(
        `SELECT status, attempts FROM df.nodes WHERE instance_id = $1`,
        [id],
      );
      expect(node.rows).toEqual([{ status: 'pending', attempts: 0 }]);
    }
    expect(d.proc.exitCode).toBeNull();
  }, 240_000);

  it('a step whose substituted text would pass 16 MiB fails without the text being built', async () => {
    const c = await db.connect(viaPort(app.url, d.port));
    // three 3.5 MB results named twice each: 21 MB of text, within twice the values (the
    // relative limit) but past the longest step text dfgate runs
    const id = (
      await c.query(
        `SELECT df.start(${chain(3, 3.5)} ~> 'SELECT length($r0.v || $r1.v || $r2.v || $r0.v || $r1.v || $r2.v) AS n') AS id`,
      )
    ).rows[0].id as string;
    expect((await whileAlive(finished(c, id, 120_000))).status).toBe('failed');
    const { error, ran } = await errorOf(id);
    expect(ran).toBe(3);
    expect(error).toContain(
      `substitution would make the step's text longer than ${MAX} characters, the longest step text dfgate runs (four times --max-result-bytes, at least 16 MiB)`,
    );
  }, 180_000);

  it('an instance too large for a claim or a timer batch is read on its own and resumes', async () => {
    const c = await db.connect(viaPort(app.url, d.port));
    // 1 MB of results is more than a claim or timer batch reads per row (256 KiB)
    const id = (
      await c.query(
        `SELECT df.start('SELECT repeat(''y'', 1000000) AS v' |=> 'big' ~> df.sleep(1) ~> 'SELECT 2 AS two') AS id`,
      )
    ).rows[0].id as string;
    expect(await whileAlive(finished(c, id, 60_000))).toEqual({
      status: 'completed',
      result: '{"rows": [{"two": 2}], "row_count": 1}',
    });
  }, 120_000);
});

describe('what an instance row carries', () => {
  it('labels and options past their caps fail the instance without being read; dfgate lives', async () => {
    const c = await db.connect(app.url);
    // the label index takes one this long (it compresses), far past the 64 KiB dfgate loads
    const label = 200_000;
    const ids = (
      await c.query<{ id: string }>(
        `SELECT df.start('SELECT 1 AS one', repeat('l', ${label}) || g) AS id FROM generate_series(1, 8) g`,
      )
    ).rows.map((r) => r.id);
    for (const id of ids) {
      expect((await whileAlive(finished(c, id, 120_000))).status).toBe('failed');
      expect((await errorOf(id)).error).toBe(
        `Instance ${id}: its label takes ${label + 1} bytes, more than the 65536 dfgate loads; keep large data in tables`,
      );
    }
    const opt = (
      await c.query(
        `SELECT df.start('SELECT 1 AS one', on_failure => 'SELECT 2 /*' || repeat('o', 5 * 1024 * 1024) || '*/') AS id`,
      )
    ).rows[0].id as string;
    expect((await whileAlive(finished(c, opt, 120_000))).status).toBe('failed');
    expect((await errorOf(opt)).error).toMatch(
      new RegExp(
        `^Instance ${opt}: its options \\(df.start's on_failure workflow and retry policy\\) take \\d+ bytes, more than the 4194304 dfgate loads; keep large data in tables$`,
      ),
    );
  }, 240_000);

  it('an instance whose variables are too large for a claim or timer batch wakes and runs on its own', async () => {
    const v = await db.role('sizevars');
    const c = await db.connect(viaPort(v.url, d.port));
    // 300 kB: more than a claim or a due-timer batch reads with one instance (256 KiB)
    await c.query(`SELECT df.setvar('blob', repeat('v', 300000))`);
    const id = (
      await c.query(`SELECT df.start(df.sleep(1) ~> 'SELECT length(''{blob}'') AS n') AS id`)
    ).rows[0].id as string;
    expect(await whileAlive(finished(c, id, 60_000))).toEqual({
      status: 'completed',
      result: '{"rows": [{"n": 300000}], "row_count": 1}',
    });
    // what the claim's and the batch's read gives it: no variables, no events (the driver reads it)
    const inline = (
      await db.admin.query(
        `SELECT ${instanceColumns('0', 'false', 'true', String(INLINE_MAX), INLINE_MAX)}
           FROM df.instances i WHERE i.id = $1`,
        [id],
      )
    ).rows[0] as { vars: unknown; events: unknown; vars_bytes: number };
    expect(inline).toMatchObject({ vars: {}, events: null });
    expect(Number(inline.vars_bytes)).toBeGreaterThan(INLINE_MAX);
    const alone = (
      await db.admin.query(
        `SELECT ${instanceColumns('0', 'false', 'true', String(16 * 1024 * 1024))}
           FROM df.instances i WHERE i.id = $1`,
        [id],
      )
    ).rows[0] as { vars: Record<string, string>; events: unknown[] };
    expect(alone.vars['blob']?.length).toBe(300000);
    expect(alone.events.length).toBeGreaterThan(0);
  }, 120_000);
});

describe('long step texts', () => {
  it('are checked off the event loop: one runs when it may, one is refused when it may not', async () => {
    const c = await db.connect(viaPort(app.url, d.port));
    const pad = `/* ${'x'.repeat(200_000)} */`;
    const ok = (await c.query(`SELECT df.start($1) AS id`, [`SELECT 1 AS one ${pad}`])).rows[0]
      .id as string;
    const no = (await c.query(`SELECT df.start($1) AS id`, [`COMMIT ${pad}`])).rows[0].id as string;
    expect(await whileAlive(finished(c, ok, 60_000))).toEqual({
      status: 'completed',
      result: '{"rows": [{"one": 1}], "row_count": 1}',
    });
    expect((await whileAlive(finished(c, no, 60_000))).status).toBe('failed');
    expect((await errorOf(no)).error).toMatch(/transaction control statements/);
  }, 120_000);
});

describe('step texts too deeply nested to check', () => {
  it('are refused with the reason, on the event loop or in the workers, six in a row; the workers live on', async () => {
    const c = await db.connect(viaPort(app.url, d.port));
    const deep = 'SELECT ' + '(SELECT '.repeat(3000) + '1' + ')'.repeat(3000); // 27 KB
    const pad = `/* ${'x'.repeat(70_000)} */`; // past 64 KiB: checked in a compile worker
    const texts = [deep, ...Array.from({ length: 6 }, (_, k) => `${deep} /* ${k} */ ${pad}`)];
    const ids: string[] = [];
    for (const t of texts)
      ids.push((await c.query(`SELECT df.start($1) AS id`, [t])).rows[0].id as string);
    for (const id of ids) {
      expect((await whileAlive(finished(c, id, 60_000))).status).toBe('failed');
      expect((await errorOf(id)).error).toBe(
        "SQL execution failed: the step's SQL could not be checked before it runs: it is nested too deeply",
      );
    }
    // each failed once, not claimed again and again
    const epochs = await db.admin.query<{ e: string }>(
      'SELECT max(lease_epoch)::text AS e FROM df.instances WHERE id = ANY ($1)',
      [ids],
    );
    expect(Number(epochs.rows[0]?.e)).toBeLessThanOrEqual(2);
    // the edge still compiles: what the database ran is df._start_rows
    const r = await c.query(`SELECT df.start('SELECT 1') AS id, current_query() AS q`);
    expect(r.rows[0].q).toContain('df._start_rows');
  }, 120_000);
});

describe('values nested too deeply for the executor', () => {
  it('a step result 4,500 arrays deep that a later step substitutes fails its instance once, with the reason', async () => {
    const c = await db.connect(viaPort(app.url, d.port));
    const id = (
      await c.query(
        `SELECT df.start('SELECT (repeat(''['', 4500) || repeat('']'', 4500))::json AS j' |=> 'a' ~> 'SELECT $a') AS id`,
      )
    ).rows[0].id as string;
    expect((await whileAlive(finished(c, id, 60_000))).status).toBe('failed');
    expect((await errorOf(id)).error).toMatch(/^the workflow could not be evaluated: /);
    const epoch = await db.admin.query<{ e: string }>(
      'SELECT lease_epoch::text AS e FROM df.instances WHERE id = $1',
      [id],
    );
    expect(Number(epoch.rows[0]?.e)).toBeLessThanOrEqual(2); // failed once, not claimed again and again
  }, 120_000);
});

describe('instanceColumns', () => {
  it('reads the events and the step texts only within the bound it is given, and says so with a null', async () => {
    const c = await db.connect(app.url);
    const id = (await c.query(`SELECT df.start('SELECT 3 AS three') AS id`)).rows[0].id as string;
    await finished(c, id, 60_000);
    const read = async (max: number): Promise<{ events: unknown; graph: unknown }> =>
      (
        await db.admin.query(
          `SELECT ${instanceColumns('0', 'false', 'true', '$2')} FROM df.instances i WHERE i.id = $1`,
          [id, max],
        )
      ).rows[0] as { events: unknown; graph: unknown };
    const sizes = await db.admin.query<{ g: number; e: number }>(
      `SELECT (SELECT sum(octet_length(query))::int FROM df.nodes WHERE instance_id = $1) AS g,
              (SELECT sum(octet_length(detail::text))::int FROM df.events WHERE instance_id = $1 AND activation IS NOT NULL) AS e`,
      [id],
    );
    const g = Number(sizes.rows[0]?.g); // 17: the step's text
    const e = Number(sizes.rows[0]?.e); // its completion event, longer
    expect(e).toBeGreaterThan(g);
    const whole = await read(e);
    expect(Array.isArray(whole.events) && whole.events.length).toBe(1);
    expect(Array.isArray(whole.graph) && whole.graph.length).toBe(1);
    const eventsLeft = await read(g);
    expect(eventsLeft.events).toBeNull();
    expect(Array.isArray(eventsLeft.graph) && eventsLeft.graph.length).toBe(1);
    expect(await read(g - 1)).toMatchObject({ events: null, graph: null });
  }, 120_000);
});
