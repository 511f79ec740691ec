/** Token usage as reported by the upstream (JSON body or the stream's usage event). */
export interface Usage {
  prompt_tokens: number | null;
  completion_tokens: number | null;
  total_tokens: number | null;
}

/** A streamed answer reassembled from its events. */
export interface AssembledMessage {
  /**
   * The stream's format: OpenAI's (chat, completions, Responses, audio, a Realtime WebSocket session),
   * llama.cpp's or Ollama's; 'unknown' when none.
   */
  kind:
    | 'chat.completion'
    | 'text_completion'
    | 'response'
    | 'transcription'
    | 'speech'
    | 'realtime'
    | 'llama.cpp'
    | 'ollama'
    | 'unknown';
  content: string;
  tool_calls: { id?: string; type?: string; name?: string; arguments: string }[];
  finish_reason: string | null;
  usage: Usage | null;
  /**
   * False when the stream ended before its final event (cut off, aborted, reset). A stream of a format
   * without a known final event (kind 'unknown') is complete when the upstream ended it normally.
   */
  complete: boolean;
  events: number;
  /**
   * Every choice of an `n` > 1 stream in index order, the first included (the fields above are the
   * first's); absent when the stream had one choice.
   */
  choices?: AssembledChoice[];
}

/** One choice of an `n` > 1 stream, reassembled. */
export interface AssembledChoice {
  index: number;
  content: string;
  tool_calls: AssembledMessage['tool_calls'];
  finish_reason: string | null;
}

/** Why an exchange did not complete normally. */
export type ExchangeErrorKind =
  | 'upstream_unreachable'
  | 'upstream_timeout'
  | 'upstream_reset'
  /** The stream (HTTP 200) carried an error event: `event: error`, `{"type":"error"}`, `response.failed`. */
  | 'upstream_stream_error'
  | 'client_aborted'
  /** The request body stopped arriving for CLIENT_BODY_TIMEOUT_MS: the proxy answered 408 (or cut the answer). */
  | 'client_body_timeout'
  /** Still in flight when SHUTDOWN_GRACE_MS ran out at shutdown: the proxy cut it. */
  | 'proxy_shutdown'
  | 'body_too_large'
  | 'invalid_request'
  | 'model_not_found'
  | 'unauthorized'
  | 'proxy_error';

/** One recorded exchange: everything the proxy saw of a request and its response. Secrets already redacted. */
export interface ExchangeRecord {
  id: string;
  startedAt: number;
  durationMs: number;
  ttfbMs: number | null;
  method: string;
  path: string;
  query: string | null;
  clientAddr: string | null;
  status: number | null;
  /** The request headers as a JSON object text (secret headers redacted). */
  requestHeadersJson: string;
  /** The response headers as a JSON object text; null when no response started. */
  responseHeadersJson: string | null;
  requestBody: string | null;
  requestBytes: number;
  requestTruncated: boolean;
  responseBody: string | null;
  responseBytes: number;
  responseTruncated: boolean;
  model: string | null;
  upstreamModel: string | null;
  upstream: string | null;
  modelUnknown: boolean;
  stream: boolean;
  promptTokens: number | null;
  completionTokens: number | null;
  totalTokens: number | null;
  user: string | null;
  error: ExchangeErrorKind | null;
  errorMessage: string | null;
  assembled: AssembledMessage | null;
  internal: boolean;
}

/** Where the proxy hands finished exchanges. Must never throw and never block. */
export interface ExchangeSink {
  record(exchange: ExchangeRecord): void;
}

/**
 * Why rows went to the log file instead of the database: the queue overflowed while the database
 * failed, the database still refused them when the writer closed (shutdown), they arrived after it
 * closed, or the database rejected them as data (PostgreSQL).
 */
export type SpillReason = 'queue_full' | 'refused_at_close' | 'after_close' | 'rejected';

/** What every batched exchange writer takes, whatever the database. */
export interface RecordingWriterOptions {
  flushIntervalMs: number;
  /** Rows kept in memory while the database fails; beyond it the oldest are handed to `onSpill`. */
  queueMax: number;
  /** Rows per write (a transaction on SQLite, one multi-row INSERT on PostgreSQL). */
  batchSize?: number;
  onSpill?(rows: ExchangeRecord[], reason: SpillReason): void;
  onError?(err: Error): void;
  onRecover?(): void;
}
