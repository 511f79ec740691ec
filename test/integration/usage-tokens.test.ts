import { randomBytes } from 'node:crypto';
import { brotliCompressSync, constants, deflateSync, gzipSync } from 'node:zlib';
import OpenAI from 'openai';
import { describe, expect, test } from 'vitest';
import { main } from '../../src/cli.js';
import { createTestIo, proxyWithUpstreamPerTest, type TestProxy } from '../helpers/test-proxy.js';

const setup = proxyWithUpstreamPerTest();

const client = (proxy: TestProxy) =>
  new OpenAI({ apiKey: 'sk-client-key-000000000000', baseURL: `${proxy.url}/v1`, maxRetries: 0 });

/** `logs stats --by <by> --json`, as the user reads it. */
async function statsBy(proxy: TestProxy, by: 'path' | 'model' | 'user'): Promise<Record<string, any>[]> {
  const io = createTestIo({}, proxy.dir);
  expect(await main(['logs', 'stats', '--by', by, '--json', '--db', proxy.dbPath], io), io.err()).toBe(0);
  return JSON.parse(io.out());
}
const statsByPath = (proxy: TestProxy) => statsBy(proxy, 'path');

describe('token usage of responses larger than CAPTURE_BODY_BYTES', () => {
  test('an image generation answer over the cap: the SDK gets its usage, the row records it, body cut as before', async () => {
    const { upstream, proxy } = await setup({ CAPTURE_BODY_BYTES: '1000' });
    const usage = {
      input_tokens: 10,
      output_tokens: 4160,
      total_tokens: 4170,
      input_tokens_details: { text_tokens: 10, image_tokens: 0 },
    };
    const body = JSON.stringify({
      created: 1,
      data: [{ b64_json: 'A'.repeat(200_000) }, { b64_json: 'B'.repeat(200_000) }],
      usage,
    });
    upstream.on('/v1/images/generations', (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      // In pieces, as a large answer arrives: the usage is in the last one.
      const bytes = Buffer.from(body);
      for (let at = 0; at < bytes.length; at += 16_384) res.write(bytes.subarray(at, at + 16_384));
      res.end();
    });
    const img = await client(proxy).images.generate({ model: 'gpt-image-1', prompt: 'cat', n: 2 });
    expect(img.usage).toMatchObject({ input_tokens: 10, output_tokens: 4160, total_tokens: 4170 });
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({
      path: '/v1/images/generations',
      prompt_tokens: 10,
      completion_tokens: 4160,
      total_tokens: 4170,
      response_truncated: 1,
      response_bytes: body.length,
    });
    expect(row.response_body).toBe(body.slice(0, 1000));
  });

  test('a non-streamed Responses answer just over the cap', async () => {
    const { upstream, proxy } = await setup({ CAPTURE_BODY_BYTES: '300' });
    const body = JSON.stringify({
      id: 'resp_1',
      object: 'response',
      status: 'completed',
      model: 'o4-mini',
      output: [
        {
          type: 'message',
          id: 'msg_1',
          role: 'assistant',
          content: [{ type: 'output_text', text: 'Hello there '.repeat(20), annotations: [] }],
        },
      ],
      usage: { input_tokens: 11, output_tokens: 22, total_tokens: 33 },
    });
    upstream.on('/v1/responses', (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(body);
    });
    const r = await client(proxy).responses.create({ model: 'o4-mini', input: 'hi' });
    expect(r.usage?.total_tokens).toBe(33);
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({
      prompt_tokens: 11,
      completion_tokens: 22,
      total_tokens: 33,
      response_truncated: 1,
    });
    expect(row.response_body).toBe(body.slice(0, 300));
  });
});

