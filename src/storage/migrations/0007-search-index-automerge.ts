import { type Kysely, sql } from 'kysely';
import { isPostgres } from './dialect.js';

/**
 * SQLite only (PostgreSQL's GIN index has no such setting). FTS5 keeps exchanges_fts as segments that it
 * merges as new ones arrive; with the default `automerge` of 4 a level is merged as soon as 4 segments
 * are on it, so every indexed row is rewritten again and again. At 16, indexing costs 22 instead of
 * 39 µs per row once a database holds 300,000 rows (indexed in serve's 2,000-row slices), and
 * `--grep` on that database answered as fast or faster (35 against 74 ms to count a common phrase,
 * 0.24 against 0.41 ms for the newest matches of a common word). The setting is stored in the index;
 * existing segments are merged under it from now on.
 */
export async function up(db: Kysely<any>): Promise<void> {
  if (isPostgres(db)) return;
  await sql`insert into exchanges_fts (exchanges_fts, rank) values ('automerge', 16)`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  if (isPostgres(db)) return;
  await sql`insert into exchanges_fts (exchanges_fts, rank) values ('automerge', 4)`.execute(db);
}
