import { existsSync, readFileSync, renameSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, test } from 'vitest';
import { RotatingFile } from '../../src/storage/log-file.js';
import { createTempDir } from '../helpers/temp-dir.js';

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
  f.flushSync();
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
