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
/** The escapes that would glue a letter to the next word, and `\uXXXX`; `\"` and `\/` stay (separators). */
const GLUING_ESCAPE = /\\(?:u([0-9a-fA-F]{4})|[nrtbf\\])/g;

/**
 * The words of a body as `--grep` should find them. JSON writes a newline inside a string as `\n`, and
 * the tokeniser read `line\nsecond` as `line` and `nsecond`; in a JSON document, `\n \r \t \b \f` and
 * `\\` become a space here and `\uXXXX` its character (`caf\u00e9`, as Python's `json.dumps` and many
 * clients send non-ASCII, is indexed as `café`). Text that does not start like a JSON document is
 * returned as it is: a backslash there is not an escape (a Windows path in plain text).
 */
export function searchText(text: string): string {
  if (!text.includes('\\') || !JSON_DOCUMENT_START.test(text)) return text;
  if (text.includes('\\u'))
    return text.replace(GLUING_ESCAPE, (_m, hex: string | undefined) =>
      hex === undefined ? ' ' : String.fromCharCode(Number.parseInt(hex, 16)),
    );
  // No \u: the same without a callback per escape (3 against 10 µs for 4 KB holding 70 newlines).
  let out = '';
  let last = 0;
  for (let i = text.indexOf('\\'); i !== -1; ) {
    const c = text.charCodeAt(i + 1);
    // n r t b f and a second backslash
    if (c === 0x6e || c === 0x72 || c === 0x74 || c === 0x62 || c === 0x66 || c === 0x5c) {
      out += `${text.slice(last, i)} `;
      last = i + 2;
      i = text.indexOf('\\', last);
    } else i = text.indexOf('\\', i + 2);
  }
  return last === 0 ? text : out + text.slice(last);
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
 * An embeddings answer: OpenAI's list (`data[].object` "embedding"), Ollama's `embeddings`, the single
 * `embedding` of Ollama's older route and llama.cpp's, and llama.cpp's array of them (nothing else in it
 * to index). Its vectors are not text: 1,536 floats
 * are ~3,000 words nobody searches for, tokenised at ~1.1 ms a row into ~19 KB of index (scratch
 * measurement, 2026-12-07); base64 vectors ~0.18 ms and ~9 KB. Only rows of an embeddings route
 * (`/v1/embeddings`, Azure's `…/embeddings`, Ollama's `/api/embed`, llama.cpp's `/embedding`) are
 * looked into: a chat answer is never scanned or parsed for this.
 */
const EMBEDDINGS_ANSWER = `(path like '%/embeddings' or path like '%/embed' or path like '%/embedding')
  and json_valid(response_body)
  and (response_body ->> '$.data[0].object' = 'embedding' or json_type(response_body, '$.embeddings') = 'array'
    or json_type(response_body, '$.embedding') in ('array', 'text')
    or json_type(response_body, '$[0].embedding') = 'array')`;

/**
 * The text indexed as "response": a stream's reassembled content (json_extract decodes it), tool calls
 * and, for an `n` > 1 stream, every choice; an embeddings answer without its vectors (its model and
 * usage); else the body; escapes decoded as `searchText` does.
 */
const RESPONSE_TEXT = `case when json_valid(assembled)
  then coalesce(json_extract(assembled, '$.content'), '') || ' ' || coalesce(${withSearchText("json_extract(assembled, '$.tool_calls')")}, '')
    || coalesce(' ' || ${withSearchText("json_extract(assembled, '$.choices')")}, '')
  when ${EMBEDDINGS_ANSWER} then case json_type(response_body) when 'array' then ''
    else json_remove(response_body, '$.data', '$.embeddings', '$.embedding') end
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
