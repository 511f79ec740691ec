import { performance } from 'node:perf_hooks';
import type { Dispatcher } from 'undici';
import { OaiProxyError } from '../errors.js';
import { undici } from '../lazy-modules.js';
import type { ExchangeRecord } from '../storage/exchange-record.js';

/** Response headers as undici gives them (lower-case names; a missing value is undefined). */
type ResponseHeaders = Record<string, string | string[] | undefined>;

/** Where embeddings are requested: an upstream's embeddings URL with its credentials already applied. */
export interface EmbeddingEndpoint {
  /** Upstream name as recorded (`default` or the config file's name). */
  name: string;
  origin: string;
  /** Path (and query) of the embeddings endpoint on that origin. */
  path: string;
  headers: Record<string, string | string[]>;
}

/** Turns texts into vectors. */
export interface Embedder {
  readonly model: string;
  /** `signal` cuts the call short (the indexer is closing); it then throws like a failed call. */
  embed(texts: string[], signal?: AbortSignal): Promise<number[][]>;
}

export interface EmbeddingClientOptions {
  endpoint: EmbeddingEndpoint;
  model: string;
  dispatcher: Dispatcher;
  /** Whole-call time limit. */
  timeoutMs?: number;
  /** Bytes of each body kept in the internal exchange record. */
  captureBodyBytes?: number;
  /**
   * How what is recorded and thrown is kept free of secrets (the composition root passes the proxy's own
   * redaction): `text` scrubs configured keys from bodies and error messages; `headers` is the stored
   * JSON of the upstream's response headers (lower-case names), secret headers such as set-cookie redacted.
   */
  redact: {
    text(s: string): string;
    headers(headers: ResponseHeaders): string;
  };
  newId: () => string;
  /** Receives each call as an internal exchange (to be recorded). Must not throw. */
  onExchange?: (r: ExchangeRecord) => void;
}

