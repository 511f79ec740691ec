import {
  createServer,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type Server,
  ServerResponse,
} from 'node:http';
import type { Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import type { Duplex } from 'node:stream';
import type { Dispatcher } from 'undici';
import { isOaiProxyError, openAiErrorBody } from '../errors.js';
import type {
  AssembledMessage,
  ExchangeErrorKind,
  ExchangeRecord,
  ExchangeSink,
} from '../storage/exchange-record.js';
import { keyMatches } from './admin-api.js';
import { BackgroundResponses } from './background-responses.js';
import {
  BodyCapture,
  bearerToken,
  isTextual,
  querySecretValues,
  redactedHeadersJson,
  redactQuerySecrets,
  scrubAssembled,
  scrubBody,
  scrubNullable,
  scrubSecrets,
  withClientKey,
  withheldStreamBody,
} from './capture.js';
import {
  azurePathDeployment,
  azureRealtimeModelParam,
  classifyUpstreamError,
  connectionTokens,
  hasOwnKey,
  isDeploymentInPath,
  isHopByHop,
  isMalformedResponseCode,
  shapeUpstreamRequest,
  type UpstreamTarget,
} from './forward.js';
import { newExchangeId } from './ids.js';
import { replaceJsonModel } from './json-model.js';
import { type MultipartModelScan, multipartBoundary, scanMultipartModel } from './multipart-model.js';
import {
  createRealtimeSession,
  REALTIME_MESSAGE_MAX_BYTES,
  type RealtimeSession,
} from './realtime-session.js';
import { isDecodable, RecordDecoder } from './record-decoder.js';
import { createStreamAssembler, extractUsage, type StreamAssembler, streamFraming } from './sse.js';
import {
  dropSubprotocolKey,
  headWithoutUpgrade,
  isWebSocketUpgrade,
  queryDeployments,
  queryModels,
  type RelayEnd,
  relaySockets,
  replaceQueryModel,
  subprotocolKey,
  switchingProtocolsHead,
  withoutSubprotocolKey,
} from './websocket.js';
import { negotiatedDeflate } from './websocket-frames.js';

/** Where a model's requests go, as decided by the model registry. */
export interface RouteDecision {
  upstream: UpstreamTarget;
  /** Model name to send upstream (alias resolved); null when the request names none. */
  model: string | null;
  /** Azure deployment for this model. */
  deployment?: string;
  /** True when validation is on, the model is not registered, and unknown models are allowed. */
  unknown: boolean;
}

/**
 * Resolves a requested model to its upstream. Returning `null` means: refuse with 404 model_not_found.
 * Throwing an OaiProxyError answers with its status and message (e.g. a model naming a missing upstream).
 */
export interface ModelRouter {
  route(model: string | null): RouteDecision | null;
  /**
   * True when unknown models are refused (VALIDATE_MODELS=true without ALLOW_UNKNOWN_MODELS): a body
   * declared JSON that the proxy cannot parse is refused then, as its model cannot be checked (an
   * upstream with a laxer parser, Python's json.loads with NaN or UTF-16, would still serve it).
   */
  refusesUnknown?(): boolean;
}

/** An exchange the proxy answers itself (admin API, /models). Returns true when it handled the request. */
export type OwnRoute = (ctx: ExchangeContext) => boolean | Promise<boolean>;

export interface ProxyLimits {
  maxRequestBodyBytes: number;
  captureBodyBytes: number;
  corsOrigins: string[];
  /**
   * CLIENT_BODY_TIMEOUT_MS: longest silence while a request body is arriving before the proxy gives up on
   * it (408, upstream request aborted); 0: no limit. Not a total time: a slow upload that keeps sending runs.
   */
  clientBodyTimeoutMs: number;
}

export interface ProxyServerOptions {
  limits: ProxyLimits;
  dispatcher: Dispatcher;
  defaultUpstream: UpstreamTarget;
  sink: ExchangeSink;
  router?: ModelRouter;
  routes?: OwnRoute[];
  /** Body of `GET /health` beyond status/uptime/requests. */
  health: () => Record<string, unknown>;
  version: string;
  /**
   * Values scrubbed from anything recorded (keys that might be echoed back); a getter when they change
   * while running (`POST /admin/reload-config`).
   */
  secrets?: readonly string[] | (() => readonly string[]);
  /** PROXY_API_KEYS: when non-empty, clients must present one (Bearer or `api-key`); it is never forwarded. */
  clientKeys?: string[];
  /** ADMIN_API_KEY: never forwarded upstream, even when a client presents it as its API key. */
  adminKey?: string | (() => string | undefined);
  onError?: (err: Error, context: string) => void;
  /**
   * Told the size of each request-body chunk that streams through unbuffered (uploads), so memory the
   * parser allocated for them can be released promptly (see body-memory.ts).
   */
  onStreamedBody?: (bytes: number) => void;
}

export interface ProxyServer {
  server: Server;
  /** Requests currently being handled. */
  inflight(): number;
  requestsTotal(): number;
  /** Record now the finished exchanges still waiting their turn (see RECORD_DELAY_MS). */
  recordFinished(): void;
  /** Stop accepting; wait for in-flight exchanges up to `graceMs`, then cut the rest; record them all. */
  shutdown(graceMs: number): Promise<void>;
  /**
   * End shutdown's grace period now (a second stop signal): the exchanges still in flight are cut and
   * recorded as `proxy_shutdown`, `reason` in their error message. Before shutdown(): it waits no grace.
   */
  cutNow(reason: string): void;
  /**
   * Apply new limits, CORS origins and client keys (`POST /admin/reload-config`) to the requests that
   * arrive from now on.
   */
  reconfigure(settings: { limits: ProxyLimits; clientKeys: string[] }): void;
}

const INVALID_PATH_MESSAGE = 'Invalid request path: it must be an absolute path without encoded dot-segments';
const MISSING_HOST_MESSAGE = 'Missing Host header: a request must name the host it is for';

/** The methods the proxy forwards: the `allow` of its 405 to CONNECT. */
const ALLOWED_METHODS = 'GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS';

/**
 * The last bytes of a response over CAPTURE_BODY_BYTES kept besides its stored head: a JSON answer ends
 * with its `usage` (an image generation, a long Responses output).
 */
const USAGE_TAIL_BYTES = 8192;

/**
 * POSTs on stored objects rather than generating: updating a stored chat completion, cancelling a
 * response, batches. The usage they return was counted when the object was generated.
 */
const STORED_OBJECT_POST =
  /^(?:\/openai(?:\/v1)?)?\/(?:chat\/completions\/[^/]+|responses\/[^/]+\/cancel|batches(?:\/.*)?)$/;

/**
 * True when the exchange's usage is tokens it spent: a POST that generates. Reads (GET of a stored
 * completion or response, listings) return usage counted when the object was made.
 */
function spendsTokens(method: string | undefined, rest: string): boolean {
  return method === 'POST' && (rest === '/chat/completions' || !STORED_OBJECT_POST.test(rest));
}

/**
 * A finished exchange is recorded (its row built, its log line written) this many milliseconds after its
 * response closed, with the others that finished meanwhile, so that requests arriving in that moment are
 * forwarded first; RECORD_BATCH_MAX finished exchanges are recorded at once.
 */
const RECORD_DELAY_MS = 2;
const RECORD_BATCH_MAX = 64;

/** How long shutdown() waits for the responses it cut to report their 'close' (normally a tick or two). */
const CUT_CLOSE_WAIT_MS = 2000;

/**
 * The exchange a response belongs to, for the parser's error handler. A property rather than a WeakMap:
 * a WeakMap entry per request is an ephemeron every garbage collection has to trace.
 */
const kExchange = Symbol('oai-proxy exchange');
type ResponseWithExchange = ServerResponse & { [kExchange]?: ExchangeContext };

/** The exchange whose request body a connection's timer (socket.setTimeout) is watching, if any. */
const kBodyWatch = Symbol('oai-proxy body watch');
type WatchedSocket = Socket & { [kBodyWatch]?: ExchangeContext };

/** Per-exchange state handed to own routes. */
export class ExchangeContext {
  readonly id: string;
  readonly startedAt = Date.now();
  readonly t0 = performance.now();
  /** Path as recorded (`/v1/...` for proxied requests). */
  path: string;
  /** Path after `/v1`, starting with `/`. */
  rest: string;
  query: string;
  status: number | null = null;
  responseHeaders: Record<string, string | string[]> | null = null;
  requestCapture: BodyCapture;
  responseCapture: BodyCapture;
  requestBody: Buffer | null = null;
  requestJson: Record<string, unknown> | null = null;
  model: string | null = null;
  upstreamModel: string | null = null;
  upstreamName: string | null = null;
  modelUnknown = false;
  /** True when the response is a server-sent-event stream (whatever the request asked for). */
  stream = false;
  user: string | null = null;
  error: ExchangeErrorKind | null = null;
  errorMessage: string | null = null;
  ttfb: number | null = null;
  /** Milliseconds from the request to the response's close; set then, as the row is built later. */
  durationMs: number | null = null;
  assembler: StreamAssembler | null = null;
  responseContentType: string | undefined;
  responseEncoding: string | undefined;
  /** Set for a compressed textual response (rare: the proxy asks for identity): decodes it for the record. */
  decoder: RecordDecoder | null = null;
  internal = false;
  recorded = false;
  /**
   * A WebSocket handshake: after a 101 its bodies are frames, counted (request/response bytes) and read
   * by `realtime`; a key offered as a subprotocol is redacted.
   */
  websocket = false;
  /** After a 101: the reader of the session's messages, events and usage. */
  realtime: RealtimeSession | null = null;
  /** After a 101: which side's connection ended first (see RelayEnd.firstEnd). */
  relayFirstEnd: 'client' | 'upstream' | null = null;
  /** CORS_ORIGINS headers for this request's Origin, added to every answer; null when it gets none. */
  cors: Record<string, string> | null = null;
  /** Read now: by the time the exchange is recorded the socket may be detached (req.socket null). */
  readonly clientAddr: string | null;
  /**
   * True while a chunk of a streamed request body is handed upstream and the upstream has not asked for the
   * next (it reads slowly, or not yet): a client silent then is waiting on the proxy, not stalled.
   */
  bodyHeldUpstream = false;

  constructor(
    readonly req: IncomingMessage,
    readonly res: ServerResponse,
    target: { path: string; rest: string; query: string },
    capture: number,
  ) {
    this.id = newExchangeId(this.startedAt);
    this.clientAddr = req.socket?.remoteAddress ?? null;
    this.path = target.path;
    this.rest = target.rest;
    this.query = target.query;
    this.requestCapture = new BodyCapture(capture);
    this.responseCapture = new BodyCapture(capture, USAGE_TAIL_BYTES);
  }

  /** Send a JSON answer from the proxy itself (recorded like any exchange). */
  respondJson(status: number, body: unknown, headers: Record<string, string> = {}): void {
    const text = typeof body === 'string' ? body : JSON.stringify(body);
    this.respondRaw(status, text, { 'content-type': 'application/json', ...headers });
  }

  /** Send a body from the proxy itself. */
  respondRaw(status: number, text: string, headers: Record<string, string>): void {
    // Already answered (e.g. a malformed body refused mid-read): the first answer stands.
    if (this.res.headersSent) return;
    const buf = Buffer.from(text);
    // Names in lower case, as the upstream's come from undici: the record redacts by lower-case name.
    const h: Record<string, string> = {};
    for (const name in headers) h[name.toLowerCase()] = headers[name];
    h['content-length'] = String(buf.length);
    if (this.cors) Object.assign(h, this.cors);
    this.status = status;
    this.responseHeaders = h;
    this.responseContentType = h['content-type'];
    // A HEAD is answered with the head alone (node:http sends no body): nothing to record either.
    if (buf.length > 0 && this.req.method !== 'HEAD') this.responseCapture.push(buf);
    if (this.res.destroyed) return;
    this.res.writeHead(status, h);
    this.res.end(buf);
  }

  /** Send an OpenAI-shaped error from the proxy itself, and note its kind in the record. */
  respondError(
    status: number,
    kind: ExchangeErrorKind | null,
    message: string,
    type: string,
    code: string | null,
    param: string | null = null,
    headers: Record<string, string> = {},
  ): void {
    if (this.res.headersSent) return;
    if (kind) this.error = kind;
    this.errorMessage = message;
    this.respondRaw(status, openAiErrorBody(message, type, code, param), {
      'content-type': 'application/json',
      ...headers,
    });
  }

  /**
   * Read the whole request body up to `limit` bytes; null when over (after answering 413 naming
   * `limitName`, default MAX_REQUEST_BODY_BYTES's) or cut off.
   */
  readBody(limit: number, limitName?: string): Promise<Buffer | null> {
    if (this.requestBody) return Promise.resolve(this.requestBody);
    const length = this.req.headers['content-length'];
    const declared = length === undefined ? -1 : Number(length);
    if (declared > limit) {
      this.tooLarge(limit, declared, limitName);
      return Promise.resolve(null);
    }
    // Plain 'data'/'end' listeners: an async iterator costs a promise per chunk on every request.
    const { req } = this;
    const chunks: Buffer[] = [];
    let size = 0;
    return new Promise<Buffer | null>((resolve, reject) => {
      const done = () => {
        req.off('data', onData);
        req.off('end', onEnd);
        req.off('error', onError);
        req.off('close', onClose);
      };
      const onData = (chunk: Buffer) => {
        size += chunk.length;
        if (size > limit) {
          done();
          this.tooLarge(limit, size, limitName);
          req.destroy();
          resolve(null);
          return;
        }
        chunks.push(chunk);
        this.requestCapture.push(chunk);
        // All the declared bytes are here: the parser has the whole body, 'end' would only follow a few
        // ticks later (~30 µs of a request's wait before the upstream dispatch).
        if (size === declared) complete();
      };
      const complete = () => {
        done();
        this.requestBody = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, size);
        resolve(this.requestBody);
      };
      const onEnd = () => {
        // The body also ends early when the parser refused it mid-way.
        if (req.complete) complete();
        else {
          done();
          resolve(null);
        }
      };
      // The client vanished mid-body ('aborted', then close): not the proxy's error; the exchange is
      // recorded as client_aborted when the response closes.
      const onError = (err: NodeJS.ErrnoException) => {
        done();
        if (err.code === 'ECONNRESET') resolve(null);
        else reject(err);
      };
      const onClose = () => {
        done();
        resolve(null);
      };
      req.on('data', onData);
      req.on('end', onEnd);
      req.on('error', onError);
      req.on('close', onClose);
    });
  }

  private tooLarge(
    limit: number,
    size: number,
    limitName = `the proxy's limit of ${limit} bytes (MAX_REQUEST_BODY_BYTES)`,
  ): void {
    this.requestCapture.bytes = Math.max(this.requestCapture.bytes, size);
    this.res.shouldKeepAlive = false;
    this.respondError(
      413,
      'body_too_large',
      `Request body of ${size} bytes exceeds ${limitName}`,
      'invalid_request_error',
      'body_too_large',
    );
    // Stop reading the rest of the upload; the connection closes after the answer.
    this.req.pause();
  }

  elapsed(): number {
    return performance.now() - this.t0;
  }
}

