import { Kysely, type MigrationProvider, Migrator, PostgresDialect } from 'kysely';
import { describe, expect, test } from 'vitest';
import { migrations } from '../../src/storage/migrations/index.js';
import { createPool } from '../../src/storage/postgres.js';
import { createTestPgDatabase, pgQuery, pgUrl, warnIfNoPg } from '../helpers/pg.js';

warnIfNoPg();
describe.skipIf(!pgUrl)('migration 0009 on PostgreSQL (OAI_PROXY_TEST_PG_URL)', () => {
  test('existing index state is kept with target "", one row per exchange and target, delete cascades', async () => {
    const database = await createTestPgDatabase();
    const db = new Kysely<any>({ dialect: new PostgresDialect({ pool: createPool(database.url) }) });
    try {
      const provider: MigrationProvider = { getMigrations: async () => migrations };
      const migrator = new Migrator({ db, provider });
      expect((await migrator.migrateTo('0008-search-text-unescaped')).error).toBeUndefined();
      await pgQuery(
        database.url,
        `insert into exchanges (id, started_at, duration_ms, method, path, request_headers)
         values ('x1', 1700000000000, 1, 'POST', '/v1/chat/completions', '{}')`,
      );
      await pgQuery(
        database.url,
        "insert into exchange_index (exchange_id, status, attempts, updated_at) values ('x1', 'indexed', 1, 1)",
      );
      expect((await migrator.migrateToLatest()).error).toBeUndefined();

      expect(await pgQuery(database.url, 'select exchange_id, target, status from exchange_index')).toEqual([
        { exchange_id: 'x1', target: '', status: 'indexed' },
      ]);
      await pgQuery(
        database.url,
        "insert into exchange_index (exchange_id, target, status, attempts, updated_at) values ('x1', 'b', 'indexed', 1, 1)",
      );
      await expect(
        pgQuery(
          database.url,
          "insert into exchange_index (exchange_id, target, status, attempts, updated_at) values ('x1', 'b', 'failed', 1, 1)",
        ),
      ).rejects.toThrow(/duplicate key/);
      await pgQuery(database.url, "delete from exchanges where id = 'x1'");
      expect(await pgQuery(database.url, 'select count(*)::int as n from exchange_index')).toEqual([
        { n: 0 },
      ]);
    } finally {
      await db.destroy();
      await database.drop();
    }
  });
});
