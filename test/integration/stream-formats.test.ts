import type { ServerResponse } from 'node:http';
import OpenAI from 'openai';
import { afterEach, describe, expect, test } from 'vitest';
import { main } from '../../src/cli.js';
import { createFakeUpstream, type FakeUpstream } from '../helpers/fake-upstream.js';
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
});
