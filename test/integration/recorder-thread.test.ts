import { readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { openDatabase } from '../../src/storage/database.js';
import type { ExchangeRecord } from '../../src/storage/exchange-record.js';
import { createExchangeWriter } from '../../src/storage/log-store.js';
import { type RecorderThreadOptions, startRecorderThread } from '../../src/storage/recorder-thread.js';
import { fillDisk } from '../helpers/disk-full.js';
import { sleep } from '../helpers/fake-upstream.js';
import { makeReadOnly, readOnlyUnsupported } from '../helpers/read-only-file.js';
import { makeRecord } from '../helpers/storage-suite.js';
import { createTempDir } from '../helpers/temp-dir.js';
import { until } from '../helpers/until.js';

const HOUR = 3_600_000;

// Writes through a descriptor already open fail once the file is made immutable (chattr +i, root only);
// a chmod would not stop them, so checkpoints that fail and then succeed again need root.
const cannotFailThenRecover =
  readOnlyUnsupported ??
  (process.getuid?.() === 0 ? null : 'not root: a chmod does not stop open descriptors');

describe('the recorder thread (serve on an SQLite file)', () => {
  let tmp: { path: string; cleanup(): void };
  let path: string;
  let reader: Database.Database;

  beforeEach(async () => {
    tmp = createTempDir();
    path = join(tmp.path, 'proxy.db');
    await (await openDatabase(path)).close(); // created and migrated, as serve does before starting it
    reader = new Database(path, { readonly: true });
  });
  afterEach(() => {
    reader.close();
    tmp.cleanup();
  });

  const start = (over: Partial<RecorderThreadOptions> = {}) =>
    startRecorderThread({
      path,
      searchIndex: true,
      flushIntervalMs: 20,
      queueMax: 1000,
      fallback: () => {
        throw new Error('no fallback expected');
      },
      ...over,
    });
  const count = (sql: string) => reader.prepare(sql).pluck().get() as number;

  test('writes what it is handed, indexes it for --grep and rolls it up for stats, on its own thread', async () => {
    const thread = await start();
    // Two hours ago: a closed hour the rollup takes at once.
    const records = Array.from({ length: 300 }, (_, i) =>
      makeRecord({ startedAt: Date.now() - 2 * HOUR + i, requestBody: `{"q":"zanzibar ${i}"}` }),
    );
    for (const r of records) thread.record(r);
    expect(thread.health().queued).toBe(300); // handed over in messages of at most 64
    thread.flush();
    expect(count('select count(*) from exchanges')).toBe(300);
    expect(thread.health()).toMatchObject({
      database: 'ok',
      queued: 0,
      written: 300,
      spilled: 0,
      lastError: null,
    });
    // The background jobs run in the thread too.
    const deadline = Date.now() + 5000;
    const done = () =>
      count(`select count(*) from exchanges_fts where exchanges_fts match 'zanzibar'`) === 300 &&
      count(`select coalesce(sum(requests), 0) from exchange_stats where dim = 'model'`) === 300;
    while (!done() && Date.now() < deadline) await sleep(20);
    expect(done()).toBe(true);
    await thread.close();
  });

  /** Nice value of each thread of this process, by thread id (Linux). */
  const niceByThread = () =>
    new Map(
      readdirSync('/proc/self/task').map((tid) => {
        const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
        return [tid, Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16])] as const;
      }),
    );

  test.runIf(process.platform === 'linux')(
    'runs, with its checkpoint worker, at a nice value 5 above the thread that started it (Linux)',
    async () => {
      const stat = readFileSync('/proc/thread-self/stat', 'utf8');
      const mine = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16]);
      const before = niceByThread();
      const thread = await start();
      thread.record(makeRecord());
      thread.flush();
      const after = niceByThread();
      const started = [...after].filter(([tid]) => !before.has(tid));
      // The recorder thread and the checkpoint worker it starts; no thread that was there changed.
      expect(started.filter(([, nice]) => nice === Math.min(19, mine + 5))).toHaveLength(2);
      expect([...before].filter(([tid, nice]) => after.has(tid) && after.get(tid) !== nice)).toEqual([]);
      expect(after.get(readlinkSync('/proc/thread-self').split('/').pop()!)).toBe(mine);
      await thread.close();
    },
  );

  test('without flush(), rows of full messages and of a flush interval all land within a few intervals', async () => {
    const thread = await start({ flushIntervalMs: 50 });
    const records = Array.from({ length: 150 }, () => makeRecord()); // two full messages and 22 rows
    for (const r of records) thread.record(r);
    const deadline = Date.now() + 1000;
    while (count('select count(*) from exchanges') < 150 && Date.now() < deadline) await sleep(10);
    expect(count('select count(*) from exchanges')).toBe(150);
    await thread.close();
  });

  test('rows the database still refuses at close() spill back to this thread, not lost with it', async () => {
    const spilled: ExchangeRecord[] = [];
    const thread = await start({ onSpill: (rows) => spilled.push(...rows), onError: () => undefined });
    const full = fillDisk(path);
    const records = Array.from({ length: 4 }, () => makeRecord());
    for (const r of records) thread.record(r);
    await thread.close();
    full.free();
    expect(spilled.map((r) => r.id)).toEqual(records.map((r) => r.id));
    expect(spilled[3].responseBody).toBe(records[3].responseBody);
    expect(count('select count(*) from exchanges')).toBe(0);
  });

  test('a failing database: the oldest rows spill back to this thread with their bodies, the rest are written once it recovers', async () => {
    const spilled: ExchangeRecord[] = [];
    const errors: Error[] = [];
    let recovered = 0;
    const thread = await start({
      queueMax: 5,
      onSpill: (rows) => spilled.push(...rows),
      onError: (err) => errors.push(err),
      onRecover: () => recovered++,
    });
    const full = fillDisk(path);
    const records = Array.from({ length: 10 }, () => makeRecord());
    for (const r of records.slice(0, 8)) thread.record(r);
    expect(thread.flush()).toBe(0);
    expect(thread.health()).toMatchObject({ database: 'error', queued: 5, spilled: 3 });
    // While it fails, rows go over at once; on their way they already count against the bound (the
    // thread drops the oldest for them when they arrive): /health never shows more than queueMax queued.
    for (const r of records.slice(8)) thread.record(r);
    expect(thread.health()).toMatchObject({ database: 'error', queued: 5, spilled: 5 });
    expect(thread.flush()).toBe(0);
    expect(thread.health()).toMatchObject({ database: 'error', queued: 5, spilled: 5 });
    await sleep(50); // the thread's messages arrive on the event loop
    expect(thread.health().lastError).toMatch(/full/);
    expect(errors.map((e) => e.message)).toEqual([expect.stringMatching(/disk is full/)]);
    expect(spilled.map((r) => r.id)).toEqual(records.slice(0, 5).map((r) => r.id));
    expect(spilled[0].requestBody).toBe(records[0].requestBody);
    full.free();
    expect(thread.flush()).toBe(5);
    await sleep(50);
    expect(recovered).toBe(1);
    expect(thread.health()).toMatchObject({
      database: 'ok',
      queued: 0,
      written: 5,
      spilled: 5,
      lastError: null,
    });
    expect(reader.prepare('select id from exchanges order by id').pluck().all()).toEqual(
      records
        .slice(5)
        .map((r) => r.id)
        .sort(),
    );
    await thread.close();
  });

  test('close() writes everything handed over and ends the thread', async () => {
    const thread = await start({ flushIntervalMs: 60_000 });
    for (let i = 0; i < 50; i++) thread.record(makeRecord());
    await thread.close();
    expect(count('select count(*) from exchanges')).toBe(50);
  });

  test('a row recorded once close() has begun spills back to this thread, counted, not left behind', async () => {
    const spilled: ExchangeRecord[] = [];
    const thread = await start({ flushIntervalMs: 60_000, onSpill: (rows) => spilled.push(...rows) });
    const early = makeRecord();
    const late = makeRecord();
    thread.record(early);
    const closing = thread.close();
    thread.record(late);
    await closing;
    expect(count('select count(*) from exchanges')).toBe(1);
    expect(spilled.map((r) => r.id)).toEqual([late.id]);
    expect(thread.health()).toMatchObject({ queued: 0, written: 1, spilled: 1 });
  });

  test('when the thread dies, recording goes on on this thread and /health counts the rows lost', async () => {
    const errors: string[] = [];
    const db = await openDatabase(path);
    const thread = await start({
      workerFile: join(import.meta.dirname, '..', 'helpers', 'crashing-recorder.mjs'),
      onError: (err) => errors.push(err.message),
      fallback: () => createExchangeWriter({ sqlite: db.sqlite, flushIntervalMs: 20, queueMax: 1000 }),
    });
    thread.record(makeRecord()); // the thread dies on this one
    const deadline = Date.now() + 5000;
    while (errors.length === 0 && Date.now() < deadline) await sleep(20);
    expect(errors[0]).toMatch(/recorder thread failed: recorder thread crashed on purpose/);
    await sleep(50); // its exit
    const later = makeRecord();
    thread.record(later);
    expect(thread.flush()).toBe(1);
    expect(reader.prepare('select id from exchanges').pluck().all()).toEqual([later.id]);
    expect(thread.health()).toMatchObject({ database: 'ok', written: 1, spilled: 1 });
    await thread.close();
    await db.close();
  });

  test.skipIf(cannotFailThenRecover)(
    'WAL checkpoints that fail are reported, and said once to have recovered when they succeed again',
    async () => {
      const jobs: { job: string; message: string }[] = [];
      const thread = await start({
        onJobError: (job, err) => jobs.push({ job, message: err.message }),
        onJobRecover: (job, message) => jobs.push({ job, message }),
      });
      const write = () => {
        for (let i = 0; i < 300; i++) thread.record(makeRecord());
        thread.flush();
      };
      // The checkpoint worker has its connection open (read-write) once it copied pages into the file.
      const before = statSync(path).size;
      write();
      await until('a first checkpoint', () => statSync(path).size > before);
      const writable = makeReadOnly(path);
      try {
        write();
        await until('a failed checkpoint', () => jobs.length >= 1);
      } finally {
        writable();
      }
      await until('the recovery', () => jobs.length >= 2);
      await thread.close();
      expect(jobs).toEqual([
        {
          job: 'WAL checkpoint',
          message: expect.stringMatching(
            /^WAL checkpoint failed: (disk I\/O error|attempt to write a readonly database)$/,
          ),
        },
        {
          job: 'WAL checkpoint',
          message: expect.stringMatching(/^WAL checkpoint recovered after \d+ failed attempts? since \S+Z$/),
        },
      ]);
    },
  );
});
