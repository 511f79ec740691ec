import { createServer, type IncomingHttpHeaders, request } from 'node:http';
import { type AddressInfo, connect } from 'node:net';
import { brotliCompressSync, deflateSync, gzipSync } from 'node:zlib';
import Database from 'better-sqlite3';
import OpenAI from 'openai';
import { afterEach, describe, expect, test } from 'vitest';
import { CHAT_ANSWER, chatCompletionBody, type FakeUpstream, sleep } from '../helpers/fake-upstream.js';
import { proxyWithUpstreamPerTest, startTestProxy, type TestProxy } from '../helpers/test-proxy.js';
import { until } from '../helpers/until.js';
import { openUpstreamRequests } from './raw-http.js';

const setup = proxyWithUpstreamPerTest();

const chunk = (content: string) =>
  `data: ${JSON.stringify({ object: 'chat.completion.chunk', choices: [{ index: 0, delta: { content } }] })}\n\n`;

/** The proxy answers a plain chat call normally afterwards. */
async function stillServing(p: TestProxy, u: FakeUpstream) {
  u.on('/v1/chat/completions', (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{"ok":true}');
  });
  const res = await fetch(`${p.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: '{"model":"gpt-4o"}',
  });
  expect(res.status).toBe(200);
  expect(await res.text()).toBe('{"ok":true}');
}

describe('upstream faults', () => {
  test('resets mid-response: the client sees the cut, the row says upstream_reset with the partial body', async () => {
    const { upstream, proxy } = await setup();
    upstream.on('/v1/chat/completions', async (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': '1000' });
      res.write('{"id":"chatcmpl-cut","choices":[');
      await sleep(50);
      res.socket?.destroy();
    });
    const res = await fetch(`${proxy.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{"model":"gpt-4o"}',
    });
    expect(res.status).toBe(200);
    await expect(res.text()).rejects.toThrow();
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({
      status: 200,
      error: 'upstream_reset',
      response_body: '{"id":"chatcmpl-cut","choices":[',
    });
    await stillServing(proxy, upstream);
  });

  test('103 Early Hints before the answer: the SDK gets the final 200, recorded as 200', async () => {
    const { upstream, proxy } = await setup();
    upstream.on('/v1/chat/completions', async (_req, res) => {
      res.writeEarlyHints({ link: '</style.css>; rel=preload; as=style' });
      await sleep(20);
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(chatCompletionBody('gpt-4o')));
    });
    const client = new OpenAI({ apiKey: 'sk-x', baseURL: `${proxy.url}/v1`, maxRetries: 0, timeout: 5000 });
    const answer = await client.chat.completions.create({
      model: 'gpt-4o',
      messages: [{ role: 'user', content: 'hi' }],
    });
    expect(answer.choices[0].message.content).toBe(CHAT_ANSWER);
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ status: 200, error: null });
    expect(JSON.parse(row.response_body as string).choices[0].message.content).toBe(CHAT_ANSWER);
    await stillServing(proxy, upstream);
  });

  test('resets before answering → 502 in OpenAI shape', async () => {
    const { upstream, proxy } = await setup();
    upstream.on('/v1/chat/completions', (req) => {
      req.socket.destroy();
    });
    const res = await fetch(`${proxy.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{"model":"gpt-4o"}',
    });
    expect(res.status).toBe(502);
    expect((await res.json()).error).toMatchObject({ type: 'proxy_error', code: 'upstream_unreachable' });
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ status: 502, error: 'upstream_reset' });
    await stillServing(proxy, upstream);
  });

  test('closes right after its headers, before any body byte → 502 upstream_reset, recorded as 502', async () => {
    const { upstream, proxy } = await setup();
    upstream.on('/v1/chat/completions', (req) => {
      req.socket.end('HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n');
    });
    const res = await fetch(`${proxy.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{"model":"gpt-4o"}',
    });
    expect(res.status).toBe(502);
    const { error } = await res.json();
    expect(error).toMatchObject({ type: 'proxy_error', code: 'upstream_unreachable' });
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ status: 502, error: 'upstream_reset', error_message: error.message });
    await stillServing(proxy, upstream);
  });

  test('a malformed answer (content-length and chunked) → 502 saying so, not "could not be reached"', async () => {
    const { upstream, proxy } = await setup();
    upstream.on('/v1/chat/completions', (req) => {
      req.socket.end(
        'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n',
      );
    });
    const res = await fetch(`${proxy.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{"model":"gpt-4o"}',
    });
    expect(res.status).toBe(502);
    const { error } = await res.json();
    expect(error.message).toMatch(
      /^The upstream http:\/\/127\.0\.0\.1:\d+ sent a malformed response \((UND_ERR_RES|HPE)_\w+\)$/,
    );
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ status: 502, error: 'upstream_reset', error_message: error.message });
    await stillServing(proxy, upstream);
  });

  test('a 204 with a body: recorded as a malformed answer, not an unreachable upstream', async () => {
    const { upstream, proxy } = await setup();
    upstream.on('/v1/files/f1', (req) => {
      req.socket.end('HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello');
    });
    const res = await fetch(`${proxy.url}/v1/files/f1`, { method: 'DELETE' }).catch((e) => e);
    if (!(res instanceof Error)) await res.text().catch(() => {});
    const [row] = await proxy.waitForRows(1);
    expect(row.error).toBe('upstream_reset');
    expect(row.error_message).toMatch(/sent a malformed response \(UND_ERR_RES_CONTENT_LENGTH_MISMATCH\)$/);
    await stillServing(proxy, upstream);
  });

  test('resets mid-stream: the SDK sees the stream fail after the delivered text, which is stored reassembled', async () => {
    const { upstream, proxy } = await setup();
    upstream.on('/v1/chat/completions', async (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(chunk('Hello'));
      res.write(chunk(' there'));
      await sleep(50);
      res.socket?.destroy();
    });
    const client = new OpenAI({ apiKey: 'sk-x', baseURL: `${proxy.url}/v1`, maxRetries: 0 });
    const stream = await client.chat.completions.create({ model: 'gpt-4o', messages: [], stream: true });
    let text = '';
    await expect(
      (async () => {
        for await (const c of stream) text += c.choices[0]?.delta?.content ?? '';
      })(),
    ).rejects.toThrow();
    expect(text).toBe('Hello there');
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ status: 200, stream: 1, error: 'upstream_reset' });
    expect(JSON.parse(row.assembled!)).toMatchObject({ content: 'Hello there', complete: false, events: 2 });
    await stillServing(proxy, upstream);
  });

  test.each([
    [
      'invalid JSON in an event',
      `${chunk('a')}data: {"choices":[{"delta":{"content":"b"}\n\n${chunk('c')}data: [DONE]\n\n`,
    ],
    [
      'garbage lines and comments',
      `: keep-alive\n\nnonsense without colon\nevent: weird\n${chunk('a')}retry: x\n\n${chunk('b')}data: [DONE]\n\n`,
    ],
    ['truncated mid-event, no [DONE]', `${chunk('a')}data: {"object":"chat.completion.chu`],
    ['CR line endings', `${chunk('a').replace(/\n/g, '\r')}data: [DONE]\r\r`],
    ['an event split into 1-byte writes', `${chunk('abc')}data: [DONE]\n\n`],
    ['binary junk', `${chunk('a')}\u0000\u0001\uffff\n\ndata: [DONE]\n\n`],
  ])(
    'malformed SSE (%s) is passed through byte for byte and recorded without crashing',
    async (name, body) => {
      const { upstream, proxy } = await setup();
      upstream.on('/v1/chat/completions', async (_req, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        if (name.includes('1-byte')) {
          for (const ch of body) {
            res.write(ch);
            await sleep(0);
          }
        } else res.write(body);
        res.end();
      });
      const res = await fetch(`${proxy.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: '{"model":"gpt-4o","stream":true}',
      });
      expect(await res.text()).toBe(body);
      const [row] = await proxy.waitForRows(1);
      expect(row).toMatchObject({ status: 200, stream: 1, response_bytes: Buffer.byteLength(body) });
      const assembled = JSON.parse(row.assembled!);
      expect(assembled.content).toMatch(/^a/);
      if (name.includes('truncated')) expect(assembled.complete).toBe(false);
      await stillServing(proxy, upstream);
    },
  );

  test('a streamed body larger than CAPTURE_BODY_BYTES reaches the client whole, stored truncated with its size', async () => {
    const { upstream, proxy } = await setup({ CAPTURE_BODY_BYTES: '1000' });
    const events = Array.from({ length: 500 }, (_, i) => chunk(`w${i} `)).join('');
    upstream.on('/v1/chat/completions', (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end(`${events}data: [DONE]\n\n`);
    });
    const res = await fetch(`${proxy.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{"model":"gpt-4o","stream":true}',
    });
    const text = await res.text();
    expect(text).toBe(`${events}data: [DONE]\n\n`);
    const [row] = await proxy.waitForRows(1);
    expect(row.response_truncated).toBe(1);
    expect(row.response_bytes).toBe(text.length);
    expect(row.response_body!.length).toBe(1000);
    expect(JSON.parse(row.assembled!).content.length).toBeLessThanOrEqual(1000);
  });

  test('429 with retry-after and 503 pass through verbatim on a stream request too', async () => {
    const { upstream, proxy } = await setup();
    let n = 0;
    upstream.on('/v1/chat/completions', (_req, res) => {
      const status = n++ === 0 ? 429 : 503;
      res.writeHead(status, { 'content-type': 'application/json', 'retry-after': '3' });
      res.end(
        `{"error":{"message":"slow down ${status}","type":"requests","param":null,"code":"rate_limit_exceeded"}}`,
      );
    });
    for (const status of [429, 503]) {
      const res = await fetch(`${proxy.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: '{"model":"gpt-4o","stream":true}',
      });
      expect(res.status).toBe(status);
      expect(res.headers.get('retry-after')).toBe('3');
      expect(await res.text()).toContain(`slow down ${status}`);
    }
    const rows = await proxy.waitForRows(2);
    expect(rows.map((r) => [r.status, r.error])).toEqual([
      [429, null],
      [503, null],
    ]);
  });
});

describe('client faults', () => {
  test('client aborts mid-body upload (JSON): nothing forwarded, recorded client_aborted', async () => {
    const { upstream, proxy } = await setup();
    const { port } = new URL(proxy.url);
    await new Promise<void>((resolve) => {
      const s = connect(Number(port), '127.0.0.1', () => {
        s.write(
          'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"model":"gpt-4o","messages":[',
        );
        setTimeout(() => {
          s.destroy();
          resolve();
        }, 100);
      });
    });
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ error: 'client_aborted', status: null, path: '/v1/chat/completions' });
    expect(upstream.requests).toHaveLength(0);
    // A client going away is not the proxy's error: no error line beside the exchange's own.
    expect(proxy.logLines().filter((l) => l.level >= 50)).toEqual([]);
    await sleep(50);
    expect(openUpstreamRequests()).toEqual([]);
    await stillServing(proxy, upstream);
  });

  test('client aborts a multipart upload before its model field: recorded client_aborted, not a proxy error', async () => {
    const { upstream, proxy } = await setup();
    const { port } = new URL(proxy.url);
    const s = connect(Number(port), '127.0.0.1');
    await new Promise<void>((r) => s.once('connect', () => r()));
    s.write(
      'POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=XB\r\nContent-Length: 100000\r\n\r\n' +
        '--XB\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\n' +
        'A'.repeat(1000),
    );
    await sleep(100);
    s.destroy();
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ error: 'client_aborted', status: null, path: '/v1/audio/transcriptions' });
    expect(upstream.requests).toHaveLength(0);
    // A client going away is not the proxy's error: no error line beside the exchange's own.
    expect(proxy.logLines().filter((l) => l.level >= 50)).toEqual([]);
    await stillServing(proxy, upstream);
  });

  test('client aborts mid-body upload (streamed binary): the upstream request is aborted too', async () => {
    const { upstream, proxy } = await setup();
    const { port } = new URL(proxy.url);
    const s = connect(Number(port), '127.0.0.1');
    await new Promise<void>((r) => s.once('connect', () => r()));
    s.write(
      'POST /v1/files HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n',
    );
    s.write(Buffer.alloc(200_000, 1));
    await sleep(150);
    s.destroy();
    const aborted = await upstream.waitForAbort('/v1/files');
    expect(aborted.aborted).toBe(true);
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ error: 'client_aborted', path: '/v1/files' });
    expect(row.request_bytes).toBeGreaterThanOrEqual(100_000);
    await sleep(50);
    expect(openUpstreamRequests()).toEqual([]);
  });

  test('a slow reader of a fast stream: the upstream is paused (bounded buffering), everything arrives in the end', async () => {
    const { upstream, proxy } = await setup({ CAPTURE_BODY_BYTES: '10000' });
    const TOTAL = 64 * 1024 * 1024;
    const piece = Buffer.alloc(64 * 1024, 'x');
    let sent = 0;
    upstream.on('/v1/big-stream', async (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      while (sent < TOTAL && !res.destroyed) {
        sent += piece.length;
        if (!res.write(piece)) await new Promise((r) => res.once('drain', r));
      }
      res.end();
    });
    const { port } = new URL(proxy.url);
    const s = connect(Number(port), '127.0.0.1');
    await new Promise<void>((r) => s.once('connect', () => r()));
    s.pause();
    s.write('GET /v1/big-stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    await sleep(1000);
    const rssWhilePaused = process.memoryUsage().rss;
    // kernel socket buffers on both hops plus a few stream high-water marks, not the whole 64 MB
    expect(sent).toBeLessThan(24 * 1024 * 1024);
    let received = 0;
    s.on('data', (d) => {
      received += d.length;
    });
    s.resume();
    await new Promise((r) => s.once('close', r));
    expect(received).toBeGreaterThan(TOTAL);
    expect(sent).toBe(TOTAL);
    expect(rssWhilePaused).toBeLessThan(2 * 1024 * 1024 * 1024);
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ status: 200, response_bytes: TOTAL, response_truncated: 1, error: null });
  });
});

describe('an upstream that compresses despite accept-encoding: identity', () => {
  /** POST through the proxy with node:http, which leaves the body as sent (fetch would decode it). */
  const rawPost = (p: TestProxy, body: string) =>
    new Promise<{ headers: IncomingHttpHeaders; body: Buffer }>((resolve, reject) => {
      const req = request(
        `${p.url}/v1/chat/completions`,
        { method: 'POST', headers: { 'content-type': 'application/json' } },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => resolve({ headers: res.headers, body: Buffer.concat(chunks) }));
          res.on('error', reject);
        },
      );
      req.on('error', reject);
      req.end(body);
    });
  const encoders = { gzip: gzipSync, deflate: deflateSync, br: brotliCompressSync };

  test.each(['gzip', 'deflate', 'br'] as const)(
    'a %s JSON answer: the client gets the bytes as sent, the row the decoded body and its tokens',
    async (encoding) => {
      const { upstream, proxy } = await setup();
      const json = JSON.stringify(chatCompletionBody('gpt-4o'));
      const sent = encoders[encoding](json);
      upstream.on('/v1/chat/completions', (_req, res) => {
        res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': encoding });
        res.end(sent);
      });
      const raw = await rawPost(proxy, '{"model":"gpt-4o","messages":[]}');
      expect(raw.headers['content-encoding']).toBe(encoding);
      expect(raw.body.equals(sent)).toBe(true);
      const sdk = new OpenAI({ apiKey: 'sk-x', baseURL: `${proxy.url}/v1`, maxRetries: 0 });
      const answer = await sdk.chat.completions.create({ model: 'gpt-4o', messages: [] });
      expect(answer.choices[0].message.content).toBe(CHAT_ANSWER);
      const rows = await proxy.waitForRows(2);
      for (const row of rows) {
        expect(row).toMatchObject({
          response_body: json,
          response_bytes: sent.length,
          response_truncated: 0,
          prompt_tokens: 12,
          completion_tokens: 7,
          total_tokens: 19,
        });
      }
    },
  );

  test('a gzipped stream is reassembled from the decoded events, with its usage', async () => {
    const { upstream, proxy } = await setup();
    const usage = `data: ${JSON.stringify({ object: 'chat.completion.chunk', choices: [], usage: { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 } })}\n\n`;
    const events = `${chunk('zip')}${chunk('ped')}${usage}data: [DONE]\n\n`;
    const sent = gzipSync(events);
    upstream.on('/v1/chat/completions', (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream', 'content-encoding': 'gzip' });
      // In two pieces, the second a moment later, as a stream arrives.
      res.write(sent.subarray(0, 20));
      setTimeout(() => res.end(sent.subarray(20)), 20);
    });
    const raw = await rawPost(proxy, '{"model":"gpt-4o","stream":true}');
    expect(raw.body.equals(sent)).toBe(true);
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ stream: 1, response_body: events, prompt_tokens: 1, total_tokens: 3 });
    expect(JSON.parse(row.assembled!)).toMatchObject({ content: 'zipped', complete: true });
  });

  test('the decoded body kept is bounded by CAPTURE_BODY_BYTES', async () => {
    const { upstream, proxy } = await setup({ CAPTURE_BODY_BYTES: '300' });
    const json = JSON.stringify({ data: 'z'.repeat(2_000_000) });
    const sent = gzipSync(json);
    upstream.on('/v1/chat/completions', (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'gzip' });
      res.end(sent);
    });
    const raw = await rawPost(proxy, '{"model":"gpt-4o"}');
    expect(raw.body.equals(sent)).toBe(true);
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ response_truncated: 1, response_bytes: sent.length });
    expect(row.response_body).toBe(json.slice(0, 300));
  });

  test('a coding the proxy cannot decode: a placeholder naming it, no reassembled stream', async () => {
    const { upstream, proxy } = await setup();
    upstream.on('/v1/chat/completions', (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream', 'content-encoding': 'zstd' });
      res.end(Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3]));
    });
    const raw = await rawPost(proxy, '{"model":"gpt-4o","stream":true}');
    expect(raw.body).toHaveLength(7);
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({
      stream: 1,
      response_body: '[binary body: text/event-stream, zstd, 7 bytes]',
      assembled: null,
    });
  });
});

/** An upstream that answers every request at once, without reading its body (as one refusing an upload). */
async function earlyAnsweringUpstream(status = 200, body = '{"ok":true}') {
  const server = createServer((_req, res) => {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(body);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const { port } = server.address() as AddressInfo;
  return {
    baseUrl: `http://127.0.0.1:${port}/v1`,
    close: () => {
      server.closeAllConnections();
      return new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/**
 * Upload `body` on a raw connection (as curl does: the whole body, however early the answer), then ask the
 * same connection for /health. Resolves with everything received once the health answer came; rejects after
 * `timeoutMs` (the upload stuck, or the connection not serving a next request).
 */
function uploadThenHealth(proxyUrl: string, head: string, body: Buffer, timeoutMs: number): Promise<string> {
  const { port } = new URL(proxyUrl);
  return new Promise((resolve, reject) => {
    const s = connect(Number(port), '127.0.0.1');
    const received: Buffer[] = [];
    const text = () => Buffer.concat(received).toString('latin1');
    let uploaded = false;
    const timer = setTimeout(() => {
      s.destroy();
      reject(
        new Error(`${uploaded ? 'no /health answer' : 'upload stuck'} after ${timeoutMs} ms: ${text()}`),
      );
    }, timeoutMs);
    s.on('data', (d) => {
      received.push(d);
      if (text().includes('"status":"ok"')) {
        clearTimeout(timer);
        s.destroy();
        resolve(text());
      }
    });
    s.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    s.write(`${head}Content-Length: ${body.length}\r\n\r\n`);
    s.write(body, () => {
      uploaded = true;
      s.write('GET /health HTTP/1.1\r\nHost: x\r\n\r\n');
    });
  });
}

describe('an upstream that answers before reading the upload', () => {
  const open: { close(): Promise<void> }[] = [];
  afterEach(async () => {
    for (const o of open.splice(0)) await o.close();
  });

  const file = Buffer.alloc(16 * 1024 * 1024);
  const multipart = Buffer.concat([
    Buffer.from(
      '--XB\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n' +
        '--XB\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\n',
    ),
    file,
    Buffer.from('\r\n--XB--\r\n'),
  ]);
  test.each([
    ['a binary body', '/v1/early200', 'application/octet-stream', file],
    ['a multipart upload', '/v1/audio/transcriptions', 'multipart/form-data; boundary=XB', multipart],
  ])(
    '%s: the rest is read and discarded, the client finishes, the connection serves on, the row counts it',
    async (_name, path, type, body) => {
      const upstream = await earlyAnsweringUpstream(413, '{"error":{"message":"too large"}}');
      const proxy = await startTestProxy({ OPENAI_BASE_URL: upstream.baseUrl });
      open.push(proxy, upstream);
      const answers = await uploadThenHealth(
        proxy.url,
        `POST ${path} HTTP/1.1\r\nHost: x\r\nContent-Type: ${type}\r\n`,
        body,
        4000,
      );
      expect(answers).toMatch(
        /^HTTP\/1\.1 413 [\s\S]*\{"error":\{"message":"too large"\}\}[\s\S]*HTTP\/1\.1 200 /,
      );
      const [row] = await proxy.waitForRows(1);
      expect(row).toMatchObject({ path, status: 413, error: null, request_bytes: body.length });
      expect(openUpstreamRequests()).toEqual([]);
    },
  );

  /**
   * Send the head of a 16 MB upload and its first 2 MB, then nothing more. Resolves with what came back and
   * when the proxy closed the connection (ms after the 2 MB were written), or null when it did not within
   * `waitMs`.
   */
  function stalledUpload(
    proxyUrl: string,
    waitMs: number,
    onAnswer: () => void = () => undefined,
  ): Promise<{ answer: string; closedAfterMs: number | null }> {
    const { port } = new URL(proxyUrl);
    return new Promise((resolve) => {
      const s = connect(Number(port), '127.0.0.1');
      const received: Buffer[] = [];
      let sentAt = 0;
      const finish = (closedAfterMs: number | null) => {
        clearTimeout(timer);
        s.destroy();
        resolve({ answer: Buffer.concat(received).toString('latin1'), closedAfterMs });
      };
      const timer = setTimeout(() => finish(null), waitMs);
      s.on('data', (d) => {
        received.push(d);
        onAnswer();
      });
      s.on('error', () => undefined);
      s.on('close', () => finish(Date.now() - sentAt));
      s.write(
        `POST /v1/early200 HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: ${16 * 1024 * 1024}\r\n\r\n`,
      );
      s.write(Buffer.alloc(2 * 1024 * 1024), () => {
        sentAt = Date.now();
      });
    });
  }

  test('a client that stalls while the rest is discarded is cut after CLIENT_BODY_TIMEOUT_MS; the row counts what came', async () => {
    const upstream = await earlyAnsweringUpstream(413, '{"error":{"message":"too large"}}');
    const proxy = await startTestProxy({ OPENAI_BASE_URL: upstream.baseUrl, CLIENT_BODY_TIMEOUT_MS: '500' });
    open.push(proxy, upstream);
    const { answer, closedAfterMs } = await stalledUpload(proxy.url, 5000);
    expect(answer).toMatch(/^HTTP\/1\.1 413 /);
    // Cut after its silence (not held to the 65 s keep-alive timeout).
    expect(closedAfterMs).not.toBeNull();
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ status: 413, request_bytes: 2 * 1024 * 1024 });
  });

  test('a stop while the rest is discarded does not wait for it: the response was complete; the row is written', async () => {
    const upstream = await earlyAnsweringUpstream(413, '{"error":{"message":"too large"}}');
    const proxy = await startTestProxy({
      OPENAI_BASE_URL: upstream.baseUrl,
      CLIENT_BODY_TIMEOUT_MS: '0',
      SHUTDOWN_GRACE_MS: '5000',
    });
    open.push(upstream);
    let answered = false;
    const upload = stalledUpload(proxy.url, 10_000, () => {
      answered = true;
    });
    await until('the 413 answered', async () => answered);
    await sleep(200);
    const t0 = Date.now();
    // The stop itself (close() would also remove the files): then read the row it wrote.
    await proxy.running.close();
    expect(Date.now() - t0).toBeLessThan(2500);
    expect((await upload).closedAfterMs).not.toBeNull();
    const db = new Database(proxy.dbPath, { readonly: true });
    const rows = db.prepare('select status, request_bytes from exchanges').all();
    db.close();
    await proxy.close();
    expect(rows).toEqual([{ status: 413, request_bytes: 2 * 1024 * 1024 }]);
  });
});
