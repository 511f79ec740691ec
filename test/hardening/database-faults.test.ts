import { spawn } from 'node:child_process';
import { existsSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, test } from 'vitest';
import { main } from '../../src/cli.js';
import { openDatabase } from '../../src/storage/database.js';
import { INSERT_EXCHANGE_SQL, toRow } from '../../src/storage/log-store.js';
import { fillDisk } from '../helpers/disk-full.js';
import { createFakeUpstream, sleep } from '../helpers/fake-upstream.js';
import { rec } from '../helpers/logs-suite.js';
import { makeReadOnly, readOnlyUnsupported } from '../helpers/read-only-file.js';
import { createTempDir } from '../helpers/temp-dir.js';
import {
  createTestIo,
  proxyWithUpstreamPerTest,
  startTestProxy,
  type TestProxy,
} from '../helpers/test-proxy.js';
import { until } from '../helpers/until.js';

const setup = proxyWithUpstreamPerTest();
const cleanups: (() => void)[] = [];

afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

/** One chat call; returns its status and how long the client waited. */
async function chat(url: string, pad = 0): Promise<{ status: number; ms: number }> {
  const t0 = Date.now();
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'gpt-4o', messages: [{ role: 'user', content: 'x'.repeat(pad) }] }),
  });
  await res.arrayBuffer();
  return { status: res.status, ms: Date.now() - t0 };
}

async function health(url: string): Promise<Record<string, any>> {
  return (await fetch(`${url}/health`)).json();
}

/**
 * /health reports the database ok. The recorder thread publishes its state just after the commit that
 * made the rows visible: a test that saw them can ask /health before it (a loaded machine can deschedule
 * the thread in between), so it waits.
 */
function untilDatabaseOk(url: string) {
  return until('/health to report the database ok', async () => (await health(url)).database === 'ok');
}

/** Count rows straight from the file, as `oai-proxy logs` would. */
/** `oai-proxy models ...` on the proxy's database file, as another terminal would run it. */
async function models(proxy: TestProxy, ...argv: string[]) {
  const io = createTestIo({ HOME: proxy.dir }, proxy.dir);
  const code = await main(['models', ...argv, '--db', proxy.dbPath], io);
  return { code, out: io.out(), err: io.err() };
}

/** The model ids the running proxy serves at GET /v1/models. */
async function listModels(url: string): Promise<string[]> {
  const body = (await (await fetch(`${url}/v1/models`)).json()) as { data: { id: string }[] };
  return body.data.map((m) => m.id);
}

/**
 * Three exchanges, a backup of the database (`vacuum into`), then two more the backup does not have (in
 * the WAL, checkpointed into the file or not). Returns the backup's path.
 */
async function backupOfThreeOfFive(proxy: TestProxy): Promise<string> {
  for (let i = 0; i < 3; i++) expect((await chat(proxy.url)).status).toBe(200);
  await proxy.waitForRows(3);
  const backup = `${proxy.dbPath}.backup`;
  const live = new Database(proxy.dbPath);
  live.exec(`vacuum into '${backup}'`);
  live.close();
  for (let i = 0; i < 2; i++) expect((await chat(proxy.url)).status).toBe(200);
  await proxy.waitForRows(5);
  return backup;
}

function countRows(path: string): number {
  const db = new Database(path, { readonly: true });
  try {
    return (db.prepare('select count(*) as n from exchanges').get() as { n: number }).n;
  } finally {
    db.close();
  }
}

