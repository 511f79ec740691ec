import { writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import OpenAI, { APIError, AzureOpenAI, NotFoundError, toFile } from 'openai';
import { afterEach, describe, expect, test } from 'vitest';
import { main } from '../../src/cli.js';
import {
  CHAT_ANSWER,
  chatCompletionBody,
  createFakeUpstream,
  type FakeHandler,
  type FakeUpstream,
  sleep,
} from '../helpers/fake-upstream.js';
import { createTempDir } from '../helpers/temp-dir.js';
import { createTestIo, startTestProxy, type TestProxy } from '../helpers/test-proxy.js';

const KEY_A = 'sk-upstream-a-0123456789abcdefghij';
const KEY_B = 'sk-upstream-b-klmnopqrstuvwxyz9876';
const AZURE_KEY = 'azure-key-0123456789abcdef0123456789';

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function upstream(): Promise<FakeUpstream> {
  const u = await createFakeUpstream();
  cleanups.push(() => u.close());
  return u;
}

async function proxyWith(env: Record<string, string>, config?: Record<string, unknown>): Promise<TestProxy> {
  const extra: Record<string, string> = {};
  if (config) {
    const dir = createTempDir();
    cleanups.push(() => dir.cleanup());
    const file = join(dir.path, 'oai-proxy.config.json');
    writeFileSync(file, JSON.stringify(config));
    extra.OAI_PROXY_CONFIG = file;
  }
  const p = await startTestProxy({ ...extra, ...env });
  cleanups.push(() => p.close());
  return p;
}

function client(p: TestProxy): OpenAI {
  return new OpenAI({ apiKey: 'sk-client-000000000000', baseURL: `${p.url}/v1`, maxRetries: 0 });
}

const chat = (c: OpenAI, model: string) =>
  c.chat.completions.create({ model, messages: [{ role: 'user', content: 'hi' }] });

const sentModel = (u: FakeUpstream) => JSON.parse(u.requests.at(-1)!.body.toString()).model;

describe('validation and aliases', () => {
  test('VALIDATE_MODELS off (default): unknown models pass, aliases are still rewritten', async () => {
    const up = await upstream();
    const p = await proxyWith({
      OPENAI_BASE_URL: up.baseUrl,
      MODEL_MAPPINGS: '{"fast":"gpt-4o-mini","cheap":"fast"}',
    });
    const c = client(p);
    expect((await chat(c, 'my-own-model')).choices[0].message.content).toBe(CHAT_ANSWER);
    expect(sentModel(up)).toBe('my-own-model');
    const viaAlias = await chat(c, 'cheap');
    expect(sentModel(up)).toBe('gpt-4o-mini');
    expect(viaAlias.model).toBe('gpt-4o-mini');
    const rows = await p.waitForRows(2);
    expect(rows.map((r) => [r.model, r.upstream_model, r.model_unknown, r.status])).toEqual([
      ['my-own-model', 'my-own-model', 0, 200],
      ['cheap', 'gpt-4o-mini', 0, 200],
    ]);
    // The stored request body is what the client sent; the upstream got the rewritten one.
    expect(JSON.parse(rows[1].request_body!).model).toBe('cheap');
  });

  test('an alias rewrite changes only the model: big integers, number forms, escapes, spacing reach the upstream as sent', async () => {
    const up = await upstream();
    const p = await proxyWith({ OPENAI_BASE_URL: up.baseUrl, MODEL_MAPPINGS: '{"fast":"gpt-4o-mini"}' });
    const body = (model: string) =>
      `{\n  "seed": 9007199254740993,\n  "temperature": 1.0, "top_p": 1e0, "n": 1E0,\n  "model" : "${model}",\n  "messages": [{"role": "user", "content": "caf\\u00e9 \\u2713", "model": "fast"}]\n}`;
    const res = await fetch(`${p.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: body('fast'),
    });
    expect(res.status).toBe(200);
    expect((await res.json()).model).toBe('gpt-4o-mini');
    const sent = up.requests.at(-1)!;
    expect(sent.body.toString()).toBe(body('gpt-4o-mini'));
    expect(Number(sent.headers['content-length'])).toBe(Buffer.byteLength(body('gpt-4o-mini')));
    const [row] = await p.waitForRows(1);
    expect([row.model, row.upstream_model, row.request_body]).toEqual(['fast', 'gpt-4o-mini', body('fast')]);
  });

  test('VALIDATE_MODELS=true: unknown models get 404 model_not_found from the proxy; known and aliases pass', async () => {
    const up = await upstream();
    const p = await proxyWith({
      OPENAI_BASE_URL: up.baseUrl,
      VALIDATE_MODELS: 'true',
      MODEL_MAPPINGS: '{"fast":"gpt-4o-mini"}',
    });
    const res = await fetch(`${p.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'x', messages: [] }),
    });
    expect(res.status).toBe(404);
    expect(await res.json()).toEqual({
      error: {
        message: 'The model `x` does not exist or is not available on this proxy',
        type: 'invalid_request_error',
        param: 'model',
        code: 'model_not_found',
      },
    });
    const c = client(p);
    const err = await chat(c, 'gpt-5-turbo-nonexistent').catch((e) => e);
    expect(err).toBeInstanceOf(NotFoundError);
    expect(err.code).toBe('model_not_found');
    expect(up.requests).toHaveLength(0);

    await chat(c, 'gpt-4o');
    await chat(c, 'fast');
    expect(sentModel(up)).toBe('gpt-4o-mini');
    const rows = await p.waitForRows(4);
    expect(rows.map((r) => [r.model, r.status, r.error])).toEqual([
      ['x', 404, 'model_not_found'],
      ['gpt-5-turbo-nonexistent', 404, 'model_not_found'],
      ['gpt-4o', 200, null],
      ['fast', 200, null],
    ]);
  });

  test('a UTF-8 byte order mark before the JSON does not skip validation, aliases or the record of the model', async () => {
    const up = await upstream();
    const p = await proxyWith({
      OPENAI_BASE_URL: up.baseUrl,
      VALIDATE_MODELS: 'true',
      MODEL_MAPPINGS: '{"cheap":"gpt-4o-mini"}',
    });
    const bom = Buffer.from([0xef, 0xbb, 0xbf]);
    const send = (json: string) =>
      fetch(`${p.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: Buffer.concat([bom, Buffer.from(json)]),
      });
    const refused = await send('{"model":"secret-model","messages":[]}');
    expect(refused.status).toBe(404);
    expect((await refused.json()).error).toMatchObject({ code: 'model_not_found', param: 'model' });
    expect(up.requests).toHaveLength(0);
    const aliased = await send('{"model":"cheap","messages":[],"seed":9007199254740993}');
    expect(aliased.status).toBe(200);
    // Only the model changes: the byte order mark and the rest reach the upstream as sent.
    expect(up.requests[0].body).toEqual(
      Buffer.concat([bom, Buffer.from('{"model":"gpt-4o-mini","messages":[],"seed":9007199254740993}')]),
    );
    const rows = await p.waitForRows(2);
    expect(rows.map((r) => [r.model, r.upstream_model, r.status, r.error])).toEqual([
      ['secret-model', null, 404, 'model_not_found'],
      ['cheap', 'gpt-4o-mini', 200, null],
    ]);
  });

  test('a JSON body the proxy cannot parse is refused while unknown models are refused (its model cannot be checked), forwarded otherwise', async () => {
    const up = await upstream();
    // Python's json.loads (vLLM, FastAPI) takes NaN, and UTF-16: such an upstream would read the model.
    const bodies = [
      '{"model":"secret-model","messages":[],"temperature":NaN}',
      Buffer.from('{"model":"secret-model","messages":[]}', 'utf16le'),
    ];
    const send = (url: string, body: string | Buffer) =>
      fetch(`${url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: typeof body === 'string' ? body : new Uint8Array(body),
      });
    const strict = await proxyWith({ OPENAI_BASE_URL: up.baseUrl, VALIDATE_MODELS: 'true' });
    for (const body of bodies) {
      const res = await send(strict.url, body);
      expect(res.status).toBe(400);
      expect((await res.json()).error).toMatchObject({
        type: 'invalid_request_error',
        code: 'invalid_json',
        message: expect.stringMatching(
          /^The request body is not valid JSON \(.+\), so its model cannot be checked/,
        ),
      });
    }
    expect(up.requests).toHaveLength(0);
    const rows = await strict.waitForRows(2);
    expect(rows.map((r) => [r.status, r.error])).toEqual([
      [400, 'invalid_request'],
      [400, 'invalid_request'],
    ]);
    // Unknown models allowed (recorded as unknown): not the proxy's to judge, the upstream answers it.
    const lenient = await proxyWith({
      OPENAI_BASE_URL: up.baseUrl,
      VALIDATE_MODELS: 'true',
      ALLOW_UNKNOWN_MODELS: 'true',
    });
    expect((await send(lenient.url, bodies[0])).status).toBe(200);
    expect(up.requests).toHaveLength(1);
  });

  test('a model that is not a string is refused while unknown models are refused, forwarded otherwise', async () => {
    const up = await upstream();
    const send = (url: string, body: string) =>
      fetch(`${url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body,
      });
    const strict = await proxyWith({ OPENAI_BASE_URL: up.baseUrl, VALIDATE_MODELS: 'true' });
    for (const [model, kind] of [
      ['123', 'a number'],
      ['["gpt-4o"]', 'an array'],
      ['{"name":"gpt-4o"}', 'an object'],
      ['true', 'a boolean'],
    ]) {
      const res = await send(strict.url, `{"model":${model},"messages":[]}`);
      expect(res.status).toBe(400);
      expect((await res.json()).error).toMatchObject({
        type: 'invalid_request_error',
        code: 'invalid_type',
        param: 'model',
        message: expect.stringContaining(`\`model\` is ${kind}, not a string`),
      });
    }
    // `"model": null` names none, as a body without it: forwarded.
    expect((await send(strict.url, '{"model":null,"messages":[]}')).status).toBe(200);
    expect(up.requests).toHaveLength(1);
    const rows = await strict.waitForRows(5);
    expect(rows.map((r) => r.status)).toEqual([400, 400, 400, 400, 200]);
    // Models not checked: the upstream judges it.
    const lenient = await proxyWith({ OPENAI_BASE_URL: up.baseUrl });
    expect((await send(lenient.url, '{"model":123,"messages":[]}')).status).toBe(200);
    expect(up.requests).toHaveLength(2);
  });

  test('an empty or blank JSON body names no model: forwarded while unknown models are refused, as a body without "model" is', async () => {
    const up = await upstream();
    const strict = await proxyWith({ OPENAI_BASE_URL: up.baseUrl, VALIDATE_MODELS: 'true' });
    const chunked = (method: string, text: string) =>
      new Promise<number>((resolve, reject) => {
        const req = request(`${strict.url}/v1/batches`, {
          method,
          headers: { 'content-type': 'application/json', 'transfer-encoding': 'chunked' },
        });
        req.on('response', (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode ?? 0));
        });
        req.on('error', reject);
        req.end(text);
      });
    // The fake upstream's 404 for a route it does not serve: the request reached it.
    expect(await chunked('GET', '')).toBe(404);
    expect(await chunked('POST', ' \n')).toBe(404);
    expect(up.requests.map((r) => [r.method, r.body.toString()])).toEqual([
      ['GET', ''],
      ['POST', ' \n'],
    ]);
  });

  test('ALLOW_UNKNOWN_MODELS=true: unknown models pass and the record marks them unknown', async () => {
    const up = await upstream();
    const p = await proxyWith({
      OPENAI_BASE_URL: up.baseUrl,
      VALIDATE_MODELS: 'true',
      ALLOW_UNKNOWN_MODELS: 'true',
    });
    const c = client(p);
    await chat(c, 'brand-new-model');
    await chat(c, 'gpt-4o');
    const rows = await p.waitForRows(2);
    expect(rows.map((r) => [r.model, r.status, r.model_unknown])).toEqual([
      ['brand-new-model', 200, 1],
      ['gpt-4o', 200, 0],
    ]);
  });

  test('multipart (audio): the alias in the form field is rewritten while the file streams through', async () => {
    const up = await upstream();
    const p = await proxyWith({
      OPENAI_BASE_URL: up.baseUrl,
      VALIDATE_MODELS: 'true',
      MODEL_MAPPINGS: '{"stt":"whisper-1"}',
    });
    const c = client(p);
    const audio = Buffer.alloc(400_000, 9);
    const res = await c.audio.transcriptions.create({
      model: 'stt',
      file: await toFile(audio, 'a.mp3', { type: 'audio/mpeg' }),
    });
    expect(res.text).toMatch(/ with whisper-1$/);
    const got = up.requests.at(-1)!;
    expect(got.body.includes(audio)).toBe(true);
    expect(got.body.toString('latin1')).not.toContain('name="model"\r\n\r\nstt\r\n');
    expect(Number(got.headers['content-length'] ?? got.body.length)).toBe(got.body.length);

    const err = await c.audio.transcriptions
      .create({ model: 'not-a-model', file: await toFile(audio, 'a.mp3', { type: 'audio/mpeg' }) })
      .catch((e) => e);
    expect(err).toBeInstanceOf(NotFoundError);
    expect(up.requests).toHaveLength(1);

    const rows = await p.waitForRows(2);
    expect(rows.map((r) => [r.path, r.model, r.upstream_model, r.status])).toEqual([
      ['/v1/audio/transcriptions', 'stt', 'whisper-1', 200],
      ['/v1/audio/transcriptions', 'not-a-model', null, 404],
    ]);
    // Recorded size is what the client sent (the rewritten body is one byte longer upstream).
    expect(rows[0].request_bytes).toBe(got.body.length - ('whisper-1'.length - 'stt'.length));
  });

  test('multipart with the model field after the file is rewritten too', async () => {
    const up = await upstream();
    const p = await proxyWith({ OPENAI_BASE_URL: up.baseUrl, MODEL_MAPPINGS: '{"stt":"whisper-1"}' });
    const form = new FormData();
    form.append('file', new Blob([Buffer.alloc(6_000_000, 3)], { type: 'audio/wav' }), 'a.wav');
    form.append('model', 'stt');
    const res = await fetch(`${p.url}/v1/audio/transcriptions`, { method: 'POST', body: form });
    expect(res.status).toBe(200);
    expect((await res.json()).text).toMatch(/ with whisper-1$/);
    expect(up.requests.at(-1)!.body.length).toBeGreaterThan(6_000_000);
  });

  test('VALIDATE_MODELS=true: a model field the proxy could not reach within MAX_REQUEST_BODY_BYTES is refused, not sent unchecked', async () => {
    const up = await upstream();
    const p = await proxyWith({
      OPENAI_BASE_URL: up.baseUrl,
      VALIDATE_MODELS: 'true',
      MAX_REQUEST_BODY_BYTES: '100000',
    });
    const upload = (model: string, first: 'file' | 'model') => {
      const form = new FormData();
      const file = new Blob([Buffer.alloc(300_000, 3)], { type: 'audio/wav' });
      if (first === 'model') form.append('model', model);
      form.append('file', file, 'a.wav');
      if (first === 'file') form.append('model', model);
      return fetch(`${p.url}/v1/audio/transcriptions`, { method: 'POST', body: form });
    };
    const refused = await upload('not-a-model', 'file');
    expect(refused.status).toBe(413);
    const body = await refused.json();
    expect(body.error.code).toBe('model_not_checked');
    expect(body.error.param).toBe('model');
    expect(body.error.message).toMatch(/MAX_REQUEST_BODY_BYTES/);
    expect(body.error.message).toMatch(/before the file/);
    expect(up.requests).toHaveLength(0);
    // The field first, as the limit allows: checked and passed (a known model) or refused (unknown).
    expect((await upload('whisper-1', 'model')).status).toBe(200);
    expect((await upload('not-a-model', 'model')).status).toBe(404);
    expect(up.requests).toHaveLength(1);
    const rows = await p.waitForRows(3);
    expect(rows.map((r) => [r.model, r.status])).toEqual([
      [null, 413],
      ['whisper-1', 200],
      ['not-a-model', 404],
    ]);
  });
});

