import { type ChildProcess, spawn } from 'node:child_process';
import { join } from 'node:path';
import { createFakeUpstream, type FakeUpstream } from './fake-upstream.js';
import { createTempDir } from './temp-dir.js';

const BIN = join(import.meta.dirname, '../../bin/oai-proxy.js');

/** `oai-proxy serve` run from the built bin in a child process, its console collected. */
export interface ServeProcess {
  child: ChildProcess;
  /**
   * The base URL its banner names (`http://127.0.0.1:PORT`). Rejects with what it printed if it ends
   * first or is not listening within `timeoutMs`.
   */
  url: Promise<string>;
  /** Once it has ended and all it printed is read: its exit code, or the signal that ended it. */
  exited: Promise<number | NodeJS.Signals | null>;
  stdout(): string;
  stderr(): string;
  /** SIGKILL, if it is still running: for the test's cleanups. */
  kill(): void;
}

/**
 * Start `node [nodeArgs…] bin/oai-proxy.js serve args…` with exactly `env` (plus PATH), stdout and
 * stderr piped, stdin ignored unless `stdin: 'pipe'`.
 */
export function spawnServe(
  args: string[],
  options: {
    env: Record<string, string>;
    nodeArgs?: string[];
    stdin?: 'ignore' | 'pipe';
    timeoutMs?: number;
  },
): ServeProcess {
  const { env, nodeArgs = [], stdin = 'ignore', timeoutMs = 30_000 } = options;
  const child = spawn(process.execPath, [...nodeArgs, BIN, 'serve', ...args], {
    env: { PATH: process.env.PATH ?? '', ...env },
    stdio: [stdin, 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d) => {
    out += d;
  });
  const exited = new Promise<number | NodeJS.Signals | null>((resolve) =>
    child.once('close', (code, signal) => resolve(signal ?? code)),
  );
  const url = new Promise<string>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`serve not listening after ${timeoutMs} ms: ${err}`)),
      timeoutMs,
    );
    child.stderr!.on('data', (d) => {
      err += d;
      const m = /listening on (http:\/\/[^\s]+)/.exec(err);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    void exited.then((end) => {
      clearTimeout(timer);
      reject(new Error(`serve exited ${end} before listening: ${err}`));
    });
  });
  return {
    child,
    url,
    exited,
    stdout: () => out,
    stderr: () => err,
    kill: () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    },
  };
}

/** What a serve under test runs against: a temp dir (its HOME, holding p.db and p.log) and a fake upstream. */
export interface ServeFixture {
  home: string;
  /** `home`/p.db */
  dbPath: string;
  /** `home`/p.log */
  logPath: string;
  upstream: FakeUpstream;
  /** Closes the upstream, then removes the temp dir. */
  cleanup(): Promise<void>;
}

/** A fresh ServeFixture; the caller pushes its `cleanup` on the test's cleanups. */
export async function createServeFixture(): Promise<ServeFixture> {
  const tmp = createTempDir();
  const upstream = await createFakeUpstream();
  return {
    home: tmp.path,
    dbPath: join(tmp.path, 'p.db'),
    logPath: join(tmp.path, 'p.log'),
    upstream,
    cleanup: async () => {
      await upstream.close();
      tmp.cleanup();
    },
  };
}
