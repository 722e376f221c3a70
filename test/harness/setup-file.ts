/** Shows the tail of the PostgreSQL server log when a test fails. */
import { readFileSync } from 'node:fs';
import { afterEach, inject } from 'vitest';

afterEach((ctx) => {
  if (ctx.task.result?.state !== 'fail') return;
  const file = inject('serverLog');
  if (!file) return;
  try {
    const lines = readFileSync(file, 'utf8').trimEnd().split('\n').slice(-40);
    process.stderr.write(
      `\n--- PostgreSQL server log (last ${lines.length} lines of ${file}) ---\n${lines.join('\n')}\n---\n`,
    );
  } catch {
    // no log to show
  }
});
