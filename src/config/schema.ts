/** Model entry as written in the config file (`models` or object items of `availableModels`). */
export interface ModelEntry {
  name: string;
  upstream?: string;
  deployment?: string;
  displayName?: string;
  description?: string;
}

/** A named upstream from the config file's `upstreams` key. */
export interface UpstreamEntry {
  baseUrl: string;
  apiKey?: string;
  apiKeyEnv?: string;
  type: 'openai' | 'azure';
  apiVersion?: string;
  headers?: Record<string, string>;
}

/** The complete, validated configuration every command receives. */
export interface Config {
  openaiApiKey?: string;
  openaiBaseUrl: string;
  openaiApiType?: 'openai' | 'azure';
  openaiApiVersion?: string;
  host: string;
  port: number;
  databaseUrl?: string;
  logFilePath?: string;
  logLevel: 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal' | 'silent';
  logMaxBytes: number;
  logMaxFiles: number;
  logRotateDaily: boolean;
  logFlushIntervalMs: number;
  logQueueMax: number;
  searchIndex: boolean;
  upstreamConnectTimeoutMs: number;
  upstreamHeadersTimeoutMs: number;
  upstreamIdleTimeoutMs: number;
  clientBodyTimeoutMs: number;
  maxRequestBodyBytes: number;
  captureBodyBytes: number;
  shutdownGraceMs: number;
  corsOrigins: string[];
  availableModels?: (string | ModelEntry)[];
  models?: ModelEntry[];
  modelMappings: Record<string, string>;
  validateModels: boolean;
  allowUnknownModels: boolean;
  upstreams: Record<string, UpstreamEntry>;
  adminApiKey?: string;
  proxyApiKeys: string[];
  qdrantUrl?: string;
  qdrantApiKey?: string;
  qdrantCollection: string;
  embeddingModel: string;
  embeddingUpstream?: string;
}

export type ConfigKey = keyof Config;

export type SettingType =
  | 'string'
  | 'secret'
  | 'url'
  | 'int'
  | 'bool'
  | 'list'
  | 'object'
  | 'enum'
  | 'models'
  | 'modelEntries'
  | 'upstreams';

/** One setting: its camelCase file key, SCREAMING_SNAKE env name (if any), type, default and help. */
export interface SettingDef {
  key: ConfigKey;
  env?: string;
  flag?: string;
  type: SettingType;
  values?: readonly string[];
  min?: number;
  max?: number;
  default?: unknown;
  /**
   * Values are secrets (beyond the `secret` type): never echoed, e.g. in a validation message, and
   * shown as [redacted] where another setting's message quotes one (resolveConfig gathers them first).
   */
  secret?: boolean;
  description: string;
}

const MiB = 1024 * 1024;

/** The longest delay Node's timers take (2^31-1 ms, about 24.8 days): a larger one fires after 1 ms. */
const MAX_TIMER_MS = 2_147_483_647;

