/**
 * The proxy's cache of what it decided about a statement text (edge.ts),
 * bounded by entries and by the characters its keys and rewrites hold.
 */
import type { Edge } from './edge.js';

const cache = new Map<string, Edge>();
const CACHE_MAX = 1000;
/** Longer texts are not cached. */
const CACHE_TEXT_MAX = 16 * 1024;
/** Characters held by the cache, keys and rewrites: at most 8 Mi (16 MiB of strings). */
const CACHE_CHARS_MAX = 8 * 1024 * 1024;
let cacheChars = 0;

function cacheKey(sql: string, extended: boolean): string {
  return (extended ? 'E' : 'Q') + sql;
}

function charsOf(key: string, e: Edge): number {
  return key.length + (e.kind === 'rewrite' ? e.text.length + (e.batch?.sql.length ?? 0) : 0);
}

/** A cached Edge of this statement, if any. */
export function cachedEdge(sql: string, extended: boolean): Edge | undefined {
  return sql.length > CACHE_TEXT_MAX ? undefined : cache.get(cacheKey(sql, extended));
}

export function rememberEdge(sql: string, extended: boolean, e: Edge): void {
  if (sql.length > CACHE_TEXT_MAX) return;
  const key = cacheKey(sql, extended);
  const chars = charsOf(key, e);
  if (chars > CACHE_CHARS_MAX / 64 || cache.has(key)) return;
  while (cache.size > 0 && (cache.size >= CACHE_MAX || cacheChars + chars > CACHE_CHARS_MAX)) {
    const [k, old] = cache.entries().next().value as [string, Edge];
    cache.delete(k);
    cacheChars -= charsOf(k, old);
  }
  cache.set(key, e);
  cacheChars += chars;
}

/** Entries and characters the cache holds now. */
export function edgeCacheSize(): { readonly entries: number; readonly chars: number } {
  return { entries: cache.size, chars: cacheChars };
}
