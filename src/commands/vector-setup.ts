import type { Logger } from 'pino';
import type { Dispatcher } from 'undici';
import { type ResolvedConfig, settingSource, upstreamApiKey } from '../config/load.js';
import { OaiProxyError } from '../errors.js';
import { headerSecrets, redactedHeadersJson, scrubSecrets } from '../proxy/capture.js';
import { createUpstreamTarget, shapeUpstreamRequest } from '../proxy/forward.js';
import { newExchangeId } from '../proxy/ids.js';
import { withoutBusyWait } from '../storage/busy-wait.js';
import type { SqliteHandle } from '../storage/database.js';
import type { ExchangeRecord } from '../storage/exchange-record.js';
import {
  createIndexStateStore,
  type IndexStateStore,
  type IndexStateStoreOptions,
} from '../storage/index-state-store.js';
import { createEmbeddingClient, type Embedder, type EmbeddingEndpoint } from '../vector/embedding-client.js';
import { fromRecord } from '../vector/exchange-text.js';
import { createVectorIndexer, type VectorIndexer } from '../vector/indexer.js';
import { createQdrantStore, type VectorStore, vectorTarget } from '../vector/qdrant-store.js';
import { withDefaultApiVersion } from './registry-setup.js';

/** What the vector features need, built once per command from the configuration. */
export interface VectorServices {
  store: VectorStore;
  embedder: Embedder;
  state: IndexStateStore;
}

const SET_QDRANT_URL =
  'set QDRANT_URL (e.g. QDRANT_URL=http://127.0.0.1:6333 in the environment, .env or the config file as "qdrantUrl")';

/** How to turn the feature on; used by every message about it being off. */
export const ENABLE_HINT = `${SET_QDRANT_URL}, then run \`oai-proxy logs reindex\` to index what is already recorded`;

/** The same for `logs reindex` itself, which must not send the user back to itself. */
export const REINDEX_ENABLE_HINT = `${SET_QDRANT_URL}, and QDRANT_API_KEY if your Qdrant needs a key; with it set, \`oai-proxy serve\` indexes each new exchange and this command indexes those recorded before`;

/** Throw `vector_disabled` (exit 2) unless QDRANT_URL is set; `hint` says how to turn it on. */
export function requireQdrant(resolved: ResolvedConfig, what: string, hint = ENABLE_HINT): string {
  const url = resolved.config.qdrantUrl;
  if (!url) throw new OaiProxyError('vector_disabled', `${what} needs Qdrant, which is off: ${hint}`);
  return url;
}

/** Every configured secret (keys, secret upstream header values), to be scrubbed from recorded bodies and messages. */
export function configSecrets(resolved: ResolvedConfig): string[] {
  const c = resolved.config;
  return [
    c.openaiApiKey,
    c.adminApiKey,
    c.qdrantApiKey,
    ...c.proxyApiKeys,
    ...Object.values(c.upstreams).flatMap((u) => [
      upstreamApiKey(u, resolved.env),
      ...headerSecrets(u.headers),
    ]),
  ].filter((s): s is string => !!s);
}

/** The upstream embeddings endpoint: EMBEDDING_UPSTREAM's entry, else the default upstream. */
export function resolveEmbeddingEndpoint(resolved: ResolvedConfig): EmbeddingEndpoint {
  const c = resolved.config;
  let target = createUpstreamTarget('default', c.openaiBaseUrl, {
    type: c.openaiApiType,
    apiKey: c.openaiApiKey,
    apiVersion: c.openaiApiVersion,
  });
  if (c.embeddingUpstream) {
    const u = c.upstreams[c.embeddingUpstream];
    if (!u) {
      const known = Object.keys(c.upstreams);
      const fromFile = resolved.sources.embeddingUpstream?.startsWith('config file ');
      const upstreams = fromFile
        ? `that file's "upstreams"`
        : resolved.configFile
          ? `"upstreams" in config file ${resolved.configFile}`
          : '"upstreams" of a config file (none was found)';
      throw new OaiProxyError(
        'config_invalid',
        `${settingSource(resolved, 'embeddingUpstream')} names "${c.embeddingUpstream}", which is not in ${upstreams}${known.length ? ` (known: ${known.join(', ')})` : ''}; fix the name or ${fromFile ? 'remove it' : 'unset it'} to use OPENAI_BASE_URL`,
      );
    }
    target = createUpstreamTarget(c.embeddingUpstream, u.baseUrl, {
      type: u.type,
      apiKey: upstreamApiKey(u, resolved.env),
      apiVersion: u.apiVersion,
      headers: u.headers,
    });
  }
  // Sent the api-version `serve` sends the same upstream (Azure refuses a request without one).
  const shape = shapeUpstreamRequest(
    withDefaultApiVersion(target),
    '/embeddings',
    '',
    {},
    {
      deployment: c.embeddingModel,
    },
  );
  return { name: target.name, origin: target.origin, path: shape.path, headers: shape.headers };
}