/**
 * An origin-form target of characters the URL parser leaves as they are: path characters without `%`,
 * a query without `'`, `"`, `<`, `>`, spaces, `#` or non-ASCII (which the parser percent-encodes).
 */
const SIMPLE_TARGET = /^(\/[\w\-.~!$&()*+,;=:@/]*)(?:\?([\w\-.~!$&()*+,;=:@/?%]*))?$/;
/** Paths the parser would still change: empty segments (collapsed) and dot-segments (resolved). */
const NOT_NORMAL_PATH = /\/\/|\/\.\.?(\/|$)/;

/** Parse and normalise a request target. Null when it cannot be a valid path. */
export function normaliseTarget(rawUrl: string | undefined): { pathname: string; query: string } | null {
  if (!rawUrl || rawUrl === '*') return null;
  // The common target (`/v1/chat/completions`, a plain query) is already in normal form: the URL parser
  // would return it unchanged, at the cost of a URL object per request.
  const simple = SIMPLE_TARGET.exec(rawUrl);
  if (simple && !NOT_NORMAL_PATH.test(simple[1])) return { pathname: simple[1], query: simple[2] ?? '' };
  return parseTarget(rawUrl);
}

/** normaliseTarget through the WHATWG URL parser: any target, at the cost of a URL object. */
export function parseTarget(rawUrl: string): { pathname: string; query: string } | null {
  let u: URL;
  try {
    // Absolute-form targets keep only their path: requests only ever go to the configured upstream.
    u = /^[a-z][a-z0-9+.-]*:\/\//i.test(rawUrl)
      ? new URL(rawUrl)
      : new URL(rawUrl.startsWith('/') ? rawUrl : `/${rawUrl}`, 'http://proxy.invalid');
  } catch {
    return null;
  }
  const pathname = u.pathname.replace(/\/{2,}/g, '/');
  let decoded: string;
  try {
    decoded = decodeURIComponent(pathname);
  } catch {
    return null;
  }
  // The URL parser already resolved `..` and `%2e%2e`; anything still decoding to a dot-segment is refused.
  if (/(^|[/\\])\.\.?([/\\]|$)/.test(decoded)) return null;
  return { pathname, query: u.search.slice(1) };
}

/** What a WebSocket client may send before the 101 that the proxy keeps for the relay (it should send none). */
const HANDSHAKE_EARLY_BYTES_MAX = 64 * 1024;

