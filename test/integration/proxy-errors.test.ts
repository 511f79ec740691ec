import { readFileSync } from 'node:fs';
import { type IncomingHttpHeaders, request } from 'node:http';
import OpenAI from 'openai';
import { describe, expect, test } from 'vitest';
import { main } from '../../src/cli.js';
import { createFakeUpstream, sleep } from '../helpers/fake-upstream.js';
import { createTestIo, proxyWithUpstreamPerTest } from '../helpers/test-proxy.js';

const UPSTREAM_KEY = 'sk-upstream-secret-ZZZZ-1234567890';
const setup = proxyWithUpstreamPerTest();

describe('upstream errors pass through verbatim', () => {
  test.each([400, 401, 429, 500, 503])('status %i', async (status) => {
    const { upstream, proxy } = await setup();
    const body = JSON.stringify({
      error: {
        message: `upstream says ${status}`,
        type: 'upstream_type',
        param: null,
        code: 'upstream_code',
      },
    });
    upstream.on('/v1/chat/completions', (_req, res) => {
      res.writeHead(status, {
        'content-type': 'application/json',
        'retry-after': '7',
        'x-request-id': 'req_err',
      });
      res.end(body);
    });
    const res = await fetch(`${proxy.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{"model":"gpt-4o","messages":[]}',
    });
    expect(res.status).toBe(status);
    expect(await res.text()).toBe(body);
    expect(res.headers.get('retry-after')).toBe('7');
    expect(res.headers.get('x-request-id')).toBe('req_err');
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ status, error: null, response_body: body, model: 'gpt-4o' });
  });

  test('the openai SDK sees the upstream error as an APIError', async () => {
    const { upstream, proxy } = await setup();
    upstream.on('/v1/chat/completions', (_req, res) => {
      res.writeHead(429, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({
          error: {
            message: 'Rate limit reached',
            type: 'requests',
            param: null,
            code: 'rate_limit_exceeded',
          },
        }),
      );
    });
    const client = new OpenAI({ apiKey: 'sk-x', baseURL: `${proxy.url}/v1`, maxRetries: 0 });
    await expect(client.chat.completions.create({ model: 'gpt-4o', messages: [] })).rejects.toMatchObject({
      status: 429,
      code: 'rate_limit_exceeded',
    });
  });
});

describe('transport failures become OpenAI-shaped proxy errors', () => {
  test('upstream down → 502 upstream_unreachable', async () => {
    const dead = await createFakeUpstream();
    const deadUrl = dead.baseUrl;
    await dead.close();
    const { proxy } = await setup({ OPENAI_BASE_URL: deadUrl });
    const res = await fetch(`${proxy.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{"model":"gpt-4o"}',
    });
    expect(res.status).toBe(502);
    const body = await res.json();
    expect(body).toEqual({
      error: {
        message: expect.stringMatching(
          /could not be reached .*check its base URL \(OPENAI_BASE_URL, --upstream, or openaiBaseUrl in the config file\)$/,
        ),
        type: 'proxy_error',
        param: null,
        code: 'upstream_unreachable',
      },
    });
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ status: 502, error: 'upstream_unreachable', model: 'gpt-4o' });
    // and it keeps serving
    expect((await fetch(`${proxy.url}/health`)).status).toBe(200);
  });

  test('upstream slow before headers → 504 upstream_timeout', async () => {
    const { upstream, proxy } = await setup({ UPSTREAM_HEADERS_TIMEOUT_MS: '200' });
    upstream.on('/v1/chat/completions', async (_req, res) => {
      await sleep(1500);
      if (!res.destroyed) res.end('{}');
    });
    const started = Date.now();
    const res = await fetch(`${proxy.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{"model":"gpt-4o"}',
    });
    expect(res.status).toBe(504);
    expect(Date.now() - started).toBeLessThan(1400);
    expect((await res.json()).error).toMatchObject({ type: 'proxy_error', code: 'upstream_timeout' });
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ status: 504, error: 'upstream_timeout' });
  });

  test('upstream stalls between stream events → stream cut, recorded as upstream_timeout with partial text', async () => {
    const { upstream, proxy } = await setup({ UPSTREAM_IDLE_TIMEOUT_MS: '200' });
    upstream.on('/v1/chat/completions', async (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(
        `data: ${JSON.stringify({ object: 'chat.completion.chunk', choices: [{ index: 0, delta: { content: 'partial' } }] })}\n\n`,
      );
      await sleep(1500);
      res.end();
    });
    const client = new OpenAI({ apiKey: 'sk-x', baseURL: `${proxy.url}/v1`, maxRetries: 0 });
    const stream = await client.chat.completions.create({ model: 'gpt-4o', messages: [], stream: true });
    let text = '';
    await expect(
      (async () => {
        for await (const c of stream) text += c.choices[0]?.delta?.content ?? '';
      })(),
    ).rejects.toThrow();
    expect(text).toBe('partial');
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ status: 200, stream: 1, error: 'upstream_timeout' });
    expect(JSON.parse(row.assembled!)).toMatchObject({ content: 'partial', complete: false });
  });
});

describe('an error event inside a 200 stream', () => {
  const chunkEvent = (content: string) =>
    `data: ${JSON.stringify({ id: 'c1', object: 'chat.completion.chunk', created: 1, model: 'gpt-4o', choices: [{ index: 0, delta: { content }, finish_reason: null }] })}\n\n`;

  const logs = async (proxy: { dir: string; dbPath: string }, ...argv: string[]) => {
    const io = createTestIo({}, proxy.dir);
    const code = await main(['logs', ...argv, '--db', proxy.dbPath], io);
    expect(code, io.err()).toBe(0);
    return io.out();
  };

  test.each([
    [
      'chat: event: error',
      '/v1/chat/completions',
      `${chunkEvent('partial')}event: error\ndata: ${JSON.stringify({ error: { message: 'The server had an error while processing your request', type: 'server_error', code: null } })}\n\n`,
      'The server had an error while processing your request',
    ],
    [
      // OpenRouter reports a failure mid-generation as a chunk with an `error` and finish_reason "error".
      'chat: a chunk carrying an error',
      '/v1/chat/completions',
      `${chunkEvent('partial')}data: ${JSON.stringify({ id: 'c1', object: 'chat.completion.chunk', created: 1, model: 'gpt-4o', error: { code: 502, message: 'Provider disconnected unexpectedly' }, choices: [{ index: 0, delta: { content: '' }, finish_reason: 'error' }] })}\n\n`,
      'Provider disconnected unexpectedly',
    ],
    [
      'Responses: type error',
      '/v1/responses',
      `event: response.output_text.delta\ndata: ${JSON.stringify({ type: 'response.output_text.delta', sequence_number: 1, item_id: 'm', output_index: 0, content_index: 0, delta: 'partial' })}\n\nevent: error\ndata: ${JSON.stringify({ type: 'error', sequence_number: 2, code: 'server_error', message: 'Something went wrong', param: null })}\n\n`,
      'Something went wrong',
    ],
  ])(
    '%s: the client sees the error; recorded as upstream_stream_error, listed by --status error, shown incomplete',
    async (_name, path, body, message) => {
      const { upstream, proxy } = await setup();
      upstream.on(path, (_req, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.end(body);
      });
      const client = new OpenAI({ apiKey: 'sk-x', baseURL: `${proxy.url}/v1`, maxRetries: 0 });
      const stream =
        path === '/v1/responses'
          ? await client.responses.create({ model: 'gpt-4.1', input: 'hi', stream: true })
          : await client.chat.completions.create({ model: 'gpt-4o', messages: [], stream: true });
      const seen: string[] = [];
      const consume = (async () => {
        for await (const ev of stream as AsyncIterable<{ type?: string }>) seen.push(ev.type ?? 'chunk');
      })();
      // openai 6 throws on a chat error event; a Responses `error` event is handed over as an event.
      if (path === '/v1/responses') {
        await consume;
        expect(seen).toEqual(['response.output_text.delta', 'error']);
      } else await expect(consume).rejects.toThrow(message);
      const [row] = await proxy.waitForRows(1);
      expect(row).toMatchObject({
        status: 200,
        stream: 1,
        error: 'upstream_stream_error',
        error_message: message,
      });
      expect(JSON.parse(row.assembled!)).toMatchObject({ content: 'partial', complete: false });

      expect(
        (JSON.parse(await logs(proxy, '--status', 'error', '--json')) as { id: string }[]).map((r) => r.id),
      ).toEqual([row.id]);
      expect(JSON.parse(await logs(proxy, 'stats', '--json'))).toMatchObject([{ requests: 1, errors: 1 }]);
      const shown = await logs(proxy, 'show', row.id);
      expect(shown).toContain(`error: upstream_stream_error (${message})`);
      expect(shown).toContain('── reassembled message (incomplete: the stream ended before its final event)');
      expect(JSON.parse(await logs(proxy, 'show', row.id, '--json'))).toMatchObject({
        error: 'upstream_stream_error',
        error_message: message,
        assembled: { content: 'partial', complete: false },
      });
    },
  );

  test('a complete stream is shown without "incomplete"', async () => {
    const { upstream, proxy } = await setup();
    upstream.on('/v1/chat/completions', (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end(`${chunkEvent('whole')}data: [DONE]\n\n`);
    });
    await (
      await fetch(`${proxy.url}/v1/chat/completions`, {
        method: 'POST',
        body: '{"model":"gpt-4o","stream":true}',
      })
    ).text();
    const [row] = await proxy.waitForRows(1);
    expect(row.error).toBeNull();
    const shown = await logs(proxy, 'show', row.id);
    expect(shown).toContain('── reassembled message\nwhole\n');
    expect(JSON.parse(await logs(proxy, 'show', row.id, '--json'))).toMatchObject({
      assembled: { complete: true },
    });
  });
});

describe('a stream request answered with a JSON error', () => {
  test.each(['upstream 429', 'upstream down'])(
    '%s: recorded as not streamed (stream column, --stream filter, log line)',
    async (kind) => {
      const dead = await createFakeUpstream();
      await dead.close();
      const { upstream, proxy } = await setup(
        kind === 'upstream down' ? { OPENAI_BASE_URL: dead.baseUrl } : {},
      );
      upstream.on('/v1/chat/completions', (_req, res) => {
        res.writeHead(429, { 'content-type': 'application/json' });
        res.end('{"error":{"message":"slow down","type":"requests","param":null,"code":null}}');
      });
      const res = await fetch(`${proxy.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: '{"model":"gpt-4o","stream":true,"messages":[]}',
      });
      expect([res.status, res.headers.get('content-type')]).toEqual([
        kind === 'upstream 429' ? 429 : 502,
        'application/json',
      ]);
      await res.text();
      const [row] = await proxy.waitForRows(1);
      expect(row).toMatchObject({ stream: 0, assembled: null });
      const logs = async (flag: string) => {
        const io = createTestIo({}, proxy.dir);
        expect(await main(['logs', flag, '--json', '--db', proxy.dbPath], io), io.err()).toBe(0);
        return (JSON.parse(io.out()) as { id: string }[]).map((r) => r.id);
      };
      expect(await logs('--stream')).toEqual([]);
      expect(await logs('--no-stream')).toEqual([row.id]);
      const lines = await proxy.waitForLogLines((ls) => ls.some((l) => l.path));
      expect(lines.find((l) => l.path)).toMatchObject({ stream: false });
    },
  );
});

