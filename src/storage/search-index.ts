import { type BackgroundSliceOptions, type BackgroundSlices, runInSlices } from './background-slices.js';
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

export interface SearchIndexerOptions extends Omit<BackgroundSliceOptions, 'work'> {
  /** The writable handle to use (a getter: the recorder may reopen its database). */
  sqlite: () => SqliteHandle;
}

/**
 * Keep the full-text index current from a writing process (`serve`): new rows are indexed in slices of a
 * few milliseconds (`runInSlices`), so recording and proxying are never held up by tokenising bodies.
 */
export function createSearchIndexer(options: SearchIndexerOptions): BackgroundSlices {
  return runInSlices({ ...options, work: (budget) => indexPendingExchanges(options.sqlite(), budget) });
}
