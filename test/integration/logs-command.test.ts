import { spawn } from 'node:child_process';
import dns from 'node:dns';
import {
  chmodSync,
  closeSync,
  existsSync,
  linkSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { Kysely, Migrator, SqliteDialect, sql } from 'kysely';
import pg from 'pg';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { main } from '../../src/cli.js';
import { openDatabase } from '../../src/storage/database.js';
import type { ExchangeRecord } from '../../src/storage/exchange-record.js';
import { filterExpression } from '../../src/storage/log-queries.js';
import { INSERT_EXCHANGE_SQL, toRow } from '../../src/storage/log-store.js';
import { down as down0009 } from '../../src/storage/migrations/0009-vector-index-target.js';
import { down as down0011 } from '../../src/storage/migrations/0011-search-stream-choices.js';
import { down as down0012 } from '../../src/storage/migrations/0012-search-embeddings-vectors.js';
import { migrations } from '../../src/storage/migrations/index.js';
import { down0008 } from '../../src/storage/migrations/postgres.js';
import { pgRow } from '../../src/storage/pg-log-store.js';
import { indexPendingExchanges } from '../../src/storage/search-index.js';
import { createStatsRollup } from '../../src/storage/stats-rollup.js';
import { openStorage } from '../../src/storage/storage.js';
import { sleep } from '../helpers/fake-upstream.js';
import { logsSuite, NOW, rec, runNode, standardRows } from '../helpers/logs-suite.js';
import { createTestPgDatabase, pgQuery, pgUrl, startRelay, warnIfNoPg } from '../helpers/pg.js';
import { createTempDir } from '../helpers/temp-dir.js';
import { createTestIo } from '../helpers/test-proxy.js';
import { until } from '../helpers/until.js';

/**
 * Record rows into the SQLite file as `serve` does, and as serve's background jobs do, index them for
 * --grep and roll up the closed hours for `logs stats` (so stats read rollups and rows together).
 */
async function seedSqlite(path: string, records: ExchangeRecord[]): Promise<void> {
  const db = await openDatabase(path);
  const insert = db.sqlite.prepare(INSERT_EXCHANGE_SQL);
  db.sqlite.transaction(() => {
    for (const r of records) insert.run(toRow(r));
  })();
  indexPendingExchanges(db.sqlite, 1_000_000);
  const rollup = createStatsRollup({ sqlite: () => db.sqlite });
  rollup.drain();
  rollup.close();
  await db.close();
}

/** Record rows into a PostgreSQL database as the batched writer does (multi-row INSERTs of 500). */
async function seedPostgres(url: string, records: ExchangeRecord[]): Promise<void> {
  const storage = await openStorage({ kind: 'postgres', url });
  try {
    for (let i = 0; i < records.length; i += 500)
      await storage.db
        .insertInto('exchanges')
        .values(records.slice(i, i + 500).map(pgRow))
        .execute();
  } finally {
    await storage.close();
  }
}

// The same suite on both databases.
logsSuite('SQLite', async () => {
  const tmp = createTempDir();
  const path = join(tmp.path, 'proxy.db');
  return {
    db: path,
    seed: (records) => seedSqlite(path, records),
    writeFromAnotherProcess: (record) =>
      runNode(
        `const D = require('better-sqlite3');
         const db = new D(process.argv[1]);
         db.pragma('journal_mode = WAL');
         db.prepare(process.argv[2]).run(JSON.parse(process.argv[3]));
         db.close();`,
        [path, INSERT_EXCHANGE_SQL, JSON.stringify(toRow(record))],
      ),
    cleanup: async () => tmp.cleanup(),
  };
});

warnIfNoPg();
describe.skipIf(!pgUrl)('PostgreSQL (OAI_PROXY_TEST_PG_URL)', () => {
  logsSuite('PostgreSQL', async () => {
    const database = await createTestPgDatabase();
    // `serve` creates the tables; `logs` never does.
    await seedPostgres(database.url, []);
    return {
      db: database.url,
      seed: (records) => seedPostgres(database.url, records),
      writeFromAnotherProcess: (record) =>
        runNode(
          `const pg = require('pg');
           const row = JSON.parse(process.argv[2]);
           const cols = Object.keys(row);
           const c = new pg.Client({ connectionString: process.argv[1] });
           c.connect()
             .then(() => c.query(
               'insert into exchanges (' + cols.map((k) => '"' + k + '"').join(', ') + ') values (' +
                 cols.map((_, i) => '$' + (i + 1)).join(', ') + ')',
               cols.map((k) => row[k])))
             .then(() => c.end());`,
          [database.url, JSON.stringify(pgRow(record))],
        ),
      cleanup: () => database.drop(),
    };
  });

  test('migration 0008 rebuilds the search index: a row recorded before it is found by a word after a newline', async () => {
    const database = await createTestPgDatabase();
    const grep = async (text: string) => {
      const io = createTestIo({}, process.cwd());
      expect(await main(['logs', '--grep', text, '--json', '--db', database.url], io), io.err()).toBe(0);
      return (JSON.parse(io.out()) as { id: string }[]).map((x) => x.id.replace(/0+$/, ''));
    };
    try {
      // A database as it was before 0008: the old function, the index built with it.
      let storage = await openStorage({ kind: 'postgres', url: database.url });
      // Later migrations first, newest first (0010 does nothing on PostgreSQL).
      await down0012(storage.db);
      await down0011(storage.db);
      await down0009(storage.db);
      await down0008(storage.db);
      await sql`delete from kysely_migration where name in ('0008-search-text-unescaped', '0009-vector-index-target', '0010-search-index-mark-follows-deletes', '0011-search-stream-choices', '0012-search-embeddings-vectors')`.execute(
        storage.db,
      );
      await storage.close();
      // Recorded then (a bare client: opening the store would apply 0008).
      const row = pgRow(
        rec('e1', {
          requestBody: JSON.stringify({ messages: [{ role: 'user', content: 'line one\nsecond line' }] }),
        }),
      );
      const cols = Object.keys(row);
      await pgQuery(
        database.url,
        `insert into exchanges (${cols.map((c) => `"${c}"`).join(', ')}) values (${cols.map((_, i) => `$${i + 1}`).join(', ')})`,
        Object.values(row),
      );
      // What the GIN index itself holds (a small table is otherwise scanned, computing the vectors anew).
      const fromIndex = async (word: string) => {
        const client = new pg.Client({ connectionString: database.url });
        await client.connect();
        try {
          await client.query('set enable_seqscan = off');
          const r = await client.query(
            `select id from exchanges
             where oai_proxy_search_vector(request_body, response_body, assembled) @@ to_tsquery('simple', $1)`,
            [word],
          );
          return r.rows.map((x) => x.id.replace(/0+$/, ''));
        } finally {
          await client.end();
        }
      };
      expect(await grep('second')).toEqual([]);
      expect(await fromIndex('nsecond')).toEqual(['e1']);

      storage = await openStorage({ kind: 'postgres', url: database.url });
      await storage.close();
      expect(await grep('second')).toEqual(['e1']);
      expect(await grep('one second')).toEqual(['e1']);
      expect(await fromIndex('second')).toEqual(['e1']);
      expect(await fromIndex('nsecond')).toEqual([]);
      // Still serial and costly for the planner (0005).
      expect(
        await pgQuery(
          database.url,
          `select proparallel, procost from pg_proc where proname = 'oai_proxy_search_vector'`,
        ),
      ).toEqual([{ proparallel: 'u', procost: 5000 }]);
    } finally {
      await database.drop();
    }
  });
});

describe('database problems: SQLite', () => {
  let tmp: { path: string; cleanup(): void };
  let dbPath: string;
  beforeEach(() => {
    tmp = createTempDir();
    dbPath = join(tmp.path, 'proxy.db');
  });
  afterEach(() => tmp.cleanup());

  async function logs(...argv: string[]) {
    const io = createTestIo({ HOME: tmp.path }, tmp.path);
    const code = await main(['logs', ...argv, '--db', dbPath], io);
    return { code, out: io.out(), err: io.err() };
  }

  test('a missing database: one line naming the file, exit 1, no file created', async () => {
    const r = await logs();
    expect(r.code).toBe(1);
    expect(r.err.trim().split('\n')).toHaveLength(1);
    expect(r.err).toContain(dbPath);
    expect(existsSync(dbPath)).toBe(false);
    expect((await logs('prune', '--older-than', '1d')).code).toBe(1);
    expect(existsSync(dbPath)).toBe(false);
  });

  test('an empty or corrupt file: one line, exit 1', async () => {
    writeFileSync(dbPath, '');
    let r = await logs('stats');
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/is empty/);
    writeFileSync(dbPath, 'this is not sqlite at all, just some text that goes on for a while'.repeat(100));
    r = await logs('show', 'abc');
    expect(r.code).toBe(1);
    expect(r.err.trim().split('\n')).toHaveLength(1);
    expect(r.err).toContain(dbPath);
  });

  test('--follow goes on in the file that replaced the one it reads (deleted and recreated, a backup moved in)', async () => {
    await seedSqlite(dbPath, [rec('a1', { startedAt: Date.now() - 60_000 })]);
    const ac = new AbortController();
    const io = { ...createTestIo({ HOME: tmp.path }, tmp.path), signal: ac.signal };
    const done = main(['logs', '--follow', '--jsonl', '--interval', '30', '--db', dbPath], io);
    await until("'a1' on stdout", () => io.out().includes('a1'));
    await seedSqlite(dbPath, [rec('a2', { startedAt: Date.now() })]);
    await until("'a2' on stdout", () => io.out().includes('a2'));
    // The follower still has the old file (and its -wal and -shm) open: moved aside, it is gone from the path.
    const moveAside = (suffixes: string[], to: string) => {
      for (const f of suffixes) if (existsSync(dbPath + f)) renameSync(dbPath + f, `${dbPath}.${to}${f}`);
    };
    moveAside(['', '-wal', '-shm'], 'deleted');
    await until('the waiting notice', () => io.err().includes('waiting for a new one'));
    // `serve` creates a new file on its next write.
    await seedSqlite(dbPath, [rec('b1', { startedAt: Date.now() })]);
    await until("'b1' on stdout", () => io.out().includes('b1'));
    // A backup moved in place: its rows are history; the rows `serve` adds to it are new.
    const backup = join(tmp.path, 'backup.db');
    await seedSqlite(backup, [rec('c0', { startedAt: Date.now() - 3_600_000 })]);
    moveAside(['-wal', '-shm'], 'replaced');
    renameSync(backup, dbPath);
    await seedSqlite(dbPath, [rec('c1', { startedAt: Date.now() })]);
    await until("'c1' on stdout", () => io.out().includes('c1'));
    await sleep(150); // a few more polls: nothing is printed twice
    ac.abort();
    expect(await done).toBe(0);
    const printed = io
      .out()
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l).id.slice(0, 2));
    expect(printed).toEqual(['a1', 'a2', 'b1', 'c1']);
    expect(io.err().trim().split('\n')).toEqual([
      `oai-proxy: the database file ${dbPath} was deleted or replaced; waiting for a new one there (Ctrl-C to stop)`,
      `oai-proxy: the database file ${dbPath} was replaced; following the new one`,
      `oai-proxy: the database file ${dbPath} was replaced; following the new one`,
    ]);
  });

  test('--follow --grep waits while `serve` is still migrating the file that replaced the one it reads, then follows it', async () => {
    await seedSqlite(dbPath, [rec('a1', { startedAt: Date.now() - 60_000 })]);
    const ac = new AbortController();
    const io = { ...createTestIo({ HOME: tmp.path }, tmp.path), signal: ac.signal };
    const done = main(
      ['logs', '--follow', '--grep', 'kenobi', '--jsonl', '--interval', '20', '--db', dbPath],
      io,
    );
    await until("'a1' on stdout", () => io.out().includes('a1'));
    for (const f of ['', '-wal', '-shm'])
      if (existsSync(dbPath + f)) renameSync(dbPath + f, `${dbPath}.deleted${f}`);
    // `serve` has created the new file and run 0001 (the exchanges table), not yet 0002 (the search index).
    const partial = new Kysely<unknown>({ dialect: new SqliteDialect({ database: new Database(dbPath) }) });
    const migrator = new Migrator({ db: partial, provider: { getMigrations: async () => migrations } });
    expect((await migrator.migrateTo('0001-exchanges')).error).toBeUndefined();
    await until('the waiting notice', () => io.err().includes('waiting for a new one'));
    // Every poll opens the half-made file and gives it up again: no descriptor is left open.
    const fds = () => readdirSync('/proc/self/fd').length;
    await sleep(100);
    const before = fds();
    await sleep(200);
    expect(fds()).toBeLessThanOrEqual(before + 1);
    expect((await migrator.migrateToLatest()).error).toBeUndefined();
    await partial.destroy();
    await seedSqlite(dbPath, [rec('b1', { startedAt: Date.now() })]);
    await until("'b1' on stdout", () => io.out().includes('b1'));
    ac.abort();
    expect(await done).toBe(0);
    expect(
      io
        .out()
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l).id.slice(0, 2)),
    ).toEqual(['a1', 'b1']);
    expect(io.err().trim().split('\n')).toEqual([
      `oai-proxy: the database file ${dbPath} was deleted or replaced; waiting for a new one there (Ctrl-C to stop)`,
      `oai-proxy: the database file ${dbPath} was replaced; following the new one`,
    ]);
  });

  test('prune while another process holds the write lock: after the 5 s busy wait, one line saying so and what to do, exit 1', async () => {
    await seedSqlite(dbPath, [rec('a1', { startedAt: NOW - 10 * 86_400_000 })]);
    const other = new Database(dbPath);
    try {
      other.exec('begin immediate');
      const r = await logs('prune', '--older-than', '1d');
      other.exec('rollback');
      expect(r.code).toBe(1);
      expect(r.err).toBe(
        `oai-proxy: Database ${dbPath} is locked by another process (another \`oai-proxy models\` or \`oai-proxy logs prune\`, or an sqlite3 shell in a write transaction) and stayed locked for 5 s; exchanges deleted before that stay deleted, the rest are kept. Try again once it has finished\n`,
      );
    } finally {
      other.close();
    }
    expect(JSON.parse((await logs('--json')).out)).toHaveLength(1);
  }, 20_000);

  test('reads a database that is not being written (no -wal/-shm present)', async () => {
    await seedSqlite(dbPath, [rec('a1')]);
    expect(existsSync(`${dbPath}-wal`)).toBe(false);
    const r = await logs('--json');
    expect(r.code, r.err).toBe(0);
    expect(JSON.parse(r.out).map((x: { id: string }) => x.id.slice(0, 2))).toEqual(['a1']);
  });
});

