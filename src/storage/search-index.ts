import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import type { SqliteHandle } from './database.js';

/** How far the full-text index (exchanges_fts) lags the exchanges table. */
export interface SearchIndexLag {
  indexedRowid: number;
  maxRowid: number;
}

/** Rows of `exchanges` not yet in the full-text index (0 when the index is current or absent). */
export function searchIndexLag(sqlite: SqliteHandle): SearchIndexLag {
  const state = sqlite.prepare('select indexed_rowid from exchanges_fts_state where id = 1').get() as
    | { indexed_rowid: number }
    | undefined;
  const max = sqlite.prepare('select coalesce(max(rowid), 0) as m from exchanges').get() as { m: number };
  return { indexedRowid: state?.indexed_rowid ?? 0, maxRowid: max.m };
}

/** The text indexed as "response": a stream's reassembled content and tool calls, else the body. */
const RESPONSE_TEXT = `case when json_valid(assembled)
  then coalesce(json_extract(assembled, '$.content'), '') || ' ' || coalesce(json_extract(assembled, '$.tool_calls'), '')
  else response_body end`;

/** The statements of one indexing slice (shared by the in-process indexer and the worker thread). */
export const INDEX_SLICE_SQL = {
  state: 'select indexed_rowid from exchanges_fts_state where id = 1',
  last: 'select max(rowid) as r, count(*) as n from (select rowid from exchanges where rowid > ? order by rowid limit ?)',
  insert: `insert into exchanges_fts (rowid, request, response)
         select rowid, request_body, ${RESPONSE_TEXT} from exchanges where rowid > ? and rowid <= ?`,
  update: 'update exchanges_fts_state set indexed_rowid = ? where id = 1',
} as const;

/**
 * Add up to `maxRows` not-yet-indexed exchanges (in rowid order) to the full-text index, in one
 * transaction. Returns how many were indexed. Needs a writable handle.
 */
export function indexPendingExchanges(sqlite: SqliteHandle, maxRows: number): number {
  return sqlite.transaction(() => {
    const { indexed_rowid: from } = sqlite.prepare(INDEX_SLICE_SQL.state).get() as { indexed_rowid: number };
    const last = sqlite.prepare(INDEX_SLICE_SQL.last).get(from, maxRows) as { r: number | null; n: number };
    if (!last.r) return 0;
    sqlite.prepare(INDEX_SLICE_SQL.insert).run(from, last.r);
    sqlite.prepare(INDEX_SLICE_SQL.update).run(last.r);
    return last.n;
  })();
}

/** Empty the full-text index and mark every row pending (after VACUUM renumbered rowids). */
export function resetSearchIndex(sqlite: SqliteHandle): void {
  sqlite.transaction(() => {
    sqlite.exec(`insert into exchanges_fts (exchanges_fts) values ('delete-all')`);
    sqlite.exec('update exchanges_fts_state set indexed_rowid = 0 where id = 1');
  })();
}

export interface SearchIndexer {
  /** Index everything pending now, in slices (tests, benchmarks). Returns rows indexed. */
  drain(): number;
  /** Stop; resolves once a worker thread's connection is closed (its -wal/-shm handling done). */
  close(): void | Promise<void>;
}

export interface SearchIndexerOptions {
  /** The writable handle to use (a getter: the recorder may reopen its database). */
  sqlite: () => SqliteHandle;
  /** How often to look for new rows (default 250 ms). */
  intervalMs?: number;
  /** Time budget of one slice: the event loop is never held longer than about this (default 5 ms). */
  sliceMs?: number;
  onError?(err: Error): void;
}

/**
 * Keep the full-text index current from a writing process (`serve`): every `intervalMs`, index new rows in
 * slices of about `sliceMs`, yielding to the event loop between slices, so recording and proxying are never
 * held up by tokenising bodies. Errors are reported once and retried on the next tick; never thrown.
 */
