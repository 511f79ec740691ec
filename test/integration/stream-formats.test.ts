import type { ServerResponse } from 'node:http';
import OpenAI, { toFile } from 'openai';
import { afterEach, describe, expect, test } from 'vitest';
import { main } from '../../src/cli.js';
import { chatCompletionBody, createFakeUpstream, type FakeUpstream } from '../helpers/fake-upstream.js';
import { createTestIo, startTestProxy, type TestProxy } from '../helpers/test-proxy.js';

const open: (FakeUpstream | TestProxy)[] = [];
afterEach(async () => {
  for (const x of open.splice(0).reverse()) await x.close();
});

/**
 * A fake upstream and the proxy in front of it: at the upstream's `/v1` (OpenAI), or at its root, as
 * one configures a llama.cpp or Ollama server to reach its native routes.
 */
async function setup(at: 'v1' | 'root' = 'v1') {
  const upstream = await createFakeUpstream();
  open.push(upstream);
  const proxy = await startTestProxy({
    OPENAI_BASE_URL: at === 'v1' ? upstream.baseUrl : upstream.origin,
  });
  open.push(proxy);
  return { upstream, proxy };
}

const client = (proxy: TestProxy) =>
  new OpenAI({ apiKey: 'sk-client-key-000000000000', baseURL: `${proxy.url}/v1`, maxRetries: 0 });

const INCOMPLETE = '(incomplete: the stream ended before its final event)';

/** `logs show <id>` as the user reads it. */
async function show(proxy: TestProxy, id: string, ...flags: string[]): Promise<string> {
  const io = createTestIo({ HOME: proxy.dir }, proxy.dir);
  expect(await main(['logs', 'show', id, ...flags, '--db', proxy.dbPath], io), io.err()).toBe(0);
  return io.out();
}

/** Writes `frames` one at a time, 5 ms apart, as a streaming upstream does, then ends. */
async function drip(res: ServerResponse, contentType: string, frames: string[]): Promise<void> {
  res.writeHead(200, { 'content-type': contentType });
  for (const f of frames) {
    res.write(f);
    await new Promise((r) => setTimeout(r, 5));
  }
  res.end();
}

const sse = (events: unknown[]) => events.map((e) => `data: ${JSON.stringify(e)}\n\n`);
const ndjson = (lines: unknown[]) => lines.map((l) => `${JSON.stringify(l)}\n`);