describe('token usage where CAPTURE_BODY_BYTES cuts a JSON answer', () => {
  // As OpenAI writes it: with its details, ~250 bytes.
  const usage = {
    prompt_tokens: 31,
    completion_tokens: 42,
    total_tokens: 73,
    prompt_tokens_details: { cached_tokens: 0, audio_tokens: 0 },
    completion_tokens_details: {
      reasoning_tokens: 0,
      audio_tokens: 0,
      accepted_prediction_tokens: 0,
      rejected_prediction_tokens: 0,
    },
  };
  /** A chat completion of exactly `size` bytes, its `usage` last. */
  const completionOf = (size: number) => {
    const shape = (content: string) =>
      JSON.stringify({
        id: 'chatcmpl-1',
        object: 'chat.completion',
        model: 'gpt-4o',
        choices: [{ index: 0, message: { role: 'assistant', content }, finish_reason: 'stop' }],
        usage,
      });
    const body = shape('x'.repeat(size - shape('').length));
    expect(body.length).toBe(size);
    return body;
  };

  test.each([1, 50, 150, 250, 400, 2000])(
    'a chat completion of 1000 + %i bytes cut at 1000: its tokens are recorded',
    async (over) => {
      const { upstream, proxy } = await setup({ CAPTURE_BODY_BYTES: '1000' });
      // At 1000 + 250 bytes the cut falls inside `"usage":{…}`: neither side of it holds it whole.
      const body = completionOf(1000 + over);
      upstream.on('/v1/chat/completions', (_req, res) => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(body);
      });
      const answer = await client(proxy).chat.completions.create({ model: 'gpt-4o', messages: [] });
      expect(answer.usage).toEqual(usage);
      const [row] = await proxy.waitForRows(1);
      expect(row).toMatchObject({
        prompt_tokens: 31,
        completion_tokens: 42,
        total_tokens: 73,
        response_truncated: 1,
        response_bytes: body.length,
      });
      expect(row.response_body).toBe(body.slice(0, 1000));
    },
  );

  test('an answer cut inside a character is stored up to the last whole one, its tokens recorded', async () => {
    const { upstream, proxy } = await setup({ CAPTURE_BODY_BYTES: '1000' });
    const content = 'καλημέρα '.repeat(200); // 2 bytes a Greek letter
    const body = JSON.stringify({
      id: 'chatcmpl-1',
      object: 'chat.completion',
      model: 'gpt-4o',
      choices: [{ index: 0, message: { role: 'assistant', content }, finish_reason: 'stop' }],
      usage,
    });
    const bytes = Buffer.from(body);
    // Byte 1000 is the second of a Greek letter's two: the cut falls inside it.
    expect(bytes[1000]! & 0xc0).toBe(0x80);
    upstream.on('/v1/chat/completions', (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(body);
    });
    const answer = await client(proxy).chat.completions.create({ model: 'gpt-4o', messages: [] });
    expect(answer.choices[0]?.message.content).toBe(content);
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ total_tokens: 73, response_truncated: 1, response_bytes: bytes.length });
    expect(row.response_body).toBe(bytes.subarray(0, 999).toString());
    expect(row.response_body).not.toContain('\ufffd');
  });

  test.each([
    ['gzip', gzipSync],
    ['deflate', deflateSync],
    ['br', (b: string) => brotliCompressSync(b, { params: { [constants.BROTLI_PARAM_QUALITY]: 4 } })],
  ] as const)(
    'a %s image generation answer over the cap: its tokens are recorded',
    async (encoding, encode) => {
      const { upstream, proxy } = await setup({ CAPTURE_BODY_BYTES: '1000' });
      const imageUsage = {
        input_tokens: 50,
        output_tokens: 272,
        total_tokens: 322,
        input_tokens_details: { text_tokens: 50, image_tokens: 0 },
      };
      // An image's base64 barely compresses: the compressed body is itself far over the cap.
      const image = randomBytes(150_000).toString('base64');
      const json = JSON.stringify({ created: 1, data: [{ b64_json: image }], usage: imageUsage });
      const sent = encode(json);
      expect(sent.length).toBeGreaterThan(100_000);
      upstream.on('/v1/images/generations', (_req, res) => {
        res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': encoding });
        for (let at = 0; at < sent.length; at += 1024) res.write(sent.subarray(at, at + 1024));
        res.end();
      });
      const img = await client(proxy).images.generate({ model: 'gpt-image-1', prompt: 'cat' });
      expect(img.usage).toEqual(imageUsage);
      const [row] = await proxy.waitForRows(1);
      expect(row).toMatchObject({
        path: '/v1/images/generations',
        prompt_tokens: 50,
        completion_tokens: 272,
        total_tokens: 322,
        response_truncated: 1,
        response_bytes: sent.length,
      });
      expect(row.response_body).toBe(json.slice(0, 1000));
    },
  );
});