/** Create the node:http proxy server. Call `server.listen()` yourself. */
export function createProxyServer(options: ProxyServerOptions): ProxyServer {
  const { dispatcher, sink, onStreamedBody } = options;
  // Replaced by reconfigure() (a config reload): read where used, so the next requests get the new values.
  let limits = options.limits;
  const startTime = Date.now();
  let requestsTotal = 0;
  let inflight = 0;
  let closing = false;
  /** Set by shutdown() when the grace period ran out: the in-flight exchanges are being cut by the proxy. */
  let cutMessage: string | null = null;
  let drained: (() => void) | null = null;
  /** Set by cutNow(): why the grace period ended early. */
  let cutEarly: string | null = null;
  /** Ends the grace period's wait (while shutdown() waits it). */
  let endGrace: (() => void) | null = null;
  /** An exchange whose response closed unfinished: cut by the proxy's shutdown, or by the client. */
  const noteCut = (x: ExchangeContext, upstreamAborted: boolean) => {
    if (cutMessage) {
      x.error = 'proxy_shutdown';
      x.errorMessage = cutMessage;
    } else {
      x.error = 'client_aborted';
      x.errorMessage = upstreamAborted
        ? 'The client disconnected before the response was complete; the upstream request was aborted'
        : 'The client disconnected before the response was complete';
    }
  };
  const secretsOption = options.secrets ?? [];
  const currentSecrets = typeof secretsOption === 'function' ? secretsOption : () => secretsOption;
  let cors = limits.corsOrigins;
  const sockets = new Set<Socket>();
  /** Connections reading the rest of an upload the upstream answered early (drainBody). */
  const draining = new Set<Socket>();
  let clientKeys = (options.clientKeys ?? []).filter(Boolean);
  // Client keys a reload removed: no longer accepted, still never forwarded (a client may keep sending one).
  let retiredKeys: string[] = [];
  // The keys a request presents: its Bearer token first, then an Azure-style `api-key` header.
  const presentedKeys = (req: IncomingMessage): string[] => {
    const keys: string[] = [];
    const bearer = bearerToken(req.headers.authorization);
    if (bearer) keys.push(bearer);
    const apiKey = req.headers['api-key'];
    if (typeof apiKey === 'string' && apiKey !== '') keys.push(apiKey);
    return keys;
  };
  const clientKeyValid = (req: IncomingMessage): boolean => {
    const [presented] = presentedKeys(req);
    return presented !== undefined && clientKeys.some((k) => keyMatches(presented, k));
  };
  /**
   * clientKeyValid for a WebSocket handshake: without an Authorization or api-key header, the key offered as
   * a subprotocol (`openai-insecure-api-key.<key>`) is the one presented.
   */
  const webSocketKeyValid = (req: IncomingMessage): boolean => {
    if (presentedKeys(req).length > 0) return clientKeyValid(req);
    const offered = subprotocolKey(req.headers);
    return offered !== null && clientKeys.some((k) => keyMatches(offered, k));
  };
  const adminKeyOption = options.adminKey;
  const currentAdminKey = typeof adminKeyOption === 'function' ? adminKeyOption : () => adminKeyOption;
  /**
   * True when a header value holds one of the proxy's keys (ADMIN_API_KEY, PROXY_API_KEYS, retired ones)
   * anywhere: alone, as a Bearer token, in a list Node joined from a repeated header, in a cookie
   * (`s=<key>`), after a scheme (`Token <key>`), as a subprotocol. A value that holds a secret leaks it.
   */
  const isProxyKey = (value: string | string[], adminKey: string | undefined): boolean => {
    for (const v of Array.isArray(value) ? value : [value]) {
      const isKey = (key: string) => v.includes(key);
      if ((adminKey && isKey(adminKey)) || clientKeys.some(isKey) || retiredKeys.some(isKey)) return true;
    }
    return false;
  };

  /**
   * The client's headers without the proxy's own keys. A client key belongs to this proxy: never forward it
   * (the upstream key, if any, replaces it). The proxy's keys (admin, client, retired client keys) never
   * reach the upstream, whatever header carries them: Authorization, api-key, x-api-key or a custom one.
   */
  const forwardableHeaders = (req: IncomingMessage): IncomingHttpHeaders => {
    let clientHeaders = req.headers;
    const adminKey = currentAdminKey();
    if (adminKey || clientKeys.length > 0 || retiredKeys.length > 0) {
      for (const name in req.headers) {
        const v = req.headers[name];
        if (v === undefined || !isProxyKey(v, adminKey)) continue;
        if (clientHeaders === req.headers) clientHeaders = { ...req.headers };
        // A key offered as a subprotocol (`openai-insecure-api-key.<key>`, the openai SDK's way in a
        // browser): that entry goes, the others (`realtime`) stay, unless the key is in one of them too.
        if (name === 'sec-websocket-protocol') {
          clientHeaders = dropSubprotocolKey(clientHeaders);
          const rest = clientHeaders[name];
          if (rest === undefined || !isProxyKey(rest, adminKey)) continue;
        }
        delete clientHeaders[name];
      }
    }
    return clientHeaders;
  };

  /** The 401 to a request without a valid PROXY_API_KEYS key. */
  /**
   * What the proxy answers itself, before anything is forwarded: a missing or wrong client key (401),
   * its own routes (admin API, /models, /health), an unknown path of its own (404). True once answered;
   * a promise only when a route answers asynchronously (routes decline most requests synchronously).
   */
  const answerLocally = (
    x: ExchangeContext,
    pathname: string,
    keyValid: (req: IncomingMessage) => boolean,
  ): boolean | Promise<boolean> => {
    if (clientKeys.length > 0 && !isAdminPath(pathname) && !keyValid(x.req)) {
      refuseClientKey(x);
      return true;
    }
    const routes = options.routes ?? [];
    for (let i = 0; i < routes.length; i++) {
      const answered = (routes[i] as OwnRoute)(x);
      if (answered === true) return true;
      if (answered !== false) return answered.then((a) => a || answerFrom(x, pathname, i + 1));
    }
    return notFoundOwnPath(x, pathname);
  };
  /** answerLocally's routes from `from` on, once one of them answered asynchronously. */
  const answerFrom = async (x: ExchangeContext, pathname: string, from: number): Promise<boolean> => {
    const routes = options.routes ?? [];
    for (let i = from; i < routes.length; i++) if (await (routes[i] as OwnRoute)(x)) return true;
    return notFoundOwnPath(x, pathname);
  };
  const notFoundOwnPath = (x: ExchangeContext, pathname: string): boolean => {
    if (!isOwnPath(pathname)) return false;
    x.respondError(
      404,
      null,
      `No proxy route ${x.req.method} ${pathname}`,
      'invalid_request_error',
      'not_found',
    );
    return true;
  };

  const refuseClientKey = (x: ExchangeContext) =>
    x.respondError(
      401,
      'unauthorized',
      x.req.headers.authorization ||
        x.req.headers['api-key'] ||
        (x.websocket && subprotocolKey(x.req.headers) !== null)
        ? 'Incorrect API key provided; send Authorization: Bearer <one of PROXY_API_KEYS>'
        : 'Missing API key; this proxy requires Authorization: Bearer <one of PROXY_API_KEYS>',
      'invalid_request_error',
      'invalid_api_key',
    );

  const corsHeaders = (req: IncomingMessage): Record<string, string> | null => {
    if (cors.length === 0) return null;
    const origin = req.headers.origin;
    if (!origin) return null;
    if (cors.includes('*'))
      return { 'access-control-allow-origin': '*', 'access-control-expose-headers': '*' };
    if (!cors.includes(origin)) return null;
    return {
      'access-control-allow-origin': origin,
      vary: 'Origin',
      'access-control-expose-headers': '*',
      'access-control-allow-credentials': 'true',
    };
  };

  const background = new BackgroundResponses();
  const record = (x: ExchangeContext) => {
    if (x.recorded) return;
    x.recorded = true;
    try {
      // No error: the upstream ended the response (one cut, aborted or reset has its error by now).
      let assembled: AssembledMessage | null = x.assembler ? x.assembler.result(x.error === null) : null;
      // An error event mid-stream: the status said 200, but the upstream gave no complete answer.
      const streamError = x.assembler?.streamError() ?? null;
      if (streamError !== null && x.error === null) {
        x.error = 'upstream_stream_error';
        x.errorMessage = streamError;
      }
      const spends = spendsTokens(x.req.method, x.rest);
      let usage = spends ? (assembled?.usage ?? null) : null;
      const { decoder } = x;
      let responseBody =
        decoder === null
          ? x.responseCapture.stored(x.responseContentType, x.responseEncoding)
          : decoder.stored(x.responseContentType, x.responseEncoding ?? '', x.responseCapture.bytes);
      // Media types are case-insensitive: `Application/JSON` is JSON.
      const jsonBody =
        responseBody && !x.assembler && /json/i.test(x.responseContentType ?? '') ? responseBody : null;
      const capture = decoder?.capture ?? x.responseCapture;
      if (spends && !usage && jsonBody !== null) usage = responseUsage(capture, jsonBody);
      if (x.status !== null && x.status >= 200 && x.status < 300) {
        if (spends && !usage)
          background.created(x.rest, x.requestJson, responseBody, {
            model: x.model,
            upstreamModel: x.upstreamModel,
            user: x.user,
          });
        // The first read of a background response that carries its usage counts the tokens.
        const pendingId = spends ? null : background.pendingId(x.rest);
        if (pendingId !== null) {
          usage = assembled?.usage ?? (jsonBody !== null ? responseUsage(capture, jsonBody) : null);
          if (usage) {
            const created = background.settle(pendingId);
            x.model ??= created?.model ?? null;
            x.upstreamModel ??= created?.upstreamModel ?? null;
            x.user ??= created?.user ?? null;
          }
        }
      }
      let requestBody =
        x.requestCapture.bytes > 0
          ? x.requestCapture.stored(x.req.headers['content-type'], x.req.headers['content-encoding'])
          : null;
      let requestTruncated = x.requestCapture.truncated;
      let responseTruncated = decoder === null ? x.responseCapture.truncated : decoder.truncated;
      if (x.websocket && x.status === 101) {
        // The messages each way (only ping, pong or close frames: a placeholder), events and usage.
        const session = x.realtime?.result(x.error === null) ?? null;
        requestBody = session?.requestBody ?? framesPlaceholder(x.requestCapture.bytes);
        responseBody = session?.responseBody ?? framesPlaceholder(x.responseCapture.bytes);
        requestTruncated = session?.requestTruncated ?? false;
        responseTruncated = session?.responseTruncated ?? false;
        usage = session?.usage ?? null;
        assembled = session?.assembled ?? null;
        // A side that ended its connection while no close frame had been sent either way cut the session
        // (the other side got 1006); one that ends after the other's close frame only skipped its echo.
        const side = x.relayFirstEnd;
        const other = side === 'client' ? 'upstream' : 'client';
        if (
          x.error === null &&
          side !== null &&
          session?.closeFrame[side] === false &&
          session.closeFrame[other] !== true
        ) {
          x.error = side === 'upstream' ? 'upstream_reset' : 'client_aborted';
          x.errorMessage =
            side === 'upstream'
              ? `The upstream ${x.upstreamName ?? 'default'} closed the WebSocket connection without a close frame`
              : 'The client closed the WebSocket connection without a close frame';
        }
        // An `error` event or a failed response, as for an HTTP stream: unless the session also ended
        // badly (reset, aborted, cut at shutdown), which is how it ended, the error event only in the body.
        if (x.error === null && session?.streamError) {
          x.error = 'upstream_stream_error';
          x.errorMessage = session.streamError;
        }
      }
      // The configured keys, and the client's own (forwarded upstream when the proxy has no key of its own).
      const h = x.req.headers;
      let secrets = withClientKey(currentSecrets(), bearerToken(h.authorization));
      secrets = withClientKey(secrets, h['api-key']);
      secrets = withClientKey(secrets, h['x-api-key']);
      secrets = withClientKey(secrets, subprotocolKey(h));
      // A key in the URL (`?api-key=`, Azure's way for a browser; `?key=`), as sent and decoded.
      if (x.query) for (const v of querySecretValues(x.query)) secrets = withClientKey(secrets, v);
      if (requestBody) requestBody = scrubBody(requestBody, secrets, requestTruncated);
      if (responseBody) responseBody = scrubBody(responseBody, secrets, responseTruncated);
      if (assembled) {
        // A stream that echoes a key (a prompt quoting it) holds it in its reassembled text too, and in
        // its events split into pieces no scrubber can find: those are not stored then.
        const scrubbed = scrubAssembled(assembled, secrets, limits.captureBodyBytes);
        // Reasoning, refusal, transcript and tool input deltas are not in the message, but a key split
        // across them is as real.
        const hidden = x.assembler?.hiddenText() ?? '';
        if (responseBody && scrubbed !== assembled)
          responseBody = withheldStreamBody(x.responseCapture.bytes);
        else if (responseBody && hidden !== '' && scrubSecrets(hidden, secrets) !== hidden)
          responseBody = withheldStreamBody(
            x.responseCapture.bytes,
            'its reasoning, refusal, transcript or tool input deltas, which the reassembled message does not keep, held a key',
          );
        assembled = scrubbed;
      }
      const r: ExchangeRecord = {
        id: x.id,
        startedAt: x.startedAt,
        durationMs: x.durationMs ?? x.elapsed(),
        ttfbMs: x.ttfb,
        method: x.req.method ?? 'GET',
        // A key in the URL (`?api-key=…`, a mistaken path) is as secret as one in a header.
        path: scrubSecrets(x.path, secrets),
        query: x.query ? scrubSecrets(redactQuerySecrets(x.query), secrets) : null,
        clientAddr: x.clientAddr,
        status: x.status,
        requestHeadersJson: redactedHeadersJson(
          // A subprotocol key rides on any request that claims to be a handshake, upgraded or not.
          withoutSubprotocolKey(x.req.headers),
          secrets,
        ),
        responseHeadersJson: x.responseHeaders ? redactedHeadersJson(x.responseHeaders, secrets) : null,
        requestBody,
        requestBytes: x.requestCapture.bytes,
        requestTruncated,
        responseBody,
        responseBytes: x.responseCapture.bytes,
        responseTruncated,
        model: scrubNullable(x.model, secrets),
        upstreamModel: scrubNullable(x.upstreamModel, secrets),
        upstream: x.upstreamName,
        modelUnknown: x.modelUnknown,
        stream: x.stream,
        promptTokens: usage?.prompt_tokens ?? null,
        completionTokens: usage?.completion_tokens ?? null,
        totalTokens: usage?.total_tokens ?? null,
        user: scrubNullable(x.user, secrets),
        error: x.error,
        errorMessage: x.errorMessage ? scrubSecrets(x.errorMessage, secrets) : null,
        assembled,
        internal: x.internal,
      };
      sink.record(r);
    } catch (err) {
      options.onError?.(err as Error, 'recording an exchange');
    }
  };

  let finished: ExchangeContext[] = [];
  let finishedTimer: NodeJS.Timeout | null = null;
  const recordFinished = () => {
    if (finishedTimer) clearTimeout(finishedTimer);
    finishedTimer = null;
    const batch = finished;
    finished = [];
    for (const x of batch) record(x);
  };
  const recordLater = (x: ExchangeContext) => {
    finished.push(x);
    if (finished.length >= RECORD_BATCH_MAX) recordFinished();
    else finishedTimer ??= setTimeout(recordFinished, RECORD_DELAY_MS);
  };

  /**
   * The registry's decision for `x.model`, or null after answering the refusal itself: 404 model_not_found,
   * or the router's error (a model naming a missing upstream), which also closes the connection, as a 404
   * does when `closeOnRefusal` (a body left unread).
   */
  const routeModel = (x: ExchangeContext, closeOnRefusal: boolean): RouteDecision | null => {
    let decision: RouteDecision | null = {
      upstream: options.defaultUpstream,
      model: x.model,
      unknown: false,
    };
    if (options.router) {
      try {
        decision = options.router.route(x.model);
      } catch (err) {
        if (!isOaiProxyError(err)) throw err;
        x.res.shouldKeepAlive = false;
        x.respondError(err.status, 'proxy_error', err.message, 'proxy_error', err.code);
        return null;
      }
    }
    if (!decision) {
      if (closeOnRefusal) x.res.shouldKeepAlive = false;
      x.respondError(
        404,
        'model_not_found',
        `The model \`${x.model}\` does not exist or is not available on this proxy`,
        'invalid_request_error',
        'model_not_found',
        'model',
      );
    }
    return decision;
  };

  const forward = async (x: ExchangeContext) => {
    const { req } = x;
    const method = req.method ?? 'GET';
    const contentType = String(req.headers['content-type'] ?? '');
    // Whatever the method: a GET, HEAD or OPTIONS that carries a body has it forwarded and recorded too.
    const hasBody =
      req.headers['content-length'] !== undefined
        ? req.headers['content-length'] !== '0'
        : req.headers['transfer-encoding'] !== undefined;
    let body: Buffer | AsyncIterable<Buffer> | null = null;
    let contentLength: number | undefined;
    let multipart: MultipartModelScan | null = null;
    // File uploads name no model: they stream through unscanned.
    // Uploads (files, Ollama's blobs, whatever their content type says) are never read whole.
    const upload = hasBody && isUploadPath(x.rest);
    const boundary = hasBody && !upload ? multipartBoundary(contentType) : null;

    // A JSON body under another type (curl -d's form type, text/plain, none) is read as JSON too, as
    // Ollama, llama.cpp and vLLM do; the JSON type is tested first, so its hot path does no more work.
    if (hasBody && !upload && (isJsonType(contentType) || isJsonCandidateType(contentType))) {
      const buf = await x.readBody(limits.maxRequestBodyBytes);
      if (!buf) return;
      body = buf;
      const text = buf.toString('utf8');
      // The record stores the same text: decoded once.
      x.requestCapture.decoded(text);
      let json: unknown;
      try {
        // A UTF-8 byte order mark, which JSON.parse refuses, but Python's json.loads (vLLM) and llama.cpp
        // skip: the upstream would read the model the proxy did not check.
        json = JSON.parse(text.charCodeAt(0) === 0xfeff ? text.slice(1) : text);
      } catch (err) {
        // Not ours to judge (the upstream answers malformed JSON), unless models are checked: a body whose
        // model cannot be read must not pass a policy that refuses unknown ones. An empty or blank body
        // names none, as a body without `model` does: forwarded.
        if (isJsonType(contentType) && options.router?.refusesUnknown?.() && text.trim() !== '') {
          x.respondError(
            400,
            'invalid_request',
            `The request body is not valid JSON (${(err as Error).message.slice(0, 200)}), so its model cannot be checked: this proxy refuses unknown models (VALIDATE_MODELS). Send a UTF-8 JSON body`,
            'invalid_request_error',
            'invalid_json',
          );
          return;
        }
        json = undefined;
      }
      if (json && typeof json === 'object' && !Array.isArray(json)) {
        const obj = json as Record<string, unknown>;
        x.requestJson = obj;
        if (typeof obj.model === 'string') x.model = obj.model;
        else if (obj.model !== undefined && obj.model !== null && options.router?.refusesUnknown?.()) {
          // `{"model": 123}` or `["gpt-4o"]` names no model the proxy can check, but an upstream may read
          // one from it (a number as a name): refused, as an unparseable body is.
          x.respondError(
            400,
            'invalid_request',
            `The request body's \`model\` is ${Array.isArray(obj.model) ? 'an array' : typeof obj.model === 'object' ? 'an object' : `a ${typeof obj.model}`}, not a string, so it cannot be checked: this proxy refuses unknown models (VALIDATE_MODELS). Send the model's name as a string`,
            'invalid_request_error',
            'invalid_type',
            'model',
          );
          return;
        }
        if (typeof obj.user === 'string') x.user = obj.user;
      }
    } else if (boundary) {
      // Read only as far as the `model` field; the rest streams through after routing.
      const capture = x.requestCapture;
      try {
        multipart = await scanMultipartModel(req[Symbol.asyncIterator](), boundary, {
          maxBytes: limits.maxRequestBodyBytes,
          onChunk: (chunk) => {
            capture.bytes += chunk.length;
            onStreamedBody?.(chunk.length);
          },
        });
      } catch (err) {
        // The body was cut off: the client left ('aborted'), or the parser refused it and the request
        // was answered 400 and ended (premature close). Not the proxy's error: the exchange is recorded
        // as it stands when the response closes (client_aborted, or the 400).
        const code = (err as NodeJS.ErrnoException).code;
        if (req.complete || (code !== 'ECONNRESET' && code !== 'ERR_STREAM_PREMATURE_CLOSE')) throw err;
        if (!x.res.headersSent) x.res.destroy();
        return;
      }
      const scan = multipart;
      x.res.once('close', () => void scan.dispose());
      // A model the proxy could not read must not pass a policy that refuses unknown ones.
      if (scan.unsearched && options.router?.refusesUnknown?.()) {
        x.res.shouldKeepAlive = false;
        x.respondError(
          413,
          'body_too_large',
          `The form field \`model\` was not found within the first ${limits.maxRequestBodyBytes} bytes of this multipart body (MAX_REQUEST_BODY_BYTES), so its model cannot be checked: this proxy refuses unknown models (VALIDATE_MODELS). Send the \`model\` field before the file, or raise MAX_REQUEST_BODY_BYTES`,
          'invalid_request_error',
          'model_not_checked',
          'model',
        );
        return;
      }
      x.model = scan.model;
      body = scan.body(null);
    } else if (hasBody) {
      const capture = x.requestCapture;
      const keep = isTextual(contentType) && !contentType.includes('multipart');
      body = (async function* () {
        for await (const chunk of req as AsyncIterable<Buffer>) {
          if (keep) capture.push(chunk);
          else capture.bytes += chunk.length;
          onStreamedBody?.(chunk.length);
          yield chunk;
        }
        // Cut off (client gone, body refused): fail the upstream request rather than send it short.
        if (!req.complete) throw Object.assign(new Error('client aborted'), { code: 'CLIENT_ABORTED' });
      })();
    }

    // An Azure-form path names the model as its deployment (Azure ignores a body's model there).
    const pathDeployment = azurePathDeployment(x.rest);
    if (pathDeployment !== null) x.model = pathDeployment;

    const decision = routeModel(x, multipart !== null);
    if (!decision) return;
    x.upstreamName = decision.upstream.name;
    x.upstreamModel = decision.model;
    x.modelUnknown = decision.unknown;
    const deployment = decision.deployment ?? decision.model ?? undefined;
    // A model routed by the path stays there; Azure takes a body's model as the deployment's name.
    const bodyModel =
      pathDeployment !== null
        ? x.model
        : decision.upstream.type === 'azure' && !isDeploymentInPath(decision.upstream, x.rest)
          ? (deployment ?? null)
          : decision.model;
    if (bodyModel !== x.model && x.requestJson && bodyModel !== null) {
      // Only the model changes: the rest goes byte for byte (a re-serialised body would round integers
      // beyond 2^53 and rewrite 1.0, 1e2 and \u escapes). A body naming no model gets one added.
      body =
        (x.requestBody && replaceJsonModel(x.requestBody, bodyModel)) ??
        Buffer.from(JSON.stringify({ ...x.requestJson, model: bodyModel }));
      contentLength = body.length;
    }
    if (multipart && bodyModel !== null && bodyModel !== x.model) {
      body = multipart.body(bodyModel);
      const declared = req.headers['content-length'];
      if (declared !== undefined) contentLength = Number(declared) + multipart.lengthDelta(bodyModel);
    }

    const clientHeaders = forwardableHeaders(req);
    // Answered already (a malformed body refused mid-read) or the client is gone: nothing to forward.
    if (x.res.headersSent || x.res.destroyed) return;
    const shape = shapeUpstreamRequest(decision.upstream, x.rest, x.query, clientHeaders, {
      contentLength,
      deployment,
    });
    await dispatchUpstream(
      x,
      decision.upstream.origin,
      method,
      shape.path,
      shape.headers,
      body === null || Buffer.isBuffer(body) ? body : noteHeldUpstream(x, body),
    );
  };

  const dispatchUpstream = (
    x: ExchangeContext,
    origin: string,
    method: string,
    path: string,
    headers: Record<string, string | string[]>,
    body: Buffer | AsyncIterable<Buffer> | null,
    /** For a WebSocket handshake: takes the upstream's 101 and its socket (any other answer is relayed). */
    onUpgrade?: (headers: Record<string, string | string[] | undefined>, socket: Duplex) => void,
  ) =>
    new Promise<void>((resolve) => {
      const { res } = x;
      let controller: Dispatcher.DispatchController | null = null;
      const abortUpstream = (c: Dispatcher.DispatchController) => {
        if (c.aborted) return;
        const e = new Error('client aborted') as Error & { code: string };
        e.code = 'CLIENT_ABORTED';
        c.abort(e);
      };
      const onClientClose = () => {
        if (!res.writableEnded && controller) abortUpstream(controller);
      };
      res.once('close', onClientClose);
      // A non-streamed answer's head, held until its first body byte (or its end): an upstream that fails
      // before then still gets the client a 502, not an empty reply.
      let head: Record<string, string | string[]> | null = null;
      const handler: Dispatcher.DispatchHandler = {
        onRequestStart(c) {
          controller = c;
          if (res.destroyed) onClientClose();
        },
        onResponseStart(c, statusCode, upstreamHeaders) {
          // undici reports informational responses (103 Early Hints, 100 Continue) here too, then the
          // final one: only the final one is the answer.
          if (statusCode < 200) return;
          if (res.headersSent) {
            // The proxy already answered (a malformed body refused mid-read): drop the upstream answer.
            abortUpstream(c);
            return;
          }
          x.status = statusCode;
          const out: Record<string, string | string[]> = {};
          const tokens = connectionTokens(upstreamHeaders);
          for (const k in upstreamHeaders) {
            const v = upstreamHeaders[k];
            if (v === undefined || isHopByHop(k, tokens)) continue;
            out[k] = v;
          }
          x.responseHeaders = out;
          const ct = upstreamHeaders['content-type'];
          x.responseContentType = Array.isArray(ct) ? ct[0] : ct;
          const ce = upstreamHeaders['content-encoding'];
          x.responseEncoding = Array.isArray(ce) ? ce[0] : ce;
          const framing = streamFraming(x.responseContentType);
          if (framing !== null) {
            x.stream = true;
            x.assembler = createStreamAssembler({ maxChars: limits.captureBodyBytes, framing });
          }
          if (x.responseEncoding !== undefined && x.responseEncoding !== 'identity') decodeForRecord(x);
          if (res.destroyed) return;
          // The record keeps the upstream's headers as received; the client gets the CORS ones as well.
          const sent = x.cors ? { ...out, ...x.cors } : out;
          if (!x.stream) {
            head = sent;
            return;
          }
          res.writeHead(statusCode, sent);
          res.flushHeaders();
        },
        onResponseData(c, chunk) {
          if (res.writableEnded || res.destroyed) {
            // Nobody to write to, and no 'drain' will ever resume a paused upstream: stop it.
            abortUpstream(c);
            return;
          }
          if (x.ttfb === null) x.ttfb = x.elapsed();
          if (head !== null) {
            res.writeHead(x.status as number, head);
            head = null;
          }
          // The client gets the bytes before the proxy reads them for the record (an SSE event is parsed).
          const flowing = res.write(chunk);
          if (x.decoder === null) {
            x.responseCapture.push(chunk);
            x.assembler?.push(chunk);
          } else {
            x.responseCapture.bytes += chunk.length;
            x.decoder.write(chunk);
          }
          if (!flowing) {
            c.pause();
            res.once('drain', () => c.resume());
          }
        },
        onResponseEnd() {
          res.removeListener('close', onClientClose);
          if (x.ttfb === null) x.ttfb = x.elapsed();
          if (head !== null && !res.headersSent) res.writeHead(x.status as number, head);
          res.end();
          resolve();
        },
        onResponseError(_c, err) {
          res.removeListener('close', onClientClose);
          if (x.error === 'invalid_request' || x.error === 'client_body_timeout') {
            // The proxy gave up on the request body (refused by the parser, or it stopped arriving) and
            // already answered or cut the response; the upstream request failed because of that.
            resolve();
            return;
          }
          const code = (err as { code?: string }).code;
          if (code === 'CLIENT_ABORTED' || (res.destroyed && !res.writableEnded)) {
            noteCut(x, true);
          } else {
            const { kind, status } = classifyUpstreamError(err);
            const message = upstreamErrorMessage(kind, x.upstreamName ?? 'default', origin, err);
            if (!res.headersSent) {
              // The upstream's head (if it came) was never sent: the record holds the 502 instead.
              x.decoder = null;
              x.assembler = null;
              x.responseEncoding = undefined;
              x.respondError(
                status,
                kind,
                message,
                'proxy_error',
                kind === 'upstream_reset' ? 'upstream_unreachable' : kind,
              );
            } else {
              x.error = kind;
              x.errorMessage = message;
              res.destroy();
            }
          }
          resolve();
        },
      };
      if (onUpgrade) {
        handler.onRequestUpgrade = (_c, _status, upstreamHeaders, socket) => {
          res.removeListener('close', onClientClose);
          onUpgrade(upstreamHeaders, socket);
          resolve();
        };
      }
      try {
        dispatcher.dispatch(
          onUpgrade
            ? { origin, path, method: method as Dispatcher.HttpMethod, headers, upgrade: 'websocket' }
            : { origin, path, method: method as Dispatcher.HttpMethod, headers, body: body as any },
          handler,
        );
      } catch (err) {
        handler.onResponseError!(null as any, err as Error);
      }
    });

  /**
   * The request body stopped arriving for `ms`: answer 408 (or cut a response already started), close the
   * connection, and end the request, which fails (aborts) the upstream request its body feeds.
   */
  const bodyTimedOut = (x: ExchangeContext, ms: number) => {
    const { req, res } = x;
    const message = `No request body bytes arrived for ${ms} ms (CLIENT_BODY_TIMEOUT_MS): the proxy stopped waiting for the rest of the body`;
    if (res.headersSent) {
      x.error = 'client_body_timeout';
      x.errorMessage = message;
      res.destroy();
      return;
    }
    res.shouldKeepAlive = false;
    x.respondError(408, 'client_body_timeout', message, 'invalid_request_error', 'client_body_timeout');
    res.once('close', () => req.destroy());
  };

  /** A 400 for a request refused before routing, recorded, and the connection closed after it. */
  const refuse = (req: IncomingMessage, res: ServerResponse, message: string, code: string) => {
    requestsTotal++;
    const raw = (req.url ?? '').split('?')[0].slice(0, 1024);
    const x = new ExchangeContext(req, res, { path: raw, rest: '', query: '' }, limits.captureBodyBytes);
    if (cors.length > 0) x.cors = corsHeaders(req);
    res.shouldKeepAlive = false;
    x.respondError(400, 'invalid_request', message, 'invalid_request_error', code);
    record(x);
  };

  /** The request's target, or null once a request without a usable one is refused (400, recorded). */
  const acceptTarget = (req: IncomingMessage, res: ServerResponse) => {
    const target = normaliseTarget(req.url);
    if (!target) {
      refuse(req, res, INVALID_PATH_MESSAGE, 'invalid_path');
      return null;
    }
    // Node's own check (requireHostHeader) would answer an unrecorded empty 400: refused here instead.
    if (req.headers.host === undefined && req.httpVersionMinor === 1 && req.httpVersionMajor === 1) {
      refuse(req, res, MISSING_HOST_MESSAGE, 'bad_request');
      return null;
    }
    return target;
  };

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const target = acceptTarget(req, res);
    if (!target) return;
    const { pathname, query } = target;
    if (pathname === '/health' && (req.method === 'GET' || req.method === 'HEAD')) {
      const body = JSON.stringify({
        status: 'ok',
        version: options.version,
        uptime_s: Math.round((Date.now() - startTime) / 1000),
        requests_total: requestsTotal,
        ...options.health(),
      });
      const h = cors.length > 0 ? corsHeaders(req) : null;
      res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store', ...h });
      res.end(req.method === 'HEAD' ? undefined : body);
      return;
    }
    if (req.method === 'OPTIONS' && cors.length > 0 && req.headers['access-control-request-method']) {
      const h = corsHeaders(req);
      if (h) {
        res.writeHead(204, {
          ...h,
          'access-control-allow-methods': 'GET, POST, PUT, PATCH, DELETE, OPTIONS',
          'access-control-allow-headers': String(req.headers['access-control-request-headers'] ?? '*'),
          'access-control-max-age': '86400',
        });
      } else {
        res.writeHead(403, { 'content-type': 'application/json' });
      }
      res.end(
        h
          ? undefined
          : openAiErrorBody('Origin not allowed by CORS_ORIGINS', 'invalid_request_error', 'cors_forbidden'),
      );
      return;
    }

    requestsTotal++;
    inflight++;
    const { path, rest } = recordedPath(pathname);
    const x = new ExchangeContext(req, res, { path, rest, query }, limits.captureBodyBytes);
    if (cors.length > 0) x.cors = corsHeaders(req);
    (res as ResponseWithExchange)[kExchange] = x;
    const bodyTimeout = limits.clientBodyTimeoutMs;
    // Checked once the parser has read what already came: a body that arrived with its headers needs no timer.
    if (bodyTimeout > 0 && declaresBody(req)) process.nextTick(watchBody, x, bodyTimeout);
    res.once('close', () => {
      x.durationMs = x.elapsed();
      if (!res.writableEnded) {
        if (!x.error) noteCut(x, false);
        // Cut before any status went out (an upstream head held for its first body byte): the client got
        // none. The upstream's headers stay in the record: its request id names what it may have billed.
        if (!res.headersSent) x.status = null;
      }
      const finished = () => {
        recordLater(x);
        inflight--;
        if (inflight === 0 && drained) drained();
      };
      // A compressed response's record waits for its decoding; so does shutdown (it stays in flight).
      const settle = () => {
        if (x.decoder === null) finished();
        else void x.decoder.finish().then(finished);
      };
      // Answered before the whole body came (an upstream refusing an upload at once): its record, with
      // the bytes received, waits for the rest, read and discarded.
      if (!req.complete && res.writableFinished && res.shouldKeepAlive && !req.destroyed)
        drainBody(x, onStreamedBody, settle, {
          silenceMs: limits.clientBodyTimeoutMs,
          keepAliveMs: server.keepAliveTimeout,
          draining,
        });
      else settle();
    });
    try {
      const local = answerLocally(x, pathname, clientKeyValid);
      // Most requests are not answered by the proxy itself, and learn so synchronously: no await then.
      if (local === true || (local !== false && (await local))) return;
      await forward(x);
    } catch (err) {
      options.onError?.(err as Error, `handling ${req.method} ${x.path}`);
      if (!res.headersSent)
        x.respondError(500, 'proxy_error', 'Internal proxy error', 'proxy_error', 'internal_error');
      else {
        // Mid-answer: the client sees a cut response; the record says it was the proxy's fault.
        x.error ??= 'proxy_error';
        x.errorMessage ??= 'Internal proxy error after the response had started';
        res.destroy();
      }
    }
  };

  /**
   * An `Upgrade` request. A WebSocket handshake (the Realtime API) is routed as `handle` routes a request
   * (client keys, own routes, the registry with the `model` query parameter, or Azure's `deployment`) and
   * sent to the upstream, an Azure one getting the deployment where its path reads it; after its 101 the bytes are relayed both ways unchanged until either side closes. The session is one
   * exchange, recorded when both connections have closed, and in flight until then (shutdown waits for it
   * within SHUTDOWN_GRACE_MS, then cuts it). Any other upgrade is declined: served as a plain request.
   */
  const handleUpgrade = async (req: IncomingMessage, socket: Socket, head: Buffer) => {
    // Node's server has stopped listening on this socket: an error without a listener would crash the process.
    if (socket.listenerCount('error') === 0) socket.on('error', ignoreError);
    const answering = (socket as Socket & { _httpMessage?: ServerResponse | null })._httpMessage;
    if (answering) {
      // Pipelined behind an answer still being written: handled once that answer is out (Node's own
      // 'finish' listener has detached it from the socket by then), or never, if it is cut.
      answering.once('finish', () => void handleUpgradeSafely(req, socket, head));
      answering.once('close', () => {
        if (!answering.writableFinished) socket.destroy();
      });
      return;
    }
    if (!isWebSocketUpgrade(req)) {
      // curl --http2 offers h2c on every plain-HTTP request: hand the request, without the offer, back to
      // the HTTP parser on the same connection, as if no 'upgrade' listener existed.
      socket.unshift(Buffer.concat([headWithoutUpgrade(req), head]));
      server.emit('connection', socket);
      return;
    }
    // Until a 101, answers (the proxy's own, or the upstream's refusal) go out as HTTP; then the connection closes.
    const res = new ServerResponse(req);
    res.assignSocket(socket);
    res.shouldKeepAlive = false;
    res.once('finish', () => socket.end());
    const handshake = watchHandshake(socket);
    const target = acceptTarget(req, res);
    if (!target) return;
    const { pathname, query } = target;
    requestsTotal++;
    inflight++;
    const { path, rest } = recordedPath(pathname);
    const x = new ExchangeContext(req, res, { path, rest, query }, limits.captureBodyBytes);
    x.websocket = true;
    let ended = false;
    const end = () => {
      if (ended) return;
      ended = true;
      x.durationMs ??= x.elapsed();
      recordLater(x);
      inflight--;
      if (inflight === 0 && drained) drained();
    };
    // Before a 101 the client's connection closing ends the exchange (after an answer, or cut short).
    res.once('close', () => {
      if (!res.writableEnded && !x.error) noteCut(x, false);
      end();
    });
    const relay = (upstreamHeaders: Record<string, string | string[] | undefined>, upstream: Duplex) => {
      // The client left as the 101 came: its response's 'close' ends the exchange.
      if (socket.destroyed) {
        upstream.destroy();
        return;
      }
      // From here on the socket carries frames: no HTTP answer, and no 'close' on the response.
      const early = handshake.stop();
      res.detachSocket(socket);
      x.status = 101;
      x.ttfb = x.elapsed();
      const h: Record<string, string | string[]> = {};
      for (const k in upstreamHeaders) if (upstreamHeaders[k] !== undefined) h[k] = upstreamHeaders[k];
      x.responseHeaders = h;
      socket.write(switchingProtocolsHead(h), 'latin1');
      // Frames the client sent early, behind its handshake or while it waited.
      if (head.length > 0 || early.length > 0) socket.unshift(Buffer.concat([head, early]));
      const session = createRealtimeSession({
        deflate: negotiatedDeflate(h['sec-websocket-extensions']),
        captureBytes: limits.captureBodyBytes,
        maxChars: limits.captureBodyBytes,
        maxMessageBytes: REALTIME_MESSAGE_MAX_BYTES,
      });
      x.realtime = session;
      relaySockets(
        socket,
        upstream,
        (ending) => {
          x.requestCapture.bytes = ending.clientBytes;
          x.responseCapture.bytes = ending.upstreamBytes;
          x.relayFirstEnd = ending.firstEnd;
          noteRelayEnd(x, ending, upstreamOrigin);
          // Messages still inflating (off the event loop) are recorded before the exchange is.
          x.durationMs = x.elapsed();
          session.settled().then(end);
        },
        session,
      );
    };
    let upstreamOrigin = '';
    try {
      if (await answerLocally(x, pathname, webSocketKeyValid)) return;
      // The Realtime API names its model in the query (Azure's, its deployment in `deployment`): validated
      // and alias-resolved like a body's.
      const model = handshakeModel(x, query);
      if (model === undefined) return;
      x.model = model;
      const decision = routeModel(x, true);
      if (!decision) return;
      x.upstreamName = decision.upstream.name;
      x.upstreamModel = decision.model;
      x.modelUnknown = decision.unknown;
      let upstreamQuery = query;
      if (x.model !== null && decision.model !== null) {
        // An Azure upstream reads the deployment, in the parameter its path reads; others the routed model.
        const as = azureRealtimeModelParam(decision.upstream, rest);
        if (as !== null) upstreamQuery = replaceQueryModel(query, decision.deployment ?? decision.model, as);
        else if (decision.model !== x.model) upstreamQuery = replaceQueryModel(query, decision.model);
      }
      if (res.destroyed) return;
      upstreamOrigin = decision.upstream.origin;
      let headers = forwardableHeaders(req);
      // A key offered as a subprotocol is an Authorization header by other means: the upstream's own key
      // replaces it (one of the proxy's keys is gone already: forwardableHeaders).
      if (hasOwnKey(decision.upstream) && subprotocolKey(headers) !== null)
        headers = dropSubprotocolKey(headers);
      const shape = shapeUpstreamRequest(decision.upstream, rest, upstreamQuery, headers);
      await dispatchUpstream(x, upstreamOrigin, 'GET', shape.path, shape.headers, null, relay);
    } catch (err) {
      options.onError?.(err as Error, `handling a WebSocket handshake to ${x.path}`);
      if (!res.headersSent && x.status !== 101)
        x.respondError(500, 'proxy_error', 'Internal proxy error', 'proxy_error', 'internal_error');
      else socket.destroy();
    }
  };

  /**
   * The model a WebSocket handshake names in its query (`model`, or Azure's `deployment`; null for none),
   * or undefined after answering 400 ambiguous_model: a parameter given twice, or the two disagreeing.
   * Which one counts would differ (URLSearchParams.get takes the first, vLLM's Starlette the last; OpenAI
   * reads `model`, Azure `deployment`): the proxy would check or route one model and the upstream serve another.
   */
  const handshakeModel = (x: ExchangeContext, query: string): string | null | undefined => {
    const models = queryModels(query);
    const deployments = queryDeployments(query);
    const refuse = (message: string, param: string) => {
      x.respondError(400, 'invalid_request', message, 'invalid_request_error', 'ambiguous_model', param);
      return undefined;
    };
    if (models.length > 1)
      return refuse(`The \`model\` query parameter is given ${models.length} times; send it once`, 'model');
    if (deployments.length > 1)
      return refuse(
        `The \`deployment\` query parameter is given ${deployments.length} times; send it once`,
        'deployment',
      );
    if (models.length === 1 && deployments.length === 1 && models[0] !== deployments[0])
      return refuse(
        'The `model` and `deployment` query parameters name different models; send one of them',
        'model',
      );
    return models[0] || deployments[0] || null;
  };

  /**
   * Notice a client leaving a WebSocket handshake before the 101: Node hands over an upgraded socket
   * unread, and half-open after the client's FIN, so a client that gave up would hold the upstream request
   * (and both connections) until the upstream answered or timed out. The socket is read until `stop()`:
   * its end or an error destroys it, which closes the response, which aborts the upstream request (and the
   * exchange is recorded client_aborted). Bytes that arrive meanwhile (a client is not to send any before
   * the 101) are kept for the relay, up to HANDSHAKE_EARLY_BYTES_MAX, then the socket is left unread.
   */
  const watchHandshake = (socket: Socket) => {
    const early: Buffer[] = [];
    let bytes = 0;
    const onData = (chunk: Buffer) => {
      early.push(chunk);
      bytes += chunk.length;
      if (bytes > HANDSHAKE_EARLY_BYTES_MAX) socket.pause();
    };
    const gone = () => socket.destroy();
    socket.on('data', onData);
    socket.once('end', gone);
    socket.on('error', gone);
    return {
      /** Stop reading; the bytes read so far. */
      stop(): Buffer {
        socket.removeListener('data', onData);
        socket.removeListener('end', gone);
        socket.removeListener('error', gone);
        socket.pause();
        return Buffer.concat(early);
      },
    };
  };

  const handleUpgradeSafely = (req: IncomingMessage, socket: Socket, head: Buffer) =>
    handleUpgrade(req, socket, head).catch((err) => {
      options.onError?.(err as Error, 'handling an upgrade request');
      socket.destroy();
    });

  /** How a relayed WebSocket session ended, in its record: cut by shutdown, or a socket error on one side. */
  const noteRelayEnd = (x: ExchangeContext, ending: RelayEnd, origin: string) => {
    if (cutMessage) {
      x.error = 'proxy_shutdown';
      x.errorMessage = cutMessage;
    } else if (ending.error?.side === 'upstream') {
      x.error = 'upstream_reset';
      x.errorMessage = upstreamErrorMessage(
        'upstream_reset',
        x.upstreamName ?? 'default',
        origin,
        ending.error.err,
      );
    } else if (ending.error) {
      x.error = 'client_aborted';
      x.errorMessage = `The client's connection failed during the WebSocket session (${ending.error.err.code ?? ending.error.err.message})`;
    }
  };

  const server = createServer(
    { keepAliveTimeout: 65_000, requestTimeout: 0, headersTimeout: 60_000, requireHostHeader: false },
    (req, res) => {
      if (closing) res.setHeader('connection', 'close');
      void handle(req, res);
    },
  );
  // An Expect other than 100-continue: proxy the request anyway (RFC 9110 allows ignoring it) rather than
  // Node's unrecorded automatic 417.
  server.on('checkExpectation', (req: IncomingMessage, res: ServerResponse) => {
    if (closing) res.setHeader('connection', 'close');
    void handle(req, res);
  });
  // Expect: 100-continue: invite the body, unless it is a JSON body declared over MAX_REQUEST_BODY_BYTES,
  // which the handler refuses at once with its 413 (Node would send 100 Continue first).
  server.on('checkContinue', (req: IncomingMessage, res: ServerResponse) => {
    if (!declaredOverLimit(req, limits.maxRequestBodyBytes)) res.writeContinue();
    if (closing) res.setHeader('connection', 'close');
    void handle(req, res);
  });
  server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
    void handleUpgradeSafely(req, socket, head);
  });
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  // A connection's timer ran out. Without this listener Node closes the connection; with it, that stays
  // the answer to every timer but the one watchBody() armed (the keep-alive timeout, after a response).
  server.on('timeout', (socket: WatchedSocket) => {
    const x = socket[kBodyWatch];
    socket[kBodyWatch] = undefined;
    if (x === undefined || x.res.writableFinished) {
      socket.destroy();
      return;
    }
    // The timers run before the poll for reads: bytes that came while the event loop was busy are read
    // after this. Judge the silence once they are (setImmediate), by the connection's bytes received.
    const ms = socket.timeout || limits.clientBodyTimeoutMs;
    const bytesRead = socket.bytesRead;
    setImmediate(() => {
      if (socket.destroyed || x.res.writableFinished) return;
      // The whole body came: the wait now is the upstream's (it may think for minutes), not the client's.
      if (x.req.complete) {
        socket.setTimeout(0);
        return;
      }
      // Bytes arrived after all, received ones are not consumed yet, or the last one read still waits for
      // the upstream to take it: the proxy (an upstream reading slowly) is behind, not the client. Watch on.
      if (socket.bytesRead !== bytesRead || x.req.readableLength > 0 || x.bodyHeldUpstream) {
        socket[kBodyWatch] = x;
        socket.setTimeout(ms);
        return;
      }
      bodyTimedOut(x, ms);
    });
  });
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => {
    // The client went away (mid-request): nobody to answer; the exchange is recorded as client_aborted.
    if (!socket.writable || err.code === 'ECONNRESET' || err.code === 'HPE_INVALID_EOF_STATE') {
      socket.destroy();
      return;
    }
    const status =
      err.code === 'HPE_HEADER_OVERFLOW' ? 431 : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400;
    const message =
      status === 431
        ? 'Request headers too large'
        : status === 408
          ? 'Request timeout'
          : `Bad request (${err.code ?? 'malformed HTTP'})`;
    const answering = (socket as Socket & { _httpMessage?: ServerResponse | null })._httpMessage;
    if (answering && !answering.writableFinished) {
      const x = (answering as ResponseWithExchange)[kExchange];
      answering.shouldKeepAlive = false;
      if (answering.req?.complete) {
        // Junk after a complete request (past `connection: close`, or a broken pipelined one): a second
        // status line would corrupt the answer in progress. Finish it, then close.
        socket.pause();
        answering.once('finish', () => socket.end());
        answering.once('close', () => socket.destroy());
      } else if (x && !answering.headersSent) {
        // The body of the request being handled is malformed: answer it (recorded with its exchange).
        x.respondError(status, 'invalid_request', message, 'invalid_request_error', 'bad_request');
        // A body already streaming upstream waits for a rest that never comes: once the answer is out,
        // end the request, which aborts the upstream request it feeds.
        answering.once('finish', () => answering.req.destroy());
      } else {
        socket.destroy();
      }
      return;
    }
    if (err.code === 'HPE_CLOSED_CONNECTION') {
      socket.destroy();
      return;
    }
    const body = openAiErrorBody(message, 'invalid_request_error', 'bad_request');
    recordRejected(err, status, message, socket);
    socket.end(
      `HTTP/1.1 ${status} ${status === 431 ? 'Request Header Fields Too Large' : status === 408 ? 'Request Timeout' : 'Bad Request'}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
    );
  });

  // CONNECT asks for a tunnel, which this proxy never opens (without this listener Node closes the
  // socket without a word): a recorded 405, then close.
  server.on('connect', (req: IncomingMessage, socket: Socket) => {
    const message = 'CONNECT is not supported: this proxy forwards OpenAI API requests and opens no tunnels';
    const body = openAiErrorBody(message, 'invalid_request_error', 'method_not_allowed');
    recordRejected(null, 405, message, socket, {
      method: 'CONNECT',
      path: (req.url ?? '').slice(0, 1024),
    });
    socket.end(
      `HTTP/1.1 405 Method Not Allowed\r\nallow: ${ALLOWED_METHODS}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
    );
  });

  // Requests Node's parser refused never reach the handler; they are still recorded (what little is known).
  const recordRejected = (
    err: NodeJS.ErrnoException | null,
    status: number,
    message: string,
    socket: Socket,
    parsed?: { method: string; path: string },
  ) => {
    requestsTotal++;
    try {
      const raw = (err as { rawPacket?: Buffer } | null)?.rawPacket;
      const method =
        parsed?.method ??
        (raw ? /^([A-Z]{1,16}) /.exec(raw.subarray(0, 20).toString('latin1'))?.[1] : undefined);
      const now = Date.now();
      sink.record({
        id: newExchangeId(now),
        startedAt: now,
        durationMs: 0,
        ttfbMs: null,
        method: method ?? '-',
        // A key in a CONNECT target is as secret as one in a request path.
        path: parsed ? scrubSecrets(parsed.path, currentSecrets()) : '(unparsed)',
        query: null,
        clientAddr: socket.remoteAddress ?? null,
        status,
        requestHeadersJson: '{}',
        responseHeadersJson: '{"content-type":"application/json"}',
        requestBody: null,
        requestBytes: raw?.length ?? 0,
        requestTruncated: false,
        responseBody: null,
        responseBytes: 0,
        responseTruncated: false,
        model: null,
        upstreamModel: null,
        upstream: null,
        modelUnknown: false,
        stream: false,
        promptTokens: null,
        completionTokens: null,
        totalTokens: null,
        user: null,
        error: 'invalid_request',
        errorMessage: message,
        assembled: null,
        internal: false,
      });
    } catch (e) {
      options.onError?.(e as Error, 'recording a rejected request');
    }
  };

  return {
    server,
    inflight: () => inflight,
    requestsTotal: () => requestsTotal,
    recordFinished,
    reconfigure(settings) {
      limits = settings.limits;
      cors = limits.corsOrigins;
      const next = settings.clientKeys.filter(Boolean);
      retiredKeys = [...new Set([...retiredKeys, ...clientKeys])].filter((k) => !next.includes(k));
      clientKeys = next;
    },
    async shutdown(graceMs) {
      closing = true;
      const closed = new Promise<void>((r) => server.close(() => r()));
      server.closeIdleConnections();
      // A connection still reading an upload answered early has its response: nothing to wait for.
      for (const s of draining) s.destroy();
      const untilDrained = (ms: number, interruptible = false) =>
        inflight === 0
          ? Promise.resolve()
          : new Promise<void>((r) => {
              const done = () => {
                clearTimeout(t);
                drained = null;
                endGrace = null;
                r();
              };
              const t = setTimeout(done, ms);
              drained = done;
              if (interruptible) endGrace = done;
            });
      if (cutEarly === null) await untilDrained(graceMs, true);
      if (inflight > 0) {
        cutMessage =
          cutEarly === null
            ? `The proxy cut this exchange at shutdown: SHUTDOWN_GRACE_MS (${graceMs} ms) ran out before the response was complete`
            : `The proxy cut this exchange at shutdown: ${cutEarly}`;
      }
      for (const s of sockets) s.destroy();
      await closed;
      // The cut responses' 'close' handlers (which queue their exchanges) may run after the server's own
      // close callback: wait for them, briefly, so their rows are recorded before the writer closes.
      await untilDrained(CUT_CLOSE_WAIT_MS);
      recordFinished();
    },
    cutNow(reason) {
      cutEarly ??= reason;
      endGrace?.();
    },
  };
}