describe('logs export --out: SQLite', () => {
  let tmp: { path: string; cleanup(): void };
  let dbPath: string;
  beforeEach(async () => {
    tmp = createTempDir();
    dbPath = join(tmp.path, 'proxy.db');
    await seedSqlite(dbPath, [rec('a1'), rec('a2'), rec('a3')]);
  });
  afterEach(() => tmp.cleanup());

  async function logs(...argv: string[]) {
    const io = createTestIo({ HOME: tmp.path }, tmp.path);
    const code = await main(['logs', ...argv, '--db', dbPath], io);
    return { code, out: io.out(), err: io.err() };
  }

  test.each(['jsonl', 'csv'])(
    '--format %s into a missing directory: exit 1 naming --out and the path, no success line',
    async (format) => {
      const out = join(tmp.path, 'nodir', 'x.out');
      const r = await logs('export', '--format', format, '--out', out);
      expect(r.code).toBe(1);
      expect(r.err).toBe(`oai-proxy: Cannot write --out ${out}: ENOENT\n`);
      expect(r.out).toBe('');
      expect(existsSync(join(tmp.path, 'nodir'))).toBe(false);
    },
  );

  test('on a 40-column terminal the progress bar fits the line: no redraw wraps', async () => {
    const io = createTestIo({ HOME: tmp.path }, tmp.path);
    Object.assign(io.stderr, { isTTY: true, columns: 40 });
    const out = join(tmp.path, 'x.jsonl');
    expect(await main(['logs', 'export', '--out', out, '--db', dbPath], io)).toBe(0);
    const [bar, done] = io.err().split('\n');
    const redraws = bar.split('\r').slice(1);
    expect(redraws.at(-1)).toBe(`exporting [${'#'.repeat(18)}] 100% 3/3`);
    for (const line of redraws) expect(line.length).toBeLessThanOrEqual(39);
    expect(done).toBe(`exported 3 exchanges to ${out}`);
  });

  test.skipIf(!existsSync('/dev/full')).each(['jsonl', 'csv'])(
    '--format %s onto a full disk (/dev/full): exit 1 with ENOSPC, no success line',
    async (format) => {
      const r = await logs('export', '--format', format, '--out', '/dev/full');
      expect(r.code).toBe(1);
      expect(r.err).toBe('oai-proxy: Cannot write --out /dev/full: ENOSPC\n');
    },
  );

  test.each([
    ['the database itself', (db: string) => db, 'the database', (db: string) => db],
    [
      'its -wal file',
      (db: string) => `${db}-wal`,
      'the -wal file of the database',
      (db: string) => `${db}-wal`,
    ],
    [
      'its -shm file',
      (db: string) => `${db}-shm`,
      'the -shm file of the database',
      (db: string) => `${db}-shm`,
    ],
    [
      'its -journal file',
      (db: string) => `${db}-journal`,
      'the -journal file of the database',
      (db: string) => `${db}-journal`,
    ],
    ['a hard link to the database', (db: string) => `${db}.link`, 'the database', (db: string) => db],
    [
      'the log file serve writes beside it',
      (db: string) => join(db, '..', 'oai-proxy.log'),
      'the log file `oai-proxy serve` writes',
      (db: string) => join(db, '..', 'oai-proxy.log'),
    ],
    [
      'a rotated log file (.3, not yet there)',
      (db: string) => join(db, '..', 'oai-proxy.log.3'),
      'a rotated log file',
      (db: string) => join(db, '..', 'oai-proxy.log.3'),
    ],
  ])('--out naming %s: exit 2 naming --out and the file, nothing overwritten', async (_, out, what, path) => {
    linkSync(dbPath, `${dbPath}.link`);
    writeFileSync(join(tmp.path, 'oai-proxy.log'), '{"line":1}\n');
    const before = readFileSync(dbPath);
    const r = await logs('export', '--out', out(dbPath));
    expect(r.err).toBe(
      `oai-proxy: --out ${out(dbPath)} is ${what} (${path(dbPath)}): writing the export there would destroy it; choose another file\n`,
    );
    expect(r.code).toBe(2);
    expect(readFileSync(dbPath).equals(before)).toBe(true);
    expect(readFileSync(join(tmp.path, 'oai-proxy.log'), 'utf8')).toBe('{"line":1}\n');
    expect((await logs('--json')).out).toContain('a3');
  });

  test('--out naming the LOG_FILE_PATH file, relative to the working directory: refused, file kept', async () => {
    writeFileSync(join(tmp.path, 'custom.log'), 'kept\n');
    const io = createTestIo({ HOME: tmp.path, LOG_FILE_PATH: join(tmp.path, 'custom.log') }, tmp.path);
    const code = await main(['logs', 'export', '--db', dbPath, '--out', 'custom.log'], io);
    expect(io.err()).toBe(
      `oai-proxy: --out custom.log is the log file \`oai-proxy serve\` writes (${join(tmp.path, 'custom.log')}): writing the export there would destroy it; choose another file\n`,
    );
    expect(code).toBe(2);
    expect(readFileSync(join(tmp.path, 'custom.log'), 'utf8')).toBe('kept\n');
  });

  test('a new --out file is created 0600 (it holds prompts); an existing file keeps its mode', async () => {
    const out = join(tmp.path, 'x.jsonl');
    let r = await logs('export', '--out', out);
    expect(r.code, r.err).toBe(0);
    expect(r.err).toBe(`exported 3 exchanges to ${out}\n`);
    expect(readFileSync(out, 'utf8').trim().split('\n')).toHaveLength(3);
    expect(statSync(out).mode & 0o777).toBe(0o600);

    const mine = join(tmp.path, 'mine.csv');
    writeFileSync(mine, 'old content that is longer than nothing', { mode: 0o640 });
    chmodSync(mine, 0o640);
    r = await logs('export', '--format', 'csv', '--out', mine);
    expect(r.code, r.err).toBe(0);
    expect(statSync(mine).mode & 0o777).toBe(0o640);
    expect(readFileSync(mine, 'utf8')).toMatch(/^id,time,/);
  });
});

