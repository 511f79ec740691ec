import type { IncomingHttpHeaders } from 'node:http';
import type { Agent } from 'undici';
import { undici } from '../lazy-modules.js';
import { bearerToken } from './capture.js';

/** Where a request goes: one upstream API with its credentials. */
export interface UpstreamTarget {
  /** `default` for OPENAI_BASE_URL, else the config file's upstream name. */
  name: string;
  /** e.g. `https://api.openai.com` */
  origin: string;
  /** Path prefix of the base URL without trailing slash, e.g. `/v1`. */
  basePath: string;
  type: 'openai' | 'azure';
  apiKey?: string;
  apiVersion?: string;
  headers?: Record<string, string>;
}

/** Build an UpstreamTarget from a base URL. */
export function createUpstreamTarget(
  name: string,
  baseUrl: string,
  extra: Omit<UpstreamTarget, 'name' | 'origin' | 'basePath' | 'type'> & { type?: 'openai' | 'azure' } = {},
): UpstreamTarget {
  const u = new URL(baseUrl);
  // Azure by host, or by a base URL that already names a deployment (the original service's style).
  const azure =
    u.hostname.endsWith('.openai.azure.com') || /\/openai\/deployments\/[^/]+\/?$/.test(u.pathname);
  const type = extra.type ?? (azure ? 'azure' : 'openai');
  return { name, origin: u.origin, basePath: u.pathname.replace(/\/+$/, ''), ...extra, type };
}

/** How the request line and credentials look upstream. */
export interface UpstreamRequestShape {
  path: string;
  headers: Record<string, string | string[]>;
}

const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'host',
  // Node's server already answered `Expect: 100-continue`; undici refuses to send `expect` at all.
  'expect',
  'http2-settings',
]);

/** True for headers that belong to one connection and must not be forwarded. */
export function isHopByHop(name: string, connectionTokens?: Set<string>): boolean {
  return HOP_BY_HOP.has(name) || (connectionTokens?.has(name) ?? false);
}

/**
 * The header names a message's `Connection` header lists (RFC 9110 §7.6.1: hop-by-hop, like the
 * connection header itself), lower case; undefined when it lists none but keep-alive or close.
 */
export function connectionTokens(
  headers: IncomingHttpHeaders | Record<string, string | string[] | undefined>,
): Set<string> | undefined {
  const c = headers.connection;
  // `keep-alive` and `close`, nearly every request's value, name only hop-by-hop headers anyway.
  if (!c || c === 'keep-alive' || c === 'close') return undefined;
  return new Set(
    String(c)
      .toLowerCase()
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean),
  );
}

/** Operations Azure serves per deployment, at `{resource}/openai/deployments/{deployment}{op}`. */
const AZURE_DEPLOYMENT_OPS =
  /^\/(?:chat\/completions|completions|embeddings|audio\/(?:transcriptions|translations|speech)|images\/(?:generations|edits|variations)|extensions\/chat\/completions)$/;

/**
 * A client path in Azure's own form: `/openai/deployments/{deployment}/…`, or `/deployments/{deployment}/…`
 * after the proxy's `/v1` (an AzureOpenAI SDK client given the proxy's …/v1 as its baseURL).
 */
const AZURE_DEPLOYMENT_PATH = /^(?:\/openai)?\/deployments\/([^/]+)(\/.*)?$/;

/** A client path in the form of Azure's v1 API: `/openai/v1` and below. */
const AZURE_V1_PATH = /^\/openai\/v1(?:\/|$)/;

/** An Entra ID access token (a JWT: three base64url segments, the first a JSON header). */
const ENTRA_TOKEN = /^eyJ[\w-]*\.[\w-]+\.[\w-]*$/;

/** True for Azure's `…/openai/v1` base URL: OpenAI-style paths, the model (deployment) in the body. */
export function isAzureV1Base(basePath: string): boolean {
  return /\/openai\/v1$/.test(basePath);
}

/** The deployment a client path in Azure's form names (`[/openai]/deployments/{name}/…`), decoded; else null. */
export function azurePathDeployment(rest: string): string | null {
  // Nearly every request is not one: `/deployments/…` or `/openai/…` only.
  if (rest.charCodeAt(1) !== 100 && !rest.startsWith('/openai/')) return null;
  const m = AZURE_DEPLOYMENT_PATH.exec(rest);
  if (!m) return null;
  try {
    return decodeURIComponent(m[1]);
  } catch {
    return m[1];
  }
}