/**
 * A response compressed despite the proxy's `accept-encoding: identity`: a textual one is decoded for its
 * record (and its stream reassembled from the decoded events). One in a coding the proxy cannot decode
 * is stored as a placeholder naming the coding, with no reassembled message (its events are unreadable).
 */
function decodeForRecord(x: ExchangeContext): void {
  const encoding = x.responseEncoding ?? '';
  if (isDecodable(encoding) && isTextual(x.responseContentType)) {
    const { assembler } = x;
    x.decoder = new RecordDecoder(
      encoding,
      x.responseCapture.limit,
      assembler ? (d) => assembler.push(d) : undefined,
      USAGE_TAIL_BYTES,
    );
  } else {
    x.assembler = null;
  }
}

/** A WebSocket session's body when it had no message to record (only control frames, or none). */
function framesPlaceholder(bytes: number): string | null {
  return bytes === 0 ? null : `[websocket frames, ${bytes} bytes]`;
}

function ignoreError(): void {}

/** The usage in a JSON response body: in the kept tail of one cut at CAPTURE_BODY_BYTES, else in `stored`. */
function responseUsage(capture: BodyCapture, stored: string) {
  if (!capture.truncated) return extractUsage(stored);
  const tail = capture.tailText();
  return (tail === null ? null : extractUsage(tail)) ?? extractUsage(stored);
}

