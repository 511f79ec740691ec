import { type Expression, type ExpressionBuilder, type SelectQueryBuilder, type SqlBool, sql } from 'kysely';
import { OaiProxyError } from '../errors.js';
import type { SqliteHandle } from './database.js';
import { resetSearchIndex, searchIndexLag } from './search-index.js';
import {
  addToStatsSums,
  HOUR_MS,
  hasRollups,
  IS_ERROR_SQL,
  newStatsSums,
  readRollups,
  STATS_KEY_SQL,
  STREAM_TTFB_SQL,
  type StatsSums,
} from './stats-rollup.js';
import type { Storage } from './storage.js';
import type { DatabaseSchema, ExchangesTable } from './tables.js';

/** Which rows a `logs` query selects. Every field is optional; all given ones must hold. */
export interface LogFilter {
  /** Requested or actual (upstream) model. */
  model?: string;
  /** Epoch ms, inclusive. */
  since?: number;
  /** Epoch ms, exclusive. */
  until?: number;
  /** Any of these (OR). */
  status?: StatusFilter[];
  pathPrefix?: string;
  user?: string;
  stream?: boolean;
  /** Full-text search over request and response bodies (a phrase). */
  grep?: string;
  /** Include rows the proxy made for itself (internal = 1); hidden by default. */
  internal?: boolean;
  /** Only requests for a model the registry does not know, let through (model_unknown = 1). */
  modelUnknown?: boolean;
}

export type StatusFilter =
  | { kind: 'exact'; status: number }
  | { kind: 'range'; min: number; max: number }
  /** No complete upstream answer: unreachable, timeout, reset, aborted, cut at shutdown. */
  | { kind: 'error' };

/** Error kinds that mean the upstream gave no complete answer. */
export const NO_ANSWER_ERRORS = [
  'upstream_unreachable',
  'upstream_timeout',
  'upstream_reset',
  'upstream_stream_error',
  'client_aborted',
  'client_body_timeout',
  'proxy_shutdown',
];

/** The columns listings show (no bodies, no headers). */
export const SUMMARY_COLUMNS = [
  'id',
  'started_at',
  'method',
  'path',
  'status',
  'model',
  'upstream_model',
  'upstream',
  'stream',
  'duration_ms',
  'ttfb_ms',
  'prompt_tokens',
  'completion_tokens',
  'total_tokens',
  'user',
  'error',
  'error_message',
  'internal',
  'model_unknown',
] as const satisfies readonly (keyof ExchangesTable)[];

/** One exchange as listings see it, plus its rowid (insertion order). */
export type ExchangeSummaryRow = Pick<ExchangesTable, (typeof SUMMARY_COLUMNS)[number]> & { rowid: number };

type Eb = ExpressionBuilder<DatabaseSchema, 'exchanges'>;

/** The WHERE clause for a filter (`kind` picks the full-text search of that database). */
export function filterExpression(
  filter: LogFilter,
  kind: Storage['kind'] = 'sqlite',
): (eb: Eb) => Expression<SqlBool> {
  return (eb) => {
    const all: Expression<SqlBool>[] = [];
    if (!filter.internal) all.push(eb('internal', '=', 0));
    if (filter.since !== undefined) all.push(eb('started_at', '>=', filter.since));
    if (filter.until !== undefined) all.push(eb('started_at', '<', filter.until));
    if (filter.model !== undefined)
      all.push(eb.or([eb('model', '=', filter.model), eb('upstream_model', '=', filter.model)]));
    if (filter.status?.length) {
      all.push(
        eb.or(
          filter.status.map((s) =>
            s.kind === 'exact'
              ? eb('status', '=', s.status)
              : s.kind === 'range'
                ? eb.and([eb('status', '>=', s.min), eb('status', '<=', s.max)])
                : eb('error', 'in', NO_ANSWER_ERRORS),
          ),
        ),
      );
    }
    if (filter.pathPrefix !== undefined)
      all.push(eb(sql`substr(path, 1, ${filter.pathPrefix.length})`, '=', filter.pathPrefix));
    if (filter.user !== undefined) all.push(eb('user', '=', filter.user));
    if (filter.stream !== undefined) all.push(eb('stream', '=', filter.stream ? 1 : 0));
    if (filter.modelUnknown) all.push(eb('model_unknown', '=', 1));
    if (filter.grep !== undefined)
      all.push(
        kind === 'postgres'
          ? // The very expression migration 0002 indexes (GIN), so the index answers it.
            sql<SqlBool>`oai_proxy_search_vector(request_body, response_body, assembled) @@ ${pgTsQuery(filter.grep)}`
          : eb(
              sql`exchanges.rowid`,
              'in',
              sql`(select rowid from exchanges_fts where exchanges_fts match ${ftsPhrase(filter.grep)})`,
            ),
      );
    return eb.and(all);
  };
}

/**
 * The PostgreSQL tsquery for `--grep TEXT`, with FTS5's semantics: the words as one phrase
 * (`phraseto_tsquery`), a trailing `*` making the last word a prefix. The `simple`
 * configuration matches the index: lower-cased words, no stemming, no stop words.
 *
 * The prefix is the last word as typed (lower-cased), or as the parser cuts it: the parser reads
 * `gpt-4` as `gpt` and the signed number `-4`, `bob@ex` as `bob` and `ex`, which miss the indexed
 * words `gpt-4o` and `bob@example.com`; the word as typed, cast to a tsquery (no parser), matches them.
 */
