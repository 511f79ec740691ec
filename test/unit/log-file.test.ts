import {
  existsSync,
  mkdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { type LogFileSystem, nodeLogFileSystem, RotatingFile } from '../../src/storage/log-file.js';
import { failingLogFile } from '../helpers/log-file-full.js';
import { createTempDir } from '../helpers/temp-dir.js';
import { until } from '../helpers/until.js';

let dir: { path: string; cleanup(): void };
beforeEach(() => {
  dir = createTempDir();
});
afterEach(() => dir.cleanup());

const lines = (p: string) => (existsSync(p) ? readFileSync(p, 'utf8').split('\n').filter(Boolean) : []);

test('rotates by size, keeping maxFiles old files, newest as .1', async () => {
  const path = join(dir.path, 'p.log');
  const f = new RotatingFile({ path, maxBytes: 100, maxFiles: 2, daily: false });
  await f.ready();
  for (let i = 0; i < 10; i++) {
    f.write(`${JSON.stringify({ n: i, pad: 'x'.repeat(30) })}\n`);
    await f.ready();
  }
  // end(), not flushSync(): flushSync writes the buffered lines at once, ahead of a write still in
  // flight (serve uses it only at exit and for tests), which reordered 1 run in ~8.
  await f.end();
  // ~47-byte lines, rotation once a file reaches 100 bytes; only the current file and two old ones survive.
  const kept = [`${path}.2`, `${path}.1`, path].flatMap((p) => lines(p).map((l) => JSON.parse(l).n));
  expect(kept.length).toBeGreaterThanOrEqual(5);
  expect(kept).toEqual(Array.from({ length: kept.length }, (_, i) => 10 - kept.length + i));
  // Writes in flight during a rotation land in the next file: files stay near the limit, never unbounded.
  for (const p of [`${path}.2`, `${path}.1`, path])
    expect(statSync(p).size).toBeLessThanOrEqual(2 * 100 + 47);
  expect(lines(`${path}.1`).length).toBeGreaterThan(0);
  expect(existsSync(`${path}.3`)).toBe(false);
  expect(statSync(`${path}.1`).mode & 0o777).toBe(0o600);
});

test('maxBytes counts bytes: multi-byte text rotates as soon as ASCII would', async () => {
  const path = join(dir.path, 'p.log');
  const f = new RotatingFile({ path, maxBytes: 10_000, maxFiles: 5, daily: false });
  await f.ready();
  // 100 characters, 301 bytes a line (CJK is 3 bytes a character in UTF-8).
  const line = `${'日本語のテキスト'.repeat(12)}日本語の\n`;
  expect(Buffer.byteLength(line)).toBe(301);
  for (let i = 0; i < 80; i++) {
    f.write(line);
    await f.ready();
  }
  f.flushSync();
  await f.end();
  // 24,080 bytes written: counted as characters (8,000) it would never have rotated.
  // Rotated twice (lines in flight during a rotation land in the next file, as above).
  expect(existsSync(`${path}.2`)).toBe(true);
  for (const p of [path, `${path}.1`, `${path}.2`])
    expect(statSync(p).size).toBeLessThanOrEqual(2 * 10_000 + 301);
  const all = [`${path}.2`, `${path}.1`, path].flatMap((p) => lines(p));
  expect(all).toHaveLength(80);
});

test('maxBytes 0 never rotates by size', async () => {
  const path = join(dir.path, 'p.log');
  const f = new RotatingFile({ path, maxBytes: 0, maxFiles: 2, daily: false });
  for (let i = 0; i < 100; i++) f.write(`${'y'.repeat(100)}\n`);
  await f.end();
  expect(lines(path)).toHaveLength(100);
  expect(existsSync(`${path}.1`)).toBe(false);
});

test('a lower maxFiles (LOG_MAX_FILES lowered between runs): the rotated files beyond it go at the next rotation, not at start', async () => {
  const path = join(dir.path, 'k.log');
  const first = new RotatingFile({ path, maxBytes: 100, maxFiles: 5, daily: false });
  for (let i = 0; i < 12; i++) {
    first.write(`${JSON.stringify({ n: i, pad: 'x'.repeat(60) })}\n`);
    await new Promise((r) => setTimeout(r, 5));
  }
  await first.end();
  expect(existsSync(`${path}.4`)).toBe(true);
  // Another log beside it whose name only starts the same is not touched.
  writeFileSync(join(dir.path, 'k.log.4.bak'), 'keep\n');
  const second = new RotatingFile({ path, maxBytes: 100, maxFiles: 2, daily: false });
  await second.end();
  expect([1, 2, 3, 4, 5].map((i) => existsSync(`${path}.${i}`))).toEqual([true, true, true, true, true]);
  // The proxy's own rotation then keeps two.
  const third = new RotatingFile({ path, maxBytes: 100, maxFiles: 2, daily: false });
  for (let i = 0; i < 6; i++) {
    third.write(`${JSON.stringify({ n: i, pad: 'y'.repeat(60) })}\n`);
    await new Promise((r) => setTimeout(r, 5));
  }
  await third.end();
  expect([1, 2, 3, 4, 5].map((i) => existsSync(`${path}.${i}`))).toEqual([true, true, false, false, false]);
  expect(existsSync(join(dir.path, 'k.log.4.bak'))).toBe(true);
});

test("start-up leaves an external logrotate's files alone (rotate 14, dateformat .%Y%m%d); a rotation keeps date suffixes", async () => {
  const path = join(dir.path, 'p.log');
  const theirs = [...Array.from({ length: 14 }, (_, i) => `${path}.${i + 1}`), `${path}.20261201`];
  for (const p of theirs) writeFileSync(p, 'theirs\n');
  const f = new RotatingFile({ path, maxBytes: 100, maxFiles: 5, daily: false });
  f.write('started\n');
  await f.end();
  expect(theirs.filter((p) => !existsSync(p))).toEqual([]);
  // A size rotation by the proxy itself trims its numbered files to maxFiles; the dated one is not its own.
  const g = new RotatingFile({ path, maxBytes: 10, maxFiles: 5, daily: false });
  g.write(`${'z'.repeat(20)}\n`);
  await new Promise((r) => setTimeout(r, 20));
  g.write('next\n');
  await g.end();
  expect(existsSync(`${path}.5`)).toBe(true);
  expect(existsSync(`${path}.6`)).toBe(false);
  expect(existsSync(`${path}.20261201`)).toBe(true);
});

test('reopen() continues at the path after an external tool moved the file (SIGUSR2)', async () => {
  const path = join(dir.path, 'p.log');
  const f = new RotatingFile({ path, maxBytes: 0, maxFiles: 2, daily: false });
  await f.ready();
  f.write('before\n');
  f.flushSync();
  renameSync(path, `${path}.moved`);
  f.reopen();
  await new Promise((r) => setTimeout(r, 50));
  f.write('after\n');
  f.flushSync();
  await f.end();
  expect(lines(`${path}.moved`)).toEqual(['before']);
  expect(lines(path)).toEqual(['after']);
});

test.each([
  ['the file deleted (rm oai-proxy.log to free space)', (path: string) => rmSync(path)],
  ['its folder removed', (path: string) => rmSync(join(path, '..'), { recursive: true })],
  [
    'moved away without SIGUSR2, a new file put in its place (logrotate create)',
    (path: string) => {
      renameSync(path, `${path}.moved`);
      writeFileSync(path, '', { mode: 0o600 });
    },
  ],
])('%s: the next lines go to a file at the path, not into the old one', async (_, remove) => {
  const path = join(dir.path, 'logs', 'p.log');
  const f = new RotatingFile({ path, maxBytes: 0, maxFiles: 2, daily: false });
  f.write('before\n');
  await until('the first line', () => lines(path).length === 1);
  remove(path);
  f.write('after-1\n');
  await until('a file at the path', () => lines(path).length === 1);
  f.write('after-2\n');
  f.flushSync();
  await f.end();
  expect(lines(path)).toEqual(['after-1', 'after-2']);
  expect(statSync(path).mode & 0o777).toBe(0o600);
  expect(f.health()).toMatchObject({ error: null, droppedLines: 0 });
});

test('flushSync() with a write still in flight leaves the queued lines to it: the file keeps their order', async () => {
  const path = join(dir.path, 'p.log');
  // A slow disk: each write reaches the file 50 ms after it was started.
  const fs: LogFileSystem = {
    ...nodeLogFileSystem,
    write: (fd, data, done) => setTimeout(() => nodeLogFileSystem.write(fd, data, done), 50),
  };
  const f = new RotatingFile({ path, maxBytes: 0, maxFiles: 2, daily: false, fs });
  f.write('line1\n');
  f.write('line2\n');
  // What serve does at SIGTERM (flushLogs) before close() awaits end().
  f.flushSync();
  await f.end();
  expect(lines(path)).toEqual(['line1', 'line2']);
});

test('a write that does not return: health() says stalled, waiting lines are bounded once slow, end(timeoutMs) gives up on it', async () => {
  const path = join(dir.path, 'p.log');
  let late: (() => void) | null = null;
  let opens = 0;
  const fs: LogFileSystem = {
    ...nodeLogFileSystem,
    openSync: (p) => {
      opens++;
      return nodeLogFileSystem.openSync(p);
    },
    write: (_fd, data, done) => {
      late = () => done(null, data.length);
    },
  };
  const f = new RotatingFile({
    path,
    maxBytes: 0,
    maxFiles: 2,
    daily: false,
    fs,
    stallMs: 30,
    slowMs: 30,
    pendingMaxBytes: 10,
  });
  f.write('in flight\n');
  f.write('waits\n');
  // Not slow yet: kept whatever the bound.
  f.write('kept\n');
  expect(f.health()).toMatchObject({
    stalledMs: null,
    droppedLines: 0,
    pendingBytes: 21,
    writeInFlight: true,
  });
  await new Promise((r) => setTimeout(r, 40));
  expect(f.health().stalledMs).toBeGreaterThanOrEqual(30);
  // Slow now: beyond the bound is dropped.
  f.write('over the bound\n');
  expect(f.health()).toMatchObject({ droppedLines: 1, pendingBytes: 21 });
  const t0 = Date.now();
  await f.end(50);
  expect(Date.now() - t0).toBeLessThan(1000);
  // What was left (the write in flight too, while it has not returned) is counted as dropped.
  expect(f.health()).toMatchObject({ droppedLines: 4, pendingBytes: 0, writeInFlight: true });
  // The write returning after all does not reopen the closed file, and is no longer counted.
  const opened = opens;
  (late as unknown as () => void)();
  expect(opens).toBe(opened);
  expect(f.health()).toMatchObject({ droppedLines: 3, writeInFlight: false });
});

test('a rotation that fails (a directory at path.1) is reported once, the lines still go to the file, and rotation resumes once the path is free', async () => {
  const path = join(dir.path, 'r.log');
  mkdirSync(`${path}.1/sub`, { recursive: true });
  const errors: string[] = [];
  const f = new RotatingFile({
    path,
    maxBytes: 100,
    maxFiles: 1,
    daily: false,
    onRotateError: (err) => errors.push(err.code ?? err.message),
  });
  await f.ready();
  for (let i = 0; i < 10; i++) {
    f.write(`${JSON.stringify({ n: i, pad: 'x'.repeat(30) })}\n`);
    await f.ready();
  }
  await until('the lines written', () => lines(path).length === 10);
  expect(errors).toHaveLength(1);
  expect(errors[0]).toMatch(/^E/);
  // The directory goes: rotations work again, and a later failure is reported again.
  rmSync(`${path}.1`, { recursive: true });
  f.write(`${JSON.stringify({ n: 10 })}\n`);
  await until('a rotation', () => existsSync(`${path}.1`) && lines(`${path}.1`).length > 0);
  expect(errors).toHaveLength(1);
  await f.end();
});

test('a burst queued in one go (rows spilled at a stop) on a healthy disk is all written, past the pending bound', async () => {
  const path = join(dir.path, 'p.log');
  const f = new RotatingFile({ path, maxBytes: 0, maxFiles: 2, daily: false });
  const body = 'x'.repeat(200 * 1024);
  for (let i = 0; i < 200; i++) expect(f.write(`${JSON.stringify({ n: i, body })}\n`)).toBe(true);
  await f.end();
  expect(f.health().droppedLines).toBe(0);
  expect(lines(path).map((l) => JSON.parse(l).n)).toEqual([...Array(200).keys()]);
});

test('end(0) (SHUTDOWN_GRACE_MS=0) on a healthy disk writes everything queued and counts nothing dropped', async () => {
  const path = join(dir.path, 'p.log');
  const f = new RotatingFile({ path, maxBytes: 0, maxFiles: 2, daily: false });
  const body = 'x'.repeat(100 * 1024);
  for (let i = 0; i < 100; i++) f.write(`${JSON.stringify({ n: i, body })}\n`);
  await f.end(0);
  expect(f.health()).toMatchObject({ droppedLines: 0, writeInFlight: false });
  expect(lines(path)).toHaveLength(100);
});

test('end(timeoutMs) waits for a slow disk that makes progress: the timeout restarts with each write that returns', async () => {
  const path = join(dir.path, 'p.log');
  // Each write takes 40 ms: 10 writes take 400 ms, past the 200 ms timeout, none near it alone (a
  // 50 ms timeout failed once on a loaded machine: a 40 ms timer can fire late).
  const fs: LogFileSystem = {
    ...nodeLogFileSystem,
    write: (fd, data, done) => setTimeout(() => nodeLogFileSystem.write(fd, data, done), 40),
  };
  const f = new RotatingFile({ path, maxBytes: 0, maxFiles: 2, daily: false, fs, slowMs: 200 });
  const body = 'x'.repeat(1024 * 1024);
  for (let i = 0; i < 10; i++) f.write(`${JSON.stringify({ n: i, body })}\n`);
  await f.end(200);
  expect(f.health().droppedLines).toBe(0);
  expect(lines(path)).toHaveLength(10);
});

describe('daily rotation (LOG_ROTATE_DAILY)', () => {
  const DAY_2_NOON = Date.UTC(2026, 0, 2, 12);
  /** A log file holding `text`, last written at `mtime` (ms). */
  function existing(path: string, text: string, mtime: number) {
    writeFileSync(path, text, { mode: 0o600 });
    utimesSync(path, mtime / 1000, mtime / 1000);
  }
  async function writeThenEnd(f: RotatingFile, line: string) {
    await f.ready();
    f.write(line);
    await f.ready();
    f.flushSync();
    await f.end();
  }

  test('a file last written on an earlier UTC day is rotated before the first line (no process ran at midnight)', async () => {
    const path = join(dir.path, 'p.log');
    existing(path, 'yesterday\n', Date.UTC(2026, 0, 1, 23, 59));
    const f = new RotatingFile({ path, maxBytes: 0, maxFiles: 3, daily: true, now: () => DAY_2_NOON });
    await writeThenEnd(f, 'today\n');
    expect(lines(`${path}.1`)).toEqual(['yesterday']);
    expect(lines(path)).toEqual(['today']);
  });

  test.each([
    ['written earlier today', 'earlier\n', Date.UTC(2026, 0, 2, 0, 0, 1), true],
    ['empty, from yesterday', '', Date.UTC(2026, 0, 1, 8), true],
    ['from yesterday, daily off', 'yesterday\n', Date.UTC(2026, 0, 1, 8), false],
  ])('a file %s is continued', async (_what, text, mtime, daily) => {
    const path = join(dir.path, 'p.log');
    existing(path, text, mtime);
    const f = new RotatingFile({ path, maxBytes: 0, maxFiles: 3, daily, now: () => DAY_2_NOON });
    await writeThenEnd(f, 'today\n');
    expect(lines(path)).toEqual(text === '' ? ['today'] : [text.trim(), 'today']);
    expect(existsSync(`${path}.1`)).toBe(false);
  });

  test('at UTC midnight the first batch of the new day starts the new file', async () => {
    const path = join(dir.path, 'p.log');
    let now = Date.UTC(2026, 0, 1, 23, 59, 59, 900);
    const f = new RotatingFile({ path, maxBytes: 0, maxFiles: 3, daily: true, now: () => now });
    await f.ready();
    f.write('late\n');
    await f.ready();
    now = Date.UTC(2026, 0, 2, 0, 0, 0, 100);
    await writeThenEnd(f, 'early\n');
    expect(lines(`${path}.1`)).toEqual(['late']);
    expect(lines(path)).toEqual(['early']);
  });
});

describe('a file that stops taking writes (full disk, EIO)', () => {
  test('nothing waits on it: flushSync, the exit write and end() return at once; what was left is counted as dropped', async () => {
    const path = join(dir.path, 'p.log');
    const disk = failingLogFile();
    const errors: string[] = [];
    const f = new RotatingFile({
      path,
      maxBytes: 0,
      maxFiles: 2,
      daily: false,
      fs: disk.fs,
      retryMs: 60_000,
      onError: (err) => errors.push(err.code ?? ''),
    });
    f.write('ok\n');
    await until('the first line', () => lines(path).length === 1);
    disk.fail('ENOSPC');
    f.write('a\nb\n');
    await until('the failure', () => f.health().error !== null);
    expect(f.health().error).toContain('ENOSPC');
    f.write('c\n');
    const t0 = Date.now();
    f.flushSync();
    f.writeSync('d\n');
    await f.end();
    expect(Date.now() - t0).toBeLessThan(100);
    expect(errors).toEqual(['ENOSPC']);
    expect(f.health().droppedLines).toBe(4);
    expect(lines(path)).toEqual(['ok']);
  });

  test('each outage is said once when it begins and once when it ends, with the lines it dropped; health() has the latest error', async () => {
    const path = join(dir.path, 'p.log');
    const disk = failingLogFile();
    const said: string[] = [];
    const f = new RotatingFile({
      path,
      maxBytes: 0,
      maxFiles: 2,
      daily: false,
      fs: disk.fs,
      retryMs: 10,
      keptBytes: 4,
      onError: (err) => said.push(`error ${err.code}`),
      onRecover: (dropped) => said.push(`recovered, ${dropped} dropped`),
    });
    f.write('ok\n');
    await until('the first line', () => lines(path).length === 1);
    disk.fail('ENOSPC');
    f.write('a\n');
    await until('the failure', () => f.health().error !== null);
    for (const l of ['b\n', 'c\n', 'd\n']) f.write(l); // 4 bytes kept: the last is dropped
    disk.fail('EIO');
    await until('a retry that fails otherwise', () => f.health().error?.startsWith('EIO'));
    expect(said).toEqual(['error ENOSPC']);
    disk.heal();
    await until('the recovery', () => f.health().error === null);
    expect(said).toEqual(['error ENOSPC', 'recovered, 1 dropped']);
    // A second outage is said again, and counts its own drops.
    disk.fail('EDQUOT');
    f.write('e\n');
    await until('the second failure', () => f.health().error !== null);
    disk.heal();
    await until('the second recovery', () => f.health().error === null);
    await f.end();
    expect(said).toEqual(['error ENOSPC', 'recovered, 1 dropped', 'error EDQUOT', 'recovered, 0 dropped']);
    expect(lines(path)).toEqual(['ok', 'a', 'b', 'c', 'e']);
    expect(f.health().droppedLines).toBe(1);
  });
});
