/**
 * HTTP and HTTP_MULTIPART steps (spec §6.12, §9.6) against a local HTTP server
 * on 127.0.0.1 (the test database opens loopback with http_allow_private).
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { useTestDatabase, type TestRole } from '../harness/db.js';
import { finished, startTestExecutor } from '../harness/executor.js';

const db = useTestDatabase();
let role: TestRole;
let c: pg.Client;
let base: string;
const seen: Array<{
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}> = [];

let connections = 0;
let counter = 0;
/** Responses to /hold requests, answered by the test. */
const held: http.ServerResponse[] = [];

const server = http.createServer((req, res) => {
  const chunks: Buffer[] = [];
  req.on('data', (d: Buffer) => chunks.push(d));
  req.on('end', () => {
    seen.push({
      method: req.method ?? '',
      url: req.url ?? '',
      headers: req.headers,
      body: Buffer.concat(chunks),
    });
    const u = new URL(req.url ?? '/', 'http://x');
    switch (u.pathname) {
      case '/json':
        res.writeHead(200, { 'content-type': 'application/json', 'x-one': 'a' });
        res.end('{"n": 7, "word": "héllo"}');
        return;
      case '/echo':
        res.writeHead(201, { 'content-type': 'text/plain; charset=utf-8' });
        res.end(`${req.method} ${Buffer.concat(chunks).toString()}`);
        return;
      case '/binary':
        res.writeHead(200, { 'content-type': 'application/octet-stream' });
        res.end(Buffer.from([0, 1, 2, 255]));
        return;
      case '/redirect':
        res.writeHead(302, { location: '/json' });
        res.end();
        return;
      case '/missing':
        res.writeHead(404, { 'content-type': 'text/plain' });
        res.end('no such thing');
        return;
      case '/broken':
        res.writeHead(503, { 'content-type': 'text/plain' });
        res.end('x'.repeat(600));
        return;
      case '/slow':
        setTimeout(() => res.end('late'), 3000);
        return;
      case '/count':
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ n: ++counter }));
        return;
      case '/hold':
        held.push(res);
        return;
      case '/huge':
        // 5 MiB, one over the default 4 MiB cap
        res.writeHead(200, { 'content-type': 'application/octet-stream' });
        res.end(Buffer.alloc(5 * 1024 * 1024, 7));
        return;
      default:
        res.writeHead(200);
        res.end();
    }
  });
});

server.on('connection', () => connections++);

beforeAll(async () => {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  role = await db.role('http', { http: true });
  c = await db.connect(role.url);
  await db.admin.query(`UPDATE df.config SET value = 'true' WHERE key = 'http_allow_private'`);
  await startTestExecutor(db.url);
});

afterAll(() => {
  server.closeAllConnections();
  server.close();
});

async function allowPrivate(on: boolean): Promise<void> {
  await db.admin.query(`UPDATE df.config SET value = $1 WHERE key = 'http_allow_private'`, [
    JSON.stringify(on),
  ]);
}

async function run(expr: string): Promise<{ id: string; status: string; result: string | null }> {
  const id = (await c.query(`SELECT df.start(${expr}) AS id`)).rows[0].id as string;
  return { id, ...(await finished(c, id)) };
}

async function failure(id: string): Promise<string> {
  const r = await c.query(
    `SELECT result #>> '{}' AS e FROM df.nodes WHERE instance_id = $1 AND status = 'failed' AND node_type LIKE 'HTTP%'`,
    [id],
  );
  return r.rows[0]?.e ?? '';
}

