import { type BackgroundSliceOptions, type BackgroundSlices, runInSlices } from './background-slices.js';
import type { SqliteHandle } from './database.js';

/**
 * Hourly rollups for `logs stats` on SQLite (tables and triggers: migration 0006). A closed hour's
 * exchanges are summed once per dimension and key: counts, token sums, and every duration and time to
 * first byte as a Float64 array, so the percentiles over any span of whole hours stay exact. `logs stats`
 * reads the rollups of the whole hours in its window and the exchanges of everything else (the partial
 * hours at its edges, the current hour, hours still waiting to be rolled up).
 */

export const HOUR_MS = 3_600_000;

/** The dimensions rolled up (`--by day` sums the `model` rollups of each day's hours). */
export type RollupDim = 'model' | 'path' | 'status' | 'user';
export const ROLLUP_DIMS: readonly RollupDim[] = ['model', 'path', 'status', 'user'];

/** How each `logs stats --by` key is spelled from an exchanges row (SQLite). */
export const STATS_KEY_SQL = {
  model: `coalesce(model, '(none)')`,
  path: 'path',
  status: `case when status is null then coalesce(error, 'no response') else cast(status as text) end`,
  user: `coalesce("user", '(none)')`,
  day: `strftime('%Y-%m-%d', started_at / 1000, 'unixepoch')`,
} as const;

/** 1 when the exchange counts as an error: an HTTP error status or no complete upstream answer. */
export const IS_ERROR_SQL = '(error is not null or status is null or status >= 400)';
/** The time to first byte stats use: streams only. */
export const STREAM_TTFB_SQL = 'case when stream = 1 then ttfb_ms end';

/** Hours must have ended this long ago before they are rolled up (most late rows have arrived by then). */
const GRACE_MS = 120_000;

/** One rollup row as `logs stats` reads it. */
export interface RollupRow {
  hour: number;
  key: string;
  requests: number;
  errors: number;
  prompt_tokens: number;
  completion_tokens: number;
  durations: Float64Array;
  ttfbs: Float64Array;
}

/** True when the database has the rollup tables (a database from an older `serve` may not). */
export function hasRollups(sqlite: SqliteHandle): boolean {
  return (
    sqlite.prepare("select 1 from sqlite_master where type = 'table' and name = 'exchange_stats'").get() !==
    undefined
  );
}

/** The rollups of `dim` for the hours in [fromHour, toHour), in hour order. */
export function readRollups(
  sqlite: SqliteHandle,
  dim: RollupDim,
  fromHour: number,
  toHour: number,
): RollupRow[] {
  const rows = sqlite
    .prepare(
      `select hour, key, requests, errors, prompt_tokens, completion_tokens, durations, ttfbs
       from exchange_stats where hour >= ? and hour < ? and dim = ? order by hour`,
    )
    .raw(true)
    .all(fromHour, toHour, dim) as [number, string, number, number, number, number, Buffer, Buffer][];
  return rows.map(([hour, key, requests, errors, pt, ct, d, t]) => ({
    hour,
    key,
    requests,
    errors,
    prompt_tokens: pt,
    completion_tokens: ct,
    durations: decodeFloats(d),
    ttfbs: decodeFloats(t),
  }));
}

/** Little-endian doubles, whatever the platform (the database file may move between machines). */
export function encodeFloats(values: readonly number[]): Buffer {
  const b = Buffer.allocUnsafe(values.length * 8);
  for (let i = 0; i < values.length; i++) b.writeDoubleLE(values[i], i * 8);
  return b;
}

export function decodeFloats(b: Buffer): Float64Array {
  const out = new Float64Array(b.length / 8);
  for (let i = 0; i < out.length; i++) out[i] = b.readDoubleLE(i * 8);
  return out;
}

/** What a group of exchanges adds up to: a rollup row being built, or a `logs stats` group. */
export interface StatsSums {
  requests: number;
  errors: number;
  pt: number;
  ct: number;
  durations: number[];
  ttfbs: number[];
}

export const newStatsSums = (): StatsSums => ({
  requests: 0,
  errors: 0,
  pt: 0,
  ct: 0,
  durations: [],
  ttfbs: [],
});

/** Add one exchange: `isError` 1 or 0, `ttfb` null unless it is a stream's. */
export function addToStatsSums(
  s: StatsSums,
  isError: number,
  duration: number,
  ttfb: number | null,
  pt: number,
  ct: number,
): void {
  s.requests++;
  s.errors += isError;
  s.pt += pt;
  s.ct += ct;
  s.durations.push(duration);
  if (ttfb !== null) s.ttfbs.push(ttfb);
}

/** An hour being rolled up across slices: where the read has got to, and the sums so far. */
interface HourInProgress {
  sqlite: SqliteHandle;
  hour: number;
  /** Rows with started_at below this have been summed. */
  from: number;
  buckets: Map<RollupDim, Map<string, StatsSums>>;
}

// The columns one exchange contributes, in ROLLUP_DIMS order then the figures.
type SourceRow = [number, string, string, string, string, number, number, number | null, number, number];

const SOURCE_SQL = `select started_at, ${STATS_KEY_SQL.model}, ${STATS_KEY_SQL.path}, ${STATS_KEY_SQL.status},
  ${STATS_KEY_SQL.user}, ${IS_ERROR_SQL}, duration_ms, ${STREAM_TTFB_SQL},
  coalesce(prompt_tokens, 0), coalesce(completion_tokens, 0)
  from exchanges where internal = 0`;

/**
 * The writer side: queue newly closed hours, then roll up queued hours one at a time, reading at most
 * `budget` exchanges per call. Needs a writable handle. Every step is safe to interrupt: an hour counts
 * as rolled up only when its rows are stored, and only if nothing wrote to the hour meanwhile.
 */
