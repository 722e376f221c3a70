/**
 * Runs every ```sql example block of README.md and docs/*.md: each statement
 * is followed by the text it returns (first column of the first row) or by
 * "-- ERROR: <start of the message>".
 */
import { readdirSync, readFileSync } from 'node:fs';
import type pg from 'pg';
import { beforeAll, describe, expect, it } from 'vitest';
import { useTestDatabase } from '../harness/db.js';

interface Example {
  readonly file: string;
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
    for (const block of text.matchAll(/```sql example\n([\s\S]*?)```/g)) {
      const lines = (block[1] ?? '').split('\n');
      let sql: string[] = [];
      for (const line of lines) {
        if (line.startsWith('-- ')) {
          out.push({ file, sql: sql.join('\n'), expect: line.slice(3) });
          sql = [];
        } else if (line.trim()) {
          sql.push(line);
        }
      }
      if (sql.length) out.push({ file, sql: sql.join('\n'), expect: '' });
    }
  }
  return out;
}

const all = examples();
const db = useTestDatabase();
let c: pg.Client;
beforeAll(async () => {
  c = await db.connect((await db.role('docs', { http: true })).url);
});

describe('documentation examples', () => {
  it('finds examples', () => {
    expect(all.length).toBeGreaterThan(20);
  });
  for (const ex of all) {
    it(`${ex.file}: ${ex.sql.slice(0, 80)}`, async () => {
      if (ex.expect.startsWith('ERROR: ')) {
        const err = await c.query(ex.sql).catch((e: unknown) => e);
        expect(err).toBeInstanceOf(Error);
        expect((err as Error).message.startsWith(ex.expect.slice(7))).toBe(true);
        return;
      }
      const r = await c.query({ text: ex.sql, rowMode: 'array' });
      const v = (r.rows[0] as unknown[] | undefined)?.[0];
      expect(v === null || v === undefined ? '' : String(v)).toBe(ex.expect);
    });
  }
});