export function pgTsQuery(text: string) {
  const trimmed = text.trim();
  if (!trimmed.endsWith('*')) return sql`phraseto_tsquery('simple', ${trimmed})`;
  const body = trimmed.slice(0, -1).trimEnd();
  const cut = body.search(/\S+$/);
  const head = cut > 0 ? body.slice(0, cut).trim() : '';
  const last = cut >= 0 ? body.slice(cut) : '';
  if (last === '') return sql`phraseto_tsquery('simple', ${head})`;
  const quoted = `'${last.replace(/\\/g, '\\\\').replace(/'/g, "''")}':*`;
  const parsed = sql`to_tsquery('simple', ${quoted})`;
  // A tsquery word is at most 2,046 bytes; the index holds no longer word anyway.
  const prefix = Buffer.byteLength(quoted) > 2000 ? parsed : sql`(lower(${quoted})::tsquery || ${parsed})`;
  return head === '' ? prefix : sql`(phraseto_tsquery('simple', ${head}) <-> ${prefix})`;
}

/** The FTS5 query for `--grep TEXT`: the text as one phrase; a trailing `*` makes its last word a prefix. */
export function ftsPhrase(text: string): string {
  const trimmed = text.trim();
  const prefix = trimmed.endsWith('*');
  const body = (prefix ? trimmed.slice(0, -1) : trimmed).replace(/"/g, '""');
  return `"${body}"${prefix ? '*' : ''}`;
}

export interface ListOptions {
  /** 0 = no limit. */
  limit: number;
  order: 'asc' | 'desc';
}

/** `--grep` newest first with a limit on SQLite: read from the full-text index backwards (listGrepNewest). */
function readsGrepNewest(handle: Storage, filter: LogFilter, options: ListOptions): boolean {
  return (
    handle.kind === 'sqlite' && filter.grep !== undefined && options.order === 'desc' && options.limit > 0
  );
}

/** Matching exchanges by start time, newest first unless `order` is asc. */
export async function listExchanges(
  handle: Storage,
  filter: LogFilter,
  options: ListOptions,
): Promise<ExchangeSummaryRow[]> {
  checkSearchable(handle, filter);
  if (readsGrepNewest(handle, filter, options)) {
    return listGrepNewest(handle, filter, options.limit);
  }
  let q = summarySelect(handle.db.selectFrom('exchanges'))
    .where(filterExpression(filter, handle.kind))
    .orderBy('started_at', options.order)
    .orderBy('id', options.order);
  if (options.limit > 0) q = q.limit(options.limit);
  return q.execute();
}

/**
 * What `listExchanges` returns, one row at a time with bounded memory (`logs --json --limit 0` over a
 * million rows held every row and then one string of them all: more than a string can hold), read in
 * pages by keyset (`pagedRows`); `--grep` newest first on SQLite stops after `limit` matches anyway, so it
 * is read as `listExchanges` reads it.
 */
export async function* iterateExchanges(
  handle: Storage,
  filter: LogFilter,
  options: ListOptions,
): AsyncIterableIterator<ExchangeSummaryRow> {
  checkSearchable(handle, filter);
  if (readsGrepNewest(handle, filter, options)) {
    yield* await listGrepNewest(handle, filter, options.limit);
    return;
  }
  let left = options.limit > 0 ? options.limit : Number.POSITIVE_INFINITY;
  const pageSize = Math.min(256, left);
  for await (const row of pagedRows(handle, filter, options.order, summarySelect, pageSize)) {
    yield row;
    if (--left <= 0) return;
  }
}

/** How far out of end-time order rows may be inserted (batches, slow writers), with room to spare. */
const INSERT_ORDER_SLACK_MS = 60_000;

/**
 * `--grep` newest first on SQLite, without materialising every match (a common word matches most rows:
 * 1.6 s on a million rows). Full-text matches are walked from the newest rowid down, a page at a time, and
 * checked against the other filters. A row is inserted when its exchange ends, so rowid order is end-time
 * order (within INSERT_ORDER_SLACK_MS); once the walk reaches rows that ended before the oldest start time
 * among the `limit` newest matches found so far (or before --since), no older row can start later.
 */
async function listGrepNewest(
  handle: Storage,
  filter: LogFilter,
  limit: number,
): Promise<ExchangeSummaryRow[]> {
  const sqlite = sqliteOf(handle);
  const phrase = ftsPhrase(filter.grep!);
  const page = sqlite
    .prepare(
      'select rowid from exchanges_fts where exchanges_fts match ? and rowid < ? order by rowid desc limit ?',
    )
    .pluck();
  const endOf = sqlite.prepare('select started_at + duration_ms from exchanges where rowid = ?').pluck();
  const rest: LogFilter = { ...filter, grep: undefined };
  const newestFirst = (a: ExchangeSummaryRow, b: ExchangeSummaryRow) =>
    b.started_at - a.started_at || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0);
  let found: ExchangeSummaryRow[] = [];
  let cursor = Number.MAX_SAFE_INTEGER;
  let size = 256;
  for (;;) {
    const rowids = page.all(phrase, cursor, size) as number[];
    if (rowids.length === 0) break;
    cursor = rowids[rowids.length - 1];
    size = Math.min(size * 2, 4096);
    const rows = await handle.db
      .selectFrom('exchanges')
      .select([...SUMMARY_COLUMNS, sql<number>`exchanges.rowid`.as('rowid')])
      .where(filterExpression(rest))
      .where(sql`exchanges.rowid`, 'in', rowids)
      .execute();
    if (rows.length > 0) {
      found = found.concat(rows).sort(newestFirst);
      if (found.length > limit) found.length = limit;
    }
    const end = endOf.get(cursor) as number | undefined;
    if (end === undefined) continue;
    const horizon = found.length >= limit ? found[limit - 1].started_at : rest.since;
    if (horizon !== undefined && end < horizon - INSERT_ORDER_SLACK_MS) break;
  }
  return found;
}