describe('client aborts', () => {
  test('aborting a stream aborts the upstream request and records client_aborted', async () => {
    const { upstream, proxy } = await setup();
    upstream.streamIntervalMs = 100;
    upstream.streamWords = 50;
    const client = new OpenAI({ apiKey: 'sk-x', baseURL: `${proxy.url}/v1`, maxRetries: 0 });
    const stream = await client.chat.completions.create({ model: 'gpt-4o', messages: [], stream: true });
    let n = 0;
    for await (const _ of stream) {
      if (++n === 3) break; // breaking out of the loop aborts the request
    }
    const aborted = await upstream.waitForAbort('/v1/chat/completions');
    expect(aborted.aborted).toBe(true);
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ error: 'client_aborted', stream: 1, status: 200 });
    expect(JSON.parse(row.assembled!).complete).toBe(false);
  });

  test('aborting before the upstream answers', async () => {
    const { upstream, proxy } = await setup();
    upstream.on('/v1/chat/completions', async (_req, res) => {
      await sleep(2000);
      if (!res.destroyed) res.end('{}');
    });
    const ac = new AbortController();
    const p = fetch(`${proxy.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{"model":"gpt-4o"}',
      signal: ac.signal,
    });
    await sleep(150);
    ac.abort();
    await expect(p).rejects.toThrow();
    await upstream.waitForAbort('/v1/chat/completions');
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ error: 'client_aborted', status: null });
  });

  test("aborting after the upstream's head, before its body: no status was sent, none recorded", async () => {
    const { upstream, proxy } = await setup();
    upstream.on('/v1/chat/completions', async (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json', 'x-request-id': 'req_held' });
      res.flushHeaders();
      await sleep(1500);
      if (!res.destroyed) res.end('{}');
    });
    const ac = new AbortController();
    const p = fetch(`${proxy.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{"model":"gpt-4o"}',
      signal: ac.signal,
    });
    await sleep(300);
    ac.abort();
    // The head is held until the first body byte: the client got nothing.
    await expect(p).rejects.toThrow();
    await upstream.waitForAbort('/v1/chat/completions');
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ error: 'client_aborted', status: null, ttfb_ms: null });
    // The upstream's headers stay: its request id names an exchange it may have billed.
    expect(JSON.parse(row.response_headers!)).toMatchObject({ 'x-request-id': 'req_held' });
  });
});

