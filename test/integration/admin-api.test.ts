import { readFileSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import OpenAI, { AuthenticationError, NotFoundError } from 'openai';
import { afterEach, describe, expect, test } from 'vitest';
import { firstBody, rawHttp } from '../hardening/raw-http.js';
import { createFakeUpstream, type FakeUpstream } from '../helpers/fake-upstream.js';
import { createTempDir } from '../helpers/temp-dir.js';
import { startTestProxy, type TestProxy } from '../helpers/test-proxy.js';

const ADMIN_KEY = 'admin-key-0123456789abcdefghijklmnop';

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function setup(env: Record<string, string> = {}, config?: Record<string, unknown>) {
  const up: FakeUpstream = await createFakeUpstream();
  cleanups.push(() => up.close());
  const dir = createTempDir();
  cleanups.push(() => dir.cleanup());
  const configFile = join(dir.path, 'oai-proxy.config.json');
  writeFileSync(configFile, JSON.stringify(config ?? {}));
  const p: TestProxy = await startTestProxy({
    OPENAI_BASE_URL: up.baseUrl,
    OAI_PROXY_CONFIG: configFile,
    ...env,
  });
  cleanups.push(() => p.close());
  const admin = async (method: string, path: string, body?: unknown, key: string | null = ADMIN_KEY) => {
    const headers: Record<string, string> = {};
    if (key !== null) headers.authorization = `Bearer ${key}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    const res = await fetch(`${p.url}${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : null };
  };
  const client = new OpenAI({ apiKey: 'sk-client-0000000000', baseURL: `${p.url}/v1`, maxRetries: 0 });
  return { up, p, admin, client, configFile };
}

describe('admin API authentication', () => {
  test('without ADMIN_API_KEY every /admin route is 404 and says how to enable it', async () => {
    const { admin } = await setup();
    for (const [m, path] of [
      ['GET', '/admin/models'],
      ['POST', '/admin/reload-config'],
    ]) {
      const r = await admin(m, path, undefined, 'anything');
      expect(r.status).toBe(404);
      expect(r.body.error.message).toMatch(/set ADMIN_API_KEY/);
    }
  });

  test('missing or wrong key → 401 in OpenAI error shape; the right key → 200', async () => {
    const { admin } = await setup({ ADMIN_API_KEY: ADMIN_KEY });
    const missing = await admin('GET', '/admin/models', undefined, null);
    expect(missing.status).toBe(401);
    expect(missing.body).toEqual({
      error: {
        message: expect.stringMatching(/Missing admin API key/),
        type: 'invalid_request_error',
        param: null,
        code: 'invalid_api_key',
      },
    });
    const wrong = await admin('GET', '/admin/models', undefined, `${ADMIN_KEY}x`);
    expect(wrong.status).toBe(401);
    expect(wrong.body.error.message).toMatch(/Incorrect admin API key/);
    const short = await admin('GET', '/admin/models', undefined, 'a');
    expect(short.status).toBe(401);

    const ok = await admin('GET', '/admin/models');
    expect(ok.status).toBe(200);
    expect(ok.body.upstreams).toEqual(['default']);
    expect(ok.body.mappings).toEqual({});
    expect(ok.body.models.find((m: any) => m.name === 'gpt-4o')).toEqual({
      name: 'gpt-4o',
      display_name: null,
      description: null,
      upstream: null,
      deployment: null,
      source: 'default',
      created: expect.any(Number),
    });
  });
});

describe('admin API editing the registry', () => {
  test('models and mappings: create, conflict, bad field, delete; changes apply to requests at once', async () => {
    const { admin, client, up, p } = await setup(
      { ADMIN_API_KEY: ADMIN_KEY, VALIDATE_MODELS: 'true' },
      { upstreams: { local: { baseUrl: 'http://127.0.0.1:9/v1' } } },
    );
    const created = await admin('POST', '/admin/models', {
      name: 'team-llm',
      display_name: 'Team LLM',
      description: 'our fine-tune',
    });
    expect(created.status).toBe(201);
    expect(created.body).toMatchObject({ name: 'team-llm', display_name: 'Team LLM', source: 'admin' });
    expect((await admin('POST', '/admin/models', { name: 'team-llm' })).status).toBe(409);
    expect((await admin('POST', '/admin/models', { name: 'gpt-4o' })).status).toBe(409);

    const bad = await admin('POST', '/admin/models', { name: 42 });
    expect(bad.status).toBe(400);
    expect(bad.body.error.param).toBe('name');
    expect(bad.body.error.message).toMatch(/name must be a non-empty string/);
    const badUpstream = await admin('POST', '/admin/models', { name: 'x', upstream: 'nowhere' });
    expect(badUpstream.status).toBe(400);
    expect(badUpstream.body.error.param).toBe('upstream');
    expect(badUpstream.body.error.message).toMatch(/known upstreams: default, local/);
    const unknownField = await admin('POST', '/admin/models', { name: 'x', displayName: 'X' });
    expect(unknownField.status).toBe(400);
    expect(unknownField.body.error.param).toBe('displayName');
    expect((await admin('POST', '/admin/models', '{not json')).status).toBe(400);

    await client.chat.completions.create({ model: 'team-llm', messages: [{ role: 'user', content: 'x' }] });
    expect(up.requests).toHaveLength(1);

    const mapped = await admin('POST', '/admin/model-mappings', { alias: 'tl', actual_model: 'team-llm' });
    expect(mapped.status).toBe(201);
    expect(mapped.body).toEqual({ alias: 'tl', actual_model: 'team-llm' });
    const loop = await admin('POST', '/admin/model-mappings', { alias: 'team-llm', actual_model: 'tl' });
    expect(loop.status).toBe(400);
    expect(loop.body.error.message).toMatch(/registered model/);
    await admin('POST', '/admin/model-mappings', { alias: 'tl2', actual_model: 'tl' });
    const cycle = await admin('POST', '/admin/model-mappings', { alias: 'tl', actual_model: 'tl2' });
    expect(cycle.status).toBe(400);
    expect(cycle.body.error.message).toMatch(/loop/);
    const missingField = await admin('POST', '/admin/model-mappings', { alias: 'a' });
    expect(missingField.status).toBe(400);
    expect(missingField.body.error.param).toBe('actual_model');

    await client.chat.completions.create({ model: 'tl2', messages: [{ role: 'user', content: 'x' }] });
    expect(JSON.parse(up.requests.at(-1)!.body.toString()).model).toBe('team-llm');
    expect((await admin('GET', '/admin/models')).body.mappings).toEqual({ tl: 'team-llm', tl2: 'tl' });

    // An alias sent to the models route: 404, saying where aliases are removed.
    const wrongRoute = await admin('DELETE', '/admin/models/tl2');
    expect(wrongRoute.status).toBe(404);
    expect(wrongRoute.body.error.message).toBe(
      '"tl2" is an alias, not a model; remove it with DELETE /admin/model-mappings/tl2',
    );
    expect((await admin('DELETE', '/admin/model-mappings/tl2')).status).toBe(204);
    expect((await admin('DELETE', '/admin/model-mappings/tl2')).status).toBe(404);
    expect((await admin('DELETE', '/admin/models/team-llm')).status).toBe(204);
    expect((await admin('DELETE', '/admin/models/team-llm')).status).toBe(404);
    const gone = await client.chat.completions
      .create({ model: 'team-llm', messages: [{ role: 'user', content: 'x' }] })
      .catch((e) => e);
    expect(gone).toBeInstanceOf(NotFoundError);

    // Recorded like any exchange, with the admin key nowhere in the database or the log file.
    const rows = await p.waitForRows(10);
    const adminRows = rows.filter((r) => r.path.startsWith('/admin/'));
    expect(adminRows.map((r) => [r.method, r.path, r.status]).slice(0, 2)).toEqual([
      ['POST', '/admin/models', 201],
      ['POST', '/admin/models', 409],
    ]);
    expect(JSON.parse(adminRows[0].request_headers).authorization).toBe('[redacted]');
    expect(JSON.parse(adminRows[0].request_body!).name).toBe('team-llm');
    expect(JSON.stringify(rows)).not.toContain(ADMIN_KEY);
    p.logLines();
    expect(readFileSync(p.logPath, 'utf8')).not.toContain(ADMIN_KEY);
    expect(up.requests.some((r) => JSON.stringify(r.headers).includes(ADMIN_KEY))).toBe(false);
  });

  test('a NUL in any string field (display_name, description, upstream, name) → 400 naming it; nothing added', async () => {
    const { admin } = await setup({ ADMIN_API_KEY: ADMIN_KEY });
    for (const [body, param] of [
      [{ name: 'okname', description: 'd\u0000esc' }, 'description'],
      [{ name: 'okname', display_name: 'Ok\u0000' }, 'display_name'],
      [{ name: 'okname', upstream: 'default\u0000' }, 'upstream'],
      [{ name: 'ok\u0000name' }, 'name'],
    ] as const) {
      const res = await admin('POST', '/admin/models', body);
      expect([res.status, res.body.error.param, res.body.error.type]).toEqual([
        400,
        param,
        'invalid_request_error',
      ]);
      expect(res.body.error.message).toMatch(new RegExp(`^${param} `));
    }
    expect(
      (await admin('GET', '/admin/models')).body.models.map((m: { name: string }) => m.name),
    ).not.toContain('okname');
  });

  test('an admin body over 64 KB → 413 naming the admin limit (not MAX_REQUEST_BODY_BYTES); bad JSON → 400 not quoting it', async () => {
    const { admin, p } = await setup({ ADMIN_API_KEY: ADMIN_KEY, MAX_REQUEST_BODY_BYTES: '10000000' });
    const bigBody = JSON.stringify({ name: 'big', description: 'x'.repeat(200_000) });
    const big = await admin('POST', '/admin/models', bigBody);
    expect(big.status).toBe(413);
    expect(big.body.error).toMatchObject({ code: 'body_too_large', type: 'invalid_request_error' });
    expect(big.body.error.message).toBe(
      `Request body of ${bigBody.length} bytes exceeds the admin API's limit of 65536 bytes (64 KB, fixed)`,
    );
    // A body streamed without a length is stopped at the same limit, with the same message.
    const streamed = await new Promise<{ status: number; text: string }>((resolve, reject) => {
      const req = request(`${p.url}/admin/models`, {
        method: 'POST',
        headers: { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' },
      });
      req.on('response', (res) => {
        let text = '';
        res.on('data', (d) => (text += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
      });
      req.on('error', reject);
      req.write(`{"name":"big","description":"${'y'.repeat(100_000)}`);
    });
    expect(streamed.status).toBe(413);
    expect(JSON.parse(streamed.text).error.message).toMatch(
      /^Request body of \d+ bytes exceeds the admin API's limit of 65536 bytes \(64 KB, fixed\)$/,
    );

    const key = 'sk-pasted-SECRET-0042';
    const bad = await admin('POST', '/admin/models', `{"name": ${key}}`);
    expect(bad.status).toBe(400);
    expect(bad.body.error.message).toBe("The request body is not valid JSON: Unexpected token 's'");
    const [row] = (await p.waitForRows(3)).filter((r) => r.status === 400);
    expect(row.error_message).toBe(bad.body.error.message);
  });

  test('the admin key is never forwarded upstream, even when a client sends it as its API key', async () => {
    const { p, up } = await setup({ ADMIN_API_KEY: ADMIN_KEY });
    const asBearer = await fetch(`${p.url}/v1/files`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } });
    const asApiKey = await fetch(`${p.url}/v1/files`, { headers: { 'api-key': ADMIN_KEY } });
    expect([asBearer.status, asApiKey.status]).toEqual([404, 404]); // the fake upstream's answer
    expect(up.requests).toHaveLength(2);
    for (const r of up.requests) {
      expect(r.headers.authorization).toBeUndefined();
      expect(r.headers['api-key']).toBeUndefined();
    }
    // Any other client key still passes through (no upstream key is configured here).
    await fetch(`${p.url}/v1/files`, { headers: { authorization: 'Bearer sk-someone-else-1234567' } });
    expect(up.requests[2].headers.authorization).toBe('Bearer sk-someone-else-1234567');
  });

  test('the admin key in any other header (x-api-key, a custom one) is not forwarded upstream, nor recorded', async () => {
    const { p, up } = await setup({ ADMIN_API_KEY: ADMIN_KEY });
    const res = await fetch(`${p.url}/v1/files`, {
      headers: {
        authorization: 'Bearer sk-client-own-key-1234567',
        'x-api-key': ADMIN_KEY,
        'x-custom-token': `Bearer ${ADMIN_KEY}`,
        'x-trace': 'kept',
      },
    });
    expect(res.status).toBe(404); // the fake upstream's answer
    expect(up.requests).toHaveLength(1);
    const sent = up.requests[0].headers;
    expect(JSON.stringify(sent)).not.toContain(ADMIN_KEY);
    expect(sent['x-api-key']).toBeUndefined();
    expect(sent['x-custom-token']).toBeUndefined();
    // The client's own key and its other headers still pass through.
    expect(sent.authorization).toBe('Bearer sk-client-own-key-1234567');
    expect(sent['x-trace']).toBe('kept');
    const [row] = await p.waitForRows(1);
    expect(JSON.parse(row.request_headers)).toMatchObject({ 'x-api-key': '[redacted]', 'x-trace': 'kept' });
    expect(JSON.stringify(row)).not.toContain(ADMIN_KEY);
    p.logLines();
    expect(readFileSync(p.logPath, 'utf8')).not.toContain(ADMIN_KEY);
  });

  test('POST /admin/reload-config applies a changed config file; an invalid one keeps the old registry', async () => {
    const { admin, client, configFile, up } = await setup(
      { ADMIN_API_KEY: ADMIN_KEY, VALIDATE_MODELS: 'true' },
      { availableModels: ['gpt-4o'], modelMappings: { fast: 'gpt-4o' } },
    );
    expect((await admin('GET', '/admin/models')).body.models.map((m: any) => m.name)).toEqual(['gpt-4o']);
    await admin('POST', '/admin/models', { name: 'kept' });

    writeFileSync(
      configFile,
      JSON.stringify({
        availableModels: ['gpt-4o', 'llama3'],
        modelMappings: { quick: 'llama3' },
        upstreams: { local: { baseUrl: up.baseUrl, apiKey: 'sk-local-key-123456' } },
        models: [{ name: 'llama3', upstream: 'local' }],
      }),
    );
    const reloaded = await admin('POST', '/admin/reload-config');
    expect(reloaded.status).toBe(200);
    expect(reloaded.body.models.map((m: any) => [m.name, m.upstream, m.source])).toEqual([
      ['gpt-4o', null, 'config'],
      ['kept', null, 'admin'],
      ['llama3', 'local', 'config'],
    ]);
    expect(reloaded.body.mappings).toEqual({ quick: 'llama3' });
    expect(reloaded.body.upstreams).toEqual(['default', 'local']);
    await client.chat.completions.create({ model: 'quick', messages: [{ role: 'user', content: 'x' }] });
    expect(up.requests.at(-1)!.headers.authorization).toBe('Bearer sk-local-key-123456');

    writeFileSync(configFile, JSON.stringify({ models: [{ name: 'x', upstream: 'nope' }] }));
    const refused = await admin('POST', '/admin/reload-config');
    expect(refused.status).toBe(400);
    expect(refused.body.error.message).toMatch(/previous one stays in force.*upstream "nope"/);
    writeFileSync(configFile, '{ broken');
    expect((await admin('POST', '/admin/reload-config')).status).toBe(400);
    expect((await admin('GET', '/admin/models')).body.mappings).toEqual({ quick: 'llama3' });
  });

  test('reload-config names what seeding skipped in `warnings`: a configured model or alias a user entry stands in the way of', async () => {
    const { admin, configFile } = await setup({ ADMIN_API_KEY: ADMIN_KEY }, { availableModels: ['gpt-4o'] });
    expect(
      (await admin('POST', '/admin/model-mappings', { alias: 'llama3', actual_model: 'gpt-4o' })).status,
    ).toBe(201);
    expect((await admin('POST', '/admin/models', { name: 'fast' })).status).toBe(201);
    writeFileSync(
      configFile,
      JSON.stringify({ availableModels: ['gpt-4o', 'llama3'], modelMappings: { fast: 'gpt-4o' } }),
    );
    const reloaded = await admin('POST', '/admin/reload-config');
    expect(reloaded.status).toBe(200);
    expect(reloaded.body.models.map((m: any) => m.name)).toEqual(['fast', 'gpt-4o']);
    expect(reloaded.body.mappings).toEqual({ llama3: 'gpt-4o' });
    expect(reloaded.body.warnings).toEqual([
      expect.stringMatching(
        /Model "llama3" from the configuration was not added: a user made "llama3" an alias; .*models unmap llama3/,
      ),
      expect.stringMatching(/MODEL_MAPPINGS fast → gpt-4o was not applied: "fast" is a registered model/),
    ]);
  });

  test('reload-config of a file with a bad client key list or header map: the 400, the row and the log never hold the keys', async () => {
    const CLIENT_KEY = 'brand-new-client-key-QQQQ1111';
    const HEADER_SECRET = 'sk-upstream-SECRET-9999';
    const { admin, configFile, p } = await setup({}, { adminApiKey: ADMIN_KEY });
    for (const [file, says] of [
      [
        { adminApiKey: ADMIN_KEY, proxyApiKeys: [CLIENT_KEY, 7] },
        `"proxyApiKeys" in config file ${configFile}: expected an array of strings; element [1] is a number`,
      ],
      // Client auth would have gone off: refused, the keys in force kept.
      [
        { adminApiKey: ADMIN_KEY, proxyApiKeys: [CLIENT_KEY, ''] },
        `"proxyApiKeys" in config file ${configFile}, proxyApiKeys[1]: expected a client key; it is empty`,
      ],
      [
        {
          adminApiKey: ADMIN_KEY,
          upstreams: {
            u: {
              baseUrl: 'http://127.0.0.1:9',
              headers: { Authorization: `Bearer ${HEADER_SECRET}`, 'x-retries': 3 },
            },
          },
        },
        'upstreams.u.headers: expected a JSON object of strings such as {"x-header":"value"}; "x-retries" is a number',
      ],
    ] as const) {
      writeFileSync(configFile, JSON.stringify(file));
      const refused = await admin('POST', '/admin/reload-config');
      expect(refused.status).toBe(400);
      expect(refused.body.error.message).toContain(says);
    }
    const rows = (await p.waitForRows(3)).filter((r) => r.path === '/admin/reload-config');
    expect(rows.map((r) => r.status)).toEqual([400, 400, 400]);
    expect(rows[0].error_message).toContain('element [1] is a number');
    const seen = JSON.stringify([rows, p.logLines(), p.stderr()]);
    expect(seen).not.toContain(CLIENT_KEY);
    expect(seen).not.toContain(HEADER_SECRET);
  });

  test('reload-config applies client keys, CORS origins and the body limit at once; restart-only changes are listed', async () => {
    const K1 = 'k1-aaaaaaaa-old-client-key';
    const K9 = 'k9-zzzzzzzz-new-client-key';
    const { admin, configFile, up, p } = await setup(
      {},
      { adminApiKey: ADMIN_KEY, proxyApiKeys: [K1], corsOrigins: ['http://a.example'] },
    );
    const sdk = (apiKey: string) => new OpenAI({ apiKey, baseURL: `${p.url}/v1`, maxRetries: 0 });
    const chat = (apiKey: string, content = 'hi') =>
      sdk(apiKey).chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content }] });
    const models = (origin: string) =>
      fetch(`${p.url}/v1/models`, { headers: { authorization: `Bearer ${K9}`, origin } });
    await chat(K1);
    await expect(chat(K9)).rejects.toBeInstanceOf(AuthenticationError);

    writeFileSync(
      configFile,
      JSON.stringify({
        adminApiKey: ADMIN_KEY,
        proxyApiKeys: [K9],
        corsOrigins: ['http://b.example'],
        maxRequestBodyBytes: 2000,
        clientBodyTimeoutMs: 250,
        upstreamHeadersTimeoutMs: 1234,
        logMaxFiles: 3,
      }),
    );
    const reloaded = await admin('POST', '/admin/reload-config');
    expect(reloaded.status).toBe(200);
    expect(reloaded.body.status).toBe('reloaded');
    expect(reloaded.body.restart_required).toEqual(['logMaxFiles', 'upstreamHeadersTimeoutMs']);

    // The revoked key is refused right away; the new one works.
    const revoked = chat(K1);
    await expect(revoked).rejects.toBeInstanceOf(AuthenticationError);
    await expect(revoked).rejects.toMatchObject({ status: 401, code: 'invalid_api_key' });
    const before = up.requests.length;
    // A prompt quoting the replaced key: it is still scrubbed from the record.
    expect((await chat(K9, `old key ${K1}`)).choices.length).toBeGreaterThan(0);
    expect(up.requests.length).toBe(before + 1);
    expect(up.requests.at(-1)!.headers.authorization).toBeUndefined();

    const allowed = await models('http://b.example');
    expect(allowed.status).toBe(200);
    expect(allowed.headers.get('access-control-allow-origin')).toBe('http://b.example');
    expect((await models('http://a.example')).headers.get('access-control-allow-origin')).toBeNull();

    const big = await sdk(K9)
      .chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'x'.repeat(3000) }] })
      .catch((err) => err);
    expect(big.status).toBe(413);
    expect(big.error.message).toMatch(/exceeds the proxy's limit of 2000 bytes \(MAX_REQUEST_BODY_BYTES\)/);
    // The new client body timeout applies from the next request: a body that stalls gets its 408.
    const stalled = await rawHttp(
      p.url,
      `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${K9}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"model":`,
      5000,
    );
    expect(stalled.statuses).toEqual([408]);
    expect(firstBody(stalled).error.message).toContain('for 250 ms (CLIENT_BODY_TIMEOUT_MS)');

    expect(reloaded.body.warnings).toEqual([]);

    // Put back: nothing left to restart for. A typo in the file is a warning in the answer.
    writeFileSync(
      configFile,
      JSON.stringify({
        adminApiKey: ADMIN_KEY,
        proxyApiKeys: [K9],
        corsOrigins: ['http://b.example'],
        validatModels: true,
      }),
    );
    const putBack = await admin('POST', '/admin/reload-config');
    expect(putBack.body.restart_required).toEqual([]);
    expect(putBack.body.warnings).toEqual([
      expect.stringMatching(/"validatModels".*did you mean "validateModels"/),
    ]);
    const rows = await p.waitForRows(9);
    expect(rows.filter((r) => r.path === '/v1/chat/completions').map((r) => r.status)).toEqual([
      200, 401, 401, 200, 413, 408,
    ]);
    expect(JSON.stringify([rows, p.logLines()])).not.toContain(K1);
  });

  test('client keys a reload removed are never forwarded upstream, even once PROXY_API_KEYS is empty', async () => {
    const K1 = 'k1-aaaaaaaa-retired-client-key';
    const { admin, configFile, up, p } = await setup({}, { adminApiKey: ADMIN_KEY, proxyApiKeys: [K1] });
    writeFileSync(configFile, JSON.stringify({ adminApiKey: ADMIN_KEY }));
    expect((await admin('POST', '/admin/reload-config')).status).toBe(200);
    // No client keys now: a client's own key is forwarded, but not the proxy key it still sends.
    const stale = new OpenAI({
      apiKey: K1,
      baseURL: `${p.url}/v1`,
      maxRetries: 0,
      defaultHeaders: { 'x-api-key': K1 },
    });
    await stale.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] });
    const own = new OpenAI({ apiKey: 'sk-client-own-1234567890', baseURL: `${p.url}/v1`, maxRetries: 0 });
    await own.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] });
    expect(up.requests.map((r) => [r.headers.authorization, r.headers['x-api-key']])).toEqual([
      [undefined, undefined],
      ['Bearer sk-client-own-1234567890', undefined],
    ]);
  });

  test('GET /health names the upstream a reload switched to, where requests now go', async () => {
    const { admin, client, configFile, up, p } = await setup(
      { OPENAI_BASE_URL: '' },
      { adminApiKey: ADMIN_KEY, openaiBaseUrl: 'http://127.0.0.1:9/v1' },
    );
    const health = async () => (await (await fetch(`${p.url}/health`)).json()).upstream;
    expect(await health()).toBe('http://127.0.0.1:9/v1');
    writeFileSync(configFile, JSON.stringify({ adminApiKey: ADMIN_KEY, openaiBaseUrl: up.baseUrl }));
    expect((await admin('POST', '/admin/reload-config')).status).toBe(200);
    await client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] });
    expect(up.requests).toHaveLength(1);
    expect(await health()).toBe(up.baseUrl);
  });

  test('after reload-config, the keys it brings are scrubbed from records and the new admin key is never forwarded', async () => {
    const OLD_ADMIN = 'admin-key-old-0123456789abcdef';
    const NEW_ADMIN = 'admin-key-new-0123456789abcdef';
    const LOCAL_KEY = 'sk-local-key-reloaded-987654';
    const { admin, client, configFile, up, p } = await setup({}, { adminApiKey: OLD_ADMIN });
    writeFileSync(
      configFile,
      JSON.stringify({
        adminApiKey: NEW_ADMIN,
        upstreams: { local: { baseUrl: up.baseUrl, apiKey: LOCAL_KEY } },
      }),
    );
    expect((await admin('POST', '/admin/reload-config', undefined, OLD_ADMIN)).status).toBe(200);
    // A key pasted into a prompt is not recorded.
    await client.chat.completions.create({
      model: 'gpt-4o',
      messages: [{ role: 'user', content: `key ${LOCAL_KEY}` }],
    });
    // A client presenting the new admin key as its API key: the key stays here.
    const asAdmin = new OpenAI({ apiKey: NEW_ADMIN, baseURL: `${p.url}/v1`, maxRetries: 0 });
    await asAdmin.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] });
    expect(up.requests.at(-1)!.headers.authorization).toBeUndefined();
    const rows = (await p.waitForRows(2)).filter((r) => r.path === '/v1/chat/completions');
    expect(rows).toHaveLength(2);
    const stored = JSON.stringify(rows);
    expect(String(up.requests.at(-2)!.body)).toContain(LOCAL_KEY); // it did reach the upstream
    expect(stored).not.toContain(LOCAL_KEY);
    expect(stored).not.toContain(NEW_ADMIN);
    expect(rows[0].request_body).toContain('[redacted]');
  });
});
