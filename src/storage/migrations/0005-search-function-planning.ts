import { type Kysely, sql } from 'kysely';
import { isPostgres } from './dialect.js';

/**
 * PostgreSQL only (SQLite: nothing to do). 0002 declared `oai_proxy_search_vector` PARALLEL SAFE with
 * the default cost of 100, and both were wrong:
 * - its EXCEPTION blocks open subtransactions, which PostgreSQL refuses in a parallel query: a
 *   `logs --grep` the planner parallelised failed with "cannot start subtransactions during a parallel
 *   operation". PARALLEL UNSAFE keeps such queries serial.
 * - tokenising a body costs far more than 100 operator calls, so the planner preferred walking the time
 *   index and computing the vector of row after row over the GIN index (a rare word scanned the whole
 *   table). With a realistic cost, rare words go through the GIN index, common ones stop after the
 *   first matching rows of the time index.
 */
export async function up(db: Kysely<any>): Promise<void> {
  if (!isPostgres(db)) return;
  await sql`alter function oai_proxy_search_vector(text, text, text) parallel unsafe cost 5000`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  if (!isPostgres(db)) return;
  await sql`alter function oai_proxy_search_vector(text, text, text) parallel safe cost 100`.execute(db);
}
