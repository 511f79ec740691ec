import { execFileSync } from 'node:child_process';
import {
  closeSync,
  constants,
  existsSync,
  openSync,
  readFileSync,
  readSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, test } from 'vitest';
import { fillDisk } from '../helpers/disk-full.js';
import { createFakeUpstream } from '../helpers/fake-upstream.js';
import { failingLogFile, hangingLogFile } from '../helpers/log-file-full.js';
import { createServeFixture, spawnServe } from '../helpers/spawn-serve.js';
import { startTestProxy } from '../helpers/test-proxy.js';
import { until } from '../helpers/until.js';

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** One chat call, given up after 5 s (a hung proxy fails the test instead of its timeout). */
async function chat(url: string, content = 'hi'): Promise<number> {
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'gpt-4o', messages: [{ role: 'user', content }] }),
    signal: AbortSignal.timeout(5000),
  });
  await res.arrayBuffer();
  return res.status;
}

async function health(url: string): Promise<Record<string, any>> {
  return (await fetch(`${url}/health`, { signal: AbortSignal.timeout(5000) })).json();
}

function countRows(path: string): number {
  const db = new Database(path, { readonly: true });
  try {
    return (db.prepare('select count(*) as n from exchanges').get() as { n: number }).n;
  } finally {
    db.close();
  }
}

/**
 * A FIFO at `path` with a reader open (so serve can open it) that never reads, closed after the test: once
 * the pipe is full, a write blocks in Node's threadpool for ever, as on an NFS hard mount whose server
 * went away. Returns the reader's fd.
 */
function unreadFifo(path: string): number {
  execFileSync('mkfifo', [path]);
  const reader = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  cleanups.push(() => closeSync(reader));
  return reader;
}

/**
 * 300 requests logging ~450-byte lines to an unread FIFO: they fill the pipe's 64 KiB and the next write
 * blocks. Returns once lines wait behind it and the 300 rows are recorded.
 */
async function fillThePipe(url: string, dbPath: string): Promise<void> {
  const pad = 'x'.repeat(200);
  for (let i = 0; i < 300; i++) {
    const res = await fetch(`${url}/v1/models?pad=${pad}`, { signal: AbortSignal.timeout(5000) });
    expect(res.status).toBe(200);
    await res.arrayBuffer();
  }
  await until('lines waiting', async () => (await health(url)).log_file_pending_bytes > 0);
  await until('the rows', () => countRows(dbPath) === 300);
}

// `rm oai-proxy.log` to free space, a log folder cleaned up: the open descriptor would keep writing
// into the deleted file, where no one can read the lines, and /health would say ok.
test('the log file deleted while serving: the next lines are written to a new file at its path', async () => {
  const upstream = await createFakeUpstream();
  cleanups.push(() => upstream.close());
  const proxy = await startTestProxy({ OPENAI_BASE_URL: upstream.baseUrl, LOG_LEVEL: 'warn' });
  cleanups.push(() => proxy.close());
  expect(await chat(proxy.url, 'before')).toBe(200);
  await proxy.waitForLogLines((lines) => lines.some((l) => l.status === 200));
  rmSync(proxy.logPath);
  for (let i = 0; i < 3; i++) expect(await chat(proxy.url, `after-${i}`)).toBe(200);
  const lines = await proxy.waitForLogLines((ls) => ls.filter((l) => l.status === 200).length === 3);
  expect(existsSync(proxy.logPath)).toBe(true);
  expect(lines.filter((l) => l.status === 200).map((l) => l.path)).toEqual([
    '/v1/chat/completions',
    '/v1/chat/completions',
    '/v1/chat/completions',
  ]);
  expect(await health(proxy.url)).toMatchObject({ log_file: 'ok', dropped_log_lines: 0 });
  expect((await proxy.waitForRows(4)).length).toBe(4);
});

