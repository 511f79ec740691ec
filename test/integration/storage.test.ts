import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { createPool } from '../../src/storage/postgres.js';
import { openStorage } from '../../src/storage/storage.js';
import { createTestPgDatabase, pgUrl, startRelay, warnIfNoPg } from '../helpers/pg.js';
import { storageSuite } from '../helpers/storage-suite.js';
import { createTempDir } from '../helpers/temp-dir.js';

// One contract, every implementation of the storage interface.
storageSuite('SQLite', async () => {
  const tmp = createTempDir();
  const path = join(tmp.path, 'proxy.db');
  return {
    open: () => openStorage({ kind: 'sqlite', path }),
    cleanup: async () => tmp.cleanup(),
  };
});

warnIfNoPg();
describe.skipIf(!pgUrl)('PostgreSQL (OAI_PROXY_TEST_PG_URL)', () => {
  storageSuite('PostgreSQL', async () => {
    const database = await createTestPgDatabase();
    return {
      open: () => openStorage({ kind: 'postgres', url: database.url }),
      cleanup: () => database.drop(),
    };
  });
});

describe.skipIf(!pgUrl)('PostgreSQL connections lost mid-query', () => {
  // pg-pool takes its error listener off a client while the client is lent out: a connection cut during a
  // query then emitted 'error' with no listener, which crashes the process (seen as an uncaught
  // "Connection terminated unexpectedly" when `logs --follow` lost its server).
  test('the query fails, nothing is thrown at the process, and the pool reconnects', async () => {
    const database = await createTestPgDatabase();
    const relay = await startRelay(Number(new URL(database.url).port));
    const viaRelay = new URL(database.url);
    viaRelay.port = String(relay.port);
    const pool = createPool(viaRelay.href);
    try {
      // As Kysely uses the pool: a client lent out, queried, released.
      const lent = await pool.connect();
      const listeners = lent.listenerCount('error');
      const slow = lent.query('select pg_sleep(5)');
      await new Promise((r) => setTimeout(r, 200));
      await relay.down();
      await expect(slow).rejects.toThrow(/terminated/i);
      lent.release(true);
      expect(listeners).toBeGreaterThan(0);
      await relay.up();
      expect((await pool.query('select 1 as one')).rows).toEqual([{ one: 1 }]);
    } finally {
      await pool.end().catch(() => undefined);
      await relay.down();
      await database.drop();
    }
  });
});
