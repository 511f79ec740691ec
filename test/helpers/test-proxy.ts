import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach } from 'vitest';
import type { CliIo } from '../../src/commands/io.js';
import { type RunningProxy, type ServeExtensions, startProxy } from '../../src/commands/serve.js';
import { resolveConfig } from '../../src/config/load.js';
import type { ExchangesTable } from '../../src/storage/tables.js';
import { createFakeUpstream, type FakeUpstream } from './fake-upstream.js';
import { assertNoLeaks, configSecrets, readProxyFiles, watchedIos } from './secret-scan.js';
import { createTempDir } from './temp-dir.js';

export interface TestProxy {
  running: RunningProxy;
  /** Proxy origin, e.g. http://127.0.0.1:1234 */
  url: string;
  dir: string;
  dbPath: string;
  logPath: string;
  stderr: () => string;
  /** Record the exchanges that finished and write every queued row now (SQLite or PostgreSQL). */
  flush(): number | Promise<number>;
  /** Flush queued rows and read the exchanges table, oldest first. */
  rows(): ExchangesTable[];
  /** The log file's JSON lines, parsed (after flushing). */
  logLines(): Record<string, any>[];
  /**
   * The log file's lines once `check` accepts them. Lines reach the file in asynchronous writes, and
   * `logLines()` cannot see one still in flight: assert on lines logged moments ago through this.
   */
  waitForLogLines(
    check: (lines: Record<string, any>[]) => boolean,
    timeoutMs?: number,
  ): Promise<Record<string, any>[]>;
  /** Record the exchanges that finished and wait until the Qdrant indexer has handled them all. */
  drainIndexer(): Promise<void>;
  /** Wait until at least `n` rows are recorded. */
  waitForRows(n: number, timeoutMs?: number): Promise<ExchangesTable[]>;
  close(): Promise<void>;
}

/** In-memory CliIo capturing output. */
export function createTestIo(
  env: Record<string, string | undefined> = {},
  cwd = process.cwd(),
): CliIo & { out: () => string; err: () => string } {
  let out = '';
  let err = '';
  watchedIos.push({ env, out: () => out, err: () => err });
  return {
    stdout: {
      write: (s: string) => {
        out += s;
        return true;
      },
      isTTY: false,
    },
    stderr: {
      write: (s: string) => {
        err += s;
        return true;
      },
      isTTY: false,
    },
    env,
    cwd,
    out: () => out,
    err: () => err,
  };
}

/** Start the real proxy on 127.0.0.1:0 with a temp database and log file. `env` sets any settings. */
export async function startTestProxy(
  env: Record<string, string> = {},
  ext: ServeExtensions = {},
): Promise<TestProxy> {
  const tmp = createTempDir();
  const dbPath = join(tmp.path, 'proxy.db');
  const logPath = join(tmp.path, 'proxy.log');
  const fullEnv = {
    HOME: tmp.path,
    HOST: '127.0.0.1',
    PORT: '0',
    DATABASE_URL: dbPath,
    LOG_FILE_PATH: logPath,
    LOG_LEVEL: 'silent',
    LOG_FLUSH_INTERVAL_MS: '20',
    SHUTDOWN_GRACE_MS: '2000',
    ...env,
  };
  const io = createTestIo(fullEnv, tmp.path);
  const resolved = resolveConfig({ env: fullEnv, cwd: tmp.path, dotenv: false });
  const running = await startProxy(resolved, io, ext);
  let closed = false;
  const proxy: TestProxy = {
    running,
    url: running.url,
    dir: tmp.path,
    dbPath,
    logPath,
    stderr: io.err,
    flush() {
      running.proxy.recordFinished();
      return running.writer.flush();
    },
    rows() {
      proxy.flush();
      return running.database.sqlite
        .prepare('select * from exchanges order by started_at, id')
        .all() as ExchangesTable[];
    },
    logLines() {
      running.logger.flush();
      running.flushLogs();
      try {
        return readFileSync(logPath, 'utf8')
          .split('\n')
          .filter(Boolean)
          .map((l) => JSON.parse(l));
      } catch {
        return [];
      }
    },
    async waitForLogLines(check, timeoutMs = 5000) {
      const end = Date.now() + timeoutMs;
      for (;;) {
        const lines = proxy.logLines();
        if (check(lines) || Date.now() > end) return lines;
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    async drainIndexer() {
      running.proxy.recordFinished();
      await running.vector?.indexer.drain();
    },
    async waitForRows(n, timeoutMs = 5000) {
      const end = Date.now() + timeoutMs;
      for (;;) {
        const rows = proxy.rows();
        if (rows.length >= n) return rows;
        if (Date.now() > end) throw new Error(`expected ${n} recorded rows, have ${rows.length}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    async close() {
      if (closed) return;
      closed = true;
      await running.close();
      // Suite-wide guarantee: no configured key in the database, the log file or the console output.
      const texts = { ...readProxyFiles(tmp.path), stderr: io.err(), stdout: io.out() };
      tmp.cleanup();
      assertNoLeaks(configSecrets(resolved.config, resolved.env), texts, 'test proxy');
    },
  };
  return proxy;
}

/**
 * For a test file: returns `setup(env)`, which starts a fake upstream and a proxy in front of it
 * (`base` and `env` add settings); both are closed after each test.
 */
export function proxyWithUpstreamPerTest(base: Record<string, string> = {}) {
  const open: (FakeUpstream | TestProxy)[] = [];
  afterEach(async () => {
    for (const x of open.splice(0).reverse()) await x.close();
  });
  return async (env: Record<string, string> = {}) => {
    const upstream = await createFakeUpstream();
    open.push(upstream);
    const proxy = await startTestProxy({ OPENAI_BASE_URL: upstream.baseUrl, ...base, ...env });
    open.push(proxy);
    return { upstream, proxy };
  };
}
