/**
 * Fresh statistics for the executor's tables (docs/executor.md, "Plans and
 * statistics"). The claim keeps its generic plan (options.ts), and the
 * functions a step's checkpoint calls keep theirs: plans made from the
 * statistics of the moment they were made. A plan made while df.instances
 * held one instance reads it with a sequential scan, and goes on doing so
 * when a burst of starts has put thousands there: autovacuum analyzes the
 * table after its next naptime (a minute by default), long after the burst
 * is gone. So when a table has grown to twice what its statistics say (and
 * by eight pages at least), the executor analyzes it at once: PostgreSQL
 * then re-plans every cached plan that reads it, in every session.
 *
 * Checked at most once a second, when a claim runs; one ANALYZE at a time,
 * SKIP_LOCKED (autovacuum at work on the table is left to it). A table the
 * control login may not analyze (PostgreSQL skips it with a warning) or
 * whose statistics did not change is tried again only when it has doubled
 * once more, so a few attempts in all, never one per second.
 */
import type { Logger } from 'pino';
import type pg from 'pg';

const TABLES = ['instances', 'nodes', 'events'] as const;
const CHECK_MS = 1000;

const SIZES = `
  SELECT c.relname AS name, c.relpages AS planned,
         (pg_relation_size(c.oid) / current_setting('block_size')::int)::int AS pages
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname = 'df' AND c.relname = ANY ($1::text[]) AND c.relkind = 'r'`;

export class TableStatistics {
  private checkedAt = 0;
  private busy = false;
  /** Pages each table had when it was last analyzed here (or tried). */
  private readonly tried = new Map<string, number>();

  constructor(
    private readonly pool: pg.Pool,
    private readonly log: Logger,
  ) {}

  /** Analyzes the tables grown past their statistics; returns at once, works in the background. */
  check(now = Date.now()): void {
    if (this.busy || now - this.checkedAt < CHECK_MS) return;
    this.checkedAt = now;
    this.busy = true;
    this.refresh()
      .catch((err: unknown) =>
        this.log.debug({ err: (err as Error).message }, 'table statistics check failed'),
      )
      .finally(() => {
        this.busy = false;
      });
  }

  /** The check itself: the names of the tables it analyzed. */
  async refresh(): Promise<string[]> {
    const { rows } = await this.pool.query<{ name: string; planned: number; pages: number }>({
      name: 'dfgate_table_sizes',
      text: SIZES,
      values: [TABLES],
    });
    const grown = rows.filter(
      (r) => r.pages >= 2 * Math.max(r.planned, this.tried.get(r.name) ?? 0) + 8,
    );
    for (const r of grown) {
      this.tried.set(r.name, r.pages);
      await this.pool.query(`ANALYZE (SKIP_LOCKED) df.${r.name}`);
      this.log.debug({ table: r.name, pages: r.pages, planned: r.planned }, 'table analyzed');
    }
    return grown.map((r) => r.name);
  }
}
