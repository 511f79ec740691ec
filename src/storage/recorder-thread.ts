import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { OaiProxyError } from '../errors.js';
import type { ExchangeRecord, RecordingWriterOptions, SpillReason } from './exchange-record.js';
import { fromWire, toWire, type WireExchange } from './exchange-wire.js';
import type { ExchangeWriterHealth } from './log-store.js';

/** Settings the recorder thread starts with (recorder-worker.ts reads them as `workerData`). */
export interface RecorderWorkerData {
  path: string;
  flushIntervalMs: number;
  queueMax: number;
  batchSize?: number;
  searchIndex: boolean;
  /** Float64Array[3] the thread keeps current: written, spilled, failing (0/1). */
  counters: SharedArrayBuffer;
}

/** Main thread → recorder thread. */
export type ToRecorder =
  /**
   * Rows to write. `now`: a flush interval's rows (or the database is failing), written at once; else a
   * full message, written once ROWS_PER_TRANSACTION are waiting or at the thread's own interval.
   */
  | { type: 'rows'; rows: WireExchange[]; now: boolean }
  /** Write everything queued; then set Int32Array(signal)[1] to the rows written and [0] to 1, and notify. */
  | { type: 'flush'; signal: SharedArrayBuffer }
  /** Answers `moved`: this thread let go of the old file (and opened the new one, if it could). */
  | { type: 'reopen' }
  | { type: 'close' };

/** Recorder thread → main thread. */
export type FromRecorder =
  | { type: 'ready' }
  | { type: 'failed'; message: string }
  | { type: 'spill'; rows: ExchangeRecord[]; reason: SpillReason }
  | { type: 'error'; message: string; code?: string }
  | { type: 'recover' }
  /** The database file was deleted or replaced; the thread closed its handle on it and waits for `reopen`. */
  | { type: 'moved' }
  | { type: 'job-error'; job: string; message: string }
  /** A background job that failed succeeded again (only the WAL checkpoints say so). */
  | { type: 'job-recover'; job: string; message: string }
  | { type: 'closed' };

export interface RecorderThreadOptions extends RecordingWriterOptions {
  /** The SQLite file (created and migrated already). */
  path: string;
  /** Keep the full-text index for `logs --grep` current (SEARCH_INDEX). */
  searchIndex: boolean;
  /**
   * The database file was deleted or replaced, and the thread has closed its handles on it. Close this
   * thread's handle on it too, remove the old file's leftover -wal and -shm (`removeLeftovers`), then open
   * the file now at the path; the thread opens it when this settles. A new file beside those leftovers
   * would share them: SQLite would read the old file's pages from that WAL and checkpoint them into it.
   */
  onMoved?(): Promise<void>;
  /** A background job (full-text indexing, stats rollup) failed; it retries by itself. */
  onJobError?(job: string, err: Error): void;
  /** A background job that failed succeeds again: `message` says so, with the failed attempts since when. */
  onJobRecover?(job: string, message: string): void;
  /**
   * The thread died (a bug, or out of memory): from then on exchanges go to this writer instead. Rows the
   * thread had not written yet are lost, and counted as spilled.
   */
  fallback(): RecorderThread;
  /** The worker script (default: this package's built dist/storage/recorder-worker.js). */
  workerFile?: string;
}

/** The batched SQLite recorder, running on its own thread. */
export interface RecorderThread {
  record(exchange: ExchangeRecord): void;
  /** Write everything recorded so far, waiting for the thread; returns rows written. */
  flush(): number;
  health(): ExchangeWriterHealth;
  close(): void | Promise<void>;
}

/**
 * Rows are handed over every `flushIntervalMs`, or as soon as MAX_ROWS_PER_MESSAGE are waiting. A
 * message (and a wake-up of the thread) per request cost more CPU than the INSERT it moved. 64 rather
 * than 256: 5 of 6 alternating pairs of `npm run bench -- --only=http` favoured 64 (median 0.79×
 * against 0.74× the bare pipe's throughput at 64 connections; at the edge of that machine's noise),
 * with ~15% fewer scavenges, and one message's structured clone holds the event loop ~0.25 ms, not ~1.
 */
const MAX_ROWS_PER_MESSAGE = 64;

/** The thread writes full messages' rows in transactions of about this many (see recorder-worker.ts). */
export const ROWS_PER_TRANSACTION = 1000;

/**
 * Start the recorder thread on `path`. `record()` costs the event loop one array push; each flush
 * interval's rows go to the thread in messages of at most MAX_ROWS_PER_MESSAGE, and the thread does the INSERTs, the full-text index,
 * the stats rollups and (through a worker of its own) the WAL checkpoints on its own connection. When it
 * came in, on the 2-core bench machine, it took p99 at 64 connections from 2.0–2.6× the bare pipe's to
 * 1.3–1.7× (README, Performance, has the current figures).
 */