// `curl -d` sends a JSON body as a form; other clients send text/plain or no type. Ollama, llama.cpp and
// vLLM read it as JSON anyway, and so must the proxy, or the model is routed, aliased and checked by nobody.
describe('a JSON body under another content type', () => {
  const post = (
    url: string,
    body: string | Buffer,
    contentType: string | null,
    extra: Record<string, string> = {},
  ) =>
    fetch(url, {
      method: 'POST',
      // A Buffer body gets no content type from fetch: `null` sends none at all.
      headers: { ...(contentType === null ? {} : { 'content-type': contentType }), ...extra },
      body: Buffer.from(body),
    });

  test.each([['application/x-www-form-urlencoded'], ['Text/Plain; charset=UTF-8'], [null]])(
    "content type %s: aliased byte for byte, routed to the model's upstream, recorded",
    async (contentType) => {
      const a = await upstream();
      const b = await upstream();
      const p = await proxyWith(
        {
          OPENAI_BASE_URL: a.baseUrl,
          OPENAI_API_KEY: KEY_A,
          LOCAL_KEY: KEY_B,
          MODEL_MAPPINGS: '{"fast":"llama3"}',
        },
        {
          upstreams: { local: { baseUrl: b.baseUrl, apiKeyEnv: 'LOCAL_KEY' } },
          models: [{ name: 'llama3', upstream: 'local' }],
        },
      );
      const body = (model: string) =>
        `{"model" : "${model}", "seed": 9007199254740993, "user": "ann", "messages": [{"role": "user", "content": "hi"}]}`;
      const res = await post(`${p.url}/v1/chat/completions`, body('fast'), contentType);
      expect(res.status).toBe(200);
      expect((await res.json()).model).toBe('llama3');
      expect(a.requests).toHaveLength(0);
      expect(b.requests).toHaveLength(1);
      const sent = b.requests[0];
      expect(sent.body.toString()).toBe(body('llama3'));
      expect(sent.headers['content-type']).toBe(contentType ?? undefined);
      expect(sent.headers.authorization).toBe(`Bearer ${KEY_B}`);
      const [row] = await p.waitForRows(1);
      expect([row.model, row.upstream_model, row.upstream, row.user, row.request_body]).toEqual([
        'fast',
        'llama3',
        'local',
        'ann',
        body('fast'),
      ]);
    },
  );

  test("VALIDATE_MODELS=true: an unknown model in a form-typed JSON body gets the proxy's 404", async () => {
    const up = await upstream();
    const p = await proxyWith({ OPENAI_BASE_URL: up.baseUrl, VALIDATE_MODELS: 'true' });
    for (const contentType of ['application/x-www-form-urlencoded', 'text/plain', null]) {
      const res = await post(`${p.url}/api/chat`, '{"model":"forbidden","messages":[]}', contentType);
      expect(res.status).toBe(404);
      expect((await res.json()).error).toMatchObject({ code: 'model_not_found', param: 'model' });
    }
    expect(up.requests).toHaveLength(0);
    const rows = await p.waitForRows(3);
    expect(rows.map((r) => [r.status, r.model])).toEqual([
      [404, 'forbidden'],
      [404, 'forbidden'],
      [404, 'forbidden'],
    ]);
  });

  test('a real form body (not JSON) goes through byte for byte, recorded with no model', async () => {
    const up = await upstream();
    const p = await proxyWith({ OPENAI_BASE_URL: up.baseUrl, MODEL_MAPPINGS: '{"fast":"llama3"}' });
    const res = await post(`${p.url}/v1/form`, 'a=1&b=2&model=fast', 'application/x-www-form-urlencoded');
    expect(res.status).toBe(404); // the fake upstream's answer for an unknown path
    expect(up.requests).toHaveLength(1);
    expect(up.requests[0].body.toString()).toBe('a=1&b=2&model=fast');
    expect(up.requests[0].headers['content-type']).toBe('application/x-www-form-urlencoded');
    const [row] = await p.waitForRows(1);
    expect([row.model, row.upstream_model, row.request_body]).toEqual([null, null, 'a=1&b=2&model=fast']);
  });

  test('over MAX_REQUEST_BODY_BYTES: 413 whether declared, chunked or announced with Expect: 100-continue', async () => {
    const up = await upstream();
    const p = await proxyWith({ OPENAI_BASE_URL: up.baseUrl, MAX_REQUEST_BODY_BYTES: '1000' });
    const big = JSON.stringify({ model: 'gpt-4o', pad: 'x'.repeat(5000) });
    const declared = await post(`${p.url}/v1/chat/completions`, big, 'text/plain');
    expect(declared.status).toBe(413);
    expect((await declared.json()).error).toMatchObject({ code: 'body_too_large' });
    const chunked = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = request(`${p.url}/v1/chat/completions`, { method: 'POST' }, (res) => {
        let text = '';
        res.on('data', (c) => (text += c));
        res.on('end', () => resolve({ status: res.statusCode!, body: text }));
      });
      req.on('error', reject);
      req.write(big.slice(0, 3000));
      setTimeout(() => req.end(big.slice(3000)), 20);
    });
    expect(chunked.status).toBe(413);
    const early = await new Promise<{ status: number; continued: boolean }>((resolve, reject) => {
      let continued = false;
      const req = request(`${p.url}/v1/chat/completions`, {
        method: 'POST',
        headers: {
          'content-type': 'application/x-www-form-urlencoded',
          'content-length': String(big.length),
          expect: '100-continue',
        },
      });
      req.on('continue', () => {
        continued = true;
        req.end(big);
      });
      req.on('response', (res) => {
        res.resume();
        res.on('end', () => resolve({ status: res.statusCode!, continued }));
      });
      req.on('error', reject);
      req.flushHeaders();
    });
    expect(early).toEqual({ status: 413, continued: false });
    expect(up.requests).toHaveLength(0);
    const rows = await p.waitForRows(3);
    expect(rows.map((r) => [r.status, r.error])).toEqual([
      [413, 'body_too_large'],
      [413, 'body_too_large'],
      [413, 'body_too_large'],
    ]);
  });

  test.each([
    ['no content type', null],
    // Ollama's own client (`ollama create`) sends its blobs as application/json.
    ['application/json', 'application/json'],
  ])(
    'an upload path is not read: an Ollama blob with %s streams through past the limit',
    async (_name, type) => {
      const up = await upstream();
      const p = await proxyWith({ OPENAI_BASE_URL: up.baseUrl, MAX_REQUEST_BODY_BYTES: '1000' });
      const blob = Buffer.alloc(5000, 7);
      const res = await post(`${p.url}/api/blobs/sha256:abc`, blob, type);
      expect(res.status).toBe(404); // the fake upstream's answer for an unknown path
      expect(up.requests[0].body.equals(blob)).toBe(true);
    },
  );
});

