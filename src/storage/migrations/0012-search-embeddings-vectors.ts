import type { Kysely } from 'kysely';
import { isPostgres } from './dialect.js';
import * as pg from './postgres.js';

/**
 * `--grep`'s index leaves out an embeddings answer's vectors (1,536 floats are ~3,000 "words": ~1.1 ms of
 * tokenising and ~19 KB of index a row, for nothing anyone searches); its model and usage stay.
 * - PostgreSQL: `oai_proxy_search_vector` reads the response through `oai_proxy_search_response_vector`.
 *   Rows recorded before keep their vectors' words in the GIN index (no rebuild at start-up).
 * - SQLite: nothing to migrate; the indexer leaves them out of rows indexed from now on.
 */
export async function up(db: Kysely<any>): Promise<void> {
  if (isPostgres(db)) await pg.up0012(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  if (isPostgres(db)) await pg.down0012(db);
}
