import { writeFileSync } from 'node:fs';
import { createServer, request } from 'node:http';
import { type AddressInfo, connect, createServer as createNetServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { AzureOpenAI } from 'openai';
import { buildRealtimeURL, getAzureRealtimeConnection } from 'openai/realtime/internal-base';
import { WebSocket as UndiciWebSocket } from 'undici';
import { afterEach, describe, expect, test } from 'vitest';
import { main } from '../../src/cli.js';
import type { ExchangeRecord } from '../../src/storage/exchange-record.js';
import { createFakeUpstream, sleep } from '../helpers/fake-upstream.js';
import { deltaLeaks } from '../helpers/secret-scan.js';
import { createTempDir } from '../helpers/temp-dir.js';
import {
  createTestIo,
  proxyWithUpstreamPerTest,
  startTestProxy,
  type TestProxy,
} from '../helpers/test-proxy.js';
import { until } from '../helpers/until.js';
import {
  encodeFrame,
  encodeMessage,
  MessageDeflater,
  OPCODE,
  openWebSocket,
  type ScriptedWebSocketUpstream,
  serveEchoWebSocket,
  startScriptedWebSocketUpstream,
  type TestWebSocket,
  writeByteByByte,
} from '../helpers/websocket.js';

const UPSTREAM_KEY = 'sk-upstream-realtime-key-4242';
const CLIENT_KEY = 'pk-client-realtime-key-5151';
const REALTIME = '/v1/realtime?model=gpt-4o-realtime-preview';
const BETA = { 'openai-beta': 'realtime=v1' };

const setup = proxyWithUpstreamPerTest();

describe('WebSocket pass-through (Realtime API)', () => {
  test('frames go both ways unchanged; the upstream gets its key, never the client key; one row per session', async () => {
    const { upstream, proxy } = await setup({ OPENAI_API_KEY: UPSTREAM_KEY, PROXY_API_KEYS: CLIENT_KEY });
    const answer = await openWebSocket(`${proxy.url}${REALTIME}`, {
      authorization: `Bearer ${CLIENT_KEY}`,
      ...BETA,
    });
    expect(answer.status).toBe(101);
    const { ws } = answer;
    if (!ws) throw new Error('no WebSocket');
    expect(ws.headers['x-request-id']).toBe('req_fake_ws');
    const event = JSON.stringify({ type: 'session.update', session: { instructions: 'be brief' } });
    ws.send(event);
    expect(await ws.next()).toEqual({ opcode: OPCODE.text, payload: Buffer.from(event) });
    const big = 'x'.repeat(70_000); // a 64-bit length frame, over several TCP reads
    ws.send(big);
    expect((await ws.next()).payload.toString()).toBe(big);
    await ws.close();

    expect(upstream.requests).toHaveLength(1);
    const sent = upstream.requests[0];
    expect(sent.url).toBe('/v1/realtime?model=gpt-4o-realtime-preview');
    expect(sent.headers.upgrade).toBe('websocket');
    expect(sent.headers['openai-beta']).toBe('realtime=v1');
    expect(sent.headers.authorization).toBe(`Bearer ${UPSTREAM_KEY}`);
    expect(JSON.stringify(sent.headers)).not.toContain(CLIENT_KEY);

    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({
      method: 'GET',
      path: '/v1/realtime',
      query: 'model=gpt-4o-realtime-preview',
      status: 101,
      model: 'gpt-4o-realtime-preview',
      upstream_model: 'gpt-4o-realtime-preview',
      upstream: 'default',
      error: null,
    });
    expect(JSON.parse(row.request_headers as string)).toMatchObject({
      authorization: '[redacted]',
      upgrade: 'websocket',
    });
    // Bytes on the wire each way, frame headers and masks included.
    expect(row.request_bytes).toBeGreaterThan(event.length + big.length);
    expect(row.response_bytes).toBeGreaterThan(event.length + big.length);
    // Each direction's messages, one a line (the echo server sends them back).
    expect(row.request_body).toBe(`${event}\n${big}\n`);
    expect(row.response_body).toBe(`${event}\n${big}\n`);
  });

  test('a key offered as a subprotocol (browser clients) goes upstream as it was, and is not recorded', async () => {
    const { upstream, proxy } = await setup();
    const protocols = 'realtime, openai-insecure-api-key.sk-browser-own-key-8080, openai-beta.realtime-v1';
    const answer = await openWebSocket(`${proxy.url}${REALTIME}`, { 'sec-websocket-protocol': protocols });
    expect(answer.status).toBe(101);
    await answer.ws?.close();
    expect(upstream.requests[0].headers['sec-websocket-protocol']).toBe(protocols);
    const [row] = await proxy.waitForRows(1);
    expect(JSON.parse(row.request_headers as string)['sec-websocket-protocol']).toBe(
      'realtime, openai-insecure-api-key.[redacted], openai-beta.realtime-v1',
    );
  });

  test('an Azure-form handshake (/openai/realtime?api-key=…) is recorded as sent, its query key redacted', async () => {
    const { upstream, proxy } = await setup();
    const answer = await openWebSocket(
      `${proxy.url}/openai/realtime?api-version=2024-10-01-preview&deployment=rt&api-key=az-browser-key-7070`,
      {},
    );
    expect(answer.status).toBe(101);
    await answer.ws?.close();
    expect(upstream.requests[0].url).toContain('api-key=az-browser-key-7070');
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({
      path: '/openai/realtime',
      query: 'api-version=2024-10-01-preview&deployment=rt&api-key=[redacted]',
      status: 101,
    });
    expect(JSON.stringify(row)).not.toContain('az-browser-key-7070');
  });

  test('a subprotocol key on a request that is not upgraded (no Connection: upgrade) is not recorded either', async () => {
    const { upstream, proxy } = await setup();
    const protocols = 'realtime, openai-insecure-api-key.sk-not-upgraded-9191';
    const status = await new Promise<number>((resolve, reject) => {
      const req = request(`${proxy.url}${REALTIME}`, {
        headers: { upgrade: 'websocket', 'sec-websocket-protocol': protocols },
      });
      req.on('response', (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      });
      req.on('error', reject);
      req.end();
    });
    expect(status).toBe(404); // the fake upstream's answer to a plain GET there
    expect(upstream.requests[0].headers['sec-websocket-protocol']).toBe(protocols);
    const [row] = await proxy.waitForRows(1);
    expect(JSON.parse(row.request_headers as string)['sec-websocket-protocol']).toBe(
      'realtime, openai-insecure-api-key.[redacted]',
    );
  });

  test("PROXY_API_KEYS: a client key offered as a subprotocol (the openai SDK's way) is accepted and never forwarded", async () => {
    const { upstream, proxy } = await setup({ OPENAI_API_KEY: UPSTREAM_KEY, PROXY_API_KEYS: CLIENT_KEY });
    const offer = (key: string) => ({
      'sec-websocket-protocol': `realtime, openai-insecure-api-key.${key}, openai-beta.realtime-v1`,
    });
    const answer = await openWebSocket(`${proxy.url}${REALTIME}`, offer(CLIENT_KEY));
    expect(answer.status).toBe(101);
    await answer.ws?.close();
    const sent = upstream.requests[0].headers;
    expect(sent.authorization).toBe(`Bearer ${UPSTREAM_KEY}`);
    expect(sent['sec-websocket-protocol']).toBe('realtime, openai-beta.realtime-v1');
    expect(JSON.stringify(sent)).not.toContain(CLIENT_KEY);
    // a wrong one is refused like a wrong Bearer key
    const wrong = await openWebSocket(`${proxy.url}${REALTIME}`, offer('pk-wrong-key-0000'));
    expect(wrong.status).toBe(401);
    if (wrong.ws === null) expect(JSON.parse(wrong.body).error.message).toContain('Incorrect API key');
    expect(upstream.requests).toHaveLength(1);
    const rows = await proxy.waitForRows(2);
    expect(rows.map((r) => [r.status, r.error])).toEqual([
      [101, null],
      [401, 'unauthorized'],
    ]);
  });

  test('without an upstream key, a client key repeated as a subprotocol is still not forwarded', async () => {
    const { upstream, proxy } = await setup({ PROXY_API_KEYS: CLIENT_KEY });
    const answer = await openWebSocket(`${proxy.url}${REALTIME}`, {
      authorization: `Bearer ${CLIENT_KEY}`,
      'sec-websocket-protocol': `realtime, openai-insecure-api-key.${CLIENT_KEY}`,
    });
    expect(answer.status).toBe(101);
    await answer.ws?.close();
    const sent = upstream.requests[0].headers;
    expect(sent.authorization).toBeUndefined();
    expect(sent['sec-websocket-protocol']).toBe('realtime');
  });

  test('PROXY_API_KEYS: a wrong key gets 401, recorded, and nothing reaches the upstream', async () => {
    const { upstream, proxy } = await setup({ PROXY_API_KEYS: CLIENT_KEY });
    const answer = await openWebSocket(`${proxy.url}${REALTIME}`, {
      authorization: 'Bearer pk-wrong',
      ...BETA,
    });
    expect(answer.status).toBe(401);
    expect(answer.ws).toBeNull();
    if (answer.ws === null) expect(JSON.parse(answer.body).error.code).toBe('invalid_api_key');
    expect(upstream.requests).toHaveLength(0);
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ status: 401, error: 'unauthorized', path: '/v1/realtime' });
  });

  test('upstream down → 502 upstream_unreachable, recorded', async () => {
    const dead = await createFakeUpstream();
    await dead.close();
    const { proxy } = await setup({ OPENAI_BASE_URL: dead.baseUrl });
    const answer = await openWebSocket(`${proxy.url}${REALTIME}`, BETA);
    expect(answer.status).toBe(502);
    if (answer.ws === null) expect(JSON.parse(answer.body).error.code).toBe('upstream_unreachable');
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({
      status: 502,
      error: 'upstream_unreachable',
      path: '/v1/realtime',
      model: 'gpt-4o-realtime-preview',
    });
  });
});