/**
 * A streamed request body as the upstream request reads it, noting on the exchange while a chunk is handed
 * over and the upstream has not asked for the next (the body timeout's "the proxy is behind" signal: the
 * request's own buffer can be empty then, the chunk in flight being in the upstream request's hands).
 */
export async function* noteHeldUpstream(
  x: Pick<ExchangeContext, 'bodyHeldUpstream'>,
  body: AsyncIterable<Buffer>,
): AsyncIterable<Buffer> {
  for await (const chunk of body) {
    x.bodyHeldUpstream = true;
    try {
      yield chunk;
    } finally {
      x.bodyHeldUpstream = false;
    }
  }
}

/** True when the request says a body follows its headers. */
function declaresBody(req: IncomingMessage): boolean {
  const length = req.headers['content-length'];
  return length !== undefined ? length !== '0' : req.headers['transfer-encoding'] !== undefined;
}

/**
 * Arm the connection's timer for a request body still arriving: it runs out after `ms` without a byte
 * received (the server's 'timeout' listener then gives up on the body). One timer per connection, reset
 * by Node on every read, and only for bodies that did not come with their headers.
 */
function watchBody(x: ExchangeContext, ms: number): void {
  const socket = x.req.socket as WatchedSocket | null;
  if (x.req.complete || x.res.writableEnded || !socket || socket.destroyed) return;
  socket[kBodyWatch] = x;
  socket.setTimeout(ms);
  // The connection outlives the exchange (keep-alive): it must not hold the exchange, its body and its
  // captures until its next timer. The timer itself is Node's again once the response is done.
  x.res.once('close', () => {
    if (socket[kBodyWatch] === x) socket[kBodyWatch] = undefined;
  });
}