describe('logs tail lines on a terminal: SQLite', () => {
  let tmp: { path: string; cleanup(): void };
  beforeEach(() => {
    tmp = createTempDir();
  });
  afterEach(() => tmp.cleanup());

  // Columns as a terminal draws them: CJK ideographs and emoji take two.
  const columns = (s: string) =>
    [...s].reduce((w, c) => w + (/[\u4e00-\u9fff\u{1f300}-\u{1faff}]/u.test(c) ? 2 : 1), 0);

  test('a model in CJK and emoji does not shift the columns after it (padded by display width)', async () => {
    const dbPath = join(tmp.path, 'proxy.db');
    const wide = '模型测试😀';
    await seedSqlite(dbPath, [
      rec('w1', { model: 'gpt-4o', upstreamModel: 'gpt-4o', startedAt: Date.now() - 2000, status: 200 }),
      rec('w2', { model: wide, upstreamModel: wide, startedAt: Date.now() - 1000, status: 404 }),
    ]);
    const ac = new AbortController();
    const io = { ...createTestIo({ HOME: tmp.path }, tmp.path), signal: ac.signal };
    const done = main(['logs', 'tail', '--interval', '30', '--db', dbPath], io);
    await until('both lines on stdout', () => io.out().includes('w2'));
    ac.abort();
    expect(await done).toBe(0);
    const [ascii, cjk] = io.out().trim().split('\n');
    expect(cjk).toContain(wide);
    const statusColumn = (line: string, status: string) =>
      columns(line.slice(0, line.indexOf(` ${status} `)));
    expect(statusColumn(cjk, '404')).toBe(statusColumn(ascii, '200'));
    expect(columns(cjk)).toBe(columns(ascii));
  });
});

