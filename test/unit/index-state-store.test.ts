import { join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { Kysely, type MigrationProvider, Migrator, SqliteDialect } from 'kysely';
import { expect, test } from 'vitest';
import { withoutBusyWait } from '../../src/storage/busy-wait.js';
import { openDatabase } from '../../src/storage/database.js';
import { createIndexStateStore } from '../../src/storage/index-state-store.js';
import { migrations } from '../../src/storage/migrations/index.js';
import { vectorTarget } from '../../src/vector/qdrant-store.js';
import { createTempDir } from '../helpers/temp-dir.js';

const A = 'http://127.0.0.1:6333/collections/a';
const B = 'http://127.0.0.1:6333/collections/b';

/** A database at 0008 with one exchange indexed the old way, then migrated to the latest. */
async function upgradedDb() {
  const sqlite = new BetterSqlite3(':memory:');
  const db = new Kysely<any>({ dialect: new SqliteDialect({ database: sqlite }) });
  const provider: MigrationProvider = { getMigrations: async () => migrations };
  const migrator = new Migrator({ db, provider });
  const to0008 = await migrator.migrateTo('0008-search-text-unescaped');
  expect(to0008.error).toBeUndefined();
  for (const id of ['x1', 'x2']) {
    sqlite
      .prepare(
        `insert into exchanges (id, started_at, duration_ms, method, path, request_headers)
         values (?, 1700000000000, 1, 'POST', '/v1/chat/completions', '{}')`,
      )
      .run(id);
  }
  sqlite
    .prepare(
      "insert into exchange_index (exchange_id, status, attempts, updated_at) values ('x1', 'indexed', 1, 1)",
    )
    .run();
  const latest = await migrator.migrateToLatest();
  expect(latest.error).toBeUndefined();
  return { sqlite, db };
}

const pendingIds = (store: ReturnType<typeof createIndexStateStore>) =>
  store.pending({ eligibleSql: '1 = 1', limit: 10 }).map((r) => r.id);

test('0009 keeps old state unclaimed; each target has its own progress; reset and delete', async () => {
  const { sqlite, db } = await upgradedDb();
  expect(sqlite.prepare('select exchange_id, target, status from exchange_index').all()).toEqual([
    { exchange_id: 'x1', target: '', status: 'indexed' },
  ]);
  const a = createIndexStateStore(sqlite, A);
  const b = createIndexStateStore(sqlite, B);
  expect(pendingIds(a)).toEqual(['x1', 'x2']);
  expect(a.claimUnclaimed()).toBe(true);
  expect(pendingIds(a)).toEqual(['x2']);
  expect(pendingIds(b)).toEqual(['x1', 'x2']);

  expect(
    b.mark([
      { id: 'x1', status: 'indexed', error: null },
      { id: 'x2', status: 'skipped', error: null },
    ]),
  ).toBe(true);
  expect(b.countPending({ eligibleSql: '1 = 1' })).toBe(0);
  expect(pendingIds(a)).toEqual(['x2']);

  expect(b.reset()).toBe(true);
  expect(pendingIds(b)).toEqual(['x1']); // skipped (no text) stays skipped
  expect(pendingIds(a)).toEqual(['x2']);

  sqlite.prepare("delete from exchanges where id = 'x1'").run();
  expect(sqlite.prepare("select count(*) as n from exchange_index where exchange_id = 'x1'").get()).toEqual({
    n: 0,
  });
  await db.destroy();
});

test('writes queued while another process holds the lock go in one attempt, in order, and flush() waits for them', async () => {
  const tmp = createTempDir();
  const database = await openDatabase(join(tmp.path, 'proxy.db'));
  const other = new BetterSqlite3(database.path);
  try {
    const insert = database.sqlite.prepare(
      `insert into exchanges (id, started_at, duration_ms, method, path, request_headers)
       values (?, 1700000000000, 1, 'POST', '/v1/chat/completions', '{}')`,
    );
    for (const id of ['x1', 'x2', 'x3']) insert.run(id);
    let attempts = 0;
    const store = createIndexStateStore(database.sqlite, A, {
      attempt: (call) => {
        attempts++;
        return withoutBusyWait(() => database.sqlite, call, { budgetMs: 3000 });
      },
    });
    await store.flush(); // nothing queued
    other.exec('begin immediate');
    // One mark per indexing batch while the lock lasts; a reset between them drops the ones before.
    expect(store.mark([{ id: 'x1', status: 'indexed', error: null }])).toBe(true);
    expect(store.reset()).toBe(true);
    expect(store.mark([{ id: 'x2', status: 'indexed', error: null }])).toBe(true);
    expect(store.mark([{ id: 'x3', status: 'failed', error: 'boom' }])).toBe(true);
    setTimeout(() => other.exec('rollback'), 200);
    await store.flush();
    expect(attempts).toBe(1);
    expect(
      database.sqlite.prepare('select exchange_id, status from exchange_index order by exchange_id').all(),
    ).toEqual([
      { exchange_id: 'x2', status: 'indexed' },
      { exchange_id: 'x3', status: 'failed' },
    ]);
  } finally {
    other.close();
    await database.close();
    tmp.cleanup();
  }
});

test.each([
  ['http://127.0.0.1:6333', 'http://127.0.0.1:6333/collections/c'],
  ['http://127.0.0.1:6333/', 'http://127.0.0.1:6333/collections/c'],
  [
    'https://user:secret-pass@q.example:6333/?api-key=secret-key#frag',
    'https://q.example:6333/collections/c',
  ],
])('the stored target of %s holds no credentials', (url, target) => {
  expect(vectorTarget(url, 'c')).toBe(target);
});
