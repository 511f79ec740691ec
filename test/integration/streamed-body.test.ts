import type { AddressInfo } from 'node:net';
import OpenAI, { toFile } from 'openai';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { createDispatcher } from '../../src/proxy/forward.js';
import { createProxyServer, type ProxyServer } from '../../src/proxy/server.js';
import type { ExchangeRecord } from '../../src/storage/exchange-record.js';
import { createFakeUpstream, type FakeUpstream } from '../helpers/fake-upstream.js';

// The proxy reports every request-body chunk it streams through unbuffered (uploads), so serve can free
// the parser's copies early (body-memory.ts); bodies it reads whole (JSON) are not reported.
describe('onStreamedBody', () => {
  let upstream: FakeUpstream;
  let proxy: ProxyServer;
  let client: OpenAI;
  const dispatcher = createDispatcher({
    connectTimeoutMs: 5000,
    headersTimeoutMs: 5000,
    idleTimeoutMs: 5000,
  });
  const records: ExchangeRecord[] = [];
  let streamed = 0;

  beforeAll(async () => {
    upstream = await createFakeUpstream();
    upstream.on('/v1/files', (_req, res, body) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({
          id: 'file-1',
          object: 'file',
          bytes: body.length,
          created_at: 1700000000,
          filename: 'data.jsonl',
          purpose: 'batch',
        }),
      );
    });
    proxy = createProxyServer({
      limits: {
        maxRequestBodyBytes: 64 * 1024 * 1024,
        captureBodyBytes: 1024,
        corsOrigins: [],
        clientBodyTimeoutMs: 0,
      },
      dispatcher,
      defaultUpstream: { name: 'default', origin: upstream.origin, basePath: '/v1', type: 'openai' },
      sink: { record: (r) => records.push(r) },
      health: () => ({}),
      version: 'test',
      onStreamedBody: (bytes) => {
        streamed += bytes;
      },
    });
    await new Promise<void>((r) => proxy.server.listen(0, '127.0.0.1', () => r()));
    const { port } = proxy.server.address() as AddressInfo;
    client = new OpenAI({ apiKey: 'sk-test', baseURL: `http://127.0.0.1:${port}/v1`, maxRetries: 0 });
  });

  afterAll(async () => {
    await proxy.shutdown(1000);
    await dispatcher.close();
    await upstream.close();
  });

  test('a multipart upload reports every byte of its body', async () => {
    streamed = 0;
    const res = await client.audio.transcriptions.create({
      model: 'whisper-1',
      file: await toFile(Buffer.alloc(3_000_000, 7), 'a.mp3', { type: 'audio/mpeg' }),
    });
    expect(res.text).toMatch(/^transcribed \d+ bytes with whisper-1$/);
    const sent = upstream.requests.at(-1)!.body.length;
    expect(sent).toBeGreaterThan(3_000_000);
    expect(streamed).toBe(sent);
    proxy.recordFinished();
    expect(records.at(-1)!.requestBytes).toBe(sent);
  });

  test('a file upload (streamed unscanned) reports every byte of its body', async () => {
    streamed = 0;
    const file = await client.files.create({
      file: await toFile(Buffer.alloc(2_000_000, 10), 'data.jsonl', { type: 'application/jsonl' }),
      purpose: 'batch',
    });
    const sent = upstream.requests.at(-1)!.body.length;
    expect(file.bytes).toBe(sent);
    expect(streamed).toBe(sent);
  });

  test('a JSON body, read whole, is not reported', async () => {
    streamed = 0;
    await client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] });
    expect(upstream.requests.at(-1)!.body.length).toBeGreaterThan(0);
    expect(streamed).toBe(0);
  });
});
