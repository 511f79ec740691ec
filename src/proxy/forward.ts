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

function connectionTokens(headers: IncomingHttpHeaders): Set<string> | undefined {
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

/**
 * The upstream path and headers for a client request: `rest` is the path after `/v1` (starting with `/`),
 * hop-by-hop headers dropped, the upstream key put in place of the client's when configured.
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

  let path = target.basePath + rest;
  let q = query;
  if (target.type === 'azure') {
    if (target.apiKey) {
      delete headers.authorization;
      headers['api-key'] = target.apiKey;
    } else if (!headers['api-key'] && typeof headers.authorization === 'string') {
      const token = bearerToken(headers.authorization);
      if (token) headers['api-key'] = token;
      delete headers.authorization;
    }
    // {base}/openai/deployments/{deployment}/chat/completions, unless the base already names a deployment.
    if (options.deployment && !/\/openai\/deployments\/[^/]+$/.test(target.basePath)) {
      const base = target.basePath.replace(/\/openai$/, '');
      path = `${base}/openai/deployments/${encodeURIComponent(options.deployment)}${rest}`;
    } else if (!/\/openai(\/|$)/.test(target.basePath)) {
      // Requests naming no model (files, batches, …) live under {base}/openai/ on Azure.
      path = `${target.basePath}/openai${rest}`;
    }
    if (target.apiVersion && !/(^|&)api-version=/.test(q))
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