describe('database trouble while running', () => {
  test('locked by another writer for seconds: requests stay fast, /health reports it, rows land afterwards', async () => {
    const { proxy } = await setup();
    const other = new Database(proxy.dbPath);
    cleanups.push(() => other.close());
    other.exec('begin immediate');
    const slowest: number[] = [];
    for (let i = 0; i < 15; i++) {
      const r = await chat(proxy.url);
      expect(r.status).toBe(200);
      slowest.push(r.ms);
      await sleep(60);
    }
    // the writer backs off instead of holding the event loop in SQLite's busy wait (5 s)
    expect(Math.max(...slowest)).toBeLessThan(2000);
    const h = await health(proxy.url);
    expect(h).toMatchObject({ database: 'error', database_error: expect.stringMatching(/locked|busy/i) });
    expect(h.queued_log_rows).toBeGreaterThan(0);
    other.exec('rollback');
    await until('the queue to drain', async () => (await health(proxy.url)).queued_log_rows === 0);
    expect(await health(proxy.url)).toMatchObject({ database: 'ok', database_error: null });
    expect(countRows(proxy.dbPath)).toBe(15);
  });

  test('the recorder thread died, then another process holds the write lock: the rollups, now on this thread, never hold up requests', async () => {
    const upstream = await createFakeUpstream();
    const proxy = await startTestProxy(
      { OPENAI_BASE_URL: upstream.baseUrl },
      { recorderWorkerFile: join(import.meta.dirname, '..', 'helpers', 'crashing-recorder.mjs') },
    );
    const other = new Database(proxy.dbPath);
    try {
      expect((await chat(proxy.url)).status).toBe(200); // the thread dies on its row
      await proxy.waitForLogLines((lines) => lines.some((l) => /recorder thread .* stopped/.test(l.msg)));
      // The rollups (on this thread now) have sealed the past hours…
      const sealed = other.prepare('select sealed_until from exchange_stats_state where id = 1').pluck();
      await until('the rollups to seal the past hours', () => (sealed.get() as number) > 0);
      // …then rows in one of them, for the rollups to compute again, and the lock: nothing in this thread
      // runs in between.
      const insert = other.prepare(INSERT_EXCHANGE_SQL);
      const hoursAgo = Date.now() - 3 * 3_600_000;
      for (let i = 0; i < 20; i++)
        insert.run(toRow(rec(`lock${String.fromCharCode(97 + i)}`, { startedAt: hoursAgo })));
      other.exec('begin immediate');
      const slowest: number[] = [];
      for (let i = 0; i < 12; i++) {
        const r = await chat(proxy.url);
        expect(r.status).toBe(200);
        slowest.push(r.ms);
        await sleep(60);
      }
      // A job's slice meeting the lock used to sleep in SQLite's busy wait (5 s) on the event loop.
      expect(Math.max(...slowest)).toBeLessThan(2000);
      other.exec('rollback');
      const hour = hoursAgo - (hoursAgo % 3_600_000);
      const requests = other.prepare(
        "select requests from exchange_stats where hour = ? and dim = 'model' and key = 'gpt-4o'",
      );
      await until('the rollup of that hour', () => requests.pluck().get(hour) === 20);
    } finally {
      other.close();
      await proxy.close();
      await upstream.close();
    }
  });

  test('disk full: proxying continues, the queue stays bounded and spills oldest-first to the log file, rows resume after', async () => {
    const { proxy } = await setup({ LOG_QUEUE_MAX: '100' });
    expect((await chat(proxy.url)).status).toBe(200);
    await proxy.waitForRows(1);
    // Every insert fails as on a full disk. (SQLite's max_page_count would be the real thing, but it
    // limits one connection only, and the recorder writes on its own thread's connection.)
    const full = fillDisk(proxy.dbPath);
    for (let i = 0; i < 130; i++) expect((await chat(proxy.url, 3000)).status).toBe(200);
    await until('the failure to show', async () => (await health(proxy.url)).database === 'error');
    const h = await health(proxy.url);
    expect(h.database_error).toMatch(/full/i);
    expect(h.queued_log_rows).toBeLessThanOrEqual(100);
    expect(h.spilled_log_rows).toBe(130 - h.queued_log_rows);
    // /health counts a spill when the thread makes it; the rows reach this thread's log in a message.
    const spilled = (
      await proxy.waitForLogLines(
        (lines) => lines.filter((l) => l.spilled_exchange).length >= h.spilled_log_rows,
      )
    ).filter((l) => l.spilled_exchange);
    expect(spilled).toHaveLength(h.spilled_log_rows);
    expect(spilled[0]).toMatchObject({
      reason: 'queue_full',
      msg: 'database queue full: exchange spilled to the log file',
    });
    expect(spilled[0].spilled_exchange).toMatchObject({ path: '/v1/chat/completions', status: 200 });
    expect(spilled[0].spilled_exchange.request_body).toContain('xxx');
    full.free();
    await until('the queue to drain', async () => (await health(proxy.url)).queued_log_rows === 0);
    expect((await health(proxy.url)).database).toBe('ok');
    expect(countRows(proxy.dbPath)).toBe(1 + h.queued_log_rows);
    // nothing was lost: spilled ids + stored ids = every answered request
    const stored = new Set(proxy.rows().map((r) => r.id));
    for (const l of spilled) expect(stored.has(l.spilled_exchange.id)).toBe(false);
    expect(stored.size + spilled.length).toBe(131);
    // oldest first: every spilled exchange is older than every row kept in the queue (ids sort by time)
    const kept = proxy
      .rows()
      .slice(1)
      .map((r) => r.id);
    const newestSpilled = spilled
      .map((l) => l.spilled_exchange.id as string)
      .sort()
      .at(-1)!;
    expect(kept.every((id) => id > newestSpilled)).toBe(true);
  });

  test('disk still full at shutdown: the queued rows go to the log file, with their bodies', async () => {
    const { proxy } = await setup();
    const full = fillDisk(proxy.dbPath);
    for (let i = 0; i < 3; i++) expect((await chat(proxy.url)).status).toBe(200);
    await proxy.running.close();
    full.free();
    const spilled = readFileSync(proxy.logPath, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l))
      .filter((l) => l.spilled_exchange);
    expect(spilled).toHaveLength(3);
    // Said as it is: the queue held 3 rows; the database refused them when the proxy stopped.
    expect(spilled.map((l) => [l.reason, l.msg])).toEqual(
      spilled.map(() => [
        'refused_at_close',
        'the database still refused this exchange at shutdown: spilled to the log file',
      ]),
    );
    expect(spilled[0].spilled_exchange).toMatchObject({ path: '/v1/chat/completions', status: 200 });
    expect(spilled[0].spilled_exchange.request_body).toContain('"messages"');
    expect(countRows(proxy.dbPath)).toBe(0);
  });

  test('disk full at shutdown of `oai-proxy serve`: the stop line counts the rows spilled to the log file', async () => {
    const upstream = await createFakeUpstream();
    const tmp = createTempDir();
    cleanups.push(tmp.cleanup, () => void upstream.close());
    const ac = new AbortController();
    const io = { ...createTestIo({ HOME: tmp.path, LOG_LEVEL: 'warn' }, tmp.path), signal: ac.signal };
    const done = main(['serve', '--port', '0', '--db', 'p.db', '--upstream', upstream.baseUrl], io);
    const url = await until(
      'the banner',
      () => /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(io.err())?.[1],
    );
    expect((await chat(url)).status).toBe(200);
    await until('the first row', () => countRows(join(tmp.path, 'p.db')) === 1);
    const full = fillDisk(join(tmp.path, 'p.db'));
    for (let i = 0; i < 2; i++) expect((await chat(url)).status).toBe(200);
    ac.abort();
    expect(await done).toBe(0);
    full.free();
    expect(io.err()).toContain(
      `stopped; 1 exchanges recorded this run, 2 spilled to the log file ${join(tmp.path, 'oai-proxy.log')} (see spilled_exchange)`,
    );
  });

  test('file made read-only (chmod 0444) while running: the open handle keeps recording', async () => {
    const { proxy } = await setup();
    expect((await chat(proxy.url)).status).toBe(200);
    await proxy.waitForRows(1);
    const { chmodSync } = await import('node:fs');
    chmodSync(proxy.dbPath, 0o444);
    for (let i = 0; i < 5; i++) expect((await chat(proxy.url)).status).toBe(200);
    await proxy.waitForRows(6);
    expect((await health(proxy.url)).database).toBe('ok');
    chmodSync(proxy.dbPath, 0o600);
  });

  test.each([
    ['deleted (with its -wal and -shm)', 'delete'],
    ['deleted (the .db file only)', 'delete-db'],
    ['replaced by another file', 'replace'],
  ])(
    'database file %s while running: a new one is created at the path and recording continues',
    async (_n, how) => {
      const { proxy } = await setup();
      for (let i = 0; i < 3; i++) expect((await chat(proxy.url)).status).toBe(200);
      await proxy.waitForRows(3);
      // A model added from another terminal lives in the registry tables of the same file.
      expect((await models(proxy, 'add', 'before-model')).code).toBe(0);
      await until('the proxy to see it', async () => (await listModels(proxy.url)).includes('before-model'));
      proxy.flush(); // those GET /v1/models rows go to the old file
      if (how === 'delete' || how === 'delete-db') {
        rmSync(proxy.dbPath);
        if (how === 'delete') {
          rmSync(`${proxy.dbPath}-wal`, { force: true });
          rmSync(`${proxy.dbPath}-shm`, { force: true });
        }
      } else {
        writeFileSync(`${proxy.dbPath}.new`, '');
        renameSync(`${proxy.dbPath}.new`, proxy.dbPath);
      }
      for (let i = 0; i < 4; i++) expect((await chat(proxy.url)).status).toBe(200);
      await until('a new database file with the new rows', () => {
        try {
          return existsSync(proxy.dbPath) && countRows(proxy.dbPath) === 4;
        } catch {
          return false;
        }
      });
      // a file the proxy creates holds prompts: 0600 (a replacement keeps its owner's mode)
      if (how !== 'replace') expect(statSync(proxy.dbPath).mode & 0o777).toBe(0o600);
      await untilDatabaseOk(proxy.url);
      const moved = (l: Record<string, any>) => /deleted or replaced/.test(l.msg ?? '');
      expect((await proxy.waitForLogLines((lines) => lines.some(moved))).some(moved)).toBe(true);
      // still recording into the new file
      expect((await chat(proxy.url)).status).toBe(200);
      await until('the next row', () => countRows(proxy.dbPath) === 5);
      expect(readFileSync(proxy.dbPath).subarray(0, 15).toString()).toBe('SQLite format 3');
      // The registry moved with it: the new file holds the model, and edits to the new file reach the proxy.
      // (The old -wal and -shm, when left behind, were removed before the new file was opened.)
      const list = await models(proxy, 'list', '--json');
      expect(JSON.parse(list.out).models.map((m: { name: string }) => m.name)).toContain('before-model');
      expect((await models(proxy, 'add', 'after-model')).code).toBe(0);
      await until('the proxy to see the edit', async () =>
        (await listModels(proxy.url)).includes('after-model'),
      );
    },
  );

  test('database file replaced by a backup while running: the backup keeps its rows and gets the new ones', async () => {
    const { proxy } = await setup();
    const backup = await backupOfThreeOfFive(proxy);
    renameSync(backup, proxy.dbPath);
    for (let i = 0; i < 4; i++) expect((await chat(proxy.url)).status).toBe(200);
    // The old file's WAL was not applied to the backup: it holds its own 3 rows and the 4 new ones.
    await until('the backup with the new rows', () => {
      try {
        return countRows(proxy.dbPath) === 7;
      } catch {
        return false;
      }
    });
    await untilDatabaseOk(proxy.url);
    const check = new Database(proxy.dbPath, { readonly: true });
    expect(check.pragma('integrity_check', { simple: true })).toBe('ok');
    check.close();
    expect((await chat(proxy.url)).status).toBe(200);
    await until('the next row', () => countRows(proxy.dbPath) === 8);
  });

  test('a backup moved into place while the proxy is idle: noticed without a request, so `models add` on it lasts', async () => {
    const { proxy } = await setup({ LOG_FLUSH_INTERVAL_MS: '50' });
    const backup = await backupOfThreeOfFive(proxy);
    const oldWal = statSync(`${proxy.dbPath}-wal`).ino;
    renameSync(backup, proxy.dbPath);
    // No request from here on: the proxy lets go of the old file's -wal and -shm by itself (removes them;
    // the file it opens again gets its own).
    await until('the proxy to let go of the old -wal', () => {
      try {
        return statSync(`${proxy.dbPath}-wal`).ino !== oldWal;
      } catch {
        return true;
      }
    });
    expect(await models(proxy, 'add', 'zz-after-restore')).toMatchObject({ code: 0 });
    const shown = await models(proxy, 'show', 'zz-after-restore');
    expect(shown.code).toBe(0);
    expect(shown.out).toContain('zz-after-restore');
    const check = new Database(proxy.dbPath, { readonly: true });
    expect(check.pragma('integrity_check', { simple: true })).toBe('ok');
    expect(check.prepare('select count(*) as n from exchanges').get()).toEqual({ n: 3 });
    check.close();
    await untilDatabaseOk(proxy.url);
  });
});

