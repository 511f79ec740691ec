import { sql } from 'kysely';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import {
  createPgRegistryStore,
  createSqliteRegistryStore,
  type RegistryStore,
} from '../../src/registry/registry-store.js';
import type { ExchangeRecord } from '../../src/storage/exchange-record.js';
import { subscribeNotify } from '../../src/storage/postgres.js';
import type { Storage } from '../../src/storage/storage.js';
import { until } from './until.js';

/** What the shared suite needs of an implementation: a fresh database, openable more than once. */
export interface StorageFactory {
  /** Open (create + migrate) the test's database; may be called again for a second handle on it. */
  open(): Promise<Storage>;
  /** Remove the test's database. */
  cleanup(): Promise<void>;
}

let seq = 0;

/** A complete exchange record; override any field. */
export function makeRecord(over: Partial<ExchangeRecord> = {}): ExchangeRecord {
  seq++;
  return {
    id: `ex${String(seq).padStart(6, '0')}${Math.random().toString(36).slice(2, 8)}`,
    startedAt: 1_760_000_000_000 + seq,
    durationMs: 12.4,
    ttfbMs: 3.6,
    method: 'POST',
    path: '/v1/chat/completions',
    query: null,
    clientAddr: '127.0.0.1',
    status: 200,
    requestHeadersJson: '{"content-type":"application/json","authorization":"[redacted]"}',
    responseHeadersJson: '{"content-type":"application/json"}',
    requestBody: '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello"}]}',
    requestBytes: 70,
    requestTruncated: false,
    responseBody: '{"choices":[{"message":{"content":"hi there"}}]}',
    responseBytes: 48,
    responseTruncated: false,
    model: 'gpt-4o-mini',
    upstreamModel: 'gpt-4o-mini',
    upstream: 'default',
    modelUnknown: false,
    stream: false,
    promptTokens: 5,
    completionTokens: 2,
    totalTokens: 7,
    user: 'alice',
    error: null,
    errorMessage: null,
    assembled: null,
    internal: false,
    ...over,
  } as ExchangeRecord;
}

/** The registry store on a storage, with change notification when the storage offers it. */
export function registryStoreOf(storage: Storage, options: { listen?: boolean } = {}): RegistryStore {
  if (storage.sqlite) return createSqliteRegistryStore(storage.sqlite);
  const url = storage.postgres!.url;
  return createPgRegistryStore(
    storage.db,
    options.listen === false
      ? undefined
      : (channel, onNotify, onState) => subscribeNotify(url, channel, onNotify, onState),
  );
}

/**
 * The storage contract, run against every implementation (like undici's cache-store-test-utils):
 * migrations, the batched writer (exactly once, bounded queue, spill, health), and reading back.
 */
