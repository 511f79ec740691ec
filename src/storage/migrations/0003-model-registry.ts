import type { Kysely } from 'kysely';

/** The model registry: models and alias mappings, each remembering who wrote it (`source`). */
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .createTable('models')
    .ifNotExists()
    .addColumn('name', 'text', (c) => c.primaryKey())
    .addColumn('display_name', 'text')
    .addColumn('description', 'text')
    .addColumn('upstream', 'text')
    .addColumn('deployment', 'text')
    .addColumn('source', 'text', (c) => c.notNull())
    .addColumn('created_at', 'bigint', (c) => c.notNull())
    .addColumn('updated_at', 'bigint', (c) => c.notNull())
    // A seeded entry the user removed stays as a tombstone so the next seeding does not bring it back.
    .addColumn('removed', 'integer', (c) => c.notNull().defaultTo(0))
    .execute();
  await db.schema
    .createTable('model_mappings')
    .ifNotExists()
    .addColumn('alias', 'text', (c) => c.primaryKey())
    .addColumn('actual_model', 'text', (c) => c.notNull())
    .addColumn('source', 'text', (c) => c.notNull())
    .addColumn('created_at', 'bigint', (c) => c.notNull())
    .addColumn('updated_at', 'bigint', (c) => c.notNull())
    .addColumn('removed', 'integer', (c) => c.notNull().defaultTo(0))
    .execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.dropTable('model_mappings').ifExists().execute();
  await db.schema.dropTable('models').ifExists().execute();
}