describe('HTTP steps', () => {
  it('GET returns the envelope; later steps read $resp.status, $resp.body and headers', async () => {
    const r = await run(
      `(df.http('${base}/json', 'GET') |=> 'resp') ~> 'SELECT $resp.status AS s, $resp.ok AS ok, ($resp.body)::jsonb ->> ''word'' AS w'`,
    );
    expect(r.status).toBe('completed');
    expect(r.result).toBe('{"rows": [{"s": 200, "w": "héllo", "ok": true}], "row_count": 1}');
    const env = JSON.parse(
      (
        await c.query(
          `SELECT result::text AS r FROM df.nodes WHERE instance_id = $1 AND node_type = 'HTTP'`,
          [r.id],
        )
      ).rows[0].r,
    );
    expect(env).toMatchObject({
      status: 200,
      body: '{"n": 7, "word": "héllo"}',
      encoding: 'text',
      ok: true,
      headers: { 'content-type': 'application/json', 'x-one': 'a' },
    });
    expect(typeof env.duration_ms).toBe('number');
    const last = seen[seen.length - 1];
    expect(last?.headers['user-agent']).toMatch(/^dfgate\//);
  });

  it('substitutes url, body and header values in raw mode and sends the body verbatim', async () => {
    const r = await run(
      `('SELECT ''echo'' AS p' |=> 'x') ~> df.http('${base}/$x.p', 'POST', 'hello {"a": 1} $x.p', '{"X-Thing": "v-$x.p", "N": 5}'::jsonb)`,
    );
    expect(r.status).toBe('completed');
    const last = seen[seen.length - 1];
    expect(last?.url).toBe('/echo');
    expect(last?.body.toString()).toBe('hello {"a": 1} echo');
    expect(last?.headers['x-thing']).toBe('v-echo');
    expect(last?.headers['n']).toBeUndefined(); // non-string header values are dropped
    expect(last?.headers['content-type']).toBeUndefined(); // none added
    expect(JSON.parse(r.result as string)).toMatchObject({
      status: 201,
      body: 'POST hello {"a": 1} echo',
      ok: true,
    });
  });

  it('binary bodies come back as base64; redirects and 4xx are responses, 5xx fail the node', async () => {
    const bin = await run(`df.http('${base}/binary', 'GET')`);
    expect(JSON.parse(bin.result as string)).toMatchObject({
      body: 'AAEC/w==',
      encoding: 'base64',
    });
    const redirect = await run(`df.http('${base}/redirect', 'GET')`);
    expect(JSON.parse(redirect.result as string)).toMatchObject({
      status: 302,
      ok: false,
      headers: { location: '/json' },
    });
    const missing = await run(`df.http('${base}/missing', 'GET')`);
    expect(JSON.parse(missing.result as string)).toMatchObject({
      status: 404,
      ok: false,
      body: 'no such thing',
    });
    const broken = await run(`df.http('${base}/broken', 'GET')`);
    expect(broken.status).toBe('failed');
    expect(await failure(broken.id)).toBe(
      `HTTP GET ${base}/broken returned 503: ${'x'.repeat(512)}... [truncated, 600 bytes total]`,
    );
  });

  it('times out, and reports connection failures', async () => {
    const slow = await run(`df.http('${base}/slow', 'GET', timeout_seconds => 1)`);
    expect(await failure(slow.id)).toBe(`HTTP timeout after 1s: ${base}/slow`);
    const closed = http.createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', () => r()));
    const port = (closed.address() as AddressInfo).port;
    await new Promise<void>((r) => closed.close(() => r()));
    const refused = await run(`df.http('http://127.0.0.1:${port}/', 'GET')`);
    expect(await failure(refused.id)).toMatch(
      new RegExp(`^HTTP connection failed: http://127\\.0\\.0\\.1:${port}/ - .*ECONNREFUSED`),
    );
  });

  it('multipart: parts become multipart/form-data, the user Content-Type is dropped', async () => {
    const r = await run(
      `('SELECT encode(''file body''::bytea, ''base64'') AS b' |=> 'f') ~> df.http_multipart('${base}/echo', 'POST', jsonb_build_array(jsonb_build_object('name', 'field', 'data_b64', encode('plain'::bytea, 'base64')), jsonb_build_object('name', 'upload', 'filename', 'a.txt', 'content_type', 'text/plain', 'data_b64', '$f.b')), '{"Content-Type": "application/json"}'::jsonb)`,
    );
    expect(r.status).toBe('completed');
    const last = seen[seen.length - 1];
    expect(last?.headers['content-type']).toMatch(/^multipart\/form-data; boundary=/);
    const body = last?.body.toString() ?? '';
    expect(body).toContain('Content-Disposition: form-data; name="field"\r\n\r\nplain\r\n');
    expect(body).toContain(
      'Content-Disposition: form-data; name="upload"; filename="a.txt"\r\nContent-Type: text/plain\r\n\r\nfile body\r\n',
    );
    const mixed = await run(
      `df.http_multipart('${base}/echo', 'POST', '[{"name": "p", "data_b64": "AA$x"}]'::jsonb)`,
    );
    expect(await failure(mixed.id)).toMatch(
      /data_b64 for part 'p' mixes a variable reference with other text/,
    );
  });
});

describe('the endpoint policy', () => {
  it('checks the grant at every request, and the df.config switches', async () => {
    // started while granted; the grant is revoked before the request is sent
    const id = (
      await c.query(`SELECT df.start(df.sleep(0.5) ~> df.http('${base}/json', 'GET')) AS id`)
    ).rows[0].id;
    await db.admin.query(
      `REVOKE EXECUTE ON FUNCTION df.http(text, text, text, jsonb, integer) FROM ${role.ident}`,
    );
    await finished(c, id);
    expect(await failure(id)).toBe(
      `Blocked: role '${role.name}' does not have EXECUTE privilege on df.http(). Grant EXECUTE ON FUNCTION df.http(text,text,text,jsonb,integer) TO ${role.name} to allow HTTP requests.`,
    );
    await db.admin.query(`SELECT df.grant_usage($1, include_http => true)`, [role.name]);
    const before = seen.length;
    await db.admin.query(`UPDATE df.config SET value = 'false' WHERE key = 'http_allow_private'`);
    const priv = await run(`df.http('${base}/json', 'GET')`);
    expect(await failure(priv.id)).toBe(
      "Blocked: the resolved IP address for '127.0.0.1' is in a restricted range. df.http() cannot access private or internal network addresses. (127.0.0.1 is loopback, 127.0.0.0/8; an administrator may open loopback and private ranges with df.config http_allow_private.)",
    );
    await db.admin.query(`UPDATE df.config SET value = 'true' WHERE key = 'http_allow_private'`);
    await db.admin.query(
      `UPDATE df.config SET value = '[".example.com"]' WHERE key = 'http_allow_hosts'`,
    );
    const listed = await run(`df.http('${base}/json', 'GET')`);
    expect(await failure(listed.id)).toBe(
      "Blocked: '127.0.0.1' is not in the allowed endpoint list (df.config http_allow_hosts).",
    );
    await db.admin.query(`UPDATE df.config SET value = '[]' WHERE key = 'http_allow_hosts'`);
    expect(seen.length).toBe(before); // nothing was sent
    const ok = await run(`df.http('${base}/json', 'GET')`);
    expect(ok.status).toBe('completed');
  });
});

describe('egress: every spelling of a refused address is refused', () => {
  const port = (): string => base.slice(base.lastIndexOf(':') + 1);

  it('without http_allow_private, loopback spellings fail the step and reach nothing', async () => {
    await allowPrivate(false);
    const spellings = [
      `http://2130706433:${port()}/json`,
      `http://0x7f000001:${port()}/json`,
      `http://0177.0.0.1:${port()}/json`,
      `http://127.1:${port()}/json`,
      `http://127.0.0.1.:${port()}/json`,
      `http://%31%32%37.0.0.1:${port()}/json`,
      `http://127。0。0。1:${port()}/json`,
      `http://[::ffff:127.0.0.1]:${port()}/json`,
      `http://127.0.0.1:${port()}\\@example.invalid/`,
      `http://0:${port()}/json`,
    ];
    const before = { connections, requests: seen.length };
    for (const url of spellings) {
      const r = await run(`df.http('${url}', 'GET')`);
      expect([url, r.status]).toEqual([url, 'failed']);
      expect([url, await failure(r.id)]).toEqual([
        url,
        expect.stringMatching(
          /^Blocked: the resolved IP address for '(127\.0\.0\.1|::ffff:7f00:1|0\.0\.0\.0)' is in a restricted range\. df\.http\(\) cannot access private or internal network addresses\. \(.*(loopback|this network).*\)$/,
        ),
      ]);
    }
    // the backslash spelling is also judged by the host it connects to, not by the text after '@'
    await db.admin.query(
      `UPDATE df.config SET value = '["example.invalid"]' WHERE key = 'http_allow_hosts'`,
    );
    const listed = await run(`df.http('http://127.0.0.1:${port()}\\@example.invalid/', 'GET')`);
    expect(await failure(listed.id)).toBe(
      "Blocked: '127.0.0.1' is not in the allowed endpoint list (df.config http_allow_hosts).",
    );
    await db.admin.query(`UPDATE df.config SET value = '[]' WHERE key = 'http_allow_hosts'`);
    expect({ connections, requests: seen.length }).toEqual(before);
  });

  it('with http_allow_private, loopback works while link-local, metadata and credentials stay refused', async () => {
    await allowPrivate(true);
    const ok = await run(`df.http('${base}/json', 'GET')`);
    expect(ok.status).toBe('completed');
    const before = { connections, requests: seen.length };
    for (const url of [
      'http://169.254.169.254/latest/meta-data/',
      'http://2852039166/',
      'http://0xa9fea9fe/',
      'http://169.254.43518/',
      'http://[::ffff:169.254.169.254]/',
      'http://100.100.100.200/',
      'http://[fd00:ec2::254]/',
    ]) {
      const r = await run(`df.http('${url}', 'GET')`);
      expect([url, await failure(r.id)]).toEqual([
        url,
        expect.stringMatching(/restricted range.*refused even with http_allow_private\.\)$/),
      ]);
    }
    for (const url of [
      `http://user:pw@127.0.0.1:${port()}/json`,
      `http://u@127.0.0.1:${port()}/`,
    ]) {
      const r = await run(`df.http('${url}', 'GET')`);
      expect(await failure(r.id)).toBe(
        'Blocked: URLs with credentials (user:password@host) are not permitted. Send credentials in a header, for example Authorization.',
      );
    }
    expect({ connections, requests: seen.length }).toEqual(before);
  });
});