describe('/models answered from the registry', () => {
  test('the openai SDK lists and retrieves models and aliases; unknown ids are 404', async () => {
    const up = await upstream();
    const p = await proxyWith(
      { OPENAI_BASE_URL: up.baseUrl, MODEL_MAPPINGS: '{"fast":"llama3"}' },
      {
        availableModels: ['gpt-4o', { name: 'llama3', upstream: 'local' }, 'org/model-with-slash'],
        upstreams: { local: { baseUrl: up.baseUrl } },
      },
    );
    const c = client(p);
    const list = await c.models.list();
    expect(list.data.map((m) => m.id)).toEqual(['gpt-4o', 'llama3', 'org/model-with-slash', 'fast']);
    for (const m of list.data) {
      expect(m.object).toBe('model');
      expect(typeof m.created).toBe('number');
    }
    expect(list.data.find((m) => m.id === 'llama3')!.owned_by).toBe('local');
    expect(list.data.find((m) => m.id === 'fast')!.owned_by).toBe('local');

    const one = await c.models.retrieve('gpt-4o');
    expect(one).toMatchObject({ id: 'gpt-4o', object: 'model', owned_by: 'oai-proxy' });
    expect((await c.models.retrieve('org/model-with-slash')).id).toBe('org/model-with-slash');
    expect((await c.models.retrieve('fast')).id).toBe('fast');
    const err = await c.models.retrieve('nope').catch((e) => e);
    expect(err).toBeInstanceOf(NotFoundError);
    expect(err.code).toBe('model_not_found');

    const bare = await fetch(`${p.url}/models`);
    expect(bare.status).toBe(200);
    expect((await bare.json()).object).toBe('list');
    expect(up.requests.filter((r) => r.url.includes('/models'))).toHaveLength(0);
  });
});

