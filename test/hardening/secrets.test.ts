import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import OpenAI from 'openai';
import { afterEach, expect, test } from 'vitest';
import { main } from '../../src/cli.js';
import { bearerToken } from '../../src/proxy/capture.js';
import { indexPendingExchanges } from '../../src/storage/search-index.js';
import { fillDisk } from '../helpers/disk-full.js';
import { chatCompletionBody, createFakeUpstream, sleep } from '../helpers/fake-upstream.js';
import { createTestPgDatabase, pgQuery, pgUrl, warnIfNoPg } from '../helpers/pg.js';
import { deltaLeaks, findLeaks, readProxyFiles } from '../helpers/secret-scan.js';
import { createTempDir } from '../helpers/temp-dir.js';
import { createTestIo, startTestProxy } from '../helpers/test-proxy.js';

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

test('a streamed answer echoing keys is recorded with them redacted: assembled text, logs show, --grep, log file', async () => {
  const upstreamKey = 'sk-test-SECRET1234';
  const clientKey = 'client-KEY-5678';
  const upstream = await createFakeUpstream();
  cleanups.push(() => upstream.close());
  // Echoes the prompt as a stream of 4-character deltas, so each key arrives split across several events.
  const pieces = (text: string) => text.match(/.{1,4}/g) ?? [];
  upstream.on('/v1/chat/completions', (_req, res, body) => {
    const prompt = JSON.parse(body.toString()).messages[0].content as string;
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    // Two choices (`n: 2`): the second is reassembled too, so it is scrubbed too.
    for (const p of pieces(prompt))
      for (const index of [0, 1])
        res.write(
          `data: ${JSON.stringify({ object: 'chat.completion.chunk', choices: [{ index, delta: { content: p }, finish_reason: null }] })}\n\n`,
        );
    res.write(
      `data: ${JSON.stringify({ object: 'chat.completion.chunk', choices: [{ index: 0, delta: { tool_calls: [{ index: 0, id: 'call_1', type: 'function', function: { name: 'lookup', arguments: JSON.stringify({ q: prompt }) } }] }, finish_reason: 'tool_calls' }] })}\n\n`,
    );
    res.end('data: [DONE]\n\n');
  });
  upstream.on('/v1/responses', (_req, res, body) => {
    const prompt = JSON.parse(body.toString()).input as string;
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    const event = (type: string, data: Record<string, unknown>) =>
      res.write(`event: ${type}\ndata: ${JSON.stringify({ type, ...data })}\n\n`);
    for (const p of pieces(prompt)) event('response.output_text.delta', { delta: p });
    event('response.output_item.added', {
      output_index: 1,
      item: { type: 'function_call', id: 'fc_1', call_id: 'call_2', name: 'lookup', arguments: '' },
    });
    for (const p of pieces(JSON.stringify({ q: prompt })))
      event('response.function_call_arguments.delta', { item_id: 'fc_1', delta: p });
    event('response.completed', { response: { status: 'completed' } });
    res.end();
  });
  const proxy = await startTestProxy({
    OPENAI_BASE_URL: upstream.baseUrl,
    OPENAI_API_KEY: upstreamKey,
    PROXY_API_KEYS: clientKey,
  });
  cleanups.push(() => proxy.close());
  const prompt = `x ${upstreamKey} y ${clientKey}`;
  const client = new OpenAI({ apiKey: clientKey, baseURL: `${proxy.url}/v1`, maxRetries: 0 });
  let answer = '';
  const chat = await client.chat.completions.create({
    model: 'gpt-4o',
    stream: true,
    user: `user ${upstreamKey}`,
    messages: [{ role: 'user', content: prompt }],
  });
  for await (const c of chat)
    for (const ch of c.choices) if (ch.index === 0) answer += ch.delta?.content ?? '';
  expect(answer).toBe(prompt); // the client gets the stream untouched
  const responses = await client.responses.create({ model: 'gpt-4o', stream: true, input: prompt });
  for await (const _ of responses) {
    // drain
  }

  const rows = await proxy.waitForRows(2);
  const expected = 'x [redacted] y [redacted]';
  const assembled = rows.map((r) => JSON.parse(r.assembled ?? 'null'));
  expect(assembled.map((a) => a.content)).toEqual([expected, expected]);
  expect(assembled[0].choices.map((c: { content: string }) => c.content)).toEqual([expected, expected]);
  expect(assembled.map((a) => a.tool_calls[0].arguments)).toEqual([
    JSON.stringify({ q: expected }),
    JSON.stringify({ q: expected }),
  ]);
  expect(rows[0].user).toBe('user [redacted]');
  for (const r of rows) expect(JSON.stringify(r)).not.toMatch(/SECRET1234|KEY-5678/);
  // The events split the keys ("x sk", "-tes", "t-SE"…): joined, they would give them back whole, so the
  // stored body is a placeholder, and no pair of neighbouring deltas is left in any field.
  for (const r of rows) {
    expect(r.response_body).toBe(
      `[stream events withheld: the reassembled message held a key, redacted there; ${r.response_bytes} bytes]`,
    );
    expect(r.response_bytes).toBeGreaterThan(500);
    expect(deltaLeaks([upstreamKey, clientKey], r.response_body)).toEqual([]);
  }

  // What `logs` prints: the record, and no match for a key (serve's background job indexes the rows)
  indexPendingExchanges(proxy.running.database.sqlite, 1000);
  const logs = async (...argv: string[]) => {
    const io = createTestIo({}, proxy.dir);
    expect(await main(['logs', ...argv, '--db', proxy.dbPath], io), io.err()).toBe(0);
    return io.out();
  };
  for (const r of rows) {
    const shown = JSON.parse(await logs('show', r.id, '--json'));
    expect(shown.assembled.content).toBe(expected);
    expect(JSON.stringify(shown)).not.toMatch(/SECRET1234|KEY-5678/);
  }
  expect(JSON.parse(await logs('--grep', 'SECRET1234', '--json'))).toEqual([]);
  expect(JSON.parse(await logs('--grep', 'KEY-5678', '--json'))).toEqual([]);
  expect(JSON.parse(await logs('--grep', 'redacted', '--json'))).toHaveLength(2);
  expect(await logs('export', '--format', 'csv')).not.toMatch(/SECRET1234|KEY-5678/);
  const lines = await proxy.waitForLogLines((ls) => ls.filter((l) => l.path).length >= 2);
  expect(lines.filter((l) => l.path === '/v1/chat/completions')).toHaveLength(1);
  expect(readFileSync(proxy.logPath, 'utf8')).not.toMatch(/SECRET1234|KEY-5678/);
});