describe('standard output that cannot be written (the built bin)', () => {
  const BIN = join(import.meta.dirname, '../../bin/oai-proxy.js');
  let tmp: { path: string; cleanup(): void };
  let dbPath: string;
  beforeEach(async () => {
    tmp = createTempDir();
    dbPath = join(tmp.path, 'proxy.db');
    await seedSqlite(dbPath, [rec('a1'), rec('a2'), rec('a3')]);
  });
  afterEach(() => tmp.cleanup());

  /** Run the bin with stdout on `stdout` (a descriptor, or 'pipe' closed at once by the reader). */
  function runBin(argv: string[], stdout: number | 'closed-pipe') {
    const child = spawn(process.execPath, [BIN, ...argv], {
      env: { PATH: process.env.PATH ?? '', HOME: tmp.path },
      stdio: ['ignore', stdout === 'closed-pipe' ? 'pipe' : stdout, 'pipe'],
    });
    if (stdout === 'closed-pipe') child.stdout!.destroy();
    let err = '';
    child.stderr!.on('data', (d) => {
      err += d;
    });
    return new Promise<{ code: number | null; err: string }>((r) =>
      child.once('close', (code) => r({ code, err })),
    );
  }

  const commands = ['logs export', 'logs --json', 'logs', 'logs stats --json', 'models list --json'];

  test.skipIf(!existsSync('/dev/full')).each(commands)(
    '%s > /dev/full: one line naming standard output and ENOSPC, exit 1, no stack trace',
    async (command) => {
      const full = openSync('/dev/full', 'w');
      const run = runBin([...command.split(' '), '--db', dbPath], full);
      closeSync(full);
      const r = await run;
      expect(r.err).toBe('oai-proxy: Cannot write standard output: ENOSPC\n');
      expect(r.code).toBe(1);
    },
  );

  test.each(commands)('%s | (a reader gone at once): quiet, exit 0', async (command) => {
    const r = await runBin([...command.split(' '), '--db', dbPath], 'closed-pipe');
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
  });
});

describe('a database value that cannot be used: the message names where it came from', () => {
  let tmp: { path: string; cleanup(): void };
  beforeEach(() => {
    tmp = createTempDir();
  });
  afterEach(() => tmp.cleanup());

  test.each([
    [
      'logs --db mysql://',
      ['logs', '--db', 'mysql://u:pw@h/x'],
      {},
      'oai-proxy: --db "mysql://u:***@h/x" has an unsupported scheme: use a file path, sqlite:///path.db, file:path.db or postgres://…\n',
    ],
    [
      'models list --db sqlite://x',
      ['models', 'list', '--db', 'sqlite://x'],
      {},
      'oai-proxy: --db "sqlite://x" is not a valid sqlite URL: use sqlite:///relative.db or sqlite:////absolute/path.db\n',
    ],
    [
      'logs with DATABASE_URL=mysql://',
      ['logs'],
      { DATABASE_URL: 'mysql://u:pw@h/x' },
      'oai-proxy: DATABASE_URL "mysql://u:***@h/x" has an unsupported scheme: use a file path, sqlite:///path.db, file:path.db or postgres://…\n',
    ],
    [
      'logs search --db postgres://',
      ['logs', 'search', 'hello', '--db', 'postgres://u:pw@127.0.0.1:9/x'],
      { QDRANT_URL: 'http://127.0.0.1:9' },
      'oai-proxy: --db postgres://u:***@127.0.0.1:9/x is PostgreSQL: semantic search works with an SQLite database only in this version; point --db at the SQLite file serve records to\n',
    ],
    // Without QDRANT_URL too: the PostgreSQL limit is said first, not "set QDRANT_URL", which would only
    // lead to this refusal.
    [
      'logs search on PostgreSQL without QDRANT_URL',
      ['logs', 'search', 'hello'],
      { DATABASE_URL: 'postgres://u:pw@127.0.0.1:9/x' },
      'oai-proxy: DATABASE_URL postgres://u:***@127.0.0.1:9/x is PostgreSQL: semantic search works with an SQLite database only in this version; point --db at the SQLite file serve records to\n',
    ],
    [
      'logs reindex --db postgres:// without QDRANT_URL',
      ['logs', 'reindex', '--db', 'postgres://u:pw@127.0.0.1:9/x'],
      {},
      'oai-proxy: --db postgres://u:***@127.0.0.1:9/x is PostgreSQL: semantic search works with an SQLite database only in this version; point --db at the SQLite file serve records to\n',
    ],
  ] as const)('%s: exit 2', async (_, argv, env, message) => {
    const io = createTestIo({ HOME: tmp.path, ...env }, tmp.path);
    const code = await main([...argv], io);
    expect(io.err()).toBe(message);
    expect(code).toBe(2);
  });

  // A mistyped PostgreSQL URL used to be taken for a file name: serve created that folder and an SQLite
  // file, recorded there and printed the path, password and all. A malformed one failed as "Invalid URL"
  // with exit 1. Both are config errors now, refused before anything is created.
  const PG_FORM = 'write postgres://user:password@host:port/database';
  const ENCODE =
    'characters # / ? and @ in the user name or password must be percent-encoded (# as %23, / as %2F, ? as %3F, @ as %40)';
  const upstream = ['--upstream', 'http://127.0.0.1:9/v1'];
  test.each([
    [
      'serve --db postgres:/…',
      ['serve', '--port', '0', ...upstream, '--db', 'postgres:/oai:zzpw@127.0.0.1:9/t1'],
      {},
      `--db "postgres:/oai:***@127.0.0.1:9/t1" is not a valid PostgreSQL URL: "postgres:" must be followed by //; ${PG_FORM}`,
    ],
    [
      'serve with DATABASE_URL=postgres:…',
      ['serve', '--port', '0', ...upstream],
      { DATABASE_URL: 'postgres:oai:zzpw@127.0.0.1:9/t2' },
      `DATABASE_URL "postgres:oai:***@127.0.0.1:9/t2" is not a valid PostgreSQL URL: "postgres:" must be followed by //; ${PG_FORM}`,
    ],
    [
      'models add --db POSTGRESQL:/…',
      ['models', 'add', 'qq', '--db', 'POSTGRESQL:/oai:zzpw@127.0.0.1:9/t1'],
      {},
      `--db "POSTGRESQL:/oai:***@127.0.0.1:9/t1" is not a valid PostgreSQL URL: "POSTGRESQL:" must be followed by //; ${PG_FORM}`,
    ],
    [
      'serve --db with # in the password',
      ['serve', '--port', '0', ...upstream, '--db', 'postgres://oai:hun#zzpw@127.0.0.1:9/t1'],
      {},
      `--db "postgres://oai:***@127.0.0.1:9/t1" is not a valid PostgreSQL URL: ${ENCODE}; ${PG_FORM}`,
    ],
    [
      'serve --db with port 99999',
      ['serve', '--port', '0', ...upstream, '--db', 'postgres://oai:zzpw@127.0.0.1:99999/t1'],
      {},
      `--db "postgres://oai:***@127.0.0.1:99999/t1" is not a valid PostgreSQL URL: the port 99999 is out of range (0-65535); ${PG_FORM}`,
    ],
    [
      'logs with DATABASE_URL port abc',
      ['logs'],
      { DATABASE_URL: 'postgres://oai:zzpw@127.0.0.1:abc/t1' },
      `DATABASE_URL "postgres://oai:***@127.0.0.1:abc/t1" is not a valid PostgreSQL URL: the port "abc" is not a number; ${PG_FORM}`,
    ],
    [
      'models list with DATABASE_URL port abc',
      ['models', 'list'],
      { DATABASE_URL: 'postgres://oai:zzpw@127.0.0.1:abc/t1' },
      `DATABASE_URL "postgres://oai:***@127.0.0.1:abc/t1" is not a valid PostgreSQL URL: the port "abc" is not a number; ${PG_FORM}`,
    ],
  ] as const)('%s: refused, password hidden, nothing created, exit 2', async (_, argv, env, message) => {
    const io = createTestIo({ HOME: tmp.path, ...env }, tmp.path);
    const code = await main([...argv], io);
    expect(io.err()).toBe(`oai-proxy: ${message}\n`);
    expect(io.out()).toBe('');
    expect(code).toBe(2);
    expect(readdirSync(tmp.path)).toEqual([]);
  });

  test('serve --db postgres:// with QDRANT_URL set: names --db, password hidden, exit 2', async () => {
    const io = createTestIo({ HOME: tmp.path, QDRANT_URL: 'http://127.0.0.1:9' }, tmp.path);
    const code = await main(['serve', '--port', '0', '--db', 'postgres://u:pw@127.0.0.1:9/x'], io);
    expect(io.err()).toBe(
      'oai-proxy: QDRANT_URL is set but --db postgres://u:***@127.0.0.1:9/x is PostgreSQL: semantic search indexing works with an SQLite database only in this version; unset QDRANT_URL or use an SQLite path\n',
    );
    expect(code).toBe(2);
  });

  test('a value from the config file is named as its key in that file', async () => {
    const config = join(tmp.path, 'oai-proxy.config.json');
    writeFileSync(config, JSON.stringify({ databaseUrl: 'mysql://h/x' }));
    const io = createTestIo({ HOME: tmp.path }, tmp.path);
    expect(await main(['logs'], io)).toBe(2);
    expect(io.err()).toMatch(
      new RegExp(`^oai-proxy: "databaseUrl" in config file ${config} "mysql://h/x" has`),
    );
  });
});

