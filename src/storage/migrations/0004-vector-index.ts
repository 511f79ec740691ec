import { type Kysely, sql } from 'kysely';
import { isPostgres } from './dialect.js';
import * as pg from './postgres.js';

/** Per-exchange Qdrant indexing state (a side table, so the indexer never races the batched row writer). */
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .createTable('exchange_index')
    .ifNotExists()
    .addColumn('exchange_id', 'text', (c) => c.primaryKey())
    .addColumn('status', 'text', (c) => c.notNull())
    .addColumn('error', 'text')
    .addColumn('attempts', 'integer', (c) => c.notNull().defaultTo(1))
    .addColumn('updated_at', 'bigint', (c) => c.notNull())
    .execute();
  // However exchanges are deleted (logs prune, by hand), their state goes with them.
  if (isPostgres(db)) return pg.up0004(db);
  await sql`create trigger if not exists exchange_index_delete after delete on exchanges begin
    delete from exchange_index where exchange_id = old.id;
  end`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  if (isPostgres(db)) await pg.down0004(db);
  else await sql`drop trigger if exists exchange_index_delete`.execute(db);
  await db.schema.dropTable('exchange_index').ifExists().execute();
}