/** Number of matching exchanges. */
export async function countExchanges(handle: Storage, filter: LogFilter): Promise<number> {
  checkSearchable(handle, filter);
  const row = await handle.db
    .selectFrom('exchanges')
    .select((eb) => eb.fn.countAll<number>().as('n'))
    .where(filterExpression(filter, handle.kind))
    .executeTakeFirstOrThrow();
  return Number(row.n);
}

/** Every matching exchange with all its columns, in start-time order, read in pages (`pagedRows`). */
export function streamExchanges(
  handle: Storage,
  filter: LogFilter,
  order: 'asc' | 'desc',
): AsyncIterableIterator<ExchangesTable> {
  checkSearchable(handle, filter);
  return pagedRows(handle, filter, order, (q) => q.selectAll());
}

/** `selectFrom('exchanges')` before any column is picked. */
// biome-ignore lint/complexity/noBannedTypes: Kysely's own type for "no column selected yet".
type FromExchanges = SelectQueryBuilder<DatabaseSchema, 'exchanges', {}>;

/** Names of the temporary tables `pagedRows` gathers `--grep` matches in (one per iteration). */
let grepTableSeq = 0;

/**
 * Matching rows in pages of `pageSize` read by keyset (`(started_at, id)` past the last row of the previous
 * page), each page its own short query, so memory stays bounded and nothing holds the database while the
 * reader waits: on SQLite one statement streamed to a paused pipe (`logs --json --limit 0 | less`, an
 * export into a slow upload) kept its read snapshot open, and the WAL grew by everything `serve` wrote
 * meanwhile, since no checkpoint can pass an open snapshot. PostgreSQL streams only through pg-cursor
 * anyway. `select` picks the columns: every one (export), or a listing's.
 *
 * SQLite `--grep`: the full-text matches are gathered once into a temporary table (rowid and id, so a
 * rowid reused after a prune is not taken for a match) that each page looks rows up in; the FTS5
 * subquery itself would be evaluated again for every page (minutes for a word in most of 200,000 rows).
 */
async function* pagedRows<O extends { started_at: number; id: string }>(
  handle: Storage,
  filter: LogFilter,
  order: 'asc' | 'desc',
  select: (q: FromExchanges) => SelectQueryBuilder<DatabaseSchema, 'exchanges', O>,
  pageSize = 256,
): AsyncIterableIterator<O> {
  const past = sql.raw(order === 'asc' ? '>' : '<');
  let matches = filterExpression(filter, handle.kind);
  let grepTable: string | null = null;
  if (handle.kind === 'sqlite' && filter.grep !== undefined) {
    const sqlite = sqliteOf(handle);
    grepTable = `oai_proxy_grep_${++grepTableSeq}`;
    sqlite.exec(`create temp table ${grepTable} (r integer primary key, id text not null)`);
    sqlite
      .prepare(
        `insert into temp.${grepTable} select exchanges.rowid, exchanges.id from exchanges_fts
         join exchanges on exchanges.rowid = exchanges_fts.rowid where exchanges_fts match ?`,
      )
      .run(ftsPhrase(filter.grep));
    const rest = filterExpression({ ...filter, grep: undefined });
    const table = sql.raw(`temp.${grepTable}`);
    matches = (eb) =>
      eb.and([
        rest(eb),
        sql<SqlBool>`exists (select 1 from ${table} g where g.r = exchanges.rowid and g.id = exchanges.id)`,
      ]);
  }
  try {
    let after: { started_at: number; id: string } | null = null;
    for (;;) {
      let q = select(handle.db.selectFrom('exchanges')).where(matches);
      if (after)
        q = q.where(
          handle.kind === 'postgres'
            ? sql<SqlBool>`(started_at, id) ${past} (${after.started_at}, ${after.id})`
            : // Spelled out, SQLite seeks the time index to the page (a row value it would not).
              sql<SqlBool>`started_at ${past}= ${after.started_at} and (started_at ${past} ${after.started_at} or id ${past} ${after.id})`,
        );
      const page = (await q
        .orderBy('started_at', order)
        .orderBy('id', order)
        .limit(pageSize)
        .execute()) as O[];
      yield* page;
      if (page.length < pageSize) return;
      const last = page[page.length - 1];
      after = { started_at: last.started_at, id: last.id };
    }
  } finally {
    if (grepTable !== null && handle.sqlite?.open)
      handle.sqlite.exec(`drop table if exists temp.${grepTable}`);
  }
}

/** A listing's columns, with the rowid. */
const summarySelect = (q: FromExchanges) =>
  q.select([...SUMMARY_COLUMNS, sql<number>`exchanges.rowid`.as('rowid')]);

/**
 * Matching exchanges recorded after `rowid` (insertion order), up to rowid `upTo`, at most `limit`; with
 * `skipEndedBefore`, none up to its rowid that ended before its time.
 */
export async function exchangesAfter(
  handle: Storage,
  filter: LogFilter,
  rowid: number,
  options: { upTo?: number; limit?: number; skipEndedBefore?: { upTo: number; endedAt: number } } = {},
): Promise<ExchangeSummaryRow[]> {
  let q = handle.db
    .selectFrom('exchanges')
    .select([...SUMMARY_COLUMNS, sql<number>`exchanges.rowid`.as('rowid')])
    .where(sql<SqlBool>`exchanges.rowid > ${rowid}`);
  if (options.upTo !== undefined) q = q.where(sql<SqlBool>`exchanges.rowid <= ${options.upTo}`);
  const skip = options.skipEndedBefore;
  if (skip)
    q = q.where(
      sql<SqlBool>`(exchanges.rowid > ${skip.upTo} or exchanges.started_at + exchanges.duration_ms >= ${skip.endedAt})`,
    );
  return q
    .where(filterExpression(filter, handle.kind))
    .orderBy(sql`exchanges.rowid`)
    .limit(options.limit ?? 1000)
    .execute();
}

