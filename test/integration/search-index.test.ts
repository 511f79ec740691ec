import { join } from 'node:path';
import OpenAI from 'openai';
import { afterEach, expect, test } from 'vitest';
import { main } from '../../src/cli.js';
import { type OpenDatabase, openDatabase } from '../../src/storage/database.js';
import { createFakeUpstream, type FakeUpstream, sleep } from '../helpers/fake-upstream.js';
import { createTempDir } from '../helpers/temp-dir.js';
import { createTestIo, startTestProxy, type TestProxy } from '../helpers/test-proxy.js';

let upstream: FakeUpstream | undefined;
let proxy: TestProxy | undefined;
afterEach(async () => {
  await proxy?.close();
  await upstream?.close();
});

async function grepAfterOneExchange(env: Record<string, string>) {
  upstream = await createFakeUpstream();
  proxy = await startTestProxy({ OPENAI_BASE_URL: upstream.baseUrl, ...env });
  const client = new OpenAI({ apiKey: 'sk-x', baseURL: `${proxy.url}/v1`, maxRetries: 0 });
  await client.chat.completions.create({
    model: 'gpt-4o',
    messages: [{ role: 'user', content: 'platypus facts' }],
  });
  await proxy.waitForRows(1);
  await sleep(600); // > the indexer's 250 ms interval
  const io = createTestIo({ HOME: proxy.dir }, proxy.dir);
  const code = await main(['logs', '--grep', 'platypus', '--json', '--db', proxy.dbPath], io);
  return { code, rows: JSON.parse(io.out()) as { model: string }[], err: io.err() };
}

test('serve fills the full-text index in the background: logs --grep finds a fresh exchange', async () => {
  const r = await grepAfterOneExchange({});
  expect(r.code).toBe(0);
  expect(r.rows.map((x) => x.model)).toEqual(['gpt-4o']);
  expect(r.err).toBe('');
});

test('SEARCH_INDEX=false: nothing is indexed, and --grep says why it finds nothing new', async () => {
  const r = await grepAfterOneExchange({ SEARCH_INDEX: 'false' });
  expect(r.code).toBe(0);
  expect(r.rows).toEqual([]);
  expect(r.err).toMatch(/not in the search index yet.*SEARCH_INDEX=false/);
});

test('the full-text index merges 16 segments per level, in new databases and in ones migrated from 0006', async () => {
  const dir = createTempDir();
  const path = join(dir.path, 'proxy.db');
  const automerge = (db: OpenDatabase) =>
    db.sqlite.prepare("select v from exchanges_fts_config where k = 'automerge'").pluck().get();
  try {
    let db = await openDatabase(path);
    expect(automerge(db)).toBe(16);
    // A database migrated up to 0006: FTS5's default (no row: 4).
    db.sqlite.exec(`insert into exchanges_fts (exchanges_fts, rank) values ('automerge', 4);
      delete from kysely_migration where name = '0007-search-index-automerge'`);
    expect(automerge(db)).toBe(4);
    await db.close();
    db = await openDatabase(path);
    expect(automerge(db)).toBe(16);
    await db.close();
  } finally {
    dir.cleanup();
  }
});
