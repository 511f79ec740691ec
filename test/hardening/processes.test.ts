import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import OpenAI from 'openai';
import { afterEach, expect, test } from 'vitest';
import { sleep } from '../helpers/fake-upstream.js';
import { createServeFixture, type ServeProcess, spawnServe } from '../helpers/spawn-serve.js';
import { createTempDir } from '../helpers/temp-dir.js';
import { until } from '../helpers/until.js';

const BIN = join(import.meta.dirname, '../../bin/oai-proxy.js');
const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** `serve --port 0 args…` (LOG_LEVEL warn unless `env` says), killed after the test. */
function startBin(args: string[], env: Record<string, string>): ServeProcess {
  const serve = spawnServe(['--port', '0', ...args], { env: { LOG_LEVEL: 'warn', ...env } });
  cleanups.push(serve.kill);
  return serve;
}

async function chat(base: string, marker: string, stream: boolean): Promise<void> {
  const res = await fetch(`${base}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'gpt-4o', stream, messages: [{ role: 'user', content: marker }] }),
  });
  if (res.status !== 200) throw new Error(`status ${res.status}`);
  await res.text();
}

/** `n` chat streams opened at once, the i-th asking `${marker}-${i}`. */
function openStreams(client: OpenAI, n: number, marker: string) {
  return Promise.all(
    Array.from({ length: n }, (_, i) =>
      client.chat.completions.create({
        model: 'gpt-4o',
        stream: true,
        messages: [{ role: 'user', content: `${marker}-${i}` }],
      }),
    ),
  );
}

function markers(dbPath: string): string[] {
  const db = new Database(dbPath, { readonly: true });
  try {
    const rows = db.prepare('select request_body from exchanges').all() as { request_body: string | null }[];
    return rows.map((r) => /"content":"(m-[^"]+)"/.exec(r.request_body ?? '')?.[1] ?? '?');
  } finally {
    db.close();
  }
}

function integrity(dbPath: string): string {
  const db = new Database(dbPath, { readonly: true });
  try {
    return db.pragma('integrity_check', { simple: true }) as string;
  } finally {
    db.close();
  }
}

test('SIGKILL under load: the database reopens cleanly and at most the last batch interval of rows is missing', {
  timeout: 40_000,
}, async () => {
  const { home, dbPath, upstream, cleanup } = await createServeFixture();
  cleanups.push(cleanup);
  const FLUSH_MS = 100;
  const env = { HOME: home, LOG_FLUSH_INTERVAL_MS: String(FLUSH_MS) };
  const first = startBin(['--db', dbPath, '--upstream', upstream.baseUrl], env);
  const base = await first.url;
  const answeredAt = new Map<string, number>();
  let n = 0;
  let stop = false;
  const worker = async () => {
    while (!stop) {
      const marker = `m-${n++}`;
      try {
        await chat(base, marker, n % 3 === 0);
        answeredAt.set(marker, Date.now());
      } catch {
        // cut by the kill
      }
    }
  };
  const workers = Array.from({ length: 32 }, worker);
  await sleep(2000);
  const killedAt = Date.now();
  first.child.kill('SIGKILL');
  stop = true;
  await Promise.all(workers);
  await first.exited;
  expect(answeredAt.size).toBeGreaterThan(100);

  expect(integrity(dbPath)).toBe('ok');
  const stored = markers(dbPath);
  expect(new Set(stored).size).toBe(stored.length); // nothing twice
  // everything answered before the last batch interval (plus scheduling slack) is there
  const stored_ = new Set(stored);
  const mustHave = [...answeredAt].filter(([, t]) => t < killedAt - FLUSH_MS - 150).map(([m]) => m);
  expect(mustHave.length).toBeGreaterThan(50);
  expect(mustHave.filter((m) => !stored_.has(m))).toEqual([]);
  expect(stored.length).toBeLessThanOrEqual(answeredAt.size + 32);

  // a new serve opens it (migrations run again: idempotent on the killed database) and records
  const second = startBin(['--db', dbPath, '--upstream', upstream.baseUrl], env);
  const base2 = await second.url;
  await chat(base2, 'm-after-restart', false);
  second.child.kill('SIGTERM');
  expect(await second.exited).toBe(0);
  expect(markers(dbPath)).toContain('m-after-restart');
  expect(statSync(dbPath).mode & 0o777).toBe(0o600);
});

test('two serve processes on one database (started together): both record, neither corrupts the other', {
  timeout: 40_000,
}, async () => {
  const { home, upstream, cleanup } = await createServeFixture();
  cleanups.push(cleanup);
  const dbPath = join(home, 'shared.db');
  const env = { HOME: home, LOG_FLUSH_INTERVAL_MS: '50' };
  const a = startBin(
    ['--db', dbPath, '--upstream', upstream.baseUrl, '--log-file', join(home, 'a.log')],
    env,
  );
  const b = startBin(
    ['--db', dbPath, '--upstream', upstream.baseUrl, '--log-file', join(home, 'b.log')],
    env,
  );
  const [urlA, urlB] = await Promise.all([a.url, b.url]);
  const PER = 150;
  const send = async (base: string, tag: string) => {
    for (let i = 0; i < PER; i += 10) {
      await Promise.all(
        Array.from({ length: 10 }, (_, j) => chat(base, `m-${tag}-${i + j}`, (i + j) % 4 === 0)),
      );
    }
  };
  await Promise.all([send(urlA, 'a'), send(urlB, 'b')]);
  a.child.kill('SIGTERM');
  b.child.kill('SIGTERM');
  expect(await a.exited).toBe(0);
  expect(await b.exited).toBe(0);
  expect(integrity(dbPath)).toBe('ok');
  const stored = markers(dbPath);
  expect(stored.filter((m) => m.startsWith('m-a-'))).toHaveLength(PER);
  expect(stored.filter((m) => m.startsWith('m-b-'))).toHaveLength(PER);
  expect(new Set(stored).size).toBe(2 * PER);
  // (a transient lock between the two writers is backed off and retried, not an error to the clients)
  expect(a.stderr() + b.stderr()).not.toMatch(/corrupt|malformed|not a database/i);
});

test('SIGTERM with several streams in flight: all finish within the grace period, every row written, exit 0', {
  timeout: 30_000,
}, async () => {
  const { home, dbPath, upstream, cleanup } = await createServeFixture();
  cleanups.push(cleanup);
  upstream.streamIntervalMs = 50;
  upstream.streamWords = 20;
  const p = startBin(['--db', dbPath, '--upstream', upstream.baseUrl], {
    HOME: home,
    SHUTDOWN_GRACE_MS: '8000',
  });
  const base = await p.url;
  const client = new OpenAI({ apiKey: 'sk-x', baseURL: `${base}/v1`, maxRetries: 0 });
  const streams = await openStreams(client, 8, 'm-stream');
  const texts = streams.map(async (s) => {
    let t = '';
    for await (const c of s) t += c.choices[0]?.delta?.content ?? '';
    return t;
  });
  await sleep(200);
  p.child.kill('SIGTERM');
  const done = await Promise.all(texts);
  expect(done.every((t) => t.split(' ').filter(Boolean).length === 20)).toBe(true);
  expect(await p.exited).toBe(0);
  expect(markers(dbPath).sort()).toEqual(Array.from({ length: 8 }, (_, i) => `m-stream-${i}`).sort());
  const db = new Database(dbPath, { readonly: true });
  const rows = db.prepare('select error, assembled from exchanges').all() as {
    error: string | null;
    assembled: string;
  }[];
  db.close();
  for (const r of rows) {
    expect(r.error).toBeNull();
    expect(JSON.parse(r.assembled).complete).toBe(true);
  }
});

/**
 * `serve` (database and log file in a temp dir) in front of a fake upstream whose streams last 20 s
 * (100 words, 200 ms apart), with SHUTDOWN_GRACE_MS `graceMs`, and an SDK client for it.
 */
async function serveWithSlowStreams(graceMs: string) {
  const { home, dbPath, logPath, upstream, cleanup } = await createServeFixture();
  cleanups.push(cleanup);
  upstream.streamIntervalMs = 200;
  upstream.streamWords = 100;
  const p = startBin(['--db', dbPath, '--log-file', logPath, '--upstream', upstream.baseUrl], {
    HOME: home,
    SHUTDOWN_GRACE_MS: graceMs,
  });
  const client = new OpenAI({ apiKey: 'sk-x', baseURL: `${await p.url}/v1`, maxRetries: 0 });
  return { upstream, dbPath, logPath, p, client };
}

/** How a stream the client reads to its end ended: whole, or cut by the proxy. */
async function streamOutcome(stream: AsyncIterable<unknown>): Promise<'complete' | 'cut'> {
  try {
    for await (const _ of stream);
    return 'complete';
  } catch {
    return 'cut';
  }
}

test('SIGTERM with streams outlasting the grace period: every cut exchange recorded as proxy_shutdown, counted, exit 0', {
  timeout: 30_000,
}, async () => {
  const { upstream, dbPath, p, client } = await serveWithSlowStreams('300');
  // One request the upstream never answers: cut while the proxy waits for its headers.
  upstream.on('/v1/embeddings', () => new Promise<void>(() => undefined));
  const streams = await openStreams(client, 5, 'm-cut');
  const cut = streams.map(streamOutcome);
  const unanswered = client.embeddings.create({ model: 'e', input: 'm-unanswered' }).then(
    () => 'answered',
    () => 'cut',
  );
  await sleep(300);
  p.child.kill('SIGTERM');
  expect(await Promise.all(cut)).toEqual(Array(5).fill('cut'));
  expect(await unanswered).toBe('cut');
  expect(await p.exited).toBe(0);
  const db = new Database(dbPath, { readonly: true });
  const rows = db.prepare('select path, status, error, error_message from exchanges').all() as {
    path: string;
    status: number | null;
    error: string | null;
    error_message: string | null;
  }[];
  db.close();
  expect(rows.map((r) => r.path).sort()).toEqual([
    ...Array(5).fill('/v1/chat/completions'),
    '/v1/embeddings',
  ]);
  for (const r of rows) {
    expect(r.error).toBe('proxy_shutdown');
    expect(r.error_message).toContain('SHUTDOWN_GRACE_MS');
  }
  expect(rows.find((r) => r.path === '/v1/embeddings')?.status).toBeNull();
  expect(
    markers(dbPath)
      .filter((m) => m.startsWith('m-cut-'))
      .sort(),
  ).toEqual(Array.from({ length: 5 }, (_, i) => `m-cut-${i}`));
  expect(p.stderr()).toContain('stopped; 6 exchanges recorded this run');
});

/** The log file's exchange lines (parsed). */
function logLines(logPath: string): Record<string, unknown>[] {
  if (!existsSync(logPath)) return [];
  return readFileSync(logPath, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l))
    .filter((l) => l.path !== undefined);
}

test.each(['SIGINT', 'SIGTERM'] as const)(
  '%s twice: the second cuts the streams at once, each recorded as proxy_shutdown (database and log file), stop line, exit 0',
  {
    timeout: 30_000,
  },
  async (signal) => {
    // 20 s streams and a 20 s grace: only the second signal can end them within the test.
    const { dbPath, logPath, p, client } = await serveWithSlowStreams('20000');
    const streams = await openStreams(client, 4, 'm-twice');
    const outcomes = streams.map(streamOutcome);
    await sleep(300);
    p.child.kill(signal);
    await until('the first signal taken', () => p.stderr().includes('finishing in-flight requests'));
    await sleep(300);
    const second = Date.now();
    p.child.kill(signal);
    expect(await p.exited).toBe(0);
    expect(Date.now() - second).toBeLessThan(10_000);
    expect(await Promise.all(outcomes)).toEqual(Array(4).fill('cut'));
    expect(p.child.signalCode).toBeNull();
    expect(p.stderr()).toContain(`${signal} received again, cutting in-flight requests now`);
    expect(p.stderr()).toContain('stopped; 4 exchanges recorded this run');

    const db = new Database(dbPath, { readonly: true });
    const rows = db.prepare('select error, error_message from exchanges').all() as {
      error: string | null;
      error_message: string | null;
    }[];
    db.close();
    expect(rows).toHaveLength(4);
    for (const r of rows) {
      expect(r.error).toBe('proxy_shutdown');
      expect(r.error_message).toContain(`${signal} received a second time`);
    }
    expect(markers(dbPath).sort()).toEqual(Array.from({ length: 4 }, (_, i) => `m-twice-${i}`));
    const lines = logLines(logPath);
    expect(lines).toHaveLength(4);
    expect(lines.every((l) => l.error === 'proxy_shutdown')).toBe(true);
  },
);

test('SIGHUP (the terminal closed, stderr gone): in-flight streams finish, every row and log line written, exit 0', {
  timeout: 30_000,
}, async () => {
  const { home, dbPath, logPath, upstream, cleanup } = await createServeFixture();
  cleanups.push(cleanup);
  upstream.streamIntervalMs = 100;
  upstream.streamWords = 10;
  const p = startBin(['--db', dbPath, '--log-file', logPath, '--upstream', upstream.baseUrl], {
    HOME: home,
    SHUTDOWN_GRACE_MS: '8000',
  });
  const base = await p.url;
  await chat(base, 'm-before', false);
  const client = new OpenAI({ apiKey: 'sk-x', baseURL: `${base}/v1`, maxRetries: 0 });
  const streams = await openStreams(client, 3, 'm-hup');
  const texts = streams.map(async (s) => {
    let t = '';
    for await (const c of s) t += c.choices[0]?.delta?.content ?? '';
    return t;
  });
  await sleep(200);
  // What a closed terminal does to serve's console: every write to stderr now fails (EPIPE here).
  p.child.stderr!.destroy();
  p.child.kill('SIGHUP');
  const done = await Promise.all(texts);
  expect(done.every((t) => t.split(' ').filter(Boolean).length === 10)).toBe(true);
  expect(await p.exited).toBe(0);
  expect(p.child.signalCode).toBeNull();
  expect(markers(dbPath).sort()).toEqual(['m-before', 'm-hup-0', 'm-hup-1', 'm-hup-2']);
  const db = new Database(dbPath, { readonly: true });
  const errors = db.prepare('select error from exchanges').all() as { error: string | null }[];
  db.close();
  expect(errors.every((r) => r.error === null)).toBe(true);
  const lines = logLines(logPath);
  expect(lines).toHaveLength(4);
  expect(lines.every((l) => l.status === 200 && l.error === null)).toBe(true);
});

/** `oai-proxy models list --json` on `dbPath`: the registry every instance on that database reads. */
function modelsList(dbPath: string, home: string): { models: { name: string }[]; mappings: unknown } {
  const out = execFileSync(process.execPath, [BIN, 'models', 'list', '--json', '--db', dbPath], {
    env: { PATH: process.env.PATH ?? '', HOME: home },
    encoding: 'utf8',
  });
  return JSON.parse(out);
}

test('a serve that cannot listen (port in use) leaves the shared registry alone: the running instance keeps its models and aliases', {
  timeout: 30_000,
}, async () => {
  const { home, upstream, cleanup } = await createServeFixture();
  cleanups.push(cleanup);
  const dbPath = join(home, 'i.db');
  const configPath = join(home, 'icfg.json');
  writeFileSync(
    configPath,
    JSON.stringify({ validateModels: true, availableModels: ['m1'], modelMappings: { fast: 'm1' } }),
  );
  const a = startBin(['--config', configPath, '--db', dbPath, '--upstream', upstream.baseUrl], {
    HOME: home,
  });
  const base = await a.url;
  const port = new URL(base).port;
  const before = modelsList(dbPath, home);
  expect(before.models.map((m) => m.name)).toEqual(['m1']);
  expect(before.mappings).toEqual({ fast: 'm1' });

  // The same database, no config (the default model list), A's port.
  const b = startBin(['--port', port, '--db', dbPath, '--upstream', upstream.baseUrl], { HOME: home });
  b.url.catch(() => undefined);
  // startBin passes --port 0 first; the later --port wins.
  expect(await b.exited).toBe(1);
  expect(b.stderr()).toContain(`port ${port} is in use`);

  expect(modelsList(dbPath, home)).toEqual(before);
  // A polls the registry's data_version every 500 ms: past that, it still routes its own models.
  await sleep(1200);
  const client = new OpenAI({ apiKey: 'sk-x', baseURL: `${base}/v1`, maxRetries: 0 });
  expect((await client.models.list()).data.map((m) => m.id)).toEqual(['m1', 'fast']);
  const answer = await client.chat.completions.create({
    model: 'fast',
    messages: [{ role: 'user', content: 'hi' }],
  });
  expect(answer.choices[0]?.message.content).toBeTruthy();
  expect(JSON.parse(upstream.requests.at(-1)!.body.toString()).model).toBe('m1');
});

test('the terminal serve runs in is closed (SIGHUP, then EIO on every console write): streams finish, every row and log line written, exit 0', {
  timeout: 30_000,
}, async () => {
  const { home, dbPath, logPath, upstream, cleanup } = await createServeFixture();
  cleanups.push(cleanup);
  upstream.streamIntervalMs = 100;
  upstream.streamWords = 10;
  const helper = join(import.meta.dirname, '../helpers/pty-hangup.py');
  const term = spawn(
    'python3',
    [
      helper,
      process.execPath,
      BIN,
      'serve',
      '--port',
      '0',
      '--db',
      dbPath,
      '--log-file',
      logPath,
      '--upstream',
      upstream.baseUrl,
    ],
    {
      // LOG_LEVEL info: the pretty console prints each exchange, after the hang-up too.
      env: {
        PATH: process.env.PATH ?? '',
        TERM: 'xterm-256color',
        HOME: home,
        SHUTDOWN_GRACE_MS: '8000',
      },
      stdio: ['pipe', 'pipe', 'inherit'],
    },
  );
  cleanups.push(() => term.exitCode === null && term.kill('SIGKILL'));
  const exited = new Promise<number | null>((r) => term.once('exit', (code) => r(code)));
  let out = '';
  term.stdout!.on('data', (d) => {
    out += d;
  });
  const base = await until(
    'the banner on the terminal',
    () => /listening on (http:\/\/[^\s]+)/.exec(out)?.[1],
  );
  await chat(base, 'm-before', false);
  const client = new OpenAI({ apiKey: 'sk-x', baseURL: `${base}/v1`, maxRetries: 0 });
  const streams = await openStreams(client, 3, 'm-hup');
  const texts = streams.map(async (s) => {
    let t = '';
    for await (const c of s) t += c.choices[0]?.delta?.content ?? '';
    return t;
  });
  await sleep(200);
  term.stdin!.write('hang up\n');
  const done = await Promise.all(texts);
  expect(done.every((t) => t.split(' ').filter(Boolean).length === 10)).toBe(true);
  expect(await exited).toBe(0);
  expect(markers(dbPath).sort()).toEqual(['m-before', 'm-hup-0', 'm-hup-1', 'm-hup-2']);
  const lines = logLines(logPath);
  expect(lines).toHaveLength(4);
  expect(lines.every((l) => l.status === 200 && l.error === null)).toBe(true);
});

/** A port nothing listens on now (bound on 127.0.0.1 for a moment and released). */
async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const { port } = s.address() as { port: number };
  await new Promise((r) => s.close(r));
  return port;
}

/** A database `serve` can open with no write (migrated, a model registered), locked by a write transaction here. */
function lockedDatabase(dbPath: string, home: string): Database.Database {
  execFileSync(process.execPath, [BIN, 'models', 'add', 'llama3', '--db', dbPath], {
    env: { PATH: process.env.PATH ?? '', HOME: home },
  });
  const other = new Database(dbPath);
  cleanups.push(() => other.close());
  other.exec('begin immediate');
  return other;
}

test('a request sent while start-up waits for a locked database is routed by the configured registry (MODEL_MAPPINGS applied), not the one the file held', {
  timeout: 30_000,
}, async () => {
  const { home, upstream, cleanup } = await createServeFixture();
  cleanups.push(cleanup);
  const dbPath = join(home, 'l.db');
  const other = lockedDatabase(dbPath, home);
  const port = await freePort();
  const p = startBin(['--port', String(port), '--db', dbPath, '--upstream', upstream.baseUrl], {
    HOME: home,
    MODEL_MAPPINGS: '{"fast":"gpt-4o-mini"}',
  });
  const unlock = setTimeout(() => other.exec('rollback'), 2000);
  cleanups.push(() => clearTimeout(unlock));
  // Sent as soon as the port takes connections: the first request a client could make.
  const res = await until(
    'the proxy to take a connection',
    () =>
      fetch(`http://127.0.0.1:${port}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'fast', messages: [{ role: 'user', content: 'hi' }] }),
      }).catch(() => null),
    10_000,
    10,
  );
  expect(res.status).toBe(200);
  await res.text();
  expect(upstream.requests.map((r) => JSON.parse(r.body.toString()).model)).toEqual(['gpt-4o-mini']);
  await p.url;
  p.child.kill('SIGTERM');
  expect(await p.exited).toBe(0);
  const db = new Database(dbPath, { readonly: true });
  const rows = db.prepare('select model, upstream_model from exchanges').all();
  db.close();
  expect(rows).toEqual([{ model: 'fast', upstream_model: 'gpt-4o-mini' }]);
});