test('a key split across reasoning or refusal deltas (not in the reassembled message) withholds the events too', async () => {
  const upstreamKey = 'sk-test-SECRETREASON1234';
  const upstream = await createFakeUpstream();
  cleanups.push(() => upstream.close());
  const pieces = (text: string) => text.match(/.{1,4}/g) ?? [];
  const reasoning = `the key is ${upstreamKey}, not to be repeated`;
  // DeepSeek/vLLM put reasoning in `reasoning_content`; the answer itself holds no key.
  upstream.on('/v1/chat/completions', (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    for (const p of pieces(reasoning))
      res.write(`data: ${JSON.stringify({ choices: [{ index: 0, delta: { reasoning_content: p } }] })}\n\n`);
    res.write(
      `data: ${JSON.stringify({ choices: [{ index: 0, delta: { content: 'fine' }, finish_reason: 'stop' }] })}\n\n`,
    );
    res.end('data: [DONE]\n\n');
  });
  upstream.on('/v1/responses', (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    const event = (type: string, data: Record<string, unknown>) =>
      res.write(`event: ${type}\ndata: ${JSON.stringify({ type, ...data })}\n\n`);
    for (const p of pieces(reasoning))
      event('response.reasoning_summary_text.delta', { item_id: 'rs_1', summary_index: 0, delta: p });
    event('response.output_text.delta', { delta: 'fine' });
    event('response.completed', { response: { status: 'completed' } });
    res.end();
  });
  const proxy = await startTestProxy({ OPENAI_BASE_URL: upstream.baseUrl, OPENAI_API_KEY: upstreamKey });
  cleanups.push(() => proxy.close());
  const client = new OpenAI({ apiKey: 'client-key', baseURL: `${proxy.url}/v1`, maxRetries: 0 });
  const chat = await client.chat.completions.create({ model: 'deepseek-r1', stream: true, messages: [] });
  for await (const _ of chat) {
    // drain
  }
  const responses = await client.responses.create({ model: 'o4-mini', stream: true, input: 'x' });
  for await (const _ of responses) {
    // drain
  }
  const rows = await proxy.waitForRows(2);
  for (const r of rows) {
    expect(JSON.parse(r.assembled ?? 'null').content).toBe('fine');
    expect(r.response_body).toBe(
      `[stream events withheld: its reasoning, refusal, transcript or tool input deltas, which the reassembled message does not keep, held a key; ${r.response_bytes} bytes]`,
    );
  }
});