describe('the proxy itself', () => {
  test('/health answers without being recorded', async () => {
    const { proxy } = await setup();
    const res = await fetch(`${proxy.url}/health`);
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({
      status: 'ok',
      version: expect.any(String),
      uptime_s: expect.any(Number),
      database: 'ok',
      queued_log_rows: 0,
      requests_total: 0,
      upstream: expect.stringContaining('/v1'),
    });
    await sleep(60);
    expect(proxy.rows()).toHaveLength(0);
  });

  test('both base URLs work: /v1/x and /x reach the upstream /v1/x, recorded as /v1/x; query kept', async () => {
    const { upstream, proxy } = await setup();
    await fetch(`${proxy.url}/files?limit=2`);
    await fetch(`${proxy.url}/v1/files?limit=3`);
    expect(upstream.requests.map((r) => r.url)).toEqual(['/v1/files?limit=2', '/v1/files?limit=3']);
    const rows = await proxy.waitForRows(2);
    expect(rows.map((r) => [r.path, r.query])).toEqual([
      ['/v1/files', 'limit=2'],
      ['/v1/files', 'limit=3'],
    ]);
  });

  test('dot segments cannot escape the upstream base or reach proxy routes unannounced', async () => {
    const { upstream, proxy } = await setup();
    const res1 = await fetch(`${proxy.url}/v1/models/..%2f..%2fadmin`);
    expect(res1.status).toBe(400);
    const res2 = await fetch(`${proxy.url}/v1/a/%2e%2e/%2e%2e/%2e%2e/secret`);
    // resolved by the URL parser to /secret, then forwarded under the upstream base
    expect(res2.status).toBe(404);
    expect(upstream.requests.map((r) => r.url)).toEqual(['/v1/secret']);
  });

  test('a JSON body over MAX_REQUEST_BODY_BYTES → 413 in OpenAI shape, recorded, not forwarded', async () => {
    const { upstream, proxy } = await setup({ MAX_REQUEST_BODY_BYTES: '1000' });
    const res = await fetch(`${proxy.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'gpt-4o', pad: 'x'.repeat(5000) }),
    });
    expect(res.status).toBe(413);
    expect((await res.json()).error).toMatchObject({ code: 'body_too_large', type: 'invalid_request_error' });
    expect(upstream.requests).toHaveLength(0);
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ status: 413, error: 'body_too_large' });
  });

  test('response bodies above CAPTURE_BODY_BYTES are stored truncated with their true size', async () => {
    const { upstream, proxy } = await setup({ CAPTURE_BODY_BYTES: '100' });
    const big = JSON.stringify({ data: 'y'.repeat(10_000), usage: { prompt_tokens: 1, total_tokens: 1 } });
    upstream.on('/v1/big', (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(big);
    });
    const res = await fetch(`${proxy.url}/v1/big`);
    expect(await res.text()).toBe(big);
    const [row] = await proxy.waitForRows(1);
    expect(row.response_truncated).toBe(1);
    expect(row.response_bytes).toBe(big.length);
    expect(row.response_body).toHaveLength(100);
  });

  // The image_generation tool puts the whole base64 image in `response.completed`, past any event limit.
  test('a Responses stream whose final event is larger than 1 MiB keeps its usage and completion', async () => {
    const { upstream, proxy } = await setup({ CAPTURE_BODY_BYTES: '1000' });
    const response = {
      id: 'resp_1',
      object: 'response',
      status: 'completed',
      model: 'gpt-4.1',
      output: [
        { type: 'image_generation_call', id: 'ig_1', status: 'completed', result: 'A'.repeat(3_000_000) },
        { type: 'message', id: 'm', role: 'assistant', content: [{ type: 'output_text', text: 'Here' }] },
      ],
      usage: { input_tokens: 50, output_tokens: 60, total_tokens: 110 },
    };
    const event = (ev: { type: string; [k: string]: unknown }) =>
      `event: ${ev.type}\ndata: ${JSON.stringify(ev)}\n\n`;
    upstream.on('/v1/responses', (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(event({ type: 'response.output_text.delta', delta: 'Here' }));
      res.end(event({ type: 'response.completed', response }));
    });
    const client = new OpenAI({ apiKey: 'sk-x', baseURL: `${proxy.url}/v1`, maxRetries: 0 });
    const stream = await client.responses.create({ model: 'gpt-4.1', input: 'draw', stream: true });
    let usage: unknown = null;
    for await (const ev of stream) if (ev.type === 'response.completed') usage = ev.response.usage;
    expect(usage).toEqual(response.usage);
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ error: null, prompt_tokens: 50, completion_tokens: 60, total_tokens: 110 });
    expect(JSON.parse(row.assembled!)).toMatchObject({
      content: 'Here',
      finish_reason: 'completed',
      complete: true,
    });
  });

  test('CORS: preflight answered by the proxy, headers added to proxied responses', async () => {
    const { proxy } = await setup({ CORS_ORIGINS: 'http://app.example' });
    const pre = await fetch(`${proxy.url}/v1/chat/completions`, {
      method: 'OPTIONS',
      headers: {
        origin: 'http://app.example',
        'access-control-request-method': 'POST',
        'access-control-request-headers': 'authorization,content-type',
      },
    });
    expect(pre.status).toBe(204);
    expect(pre.headers.get('access-control-allow-origin')).toBe('http://app.example');
    expect(pre.headers.get('access-control-allow-headers')).toBe('authorization,content-type');
    const res = await fetch(`${proxy.url}/v1/files`, { headers: { origin: 'http://app.example' } });
    expect(res.headers.get('access-control-allow-origin')).toBe('http://app.example');
    // The record keeps the upstream's response headers as received: the CORS ones are the proxy's.
    const [row] = await proxy.waitForRows(1);
    expect(JSON.parse(row.response_headers as string)).not.toHaveProperty('access-control-allow-origin');
    const other = await fetch(`${proxy.url}/v1/files`, { headers: { origin: 'http://evil.example' } });
    expect(other.headers.get('access-control-allow-origin')).toBeNull();
  });

  test("CORS: the proxy's own answers carry the headers too (models, 401, 404, 400, health)", async () => {
    const { proxy } = await setup({
      CORS_ORIGINS: 'http://a.example',
      PROXY_API_KEYS: 'k1-aaaaaaaa',
      VALIDATE_MODELS: 'true',
    });
    // node:http rather than fetch: fetch would resolve the encoded dot-segment of the 400 case.
    const get = (path: string, key: string | null, origin = 'http://a.example', method = 'GET') =>
      new Promise<{ url: string; status: number; headers: IncomingHttpHeaders; body: string }>(
        (resolve, reject) => {
          const req = request(
            `${proxy.url}${path}`,
            {
              method,
              headers: {
                origin,
                ...(key ? { authorization: `Bearer ${key}` } : {}),
                ...(method === 'POST' ? { 'content-type': 'application/json' } : {}),
              },
            },
            (res) => {
              let body = '';
              res.on('data', (d) => {
                body += d;
              });
              res.on('end', () =>
                resolve({ url: path, status: res.statusCode!, headers: res.headers, body }),
              );
            },
          );
          req.on('error', reject);
          req.end(method === 'POST' ? '{"model":"no-such-model","messages":[]}' : undefined);
        },
      );
    const answers = [
      [await get('/v1/models', 'k1-aaaaaaaa'), 200],
      [await get('/v1/models/gpt-4o', 'k1-aaaaaaaa'), 200],
      [await get('/v1/models/no-such-model', 'k1-aaaaaaaa'), 404],
      [await get('/v1/chat/completions', 'k1-aaaaaaaa', 'http://a.example', 'POST'), 404],
      [await get('/v1/models', 'wrong-key'), 401],
      [await get('/v1/models', null), 401],
      [await get('/v1/%2e%2e%2fadmin', 'k1-aaaaaaaa'), 400],
      [await get('/health', null), 200],
    ] as const;
    for (const [res, status] of answers) {
      expect([res.url, res.status]).toEqual([res.url, status]);
      expect([res.url, res.headers['access-control-allow-origin']]).toEqual([res.url, 'http://a.example']);
      expect(res.headers.vary).toBe('Origin');
    }
    // The SDK a browser app would use sees the real error, not a CORS failure.
    const denied = await get('/v1/models', 'wrong-key');
    expect(JSON.parse(denied.body).error.code).toBe('invalid_api_key');
    // Another origin gets none.
    const other = await get('/v1/models', 'k1-aaaaaaaa', 'http://evil.example');
    expect(other.status).toBe(200);
    expect(other.headers['access-control-allow-origin']).toBeUndefined();
    const rows = await proxy.waitForRows(8);
    expect(JSON.parse(rows.find((r) => r.status === 401)!.response_headers!)).toMatchObject({
      'access-control-allow-origin': 'http://a.example',
    });
  });

  test('without an upstream key the client key is forwarded', async () => {
    const { upstream, proxy } = await setup();
    await fetch(`${proxy.url}/v1/files`, { headers: { authorization: 'Bearer sk-client-own-key-123456' } });
    expect(upstream.requests[0].headers.authorization).toBe('Bearer sk-client-own-key-123456');
    const [row] = await proxy.waitForRows(1);
    expect(row.request_headers).not.toContain('sk-client-own-key');
  });

  test('hop-by-hop headers are dropped; host is the upstream; responses keep openai-* headers', async () => {
    const { upstream, proxy } = await setup();
    const headers = await new Promise<IncomingHttpHeaders>((resolve, reject) => {
      const req = request(
        `${proxy.url}/v1/chat/completions`,
        {
          method: 'POST',
          headers: {
            'content-type': 'application/json',
            connection: 'keep-alive, x-conn-only',
            'x-conn-only': '1',
            'keep-alive': 'timeout=5',
            'x-custom': 'kept',
          },
        },
        (res) => {
          res.resume();
          res.on('end', () => resolve(res.headers));
        },
      );
      req.on('error', reject);
      req.end('{"model":"m"}');
    });
    expect(headers['openai-processing-ms']).toBe('5');
    const got = upstream.requests[0];
    expect(got.headers['keep-alive']).toBeUndefined();
    expect(got.headers['x-conn-only']).toBeUndefined();
    expect(got.headers['x-custom']).toBe('kept');
    expect(got.headers.host).toBe(new URL(upstream.origin).host);
  });

  test.each([
    ['a JSON answer', 'application/json'],
    ['a stream', 'text/event-stream'],
  ])(
    "headers the upstream's Connection header names are not relayed to the client (%s)",
    async (_name, type) => {
      const { upstream, proxy } = await setup();
      upstream.on('/v1/chat/completions', (_req, res) => {
        res.writeHead(200, {
          'content-type': type,
          connection: 'keep-alive, X-Internal',
          'x-internal': 'upstream-only',
          'x-kept': '1',
        });
        res.end(type === 'application/json' ? '{"ok":true}' : 'data: [DONE]\n\n');
      });
      const res = await fetch(`${proxy.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: '{"model":"m"}',
      });
      await res.text();
      expect([res.status, res.headers.get('x-internal'), res.headers.get('x-kept')]).toEqual([
        200,
        null,
        '1',
      ]);
      const [row] = await proxy.waitForRows(1);
      expect(JSON.parse(row.response_headers!)).not.toHaveProperty('x-internal');
    },
  );
});

test('the upstream key appears nowhere in the database or the log file', async () => {
  const { proxy } = await setup({ OPENAI_API_KEY: UPSTREAM_KEY });
  const client = new OpenAI({
    apiKey: 'sk-client-should-also-vanish-999',
    baseURL: `${proxy.url}/v1`,
    maxRetries: 0,
  });
  await client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] });
  const stream = await client.chat.completions.create({ model: 'gpt-4o', messages: [], stream: true });
  for await (const _ of stream) {
    // drain
  }
  await proxy.waitForRows(2);
  await proxy.running.close();
  const db = readFileSync(proxy.dbPath).toString('latin1');
  const log = readFileSync(proxy.logPath, 'utf8');
  for (const secret of [UPSTREAM_KEY, 'sk-client-should-also-vanish-999']) {
    expect(db).not.toContain(secret);
    expect(log).not.toContain(secret);
    expect(proxy.stderr()).not.toContain(secret);
  }
  expect(
    log
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l).path),
  ).toEqual(['/v1/chat/completions', '/v1/chat/completions']);
});
