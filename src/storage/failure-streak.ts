/**
 * A writer's failing streak: the first failure is reported once, retries back off from the flush
 * interval doubling up to 5 s, and the first success ends the streak (reported once). Shared by the
 * SQLite and PostgreSQL exchange writers, which retry the same way.
 */
export interface FailureStreak {
  /** True from a failure until the next success. */
  readonly failing: boolean;
  /** The last failure's message while failing, else null (a writer may also set its own note). */
  lastError: string | null;
  /** Count a failure: report it if it starts a streak, and push the next retry back. */
  fail(err: Error): void;
  /** A write succeeded: end the streak (reported once) and reset the back-off. */
  succeeded(): void;
  /** True while failing and the next retry is not due yet. */
  waiting(): boolean;
  /** Make the next retry due now (a replacement connection is ready). */
  retryNow(): void;
}

/** The longest wait between retries of a failing write. */
export const MAX_BACKOFF_MS = 5000;

export function createFailureStreak(options: {
  /** The first back-off; each failure doubles it up to 5 s. */
  baseMs: number;
  onError?(err: Error): void;
  onRecover?(): void;
}): FailureStreak {
  let backoff = options.baseMs;
  let retryAt = 0;
  let failing = false;
  let lastError: string | null = null;
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
      lastError = err.message;
      if (!failing) {
        failing = true;
        options.onError?.(err);
      }
      backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
      retryAt = Date.now() + backoff;
    },
    succeeded() {
      if (!failing) return;
      failing = false;
      lastError = null;
      backoff = options.baseMs;
      options.onRecover?.();
    },
    waiting: () => failing && Date.now() < retryAt,
    retryNow() {
      retryAt = 0;
    },
  };
}