/**
 * The response is complete but the request's body is not (an upstream that answered an upload at once, as
 * one refusing it with a 401 or 413 does, and stopped reading it): read the rest and discard it, as node:http
 * does with a body nobody read, so that the client finishes sending, and the connection serves its next
 * request. Closing the connection instead could lose the answer (a close with unread bytes resets it).
 * The bytes count in the record; `done` runs once the body ended or the connection closed.
 */
function drainBody(
  x: ExchangeContext,
  onBytes: ((bytes: number) => void) | undefined,
  done: () => void,
  bounds: {
    /** CLIENT_BODY_TIMEOUT_MS: a client silent this long mid-drain is cut (0: never). */
    silenceMs: number;
    /** The connection's idle timeout again once the body has ended. */
    keepAliveMs: number;
    /** Connections being drained: shutdown() closes them at once (their responses are complete). */
    draining: Set<Socket>;
  },
): void {
  const { req } = x;
  const socket = req.socket;
  const onData = (chunk: Buffer) => {
    x.requestCapture.bytes += chunk.length;
    onBytes?.(chunk.length);
  };
  const end = () => {
    req.off('data', onData);
    req.off('end', end);
    req.off('close', end);
    req.off('error', end);
    socket?.off('close', end);
    if (socket) {
      bounds.draining.delete(socket);
      if (bounds.silenceMs > 0 && !socket.destroyed) socket.setTimeout(bounds.keepAliveMs);
    }
    done();
  };
  if (!socket || socket.destroyed) {
    done();
    return;
  }
  bounds.draining.add(socket);
  // Silence mid-drain is a stalled client as mid-body is: the server's 'timeout' listener closes a
  // connection no exchange watches (the response is complete), and `end` records the bytes that came.
  if (bounds.silenceMs > 0) socket.setTimeout(bounds.silenceMs);
  // The body's reader, an iterator the finished upstream request no longer pulls, lets go of it.
  req.removeAllListeners('readable');
  req.removeAllListeners('data');
  req.on('data', onData);
  req.once('end', end);
  req.once('close', end);
  req.once('error', end);
  // A request whose response is done is no longer the server's: the connection closing does not end it.
  socket.once('close', end);
  req.resume();
}

