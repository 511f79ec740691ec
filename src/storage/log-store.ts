import { withShortBusyWait } from './busy-wait.js';
import type { SqliteHandle } from './database.js';
import type { ExchangeRecord, ExchangeSink, RecordingWriterOptions, SpillReason } from './exchange-record.js';
import { toWire } from './exchange-wire.js';
import { createFailureStreak } from './failure-streak.js';
import type { ExchangesTable } from './tables.js';

/** What `/health` shows about recording. */
export interface ExchangeWriterHealth {
  database: 'ok' | 'error';
  queued: number;
  written: number;
  spilled: number;
  lastError: string | null;
}

/** A batched, non-blocking exchange writer: `record()` enqueues, a timer writes batches in one transaction. */
export interface ExchangeWriter extends ExchangeSink {
  /** Write everything queued now; returns rows written (0 when the database failed). */
  flush(): number;
  /**
   * Write a slice now (short lock waits, back-off and slices apply), even when the next one is already
   * scheduled: the recorder thread calls it when a transaction's worth of rows is queued, so a backlog
   * waits in its message queue, serialised, rather than as rows on this thread's heap.
   */
  kick(): void;
  health(): ExchangeWriterHealth;
  /**
   * Flush what is queued and stop the timer (the database handle stays open). Rows the database still
   * refuses, and rows recorded afterwards, go to `onSpill` (they reach the log file instead of being lost).
   */
  close(): void;
}

export interface ExchangeWriterOptions extends RecordingWriterOptions {
  sqlite: SqliteHandle;
  /** Rows per transaction in timed flushes; the event loop runs between slices (default 128). */
  sliceRows?: number;
  /**
   * How long a timed flush waits for another writer's lock (default 100 ms) before backing off, so a
   * locked database never stalls the event loop for long; the final flush in `close()` waits longer.
   */
  busyTimeoutMs?: number;
  /** The database file was deleted or replaced: open the file now at its path; rows wait meanwhile. */
  reopen?: { moved(): boolean; open(): Promise<SqliteHandle> };
  /** Called after anything `health()` reports may have changed (rows written, a failure, a spill). */
  onState?(): void;
}

export const COLUMNS: readonly (keyof ExchangesTable)[] = [
  'id',
  'started_at',
  'duration_ms',
  'ttfb_ms',
  'method',
  'path',
  'query',
  'client_addr',
  'status',
  'request_headers',
  'response_headers',
  'request_body',
  'request_bytes',
  'request_truncated',
  'response_body',
  'response_bytes',
  'response_truncated',
  'model',
  'upstream_model',
  'upstream',
  'model_unknown',
  'stream',
  'prompt_tokens',
  'completion_tokens',
  'total_tokens',
  'user',
  'error',
  'error_message',
  'assembled',
  'internal',
];

/** The SQL insert for one exchange row (named parameters: pass `toRow(record)`). */
export const INSERT_EXCHANGE_SQL = `insert or ignore into exchanges (${COLUMNS.map((c) => `"${c}"`).join(', ')}) values (${COLUMNS.map((c) => `@${c}`).join(', ')})`;

/**
 * The same insert with positional parameters, for the batched writer: better-sqlite3 looks named
 * parameters up on the object one by one, and an array cost 5.5 µs less per row (45 against 50.5 µs,
 * interleaved batches of 1,000 rows).
 */
const INSERT_EXCHANGE_POSITIONAL_SQL = INSERT_EXCHANGE_SQL.replace(/@\w+/g, '?');

/**
 * A record's column values in INSERT_EXCHANGE_POSITIONAL_SQL's order, as `toRow` maps them: the wire form
 * (its fields are in COLUMNS order) with toRow's conversions. Not `COLUMNS.map((c) => toRow(r)[c])`: on
 * the recorder thread that row object and its thirty megamorphic keyed reads cost 0.4 µs a row against
 * 0.03 µs in isolation (log-store-row.test.ts checks the two agree).
 */
export function rowValues(r: ExchangeRecord): unknown[] {
  const v = toWire(r);
  v[2] = Math.round(r.durationMs);
  v[3] = r.ttfbMs === null ? null : Math.round(r.ttfbMs);
  v[13] = r.requestTruncated ? 1 : 0;
  v[16] = r.responseTruncated ? 1 : 0;
  v[20] = r.modelUnknown ? 1 : 0;
  v[21] = r.stream ? 1 : 0;
  v[28] = r.assembled ? JSON.stringify(r.assembled) : null;
  v[29] = r.internal ? 1 : 0;
  return v;
}

/** Map a record to its table row (JSON columns serialised, booleans as 0/1). */
export function toRow(r: ExchangeRecord): ExchangesTable {
  return {
    id: r.id,
    started_at: r.startedAt,
    duration_ms: Math.round(r.durationMs),
    ttfb_ms: r.ttfbMs === null ? null : Math.round(r.ttfbMs),
    method: r.method,
    path: r.path,
    query: r.query,
    client_addr: r.clientAddr,
    status: r.status,
    request_headers: r.requestHeadersJson,
    response_headers: r.responseHeadersJson,
    request_body: r.requestBody,
    request_bytes: r.requestBytes,
    request_truncated: r.requestTruncated ? 1 : 0,
    response_body: r.responseBody,
    response_bytes: r.responseBytes,
    response_truncated: r.responseTruncated ? 1 : 0,
    model: r.model,
    upstream_model: r.upstreamModel,
    upstream: r.upstream,
    model_unknown: r.modelUnknown ? 1 : 0,
    stream: r.stream ? 1 : 0,
    prompt_tokens: r.promptTokens,
    completion_tokens: r.completionTokens,
    total_tokens: r.totalTokens,
    user: r.user,
    error: r.error,
    error_message: r.errorMessage,
    assembled: r.assembled ? JSON.stringify(r.assembled) : null,
    internal: r.internal ? 1 : 0,
  };
}

