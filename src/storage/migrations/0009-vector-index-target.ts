import { type Kysely, sql } from 'kysely';
import { isPostgres } from './dialect.js';

/**
 * `exchange_index` keyed by (exchange_id, target): the state of an exchange per Qdrant target (URL without
 * credentials + collection), so a new collection or Qdrant instance starts from the first exchange and
 * switching back to an earlier one resumes its own progress. Rows from before this migration get target ''
 * and are claimed by the first target found to exist (see index-state-store.ts); the partial index keeps
 * that look-up free once they are claimed. SQLite cannot change a primary key: the table is rebuilt (its
 * delete trigger, on `exchanges`, is dropped and made again around the rebuild).
 */
export async function up(db: Kysely<any>): Promise<void> {
  if (isPostgres(db)) {
    await sql`alter table exchange_index add column target text not null default ''`.execute(db);
    await sql`alter table exchange_index drop constraint exchange_index_pkey`.execute(db);
    await sql`alter table exchange_index add primary key (exchange_id, target)`.execute(db);
  } else {
    await sql`drop trigger if exists exchange_index_delete`.execute(db);
    await sql`create table exchange_index_0009 (
      exchange_id text not null,
      target text not null default '',
      status text not null,
      error text,
      attempts integer not null default 1,
      updated_at bigint not null,
      primary key (exchange_id, target)
    )`.execute(db);
    await sql`insert into exchange_index_0009 (exchange_id, target, status, error, attempts, updated_at)
      select exchange_id, '', status, error, attempts, updated_at from exchange_index`.execute(db);
    await sql`drop table exchange_index`.execute(db);
    await sql`alter table exchange_index_0009 rename to exchange_index`.execute(db);
    await sql`create trigger if not exists exchange_index_delete after delete on exchanges begin
      delete from exchange_index where exchange_id = old.id;
    end`.execute(db);
  }
  await sql`create index if not exists exchange_index_unclaimed on exchange_index (exchange_id) where target = ''`.execute(
    db,
  );
}

/** Back to one row per exchange: the per-target state is dropped (`logs reindex` rebuilds it). */
export async function down(db: Kysely<any>): Promise<void> {
  await sql`drop index if exists exchange_index_unclaimed`.execute(db);
  await sql`delete from exchange_index`.execute(db);
  if (isPostgres(db)) {
    await sql`alter table exchange_index drop constraint exchange_index_pkey`.execute(db);
    await sql`alter table exchange_index drop column target`.execute(db);
    await sql`alter table exchange_index add primary key (exchange_id)`.execute(db);
    return;
  }
  await sql`drop trigger if exists exchange_index_delete`.execute(db);
  await sql`drop table exchange_index`.execute(db);
  await sql`create table exchange_index (
    exchange_id text primary key,
    status text not null,
    error text,
    attempts integer not null default 1,
    updated_at bigint not null
  )`.execute(db);
  await sql`create trigger if not exists exchange_index_delete after delete on exchanges begin
    delete from exchange_index where exchange_id = old.id;
  end`.execute(db);
}