/** The exchange whose request body the connection's timer watches (tests). */
export function bodyWatchOf(socket: Socket): ExchangeContext | undefined {
  return (socket as WatchedSocket)[kBodyWatch];
}

/**
 * A body read whole, under MAX_REQUEST_BODY_BYTES (JSON, or a JSON candidate off the upload paths), whose
 * content-length is over `limit`.
 */
function declaredOverLimit(req: IncomingMessage, limit: number): boolean {
  if (!(Number(req.headers['content-length']) > limit)) return false;
  const contentType = String(req.headers['content-type'] ?? '');
  if (!isJsonType(contentType) && !isJsonCandidateType(contentType)) return false;
  const target = normaliseTarget(req.url);
  return target !== null && !isUploadPath(recordedPath(target.pathname).rest);
}

/**
 * A content type a JSON body is often sent under without meaning otherwise: none, `text/plain`, or
 * `application/x-www-form-urlencoded` (what `curl -d` sends), in any case, with any parameters.
 */
function isJsonCandidateType(contentType: string): boolean {
  const semi = contentType.indexOf(';');
  const media = (semi === -1 ? contentType : contentType.slice(0, semi)).trim().toLowerCase();
  return media === '' || media === 'text/plain' || media === 'application/x-www-form-urlencoded';
}