describe('named upstreams', () => {
  test('two upstreams routed by model, each receiving only its own key', async () => {
    const a = await upstream();
    const b = await upstream();
    const p = await proxyWith(
      { OPENAI_BASE_URL: a.baseUrl, OPENAI_API_KEY: KEY_A, LOCAL_KEY: KEY_B },
      {
        upstreams: { local: { baseUrl: b.baseUrl, apiKeyEnv: 'LOCAL_KEY', headers: { 'X-Extra': 'yes' } } },
        models: [{ name: 'llama3', upstream: 'local' }],
      },
    );
    const c = client(p);
    await chat(c, 'gpt-4o');
    await chat(c, 'llama3');
    await c.embeddings.create({ model: 'text-embedding-3-small', input: 'x' });
    expect(a.requests.map((r) => r.url)).toEqual(['/v1/chat/completions', '/v1/embeddings']);
    expect(b.requests.map((r) => r.url)).toEqual(['/v1/chat/completions']);
    for (const r of a.requests) {
      expect(r.headers.authorization).toBe(`Bearer ${KEY_A}`);
      expect(JSON.stringify(r.headers)).not.toContain(KEY_B);
    }
    expect(b.requests[0].headers.authorization).toBe(`Bearer ${KEY_B}`);
    expect(b.requests[0].headers['x-extra']).toBe('yes');
    expect(JSON.stringify(b.requests[0].headers)).not.toContain(KEY_A);
    const rows = await p.waitForRows(3);
    expect(rows.map((r) => [r.model, r.upstream])).toEqual([
      ['gpt-4o', 'default'],
      ['llama3', 'local'],
      ['text-embedding-3-small', 'default'],
    ]);
    for (const key of [KEY_A, KEY_B]) expect(JSON.stringify(rows)).not.toContain(key);
  });

  test('upstream keys with a space or newline around them (OPENAI_API_KEY, apiKeyEnv) are sent trimmed', async () => {
    const a = await upstream();
    const b = await upstream();
    const p = await proxyWith(
      { OPENAI_BASE_URL: a.baseUrl, OPENAI_API_KEY: ` ${KEY_A} `, LOCAL_KEY: `${KEY_B}\n` },
      {
        upstreams: { local: { baseUrl: b.baseUrl, apiKeyEnv: 'LOCAL_KEY' } },
        models: [{ name: 'llama3', upstream: 'local' }],
      },
    );
    const c = client(p);
    await chat(c, 'gpt-4o');
    await chat(c, 'llama3');
    expect(a.requests[0].headers.authorization).toBe(`Bearer ${KEY_A}`);
    expect(b.requests[0].headers.authorization).toBe(`Bearer ${KEY_B}`);
  });

  test('Azure upstream: api-key header, deployment path, api-version query', async () => {
    const az = await upstream();
    const p = await proxyWith(
      {},
      {
        openaiBaseUrl: 'http://127.0.0.1:9/v1',
        upstreams: {
          azure: { baseUrl: az.origin, apiKey: AZURE_KEY, type: 'azure', apiVersion: '2024-06-01' },
        },
        models: [
          { name: 'gpt-4o', upstream: 'azure', deployment: 'prod-gpt4o' },
          { name: 'text-embedding-3-small', upstream: 'azure' },
        ],
      },
    );
    const c = client(p);
    expect((await chat(c, 'gpt-4o')).choices[0].message.content).toBe(CHAT_ANSWER);
    await c.embeddings.create({ model: 'text-embedding-3-small', input: 'x' });
    const [first, second] = az.requests;
    expect(first.method).toBe('POST');
    expect(first.url).toBe('/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-06-01');
    expect(first.headers['api-key']).toBe(AZURE_KEY);
    expect(first.headers.authorization).toBeUndefined();
    expect(first.headers['content-type']).toBe('application/json');
    expect(JSON.parse(first.body.toString())).toMatchObject({
      model: 'gpt-4o',
      messages: [{ content: 'hi' }],
    });
    expect(second.url).toBe('/openai/deployments/text-embedding-3-small/embeddings?api-version=2024-06-01');
    const rows = await p.waitForRows(2);
    expect(rows[0].upstream).toBe('azure');
    expect(JSON.stringify(rows)).not.toContain(AZURE_KEY);
  });

  test.each([
    [
      'OPENAI_API_TYPE=azure',
      (u: FakeUpstream) => ({ OPENAI_BASE_URL: u.origin, OPENAI_API_TYPE: 'azure' }),
      '/openai/deployments/gpt-4o/chat/completions',
    ],
    [
      'the original service style …/openai/deployments/<name>',
      (u: FakeUpstream) => ({ OPENAI_BASE_URL: `${u.origin}/openai/deployments/legacy-dep` }),
      '/openai/deployments/legacy-dep/chat/completions',
    ],
  ])('default upstream as Azure (%s)', async (_label, env, path) => {
    const az = await upstream();
    const p = await proxyWith({ ...env(az), OPENAI_API_KEY: AZURE_KEY, OPENAI_API_VERSION: '2024-10-21' });
    await chat(client(p), 'gpt-4o');
    const got = az.requests[0];
    expect(got.url).toBe(`${path}?api-version=2024-10-21`);
    expect(got.headers['api-key']).toBe(AZURE_KEY);
    expect(got.headers.authorization).toBeUndefined();
  });

  test("an Azure upstream whose key is in its headers (api-key): the client's own key is not sent beside it, which Azure refuses", async () => {
    const az = await upstream();
    // Azure answers a request carrying both credentials 400.
    az.on('/openai/deployments/prod-gpt4o/chat/completions', (req, res, raw) => {
      if (req.headers['api-key'] && req.headers.authorization) {
        res.writeHead(400, { 'content-type': 'application/json' });
        res.end(
          JSON.stringify({
            error: {
              code: '400',
              message: 'Either API-KEY or Authorization header must be provided but not both',
            },
          }),
        );
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(chatCompletionBody(JSON.parse(raw.toString()).model)));
    });
    const p = await proxyWith(
      { OPENAI_BASE_URL: 'http://127.0.0.1:9/v1' },
      {
        upstreams: {
          azure: { baseUrl: az.origin, type: 'azure', headers: { 'Api-Key': AZURE_KEY, 'X-Team': 'eu' } },
        },
        models: [{ name: 'gpt-4o', upstream: 'azure', deployment: 'prod-gpt4o' }],
      },
    );
    // The openai SDK always sends its key as Authorization: Bearer; AzureOpenAI as api-key.
    expect((await chat(client(p), 'gpt-4o')).choices[0].message.content).toBe(CHAT_ANSWER);
    const azureSdk = new AzureOpenAI({
      endpoint: p.url,
      apiKey: 'client-azure-key-0123456789abcdef',
      apiVersion: '2024-10-21',
      deployment: 'gpt-4o',
      maxRetries: 0,
    });
    await azureSdk.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] });
    expect(az.requests).toHaveLength(2);
    for (const r of az.requests) {
      expect(r.headers['api-key']).toBe(AZURE_KEY);
      expect(r.headers.authorization).toBeUndefined();
      expect(r.headers['x-team']).toBe('eu');
      expect(JSON.stringify(r.headers)).not.toMatch(/sk-client|client-azure-key/);
    }
  });

  test('a named upstream that is down: the 502 names it and its setting in the config file', async () => {
    const a = await upstream();
    const dead = await createFakeUpstream();
    const deadUrl = dead.baseUrl;
    await dead.close();
    const p = await proxyWith(
      { OPENAI_BASE_URL: a.baseUrl },
      { upstreams: { local: { baseUrl: deadUrl } }, models: [{ name: 'llama3', upstream: 'local' }] },
    );
    const err = await chat(client(p), 'llama3').catch((e) => e);
    expect(err).toBeInstanceOf(APIError);
    expect(err.status).toBe(502);
    const message = `The upstream "local" (${new URL(deadUrl).origin}) could not be reached (ECONNREFUSED); check its base URL (upstreams.local.baseUrl in the config file)`;
    expect(err.error).toMatchObject({ message, code: 'upstream_unreachable' });
    expect(err.error.message).not.toContain('OPENAI_BASE_URL');
    const [row] = await p.waitForRows(1);
    expect(row).toMatchObject({ status: 502, upstream: 'local', error_message: message });
  });

  test('a model whose upstream is not configured is answered 502 by the proxy', async () => {
    const up = await upstream();
    const p = await proxyWith({ OPENAI_BASE_URL: up.baseUrl });
    const io = createTestIo({ HOME: p.dir }, p.dir);
    // Written straight into the database, as another proxy with a different config file might have.
    const other = new BetterSqlite3(p.dbPath);
    other
      .prepare(
        "insert into models (name, upstream, source, created_at, updated_at) values ('orphan', 'gone', 'cli', 0, 0)",
      )
      .run();
    other.close();
    expect(await main(['models', 'show', 'orphan', '--db', p.dbPath], io)).toBe(0);
    await sleep(700);
    const res = await fetch(`${p.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'orphan', messages: [] }),
    });
    expect(res.status).toBe(502);
    expect((await res.json()).error.message).toMatch(/upstream "gone", which is not configured/);
    expect(up.requests).toHaveLength(0);
  });
});

describe('Azure clients and paths', () => {
  const API_VERSION = '2025-04-01-preview';
  const CLIENT_AZURE_KEY = 'client-azure-key-0123456789abcdef';
  const JWT =
    'eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL2NvZ25pdGl2ZXNlcnZpY2VzLmF6dXJlLmNvbSJ9.c2lnbmF0dXJlLXRlc3Q';

  const azureClient = (p: TestProxy, deployment?: string) =>
    new AzureOpenAI({
      endpoint: p.url,
      apiKey: CLIENT_AZURE_KEY,
      apiVersion: API_VERSION,
      deployment,
      maxRetries: 0,
    });

  const json =
    (body: (url: string, sent: Record<string, unknown>) => unknown): FakeHandler =>
    (req, res, raw) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body(req.url ?? '', raw.length ? JSON.parse(raw.toString()) : {})));
    };

  test('the AzureOpenAI SDK pointed at the proxy: its paths reach Azure as sent, deployment as the model', async () => {
    const az = await upstream();
    az.on(
      '/openai/files',
      json(() => ({ object: 'list', data: [], has_more: false })),
    );
    az.on(
      '/openai/models',
      json(() => ({ object: 'list', data: [{ id: 'gpt-4o', object: 'model' }] })),
    );
    const p = await proxyWith({ OPENAI_BASE_URL: az.origin, OPENAI_API_TYPE: 'azure' });
    const c = azureClient(p, 'mydep');

    const answer = await c.chat.completions.create({
      model: 'gpt-4o',
      messages: [{ role: 'user', content: 'hi' }],
    });
    expect(answer.choices[0].message.content).toBe(CHAT_ANSWER);
    expect((await c.files.list()).data).toEqual([]);
    expect((await c.models.list()).data.map((m) => m.id)).toEqual(['gpt-4o']);

    expect(az.requests.map((r) => r.url)).toEqual([
      `/openai/deployments/mydep/chat/completions?api-version=${API_VERSION}`,
      `/openai/files?api-version=${API_VERSION}`,
      `/openai/models?api-version=${API_VERSION}`,
    ]);
    expect(az.requests[0].headers['api-key']).toBe(CLIENT_AZURE_KEY);
    // The body's model goes as the client sent it: Azure reads the deployment from the path.
    expect(JSON.parse(az.requests[0].body.toString()).model).toBe('gpt-4o');
    const rows = await p.waitForRows(3);
    expect(rows.map((r) => [r.path, r.query, r.model, r.upstream_model, r.status])).toEqual([
      ['/openai/deployments/mydep/chat/completions', `api-version=${API_VERSION}`, 'mydep', 'mydep', 200],
      ['/openai/files', `api-version=${API_VERSION}`, null, null, 200],
      ['/openai/models', `api-version=${API_VERSION}`, null, null, 200],
    ]);
  });

  test('a path deployment is validated and aliased like a body model (VALIDATE_MODELS=true)', async () => {
    const az = await upstream();
    const p = await proxyWith(
      {
        OPENAI_BASE_URL: `${az.origin}/openai`,
        OPENAI_API_TYPE: 'azure',
        OPENAI_API_KEY: AZURE_KEY,
        VALIDATE_MODELS: 'true',
      },
      {
        models: [{ name: 'gpt-4o-eu', deployment: 'gpt4o-prod' }],
        modelMappings: { eu: 'gpt-4o-eu' },
      },
    );
    await azureClient(p, 'gpt-4o-eu').chat.completions.create({
      model: 'gpt-4o',
      messages: [{ role: 'user', content: 'hi' }],
    });
    await azureClient(p, 'eu').chat.completions.create({
      model: 'gpt-4o',
      messages: [{ role: 'user', content: 'hi' }],
    });
    const err = await azureClient(p, 'nope')
      .chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] })
      .catch((e) => e);
    expect(err).toBeInstanceOf(NotFoundError);
    expect(err.error).toMatchObject({ code: 'model_not_found', param: 'model' });
    expect(err.error.message).toContain('`nope`');

    // The unknown deployment never reached the upstream; the known ones went to the model's deployment.
    expect(az.requests.map((r) => r.url)).toEqual([
      `/openai/deployments/gpt4o-prod/chat/completions?api-version=${API_VERSION}`,
      `/openai/deployments/gpt4o-prod/chat/completions?api-version=${API_VERSION}`,
    ]);
    expect(az.requests[0].headers['api-key']).toBe(AZURE_KEY);
    const rows = await p.waitForRows(3);
    expect(rows.map((r) => [r.model, r.upstream_model, r.status])).toEqual([
      ['gpt-4o-eu', 'gpt-4o-eu', 200],
      ['eu', 'gpt-4o-eu', 200],
      ['nope', null, 404],
    ]);
  });

  test('an AzureOpenAI SDK given the proxy …/v1 as baseURL: /v1/deployments/{name}/… is routed the same way', async () => {
    const az = await upstream();
    const p = await proxyWith(
      { OPENAI_BASE_URL: az.origin, OPENAI_API_TYPE: 'azure', OPENAI_API_KEY: AZURE_KEY },
      { models: [{ name: 'gpt-4o-eu', deployment: 'gpt4o-prod' }], modelMappings: { eu: 'gpt-4o-eu' } },
    );
    const c = new AzureOpenAI({
      baseURL: `${p.url}/v1`,
      apiKey: CLIENT_AZURE_KEY,
      apiVersion: API_VERSION,
      deployment: 'eu',
      maxRetries: 0,
    });
    const answer = await c.chat.completions.create({
      model: 'gpt-4o',
      messages: [{ role: 'user', content: 'hi' }],
    });
    expect(answer.choices[0].message.content).toBe(CHAT_ANSWER);
    expect(az.requests.map((r) => r.url)).toEqual([
      `/openai/deployments/gpt4o-prod/chat/completions?api-version=${API_VERSION}`,
    ]);
    const [row] = await p.waitForRows(1);
    expect(row).toMatchObject({
      path: '/v1/deployments/eu/chat/completions',
      model: 'eu',
      upstream_model: 'gpt-4o-eu',
      status: 200,
    });
  });

  test('OpenAI-style requests: only deployment-scoped operations get a deployment; the rest carry it in the body', async () => {
    const az = await upstream();
    az.on(
      '/openai/responses',
      json((_url, sent) => ({
        id: 'resp_1',
        object: 'response',
        status: 'completed',
        model: sent.model,
        output: [],
      })),
    );
    az.on(
      '/openai/fine_tuning/jobs',
      json((_url, sent) => ({
        id: 'ftjob-1',
        object: 'fine_tuning.job',
        model: sent.model,
        status: 'queued',
      })),
    );
    const p = await proxyWith(
      { OPENAI_BASE_URL: az.origin, OPENAI_API_TYPE: 'azure', OPENAI_API_KEY: AZURE_KEY },
      { models: [{ name: 'gpt-4o-eu', deployment: 'gpt4o-prod' }], modelMappings: { eu: 'gpt-4o-eu' } },
    );
    const c = client(p);
    await chat(c, 'eu');
    const response = await c.responses.create({ model: 'eu', input: 'hi' });
    expect(response.model).toBe('gpt4o-prod');
    await c.fineTuning.jobs.create({ model: 'gpt-4o-eu', training_file: 'file-1' });

    expect(az.requests.map((r) => [r.url, JSON.parse(r.body.toString()).model])).toEqual([
      ['/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21', 'gpt-4o-eu'],
      ['/openai/responses?api-version=2024-10-21', 'gpt4o-prod'],
      ['/openai/fine_tuning/jobs?api-version=2024-10-21', 'gpt4o-prod'],
    ]);
    const rows = await p.waitForRows(3);
    expect(rows.map((r) => [r.path, r.model])).toEqual([
      ['/v1/chat/completions', 'eu'],
      ['/v1/responses', 'eu'],
      ['/v1/fine_tuning/jobs', 'gpt-4o-eu'],
    ]);
  });

  test('Azure takes the deployment in the body (Responses, an …/openai/v1 base, a multipart form); upstream_model stays the routed registry model, as with a deployment in the path', async () => {
    // The README's set-up: a model on a named Azure upstream with its own deployment, and an alias for it.
    const az = await upstream();
    const v1 = await upstream();
    const responses = json((_url, sent) => ({
      id: 'resp_1',
      object: 'response',
      status: 'completed',
      model: sent.model,
      output: [],
    }));
    az.on('/openai/responses', responses);
    v1.on('/openai/v1/responses', responses);
    v1.on(
      '/openai/v1/chat/completions',
      json((_url, sent) => chatCompletionBody(String(sent.model))),
    );
    v1.on('/openai/v1/audio/transcriptions', (_req, res, raw) => {
      const m = /name="model"\r\n\r\n([^\r]*)/.exec(raw.toString('latin1'));
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ text: `with ${m?.[1]}` }));
    });
    const p = await proxyWith(
      { OPENAI_BASE_URL: 'http://127.0.0.1:9/v1' },
      {
        upstreams: {
          azure: { type: 'azure', baseUrl: az.origin, apiKey: AZURE_KEY, apiVersion: '2024-10-21' },
          azv1: { type: 'azure', baseUrl: `${v1.origin}/openai/v1`, apiKey: AZURE_KEY },
        },
        models: [
          { name: 'gpt-4o-eu', upstream: 'azure', deployment: 'gpt4o-prod' },
          { name: 'gpt-4o-v1', upstream: 'azv1', deployment: 'gpt4o-v1-prod' },
          { name: 'whisper-v1', upstream: 'azv1', deployment: 'whisper-prod' },
        ],
        modelMappings: { eu: 'gpt-4o-eu' },
      },
    );
    const c = client(p);
    expect((await c.responses.create({ model: 'eu', input: 'hi' })).model).toBe('gpt4o-prod');
    // The AzureOpenAI SDK sends Responses to /openai/responses, the model in the body.
    const viaAzure = await azureClient(p).responses.create({ model: 'eu', input: 'hi' });
    expect(viaAzure.model).toBe('gpt4o-prod');
    await c.responses.create({ model: 'gpt-4o-v1', input: 'hi' });
    await chat(c, 'gpt-4o-v1');
    const heard = await c.audio.transcriptions.create({
      model: 'whisper-v1',
      file: await toFile(Buffer.alloc(1000, 9), 'a.mp3', { type: 'audio/mpeg' }),
    });
    expect(heard.text).toBe('with whisper-prod');

    expect(az.requests.map((r) => [r.url, JSON.parse(r.body.toString()).model])).toEqual([
      ['/openai/responses?api-version=2024-10-21', 'gpt4o-prod'],
      [`/openai/responses?api-version=${API_VERSION}`, 'gpt4o-prod'],
    ]);
    expect(v1.requests.slice(0, 2).map((r) => [r.url, JSON.parse(r.body.toString()).model])).toEqual([
      ['/openai/v1/responses', 'gpt4o-v1-prod'],
      ['/openai/v1/chat/completions', 'gpt4o-v1-prod'],
    ]);
    const rows = await p.waitForRows(5);
    expect(rows.map((r) => [r.path, r.model, r.upstream_model, r.upstream, r.status])).toEqual([
      // One name for one registry model, whichever way its deployment travels: `logs --model gpt-4o-eu`
      // finds its chat rows (deployment in the path) and its Responses rows alike.
      ['/v1/responses', 'eu', 'gpt-4o-eu', 'azure', 200],
      ['/openai/responses', 'eu', 'gpt-4o-eu', 'azure', 200],
      ['/v1/responses', 'gpt-4o-v1', 'gpt-4o-v1', 'azv1', 200],
      ['/v1/chat/completions', 'gpt-4o-v1', 'gpt-4o-v1', 'azv1', 200],
      ['/v1/audio/transcriptions', 'whisper-v1', 'whisper-v1', 'azv1', 200],
    ]);
  });

  test('an Entra ID token (azureADTokenProvider) is forwarded as Authorization: Bearer, a plain key as api-key', async () => {
    const az = await upstream();
    const p = await proxyWith({ OPENAI_BASE_URL: az.origin, OPENAI_API_TYPE: 'azure' });
    const entra = new AzureOpenAI({
      endpoint: p.url,
      azureADTokenProvider: async () => JWT,
      apiVersion: API_VERSION,
      deployment: 'mydep',
      maxRetries: 0,
    });
    await entra.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] });
    await chat(new OpenAI({ apiKey: CLIENT_AZURE_KEY, baseURL: `${p.url}/v1`, maxRetries: 0 }), 'gpt-4o');

    const [viaEntra, viaKey] = az.requests;
    expect(viaEntra.headers.authorization).toBe(`Bearer ${JWT}`);
    expect(viaEntra.headers['api-key']).toBeUndefined();
    expect(viaKey.headers['api-key']).toBe(CLIENT_AZURE_KEY);
    expect(viaKey.headers.authorization).toBeUndefined();
    const rows = await p.waitForRows(2);
    expect(JSON.parse(rows[0].request_headers).authorization).toBe('[redacted]');
    expect(JSON.stringify(rows)).not.toContain(JWT);
  });

  test('an …/openai/v1 base: OpenAI-style paths, no deployment, api-version only when configured, api-key', async () => {
    const az = await upstream();
    az.on(
      '/openai/v1/chat/completions',
      json((_url, sent) => chatCompletionBody(String(sent.model))),
    );
    const p = await proxyWith(
      { OPENAI_BASE_URL: `${az.origin}/openai/v1`, OPENAI_API_TYPE: 'azure', OPENAI_API_KEY: AZURE_KEY },
      { models: [{ name: 'gpt-4o-eu', deployment: 'gpt4o-prod' }] },
    );
    const answer = await chat(client(p), 'gpt-4o-eu');
    expect(answer.choices[0].message.content).toBe(CHAT_ANSWER);
    const [got] = az.requests;
    expect(got.url).toBe('/openai/v1/chat/completions');
    expect(got.headers['api-key']).toBe(AZURE_KEY);
    expect(got.headers.authorization).toBeUndefined();
    expect(JSON.parse(got.body.toString()).model).toBe('gpt4o-prod');
    const [row] = await p.waitForRows(1);
    expect(row).toMatchObject({ path: '/v1/chat/completions', model: 'gpt-4o-eu', status: 200 });
  });

  test("a client speaking Azure's v1 API (an OpenAI client at …/openai/v1) on a classic base: no dated api-version added, which that API refuses", async () => {
    const az = await upstream();
    az.on(
      '/openai/v1/chat/completions',
      json((_url, sent) => chatCompletionBody(String(sent.model))),
    );
    az.on(
      '/openai/v1/responses',
      json((_url, sent) => ({
        id: 'resp_1',
        object: 'response',
        status: 'completed',
        model: sent.model,
        output: [],
      })),
    );
    const p = await proxyWith(
      { OPENAI_BASE_URL: 'http://127.0.0.1:9/v1' },
      {
        upstreams: {
          // No apiVersion: the default 2024-10-21 goes with classic paths; and one configured.
          azure: { type: 'azure', baseUrl: az.origin, apiKey: AZURE_KEY },
          pinned: {
            type: 'azure',
            baseUrl: `${az.origin}/openai`,
            apiKey: AZURE_KEY,
            apiVersion: '2024-06-01',
          },
        },
        models: [
          { name: 'gpt-4o-eu', upstream: 'azure', deployment: 'gpt4o-prod' },
          { name: 'gpt-4o-pinned', upstream: 'pinned', deployment: 'gpt4o-pinned' },
        ],
      },
    );
    // What Azure's documentation gives for its v1 API: the plain OpenAI client, base URL …/openai/v1.
    const v1 = new OpenAI({ apiKey: CLIENT_AZURE_KEY, baseURL: `${p.url}/openai/v1`, maxRetries: 0 });
    expect((await chat(v1, 'gpt-4o-eu')).choices[0].message.content).toBe(CHAT_ANSWER);
    await v1.responses.create({ model: 'gpt-4o-pinned', input: 'hi' });
    // The client's own api-version (`preview`) still goes as sent; classic paths still get the upstream's.
    await fetch(`${p.url}/openai/v1/chat/completions?api-version=preview`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'gpt-4o-eu', messages: [] }),
    });
    await chat(client(p), 'gpt-4o-eu');
    expect(az.requests.map((r) => [r.url, JSON.parse(r.body.toString()).model])).toEqual([
      ['/openai/v1/chat/completions', 'gpt4o-prod'],
      ['/openai/v1/responses', 'gpt4o-pinned'],
      ['/openai/v1/chat/completions?api-version=preview', 'gpt4o-prod'],
      ['/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21', 'gpt-4o-eu'],
    ]);
    expect(az.requests.map((r) => r.headers['api-key'])).toEqual(Array(4).fill(AZURE_KEY));
  });
});

describe("Ollama's native API", () => {
  test('/api/chat through a …/v1 base goes to the base without /v1, recorded as sent, its model routed', async () => {
    const up = await upstream();
    up.on('/api/chat', (_req, res, raw) => {
      const sent = JSON.parse(raw.toString());
      res.writeHead(200, { 'content-type': 'application/json; charset=utf-8' });
      res.end(
        JSON.stringify({ model: sent.model, message: { role: 'assistant', content: 'hi' }, done: true }),
      );
    });
    const p = await proxyWith({ OPENAI_BASE_URL: up.baseUrl, MODEL_MAPPINGS: '{"local":"llama3:8b"}' });
    const res = await fetch(`${p.url}/api/chat`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'local', messages: [{ role: 'user', content: 'hi' }], stream: false }),
    });
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ model: 'llama3:8b', message: { content: 'hi' } });
    expect(up.requests.map((r) => r.url)).toEqual(['/api/chat']);
    const [row] = await p.waitForRows(1);
    expect(row).toMatchObject({
      path: '/api/chat',
      model: 'local',
      upstream_model: 'llama3:8b',
      status: 200,
    });
  });
});

describe('live registry', () => {
  test('a running server picks up `oai-proxy models` edits within about a second', async () => {
    const up = await upstream();
    const p = await proxyWith({ OPENAI_BASE_URL: up.baseUrl, VALIDATE_MODELS: 'true' });
    const c = client(p);
    expect(await chat(c, 'team-model').catch((e) => e)).toBeInstanceOf(NotFoundError);

    const io = createTestIo({ HOME: p.dir }, p.dir);
    expect(await main(['models', 'add', 'team-model', '--db', p.dbPath], io)).toBe(0);
    expect(io.out()).toContain('Added model team-model');
    expect(await main(['models', 'map', 'tm', 'team-model', '--db', p.dbPath], io)).toBe(0);

    const start = Date.now();
    let ok = false;
    while (!ok && Date.now() - start < 3000) {
      ok = await chat(c, 'tm').then(
        () => true,
        () => false,
      );
      if (!ok) await sleep(50);
    }
    expect(ok).toBe(true);
    expect(Date.now() - start).toBeLessThan(1500);
    expect(sentModel(up)).toBe('team-model');
    expect((await c.models.list()).data.map((m) => m.id)).toContain('tm');

    expect(await main(['models', 'remove', 'team-model', '--db', p.dbPath], io)).toBe(0);
    expect(await main(['models', 'unmap', 'tm', '--db', p.dbPath], io)).toBe(0);
    await sleep(1100);
    expect(await chat(c, 'tm').catch((e) => e)).toBeInstanceOf(NotFoundError);
  });

  // Another process holding the write lock: `oai-proxy models add` mid-transaction, `logs prune`, an sqlite3
  // shell in BEGIN IMMEDIATE. The admin write waits for it on timers, never in SQLite's busy wait.
  async function lockedProxy() {
    const up = await upstream();
    const adminKey = 'admin-key-0123456789abcdefghijklmnop';
    const p = await proxyWith({ OPENAI_BASE_URL: up.baseUrl, ADMIN_API_KEY: adminKey });
    const other = new BetterSqlite3(p.dbPath);
    cleanups.push(() => void other.close());
    const admin = async (method: string, path: string, body?: unknown) => {
      const res = await fetch(`${p.url}${path}`, {
        method,
        headers: { authorization: `Bearer ${adminKey}`, 'content-type': 'application/json' },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      const text = await res.text();
      return { status: res.status, headers: res.headers, body: text ? JSON.parse(text) : null };
    };
    return { up, p, other, admin };
  }

  test('admin writes while another process holds the SQLite write lock: a stream mid-flight and new requests finish first, then the writes land', async () => {
    const { up, p, other, admin } = await lockedProxy();
    up.streamIntervalMs = 20;
    up.streamWords = 10;
    const c = client(p);
    const order: string[] = [];
    const stream = await c.chat.completions.create({
      model: 'gpt-4o-mini',
      stream: true,
      messages: [{ role: 'user', content: 'hi' }],
    });
    const events = stream[Symbol.asyncIterator]();
    expect((await events.next()).done).toBe(false);

    other.exec('begin immediate');
    const add = admin('POST', '/admin/models', { name: 'late-model' }).then((r) => {
      order.push('add model');
      return r;
    });
    const reload = admin('POST', '/admin/reload-config').then((r) => {
      order.push('reload-config');
      return r;
    });
    // Both requests reach their write (were the wait SQLite's, the event loop would now be held).
    await sleep(200);
    let text = '';
    for (let e = await events.next(); !e.done; e = await events.next())
      text += e.value.choices[0]?.delta?.content ?? '';
    expect(text).toContain('w9');
    order.push('stream');
    expect((await chat(c, 'gpt-4o-mini')).choices[0].message.content).toBe(CHAT_ANSWER);
    order.push('chat');
    expect(order).toEqual(['stream', 'chat']);

    other.exec('rollback');
    const [added, reloaded] = await Promise.all([add, reload]);
    expect(added.status).toBe(201);
    expect(added.body).toMatchObject({ name: 'late-model', source: 'admin' });
    expect(reloaded.status).toBe(200);
    expect(reloaded.body.status).toBe('reloaded');
    expect(p.running.registry.current().models.has('late-model')).toBe(true);
  }, 20_000);

  test('an admin write while the lock is held past the wait: 503 database_unavailable naming the lock, Retry-After, nothing changed', async () => {
    const { p, other, admin } = await lockedProxy();
    const c = client(p);
    other.exec('begin immediate');
    let answered = false;
    // The proxy keeps trying for about 5 s, then answers.
    const write = admin('POST', '/admin/model-mappings', { alias: 'tm', actual_model: 'gpt-4o-mini' }).then(
      (r) => {
        answered = true;
        return r;
      },
    );
    await sleep(200);
    expect((await chat(c, 'gpt-4o-mini')).choices[0].message.content).toBe(CHAT_ANSWER);
    expect(answered).toBe(false);
    const res = await write;
    other.exec('rollback');
    expect(res.status).toBe(503);
    expect(res.headers.get('retry-after')).toBe('1');
    expect(res.body.error).toMatchObject({ type: 'server_error', code: 'database_unavailable' });
    expect(res.body.error.message).toMatch(
      /^The database is locked by another process .*; the registry was not changed\. Try again/,
    );
    expect(p.running.registry.current().resolve('tm').alias).toBe(false);
  }, 20_000);
});
