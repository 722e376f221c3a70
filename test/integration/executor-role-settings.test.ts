/**
 * A role's own settings (ALTER ROLE … SET) are applied to its step sessions
 * after every session reset (steps.ts, StepPool.settingsFor). A role may set
 * standard_conforming_strings off for itself; then a backslash in a plain
 * string literal escapes its closing quote, and a setting's value could
 * close the literal and run what follows in the reset, as the session user:
 * with --step-auth set-role that is the executor's control login. Each value
 * is written as a literal that reads the same either way.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { useTestDatabase } from '../harness/db.js';
import { finished, startTestExecutor } from '../harness/executor.js';

const db = useTestDatabase();

beforeAll(async () => {
  await startTestExecutor(db.url, { stepAuth: 'set-role' });
});

describe("a role's settings in its step sessions", () => {
  it('are applied as values, whatever standard_conforming_strings the role sets, which steps run with on', async () => {
    const erin = await db.role('erin');
    const c = await db.connect(erin.url);
    // application_name keeps 63 bytes
    const payload = `\\', false); RESET ROLE; CREATE TABLE erin_pwned (); --`;
    await c.query(`ALTER ROLE CURRENT_USER SET standard_conforming_strings = off`);
    await c.query(`ALTER ROLE CURRENT_USER SET application_name = $x$${payload}$x$`);
    await c.query(`CREATE TABLE erin_t (n int)`);
    // steps on one connection: each reset after the first is read with the role's setting off
    for (let i = 0; i < 3; i++) {
      const id = (
        await c.query(
          `SELECT df.start($$INSERT INTO erin_t VALUES (1)$$ ~> $$INSERT INTO erin_t VALUES (2)$$ ~> $$SELECT current_setting('application_name') AS app, current_setting('standard_conforming_strings') AS scs, current_user AS who$$) AS id`,
        )
      ).rows[0].id;
      const r = await finished(c, id);
      expect(r.status).toBe('completed');
      expect(JSON.parse(r.result as string).rows[0]).toEqual({
        app: payload,
        // steps run with it on, as the step check reads their texts (docs/executor.md, "Identity")
        scs: 'on',
        who: erin.name,
      });
    }
    expect((await db.admin.query(`SELECT count(*)::int AS n FROM erin_t`)).rows[0].n).toBe(6);
    const pwned = await db.admin.query(
      `SELECT c.oid FROM pg_class c WHERE c.relname = 'erin_pwned'`,
    );
    expect(pwned.rows).toEqual([]);
    await c.end();
  });
});

describe('client_encoding in step sessions', () => {
  it('is UTF8 whatever the role sets; a step that changes it fails, and nothing of it commits', async () => {
    const fay = await db.role('fay');
    const c = await db.connect(fay.url);
    await c.query(`ALTER ROLE CURRENT_USER SET client_encoding = 'SJIS'`);
    await c.query(`CREATE TABLE fay_t (n int)`);
    const run = async (step: string): Promise<{ status: string; result: unknown }> => {
      const id = (await c.query(`SELECT df.start($1) AS id`, [step])).rows[0].id as string;
      return await finished(c, id);
    };
    const ok = await run(`SELECT current_setting('client_encoding') AS enc`);
    expect(ok.status).toBe('completed');
    expect(JSON.parse(ok.result as string).rows[0]).toEqual({ enc: 'UTF8' });
    // its result would be read in SJIS inside the checkpoint's message
    const moved = await run(
      `WITH w AS (INSERT INTO fay_t VALUES (1)) SELECT set_config('client_encoding', 'SJIS', false) AS x`,
    );
    expect(moved.status).toBe('failed');
    expect(
      (await c.query(`SELECT error FROM df.instances ORDER BY created_at DESC LIMIT 1`)).rows[0]
        .error,
    ).toContain('the step set client_encoding to SJIS; steps run with UTF8');
    expect((await db.admin.query(`SELECT count(*)::int AS n FROM fay_t`)).rows[0].n).toBe(0);
    // the next step of the role finds UTF8 again
    const after = await run(`SELECT current_setting('client_encoding') AS enc`);
    expect(JSON.parse(after.result as string).rows[0]).toEqual({ enc: 'UTF8' });
    await c.end();
  });
});
