import { redactUrl } from '../config/paths.js';
import { undici } from '../lazy-modules.js';
import { shapeUpstreamRequest, type UpstreamTarget } from './forward.js';

/** What one `GET {baseUrl}/models` told about an upstream. */
export interface UpstreamCheckResult {
  outcome: 'reachable' | 'unauthorised' | 'unreachable' | 'unexpected';
  /** The URL asked, password-redacted, without the key. */
  url: string;
  httpStatus?: number;
  /** Models listed in a 2xx answer, when it had an OpenAI-shaped `data` array. */
  models?: number;
  /** The string `id`s of those models, in the upstream's order. */
  ids?: string[];
  /** Transport error code, e.g. ECONNREFUSED or UND_ERR_CONNECT_TIMEOUT. */
  errorCode?: string;
}

/**
 * Ask the upstream `GET {baseUrl}/models` once, with the key and headers the proxy would send
 * (Bearer for OpenAI, api-key + api-version for Azure). Never throws: failures are outcomes.
 */
export async function checkUpstream(
  target: UpstreamTarget,
  options: { timeoutMs?: number } = {},
): Promise<UpstreamCheckResult> {
  const timeoutMs = options.timeoutMs ?? 5000;
  const shape = shapeUpstreamRequest(target, '/models', '', { accept: 'application/json' });
  const url = target.origin + shape.path;
  const shown = redactUrl(url);
  const { Agent, request } = undici();
  const agent = new Agent({
    connect: { timeout: timeoutMs },
    headersTimeout: timeoutMs,
    bodyTimeout: timeoutMs,
  });
  try {
    const res = await request(url, { method: 'GET', headers: shape.headers, dispatcher: agent });
    const text = await res.body.text();
    const status = res.statusCode;
    if (status === 401 || status === 403) return { outcome: 'unauthorised', url: shown, httpStatus: status };
    if (status < 200 || status >= 300) return { outcome: 'unexpected', url: shown, httpStatus: status };
    let models: number | undefined;
    let ids: string[] | undefined;
    try {
      const data = (JSON.parse(text) as { data?: unknown }).data;
      if (Array.isArray(data)) {
        models = data.length;
        ids = data.map((m) => (m as { id?: unknown } | null)?.id).filter((id) => typeof id === 'string');
      }
    } catch {
      // A 2xx that is not JSON still proves the server is reachable.
    }
    return { outcome: 'reachable', url: shown, httpStatus: status, models, ids };
  } catch (err) {
    const e = err as { code?: string; cause?: { code?: string } };
    return { outcome: 'unreachable', url: shown, errorCode: e.code ?? e.cause?.code ?? String(err) };
  } finally {
    await agent.close().catch(() => undefined);
  }
}

/** One line for the user: the outcome, what was asked, and what to do about it. */
export function describeUpstreamCheck(r: UpstreamCheckResult): string {
  switch (r.outcome) {
    case 'reachable':
      return `upstream reachable: GET ${r.url} → ${r.httpStatus}${r.models !== undefined ? ` (${r.models} models listed)` : ''}`;
    case 'unauthorised':
      return `upstream unauthorised: GET ${r.url} → ${r.httpStatus}; check the API key (or leave it empty so each client sends its own)`;
    case 'unreachable':
      return `upstream unreachable: GET ${r.url} failed (${r.errorCode}); check the base URL and that the server is running`;
    case 'unexpected':
      return `upstream answered GET ${r.url} with HTTP ${r.httpStatus}; check the base URL (it should end where /models is served, e.g. …/v1)`;
  }
}