/** An embeddings client for the upstream's `/embeddings` endpoint; every call is reported as an internal exchange. */
export function createEmbeddingClient(options: EmbeddingClientOptions): Embedder {
  const { endpoint, model, dispatcher } = options;
  const timeoutMs = options.timeoutMs ?? 30_000;
  const capture = options.captureBodyBytes ?? 4 * 1024 * 1024;
  const scrub = options.redact.text;
  const where = `${endpoint.origin}${endpoint.path.split('?')[0]}`;

  return {
    model,
    async embed(texts, signal) {
      if (texts.length === 0) return [];
      const body = JSON.stringify({ model, input: texts, encoding_format: 'float' });
      const startedAt = Date.now();
      const t0 = performance.now();
      let status: number | null = null;
      let responseText = '';
      let responseHeaders: ResponseHeaders | null = null;
      let ttfb: number | null = null;
      let failure: { kind: ExchangeRecord['error']; message: string } | null = null;
      try {
        const res = await undici().request(endpoint.origin + endpoint.path, {
          method: 'POST',
          headers: { ...endpoint.headers, 'content-type': 'application/json', 'accept-encoding': 'identity' },
          body,
          dispatcher,
          signal: signal
            ? AbortSignal.any([AbortSignal.timeout(timeoutMs), signal])
            : AbortSignal.timeout(timeoutMs),
        });
        ttfb = performance.now() - t0;
        status = res.statusCode;
        responseHeaders = res.headers;
        responseText = await res.body.text();
      } catch (err) {
        // A DOMException (the timeout's TimeoutError) has a numeric legacy `code`: only a string one names the cause.
        const errCode = (err as { code?: unknown }).code;
        const name = (err as { name?: unknown }).name;
        const code = typeof errCode === 'string' ? errCode : typeof name === 'string' ? name : undefined;
        const timeout = code === 'TimeoutError' || code === 'AbortError' || !!code?.includes('TIMEOUT');
        failure = signal?.aborted
          ? {
              kind: 'proxy_shutdown',
              message: `Embedding request to ${where} was cut short: the proxy is stopping (\`oai-proxy logs reindex\` indexes what was left)`,
            }
          : {
              kind: timeout ? 'upstream_timeout' : 'upstream_unreachable',
              message: timeout
                ? `Embedding request to ${where} did not finish within ${timeoutMs} ms`
                : `Embedding request to ${where} failed (${code ?? (err as Error).message}); check OPENAI_BASE_URL / EMBEDDING_UPSTREAM`,
            };
      }
      let vectors: number[][] | null = null;
      if (!failure && status !== null) {
        if (status < 200 || status > 299) {
          failure = {
            kind: null,
            message: `Embedding upstream ${where} answered ${status}${upstreamMessage(responseText)}; check EMBEDDING_MODEL (${model}) and the upstream's API key`,
          };
        } else {
          vectors = parseEmbeddings(responseText, texts.length);
          if (!vectors)
            failure = {
              kind: null,
              message: `Embedding upstream ${where} answered without ${texts.length} embeddings; is EMBEDDING_MODEL (${model}) an embedding model?`,
            };
        }
      }
      report(startedAt, t0, ttfb, status, body, responseText, responseHeaders, failure);
      if (failure) throw new OaiProxyError('vector_error', scrub(failure.message));
      return vectors!;
    },
  };

  function report(
    startedAt: number,
    t0: number,
    ttfb: number | null,
    status: number | null,
    requestBody: string,
    responseBody: string,
    responseHeaders: ResponseHeaders | null,
    failure: { kind: ExchangeRecord['error']; message: string } | null,
  ): void {
    if (!options.onExchange) return;
    const reqBytes = Buffer.byteLength(requestBody);
    const resBytes = Buffer.byteLength(responseBody);
    try {
      options.onExchange({
        id: options.newId(),
        startedAt,
        durationMs: performance.now() - t0,
        ttfbMs: ttfb,
        method: 'POST',
        path: '/v1/embeddings',
        query: null,
        clientAddr: null,
        status,
        requestHeadersJson: '{"content-type":"application/json","x-oai-proxy-internal":"vector-index"}',
        responseHeadersJson: responseHeaders ? options.redact.headers(responseHeaders) : null,
        requestBody: scrub(truncate(requestBody, capture)),
        requestBytes: reqBytes,
        requestTruncated: reqBytes > capture,
        responseBody: responseBody ? scrub(truncate(responseBody, capture)) : null,
        responseBytes: resBytes,
        responseTruncated: resBytes > capture,
        model,
        upstreamModel: model,
        upstream: endpoint.name,
        modelUnknown: false,
        stream: false,
        promptTokens: usageOf(responseBody)?.prompt_tokens ?? null,
        completionTokens: null,
        totalTokens: usageOf(responseBody)?.total_tokens ?? null,
        user: null,
        error: failure?.kind ?? null,
        errorMessage: failure ? scrub(failure.message) : null,
        assembled: null,
        internal: true,
      });
    } catch {
      // Recording is best effort; the caller only cares about the vectors.
    }
  }
}

function truncate(s: string, max: number): string {
  return Buffer.byteLength(s) <= max ? s : Buffer.from(s).subarray(0, max).toString('utf8');
}

function usageOf(body: string): { prompt_tokens?: number; total_tokens?: number } | null {
  try {
    return JSON.parse(body)?.usage ?? null;
  } catch {
    return null;
  }
}

function upstreamMessage(body: string): string {
  try {
    const m = JSON.parse(body)?.error?.message;
    return typeof m === 'string' ? ` (${m.slice(0, 300)})` : '';
  } catch {
    return '';
  }
}

/** The vectors of an OpenAI embeddings response, in input order; base64 float32 is decoded. Null if malformed. */
export function parseEmbeddings(body: string, expected: number): number[][] | null {
  let json: any;
  try {
    json = JSON.parse(body);
  } catch {
    return null;
  }
  if (!Array.isArray(json?.data) || json.data.length !== expected) return null;
  const out: number[][] = new Array(expected);
  for (const [i, item] of json.data.entries()) {
    const index = typeof item?.index === 'number' ? item.index : i;
    let v = item?.embedding;
    if (typeof v === 'string') {
      const buf = Buffer.from(v, 'base64');
      const n = Math.floor(buf.length / 4);
      // Copy: a pooled Buffer's offset need not be 4-byte aligned.
      v = Array.from(new Float32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + n * 4)));
    }
    if (!Array.isArray(v) || v.length === 0 || index < 0 || index >= expected) return null;
    out[index] = v;
  }
  return out.every(Boolean) ? out : null;
}
