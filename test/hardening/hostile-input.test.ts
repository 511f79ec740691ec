import { connect } from 'node:net';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { createFakeUpstream, type FakeUpstream } from '../helpers/fake-upstream.js';
import { startTestProxy, type TestProxy } from '../helpers/test-proxy.js';
import { firstBody, openUpstreamRequests, rawHttp } from './raw-http.js';

let upstream: FakeUpstream;
let proxy: TestProxy;

beforeEach(async () => {
  upstream = await createFakeUpstream();
  proxy = await startTestProxy({ OPENAI_BASE_URL: upstream.baseUrl, MAX_REQUEST_BODY_BYTES: '10000' });
});
afterEach(async () => {
  // nothing left hanging upstream by a refused or cut-off request
  await new Promise((r) => setTimeout(r, 50));
  expect(openUpstreamRequests()).toEqual([]);
  await proxy.close();
  await upstream.close();
});

const CHAT = '/v1/chat/completions';

async function post(body: string | Buffer, headers: Record<string, string> = {}) {
  const res = await fetch(`${proxy.url}${CHAT}`, {
    method: 'POST',
    headers,
    body: body as unknown as BodyInit,
  });
  return { status: res.status, text: await res.text() };
}

describe('malformed bodies are forwarded byte for byte (the upstream judges them) and recorded', () => {
  test.each([
    ['invalid JSON', '{"model": "gpt-4o",', { 'content-type': 'application/json' }],
    ['JSON that is not an object', '["gpt-4o"]', { 'content-type': 'application/json' }],
    ['JSON null', 'null', { 'content-type': 'application/json' }],
    ['a non-string model', '{"model":{"$gt":""},"messages":[]}', { 'content-type': 'application/json' }],
    ['a numeric model', '{"model":4,"messages":[]}', { 'content-type': 'application/json' }],
    ['wrong content-type', '{"model":"gpt-4o"}', { 'content-type': 'text/plain' }],
    ['no content-type', '{"model":"gpt-4o"}', {}],
    ['an empty JSON body', '', { 'content-type': 'application/json' }],
  ])('%s', async (_name, body, headers) => {
    const res = await post(body, headers as Record<string, string>);
    expect(res.status).toBe(200);
    expect(upstream.requests).toHaveLength(1);
    expect(upstream.requests[0].body.toString()).toBe(body);
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ status: 200, path: CHAT, error: null, request_bytes: body.length });
    // A JSON object under text/plain or no type is read as JSON too (as Ollama, llama.cpp and vLLM do).
    if (body.includes('"model":"gpt-4o"')) expect(row.model).toBe('gpt-4o');
    else expect(row.model).toBeNull();
  });

  test('non-UTF-8 bytes reach the upstream unchanged; the row stores a lossy text copy', async () => {
    const body = Buffer.concat([
      Buffer.from('{"model":"gpt-4o","x":"'),
      Buffer.from([0xff, 0xfe, 0xc3]),
      Buffer.from('"}'),
    ]);
    const res = await post(body, { 'content-type': 'application/json' });
    expect(res.status).toBe(200);
    expect(upstream.requests[0].body.equals(body)).toBe(true);
    const [row] = await proxy.waitForRows(1);
    expect(row.request_bytes).toBe(body.length);
    expect(row.request_body).toContain('\ufffd');
  });

  test('a chunked JSON body over the limit (no content-length) → 413, not forwarded', async () => {
    const big = `{"model":"gpt-4o","pad":"${'x'.repeat(20_000)}"}`;
    const reply = await rawHttp(
      proxy.url,
      `POST ${CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n${big.length.toString(16)}\r\n${big}\r\n0\r\n\r\n`,
    );
    expect(reply.statuses).toEqual([413]);
    expect(firstBody(reply).error).toMatchObject({ code: 'body_too_large', type: 'invalid_request_error' });
    expect(upstream.requests).toHaveLength(0);
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ status: 413, error: 'body_too_large' });
  });
});