test("a client's key split across any Responses text delta or a chat audio transcript withholds the events", async () => {
  const clientKey = 'sk-proj-abcdefghijklmnopSPLIT0042';
  const [head, tail] = [clientKey.slice(0, 15), clientKey.slice(15)];
  // The deltas the reassembled message does not keep, and where each event says what it belongs to.
  const types: [string, Record<string, unknown>][] = [
    ['response.audio.transcript.delta', {}],
    ['response.custom_tool_call_input.delta', { item_id: 'ctc_1', output_index: 0 }],
    ['response.code_interpreter_call_code.delta', { item_id: 'ci_1', output_index: 0 }],
    ['response.mcp_call_arguments.delta', { item_id: 'mcp_1', output_index: 0 }],
    ['response.reasoning_summary_text.delta', { item_id: 'rs_1', output_index: 0, summary_index: 0 }],
    ['response.reasoning_text.delta', { item_id: 'rs_1', output_index: 0, content_index: 0 }],
    ['response.refusal.delta', { item_id: 'msg_1', output_index: 0, content_index: 0 }],
  ];
  const upstream = await createFakeUpstream();
  cleanups.push(() => upstream.close());
  // Each answer quotes the key it got, split in two deltas: `…sk-proj-abcdefg` + `hijklmnop…`.
  upstream.on('/v1/responses', (req, res, body) => {
    const key = bearerToken(req.headers.authorization) ?? '';
    const type = JSON.parse(body.toString()).input as string;
    const extra = types.find(([t]) => t === type)?.[1];
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    const event = (t: string, data: Record<string, unknown>) =>
      res.write(`event: ${t}\ndata: ${JSON.stringify({ type: t, ...data })}\n\n`);
    event(type, { ...extra, delta: `your key: ${key.slice(0, 15)}` });
    event(type, { ...extra, delta: `${key.slice(15)} (quoted)` });
    event('response.output_text.delta', { item_id: 'msg_2', output_index: 1, content_index: 0, delta: 'ok' });
    event('response.completed', { response: { status: 'completed' } });
    res.end();
  });
  // gpt-4o-audio: the spoken answer's text comes as `delta.audio.transcript`, its content is null.
  upstream.on('/v1/chat/completions', (req, res) => {
    const key = bearerToken(req.headers.authorization) ?? '';
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    const chunk = (delta: Record<string, unknown>) =>
      res.write(
        `data: ${JSON.stringify({ object: 'chat.completion.chunk', choices: [{ index: 0, delta, finish_reason: null }] })}\n\n`,
      );
    chunk({
      role: 'assistant',
      content: null,
      audio: { id: 'audio_1', transcript: `it is ${key.slice(0, 15)}` },
    });
    chunk({ audio: { transcript: key.slice(15), data: 'UklGRg==' } });
    res.end('data: [DONE]\n\n');
  });
  // the default setup: no OPENAI_API_KEY, the client's key goes upstream
  const proxy = await startTestProxy({ OPENAI_BASE_URL: upstream.baseUrl });
  cleanups.push(() => proxy.close());
  const client = new OpenAI({ apiKey: clientKey, baseURL: `${proxy.url}/v1`, maxRetries: 0 });
  for (const [type] of types) {
    let seen = '';
    for await (const ev of await client.responses.create({ model: 'gpt-5', stream: true, input: type }))
      if (ev.type === type) seen += (ev as { delta: string }).delta;
    expect(seen).toBe(`your key: ${clientKey} (quoted)`); // the client gets the stream untouched
  }
  let transcript = '';
  const chat = await client.chat.completions.create({
    model: 'gpt-4o-audio-preview',
    stream: true,
    modalities: ['text', 'audio'],
    audio: { voice: 'alloy', format: 'pcm16' },
    messages: [{ role: 'user', content: 'say my key' }],
  });
  for await (const c of chat)
    transcript +=
      (c.choices[0]?.delta as { audio?: { transcript?: string } } | undefined)?.audio?.transcript ?? '';
  expect(transcript).toBe(`it is ${clientKey}`);

  const rows = await proxy.waitForRows(types.length + 1);
  expect(rows.map((r) => r.path)).toEqual([...types.map(() => '/v1/responses'), '/v1/chat/completions']);
  for (const r of rows) {
    expect(r.response_body).toBe(
      `[stream events withheld: its reasoning, refusal, transcript or tool input deltas, which the reassembled message does not keep, held a key; ${r.response_bytes} bytes]`,
    );
    expect(r.response_bytes).toBeGreaterThan(100);
    expect(deltaLeaks([clientKey], r.response_body)).toEqual([]);
    expect(JSON.stringify(r)).not.toContain(head);
    expect(JSON.stringify(r)).not.toContain(tail);
  }
});

