import { createServer, request } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import OpenAI from 'openai';
import { afterEach, describe, expect, test } from 'vitest';
import { bodyWatchOf, noteHeldUpstream } from '../../src/proxy/server.js';
import { CHAT_ANSWER, chatCompletionBody, sleep } from '../helpers/fake-upstream.js';
import { proxyWithUpstreamPerTest, startTestProxy, type TestProxy } from '../helpers/test-proxy.js';
import { firstBody, openUpstreamRequests, rawHttp } from './raw-http.js';

/** CLIENT_BODY_TIMEOUT_MS in these tests. */
const LIMIT_MS = 300;
const setup = proxyWithUpstreamPerTest({ CLIENT_BODY_TIMEOUT_MS: String(LIMIT_MS) });

afterEach(async () => {
  // No upstream request left waiting for a body that never comes.
  await sleep(50);
  expect(openUpstreamRequests()).toEqual([]);
});

const head = (path: string, contentType: string, length: number) =>
  `POST ${path} HTTP/1.1\r\nHost: x\r\nContent-Type: ${contentType}\r\nContent-Length: ${length}\r\n\r\n`;

/** POST `chunks` to the proxy one every `everyMs`, with the total content-length declared up front. */
function slowUpload(url: string, path: string, contentType: string, chunks: Buffer[], everyMs: number) {
  const total = chunks.reduce((n, c) => n + c.length, 0);
  return new Promise<{ status: number; text: string }>((resolve, reject) => {
    const req = request(
      `${url}${path}`,
      { method: 'POST', headers: { 'content-type': contentType, 'content-length': String(total) } },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d) => {
          text += d;
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    let i = 0;
    const next = () => {
      if (i === chunks.length) {
        req.end();
        return;
      }
      req.write(chunks[i++]);
      setTimeout(next, everyMs);
    };
    req.flushHeaders();
    setTimeout(next, everyMs);
  });
}

/** The stored row of a request whose body stalled: 408, client_body_timeout, the setting named. */
function expectTimedOutRow(proxy: TestProxy, path: string) {
  return proxy.waitForRows(1).then(([row]) => {
    expect(row).toMatchObject({ path, status: 408, error: 'client_body_timeout' });
    expect(row.error_message).toContain(`${LIMIT_MS} ms (CLIENT_BODY_TIMEOUT_MS)`);
    expect(JSON.parse(row.response_body as string).error.code).toBe('client_body_timeout');
    // Not the proxy's fault: no error-level line beside the exchange's own.
    expect(proxy.logLines().filter((l) => l.level >= 50)).toEqual([]);
    return row;
  });
}

describe('a request body that stops arriving', () => {
  test('JSON body stalled mid-way: 408 in OpenAI shape, connection closed, recorded client_body_timeout', async () => {
    const { upstream, proxy } = await setup();
    const partial = '{"model":"gpt-4o","messages":[';
    const started = Date.now();
    const reply = await rawHttp(
      proxy.url,
      head('/v1/chat/completions', 'application/json', 1000) + partial,
      5000,
    );
    const waited = Date.now() - started;
    expect(reply.statuses).toEqual([408]);
    expect(reply.closed).toBe(true);
    expect(reply.text).toMatch(/\r\ncontent-type: application\/json\r\n/i);
    expect(firstBody(reply)).toEqual({
      error: {
        message: `No request body bytes arrived for ${LIMIT_MS} ms (CLIENT_BODY_TIMEOUT_MS): the proxy stopped waiting for the rest of the body`,
        type: 'invalid_request_error',
        param: null,
        code: 'client_body_timeout',
      },
    });
    expect(waited).toBeGreaterThanOrEqual(LIMIT_MS - 20);
    expect(waited).toBeLessThan(3000);
    const row = await expectTimedOutRow(proxy, '/v1/chat/completions');
    expect(row.request_bytes).toBe(partial.length);
    // A JSON body is read whole before it is forwarded: the upstream never saw this one.
    expect(upstream.requests).toHaveLength(0);
    expect(proxy.running.proxy.inflight()).toBe(0);
  });

  test('streamed upload stalled mid-way: the upstream request it feeds is aborted, the client gets 408', async () => {
    const { upstream, proxy } = await setup();
    const sent = 100_000;
    const replied = rawHttp(
      proxy.url,
      head('/v1/files', 'application/octet-stream', 1_000_000) + 'A'.repeat(sent),
      5000,
    );
    const aborted = await upstream.waitForAbort('/v1/files');
    expect(aborted.aborted).toBe(true);
    const reply = await replied;
    expect(reply.statuses).toEqual([408]);
    expect(reply.closed).toBe(true);
    expect(firstBody(reply).error.code).toBe('client_body_timeout');
    const row = await expectTimedOutRow(proxy, '/v1/files');
    expect(row.request_bytes).toBe(sent);
    expect(proxy.running.proxy.inflight()).toBe(0);
  });

  test('multipart upload stalled before its model field: 408, nothing forwarded', async () => {
    const { upstream, proxy } = await setup();
    const reply = await rawHttp(
      proxy.url,
      head('/v1/audio/transcriptions', 'multipart/form-data; boundary=XB', 100_000) +
        '--XB\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\n' +
        'A'.repeat(1000),
      5000,
    );
    expect(reply.statuses).toEqual([408]);
    expect(reply.closed).toBe(true);
    await expectTimedOutRow(proxy, '/v1/audio/transcriptions');
    expect(upstream.requests).toHaveLength(0);
  });

  test('stalled after the upstream already started answering: the answer is cut, the upstream request aborted', async () => {
    // An upstream that answers at once, without waiting for the body, and keeps its answer open.
    let upstreamClosed: () => void = () => {};
    const closed = new Promise<void>((r) => {
      upstreamClosed = r;
    });
    const early = createServer((req, res) => {
      res.on('close', () => upstreamClosed());
      req.resume();
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write('{"early":');
    });
    await new Promise<void>((r) => early.listen(0, '127.0.0.1', () => r()));
    let proxy: TestProxy | null = null;
    try {
      proxy = await startTestProxy({
        OPENAI_BASE_URL: `http://127.0.0.1:${(early.address() as AddressInfo).port}/v1`,
        CLIENT_BODY_TIMEOUT_MS: String(LIMIT_MS),
      });
      const reply = await rawHttp(
        proxy.url,
        head('/v1/files', 'application/octet-stream', 1_000_000) + 'A'.repeat(1000),
        5000,
      );
      // The client got the upstream's head and first bytes, then the cut: no 408 after a 200.
      expect(reply.statuses).toEqual([200]);
      expect(reply.text).toContain('{"early":');
      expect(reply.closed).toBe(true);
      await closed;
      const [row] = await proxy.waitForRows(1);
      expect(row).toMatchObject({ path: '/v1/files', status: 200, error: 'client_body_timeout' });
      expect(row.error_message).toContain(`${LIMIT_MS} ms (CLIENT_BODY_TIMEOUT_MS)`);
    } finally {
      await proxy?.close();
      early.closeAllConnections();
      await new Promise<void>((r) => early.close(() => r()));
    }
  });

  test('with CLIENT_BODY_TIMEOUT_MS=0 there is no limit: the proxy keeps waiting', async () => {
    const { proxy } = await setup({ CLIENT_BODY_TIMEOUT_MS: '0' });
    const reply = await rawHttp(
      proxy.url,
      `${head('/v1/chat/completions', 'application/json', 1000)}{"model":`,
      4 * LIMIT_MS,
    );
    expect(reply).toMatchObject({ statuses: [], closed: false });
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ error: 'client_aborted', status: null });
  });
});

