import { createHash } from 'node:crypto';
import { OaiProxyError } from '../errors.js';
import type { ExchangePayload } from './exchange-text.js';

/** One exchange's vector and payload. */
export interface VectorPoint {
  vector: number[];
  payload: ExchangePayload;
}

/** A search hit: the exchange id, its similarity and its payload. */
export interface VectorHit {
  exchangeId: string;
  score: number;
  payload: Partial<ExchangePayload>;
}

export interface VectorSearchOptions {
  limit: number;
  /** Only exchanges that requested this model. */
  model?: string;
  /** Only exchanges at or after this time. */
  since?: Date;
}

/** Where exchange vectors live. */
export interface VectorStore {
  readonly collection: string;
  /** Where the points go, without credentials (URL + collection): the key of the indexing state. */
  readonly target: string;
  /** Whether the collection exists now. */
  exists(): Promise<boolean>;
  /**
   * Insert or replace points; creates the collection (cosine, payload indexes) on first use, and again
   * (once per call) if it has disappeared since (Qdrant restarted without storage, or it was deleted).
   * `signal` cuts the calls short (the indexer is closing).
   */
  upsert(points: VectorPoint[], signal?: AbortSignal): Promise<void>;
  /** Nearest exchanges to `vector`, best first, filters applied in the store. */
  search(vector: number[], options: VectorSearchOptions): Promise<VectorHit[]>;
  /** Remove the points of these exchanges (missing ones are fine). */
  deleteExchanges(ids: string[]): Promise<void>;
}

export interface QdrantStoreOptions {
  url: string;
  apiKey?: string;
  collection: string;
  /** Per-request time limit. */
  timeoutMs?: number;
  /** The collection was found (`created` false) or created empty (`created` true) before first use. */
  onCollectionReady?(created: boolean): void;
  /** The collection disappeared under a running store (a 404 from Qdrant); it is created again. */
  onCollectionLost?(): void;
}

/** The indexing-state key of a collection: its REST URL without credentials, query or API key. */
export function vectorTarget(url: string, collection: string): string {
  return `${safeUrl(url)}/collections/${collection}`;
}

const CROCKFORD = '0123456789abcdefghjkmnpqrstvwxyz';

/**
 * The Qdrant point id of an exchange: its 128-bit ULID as a UUID (reversible), or for ids of any other
 * shape a UUID made from their SHA-256.
 */
