import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import type { SqliteHandle } from './database.js';
import { createFailureStreak, MAX_BACKOFF_MS } from './failure-streak.js';

/** WAL checkpoints run off the main thread. */
export interface BackgroundCheckpoints {
  /** True while checkpoints run in the worker (false: SQLite's own auto-checkpoint is back on). */
  active(): boolean;
  /** Stop the worker; its connection closes (awaitable), and SQLite's auto-checkpoint is restored on `sqlite`. */
  stop(): void | Promise<void>;
}

export interface BackgroundCheckpointOptions {
  /** How often the worker runs a PASSIVE checkpoint; after a failure the wait doubles, up to 5 s. */
  intervalMs?: number;
  /** WAL size (pages) beyond which the writer's connection checkpoints too, until the WAL is reset. */
  limitFrames?: number;
  /**
   * A failure: the first of a failing streak at once, then at most once per `reportEveryMs` (default
   * 10 min) while the streak lasts, with the number of failed attempts.
   */
  onError?(err: Error): void;
  reportEveryMs?: number;
  /** The first checkpoint that succeeds after failures: says so, with the failed attempts since when. */
  onRecover?(message: string): void;
}

const DEFAULT_AUTOCHECKPOINT = 1000;

// CommonJS, evaluated in the worker: its own connection runs PASSIVE checkpoints, which never block the
// writer (they copy what no reader still needs and return). It reports the WAL's size in frames when it
// crosses `limitFrames` either way, so the writer can checkpoint itself while a flood outruns the worker;
// each failure as its message (a string); and `true` when a checkpoint succeeds again. While they fail
// (read-only file, full disk), the wait between attempts doubles up to maxBackoffMs, as the recorder's.
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const Database = require(workerData.modulePath);
const db = new Database(workerData.path, { fileMustExist: true });
let big = false;
let wait = workerData.intervalMs;
let failing = false;
let timer;
const tick = () => {
  try {
    const r = db.pragma('wal_checkpoint(PASSIVE)')[0];
    if (failing) { failing = false; wait = workerData.intervalMs; parentPort.postMessage(true); }
    const over = r.log >= workerData.limitFrames;
    if (over !== big) { big = over; parentPort.postMessage(r.log); }
  } catch (e) {
    failing = true;
    wait = Math.min(wait * 2, workerData.maxBackoffMs);
    parentPort.postMessage(String(e && e.message));
  }
  timer = setTimeout(tick, failing ? wait : workerData.intervalMs);
};
timer = setTimeout(tick, workerData.intervalMs);
parentPort.on('message', () => { clearTimeout(timer); db.close(); parentPort.close(); });
`;

const REPORT_EVERY_MS = 10 * 60_000;

/**
 * Move WAL checkpoints off the event loop: turn SQLite's auto-checkpoint off on `sqlite` (the writer's
 * connection) and checkpoint from a worker thread instead. In-memory databases and a worker that fails
 * to start keep the auto-checkpoint. A checkpoint of ~1,000 pages on the main thread stalled every
 * in-flight request for tens of milliseconds and halved the rows per second the recorder sustains.
 */
export function startBackgroundCheckpoints(
  sqlite: SqliteHandle,
  options: BackgroundCheckpointOptions = {},
): BackgroundCheckpoints {
  let running = false;
  let worker: Worker | null = null;
  let exited: Promise<void> | null = null;
  const restore = () => {
    running = false;
    try {
      if (sqlite.open) sqlite.pragma(`wal_autocheckpoint = ${DEFAULT_AUTOCHECKPOINT}`);
    } catch {
      // the handle is closing: nothing left to checkpoint from here
    }
  };
  if (sqlite.memory || sqlite.readonly) return { active: () => false, stop() {} };
  // The worker backs off by itself; the streak here only says when checkpoints fail and recover.
  const every = Math.round(MAX_BACKOFF_MS / 1000);
  const streak = createFailureStreak({
    baseMs: options.intervalMs ?? 250,
    reportEveryMs: options.reportEveryMs ?? REPORT_EVERY_MS,
    onError: (err, { attempts, since }) =>
      options.onError?.(
        new Error(
          attempts === 1
            ? `WAL checkpoint failed: ${err.message}`
            : `WAL checkpoint failed: ${err.message} (still failing: ${attempts} attempts since ${new Date(since).toISOString()}; retrying every ${every} s)`,
        ),
      ),
    onRecover: ({ attempts, since }) =>
      options.onRecover?.(
        `WAL checkpoint recovered after ${attempts} failed attempt${attempts === 1 ? '' : 's'} since ${new Date(since).toISOString()}`,
      ),
  });
  try {
    worker = new Worker(WORKER_SOURCE, {
      eval: true,
      workerData: {
        modulePath: createRequire(import.meta.url).resolve('better-sqlite3'),
        path: sqlite.name,
        intervalMs: options.intervalMs ?? 250,
        limitFrames: options.limitFrames ?? 8192,
        maxBackoffMs: MAX_BACKOFF_MS,
      },
    });
    worker.unref();
    const w0 = worker;
    exited = new Promise<void>((resolve) => w0.once('exit', () => resolve()));
    worker.on('message', (m: string | number | true) => {
      if (m === true) {
        streak.succeeded();
        return;
      }
      if (typeof m === 'string') {
        streak.fail(new Error(m));
        return;
      }
      // Writes outrun the worker: a checkpoint in the writer's own transaction lets the WAL restart.
      if (running && sqlite.open)
        sqlite.pragma(
          `wal_autocheckpoint = ${m >= (options.limitFrames ?? 8192) ? DEFAULT_AUTOCHECKPOINT : 0}`,
        );
    });
    worker.on('error', (err) => {
      restore();
      options.onError?.(err);
    });
    worker.on('exit', () => {
      if (running) restore();
    });
    sqlite.pragma('wal_autocheckpoint = 0');
    // After a flood, keep the reset WAL file from staying at its peak size.
    sqlite.pragma('journal_size_limit = 67108864');
    running = true;
  } catch (err) {
    restore();
    options.onError?.(err as Error);
  }
  return {
    active: () => running,
    stop() {
      if (!worker) return;
      restore();
      const w = worker;
      worker = null;
      // Whatever the worker still reports after stop() goes nowhere: its logger may be closed already.
      w.removeAllListeners('message');
      w.removeAllListeners('error');
      w.on('error', () => undefined);
      // Keep the process alive until the worker has closed its connection (it is unref'd while running).
      w.ref();
      w.postMessage('stop');
      return exited ?? undefined;
    },
  };
}
