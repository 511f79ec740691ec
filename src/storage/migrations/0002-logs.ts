import { type Kysely, sql } from 'kysely';
import { isPostgres } from './dialect.js';
import * as pg from './postgres.js';

/**
 * What `oai-proxy logs` needs to answer fast on millions of rows:
 * - `exchanges_time_cover`: started_at plus every column listings filter on and stats aggregate, so a time
 *   range is answered from the index alone (the table rows carry the bodies and are large). It supersedes
 *   0001's `exchanges_started_at`.
 * - `exchanges_fts`: a contentless FTS5 index (bodies are not stored twice) over the request body and the
 *   response text: the reassembled message for streams (the raw SSE would index every chunk's JSON), the
 *   body otherwise, keyed on the exchanges rowid. Tokenising ~4 KB of text per row in an insert trigger
 *   cut the recorder from thousands to hundreds of rows/s, so rows are indexed after they are written
 *   (`search-index.ts`, driven by `serve` in small slices); a trigger only removes deleted rows.
 */
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .createIndex('exchanges_time_cover')
    .ifNotExists()
    .on('exchanges')
    .columns([
      'started_at',
      'internal',
      'model',
      'upstream_model',
      'status',
      'error',
      'stream',
      'path',
      'user',
      'duration_ms',
      'ttfb_ms',
      'prompt_tokens',
      'completion_tokens',
    ])
    .execute();
  await db.schema.dropIndex('exchanges_started_at').ifExists().execute();
  if (isPostgres(db)) return pg.up0002(db);

  await sql`create virtual table if not exists exchanges_fts using fts5(
    request, response, content='', contentless_delete=1
  )`.execute(db);
  await sql`create trigger if not exists exchanges_fts_delete after delete on exchanges begin
    delete from exchanges_fts where rowid = old.rowid;
  end`.execute(db);
  // Rows up to this exchanges rowid are in exchanges_fts (see search-index.ts).
  await db.schema
    .createTable('exchanges_fts_state')
    .ifNotExists()
    .addColumn('id', 'integer', (c) => c.primaryKey().check(sql`id = 1`))
    .addColumn('indexed_rowid', 'integer', (c) => c.notNull())
    .execute();
  await sql`insert or ignore into exchanges_fts_state (id, indexed_rowid) values (1, 0)`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  if (isPostgres(db)) {
    await pg.down0002(db);
  } else {
    await db.schema.dropTable('exchanges_fts_state').ifExists().execute();
    await sql`drop trigger if exists exchanges_fts_delete`.execute(db);
    await sql`drop table if exists exchanges_fts`.execute(db);
  }
  await db.schema
    .createIndex('exchanges_started_at')
    .ifNotExists()
    .on('exchanges')
    .column('started_at')
    .execute();
  await db.schema.dropIndex('exchanges_time_cover').ifExists().execute();
}