describe('WebSocket handshakes are routed like requests', () => {
  test('an alias in the model query parameter goes upstream as the actual model; both are recorded', async () => {
    const { upstream, proxy } = await setup({ MODEL_MAPPINGS: '{"voice":"gpt-4o-realtime-preview"}' });
    const answer = await openWebSocket(`${proxy.url}/v1/realtime?model=voice&x=1`, BETA);
    expect(answer.status).toBe(101);
    await answer.ws?.close();
    expect(upstream.requests[0].url).toBe('/v1/realtime?model=gpt-4o-realtime-preview&x=1');
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ status: 101, model: 'voice', upstream_model: 'gpt-4o-realtime-preview' });
  });

  test('a model on a named upstream: its base path, key and headers, as for HTTP', async () => {
    const dir = createTempDir();
    try {
      const other = await createFakeUpstream();
      const config = join(dir.path, 'oai-proxy.config.json');
      writeFileSync(
        config,
        JSON.stringify({
          upstreams: {
            local: {
              baseUrl: `${other.origin}/prefix/v1`,
              apiKey: 'sk-local-upstream-key-6161',
              headers: { 'X-Team': 'research' },
            },
          },
          models: [{ name: 'rt-local', upstream: 'local' }],
        }),
      );
      const { upstream, proxy } = await setup({ OAI_PROXY_CONFIG: config, OPENAI_API_KEY: UPSTREAM_KEY });
      try {
        const answer = await openWebSocket(`${proxy.url}/v1/realtime?model=rt-local`, BETA);
        expect(answer.status).toBe(101);
        await answer.ws?.close();
        expect(upstream.requests).toHaveLength(0);
        expect(other.requests[0].url).toBe('/prefix/v1/realtime?model=rt-local');
        expect(other.requests[0].headers).toMatchObject({
          authorization: 'Bearer sk-local-upstream-key-6161',
          'x-team': 'research',
        });
        const [row] = await proxy.waitForRows(1);
        expect(row).toMatchObject({ status: 101, upstream: 'local', model: 'rt-local' });
      } finally {
        await other.close();
      }
    } finally {
      dir.cleanup();
    }
  });

  test("a model on an upstream whose key is in its headers: a client's key, as a header or a subprotocol, is not sent beside it", async () => {
    const dir = createTempDir();
    try {
      const az = await createFakeUpstream();
      const config = join(dir.path, 'oai-proxy.config.json');
      writeFileSync(
        config,
        JSON.stringify({
          upstreams: {
            az: {
              type: 'azure',
              baseUrl: az.origin,
              headers: { 'api-key': 'azure-header-key-0123456789abcdef' },
            },
          },
          models: [{ name: 'rt-eu', upstream: 'az', deployment: 'rt-prod' }],
        }),
      );
      const { proxy } = await setup({ OAI_PROXY_CONFIG: config });
      try {
        const answer = await openWebSocket(`${proxy.url}/v1/realtime?model=rt-eu`, {
          authorization: `Bearer ${CLIENT_KEY}`,
          'sec-websocket-protocol': `realtime, openai-insecure-api-key.${CLIENT_KEY}`,
        });
        expect(answer.status).toBe(101);
        await answer.ws?.close();
        const [got] = az.requests;
        expect(got.url).toBe('/openai/realtime?deployment=rt-prod&api-version=2024-10-21');
        expect(got.headers['api-key']).toBe('azure-header-key-0123456789abcdef');
        expect(got.headers.authorization).toBeUndefined();
        expect(got.headers['sec-websocket-protocol']).toBe('realtime');
      } finally {
        await az.close();
      }
    } finally {
      dir.cleanup();
    }
  });

  test('VALIDATE_MODELS=true: an unknown model is refused with 404 model_not_found, nothing forwarded', async () => {
    const { upstream, proxy } = await setup({ VALIDATE_MODELS: 'true' });
    const answer = await openWebSocket(`${proxy.url}/v1/realtime?model=no-such-model`, BETA);
    expect(answer.status).toBe(404);
    if (answer.ws === null) expect(JSON.parse(answer.body).error.code).toBe('model_not_found');
    expect(upstream.requests).toHaveLength(0);
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ status: 404, error: 'model_not_found', model: 'no-such-model' });
  });

  test.each([
    ['a percent-encoded name', '/v1/realtime?mod%65l=no-such-model'],
    ['an encoded name after another parameter', '/v1/realtime?x=1&%6dodel=no-such-model'],
    ['an encoded value', '/v1/realtime?model=no%2Dsuch%2Dmodel'],
  ])('VALIDATE_MODELS=true: a model under %s is validated too: 404, nothing forwarded', async (_, target) => {
    const { upstream, proxy } = await setup({ VALIDATE_MODELS: 'true' });
    const answer = await openWebSocket(`${proxy.url}${target}`, BETA);
    expect(answer.status).toBe(404);
    if (answer.ws === null) expect(JSON.parse(answer.body).error.code).toBe('model_not_found');
    expect(upstream.requests).toHaveLength(0);
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ status: 404, error: 'model_not_found', model: 'no-such-model' });
  });

  test.each([
    ['model=gpt-4o-realtime-preview&model=no-such-model'],
    ['model=gpt-4o-realtime-preview&mod%65l=no-such-model'],
  ])(
    'a model given twice (%s) is refused with 400 ambiguous_model, recorded, nothing forwarded',
    async (query) => {
      const { upstream, proxy } = await setup({ VALIDATE_MODELS: 'true' });
      const answer = await openWebSocket(`${proxy.url}/v1/realtime?${query}`, BETA);
      expect(answer.status).toBe(400);
      if (answer.ws === null)
        expect(JSON.parse(answer.body).error).toMatchObject({
          type: 'invalid_request_error',
          code: 'ambiguous_model',
          param: 'model',
        });
      expect(upstream.requests).toHaveLength(0);
      const [row] = await proxy.waitForRows(1);
      expect(row).toMatchObject({ status: 400, error: 'invalid_request', path: '/v1/realtime' });
      expect(row.error_message).toContain('`model` query parameter is given 2 times');
    },
  );

  test('an alias under an encoded name goes upstream as the actual model; the rest of the query as sent', async () => {
    const { upstream, proxy } = await setup({ MODEL_MAPPINGS: '{"voice":"gpt-4o-realtime-preview"}' });
    const answer = await openWebSocket(`${proxy.url}/v1/realtime?x=a%20b+c&mod%65l=voice&y=%7e`, BETA);
    expect(answer.status).toBe(101);
    await answer.ws?.close();
    expect(upstream.requests[0].url).toBe('/v1/realtime?x=a%20b+c&model=gpt-4o-realtime-preview&y=%7e');
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ status: 101, model: 'voice', upstream_model: 'gpt-4o-realtime-preview' });
  });

  test("the upstream's refusal (no 101) reaches the client as it was sent, and is recorded", async () => {
    const { upstream, proxy } = await setup();
    upstream.websocketRefusal = 403;
    const answer = await openWebSocket(`${proxy.url}${REALTIME}`, BETA);
    expect(answer.status).toBe(403);
    if (answer.ws !== null) throw new Error('unexpected 101');
    expect(answer.headers['x-request-id']).toBe('req_fake_ws_refused');
    expect(JSON.parse(answer.body).error.message).toBe('WebSocket refused by the fake upstream');
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ status: 403, error: null, path: '/v1/realtime' });
    expect(row.response_body).toContain('WebSocket refused by the fake upstream');
  });

  test('an upgrade to anything else (curl --http2 offering h2c) is still proxied as a plain HTTP/1.1 request', async () => {
    const { upstream, proxy } = await setup();
    const { port } = new URL(proxy.url);
    const body = '{"model":"gpt-4o","messages":[]}';
    const request = (extra: string) =>
      `POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n${extra}\r\n${body}`;
    const socket = connect(Number(port), '127.0.0.1');
    let text = '';
    socket.on('data', (c) => {
      text += c.toString();
    });
    socket.write(
      request(
        'Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n',
      ),
    );
    await until('the first answer', () => text.includes('chatcmpl-fake123'));
    // the connection stays usable for the next request
    socket.write(request(''));
    await until('the second answer', () => text.split('chatcmpl-fake123').length === 3);
    socket.destroy();
    expect(text.startsWith('HTTP/1.1 200 OK\r\n')).toBe(true);
    expect(text).not.toContain('101');
    expect(upstream.requests.map((r) => r.headers.upgrade)).toEqual([undefined, undefined]);
    expect(JSON.parse(upstream.requests[0].body.toString())).toEqual(JSON.parse(body));
    const rows = await proxy.waitForRows(2);
    expect(rows.map((r) => [r.method, r.path, r.status])).toEqual([
      ['POST', '/v1/chat/completions', 200],
      ['POST', '/v1/chat/completions', 200],
    ]);
  });
});

