import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { main } from '../../src/cli.js';
import { type OpenDatabase, openDatabase } from '../../src/storage/database.js';
import type { ExchangeRecord } from '../../src/storage/exchange-record.js';
import { computeStats, type StatsKey, type StatsSample } from '../../src/storage/log-queries.js';
import { INSERT_EXCHANGE_SQL, toRow } from '../../src/storage/log-store.js';
import { createStatsRollup, HOUR_MS, StatsRollup } from '../../src/storage/stats-rollup.js';
import { rec } from '../helpers/logs-suite.js';
import { createTempDir } from '../helpers/temp-dir.js';
import { createTestIo, startTestProxy } from '../helpers/test-proxy.js';

const MIN = 60_000;
// A fixed clock in the past (so a running serve sees every hour as closed), 40 minutes into an hour, so
// windows cut hours at known places.
const NOW = Date.UTC(2025, 0, 15, 15, 40);
const BYS: StatsKey[] = ['model', 'path', 'status', 'user', 'day'];

/** xorshift32, so every run sees the same rows. */
function rng(seed: number) {
  let x = seed;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

/** `n` varied exchanges over the `days` before NOW: every group key, errors, streams, internal rows. */
function variedRows(n: number, days: number, seed = 7): ExchangeRecord[] {
  const rand = rng(seed);
  const pick = <T>(xs: T[]) => xs[Math.floor(rand() * xs.length)];
  return Array.from({ length: n }, (_, i) => {
    const stream = rand() < 0.4;
    const failed = rand() < 0.05;
    return rec(`v${i.toString(36).padStart(5, '0')}`, {
      startedAt: NOW - Math.floor(rand() * days * 24 * 60 * MIN),
      durationMs: Math.floor(20 + 3000 * rand() ** 2),
      ttfbMs: rand() < 0.1 ? null : Math.floor(5 + 500 * rand()),
      stream,
      model: pick(['gpt-4o', 'gpt-4', 'fast', null]),
      path: pick(['/v1/chat/completions', '/v1/embeddings', '/v1/responses']),
      status: failed ? null : pick([200, 200, 200, 200, 429, 500]),
      error: failed ? pick(['upstream_timeout', 'upstream_reset']) : null,
      user: pick(['alice', 'bob', null]),
      promptTokens: rand() < 0.2 ? null : Math.floor(rand() * 900),
      completionTokens: rand() < 0.2 ? null : Math.floor(rand() * 400),
      internal: rand() < 0.03,
    });
  });
}

function sample(r: ExchangeRecord): StatsSample {
  return {
    started_at: r.startedAt,
    model: r.model,
    path: r.path,
    status: r.status,
    error: r.error,
    user: r.user,
    duration_ms: r.durationMs,
    ttfb_ms: r.ttfbMs,
    stream: r.stream ? 1 : 0,
    prompt_tokens: r.promptTokens,
    completion_tokens: r.completionTokens,
  };
}

/** What `logs stats` must print, computed from the records themselves (the pure reference). */
function expected(records: ExchangeRecord[], by: StatsKey, since?: number, until?: number) {
  const inWindow = records.filter(
    (r) =>
      !r.internal &&
      (since === undefined || r.startedAt >= since) &&
      (until === undefined || r.startedAt < until),
  );
  return computeStats(inWindow.map(sample), by);
}

describe('logs stats over hourly rollups (SQLite)', () => {
  let tmp: { path: string; cleanup(): void };
  let path: string;
  let db: OpenDatabase;
  let records: ExchangeRecord[];

  const write = (rows: ExchangeRecord[]) => {
    const insert = db.sqlite.prepare(INSERT_EXCHANGE_SQL);
    db.sqlite.transaction(() => {
      for (const r of rows) insert.run(toRow(r));
    })();
    records.push(...rows);
  };
  const rollUp = (now = NOW) => {
    const job = createStatsRollup({ sqlite: () => db.sqlite, now: () => now });
    job.drain();
    job.close();
  };
  const rolledHours = () =>
    db.sqlite.prepare('select count(distinct hour) from exchange_stats').pluck().get() as number;
  const queued = () => db.sqlite.prepare('select hour from exchange_stats_dirty order by hour').pluck().all();

  async function stats(...argv: string[]) {
    const io = createTestIo({ HOME: tmp.path }, tmp.path);
    const code = await main(['logs', 'stats', ...argv, '--json', '--db', path], io);
    expect(code, io.err()).toBe(0);
    return JSON.parse(io.out());
  }

  /** Every --by, over windows that start and end mid-hour, on the hour, and unbounded. */
  async function expectStatsMatchRows() {
    const windows: [number | undefined, number | undefined][] = [
      [undefined, undefined],
      [NOW - 7 * 24 * 60 * MIN, undefined],
      [NOW - 30 * 60 * MIN - 17_000, NOW - 5 * 60 * MIN + 123],
      [NOW - (NOW % HOUR_MS) - 10 * HOUR_MS, NOW - (NOW % HOUR_MS) - 2 * HOUR_MS],
    ];
    for (const by of BYS)
      for (const [since, until] of windows) {
        const argv = ['--by', by];
        if (since !== undefined) argv.push('--since', new Date(since).toISOString());
        if (until !== undefined) argv.push('--until', new Date(until).toISOString());
        expect(await stats(...argv), `${argv.join(' ')}`).toEqual(expected(records, by, since, until));
      }
  }

  beforeEach(async () => {
    tmp = createTempDir();
    path = join(tmp.path, 'proxy.db');
    db = await openDatabase(path);
    records = [];
  });
  afterEach(async () => {
    await db.close();
    tmp.cleanup();
  });

  test('figures from rollups and rows together equal figures from the rows alone', async () => {
    write(variedRows(3000, 3));
    await expectStatsMatchRows(); // nothing rolled up yet: rows only
    rollUp();
    // Every hour that ended two minutes before NOW, with exchanges, is rolled up; nothing is left queued.
    const hours = new Set(
      records
        .filter((r) => r.startedAt < NOW - (NOW % HOUR_MS))
        .map((r) => r.startedAt - (r.startedAt % HOUR_MS)),
    );
    expect(rolledHours()).toBe(hours.size);
    expect(queued()).toEqual([]);
    await expectStatsMatchRows();
  });

  test('a row recorded late into a rolled-up hour drops that hour to the rows until it is rolled up again', async () => {
    write(variedRows(500, 1));
    rollUp();
    const before = rolledHours();
    const hour = NOW - (NOW % HOUR_MS) - 5 * HOUR_MS;
    // A long stream that started five hours ago, recorded now.
    write([
      rec('late1', { startedAt: hour + 10 * MIN, durationMs: 99_999, model: 'late-model', user: 'carol' }),
    ]);
    expect(rolledHours()).toBe(before - 1);
    expect(queued()).toEqual([hour]);
    await expectStatsMatchRows();
    const late = (await stats('--by', 'model')).find((g: { key: string }) => g.key === 'late-model');
    expect(late).toMatchObject({ requests: 1, p50_ms: 99_999 });
    rollUp();
    expect(rolledHours()).toBe(before);
    expect(queued()).toEqual([]);
    await expectStatsMatchRows();
  });

  test('a row written while its hour is being rolled up is not lost: the hour is read again', async () => {
    const hour = NOW - (NOW % HOUR_MS) - 3 * HOUR_MS;
    write(
      Array.from({ length: 50 }, (_, i) =>
        rec(`h${String(i).padStart(2, '0')}`, { startedAt: hour + i * MIN, durationMs: 100 + i }),
      ),
    );
    const rollup = new StatsRollup(() => db.sqlite);
    expect(rollup.step(10, NOW)).toBe(9); // part of the hour (the 10th row's millisecond is read next time)
    // Behind where the read has got to: only reading the hour again can count it.
    write([rec('mid1', { startedAt: hour + 30_000, durationMs: 7 })]);
    while (rollup.step(10, NOW) > 0);
    expect(queued()).toEqual([]);
    const [g] = await stats('--since', new Date(hour).toISOString());
    expect(g).toMatchObject({ requests: 51, p50_ms: 124 });
    expect(
      db.sqlite.prepare("select requests from exchange_stats where dim = 'model'").pluck().all(),
    ).toEqual([51]);
  });

  test('logs prune drops the rollups of what it deleted', async () => {
    write(variedRows(2000, 3, 11));
    rollUp();
    const cutoff = NOW - 2 * 24 * 60 * MIN;
    const io = createTestIo({ HOME: tmp.path }, tmp.path);
    const prune = ['logs', 'prune', '--older-than', new Date(cutoff).toISOString(), '--db', path];
    expect(await main(prune, io), io.err()).toBe(0);
    records = records.filter((r) => r.startedAt >= cutoff);
    await expectStatsMatchRows();
    rollUp();
    expect(queued()).toEqual([]);
    const oldest = db.sqlite.prepare('select min(hour) from exchange_stats').pluck().get() as number;
    expect(oldest).toBe(cutoff - (cutoff % HOUR_MS));
    await expectStatsMatchRows();
  });

  test('a database last served by an older version (no rollup tables) is read row by row', async () => {
    write(variedRows(300, 2, 3));
    db.sqlite.exec(`drop trigger exchange_stats_after_insert; drop trigger exchange_stats_after_delete;
      drop table exchange_stats; drop table exchange_stats_dirty; drop table exchange_stats_state;
      delete from kysely_migration where name = '0006-stats-rollup'`);
    await expectStatsMatchRows();
  });

  test('serve rolls up the history it finds, in the background', async () => {
    write(variedRows(400, 2, 5));
    await db.close();
    const proxy = await startTestProxy({ DATABASE_URL: path });
    try {
      db = await openDatabase(path, { readonly: true });
      const deadline = Date.now() + 10_000;
      while (rolledHours() === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      expect(rolledHours()).toBeGreaterThan(0);
    } finally {
      await proxy.close();
    }
    await expectStatsMatchRows();
  });
});
