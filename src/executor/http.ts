/**
 * HTTP and HTTP_MULTIPART steps (spec §6.12, §9.6, DESIGN.md §5 Q8): the
 * request built from the node's config after raw-mode substitution, the
 * endpoint policy (df.config http_enabled / http_allow_private /
 * http_allow_hosts), SSRF protection on the address actually connected to,
 * and the response envelope. Redirects are never followed; nothing is
 * retried. An HTTP step is at least once: a crash after the request and
 * before its result is recorded sends it again.
 */
import { randomBytes } from 'node:crypto';
import dns from 'node:dns';
import net from 'node:net';
import { Agent, request, type Dispatcher } from 'undici';

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

export interface HttpPolicy {
  readonly enabled: boolean;
  readonly allowPrivate: boolean;
  /** Exact host names, or '.suffix' entries; empty: any host. */
  readonly allowHosts: readonly string[];
}

export class HttpStepError extends Error {}

// ---- addresses -----------------------------------------------------------

type Range = readonly [bigint, bigint]; // [first, last] as 128-bit integers (IPv4 mapped into ::ffff:0:0/96)

function v4(a: string): bigint {
  return a.split('.').reduce((acc, o) => (acc << 8n) | BigInt(Number(o)), 0n) | 0xffff00000000n;
}

function v6(a: string): bigint {
  let s = a.toLowerCase();
  const dotted = /(\d+\.\d+\.\d+\.\d+)$/.exec(s);
  if (dotted) {
    const n = v4(dotted[1] as string) & 0xffffffffn;
    s =
      s.slice(0, -(dotted[1] as string).length) +
      `${(n >> 16n).toString(16)}:${(n & 0xffffn).toString(16)}`;
  }
  const [head, tail] = s.split('::') as [string, string | undefined];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
  return groups.reduce((acc, g) => (acc << 16n) | BigInt(parseInt(g || '0', 16)), 0n);
}

function cidr(text: string): Range {
  const [addr, bits] = text.split('/') as [string, string];
  const isV4 = net.isIPv4(addr);
  const base = isV4 ? v4(addr) : v6(addr);
  const len = isV4 ? 96 + Number(bits) : Number(bits);
  const host = (1n << BigInt(128 - len)) - 1n;
  return [base & ~host, (base & ~host) | host];
}

/** Never reachable from an HTTP step: "this network", link-local (cloud metadata), and known metadata addresses. */
const ALWAYS_BLOCKED = [
  '0.0.0.0/8',
  '169.254.0.0/16',
  '100.100.100.200/32',
  '::/128',
  'fe80::/10',
  'fd00:ec2::254/128',
].map(cidr);
/** Loopback and private ranges: reachable only with http_allow_private. */
const PRIVATE = [
  '10.0.0.0/8',
  '100.64.0.0/10',
  '127.0.0.0/8',
  '172.16.0.0/12',
  '192.168.0.0/16',
  '::1/128',
  'fc00::/7',
].map(cidr);

/** Why an address may not be connected to, or undefined when it may. */
export function addressBlocked(address: string, allowPrivate: boolean): boolean {
  const fam = net.isIP(address);
  if (fam === 0) return true;
  let n = fam === 4 ? v4(address) : v6(address);
  // IPv4-mapped IPv6 (::ffff:a.b.c.d) is judged as the IPv4 address it carries
  if (n >> 32n === 0xffffn) n = (n & 0xffffffffn) | 0xffff00000000n;
  const inside = (r: Range): boolean => n >= r[0] && n <= r[1];
  if (ALWAYS_BLOCKED.some(inside)) return true;
  return !allowPrivate && PRIVATE.some(inside);
}

