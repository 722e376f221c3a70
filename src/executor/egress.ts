/**
 * The egress policy of HTTP steps (spec §9.6, DESIGN.md §5 Q8): which URLs
 * and which peer addresses an HTTP step may reach, and the undici connector
 * that enforces it on every connection.
 *
 * One parser decides and connects: the URL is parsed once with WHATWG
 * `new URL` (the parser undici itself uses), the policy judges that parse,
 * and the request is sent to its normalised `href`. Whatever spelling a URL
 * uses for an address (decimal `2130706433`, hex, octal, short `127.1`,
 * percent-encoded, fullwidth dots, a trailing dot, IPv6 forms that embed an
 * IPv4 address), the policy sees the canonical address. The connector then
 * checks again at connect time: IP literals before connecting, DNS answers
 * before they are used, and the socket's actual peer address after connecting.
 */
import dns from 'node:dns';
import net from 'node:net';
import { buildConnector } from 'undici';
import { HttpStepError } from './http-request.js';

export interface HttpPolicy {
  readonly enabled: boolean;
  readonly allowPrivate: boolean;
  /** Host names, or '.suffix' entries matching subdomains; empty: any host. */
  readonly allowHosts: readonly string[];
}

export { HttpStepError };

// ---- address ranges ----------------------------------------------------------

interface Range {
  readonly first: bigint;
  readonly last: bigint;
  readonly cidr: string;
  readonly what: string;
}

/** A parsed address: IPv4 as a 32-bit, IPv6 as a 128-bit integer. */
interface Ip {
  readonly v: 4 | 6;
  readonly n: bigint;
}

function parseV4(s: string): bigint | undefined {
  if (!net.isIPv4(s)) return undefined;
  return s.split('.').reduce((acc, o) => (acc << 8n) | BigInt(Number(o)), 0n);
}

function parseV6(text: string): bigint | undefined {
  const s = text.toLowerCase();
  if (!net.isIPv6(s)) return undefined;
  let body = s;
  let tailGroups: string[] = [];
  const dotted = /(?:^|:)(\d+\.\d+\.\d+\.\d+)$/.exec(body);
  if (dotted) {
    const v4 = parseV4(dotted[1] as string);
    if (v4 === undefined) return undefined;
    body = body.slice(0, body.length - (dotted[1] as string).length);
    if (body.endsWith(':') && !body.endsWith('::')) body = body.slice(0, -1);
    tailGroups = [(v4 >> 16n).toString(16), (v4 & 0xffffn).toString(16)];
  }
  const [head, tail] = body.split('::') as [string, string | undefined];
  const h = head ? head.split(':') : [];
  const t = [...(tail ? tail.split(':') : []), ...tailGroups];
  const groups =
    tail === undefined
      ? [...h, ...tailGroups]
      : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  if (groups.length !== 8) return undefined;
  return groups.reduce((acc, g) => (acc << 16n) | BigInt(parseInt(g, 16)), 0n);
}

/** Parses an IP address in the textual forms net.isIP accepts (a `%zone` suffix is dropped). */
export function parseIp(text: string): Ip | undefined {
  const s = text.startsWith('[') && text.endsWith(']') ? text.slice(1, -1) : text;
  const v4 = parseV4(s);
  if (v4 !== undefined) return { v: 4, n: v4 };
  const pct = s.indexOf('%');
  const v6 = parseV6(pct >= 0 ? s.slice(0, pct) : s);
  return v6 === undefined ? undefined : { v: 6, n: v6 };
}

function range(cidr: string, what: string): Range {
  const [addr, bits] = cidr.split('/') as [string, string];
  const ip = parseIp(addr);
  if (!ip) throw new Error(`bad range ${cidr}`);
  const width = ip.v === 4 ? 32 : 128;
  const host = (1n << BigInt(width - Number(bits))) - 1n;
  return { first: ip.n & ~host, last: (ip.n & ~host) | host, cidr, what };
}

