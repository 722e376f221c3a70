/**
 * Attempt marks, batched (docs/executor.md, "What a step costs"): before a
 * SQL step's first attempt commits, its node row records the activation, the
 * attempt token's hash, the attempt number and the running stamp, through
 * the control connection, while the step's statement runs. Steps that start
 * together (the instances of one claim, a burst of starts) send their marks
 * as one UPDATE: one statement and one commit for all of them instead of one
 * each. One batch is on its way at a time; marks asked for meanwhile go in
 * the next, so an executor with one step at a time waits for nobody.
 *
 * A mark is written only while this executor holds the instance's lease and
 * the activation has no outcome yet; its answer is false otherwise (lease
 * lost, cancelled, or already recorded), for each mark of a batch alone.
 */
import type pg from 'pg';
import type { ActivationRef } from './store.js';
import { statementName } from './claim-sql.js';

export interface MarkRequest {
  readonly id: string;
  readonly epoch: number;
  readonly a: ActivationRef;
  readonly tokenHash: string;
  readonly stamp: string;
  readonly attempt: number;
  /** Under a retry policy: the attempt's status_details keys (JSON), or null. */
  readonly retry?: string | undefined;
}

interface Pending {
  readonly req: MarkRequest;
  resolve(ok: boolean): void;
  reject(err: unknown): void;
}

/** Marks in one statement at most (the arrays of one UPDATE). */
export const MARK_BATCH_MAX = 500;

const MARK = `UPDATE df.nodes n SET activation = m.key, attempt_token = m.hash, attempts = m.attempt,
       status = 'running', result = NULL,
       status_details = jsonb_build_object('execution_id', m.stamp) || coalesce(m.retry::jsonb, '{}'),
       updated_at = now()
  FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::int[], $9::text[])
       AS m(id, node, key, hash, epoch, stamp, attempt, retry)
 WHERE n.instance_id = m.id AND n.id = m.node
   AND (SELECT i.lease_epoch = m.epoch AND i.lease_owner = $8 AND i.status IN ('pending', 'running')
          FROM df.instances i WHERE i.id = m.id)
   AND NOT EXISTS (SELECT 1 FROM df.events e WHERE e.instance_id = m.id AND e.activation = m.key
                      AND e.kind IN ('done', 'failed'))
RETURNING n.instance_id AS id, n.id AS node`;

export class AttemptMarks {
  private queue: Pending[] = [];
  private busy = false;
  private scheduled = false;
  /** Statements sent and marks written, for tests and the benchmark notes. */
  readonly stats = { statements: 0, marks: 0 };

  constructor(
    private readonly pool: pg.Pool,
    private readonly owner: string,
  ) {}

  mark(req: MarkRequest): Promise<boolean> {
    return new Promise<boolean>((resolve, reject) => {
      this.queue.push({ req, resolve, reject });
      this.schedule();
    });
  }

  /** The next batch goes once the current one is back, and after this turn of the event loop. */
  private schedule(): void {
    if (this.busy || this.scheduled || this.queue.length === 0) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      void this.flush();
    });
  }

  private async flush(): Promise<void> {
    if (this.busy || this.queue.length === 0) return;
    // one mark per node in a batch: a second mark of the same node waits for the next
    const batch: Pending[] = [];
    const rest: Pending[] = [];
    const seen = new Set<string>();
    for (const p of this.queue) {
      const k = `${p.req.id}/${p.req.a.node}`;
      if (batch.length >= MARK_BATCH_MAX || seen.has(k)) rest.push(p);
      else {
        seen.add(k);
        batch.push(p);
      }
    }
    this.queue = rest;
    this.busy = true;
    try {
      const marked = await this.write(batch.map((p) => p.req));
      for (const p of batch) p.resolve(marked.has(`${p.req.id}/${p.req.a.node}`));
    } catch (err) {
      for (const p of batch) p.reject(err);
    } finally {
      this.busy = false;
      this.schedule();
    }
  }

  private async write(reqs: readonly MarkRequest[]): Promise<Set<string>> {
    this.stats.statements++;
    const r = await this.pool.query<{ id: string; node: string }>({
      name: statementName(MARK),
      text: MARK,
      values: [
        reqs.map((m) => m.id),
        reqs.map((m) => m.a.node),
        reqs.map((m) => m.a.key),
        reqs.map((m) => m.tokenHash),
        reqs.map((m) => m.epoch),
        reqs.map((m) => m.stamp),
        reqs.map((m) => m.attempt),
        this.owner,
        reqs.map((m) => m.retry ?? null),
      ],
    });
    this.stats.marks += r.rows.length;
    return new Set(r.rows.map((x) => `${x.id}/${x.node}`));
  }
}
