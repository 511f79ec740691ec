import type { SqliteHandle } from './database.js';
import type { ExchangesTable } from './tables.js';

/** One exchange's indexing outcome, as the vector indexer reports it. */
export interface IndexStateOutcome {
  id: string;
  status: 'indexed' | 'failed' | 'skipped';
  error: string | null;
}

/** Position in the (started_at, id) order, for resumable paging. */
export interface IndexCursor {
  startedAt: number;
  id: string;
}

/**
 * Persistence of per-exchange Qdrant indexing state (table `exchange_index`, migrations 0004 and 0009) for
 * one target (Qdrant URL without credentials + collection): each target has its own progress.
 */
export interface IndexStateStore {
  /** The target this store reads and writes the state of. */
  readonly target: string;
  /**
   * Record outcomes (for this target) in one transaction. Never throws (returns false when the database
   * failed; true once queued, with `attempt`).
   */
  mark(outcomes: IndexStateOutcome[]): boolean;
  /**
   * Exchanges matching `eligibleSql` (a condition on `exchanges`) that have no state row for this target
   * or failed, oldest first, after `cursor`.
   */
  pending(options: {
    eligibleSql: string;
    sinceMs?: number;
    after?: IndexCursor;
    limit: number;
  }): ExchangesTable[];
  countPending(options: { eligibleSql: string; sinceMs?: number }): number;
  status(id: string): IndexStateOutcome | null;
  /** The target's collection was (re)created empty: nothing is indexed into it any more. Never throws. */
  reset(): boolean;
  /**
   * The target's collection exists: state rows from before targets were recorded (migration 0009) are
   * taken to be in it, as they were then. Never throws.
   */
  claimUnclaimed(): boolean;
  /**
   * Wait until the writes queued so far (with `attempt`) are written, or given up after `attempt`'s wait;
   * await it before closing the database. Never throws.
   */
  flush(): Promise<void>;
}

export interface IndexStateStoreOptions {
  /**
   * Runs each write (`mark`, `reset`, `claimUnclaimed`) later, one after the other in the order asked;
   * they then answer true at once (queued). `serve` passes one that waits for a file another process
   * holds locked on timers: SQLite's busy timeout would hold its event loop. The writes queued while one
   * waits go together in one transaction, one `attempt`.
   */
  attempt?: <T>(call: () => T) => Promise<T>;
}

/**
 * Create the store for `target` (no credentials in it: it is stored) on an open (migrated) database
 * handle, or a getter for the current one.
 */
export function createIndexStateStore(
  handle: SqliteHandle | (() => SqliteHandle),
  target: string,
  options: IndexStateStoreOptions = {},
): IndexStateStore {
  const db = typeof handle === 'function' ? handle : () => handle;
  const { attempt } = options;
  let queue: (() => void)[] = [];
  let draining: Promise<void> | null = null;
  // While a lock lasts, every indexing batch queues a mark: they wait (and are written) together.
  const drain = async (run: NonNullable<typeof attempt>) => {
    await null; // later, not inside the caller's `mark`
    while (queue.length > 0) {
      const writes = queue;
      queue = [];
      try {
        await run(() => {
          db().transaction(() => {
            for (const fn of writes) fn();
          })();
        });
      } catch {
        // Writes that still fail after the wait are dropped, as a failed one always was.
      }
    }
    draining = null;
  };
  /** Run `fn` now (false when it failed), or queue it behind the writes before it. */
  const write = (fn: () => void): boolean => {
    if (attempt) {
      queue.push(fn);
      draining ??= drain(attempt);
      return true;
    }
    try {
      fn();
      return true;
    } catch {
      return false;
    }
  };
  const upsertSql = `insert into exchange_index (exchange_id, status, error, attempts, updated_at, target)
    values (@id, @status, @error, 1, @now, @target)
    on conflict (exchange_id, target) do update set status = excluded.status, error = excluded.error,
      attempts = exchange_index.attempts + 1, updated_at = excluded.updated_at`;
  const notDone = `(exchange_index.exchange_id is null or exchange_index.status = 'failed')`;
  const from = `exchanges left join exchange_index
    on exchange_index.exchange_id = exchanges.id and exchange_index.target = @target`;
  const run = (...statements: string[]): boolean =>
    write(() => {
      const sqlite = db();
      const stmts = statements.map((s) => sqlite.prepare(s));
      sqlite.transaction(() => {
        for (const stmt of stmts) stmt.run({ target });
      })();
    });

  return {
    target,
    mark(outcomes) {
      if (outcomes.length === 0) return true;
      const now = Date.now();
      return write(() => {
        const sqlite = db();
        const stmt = sqlite.prepare(upsertSql);
        sqlite.transaction(() => {
          for (const o of outcomes)
            stmt.run({ id: o.id, status: o.status, error: o.error?.slice(0, 1000) ?? null, now, target });
        })();
      });
    },
    pending({ eligibleSql, sinceMs, after, limit }) {
      const where = [eligibleSql, notDone];
      const params: Record<string, unknown> = { limit, target };
      if (sinceMs !== undefined) {
        where.push('exchanges.started_at >= @since');
        params.since = sinceMs;
      }
      if (after) {
        where.push(
          '(exchanges.started_at > @afterT or (exchanges.started_at = @afterT and exchanges.id > @afterId))',
        );
        params.afterT = after.startedAt;
        params.afterId = after.id;
      }
      return db()
        .prepare(
          `select exchanges.* from ${from} where ${where.join(' and ')} order by exchanges.started_at, exchanges.id limit @limit`,
        )
        .all(params) as ExchangesTable[];
    },
    countPending({ eligibleSql, sinceMs }) {
      const where = [eligibleSql, notDone];
      if (sinceMs !== undefined) where.push('exchanges.started_at >= @since');
      const row = db()
        .prepare(`select count(*) as n from ${from} where ${where.join(' and ')}`)
        .get(sinceMs !== undefined ? { since: sinceMs, target } : { target }) as { n: number };
      return row.n;
    },
    status(id) {
      const row = db()
        .prepare(
          'select exchange_id as id, status, error from exchange_index where exchange_id = ? and target = ?',
        )
        .get(id, target) as IndexStateOutcome | undefined;
      return row ?? null;
    },
    async flush() {
      await draining;
    },
    reset: () => run("delete from exchange_index where target = @target and status <> 'skipped'"),
    // An unclaimed row whose exchange already has a row for this target is older news: dropped.
    claimUnclaimed: () =>
      run(
        "update or ignore exchange_index set target = @target where target = ''",
        "delete from exchange_index where target = ''",
      ),
  };
}
