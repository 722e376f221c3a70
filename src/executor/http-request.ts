/**
 * The request of an HTTP or HTTP_MULTIPART step built from its node's config
 * (spec §6.12 step 1), and the error type of HTTP steps. Pure: no I/O, so the
 * deterministic core (core.ts) can build requests without pulling in the
 * network code (http.ts, egress.ts).
 */

/** A config problem, a refused endpoint or a failed request: the step fails with this message. */
export class HttpStepError extends Error {}

export interface HttpPart {
  readonly name: string;
  readonly data: Buffer;
  readonly filename?: string | undefined;
  readonly contentType?: string | undefined;
}

export interface HttpRequest {
  readonly kind: 'HTTP' | 'HTTP_MULTIPART';
  readonly url: string;
  readonly method: string;
  readonly body: string | null;
  readonly headers: ReadonlyArray<readonly [string, string]>;
  readonly timeoutSeconds: number;
  readonly parts?: readonly HttpPart[];
}

const WHOLE_REF =
  /^(\$[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?\??|\{[A-Za-z_][A-Za-z0-9_]*\})$/;
const MIME =
  /^[A-Za-z0-9!#$&^_.+-]+\/[A-Za-z0-9!#$&^_.+-]+(\s*;\s*[A-Za-z0-9!#$&^_.+-]+=("[^"]*"|[A-Za-z0-9!#$&^_.+-]+))*$/;

/**
 * The request of an HTTP node from its stored config, substituted in raw mode
 * with `sub` (spec §6.12 step 1). Throws HttpStepError for config problems;
 * substitution errors propagate.
 */
export function buildRequest(
  kind: 'HTTP' | 'HTTP_MULTIPART',
  nodeId: string,
  query: string | null,
  sub: (text: string) => string,
): HttpRequest {
  let cfg: Record<string, unknown>;
  try {
    const v = JSON.parse(query ?? '') as unknown;
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error('not an object');
    cfg = v as Record<string, unknown>;
  } catch (err) {
    throw new HttpStepError(
      `Invalid ${kind === 'HTTP' ? '' : 'multipart '}HTTP config: ${(err as Error).message}`,
    );
  }
  const url = sub(String(cfg['url'] ?? ''));
  const method = String(cfg['method'] ?? 'POST').toUpperCase();
  const timeout =
    typeof cfg['timeout_seconds'] === 'number' ? (cfg['timeout_seconds'] as number) : 30;
  const headers: Array<[string, string]> = [];
  const h = cfg['headers'];
  if (h !== null && typeof h === 'object' && !Array.isArray(h))
    for (const [k, v] of Object.entries(h as Record<string, unknown>))
      if (typeof v === 'string') headers.push([k, sub(v)]);
  if (kind === 'HTTP') {
    const body = typeof cfg['body'] === 'string' ? sub(cfg['body'] as string) : null;
    return { kind, url, method, body, headers, timeoutSeconds: timeout };
  }
  const parts: HttpPart[] = [];
  for (const p of Array.isArray(cfg['parts']) ? (cfg['parts'] as unknown[]) : []) {
    const o = (p ?? {}) as Record<string, unknown>;
    if (typeof o['name'] !== 'string')
      throw new HttpStepError('Invalid multipart HTTP config: missing field `name`');
    if (typeof o['data_b64'] !== 'string')
      throw new HttpStepError('Invalid multipart HTTP config: missing field `data_b64`');
    const name = sub(o['name']);
    let b64 = o['data_b64'].trim();
    if (WHOLE_REF.test(b64)) b64 = sub(b64);
    else if (/[$]|\{/.test(b64))
      throw new HttpStepError(
        `HTTP_MULTIPART node ${nodeId}: data_b64 for part '${name}' mixes a variable reference with other text. Only a whole-value reference is supported (e.g. data_b64 => '$result' or '{myvar}'), because splicing into base64 would corrupt the payload.`,
      );
    const clean = b64.replace(/[\t\n\f\r ]/g, '');
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(clean) || clean.length % 4 !== 0)
      throw new HttpStepError(`Invalid base64 in part '${name}': not standard base64 with padding`);
    const contentType =
      typeof o['content_type'] === 'string' ? (o['content_type'] as string) : undefined;
    if (contentType !== undefined && !MIME.test(contentType))
      throw new HttpStepError(
        `Invalid content_type for part '${name}': '${contentType}' is not a MIME type`,
      );
    parts.push({
      name,
      data: Buffer.from(clean, 'base64'),
      filename: typeof o['filename'] === 'string' ? sub(o['filename'] as string) : undefined,
      contentType,
    });
  }
  return { kind, url, method, body: null, headers, timeoutSeconds: timeout, parts };
}