/** `logs --follow`: which rows are already there, and the matching rows recorded since the last call. */
export interface ExchangeFollower {
  /** True for a row recorded before following began (the backlog is printed from these). */
  isBacklog(row: ExchangeSummaryRow): boolean;
  /** Matching rows that became visible since the last call, oldest first; [] when there are none yet. */
  next(): Promise<ExchangeSummaryRow[]>;
  /** Where it is, to go on following in the file that replaced this one (SQLite; see `resume`). */
  position(): FollowPosition;
}

/** What a follower has seen: the latest end time among the rows it passed, and the ids it returned last. */
export interface FollowPosition {
  endedAt: number;
  ids: string[];
}

export interface FollowOptions {
  /**
   * Follow a database file that replaced the one `position` comes from (SQLite): the rows already in it
   * count as new when they ended at or after `position.endedAt` (a new file `serve` created), not when
   * they ended before (a backup put in place), and ids already returned are not returned again.
   */
  resume?: FollowPosition;
}

/** Start following the matching exchanges recorded from now on. */
export async function createExchangeFollower(
  handle: Storage,
  filter: LogFilter,
  options: FollowOptions = {},
): Promise<ExchangeFollower> {
  return handle.kind === 'postgres' ? pgFollower(handle, filter) : sqliteFollower(handle, filter, options);
}

/** How many ids of rows it has returned or passed the SQLite follower remembers (see sqliteFollower). */
const SQLITE_FOLLOW_SEEN = 2000;
const SQLITE_FOLLOW_PAGE = 1000;

/**
 * SQLite has one writer at a time, so rowids become visible in increasing order: the follower remembers
 * the highest rowid it has passed and the id of the row there (the mark). But exchanges has no
 * AUTOINCREMENT, so a new row gets max(rowid) + 1: once `logs prune` deleted the rows with the highest
 * rowids (a long stream is recorded last and started first), new rows take rowids at or below the mark,
 * and counting from the mark would skip them, or counting from 0 print the kept rows again. So each poll
 * checks that the mark's row is still there (when it is also the newest row, that is the whole poll).
 * When it is not, kept rows are told from new ones by id: a new row's rowid is above that of every row
 * kept from before, so the new rows are those above the highest row whose id the follower remembers
 * (the last SQLITE_FOLLOW_SEEN rows it returned or passed), and none of those is returned twice. When
 * none of them is left (every row was pruned), every row is new. VACUUM renumbering rowids is the same.
 * With --grep only rows already in the search index can be judged, so it waits for the indexer.
 */
async function sqliteFollower(
  handle: Storage,
  filter: LogFilter,
  options: FollowOptions,
): Promise<ExchangeFollower> {
  const sqlite = sqliteOf(handle);
  type Mark = { rowid: number; id: string; ended: number };
  const newest = sqlite.prepare(
    'select rowid, id, started_at + duration_ms as ended from exchanges where rowid <= ? order by rowid desc limit 1',
  );
  const idAt = sqlite.prepare('select id from exchanges where rowid = ?').pluck();
  const highestOf = sqlite
    .prepare('select coalesce(max(rowid), 0) from exchanges where id in (select value from json_each(?))')
    .pluck();
  // Rows above the search index's mark cannot be judged by --grep yet.
  const ceiling = () =>
    filter.grep !== undefined ? searchIndexLag(sqlite).indexedRowid : Number.MAX_SAFE_INTEGER;
  const seen = new Set<string>();
  const remember = (id: string) => {
    seen.delete(id);
    seen.add(id);
    if (seen.size > SQLITE_FOLLOW_SEEN) seen.delete(seen.values().next().value as string);
  };
  let mark = (newest.get(ceiling()) as Mark | undefined) ?? null;
  let endedAt = mark?.ended ?? 0;
  const start = mark?.rowid ?? 0;
  // Resuming in a replacing file: its rows up to `catchUp.upTo` are judged by end time.
  let catchUp: { upTo: number; endedAt: number } | null = null;
  if (options.resume) {
    for (const id of options.resume.ids) remember(id);
    endedAt = Math.max(endedAt, options.resume.endedAt);
    if (mark) catchUp = { upTo: mark.rowid, endedAt: options.resume.endedAt };
    mark = null;
  }
  if (mark) remember(mark.id);
  return {
    isBacklog: (row) => row.rowid <= start,
    position: () => ({ endedAt, ids: [...seen] }),
    async next() {
      const top = newest.get(ceiling()) as Mark | undefined;
      if (top === undefined) {
        mark = null;
        return [];
      }
      endedAt = Math.max(endedAt, top.ended);
      if (mark && top.rowid === mark.rowid && top.id === mark.id) return [];
      const from =
        mark === null
          ? 0
          : idAt.get(mark.rowid) === mark.id
            ? mark.rowid
            : (highestOf.get(JSON.stringify([...seen])) as number);
      const page = await exchangesAfter(handle, filter, from, {
        upTo: top.rowid,
        limit: SQLITE_FOLLOW_PAGE,
        skipEndedBefore: catchUp ?? undefined,
      });
      const last = page[page.length - 1];
      mark =
        page.length === SQLITE_FOLLOW_PAGE
          ? { rowid: last.rowid, id: last.id, ended: last.started_at + last.duration_ms }
          : top;
      if (catchUp && mark.rowid >= catchUp.upTo) catchUp = null;
      const rows = page.filter((r) => !seen.has(r.id));
      for (const r of rows) remember(r.id);
      remember(mark.id);
      return rows;
    },
  };
}