/**
 * True when the request's model goes to `target` as a deployment in the path (an OpenAI-style request for
 * a deployment-scoped operation on a classic Azure base); otherwise an Azure upstream takes it in the body.
 */
export function isDeploymentInPath(target: UpstreamTarget, rest: string): boolean {
  return (
    target.type === 'azure' &&
    !isAzureV1Base(target.basePath) &&
    !rest.startsWith('/openai/') &&
    AZURE_DEPLOYMENT_OPS.test(rest)
  );
}

/**
 * The query parameter an upstream reads a WebSocket handshake's model from, when it is Azure: `deployment`
 * on the classic `/openai/realtime` (an OpenAI-style `/realtime` goes there on a classic base), `model` on
 * the v1 API's `/openai/v1/realtime`. Null for other upstreams: the client's parameter names stand.
 */
export function azureRealtimeModelParam(target: UpstreamTarget, rest: string): 'model' | 'deployment' | null {
  if (target.type !== 'azure') return null;
  const v1 = rest.startsWith('/openai/') ? rest.startsWith('/openai/v1/') : isAzureV1Base(target.basePath);
  return v1 ? 'model' : 'deployment';
}

/**
 * The upstream path (no query) for `rest`:
 * - OpenAI-style upstreams: base + rest; Ollama's native `/api/…` relative to the base without its `/v1`.
 * - Azure, a client path already in Azure's form (`/openai/…`, `/deployments/…`): under the resource
 *   root as sent, its deployment replaced by the routed one.
 * - Azure `…/openai/v1` base: base + rest.
 * - Azure classic: deployment-scoped operations at `{root}/openai/deployments/{deployment}{rest}` (or
 *   under a base that names a deployment), everything else at `{root}/openai{rest}`.
 */
function upstreamPath(target: UpstreamTarget, rest: string, deployment: string | undefined): string {
  const base = target.basePath;
  if (target.type !== 'azure') {
    return rest.startsWith('/api/') ? base.replace(/\/v1$/, '') + rest : base + rest;
  }
  // The resource root: the base without `/openai/v1`, `/openai/deployments/{name}` or `/openai`.
  const root = base.replace(/\/openai(?:\/v1|\/deployments\/[^/]+)?$/, '');
  if (rest === '/openai' || rest.startsWith('/openai/') || rest.startsWith('/deployments/')) {
    const m = AZURE_DEPLOYMENT_PATH.exec(rest);
    if (m && deployment) return `${root}/openai/deployments/${encodeURIComponent(deployment)}${m[2] ?? ''}`;
    return rest.startsWith('/openai') ? root + rest : `${root}/openai${rest}`;
  }
  if (isAzureV1Base(base)) return base + rest;
  if (AZURE_DEPLOYMENT_OPS.test(rest)) {
    if (/\/openai\/deployments\/[^/]+$/.test(base)) return base + rest;
    if (deployment) return `${root}/openai/deployments/${encodeURIComponent(deployment)}${rest}`;
  }
  return `${root}/openai${rest}`;
}

/**
 * True when `target` has a key of its own: its apiKey, or an `Authorization` or `api-key` among its
 * configured headers. A client's credentials are then not forwarded to it beside that key.
 */
export function hasOwnKey(target: UpstreamTarget): boolean {
  if (target.apiKey) return true;
  const own = headerCredentials(target);
  return own.apiKey || own.authorization;
}

/** Which credentials the upstream's configured headers carry (its key given as a header, not apiKey). */
function headerCredentials(target: UpstreamTarget): { apiKey: boolean; authorization: boolean } {
  const own = { apiKey: false, authorization: false };
  for (const k in target.headers) {
    const name = k.toLowerCase();
    if (name === 'api-key') own.apiKey = true;
    else if (name === 'authorization') own.authorization = true;
  }
  return own;
}

/**
 * The upstream path and headers for a client request: `rest` is the path after `/v1` (starting with `/`),
 * or the client's path when it is in Azure's (`/openai/…`) or Ollama's (`/api/…`) form; hop-by-hop
 * headers dropped, the upstream key put in place of the client's when configured (see upstreamPath).
 */
