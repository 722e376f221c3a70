/** PostgreSQL connection URLs: validation and secret masking. */

export class UrlError extends Error {
  override readonly name = 'UrlError';
}

/** Parses and validates a postgres:// or postgresql:// URL. */
export function parsePostgresUrl(text: string, what = 'URL'): URL {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new UrlError(`${what} is not a valid URL: ${maskSecrets(text)}`);
  }
  if (url.protocol !== 'postgres:' && url.protocol !== 'postgresql:') {
    throw new UrlError(
      `${what} must start with postgres:// or postgresql:// (got ${url.protocol}//)`,
    );
  }
  if (!url.hostname && !url.searchParams.get('host')) {
    throw new UrlError(`${what} names no host: ${maskSecrets(text)}`);
  }
  return url;
}

/** Replaces the password of every URL in a text (and password=... pairs) with "***". */
export function maskSecrets(text: string): string {
  return text
    .replace(/(postgres(?:ql)?:\/\/[^:/@\s]*:)[^@\s]*@/gi, '$1***@')
    .replace(/(password=)[^&\s]*/gi, '$1***');
}