test("a key split across Ollama's thinking (think mode: not in the reassembled text) withholds the events", async () => {
  const clientKey = 'sk-proj-abcdefghijklmnopTHINK0043';
  const upstream = await createFakeUpstream();
  cleanups.push(() => upstream.close());
  // `/api/chat` streams `message.thinking`, `/api/generate` `thinking`, before the answer itself.
  const answer = (path: string) => (req: IncomingMessage, res: ServerResponse) => {
    const key = bearerToken(req.headers.authorization) ?? '';
    const line = (thinking: string, content: string, end: object = { done: false }) =>
      `${JSON.stringify(path === '/api/chat' ? { model: 'qwen3', message: { role: 'assistant', content, thinking }, ...end } : { model: 'qwen3', response: content, thinking, ...end })}\n`;
    res.writeHead(200, { 'content-type': 'application/x-ndjson' });
    res.write(line(`they said ${key.slice(0, 15)}`, ''));
    res.write(line(`${key.slice(15)}, so`, ''));
    res.end(line('', 'ok', { done: true, done_reason: 'stop', prompt_eval_count: 5, eval_count: 9 }));
  };
  upstream.on('/api/chat', answer('/api/chat'));
  upstream.on('/api/generate', answer('/api/generate'));
  const proxy = await startTestProxy({ OPENAI_BASE_URL: upstream.origin });
  cleanups.push(() => proxy.close());
  for (const path of ['/api/chat', '/api/generate']) {
    const res = await fetch(`${proxy.url}${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${clientKey}` },
      body: JSON.stringify({ model: 'qwen3', think: true, prompt: 'p', messages: [] }),
    });
    expect(await res.text()).toContain(clientKey.slice(15)); // the client gets the stream untouched
  }
  const rows = await proxy.waitForRows(2);
  for (const r of rows) {
    expect(JSON.parse(r.assembled ?? 'null')).toMatchObject({
      kind: 'ollama',
      content: 'ok',
      complete: true,
    });
    expect(r.response_body).toBe(
      `[stream events withheld: its reasoning, refusal, transcript or tool input deltas, which the reassembled message does not keep, held a key; ${r.response_bytes} bytes]`,
    );
    expect(JSON.stringify(r)).not.toMatch(/sk-proj-abcdefg|hijklmnopTHINK/);
  }
});

test('the split-key scanner joins the deltas of a stored stream per field, so it finds a key no event holds', () => {
  const key = 'sk-SECRETUPSTREAM0123456789';
  const deltas = `Sure, your key is ${key} as asked.`.match(/.{1,4}/g) ?? [];
  const chunk = (index: number, content: string) =>
    `data: ${JSON.stringify({ object: 'chat.completion.chunk', choices: [{ index, delta: { content } }] })}\n\n`;
  const sse = deltas.map((d) => chunk(0, d) + chunk(1, 'other')).join('');
  expect(findLeaks([key], { sse })).toEqual([]);
  expect(deltaLeaks([key], sse)).toEqual([
    { where: 'chat.completion.chunk.choices.0.delta.content', secret: 'sk-…6789' },
  ]);
  const ndjson = deltas
    .map((delta) => JSON.stringify({ type: 'response.output_text.delta', delta }))
    .join('\n');
  expect(deltaLeaks([key], ndjson)).toHaveLength(1);
});

