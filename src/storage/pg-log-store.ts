import type { Kysely } from 'kysely';
import type { ExchangeRecord, RecordingWriterOptions, SpillReason } from './exchange-record.js';
import { createFailureStreak } from './failure-streak.js';
import { type ExchangeWriterHealth, toRow } from './log-store.js';
import { settlesWithin } from './settles-within.js';
import type { DatabaseSchema, ExchangesTable } from './tables.js';

/** The batched exchange writer on PostgreSQL: `record()` enqueues; a timer writes multi-row INSERTs. */
export interface PgExchangeWriter {
  record(exchange: ExchangeRecord): void;
  /** Write everything queued now (after any write in flight); resolves with rows written by this call. */
  flush(): Promise<number>;
  health(): ExchangeWriterHealth;
  /**
   * Stop the timer and write what is queued, for at most `closeTimeoutMs`; rows still unwritten then are
   * handed to `onSpill` (they reach the log file instead of being lost).
   */
  close(): Promise<void>;
}

/** `batchSize` defaults to 500 rows per INSERT (30 parameters a row, far below PostgreSQL's 65,535). */
export interface PgExchangeWriterOptions extends RecordingWriterOptions {
  db: Kysely<DatabaseSchema>;
  /** How long `close()` keeps trying (default 5 s). */
  closeTimeoutMs?: number;
}

/**
 * Create the writer. Writes never run on the request path: a proxied request only pushes to an array.
 * One INSERT … ON CONFLICT (id) DO NOTHING per batch, so a batch retried after a lost acknowledgement
 * is not recorded twice. While PostgreSQL is down, slow or restarting, rows wait (bounded by `queueMax`,
 * oldest spilled first) and the writer retries with backoff up to 5 s. A batch that outlasts
 * statement_timeout is retried in halves (see `limit`).
 */
export function createPgExchangeWriter(options: PgExchangeWriterOptions): PgExchangeWriter {
  const { db, queueMax } = options;
  const batchSize = Math.max(1, Math.min(options.batchSize ?? 500, queueMax));
  // Rows per INSERT now: halved when a batch outlasts statement_timeout (large bodies take ~0.3 s a MB
  // to index), grown back by a quarter after each batch written. Retried as is, it would time out again.
  let limit = batchSize;
  let queue: ExchangeRecord[] = [];
  let written = 0;
  let spilled = 0;
  const streak = createFailureStreak({
    baseMs: options.flushIntervalMs,
    onError: options.onError,
    onRecover: options.onRecover,
  });
  let writing: Promise<number> | null = null;
  let inflight = 0;
  // The batch being written (spilled by close() if the server never answers for it).
  let sending: ExchangeRecord[] = [];
  let closed = false;

  const spill = (rows: ExchangeRecord[], reason: SpillReason) => {
    spilled += rows.length;
    options.onSpill?.(rows, reason);
  };

  const bound = () => {
    const over = queue.length + inflight - queueMax;
    if (over > 0) spill(queue.splice(0, Math.min(over, queue.length)), 'queue_full');
  };

  const insert = (rows: ExchangeRecord[]) =>
    db
      .insertInto('exchanges')
      .values(rows.map(pgRow))
      .onConflict((oc) => oc.column('id').doNothing())
      .execute();

  /** A batch the server rejects for its data (not its connection): write row by row, spill what fails. */
  const writeOneByOne = async (rows: ExchangeRecord[]): Promise<ExchangeRecord[]> => {
    const bad: ExchangeRecord[] = [];
    for (const r of rows) {
      try {
        await insert([r]);
      } catch (err) {
        if (!isDataError(err)) throw err;
        bad.push(r);
      }
    }
    return bad;
  };

  /** Write batches until the queue is empty or a write fails. */
  const drain = async (): Promise<number> => {
    let total = 0;
    while (queue.length > 0) {
      const batch = queue.splice(0, limit);
      inflight = batch.length;
      sending = batch;
      try {
        try {
          await insert(batch);
        } catch (err) {
          if (!isDataError(err)) throw err;
          const bad = await writeOneByOne(batch);
          if (bad.length > 0) {
            streak.lastError = `${bad.length} exchange(s) rejected by PostgreSQL: ${(err as Error).message}`;
            spill(bad, 'rejected');
          }
          written -= bad.length;
          total -= bad.length;
        }
      } catch (err) {
        // close() gave up on this batch and spilled it.
        if (closed) return total;
        if (isStatementTimeout(err)) limit = Math.max(1, Math.floor(batch.length / 2));
        inflight = 0;
        queue = batch.concat(queue);
        bound();
        streak.fail(err as Error);
        return total;
      }
      inflight = 0;
      limit = Math.min(batchSize, limit + Math.max(1, limit >> 2));
      total += batch.length;
      written += batch.length;
    }
    streak.succeeded();
    return total;
  };

  const run = (): Promise<number> => {
    writing ??= drain().finally(() => {
      writing = null;
    });
    return writing;
  };

  const timer = setInterval(() => {
    if (queue.length === 0 || writing) return;
    if (streak.waiting()) return;
    void run();
  }, options.flushIntervalMs);
  timer.unref();

  return {
    record(exchange) {
      if (closed) return spill([exchange], 'after_close');
      queue.push(exchange);
      bound();
    },
    async flush() {
      let total = 0;
      if (writing) total += await writing;
      if (queue.length > 0) total += await run();
      return total;
    },
    health() {
      return {
        database: streak.failing ? 'error' : 'ok',
        queued: queue.length + inflight,
        written,
        spilled,
        lastError: streak.lastError,
      };
    },
    async close() {
      if (closed) return;
      clearInterval(timer);
      const deadline = Date.now() + (options.closeTimeoutMs ?? 5000);
      // A server that stopped answering (a network cut, no reset) holds a write until pg's query timeout
      // (35 s): it is waited for only until the deadline, then its batch is spilled with the queue (it may
      // still reach the database, then the log file holds a copy; lost, it would be worse).
      for (;;) {
        if (writing && !(await settlesWithin(writing, deadline - Date.now()))) break;
        if (queue.length === 0 || Date.now() >= deadline) break;
        if (!(await settlesWithin(run(), deadline - Date.now()))) break;
        if (queue.length > 0) await sleep(Math.min(250, Math.max(0, deadline - Date.now())));
      }
      closed = true;
      const rest = writing ? sending.concat(queue) : queue;
      queue = [];
      inflight = 0;
      if (rest.length > 0) spill(rest, 'refused_at_close');
    },
  };
}

/**
 * A row as PostgreSQL accepts it: text cannot hold NUL, which a client can put in any value it sends (a
 * body decoded as UTF-8, a `model` or `user` field of JSON written `\u0000`), so every text column has
 * its NULs replaced by U+FFFD here, in one place, for columns added later too.
 */
export function pgRow(r: ExchangeRecord): ExchangesTable {
  const row = toRow(r) as unknown as Record<string, unknown>;
  for (const [k, v] of Object.entries(row)) {
    if (typeof v === 'string' && v.includes('\u0000')) row[k] = v.replace(/\u0000/g, '\uFFFD');
  }
  return row as unknown as ExchangesTable;
}

/** SQLSTATE classes 22 (data exception) and 23 (integrity): retrying the same rows would fail again. */
function isDataError(err: unknown): boolean {
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' && /^2[23]/.test(code);
}

/** SQLSTATE 57014 (query_canceled): statement_timeout ran out, or the statement was cancelled. */
function isStatementTimeout(err: unknown): boolean {
  return (err as { code?: unknown }).code === '57014';
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