export function storageSuite(name: string, createFactory: () => Promise<StorageFactory>): void {
  describe(`storage contract: ${name}`, () => {
    let factory: StorageFactory;
    let storage: Storage;
    const extra: Storage[] = [];

    beforeEach(async () => {
      factory = await createFactory();
      storage = await factory.open();
    });
    afterEach(async () => {
      for (const s of extra.splice(0)) await s.close().catch(() => undefined);
      await storage.close().catch(() => undefined);
      await factory.cleanup();
    });

    test('migrates once: a second open of the same database finds every table and changes nothing', async () => {
      const second = await factory.open();
      extra.push(second);
      expect(second.kind).toBe(storage.kind);
      const migrations = await second.db
        .selectFrom('kysely_migration' as any)
        .select('name' as any)
        .orderBy('name' as any)
        .execute();
      expect(migrations.map((m: any) => m.name)).toEqual(
        expect.arrayContaining([
          '0001-exchanges',
          '0003-model-registry',
          '0004-vector-index',
          '0009-vector-index-target',
        ]),
      );
      const count = await second.db
        .selectFrom('exchanges')
        .select((eb) => eb.fn.countAll<number>().as('n'))
        .executeTakeFirstOrThrow();
      expect(Number(count.n)).toBe(0);
      for (const table of ['models', 'model_mappings', 'exchange_index'] as const)
        await expect(second.db.selectFrom(table).selectAll().execute()).resolves.toEqual([]);
    });

    test('a database a newer oai-proxy migrated is refused by name (config_invalid, exit 2), not called corrupted', async () => {
      await sql`insert into kysely_migration (name, timestamp) values ('0012-future-thing', '2030-01-01T00:00:00.000Z')`.execute(
        storage.db,
      );
      const refused = await factory.open().then(
        (s) => {
          extra.push(s);
          return null;
        },
        (err: unknown) => err,
      );
      expect(refused).toMatchObject({ code: 'config_invalid', exitCode: 2 });
      expect((refused as Error).message).toMatch(
        /was written by a newer oai-proxy \(it has migration 0012-future-thing, which oai-proxy \S+ does not know\); upgrade oai-proxy, or point --db \/ DATABASE_URL at another database$/,
      );
    });

    test('records every exchange once, in batches, with its columns as written', async () => {
      const writer = storage.createWriter({ flushIntervalMs: 60_000, queueMax: 10_000, batchSize: 100 });
      const records = Array.from({ length: 250 }, (_, i) =>
        makeRecord({
          stream: i % 2 === 0,
          status: i === 3 ? null : 200,
          error: i === 3 ? 'upstream_timeout' : null,
        }),
      );
      for (const r of records) writer.record(r);
      expect(writer.health().queued).toBe(250);
      // The same exchange handed over twice (a retried batch) is stored once.
      writer.record(records[0]);
      expect(await writer.flush()).toBe(251);
      const rows = await storage.db.selectFrom('exchanges').selectAll().orderBy('started_at').execute();
      expect(rows).toHaveLength(250);
      expect(rows.map((r) => r.id)).toEqual(records.map((r) => r.id));
      const first = rows[0];
      expect(first).toMatchObject({
        started_at: records[0].startedAt,
        duration_ms: 12,
        ttfb_ms: 4,
        method: 'POST',
        path: '/v1/chat/completions',
        status: 200,
        request_body: records[0].requestBody,
        request_bytes: 70,
        request_truncated: 0,
        stream: 1,
        model: 'gpt-4o-mini',
        user: 'alice',
        internal: 0,
      });
      expect(typeof first.started_at).toBe('number');
      expect(JSON.parse(first.request_headers)).toEqual({
        'content-type': 'application/json',
        authorization: '[redacted]',
      });
      expect(rows[3]).toMatchObject({ status: null, error: 'upstream_timeout' });
      expect(writer.health()).toMatchObject({ database: 'ok', queued: 0, written: 251, spilled: 0 });
      await writer.close();
    });

    test('a row recorded once close() has begun, or after it, is written or spilled, and counted', async () => {
      const spilled: string[] = [];
      const writer = storage.createWriter({
        flushIntervalMs: 60_000,
        queueMax: 100,
        onSpill: (rows) => spilled.push(...rows.map((r) => r.id)),
      });
      const [early, during, after] = [makeRecord(), makeRecord(), makeRecord()];
      writer.record(early);
      const closing = writer.close();
      writer.record(during);
      await closing;
      writer.record(after);
      const written = (await storage.db.selectFrom('exchanges').select('id').execute()).map((r) => r.id);
      expect(written).toContain(early.id);
      expect(spilled).toContain(after.id);
      // Each row exactly once: in the database or spilled (to the log file), never neither.
      for (const r of [early, during, after])
        expect([written.includes(r.id), spilled.includes(r.id)]).toContain(true);
      expect(written.length + spilled.length).toBe(3);
      expect(writer.health()).toMatchObject({ written: written.length, spilled: spilled.length });
    });

    test('a body with NUL bytes (binary upload decoded as text) is still recorded', async () => {
      const writer = storage.createWriter({ flushIntervalMs: 60_000, queueMax: 100 });
      const r = makeRecord({ requestBody: 'RIFF\u0000\u0000WAVE', path: '/v1/audio/transcriptions' });
      writer.record(r);
      await writer.flush();
      const row = await storage.db
        .selectFrom('exchanges')
        .selectAll()
        .where('id', '=', r.id)
        .executeTakeFirst();
      expect(row?.request_body).toMatch(/^RIFF..WAVE$/);
      expect(writer.health().database).toBe('ok');
      await writer.close();
    });

    test('a NUL in any text value (model, user, path, query, headers, error, assembled…) is still recorded', async () => {
      const writer = storage.createWriter({ flushIntervalMs: 60_000, queueMax: 100 });
      const nul = (s: string) => `${s}\u0000x`;
      const r = makeRecord({
        method: nul('POST'),
        path: nul('/v1/chat/completions'),
        query: nul('a=1'),
        clientAddr: nul('127.0.0.1'),
        requestHeadersJson: nul('{"x-a":"b"}'),
        responseHeadersJson: nul('{}'),
        requestBody: nul('{}'),
        responseBody: nul('{}'),
        model: nul('gpt'),
        upstreamModel: nul('gpt-up'),
        upstream: nul('default'),
        user: nul('alice'),
        error: nul('upstream_error') as ExchangeRecord['error'],
        errorMessage: nul('boom'),
        assembled: { role: 'assistant', content: nul('hi') } as unknown as ExchangeRecord['assembled'],
      });
      writer.record(r);
      await writer.flush();
      expect(writer.health()).toMatchObject({ database: 'ok', spilled: 0, lastError: null });
      const row = await storage.db
        .selectFrom('exchanges')
        .selectAll()
        .where('id', '=', r.id)
        .executeTakeFirst();
      // SQLite keeps the NUL; PostgreSQL text cannot hold it and gets U+FFFD instead.
      expect(row).toMatchObject({ model: expect.stringMatching(/^gpt[\u0000\uFFFD]x$/) });
      for (const [k, v] of Object.entries(row!)) {
        if (typeof v === 'string' && k !== 'id' && k !== 'assembled')
          expect([k, v.replace('\uFFFD', '\u0000').endsWith('\u0000x')]).toEqual([k, true]);
      }
      await writer.close();
    });

    test('a failing database never throws at record(): rows queue up to queueMax, the oldest spill, health says error', async () => {
      const spilledIds: string[] = [];
      const errors: string[] = [];
      const writer = storage.createWriter({
        flushIntervalMs: 60_000,
        queueMax: 5,
        onSpill: (rows) => spilledIds.push(...rows.map((r) => r.id)),
        onError: (e) => errors.push(e.message),
      });
      await storage.close();
      const records = Array.from({ length: 8 }, () => makeRecord());
      for (const r of records) writer.record(r);
      expect(await writer.flush()).toBe(0);
      const h = writer.health();
      expect(h.database).toBe('error');
      expect(h.lastError).toBeTruthy();
      expect(h.queued).toBe(5);
      expect(h.spilled).toBe(3);
      expect(spilledIds).toEqual(records.slice(0, 3).map((r) => r.id));
      expect(errors).toHaveLength(1);
      writer.record(makeRecord());
      expect(writer.health()).toMatchObject({ queued: 5, spilled: 4 });
    });

    test('rows queued while the database failed are written once it is back', async () => {
      const recovered: boolean[] = [];
      const second = await factory.open();
      extra.push(second);
      const writer = second.createWriter({
        flushIntervalMs: 60_000,
        queueMax: 100,
        onRecover: () => recovered.push(true),
      });
      // Break the table under the writer, then repair it.
      await storage.db.schema.alterTable('exchanges').renameTo('exchanges_away').execute();
      const records = Array.from({ length: 4 }, () => makeRecord());
      for (const r of records) writer.record(r);
      expect(await writer.flush()).toBe(0);
      expect(writer.health()).toMatchObject({ database: 'error', queued: 4 });
      await storage.db.schema.alterTable('exchanges_away').renameTo('exchanges').execute();
      expect(await writer.flush()).toBe(4);
      expect(writer.health()).toMatchObject({ database: 'ok', queued: 0, written: 4, lastError: null });
      expect(recovered).toEqual([true]);
      const rows = await storage.db.selectFrom('exchanges').select('id').execute();
      expect(rows.map((r) => r.id).sort()).toEqual(records.map((r) => r.id).sort());
      await writer.close();
    });

    test('registry: writes are checked and visible to another connection', async () => {
      const second = await factory.open();
      extra.push(second);
      const a = registryStoreOf(storage);
      const b = registryStoreOf(second);
      expect(await a.isSeeded()).toBe(false);
      await a.seed({
        models: [
          {
            name: 'gpt-4o',
            displayName: null,
            description: null,
            upstream: null,
            deployment: null,
            source: 'default',
          },
        ],
        mappings: { fast: 'gpt-4o' },
      } as any);
      expect(await b.isSeeded()).toBe(true);
      expect((await a.addModel({ name: 'llama3', upstream: null }, 'cli')).name).toBe('llama3');
      await expect(b.addModel({ name: 'llama3' }, 'admin')).rejects.toMatchObject({
        code: 'conflict',
        status: 409,
      });
      expect(await b.setMapping('cheap', 'llama3', 'admin')).toBe('created');
      expect(await a.setMapping('cheap', 'gpt-4o', 'cli')).toBe('replaced');
      await expect(a.setMapping('gpt-4o', 'cheap', 'cli')).rejects.toMatchObject({ code: 'conflict' });
      let reg = await b.load();
      expect([...reg.models.keys()].sort()).toEqual(['gpt-4o', 'llama3']);
      expect(reg.resolve('cheap').actual).toBe('gpt-4o');
      expect(reg.resolve('fast').actual).toBe('gpt-4o');
      expect(await b.removeModel('gpt-4o')).toBe(true);
      expect(await a.removeModel('gpt-4o')).toBe(false);
      expect(await a.removeMapping('fast')).toBe(true);
      reg = await a.load();
      expect([...reg.models.keys()]).toEqual(['llama3']);
      expect([...reg.mappings.keys()]).toEqual(['cheap']);
      // A removed seeded entry stays removed when seeding runs again.
      const again = await a.seed({
        models: [
          {
            name: 'gpt-4o',
            displayName: null,
            description: null,
            upstream: null,
            deployment: null,
            source: 'default',
          },
        ],
        mappings: { fast: 'gpt-4o' },
      } as any);
      expect(again.added).toBe(0);
      expect((await b.load()).models.has('gpt-4o')).toBe(false);
    });

    test('registry: a configuration that reverses an alias chain is applied in one seeding, checked as a whole', async () => {
      const store = registryStoreOf(storage);
      const m = (name: string) => ({
        name,
        displayName: null,
        description: null,
        upstream: null,
        deployment: null,
        source: 'config' as const,
      });
      const aliases = async () =>
        Object.fromEntries([...(await store.load()).mappings.values()].map((a) => [a.alias, a.actual]));
      await store.seed({ models: [m('llama3')], mappings: { fast: 'mini', mini: 'llama3' } });
      // Valid as a whole; checked one by one against the old aliases, `mini → fast` looked like a loop.
      const r = await store.seed({ models: [m('llama3')], mappings: { mini: 'fast', fast: 'llama3' } });
      expect(r.warnings).toEqual([]);
      expect(await aliases()).toEqual({ fast: 'llama3', mini: 'fast' });

      // A user's alias still wins: the configured one that would loop through it is refused, and the
      // configured alias it replaced is dropped too when keeping it would close the loop.
      await store.setMapping('turbo', 'mini', 'cli');
      const clash = await store.seed({
        models: [m('llama3')],
        mappings: { mini: 'turbo', fast: 'mini' },
      });
      expect(clash.warnings.join('\n')).toMatch(/MODEL_MAPPINGS mini → turbo was not applied: .*loop/);
      expect(clash.warnings.join('\n')).toMatch(/MODEL_MAPPINGS mini: its previous target fast was removed/);
      const now = await aliases();
      expect(now).toEqual({ turbo: 'mini', fast: 'mini' });
      const reg = await store.load();
      for (const alias of Object.keys(now)) expect(reg.resolve(alias).actual).not.toBe(alias);
    });

    test("registry: a NUL in a model's display name or description is refused alike (400, naming the field)", async () => {
      const store = registryStoreOf(storage);
      for (const [m, field] of [
        [{ name: 'm1', description: 'd\u0000esc' }, 'description'],
        [{ name: 'm1', displayName: 'D\u0000' }, 'display_name'],
      ] as const) {
        const err = await store.addModel(m, 'admin').catch((e) => e);
        expect(err).toMatchObject({ code: 'usage', status: 400 });
        expect(err.message).toBe(`${field} must not contain a NUL character (\\u0000)`);
      }
      expect((await store.load()).models.has('m1')).toBe(false);
    });

    test('registry: a change made through another connection is reported within a second', async () => {
      const second = await factory.open();
      extra.push(second);
      const watcher = registryStoreOf(storage);
      let changes = 0;
      const stop = watcher.watch(() => changes++, storage.kind === 'sqlite' ? 100 : 60_000);
      try {
        // Let the PostgreSQL listener connect before the write.
        await new Promise((r) => setTimeout(r, 300));
        await registryStoreOf(second).addModel({ name: 'm1' }, 'cli');
        await until('the watcher to see the new model', () => changes > 0, 1000, 10);
      } finally {
        stop();
      }
    });
  });
}