/** IPv4 ranges no HTTP step may reach, whatever http_allow_private says. */
const V4_ALWAYS = [
  range('0.0.0.0/8', '"this network" (0.0.0.0 reaches the local host)'),
  range('169.254.0.0/16', 'link-local (cloud metadata services live here)'),
  range('100.100.100.200/32', 'the Alibaba Cloud metadata service'),
  range('168.63.129.16/32', 'the Azure platform endpoint (WireServer)'),
  range('192.0.0.192/32', 'the Oracle Cloud Classic metadata service'),
  range('224.0.0.0/4', 'multicast'),
  range('240.0.0.0/4', 'reserved (and the broadcast address)'),
];
/** IPv4 ranges reachable only with http_allow_private: loopback, private and other non-global ranges. */
const V4_PRIVATE = [
  range('10.0.0.0/8', 'private'),
  range('100.64.0.0/10', 'shared address space (carrier-grade NAT)'),
  range('127.0.0.0/8', 'loopback'),
  range('172.16.0.0/12', 'private'),
  range('192.0.0.0/24', 'IETF protocol assignments'),
  range('192.0.2.0/24', 'documentation (TEST-NET-1)'),
  range('192.168.0.0/16', 'private'),
  range('198.18.0.0/15', 'benchmarking'),
  range('198.51.100.0/24', 'documentation (TEST-NET-2)'),
  range('203.0.113.0/24', 'documentation (TEST-NET-3)'),
];
const V6_ALWAYS = [
  range('::/128', 'the unspecified address (reaches the local host)'),
  range('fe80::/10', 'link-local'),
  range('ff00::/8', 'multicast'),
  range('fd00:ec2::254/128', 'the AWS EC2 metadata service'),
  range('fd00:ec2::23/128', 'the AWS EKS Pod Identity agent'),
  range('fd20:ce::254/128', 'the Google Compute Engine metadata service'),
];
const V6_PRIVATE = [
  range('::1/128', 'loopback'),
  range('fc00::/7', 'unique local (private)'),
  range('fec0::/10', 'site-local (private)'),
  range('64:ff9b:1::/48', 'local-use NAT64'),
  range('100::/64', 'discard-only'),
  range('2001:db8::/32', 'documentation'),
];

/** IPv6 forms that carry an IPv4 address; the embedded address is judged by the IPv4 rules. */
const EMBEDDING: ReadonlyArray<{ range: Range; embedded: (n: bigint) => bigint[] }> = [
  { range: range('::ffff:0:0/96', 'IPv4-mapped'), embedded: (n) => [n & 0xffffffffn] },
  { range: range('::ffff:0:0:0/96', 'IPv4-translated'), embedded: (n) => [n & 0xffffffffn] },
  { range: range('::/96', 'IPv4-compatible'), embedded: (n) => [n & 0xffffffffn] },
  { range: range('64:ff9b::/96', 'NAT64'), embedded: (n) => [n & 0xffffffffn] },
  { range: range('2002::/16', '6to4'), embedded: (n) => [(n >> 80n) & 0xffffffffn] },
  // Teredo: the server address, and the client address stored inverted
  {
    range: range('2001::/32', 'Teredo'),
    embedded: (n) => [(n >> 64n) & 0xffffffffn, ~n & 0xffffffffn],
  },
  // local-use NAT64 (RFC 8215) with a /96 prefix: the IPv4 address in the low 32 bits
  {
    range: range('64:ff9b:1::/48', 'local-use NAT64'),
    embedded: (n) => [n & 0xffffffffn],
  },
];

const v4Text = (n: bigint): string =>
  [24n, 16n, 8n, 0n].map((s) => ((n >> s) & 0xffn).toString()).join('.');

/** Why an address is refused: `always` when http_allow_private does not open it. */
export interface Refusal {
  readonly always: boolean;
  readonly reason: string;
}

function judgeV4(n: bigint, allowPrivate: boolean): Refusal | undefined {
  const inside = (r: Range): boolean => n >= r.first && n <= r.last;
  const always = V4_ALWAYS.find(inside);
  if (always) return { always: true, reason: `${always.what}, ${always.cidr}` };
  const priv = allowPrivate ? undefined : V4_PRIVATE.find(inside);
  return priv ? { always: false, reason: `${priv.what}, ${priv.cidr}` } : undefined;
}

/**
 * Why an HTTP step may not connect to `address` (an IPv4 or IPv6 address in
 * any form net.isIP accepts), or undefined when it may. Text that is not an
 * address is refused.
 */
export function refusal(address: string, allowPrivate: boolean): Refusal | undefined {
  const ip = parseIp(address);
  if (!ip) return { always: true, reason: 'not an IP address' };
  if (ip.v === 4) return judgeV4(ip.n, allowPrivate);
  const n = ip.n;
  const inside = (r: Range): boolean => n >= r.first && n <= r.last;
  const always = V6_ALWAYS.find(inside);
  if (always) return { always: true, reason: `${always.what}, ${always.cidr}` };
  const priv = V6_PRIVATE.find(inside);
  if (priv && !allowPrivate) return { always: false, reason: `${priv.what}, ${priv.cidr}` };
  // an opened private range stays open, except that a local-use NAT64 address is
  // still judged by the IPv4 address it translates to (169.254.169.254 stays refused)
  if (priv && priv.cidr !== '64:ff9b:1::/48') return undefined;
  for (const e of EMBEDDING) {
    if (!inside(e.range)) continue;
    for (const v4 of e.embedded(n)) {
      const r = judgeV4(v4, allowPrivate);
      if (r)
        return {
          always: r.always,
          reason: `the ${e.range.what} form of ${v4Text(v4)}, ${r.reason}`,
        };
    }
  }
  return undefined;
}