describe('flag values: SQLite', () => {
  let tmp: { path: string; cleanup(): void };
  let dbPath: string;
  beforeEach(async () => {
    tmp = createTempDir();
    dbPath = join(tmp.path, 'proxy.db');
    await seedSqlite(dbPath, [rec('a1', { startedAt: Date.UTC(2026, 1, 1) })]);
  });
  afterEach(() => tmp.cleanup());

  async function logs(...argv: string[]) {
    const io = createTestIo({ HOME: tmp.path }, tmp.path);
    const code = await main(['logs', ...argv, '--db', dbPath], io);
    return { code, out: io.out(), err: io.err() };
  }

  // The tester's repro: commander's suggestion, on its second line, was cut; `logs stat` (and `logs help
  // stats`) said "too many arguments for 'logs'", as if logs took arguments.
  test.each([
    [['--limt', '5'], "error: unknown option '--limt'\n(Did you mean --limit?)\n"],
    [['stat'], "error: unknown command 'stat'\n(Did you mean stats?)\n"],
    [['stat', '--since', '1d'], "error: unknown command 'stat'\n(Did you mean stats?)\n"],
    [['show', 'a1', 'a2'], "error: too many arguments for 'show'. Expected 1 argument but got 2.\n"],
  ])('logs %j → exit 2, the error with its suggestion', async (argv, err) => {
    const r = await logs(...argv);
    expect(r.err).toBe(err);
    expect(r.code).toBe(2);
    expect(r.out).toBe('');
  });

  test('logs help stats shows the help of logs stats, as --help does', async () => {
    const r = await logs('help', 'stats');
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^Usage: oai-proxy logs stats \[options\]/);
    const io = createTestIo({ HOME: tmp.path }, tmp.path);
    expect(await main(['logs', 'stats', '--help'], io)).toBe(0);
    expect(r.out).toBe(io.out());
  });

  test('an impossible date (Feb 30, hour 25) exits 2 naming the flag; prune deletes nothing', async () => {
    for (const [sub, flag, value, ...rest] of [
      ['prune', '--older-than', '2026-02-30'],
      ['prune', '--older-than', '2026-02-31T10:00:00Z', '--dry-run'],
      ['tail', '--since', '2026-02-29'],
      ['export', '--until', '2026-01-01T25:00'],
      ['stats', '--since', '2026-04-31'],
    ]) {
      const r = await logs(sub, flag, value, ...rest);
      expect(r.code, `${sub} ${flag} ${value}`).toBe(2);
      expect(r.err).toContain(`oai-proxy: ${flag} "${value}" is not a date or time that exists`);
      expect(r.out).toBe('');
    }
    expect((await logs('--json')).out).toContain('a1');
  });

  test('prune --older-than 0, or a time in the future, exits 2: it would delete everything, the newest too', async () => {
    for (const [value, message] of [
      ['0d', '--older-than 0 would delete everything; give a positive duration such as 30d'],
      [
        '2099-01-01',
        '--older-than "2099-01-01" is in the future: it would delete every exchange, those being recorded now too; give an age such as 30d or a past date',
      ],
    ]) {
      const r = await logs('prune', '--older-than', value);
      expect(r.code, value).toBe(2);
      expect(r.err).toBe(`oai-proxy: ${message}\n`);
    }
    expect((await logs('--json')).out).toContain('a1');
  });

  test('--limit beyond 2^53 (a 64-bit value the database rejects) exits 2 naming the flag', async () => {
    for (const argv of [
      ['--limit', '9223372036854775807'],
      ['tail', '--limit', '18446744073709551616'],
      ['--follow', '--limit', '9007199254740992'],
    ]) {
      const r = await logs(...argv);
      expect(r.code, argv.join(' ')).toBe(2);
      expect(r.err).toMatch(
        new RegExp(`^oai-proxy: --limit "${argv.at(-1)}" must be a whole number from 0 to 9007199254740991`),
      );
      expect(r.err).not.toContain('datatype mismatch');
    }
    const r = await logs('--limit', '9007199254740991', '--json');
    expect(r.code, r.err).toBe(0);
    expect(JSON.parse(r.out)).toHaveLength(1);
    expect((await logs('--limit', '-1')).code).toBe(2);
  });

  test('a duration further back than a date can hold exits 2 (prune printed "Invalid time value", exit 1)', async () => {
    for (const argv of [
      ['prune', '--older-than', '999999999999d', '--dry-run'],
      ['--since', '999999999999d'],
    ]) {
      const r = await logs(...argv);
      expect(r.code, argv.join(' ')).toBe(2);
      expect(r.err).toContain(
        `oai-proxy: ${argv[argv.indexOf('999999999999d') - 1]} "999999999999d" reaches back`,
      );
    }
    const r = await logs('prune', '--older-than', '100000w', '--dry-run');
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/^would delete 0 exchanges started before 0110-/);
  });

  // `logs --model "$MODEL"` with MODEL unset matched nothing and exited 0: "No exchanges match.", or an
  // empty export.
  test.each([
    [['--model', ''], '--model needs a value: a model name, e.g. --model gpt-4o'],
    [['--model', ' '], '--model needs a value: a model name, e.g. --model gpt-4o'],
    [['--path', ''], '--path needs a value: a request path prefix, e.g. --path /v1/chat'],
    [['--user', ''], `--user needs a value: the request body's "user" field, e.g. --user alice`],
    [['tail', '--model', ''], '--model needs a value'],
    [['stats', '--path', ''], '--path needs a value'],
    [['export', '--user', ''], '--user needs a value'],
    [['export', '--out', ''], '--out needs a value: a file to write, e.g. --out week.jsonl'],
    [['search', 'text', '--model', ''], '--model needs a value: a model name, e.g. --model gpt-4o'],
    [['search', 'text', '--since', ''], '--since "" is neither a duration'],
    [['reindex', '--since', ''], '--since "" is neither a duration'],
  ])('logs %j: exit 2 saying the flag needs a value', async (argv, message) => {
    const r = await logs(...argv);
    expect(r.err.split('\n')[0]).toContain(`oai-proxy: ${message}`);
    expect(r.code).toBe(2);
    expect(r.out).toBe('');
  });

  test('--status given twice means either (as 4xx,5xx), for listing, stats and export', async () => {
    await seedSqlite(dbPath, [rec('b1', { status: 404 }), rec('c1', { status: 503 })]);
    const ids = (out: string) => (JSON.parse(out) as { id: string }[]).map((x) => x.id.slice(0, 2)).sort();
    let r = await logs('--status', '4xx', '--status', '5xx', '--json');
    expect(r.code, r.err).toBe(0);
    expect(ids(r.out)).toEqual(['b1', 'c1']);
    r = await logs('stats', '--status', '200', '--status', '503', '--by', 'status', '--json');
    expect((JSON.parse(r.out) as { key: string }[]).map((g) => String(g.key)).sort()).toEqual(['200', '503']);
    r = await logs('export', '--status', '5xx', '--status', '200');
    expect(r.out.trim().split('\n')).toHaveLength(2);
  });

  test('following takes no --order (rows print as recorded) and tail --help says what it prints', async () => {
    for (const argv of [
      ['--order', 'asc', 'tail'],
      ['--follow', '--order', 'desc'],
    ]) {
      const r = await logs(...argv);
      expect(r.code, argv.join(' ')).toBe(2);
      expect(r.err).toMatch(/^oai-proxy: --order does not apply when following/);
    }
    const r = await logs('tail', '--order', 'asc');
    expect(r.code).toBe(2);
    expect(r.err).toBe("error: unknown option '--order'\n");
    const io = createTestIo({ HOME: tmp.path }, tmp.path);
    expect(await main(['logs', 'tail', '--help'], io)).toBe(0);
    const help = io.out();
    expect(help).not.toContain('--order');
    expect(help).not.toContain('JSON array');
    expect(help).toMatch(/--json\s+one JSON object per line/);
    expect(help).toMatch(
      /--limit <n>\s+first print the last N matching exchanges \(default 10; 0\s+for none\)/,
    );
    expect(help).toMatch(/comma-separated or\s+repeated for several/);
  });

  test('logs --help says what --limit 0 means when following (no backlog), as logs --follow does it', async () => {
    const io = createTestIo({ HOME: tmp.path }, tmp.path);
    expect(await main(['logs', '--help'], io)).toBe(0);
    expect(io.out().replace(/\s+/g, ' ')).toContain(
      '-n, --limit <n> at most this many rows, 0 for all (default 50); when following, the backlog printed first: default 10, 0 for none',
    );
    const ac = new AbortController();
    const follow = { ...createTestIo({ HOME: tmp.path }, tmp.path), signal: ac.signal };
    const done = main(['logs', '--follow', '-n', '0', '--jsonl', '--interval', '30', '--db', dbPath], follow);
    // Rows recorded while it starts would count as backlog: record until one is printed.
    for (let i = 0; !follow.out().includes('"id":"f'); i++) {
      expect(i).toBeLessThan(100);
      await seedSqlite(dbPath, [rec(`f${String(i).padStart(2, '0')}`, { startedAt: Date.now() })]);
      await sleep(50);
    }
    ac.abort();
    expect(await done).toBe(0);
    // The row recorded before following (a1) is not printed, only rows recorded since.
    const printed = follow
      .out()
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l).id as string);
    expect(printed.length).toBeGreaterThan(0);
    expect(printed.filter((id) => !id.startsWith('f'))).toEqual([]);
  });
});

