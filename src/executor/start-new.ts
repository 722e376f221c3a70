/**
 * df.start(..., transaction_mode => 'new') for the proxy (the contract is
 * src/contract/start-new.ts): runs df.start as the client session's login
 * role on a step connection of that role, in a transaction of its own.
 */
import { StartNewRefusal, type StartNewRequest } from '../contract/start-new.js';
import { metrics } from '../metrics.js';
import type { StepPool } from './steps.js';
import type { ControlStore } from './store.js';

export class StartNew {
  private database: string | undefined;

  constructor(
    private readonly store: ControlStore,
    private readonly steps: StepPool,
    /** Called once the start committed, with the instance's id (wakes the executor). */
    private readonly started: (ids: readonly string[]) => void,
  ) {}

  async run(req: StartNewRequest): Promise<string> {
    this.database ??= await this.store.currentDatabase();
    if (req.database !== this.database) {
      throw new StartNewRefusal({
        sqlstate: '0A000',
        message: `df.start(..., transaction_mode => 'new') through dfgate works in database "${this.database ?? ''}", where its executor runs; this session is connected to "${req.database}"`,
      });
    }
    const oid = await this.store.roleOid(req.login);
    if (oid === undefined)
      throw new StartNewRefusal({
        sqlstate: '42704',
        message: `role "${req.login}" does not exist`,
      });
    const identity = { roleName: req.login, roleOid: oid };
    const conn = await this.steps.acquire(identity);
    try {
      const names = [...req.args.keys()];
      const res = await conn.client.query<{ id: string }>(
        `SELECT df.start(${names.map((n, i) => `${n} => $${i + 1}`).join(', ')}) AS id`,
        names.map((n) => req.args.get(n) ?? null),
      );
      const id = res.rows[0]?.id as string;
      metrics.newModeStarts.inc();
      this.started([id]);
      return id;
    } finally {
      await this.steps.release(identity, conn);
    }
  }
}