test.skipIf(readOnlyUnsupported)(
  'database file read-only at start-up: serve stops with exit 2 naming it (it would record nothing); logs still reads it',
  async () => {
    const tmp = createTempDir();
    const path = join(tmp.path, 'r.db');
    await (await openDatabase(path)).close();
    // chmod 0400 for a user; as root (who ignores modes) an immutable file, refused the same way.
    cleanups.push(makeReadOnly(path), tmp.cleanup);
    const io = createTestIo({ HOME: tmp.path }, tmp.path);
    expect(await main(['serve', '--port', '0', '--db', path, '--upstream', 'http://127.0.0.1:9'], io)).toBe(
      2,
    );
    expect(io.err()).toMatch(
      /^oai-proxy: Cannot write the database \S+\/r\.db: permission denied \((EACCES|EPERM)\); make it writable for this user, or choose another location with --db or DATABASE_URL\n$/,
    );
    expect(io.err()).toContain(path);
    expect(existsSync(join(tmp.path, 'oai-proxy.log'))).toBe(false);
    // A reader needs no write access.
    const reader = createTestIo({ HOME: tmp.path }, tmp.path);
    expect(await main(['logs', '--db', path], reader)).toBe(0);
  },
);

test.each([
  ['the old file’s -wal and -shm are removed', false],
  ['a replacement’s own -wal and -shm are kept', true],
])('removeLeftovers after the database file was moved away: %s', async (_n, replacedToo) => {
  const tmp = createTempDir();
  try {
    const path = join(tmp.path, 'proxy.db');
    const db = await openDatabase(path);
    db.sqlite.exec('create table t (x); insert into t values (1)');
    renameSync(path, `${path}.old`);
    if (replacedToo) {
      // A backup moved in with its own companions (other files, other inodes).
      writeFileSync(`${path}.new-wal`, 'backup wal');
      writeFileSync(`${path}.new-shm`, 'backup shm');
      renameSync(`${path}.new-wal`, `${path}-wal`);
      renameSync(`${path}.new-shm`, `${path}-shm`);
    }
    expect(db.moved()).toBe(true);
    await db.close();
    // SQLite itself leaves the WAL of an unlinked database file behind.
    expect(existsSync(`${path}-wal`)).toBe(true);
    db.removeLeftovers();
    expect(existsSync(`${path}-wal`)).toBe(replacedToo);
    expect(existsSync(`${path}-shm`)).toBe(replacedToo);
    if (replacedToo) expect(readFileSync(`${path}-wal`, 'utf8')).toBe('backup wal');
  } finally {
    tmp.cleanup();
  }
});

test('a new database file another process holds locked (two serves starting together): the open waits for it, then switches to WAL and migrates', async () => {
  const tmp = createTempDir();
  cleanups.push(tmp.cleanup);
  const path = join(tmp.path, 'shared.db');
  writeFileSync(path, '');
  // The other process, caught switching the new file to WAL or migrating it: a write lock, held 400 ms.
  const holder = spawn(
    process.execPath,
    [
      '-e',
      `const db = new (require('better-sqlite3'))(process.argv[1]);
       db.exec('begin immediate');
       process.stdout.write('locked\\n');
       setTimeout(() => { db.exec('commit'); db.close(); }, 400);`,
      path,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  const exited = new Promise((r) => holder.once('exit', r));
  await new Promise<void>((resolve) => holder.stdout.once('data', () => resolve()));
  const db = await openDatabase(path);
  try {
    expect(db.sqlite.pragma('journal_mode', { simple: true })).toBe('wal');
    expect(
      db.sqlite.prepare("select count(*) as n from sqlite_master where name = 'exchanges'").get(),
    ).toEqual({ n: 1 });
  } finally {
    await db.close();
  }
  expect(await exited).toBe(0);
});
