import { type Expression, type ExpressionBuilder, type SqlBool, sql } from 'kysely';
import { OaiProxyError } from '../errors.js';
import type { OpenDatabase } from './database.js';
import { resetSearchIndex } from './search-index.js';
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
}

export type StatusFilter =
  | { kind: 'exact'; status: number }
  | { kind: 'range'; min: number; max: number }
  /** No complete upstream answer: unreachable, timeout, reset, aborted. */
  | { kind: 'error' };

/** Error kinds that mean the upstream gave no complete answer. */
export const NO_ANSWER_ERRORS = [
  'upstream_unreachable',
  'upstream_timeout',
  'upstream_reset',
  'client_aborted',
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
] as const satisfies readonly (keyof ExchangesTable)[];

/** One exchange as listings see it, plus its rowid (insertion order). */
export type ExchangeSummaryRow = Pick<ExchangesTable, (typeof SUMMARY_COLUMNS)[number]> & { rowid: number };

type Eb = ExpressionBuilder<DatabaseSchema, 'exchanges'>;

/** The WHERE clause for a filter. */
export function filterExpression(filter: LogFilter): (eb: Eb) => Expression<SqlBool> {
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
    if (filter.grep !== undefined)
      all.push(
        eb(
          sql`exchanges.rowid`,
          'in',
          sql`(select rowid from exchanges_fts where exchanges_fts match ${ftsPhrase(filter.grep)})`,
        ),
      );
    return eb.and(all);
  };
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

/** Matching exchanges by start time, newest first unless `order` is asc. */
export async function listExchanges(
  handle: OpenDatabase,
  filter: LogFilter,
  options: ListOptions,
): Promise<ExchangeSummaryRow[]> {
  checkSearchable(handle, filter);
  let q = handle.db
    .selectFrom('exchanges')
    .select([...SUMMARY_COLUMNS, sql<number>`exchanges.rowid`.as('rowid')])
    .where(filterExpression(filter))
    .orderBy('started_at', options.order)
    .orderBy('id', options.order);
  if (options.limit > 0) q = q.limit(options.limit);
  return q.execute();
}

/** Number of matching exchanges. */
export async function countExchanges(handle: OpenDatabase, filter: LogFilter): Promise<number> {
  checkSearchable(handle, filter);
  const row = await handle.db
    .selectFrom('exchanges')
    .select((eb) => eb.fn.countAll<number>().as('n'))
    .where(filterExpression(filter))
    .executeTakeFirstOrThrow();
  return Number(row.n);
}

/** Every matching exchange with all its columns, streamed in start-time order (bounded memory). */
export function streamExchanges(
  handle: OpenDatabase,
  filter: LogFilter,
  order: 'asc' | 'desc',
): AsyncIterableIterator<ExchangesTable> {
  checkSearchable(handle, filter);
  return handle.db
    .selectFrom('exchanges')
    .selectAll()
    .where(filterExpression(filter))
    .orderBy('started_at', order)
    .orderBy('id', order)
    .stream(256);
}

/** Highest rowid in exchanges (0 when empty): where `logs --follow` starts. */
export async function maxRowid(handle: OpenDatabase): Promise<number> {
  const row = await handle.db
    .selectFrom('exchanges')
    .select(sql<number | null>`max(rowid)`.as('m'))
    .executeTakeFirst();
  return Number(row?.m ?? 0);
}

/** Matching exchanges recorded after `rowid` (insertion order), up to rowid `upTo`, at most `limit`. */
export async function exchangesAfter(
  handle: OpenDatabase,
  filter: LogFilter,
  rowid: number,
  options: { upTo?: number; limit?: number } = {},
): Promise<ExchangeSummaryRow[]> {
  let q = handle.db
    .selectFrom('exchanges')
    .select([...SUMMARY_COLUMNS, sql<number>`exchanges.rowid`.as('rowid')])
    .where(sql<SqlBool>`exchanges.rowid > ${rowid}`);
  if (options.upTo !== undefined) q = q.where(sql<SqlBool>`exchanges.rowid <= ${options.upTo}`);
  return q
    .where(filterExpression(filter))
    .orderBy(sql`exchanges.rowid`)
    .limit(options.limit ?? 1000)
    .execute();
}

/**
 * Exchanges whose id is `idOrPrefix` or starts with it (case-insensitive), at most `limit`. An exact id
 * comes back alone.
 */