test('a body cut at CAPTURE_BODY_BYTES inside a key keeps no start of it: request, response, reassembled text', async () => {
  const key = 'sk-SECRETUPSTREAM0123456789';
  const upstream = await createFakeUpstream();
  cleanups.push(() => upstream.close());
  // Answers with the very bytes it got: its body is cut at the same place.
  upstream.on('/v1/chat/completions', (_req, res, body) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(body);
  });
  const text = `${'x'.repeat(90)} ${key}`;
  upstream.on('/v1/completions', (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write(`data: ${JSON.stringify({ object: 'text_completion', choices: [{ index: 0, text }] })}\n\n`);
    res.end('data: [DONE]\n\n');
  });
  const proxy = await startTestProxy({
    OPENAI_BASE_URL: upstream.baseUrl,
    OPENAI_API_KEY: key,
    CAPTURE_BODY_BYTES: '100',
  });
  cleanups.push(() => proxy.close());
  // 30 + 45 characters before the key: the first 100 bytes end with all of it but its last 2 characters.
  const body = `{"model":"gpt-4o","messages":"${'x'.repeat(44)} ${key}"}`;
  const res = await fetch(`${proxy.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body,
  });
  expect(await res.text()).toBe(body);
  const client = new OpenAI({ apiKey: 'sk-client-unused', baseURL: `${proxy.url}/v1`, maxRetries: 0 });
  let answer = '';
  for await (const c of await client.completions.create({ model: 'gpt-4o', prompt: 'p', stream: true }))
    answer += c.choices[0]?.text ?? '';
  expect(answer).toBe(text);

  const [chat, completion] = await proxy.waitForRows(2);
  const cut = `{"model":"gpt-4o","messages":"${'x'.repeat(44)} [redacted]`;
  expect([chat.request_body, chat.request_truncated]).toEqual([cut, 1]);
  expect([chat.response_body, chat.response_truncated]).toEqual([cut, 1]);
  const assembled = JSON.parse(completion.assembled ?? '{}');
  expect(assembled.content).toBe(`${'x'.repeat(90)} [redacted]`);
  // the raw events held the text the reassembled one was cut from: not stored either
  expect(completion.response_body).toMatch(/^\[stream events withheld: .* bytes\]$/);
  for (const r of [chat, completion]) expect(JSON.stringify(r)).not.toMatch(/sk-SEC/);
});

test("without a key of its own the proxy scrubs the client's forwarded key from that exchange: body, headers, stream", async () => {
  const bearerKey = 'sk-client-OWNkeyFORWARDED0001';
  const azureKey = 'azure0123456789abcdef0123456789ab';
  const upstream = await createFakeUpstream();
  cleanups.push(() => upstream.close());
  // Echoes the key it got, wherever an upstream might: a debug header, the body, a streamed answer.
  upstream.on('/v1/chat/completions', (req, res, body) => {
    const got = bearerToken(req.headers.authorization) ?? String(req.headers['api-key']);
    res.writeHead(200, { 'content-type': 'text/event-stream', 'x-debug': `key=${got}` });
    const message = `you sent ${got} in ${body.length} bytes`;
    for (const p of message.match(/.{1,4}/g) ?? [])
      res.write(
        `data: ${JSON.stringify({ object: 'chat.completion.chunk', choices: [{ index: 0, delta: { content: p } }] })}\n\n`,
      );
    res.end('data: [DONE]\n\n');
  });
  upstream.on('/v1/embeddings', (req, res) => {
    res.writeHead(400, { 'content-type': 'application/json', 'x-debug': `key=${req.headers['api-key']}` });
    res.end(
      JSON.stringify({
        error: { message: `bad key ${req.headers['api-key']}`, type: 'invalid_request_error' },
      }),
    );
  });
  // the default setup: no OPENAI_API_KEY, the client's key goes upstream
  const proxy = await startTestProxy({ OPENAI_BASE_URL: upstream.baseUrl });
  cleanups.push(() => proxy.close());
  const client = new OpenAI({ apiKey: bearerKey, baseURL: `${proxy.url}/v1`, maxRetries: 0 });
  let answer = '';
  const stream = await client.chat.completions.create({
    model: 'gpt-4o',
    stream: true,
    messages: [{ role: 'user', content: `my key is ${bearerKey}` }],
  });
  for await (const c of stream) answer += c.choices[0]?.delta?.content ?? '';
  expect(answer).toMatch(new RegExp(`^you sent ${bearerKey} in \\d+ bytes$`)); // the client sees it all
  const res = await fetch(`${proxy.url}/v1/embeddings`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'api-key': azureKey },
    body: JSON.stringify({ model: 'text-embedding-3-small', input: `key ${azureKey}` }),
  });
  expect([res.status, await res.text()]).toEqual([400, expect.stringContaining(azureKey)]);

  const [chat, embeddings] = await proxy.waitForRows(2);
  expect(JSON.parse(chat.assembled ?? '{}').content).toMatch(/^you sent \[redacted\] in \d+ bytes$/);
  expect(chat.request_body).toContain('my key is [redacted]');
  expect(chat.response_body).toMatch(/^\[stream events withheld: /);
  expect(JSON.parse(chat.response_headers ?? '{}')['x-debug']).toBe('key=[redacted]');
  expect(embeddings.request_body).toContain('"input":"key [redacted]"');
  expect(embeddings.response_body).toContain('bad key [redacted]');
  expect(JSON.parse(embeddings.response_headers ?? '{}')['x-debug']).toBe('key=[redacted]');
  for (const r of [chat, embeddings]) expect(JSON.stringify(r)).not.toMatch(/OWNkey|azure0123/);
  const lines = await proxy.waitForLogLines((ls) => ls.filter((l) => l.path).length >= 2);
  expect(JSON.stringify(lines)).not.toMatch(/OWNkey|azure0123/);
});

