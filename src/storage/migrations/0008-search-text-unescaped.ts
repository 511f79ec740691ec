import { type Kysely, sql } from 'kysely';
import { isPostgres } from './dialect.js';
import * as pg from './postgres.js';

/**
 * `--grep` on what a body says rather than on its JSON escapes. Bodies are stored as sent, and JSON
 * escapes a newline inside a string as `\n`: both engines' tokenisers read `line\nsecond` as the words
 * `line` and `nsecond`, so a word after a newline or a tab was never found, and neither was non-ASCII
 * text a client sent as `\u00e9` (Python's `json.dumps` does by default).
 * - SQLite: the indexer now decodes a JSON body's escapes before FTS5 tokenises it (`searchText` in
 *   search-index.ts). The index is emptied here and `serve` indexes every row again in the background
 *   (`logs --grep` says how many rows are not indexed yet meanwhile).
 * - PostgreSQL: `oai_proxy_search_vector` reads a JSON body that holds a backslash through jsonb
 *   (`jsonb_to_tsvector`: the strings decoded, keys and numbers kept), and the GIN index is rebuilt
 *   with it, which holds off writes to exchanges while it runs.
 */
export async function up(db: Kysely<any>): Promise<void> {
  if (isPostgres(db)) return pg.up0008(db);
  await indexAgain(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  if (isPostgres(db)) return pg.down0008(db);
  await indexAgain(db);
}

/** SQLite: empty the full-text index and mark every row pending, for `serve` to index again. */
async function indexAgain(db: Kysely<any>): Promise<void> {
  await sql`insert into exchanges_fts (exchanges_fts) values ('delete-all')`.execute(db);
  await sql`update exchanges_fts_state set indexed_rowid = 0 where id = 1`.execute(db);
}
