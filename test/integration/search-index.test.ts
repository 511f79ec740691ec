import { join } from 'node:path';
import OpenAI from 'openai';
import { afterEach, describe, expect, test } from 'vitest';
import { main } from '../../src/cli.js';
import { type OpenDatabase, openDatabase } from '../../src/storage/database.js';
import { indexPendingExchanges, searchIndexLag } from '../../src/storage/search-index.js';
import { createFakeUpstream, type FakeUpstream, sleep } from '../helpers/fake-upstream.js';
import { createTempDir } from '../helpers/temp-dir.js';
import { createTestIo, startTestProxy, type TestProxy } from '../helpers/test-proxy.js';
import { until } from '../helpers/until.js';

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
      delete from kysely_migration where name in ('0008-search-text-unescaped', '0009-vector-index-target', '0010-search-index-mark-follows-deletes', '0011-search-stream-choices', '0012-search-embeddings-vectors')`);
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
  // `logs stats` and `logs export` with --grep say so too (they found nothing without a word).
  for (const argv of [
    ['stats', '--grep', 'platypus', '--json'],
    ['export', '--grep', 'platypus'],
  ]) {
    const io = createTestIo({ HOME: proxy!.dir }, proxy!.dir);
    expect(await main(['logs', ...argv, '--db', proxy!.dbPath], io)).toBe(0);
    expect(io.err(), argv.join(' ')).toMatch(/not in the search index yet.*SEARCH_INDEX=false/);
  }
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
      delete from kysely_migration where name in ('0007-search-index-automerge', '0008-search-text-unescaped', '0009-vector-index-target', '0010-search-index-mark-follows-deletes', '0011-search-stream-choices', '0012-search-embeddings-vectors')`);
    expect(automerge(db)).toBe(4);
    await db.close();
    db = await openDatabase(path);
    expect(automerge(db)).toBe(16);
    await db.close();
  } finally {
    dir.cleanup();
  }
});

describe('logs prune, then new exchanges: logs --grep finds them', () => {
  async function startRecording() {
    upstream = await createFakeUpstream();
    proxy = await startTestProxy({ OPENAI_BASE_URL: upstream.baseUrl });
    const p = proxy;
    const client = new OpenAI({ apiKey: 'sk-x', baseURL: `${p.url}/v1`, maxRetries: 0 });
    const chat = (content: string) =>
      client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content }] });
    const logs = async (...argv: string[]) => {
      const io = createTestIo({ HOME: p.dir }, p.dir);
      const code = await main(['logs', ...argv, '--db', p.dbPath], io);
      return { code, out: io.out(), err: io.err() };
    };
    const grep = async (word: string) => {
      const r = await logs('--grep', word, '--json');
      expect(r.code, r.err).toBe(0);
      return { rows: (JSON.parse(r.out) as { id: string }[]).length, err: r.err };
    };
    /** Wait until serve's indexer has caught up with the table (or its mark is above it). */
    const indexed = () =>
      until('the indexer to catch up', () => {
        const lag = searchIndexLag(p.running.database.sqlite);
        return lag.indexedRowid >= lag.maxRowid;
      });
    return { p, chat, logs, grep, indexed };
  }

  test.each([[[]], [['--vacuum']]])('every row pruned (%j): rowids start again from 1', async (flags) => {
    const { p, chat, logs, grep, indexed } = await startRecording();
    for (let i = 1; i <= 5; i++) await chat(`early alpaca ${i}`);
    await p.waitForRows(5);
    await indexed();
    expect(await grep('alpaca')).toEqual({ rows: 5, err: '' });

    const pruned = await logs('prune', '--older-than', new Date().toISOString(), ...flags, '--json');
    expect(pruned.code, pruned.err).toBe(0);
    expect(JSON.parse(pruned.out)).toMatchObject({ deleted: 5 });

    for (let i = 1; i <= 3; i++) await chat(`late hedgehog ${i}`);
    expect(await p.waitForRows(3)).toHaveLength(3);
    await indexed();
    expect(await grep('hedgehog')).toEqual({ rows: 3, err: '' });
    expect(await grep('alpaca')).toEqual({ rows: 0, err: '' });
  });

  test('the newest row pruned (a long request that finished last): the next row reuses its rowid', async () => {
    const { p, chat, logs, grep, indexed } = await startRecording();
    let release = () => {};
    const held = new Promise<void>((r) => {
      release = r;
    });
    upstream!.on('/v1/chat/completions', async (_req, res, body) => {
      const slow = body.toString().includes('slow');
      if (slow) await held;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ choices: [{ index: 0, message: { role: 'assistant', content: 'ok' } }] }));
    });
    const long = chat('slow walrus');
    await until('the slow request upstream', () => upstream!.requests.length === 1);
    await sleep(20);
    const cutoff = new Date().toISOString();
    await sleep(20);
    for (let i = 1; i <= 3; i++) await chat(`quick otter ${i}`);
    release();
    await long;
    const rows = await p.waitForRows(4);
    // Recorded when it finished: the highest rowid, the earliest start.
    expect(rows[0].request_body).toContain('slow walrus');
    await indexed();

    const pruned = await logs('prune', '--older-than', cutoff, '--json');
    expect(JSON.parse(pruned.out)).toMatchObject({ deleted: 1 });
    await chat('late hedgehog');
    await p.waitForRows(4);
    await indexed();
    expect(await grep('hedgehog')).toEqual({ rows: 1, err: '' });
    expect(await grep('otter')).toEqual({ rows: 3, err: '' });
  });
});

test('a database where new rows already sit below the mark: opening it lowers the mark, serve indexes them', async () => {
  const dir = createTempDir();
  const path = join(dir.path, 'proxy.db');
  const insert = (db: OpenDatabase, n: number, word: string) => {
    for (let i = 0; i < n; i++)
      db.sqlite
        .prepare(
          `insert into exchanges (id, started_at, duration_ms, method, path, request_headers, request_body)
           values (?, ?, 5, 'POST', '/v1/chat/completions', '{}', ?)`,
        )
        .run(`01jf00000000000000000${word.slice(0, 3)}${i}`.padEnd(26, '0'), Date.now(), `${word} ${i}`);
  };
  try {
    let db = await openDatabase(path);
    insert(db, 5, 'alpaca');
    expect(indexPendingExchanges(db.sqlite, 100)).toBe(5);
    // As a version without migration 0010 left it: every row pruned, then three recorded (rowids 1-3).
    db.sqlite.exec(`drop trigger exchanges_fts_state_after_delete;
      delete from kysely_migration where name in ('0010-search-index-mark-follows-deletes', '0011-search-stream-choices', '0012-search-embeddings-vectors');
      delete from exchanges`);
    insert(db, 3, 'hedgehog');
    expect(searchIndexLag(db.sqlite)).toEqual({ indexedRowid: 5, maxRowid: 3 });
    await db.close();
    db = await openDatabase(path);
    expect(searchIndexLag(db.sqlite)).toEqual({ indexedRowid: 0, maxRowid: 3 });
    expect(indexPendingExchanges(db.sqlite, 100)).toBe(3);
    await db.close();
    const io = createTestIo({ HOME: dir.path }, dir.path);
    expect(await main(['logs', '--grep', 'hedgehog', '--json', '--db', path], io)).toBe(0);
    expect(JSON.parse(io.out())).toHaveLength(3);
  } finally {
    dir.cleanup();
  }
});
