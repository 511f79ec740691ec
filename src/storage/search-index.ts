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

const JSON_DOCUMENT_START = /^\s*[[{]/;
const JSON_ESCAPE = /\\(?:u([0-9a-fA-F]{4})|([\s\S]))/g;

/**
 * The words of a body as `--grep` should find them: a JSON document's string escapes decoded, so that
 * `"line one\nline two"` indexes `two` (not `ntwo`), a tab or `\r` likewise, and `caf\u00e9` (how Python's
 * `json.dumps` and many clients send non-ASCII) indexes `café`. Text that does not start like a JSON
 * document is returned as it is: a backslash there is not an escape (a Windows path in plain text).
 */
export function searchText(text: string): string {
  if (!text.includes('\\') || !JSON_DOCUMENT_START.test(text)) return text;
  return text.replace(JSON_ESCAPE, (_m, hex: string | undefined, c: string | undefined) => {
    if (hex !== undefined) return String.fromCharCode(Number.parseInt(hex, 16));
    // \n \r \t \b \f separate words; \" \\ \/ stand for themselves.
    return c === 'n' || c === 'r' || c === 't' || c === 'b' || c === 'f' ? ' ' : (c as string);
  });
}

/** The SQL function the indexing statement calls for a column holding a backslash. */
const SEARCH_TEXT_FUNCTION = 'oai_proxy_search_text';
const withSearchText = (expr: string) =>
  `case when instr(${expr}, char(92)) > 0 then ${SEARCH_TEXT_FUNCTION}(${expr}) else ${expr} end`;

/** Handles that have `oai_proxy_search_text` (registered once per connection). */
const registered = new WeakSet<SqliteHandle>();
function registerSearchText(sqlite: SqliteHandle): void {
  if (registered.has(sqlite)) return;
  sqlite.function(SEARCH_TEXT_FUNCTION, { deterministic: true }, (text: unknown) =>
    typeof text === 'string' ? searchText(text) : text,
  );
  registered.add(sqlite);
}

/**
 * The text indexed as "response": a stream's reassembled content (json_extract decodes it) and tool
 * calls, else the body; escapes decoded as `searchText` does.
 */
const RESPONSE_TEXT = `case when json_valid(assembled)
  then coalesce(json_extract(assembled, '$.content'), '') || ' ' || coalesce(${withSearchText("json_extract(assembled, '$.tool_calls')")}, '')
  else ${withSearchText('response_body')} end`;
const REQUEST_TEXT = withSearchText('request_body');

/**
 * Add up to `maxRows` not-yet-indexed exchanges (in rowid order) to the full-text index, in one
 * transaction. Returns how many were indexed. Needs a writable handle.
 */
export function indexPendingExchanges(sqlite: SqliteHandle, maxRows: number): number {
  registerSearchText(sqlite);
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
         select rowid, ${REQUEST_TEXT}, ${RESPONSE_TEXT} from exchanges where rowid > ? and rowid <= ?`,
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
