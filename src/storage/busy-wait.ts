import { setTimeout as sleep } from 'node:timers/promises';
import { OaiProxyError } from '../errors.js';

/** The part of better-sqlite3 a busy wait needs. */
export interface BusyTimeoutSetting {
  pragma(source: string, options: { simple: true }): unknown;
}

export interface BusyWaitOptions {
  /** How long to keep trying while another connection holds the lock (default 5,000 ms, the handle's busy_timeout). */
  budgetMs?: number;
  /** SQLite's own (blocking) wait per attempt (default 20 ms). */
  attemptWaitMs?: number;
}

/** True when SQLite failed because another connection holds a lock it needs (SQLITE_BUSY, SQLITE_LOCKED). */
export function isSqliteBusy(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^SQLITE_(BUSY|LOCKED)/.test(code);
}

/**
 * What a CLI command says when `path` stayed locked by another process through its busy timeout:
 * who may hold it and what to do, instead of SQLite's bare "database is locked". `outcome` says what
 * became of the command's own changes.
 */
export function lockedDatabaseError(path: string, outcome: string, cause: unknown): OaiProxyError {
  return new OaiProxyError(
    'database_unavailable',
    `Database ${path} is locked by another process (another \`oai-proxy models\` or \`oai-proxy logs prune\`, or an sqlite3 shell in a write transaction) and stayed locked for 5 s; ${outcome}. Try again once it has finished`,
    { cause },
  );
}

/**
 * Run `attempt` on `sqlite` with its busy timeout cut to `attemptWaitMs`, and while it fails because another
 * connection holds the lock, try again after a timer, for up to `budgetMs`; then throw the last error.
 * SQLite's busy timeout sleeps on the calling thread: on the event loop it stalls every request in flight.
 * `attempt` is synchronous, or async with all its SQLite work before its first `await`.
 */
export async function withoutBusyWait<T>(
  sqlite: () => BusyTimeoutSetting,
  attempt: () => T | Promise<T>,
  options: BusyWaitOptions = {},
): Promise<T> {
  const budgetMs = options.budgetMs ?? 5000;
  const attemptWaitMs = options.attemptWaitMs ?? 20;
  const deadline = performance.now() + budgetMs;
  for (let pause = 10; ; pause = Math.min(pause * 2, 250)) {
    try {
      return await withShortBusyWait(sqlite(), attempt, attemptWaitMs);
    } catch (err) {
      const left = deadline - performance.now();
      if (!isSqliteBusy(err) || left <= 0) throw err;
      await sleep(Math.min(pause, left));
    }
  }
}

/**
 * Run `attempt` with `handle`'s busy timeout cut to `waitMs`: a lock held by another connection fails it
 * after that instead of after the full busy timeout. For work that is retried anyway (a timer's next tick).
 */
export function withShortBusyWait<T>(handle: BusyTimeoutSetting, attempt: () => T, waitMs = 20): T {
  const previous = Number(handle.pragma('busy_timeout', { simple: true }));
  handle.pragma(`busy_timeout = ${waitMs}`, { simple: true });
  try {
    return attempt();
  } finally {
    handle.pragma(`busy_timeout = ${previous}`, { simple: true });
  }
}