test("a client's key sent as x-api-key or in the query (?api-key=, ?key=) is scrubbed from that exchange", async () => {
  const headerKey = 'xak-client-OWNkeyHEADER0001';
  const queryKey = 'qak-client-OWNkeyQUERY0002';
  const upstream = await createFakeUpstream();
  cleanups.push(() => upstream.close());
  // Echoes what it got: its error quotes the x-api-key header and the URL (where ?api-key= was).
  upstream.on('/v1/chat/completions', (req, res) => {
    const got = `${req.headers['x-api-key'] ?? ''} ${decodeURIComponent(req.url ?? '')}`;
    res.writeHead(401, { 'content-type': 'application/json', 'x-debug': got });
    res.end(JSON.stringify({ error: { message: `bad key: ${got}`, type: 'invalid_request_error' } }));
  });
  // the default setup: no OPENAI_API_KEY, the client's key goes upstream as it was sent
  const proxy = await startTestProxy({ OPENAI_BASE_URL: upstream.baseUrl });
  cleanups.push(() => proxy.close());
  const post = (query: string, headers: Record<string, string>) =>
    fetch(`${proxy.url}/v1/chat/completions${query}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body: JSON.stringify({ model: 'gpt-4o' }),
    }).then(async (r) => [r.status, await r.text()]);
  expect(await post('', { 'x-api-key': headerKey })).toEqual([401, expect.stringContaining(headerKey)]);
  expect(await post(`?api-key=${queryKey}`, {})).toEqual([401, expect.stringContaining(queryKey)]);
  // percent-encoded in the URL, echoed decoded
  expect(await post(`?key=${encodeURIComponent(queryKey).replace(/-/g, '%2D')}`, {})).toEqual([
    401,
    expect.stringContaining(queryKey),
  ]);

  const rows = await proxy.waitForRows(3);
  for (const r of rows) {
    expect(r.response_body).toContain('bad key: ');
    expect(r.response_body).toContain('[redacted]');
    expect(JSON.parse(r.response_headers ?? '{}')['x-debug']).toContain('[redacted]');
  }
  expect(JSON.stringify(rows)).not.toMatch(/OWNkey/);
  const lines = await proxy.waitForLogLines((ls) => ls.filter((l) => l.path).length >= 3);
  expect(JSON.stringify(lines)).not.toMatch(/OWNkey/);
});

test('a key given as the model name is recorded redacted: model column and log line', async () => {
  const key = 'sk-test-SECRET1234';
  const upstream = await createFakeUpstream();
  cleanups.push(() => upstream.close());
  const proxy = await startTestProxy({ OPENAI_BASE_URL: upstream.baseUrl, OPENAI_API_KEY: key });
  cleanups.push(() => proxy.close());
  const res = await fetch(`${proxy.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: key, messages: [] }),
  });
  expect(res.status).toBe(200);
  const [row] = await proxy.waitForRows(1);
  expect([row.model, row.upstream_model]).toEqual(['[redacted]', '[redacted]']);
  const lines = await proxy.waitForLogLines((ls) => ls.some((l) => l.path));
  expect(lines.find((l) => l.path)).toMatchObject({ model: '[redacted]', upstream_model: '[redacted]' });
  expect(readFileSync(proxy.logPath, 'utf8')).not.toContain(key);
});

