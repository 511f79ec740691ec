import BetterSqlite3 from 'better-sqlite3';
import { Kysely, type MigrationProvider, Migrator, SqliteDialect } from 'kysely';
import { expect, test } from 'vitest';
import type { ExchangeRecord } from '../../src/storage/exchange-record.js';
import { createExchangeWriter } from '../../src/storage/log-store.js';
import { migrations } from '../../src/storage/migrations/index.js';

function record(i: number): ExchangeRecord {
  return {
    id: `row-${String(i).padStart(6, '0')}`,
    startedAt: 1_700_000_000_000 + i,
    durationMs: 1,
    ttfbMs: 1,
    method: 'POST',
    path: '/v1/chat/completions',
    query: null,
    clientAddr: '127.0.0.1',
    status: 200,
    requestHeadersJson: '{}',
    responseHeadersJson: '{}',
    requestBody: '{}',
    requestBytes: 2,
    requestTruncated: false,
    responseBody: '{}',
    responseBytes: 2,
    responseTruncated: false,
    model: 'm',
    upstreamModel: 'm',
    upstream: 'default',
    modelUnknown: false,
    stream: false,
    promptTokens: null,
    completionTokens: null,
    totalTokens: null,
    user: null,
    error: null,
    errorMessage: null,
    assembled: null,
    internal: false,
  };
}

/** An in-memory database with every migration applied. */
async function migratedMemoryDb() {
  const sqlite = new BetterSqlite3(':memory:');
  const db = new Kysely<any>({ dialect: new SqliteDialect({ database: sqlite }) });
  const provider: MigrationProvider = { getMigrations: async () => migrations };
  await new Migrator({ db, provider }).migrateToLatest();
  return { sqlite, db };
}

test('timed flushes write a backlog in slices, letting the event loop run between them', async () => {
  const { sqlite, db } = await migratedMemoryDb();
  const writer = createExchangeWriter({ sqlite, flushIntervalMs: 5, queueMax: 100_000, sliceRows: 100 });
  for (let i = 0; i < 1000; i++) writer.record(record(i));

  // Sample what is written each time the event loop gets a turn.
  const seen: number[] = [];
  await new Promise<void>((resolve) => {
    const sample = () => {
      seen.push(writer.health().written);
      if (writer.health().written === 1000) resolve();
      else setImmediate(sample);
    };
    setImmediate(sample);
  });
  const partial = [...new Set(seen)].filter((n) => n > 0 && n < 1000);
  expect(partial.length).toBeGreaterThanOrEqual(5);
  expect(partial.every((n) => n % 100 === 0)).toBe(true);
  expect(sqlite.prepare('select count(*) as n from exchanges').get()).toEqual({ n: 1000 });
  writer.close();
  await db.destroy();
});

test('kick() starts a timed flush at once instead of at the next tick, in slices', async () => {
  const { sqlite, db } = await migratedMemoryDb();
  const writer = createExchangeWriter({ sqlite, flushIntervalMs: 60_000, queueMax: 100_000, sliceRows: 100 });
  for (let i = 0; i < 250; i++) writer.record(record(i));
  writer.kick();
  expect(writer.health().written).toBe(100); // the first slice, synchronously
  await new Promise((r) => setTimeout(r, 50));
  expect(writer.health()).toMatchObject({ written: 250, queued: 0 });
  writer.close();
  await db.destroy();
});

test('kick() writes a slice at once even when the next one is already scheduled, and only once', async () => {
  const { sqlite, db } = await migratedMemoryDb();
  const writer = createExchangeWriter({ sqlite, flushIntervalMs: 60_000, queueMax: 100_000, sliceRows: 100 });
  for (let i = 0; i < 350; i++) writer.record(record(i));
  writer.kick();
  expect(writer.health().written).toBe(100); // a slice now, the next one scheduled
  // The recorder thread kicks on every message while a transaction's worth is queued: no waiting for
  // the scheduled slice, so the backlog stays in its message queue instead of on the heap.
  writer.kick();
  expect(writer.health().written).toBe(200);
  // The slice scheduled before the kick was replaced, not added to: one slice per turn of the loop.
  await new Promise((r) => setImmediate(r));
  expect(writer.health().written).toBe(300);
  await new Promise((r) => setImmediate(r));
  expect(writer.health()).toMatchObject({ written: 350, queued: 0 });
  writer.close();
  await db.destroy();
});