export async function startRecorderThread(options: RecorderThreadOptions): Promise<RecorderThread> {
  const counters = new SharedArrayBuffer(3 * 8);
  const published = new Float64Array(counters);
  const data: RecorderWorkerData = {
    path: options.path,
    flushIntervalMs: options.flushIntervalMs,
    queueMax: options.queueMax,
    batchSize: options.batchSize,
    searchIndex: options.searchIndex,
    counters,
  };
  const worker = new Worker(options.workerFile ?? workerFile(), { workerData: data });
  let closing = false;
  let lastError: string | null = null;
  let fallback: RecorderThread | null = null;
  let lostRows = 0;
  /** Rows recorded after close() began: the thread no longer takes any; they went to `onSpill`. */
  let lateRows = 0;
  let handedOver = 0;
  let pending: WireExchange[] = [];

  const exited = new Promise<number>((resolve) => worker.once('exit', resolve));
  await new Promise<void>((resolve, reject) => {
    const onExit = (code: number) =>
      reject(
        new OaiProxyError(
          'database_error',
          `the recorder thread for ${options.path} exited (${code}) while starting`,
        ),
      );
    worker.once('exit', onExit);
    worker.once('error', reject);
    worker.on('message', function ready(m: FromRecorder) {
      if (m.type === 'ready' || m.type === 'failed') {
        worker.off('message', ready);
        worker.off('exit', onExit);
        worker.off('error', reject);
        if (m.type === 'ready') resolve();
        else reject(new OaiProxyError('database_error', m.message));
      }
    });
  });

  worker.on('message', (m: FromRecorder) => {
    switch (m.type) {
      case 'spill':
        options.onSpill?.(m.rows, m.reason);
        break;
      case 'error': {
        lastError = m.message;
        const err = Object.assign(new Error(m.message), m.code ? { code: m.code } : {});
        options.onError?.(err);
        break;
      }
      case 'recover':
        lastError = null;
        options.onRecover?.();
        break;
      case 'moved': {
        const answer = () => worker.postMessage({ type: 'reopen' } satisfies ToRecorder);
        Promise.resolve(options.onMoved?.()).then(answer, (err: Error) => {
          options.onError?.(err);
          answer();
        });
        break;
      }
      case 'job-error':
        options.onJobError?.(m.job, new Error(m.message));
        break;
      case 'job-recover':
        options.onJobRecover?.(m.job, m.message);
        break;
    }
  });
  worker.on('error', (err) => {
    if (!closing) options.onError?.(new Error(`the recorder thread failed: ${err.message}`));
  });
  worker.once('exit', () => {
    if (closing) return;
    // Whatever the thread had not written is gone; recording goes on on this thread.
    lostRows = Math.max(0, handedOver - published[0] - published[1]);
    fallback = options.fallback();
    for (const r of pending) fallback.record(fromWire(r));
    pending = [];
  });
  // Like any timer, the thread must not keep a process alive that forgot to close it.
  worker.unref();

  let timer: NodeJS.Timeout | null = null;
  const send = (now = true) => {
    if (timer) clearTimeout(timer);
    timer = null;
    if (pending.length === 0 || fallback) return;
    const rows = pending;
    pending = [];
    handedOver += rows.length;
    worker.postMessage({ type: 'rows', rows, now } satisfies ToRecorder);
  };

  return {
    record(exchange) {
      if (fallback) return fallback.record(exchange);
      if (closing) {
        lateRows++;
        options.onSpill?.([exchange], 'after_close');
        return;
      }
      pending.push(toWire(exchange));
      // While the database fails, rows go over at once, so the thread's LOG_QUEUE_MAX bounds them all.
      if (published[2]) send();
      else if (pending.length >= MAX_ROWS_PER_MESSAGE) send(false);
      else if (!timer) {
        timer = setTimeout(send, options.flushIntervalMs);
        timer.unref();
      }
    },
    flush() {
      if (fallback) return fallback.flush();
      send();
      const signal = new SharedArrayBuffer(8);
      const state = new Int32Array(signal);
      worker.postMessage({ type: 'flush', signal } satisfies ToRecorder);
      // The thread answers on its own; it needs nothing from this one meanwhile.
      Atomics.wait(state, 0, 0, 60_000);
      return state[1];
    },
    health() {
      if (fallback) {
        const h = fallback.health();
        return {
          ...h,
          written: h.written + published[0],
          spilled: h.spilled + published[1] + lostRows + lateRows,
        };
      }
      // Here, on their way, or in the thread's queue. The thread keeps at most queueMax of them: it spills
      // the oldest as soon as more arrive, so rows beyond that already count as spilled.
      const waiting = pending.length + Math.max(0, handedOver - published[0] - published[1]);
      const over = Math.max(0, waiting - options.queueMax);
      return {
        database: published[2] ? 'error' : 'ok',
        queued: waiting - over,
        written: published[0],
        spilled: published[1] + over + lateRows,
        lastError: published[2] ? lastError : null,
      };
    },
    async close() {
      if (fallback) return fallback.close();
      send();
      closing = true;
      worker.ref();
      worker.postMessage({ type: 'close' } satisfies ToRecorder);
      await exited;
    },
  };
}

/**
 * The built worker: `dist/storage/recorder-worker.js` of this package, found from wherever this module
 * runs (a bundle chunk in `dist/`, or `src/` under the tests, which build first).
 */
function workerFile(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json'))) {
      const file = join(dir, 'dist', 'storage', 'recorder-worker.js');
      if (existsSync(file)) return file;
      throw new OaiProxyError('internal', `${file} is missing; run \`npm run build\``);
    }
    const up = dirname(dir);
    if (up === dir) throw new OaiProxyError('internal', 'cannot find the oai-proxy package directory');
    dir = up;
  }
}
