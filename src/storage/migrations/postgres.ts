import { type Kysely, type RawBuilder, sql } from 'kysely';

/**
 * The PostgreSQL side of migrations whose SQL cannot be shared with SQLite.
 *
 * 0002 (full-text search): where SQLite keeps a contentless FTS5 table filled after the fact, PostgreSQL
 * has an expression GIN index over a tsvector of the request body and the response text (a stream's
 * reassembled content and tool calls, else the body). `oai_proxy_search_vector` never raises: a row must
 * never be refused because of its text (an over-long or odd body is indexed in part instead).
 */

/** 0002's search vector (until 0008): the request and the response text in one tsvector. */
const SEARCH_VECTOR_0002 = sql`(req text, resp text, asm text) returns tsvector language plpgsql as $$
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
    end $$`;

export async function up0002(db: Kysely<any>): Promise<void> {
  await sql`create or replace function oai_proxy_search_vector ${SEARCH_VECTOR_0002} immutable parallel safe`.execute(
    db,
  );
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

/**
 * 0008: a JSON body's escapes decoded before it is tokenised (see 0008-search-text-unescaped.ts). A body
 * with a backslash that parses as JSON is read through jsonb: its strings decoded, with its keys and
 * numbers; anything else as text, as before. Still never raises (an odd body is indexed in part).
 */
export async function up0008(db: Kysely<any>): Promise<void> {
  await sql`create or replace function oai_proxy_search_text_vector(t text) returns tsvector
    language plpgsql immutable parallel unsafe cost 2500 as $$
    begin
      if t is null or t = '' then
        return ''::tsvector;
      end if;
      if position('\\' in t) > 0 and t ~ '^\\s*[\\[{]' then
        begin
          return jsonb_to_tsvector('simple', t::jsonb, '["string", "numeric", "boolean", "key"]');
        exception when others then
          null; -- not JSON after all: read it as text
        end;
      end if;
      begin
        return to_tsvector('simple', t);
      exception when others then
        return to_tsvector('simple', left(t, 100000));
      end;
    end $$`.execute(db);
  await sql`create or replace function oai_proxy_search_vector ${searchVector(sql``)}`.execute(db);
  // The index holds vectors of the old definition: build it again with the new one.
  await sql`reindex index exchanges_search`.execute(db);
}

/**
 * 0008's `oai_proxy_search_vector`; `more` is added to a reassembled stream's answer (0011: the other
 * choices of an `n` > 1 stream).
 */
function searchVector(more: RawBuilder<unknown>, body = sql`oai_proxy_search_text_vector`) {
  return sql`(req text, resp text, asm text)
    returns tsvector language plpgsql immutable parallel unsafe cost 5000 as $$
    declare
      answer tsvector;
    begin
      if asm is not null then
        begin
          answer := to_tsvector('simple', coalesce(asm::jsonb ->> 'content', ''))
            || oai_proxy_search_text_vector((asm::jsonb -> 'tool_calls')::text)${more};
        exception when others then
          answer := ${body}(resp);
        end;
      else
        answer := ${body}(resp);
      end if;
      return oai_proxy_search_text_vector(req) || answer;
    exception when others then
      return to_tsvector('simple', left(coalesce(req, '') || ' ' || coalesce(resp, ''), 100000));
    end $$`;
}

/**
 * 0011: an `n` > 1 stream's reassembled message lists every choice under `choices`; their text is
 * searched too. Rows recorded before have no `choices`, so their vectors do not change: no reindex.
 */
export async function up0011(db: Kysely<any>): Promise<void> {
  await sql`create or replace function oai_proxy_search_vector ${searchVector(CHOICES_0011)}`.execute(db);
}

export async function down0011(db: Kysely<any>): Promise<void> {
  await sql`create or replace function oai_proxy_search_vector ${searchVector(sql``)}`.execute(db);
}

/** 0011's addition to the reassembled answer: every choice of an `n` > 1 stream. */
const CHOICES_0011 = sql`
            || oai_proxy_search_text_vector((asm::jsonb -> 'choices')::text)`;

/**
 * 0012: an embeddings answer is indexed without its vectors (see search-index.ts, EMBEDDINGS_ANSWER).
 * Told by its content, as the function has no path: a top-level JSON object holding the `"embedding`
 * text (`position` first, so a chat answer is never parsed for this) whose `data[0].object` is
 * "embedding" (OpenAI's list) or with an `embeddings` array or an `embedding` (Ollama, llama.cpp), or
 * llama.cpp's array of `{index, embedding}` (nothing left to index).
 * Rows recorded before keep their vectors' words in the index (no reindex: a rebuild of a large table
 * at start-up for words nobody searches for); they go with `logs prune`.
 */
export async function up0012(db: Kysely<any>): Promise<void> {
  await sql`create or replace function oai_proxy_search_response_vector(t text) returns tsvector
    language plpgsql immutable parallel unsafe cost 2500 as $$
    declare
      j jsonb;
    begin
      if t is not null and position('"embedding' in t) > 0 and t ~ '^\\s*[\\[{]' then
        begin
          j := t::jsonb;
          if jsonb_typeof(j) = 'array' then
            if jsonb_typeof(j -> 0 -> 'embedding') = 'array' then
              return ''::tsvector;
            end if;
          elsif (j -> 'data' -> 0 ->> 'object') = 'embedding' or jsonb_typeof(j -> 'embeddings') = 'array'
            or jsonb_typeof(j -> 'embedding') in ('array', 'string') then
            return oai_proxy_search_text_vector((j - 'data' - 'embeddings' - 'embedding')::text);
          end if;
        exception when others then
          null; -- not JSON after all: read it as text
        end;
      end if;
      return oai_proxy_search_text_vector(t);
    end $$`.execute(db);
  await sql`create or replace function oai_proxy_search_vector ${searchVector(
    CHOICES_0011,
    sql`oai_proxy_search_response_vector`,
  )}`.execute(db);
}

export async function down0012(db: Kysely<any>): Promise<void> {
  await sql`create or replace function oai_proxy_search_vector ${searchVector(CHOICES_0011)}`.execute(db);
  await sql`drop function if exists oai_proxy_search_response_vector(text)`.execute(db);
}

export async function down0008(db: Kysely<any>): Promise<void> {
  await sql`create or replace function oai_proxy_search_vector ${SEARCH_VECTOR_0002}
    immutable parallel unsafe cost 5000`.execute(db);
  await sql`drop function if exists oai_proxy_search_text_vector(text)`.execute(db);
  await sql`reindex index exchanges_search`.execute(db);
}
