// The recorder thread (see recorder-thread.ts): every write `serve` makes to its SQLite file for an
// exchange — the batched INSERTs, the full-text index, the stats rollups — runs here, on this thread's own
// connection, so none of it ever holds the event loop that proxies requests.
import { parentPort, workerData } from 'node:worker_threads';
import type { BackgroundSlices } from './background-slices.js';
import { startBackgroundCheckpoints } from './checkpointer.js';
import { type OpenDatabase, openDatabase } from './database.js';
import { fromWire } from './exchange-wire.js';
import { createExchangeWriter } from './log-store.js';
import {
  type FromRecorder,
  type RecorderWorkerData,
  ROWS_PER_TRANSACTION,
  type ToRecorder,
} from './recorder-thread.js';
import { createSearchIndexer } from './search-index.js';
import { createStatsRollup } from './stats-rollup.js';
import { lowerThisThreadPriority } from './thread-priority.js';

const data = workerData as RecorderWorkerData;
const port = parentPort!;
const post = (m: FromRecorder) => port.postMessage(m);
const counters = new Float64Array(data.counters);
// Before anything else: the checkpoint worker this thread starts inherits its nice value.
lowerThisThreadPriority();

let database: OpenDatabase;
try {
  database = await openDatabase(data.path);
} catch (err) {
  post({ type: 'failed', message: (err as Error).message });
  process.exit(1);
}

const checkpointOptions = {
  onError: (err: Error) => post({ type: 'job-error', job: 'WAL checkpoint', message: err.message }),
  onRecover: (message: string) => post({ type: 'job-recover', job: 'WAL checkpoint', message }),
};
// Checkpoints run in a worker of their own, beside this thread's INSERTs rather than between them.
let checkpoints = startBackgroundCheckpoints(database.sqlite, checkpointOptions);

const writer = createExchangeWriter({
  sqlite: database.sqlite,
  flushIntervalMs: data.flushIntervalMs,
  queueMax: data.queueMax,
  batchSize: data.batchSize,
  // No requests wait on this thread's event loop: a transaction per 1,000 rows instead of the main-thread
  // writer's 128 sustained 20–25% more rows/s (fewer commits, pragma calls and stat()s per row).
  sliceRows: ROWS_PER_TRANSACTION,
  onSpill: (rows, reason) => post({ type: 'spill', rows, reason }),
  onError: (err) => post({ type: 'error', message: err.message, code: (err as { code?: string }).code }),
  onRecover: () => post({ type: 'recover' }),
  onState: () => publish(),
  reopen: {
    moved: () => database.moved(),
    async open() {
      // Every handle on the old file is closed before any opens the new one (see onMoved): this thread's
      // two, then the main thread's, which then opens the new file (creating and migrating it).
      await checkpoints.stop();
      await database.close().catch(() => undefined);
      await new Promise<void>((resolve) => {
        reopened = resolve;
        post({ type: 'moved' });
      });
      database = await openDatabase(data.path);
      checkpoints = startBackgroundCheckpoints(database.sqlite, checkpointOptions);
      return database.sqlite;
    },
  },
});

/** Resolves the wait in `reopen.open()` when the main thread answers `moved`. */
let reopened: (() => void) | null = null;

const jobs: BackgroundSlices[] = [];
const jobError = (job: string) => (err: Error) => post({ type: 'job-error', job, message: err.message });
// Off the event loop, slices can be long: fewer, larger transactions cost less CPU than 5 ms ones.
const slices = { intervalMs: 500, sliceMs: 50 };
if (data.searchIndex)
  jobs.push(
    createSearchIndexer({
      sqlite: () => database.sqlite,
      ...slices,
      onError: jobError('full-text indexing'),
    }),
  );
jobs.push(createStatsRollup({ sqlite: () => database.sqlite, ...slices, onError: jobError('stats rollup') }));

/**
 * What `health()` reads on the main thread without asking: written, spilled, failing. The writer calls
 * this (onState) after every flush, failure and spill, which are all that change them.
 */
function publish() {
  const h = writer.health();
  counters[0] = h.written;
  counters[1] = h.spilled;
  counters[2] = h.database === 'error' ? 1 : 0;
}

port.on('message', (m: ToRecorder) => {
  switch (m.type) {
    case 'rows':
      for (const r of m.rows) writer.record(fromWire(r));
      // A flush interval's rows are written now, as a timed flush would; full messages (a busy proxy)
      // gather into transactions of ROWS_PER_TRANSACTION, or wait for the writer's own interval.
      if (m.now || writer.health().queued >= ROWS_PER_TRANSACTION) writer.kick();
      break;
    case 'flush': {
      const signal = new Int32Array(m.signal);
      let n = 0;
      try {
        n = writer.flush();
      } finally {
        signal[1] = n;
        Atomics.store(signal, 0, 1);
        Atomics.notify(signal, 0);
      }
      break;
    }
    case 'reopen':
      reopened?.();
      reopened = null;
      break;
    case 'close':
      for (const job of jobs) job.close();
      writer.close();
      Promise.resolve(checkpoints.stop())
        .then(() => database.close())
        .finally(() => {
          post({ type: 'closed' });
          port.close();
        });
      break;
  }
});
post({ type: 'ready' });