/** True when an HTTP step may not connect to `address`. */
export function addressBlocked(address: string, allowPrivate: boolean): boolean {
  return refusal(address, allowPrivate) !== undefined;
}

/** The node error for a refused address (spec §6.12 step 6 wording, then the reason). */
export function blockedMessage(host: string, address: string, why: Refusal): string {
  const shown = host === address ? `${address} is` : `${host} is ${address},`;
  const hint = why.always
    ? 'refused even with http_allow_private'
    : 'an administrator may open loopback and private ranges with df.config http_allow_private';
  return `Blocked: the resolved IP address for '${host}' is in a restricted range. df.http() cannot access private or internal network addresses. (${shown} ${why.reason}; ${hint}.)`;
}

/** The error a connector reports for a refused peer; sendHttp turns it into the node's error. */
export class EgressRefused extends Error {
  readonly code = 'EDFGATEBLOCKED';
}

// ---- URLs --------------------------------------------------------------------

export interface Endpoint {
  /** The normalised URL: what is sent. */
  readonly href: string;
  /** The normalised host: lower case, IDN as punycode, no trailing dot, IPv6 without brackets. */
  readonly host: string;
  /** The canonical address when the host is an IP literal. */
  readonly ip?: string;
}

const unbracket = (h: string): string =>
  h.startsWith('[') && h.endsWith(']') ? h.slice(1, -1) : h;
const undot = (h: string): string => (h.endsWith('.') ? h.slice(0, -1) : h);

/** One http_allow_hosts entry in the form hosts are compared in, or undefined when it is no host. */
export function normaliseAllowEntry(entry: string): string | undefined {
  const e = entry.trim();
  const suffix = e.startsWith('.');
  const name = suffix ? e.slice(1) : e;
  if (!name) return undefined;
  let host: string;
  try {
    // the URL parser normalises exactly as it does for request URLs (case, IDN, IPv4 forms, IPv6 compression)
    host = new URL(`http://${net.isIPv6(name) ? `[${name}]` : name}/`).hostname;
  } catch {
    return undefined;
  }
  host = undot(unbracket(host));
  return host ? (suffix ? `.${host}` : host) : undefined;
}

/** Whether a normalised host matches http_allow_hosts (an empty list allows any host). */
function hostAllowed(host: string, policy: HttpPolicy): boolean {
  if (policy.allowHosts.length === 0) return true;
  const entries = policy.allowHosts
    .map(normaliseAllowEntry)
    .filter((e): e is string => e !== undefined);
  return entries.some((h) => (h.startsWith('.') ? host.endsWith(h) : host === h));
}

/**
 * A `Host` header set by the step. The connection goes to the URL's host, but
 * the server (a shared ingress, a CDN) may route by this header; with a
 * non-empty http_allow_hosts the name it gives must be listed too, so that a
 * listed host cannot front for one that is not.
 */
export function checkHostHeader(value: string, policy: HttpPolicy): void {
  if (policy.allowHosts.length === 0) return;
  let host: string | undefined;
  try {
    const v = value.trim();
    host = undot(unbracket(new URL(`http://${net.isIPv6(v) ? `[${v}]` : v}/`).hostname));
  } catch {
    host = undefined;
  }
  if (!host || !hostAllowed(host, policy))
    throw new HttpStepError(
      `Blocked: the Host header '${value}' names a host that is not in the allowed endpoint list (df.config http_allow_hosts).`,
    );
}

function schemeOf(url: string): string {
  const m = /^\s*([A-Za-z][A-Za-z0-9+.-]*):/.exec(url);
  return m ? (m[1] as string).toLowerCase() : url;
}

/**
 * The policy checks that need no network (spec §6.12 steps 3 and 4): the
 * switches, the scheme, no credentials in the URL, the host list, and IP
 * literals. Returns the endpoint to send to; throws HttpStepError.
 */