export function pointIdFor(exchangeId: string): string {
  let hex: string | null = null;
  if (/^[0-7][0-9a-hjkmnp-tv-z]{25}$/.test(exchangeId)) {
    let n = 0n;
    for (const ch of exchangeId) n = n * 32n + BigInt(CROCKFORD.indexOf(ch));
    hex = n.toString(16).padStart(32, '0');
  } else {
    hex = createHash('sha256').update(exchangeId).digest('hex').slice(0, 32);
  }
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/**
 * A VectorStore on Qdrant through @qdrant/js-client-rest, loaded only when this is called (so a proxy
 * without QDRANT_URL never loads it). The API key is sent as a header and never appears in messages.
 */
export async function createQdrantStore(options: QdrantStoreOptions): Promise<VectorStore> {
  const { QdrantClient } = await import('@qdrant/js-client-rest');
  const { collection } = options;
  const where = safeUrl(options.url);
  const timeoutMs = options.timeoutMs ?? 10_000;
  // The client's own time limit replaces any signal of the call: each call gets its limit here instead,
  // together with the caller's signal (a closing indexer must not wait for a hung Qdrant).
  const api = new QdrantClient({
    url: options.url,
    headers: options.apiKey ? { 'api-key': options.apiKey } : undefined,
    timeout: Number.POSITIVE_INFINITY,
    checkCompatibility: false,
  }).api();
  const init = (signal?: AbortSignal): { signal: AbortSignal } => ({
    signal: signal
      ? AbortSignal.any([AbortSignal.timeout(timeoutMs), signal])
      : AbortSignal.timeout(timeoutMs),
  });
  const collection_name = options.collection;
  const exists = async (signal?: AbortSignal): Promise<boolean> =>
    !!(await api.collectionExists({ collection_name }, init(signal))).data.result?.exists;
  let ready: Promise<void> | null = null;
  let readySize = 0;

  const fail = (what: string, err: unknown): OaiProxyError =>
    new OaiProxyError('vector_error', `Qdrant at ${where}: ${what} failed: ${describe(err, timeoutMs)}`, {
      cause: err,
    });

  const ensureCollection = (size: number, signal?: AbortSignal): Promise<void> => {
    if (ready && readySize === size) return ready;
    readySize = size;
    ready = (async () => {
      const found = await exists(signal);
      if (!found) {
        try {
          await api.createCollection(
            { collection_name, vectors: { size, distance: 'Cosine' } },
            init(signal),
          );
        } catch (err) {
          // Another process may have created it meanwhile.
          if (!(await exists(signal))) throw err;
        }
        await api.createFieldIndex(
          { collection_name, field_name: 'model', field_schema: 'keyword', wait: true },
          init(signal),
        );
        await api.createFieldIndex(
          { collection_name, field_name: 'time', field_schema: 'datetime', wait: true },
          init(signal),
        );
      }
      const info = (await api.getCollection({ collection_name }, init(signal))).data.result;
      const vectors = info?.config?.params?.vectors as { size?: number } | undefined;
      if (vectors && typeof vectors.size === 'number' && vectors.size !== size) {
        throw new OaiProxyError(
          'vector_error',
          `Qdrant collection ${collection} holds ${vectors.size}-dimensional vectors but EMBEDDING_MODEL gives ${size}; set QDRANT_COLLECTION to a new name (then run \`oai-proxy logs reindex\`)`,
        );
      }
      options.onCollectionReady?.(!found);
    })();
    ready.catch(() => {
      ready = null;
    });
    return ready;
  };

  // The collection is gone (Qdrant restarted without storage, or it was deleted): forget it was ready.
  const lost = (err: unknown): boolean => {
    if ((err as { status?: number })?.status !== 404) return false;
    ready = null;
    return true;
  };

  return {
    collection,
    target: vectorTarget(options.url, collection),
    async exists() {
      try {
        return await exists();
      } catch (err) {
        throw fail('checking the collection', err);
      }
    },
    async upsert(points, signal) {
      if (points.length === 0) return;
      const body = {
        collection_name,
        wait: true,
        points: points.map((p) => ({
          id: pointIdFor(p.payload.exchange_id),
          vector: p.vector,
          payload: { ...p.payload },
        })),
      };
      try {
        await ensureCollection(points[0].vector.length, signal);
        try {
          await api.upsertPoints(body, init(signal));
        } catch (err) {
          if (!lost(err)) throw err;
          options.onCollectionLost?.();
          await ensureCollection(points[0].vector.length, signal);
          await api.upsertPoints(body, init(signal));
        }
      } catch (err) {
        lost(err);
        throw err instanceof OaiProxyError ? err : fail(`upserting ${points.length} points`, err);
      }
    },
    async search(vector, { limit, model, since }) {
      const must: Record<string, unknown>[] = [];
      if (model) must.push({ key: 'model', match: { value: model } });
      if (since) must.push({ key: 'time', range: { gte: since.toISOString() } });
      try {
        if (!(await exists())) return [];
        const res = await api.queryPoints(
          {
            collection_name,
            query: vector,
            filter: must.length ? { must } : undefined,
            limit,
            with_payload: true,
          },
          init(),
        );
        return (res.data.result?.points ?? []).map((p) => {
          const payload = (p.payload ?? {}) as Partial<ExchangePayload>;
          return { exchangeId: String(payload.exchange_id ?? p.id), score: p.score, payload };
        });
      } catch (err) {
        if (lost(err)) return [];
        throw fail('search', err);
      }
    },
    async deleteExchanges(ids) {
      if (ids.length === 0) return;
      try {
        if (!(await exists())) return;
        await api.deletePoints({ collection_name, wait: true, points: ids.map(pointIdFor) }, init());
      } catch (err) {
        if (lost(err)) return;
        throw fail(`deleting ${ids.length} points`, err);
      }
    },
  };
}

function safeUrl(url: string): string {
  try {
    const u = new URL(url);
    u.username = '';
    u.password = '';
    u.search = '';
    u.hash = '';
    return u.toString().replace(/\/$/, '');
  } catch {
    return 'QDRANT_URL';
  }
}

/** A short reason for a client error, without headers (which carry the API key). */
function describe(err: unknown, timeoutMs: number): string {
  const e = err as {
    status?: number;
    data?: { status?: { error?: string } };
    message?: string;
    cause?: { code?: string };
  };
  if (typeof e?.status === 'number') {
    const detail = e.data?.status?.error;
    const hint = e.status === 401 || e.status === 403 ? '; check QDRANT_API_KEY' : '';
    return `HTTP ${e.status}${detail ? ` (${detail})` : ''}${hint}`;
  }
  const code = e?.cause?.code;
  if (code) return `${code}; is Qdrant running? check QDRANT_URL`;
  const name = (err as Error)?.name;
  if (name === 'TimeoutError' || name === 'QdrantClientTimeoutError')
    return `no answer within ${timeoutMs} ms`;
  if (name === 'AbortError')
    return 'cut short: the proxy is stopping (`oai-proxy logs reindex` indexes what was left)';
  return e?.message ?? String(err);
}