describe('what the limit does not cut', () => {
  test.each([
    ['a JSON body', '/v1/chat/completions', 'application/json'],
    ['a streamed upload', '/v1/files', 'application/octet-stream'],
  ])('%s sent slowly (a chunk every 100 ms, 1.2 s in all) arrives whole', async (_name, path, type) => {
    const { upstream, proxy } = await setup();
    const body = JSON.stringify({ model: 'gpt-4o', messages: [{ role: 'user', content: 'x'.repeat(240) }] });
    const chunks: Buffer[] = [];
    for (let i = 0; i < 12; i++)
      chunks.push(Buffer.from(body.slice(i * 25, i === 11 ? undefined : (i + 1) * 25)));
    upstream.on(path, (_req, res, received) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ received: received.toString() === body }));
    });
    const res = await slowUpload(proxy.url, path, type, chunks, 100);
    expect(res).toEqual({ status: 200, text: '{"received":true}' });
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ path, status: 200, error: null, request_bytes: body.length });
  });

  test('a kept-alive connection does not hold the exchange it watched once the response is done', async () => {
    const { upstream, proxy } = await setup();
    const sockets: Socket[] = [];
    proxy.running.proxy.server.on('connection', (s: Socket) => sockets.push(s));
    upstream.on('/v1/files', (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{}');
    });
    const chunks = [Buffer.from('a'.repeat(1000)), Buffer.from('b'.repeat(1000))];
    const res = await slowUpload(proxy.url, '/v1/files', 'application/octet-stream', chunks, 50);
    expect(res.status).toBe(200);
    await proxy.waitForRows(1);
    // The client keeps the connection (keep-alive); the watch armed for the slow body let go of it.
    expect(sockets.filter((s) => !s.destroyed).length).toBeGreaterThan(0);
    expect(sockets.map((s) => bodyWatchOf(s))).toEqual(sockets.map(() => undefined));
  });

  test('an upstream that answers after longer than the limit (the body was complete)', async () => {
    const { upstream, proxy } = await setup();
    upstream.on('/v1/chat/completions', async (_req, res) => {
      await sleep(3 * LIMIT_MS);
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(chatCompletionBody('gpt-4o')));
    });
    const client = new OpenAI({ apiKey: 'sk-x', baseURL: `${proxy.url}/v1`, maxRetries: 0, timeout: 5000 });
    const answer = await client.chat.completions.create({
      model: 'gpt-4o',
      messages: [{ role: 'user', content: 'think hard' }],
    });
    expect(answer.choices[0].message.content).toBe(CHAT_ANSWER);
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ status: 200, error: null });
    expect(row.duration_ms).toBeGreaterThanOrEqual(3 * LIMIT_MS - 20);
  });

  test('a stream whose events come further apart than the limit', async () => {
    const { upstream, proxy } = await setup();
    upstream.streamIntervalMs = 2 * LIMIT_MS;
    upstream.streamWords = 3;
    const client = new OpenAI({ apiKey: 'sk-x', baseURL: `${proxy.url}/v1`, maxRetries: 0, timeout: 10_000 });
    const stream = await client.chat.completions.create({
      model: 'gpt-4o',
      messages: [{ role: 'user', content: 'slowly' }],
      stream: true,
    });
    let text = '';
    for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
    expect(text.length).toBeGreaterThan(0);
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ status: 200, error: null, stream: 1 });
  });

  test('a big upload to an upstream that stops reading for a while (the proxy is behind, not the client)', async () => {
    // An upstream that reads nothing of the body for 4× the limit, then all of it.
    const size = 32 * 1024 * 1024;
    const slow = createServer(async (req, res) => {
      req.pause();
      await sleep(4 * LIMIT_MS);
      let n = 0;
      try {
        for await (const c of req) n += (c as Buffer).length;
      } catch {
        return; // the proxy aborted the upload: the assertions below say so
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ bytes: n }));
    });
    await new Promise<void>((r) => slow.listen(0, '127.0.0.1', () => r()));
    const port = (slow.address() as AddressInfo).port;
    let proxy: TestProxy | null = null;
    try {
      proxy = await startTestProxy({
        OPENAI_BASE_URL: `http://127.0.0.1:${port}/v1`,
        CLIENT_BODY_TIMEOUT_MS: String(LIMIT_MS),
      });
      const res = await fetch(`${proxy.url}/v1/files`, {
        method: 'POST',
        headers: { 'content-type': 'application/octet-stream' },
        body: Buffer.alloc(size, 7),
      });
      expect(res.status).toBe(200);
      expect(await res.json()).toEqual({ bytes: size });
      const [row] = await proxy.waitForRows(1);
      expect(row).toMatchObject({ status: 200, error: null, request_bytes: size });
    } finally {
      await proxy?.close();
      slow.closeAllConnections();
      await new Promise<void>((r) => slow.close(() => r()));
    }
  });
});