describe('large listings: SQLite', () => {
  let tmp: { path: string; cleanup(): void };
  let dbPath: string;
  beforeEach(() => {
    tmp = createTempDir();
    dbPath = join(tmp.path, 'proxy.db');
  });
  afterEach(() => tmp.cleanup());

  async function logs(...argv: string[]) {
    const io = createTestIo({ HOME: tmp.path }, tmp.path);
    const code = await main(['logs', ...argv, '--db', dbPath], io);
    return { code, out: io.out(), err: io.err() };
  }

  test('--limit 0 prints a table of 20,000 exchanges within the test timeout (8,000 took 17 s: the layout was quadratic)', async () => {
    await seedSqlite(
      dbPath,
      Array.from({ length: 20000 }, (_, i) =>
        rec(`t${i.toString(36).padStart(4, '0')}`, {
          startedAt: NOW - i * 1000,
          path: `/v1/responses/r${i}`,
        }),
      ),
    );
    const r = await logs('--limit', '0');
    expect(r.code, r.err).toBe(0);
    const lines = r.out.trimEnd().split('\n');
    // Top rule, header, then a rule and a line per exchange, bottom rule.
    expect(lines).toHaveLength(2 + 20000 * 2 + 1);
    expect(lines[3]).toContain('/v1/responses/r0 ');
    expect(new Set(lines.map((l) => l.length)).size).toBe(1);
    // The same for a stats table of as many groups.
    const s = await logs('stats', '--by', 'path');
    expect(s.code, s.err).toBe(0);
    expect(s.out.trimEnd().split('\n')).toHaveLength(2 + 20000 * 2 + 1);
  }, 60_000);

  test.each(['--json', '--jsonl'])(
    '%s --limit 0 over 100,000 exchanges is written as it is read: the built bin in a 48 MB heap prints them all (it ran out of memory; a million rows gave "Invalid string length")',
    async (format) => {
      await seedSqlite(dbPath, [rec('a1', { requestBody: null, responseBody: null })]);
      // 99,999 copies of it, ids and start times counted down (as a bench database is made, fast).
      const sqlite = new Database(dbPath);
      const columns = (sqlite.prepare('pragma table_info(exchanges)').all() as { name: string }[]).map(
        (c) => c.name,
      );
      const values = columns.map((c) =>
        c === 'id' ? "printf('x%025d', n)" : c === 'started_at' ? 'started_at - n * 1000' : c,
      );
      sqlite.exec(`insert into exchanges (${columns.join(', ')})
        with recursive k(n) as (select 1 union all select n + 1 from k where n < 99999)
        select ${values.join(', ')} from k, exchanges`);
      sqlite.close();
      const BIN = join(import.meta.dirname, '../../bin/oai-proxy.js');
      const child = spawn(
        process.execPath,
        ['--max-old-space-size=48', BIN, 'logs', format, '--limit', '0', '--db', dbPath],
        { env: { PATH: process.env.PATH ?? '', HOME: tmp.path }, stdio: ['ignore', 'pipe', 'pipe'] },
      );
      const out: Buffer[] = [];
      let err = '';
      child.stdout!.on('data', (d: Buffer) => out.push(d));
      child.stderr!.on('data', (d) => {
        err += d;
      });
      const code = await new Promise<number | null>((r) => child.once('close', (c) => r(c)));
      expect(code, err.slice(0, 500)).toBe(0);
      const text = Buffer.concat(out).toString();
      const rows: { id: string }[] =
        format === '--json'
          ? JSON.parse(text)
          : text
              .trimEnd()
              .split('\n')
              .map((l) => JSON.parse(l));
      expect(rows).toHaveLength(100_000);
      expect(rows[0].id).toBe(rec('a1').id);
      expect(rows[99_999].id).toBe(`x${String(99_999).padStart(25, '0')}`);
    },
    60_000,
  );

  test.each([
    ['logs --json --limit 0', ['--json', '--limit', '0']],
    ['logs export', ['export']],
    ['logs export --grep', ['export', '--grep', 'hello']],
  ])(
    "%s into a reader that stops reading (| less) holds no snapshot: serve's writes are checkpointed meanwhile, the WAL does not grow",
    async (_name, argv) => {
      const n = 2000;
      await seedSqlite(
        dbPath,
        Array.from({ length: n }, (_, i) =>
          rec(`w${i.toString(36).padStart(4, '0')}`, { startedAt: NOW - i * 1000 }),
        ),
      );
      // Standard output that takes 50 writes, then waits for 'drain' until released.
      let writes = 0;
      let out = '';
      let flowing = false;
      let release: () => void = () => {};
      let paused!: () => void;
      const pausedNow = new Promise<void>((r) => {
        paused = r;
      });
      const io = createTestIo({ HOME: tmp.path }, tmp.path);
      const stdout = {
        isTTY: false,
        write(s: string) {
          out += s;
          return flowing || ++writes < 50;
        },
        once(_event: string, f: () => void) {
          release = f;
          paused();
        },
      };
      const run = main(['logs', ...argv, '--db', dbPath], { ...io, stdout });
      await pausedNow;
      // serve records meanwhile and checkpoints (PASSIVE, as its checkpoint worker does).
      const writer = new Database(dbPath);
      writer.pragma('busy_timeout = 5000');
      const insert = writer.prepare(INSERT_EXCHANGE_SQL);
      for (let i = 0; i < 20; i++) insert.run(toRow(rec(`new${i}`, { startedAt: NOW + 60_000 })));
      const [checkpoint] = writer.pragma('wal_checkpoint(PASSIVE)') as {
        log: number;
        checkpointed: number;
      }[];
      writer.close();
      // An open read snapshot keeps the frames written after it from being checkpointed.
      expect(checkpoint.checkpointed).toBe(checkpoint.log);
      flowing = true;
      release();
      expect(await run, io.err()).toBe(0);
      const ids = argv.includes('--json')
        ? (JSON.parse(out) as { id: string }[]).map((r) => r.id)
        : out
            .trimEnd()
            .split('\n')
            .map((l) => JSON.parse(l).id as string);
      // Every row there when it began is printed once, in order (rows recorded since may be too).
      const seeded = ids.filter((id) => id.startsWith('w'));
      expect(seeded).toHaveLength(n);
      expect(new Set(ids).size).toBe(ids.length);
    },
    60_000,
  );
});

