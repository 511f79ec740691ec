import { type Kysely, sql } from 'kysely';

/**
 * The PostgreSQL side of migrations whose SQL cannot be shared with SQLite.
 *
 * 0002 (full-text search): where SQLite keeps a contentless FTS5 table filled after the fact, PostgreSQL
 * has an expression GIN index over a tsvector of the request body and the response text (a stream's
 * reassembled content and tool calls, else the body). `oai_proxy_search_vector` never raises: a row must
 * never be refused because of its text (an over-long or odd body is indexed in part instead).
 */
export async function up0002(db: Kysely<any>): Promise<void> {
  await sql`create or replace function oai_proxy_search_vector(req text, resp text, asm text)
    returns tsvector language plpgsql immutable parallel safe as $$
    declare
      t text := coalesce(req, '');
    begin
      if asm is not null then
        begin
          t := t || ' ' || coalesce(asm::jsonb ->> 'content', '') || ' ' || coalesce((asm::jsonb -> 'tool_calls')::text, '');
        exception when others then
          t := t || ' ' || coalesce(resp, '');
        end;
      else
        t := t || ' ' || coalesce(resp, '');
      end if;
      begin
        return to_tsvector('simple', t);
      exception when others then
        return to_tsvector('simple', left(t, 100000));
      end;
    end $$`.execute(db);
  await sql`create index if not exists exchanges_search on exchanges
    using gin (oai_proxy_search_vector(request_body, response_body, assembled))`.execute(db);
}

export async function down0002(db: Kysely<any>): Promise<void> {
  await sql`drop index if exists exchanges_search`.execute(db);
  await sql`drop function if exists oai_proxy_search_vector(text, text, text)`.execute(db);
}

/** 0004: however exchanges are deleted, their vector indexing state goes with them. */
export async function up0004(db: Kysely<any>): Promise<void> {
  await sql`create or replace function oai_proxy_exchange_index_delete() returns trigger
    language plpgsql as $$
    begin
      delete from exchange_index where exchange_id = old.id;
      return old;
    end $$`.execute(db);
  await sql`drop trigger if exists exchange_index_delete on exchanges`.execute(db);
  await sql`create trigger exchange_index_delete after delete on exchanges
    for each row execute function oai_proxy_exchange_index_delete()`.execute(db);
}

export async function down0004(db: Kysely<any>): Promise<void> {
  await sql`drop trigger if exists exchange_index_delete on exchanges`.execute(db);
  await sql`drop function if exists oai_proxy_exchange_index_delete()`.execute(db);
}
