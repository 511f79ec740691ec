import { type ChildProcess, spawn } from 'node:child_process';
import { statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import OpenAI from 'openai';
import { afterEach, expect, test } from 'vitest';
import { fillDisk } from '../helpers/disk-full.js';
import { createFakeUpstream, sleep } from '../helpers/fake-upstream.js';
import { findLeaks, readProxyFiles } from '../helpers/secret-scan.js';
import { createTempDir } from '../helpers/temp-dir.js';
import { startTestProxy } from '../helpers/test-proxy.js';

const UPSTREAM_KEY = 'sk-proj-SECRETupstreamKEY0001';
const NAMED_KEY = 'sk-named-SECRETupstreamKEY0002';
const ADMIN_KEY = 'adm-SECRETadminKEY0003';
const CLIENT_KEYS = ['pk-SECRETclientKEY0004', 'pk-SECRETclientKEY0005'];
const ALL = [UPSTREAM_KEY, NAMED_KEY, ADMIN_KEY, ...CLIENT_KEYS];
const BIN = join(import.meta.dirname, '../../bin/oai-proxy.js');

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

test('the scanner finds a key planted in an SQLite page, a log line or console text (so it can fail)', () => {
  const tmp = createTempDir();
  cleanups.push(tmp.cleanup);
  const db = new Database(join(tmp.path, 'x.db'));
  db.exec('create table t (v text)');
  db.prepare('insert into t values (?)').run(`{"authorization":"Bearer ${UPSTREAM_KEY}"}`);
  db.close();
  writeFileSync(join(tmp.path, 'x.log'), `{"msg":"oops ${ADMIN_KEY}"}\n`);
  const leaks = findLeaks(ALL, { ...readProxyFiles(tmp.path), stderr: `client ${CLIENT_KEYS[1]}` });
  expect(leaks.map((l) => l.where.replace(tmp.path, ''))).toEqual(['/x.db', '/x.log', 'stderr']);
});

test('every flow that carries a key leaves no trace of it: database, log file, console, proxy error messages', async () => {
  const upstream = await createFakeUpstream();
  cleanups.push(() => upstream.close());
  // An upstream that echoes what it got (headers, body) and answers errors quoting the key, as OpenAI does.
  upstream.on('/v1/chat/completions', (req, res, body) => {
    const auth = String(req.headers.authorization ?? '');
    if (body.includes('please-401')) {
      res.writeHead(401, { 'content-type': 'application/json', 'x-echo-auth': auth });
      res.end(
        JSON.stringify({
          error: {
            message: `Incorrect API key provided: ${auth.slice(7)}`,
            type: 'invalid_request_error',
            param: null,
            code: 'invalid_api_key',
          },
        }),
      );
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json', 'x-echo-auth': auth });
    res.end(
      JSON.stringify({
        echoed_headers: req.headers,
        echoed_body: body.toString(),
        usage: { total_tokens: 1 },
      }),
    );
  });
  const cfgDir = createTempDir();
  cleanups.push(cfgDir.cleanup);
  const configPath = join(cfgDir.path, 'config.json');
  writeFileSync(
    configPath,
    JSON.stringify({
      upstreams: {
        named: { baseUrl: upstream.baseUrl, apiKey: NAMED_KEY },
        gone: { baseUrl: 'http://127.0.0.1:9/v1', apiKey: NAMED_KEY },
      },
      models: [
        { name: 'named-model', upstream: 'named' },
        { name: 'gone-model', upstream: 'gone' },
      ],
    }),
  );
  const proxy = await startTestProxy({
    OAI_PROXY_CONFIG: configPath,
    OPENAI_BASE_URL: upstream.baseUrl,
    OPENAI_API_KEY: UPSTREAM_KEY,
    ADMIN_API_KEY: ADMIN_KEY,
    PROXY_API_KEYS: CLIENT_KEYS.join(','),
    MAX_REQUEST_BODY_BYTES: '5000',
    LOG_LEVEL: 'debug',
    LOG_QUEUE_MAX: '100',
  });
  let closed = false;
  cleanups.push(() => !closed && proxy.close());
  const proxyErrors: string[] = [];
  const call = async (path: string, init: RequestInit & { headers?: Record<string, string> } = {}) => {
    const res = await fetch(`${proxy.url}${path}`, init);
    const text = await res.text();
    // the proxy's own answers (upstream answers carry the fake's x-request-id)
    if (res.status >= 400 && !res.headers.get('x-request-id') && !res.headers.get('x-echo-auth'))
      proxyErrors.push(text);
    return { status: res.status, text };
  };
  const json = (key: string, body: unknown) => ({
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
    body: JSON.stringify(body),
  });

  // normal traffic with a client key; keys pasted into prompts, custom headers, the query and the path
  const client = new OpenAI({
    apiKey: CLIENT_KEYS[0],
    baseURL: `${proxy.url}/v1`,
    maxRetries: 0,
    defaultHeaders: { 'x-debug-key': UPSTREAM_KEY },
  });
  await client.chat.completions.create({
    model: 'gpt-4o',
    messages: [{ role: 'user', content: `my keys: ${ALL.join(' ')}` }],
  });
  await client.chat.completions.create({ model: 'named-model', messages: [] });
  expect(
    (await call(`/v1/chat/completions?api-key=${UPSTREAM_KEY}`, json(CLIENT_KEYS[1], { model: 'gpt-4o' })))
      .status,
  ).toBe(200);
  await call(`/v1/files/${ADMIN_KEY}`, { headers: { authorization: `Bearer ${CLIENT_KEYS[1]}` } });
  // the upstream rejects and quotes the key it got
  expect(
    (await call('/v1/chat/completions', json(CLIENT_KEYS[0], { model: 'gpt-4o', x: 'please-401' }))).status,
  ).toBe(401);
  // wrong or misplaced keys: the proxy's own 401s
  for (const k of [UPSTREAM_KEY, ADMIN_KEY, `${CLIENT_KEYS[0]}x`]) {
    expect((await call('/v1/chat/completions', json(k, { model: 'gpt-4o' }))).status).toBe(401);
  }
  expect(
    (await call('/admin/models', { headers: { authorization: `Bearer ${CLIENT_KEYS[0]}` } })).status,
  ).toBe(401);
  expect((await call('/admin/models', { headers: { authorization: `Bearer ${ADMIN_KEY}` } })).status).toBe(
    200,
  );
  expect(
    (
      await call('/admin/reload-config', {
        method: 'POST',
        headers: { authorization: `Bearer ${ADMIN_KEY}` },
      })
    ).status,
  ).toBe(200);
  // proxy errors: unreachable named upstream (502), body too large (413), bad path (400), bad model (404)
  expect((await call('/v1/chat/completions', json(CLIENT_KEYS[0], { model: 'gone-model' }))).status).toBe(
    502,
  );
  expect(
    (
      await call(
        '/v1/chat/completions',
        json(CLIENT_KEYS[0], { model: 'gpt-4o', pad: UPSTREAM_KEY.repeat(300) }),
      )
    ).status,
  ).toBe(413);
  expect(
    (await call(`/v1/%2e%2e%2f${UPSTREAM_KEY}`, { headers: { authorization: `Bearer ${CLIENT_KEYS[0]}` } }))
      .status,
  ).toBe(400);
  // the database fails for a while: errors logged, rows spilled to the log file with their bodies
  const full = fillDisk(proxy.dbPath);
  for (let i = 0; i < 120; i++) {
    await call(
      '/v1/chat/completions',
      json(CLIENT_KEYS[0], {
        model: 'gpt-4o',
        messages: [{ role: 'user', content: `${UPSTREAM_KEY} ${'y'.repeat(2000)}` }],
      }),
    );
  }
  await sleep(300);
  const lines = await proxy.waitForLogLines((ls) => ls.some((l) => l.spilled_exchange));
  expect(lines.some((l) => l.spilled_exchange)).toBe(true);
  full.free();
  await sleep(300);

  expect(proxyErrors.length).toBeGreaterThanOrEqual(7);
  expect(findLeaks(ALL, Object.fromEntries(proxyErrors.map((e, i) => [`proxy error ${i}`, e])))).toEqual([]);
  // the stored record still shows where a key was (redacted), not nothing
  expect(proxy.rows().some((r) => r.request_body?.includes('[redacted]'))).toBe(true);
  // files the proxy created hold prompts: 0600
  for (const f of [proxy.dbPath, `${proxy.dbPath}-wal`, `${proxy.dbPath}-shm`, proxy.logPath]) {
    expect([f, statSync(f).mode & 0o777]).toEqual([f, 0o600]);
  }
  // closing scans the database, WAL, log file and console output for every configured key and throws on any
  closed = true;
  await proxy.close();
});

test('the built bin at LOG_LEVEL=debug: console output, log file and database hold no key', {
  timeout: 30_000,
}, async () => {
  const tmp = createTempDir();
  cleanups.push(tmp.cleanup);
  const upstream = await createFakeUpstream();
  cleanups.push(() => upstream.close());
  const dbPath = join(tmp.path, 'bin.db');
  const child: ChildProcess = spawn(
    process.execPath,
    [BIN, 'serve', '--port', '0', '--db', dbPath, '--upstream', upstream.baseUrl],
    {
      env: {
        PATH: process.env.PATH ?? '',
        HOME: tmp.path,
        LOG_LEVEL: 'debug',
        OPENAI_API_KEY: UPSTREAM_KEY,
        ADMIN_API_KEY: ADMIN_KEY,
        PROXY_API_KEYS: CLIENT_KEYS.join(','),
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  cleanups.push(() => child.exitCode === null && child.kill('SIGKILL'));
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (out += d));
  let url = '';
  for (let i = 0; i < 300 && !url; i++) {
    url = /listening on (http:\/\/[^\s]+)/.exec(out)?.[1] ?? '';
    await sleep(20);
  }
  expect(url).not.toBe('');
  const client = new OpenAI({ apiKey: CLIENT_KEYS[1], baseURL: `${url}/v1`, maxRetries: 0 });
  await client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] });
  const stream = await client.chat.completions.create({ model: 'gpt-4o', messages: [], stream: true });
  for await (const _ of stream) {
    // drain
  }
  await fetch(`${url}/v1/models`, { headers: { authorization: `Bearer ${UPSTREAM_KEY}` } });
  await fetch(`${url}/admin/models`, { headers: { authorization: `Bearer ${CLIENT_KEYS[0]}` } });
  const exited = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
  child.kill('SIGTERM');
  expect(await exited).toBe(0);
  expect(out).toContain('stopped;');
  const texts = { ...readProxyFiles(tmp.path), console: out };
  expect(Object.keys(texts).some((k) => k.endsWith('oai-proxy.log'))).toBe(true);
  expect(findLeaks(ALL, texts)).toEqual([]);
  expect(out).toContain('sk-…0001'); // the banner shows the upstream key masked
});

test("the proxy's own answers are recorded with secret headers redacted, whatever the case of their names", async () => {
  // An own route (as the admin API and /models are) answering with a capitalised secret header.
  const proxy = await startTestProxy(
    {},
    {
      routes: [
        (x) => {
          if (x.rest !== '/own-answer') return false;
          x.respondJson(200, { ok: true }, { 'Set-Cookie': 'session=SECRETcookie0006', 'X-Extra': 'kept' });
          return true;
        },
      ],
    },
  );
  cleanups.push(() => proxy.close());
  const res = await fetch(`${proxy.url}/v1/own-answer`);
  expect(res.status).toBe(200);
  expect(res.headers.get('set-cookie')).toBe('session=SECRETcookie0006');
  const [row] = await proxy.waitForRows(1);
  expect(row.response_headers).not.toContain('SECRETcookie0006');
  expect(JSON.parse(row.response_headers ?? '{}')).toMatchObject({
    'set-cookie': '[redacted]',
    'x-extra': 'kept',
  });
});