describe.skipIf(!pgUrl)('PostgreSQL specifics (OAI_PROXY_TEST_PG_URL)', () => {
  let tmp: { path: string; cleanup(): void };
  beforeEach(() => {
    tmp = createTempDir();
  });
  afterEach(() => tmp.cleanup());

  async function logs(db: string, ...argv: string[]) {
    const io = createTestIo({ HOME: tmp.path }, tmp.path);
    const code = await main(['logs', ...argv, '--db', db], io);
    return { code, out: io.out(), err: io.err() };
  }
  const password = decodeURIComponent(new URL(pgUrl ?? 'postgres://x@y').password);
  const withDatabase = (name: string, port?: number) => {
    const url = new URL(pgUrl!);
    url.pathname = `/${name}`;
    if (port !== undefined) url.port = String(port);
    return url.toString();
  };
  const oneRedactedLine = (r: { code: number; out: string; err: string }) => {
    expect(r.code).toBe(1);
    expect(r.out).toBe('');
    expect(r.err.trim().split('\n')).toHaveLength(1);
    expect(r.err).toContain('oai:***@');
    expect(r.err).not.toContain(password);
  };

  test('a missing database: one line, password hidden, exit 1, nothing created', async () => {
    const name = `oai_missing_${process.pid}`;
    for (const argv of [[], ['stats'], ['prune', '--older-than', '1d'], ['show', 'abc']]) {
      const r = await logs(withDatabase(name), ...argv);
      oneRedactedLine(r);
      expect(r.err).toMatch(/does not exist.*createdb/);
    }
    expect(await pgQuery(pgUrl!, 'select 1 from pg_database where datname = $1', [name])).toEqual([]);
  });

  // The message says where to fix the URL: the flag, the variable or the config file it came from.
  const wrongPassword = () => {
    const url = new URL(pgUrl!);
    url.password = 'not-the-password';
    return url.toString();
  };
  test.each([
    ['a wrong password', wrongPassword, 'refused the login: .*; check the user and password in SETTING$'],
    [
      'a missing database',
      () => withDatabase(`oai_missing_${process.pid}`),
      'does not exist; create it \\(createdb\\) or name an existing database in SETTING$',
    ],
  ] as const)(
    '%s: the message names --db, DATABASE_URL or the config file, whichever set it',
    async (_, url, tail) => {
      const config = join(tmp.path, 'c.json');
      writeFileSync(config, JSON.stringify({ databaseUrl: url() }));
      const sources = [
        { argv: ['--db', url()], env: {}, setting: '--db' },
        { argv: [], env: { DATABASE_URL: url() }, setting: 'DATABASE_URL' },
        { argv: ['--config', config], env: {}, setting: `"databaseUrl" in config file ${config}` },
      ];
      for (const { argv, env, setting } of sources) {
        const io = createTestIo({ HOME: tmp.path, ...env }, tmp.path);
        const r = { code: await main(['logs', 'stats', ...argv], io), out: io.out(), err: io.err() };
        oneRedactedLine(r);
        expect(r.err.trimEnd()).toMatch(new RegExp(tail.replace('SETTING', escapeRegExp(setting))));
      }
    },
  );

  test('a database serve never wrote, named by --config: says to point the config file at the right one', async () => {
    const database = await createTestPgDatabase();
    try {
      const config = join(tmp.path, 'c.json');
      writeFileSync(config, JSON.stringify({ databaseUrl: database.url }));
      const io = createTestIo({ HOME: tmp.path }, tmp.path);
      const r = { code: await main(['logs', '--config', config], io), out: io.out(), err: io.err() };
      oneRedactedLine(r);
      expect(r.err.trimEnd()).toMatch(
        new RegExp(
          `has no oai-proxy tables; start \`oai-proxy serve\` with this database first, or point ${escapeRegExp(`"databaseUrl" in config file ${config}`)} at the one it writes$`,
        ),
      );
    } finally {
      await database.drop();
    }
  });

  test('a database serve never wrote: one line, exit 1, no table created (not even by prune)', async () => {
    const database = await createTestPgDatabase();
    try {
      for (const argv of [['--grep', 'x'], ['prune', '--older-than', '1d'], ['tail']]) {
        const r = await logs(database.url, ...argv);
        oneRedactedLine(r);
        expect(r.err).toMatch(
          /has no oai-proxy tables; start `oai-proxy serve` .* point --db at the one it writes$/m,
        );
      }
      expect(
        await pgQuery(
          database.url,
          "select table_name from information_schema.tables where table_schema = 'public'",
        ),
      ).toEqual([]);
    } finally {
      await database.drop();
    }
  });

  test('an unreachable server: one line naming it, password hidden, exit 1', async () => {
    const { createServer } = await import('node:net');
    const port = await new Promise<number>((resolve) => {
      const s = createServer().listen(0, '127.0.0.1', () => {
        const p = (s.address() as { port: number }).port;
        s.close(() => resolve(p));
      });
    });
    const r = await logs(withDatabase('oai', port), 'stats');
    oneRedactedLine(r);
    expect(r.err).toContain(`Cannot connect to PostgreSQL at postgres://oai:***@127.0.0.1:${port}/oai`);
  });

  test('--follow prints a row whose rowid committed after a later one (concurrent writers)', async () => {
    const database = await createTestPgDatabase();
    const a = new pg.Client({ connectionString: database.url });
    const b = new pg.Client({ connectionString: database.url });
    try {
      await seedPostgres(database.url, [rec('f1', { startedAt: NOW - 60_000 })]);
      await a.connect();
      await b.connect();
      const insert = (c: pg.Client, r: ExchangeRecord) => {
        const row = pgRow(r) as unknown as Record<string, unknown>;
        const cols = Object.keys(row);
        return c.query(
          `insert into exchanges (${cols.map((k) => `"${k}"`).join(', ')}) values (${cols.map((_, i) => `$${i + 1}`).join(', ')})`,
          cols.map((k) => row[k]),
        );
      };
      const ac = new AbortController();
      const io = { ...createTestIo({ HOME: tmp.path }, tmp.path), signal: ac.signal };
      const done = main(['logs', '--follow', '--jsonl', '--interval', '30', '--db', database.url], io);
      await until("'f1' on stdout", () => io.out().includes('f1'));
      // Writer A takes the next rowid but has not committed; writer B takes the one after and commits.
      await a.query('begin');
      await insert(a, rec('x1', { startedAt: Date.now() }));
      await insert(b, rec('y1', { startedAt: Date.now() }));
      await until("'y1' on stdout", () => io.out().includes('y1'));
      // A rolled-back batch leaves a hole for good; rows after it still come through.
      await b.query('begin');
      await insert(b, rec('r1', { startedAt: Date.now() }));
      await b.query('rollback');
      await insert(b, rec('y2', { startedAt: Date.now() }));
      await until("'y2' on stdout", () => io.out().includes('y2'));
      await a.query('commit');
      await until("'x1' on stdout", () => io.out().includes('x1'));
      await new Promise((r) => setTimeout(r, 150)); // a few more polls: nothing is printed twice
      ac.abort();
      expect(await done).toBe(0);
      const printed = io
        .out()
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l).id.slice(0, 2));
      expect(printed).toEqual(['f1', 'y1', 'y2', 'x1']);
      const rowids = await pgQuery(database.url, 'select id, rowid from exchanges order by rowid');
      expect(rowids.map((r) => r.id.slice(0, 2))).toEqual(['f1', 'x1', 'y1', 'y2']);
    } finally {
      await a.end().catch(() => undefined);
      await b.end().catch(() => undefined);
      await database.drop();
    }
  });

  test('--follow waits out a dropped connection (a server restart) and goes on printing', async () => {
    const database = await createTestPgDatabase();
    // The follower talks to PostgreSQL through a TCP relay this test can take down and bring back.
    const target = new URL(database.url);
    const relay = await startRelay(Number(target.port));
    const viaRelay = new URL(database.url);
    viaRelay.port = String(relay.port);
    try {
      await seedPostgres(database.url, [rec('k1', { startedAt: NOW - 60_000 })]);
      const ac = new AbortController();
      const io = { ...createTestIo({ HOME: tmp.path }, tmp.path), signal: ac.signal };
      const done = main(['logs', '--follow', '--jsonl', '--interval', '30', '--db', viaRelay.href], io);
      await until("'k1' on stdout", () => io.out().includes('k1'));
      await relay.down(); // connections cut, new ones refused: a restarting server
      await until("'lost the connection' on stderr", () => io.err().includes('lost the connection'));
      await seedPostgres(database.url, [rec('k2', { startedAt: Date.now() })]);
      await new Promise((r) => setTimeout(r, 300));
      expect(io.out()).not.toContain('k2');
      await relay.up();
      await until("'k2' on stdout", () => io.out().includes('k2'), 15_000);
      expect(io.err()).toMatch(/lost the connection to postgres:\/\/[^ ]*:\*\*\*@.*retrying/);
      expect(io.err()).toMatch(/reconnected to postgres:/);
      ac.abort();
      expect(await done).toBe(0);
      expect(io.err()).not.toContain(target.password);
    } finally {
      await relay.down();
      await database.drop();
    }
  });

  test('--follow waits out a network cut that also fails name resolution (EAI_AGAIN), as a restart', async () => {
    const database = await createTestPgDatabase();
    // The follower reaches PostgreSQL by a host name this test resolves, then fails to resolve for a while.
    const host = 'pg-failover.test';
    const viaName = new URL(database.url);
    viaName.hostname = host;
    const realLookup = dns.lookup;
    let resolves = true;
    const lookup = (name: string, options: any, callback?: any) => {
      const cb = typeof options === 'function' ? options : callback;
      if (name !== host) return (realLookup as any)(name, options, callback);
      if (!resolves)
        return process.nextTick(
          cb,
          Object.assign(new Error(`getaddrinfo EAI_AGAIN ${name}`), { code: 'EAI_AGAIN' }),
        );
      if (typeof options === 'object' && options?.all)
        return process.nextTick(cb, null, [{ address: '127.0.0.1', family: 4 }]);
      process.nextTick(cb, null, '127.0.0.1', 4);
    };
    (dns as any).lookup = lookup;
    try {
      await seedPostgres(database.url, [rec('k1', { startedAt: NOW - 60_000 })]);
      const ac = new AbortController();
      const io = { ...createTestIo({ HOME: tmp.path }, tmp.path), signal: ac.signal };
      const done = main(['logs', '--follow', '--jsonl', '--interval', '30', '--db', viaName.href], io);
      await until("'k1' on stdout", () => io.out().includes('k1'));
      resolves = false;
      await pgQuery(
        database.url,
        "select pg_terminate_backend(pid) from pg_stat_activity where datname = $1 and application_name = 'oai-proxy'",
        [database.name],
      );
      await until("'lost the connection' on stderr", () => io.err().includes('lost the connection'));
      await new Promise((r) => setTimeout(r, 300));
      await seedPostgres(database.url, [rec('k2', { startedAt: Date.now() })]);
      resolves = true;
      await until("'k2' on stdout", () => io.out().includes('k2'), 15_000);
      expect(io.err()).toMatch(/reconnected to postgres:/);
      ac.abort();
      expect(await done).toBe(0);
    } finally {
      (dns as any).lookup = realLookup;
      await database.drop();
    }
  });

  test('--grep works when PostgreSQL runs queries in parallel (the search function opens subtransactions)', async () => {
    const database = await createTestPgDatabase();
    try {
      await seedPostgres(database.url, standardRows());
      // Make the planner parallelise everything it may (PostgreSQL 16 renamed the setting).
      const [{ v }] = await pgQuery(database.url, "select current_setting('server_version_num')::int as v");
      const setting = v >= 160000 ? 'debug_parallel_query' : 'force_parallel_mode';
      await pgQuery(database.url, `alter database ${database.name} set ${setting} = on`);
      const r = await logs(database.url, '--grep', 'kenobi', '--json');
      expect(r.code, r.err).toBe(0);
      expect(JSON.parse(r.out).map((x: { id: string }) => x.id.slice(0, 2))).toEqual([
        'a1',
        'd1',
        'a2',
        'c1',
      ]);
    } finally {
      await database.drop();
    }
  });

  test('--grep (phrase and prefix) is answered by the GIN index exchanges_search', async () => {
    const database = await createTestPgDatabase();
    await seedPostgres(database.url, standardRows());
    const storage = await openStorage({ kind: 'postgres', url: database.url });
    const client = new pg.Client({ connectionString: database.url });
    try {
      await client.connect();
      // A tiny table would be scanned sequentially; forbid that to see whether the index can answer.
      await client.query('set enable_seqscan = off');
      for (const grep of ['general kenobi', 'aard*', 'the streamed aard*']) {
        const q = storage.db
          .selectFrom('exchanges')
          .select('id')
          .where(filterExpression({ grep, internal: true }, 'postgres'))
          .compile();
        const plan = await client.query(`explain ${q.sql}`, q.parameters as unknown[]);
        expect(JSON.stringify(plan.rows), grep).toContain('exchanges_search');
        const hits = await client.query(q.sql, q.parameters as unknown[]);
        expect(hits.rows.length, grep).toBeGreaterThan(0);
      }
    } finally {
      await client.end().catch(() => undefined);
      await storage.close();
      await database.drop();
    }
  });
});

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
