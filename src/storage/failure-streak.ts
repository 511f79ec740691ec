/**
 * A failing streak: the first failure is reported at once (and, with `reportEveryMs`, again at most that
 * often while the streak lasts, with the failed attempts since it began), retries back off from `baseMs`
 * doubling up to 5 s, and the first success ends the streak (reported once). Shared by the SQLite and
 * PostgreSQL exchange writers, the registry poll, the WAL checkpoints and the log file.
 */
export interface FailureStreak {
  /** True from a failure until the next success. */
  readonly failing: boolean;
  /** The last failure's message while failing, else null (a writer may also set its own note). */
  lastError: string | null;
  /** Count a failure: report it if it starts a streak (or a report is due), and push the next retry back. */
  fail(err: Error): void;
  /** A write succeeded: end the streak (reported once) and reset the back-off. */
  succeeded(): void;
  /** True while failing and the next retry is not due yet. */
  waiting(): boolean;
  /** Make the next retry due now (a replacement connection is ready). */
  retryNow(): void;
}

/** A streak so far: its failed attempts, and when (Date.now()) the first of them failed. */
export interface StreakCount {
  attempts: number;
  since: number;
}

/** The longest wait between retries of a failing write. */
export const MAX_BACKOFF_MS = 5000;

export function createFailureStreak(options: {
  /** The first back-off; each failure doubles it up to 5 s. */
  baseMs: number;
  /** Report a streak again at most this often while it lasts (default: only its first failure). */
  reportEveryMs?: number;
  /** The first failure of a streak (`attempts` 1), or a later one when a report is due. */
  onError?(err: Error, streak: StreakCount): void;
  /** The first success after failures: the streak that ended. */
  onRecover?(streak: StreakCount): void;
}): FailureStreak {
  let backoff = options.baseMs;
  let retryAt = 0;
  let failing = false;
  let lastError: string | null = null;
  let attempts = 0;
  let since = 0;
  let reportedAt = 0;
  // Closures, not `this`: a method passed on as a callback (`.catch(streak.fail)`) still works.
  return {
    get failing() {
      return failing;
    },
    get lastError() {
      return lastError;
    },
    set lastError(message) {
      lastError = message;
    },
    fail(err) {
      const now = Date.now();
      lastError = err?.message ?? String(err);
      attempts++;
      if (!failing) {
        failing = true;
        attempts = 1;
        since = now;
        reportedAt = now;
        options.onError?.(err, { attempts, since });
      } else if (options.reportEveryMs !== undefined && now - reportedAt >= options.reportEveryMs) {
        reportedAt = now;
        options.onError?.(err, { attempts, since });
      }
      backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
      retryAt = now + backoff;
    },
    succeeded() {
      if (!failing) return;
      failing = false;
      lastError = null;
      backoff = options.baseMs;
      const ended = { attempts, since };
      attempts = 0;
      options.onRecover?.(ended);
    },
    waiting: () => failing && Date.now() < retryAt,
    retryNow() {
      retryAt = 0;
    },
  };
}
