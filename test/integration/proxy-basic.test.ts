import OpenAI, { toFile } from 'openai';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { CHAT_ANSWER, createFakeUpstream, type FakeUpstream } from '../helpers/fake-upstream.js';
import { startTestProxy, type TestProxy } from '../helpers/test-proxy.js';

const UPSTREAM_KEY = 'sk-upstream-secret-key-1234567890abcd';

let upstream: FakeUpstream;
let proxy: TestProxy;
let client: OpenAI;

beforeEach(async () => {
  upstream = await createFakeUpstream();
  proxy = await startTestProxy({ OPENAI_BASE_URL: upstream.baseUrl, OPENAI_API_KEY: UPSTREAM_KEY });
  client = new OpenAI({ apiKey: 'sk-client-key-000000000000', baseURL: `${proxy.url}/v1`, maxRetries: 0 });
});

afterEach(async () => {
  await proxy.close();
  await upstream.close();
});

describe('transparent proxying with the openai SDK', () => {
  test('chat completion: answer, upstream headers and the stored row', async () => {
    const { data, response } = await client.chat.completions
      .create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'Say hello' }], user: 'alice' })
      .withResponse();
    expect(data.choices[0].message.content).toBe(CHAT_ANSWER);
    expect(data.usage?.total_tokens).toBe(19);
    expect(response.headers.get('x-request-id')).toBe('req_fake_1');
    expect(response.headers.get('x-ratelimit-remaining-requests')).toBe('99');

    const got = upstream.requests.at(-1)!;
    expect(got.url).toBe('/v1/chat/completions');
    expect(got.headers.authorization).toBe(`Bearer ${UPSTREAM_KEY}`);
    expect(JSON.parse(got.body.toString())).toMatchObject({ model: 'gpt-4o', user: 'alice' });

    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({
      method: 'POST',
      path: '/v1/chat/completions',
      status: 200,
      model: 'gpt-4o',
      upstream_model: 'gpt-4o',
      upstream: 'default',
      stream: 0,
      prompt_tokens: 12,
      completion_tokens: 7,
      total_tokens: 19,
      user: 'alice',
      error: null,
    });
    expect(JSON.parse(row.request_body!).messages[0].content).toBe('Say hello');
    expect(JSON.parse(row.response_body!).choices[0].message.content).toBe(CHAT_ANSWER);
    expect(JSON.parse(row.request_headers).authorization).toBe('[redacted]');
    expect(row.id).toMatch(/^[0-9a-z]{26}$/);
    expect(row.ttfb_ms).not.toBeNull();
  });

  test('the recorded duration ends with the response, not when the row is built a moment later', async () => {
    upstream.streamIntervalMs = 20;
    upstream.streamWords = 3;
    const t0 = performance.now();
    const res = await fetch(`${proxy.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        model: 'gpt-4o-mini',
        messages: [{ role: 'user', content: 'hi' }],
        stream: true,
      }),
    });
    expect(res.status).toBe(200);
    await res.text();
    const clientMs = performance.now() - t0;
    // The row is built a few milliseconds after the response closes (RECORD_DELAY_MS): hold this
    // process's event loop (the proxy's too) past that moment, so a late clock shows.
    const busyUntil = performance.now() + 30;
    while (performance.now() < busyUntil);
    const [row] = await proxy.waitForRows(1);
    expect(row.duration_ms).toBeGreaterThanOrEqual(40);
    expect(row.duration_ms).toBeLessThanOrEqual(clientMs);
    expect(row.ttfb_ms).toBeLessThan(row.duration_ms);
  });

  test('streamed chat completion is forwarded event by event with its pacing and stored reassembled', async () => {
    upstream.streamIntervalMs = 50;
    upstream.streamWords = 6;
    const stream = await client.chat.completions.create({
      model: 'gpt-4o-mini',
      messages: [{ role: 'user', content: 'count' }],
      stream: true,
      stream_options: { include_usage: true },
    });
    const arrivals: number[] = [];
    let text = '';
    for await (const chunk of stream) {
      const delta = chunk.choices[0]?.delta?.content;
      if (delta) {
        arrivals.push(performance.now());
        text += delta;
      }
    }
    expect(text).toBe('w0 w1 w2 w3 w4 w5 ');
    const gaps = arrivals.slice(1).map((t, i) => t - arrivals[i]);
    // Paced at 50 ms upstream: the client sees the gaps, not one burst at the end.
    expect(gaps.filter((g) => g >= 30).length).toBeGreaterThanOrEqual(4);

    const [row] = await proxy.waitForRows(1);
    expect(row.stream).toBe(1);
    expect(row.completion_tokens).toBe(6);
    expect(row.prompt_tokens).toBe(9);
    const assembled = JSON.parse(row.assembled!);
    expect(assembled).toMatchObject({
      kind: 'chat.completion',
      content: 'w0 w1 w2 w3 w4 w5 ',
      finish_reason: 'stop',
      complete: true,
    });
    expect(row.response_body).toContain('data: [DONE]');
  });

  test('a streamed chat completion with n: 2 is stored with both choices reassembled', async () => {
    upstream.streamWords = 3;
    const stream = await client.chat.completions.create({
      model: 'gpt-4o-mini',
      messages: [{ role: 'user', content: 'two ways' }],
      stream: true,
      n: 2,
      stream_options: { include_usage: true },
    });
    const seen = ['', ''];
    for await (const chunk of stream) for (const c of chunk.choices) seen[c.index] += c.delta?.content ?? '';
    expect(seen).toEqual(['c0w0 c0w1 c0w2 ', 'c1w0 c1w1 c1w2 ']);

    const [row] = await proxy.waitForRows(1);
    expect(row.completion_tokens).toBe(6);
    const assembled = JSON.parse(row.assembled!);
    expect(assembled).toMatchObject({ content: 'c0w0 c0w1 c0w2 ', finish_reason: 'stop', complete: true });
    expect(assembled.choices).toEqual([
      { index: 0, content: 'c0w0 c0w1 c0w2 ', tool_calls: [], finish_reason: 'stop' },
      { index: 1, content: 'c1w0 c1w1 c1w2 ', tool_calls: [], finish_reason: 'stop' },
    ]);
  });

  test('embeddings, image generation and model list pass through', async () => {
    const emb = await client.embeddings.create({ model: 'text-embedding-3-small', input: 'hello' });
    expect(emb.data[0].embedding).toHaveLength(8);
    const img = await client.images.generate({ model: 'dall-e-3', prompt: 'a cat' });
    expect(img.data?.[0].url).toBe('https://example.invalid/image.png');
    const models = await client.models.list();
    expect(models.data.map((m) => m.id)).toContain('gpt-4o');
    const rows = await proxy.waitForRows(3);
    expect(rows.map((r) => [r.path, r.status, r.model])).toEqual([
      ['/v1/embeddings', 200, 'text-embedding-3-small'],
      ['/v1/images/generations', 200, 'dall-e-3'],
      ['/v1/models', 200, null],
    ]);
  });

  test('audio transcription (multipart) streams through and is stored as a placeholder', async () => {
    const audio = Buffer.alloc(300_000, 7);
    const res = await client.audio.transcriptions.create({
      model: 'whisper-1',
      file: await toFile(audio, 'a.mp3', { type: 'audio/mpeg' }),
    });
    expect(res.text).toMatch(/^transcribed \d+ bytes with whisper-1$/);
    const got = upstream.requests.at(-1)!;
    expect(got.body.length).toBeGreaterThan(300_000);
    const [row] = await proxy.waitForRows(1);
    expect(row.path).toBe('/v1/audio/transcriptions');
    expect(row.request_bytes).toBe(got.body.length);
    expect(row.request_body).toMatch(/^\[binary body: multipart\/form-data.*bytes\]$/);
  });
});
