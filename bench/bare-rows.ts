/**
 * The rows dfgate writes for a one-step workflow, written bare (issue 12):
 * what W2 would cost if dfgate's code cost nothing and only its storage
 * remained. The same tables, indexes, row checks, triggers and foreign keys
 * as dfgate's (the df schema of the benchmark database), the same
 * transactions and the same batching as the executor:
 *
 * - the starts, 100 per transaction: the instance rows and their nodes in
 *   one statement (df._start_batch's two INSERTs, without its checks);
 * - a claimer on one connection leasing up to 20 fresh instances at a time
 *   and marking their nodes running, in one statement (the executor's claim
 *   with first marks);
 * - ten step connections, each running a step and its checkpoint in one
 *   message: BEGIN, the step, the instance finished and its completion event
 *   (one statement), the node completed, COMMIT (df._complete_step's three
 *   writes, without the function, the attempt token's hash, SET ROLE or the
 *   session reset).
 *
 * Everything runs as the superuser (no row-level security), so this is a
 * floor: no dfgate, however lean, writes these rows for less.
 */
import pg from 'pg';

/** What each step returns (a statement without rows). */
const RESULT = '{"rows": [], "row_count": 1}';

/** Instances claimed at a time, and step connections (as the executor's). */
const CLAIM = 20;

interface Job {
  readonly id: string;
  readonly node: string;
  readonly wf: number;
  readonly epoch: string;
}

/** `workflows` one-step workflows through the bare rows; resolves when every step committed. */
export async function bareRows(
  adminUrl: string,
  role: string,
  workflows: number,
  concurrency: number,
  batch: number,
  drained: () => Promise<void>,
): Promise<void> {
  const connect = async (): Promise<pg.Client> => {
    const c = new pg.Client({ connectionString: adminUrl });
    await c.connect();
    return c;
  };
  const enq = await connect();
  const claimer = await connect();
  const workers = await Promise.all(Array.from({ length: concurrency }, connect));
  // ids that no earlier run used: instance ids from `base`, node ids 2^28 above them
  const base = 0x1000_0000 + Math.floor(Math.random() * 0x0800_0000);
  const queue: Job[] = [];
  let done = false;
  let wake: (() => void) | undefined;
  const waitForWork = (): Promise<void> =>
    new Promise((r) => {
      wake = r;
      setTimeout(r, 2);
    });
  const claims = (async () => {
    while (!done) {
      if (queue.length >= CLAIM) {
        await waitForWork();
        continue;
      }
      const r = await claimer.query<{
        id: string;
        root_node: string;
        label: string;
        lease_epoch: string;
      }>(
        `WITH c AS (
           UPDATE df.instances i
              SET status = 'running', lease_owner = 'bare', lease_epoch = i.lease_epoch + 1,
                  lease_expires_at = now() + interval '30 seconds', updated_at = now()
            WHERE i.id IN (SELECT f.id FROM df.instances f
                            WHERE f.runnable AND f.status IN ('pending', 'running') AND f.lease_owner IS NULL
                              AND f.wake_at IS NULL AND (f.waiting_signals IS NULL OR f.waiting_signals = '{}')
                              AND f.submitted_by = $1::regrole
                            ORDER BY f.submitted_by, f.created_at, f.id
                              FOR UPDATE SKIP LOCKED LIMIT $2)
           RETURNING i.id, i.root_node, i.label, i.lease_epoch
         ), m AS (
           UPDATE df.nodes n
              SET status = 'running', attempts = 1, attempt_token = md5(c.id),
                  activation = c.id || '::1/' || c.root_node,
                  status_details = jsonb_build_object('execution_id', c.id || '::1'), updated_at = now()
             FROM c WHERE n.instance_id = c.id AND n.id = c.root_node
         )
         SELECT id, root_node, label, lease_epoch FROM c`,
        [role, CLAIM - queue.length],
      );
      for (const row of r.rows)
        queue.push({
          id: row.id,
          node: row.root_node,
          wf: Number(row.label.slice('bare-'.length)),
          epoch: row.lease_epoch,
        });
      if (r.rows.length === 0) await new Promise((res) => setTimeout(res, 2));
    }
  })();
  const steps = workers.map(async (c) => {
    while (!done) {
      const job = queue.shift();
      if (!job) {
        await new Promise((res) => setTimeout(res, 1));
        continue;
      }
      wake?.();
      await c.query({
        name: 'bare_step',
        text: `WITH s AS (UPDATE public.bench_counters SET n = n + 1 WHERE id = $1::int),
               u AS (UPDATE df.instances
                        SET event_seq = event_seq + 1, updated_at = now(), status = 'completed',
                            output = $5::text, completed_at = now(), lease_owner = NULL, lease_expires_at = NULL
                      WHERE id = $2::text AND lease_epoch = $4::bigint AND status IN ('pending', 'running')
                      RETURNING event_seq, submitted_by),
               e AS (INSERT INTO df.events (instance_id, submitted_by, node_id, kind, detail, seq, activation)
                     SELECT $2::text, u.submitted_by, $3::text, 'done', jsonb_build_object('result', $5::text),
                            u.event_seq, $2::text || '::1/' || $3::text FROM u)
               UPDATE df.nodes
                  SET status = 'completed', result = $5::jsonb, attempt_token = NULL,
                      status_details = jsonb_build_object('execution_id', $2::text || '::1'), updated_at = now()
                WHERE instance_id = $2::text AND id = $3::text AND attempt_token = md5($2::text)`,
        values: [job.wf, job.id, job.node, job.epoch, RESULT],
      });
    }
  });
  try {
    for (let i = 0; i < workflows; i += batch)
      await enq.query(
        `WITH i AS (
           INSERT INTO df.instances (id, label, root_node, submitted_by, runnable)
           SELECT lpad(to_hex($1::bigint + g), 8, '0'), 'bare-' || g,
                  lpad(to_hex($1::bigint + g + 268435456), 8, '0'), $4::regrole, true
             FROM generate_series($2::int, $3::int) g
           RETURNING id, root_node, label)
         INSERT INTO df.nodes (id, instance_id, node_type, query, submitted_by)
         SELECT i.root_node, i.id, 'SQL',
                'UPDATE public.bench_counters SET n = n + 1 WHERE id = ' || substr(i.label, 6), $4::regrole
           FROM i`,
        [base, i + 1, Math.min(i + batch, workflows), role],
      );
    await drained();
  } finally {
    done = true;
    wake?.();
    await Promise.all([claims, ...steps]);
    await Promise.all([enq, claimer, ...workers].map((c) => c.end()));
  }
}