test("keys in a named upstream's headers are scrubbed like apiKey, also those a reload brings; other header values stay", async () => {
  const HEADER_KEY = 'sk-header-secret-9999';
  const BASIC = Buffer.from('user:pass-SECRET-reloaded').toString('base64');
  const TOKEN = 'tok-reloaded-SECRET-4321';
  const ADMIN = 'adm-SECRETadminKEY0007';
  const upstream = await createFakeUpstream();
  cleanups.push(() => upstream.close());
  // Rejects quoting the credential it got, as OpenAI does; otherwise echoes the headers.
  upstream.on('/v1/chat/completions', (req, res, body) => {
    if (body.includes('please-401')) {
      res.writeHead(401, { 'content-type': 'application/json' });
      const got = req.headers['x-api-token'] ?? req.headers.authorization;
      res.end(
        JSON.stringify({ error: { message: `Incorrect API key provided: ${got}`, code: 'invalid_api_key' } }),
      );
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ echoed_headers: req.headers }));
  });
  const cfgDir = createTempDir();
  cleanups.push(cfgDir.cleanup);
  const configPath = join(cfgDir.path, 'config.json');
  const writeConfig = (upstreams: Record<string, unknown>) =>
    writeFileSync(
      configPath,
      JSON.stringify({
        adminApiKey: ADMIN,
        upstreams,
        models: Object.keys(upstreams).map((u) => ({ name: `${u}-model`, upstream: u })),
      }),
    );
  writeConfig({
    h: {
      baseUrl: upstream.baseUrl,
      headers: { Authorization: `Bearer ${HEADER_KEY}`, 'x-team': 'platform-eu', 'x-retries': '3' },
    },
  });
  const proxy = await startTestProxy({
    OAI_PROXY_CONFIG: configPath,
    OPENAI_BASE_URL: upstream.baseUrl,
    LOG_LEVEL: 'debug',
  });
  let closed = false;
  cleanups.push(() => !closed && proxy.close());
  const chat = async (model: string, extra: Record<string, unknown> = {}) => {
    const res = await fetch(`${proxy.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model, messages: [], ...extra }),
    });
    return { status: res.status, text: await res.text() };
  };

  const rejected = await chat('h-model', { x: 'please-401' });
  expect(rejected.status).toBe(401);
  expect(rejected.text).toContain(HEADER_KEY); // the client gets the upstream's answer untouched
  expect((await chat('h-model')).status).toBe(200);

  // The reload replaces h's credential and adds an upstream keyed by a custom header.
  writeConfig({
    h: { baseUrl: upstream.baseUrl, headers: { authorization: `Basic ${BASIC}`, 'x-team': 'platform-eu' } },
    t: { baseUrl: upstream.baseUrl, headers: { 'X-Api-Token': TOKEN } },
  });
  const reload = await fetch(`${proxy.url}/admin/reload-config`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN}` },
  });
  expect(reload.status).toBe(200);
  expect((await chat('h-model', { x: 'please-401' })).text).toContain(BASIC);
  expect((await chat('t-model', { x: 'please-401' })).text).toContain(TOKEN);
  expect((await chat('gpt-4o', { note: `old key ${HEADER_KEY}` })).status).toBe(200);

  const rows = (await proxy.waitForRows(6)).filter((r) => r.path === '/v1/chat/completions');
  expect(rows.map((r) => r.status)).toEqual([401, 200, 401, 401, 200]);
  expect(JSON.parse(rows[0].response_body ?? '{}').error.message).toBe(
    'Incorrect API key provided: [redacted]',
  );
  const echoed = JSON.parse(rows[1].response_body ?? '{}').echoed_headers;
  expect(echoed).toMatchObject({ authorization: '[redacted]', 'x-team': 'platform-eu', 'x-retries': '3' });
  expect(JSON.parse(rows[2].response_body ?? '{}').error.message).toBe(
    'Incorrect API key provided: [redacted]',
  );
  expect(JSON.parse(rows[3].response_body ?? '{}').error.message).toBe(
    'Incorrect API key provided: [redacted]',
  );
  expect(rows[4].request_body).toContain('old key [redacted]');
  await proxy.waitForLogLines((ls) => ls.filter((l) => l.path === '/v1/chat/completions').length >= 5);
  const texts = { ...readProxyFiles(proxy.dir), console: proxy.stderr() };
  expect(Object.keys(texts).some((k) => k.endsWith('proxy.log'))).toBe(true);
  expect(findLeaks([HEADER_KEY, BASIC, TOKEN], texts)).toEqual([]);
  expect(texts.console).toContain('/v1/chat/completions'); // the console did show the exchanges
  closed = true;
  await proxy.close();
});

// Secrets no setting names: the proxy knows them only by their headers' names.
const CLIENT_SECRET_HEADERS = {
  'x-api-token': 'sk-SECRETapiTOKEN0010',
  'x-goog-api-key': 'AIzaSECRETgoogKEY0011',
  'x-portkey-api-key': 'pk-SECRETportkeyKEY0012',
  'openai-api-key': 'sk-SECRETopenaiHEADER0013',
  'x-auth-token': 'SECRETauthTOKEN0014',
  'proxy-authorization': 'Basic SECRETproxyAUTH0015',
  cookie: 'session=SECRETcookie0016',
};
const UPSTREAM_SECRET_HEADERS = {
  'set-cookie': ['session=SECRETsetCOOKIE0017; HttpOnly', 'csrf=SECRETsetCOOKIE0018'],
  'x-session-token': 'SECRETsessionTOKEN0019',
};
const HEADER_SECRETS = [
  ...Object.values(CLIENT_SECRET_HEADERS),
  ...UPSTREAM_SECRET_HEADERS['set-cookie'],
  UPSTREAM_SECRET_HEADERS['x-session-token'],
];

