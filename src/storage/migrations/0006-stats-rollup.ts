import { type Kysely, sql } from 'kysely';
import { isPostgres } from './dialect.js';

/**
 * SQLite only (PostgreSQL computes `logs stats` on the server with percentile_disc). Hourly rollups for
 * `logs stats`, so a week of a million-row database is summed from a few thousand rows instead of read
 * row by row (see `storage/stats-rollup.ts`):
 * - `exchange_stats`: per closed UTC hour, per dimension (model, path, status, user) and key, the counts
 *   and token sums plus every duration and time to first byte as a Float64 array (percentiles stay exact).
 * - `exchange_stats_dirty`: hours waiting to be (re)computed; `changed` is set again by any write to the
 *   hour while it is being computed, so a stale rollup is never stored.
 * - `exchange_stats_state.sealed_until`: hours before it are rolled up or waiting in the dirty table.
 * The triggers keep the invariant "a rollup row exists only if it matches the exchanges of its hour" for
 * every writer (a late row of a long stream, another process, `logs prune`): a change to a rolled-up hour
 * drops its rollups and queues it again.
 */
export async function up(db: Kysely<any>): Promise<void> {
  if (isPostgres(db)) return;
  await sql`create table if not exists exchange_stats (
    hour integer not null,
    dim text not null,
    key text not null,
    requests integer not null,
    errors integer not null,
    prompt_tokens integer not null,
    completion_tokens integer not null,
    durations blob not null,
    ttfbs blob not null,
    unique (hour, dim, key)
  )`.execute(db);
  await sql`create table if not exists exchange_stats_dirty (
    hour integer primary key,
    changed integer not null
  )`.execute(db);
  await sql`create table if not exists exchange_stats_state (
    id integer primary key check (id = 1),
    sealed_until integer not null
  )`.execute(db);
  await sql`insert or ignore into exchange_stats_state (id, sealed_until) values (1, 0)`.execute(db);
  for (const [event, row] of [
    ['insert', 'new'],
    ['delete', 'old'],
  ] as const) {
    const hour = sql.raw(`(${row}.started_at - ${row}.started_at % 3600000)`);
    await sql`create trigger if not exists ${sql.raw(`exchange_stats_after_${event}`)}
      after ${sql.raw(event)} on exchanges
      when ${sql.raw(row)}.started_at < (select sealed_until from exchange_stats_state where id = 1)
      begin
        insert into exchange_stats_dirty (hour, changed) values (${hour}, 1)
          on conflict (hour) do update set changed = 1;
        delete from exchange_stats where hour = ${hour};
      end`.execute(db);
  }
}

export async function down(db: Kysely<any>): Promise<void> {
  if (isPostgres(db)) return;
  await sql`drop trigger if exists exchange_stats_after_insert`.execute(db);
  await sql`drop trigger if exists exchange_stats_after_delete`.execute(db);
  await sql`drop table if exists exchange_stats_state`.execute(db);
  await sql`drop table if exists exchange_stats_dirty`.execute(db);
  await sql`drop table if exists exchange_stats`.execute(db);
}