describe('Expect: 100-continue', () => {
  const head = (length: number) =>
    `POST ${CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${length}\r\nExpect: 100-continue\r\n\r\n`;

  test('a JSON body declared over the limit → 413 at once, with no 100 Continue and no body sent', async () => {
    // Only the headers are sent: the answer must come without waiting for (or inviting) the body.
    const reply = await rawHttp(proxy.url, head(20_000));
    expect(reply.statuses).toEqual([413]);
    expect(reply.text).not.toMatch(/100 Continue/i);
    expect(reply.closed).toBe(true);
    expect(firstBody(reply).error).toMatchObject({ code: 'body_too_large', type: 'invalid_request_error' });
    expect(upstream.requests).toHaveLength(0);
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ status: 413, error: 'body_too_large', request_bytes: 20_000 });
  });

  test('a body under the limit gets 100 Continue, then its answer', async () => {
    const body = '{"model":"gpt-4o","messages":[]}';
    const { port } = new URL(proxy.url);
    const socket = connect(Number(port), '127.0.0.1');
    let text = '';
    socket.on('data', (d) => {
      text += d.toString('latin1');
    });
    socket.write(head(body.length));
    const deadline = Date.now() + 2000;
    while (!text.includes('\r\n\r\n') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    expect(text).toMatch(/^HTTP\/1\.1 100 Continue\r\n\r\n$/);
    socket.write(body);
    while (!/HTTP\/1\.1 200 /.test(text) && Date.now() < deadline + 2000)
      await new Promise((r) => setTimeout(r, 10));
    socket.destroy();
    expect(text).toMatch(/HTTP\/1\.1 200 /);
    expect(upstream.requests[0].body.toString()).toBe(body);
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ status: 200, error: null, model: 'gpt-4o' });
  });
});