export function shapeUpstreamRequest(
  target: UpstreamTarget,
  rest: string,
  query: string,
  clientHeaders: IncomingHttpHeaders,
  options: { contentLength?: number; deployment?: string } = {},
): UpstreamRequestShape {
  const tokens = connectionTokens(clientHeaders);
  const headers: Record<string, string | string[]> = {};
  for (const k in clientHeaders) {
    const v = clientHeaders[k];
    if (v === undefined || isHopByHop(k, tokens)) continue;
    headers[k] = v;
  }
  // Bodies are recorded as sent: ask for them uncompressed.
  headers['accept-encoding'] = 'identity';
  if (options.contentLength !== undefined) headers['content-length'] = String(options.contentLength);
  if (target.headers) for (const [k, v] of Object.entries(target.headers)) headers[k.toLowerCase()] = v;

  const path = upstreamPath(target, rest, options.deployment);
  let q = query;
  if (target.type === 'azure') {
    const own = target.apiKey ? null : headerCredentials(target);
    if (target.apiKey) {
      delete headers.authorization;
      headers['api-key'] = target.apiKey;
    } else if (own && (own.apiKey || own.authorization)) {
      // The upstream's headers hold its key: the client's is not forwarded beside it (Azure refuses a
      // request with both api-key and Authorization), unless those headers set both.
      if (!own.authorization) delete headers.authorization;
      if (!own.apiKey) delete headers['api-key'];
    } else if (!headers['api-key'] && typeof headers.authorization === 'string') {
      // A plain key sent the OpenAI way becomes Azure's api-key; an Entra ID token stays a Bearer token.
      const token = bearerToken(headers.authorization);
      if (!token || !ENTRA_TOKEN.test(token)) {
        if (token) headers['api-key'] = token;
        delete headers.authorization;
      }
    }
    // Azure's v1 API (`/openai/v1/…`) refuses a dated api-version: a client path in that form gets the
    // upstream's only when the upstream is a v1 base itself (its api-version configured for that API).
    if (
      target.apiVersion &&
      !/(^|&)api-version=/.test(q) &&
      (!AZURE_V1_PATH.test(rest) || isAzureV1Base(target.basePath))
    )
      q = q
        ? `${q}&api-version=${encodeURIComponent(target.apiVersion)}`
        : `api-version=${encodeURIComponent(target.apiVersion)}`;
  } else if (target.apiKey) {
    delete headers['api-key'];
    headers.authorization = `Bearer ${target.apiKey}`;
  }
  return { path: q ? `${path}?${q}` : path, headers };
}

export interface DispatcherTimeouts {
  connectTimeoutMs: number;
  headersTimeoutMs: number;
  idleTimeoutMs: number;
}

/** One keep-alive undici Agent shared by all upstreams, with the configured timeouts. */
export function createDispatcher(t: DispatcherTimeouts): Agent {
  return new (undici().Agent)({
    connect: { timeout: t.connectTimeoutMs },
    headersTimeout: t.headersTimeoutMs,
    bodyTimeout: t.idleTimeoutMs,
    keepAliveTimeout: 30_000,
    keepAliveMaxTimeout: 600_000,
  });
}

/**
 * Codes of an upstream answer that arrived but broke HTTP: llhttp's parse errors and undici's own
 * response checks (a body longer or shorter than its content-length, a body on a 204/304, headers over
 * its limit, a bad 1xx). The upstream was reached; its response was malformed.
 */
export function isMalformedResponseCode(code: string): boolean {
  return code.startsWith('HPE_') || code.startsWith('UND_ERR_RES_') || code === 'UND_ERR_HEADERS_OVERFLOW';
}

/** Classify a transport error from undici into the record's error kind and the client's status. */
export function classifyUpstreamError(err: unknown): {
  kind: 'upstream_unreachable' | 'upstream_timeout' | 'upstream_reset';
  status: 502 | 504;
} {
  const code = (err as { code?: string })?.code ?? (err as { cause?: { code?: string } })?.cause?.code ?? '';
  if (
    code === 'UND_ERR_CONNECT_TIMEOUT' ||
    code === 'UND_ERR_HEADERS_TIMEOUT' ||
    code === 'UND_ERR_BODY_TIMEOUT' ||
    code === 'ETIMEDOUT'
  ) {
    return { kind: 'upstream_timeout', status: 504 };
  }
  if (
    code === 'ECONNRESET' ||
    code === 'EPIPE' ||
    code === 'UND_ERR_SOCKET' ||
    code === 'UND_ERR_CLOSED' ||
    code === 'UND_ERR_INFO' ||
    isMalformedResponseCode(code)
  ) {
    return { kind: 'upstream_reset', status: 502 };
  }
  return { kind: 'upstream_unreachable', status: 502 };
}
