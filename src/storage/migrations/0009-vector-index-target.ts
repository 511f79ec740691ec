import { type Kysely, sql } from 'kysely';

/**
 * Which Qdrant target (URL without credentials + collection) an exchange's `exchange_index` state refers
 * to, so a new collection or Qdrant instance starts from the first exchange. Rows from before this
 * migration have target '' and are claimed by the first target found to exist (see index-state-store.ts);
 * the partial index keeps that look-up free once they are claimed. Same SQL on SQLite and PostgreSQL.
 */
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .alterTable('exchange_index')
    .addColumn('target', 'text', (c) => c.notNull().defaultTo(''))
    .execute();
  await sql`create index if not exists exchange_index_unclaimed on exchange_index (exchange_id) where target = ''`.execute(
    db,
  );
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop index if exists exchange_index_unclaimed`.execute(db);
  await db.schema.alterTable('exchange_index').dropColumn('target').execute();
}