describe('request smuggling shapes and broken framing are refused by the parser, never forwarded', () => {
  const smuggled = 'GET /v1/files HTTP/1.1\r\nHost: x\r\n\r\n';
  test.each([
    [
      'content-length and transfer-encoding',
      `POST ${CHAT} HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n${smuggled}`,
    ],
    [
      'duplicate content-length',
      `POST ${CHAT} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{}${smuggled}`,
    ],
    [
      'transfer-encoding not ending in chunked',
      `POST ${CHAT} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n${smuggled}`,
    ],
    ['a bare CR inside a header value', `GET /v1/files HTTP/1.1\r\nHost: x\r\nX-A: a\rInjected: 1\r\n\r\n`],
    ['an obsolete folded header', `GET /v1/files HTTP/1.1\r\nHost: x\r\nX-A: a\r\n  folded\r\n\r\n`],
    ['a space before the colon', `GET /v1/files HTTP/1.1\r\nHost: x\r\nX-A : a\r\n\r\n`],
    ['a NUL in a header value', `GET /v1/files HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n`],
    [
      'a malformed chunk size',
      `POST ${CHAT} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n`,
    ],
    ['garbage instead of a request line', 'HELLO THERE\r\n\r\n'],
  ])('%s → 400 in OpenAI shape and the connection closed', async (_name, payload) => {
    const reply = await rawHttp(proxy.url, payload);
    expect(reply.statuses).toEqual([400]);
    expect(reply.closed).toBe(true);
    expect(firstBody(reply).error).toMatchObject({ type: 'invalid_request_error', code: 'bad_request' });
    expect(upstream.requests).toHaveLength(0);
    // it keeps serving
    expect((await fetch(`${proxy.url}/health`)).status).toBe(200);
  });

  test('an HTTP/1.1 request without a Host header → 400 bad_request naming it, recorded, closed', async () => {
    const reply = await rawHttp(proxy.url, 'GET /v1/files HTTP/1.1\r\n\r\n');
    expect(reply.statuses).toEqual([400]);
    expect(reply.closed).toBe(true);
    expect(firstBody(reply).error).toMatchObject({
      type: 'invalid_request_error',
      code: 'bad_request',
      message: 'Missing Host header: a request must name the host it is for',
    });
    expect(upstream.requests).toHaveLength(0);
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ status: 400, error: 'invalid_request', method: 'GET', path: '/v1/files' });
    // HTTP/1.0 needs no Host: forwarded as before
    const old = await rawHttp(proxy.url, 'GET /v1/files HTTP/1.0\r\n\r\n');
    expect(old.statuses).toEqual([404]); // the fake upstream's answer for an unknown route
  });

  test('a malformed chunk after the body began streaming upstream → 400, closed, the upstream request ended', async () => {
    const { port } = new URL(proxy.url);
    const socket = connect(Number(port), '127.0.0.1');
    const received: Buffer[] = [];
    socket.on('data', (d) => received.push(d));
    const closed = new Promise<void>((r) => socket.once('close', () => r()));
    socket.on('error', () => undefined);
    socket.write(
      `POST ${CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n`,
    );
    // The proxy forwards as it reads: the upstream request is open before the bad chunk arrives.
    const deadline = Date.now() + 2000;
    while (openUpstreamRequests().length === 0 && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 10));
    expect(openUpstreamRequests()).toEqual([`POST ${CHAT}`]);
    socket.write('zz\r\nmore\r\n0\r\n\r\n');
    await closed;
    const text = Buffer.concat(received).toString('latin1');
    expect(text).toMatch(/^HTTP\/1\.1 400 /);
    expect(JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4)).error.code).toBe('bad_request');
    // afterEach: no upstream request left waiting for the rest of the body
  });

  test("a malformed chunk before a multipart body's model field → 400, recorded invalid_request, no error logged", async () => {
    const reply = await rawHttp(
      proxy.url,
      'POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n--B\r\n\r\nzz\r\n',
    );
    expect(reply.statuses).toEqual([400]);
    expect(firstBody(reply).error).toMatchObject({ type: 'invalid_request_error', code: 'bad_request' });
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ status: 400, error: 'invalid_request', path: '/v1/audio/transcriptions' });
    expect(upstream.requests).toHaveLength(0);
    // The refused body is the client's error, answered and recorded: no proxy error line beside it.
    await new Promise((r) => setTimeout(r, 50));
    expect(proxy.logLines().filter((l) => l.level >= 50)).toEqual([]);
  });

  test('a bare LF line ending inside a header cannot inject a header upstream', async () => {
    const reply = await rawHttp(
      proxy.url,
      'GET /v1/files HTTP/1.1\r\nHost: x\r\nX-A: a\nX-Injected: 1\r\n\r\n',
    );
    // Node's parser either refuses the line or treats the LF as a line end; nothing is smuggled either way.
    expect([[400], [200]]).toContainEqual(reply.statuses);
    for (const r of upstream.requests) expect(String(r.headers['x-a'] ?? '')).not.toMatch(/[\r\n]/);
  });

  test('over-long headers → 431; over-long URL → 431 (the request line counts towards the header limit)', async () => {
    const longHeader = await rawHttp(
      proxy.url,
      `GET /v1/files HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`,
    );
    expect(longHeader.statuses).toEqual([431]);
    const longUrl = await rawHttp(
      proxy.url,
      `GET /v1/files?q=${'a'.repeat(20_000)} HTTP/1.1\r\nHost: x\r\n\r\n`,
    );
    expect(longUrl.statuses).toEqual([431]);
    const many = Array.from({ length: 3000 }, (_, i) => `X-H${i}: v`).join('\r\n');
    const manyHeaders = await rawHttp(proxy.url, `GET /v1/files HTTP/1.1\r\nHost: x\r\n${many}\r\n\r\n`);
    expect(manyHeaders.statuses).toEqual([431]);
    expect(upstream.requests).toHaveLength(0);
  });
});

