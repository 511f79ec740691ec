/** A background job that `serve` runs in small slices between requests. */
export interface BackgroundSlices {
  /** Run slices until nothing is pending (tests, benchmarks). Returns the units done. */
  drain(): number;
  close(): void;
}

export interface BackgroundSliceOptions {
  /**
   * Do up to `budget` units of work (rows) and return how many were done: 0 when nothing is pending,
   * anything above 0 to be called again at once. Throwing reports the error once; the next tick retries.
   */
  work(budget: number): number;
  /** How often to look for new work (default 250 ms). */
  intervalMs?: number;
  /** Time budget of one slice: the event loop is never held longer than about this (default 5 ms). */
  sliceMs?: number;
  onError?(err: Error): void;
  /** Runs each slice (`serve` on its event loop: with a short SQLite busy wait, see withShortBusyWait). */
  around?<T>(slice: () => T): T;
}

/**
 * Every `intervalMs`, run `work` in slices of about `sliceMs` (the budget adapts to the measured rate),
 * yielding to the event loop between slices, so recording and proxying are never held up. Errors are
 * reported once per failing streak and retried on the next tick; never thrown.
 */
export function runInSlices(options: BackgroundSliceOptions): BackgroundSlices {
  const sliceMs = options.sliceMs ?? 5;
  let budget = 8;
  let closed = false;
  let running = false;
  let failing = false;

  const slice = (): number => {
    const t = performance.now();
    const n = options.around ? options.around(() => options.work(budget)) : options.work(budget);
    const took = performance.now() - t;
    if (n >= budget) {
      // Aim the next slice at the time budget.
      const rate = n / Math.max(took, 0.5);
      budget = Math.max(1, Math.min(2000, Math.floor(rate * sliceMs)));
    }
    return n;
  };

  const tick = () => {
    if (closed || running) return;
    running = true;
    const step = () => {
      if (closed) {
        running = false;
        return;
      }
      let n = 0;
      try {
        n = slice();
        failing = false;
      } catch (err) {
        if (!failing) options.onError?.(err as Error);
        failing = true;
      }
      if (n > 0 && !failing) setImmediate(step);
      else running = false;
    };
    step();
  };

  const timer = setInterval(tick, options.intervalMs ?? 250);
  timer.unref();
  return {
    drain() {
      let total = 0;
      for (let n = slice(); n > 0; n = slice()) total += n;
      return total;
    },
    close() {
      closed = true;
      clearInterval(timer);
    },
  };
}