describe("Azure's Realtime API (`/openai/realtime?api-version=…&deployment=…`)", () => {
  const AZURE_KEY = 'azure-upstream-key-0123456789abcdef';
  const CLIENT_AZURE_KEY = 'client-azure-key-0123456789abcdef';
  const CLIENT_VERSION = '2024-10-01-preview';
  const open: { close(): Promise<void> | void }[] = [];
  afterEach(async () => {
    for (const x of open.splice(0).reverse()) await x.close();
  });

  /**
   * A proxy in front of two fake upstreams: the default one (OpenAI-type unless `env` says otherwise) and
   * `az`, a named upstream whose base URL `config.upstreams.az` gets the fake's origin prepended; the
   * registry: `gpt-rt-eu` (deployment `rt-prod`) on `az` when `onAz`, else on the default upstream, and
   * the alias `voice` for it; VALIDATE_MODELS on.
   */
  async function azureSetup(o: {
    env?: (origin: string) => Record<string, string>;
    az?: { basePath: string; apiVersion?: string };
  }) {
    const upstream = await createFakeUpstream();
    open.push(upstream);
    const az = await createFakeUpstream();
    open.push(az);
    const dir = createTempDir();
    open.push({ close: () => dir.cleanup() });
    const config = join(dir.path, 'oai-proxy.config.json');
    writeFileSync(
      config,
      JSON.stringify({
        upstreams: o.az
          ? {
              az: {
                type: 'azure',
                baseUrl: `${az.origin}${o.az.basePath}`,
                apiKey: AZURE_KEY,
                ...(o.az.apiVersion ? { apiVersion: o.az.apiVersion } : {}),
              },
            }
          : {},
        models: [
          { name: 'gpt-rt-eu', deployment: 'rt-prod', ...(o.az ? { upstream: 'az' } : {}) },
          { name: 'rt-plain' },
        ],
        modelMappings: { voice: 'gpt-rt-eu' },
      }),
    );
    const proxy = await startTestProxy({
      OPENAI_BASE_URL: upstream.baseUrl,
      OAI_PROXY_CONFIG: config,
      VALIDATE_MODELS: 'true',
      ...o.env?.(upstream.origin),
    });
    open.push(proxy);
    return { upstream, az, proxy };
  }

  /**
   * The URL the openai SDK's `OpenAIRealtimeWS.azure(new AzureOpenAI({endpoint, deployment}))` opens, with
   * the proxy's plain http:// for its wss:// (openWebSocket takes the http form of a ws:// URL).
   */
  function sdkAzureUrl(proxy: TestProxy, deployment: string): string {
    const client = new AzureOpenAI({
      endpoint: proxy.url,
      apiKey: CLIENT_AZURE_KEY,
      apiVersion: CLIENT_VERSION,
      deployment,
    });
    const url = buildRealtimeURL(client, getAzureRealtimeConnection(client, {}));
    url.protocol = 'http:';
    return url.toString();
  }
  /** The headers OpenAIRealtimeWS.azure sends with an API key. */
  const SDK_AZURE_HEADERS = { 'api-key': CLIENT_AZURE_KEY };

  /** Open, exchange one message with the echo upstream, close; what the client got back. */
  async function echoOnce(url: string, headers: Record<string, string>): Promise<string> {
    const answer = await openWebSocket(url, headers);
    if (answer.ws === null) throw new Error(`no 101: ${answer.status} ${answer.body}`);
    const event = JSON.stringify({ type: 'session.update', session: { voice: 'alloy' } });
    answer.ws.send(event);
    const back = (await answer.ws.next()).payload.toString();
    await answer.ws.close();
    return back;
  }

  test("the SDK's Azure form against a classic Azure upstream: `deployment` is the model, aliased to the model's deployment", async () => {
    const { upstream, proxy } = await azureSetup({
      env: (origin) => ({ OPENAI_BASE_URL: origin, OPENAI_API_TYPE: 'azure', OPENAI_API_KEY: AZURE_KEY }),
    });
    const url = sdkAzureUrl(proxy, 'voice');
    expect(url).toBe(`${proxy.url}/openai/realtime?api-version=${CLIENT_VERSION}&deployment=voice`);
    expect(await echoOnce(url, SDK_AZURE_HEADERS)).toContain('"session.update"');
    expect(await echoOnce(sdkAzureUrl(proxy, 'rt-plain'), SDK_AZURE_HEADERS)).toContain('"session.update"');

    expect(upstream.requests.map((r) => r.url)).toEqual([
      `/openai/realtime?api-version=${CLIENT_VERSION}&deployment=rt-prod`,
      `/openai/realtime?api-version=${CLIENT_VERSION}&deployment=rt-plain`,
    ]);
    expect(upstream.requests[0].headers['api-key']).toBe(AZURE_KEY);
    expect(upstream.requests[0].headers.authorization).toBeUndefined();
    const rows = await proxy.waitForRows(2);
    expect(rows.map((r) => [r.path, r.query, r.status, r.model, r.upstream_model, r.upstream])).toEqual([
      [
        '/openai/realtime',
        `api-version=${CLIENT_VERSION}&deployment=voice`,
        101,
        'voice',
        'gpt-rt-eu',
        'default',
      ],
      [
        '/openai/realtime',
        `api-version=${CLIENT_VERSION}&deployment=rt-plain`,
        101,
        'rt-plain',
        'rt-plain',
        'default',
      ],
    ]);
    expect(JSON.stringify(rows)).not.toContain(CLIENT_AZURE_KEY);
  });

  test('VALIDATE_MODELS=true: an unknown deployment is refused with 404 model_not_found, nothing forwarded', async () => {
    const { upstream, proxy } = await azureSetup({
      env: (origin) => ({ OPENAI_BASE_URL: origin, OPENAI_API_TYPE: 'azure' }),
    });
    const answer = await openWebSocket(sdkAzureUrl(proxy, 'no-such-deployment'), SDK_AZURE_HEADERS);
    expect(answer.status).toBe(404);
    if (answer.ws === null)
      expect(JSON.parse(answer.body).error).toMatchObject({ code: 'model_not_found', param: 'model' });
    expect(upstream.requests).toHaveLength(0);
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ status: 404, error: 'model_not_found', model: 'no-such-deployment' });
  });

  test.each([
    [
      'deployment=rt-plain&deployment=gpt-rt-eu',
      'deployment',
      '`deployment` query parameter is given 2 times',
    ],
    [
      'deployment=rt-plain&deploym%65nt=gpt-rt-eu',
      'deployment',
      '`deployment` query parameter is given 2 times',
    ],
    [
      'model=rt-plain&deployment=gpt-rt-eu',
      'model',
      '`model` and `deployment` query parameters name different models',
    ],
  ])('%s is refused with 400 ambiguous_model, recorded, nothing forwarded', async (query, param, message) => {
    const { upstream, proxy } = await azureSetup({
      env: (origin) => ({ OPENAI_BASE_URL: origin, OPENAI_API_TYPE: 'azure' }),
    });
    const answer = await openWebSocket(
      `${proxy.url}/openai/realtime?api-version=${CLIENT_VERSION}&${query}`,
      SDK_AZURE_HEADERS,
    );
    expect(answer.status).toBe(400);
    if (answer.ws === null)
      expect(JSON.parse(answer.body).error).toMatchObject({
        type: 'invalid_request_error',
        code: 'ambiguous_model',
        param,
      });
    expect(upstream.requests).toHaveLength(0);
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ status: 400, error: 'invalid_request', path: '/openai/realtime' });
    expect(row.error_message).toContain(message);
  });

  test('`model` and `deployment` naming the same model: one model, routed', async () => {
    const { upstream, proxy } = await azureSetup({
      env: (origin) => ({ OPENAI_BASE_URL: origin, OPENAI_API_TYPE: 'azure' }),
    });
    await echoOnce(
      `${proxy.url}/openai/realtime?model=voice&api-version=${CLIENT_VERSION}&deployment=voice`,
      {},
    );
    // Azure reads the deployment: one parameter naming it.
    expect(upstream.requests[0].url).toBe(
      `/openai/realtime?deployment=rt-prod&api-version=${CLIENT_VERSION}`,
    );
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ status: 101, model: 'voice', upstream_model: 'gpt-rt-eu' });
  });

  test("an OpenAI-style client whose model is on a classic Azure upstream: Azure's path, deployment and api-version, its key", async () => {
    const { upstream, az, proxy } = await azureSetup({
      az: { basePath: '', apiVersion: '2025-04-01-preview' },
    });
    const back = await echoOnce(`${proxy.url}/v1/realtime?model=voice`, {
      authorization: 'Bearer sk-client-own-key-3131',
      ...BETA,
    });
    expect(back).toContain('"session.update"');
    // The Azure form against the proxy goes to the model's upstream too, with the client's api-version.
    await echoOnce(sdkAzureUrl(proxy, 'gpt-rt-eu'), SDK_AZURE_HEADERS);

    expect(upstream.requests).toHaveLength(0);
    expect(az.requests.map((r) => r.url)).toEqual([
      '/openai/realtime?deployment=rt-prod&api-version=2025-04-01-preview',
      `/openai/realtime?api-version=${CLIENT_VERSION}&deployment=rt-prod`,
    ]);
    for (const sent of az.requests) {
      expect(sent.headers['api-key']).toBe(AZURE_KEY);
      expect(sent.headers.authorization).toBeUndefined();
    }
    expect(az.requests[0].headers['openai-beta']).toBe('realtime=v1');
    const rows = await proxy.waitForRows(2);
    expect(rows.map((r) => [r.path, r.status, r.model, r.upstream_model, r.upstream])).toEqual([
      ['/v1/realtime', 101, 'voice', 'gpt-rt-eu', 'az'],
      ['/openai/realtime', 101, 'gpt-rt-eu', 'gpt-rt-eu', 'az'],
    ]);
  });

  test('an Azure …/openai/v1 base: /openai/v1/realtime?model=<deployment>, no api-version unless configured', async () => {
    const { az, proxy } = await azureSetup({ az: { basePath: '/openai/v1' } });
    await echoOnce(`${proxy.url}/v1/realtime?model=voice`, BETA);
    // Azure's GA form against the proxy (the OpenAI SDK given …/openai/v1 as its baseURL)
    await echoOnce(`${proxy.url}/openai/v1/realtime?model=voice`, SDK_AZURE_HEADERS);
    expect(az.requests.map((r) => r.url)).toEqual([
      '/openai/v1/realtime?model=rt-prod',
      '/openai/v1/realtime?model=rt-prod',
    ]);
    expect(az.requests[0].headers['api-key']).toBe(AZURE_KEY);
    const rows = await proxy.waitForRows(2);
    expect(rows.map((r) => [r.path, r.query, r.model, r.upstream_model, r.upstream])).toEqual([
      ['/v1/realtime', 'model=voice', 'voice', 'gpt-rt-eu', 'az'],
      ['/openai/v1/realtime', 'model=voice', 'voice', 'gpt-rt-eu', 'az'],
    ]);
  });

  test('an OpenAI-type upstream: the query as sent but for the alias, in the parameter the client used', async () => {
    const { upstream, proxy } = await azureSetup({});
    await echoOnce(`${proxy.url}/v1/realtime?model=voice`, BETA);
    await echoOnce(`${proxy.url}/v1/realtime?model=rt-plain`, BETA);
    await echoOnce(sdkAzureUrl(proxy, 'voice'), SDK_AZURE_HEADERS);
    expect(upstream.requests.map((r) => r.url)).toEqual([
      '/v1/realtime?model=gpt-rt-eu',
      '/v1/realtime?model=rt-plain',
      `/v1/openai/realtime?api-version=${CLIENT_VERSION}&deployment=gpt-rt-eu`,
    ]);
    expect(upstream.requests[2].headers['api-key']).toBe(CLIENT_AZURE_KEY);
    const rows = await proxy.waitForRows(3);
    expect(rows.map((r) => [r.model, r.upstream_model])).toEqual([
      ['voice', 'gpt-rt-eu'],
      ['rt-plain', 'rt-plain'],
      ['voice', 'gpt-rt-eu'],
    ]);
  });
});