/** How long a missing rowid is waited for before it counts as never coming (see pgFollower). */
const PG_GAP_WAIT_MS = 60_000;
/** At most this many missing rowids are waited for at once (a huge jump is a restore, not a writer). */
const PG_GAP_MAX = 10_000;
const PG_FOLLOW_PAGE = 1000;

/**
 * PostgreSQL: several writers (every `serve` instance) insert concurrently, and an identity value is taken
 * when the INSERT runs, not when it commits, so rowid 11 can become visible after rowid 12: remembering
 * only the highest rowid seen would skip 11 for ever. So the follower also remembers the holes below it:
 * every rowid between the previous highest and a newly seen one is "pending", asked for again (by the
 * unique rowid index) on each poll until it shows up or `PG_GAP_WAIT_MS` has passed. A hole can be
 * permanent (a rolled-back batch, or the writer's ON CONFLICT DO NOTHING consumed a value), hence the
 * expiry; the writers insert in single autocommit statements bounded by statement_timeout (30 s), so a
 * row that commits at all does so well within a minute of taking its rowid. New rows are fetched
 * unfiltered with the filter as a column, so a hole is told apart from a row the filter rejects; no row
 * is printed twice, since a rowid leaves "pending" (or is passed) as soon as it has been seen.
 */
async function pgFollower(handle: Storage, filter: LogFilter): Promise<ExchangeFollower> {
  const pending = new Map<number, number>();
  const noteGaps = (from: number, to: number, now: number) => {
    for (let v = Math.max(from + 1, to - PG_GAP_MAX); v < to; v++) pending.set(v, now);
  };
  // The holes among the latest rowids may be rows still being committed: they are not backlog.
  const recent = await handle.db
    .selectFrom('exchanges')
    .select(sql<number>`rowid`.as('rowid'))
    .orderBy(sql`rowid`, 'desc')
    .limit(PG_FOLLOW_PAGE)
    .execute();
  const now = Date.now();
  for (let i = 1; i < recent.length; i++) noteGaps(recent[i].rowid, recent[i - 1].rowid, now);
  let high = recent.length > 0 ? recent[0].rowid : 0;
  const start = high;
  const matches = filterExpression(filter, handle.kind);

  const page = async () => {
    const gaps = [...pending.keys()];
    return handle.db
      .selectFrom('exchanges')
      .select((eb) => [
        ...SUMMARY_COLUMNS,
        sql<number>`exchanges.rowid`.as('rowid'),
        sql<boolean>`${matches(eb)}`.as('matched'),
      ])
      .where(
        gaps.length > 0
          ? sql<SqlBool>`(exchanges.rowid > ${high} or exchanges.rowid = any(${gaps}::bigint[]))`
          : sql<SqlBool>`exchanges.rowid > ${high}`,
      )
      .orderBy(sql`exchanges.rowid`)
      .limit(PG_FOLLOW_PAGE)
      .execute();
  };

  return {
    isBacklog: (row) => row.rowid <= start && !pending.has(row.rowid),
    // Identity values are never reused and a server is not replaced under a connection: never resumed.
    position: () => ({ endedAt: 0, ids: [] }),
    async next() {
      const out: ExchangeSummaryRow[] = [];
      for (;;) {
        const rows = await page();
        const now = Date.now();
        for (const { matched, ...row } of rows) {
          if (row.rowid > high) {
            noteGaps(high, row.rowid, now);
            high = row.rowid;
          } else pending.delete(row.rowid);
          if (matched) out.push(row);
        }
        for (const [v, since] of pending) if (now - since > PG_GAP_WAIT_MS) pending.delete(v);
        if (rows.length < PG_FOLLOW_PAGE) return out;
      }
    },
  };
}

/**
 * Exchanges whose id is `idOrPrefix` or starts with it (case-insensitive), at most `limit`. An exact id
 * comes back alone.
 */
export async function findExchanges(
  handle: Storage,
  idOrPrefix: string,
  limit = 10,
): Promise<ExchangesTable[]> {
  const p = idOrPrefix.trim().toLowerCase();
  const exact = await handle.db.selectFrom('exchanges').selectAll().where('id', '=', p).execute();
  if (exact.length > 0 || p === '') return exact;
  if (!/^[0-9a-z]+$/.test(p)) return [];
  // Ids use 0-9 a-z only: a range scan on the primary key up to the next prefix ("ab" → "ac", "az" → "b").
  // Not `p + '~'`: under a PostgreSQL locale collation punctuation may sort before letters.
  const upper = nextPrefix(p);
  let q = handle.db.selectFrom('exchanges').selectAll().where('id', '>=', p);
  if (upper !== null) q = q.where('id', '<', upper);
  return q.orderBy('id').limit(limit).execute();
}

const ID_ALPHABET = '0123456789abcdefghijklmnopqrstuvwxyz';

/** The smallest [0-9a-z] string above every string starting with `p`; null when there is none ("zz"). */
export function nextPrefix(p: string): string | null {
  for (let i = p.length - 1; i >= 0; i--) {
    const at = ID_ALPHABET.indexOf(p[i]);
    if (at < ID_ALPHABET.length - 1) return p.slice(0, i) + ID_ALPHABET[at + 1];
  }
  return null;
}

/** What `logs stats` groups by. */
export type StatsKey = 'model' | 'path' | 'status' | 'day' | 'user';