export function createSearchIndexer(options: SearchIndexerOptions): SearchIndexer {
  const sliceMs = options.sliceMs ?? 5;
  let perSlice = 8;
  let closed = false;
  let running = false;
  let failing = false;

  const slice = (): number => {
    const t = performance.now();
    const n = indexPendingExchanges(options.sqlite(), perSlice);
    const took = performance.now() - t;
    if (n === perSlice) {
      // Aim the next slice at the time budget.
      const rate = n / Math.max(took, 0.5);
      perSlice = Math.max(1, Math.min(2000, Math.floor(rate * sliceMs)));
    }
    return n;
  };

  const tick = () => {
    if (closed || running) return;
    running = true;
    const step = () => {
      if (closed) {
        running = false;
        return;
      }
      let n = 0;
      try {
        n = slice();
        failing = false;
      } catch (err) {
        if (!failing) options.onError?.(err as Error);
        failing = true;
      }
      if (n > 0 && !failing) setImmediate(step);
      else running = false;
    };
    step();
  };

  const timer = setInterval(tick, options.intervalMs ?? 250);
  timer.unref();
  return {
    drain() {
      let total = 0;
      for (let n = slice(); n > 0; n = slice()) total += n;
      return total;
    },
    close() {
      closed = true;
      clearInterval(timer);
    },
  };
}

// CommonJS, evaluated in a worker thread with its own connection: the slices of createSearchIndexer, off
// the event loop. Each slice is one short write transaction (the recorder's flush waits at most that long
// for the write lock).
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const Database = require(workerData.modulePath);
const db = new Database(workerData.path, { fileMustExist: true });
db.pragma('busy_timeout = 5000');
const q = workerData.sql;
const state = db.prepare(q.state), last = db.prepare(q.last), ins = db.prepare(q.insert), upd = db.prepare(q.update);
const slice = db.transaction((max) => {
  const from = state.get().indexed_rowid;
  const l = last.get(from, max);
  if (!l.r) return 0;
  ins.run(from, l.r);
  upd.run(l.r);
  return l.n;
});
let per = 8, running = false, failing = false, closed = false;
const step = () => {
  if (closed) { running = false; return; }
  let n = 0;
  const t = performance.now();
  try { n = slice(per); failing = false; }
  catch (e) { if (!failing) parentPort.postMessage(String((e && e.message) || e)); failing = true; }
  const took = performance.now() - t;
  if (n === per) per = Math.max(1, Math.min(2000, Math.floor((n / Math.max(took, 0.5)) * workerData.sliceMs)));
  if (n > 0 && !failing) setImmediate(step); else running = false;
};
const timer = setInterval(() => { if (!running && !closed) { running = true; step(); } }, workerData.intervalMs);
parentPort.on('message', () => { closed = true; clearInterval(timer); db.close(); parentPort.close(); });
`;

/**
 * The same background indexing as `createSearchIndexer`, in a worker thread with its own connection to
 * the database file, so tokenising bodies takes no time from proxying (it cost 15-25% of throughput on
 * the event loop). Null for in-memory or read-only handles, or when the worker cannot start: use
 * `createSearchIndexer` then. `drain()` indexes on the calling thread.
 */
export function startSearchIndexWorker(
  sqlite: SqliteHandle,
  options: Omit<SearchIndexerOptions, 'sqlite'> = {},
): SearchIndexer | null {
  if (sqlite.memory || sqlite.readonly) return null;
  let worker: Worker;
  try {
    worker = new Worker(WORKER_SOURCE, {
      eval: true,
      workerData: {
        modulePath: createRequire(import.meta.url).resolve('better-sqlite3'),
        path: sqlite.name,
        intervalMs: options.intervalMs ?? 250,
        sliceMs: options.sliceMs ?? 5,
        sql: INDEX_SLICE_SQL,
      },
    });
  } catch {
    return null;
  }
  worker.unref();
  const exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
  worker.on('message', (m: string) => options.onError?.(new Error(m)));
  worker.on('error', (err) => options.onError?.(err instanceof Error ? err : new Error(String(err))));
  let closed = false;
  return {
    drain() {
      let total = 0;
      for (let n = indexPendingExchanges(sqlite, 500); n > 0; n = indexPendingExchanges(sqlite, 500))
        total += n;
      return total;
    },
    close() {
      if (closed) return exited;
      closed = true;
      worker.removeAllListeners('message');
      worker.removeAllListeners('error');
      worker.on('error', () => undefined);
      // Keep the process alive until the worker has closed its connection (it is unref'd while running).
      worker.ref();
      worker.postMessage('stop');
      return exited;
    },
  };
}
