/** Row shape of the `exchanges` table. Timestamps are epoch milliseconds; JSON columns are text. */
export interface ExchangesTable {
  id: string;
  started_at: number;
  duration_ms: number;
  ttfb_ms: number | null;
  method: string;
  path: string;
  query: string | null;
  client_addr: string | null;
  status: number | null;
  request_headers: string;
  response_headers: string | null;
  request_body: string | null;
  request_bytes: number;
  request_truncated: number;
  response_body: string | null;
  response_bytes: number;
  response_truncated: number;
  model: string | null;
  upstream_model: string | null;
  upstream: string | null;
  model_unknown: number;
  stream: number;
  prompt_tokens: number | null;
  completion_tokens: number | null;
  total_tokens: number | null;
  user: string | null;
  error: string | null;
  error_message: string | null;
  assembled: string | null;
  internal: number;
}

/** Who wrote a registry entry: seeding (`default`, `config`) or a user (`cli`, `admin`). */
export type RegistrySource = 'default' | 'config' | 'cli' | 'admin';

/** Row shape of the `models` table (model registry). `removed` = 1 is a tombstone for a removed seeded entry. */
export interface ModelsTable {
  name: string;
  display_name: string | null;
  description: string | null;
  upstream: string | null;
  deployment: string | null;
  source: RegistrySource;
  created_at: number;
  updated_at: number;
  removed: number;
}

/** Row shape of the `model_mappings` table: alias → actual model. */
export interface ModelMappingsTable {
  alias: string;
  actual_model: string;
  source: RegistrySource;
  created_at: number;
  updated_at: number;
  removed: number;
}

/** Qdrant indexing state per exchange and target (migrations 0004, 0009); no row = not yet indexed there. */
export interface ExchangeIndexTable {
  exchange_id: string;
  status: 'indexed' | 'failed' | 'skipped';
  error: string | null;
  attempts: number;
  updated_at: number;
  /** The Qdrant URL (no credentials) and collection the status refers to (migration 0009); '' before it. */
  target: string;
}

/** The contentless FTS5 index over exchange bodies (migration 0002); rowid = exchanges.rowid. */
export interface ExchangesFtsTable {
  rowid: number;
  request: string | null;
  response: string | null;
}

/** One row: exchanges up to `indexed_rowid` are in exchanges_fts. */
export interface ExchangesFtsStateTable {
  id: number;
  indexed_rowid: number;
}

/** All tables, for Kysely. Later migrations add their tables here. */
export interface DatabaseSchema {
  exchanges: ExchangesTable;
  exchanges_fts: ExchangesFtsTable;
  exchanges_fts_state: ExchangesFtsStateTable;
  models: ModelsTable;
  model_mappings: ModelMappingsTable;
  exchange_index: ExchangeIndexTable;
}
