import { join } from 'node:path';
import { describe } from 'vitest';
import { openStorage } from '../../src/storage/storage.js';
import { createTestPgDatabase, pgUrl, warnIfNoPg } from '../helpers/pg.js';
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
