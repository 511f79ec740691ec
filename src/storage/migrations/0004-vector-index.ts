import type { Kysely } from 'kysely';

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
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.dropTable('exchange_index').ifExists().execute();
}