/** One group of `logs stats`. Latencies in ms, nearest-rank percentiles; null when there is no sample. */
export interface StatsGroup {
  key: string;
  requests: number;
  errors: number;
  error_rate: number;
  prompt_tokens: number;
  completion_tokens: number;
  p50_ms: number | null;
  p95_ms: number | null;
  p99_ms: number | null;
  ttfb_p50_ms: number | null;
  ttfb_p95_ms: number | null;
}

/** The per-row numbers stats need (all in the time covering index, so no body is read). */
export interface StatsSample {
  started_at: number;
  model: string | null;
  path: string;
  status: number | null;
  error: string | null;
  user: string | null;
  duration_ms: number;
  ttfb_ms: number | null;
  stream: number;
  prompt_tokens: number | null;
  completion_tokens: number | null;
}

/** Aggregate matching exchanges into groups by `by`. */
export async function exchangeStats(handle: Storage, filter: LogFilter, by: StatsKey): Promise<StatsGroup[]> {
  checkSearchable(handle, filter);
  if (handle.kind === 'postgres') return pgStats(handle, filter, by);
  const sqlite = sqliteOf(handle);
  // One read transaction: the rollups and the rows around them come from the same snapshot.
  return sqlite.transaction(() => {
    const groups = new Map<string, StatsAccumulator>();
    const ranges =
      rollupServes(filter) && hasRollups(sqlite) ? addRollups(sqlite, filter, by, groups) : [filter];
    for (const range of ranges) addExchanges(handle, { ...filter, ...range }, by, groups);
    return finishStats(groups, by);
  })();
}

/** Rollups hold every non-internal exchange of an hour: they answer a filter on time alone. */
function rollupServes(filter: LogFilter): boolean {
  const { since, until, internal, ...rest } = filter;
  return !internal && Object.values(rest).every((v) => v === undefined);
}

/**
 * Add the rollups of the whole hours in the filter's window to `groups`; return the time ranges left
 * for the exchanges themselves (the partial hours at the edges, and hours without rollups).
 */
function addRollups(
  sqlite: SqliteHandle,
  filter: LogFilter,
  by: StatsKey,
  groups: Map<string, StatsAccumulator>,
): Pick<LogFilter, 'since' | 'until'>[] {
  const from = filter.since === undefined ? 0 : Math.ceil(filter.since / HOUR_MS) * HOUR_MS;
  const to =
    filter.until === undefined ? Number.MAX_SAFE_INTEGER : Math.floor(filter.until / HOUR_MS) * HOUR_MS;
  const ranges: Pick<LogFilter, 'since' | 'until'>[] = [];
  let cursor = filter.since;
  for (const r of readRollups(sqlite, by === 'day' ? 'model' : by, from, to)) {
    if (cursor === undefined || r.hour > cursor) ranges.push({ since: cursor, until: r.hour });
    cursor = r.hour + HOUR_MS;
    const g = accumulatorFor(groups, by === 'day' ? new Date(r.hour).toISOString().slice(0, 10) : r.key);
    g.requests += r.requests;
    g.errors += r.errors;
    g.pt += r.prompt_tokens;
    g.ct += r.completion_tokens;
    g.durationChunks.push(r.durations);
    g.ttfbChunks.push(r.ttfbs);
  }
  ranges.push({ since: cursor, until: filter.until });
  return ranges;
}

/** Add the exchanges matching `filter` to `groups`, read row by row. */
function addExchanges(
  handle: Storage,
  filter: LogFilter,
  by: StatsKey,
  groups: Map<string, StatsAccumulator>,
): void {
  if (filter.since !== undefined && filter.until !== undefined && filter.since >= filter.until) return;
  // SQLite computes each row's group key and error flag, and rows come back as plain arrays of the six
  // numbers stats need (half the time of building row objects).
  const compiled = handle.db
    .selectFrom('exchanges')
    .select([
      sql.raw<string>(STATS_KEY_SQL[by]).as('key'),
      sql.raw<number>(IS_ERROR_SQL).as('is_error'),
      'duration_ms',
      sql.raw<number | null>(STREAM_TTFB_SQL).as('ttfb'),
      sql<number>`coalesce(prompt_tokens, 0)`.as('pt'),
      sql<number>`coalesce(completion_tokens, 0)`.as('ct'),
    ])
    .where(filterExpression(filter))
    .compile();
  const rows = sqliteOf(handle)
    .prepare(compiled.sql)
    .raw(true)
    .iterate(...(compiled.parameters as unknown[])) as IterableIterator<
    [string, number, number, number | null, number, number]
  >;
  for (const [k, isError, duration, ttfb, pt, ct] of rows)
    addToStatsSums(accumulatorFor(groups, k), isError, duration, ttfb, pt, ct);
}

interface StatsAccumulator extends StatsSums {
  /** Values from rollups, added to the above when the group is finished. */
  durationChunks: Float64Array[];
  ttfbChunks: Float64Array[];
}

function accumulatorFor(groups: Map<string, StatsAccumulator>, key: string): StatsAccumulator {
  let g = groups.get(key);
  if (!g) {
    g = { ...newStatsSums(), durationChunks: [], ttfbChunks: [] };
    groups.set(key, g);
  }
  return g;
}

/** All the values of a group, sorted ascending. */
function sortedValues(values: number[], chunks: Float64Array[]): Float64Array {
  const out = new Float64Array(chunks.reduce((n, c) => n + c.length, values.length));
  out.set(values);
  let at = values.length;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out.sort();
}