/** The host of a URL as spec §9.6 extracts it (lower case; IPv6 literals without brackets). */
export function hostOf(url: string): string | undefined {
  const i = url.indexOf('://');
  if (i < 0) return undefined;
  let rest = url.slice(i + 3);
  const end = rest.search(/[/?#]/);
  if (end >= 0) rest = rest.slice(0, end);
  const at = rest.lastIndexOf('@');
  if (at >= 0) rest = rest.slice(at + 1);
  if (rest.startsWith('[')) {
    const close = rest.indexOf(']');
    return close > 0 ? rest.slice(1, close).toLowerCase() : undefined;
  }
  const colon = rest.lastIndexOf(':');
  if (colon >= 0) rest = rest.slice(0, colon);
  return rest ? rest.toLowerCase() : undefined;
}

const BLOCKED_RANGE = (host: string): string =>
  `Blocked: the resolved IP address for '${host}' is in a restricted range. df.http() cannot access private or internal network addresses.`;

/** The policy checks that need no network (spec §6.12 steps 3 and 4); throws HttpStepError. */
export function checkEndpoint(url: string, policy: HttpPolicy): string {
  if (!policy.enabled)
    throw new HttpStepError(
      "Blocked: outbound HTTP requests are disabled. An administrator enables them with: UPDATE df.config SET value = 'true' WHERE key = 'http_enabled'",
    );
  const scheme = url.includes('://') ? url.slice(0, url.indexOf('://')).toLowerCase() : url;
  if (scheme !== 'http' && scheme !== 'https')
    throw new HttpStepError(
      `Blocked: unsupported URL scheme '${scheme}'. Only http and https are allowed.`,
    );
  const host = hostOf(url);
  if (!host) throw new HttpStepError('Blocked: unable to extract hostname from URL.');
  if (
    policy.allowHosts.length > 0 &&
    !policy.allowHosts.some((h) => (h.startsWith('.') ? host.endsWith(h) : host === h))
  )
    throw new HttpStepError(
      `Blocked: '${host}' is not in the allowed endpoint list (df.config http_allow_hosts).`,
    );
  if (net.isIP(host) && addressBlocked(host, policy.allowPrivate))
    throw new HttpStepError(BLOCKED_RANGE(host));
  return host;
}

// ---- connecting ----------------------------------------------------------

type LookupCallback = (
  err: NodeJS.ErrnoException | null,
  address: string | dns.LookupAddress[],
  family?: number,
) => void;

/** A dns.lookup that answers only with permitted addresses; net.connect then uses exactly those. */
export function guardedLookup(
  allowPrivate: boolean,
  resolve: typeof dns.lookup = dns.lookup,
): (host: string, options: dns.LookupOptions, cb: LookupCallback) => void {
  return (host, options, cb) => {
    resolve(host, { ...options, all: true }, (err, addresses) => {
      if (err) {
        cb(err, []);
        return;
      }
      const list = (addresses as dns.LookupAddress[]).filter(
        (a) => !addressBlocked(a.address, allowPrivate),
      );
      if (list.length === 0) {
        const e = new Error(BLOCKED_RANGE(host)) as NodeJS.ErrnoException;
        e.code = 'EDFGATEBLOCKED';
        cb(e, []);
        return;
      }
      if (options.all) cb(null, list);
      else cb(null, (list[0] as dns.LookupAddress).address, (list[0] as dns.LookupAddress).family);
    });
  };
}

const agents = new Map<boolean, Agent>();
function agentFor(allowPrivate: boolean): Agent {
  let a = agents.get(allowPrivate);
  if (!a) {
    a = new Agent({
      connect: { lookup: guardedLookup(allowPrivate) as never },
      keepAliveTimeout: 4000,
    });
    agents.set(allowPrivate, a);
  }
  return a;
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

/**
 * Sends the request; returns the envelope (spec §6.12 step 7) or throws an
 * HttpStepError whose message is the node's error.
 */
export async function sendHttp(req: HttpRequest, policy: HttpPolicy): Promise<string> {
  const host = checkEndpoint(req.url, policy);
  const headers: Record<string, string> = {};
  let hasUa = false;
  for (const [k, v] of req.headers) {
    if (req.kind === 'HTTP_MULTIPART' && k.toLowerCase() === 'content-type') continue;
    if (k.toLowerCase() === 'user-agent') hasUa = true;
    headers[k] = v;
  }
  if (!hasUa) headers['user-agent'] = USER_AGENT;
  let body: string | Buffer | null = req.body;
  if (req.kind === 'HTTP_MULTIPART') {
    const mp = multipartBody(req.parts ?? []);
    body = mp.body;
    headers['content-type'] = mp.contentType;
  }
  const started = Date.now();
  const ms = req.timeoutSeconds * 1000;
  let res: Dispatcher.ResponseData;
  let bytes: Buffer;
  try {
    res = await request(req.url, {
      method: req.method as Dispatcher.HttpMethod,
      headers,
      body: body ?? null,
      dispatcher: agentFor(policy.allowPrivate),
      signal: AbortSignal.timeout(ms),
      headersTimeout: ms,
      bodyTimeout: ms,
    });
    bytes = Buffer.from(await res.body.arrayBuffer());
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { cause?: NodeJS.ErrnoException };
    const code = e.code ?? e.cause?.code;
    const detail = e.cause?.message ?? e.message;
    if (code === 'EDFGATEBLOCKED' || /restricted range/.test(detail))
      throw new HttpStepError(BLOCKED_RANGE(host));
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
