import { readFileSync } from 'node:fs';
import { connect } from 'node:net';
import OpenAI from 'openai';
import { afterEach, describe, expect, test } from 'vitest';
import { main } from '../../src/cli.js';
import { createFakeUpstream, type FakeUpstream } from '../helpers/fake-upstream.js';
import {
  adminQuery,
  createTestPgDatabase,
  pgQuery,
  pgUrl,
  startPrivateCluster,
  startRelay,
  warnIfNoPg,
} from '../helpers/pg.js';
import { createTempDir } from '../helpers/temp-dir.js';
import { createTestIo, startTestProxy, type TestProxy } from '../helpers/test-proxy.js';
import { until } from '../helpers/until.js';

const ADMIN_KEY = 'admin-key-0123456789abcdefghijklmnop';

const cleanups: (() => Promise<unknown> | unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function upstream(): Promise<FakeUpstream> {
  const up = await createFakeUpstream();
  cleanups.push(() => up.close());
  return up;
}

async function database(): Promise<string> {
  const db = await createTestPgDatabase();
  cleanups.push(() => db.drop());
  return db.url;
}

async function serve(url: string, up: FakeUpstream, env: Record<string, string> = {}): Promise<TestProxy> {
  const p = await startTestProxy({
    DATABASE_URL: url,
    OPENAI_BASE_URL: up.baseUrl,
    ADMIN_API_KEY: ADMIN_KEY,
    ...env,
  });
  cleanups.push(() => p.close());
  return p;
}

const client = (p: TestProxy) =>
  new OpenAI({ apiKey: 'sk-client-0000000000', baseURL: `${p.url}/v1`, maxRetries: 0 });

const chat = (p: TestProxy, model = 'gpt-4o-mini', content = 'hello') =>
  client(p).chat.completions.create({ model, messages: [{ role: 'user', content }] });

async function health(p: TestProxy): Promise<Record<string, any>> {
  return (await fetch(`${p.url}/health`)).json() as Promise<Record<string, any>>;
}

warnIfNoPg();
describe.skipIf(!pgUrl)('several serve instances on one PostgreSQL database', () => {
  test('two instances starting at once both migrate and serve; every exchange is recorded exactly once', async () => {
    const url = await database();
    const up = await upstream();
    const [a, b] = await Promise.all([serve(url, up), serve(url, up)]);
    const migrations = await pgQuery(url, 'select name from kysely_migration order by name');
    expect(migrations.map((m) => m.name)).toContain('0001-exchanges');
    expect(new Set(migrations.map((m) => m.name)).size).toBe(migrations.length);

    const n = 40;
    const answers = await Promise.all(
      Array.from({ length: n }, (_, i) => chat(i % 2 ? a : b, 'gpt-4o-mini', `question ${i}`)),
    );
    expect(answers.every((x) => x.choices[0].message.content === 'Hello from the fake upstream!')).toBe(true);
    await a.flush();
    await b.flush();
    const rows = await pgQuery(
      url,
      "select id, request_body, started_at, status from exchanges where path = '/v1/chat/completions'",
    );
    expect(rows).toHaveLength(n);
    expect(new Set(rows.map((r) => r.id)).size).toBe(n);
    const questions = rows.map((r) => JSON.parse(r.request_body).messages[0].content).sort();
    expect(questions).toEqual(Array.from({ length: n }, (_, i) => `question ${i}`).sort());
    expect(rows.every((r) => r.status === 200)).toBe(true);
    for (const p of [a, b]) {
      const h = await health(p);
      expect(h).toMatchObject({ status: 'ok', database: 'ok', queued_log_rows: 0, spilled_log_rows: 0 });
    }
    expect(a.running.storage.label).toMatch(/^postgres:\/\/oai:\*\*\*@127\.0\.0\.1:\d+\//);
  });

  test('a registry edit through one instance (admin API) or the CLI is in force on the other within a second', async () => {
    const url = await database();
    const up = await upstream();
    const a = await serve(url, up);
    const b = await serve(url, up);
    const lastModel = () => JSON.parse(up.requests.at(-1)!.body.toString()).model;

    const res = await fetch(`${a.url}/admin/model-mappings`, {
      method: 'POST',
      headers: { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify({ alias: 'team-fast', actual_model: 'gpt-4o-mini' }),
    });
    expect(res.status).toBeLessThan(300);
    const t0 = Date.now();
    await until(
      'the new alias on the other instance',
      async () => {
        await chat(b, 'team-fast').catch(() => undefined);
        return up.requests.length > 0 && lastModel() === 'gpt-4o-mini';
      },
      1500,
    );
    expect(Date.now() - t0).toBeLessThan(1500);

    // The CLI writes straight to the database; both instances follow.
    const io = createTestIo({ DATABASE_URL: url, HOME: '/nonexistent' });
    expect(await main(['models', 'map', 'team-fast', 'gpt-4o'], io)).toBe(0);
    const t1 = Date.now();
    await until(
      'the mapping the CLI wrote, on both instances',
      async () => {
        const [x, y] = await Promise.all([
          client(a)
            .models.retrieve('team-fast')
            .catch(() => null),
          b.running.registry.current().resolve('team-fast').actual,
        ]);
        return (
          x !== null &&
          y === 'gpt-4o' &&
          a.running.registry.current().resolve('team-fast').actual === 'gpt-4o'
        );
      },
      1500,
    );
    expect(Date.now() - t1).toBeLessThan(1500);
    await chat(b, 'team-fast');
    expect(lastModel()).toBe('gpt-4o');
  });

  test('a NUL in the model or user a client sends: answered and recorded all the same, found by `logs`', async () => {
    const url = await database();
    const up = await upstream();
    const p = await serve(url, up);
    // JSON `\u0000` escapes decode to a real NUL, which PostgreSQL text refuses.
    const body =
      '{"model":"gpt\\u0000x","user":"x\\u0000y","messages":[{"role":"user","content":"onlymodel"}]}';
    const res = await fetch(`${p.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer sk-client-0000000000' },
      body,
    });
    expect(res.status).toBe(200);
    // Node's parser refuses a raw NUL in a header value or the path: a 400, recorded too.
    const raw = await new Promise<string>((resolve) => {
      const s = connect(Number(new URL(p.url).port), '127.0.0.1', () =>
        s.end('GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Tag: a\u0000b\r\n\r\n'),
      );
      let out = '';
      s.on('data', (d) => (out += d));
      s.on('close', () => resolve(out));
    });
    expect(raw).toMatch(/^HTTP\/1\.1 400 /);
    await p.flush();

    const h = await health(p);
    expect(h).toMatchObject({ database: 'ok', database_error: null, spilled_log_rows: 0 });
    const io = createTestIo({ DATABASE_URL: url, HOME: '/nonexistent' });
    expect(await main(['logs', '--json'], io), io.err()).toBe(0);
    const rows = JSON.parse(io.out()) as Record<string, any>[];
    const chatRow = rows.find((r) => r.path === '/v1/chat/completions');
    expect(chatRow).toMatchObject({ status: 200, model: 'gpt\uFFFDx', user: 'x\uFFFDy' });
    const found = createTestIo({ DATABASE_URL: url, HOME: '/nonexistent' });
    expect(await main(['logs', '--grep', 'onlymodel', '--json'], found), found.err()).toBe(0);
    expect((JSON.parse(found.out()) as { id: string }[]).map((r) => r.id)).toEqual([chatRow!.id]);
    expect(rows.find((r) => r.status === 400)).toBeTruthy();
  });

  test('admin API: a NUL in a description or display name → 400 naming the field, as on SQLite (not a 500)', async () => {
    const url = await database();
    const p = await serve(url, await upstream());
    for (const [body, param] of [
      [{ name: 'okname', description: 'd\u0000esc' }, 'description'],
      [{ name: 'okname', display_name: 'Ok\u0000' }, 'display_name'],
    ] as const) {
      const res = await fetch(`${p.url}/admin/models`, {
        method: 'POST',
        headers: { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
      expect(res.status).toBe(400);
      expect(((await res.json()) as { error: Record<string, unknown> }).error).toMatchObject({
        type: 'invalid_request_error',
        param,
      });
    }
    expect(await pgQuery(url, "select name from models where name = 'okname'")).toEqual([]);
    expect(p.stderr()).not.toMatch(/internal_error|"level":50/);
  });

  test('an admin write while PostgreSQL is unreachable: 503 database_unavailable, a warning, no stack', async () => {
    const url = new URL(await database());
    const relay = await startRelay(Number(url.port));
    cleanups.push(() => relay.down());
    url.port = String(relay.port);
    const up = await upstream();
    const p = await serve(url.toString(), up, { LOG_LEVEL: 'warn' });

    await relay.down();
    const admin = (path: string, init: RequestInit = {}) =>
      fetch(`${p.url}${path}`, {
        ...init,
        headers: { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' },
      });
    const answers = [
      await admin('/admin/model-mappings', {
        method: 'POST',
        body: JSON.stringify({ alias: 'team-fast', actual_model: 'gpt-4o-mini' }),
      }),
      await admin('/admin/models', { method: 'POST', body: JSON.stringify({ name: 'my-model' }) }),
      await admin('/admin/models/gpt-4o', { method: 'DELETE' }),
      await admin('/admin/model-mappings/team-fast', { method: 'DELETE' }),
    ];
    for (const res of answers) {
      expect(res.status).toBe(503);
      const body = (await res.json()) as { error: Record<string, unknown> };
      expect(body.error).toMatchObject({ type: 'server_error', code: 'database_unavailable' });
      expect(body.error.message).toMatch(
        /^The database is unavailable \(.+\); the registry was not changed\. Retry once it is back/,
      );
    }
    // The registry in memory is unchanged, and requests are still served.
    expect(p.running.registry.current().resolve('team-fast').alias).toBe(false);
    expect((await chat(p)).choices[0].message.content).toBe('Hello from the fake upstream!');

    // One warning per refused write on the console; no error line for the admin requests, no stack.
    const lines = p
      .stderr()
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { level: number; msg: string; err?: { stack?: string } });
    const warnings = lines.filter((l) => l.msg.startsWith('admin API:'));
    expect(warnings.map((l) => [l.level, l.msg.replace(/: connect .*/, '')])).toEqual([
      [40, 'admin API: mapping alias "team-fast" not made, the database is unavailable'],
      [40, 'admin API: adding model "my-model" not made, the database is unavailable'],
      [40, 'admin API: removing model "gpt-4o" not made, the database is unavailable'],
      [40, 'admin API: removing alias "team-fast" not made, the database is unavailable'],
    ]);
    expect(lines.filter((l) => /admin/.test(l.msg) && l.level >= 50)).toEqual([]);
    expect(lines.filter((l) => l.err?.stack)).toEqual([]);
    expect(p.stderr()).not.toContain(url.password);
  });

  test('PostgreSQL gone while no request comes: /health says error (from the registry poll), logged once, ok again after', async () => {
    const url = new URL(await database());
    const relay = await startRelay(Number(url.port));
    cleanups.push(() => relay.down());
    url.port = String(relay.port);
    const p = await serve(url.toString(), await upstream(), { LOG_LEVEL: 'info' });
    expect(await health(p)).toMatchObject({ database: 'ok', database_error: null });

    await relay.down();
    const down = await until(
      '/health to report the database error',
      async () => {
        const h = await health(p);
        return h.database === 'error' ? h : undefined;
      },
      5000,
    );
    expect(down.database_error).toMatch(/^reading the model registry failed: .*ECONNREFUSED/);
    expect(down.queued_log_rows).toBe(0);
    // Polls keep failing every 500 ms: still one line for the streak.
    await new Promise((r) => setTimeout(r, 1500));
    expect((await health(p)).database).toBe('error');
    const logged = () =>
      p
        .stderr()
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as { level: number; msg: string })
        .filter((l) => /model registry/.test(l.msg))
        .map((l) => [l.level, l.msg]);
    const label = `postgres://oai:***@127.0.0.1:${relay.port}${url.pathname}`;
    expect(logged()).toEqual([
      [
        50,
        `database ${label}: reading the model registry failed; /health reports "database": "error" until it succeeds`,
      ],
    ]);

    await relay.up();
    await until(
      '/health to report the database back',
      async () => {
        const h = await health(p);
        return h.database === 'ok' && h.database_error === null;
      },
      5000,
    );
    expect(logged().at(-1)).toEqual([30, `database ${label}: the model registry is readable again`]);
    expect(p.stderr()).not.toContain(url.password);
    expect(JSON.stringify(down)).not.toContain(url.password);
  });

  test('PostgreSQL stopped while serving: requests are unaffected, rows queue and are written after the restart', async () => {
    const cluster = await startPrivateCluster();
    cleanups.push(() => cluster.stop());
    const up = await upstream();
    const p = await serve(cluster.url, up);
    await chat(p, 'gpt-4o-mini', 'before');
    await p.flush();

    await cluster.pause();
    const latencies: number[] = [];
    for (let i = 0; i < 10; i++) {
      const t = performance.now();
      const r = await chat(p, 'gpt-4o-mini', `during ${i}`);
      latencies.push(performance.now() - t);
      expect(r.choices[0].message.content).toBe('Hello from the fake upstream!');
    }
    // No request waited on the database (connect timeout is 5 s; these are local round trips).
    expect(Math.max(...latencies)).toBeLessThan(1000);
    const down = await until(
      '/health to report the database error',
      async () => {
        const h = await health(p);
        return h.database === 'error' ? h : undefined;
      },
      10_000,
    );
    expect(down.queued_log_rows).toBeGreaterThanOrEqual(10);
    expect(down.database_error).toBeTruthy();
    expect(JSON.stringify(down)).not.toContain(new URL(cluster.url).password);

    await cluster.resume();
    const back = await until(
      '/health to report the queue written',
      async () => {
        const h = await health(p);
        return h.database === 'ok' && h.queued_log_rows === 0 ? h : undefined;
      },
      15_000,
    );
    expect(back.spilled_log_rows).toBe(0);
    const rows = await pgQuery(
      cluster.url,
      "select request_body from exchanges where path = '/v1/chat/completions'",
    );
    const contents = rows.map((r) => JSON.parse(r.request_body).messages[0].content).sort();
    expect(contents).toEqual(['before', ...Array.from({ length: 10 }, (_, i) => `during ${i}`)].sort());
  }, 60_000);
});

describe.skipIf(!pgUrl)('PostgreSQL that stops answering (a network cut: no refusal, no reset)', () => {
  test('stopping does not wait for it: within seconds, the queued rows spilled to the log file', async () => {
    const url = new URL(await database());
    const relay = await startRelay(Number(url.port));
    cleanups.push(() => relay.down());
    url.port = String(relay.port);
    const up = await upstream();
    const p = await serve(url.href, up);
    await chat(p, 'gpt-4o-mini', 'before');
    await p.flush();
    relay.freeze();
    for (let i = 0; i < 5; i++) await chat(p, 'gpt-4o-mini', `during ${i}`);
    p.running.proxy.recordFinished();
    // The writer has sent its batch, which will never be answered (pg gives up after 35 s).
    await until('the batch to be sent', () => p.running.writer.health().queued === 5, 5000);
    await new Promise((r) => setTimeout(r, 300));

    const t = performance.now();
    await p.running.close();
    const took = performance.now() - t;
    const spilled = readFileSync(p.logPath, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l))
      .filter((l) => l.spilled_exchange);
    // The writer gives the database 5 s at shutdown (docker stop waits 10 s before killing).
    expect(took).toBeLessThan(8000);
    expect(
      spilled.map((l) => JSON.parse(l.spilled_exchange.request_body).messages[0].content).sort(),
    ).toEqual(Array.from({ length: 5 }, (_, i) => `during ${i}`));
    expect(spilled.every((l) => l.reason === 'refused_at_close')).toBe(true);
    expect(p.running.writer.health()).toMatchObject({ written: 1, spilled: 5 });
  }, 60_000);
});

describe.skipIf(!pgUrl)("PostgreSQL's connection limit", () => {
  // A role of its own, so the limit touches nothing else on the test cluster.
  async function limitedRole(limit: number): Promise<string> {
    const db = await createTestPgDatabase();
    const role = `${db.name}_r`;
    await adminQuery(`create role ${role} login password 'limit-pw-SECRET' connection limit ${limit}`);
    await adminQuery(`alter database ${db.name} owner to ${role}`);
    cleanups.push(async () => {
      await db.drop();
      await adminQuery(`drop role if exists ${role}`);
    });
    const url = new URL(db.url);
    url.username = role;
    url.password = 'limit-pw-SECRET';
    return url.toString();
  }
  const limitText = (setting: string) =>
    `close other sessions, raise the limit (ALTER ROLE … CONNECTION LIMIT, or the server's max_connections), or name another user in ${setting}`;
  const needs =
    'serve uses up to 5 connections (a pool of 4 and one listening for model-registry changes) and needs at least 3 to start';

  // Serve opened its pool (one connection, migrating), then failed reading the registry for want of a
  // second one and printed only `too many connections for role "…"`, without the database or setting.
  test.each([
    [1, 'seeding the registry'],
    [0, 'opening the database'],
  ])(
    'serve with a limit of %i (fails %s): names the database and --db, says what serve needs, exit 1',
    async (limit) => {
      const url = await limitedRole(limit);
      const up = await upstream();
      const tmp = createTempDir();
      cleanups.push(() => tmp.cleanup());
      const io = createTestIo({ HOME: tmp.path }, tmp.path);
      const code = await main(['serve', '--port', '0', '--upstream', up.baseUrl, '--db', url], io);
      const role = new URL(url).username;
      const label = url.replace('limit-pw-SECRET', '***');
      expect(io.err()).toBe(
        `oai-proxy: PostgreSQL at ${label} refused a connection: too many connections for role "${role}"; ${needs}; ${limitText('--db')}\n`,
      );
      expect(code).toBe(1);
    },
  );

  test('logs and models say the same, without serve’s needs', async () => {
    const url = await limitedRole(0);
    const role = new URL(url).username;
    const label = url.replace('limit-pw-SECRET', '***');
    for (const argv of [['logs'], ['models', 'list']]) {
      const io = createTestIo({ DATABASE_URL: url, HOME: '/nonexistent' });
      expect(await main(argv, io)).toBe(1);
      expect(io.err()).toBe(
        `oai-proxy: PostgreSQL at ${label} refused a connection: too many connections for role "${role}"; ${limitText('DATABASE_URL')}\n`,
      );
    }
  });
});