export async function findExchanges(
  handle: OpenDatabase,
  idOrPrefix: string,
  limit = 10,
): Promise<ExchangesTable[]> {
  const p = idOrPrefix.trim().toLowerCase();
  const exact = await handle.db.selectFrom('exchanges').selectAll().where('id', '=', p).execute();
  if (exact.length > 0 || p === '') return exact;
  // Ids use 0-9 a-z only, and '~' sorts after them: a range scan on the primary key.
  return handle.db
    .selectFrom('exchanges')
    .selectAll()
    .where('id', '>=', p)
    .where('id', '<', `${p}~`)
    .orderBy('id')
    .limit(limit)
    .execute();
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
export async function exchangeStats(
  handle: OpenDatabase,
  filter: LogFilter,
  by: StatsKey,
): Promise<StatsGroup[]> {
  checkSearchable(handle, filter);
  const compiled = handle.db
    .selectFrom('exchanges')
    .select([
      'started_at',
      'model',
      'path',
      'status',
      'error',
      'user',
      'duration_ms',
      'ttfb_ms',
      'stream',
      'prompt_tokens',
      'completion_tokens',
    ])
    .where(filterExpression(filter))
    .compile();
  // Hundreds of thousands of rows: iterate the prepared statement directly instead of building row objects
  // through the driver's all().
  const rows = handle.sqlite
    .prepare(compiled.sql)
    .iterate(...(compiled.parameters as unknown[])) as IterableIterator<StatsSample>;
  return computeStats(rows, by);
}

/** True when the exchange counts as an error: an HTTP error status or no complete upstream answer. */
export function isErrorSample(s: { status: number | null; error: string | null }): boolean {
  return s.error !== null || s.status === null || s.status >= 400;
}

/** Group samples and compute the figures (pure; groups sorted by key for `day`, else by requests). */
export function computeStats(samples: Iterable<StatsSample>, by: StatsKey): StatsGroup[] {
  const groups = new Map<
    string,
    { n: number; errors: number; pt: number; ct: number; durations: number[]; ttfbs: number[] }
  >();
  for (const s of samples) {
    const key = statsKeyOf(s, by);
    let g = groups.get(key);
    if (!g) {
      g = { n: 0, errors: 0, pt: 0, ct: 0, durations: [], ttfbs: [] };
      groups.set(key, g);
    }
    g.n++;
    if (isErrorSample(s)) g.errors++;
    g.pt += s.prompt_tokens ?? 0;
    g.ct += s.completion_tokens ?? 0;
    g.durations.push(s.duration_ms);
    if (s.stream && s.ttfb_ms !== null) g.ttfbs.push(s.ttfb_ms);
  }
  const out: StatsGroup[] = [];
  for (const [key, g] of groups) {
    const d = Float64Array.from(g.durations).sort();
    const t = Float64Array.from(g.ttfbs).sort();
    out.push({
      key,
      requests: g.n,
      errors: g.errors,
      error_rate: Math.round((g.errors / g.n) * 10000) / 10000,
      prompt_tokens: g.pt,
      completion_tokens: g.ct,
      p50_ms: percentile(d, 50),
      p95_ms: percentile(d, 95),
      p99_ms: percentile(d, 99),
      ttfb_p50_ms: percentile(t, 50),
      ttfb_p95_ms: percentile(t, 95),
    });
  }
  return by === 'day'
    ? out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))
    : out.sort((a, b) => b.requests - a.requests || (a.key < b.key ? -1 : 1));
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
  /** Pages released inside the file (or, with vacuum, the shrink of the file), in bytes. */
  bytes_freed: number;
}

/** Delete exchanges older than `before` (and their full-text entries, by trigger), in batches. */
export async function pruneExchanges(handle: OpenDatabase, options: PruneOptions): Promise<PruneResult> {
  const { sqlite } = handle;
  if (options.dryRun) {
    const row = await handle.db
      .selectFrom('exchanges')
      .select((eb) => eb.fn.countAll<number>().as('n'))
      .where('started_at', '<', options.before)
      .executeTakeFirstOrThrow();
    return { deleted: Number(row.n), dry_run: true, bytes_freed: 0 };
  }
  if (handle.readonly) throw new OaiProxyError('internal', 'pruneExchanges needs a writable database');
  const pageSize = sqlite.pragma('page_size', { simple: true }) as number;
  const pages = () => ({
    count: sqlite.pragma('page_count', { simple: true }) as number,
    free: sqlite.pragma('freelist_count', { simple: true }) as number,
  });
  const before = pages();
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

/** `--grep` needs migration 0002's FTS table; a database from an older serve lacks it. */
function checkSearchable(handle: OpenDatabase, filter: LogFilter): void {
  if (filter.grep === undefined) return;
  const has = handle.sqlite.prepare("select 1 from sqlite_master where name = 'exchanges_fts'").get();
  if (!has)
    throw new OaiProxyError(
      'database_error',
      `Database ${handle.path} has no full-text index yet; run \`oai-proxy serve\` once with this version to upgrade it, then retry --grep`,
    );
}