/** Every setting oai-proxy knows. The README's configuration table and `.env.example` follow this list. */
export const SETTINGS: readonly SettingDef[] = [
  {
    key: 'openaiApiKey',
    env: 'OPENAI_API_KEY',
    type: 'secret',
    description:
      "Key sent upstream in place of the client's; unset: each client's own Authorization is forwarded",
  },
  {
    key: 'openaiBaseUrl',
    env: 'OPENAI_BASE_URL',
    flag: '--upstream',
    type: 'url',
    default: 'https://api.openai.com/v1',
    description: 'Default upstream base URL',
  },
  {
    key: 'openaiApiType',
    env: 'OPENAI_API_TYPE',
    type: 'enum',
    values: ['openai', 'azure'],
    description: 'Default upstream kind; `azure` is also detected from a *.openai.azure.com host',
  },
  {
    key: 'openaiApiVersion',
    env: 'OPENAI_API_VERSION',
    type: 'string',
    description: 'Azure api-version query parameter for the default upstream',
  },
  {
    key: 'host',
    env: 'HOST',
    flag: '--host',
    type: 'string',
    default: '127.0.0.1',
    description: 'Address to listen on',
  },
  {
    key: 'port',
    env: 'PORT',
    flag: '--port',
    type: 'int',
    min: 0,
    max: 65535,
    default: 8000,
    description: 'Port to listen on (0 picks a free one)',
  },
  {
    key: 'databaseUrl',
    env: 'DATABASE_URL',
    flag: '--db',
    type: 'string',
    description:
      'SQLite path, sqlite:///rel.db, sqlite:////abs.db or file: URL; default $XDG_DATA_HOME/oai-proxy/oai-proxy.db',
  },
  {
    key: 'logFilePath',
    env: 'LOG_FILE_PATH',
    flag: '--log-file',
    type: 'string',
    description: 'JSON-lines log file; default oai-proxy.log beside the database',
  },
  {
    key: 'logLevel',
    env: 'LOG_LEVEL',
    type: 'enum',
    values: ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'],
    default: 'info',
    description: 'Console log level',
  },
  {
    key: 'logMaxBytes',
    env: 'LOG_MAX_BYTES',
    type: 'int',
    min: 0,
    default: 50 * MiB,
    description: 'Rotate the log file when it reaches this size (0 = never by size)',
  },
  {
    key: 'logMaxFiles',
    env: 'LOG_MAX_FILES',
    type: 'int',
    min: 1,
    max: 1000,
    default: 5,
    description: 'Rotated log files kept (oai-proxy.log.1 … .N)',
  },
  {
    key: 'logRotateDaily',
    env: 'LOG_ROTATE_DAILY',
    type: 'bool',
    default: false,
    description: 'Also rotate the log file when the (UTC) day changes',
  },
  {
    key: 'logFlushIntervalMs',
    env: 'LOG_FLUSH_INTERVAL_MS',
    type: 'int',
    min: 1,
    max: 60_000,
    default: 200,
    description: 'How often queued rows are written to the database, in one transaction',
  },
  {
    key: 'logQueueMax',
    env: 'LOG_QUEUE_MAX',
    type: 'int',
    min: 100,
    default: 20_000,
    description:
      'Rows kept in memory while the database is unavailable; beyond it the oldest spill to the log file',
  },
  {
    key: 'searchIndex',
    env: 'SEARCH_INDEX',
    type: 'bool',
    default: true,
    description:
      'Fill the full-text index `logs --grep` searches, in the background (false: no tokenising of bodies and a smaller database; --grep then finds only rows indexed earlier)',
  },
  {
    key: 'upstreamConnectTimeoutMs',
    env: 'UPSTREAM_CONNECT_TIMEOUT_MS',
    type: 'int',
    min: 1,
    max: MAX_TIMER_MS,
    default: 10_000,
    description: 'Time allowed to connect to the upstream',
  },
  {
    key: 'upstreamHeadersTimeoutMs',
    env: 'UPSTREAM_HEADERS_TIMEOUT_MS',
    type: 'int',
    min: 1,
    max: MAX_TIMER_MS,
    default: 600_000,
    description: "Time allowed until the upstream's response headers",
  },
  {
    key: 'upstreamIdleTimeoutMs',
    env: 'UPSTREAM_IDLE_TIMEOUT_MS',
    type: 'int',
    min: 1,
    max: MAX_TIMER_MS,
    default: 300_000,
    description: 'Longest silence between body chunks or stream events',
  },
  {
    key: 'clientBodyTimeoutMs',
    env: 'CLIENT_BODY_TIMEOUT_MS',
    type: 'int',
    min: 0,
    max: MAX_TIMER_MS,
    default: 60_000,
    description:
      "Longest silence while a client's request body is arriving: beyond it the proxy answers 408 and aborts the upstream request (0 = no limit)",
  },
  {
    key: 'maxRequestBodyBytes',
    env: 'MAX_REQUEST_BODY_BYTES',
    type: 'int',
    min: 1,
    default: 32 * MiB,
    description: 'Largest JSON request body accepted (413 beyond)',
  },
  {
    key: 'captureBodyBytes',
    env: 'CAPTURE_BODY_BYTES',
    type: 'int',
    min: 0,
    default: 4 * MiB,
    description: 'Bytes of each body stored; longer bodies are stored truncated with their true size',
  },
  {
    key: 'shutdownGraceMs',
    env: 'SHUTDOWN_GRACE_MS',
    type: 'int',
    min: 0,
    max: MAX_TIMER_MS,
    default: 10_000,
    description: 'On SIGINT/SIGTERM, time in-flight requests get to finish',
  },
  {
    key: 'corsOrigins',
    env: 'CORS_ORIGINS',
    type: 'list',
    default: [],
    description: 'Comma-separated allowed browser origins, or *; empty: CORS off',
  },
  {
    key: 'availableModels',
    env: 'AVAILABLE_MODELS',
    type: 'models',
    description:
      'Comma-separated model names (file: strings or {name, upstream, deployment, displayName, description}); replaces the default list',
  },
  {
    key: 'models',
    type: 'modelEntries',
    description: 'File only: model entries {name, upstream?, deployment?, displayName?, description?}',
  },
  {
    key: 'modelMappings',
    env: 'MODEL_MAPPINGS',
    type: 'object',
    default: {},
    description: 'JSON object alias → model',
  },
  {
    key: 'validateModels',
    env: 'VALIDATE_MODELS',
    type: 'bool',
    default: false,
    description: 'Answer 404 model_not_found for models neither registered nor aliased',
  },
  {
    key: 'allowUnknownModels',
    env: 'ALLOW_UNKNOWN_MODELS',
    type: 'bool',
    default: false,
    description: 'With VALIDATE_MODELS, let unknown models pass (recorded as unknown)',
  },
  {
    key: 'upstreams',
    type: 'upstreams',
    default: {},
    description:
      'File only: named upstreams name → {baseUrl, apiKey | apiKeyEnv, type, apiVersion?, headers?}',
  },
  {
    key: 'adminApiKey',
    env: 'ADMIN_API_KEY',
    type: 'secret',
    description: 'Enables /admin/* with Authorization: Bearer <key>',
  },
  {
    key: 'proxyApiKeys',
    env: 'PROXY_API_KEYS',
    type: 'list',
    secret: true,
    default: [],
    description: 'Comma-separated keys clients must present; empty: no client auth',
  },
  {
    key: 'qdrantUrl',
    env: 'QDRANT_URL',
    type: 'url',
    description: 'Enables Qdrant indexing and `logs search`',
  },
  { key: 'qdrantApiKey', env: 'QDRANT_API_KEY', type: 'secret', description: 'Qdrant API key' },
  {
    key: 'qdrantCollection',
    env: 'QDRANT_COLLECTION',
    type: 'string',
    default: 'oai_proxy_exchanges',
    description: 'Qdrant collection name',
  },
  {
    key: 'embeddingModel',
    env: 'EMBEDDING_MODEL',
    type: 'string',
    default: 'text-embedding-3-small',
    description: 'Model used to embed exchanges for search',
  },
  {
    key: 'embeddingUpstream',
    env: 'EMBEDDING_UPSTREAM',
    type: 'string',
    description: 'Named upstream for embeddings (default: the default upstream)',
  },
];

