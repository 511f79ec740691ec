import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, expect, test } from 'vitest';
import { startBackgroundCheckpoints } from '../../src/storage/checkpointer.js';
import { makeReadOnly, readOnlyUnsupported } from '../helpers/read-only-file.js';
import { createTempDir } from '../helpers/temp-dir.js';
import { until } from '../helpers/until.js';

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

if (readOnlyUnsupported) console.warn(`read-only database tests skipped: ${readOnlyUnsupported}`);

test.skipIf(readOnlyUnsupported)(
  'checkpoints that keep failing (a read-only file) are reported once, then at a bounded rate with a count, and retried with back-off',
  async () => {
    const tmp = createTempDir();
    cleanups.push(tmp.cleanup);
    const path = join(tmp.path, 'proxy.db');
    const db = new Database(path);
    cleanups.push(() => db.close());
    db.pragma('journal_mode = WAL');
    db.exec('create table t (x); insert into t values (1), (2), (3)');
    cleanups.push(makeReadOnly(path));

    const reports: { at: number; message: string }[] = [];
    const t0 = Date.now();
    const checkpoints = startBackgroundCheckpoints(db, {
      intervalMs: 10,
      reportEveryMs: 400,
      onError: (err) => reports.push({ at: Date.now(), message: err.message }),
    });
    cleanups.push(() => checkpoints.stop());
    await until('a second report', () => reports.length >= 2, 10_000);
    await checkpoints.stop();

    // SQLite's words depend on how the write is refused (read-only, or disk I/O error on an immutable file).
    const first = /^WAL checkpoint failed: (attempt to write a readonly database|disk I\/O error)$/.exec(
      reports[0].message,
    );
    expect(first).not.toBeNull();
    const again = /^(.+) \(still failing: (\d+) attempts since (\S+); retrying every 5 s\)$/.exec(
      reports[1].message,
    );
    expect(again?.[1]).toBe(reports[0].message);
    // Not before reportEveryMs; the streak began with the first report.
    expect(reports[1].at - reports[0].at).toBeGreaterThanOrEqual(400);
    expect(Date.parse(again![3])).toBe(reports[0].at);
    // Every 10 ms without back-off: 40 or more attempts by now. Doubling waits (10, 20, 40, … ms): about 6.
    const attempts = Number(again![2]);
    expect(attempts).toBeGreaterThanOrEqual(2);
    expect(attempts).toBeLessThanOrEqual(Math.ceil(Math.log2((Date.now() - t0) / 10)) + 1);
  },
);