describe('WebSocket handshakes on a busy connection', () => {
  test('a handshake pipelined behind a slow answer waits for it, then opens', async () => {
    const { upstream, proxy } = await setup();
    upstream.on('/v1/slow', async (_req, res) => {
      await sleep(300);
      res.end('slow done');
    });
    const socket = connect(Number(new URL(proxy.url).port), '127.0.0.1');
    let text = '';
    socket.on('data', (c: Buffer) => {
      text += c.toString('latin1');
    });
    socket.write(
      'GET /v1/slow HTTP/1.1\r\nHost: x\r\n\r\n' +
        `GET ${REALTIME} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
        'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
    );
    await until('the 101', () => /HTTP\/1\.1 101 [\s\S]*\r\n\r\n/.test(text));
    expect(text.indexOf('slow done')).toBeGreaterThan(-1);
    expect(text.indexOf('slow done')).toBeLessThan(text.indexOf('HTTP/1.1 101'));
    socket.write(encodeFrame(OPCODE.text, 'after the slow one', true));
    await until('the echo', () => text.includes('after the slow one'));
    socket.destroy();
    const rows = await proxy.waitForRows(2);
    expect(rows.map((r) => [r.path, r.status])).toEqual([
      ['/v1/slow', 200],
      ['/v1/realtime', 101],
    ]);
  });
  test('a frame the client sends while the upstream is still answering the handshake is relayed after the 101', async () => {
    // An upstream slow to answer the handshake, then an echo server.
    const slow = createServer();
    slow.on('upgrade', (req, socket, head) => {
      setTimeout(() => serveEchoWebSocket(req, socket, head), 300);
    });
    await new Promise<void>((r) => slow.listen(0, '127.0.0.1', () => r()));
    const { port } = slow.address() as AddressInfo;
    try {
      const { proxy } = await setup({ OPENAI_BASE_URL: `http://127.0.0.1:${port}/v1` });
      const socket = connect(Number(new URL(proxy.url).port), '127.0.0.1');
      let text = '';
      socket.on('data', (c: Buffer) => {
        text += c.toString('latin1');
      });
      socket.write(
        `GET ${REALTIME} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
          'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
      );
      await sleep(100);
      socket.write(encodeFrame(OPCODE.text, 'sent before the 101', true));
      await until('the echo', () => text.includes('sent before the 101'));
      expect(text.indexOf('HTTP/1.1 101')).toBe(0);
      socket.destroy();
      const [row] = await proxy.waitForRows(1);
      expect(row).toMatchObject({ status: 101, path: '/v1/realtime' });
    } finally {
      slow.closeAllConnections();
      slow.close();
    }
  });
});

describe('WebSocket sessions ending badly', () => {
  test('a client that resets its connection: the upstream connection is closed, the session recorded', async () => {
    const { upstream, proxy } = await setup();
    const answer = await openWebSocket(`${proxy.url}${REALTIME}`, BETA);
    if (answer.ws === null) throw new Error(`no 101: ${answer.status}`);
    answer.ws.send('hello');
    await answer.ws.next();
    (answer.ws.socket as Socket).resetAndDestroy();
    await until('the upstream side closed', () => upstream.websockets[0]?.destroyed);
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ status: 101, path: '/v1/realtime' });
    expect(row).toMatchObject({
      error: 'client_aborted',
      error_message: expect.stringContaining('WebSocket session'),
    });
    expect((await fetch(`${proxy.url}/health`)).status).toBe(200);
  });

  test('the upstream going away closes the client connection; without a close frame that is upstream_reset', async () => {
    const { upstream, proxy } = await setup();
    const answer = await openWebSocket(`${proxy.url}${REALTIME}`, BETA);
    if (answer.ws === null) throw new Error(`no 101: ${answer.status}`);
    const closed = new Promise<void>((r) => answer.ws?.socket.once('close', () => r()));
    upstream.websockets[0].destroy();
    await closed;
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ status: 101, path: '/v1/realtime', error: 'upstream_reset' });
    expect(row.error_message).toMatch(/closed the WebSocket connection without a close frame/);
  });

  test('the upstream resetting its connection: the client connection closes, the row says upstream_reset', async () => {
    const { upstream, proxy } = await setup();
    const answer = await openWebSocket(`${proxy.url}${REALTIME}`, BETA);
    if (answer.ws === null) throw new Error(`no 101: ${answer.status}`);
    const closed = new Promise<void>((r) => answer.ws?.socket.once('close', () => r()));
    upstream.websockets[0].resetAndDestroy();
    await closed;
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ status: 101, error: 'upstream_reset' });
    expect(row.error_message).toMatch(/^The connection to the upstream http:\/\/127\.0\.0\.1:\d+ was reset/);
  });

  test('an upstream silent after the handshake request: 504 upstream_timeout, recorded', async () => {
    const silent = createNetServer((s) => s.on('error', () => undefined));
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', () => r()));
    const { port } = silent.address() as AddressInfo;
    try {
      const { proxy } = await setup({
        OPENAI_BASE_URL: `http://127.0.0.1:${port}/v1`,
        UPSTREAM_HEADERS_TIMEOUT_MS: '200',
      });
      const answer = await openWebSocket(`${proxy.url}${REALTIME}`, BETA);
      expect(answer.status).toBe(504);
      if (answer.ws === null) expect(JSON.parse(answer.body).error.code).toBe('upstream_timeout');
      const [row] = await proxy.waitForRows(1);
      expect(row).toMatchObject({ status: 504, error: 'upstream_timeout', path: '/v1/realtime' });
    } finally {
      silent.close();
    }
  });

  test.each([
    ['closes its connection', (s: Socket) => s.destroy()],
    ['resets its connection', (s: Socket) => s.resetAndDestroy()],
  ])(
    'a client that %s before the 101: the upstream request is aborted at once, recorded client_aborted',
    async (_, leave) => {
      // An upstream that takes the handshake request and never answers.
      const held: Socket[] = [];
      const silent = createNetServer((s) => {
        s.on('error', () => undefined);
        s.once('data', () => held.push(s));
      });
      await new Promise<void>((r) => silent.listen(0, '127.0.0.1', () => r()));
      const { port } = silent.address() as AddressInfo;
      try {
        const { proxy } = await setup({ OPENAI_BASE_URL: `http://127.0.0.1:${port}/v1` });
        const client = connect(Number(new URL(proxy.url).port), '127.0.0.1');
        client.on('error', () => undefined);
        client.write(
          `GET ${REALTIME} HTTP/1.1\r\nhost: proxy\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`,
        );
        await until('the handshake request upstream', () => held.length === 1);
        const t0 = Date.now();
        leave(client);
        await until('the upstream connection closed', () => held[0].destroyed);
        const [row] = await proxy.waitForRows(1);
        expect(Date.now() - t0).toBeLessThan(2000);
        expect(row).toMatchObject({
          status: null,
          path: '/v1/realtime',
          error: 'client_aborted',
          error_message: expect.stringContaining('upstream request was aborted'),
        });
        expect(proxy.running.proxy.inflight()).toBe(0);
      } finally {
        silent.close();
      }
    },
  );

  test('shutdown: a session still open when SHUTDOWN_GRACE_MS runs out is cut and recorded as proxy_shutdown', async () => {
    const upstream = await createFakeUpstream();
    const records: ExchangeRecord[] = [];
    const proxy = await startTestProxy(
      { OPENAI_BASE_URL: upstream.baseUrl, SHUTDOWN_GRACE_MS: '300' },
      { onRecord: (r) => records.push(r) },
    );
    try {
      const answer = await openWebSocket(`${proxy.url}${REALTIME}`, BETA);
      if (answer.ws === null) throw new Error(`no 101: ${answer.status}`);
      const closed = new Promise<void>((r) => answer.ws?.socket.once('close', () => r()));
      const t0 = Date.now();
      await proxy.close();
      expect(Date.now() - t0).toBeLessThan(2000);
      await closed;
      expect(upstream.websockets[0].destroyed).toBe(true);
      expect(records).toHaveLength(1);
      expect(records[0]).toMatchObject({ status: 101, path: '/v1/realtime', error: 'proxy_shutdown' });
      expect(records[0].durationMs).toBeGreaterThanOrEqual(250);
    } finally {
      await proxy.close();
      await upstream.close();
    }
  });
});