function finishStats(groups: Map<string, StatsAccumulator>, by: StatsKey): StatsGroup[] {
  const out: StatsGroup[] = [];
  for (const [key, g] of groups) {
    const d = sortedValues(g.durations, g.durationChunks);
    const t = sortedValues(g.ttfbs, g.ttfbChunks);
    out.push({
      key,
      requests: g.requests,
      errors: g.errors,
      error_rate: Math.round((g.errors / g.requests) * 10000) / 10000,
      prompt_tokens: g.pt,
      completion_tokens: g.ct,
      p50_ms: percentile(d, 50),
      p95_ms: percentile(d, 95),
      p99_ms: percentile(d, 99),
      ttfb_p50_ms: percentile(t, 50),
      ttfb_p95_ms: percentile(t, 95),
    });
  }
  return sortStatsGroups(out, by);
}

/**
 * PostgreSQL aggregates on the server instead of shipping every sample. `percentile_disc` is the
 * nearest-rank percentile `computeStats` uses (the first value at or past the fraction), so both
 * databases give the same figures; keys are spelled as `statsKeyOf` spells them.
 */
async function pgStats(handle: Storage, filter: LogFilter, by: StatsKey): Promise<StatsGroup[]> {
  const key = {
    model: sql<string>`coalesce(model, '(none)')`,
    path: sql<string>`path`,
    status: sql<string>`case when status is null then coalesce(error, 'no response') else status::text end`,
    user: sql<string>`coalesce("user", '(none)')`,
    day: sql<string>`to_char(to_timestamp(started_at / 1000.0) at time zone 'UTC', 'YYYY-MM-DD')`,
  }[by];
  const pct = (p: number, column: 'duration_ms' | 'ttfb_ms') =>
    column === 'duration_ms'
      ? sql<number | null>`percentile_disc(${sql.lit(p)}) within group (order by duration_ms)`
      : sql<number | null>`percentile_disc(${sql.lit(p)}) within group (order by ttfb_ms)
          filter (where stream = 1 and ttfb_ms is not null)`;
  const rows = await handle.db
    .selectFrom('exchanges')
    .select([
      key.as('key'),
      sql<number>`count(*)`.as('requests'),
      sql<number>`count(*) filter (where error is not null or status is null or status >= 400)`.as('errors'),
      sql<number>`coalesce(sum(prompt_tokens), 0)`.as('prompt_tokens'),
      sql<number>`coalesce(sum(completion_tokens), 0)`.as('completion_tokens'),
      pct(0.5, 'duration_ms').as('p50_ms'),
      pct(0.95, 'duration_ms').as('p95_ms'),
      pct(0.99, 'duration_ms').as('p99_ms'),
      pct(0.5, 'ttfb_ms').as('ttfb_p50_ms'),
      pct(0.95, 'ttfb_ms').as('ttfb_p95_ms'),
    ])
    .where(filterExpression(filter, handle.kind))
    .groupBy(sql`1`)
    .execute();
  return sortStatsGroups(
    rows.map((r) => ({
      key: r.key,
      requests: r.requests,
      errors: r.errors,
      error_rate: Math.round((r.errors / r.requests) * 10000) / 10000,
      prompt_tokens: r.prompt_tokens,
      completion_tokens: r.completion_tokens,
      p50_ms: r.p50_ms,
      p95_ms: r.p95_ms,
      p99_ms: r.p99_ms,
      ttfb_p50_ms: r.ttfb_p50_ms,
      ttfb_p95_ms: r.ttfb_p95_ms,
    })),
    by,
  );
}

/** True when the exchange counts as an error: an HTTP error status or no complete upstream answer. */
export function isErrorSample(s: { status: number | null; error: string | null }): boolean {
  return s.error !== null || s.status === null || s.status >= 400;
}

/** Group samples and compute the figures (pure; groups sorted by key for `day`, else by requests). */
export function computeStats(samples: Iterable<StatsSample>, by: StatsKey): StatsGroup[] {
  const groups = new Map<string, StatsAccumulator>();
  for (const s of samples) {
    addToStatsSums(
      accumulatorFor(groups, statsKeyOf(s, by)),
      isErrorSample(s) ? 1 : 0,
      s.duration_ms,
      s.stream ? s.ttfb_ms : null,
      s.prompt_tokens ?? 0,
      s.completion_tokens ?? 0,
    );
  }
  return finishStats(groups, by);
}

/** Groups in display order: by key for `day`, else most requests first. */
function sortStatsGroups(groups: StatsGroup[], by: StatsKey): StatsGroup[] {
  return by === 'day'
    ? groups.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))
    : groups.sort((a, b) => b.requests - a.requests || (a.key < b.key ? -1 : 1));
}

/** Nearest-rank percentile of ascending `sorted`: the smallest value with at least p% of samples ≤ it. */
export function percentile(sorted: ArrayLike<number>, p: number): number | null {
  if (sorted.length === 0) return null;
  const rank = Math.max(1, Math.ceil((p / 100) * sorted.length));
  return sorted[rank - 1];
}

function statsKeyOf(s: StatsSample, by: StatsKey): string {
  switch (by) {
    case 'model':
      return s.model ?? '(none)';
    case 'path':
      return s.path;
    case 'status':
      return s.status === null ? (s.error ?? 'no response') : String(s.status);
    case 'user':
      return s.user ?? '(none)';
    case 'day':
      return new Date(s.started_at).toISOString().slice(0, 10);
  }
}

export interface PruneOptions {
  /** Delete exchanges that started before this epoch ms. */
  before: number;
  dryRun?: boolean;
  /** Rewrite the file afterwards to give the space back to the filesystem. */
  vacuum?: boolean;
  /** Rows per delete transaction (default 2000): a running server is never locked out for long. */
  batchSize?: number;
  /**
   * Called with the ids of each deleted batch, after its transaction committed (e.g. to delete the
   * matching vector points). A rejection stops the prune and propagates.
   */
  onPruned?: (ids: string[]) => void | Promise<void>;
}

