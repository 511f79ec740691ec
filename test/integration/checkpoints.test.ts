import { statSync } from 'node:fs';
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
    expect(reports[0].at - Date.parse(again![3])).toBeGreaterThanOrEqual(0);
    expect(reports[0].at - Date.parse(again![3])).toBeLessThan(50);
    // Every 10 ms without back-off: 40 or more attempts by now. Doubling waits (10, 20, 40, … ms): about 6.
    const attempts = Number(again![2]);
    expect(attempts).toBeGreaterThanOrEqual(2);
    expect(attempts).toBeLessThanOrEqual(Math.ceil(Math.log2((Date.now() - t0) / 10)) + 1);
  },
);

// Writes through a descriptor already open fail once the file is made immutable (chattr +i, root only);
// a chmod would not stop them, so a streak that ends needs root.
const cannotFailThenRecover =
  readOnlyUnsupported ??
  (process.getuid?.() === 0 ? null : 'not root: a chmod does not stop open descriptors');

test.skipIf(cannotFailThenRecover)(
  'checkpoints that failed and succeed again say once that they recovered, with the failed attempts since when',
  async () => {
    const tmp = createTempDir();
    cleanups.push(tmp.cleanup);
    const path = join(tmp.path, 'proxy.db');
    const db = new Database(path);
    cleanups.push(() => db.close());
    db.pragma('journal_mode = WAL');
    db.exec('create table t (x)');
    const insert = db.prepare('insert into t values (?)');
    const fill = () => {
      for (let i = 0; i < 200; i++) insert.run('x'.repeat(100));
    };

    const lines: { at: number; text: string }[] = [];
    const checkpoints = startBackgroundCheckpoints(db, {
      intervalMs: 10,
      // Every failure reported: the recovery's count can be checked against them.
      reportEveryMs: 0,
      onError: (err) => lines.push({ at: Date.now(), text: err.message }),
      onRecover: (message) => lines.push({ at: Date.now(), text: message }),
    });
    cleanups.push(() => checkpoints.stop());
    // The worker has its connection open (read-write) once it copied pages into the file.
    const before = statSync(path).size;
    fill();
    await until('a first checkpoint', () => statSync(path).size > before);

    const writable = makeReadOnly(path);
    cleanups.push(writable);
    fill();
    await until('two failed checkpoints', () => lines.length >= 2);
    writable();
    await until('the recovery', () => lines.at(-1)?.text.startsWith('WAL checkpoint recovered'), 5000);
    // Checkpoints go on succeeding: nothing more is said.
    const said = lines.length;
    fill();
    await new Promise((r) => setTimeout(r, 200));
    await checkpoints.stop();
    expect(lines).toHaveLength(said);

    const failures = lines.slice(0, -1).map((l) => l.text);
    const first = failures[0];
    expect(first).toMatch(/^WAL checkpoint failed: (disk I\/O error|attempt to write a readonly database)$/);
    const recovered = /^WAL checkpoint recovered after (\d+) failed attempts since (\S+)$/.exec(
      lines.at(-1)?.text ?? '',
    );
    expect(Number(recovered?.[1])).toBe(failures.length);
    // Since the first failure (taken just before it was reported).
    const since = recovered![2];
    expect(lines[0].at - Date.parse(since)).toBeGreaterThanOrEqual(0);
    expect(lines[0].at - Date.parse(since)).toBeLessThan(50);
    expect(failures.slice(1)).toEqual(
      failures
        .slice(1)
        .map((_, i) => `${first} (still failing: ${i + 2} attempts since ${since}; retrying every 5 s)`),
    );
  },
);
