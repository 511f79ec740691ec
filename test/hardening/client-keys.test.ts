import OpenAI from 'openai';
import { describe, expect, test } from 'vitest';
import { proxyWithUpstreamPerTest } from '../helpers/test-proxy.js';
import { rawHttp } from './raw-http.js';

const UPSTREAM_KEY = 'sk-upstream-hardening-key-7777';
const CLIENT_KEYS = ['pk-client-one-aaaa1111', 'pk-client-two-bbbb2222'];
const setup = proxyWithUpstreamPerTest({ PROXY_API_KEYS: CLIENT_KEYS.join(',') });

describe('PROXY_API_KEYS', () => {
  test.each([
    ['missing', {}, 'Missing API key'],
    ['wrong bearer', { authorization: 'Bearer pk-client-wrong-cccc3333' }, 'Incorrect API key'],
    ['not a bearer', { authorization: `Basic ${CLIENT_KEYS[0]}` }, 'Incorrect API key'],
    ['a prefix of a key', { authorization: 'Bearer pk-client-one' }, 'Incorrect API key'],
    ['the upstream key', { authorization: `Bearer ${UPSTREAM_KEY}` }, 'Incorrect API key'],
  ])('%s → 401 in OpenAI shape, recorded, nothing forwarded', async (_name, headers, message) => {
    const { upstream, proxy } = await setup({ OPENAI_API_KEY: UPSTREAM_KEY });
    const res = await fetch(`${proxy.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body: '{"model":"gpt-4o","messages":[]}',
    });
    expect(res.status).toBe(401);
    expect(await res.json()).toEqual({
      error: {
        message: expect.stringContaining(message),
        type: 'invalid_request_error',
        param: null,
        code: 'invalid_api_key',
      },
    });
    expect(upstream.requests).toHaveLength(0);
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ status: 401, error: 'unauthorized', path: '/v1/chat/completions' });
    // and the proxy's own routes are guarded too
    expect((await fetch(`${proxy.url}/v1/models`, { headers })).status).toBe(401);
  });

  test('a valid key passes (openai SDK, streaming too); the upstream gets its own key, never the client key', async () => {
    const { upstream, proxy } = await setup({ OPENAI_API_KEY: UPSTREAM_KEY });
    for (const key of CLIENT_KEYS) {
      const client = new OpenAI({ apiKey: key, baseURL: `${proxy.url}/v1`, maxRetries: 0 });
      const r = await client.chat.completions.create({ model: 'gpt-4o', messages: [] });
      expect(r.choices[0].message.content).toContain('fake upstream');
      const stream = await client.chat.completions.create({ model: 'gpt-4o', messages: [], stream: true });
      let n = 0;
      for await (const _ of stream) n++;
      expect(n).toBeGreaterThan(2);
    }
    expect(upstream.requests).toHaveLength(4);
    for (const r of upstream.requests) {
      expect(r.headers.authorization).toBe(`Bearer ${UPSTREAM_KEY}`);
    }
    const rows = await proxy.waitForRows(4);
    expect(rows.map((r) => r.status)).toEqual([200, 200, 200, 200]);
  });

  test('Azure-style api-key header is accepted and not forwarded when no upstream key is set', async () => {
    const { upstream, proxy } = await setup();
    const res = await fetch(`${proxy.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'api-key': CLIENT_KEYS[1] },
      body: '{"model":"gpt-4o","messages":[]}',
    });
    expect(res.status).toBe(200);
    expect(upstream.requests[0].headers['api-key']).toBeUndefined();
    expect(upstream.requests[0].headers.authorization).toBeUndefined();
  });

  test('a client key repeated in another header (x-api-key) is not forwarded either', async () => {
    const { upstream, proxy } = await setup({ OPENAI_API_KEY: UPSTREAM_KEY });
    const res = await fetch(`${proxy.url}/v1/chat/completions`, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        authorization: `Bearer ${CLIENT_KEYS[0]}`,
        'x-api-key': CLIENT_KEYS[0],
      },
      body: '{"model":"gpt-4o","messages":[]}',
    });
    expect(res.status).toBe(200);
    const sent = upstream.requests[0].headers;
    expect(sent['x-api-key']).toBeUndefined();
    expect(sent.authorization).toBe(`Bearer ${UPSTREAM_KEY}`);
    for (const key of CLIENT_KEYS) expect(JSON.stringify(sent)).not.toContain(key);
  });

  test('a proxy key in a repeated header (which Node joins with a comma), a cookie or after another scheme is not forwarded either', async () => {
    const { upstream, proxy } = await setup({ ADMIN_API_KEY: 'adm-hardening-key-9999' });
    const body = '{"model":"gpt-4o","messages":[]}';
    const reply = await rawHttp(
      proxy.url,
      'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
        `Authorization: Bearer ${CLIENT_KEYS[0]}\r\n` +
        `X-Api-Key: ${CLIENT_KEYS[0]}\r\nX-Api-Key: ${CLIENT_KEYS[0]}\r\n` +
        'X-Custom: adm-hardening-key-9999\r\nX-Custom: x\r\n' +
        `X-Other: x\r\nX-Other: Bearer ${CLIENT_KEYS[1]}\r\n` +
        'X-Plain: a\r\nX-Plain: b\r\n' +
        // Inside a longer value: a cookie, another scheme, a trailing separator.
        `Cookie: theme=dark; s=${CLIENT_KEYS[1]}\r\nX-Auth: Token ${CLIENT_KEYS[0]}\r\n` +
        `X-Key-Semi: ${CLIENT_KEYS[0]};\r\n` +
        `Content-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`,
    );
    expect(reply.statuses).toEqual([200]);
    const sent = upstream.requests[0].headers;
    expect([
      sent['x-api-key'],
      sent['x-custom'],
      sent['x-other'],
      sent.authorization,
      sent.cookie,
      sent['x-auth'],
      sent['x-key-semi'],
    ]).toEqual([undefined, undefined, undefined, undefined, undefined, undefined, undefined]);
    for (const key of [...CLIENT_KEYS, 'adm-hardening-key-9999'])
      expect(JSON.stringify(sent)).not.toContain(key);
    // A repeated header without a key goes as Node joined it.
    expect(sent['x-plain']).toBe('a, b');
  });

  test('/health stays open; /admin keeps its own key', async () => {
    const { proxy } = await setup({ ADMIN_API_KEY: 'adm-hardening-key-9999' });
    expect((await fetch(`${proxy.url}/health`)).status).toBe(200);
    const admin = await fetch(`${proxy.url}/admin/models`, {
      headers: { authorization: 'Bearer adm-hardening-key-9999' },
    });
    expect(admin.status).toBe(200);
    const withClientKey = await fetch(`${proxy.url}/admin/models`, {
      headers: { authorization: `Bearer ${CLIENT_KEYS[0]}` },
    });
    expect(withClientKey.status).toBe(401);
  });
});