describe('streams in other formats are recorded as streams, reassembled', () => {
  test('a stream whose content type is not in lower case (Text/Event-Stream)', async () => {
    const { upstream, proxy } = await setup();
    upstream.on('/v1/chat/completions', (_req, res) =>
      drip(res, 'Text/Event-Stream; charset=UTF-8', [
        ...sse([
          {
            object: 'chat.completion.chunk',
            choices: [{ index: 0, delta: { content: 'Hi' }, finish_reason: 'stop' }],
          },
          {
            object: 'chat.completion.chunk',
            choices: [],
            usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 },
          },
        ]),
        'data: [DONE]\n\n',
      ]),
    );
    const stream = await client(proxy).chat.completions.create({
      model: 'gpt-4o-mini',
      messages: [{ role: 'user', content: 'hi' }],
      stream: true,
    });
    let text = '';
    for await (const c of stream) text += c.choices[0]?.delta?.content ?? '';
    expect(text).toBe('Hi');
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ stream: 1, prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 });
    expect(JSON.parse(row.assembled!)).toMatchObject({
      kind: 'chat.completion',
      content: 'Hi',
      complete: true,
    });
    const shown = await show(proxy, row.id);
    expect(shown).toContain('(stream)');
    expect(shown).toContain('tokens     1 in, 1 out, 2 total');
    expect(shown).toContain('── reassembled message\nHi\n');
    expect(shown).not.toContain(INCOMPLETE);
  });

  test('a chat stream without data: [DONE] (ik_llama.cpp) is complete when it ended after its finish_reason; cut, it is not', async () => {
    const { upstream, proxy } = await setup();
    const chunk = (delta: unknown, finish: string | null = null) => ({
      object: 'chat.completion.chunk',
      choices: [{ index: 0, delta, finish_reason: finish }],
    });
    const frames = sse([
      chunk({ content: 'Hello' }),
      chunk({ content: ' world' }),
      chunk({}, 'stop'),
      {
        object: 'chat.completion.chunk',
        choices: [],
        usage: { prompt_tokens: 9, completion_tokens: 2, total_tokens: 11 },
      },
    ]);
    upstream.on('/v1/chat/completions', (req, res) => {
      if (req.headers['x-cut'] === undefined) return drip(res, 'text/event-stream', frames);
      // Reset after the first words: no finish_reason, no end.
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(frames[0]);
      setTimeout(() => res.destroy(), 20);
    });
    const ask = (cut: boolean) =>
      client(proxy).chat.completions.create(
        { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }], stream: true },
        cut ? { headers: { 'x-cut': '1' } } : undefined,
      );
    let text = '';
    for await (const c of await ask(false)) text += c.choices[0]?.delta?.content ?? '';
    expect(text).toBe('Hello world');
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({
      stream: 1,
      error: null,
      prompt_tokens: 9,
      completion_tokens: 2,
      total_tokens: 11,
    });
    expect(JSON.parse(row.assembled!)).toMatchObject({
      kind: 'chat.completion',
      content: 'Hello world',
      finish_reason: 'stop',
      complete: true,
    });
    const shown = await show(proxy, row.id);
    expect(shown).toContain('── reassembled message\nHello world\n');
    expect(shown).not.toContain(INCOMPLETE);

    await expect(
      (async () => {
        for await (const _ of await ask(true));
      })(),
    ).rejects.toThrow();
    const rows = await proxy.waitForRows(2);
    const cut = rows.find((r) => r.id !== row.id)!;
    expect(cut).toMatchObject({ stream: 1, error: 'upstream_reset' });
    expect(JSON.parse(cut.assembled!)).toMatchObject({
      content: 'Hello',
      finish_reason: null,
      complete: false,
    });
    expect(await show(proxy, cut.id)).toContain(INCOMPLETE);
  });

  test('audio transcription with stream: true (openai SDK): the transcript and its usage', async () => {
    const { upstream, proxy } = await setup();
    upstream.on('/v1/audio/transcriptions', (_req, res) =>
      drip(
        res,
        'text/event-stream',
        sse([
          { type: 'transcript.text.delta', delta: 'Hello' },
          { type: 'transcript.text.delta', delta: ' world' },
          {
            type: 'transcript.text.done',
            text: 'Hello world',
            usage: {
              type: 'tokens',
              input_tokens: 14,
              input_token_details: { text_tokens: 0, audio_tokens: 14 },
              output_tokens: 3,
              total_tokens: 17,
            },
          },
        ]),
      ),
    );
    const stream = await client(proxy).audio.transcriptions.create({
      model: 'gpt-4o-transcribe',
      file: await toFile(Buffer.alloc(3000, 1), 'a.mp3', { type: 'audio/mpeg' }),
      stream: true,
    });
    const seen: string[] = [];
    for await (const e of stream) seen.push(e.type);
    expect(seen).toEqual(['transcript.text.delta', 'transcript.text.delta', 'transcript.text.done']);

    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({
      stream: 1,
      prompt_tokens: 14,
      completion_tokens: 3,
      total_tokens: 17,
      error: null,
    });
    expect(JSON.parse(row.assembled!)).toMatchObject({
      kind: 'transcription',
      content: 'Hello world',
      complete: true,
    });
    const shown = await show(proxy, row.id);
    expect(shown).toContain('── reassembled message\nHello world\n');
    expect(shown).not.toContain(INCOMPLETE);
    expect(shown).toContain('tokens     14 in, 3 out, 17 total');
  });

  test('speech with stream_format "sse" (openai SDK): usage and completion, not the base64 audio', async () => {
    const { upstream, proxy } = await setup();
    const audio = Buffer.alloc(3000, 9).toString('base64');
    upstream.on('/v1/audio/speech', (_req, res) =>
      drip(
        res,
        'text/event-stream',
        sse([
          { type: 'speech.audio.delta', audio },
          { type: 'speech.audio.delta', audio },
          { type: 'speech.audio.done', usage: { input_tokens: 5, output_tokens: 40, total_tokens: 45 } },
        ]),
      ),
    );
    const res = await client(proxy).audio.speech.create({
      model: 'gpt-4o-mini-tts',
      voice: 'alloy',
      input: 'hi',
      stream_format: 'sse',
    });
    const body = await res.text();
    expect(body).toContain('speech.audio.done');

    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ stream: 1, prompt_tokens: 5, completion_tokens: 40, total_tokens: 45 });
    expect(row.response_body).toBe(body);
    expect(JSON.parse(row.assembled!)).toMatchObject({ kind: 'speech', content: '', complete: true });
    const shown = await show(proxy, row.id);
    expect(shown).toContain('── reassembled message\n(audio: in the raw events, add --raw)\nfinish_reason:');
    expect(shown).not.toContain(INCOMPLETE);
    expect(shown).not.toContain(audio.slice(0, 100));
    expect(JSON.parse(await show(proxy, row.id, '--json')).assembled.kind).toBe('speech');
    expect(await show(proxy, row.id, '--raw')).toContain('(audio: in the raw events below)\n');
  });

  test("llama.cpp's native /completion stream", async () => {
    const { upstream, proxy } = await setup('root');
    upstream.on('/completion', (_req, res) =>
      drip(
        res,
        'text/event-stream',
        sse([
          { content: 'Once', stop: false, id_slot: 0, index: 0 },
          { content: ' upon', stop: false, id_slot: 0, index: 0 },
          {
            content: '',
            stop: true,
            id_slot: 0,
            tokens_predicted: 2,
            tokens_evaluated: 4,
            stop_type: 'eos',
            timings: { prompt_n: 4, predicted_n: 2 },
            index: 0,
          },
        ]),
      ),
    );
    const res = await fetch(`${proxy.url}/completion`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'Tell me a story', n_predict: 2, stream: true }),
    });
    expect(res.status).toBe(200);
    expect(await res.text()).toContain('"stop":true');

    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ stream: 1, prompt_tokens: 4, completion_tokens: 2, total_tokens: 6 });
    expect(JSON.parse(row.assembled!)).toMatchObject({
      kind: 'llama.cpp',
      content: 'Once upon',
      finish_reason: 'stop',
      complete: true,
    });
    const shown = await show(proxy, row.id);
    expect(shown).toContain('── reassembled message\nOnce upon\nfinish_reason: stop\n');
  });

  test.each([
    ['/completion', '/completion', false],
    ['/v1/chat/completions', '/chat/completions', true],
  ])(
    "llama.cpp's error mid-stream (an SSE `error:` field) on %s: recorded upstream_stream_error with its message",
    async (path, upstreamPath, oaiCompat) => {
      const { upstream, proxy } = await setup('root');
      // llama.cpp writes a failure after the 200 as `error: {…}` (server_sent_event(sink, "error", …)),
      // then `data: [DONE]` on its OpenAI-compatible routes.
      const message = 'the request exceeds the available context size, try increasing it';
      upstream.on(upstreamPath, (_req, res) =>
        drip(res, 'text/event-stream', [
          `error: ${JSON.stringify({ code: 400, message, type: 'exceed_context_size_error' })}\n\n`,
          ...(oaiCompat ? ['data: [DONE]\n\n'] : []),
        ]),
      );
      const res = await fetch(`${proxy.url}${path}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ prompt: 'x', messages: [{ role: 'user', content: 'x' }], stream: true }),
      });
      expect(res.status).toBe(200);
      expect(await res.text()).toContain(`error: {"code":400`);

      const [row] = await proxy.waitForRows(1);
      expect(row).toMatchObject({
        status: 200,
        stream: 1,
        error: 'upstream_stream_error',
        error_message: message,
      });
      const shown = await show(proxy, row.id);
      expect(shown).toContain(message);
    },
  );

  // llama.cpp answers a `prompt` array with one result per prompt: a JSON array, or each prompt's events
  // (by `index`) in one stream, each result counting its own prompt's tokens.
  const llamaResult = (index: number, content: string, evaluated: number, predicted: number) => ({
    index,
    content,
    id_slot: index,
    stop: true,
    model: 'qwen',
    tokens_predicted: predicted,
    tokens_evaluated: evaluated,
    stop_type: 'eos',
    timings: { prompt_n: evaluated, predicted_n: predicted },
  });
  const oaiCompletion = (index: number, text: string, prompt: number, completion: number) => ({
    choices: [{ text, index, logprobs: null, finish_reason: 'stop' }],
    model: 'qwen',
    object: 'text_completion',
    usage: { completion_tokens: completion, prompt_tokens: prompt, total_tokens: prompt + completion },
    id: `cmpl-${index}`,
  });
  test.each([
    ['/completion', '/completion', [llamaResult(0, 'A', 3, 2), llamaResult(1, 'B', 5, 4)]],
    ['/v1/completions', '/completions', [oaiCompletion(0, 'A', 3, 2), oaiCompletion(1, 'B', 5, 4)]],
  ])(
    "llama.cpp's answer to a prompt array on %s (a JSON array of results): every prompt's tokens are counted",
    async (path, upstreamPath, results) => {
      const { upstream, proxy } = await setup('root');
      upstream.on(upstreamPath, (_req, res) => {
        res.writeHead(200, { 'content-type': 'application/json; charset=utf-8' });
        res.end(JSON.stringify(results));
      });
      const res = await fetch(`${proxy.url}${path}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ prompt: ['one', 'two'], n_predict: 4 }),
      });
      expect(await res.json()).toEqual(results);
      const [row] = await proxy.waitForRows(1);
      expect(row).toMatchObject({ prompt_tokens: 8, completion_tokens: 6, total_tokens: 14 });
    },
  );

  test("llama.cpp's /completion stream for a prompt array: every prompt's tokens, complete only when each has stopped", async () => {
    const { upstream, proxy } = await setup('root');
    const events = sse([
      { index: 0, content: 'A', stop: false },
      { index: 1, content: 'B', stop: false },
      { ...llamaResult(0, '', 3, 2) },
      { index: 1, content: 'b', stop: false },
      { ...llamaResult(1, '', 5, 4) },
    ]);
    let cut = false;
    upstream.on('/completion', async (_req, res) => {
      if (!cut) return drip(res, 'text/event-stream', events);
      // The same stream cut after the first prompt's end.
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      for (const e of events.slice(0, 4)) res.write(e);
      await new Promise((r) => setTimeout(r, 20));
      res.socket?.destroy();
    });
    const ask = () =>
      fetch(`${proxy.url}/completion`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ prompt: ['one', 'two'], stream: true }),
      }).then((r) => r.text().catch(() => ''));
    await ask();
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ stream: 1, prompt_tokens: 8, completion_tokens: 6, total_tokens: 14 });
    expect(JSON.parse(row.assembled!)).toMatchObject({ kind: 'llama.cpp', content: 'A', complete: true });

    cut = true;
    await ask();
    const rows = await proxy.waitForRows(2);
    const second = rows.find((r) => r.id !== row.id)!;
    expect(JSON.parse(second.assembled!)).toMatchObject({ kind: 'llama.cpp', complete: false });
  });

  const ollamaEnd = {
    done: true,
    done_reason: 'stop',
    prompt_eval_count: 26,
    eval_count: 3,
    eval_duration: 9,
  };
  test.each([
    [
      '/api/chat',
      ndjson([
        { model: 'llama3', message: { role: 'assistant', content: 'The' }, done: false },
        { model: 'llama3', message: { role: 'assistant', content: ' sky' }, done: false },
        { model: 'llama3', message: { role: 'assistant', content: '' }, ...ollamaEnd },
      ]),
    ],
    [
      '/api/generate',
      ndjson([
        { model: 'llama3', response: 'The', done: false },
        { model: 'llama3', response: ' sky', done: false },
        { model: 'llama3', response: '', ...ollamaEnd },
      ]),
    ],
  ])(
    "Ollama's native %s NDJSON stream: forwarded line by line, recorded as a stream",
    async (path, lines) => {
      const { upstream, proxy } = await setup('root');
      // The upstream sends the rest only once the client has the first line: buffering would hang here.
      let firstArrived = () => {};
      const arrived = new Promise<void>((r) => {
        firstArrived = r;
      });
      upstream.on(path, async (_req, res) => {
        res.writeHead(200, { 'content-type': 'application/x-ndjson' });
        res.write(lines[0]);
        await arrived;
        for (const l of lines.slice(1)) {
          res.write(l);
          await new Promise((r) => setTimeout(r, 5));
        }
        res.end();
      });
      const res = await fetch(`${proxy.url}${path}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({
          model: 'llama3',
          prompt: 'sky?',
          messages: [{ role: 'user', content: 'sky?' }],
        }),
      });
      const reader = res.body!.getReader();
      const first = await reader.read();
      expect(Buffer.from(first.value!).toString()).toBe(lines[0]);
      firstArrived();
      let rest = '';
      for (let r = await reader.read(); !r.done; r = await reader.read())
        rest += Buffer.from(r.value).toString();
      expect(rest).toBe(lines.slice(1).join(''));

      const [row] = await proxy.waitForRows(1);
      expect(row).toMatchObject({ stream: 1, prompt_tokens: 26, completion_tokens: 3, total_tokens: 29 });
      expect(row.response_body).toBe(lines.join(''));
      expect(JSON.parse(row.assembled!)).toMatchObject({
        kind: 'ollama',
        content: 'The sky',
        finish_reason: 'stop',
        complete: true,
      });
      const shown = await show(proxy, row.id);
      expect(shown).toContain('(stream)');
      expect(shown).toContain('── reassembled message\nThe sky\nfinish_reason: stop\n');
    },
  );

  test('a stream of a format the proxy does not know: complete when the upstream ended it, incomplete when cut', async () => {
    const { upstream, proxy } = await setup('root');
    const events = ['event: progress\ndata: {"pct":50}\n\n', 'event: progress\ndata: {"pct":100}\n\n'];
    upstream.on('/jobs/1/events', (_req, res) => drip(res, 'text/event-stream', events));
    upstream.on('/jobs/2/events', (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(events[0]);
      setTimeout(() => res.destroy(), 20);
    });
    const ended = await fetch(`${proxy.url}/jobs/1/events`);
    expect(await ended.text()).toBe(events.join(''));
    const cut = await fetch(`${proxy.url}/jobs/2/events`);
    await expect(cut.text()).rejects.toThrow();

    const rows = await proxy.waitForRows(2);
    const byPath = Object.fromEntries(rows.map((r) => [r.path, r]));
    const whole = byPath['/v1/jobs/1/events'];
    expect(whole).toMatchObject({ stream: 1, error: null });
    expect(JSON.parse(whole.assembled!)).toMatchObject({ kind: 'unknown', complete: true, events: 2 });
    expect(await show(proxy, whole.id)).not.toContain(INCOMPLETE);

    const partial = byPath['/v1/jobs/2/events'];
    expect(partial).toMatchObject({ stream: 1, error: 'upstream_reset' });
    expect(JSON.parse(partial.assembled!)).toMatchObject({ kind: 'unknown', complete: false });
    expect(await show(proxy, partial.id)).toContain(INCOMPLETE);
  });
});

describe('non-streamed answers', () => {
  test.each([
    [
      '/api/chat',
      {
        model: 'llama3',
        message: { role: 'assistant', content: 'Blue.' },
        done: true,
        prompt_eval_count: 26,
        eval_count: 3,
      },
      [26, 3],
    ],
    ['/completion', { content: 'Blue.', stop: true, tokens_evaluated: 5, tokens_predicted: 2 }, [5, 2]],
  ])(
    "%s answered whole (Ollama's, llama.cpp's counts, no usage object): its tokens are recorded",
    async (path, answer, [prompt, completion]) => {
      const { upstream, proxy } = await setup('root');
      upstream.on(path, (_req, res) => {
        res.writeHead(200, { 'content-type': 'application/json; charset=utf-8' });
        res.end(JSON.stringify(answer));
      });
      const res = await fetch(`${proxy.url}${path}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({
          model: 'llama3',
          stream: false,
          messages: [{ role: 'user', content: 'sky?' }],
        }),
      });
      expect(await res.json()).toEqual(answer);
      const [row] = await proxy.waitForRows(1);
      expect(row).toMatchObject({
        path: path === '/api/chat' ? path : `/v1${path}`,
        stream: 0,
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
      });
    },
  );

  test("Ollama's /api/embed (prompt_eval_count alone, no usage object): its prompt tokens are recorded", async () => {
    const { upstream, proxy } = await setup('root');
    const answer = {
      model: 'all-minilm',
      embeddings: [[0.010071029, -0.0017594862, 0.05007221]],
      total_duration: 14143917,
      load_duration: 1019500,
      prompt_eval_count: 7,
    };
    upstream.on('/api/embed', (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json; charset=utf-8' });
      res.end(JSON.stringify(answer));
    });
    const res = await fetch(`${proxy.url}/api/embed`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'all-minilm', input: 'Why is the sky blue?' }),
    });
    expect(await res.json()).toEqual(answer);
    const [row] = await proxy.waitForRows(1);
    // As an OpenAI embeddings `usage` (prompt and total only): no completion tokens.
    expect(row).toMatchObject({
      path: '/api/embed',
      stream: 0,
      prompt_tokens: 7,
      completion_tokens: null,
      total_tokens: 7,
    });
    expect(await show(proxy, row.id)).toContain('tokens     7 in, - out, 7 total');
  });

  test('a JSON answer whose content type is not in lower case (Application/JSON) has its usage recorded', async () => {
    const { upstream, proxy } = await setup();
    upstream.on('/v1/chat/completions', (_req, res) => {
      res.writeHead(200, { 'content-type': 'Application/JSON; charset=UTF-8' });
      res.end(JSON.stringify(chatCompletionBody('gpt-4o-mini')));
    });
    // fetch: the openai SDK itself reads only a lower-case application/json as JSON.
    const res = await fetch(`${proxy.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }] }),
    });
    expect((await res.json()).usage.total_tokens).toBe(19);
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ stream: 0, prompt_tokens: 12, completion_tokens: 7, total_tokens: 19 });
    expect(await show(proxy, row.id)).toContain('tokens     12 in, 7 out, 19 total');
  });

  test('a request sent as Application/JSON is read for its model: recorded, and an alias rewritten', async () => {
    const upstream = await createFakeUpstream();
    open.push(upstream);
    const proxy = await startTestProxy({
      OPENAI_BASE_URL: upstream.baseUrl,
      MODEL_MAPPINGS: '{"fast":"gpt-4o-mini"}',
    });
    open.push(proxy);
    const res = await fetch(`${proxy.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'Application/JSON; charset=UTF-8' },
      body: JSON.stringify({ model: 'fast', messages: [{ role: 'user', content: 'hi' }] }),
    });
    expect(res.status).toBe(200);
    expect(JSON.parse(upstream.requests.at(-1)!.body.toString()).model).toBe('gpt-4o-mini');
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ model: 'fast', upstream_model: 'gpt-4o-mini' });
  });
});
