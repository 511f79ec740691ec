import type { Embedder } from './embedding-client.js';
import { exchangeText, type IndexableExchange, isIndexable, payloadOf } from './exchange-text.js';
import type { VectorStore } from './qdrant-store.js';

/** What happened to one exchange; persisted so `logs reindex` can find what is not indexed. */
export interface IndexOutcome {
  id: string;
  status: 'indexed' | 'failed' | 'skipped';
  error: string | null;
}

/** Where outcomes are recorded (the SQLite index state). Must not throw. */
export interface IndexOutcomeSink {
  mark(outcomes: IndexOutcome[]): void;
}

/** What `/health` shows about indexing. */
export interface VectorIndexerHealth {
  qdrant: 'ok' | 'error';
  pending: number;
  indexed: number;
  failed: number;
  dropped: number;
  lastError: string | null;
}

/** A bounded, batching background indexer: `enqueue()` never waits; a timer embeds and upserts in batches. */
export interface VectorIndexer {
  /** Queue an exchange (ignored if it is not indexable). Never throws, never blocks. */
  enqueue(x: IndexableExchange): void;
  /** Embed and upsert these exchanges now; marks outcomes; throws OaiProxyError('vector_error') on failure. */
  indexBatch(xs: IndexableExchange[]): Promise<{ indexed: number; skipped: number }>;
  /** Process everything queued so far. */
  drain(): Promise<void>;
  health(): VectorIndexerHealth;
  /**
   * Stop the timer and give queued work up to `graceMs` to finish; then the calls in flight are cut short
   * and nothing more is started: the rest is left for `logs reindex`.
   */
  close(graceMs?: number): Promise<void>;
  /** End close()'s grace now (a second stop signal): the batch in flight is cut short at once. */
  hurry(): void;
}

export interface VectorIndexerOptions {
  embedder: Embedder;
  store: VectorStore;
  outcomes: IndexOutcomeSink;
  /** Exchanges kept waiting; beyond it the oldest are dropped (and left for `logs reindex`). */
  queueMax?: number;
  batchSize?: number;
  intervalMs?: number;
  onError?(err: Error): void;
  onRecover?(): void;
}

/** Create the indexer. Failures are reported through `onError` and `health()`, never thrown at the caller. */
export function createVectorIndexer(options: VectorIndexerOptions): VectorIndexer {
  const queueMax = options.queueMax ?? 10_000;
  const batchSize = options.batchSize ?? 32;
  const queue: IndexableExchange[] = [];
  let busy: Promise<void> | null = null;
  let inBatch = 0;
  let indexed = 0;
  let failed = 0;
  let dropped = 0;
  let failing = false;
  let lastError: string | null = null;
  let closed = false;
  // The batch in flight's, aborted when close()'s grace runs out: its embedding and Qdrant calls give up.
  // One per batch, not one for the indexer's life: each call joins it with its timeout through
  // AbortSignal.any, and on Node 20 the source signal keeps every such joined signal for as long as it
  // lives (nodejs/node#55351): a process-long signal grew by one entry per call.
  let stop: AbortController | null = null;
  /** Ends close()'s grace early (hurry()); set while that grace runs. */
  let endGrace: (() => void) | null = null;
  let hurried = false;

  const indexBatch = (xs: IndexableExchange[]) => {
    const batch = new AbortController();
    stop = batch;
    return indexExchanges(xs, { ...options, signal: batch.signal }).finally(() => {
      if (stop === batch) stop = null;
    });
  };

  const runOnce = async () => {
    while (queue.length > 0 && !closed) {
      const batch = queue.splice(0, batchSize);
      inBatch = batch.length;
      try {
        const r = await indexBatch(batch);
        indexed += r.indexed;
        if (failing) {
          failing = false;
          lastError = null;
          options.onRecover?.();
        }
      } catch (err) {
        failed += batch.length;
        lastError = (err as Error).message;
        if (!failing) {
          failing = true;
          options.onError?.(err as Error);
        }
      } finally {
        inBatch = 0;
      }
    }
  };

  const kick = (): Promise<void> => {
    busy ??= runOnce().finally(() => {
      busy = null;
    });
    return busy;
  };

  const timer = setInterval(() => {
    if (queue.length > 0 && !busy) void kick();
  }, options.intervalMs ?? 200);
  timer.unref();

  return {
    enqueue(x) {
      if (closed || !isIndexable(x)) return;
      queue.push(x);
      if (queue.length > queueMax) dropped += queue.splice(0, queue.length - queueMax).length;
    },
    indexBatch,
    hurry() {
      hurried = true;
      endGrace?.();
    },
    async drain() {
      while (!closed && (queue.length > 0 || busy)) await kick();
    },
    health() {
      return {
        qdrant: failing ? 'error' : 'ok',
        pending: queue.length + inBatch,
        indexed,
        failed,
        dropped,
        lastError,
      };
    },
    async close(graceMs = 5000) {
      clearInterval(timer);
      let t: NodeJS.Timeout | undefined;
      const wait = (ms: number) =>
        new Promise<void>((r) => {
          t = setTimeout(r, ms);
        });
      if (!hurried)
        await Promise.race([
          this.drain(),
          wait(graceMs),
          new Promise<void>((r) => {
            endGrace = r;
          }),
        ]);
      endGrace = null;
      clearTimeout(t);
      closed = true;
      if (!busy) return;
      // Cut the batch in flight short and let it settle (it reports its embedding call and marks its
      // exchanges failed), so nothing is recorded after the caller goes on to close the writer.
      stop?.abort();
      await Promise.race([busy, wait(1000)]);
      clearTimeout(t);
    },
  };
}

/**
 * Embed and upsert these exchanges in one batch, recording each one's outcome (not indexable or no text:
 * `skipped`). Throws the embedding or Qdrant error after marking the batch `failed`.
 */
export async function indexExchanges(
  xs: IndexableExchange[],
  deps: { embedder: Embedder; store: VectorStore; outcomes: IndexOutcomeSink; signal?: AbortSignal },
): Promise<{ indexed: number; skipped: number }> {
  const work: { x: IndexableExchange; text: string }[] = [];
  const skipped: IndexOutcome[] = [];
  for (const x of xs) {
    const text = isIndexable(x) ? exchangeText(x) : null;
    if (text) work.push({ x, text });
    else skipped.push({ id: x.id, status: 'skipped', error: null });
  }
  if (skipped.length) deps.outcomes.mark(skipped);
  if (work.length === 0) return { indexed: 0, skipped: skipped.length };
  try {
    const vectors = await deps.embedder.embed(
      work.map((w) => w.text),
      deps.signal,
    );
    await deps.store.upsert(
      work.map((w, i) => ({ vector: vectors[i], payload: payloadOf(w.x) })),
      deps.signal,
    );
  } catch (err) {
    const message = (err as Error).message;
    deps.outcomes.mark(work.map((w) => ({ id: w.x.id, status: 'failed', error: message })));
    throw err;
  }
  deps.outcomes.mark(work.map((w) => ({ id: w.x.id, status: 'indexed', error: null })));
  return { indexed: work.length, skipped: skipped.length };
}