/** Build the Qdrant store, the embedding client and the index state for an open database. */
export async function createVectorServices(
  resolved: ResolvedConfig,
  deps: {
    /** The database handle, or a getter for the current one (serve may reopen a replaced file). */
    sqlite: SqliteHandle | (() => SqliteHandle);
    dispatcher: Dispatcher;
    /** Receives the embedding calls as internal exchanges. */
    record: (r: ExchangeRecord) => void;
    qdrantTimeoutMs?: number;
    /** Told when the collection had to be created (again): what was indexed before is not in it. */
    onCollectionCreated?(collection: string): void;
    /** Told when the collection disappeared under a running store (it is then created again). */
    onCollectionLost?(collection: string): void;
    /** Runs the index state's writes, queued (see IndexStateStoreOptions.attempt). */
    attempt?: IndexStateStoreOptions['attempt'];
  },
): Promise<VectorServices> {
  const c = resolved.config;
  const url = requireQdrant(resolved, 'Vector indexing');
  const endpoint = resolveEmbeddingEndpoint(resolved);
  // The indexing state is kept per target, so another collection or Qdrant starts from the first exchange.
  const state = createIndexStateStore(deps.sqlite, vectorTarget(url, c.qdrantCollection), {
    attempt: deps.attempt,
  });
  const store = await createQdrantStore({
    url,
    apiKey: c.qdrantApiKey,
    collection: c.qdrantCollection,
    timeoutMs: deps.qdrantTimeoutMs,
    onCollectionReady(created) {
      if (!created) {
        state.claimUnclaimed();
        return;
      }
      state.reset();
      deps.onCollectionCreated?.(c.qdrantCollection);
    },
    onCollectionLost: () => deps.onCollectionLost?.(c.qdrantCollection),
  });
  const secrets = configSecrets(resolved);
  const embedder = createEmbeddingClient({
    endpoint,
    model: c.embeddingModel,
    dispatcher: deps.dispatcher,
    captureBodyBytes: c.captureBodyBytes,
    redact: {
      text: (text) => scrubSecrets(text, secrets),
      headers: (headers) => redactedHeadersJson(headers, secrets),
    },
    newId: () => newExchangeId(),
    onExchange: deps.record,
  });
  return { store, embedder, state };
}

/** The serve-time indexing: what `startProxy` plugs into its sink and `/health`. */
export interface VectorIndexing {
  indexer: VectorIndexer;
  services: VectorServices;
  onRecord(r: ExchangeRecord): void;
  health(): Record<string, unknown>;
  /** Give queued indexing up to `graceMs` (default 5000), then cut it short; write the last outcomes. */
  close(graceMs?: number): Promise<void>;
  /** A second stop signal: cut the indexing's grace short now. */
  hurry(): void;
}

/** Start background indexing of recorded exchanges (only called when QDRANT_URL is set). */
export async function startVectorIndexing(
  resolved: ResolvedConfig,
  deps: {
    sqlite: SqliteHandle | (() => SqliteHandle);
    dispatcher: Dispatcher;
    record: (r: ExchangeRecord) => void;
    logger: Logger;
  },
): Promise<VectorIndexing> {
  const { logger } = deps;
  const sqlite = deps.sqlite;
  const handle = typeof sqlite === 'function' ? sqlite : () => sqlite;
  const services = await createVectorServices(resolved, {
    ...deps,
    // Marks are written on this thread: a file another process holds locked is waited for on timers.
    attempt: (call) => withoutBusyWait(handle, call),
    onCollectionLost: (collection) =>
      logger.warn(
        `Qdrant collection ${collection} is gone (Qdrant restarted without storage, or it was deleted); creating it again`,
      ),
    onCollectionCreated: (collection) =>
      logger.info(
        `Qdrant collection ${collection} did not exist and was created; exchanges recorded before are not in it until \`oai-proxy logs reindex\``,
      ),
  });
  const indexer = createVectorIndexer({
    embedder: services.embedder,
    store: services.store,
    outcomes: { mark: (o) => void services.state.mark(o) },
    onError: (err) =>
      logger.error(
        { err: { message: err.message } },
        'vector indexing is failing; exchanges are marked not indexed (run `oai-proxy logs reindex` later)',
      ),
    onRecover: () => logger.info('vector indexing recovered'),
  });
  return {
    indexer,
    services,
    onRecord(r) {
      if (!r.internal) indexer.enqueue(fromRecord(r));
    },
    health() {
      const h = indexer.health();
      return {
        qdrant: h.qdrant,
        qdrant_error: h.lastError,
        qdrant_pending: h.pending,
        qdrant_indexed: h.indexed,
        qdrant_failed: h.failed,
      };
    },
    hurry: () => indexer.hurry(),
    async close(graceMs) {
      await indexer.close(graceMs);
      // The last outcomes may still be waiting out a lock: the database is closed next.
      await services.state.flush();
    },
  };
}
