import { type IncomingHttpHeaders, request } from 'node:http';
import { describe, expect, test } from 'vitest';
import { rawHttp } from '../hardening/raw-http.js';
import { proxyWithUpstreamPerTest } from '../helpers/test-proxy.js';

const setupProxy = proxyWithUpstreamPerTest();

/** A proxy in front of a fake upstream that answers `/v1/vector_stores` with an empty list. */
async function setup(env: Record<string, string> = {}) {
  const both = await setupProxy(env);
  both.upstream.on('/v1/vector_stores', (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{"object":"list","data":[]}');
  });
  return both;
}

interface Reply {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

/** A request through node:http, which (unlike fetch) sends a body with any method. */
function send(
  url: string,
  method: string,
  headers: Record<string, string>,
  chunks: string[] = [],
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method, headers }, (res) => {
      let body = '';
      res.on('data', (d) => {
        body += d;
      });
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }));
    });
    req.on('error', reject);
    for (const c of chunks) req.write(c);
    req.end();
  });
}

describe('a body on a method that usually has none is forwarded and recorded like any other', () => {
  test('GET with a JSON body (content-length): the upstream gets it, the row stores it', async () => {
    const { upstream, proxy } = await setup();
    const body = '{"model":"gpt-4o","limit":5}';
    const res = await send(
      `${proxy.url}/v1/vector_stores`,
      'GET',
      { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) },
      [body],
    );
    expect(res.status).toBe(200);
    const got = upstream.requests.at(-1)!;
    expect(got.method).toBe('GET');
    expect(got.body.toString()).toBe(body);
    expect(got.headers['content-length']).toBe(String(Buffer.byteLength(body)));
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({
      method: 'GET',
      path: '/v1/vector_stores',
      status: 200,
      request_bytes: Buffer.byteLength(body),
      request_body: body,
      model: 'gpt-4o',
    });
  });

  test('a JSON body on GET is routed like a POST: an alias rewritten, an unknown model refused while models are checked', async () => {
    const { upstream, proxy } = await setup({
      VALIDATE_MODELS: 'true',
      MODEL_MAPPINGS: '{"cheap":"gpt-4o-mini"}',
    });
    const get = (body: string) =>
      send(
        `${proxy.url}/v1/vector_stores`,
        'GET',
        { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) },
        [body],
      );
    expect((await get('{"model":"cheap"}')).status).toBe(200);
    expect(upstream.requests.at(-1)!.body.toString()).toBe('{"model":"gpt-4o-mini"}');
    const refused = await get('{"model":"nope"}');
    expect(refused.status).toBe(404);
    expect(JSON.parse(refused.body).error.code).toBe('model_not_found');
    expect(upstream.requests).toHaveLength(1);
  });

  test('GET, HEAD, OPTIONS with a chunked body streamed through (an upload path): forwarded as sent', async () => {
    const { upstream, proxy } = await setup();
    for (const method of ['GET', 'HEAD', 'OPTIONS']) {
      const res = await send(
        `${proxy.url}/v1/files/file-abc`,
        method,
        { 'content-type': 'text/plain', 'transfer-encoding': 'chunked' },
        ['hello ', 'world'],
      );
      expect(res.status).toBeLessThan(500);
      const got = upstream.requests.at(-1)!;
      expect(got.method).toBe(method);
      expect(got.body.toString()).toBe('hello world');
    }
    const rows = await proxy.waitForRows(3);
    expect(rows.map((r) => [r.method, r.request_bytes, r.request_body])).toEqual([
      ['GET', 11, 'hello world'],
      ['HEAD', 11, 'hello world'],
      ['OPTIONS', 11, 'hello world'],
    ]);
  });

  test('a GET without a body is sent without one, as before', async () => {
    const { upstream, proxy } = await setup();
    const res = await send(`${proxy.url}/v1/vector_stores`, 'GET', {});
    expect(res.status).toBe(200);
    const got = upstream.requests.at(-1)!;
    expect(got.body.length).toBe(0);
    expect(got.headers['content-length']).toBeUndefined();
    expect(got.headers['transfer-encoding']).toBeUndefined();
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ request_bytes: 0, request_body: null });
  });

  test('a CORS preflight with a body is still answered by the proxy, not forwarded', async () => {
    const { upstream, proxy } = await setup({ CORS_ORIGINS: 'http://app.example' });
    const res = await send(
      `${proxy.url}/v1/chat/completions`,
      'OPTIONS',
      {
        origin: 'http://app.example',
        'access-control-request-method': 'POST',
        'content-length': '5',
      },
      ['hello'],
    );
    expect(res.status).toBe(204);
    expect(res.headers['access-control-allow-origin']).toBe('http://app.example');
    expect(upstream.requests).toHaveLength(0);
  });
});

describe("the proxy's own answers to HEAD record no body", () => {
  test('HEAD /v1/models: no body sent, none recorded', async () => {
    const { upstream, proxy } = await setup();
    const reply = await rawHttp(
      proxy.url,
      'HEAD /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
    );
    expect(reply.statuses).toEqual([200]);
    // Nothing after the head.
    expect(reply.text.endsWith('\r\n\r\n')).toBe(true);
    const get = await send(`${proxy.url}/v1/models`, 'GET', {});
    expect(get.status).toBe(200);
    const [head, got] = await proxy.waitForRows(2);
    expect(head).toMatchObject({ method: 'HEAD', status: 200, response_bytes: 0, response_body: null });
    // The head says what a GET would send.
    expect(JSON.parse(head.response_headers!)['content-length']).toBe(String(Buffer.byteLength(get.body)));
    expect(got).toMatchObject({ method: 'GET', response_bytes: Buffer.byteLength(get.body) });
    expect(upstream.requests).toHaveLength(0);
  });

  test('HEAD /v1/models/{unknown}: a 404 without a body, recorded without one', async () => {
    const { proxy } = await setup();
    const reply = await rawHttp(
      proxy.url,
      'HEAD /v1/models/no-such-model HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
    );
    expect(reply.statuses).toEqual([404]);
    expect(reply.text.endsWith('\r\n\r\n')).toBe(true);
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ method: 'HEAD', status: 404, response_bytes: 0, response_body: null });
  });
});
