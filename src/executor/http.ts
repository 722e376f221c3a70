/**
 * HTTP and HTTP_MULTIPART steps (spec §6.12, §9.6, DESIGN.md §5 Q8): the
 * request built from the node's config after raw-mode substitution, the
 * endpoint policy (egress.ts: df.config http_enabled / http_allow_private /
 * http_allow_hosts, checked on the URL and on the address actually connected
 * to), the cap on the response body, the Idempotency-Key, and the response
 * envelope. Redirects are never followed; nothing is retried. An HTTP step is
 * at least once: a crash after the request and before its result is recorded
 * sends it again, with the same Idempotency-Key.
 */
import { createHash, randomBytes } from 'node:crypto';
import { Agent, request, type Dispatcher } from 'undici';
import {
  checkEndpoint,
  checkHostHeader,
  guardedConnector,
  type HttpPolicy,
  type LookupFunction,
} from './egress.js';
import { HttpStepError, type HttpPart, type HttpRequest } from './http-request.js';

export { addressBlocked, checkEndpoint, guardedLookup, type HttpPolicy } from './egress.js';
export { buildRequest, HttpStepError, type HttpPart, type HttpRequest } from './http-request.js';

/** Response bodies larger than this fail the step unless the caller passes another cap (4 MiB). */
export const DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024;

export interface SendOptions {
  /** The cap on the response body in bytes, enforced while it streams in. */
  readonly maxBodyBytes?: number;
  /** Sent as the `Idempotency-Key` header unless the step sets that header itself. */
  readonly idempotencyKey?: string;
  /** Name resolution for the connection (tests inject one); default: the system resolver. */
  readonly lookup?: LookupFunction;
}

const agents = new Map<boolean, Agent>();
function agentFor(allowPrivate: boolean, lookup: LookupFunction | undefined): Agent {
  // every request goes through guardedConnector; an injected lookup gets an agent of its own
  if (lookup)
    return new Agent({ connect: guardedConnector(allowPrivate, lookup), keepAliveTimeout: 1 });
  let a = agents.get(allowPrivate);
  if (!a) {
    a = new Agent({ connect: guardedConnector(allowPrivate), keepAliveTimeout: 4000 });
    agents.set(allowPrivate, a);
  }
  return a;
}

/**
 * The `Idempotency-Key` of an HTTP step (DESIGN.md §4): the same for every
 * send of one activation (a resend after a crash, a retry), different for
 * another node, loop iteration or instance. `instanceId` and `rootNode` are
 * both drawn at random by df.start, so together they tell instances apart
 * across databases and after retention frees an id; `activation` is the
 * node's activation key (scope, generation, node id).
 */
export function idempotencyKey(instanceId: string, rootNode: string, activation: string): string {
  const h = createHash('sha256')
    .update(`dfgate-idempotency-v1\0${instanceId}\0${rootNode}\0${activation}`)
    .digest('hex');
  return `dfgate-${h.slice(0, 40)}`;
}

// ---- the response ----------------------------------------------------------

const TEXT_TYPES = new Set([
  'application/json',
  'application/xml',
  'application/javascript',
  'application/ecmascript',
  'application/x-www-form-urlencoded',
  'application/graphql',
  'application/yaml',
  'application/x-yaml',
]);

function declaresText(contentType: string | undefined): string | undefined {
  if (!contentType) return undefined;
  const mime = (contentType.split(/[,;]/)[0] ?? '').trim().toLowerCase();
  if (!mime.startsWith('text/') && !/\+(json|xml|yaml)$/.test(mime) && !TEXT_TYPES.has(mime))
    return undefined;
  return /;\s*charset="?([^";,\s]+)"?/i.exec(contentType)?.[1] ?? 'utf-8';
}

function decodeBody(
  bytes: Buffer,
  contentType: string | undefined,
): { body: string; encoding: 'text' | 'base64' } {
  const charset = declaresText(contentType);
  if (charset !== undefined) {
    let dec: TextDecoder;
    try {
      dec = new TextDecoder(charset);
    } catch {
      dec = new TextDecoder('utf-8');
    }
    return { body: dec.decode(bytes), encoding: 'text' };
  }
  if (!bytes.includes(0)) {
    try {
      return { body: new TextDecoder('utf-8', { fatal: true }).decode(bytes), encoding: 'text' };
    } catch {
      // not UTF-8: base64 below
    }
  }
  return { body: bytes.toString('base64'), encoding: 'base64' };
}

function truncateUtf8(s: string, max: number): string {
  const b = Buffer.from(s, 'utf8');
  if (b.length <= max) return s;
  let cut = max;
  while (cut > 0 && ((b[cut] as number) & 0xc0) === 0x80) cut--;
  return b.subarray(0, cut).toString('utf8');
}

// ---- multipart -------------------------------------------------------------

function quoteParam(s: string): string {
  return s.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\r|\n/g, ' ');
}

function multipartBody(parts: readonly HttpPart[]): { body: Buffer; contentType: string } {
  const boundary = `dfgate-${randomBytes(12).toString('hex')}`;
  const chunks: Buffer[] = [];
  for (const p of parts) {
    let head = `--${boundary}\r\nContent-Disposition: form-data; name="${quoteParam(p.name)}"`;
    if (p.filename !== undefined) head += `; filename="${quoteParam(p.filename)}"`;
    head += '\r\n';
    if (p.contentType !== undefined) head += `Content-Type: ${p.contentType}\r\n`;
    else if (p.filename !== undefined) head += 'Content-Type: application/octet-stream\r\n';
    chunks.push(Buffer.from(head + '\r\n'), p.data, Buffer.from('\r\n'));
  }
  chunks.push(Buffer.from(`--${boundary}--\r\n`));
  return { body: Buffer.concat(chunks), contentType: `multipart/form-data; boundary=${boundary}` };
}

