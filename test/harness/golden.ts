/** The golden DSL vectors, shared by the database suite and the src/dsl suite. */
import { readFileSync } from 'node:fs';

export interface DslCase {
  readonly expr: string;
  readonly graph?: string;
  readonly error?: string;
  readonly same_as?: string;
  readonly null?: boolean;
}

export function dslCases(): readonly DslCase[] {
  return (
    JSON.parse(readFileSync(new URL('../golden/dsl-cases.json', import.meta.url), 'utf8')) as {
      cases: DslCase[];
    }
  ).cases;
}