/**
 * What `logs search` and `logs reindex` read: the database, Qdrant, the upstream they embed through (its
 * URL, kind, api-version and key, a named one from `upstreams`, the timeouts, and the body cap of the
 * embedding exchanges they record), and every key, which configSecrets scrubs from those exchanges.
 */
const VECTOR_COMMAND_READS: readonly ConfigKey[] = [
  'databaseUrl',
  'openaiApiKey',
  'openaiBaseUrl',
  'openaiApiType',
  'openaiApiVersion',
  'upstreams',
  'upstreamConnectTimeoutMs',
  'upstreamHeadersTimeoutMs',
  'upstreamIdleTimeoutMs',
  'captureBodyBytes',
  'qdrantUrl',
  'qdrantApiKey',
  'qdrantCollection',
  'embeddingModel',
  'embeddingUpstream',
  'adminApiKey',
  'proxyApiKeys',
];

/**
 * The settings each command other than `serve` (which reads them all) reads, in any of the subcommands
 * that resolve the configuration through the same loader; a key read only to scrub it from what the
 * command records counts. An invalid value of any other setting is a warning naming it, and the value is
 * skipped, instead of stopping a command that never reads it (unusedSettings, resolveConfig's `unused`).
 * A skipped key is still hidden from every message: resolveConfig gathers the secrets from the raw values.
 */
export const SETTINGS_READ_BY = {
  // list, show, follow/tail, stats, export: the database, and the log files export must not overwrite.
  'oai-proxy logs': ['databaseUrl', 'logFilePath', 'logMaxFiles'],
  // With QDRANT_URL set, the pruned exchanges' points are deleted from Qdrant too.
  'oai-proxy logs prune': ['databaseUrl', 'qdrantUrl', 'qdrantApiKey', 'qdrantCollection'],
  'oai-proxy logs search': VECTOR_COMMAND_READS,
  'oai-proxy logs reindex': VECTOR_COMMAND_READS,
  // Every subcommand seeds a registry never written (models, aliases, the upstreams they name); `list`
  // and `show` list the upstreams' names, `add --upstream` checks its name against them.
  'oai-proxy models': ['databaseUrl', 'availableModels', 'models', 'modelMappings', 'upstreams'],
} as const satisfies Record<string, readonly ConfigKey[]>;

/** A command SETTINGS_READ_BY lists. */
export type ReadingCommand = keyof typeof SETTINGS_READ_BY;

/** resolveConfig's `unused` for `command`: every setting it does not read. */
export function unusedSettings(command: ReadingCommand): { command: string; settings: ConfigKey[] } {
  const reads: readonly ConfigKey[] = SETTINGS_READ_BY[command];
  return { command, settings: SETTINGS.map((s) => s.key).filter((key) => !reads.includes(key)) };
}