// ---- sending ---------------------------------------------------------------

export const USER_AGENT = 'dfgate/0.1';

const formatBytes = (n: number): string =>
  n % (1024 * 1024) === 0
    ? `${n / (1024 * 1024)} MiB`
    : n % 1024 === 0
      ? `${n / 1024} KiB`
      : `${n} bytes`;

/**
 * Sends the request; returns the envelope (spec §6.12 step 7) or throws an
 * HttpStepError whose message is the node's error.
 */
export async function sendHttp(
  req: HttpRequest,
  policy: HttpPolicy,
  options: SendOptions = {},
): Promise<string> {
  const endpoint = checkEndpoint(req.url, policy);
  const maxBody = options.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
  const headers: Record<string, string> = {};
  let hasUa = false;
  let hasKey = false;
  for (const [k, v] of req.headers) {
    const lower = k.toLowerCase();
    if (req.kind === 'HTTP_MULTIPART' && lower === 'content-type') continue;
    if (lower === 'user-agent') hasUa = true;
    if (lower === 'idempotency-key') hasKey = true;
    if (lower === 'host') checkHostHeader(v, policy);
    headers[k] = v;
  }
  if (!hasUa) headers['user-agent'] = USER_AGENT;
  if (!hasKey && options.idempotencyKey !== undefined)
    headers['idempotency-key'] = options.idempotencyKey;
  let body: string | Buffer | null = req.body;
  if (req.kind === 'HTTP_MULTIPART') {
    const mp = multipartBody(req.parts ?? []);
    body = mp.body;
    headers['content-type'] = mp.contentType;
  }
  const tooLarge = (): HttpStepError =>
    new HttpStepError(
      `HTTP response body of ${req.method} ${req.url} exceeds the limit of ${formatBytes(maxBody)} (${maxBody} bytes); dfgate stopped reading it. Raise the limit with dfgate's --max-result-bytes option.`,
    );
  const started = Date.now();
  const ms = req.timeoutSeconds * 1000;
  const dispatcher = agentFor(policy.allowPrivate, options.lookup);
  let res: Dispatcher.ResponseData;
  let bytes: Buffer;
  try {
    res = await request(endpoint.href, {
      method: req.method as Dispatcher.HttpMethod,
      headers,
      body: body ?? null,
      dispatcher,
      signal: AbortSignal.timeout(ms),
      headersTimeout: ms,
      bodyTimeout: ms,
    });
    // the body is read only up to the cap: past it the request is destroyed (and its connection closed)
    const declared = Number(res.headers['content-length']);
    if (Number.isFinite(declared) && declared > maxBody) {
      res.body.destroy();
      throw tooLarge();
    }
    const chunks: Buffer[] = [];
    let total = 0;
    for await (const chunk of res.body as AsyncIterable<Buffer>) {
      total += chunk.length;
      if (total > maxBody) {
        res.body.destroy();
        throw tooLarge();
      }
      chunks.push(chunk);
    }
    bytes = Buffer.concat(chunks, total);
  } catch (err) {
    if (err instanceof HttpStepError) throw err;
    const e = err as NodeJS.ErrnoException & { cause?: NodeJS.ErrnoException };
    const code = e.code ?? e.cause?.code;
    const detail = e.cause?.message ?? e.message;
    if (code === 'EDFGATEBLOCKED') throw new HttpStepError(e.code === code ? e.message : detail);
    if (
      e.name === 'TimeoutError' ||
      e.name === 'AbortError' ||
      code === 'UND_ERR_HEADERS_TIMEOUT' ||
      code === 'UND_ERR_BODY_TIMEOUT'
    )
      throw new HttpStepError(`HTTP timeout after ${req.timeoutSeconds}s: ${req.url}`);
    if (
      code !== undefined &&
      /^(ECONNREFUSED|ECONNRESET|ENOTFOUND|EAI_AGAIN|EHOSTUNREACH|ENETUNREACH|UND_ERR_CONNECT_TIMEOUT|UND_ERR_SOCKET)$/.test(
        code,
      )
    )
      throw new HttpStepError(`HTTP connection failed: ${req.url} - ${detail}`);
    throw new HttpStepError(`HTTP request failed: ${req.url} - ${detail}`);
  } finally {
    if (options.lookup) void dispatcher.destroy().catch(() => undefined);
  }
  const duration = Date.now() - started;
  const rawType = res.headers['content-type'];
  const contentType = Array.isArray(rawType) ? rawType[rawType.length - 1] : rawType;
  const { body: text, encoding } = decodeBody(bytes, contentType);
  const outHeaders: Record<string, string> = {};
  for (const [k, v] of Object.entries(res.headers)) {
    if (v === undefined) continue;
    outHeaders[k.toLowerCase()] = Array.isArray(v) ? (v[v.length - 1] as string) : v;
  }
  if (res.statusCode >= 500) {
    const total =
      encoding === 'base64'
        ? `${text.length} base64 characters total`
        : `${Buffer.byteLength(text)} bytes total`;
    const preview =
      Buffer.byteLength(text) > 512 ? `${truncateUtf8(text, 512)}... [truncated, ${total}]` : text;
    throw new HttpStepError(
      `${req.kind === 'HTTP' ? 'HTTP' : 'HTTP_MULTIPART'} ${req.method} ${req.url} returned ${res.statusCode}: ${preview}`,
    );
  }
  return (
    `{"status":${res.statusCode},"body":${JSON.stringify(text)},"encoding":"${encoding}",` +
    `"headers":${JSON.stringify(outHeaders)},"ok":${res.statusCode >= 200 && res.statusCode < 300},"duration_ms":${duration}}`
  );
}

// ---- the node's config -----------------------------------------------------
