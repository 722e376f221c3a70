/** Loading PostgreSQL's parser (libpg-query, WebAssembly) once per process, and calling it. */
import { loadModule, parseSync } from 'libpg-query';

let loaded: Promise<void> | undefined;

export function loadParser(): Promise<void> {
  loaded ??= loadModule();
  return loaded;
}

let broken = false;

/**
 * PostgreSQL's parse of `sql` (libpg-query's parseSync). A parse that runs
 * out of stack inside the WebAssembly parser (RangeError, or a
 * WebAssembly.RuntimeError) leaves that parser's memory in a state later
 * parses cannot trust: it is marked broken (parserBroken), so that a compile
 * worker ends itself and is replaced, and the event loop parses nothing
 * more that a worker can parse instead.
 */
export function parse(sql: string): ReturnType<typeof parseSync> {
  try {
    return parseSync(sql);
  } catch (err) {
    if (err instanceof RangeError || err instanceof WebAssembly.RuntimeError) broken = true;
    throw err;
  }
}

/** A parse on this thread ran out of stack or memory inside the parser (see parse). */
export function parserBroken(): boolean {
  return broken;
}