describe('a log file that cannot be written', () => {
  test.each(['ENOSPC', 'EIO', 'EDQUOT'])(
    '%s: requests are answered, rows recorded, /health reports it once, writing resumes when it clears',
    async (code) => {
      const upstream = await createFakeUpstream();
      cleanups.push(() => upstream.close());
      const disk = failingLogFile();
      const proxy = await startTestProxy(
        { OPENAI_BASE_URL: upstream.baseUrl, LOG_LEVEL: 'warn' },
        { logFileSystem: disk.fs, logFileRetryMs: 50 },
      );
      cleanups.push(() => proxy.close());
      expect(await chat(proxy.url, 'before')).toBe(200);
      await proxy.waitForLogLines((lines) => lines.some((l) => l.status === 200));

      disk.fail(code);
      for (let i = 0; i < 5; i++) expect(await chat(proxy.url, `during-${i}`)).toBe(200);
      await until(
        '/health to report the log file',
        async () => (await health(proxy.url)).log_file === 'error',
      );
      const h = await health(proxy.url);
      expect(h).toMatchObject({ log_file: 'error', database: 'ok' });
      expect(h.log_file_error).toContain(code);
      // Kept in memory (bounded) while the file fails: nothing dropped yet.
      expect(h.dropped_log_lines).toBe(0);
      expect((await proxy.waitForRows(6)).length).toBe(6);
      // Said once on the console, whatever the number of failed writes.
      await until('the console line', () => proxy.stderr().includes('cannot be written'));
      expect(proxy.stderr().match(/cannot be written/g)).toHaveLength(1);
      expect(proxy.stderr()).toContain(proxy.logPath);

      disk.heal();
      await until(
        '/health to report the log file ok',
        async () => (await health(proxy.url)).log_file === 'ok',
      );
      expect(await health(proxy.url)).toMatchObject({
        log_file: 'ok',
        log_file_error: null,
        dropped_log_lines: 0,
      });
      expect(await chat(proxy.url, 'after')).toBe(200);
      const lines = await proxy.waitForLogLines(
        (ls) =>
          ls.filter((l) => l.status === 200).length === 7 && ls.some((l) => /writable again/.test(l.msg)),
      );
      // The lines of the outage were kept and written once the file took writes again, in order.
      expect(lines.filter((l) => l.status === 200)).toHaveLength(7);
      expect(lines.some((l) => /writable again/.test(l.msg))).toBe(true);
      expect((await proxy.waitForRows(7)).length).toBe(7);
    },
  );

  test('beyond the bound kept in memory, lines are dropped and counted; the rows are all recorded', async () => {
    const upstream = await createFakeUpstream();
    cleanups.push(() => upstream.close());
    const disk = failingLogFile();
    const proxy = await startTestProxy(
      { OPENAI_BASE_URL: upstream.baseUrl },
      { logFileSystem: disk.fs, logFileRetryMs: 50, logFileKeptBytes: 2000 },
    );
    cleanups.push(() => proxy.close());
    disk.fail('ENOSPC');
    for (let i = 0; i < 20; i++) expect(await chat(proxy.url, `m-${i}`)).toBe(200);
    await proxy.waitForRows(20);
    // Every exchange's line handed to the log file now (it drops what is over the bound at once).
    proxy.running.flushLogs();
    const { dropped_log_lines: dropped } = await health(proxy.url);
    // ~330-byte exchange lines: 2000 bytes keep a handful, the rest are dropped.
    expect(dropped).toBeGreaterThan(5);
    expect(dropped).toBeLessThan(20);
    disk.heal();
    await until('the log file ok', async () => (await health(proxy.url)).log_file === 'ok');
    const lines = await proxy.waitForLogLines(
      (ls) =>
        ls.some((l) => /writable again/.test(l.msg)) &&
        ls.filter((l) => l.status === 200).length === 20 - dropped,
    );
    const back = lines.find((l) => /writable again/.test(l.msg))!;
    expect(back.msg).toContain(`${dropped} lines`);
    expect(lines.filter((l) => l.status === 200).length).toBe(20 - dropped);
  });

  test('the database and the log file full together: spilled rows the log file cannot keep are counted as lost, said once', async () => {
    const upstream = await createFakeUpstream();
    cleanups.push(() => upstream.close());
    const disk = failingLogFile();
    const proxy = await startTestProxy(
      { OPENAI_BASE_URL: upstream.baseUrl, LOG_QUEUE_MAX: '100', LOG_LEVEL: 'warn' },
      { logFileSystem: disk.fs, logFileRetryMs: 50, logFileKeptBytes: 2000 },
    );
    cleanups.push(() => proxy.close());
    expect(await chat(proxy.url, 'before')).toBe(200);
    await proxy.waitForRows(1);
    // The log file sits beside the database: a full disk fails both.
    disk.fail('ENOSPC');
    expect(await chat(proxy.url, 'first')).toBe(200);
    await until('the log file failing', async () => (await health(proxy.url)).log_file === 'error');
    const full = fillDisk(proxy.dbPath);
    cleanups.push(() => full.free());
    // Each spilled line carries its 3 kB bodies: over the 2000 bytes kept while the file fails.
    for (let i = 0; i < 110; i++) expect(await chat(proxy.url, `m-${i}-${'x'.repeat(3000)}`)).toBe(200);
    await until('rows spilled', async () => (await health(proxy.url)).spilled_log_rows >= 7);
    proxy.running.flushLogs();
    // None of them could be kept: /health does not let them pass for written. (Rows may still be
    // spilling as the queue drains: compare counts read together, once they agree.)
    const h = await until('every spilled row counted as lost', async () => {
      const now = await health(proxy.url);
      const lost = proxy.running.logFileHealth().lostRows;
      return now.lost_log_rows === now.spilled_log_rows && lost === now.spilled_log_rows ? now : null;
    });
    expect(h).toMatchObject({ log_file: 'error', database: 'error' });
    expect(h.spilled_log_rows).toBeGreaterThanOrEqual(7);
    await until('the console line', () => proxy.stderr().includes('they are lost'));
    expect(proxy.stderr().match(/they are lost/g)).toHaveLength(1);
    full.free();
    cleanups.pop();
    disk.heal();
    await until('the database ok', async () => (await health(proxy.url)).database === 'ok');
  });

  test('a write that never returns (a hung disk): /health says stalled with what waits, the waiting lines are bounded, stopping ends within SHUTDOWN_GRACE_MS with every row', async () => {
    const upstream = await createFakeUpstream();
    cleanups.push(() => upstream.close());
    const disk = hangingLogFile();
    const proxy = await startTestProxy(
      { OPENAI_BASE_URL: upstream.baseUrl, LOG_LEVEL: 'warn', SHUTDOWN_GRACE_MS: '500' },
      { logFileSystem: disk.fs, logFileStallMs: 100, logFileSlowMs: 100, logFilePendingMaxBytes: 3000 },
    );
    cleanups.push(() => proxy.close());
    expect(await chat(proxy.url, 'before')).toBe(200);
    await proxy.waitForLogLines((lines) => lines.some((l) => l.status === 200));
    disk.hang();
    // Its line reaches the file by the 20 ms batch's asynchronous write, which hangs. (Not flushLogs():
    // with no write in flight yet, a slow machine would have it write them synchronously.)
    expect(await chat(proxy.url, 'hangs')).toBe(200);
    await until('/health to say stalled', async () => (await health(proxy.url)).log_file === 'stalled');
    // Slow now (a write in flight past logFileSlowMs): the waiting lines are bounded.
    for (let i = 0; i < 30; i++) expect(await chat(proxy.url, `m-${i}`)).toBe(200);
    // The last lines may still sit in the 20 ms batch (neither waiting nor dropped yet) on a busy machine.
    const h = await until('the batch handed to the file', async () => {
      const now = await health(proxy.url);
      return now.dropped_log_lines > 15 ? now : null;
    });
    expect(h).toMatchObject({ log_file: 'stalled', database: 'ok' });
    expect(h.log_file_error).toMatch(/has not returned for \d+ s/);
    // ~330-byte exchange lines: the write in flight (a 20 ms batch) plus up to 3000 bytes wait, the
    // rest are dropped.
    expect(h.log_file_pending_bytes).toBeGreaterThan(0);
    expect(h.log_file_pending_bytes).toBeLessThan(8000);
    expect(h.dropped_log_lines).toBeGreaterThan(15);
    expect(proxy.stderr().match(/is not keeping up/g)).toHaveLength(1);
    await proxy.waitForRows(32);

    // What a stop signal runs: it used to wait for the write for ever, after the database had closed.
    const t0 = Date.now();
    await proxy.running.close();
    expect(Date.now() - t0).toBeLessThan(500 + 2000);
    expect(countRows(proxy.dbPath)).toBe(32);
    // What waited is counted as dropped: 31 exchange lines in all, none of them written.
    expect(proxy.running.logFileHealth().droppedLines).toBeGreaterThanOrEqual(30);
  });

  test('`oai-proxy serve` with its log file on a full disk (/dev/full): requests answered, /health says so, SIGTERM exits 0 at once with every row', {
    timeout: 30_000,
  }, async () => {
    const { home, dbPath, logPath, upstream, cleanup } = await createServeFixture();
    cleanups.push(cleanup);
    // Every write to /dev/full fails with ENOSPC, as on a full disk; the symlink, not the device, is
    // what a rotation would rename.
    symlinkSync('/dev/full', logPath);
    const serve = spawnServe(
      ['--port', '0', '--db', dbPath, '--log-file', logPath, '--upstream', upstream.baseUrl],
      { env: { HOME: home, LOG_LEVEL: 'warn' } },
    );
    cleanups.push(serve.kill);
    const url = await serve.url;

    for (let i = 0; i < 8; i++) {
      expect(await chat(url, `m-${i}`)).toBe(200);
      await new Promise((r) => setTimeout(r, 30));
    }
    const h = await health(url);
    expect(h).toMatchObject({ log_file: 'error', database: 'ok' });
    expect(h.log_file_error).toMatch(/ENOSPC/);
    await until('the rows', () => countRows(dbPath) === 8);

    const t0 = Date.now();
    serve.child.kill('SIGTERM');
    expect(await serve.exited).toBe(0);
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(countRows(dbPath)).toBe(8);
    expect(serve.stderr().match(/cannot be written/g)).toHaveLength(1);
    expect(serve.stderr()).toMatch(/stopped; 8 exchanges recorded this run/);
    expect(serve.stderr()).not.toMatch(/Emitted 'error' event|Unhandled/);
    expect(readFileSync(dbPath).length).toBeGreaterThan(0);
  });

  test('`oai-proxy serve` whose log file write never returns (a FIFO nobody reads): SIGTERM ends the process within the grace with every row', {
    timeout: 30_000,
  }, async () => {
    const { home, dbPath, logPath, upstream, cleanup } = await createServeFixture();
    cleanups.push(cleanup);
    unreadFifo(logPath);
    const serve = spawnServe(
      ['--port', '0', '--db', dbPath, '--log-file', logPath, '--upstream', upstream.baseUrl],
      { env: { HOME: home, LOG_LEVEL: 'warn', SHUTDOWN_GRACE_MS: '500' } },
    );
    cleanups.push(serve.kill);
    const url = await serve.url;
    await fillThePipe(url, dbPath);

    const t0 = Date.now();
    serve.child.kill('SIGTERM');
    // It used to print its stop line and then never exit (only a third signal ended it).
    expect(await serve.exited).toBe('SIGTERM');
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(countRows(dbPath)).toBe(300);
    expect(serve.stderr()).toMatch(
      /stopped; 300 exchanges recorded this run; \d+ log lines could not be written/,
    );
    expect(serve.stderr()).toContain(
      `a write to ${logPath} had not returned after SHUTDOWN_GRACE_MS (500 ms, at least 1000 ms without progress)`,
    );
  });
  test('a hung log file write that returns after the stop line, while something else keeps the process alive: exit 0, not killed by the re-raised signal', {
    timeout: 30_000,
  }, async () => {
    const { home, dbPath, logPath, upstream, cleanup } = await createServeFixture();
    cleanups.push(cleanup);
    const reader = unreadFifo(logPath);
    // Another handle (a plugin's socket, a reader on stdin): keeps the loop alive until stdin ends.
    const preload = join(home, 'keep-alive.cjs');
    writeFileSync(
      preload,
      "process.stdin.resume();\nprocess.stdin.on('end', () => process.stdin.destroy());\n",
    );
    const serve = spawnServe(
      ['--port', '0', '--db', dbPath, '--log-file', logPath, '--upstream', upstream.baseUrl],
      {
        env: { HOME: home, LOG_LEVEL: 'warn', SHUTDOWN_GRACE_MS: '500' },
        nodeArgs: ['--require', preload],
        stdin: 'pipe',
      },
    );
    cleanups.push(serve.kill);
    const url = await serve.url;
    await fillThePipe(url, dbPath);

    serve.child.kill('SIGTERM');
    await until('the stop line', () => /stopped; 300 exchanges/.test(serve.stderr()));
    expect(serve.stderr()).toContain(`a write to ${logPath} had not returned`);
    // The pipe is read: the hung write returns.
    const buf = Buffer.alloc(1 << 16);
    const drainUntil = Date.now() + 500;
    while (Date.now() < drainUntil) {
      try {
        readSync(reader, buf);
      } catch {
        await new Promise((r) => setTimeout(r, 10));
      }
    }
    // Past the re-raise timer (1 s after the stop line), then the other handle goes.
    await new Promise((r) => setTimeout(r, 1000));
    serve.child.stdin?.end();
    // It used to be killed by the re-raised SIGTERM although the write had returned.
    expect(await serve.exited).toBe(0);
    expect(countRows(dbPath)).toBe(300);
  });
});
