import { join } from 'node:path';
import OpenAI from 'openai';
import { afterEach, expect, test } from 'vitest';
import { main } from '../../src/cli.js';
import { type OpenDatabase, openDatabase } from '../../src/storage/database.js';
import { indexPendingExchanges, searchIndexLag } from '../../src/storage/search-index.js';
import { createFakeUpstream, type FakeUpstream, sleep } from '../helpers/fake-upstream.js';
import { createTempDir } from '../helpers/temp-dir.js';
import { createTestIo, startTestProxy, type TestProxy } from '../helpers/test-proxy.js';

let upstream: FakeUpstream | undefined;
let proxy: TestProxy | undefined;
afterEach(async () => {
  await proxy?.close();
  await upstream?.close();
});

async function grepAfterOneExchange(
  env: Record<string, string>,
  content = 'platypus facts',
  grep = 'platypus',
) {
  upstream = await createFakeUpstream();
  proxy = await startTestProxy({ OPENAI_BASE_URL: upstream.baseUrl, ...env });
  const client = new OpenAI({ apiKey: 'sk-x', baseURL: `${proxy.url}/v1`, maxRetries: 0 });
  await client.chat.completions.create({
    model: 'gpt-4o',
    messages: [{ role: 'user', content }],
  });
  await proxy.waitForRows(1);
  await sleep(600); // > the indexer's 250 ms interval
  const io = createTestIo({ HOME: proxy.dir }, proxy.dir);
  const code = await main(['logs', '--grep', grep, '--json', '--db', proxy.dbPath], io);
  return { code, rows: JSON.parse(io.out()) as { model: string }[], err: io.err() };
}

test('serve fills the full-text index in the background: logs --grep finds a fresh exchange', async () => {
  const r = await grepAfterOneExchange({});
  expect(r.code).toBe(0);
  expect(r.rows.map((x) => x.model)).toEqual(['gpt-4o']);
  expect(r.err).toBe('');
});

test('a word after a newline in the prompt is found, as the words of the body are', async () => {
  // The SDK sends the newline as JSON's `\n`: indexed as it stands, the word after it read `nsecond`.
  const r = await grepAfterOneExchange({}, 'platypus facts\nsecond wombat', 'second wombat');
  expect(r.code).toBe(0);
  expect(r.rows.map((x) => x.model)).toEqual(['gpt-4o']);
});

test('a database indexed before escapes were decoded is indexed again when it is opened', async () => {
  const dir = createTempDir();
  const path = join(dir.path, 'proxy.db');
  const grep = async (text: string) => {
    const io = createTestIo({ HOME: dir.path }, dir.path);
    expect(await main(['logs', '--grep', text, '--json', '--db', path], io)).toBe(0);
    return (JSON.parse(io.out()) as { id: string }[]).map((x) => x.id);
  };
  try {
    let db = await openDatabase(path);
    db.sqlite
      .prepare(
        `insert into exchanges (id, started_at, duration_ms, method, path, request_headers, request_body)
         values ('01jf000000000000000000000a', ?, 5, 'POST', '/v1/chat/completions', '{}', ?)`,
      )
      .run(Date.now(), JSON.stringify({ messages: [{ content: 'line one\nsecond line' }] }));
    // The index as versions before 0008 filled it (the raw body), and 0008 not applied yet.
    db.sqlite.exec(`insert into exchanges_fts (rowid, request, response)
        select rowid, request_body, '' from exchanges;
      update exchanges_fts_state set indexed_rowid = (select max(rowid) from exchanges) where id = 1;
      delete from kysely_migration where name = '0008-search-text-unescaped'`);
    await db.close();
    expect(await grep('second')).toEqual([]);
    db = await openDatabase(path);
    expect(searchIndexLag(db.sqlite)).toEqual({ indexedRowid: 0, maxRowid: 1 });
    expect(indexPendingExchanges(db.sqlite, 100)).toBe(1);
    await db.close();
    expect(await grep('second')).toEqual(['01jf000000000000000000000a']);
  } finally {
    dir.cleanup();
  }
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
      delete from kysely_migration where name in ('0007-search-index-automerge', '0008-search-text-unescaped')`);
    expect(automerge(db)).toBe(4);
    await db.close();
    db = await openDatabase(path);
    expect(automerge(db)).toBe(16);
    await db.close();
  } finally {
    dir.cleanup();
  }
});
