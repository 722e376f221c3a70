/** Loading PostgreSQL's parser (libpg-query, WebAssembly) once per process. */
import { loadModule } from 'libpg-query';

let loaded: Promise<void> | undefined;

export function loadParser(): Promise<void> {
  loaded ??= loadModule();
  return loaded;
}