export function checkEndpoint(url: string, policy: HttpPolicy): Endpoint {
  if (!policy.enabled)
    throw new HttpStepError(
      "Blocked: outbound HTTP requests are disabled. An administrator enables them with: UPDATE df.config SET value = 'true' WHERE key = 'http_enabled'",
    );
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    const scheme = schemeOf(url);
    if (scheme !== 'http' && scheme !== 'https')
      throw new HttpStepError(
        `Blocked: unsupported URL scheme '${scheme}'. Only http and https are allowed.`,
      );
    throw new HttpStepError(`Blocked: '${url}' is not a valid URL.`);
  }
  const scheme = u.protocol.slice(0, -1);
  if (scheme !== 'http' && scheme !== 'https')
    throw new HttpStepError(
      `Blocked: unsupported URL scheme '${scheme}'. Only http and https are allowed.`,
    );
  if (u.username !== '' || u.password !== '')
    throw new HttpStepError(
      'Blocked: URLs with credentials (user:password@host) are not permitted. Send credentials in a header, for example Authorization.',
    );
  const host = undot(unbracket(u.hostname));
  if (!host) throw new HttpStepError('Blocked: unable to extract hostname from URL.');
  if (!hostAllowed(host, policy))
    throw new HttpStepError(
      `Blocked: '${host}' is not in the allowed endpoint list (df.config http_allow_hosts).`,
    );
  if (net.isIP(host)) {
    const why = refusal(host, policy.allowPrivate);
    if (why) throw new HttpStepError(blockedMessage(host, host, why));
    return { href: u.href, host, ip: host };
  }
  return { href: u.href, host };
}

// ---- connecting --------------------------------------------------------------

type LookupCallback = (
  err: NodeJS.ErrnoException | null,
  address: string | dns.LookupAddress[],
  family?: number,
) => void;

/** The shape of dns.lookup that net.connect calls and that tests inject. */
export type LookupFunction = (
  host: string,
  options: dns.LookupOptions,
  cb: (err: NodeJS.ErrnoException | null, addresses: dns.LookupAddress[]) => void,
) => void;

const systemLookup: LookupFunction = (host, options, cb) =>
  dns.lookup(host, { ...options, all: true }, (err, addresses) => cb(err, addresses ?? []));

/** A dns.lookup that answers only with permitted addresses; net.connect then uses exactly those. */
export function guardedLookup(
  allowPrivate: boolean,
  resolve: LookupFunction = systemLookup,
): (host: string, options: dns.LookupOptions, cb: LookupCallback) => void {
  return (host, options, cb) => {
    resolve(host, { ...options, all: true }, (err, addresses) => {
      if (err) {
        cb(err, []);
        return;
      }
      const list = addresses.filter((a) => !addressBlocked(a.address, allowPrivate));
      if (list.length === 0) {
        const first = addresses[0];
        const why = first ? refusal(first.address, allowPrivate) : undefined;
        cb(
          new EgressRefused(
            first && why
              ? blockedMessage(undot(host.toLowerCase()), first.address, why)
              : `Blocked: the resolved IP address for '${host}' is in a restricted range. df.http() cannot access private or internal network addresses.`,
          ),
          [],
        );
        return;
      }
      if (options.all) cb(null, list);
      else cb(null, (list[0] as dns.LookupAddress).address, (list[0] as dns.LookupAddress).family);
    });
  };
}

/**
 * The undici connector every HTTP step uses: an IP literal is judged before
 * connecting, a name is resolved through guardedLookup, and after connecting
 * the socket's actual peer address is judged again (a refused peer is
 * destroyed before any request byte is written). `inner` is the connector
 * that opens sockets (tests substitute one).
 */
export function guardedConnector(
  allowPrivate: boolean,
  resolve: LookupFunction = systemLookup,
  inner: buildConnector.connector = buildConnector({
    lookup: guardedLookup(allowPrivate, resolve),
    timeout: 10_000,
  } as buildConnector.BuildOptions),
): buildConnector.connector {
  return (options, callback) => {
    const host = unbracket(options.hostname);
    if (net.isIP(host)) {
      const why = refusal(host, allowPrivate);
      if (why) {
        callback(new EgressRefused(blockedMessage(host, host, why)), null);
        return;
      }
    }
    inner(options, (err, socket) => {
      if (err || !socket) {
        callback(err ?? new Error('no socket'), null);
        return;
      }
      const peer = socket.remoteAddress ?? '';
      const why = refusal(peer, allowPrivate);
      if (why) {
        socket.destroy();
        callback(new EgressRefused(blockedMessage(undot(host), peer || '?', why)), null);
        return;
      }
      callback(null, socket);
    });
  };
}
