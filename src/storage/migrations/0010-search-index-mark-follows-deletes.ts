import { type Kysely, sql } from 'kysely';
import { isPostgres } from './dialect.js';

/**
 * SQLite only (PostgreSQL's search index is a GIN index, always current). `exchanges_fts_state.indexed_rowid`
 * is the full-text indexer's high-water mark, and SQLite gives a new row max(rowid) + 1: once the rows
 * with the highest rowids were deleted (`logs prune` of every row, or of a long stream recorded last),
 * new exchanges got rowids at or below the mark and were never indexed, so `logs --grep` found none of
 * them and said nothing.
 * - A trigger brings the mark down to the highest rowid left after any delete from exchanges. It runs in
 *   the deleting transaction, so no writer can insert in between, whichever process deletes.
 * - A database already in that state: the mark comes down to the highest rowid in the index (every row
 *   up to it was indexed in rowid order), and `serve` indexes the rows above it.
 */
export async function up(db: Kysely<any>): Promise<void> {
  if (isPostgres(db)) return;
  await sql`create trigger if not exists exchanges_fts_state_after_delete after delete on exchanges begin
    update exchanges_fts_state set indexed_rowid = (select coalesce(max(rowid), 0) from exchanges)
      where id = 1 and indexed_rowid > (select coalesce(max(rowid), 0) from exchanges);
  end`.execute(db);
  await sql`update exchanges_fts_state
    set indexed_rowid = (select coalesce(max(id), 0) from exchanges_fts_docsize)
    where id = 1 and indexed_rowid > (select coalesce(max(id), 0) from exchanges_fts_docsize)`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  if (isPostgres(db)) return;
  await sql`drop trigger if exists exchanges_fts_state_after_delete`.execute(db);
}