/** Paths whose bodies name no model (OpenAI's file uploads, Ollama's blobs): they stream through unread. */
function isUploadPath(rest: string): boolean {
  return /^(?:\/openai(?:\/v1)?)?\/(?:files|uploads)(?:\/|$)/.test(rest) || rest.startsWith('/api/blobs/');
}

/** A JSON media type, in any letter case (`Application/JSON`); the usual lower case without a regex. */
function isJsonType(contentType: string): boolean {
  return contentType.includes('json') || /json/i.test(contentType);
}

/**
 * The path recorded for a request and the part after `/v1` forwarded under the upstream's base: the
 * `/v1/...` form whichever base URL the client used; the proxy's own routes and Azure's (`/openai/...`)
 * and Ollama's (`/api/...`) own paths as they are.
 */
function recordedPath(pathname: string): { path: string; rest: string } {
  const versioned = pathname === '/v1' || pathname.startsWith('/v1/');
  const rest = versioned ? pathname.slice(3) || '/' : pathname;
  const path = versioned || isOwnPath(pathname) || isNativePath(pathname) ? pathname : `/v1${pathname}`;
  return { path, rest };
}

/** Paths in an API's own form rather than OpenAI's: Azure's `/openai/…`, Ollama's `/api/…`. */
function isNativePath(pathname: string): boolean {
  return pathname.startsWith('/openai/') || pathname.startsWith('/api/');
}

/** Paths the proxy itself owns (never forwarded). */
function isOwnPath(pathname: string): boolean {
  return pathname === '/health' || isAdminPath(pathname);
}

/** The admin API, guarded by ADMIN_API_KEY instead of client keys. */
function isAdminPath(pathname: string): boolean {
  return pathname === '/admin' || pathname.startsWith('/admin/');
}

/** The message of a 502/504: which upstream failed (by name for the config file's), and where it is set. */
function upstreamErrorMessage(kind: string, name: string, origin: string, err: unknown): string {
  const code = (err as { code?: string }).code;
  const which = name === 'default' ? origin : `"${name}" (${origin})`;
  switch (kind) {
    case 'upstream_timeout':
      return `The upstream ${which} did not answer in time (${code ?? 'timeout'}); see UPSTREAM_*_TIMEOUT_MS`;
    case 'upstream_reset':
      if (code && isMalformedResponseCode(code))
        return `The upstream ${which} sent a malformed response (${code})`;
      return `The connection to the upstream ${which} was reset (${code ?? 'reset'})`;
    default: {
      const setting =
        name === 'default'
          ? 'OPENAI_BASE_URL, --upstream, or openaiBaseUrl in the config file'
          : `upstreams.${name}.baseUrl in the config file`;
      return `The upstream ${which} could not be reached (${code ?? (err as Error).message}); check its base URL (${setting})`;
    }
  }
}
