import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, expect, test } from 'vitest';
import { main } from '../../src/cli.js';
import { openDatabase } from '../../src/storage/database.js';
import { VERSION } from '../../src/version.js';
import { createTempDir } from '../helpers/temp-dir.js';
import { createTestIo } from '../helpers/test-proxy.js';

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

/** A database the current build created, then migrated further by a (pretend) newer oai-proxy. */
async function newerDatabase(): Promise<{ dir: string; path: string }> {
  const tmp = createTempDir();
  cleanups.push(tmp.cleanup);
  const path = join(tmp.path, 'proxy.db');
  await (await openDatabase(path)).close();
  const db = new Database(path);
  db.prepare('insert into kysely_migration (name, timestamp) values (?, ?)').run(
    '0099-future-thing',
    new Date().toISOString(),
  );
  db.close();
  return { dir: tmp.path, path };
}

test.each([
  [['serve', '--port', '0', '--upstream', 'http://127.0.0.1:9']],
  [['logs']],
  [['logs', 'stats']],
  [['models', 'list']],
  [['models', 'add', 'my-model']],
])('`oai-proxy %j` on a database a newer version migrated: says so, exit 2, file untouched', async (argv) => {
  const { dir, path } = await newerDatabase();
  const io = createTestIo({ HOME: dir }, dir);
  expect(await main([...argv, '--db', path], io)).toBe(2);
  expect(io.err()).toBe(
    `oai-proxy: Database ${path} was written by a newer oai-proxy (it has migration 0099-future-thing, which oai-proxy ${VERSION} does not know); upgrade oai-proxy, or point --db / DATABASE_URL at another database\n`,
  );
  expect(io.err()).not.toMatch(/corrupt/);
  const db = new Database(path, { readonly: true });
  const names = db.prepare('select name from kysely_migration order by name').pluck().all();
  const models = db.prepare("select count(*) from models where name = 'my-model'").pluck().get();
  db.close();
  expect(names.at(-1)).toBe('0099-future-thing');
  expect(models).toBe(0);
});