describe('response bodies', () => {
  it('a body over the default cap of 4 MiB fails the step with the cap in the message', async () => {
    await allowPrivate(true);
    const r = await run(`df.http('${base}/huge', 'GET')`);
    expect(r.status).toBe('failed');
    expect(await failure(r.id)).toBe(
      `HTTP response body of GET ${base}/huge exceeds the limit of 4 MiB (4194304 bytes); dfgate stopped reading it. Raise the limit with dfgate's --max-result-bytes option.`,
    );
  });
});

describe('Idempotency-Key', () => {
  const keyOf = (path: string): string[] =>
    seen.filter((s) => s.url.startsWith(path)).map((s) => String(s.headers['idempotency-key']));

  it('differs per node, loop iteration and instance; an explicit header wins', async () => {
    await allowPrivate(true);
    counter = 0;
    const flow = (tag: string): string =>
      `df.loop(df.http('${base}/count?${tag}', 'GET') |=> 'r', 'SELECT (($r.body)::jsonb ->> ''n'')::int % 3 <> 0')` +
      ` ~> df.http('${base}/json?${tag}-a', 'GET')` +
      ` ~> df.http('${base}/json?${tag}-b', 'GET', NULL, '{"idempotency-KEY": "mine-$r.status"}'::jsonb)`;
    const one = await run(flow('one'));
    const two = await run(flow('two'));
    expect([one.status, two.status]).toEqual(['completed', 'completed']);
    const loopOne = keyOf('/count?one');
    const loopTwo = keyOf('/count?two');
    expect(loopOne).toHaveLength(3);
    expect(loopTwo).toHaveLength(3);
    const keys = [...loopOne, ...loopTwo, ...keyOf('/json?one-a'), ...keyOf('/json?two-a')];
    for (const k of keys) expect(k).toMatch(/^dfgate-[0-9a-f]{40}$/);
    expect(new Set(keys).size).toBe(8);
    expect(keyOf('/json?one-b')).toEqual(['mine-200']);
    expect(keyOf('/json?two-b')).toEqual(['mine-200']);
  });

  it('is the same when a step is sent again after its executor lost the instance mid-request', async () => {
    await allowPrivate(true);
    const id = (await c.query(`SELECT df.start(df.http('${base}/hold', 'GET')) AS id`)).rows[0]
      .id as string;
    const waitHeld = async (n: number): Promise<void> => {
      for (let i = 0; held.length < n; i++) {
        if (i > 400) throw new Error(`no request ${n} to /hold`);
        await new Promise((r) => setTimeout(r, 25));
      }
    };
    await waitHeld(1);
    // as if the executor froze past its lease: another claim (a new epoch) takes the instance over
    await db.admin.query(
      `UPDATE df.instances SET lease_epoch = lease_epoch + 1, lease_owner = NULL, lease_expires_at = NULL WHERE id = $1`,
      [id],
    );
    // the first request's answer arrives too late to be recorded; the step is sent again
    held[0]?.end('first');
    await waitHeld(2);
    held[1]?.end('second');
    const r = await finished(c, id);
    expect(r.status).toBe('completed');
    expect(JSON.parse(r.result as string)).toMatchObject({ body: 'second' });
    const keys = keyOf('/hold');
    expect(keys).toHaveLength(2);
    expect(keys[0]).toMatch(/^dfgate-[0-9a-f]{40}$/);
    expect(keys[1]).toBe(keys[0]);
  });
});