test.each(['SIGTERM', 'SIGINT', 'SIGHUP'] as const)(
  '%s while start-up waits for a locked database: start-up stops before listening, what it opened is closed, exit 0',
  { timeout: 30_000 },
  async (signal) => {
    const tmp = createTempDir();
    cleanups.push(tmp.cleanup);
    const dbPath = join(tmp.path, 's.db');
    const logPath = join(tmp.path, 's.log');
    const other = lockedDatabase(dbPath, tmp.path);
    const p = startBin(['--db', dbPath, '--log-file', logPath], {
      HOME: tmp.path,
      MODEL_MAPPINGS: '{"fast":"gpt-4o-mini"}',
    });
    p.url.catch(() => undefined);
    // The log file is opened in start-up before the registry is seeded (which waits for the lock).
    await until('start-up to open the log file', () => existsSync(logPath));
    await sleep(300);
    p.child.kill(signal);
    // Seen before seeding (start-up stops at once) or while seeding waits (it stops once the lock is gone).
    await sleep(500);
    other.exec('rollback');
    expect(await p.exited).toBe(0);
    // Before it, only warnings of background jobs that met the lock.
    expect(p.stderr()).not.toContain('listening on');
    expect(p.stderr().trimEnd().split('\n').at(-1)).toBe(
      `oai-proxy: ${signal} received during start-up: stopped before listening, nothing was recorded`,
    );
    // Closed cleanly: another process can write the database at once.
    other.exec('begin immediate');
    other.exec('rollback');
  },
);
