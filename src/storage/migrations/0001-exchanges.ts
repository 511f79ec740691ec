import type { Kysely } from 'kysely';
import { isPostgres } from './dialect.js';

/**
 * The exchanges table and its time index. PostgreSQL has no implicit rowid, so there `rowid` is an
 * identity column: queries that page in insertion order (`logs --follow`) read the same on both.
 */
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .createTable('exchanges')
    .ifNotExists()
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('started_at', 'bigint', (c) => c.notNull())
    .addColumn('duration_ms', 'integer', (c) => c.notNull())
    .addColumn('ttfb_ms', 'integer')
    .addColumn('method', 'text', (c) => c.notNull())
    .addColumn('path', 'text', (c) => c.notNull())
    .addColumn('query', 'text')
    .addColumn('client_addr', 'text')
    .addColumn('status', 'integer')
    .addColumn('request_headers', 'text', (c) => c.notNull())
    .addColumn('response_headers', 'text')
    .addColumn('request_body', 'text')
    .addColumn('request_bytes', 'bigint', (c) => c.notNull().defaultTo(0))
    .addColumn('request_truncated', 'integer', (c) => c.notNull().defaultTo(0))
    .addColumn('response_body', 'text')
    .addColumn('response_bytes', 'bigint', (c) => c.notNull().defaultTo(0))
    .addColumn('response_truncated', 'integer', (c) => c.notNull().defaultTo(0))
    .addColumn('model', 'text')
    .addColumn('upstream_model', 'text')
    .addColumn('upstream', 'text')
    .addColumn('model_unknown', 'integer', (c) => c.notNull().defaultTo(0))
    .addColumn('stream', 'integer', (c) => c.notNull().defaultTo(0))
    .addColumn('prompt_tokens', 'integer')
    .addColumn('completion_tokens', 'integer')
    .addColumn('total_tokens', 'integer')
    .addColumn('user', 'text')
    .addColumn('error', 'text')
    .addColumn('error_message', 'text')
    .addColumn('assembled', 'text')
    .addColumn('internal', 'integer', (c) => c.notNull().defaultTo(0))
    .$call((t) =>
      isPostgres(db)
        ? t.addColumn('rowid', 'bigint', (c) => c.generatedAlwaysAsIdentity().notNull().unique())
        : t,
    )
    .execute();
  await db.schema
    .createIndex('exchanges_started_at')
    .ifNotExists()
    .on('exchanges')
    .column('started_at')
    .execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.dropTable('exchanges').ifExists().execute();
}
