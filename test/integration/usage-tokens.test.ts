import OpenAI from 'openai';
import { describe, expect, test } from 'vitest';
import { proxyWithUpstreamPerTest, type TestProxy } from '../helpers/test-proxy.js';

const setup = proxyWithUpstreamPerTest();

const client = (proxy: TestProxy) =>
  new OpenAI({ apiKey: 'sk-client-key-000000000000', baseURL: `${proxy.url}/v1`, maxRetries: 0 });

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