describe('request targets only ever reach the configured upstream', () => {
  test('absolute-form targets are reduced to their path and sent to the configured upstream', async () => {
    const reply = await rawHttp(
      proxy.url,
      'GET http://evil.example:9/v1/files?purpose=x HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n',
    );
    expect(reply.statuses).toEqual([404]); // the fake upstream's answer for an unknown route
    expect(upstream.requests.map((r) => r.url)).toEqual(['/v1/files?purpose=x']);
    expect(upstream.requests[0].headers.host).toBe(new URL(upstream.origin).host);
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ path: '/v1/files', query: 'purpose=x' });
  });

  test('CONNECT is refused: no tunnel is opened', async () => {
    const reply = await rawHttp(
      proxy.url,
      'CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n',
    );
    expect(reply.statuses).toEqual([405]);
    expect(reply.closed).toBe(true);
    expect(reply.text).toMatch(/\r\nallow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS\r\n/i);
    expect(firstBody(reply).error).toMatchObject({
      type: 'invalid_request_error',
      code: 'method_not_allowed',
      message: expect.stringContaining('CONNECT is not supported'),
    });
    expect(upstream.requests).toHaveLength(0);
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({
      status: 405,
      method: 'CONNECT',
      path: 'evil.example:443',
      error: 'invalid_request',
    });
    expect((await fetch(`${proxy.url}/health`)).status).toBe(200);
  });

  test('a key in a CONNECT target is recorded [redacted]', async () => {
    const key = 'sk-SECRETUPSTREAMCONNECT0123';
    const keyed = await startTestProxy({ OPENAI_BASE_URL: upstream.baseUrl, OPENAI_API_KEY: key });
    try {
      const reply = await rawHttp(keyed.url, `CONNECT ${key}.example:443 HTTP/1.1\r\nHost: x\r\n\r\n`);
      expect(reply.statuses).toEqual([405]);
      const [row] = await keyed.waitForRows(1);
      expect(row).toMatchObject({ method: 'CONNECT', path: '[redacted].example:443' });
    } finally {
      await keyed.close();
    }
  });

  test.each([
    ['/v1/../admin/models'],
    ['/v1/%2e%2e/admin/models'],
    ['/v1/%2E%2E/%2e%2E/admin/models'],
    ['/v1\\..\\admin/models'],
    ['/v1/./.././admin/models'],
  ])('%s resolves to the admin API (disabled here), never the upstream', async (path) => {
    const reply = await rawHttp(proxy.url, `GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
    expect(reply.statuses).toEqual([404]);
    expect(firstBody(reply).error.code).toBe('admin_disabled');
    expect(upstream.requests).toHaveLength(0);
  });

  test.each([
    ['/v1/models/..%2f..%2fadmin'],
    ['/v1/files/%2e%2e%2fadmin'],
    ['/v1/files/..%5cadmin'],
    ['/v1/%252e%252e/admin'],
  ])(
    '%s: encoded separators that would decode to a dot-segment → 400, recorded, not forwarded',
    async (path) => {
      const reply = await rawHttp(proxy.url, `GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
      if (path.includes('%252e')) {
        // double-encoded: a literal "%2e%2e" segment, harmless upstream
        expect(upstream.requests.map((r) => r.url)).toEqual(['/v1/%252e%252e/admin']);
        return;
      }
      expect(reply.statuses).toEqual([400]);
      expect(firstBody(reply).error.code).toBe('invalid_path');
      expect(upstream.requests).toHaveLength(0);
      const [row] = await proxy.waitForRows(1);
      expect(row).toMatchObject({ status: 400, error: 'invalid_request' });
    },
  );

  test('dot segments cannot climb above the upstream base path', async () => {
    await rawHttp(
      proxy.url,
      'GET /v1/../../../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
    );
    expect(upstream.requests.map((r) => r.url)).toEqual(['/v1/etc/passwd']);
  });
});