test('a gzipped chat stream over the cap: reassembled to its end, its usage recorded', async () => {
  const { upstream, proxy } = await setup({ CAPTURE_BODY_BYTES: '1000' });
  const event = (o: unknown) => `data: ${JSON.stringify(o)}\n\n`;
  const words = Array.from({ length: 200 }, (_, i) => `word${i} `);
  const events = [
    ...words.map((w) =>
      event({ object: 'chat.completion.chunk', choices: [{ index: 0, delta: { content: w } }] }),
    ),
    event({ object: 'chat.completion.chunk', choices: [{ index: 0, delta: {}, finish_reason: 'stop' }] }),
    event({
      object: 'chat.completion.chunk',
      choices: [],
      usage: { prompt_tokens: 5, completion_tokens: 200, total_tokens: 205 },
    }),
    'data: [DONE]\n\n',
  ].join('');
  const sent = gzipSync(events);
  upstream.on('/v1/chat/completions', (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'content-encoding': 'gzip' });
    for (let at = 0; at < sent.length; at += 512) res.write(sent.subarray(at, at + 512));
    res.end();
  });
  const stream = await client(proxy).chat.completions.create({
    model: 'gpt-4o',
    messages: [],
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = '';
  for await (const c of stream) text += c.choices[0]?.delta.content ?? '';
  expect(text).toBe(words.join(''));
  const [row] = await proxy.waitForRows(1);
  expect(row).toMatchObject({ stream: 1, prompt_tokens: 5, completion_tokens: 200, total_tokens: 205 });
  expect(row.response_body).toBe(events.slice(0, 1000));
  // Reassembled to its end (its text capped as any stream's is), as the same stream uncompressed.
  const assembled = JSON.parse(row.assembled!);
  expect(assembled).toMatchObject({ complete: true, finish_reason: 'stop' });
  expect(assembled.content.length).toBeGreaterThanOrEqual(1000);
  expect(words.join('').startsWith(assembled.content)).toBe(true);
});

describe('only requests that generate count tokens', () => {
  const stored = (i: number) => ({
    id: `chatcmpl-${i}`,
    object: 'chat.completion',
    model: 'gpt-4o',
    choices: [{ index: 0, message: { role: 'assistant', content: 'x' }, finish_reason: 'stop' }],
    usage: { prompt_tokens: 1000 * i, completion_tokens: 500, total_tokens: 1000 * i + 500 },
  });

  test('listing and retrieving stored completions and responses record no tokens; generating does', async () => {
    const { upstream, proxy } = await setup();
    upstream.on('/v1/chat/completions', (req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      if (req.method === 'GET')
        res.end(JSON.stringify({ object: 'list', data: [stored(1), stored(2), stored(3)], has_more: false }));
      else res.end(JSON.stringify(stored(7)));
    });
    const response = {
      id: 'resp_1',
      object: 'response',
      status: 'completed',
      model: 'o4-mini',
      output: [],
      usage: { input_tokens: 11, output_tokens: 22, total_tokens: 33 },
    };
    upstream.on('/v1/responses/resp_1', (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(response));
    });
    upstream.on('/v1/chat/completions/chatcmpl-2', (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(stored(2)));
    });
    const c = client(proxy);
    const created = await c.chat.completions.create({ model: 'gpt-4o', messages: [] });
    expect(created.usage?.total_tokens).toBe(7500);
    const list = await c.chat.completions.list({ limit: 3 });
    expect(list.data.map((d) => d.usage?.total_tokens)).toEqual([1500, 2500, 3500]);
    expect((await c.responses.retrieve('resp_1')).usage?.total_tokens).toBe(33);
    // Updating a stored completion's metadata is a POST, but spends nothing either.
    expect((await c.chat.completions.update('chatcmpl-2', { metadata: { a: 'b' } })).id).toBe('chatcmpl-2');

    const rows = await proxy.waitForRows(4);
    expect(rows.map((r) => [r.method, r.path, r.prompt_tokens, r.completion_tokens, r.total_tokens])).toEqual(
      [
        ['POST', '/v1/chat/completions', 7000, 500, 7500],
        ['GET', '/v1/chat/completions', null, null, null],
        ['GET', '/v1/responses/resp_1', null, null, null],
        ['POST', '/v1/chat/completions/chatcmpl-2', null, null, null],
      ],
    );
    const chat = (await statsByPath(proxy)).find((g) => g.key === '/v1/chat/completions');
    expect(chat).toMatchObject({ requests: 2, prompt_tokens: 7000, completion_tokens: 500 });
  });

  test('replaying a stored response as a stream (GET …?stream=true) records no tokens', async () => {
    const { upstream, proxy } = await setup();
    const completed = {
      type: 'response.completed',
      sequence_number: 1,
      response: {
        id: 'resp_1',
        object: 'response',
        status: 'completed',
        output: [],
        usage: { input_tokens: 11, output_tokens: 22, total_tokens: 33 },
      },
    };
    upstream.on('/v1/responses/resp_1', (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end(`event: response.completed\ndata: ${JSON.stringify(completed)}\n\n`);
    });
    const res = await fetch(`${proxy.url}/v1/responses/resp_1?stream=true`);
    expect(await res.text()).toContain('"total_tokens":33');
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ method: 'GET', stream: 1, prompt_tokens: null, total_tokens: null });
  });
});

