/**
 * Runs every ```sql example block of README.md and docs/*.md on a direct
 * connection, and every ```sql dfgate block through dfgate (with its
 * executor): each statement is followed by the text it returns (first column
 * of the first row; "--" alone for none), "-- ~<regular expression>" it matches, or
 * "-- ERROR: <start of the message>".
 */
import { readdirSync, readFileSync } from 'node:fs';
import type pg from 'pg';
import { beforeAll, describe, expect, it } from 'vitest';
import { useTestDatabase } from '../harness/db.js';
import { startTestProxy, viaPort } from '../harness/dfgate.js';
import { startTestExecutor } from '../harness/executor.js';

interface Example {
  readonly file: string;
  readonly via: 'example' | 'dfgate';
  readonly sql: string;
  readonly expect: string;
}

function examples(): Example[] {
  const files = [
    'README.md',
    ...readdirSync('docs')
      .filter((f) => f.endsWith('.md'))
      .map((f) => `docs/${f}`),
  ];
  const out: Example[] = [];
  for (const file of files) {
    const text = readFileSync(file, 'utf8');
    for (const block of text.matchAll(/```sql (example|dfgate)\n([\s\S]*?)```/g)) {
      const via = block[1] as Example['via'];
      const lines = (block[2] ?? '').split('\n');
      let sql: string[] = [];
      for (const line of lines) {
        if (line === '--' || line.startsWith('-- ')) {
          out.push({ file, via, sql: sql.join('\n'), expect: line.slice(3) });
          sql = [];
        } else if (line.trim()) {
          sql.push(line);
        }
      }
      if (sql.length) out.push({ file, via, sql: sql.join('\n'), expect: '' });
    }
  }
  return out;
}

const all = examples();
const db = useTestDatabase();
const conns: Record<Example['via'], pg.Client> = {} as Record<Example['via'], pg.Client>;
beforeAll(async () => {
  const role = await db.role('docs', { http: true });
  conns.example = await db.connect(role.url);
  const ex = await startTestExecutor(db.url);
  const proxy = await startTestProxy(db.url, {
    edgeValidation: true,
    onDfCommit: () => ex.wake(),
    startNew: (req) => ex.startNew(req),
  });
  conns.dfgate = await db.connect(viaPort(role.url, proxy.port));
});

describe('documentation examples', () => {
  it('finds examples', () => {
    expect(all.length).toBeGreaterThan(20);
  });
  for (const ex of all) {
    it(`${ex.file}: ${ex.sql.slice(0, 80)}`, async () => {
      const c = conns[ex.via];
      if (ex.expect.startsWith('ERROR: ')) {
        const err = await c.query(ex.sql).catch((e: unknown) => e);
        expect(err).toBeInstanceOf(Error);
        expect((err as Error).message.startsWith(ex.expect.slice(7))).toBe(true);
        return;
      }
      const all = (await c.query({ text: ex.sql, rowMode: 'array' })) as unknown as
        pg.QueryResult | pg.QueryResult[];
      // several statements: the last one's answer
      const r = Array.isArray(all) ? (all[all.length - 1] as pg.QueryResult) : all;
      const v = (r.rows[0] as unknown[] | undefined)?.[0];
      const got = v === null || v === undefined ? '' : String(v);
      if (ex.expect.startsWith('~')) expect(got).toMatch(new RegExp(`^(?:${ex.expect.slice(1)})$`));
      else expect(got).toBe(ex.expect);
    });
  }
});
