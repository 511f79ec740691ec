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

/**
 * Add up to `maxRows` not-yet-indexed exchanges (in rowid order) to the full-text index, in one
 * transaction. Returns how many were indexed. Needs a writable handle.
 */
export function indexPendingExchanges(sqlite: SqliteHandle, maxRows: number): number {
  return sqlite.transaction(() => {
    const { indexed_rowid: from } = sqlite
      .prepare('select indexed_rowid from exchanges_fts_state where id = 1')
      .get() as { indexed_rowid: number };
    const last = sqlite
      .prepare(
        'select max(rowid) as r, count(*) as n from (select rowid from exchanges where rowid > ? order by rowid limit ?)',
      )
      .get(from, maxRows) as { r: number | null; n: number };
    if (!last.r) return 0;
    sqlite
      .prepare(
        `insert into exchanges_fts (rowid, request, response)
         select rowid, request_body, ${RESPONSE_TEXT} from exchanges where rowid > ? and rowid <= ?`,
      )
      .run(from, last.r);
    sqlite.prepare('update exchanges_fts_state set indexed_rowid = ? where id = 1').run(last.r);
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
  close(): void;
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