export interface PruneResult {
  deleted: number;
  dry_run: boolean;
  /**
   * SQLite: pages released inside the file (or, with vacuum, the shrink of the file). PostgreSQL: the
   * shrink of the exchanges table with its indexes and TOAST (pg_total_relation_size). In bytes.
   */
  bytes_freed: number;
}

/** Delete exchanges older than `before` (and their full-text entries, by trigger), in batches. */
export async function pruneExchanges(handle: Storage, options: PruneOptions): Promise<PruneResult> {
  if (options.dryRun) {
    const row = await handle.db
      .selectFrom('exchanges')
      .select((eb) => eb.fn.countAll<number>().as('n'))
      .where('started_at', '<', options.before)
      .executeTakeFirstOrThrow();
    return { deleted: Number(row.n), dry_run: true, bytes_freed: 0 };
  }
  if (handle.readonly) throw new OaiProxyError('internal', 'pruneExchanges needs a writable database');
  if (handle.kind === 'postgres') return prunePostgres(handle, options);
  const sqlite = sqliteOf(handle);
  const pageSize = sqlite.pragma('page_size', { simple: true }) as number;
  const pages = () => ({
    count: sqlite.pragma('page_count', { simple: true }) as number,
    free: sqlite.pragma('freelist_count', { simple: true }) as number,
  });
  const before = pages();
  const deleted = await deleteInBatches(handle, options);
  const afterDelete = pages();
  let bytesFreed = (afterDelete.free - before.free) * pageSize;
  if (options.vacuum) {
    const fingerprint = () =>
      JSON.stringify(
        sqlite.prepare('select count(*), coalesce(sum(rowid), 0), max(rowid) from exchanges').raw().get(),
      );
    const was = fingerprint();
    sqlite.exec('vacuum');
    sqlite.pragma('wal_checkpoint(TRUNCATE)');
    // VACUUM may renumber rowids of a table without an INTEGER PRIMARY KEY; the FTS index is keyed on
    // them, so it is rebuilt (by the indexer) if that happened.
    if (fingerprint() !== was) resetSearchIndex(sqlite);
    bytesFreed = (before.count - pages().count) * pageSize;
  }
  return { deleted, dry_run: false, bytes_freed: Math.max(0, bytesFreed) };
}

/**
 * PostgreSQL: deleted rows become reusable space once (auto)vacuum has passed, but the files keep their
 * size, so without --vacuum `bytes_freed` is usually 0. `--vacuum` is `VACUUM FULL` of exchanges (the
 * counterpart of SQLite's VACUUM: the table, its TOAST and indexes rewritten compactly, the space given
 * back to the filesystem) and then ANALYZE. It holds an exclusive lock on exchanges while it runs: the
 * `serve` writers queue their rows meanwhile, as they do during SQLite's VACUUM. No statement timeout
 * applies to it (the pool's 30 s would abort a large table's rewrite half-way).
 */
async function prunePostgres(handle: Storage, options: PruneOptions): Promise<PruneResult> {
  const size = async () => {
    const { rows } = await sql<{
      bytes: number;
    }>`select pg_total_relation_size('exchanges') as bytes`.execute(handle.db);
    return Number(rows[0].bytes);
  };
  const before = await size();
  const deleted = await deleteInBatches(handle, options);
  if (options.vacuum) {
    await handle.db.connection().execute(async (conn) => {
      await sql`set statement_timeout = 0`.execute(conn);
      try {
        await sql`vacuum full exchanges`.execute(conn);
        await sql`analyze exchanges`.execute(conn);
      } finally {
        await sql`reset statement_timeout`.execute(conn);
      }
    });
  }
  return { deleted, dry_run: false, bytes_freed: Math.max(0, before - (await size())) };
}

/** Delete in transactions of `batchSize` rows (the same statement on both databases); rows deleted. */
async function deleteInBatches(handle: Storage, options: PruneOptions): Promise<number> {
  const batchSize = options.batchSize ?? 2000;
  let deleted = 0;
  for (;;) {
    const gone = await handle.db
      .deleteFrom('exchanges')
      .where(
        sql`rowid`,
        'in',
        sql`(select rowid from exchanges where started_at < ${options.before} limit ${batchSize})`,
      )
      .returning('id')
      .execute();
    if (gone.length === 0) break;
    deleted += gone.length;
    await options.onPruned?.(gone.map((r) => r.id));
  }
  return deleted;
}

/**
 * `--grep` on SQLite needs migration 0002's FTS table; a database from an older serve lacks it. On
 * PostgreSQL the search function and its index came with the first migration run (0002 was there before
 * PostgreSQL support), so there is nothing to check.
 */
function checkSearchable(handle: Storage, filter: LogFilter): void {
  if (filter.grep === undefined || handle.kind === 'postgres') return;
  const has = sqliteOf(handle).prepare("select 1 from sqlite_master where name = 'exchanges_fts'").get();
  if (!has)
    throw new OaiProxyError(
      'database_error',
      `Database ${handle.label} has no full-text index yet; run \`oai-proxy serve\` once with this version to upgrade it, then retry --grep`,
    );
}

/** The better-sqlite3 handle of an SQLite storage (for the SQLite-only fast paths). */
export function sqliteOf(handle: Storage): SqliteHandle {
  if (!handle.sqlite) throw new OaiProxyError('internal', `${handle.label} is not an SQLite database`);
  return handle.sqlite;
}