/** Create the batched writer. The insert is prepared once; each batch is one transaction. */
export function createExchangeWriter(options: ExchangeWriterOptions): ExchangeWriter {
  const { queueMax } = options;
  let sqlite = options.sqlite;
  const busyTimeoutMs = options.busyTimeoutMs ?? 100;
  let reopening = false;
  const batchSize = options.batchSize ?? 1000;
  let queue: ExchangeRecord[] = [];
  let written = 0;
  let spilled = 0;
  const streak = createFailureStreak({
    baseMs: options.flushIntervalMs,
    onError: options.onError,
    onRecover: options.onRecover,
  });
  let closed = false;
  let insert: ReturnType<SqliteHandle['prepare']> | null = null;
  let writeBatch: ((rows: ExchangeRecord[]) => void) | null = null;

  const prepare = () => {
    insert = sqlite.prepare(INSERT_EXCHANGE_POSITIONAL_SQL);
    writeBatch = sqlite.transaction((rows: ExchangeRecord[]) => {
      for (const r of rows) insert!.run(rowValues(r));
    });
  };

  const fail = (e: Error) => {
    streak.fail(e);
    options.onState?.();
  };

  /** True while a replacement handle is being opened (rows stay queued). */
  const checkMoved = (): boolean => {
    if (reopening) return true;
    const reopen = options.reopen;
    // One stat() per flush: rows written after a deletion would vanish with the unlinked file.
    if (!reopen?.moved()) return false;
    reopening = true;
    fail(new Error('the database file was deleted or replaced; reopening it at its path'));
    reopen!.open().then(
      (next) => {
        sqlite = next;
        writeBatch = null;
        reopening = false;
        // Nothing to write (an idle proxy noticed it): the file opened again is what ends the failure.
        if (queue.length === 0) {
          streak.succeeded();
          options.onState?.();
        } else streak.retryNow();
      },
      (err) => {
        reopening = false;
        fail(err as Error);
      },
    );
    return true;
  };

  const flush = (shortWait = false, maxRows = Number.POSITIVE_INFINITY): number => {
    try {
      return shortWait && queue.length > 0
        ? withShortBusyWait(sqlite, () => flushBatches(maxRows), busyTimeoutMs)
        : flushBatches(maxRows);
    } finally {
      options.onState?.();
    }
  };

  const flushBatches = (maxRows: number): number => {
    let total = 0;
    while (queue.length > 0 && total < maxRows) {
      const size = Math.min(batchSize, maxRows - total);
      const batch = queue.length <= size ? queue : queue.slice(0, size);
      try {
        if (!writeBatch) prepare();
        writeBatch!(batch);
      } catch (err) {
        const e = err as Error;
        fail(e);
        // A statement prepared on a broken connection may stay broken: prepare again next time.
        writeBatch = null;
        return total;
      }
      queue = batch === queue ? [] : queue.slice(batch.length);
      total += batch.length;
      written += batch.length;
    }
    streak.succeeded();
    return total;
  };

  // Timed flushes write in slices of `sliceRows`, yielding to the event loop between slices, so a large
  // backlog never stalls in-flight requests for the whole batch (p99 at 64 connections).
  const sliceRows = options.sliceRows ?? 128;
  /** The next slice, when one is scheduled. */
  let draining: NodeJS.Immediate | null = null;
  const drainSlice = () => {
    if (draining) clearImmediate(draining);
    draining = null;
    if (queue.length === 0) return;
    if (streak.waiting()) return;
    if (checkMoved()) return;
    try {
      flush(true, sliceRows);
    } catch (err) {
      // Even setting the busy timeout failed (handle closed): count it, retry later.
      fail(err as Error);
      return;
    }
    if (queue.length > 0 && !streak.failing) draining = setImmediate(drainSlice);
  };
  const timer = setInterval(() => {
    if (draining) return;
    // Idle, the file is still watched: a backup moved into place while nothing is written would share
    // the old file's -wal and -shm with every other opener (`logs`, `models`) until the next row, and
    // SQLite would read the old file's pages into it (edits lost, "malformed").
    if (queue.length === 0) checkMoved();
    else drainSlice();
  }, options.flushIntervalMs);
  timer.unref();

  /** Rows that will not be written: to `onSpill` (the log file), counted. */
  const spill = (rows: ExchangeRecord[], reason: SpillReason) => {
    spilled += rows.length;
    options.onSpill?.(rows, reason);
    options.onState?.();
  };

  return {
    record(exchange) {
      if (closed) return spill([exchange], 'after_close');
      queue.push(exchange);
      if (queue.length > queueMax) spill(queue.splice(0, queue.length - queueMax), 'queue_full');
    },
    flush: () => flush(),
    kick() {
      drainSlice();
    },
    health() {
      return {
        database: streak.failing ? 'error' : 'ok',
        queued: queue.length,
        written,
        spilled,
        lastError: streak.lastError,
      };
    },
    close() {
      if (closed) return;
      clearInterval(timer);
      flush();
      closed = true;
      // Rows the database still refuses would go with the process: they reach the log file instead.
      if (queue.length > 0) {
        const rest = queue;
        queue = [];
        spill(rest, 'refused_at_close');
      }
    },
  };
}