describe('background Responses count their tokens once, when a read carries them', () => {
  const usage = { input_tokens: 110, output_tokens: 220, total_tokens: 330 };
  const responseObject = (status: string, withUsage: boolean) => ({
    id: 'resp_bg1',
    object: 'response',
    status,
    background: true,
    model: 'o3-pro-2025-06-10',
    output: [],
    usage: withUsage ? usage : null,
  });
  const json = (res: import('node:http').ServerResponse, body: unknown) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  };

  test("create (queued, no usage), polls until completed: the completed read counts them, with the create's model", async () => {
    const { upstream, proxy } = await setup();
    upstream.on('/v1/responses', (_req, res) => json(res, responseObject('queued', false)));
    let polls = 0;
    upstream.on('/v1/responses/resp_bg1', (_req, res) =>
      json(res, ++polls === 1 ? responseObject('in_progress', false) : responseObject('completed', true)),
    );
    const c = client(proxy);
    const created = await c.responses.create({
      model: 'o3-pro',
      input: 'a long task',
      background: true,
      user: 'team-a',
    });
    expect(created.status).toBe('queued');
    const statuses = [];
    for (let i = 0; i < 3; i++) statuses.push((await c.responses.retrieve('resp_bg1')).status);
    expect(statuses).toEqual(['in_progress', 'completed', 'completed']);

    const rows = await proxy.waitForRows(4);
    expect(
      rows.map((r) => [
        r.method,
        r.path,
        r.model,
        r.user,
        r.prompt_tokens,
        r.completion_tokens,
        r.total_tokens,
      ]),
    ).toEqual([
      ['POST', '/v1/responses', 'o3-pro', 'team-a', null, null, null],
      ['GET', '/v1/responses/resp_bg1', null, null, null, null, null],
      // The read that brought the usage counts it, once, under the model and user the create named.
      ['GET', '/v1/responses/resp_bg1', 'o3-pro', 'team-a', 110, 220, 330],
      ['GET', '/v1/responses/resp_bg1', null, null, null, null, null],
    ]);
    const model = (await statsBy(proxy, 'model')).find((g) => g.key === 'o3-pro');
    expect(model).toMatchObject({ prompt_tokens: 110, completion_tokens: 220 });
    const user = (await statsBy(proxy, 'user')).find((g) => g.key === 'team-a');
    expect(user).toMatchObject({ prompt_tokens: 110, completion_tokens: 220 });
  });

  test('a streamed read (GET …?stream=true) or a cancel that carries the usage counts it; other responses still count nothing', async () => {
    const { upstream, proxy } = await setup();
    let next = 1;
    upstream.on('/v1/responses', (_req, res) =>
      json(res, { ...responseObject('queued', false), id: `resp_bg${next++}` }),
    );
    const completed = {
      type: 'response.completed',
      sequence_number: 9,
      response: { ...responseObject('completed', true), id: 'resp_bg1' },
    };
    upstream.on('/v1/responses/resp_bg1', (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end(`event: response.completed\ndata: ${JSON.stringify(completed)}\n\n`);
    });
    upstream.on('/v1/responses/resp_bg2/cancel', (_req, res) =>
      json(res, {
        ...responseObject('cancelled', true),
        id: 'resp_bg2',
        usage: { input_tokens: 5, output_tokens: 6, total_tokens: 11 },
      }),
    );
    upstream.on('/v1/responses/resp_other', (_req, res) =>
      json(res, { ...responseObject('completed', true), id: 'resp_other' }),
    );
    const c = client(proxy);
    await c.responses.create({ model: 'o3-pro', input: 'one', background: true });
    await c.responses.create({ model: 'o3-pro', input: 'two', background: true });
    const replay = await fetch(`${proxy.url}/v1/responses/resp_bg1?stream=true`);
    expect(await replay.text()).toContain('"total_tokens":330');
    expect((await c.responses.cancel('resp_bg2')).status).toBe('cancelled');
    expect((await c.responses.retrieve('resp_other')).usage?.total_tokens).toBe(330);

    const rows = await proxy.waitForRows(5);
    expect(rows.map((r) => [r.method, r.path, r.stream, r.total_tokens])).toEqual([
      ['POST', '/v1/responses', 0, null],
      ['POST', '/v1/responses', 0, null],
      ['GET', '/v1/responses/resp_bg1', 1, 330],
      ['POST', '/v1/responses/resp_bg2/cancel', 0, 11],
      ['GET', '/v1/responses/resp_other', 0, null],
    ]);
  });
});