describe('Realtime sessions are recorded: messages, text, tokens', () => {
  const scripted: ScriptedWebSocketUpstream[] = [];
  afterEach(async () => {
    for (const u of scripted.splice(0)) await u.close();
  });

  /** A proxy in front of a scripted upstream, and an open session through it (the client's raw bytes kept). */
  async function session(
    env: Record<string, string> = {},
    extensions?: string,
    offer?: string,
    headers: Record<string, string> = {},
  ) {
    const up = await startScriptedWebSocketUpstream(extensions);
    scripted.push(up);
    const { proxy } = await setup({ OPENAI_BASE_URL: up.baseUrl, ...env });
    const answer = await openWebSocket(`${proxy.url}${REALTIME}`, {
      ...BETA,
      ...(offer ? { 'sec-websocket-extensions': offer } : {}),
      ...headers,
    });
    if (answer.ws === null) throw new Error(`no 101: ${answer.status}`);
    const ws: TestWebSocket = answer.ws;
    const got: Buffer[] = [];
    ws.socket.on('data', (c: Buffer) => got.push(c));
    const server = up.sessions[0] as Socket;
    return {
      up,
      proxy,
      ws,
      server,
      /** Every byte the client got after the 101. */
      clientGot: () => Buffer.concat(got),
      /** Every byte the upstream got after the handshake. */
      upstreamGot: () => Buffer.concat(up.received[0] ?? []),
    };
  }

  const serverFrame = (ev: unknown) => encodeFrame(OPCODE.text, JSON.stringify(ev), false);
  const done = (id: string, input: number, output: number) => ({
    type: 'response.done',
    event_id: `ev_done_${id}`,
    response: {
      id,
      status: 'completed',
      output: [],
      usage: { total_tokens: input + output, input_tokens: input, output_tokens: output },
    },
  });

  async function show(proxy: TestProxy, id: string, ...flags: string[]): Promise<string> {
    const io = createTestIo({ HOME: proxy.dir }, proxy.dir);
    expect(await main(['logs', 'show', id, ...flags, '--db', proxy.dbPath], io), io.err()).toBe(0);
    return io.out();
  }

  test('two responses: tokens summed, text and transcript reassembled and shown by logs show, bodies as NDJSON', async () => {
    const { proxy, ws, server } = await session();
    const clientEvents = [
      { type: 'session.update', session: { modalities: ['text', 'audio'], instructions: 'be brief' } },
      { type: 'response.create' },
    ];
    for (const e of clientEvents) ws.send(JSON.stringify(e));
    const audio = 'UklGRiQAAABXQVZF'.repeat(64); // base64 audio, elided by logs show
    const part = { output_index: 0, content_index: 0 };
    const events = [
      { type: 'session.created', event_id: 'ev_1', session: { id: 'sess_1' } },
      { type: 'response.text.delta', response_id: 'r1', item_id: 'i1', ...part, delta: 'Hello' },
      { type: 'response.text.delta', response_id: 'r1', item_id: 'i1', ...part, delta: ' there' },
      { type: 'response.text.done', response_id: 'r1', item_id: 'i1', ...part, text: 'Hello there' },
      done('r1', 10, 5),
      { type: 'response.audio.delta', response_id: 'r2', item_id: 'i2', ...part, delta: audio },
      { type: 'response.audio_transcript.delta', response_id: 'r2', item_id: 'i2', ...part, delta: 'Hi' },
      { type: 'response.audio_transcript.delta', response_id: 'r2', item_id: 'i2', ...part, delta: '!' },
      {
        type: 'conversation.item.input_audio_transcription.completed',
        item_id: 'u1',
        content_index: 0,
        transcript: 'hello?',
        usage: { type: 'tokens', input_tokens: 7, output_tokens: 3, total_tokens: 10 },
      },
      done('r2', 20, 30),
    ];
    for (const e of events) server.write(serverFrame(e));
    for (const e of events) expect((await ws.next()).payload.toString()).toBe(JSON.stringify(e));
    await ws.close();

    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({
      status: 101,
      error: null,
      prompt_tokens: 30,
      completion_tokens: 35,
      total_tokens: 65,
      request_truncated: 0,
      response_truncated: 0,
    });
    expect(row.request_body).toBe(`${clientEvents.map((e) => JSON.stringify(e)).join('\n')}\n`);
    // the audio is not stored: a placeholder says how long it was
    const stored = events.map((e) =>
      e.type === 'response.audio.delta' ? { ...e, delta: `[base64 audio, ${audio.length} characters]` } : e,
    );
    expect(row.response_body).toBe(`${stored.map((e) => JSON.stringify(e)).join('\n')}\n`);
    // bytes are still the frames' bytes on the wire
    expect(row.response_bytes).toBeGreaterThan((row.response_body as string).length);
    expect(JSON.parse(row.assembled as string)).toEqual({
      kind: 'realtime',
      content: 'Hello there\nHi!',
      tool_calls: [],
      finish_reason: 'completed',
      usage: { prompt_tokens: 30, completion_tokens: 35, total_tokens: 65 },
      complete: true,
      events: events.length,
      input_transcription_usage: { prompt_tokens: 7, completion_tokens: 3, total_tokens: 10, seconds: null },
    });

    const out = await show(proxy, row.id);
    expect(out).toContain('tokens     30 in, 35 out, 65 total');
    expect(out).toContain(
      `realtime session: the model's text and transcripts (${events.length} server events)`,
    );
    expect(out).toContain('Hello there\nHi!\n');
    expect(out).toContain('usage: {"prompt_tokens":30,"completion_tokens":35,"total_tokens":65}');
    expect(out).toContain('input transcription usage: {"prompt_tokens":7');
    expect(out).toContain(
      '{"type":"session.update","session":{"modalities":["text","audio"],"instructions":"be brief"}}\n{"type":"response.create"}',
    );
    // Sizes are the frames' bytes on the wire (compressed, with headers), not the stored text's.
    expect(out).toContain(`── client messages (${row.request_bytes} bytes of frames)`);
    const raw = await show(proxy, row.id, '--raw');
    expect(raw).toContain(`── raw events (${row.response_bytes} bytes of frames)`);
    expect(raw).toContain(`"delta":"[base64 audio, ${audio.length} characters]"`);
    expect(raw).not.toContain(audio);

    // --grep finds the model's words (once the recorder thread has indexed the row)
    const grep = async (text: string) => {
      const io = createTestIo({ HOME: proxy.dir }, proxy.dir);
      expect(await main(['logs', '--grep', text, '--json', '--db', proxy.dbPath], io), io.err()).toBe(0);
      return (JSON.parse(io.out()) as { id: string }[]).map((r) => r.id);
    };
    expect(
      await until('the row in the search index', async () => (await grep('hello there')).length > 0),
    ).toBe(true);
    expect(await grep('hello there')).toEqual([row.id]);
  });

  test('audio in a conversation.item.create content part is stored as a placeholder, as an append is', async () => {
    const { proxy, ws, server } = await session();
    const audio = 'UklGRiQAAABXQVZF'.repeat(4096); // 64 KiB of base64
    const item = (a: string) => ({
      type: 'conversation.item.create',
      item: {
        type: 'message',
        role: 'user',
        content: [
          { type: 'input_text', text: 'listen:' },
          { type: 'input_audio', audio: a },
        ],
      },
    });
    ws.send(JSON.stringify(item(audio)));
    ws.send(JSON.stringify({ type: 'input_audio_buffer.append', audio }));
    server.write(serverFrame(done('r1', 1, 1)));
    await ws.next();
    await ws.close();
    const [row] = await proxy.waitForRows(1);
    const placeholder = `[base64 audio, ${audio.length} characters]`;
    expect(row.request_body).toBe(
      `${JSON.stringify(item(placeholder))}\n${JSON.stringify({ type: 'input_audio_buffer.append', audio: placeholder })}\n`,
    );
    expect(row.request_bytes).toBeGreaterThan(2 * audio.length);
    expect(await show(proxy, row.id)).not.toContain(audio);
  });

  test('a session of one message each way: show --json and export keep the bodies as NDJSON text', async () => {
    const { proxy, ws, server } = await session();
    ws.send('{"type":"response.create"}');
    server.write(serverFrame(done('r1', 1, 2)));
    await ws.next();
    await ws.close();
    const [row] = await proxy.waitForRows(1);
    const io = createTestIo({ HOME: proxy.dir }, proxy.dir);
    expect(await main(['logs', 'show', row.id, '--json', '--db', proxy.dbPath], io), io.err()).toBe(0);
    const shown = JSON.parse(io.out());
    // A one-line body is still the session's text, as a two-line one is: scripts split it on newlines.
    expect(shown.request_body).toBe('{"type":"response.create"}\n');
    expect(shown.response_body).toBe(`${JSON.stringify(done('r1', 1, 2))}\n`);
    const exp = createTestIo({ HOME: proxy.dir }, proxy.dir);
    expect(await main(['logs', 'export', '--format', 'jsonl', '--db', proxy.dbPath], exp), exp.err()).toBe(0);
    expect(JSON.parse(exp.out().trim()).request_body).toBe('{"type":"response.create"}\n');
  });

  test('a message inflating to 16 MiB, then response.done: the row waits for the inflation and counts the tokens', async () => {
    const { proxy, ws, server, up: scripted } = await session({}, 'permessage-deflate', 'permessage-deflate');
    const bomb = encodeMessage(
      OPCODE.text,
      await new MessageDeflater(true).compress(
        `{"type":"conversation.item.created","item":"${'a'.repeat(16 * 1024 * 1024 - 60)}"}`,
      ),
      { masked: false, compressed: true },
    );
    const down = Buffer.concat([bomb, serverFrame(done('r1', 5, 6))]);
    const image = `data:image/png;base64,${'QUJD'.repeat(3 * 1024 * 1024)}`;
    const sent = encodeFrame(
      OPCODE.text,
      JSON.stringify({ type: 'conversation.item.create', item: { content: [{ image_url: image }] } }),
      true,
    );
    // Counted, not joined: 28 MiB.
    let clientBytes = 0;
    ws.socket.on('data', (c: Buffer) => {
      clientBytes += c.length;
    });
    const upstreamBytes = () => (scripted.received[0] ?? []).reduce((n, c) => n + c.length, 0);
    server.write(down);
    ws.socket.write(sent);
    await until('the client got every byte', () => clientBytes >= down.length);
    await until('the upstream got every byte', () => upstreamBytes() >= sent.length);
    await ws.close();
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ total_tokens: 11, request_truncated: 1, response_truncated: 1 });
    expect(row.request_body).toMatch(
      /^\{"type":"conversation.item.create","item":\{"content":\[\{"image_url":"data:image\/png;base64,QUJDQUJD/,
    );
  });

  test.each([
    [
      'the upstream',
      'upstream_reset',
      /The upstream default closed the WebSocket connection without a close frame/,
    ],
    ['the client', 'client_aborted', /The client closed the WebSocket connection without a close frame/],
  ])(
    '%s ending its connection mid-message, without a close frame: recorded as %s, tokens kept',
    async (who, error, message) => {
      const { proxy, ws, server } = await session();
      server.write(serverFrame(done('r1', 3, 4)));
      await ws.next();
      const half = (masked: boolean) =>
        encodeFrame(OPCODE.text, '{"type":"response.create","pad":"xxxxxxxx"}', masked).subarray(0, 12);
      if (who === 'the upstream') {
        server.end(half(false));
      } else {
        ws.socket.end(half(true));
      }
      const [row] = await proxy.waitForRows(1);
      expect(row).toMatchObject({ status: 101, error, total_tokens: 7 });
      expect(row.error_message).toMatch(message);
      expect(JSON.parse(row.assembled as string).complete).toBe(false);
    },
  );

  test('bodies beyond CAPTURE_BODY_BYTES are cut and marked truncated; tokens are still counted', async () => {
    const { proxy, ws, server } = await session({ CAPTURE_BODY_BYTES: '100' });
    const append = JSON.stringify({ type: 'input_audio_buffer.append', audio: 'QUJD'.repeat(500) });
    ws.send(append);
    const padding = { type: 'rate_limits.updated', rate_limits: [{ name: 'tokens', remaining: 1 }] };
    for (const e of [padding, padding, done('r1', 4, 6)]) server.write(serverFrame(e));
    for (let i = 0; i < 3; i++) await ws.next();
    await ws.close();
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({
      request_truncated: 1,
      response_truncated: 1,
      total_tokens: 10,
      prompt_tokens: 4,
    });
    expect(row.request_body).toBe(append.slice(0, 100));
    expect(row.response_body).toBe(`${JSON.stringify(padding)}\n${JSON.stringify(padding)}`.slice(0, 100));
    expect(row.request_bytes).toBeGreaterThan(append.length);
  });

  test('messages fragmented over frames, a ping between, written a byte at a time: relayed unchanged, recorded whole', async () => {
    const { proxy, ws, server, clientGot, upstreamGot } = await session();
    const update = JSON.stringify({
      type: 'session.update',
      session: { instructions: 'fragmented '.repeat(20) },
    });
    const sent = encodeMessage(OPCODE.text, update, {
      masked: true,
      fragments: 3,
      interleave: encodeFrame(OPCODE.ping, 'p', true),
    });
    await writeByteByByte(ws.socket, sent);
    const text = {
      type: 'response.text.delta',
      response_id: 'r1',
      item_id: 'i1',
      delta: 'pieces '.repeat(30),
    };
    const fromServer = Buffer.concat([
      encodeMessage(OPCODE.text, JSON.stringify(text), {
        masked: false,
        fragments: 4,
        interleave: encodeFrame(OPCODE.ping, 'q', false),
      }),
      encodeMessage(OPCODE.text, JSON.stringify(done('r1', 3, 4)), { masked: false, fragments: 2 }),
    ]);
    await writeByteByByte(server, fromServer);
    await until('the client got every byte', () => clientGot().length >= fromServer.length);
    await until('the upstream got every byte', () => upstreamGot().length >= sent.length);
    expect(clientGot().equals(fromServer)).toBe(true);
    expect(upstreamGot().equals(sent)).toBe(true);
    await ws.close();
    const [row] = await proxy.waitForRows(1);
    expect(row.request_body).toBe(`${update}\n`);
    expect(row.response_body).toBe(`${JSON.stringify(text)}\n${JSON.stringify(done('r1', 3, 4))}\n`);
    expect(row).toMatchObject({ prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 });
    expect(JSON.parse(row.assembled as string)).toMatchObject({ content: 'pieces '.repeat(30), events: 2 });
  });

  test.each([
    ['with context takeover', 'permessage-deflate; client_max_window_bits=15', true, true],
    [
      'without context takeover',
      'permessage-deflate; server_no_context_takeover; client_no_context_takeover',
      false,
      false,
    ],
    ['with it for the server only', 'permessage-deflate; client_no_context_takeover', true, false],
  ])(
    'permessage-deflate %s: relayed unchanged, messages inflated for the record',
    async (_, ext, serverKeeps, clientKeeps) => {
      const { proxy, ws, server, clientGot, upstreamGot } = await session(
        {},
        ext,
        'permessage-deflate; client_max_window_bits',
      );
      expect(ws.headers['sec-websocket-extensions']).toBe(ext);
      const clientDeflate = new MessageDeflater(clientKeeps);
      const serverDeflate = new MessageDeflater(serverKeeps);
      const clientEvents = [
        { type: 'session.update', session: { instructions: 'answer in one short sentence, please' } },
        { type: 'session.update', session: { instructions: 'answer in one short sentence, please!' } },
        { type: 'response.create' },
      ];
      const sent: Buffer[] = [];
      for (const [i, e] of clientEvents.entries()) {
        const payload = await clientDeflate.compress(JSON.stringify(e));
        sent.push(encodeMessage(OPCODE.text, payload, { masked: true, compressed: true, fragments: i + 1 }));
      }
      const events = [
        {
          type: 'response.output_text.delta',
          response_id: 'r1',
          item_id: 'i1',
          delta: 'The answer is short. ',
        },
        {
          type: 'response.output_text.delta',
          response_id: 'r1',
          item_id: 'i1',
          delta: 'The answer is short.',
        },
        done('r1', 11, 22),
        done('r2', 1, 2),
      ];
      const fromServer: Buffer[] = [];
      for (const [i, e] of events.entries()) {
        const payload = await serverDeflate.compress(JSON.stringify(e));
        fromServer.push(
          encodeMessage(OPCODE.text, payload, { masked: false, compressed: true, fragments: (i % 2) + 1 }),
        );
      }
      for (const b of sent) ws.socket.write(b);
      for (const b of fromServer) server.write(b);
      const up = Buffer.concat(sent);
      const down = Buffer.concat(fromServer);
      await until('the client got every byte', () => clientGot().length >= down.length);
      await until('the upstream got every byte', () => upstreamGot().length >= up.length);
      expect(clientGot().equals(down)).toBe(true);
      expect(upstreamGot().equals(up)).toBe(true);
      await ws.close();
      const [row] = await proxy.waitForRows(1);
      expect(row.request_body).toBe(`${clientEvents.map((e) => JSON.stringify(e)).join('\n')}\n`);
      expect(row.response_body).toBe(`${events.map((e) => JSON.stringify(e)).join('\n')}\n`);
      expect(row).toMatchObject({ prompt_tokens: 12, completion_tokens: 24, total_tokens: 36, error: null });
      expect(JSON.parse(row.assembled as string)).toMatchObject({
        content: 'The answer is short. The answer is short.',
        complete: true,
      });
    },
  );

  test("a real client (undici's WebSocket, Node's global one) with permessage-deflate from the upstream", async () => {
    const up = await startScriptedWebSocketUpstream('permessage-deflate');
    scripted.push(up);
    const { proxy } = await setup({ OPENAI_BASE_URL: up.baseUrl });
    const ws = new UndiciWebSocket(`${proxy.url.replace('http', 'ws')}${REALTIME}`);
    const received: string[] = [];
    ws.addEventListener('message', (e) => received.push(String(e.data)));
    await new Promise<void>((resolve, reject) => {
      ws.addEventListener('open', () => resolve());
      ws.addEventListener('error', () => reject(new Error('the WebSocket failed')));
    });
    expect(ws.extensions).toBe('permessage-deflate');
    ws.send(JSON.stringify({ type: 'response.create' }));
    const deflater = new MessageDeflater(true);
    const events = [
      {
        type: 'response.output_audio_transcript.delta',
        response_id: 'r1',
        item_id: 'i1',
        delta: 'Compressed ',
      },
      {
        type: 'response.output_audio_transcript.delta',
        response_id: 'r1',
        item_id: 'i1',
        delta: 'and compressed',
      },
      done('r1', 40, 2),
    ];
    const server = up.sessions[0] as Socket;
    for (const e of events)
      server.write(
        encodeMessage(OPCODE.text, await deflater.compress(JSON.stringify(e)), {
          masked: false,
          compressed: true,
        }),
      );
    await until('every event at the client', () => received.length === events.length);
    expect(received).toEqual(events.map((e) => JSON.stringify(e)));
    const closed = new Promise<void>((r) => ws.addEventListener('close', () => r()));
    ws.close(1000);
    await closed;
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({
      status: 101,
      error: null,
      prompt_tokens: 40,
      completion_tokens: 2,
      total_tokens: 42,
    });
    expect(row.request_body).toBe('{"type":"response.create"}\n');
    expect(JSON.parse(row.assembled as string)).toMatchObject({
      content: 'Compressed and compressed',
      complete: true,
      events: 3,
    });
  });

  test('garbage after the handshake is relayed unchanged; the row keeps what was read before it', async () => {
    const { proxy, ws, server, clientGot } = await session();
    const garbage = Buffer.from('this is no WebSocket frame \x00\xff\xfe at all', 'latin1');
    const bytes = Buffer.concat([serverFrame(done('r1', 5, 6)), garbage, serverFrame(done('r2', 500, 600))]);
    server.write(bytes);
    await until('the client got every byte', () => clientGot().length >= bytes.length);
    expect(clientGot().equals(bytes)).toBe(true);
    ws.socket.destroy();
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ status: 101, prompt_tokens: 5, completion_tokens: 6, total_tokens: 11 });
    const lines = (row.response_body as string).split('\n');
    expect(lines[0]).toBe(JSON.stringify(done('r1', 5, 6)));
    expect(lines[1]).toMatch(/^\[frames not read from here on: /);
    expect(lines).toHaveLength(3);
    expect(JSON.parse(row.assembled as string)).toMatchObject({ events: 1, complete: false });
  });

  test('a configured key quoted in a message or in the model text is scrubbed from bodies and assembled', async () => {
    const { proxy, ws, server } = await session(
      { OPENAI_API_KEY: UPSTREAM_KEY, PROXY_API_KEYS: CLIENT_KEY },
      undefined,
      undefined,
      { authorization: `Bearer ${CLIENT_KEY}` },
    );
    ws.send(JSON.stringify({ type: 'session.update', session: { instructions: `my key is ${CLIENT_KEY}` } }));
    const delta = {
      type: 'response.text.delta',
      response_id: 'r1',
      item_id: 'i1',
      delta: `it is ${UPSTREAM_KEY}`,
    };
    server.write(serverFrame(delta));
    server.write(serverFrame(done('r1', 1, 1)));
    await ws.next();
    await ws.next();
    await ws.close();
    const [row] = await proxy.waitForRows(1);
    const stored = JSON.stringify(row);
    expect(stored).not.toContain(UPSTREAM_KEY);
    expect(stored).not.toContain(CLIENT_KEY);
    expect(row.request_body).toContain('my key is [redacted]');
    expect(JSON.parse(row.assembled as string).content).toBe('it is [redacted]');
  });

  test('a key streamed in pieces over Realtime deltas: the server messages are withheld, the text redacted', async () => {
    const { proxy, ws, server } = await session({ OPENAI_API_KEY: UPSTREAM_KEY }, undefined, undefined, {
      authorization: `Bearer ${CLIENT_KEY}`,
    });
    ws.send(JSON.stringify({ type: 'response.create' }));
    const text = `Sure, your key is ${UPSTREAM_KEY} as asked.`;
    const pieces = text.match(/.{1,4}/g) ?? [];
    for (const delta of pieces)
      server.write(
        serverFrame({ type: 'response.output_text.delta', response_id: 'r1', item_id: 'i1', delta }),
      );
    server.write(serverFrame(done('r1', 1, 1)));
    for (let i = 0; i <= pieces.length; i++) await ws.next();
    await ws.close();
    const [row] = await proxy.waitForRows(1);
    expect(JSON.parse(row.assembled as string).content).toBe('Sure, your key is [redacted] as asked.');
    expect(row.response_body).toBe(
      `[stream events withheld: the reassembled message held a key, redacted there; ${row.response_bytes} bytes]`,
    );
    expect(deltaLeaks([UPSTREAM_KEY], row.response_body)).toEqual([]);
    expect(row.request_body).toContain('response.create'); // the client's messages, free of keys, kept
  });

  test('a client that resets mid-session: client_aborted, with the tokens of the responses done so far', async () => {
    const { proxy, ws, server } = await session();
    ws.send(JSON.stringify({ type: 'response.create' }));
    server.write(
      serverFrame({ type: 'response.text.delta', response_id: 'r1', item_id: 'i1', delta: 'partial' }),
    );
    server.write(serverFrame(done('r1', 8, 9)));
    server.write(
      serverFrame({ type: 'response.text.delta', response_id: 'r2', item_id: 'i2', delta: ' and more' }),
    );
    for (let i = 0; i < 3; i++) await ws.next();
    (ws.socket as Socket).resetAndDestroy();
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({
      status: 101,
      error: 'client_aborted',
      prompt_tokens: 8,
      completion_tokens: 9,
      total_tokens: 17,
    });
    expect(JSON.parse(row.assembled as string)).toMatchObject({
      content: 'partial\n and more',
      complete: false,
      events: 3,
    });
  });

  /** `oai-proxy logs …` against the proxy's database: its output. */
  async function logs(proxy: TestProxy, ...argv: string[]): Promise<string> {
    const io = createTestIo({ HOME: proxy.dir }, proxy.dir);
    expect(await main(['logs', ...argv, '--db', proxy.dbPath], io), io.err()).toBe(0);
    return io.out();
  }

  const errorEvent = (code: string, message: string, type = 'server_error') => ({
    type: 'error',
    event_id: `ev_err_${code}`,
    error: { type, code, message, param: null, event_id: 'ev_client_1' },
  });

  test("an error event: the row says upstream_stream_error with the first error's message; --status error and stats count it", async () => {
    const { proxy, ws, server } = await session(
      { OPENAI_API_KEY: UPSTREAM_KEY, PROXY_API_KEYS: CLIENT_KEY },
      undefined,
      undefined,
      { authorization: `Bearer ${CLIENT_KEY}` },
    );
    ws.send(JSON.stringify({ type: 'session.update', session: { voice: 'nope' } }));
    const events = [
      // A client event refused: not an error of the session (it goes on), only in the body.
      errorEvent(
        'response_cancel_not_active',
        'Cancellation failed: no active response found',
        'invalid_request_error',
      ),
      errorEvent('server_error', `The server had an error (key ${UPSTREAM_KEY})`),
      done('r1', 4, 6),
      errorEvent('server_error', 'The server had an error again'),
    ];
    for (const e of events) server.write(serverFrame(e));
    for (const e of events) expect((await ws.next()).payload.toString()).toBe(JSON.stringify(e));
    await ws.close(); // the session went on after the errors, and ended cleanly

    const [row] = await proxy.waitForRows(1);
    const message = 'The server had an error (key [redacted]) (the first of 2 errors in the session)';
    expect(row).toMatchObject({
      status: 101,
      error: 'upstream_stream_error',
      error_message: message,
      total_tokens: 10,
    });
    expect(JSON.stringify(row)).not.toContain(UPSTREAM_KEY);
    // both error events are in the body
    expect(row.response_body).toContain('"code":"response_cancel_not_active"');
    expect(String(row.response_body).match(/"code":"server_error"/g)).toHaveLength(2);
    expect(JSON.parse(row.assembled as string)).toMatchObject({ complete: true, events: 4 });
    const [line] = await proxy.waitForLogLines((ls) => ls.length > 0);
    expect(line).toMatchObject({ status: 101, error: 'upstream_stream_error' });

    const listed = JSON.parse(await logs(proxy, '--status', 'error', '--json')) as { id: string }[];
    expect(listed.map((r) => r.id)).toEqual([row.id]);
    expect(JSON.parse(await logs(proxy, 'stats', '--json'))).toMatchObject([{ requests: 1, errors: 1 }]);
    expect(await show(proxy, row.id)).toContain(`error: upstream_stream_error (${message})`);
  });

  test('a failed response (response.done, status failed) is an error too, with its status_details message', async () => {
    const { proxy, ws, server } = await session();
    const failed = {
      type: 'response.done',
      event_id: 'ev_done_r1',
      response: {
        id: 'r1',
        status: 'failed',
        status_details: {
          type: 'failed',
          error: { type: 'server_error', code: 'server_error', message: 'The server had an error' },
        },
        output: [],
        usage: { total_tokens: 3, input_tokens: 3, output_tokens: 0 },
      },
    };
    server.write(serverFrame(failed));
    await ws.next();
    await ws.close();
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({
      error: 'upstream_stream_error',
      error_message: 'The server had an error',
      total_tokens: 3,
    });
  });

  test('an error event, then the upstream resetting: upstream_reset wins, as for an HTTP stream', async () => {
    const { proxy, ws, server } = await session();
    server.write(serverFrame(errorEvent('invalid_value', 'Invalid value')));
    await ws.next();
    const closed = new Promise<void>((r) => ws.socket.once('close', () => r()));
    server.resetAndDestroy();
    await closed;
    const [row] = await proxy.waitForRows(1);
    expect(row).toMatchObject({ status: 101, error: 'upstream_reset' });
    expect(row.error_message).toMatch(/^The connection to the upstream http:\/\/127\.0\.0\.1:\d+ was reset/);
    expect(row.response_body).toContain('"code":"invalid_value"');
  });
});