export class StatsRollup {
  private current: HourInProgress | null = null;

  constructor(private readonly sqlite: () => SqliteHandle) {}

  /** Do up to `budget` rows of work; returns rows read (at least 1 while work remains), 0 when idle. */
  step(budget: number, now = Date.now()): number {
    const sqlite = this.sqlite();
    if (this.current && this.current.sqlite !== sqlite) this.current = null; // the database was reopened
    if (!this.current) {
      queueClosedHours(sqlite, now);
      const next = sqlite
        .prepare('select hour from exchange_stats_dirty order by hour limit 1')
        .pluck()
        .get() as number | undefined;
      if (next === undefined) return 0;
      sqlite.prepare('update exchange_stats_dirty set changed = 0 where hour = ?').run(next);
      this.current = {
        sqlite,
        hour: next,
        from: next,
        buckets: new Map(ROLLUP_DIMS.map((d) => [d, new Map()])),
      };
    }
    const h = this.current;
    const end = h.hour + HOUR_MS;
    const rows = sqlite
      .prepare(`${SOURCE_SQL} and started_at >= ? and started_at < ? order by started_at limit ?`)
      .raw(true)
      .all(h.from, end, budget) as SourceRow[];
    let take = rows;
    if (rows.length < budget) {
      h.from = end;
    } else {
      // Stop before the last millisecond read (it may have more rows than fit); the next slice starts there.
      const last = rows[rows.length - 1][0];
      take = rows.filter((r) => r[0] < last);
      if (take.length === 0) {
        // One millisecond with `budget` rows or more: take all of it.
        take = sqlite.prepare(`${SOURCE_SQL} and started_at = ?`).raw(true).all(last) as SourceRow[];
        h.from = last + 1;
      } else {
        h.from = last;
      }
    }
    for (const row of take) add(h.buckets, row);
    if (h.from >= end) {
      this.current = null;
      store(sqlite, h);
    }
    return Math.max(1, take.length);
  }
}

function add(buckets: Map<RollupDim, Map<string, StatsSums>>, row: SourceRow): void {
  const [, , , , , isError, duration, ttfb, pt, ct] = row;
  for (let d = 0; d < ROLLUP_DIMS.length; d++) {
    const byKey = buckets.get(ROLLUP_DIMS[d]) as Map<string, StatsSums>;
    const key = row[d + 1] as string;
    let b = byKey.get(key);
    if (!b) {
      b = newStatsSums();
      byKey.set(key, b);
    }
    addToStatsSums(b, isError, duration, ttfb, pt, ct);
  }
}

/** Store a finished hour, unless a write to the hour since it was started made the sums stale. */
function store(sqlite: SqliteHandle, h: HourInProgress): void {
  sqlite.transaction(() => {
    const changed = sqlite
      .prepare('select changed from exchange_stats_dirty where hour = ?')
      .pluck()
      .get(h.hour);
    if (changed !== 0) return; // written to meanwhile: it stays queued and is read again
    sqlite.prepare('delete from exchange_stats where hour = ?').run(h.hour);
    const insert = sqlite.prepare(
      `insert into exchange_stats (hour, dim, key, requests, errors, prompt_tokens, completion_tokens, durations, ttfbs)
       values (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    );
    for (const [dim, byKey] of h.buckets)
      for (const [key, b] of byKey)
        insert.run(
          h.hour,
          dim,
          key,
          b.requests,
          b.errors,
          b.pt,
          b.ct,
          encodeFloats(b.durations),
          encodeFloats(b.ttfbs),
        );
    sqlite.prepare('delete from exchange_stats_dirty where hour = ?').run(h.hour);
  })();
}

/**
 * Move `sealed_until` up to the last hour that ended `GRACE_MS` ago, queueing each hour in between that
 * has exchanges (empty hours are skipped with one index seek each, so the first run over an old database
 * is cheap). From then on the triggers queue the hour again on any write to it.
 */
function queueClosedHours(sqlite: SqliteHandle, now: number): void {
  const target = now - GRACE_MS - ((now - GRACE_MS) % HOUR_MS);
  const sealed = sqlite
    .prepare('select sealed_until from exchange_stats_state where id = 1')
    .pluck()
    .get() as number;
  if (sealed >= target) return;
  sqlite.transaction(() => {
    const nextRow = sqlite
      .prepare('select min(started_at) from exchanges where started_at >= ? and started_at < ?')
      .pluck();
    const queue = sqlite.prepare(
      'insert into exchange_stats_dirty (hour, changed) values (?, 1) on conflict (hour) do update set changed = 1',
    );
    let at = sealed;
    for (let i = 0; i < 1000; i++) {
      const next = nextRow.get(at, target) as number | null;
      if (next === null) {
        at = target;
        break;
      }
      const hour = next - (next % HOUR_MS);
      queue.run(hour);
      at = hour + HOUR_MS;
    }
    sqlite.prepare('update exchange_stats_state set sealed_until = ? where id = 1').run(at);
  })();
}

export interface StatsRollupOptions extends Omit<BackgroundSliceOptions, 'work'> {
  /** The writable handle to use (a getter: the recorder may reopen its database). */
  sqlite: () => SqliteHandle;
  /** The clock (tests). */
  now?: () => number;
}

/** Keep the rollups current from a writing process (`serve`), in slices of a few milliseconds. */
export function createStatsRollup(options: StatsRollupOptions): BackgroundSlices {
  const rollup = new StatsRollup(options.sqlite);
  const now = options.now ?? Date.now;
  return runInSlices({ ...options, work: (budget) => rollup.step(budget, now()) });
}
