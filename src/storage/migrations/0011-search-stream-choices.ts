import type { Kysely } from 'kysely';
import { isPostgres } from './dialect.js';
import * as pg from './postgres.js';

/**
 * `--grep` finds the text of every choice of an `n` > 1 stream, not only the first: the reassembled
 * message lists them under `choices` (see sse.ts).
 * - PostgreSQL: `oai_proxy_search_vector` adds the text of `choices`. Rows recorded before have none,
 *   so the GIN index stays valid without a rebuild.
 * - SQLite: nothing to migrate; the indexer reads `choices` from rows recorded from now on.
 */
export async function up(db: Kysely<any>): Promise<void> {
  if (isPostgres(db)) await pg.up0011(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  if (isPostgres(db)) await pg.down0011(db);
}