/**
 * A client sends secret-named headers and the upstream answers with cookies and a token: the upstream and
 * the client get every header as sent, the stored row shows each one's name with `[redacted]`, and no value
 * reaches the database or the log file. `readRow` returns the exchange's row and its stored text.
 */
async function secretHeadersRecordedRedacted(
  env: Record<string, string>,
  readRow: (proxy: Awaited<ReturnType<typeof startTestProxy>>) => Promise<{ row: any; stored: string }>,
) {
  const upstream = await createFakeUpstream();
  cleanups.push(() => upstream.close());
  upstream.on('/v1/chat/completions', (_req, res) => {
    res.writeHead(200, {
      'content-type': 'application/json',
      'x-request-id': 'req_secret_headers',
      'x-ratelimit-remaining-tokens': '149984',
      ...UPSTREAM_SECRET_HEADERS,
    });
    res.end(JSON.stringify(chatCompletionBody('gpt-4o')));
  });
  const proxy = await startTestProxy({ OPENAI_BASE_URL: upstream.baseUrl, ...env });
  cleanups.push(() => proxy.close());
  const client = new OpenAI({
    apiKey: 'sk-client-unconfigured-0020',
    baseURL: `${proxy.url}/v1`,
    maxRetries: 0,
    defaultHeaders: { ...CLIENT_SECRET_HEADERS, 'x-team': 'platform-eu' },
  });
  const { data, response } = await client.chat.completions
    .create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] })
    .withResponse();
  expect(data.choices[0].message.content).toBe('Hello from the fake upstream!');
  // The client gets the upstream's headers, and the upstream got the client's, untouched.
  expect(response.headers.get('set-cookie')).toContain('SECRETsetCOOKIE0017');
  expect(response.headers.get('x-session-token')).toBe('SECRETsessionTOKEN0019');
  expect(upstream.requests).toHaveLength(1);
  // Proxy-Authorization is hop-by-hop: meant for the proxy, never forwarded.
  const { 'proxy-authorization': _forTheProxy, ...endToEnd } = CLIENT_SECRET_HEADERS;
  expect(upstream.requests[0].headers).toMatchObject(endToEnd);
  expect(upstream.requests[0].headers['proxy-authorization']).toBeUndefined();

  const { row, stored } = await readRow(proxy);
  const redacted = (names: string[]) => Object.fromEntries(names.map((n) => [n, '[redacted]']));
  expect(JSON.parse(row.request_headers)).toMatchObject({
    ...redacted(Object.keys(CLIENT_SECRET_HEADERS)),
    authorization: '[redacted]',
    'x-team': 'platform-eu',
    'content-type': 'application/json',
  });
  expect(JSON.parse(row.response_headers)).toMatchObject({
    ...redacted(Object.keys(UPSTREAM_SECRET_HEADERS)),
    'x-request-id': 'req_secret_headers',
    'x-ratelimit-remaining-tokens': '149984', // a count, not a secret
    'content-type': 'application/json',
  });
  const lines = await proxy.waitForLogLines((ls) => ls.some((l) => l.path === '/v1/chat/completions'));
  expect(lines.find((l) => l.path === '/v1/chat/completions')).toMatchObject({
    status: 200,
    model: 'gpt-4o',
  });
  const texts = { ...readProxyFiles(proxy.dir), 'stored row': stored, console: proxy.stderr() };
  expect(Object.keys(texts).some((k) => k.endsWith('proxy.log'))).toBe(true);
  expect(findLeaks(HEADER_SECRETS, texts)).toEqual([]);
}

test('secret-named custom headers, cookies and set-cookie are stored as [redacted] and still forwarded (SQLite)', async () => {
  await secretHeadersRecordedRedacted({ LOG_LEVEL: 'debug' }, async (proxy) => {
    const [row] = await proxy.waitForRows(1);
    return { row, stored: JSON.stringify(row) };
  });
});

warnIfNoPg();
test.skipIf(!pgUrl)(
  'secret-named custom headers, cookies and set-cookie are stored as [redacted] and still forwarded (PostgreSQL)',
  async () => {
    const db = await createTestPgDatabase();
    cleanups.push(() => db.drop());
    await secretHeadersRecordedRedacted({ DATABASE_URL: db.url, LOG_LEVEL: 'debug' }, async (proxy) => {
      await proxy.flush();
      const rows = await pgQuery(db.url, "select * from exchanges where path = '/v1/chat/completions'");
      expect(rows).toHaveLength(1);
      return { row: rows[0], stored: JSON.stringify(rows) };
    });
  },
);