describe('the "proxy is behind" signal the body timer asks', () => {
  test('set while the upstream holds a chunk it has not asked past, clear while the client is awaited', async () => {
    const x = { bodyHeldUpstream: false };
    let release: (() => void) | null = null;
    const client = (async function* () {
      yield Buffer.from('a');
      // The client is silent here until released.
      await new Promise<void>((r) => {
        release = r;
      });
      yield Buffer.from('b');
    })();
    const upstream = noteHeldUpstream(x, client)[Symbol.asyncIterator]();
    expect(x.bodyHeldUpstream).toBe(false);
    expect((await upstream.next()).value?.toString()).toBe('a');
    // The upstream took 'a' and has not asked for more: the proxy is behind, not the client.
    expect(x.bodyHeldUpstream).toBe(true);
    const pending = upstream.next();
    await sleep(10);
    // The upstream asked for more; the client has none yet: waiting on the client.
    expect(x.bodyHeldUpstream).toBe(false);
    (release as unknown as () => void)();
    expect((await pending).value?.toString()).toBe('b');
    expect(x.bodyHeldUpstream).toBe(true);
    expect((await upstream.next()).done).toBe(true);
    expect(x.bodyHeldUpstream).toBe(false);
  });

  test('cleared when the upstream request stops reading the body (it failed or was answered)', async () => {
    const x = { bodyHeldUpstream: false };
    const upstream = noteHeldUpstream(x, [
      Buffer.from('a'),
      Buffer.from('b'),
    ] as unknown as AsyncIterable<Buffer>);
    const it = upstream[Symbol.asyncIterator]();
    await it.next();
    expect(x.bodyHeldUpstream).toBe(true);
    await it.return?.(undefined);
    expect(x.bodyHeldUpstream).toBe(false);
  });
});
