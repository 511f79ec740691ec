import { createHash, timingSafeEqual } from 'node:crypto';
import { isOaiProxyError, OaiProxyError, openAiErrorBody } from '../errors.js';
import type { NewModel } from '../registry/model-store.js';
import { checkModelName, checkModelText, type ModelInfo, type RegistryView } from '../registry/registry.js';
import { bearerToken } from './capture.js';
import type { ExchangeContext, OwnRoute } from './server.js';

/** What the admin API may do to the registry; the serve command provides it. */
export interface RegistryControl {
  /** ADMIN_API_KEY as currently configured; unset = the admin API is off. */
  adminKey(): string | undefined;
  upstreamNames(): string[];
  view(): RegistryView;
  /**
   * Throws OaiProxyError('conflict', 409) when the name is taken. Every write throws
   * OaiProxyError('database_unavailable', 503) when the database cannot take it now.
   */
  addModel(m: NewModel): Promise<ModelInfo>;
  removeModel(name: string): Promise<boolean>;
  /** Throws OaiProxyError('conflict', 400) for a loop or a clash with a model name. */
  setMapping(alias: string, actual: string): Promise<'created' | 'replaced'>;
  removeMapping(alias: string): Promise<boolean>;
  /**
   * Re-read the config file and environment; throws OaiProxyError('config_invalid'), or
   * OaiProxyError('database_unavailable', 503) when the registry cannot be re-seeded now, and keeps the old state.
   */
  reload(): Promise<RegistryView>;
}

/** Fixed: admin bodies are small JSON objects, whatever MAX_REQUEST_BODY_BYTES allows for proxied ones. */
const MAX_ADMIN_BODY = 64 * 1024;
const MAX_ADMIN_BODY_NAME = `the admin API's limit of ${MAX_ADMIN_BODY} bytes (64 KB, fixed)`;

/** Constant-time comparison of a presented key with the configured one. */
export function keyMatches(presented: string, expected: string): boolean {
  const a = createHash('sha256').update(presented).digest();
  const b = createHash('sha256').update(expected).digest();
  return timingSafeEqual(a, b) && presented.length === expected.length;
}

/**
 * `/admin/*`: the model registry over HTTP, behind `Authorization: Bearer <ADMIN_API_KEY>`. Answers 404
 * while ADMIN_API_KEY is unset. Every call is recorded like any exchange (Authorization redacted).
 */
export function createAdminRoute(control: RegistryControl): OwnRoute {
  // Other paths are declined synchronously: no promise on every proxied request.
  return (x: ExchangeContext) =>
    x.path === '/admin' || x.path.startsWith('/admin/') ? answerAdmin(control, x) : false;
}

async function answerAdmin(control: RegistryControl, x: ExchangeContext): Promise<boolean> {
  const key = control.adminKey();
  if (!key) {
    x.respondError(
      404,
      null,
      'The admin API is disabled; set ADMIN_API_KEY (environment or config file "adminApiKey") and restart to enable it',
      'invalid_request_error',
      'admin_disabled',
    );
    return true;
  }
  const presented = bearerToken(x.req.headers.authorization);
  if (presented === undefined || !keyMatches(presented, key)) {
    x.respondError(
      401,
      'unauthorized',
      presented !== undefined
        ? 'Incorrect admin API key; send Authorization: Bearer <ADMIN_API_KEY>'
        : 'Missing admin API key; send Authorization: Bearer <ADMIN_API_KEY>',
      'invalid_request_error',
      'invalid_api_key',
    );
    return true;
  }
  try {
    await dispatch(x, control);
  } catch (err) {
    if (!isOaiProxyError(err)) throw err;
    const status = err.status === 500 ? 400 : err.status;
    const param = err instanceof BadField ? err.param : null;
    const type = status >= 500 ? 'server_error' : 'invalid_request_error';
    // Locked by another process, or unreachable: worth trying again shortly.
    const headers: Record<string, string> = err.code === 'database_unavailable' ? { 'retry-after': '1' } : {};
    x.respondError(status, null, err.message, type, err.code, param, headers);
  }
  return true;
}

async function dispatch(x: ExchangeContext, control: RegistryControl): Promise<void> {
  const method = x.req.method ?? 'GET';
  const path = x.path;
  const tail = (prefix: string) => decodeURIComponent(path.slice(prefix.length));

  if (path === '/admin/models') {
    if (method === 'GET') return x.respondJson(200, control.view());
    if (method === 'POST') {
      const body = await readJson(x, ['name', 'display_name', 'description', 'upstream', 'deployment']);
      if (!body) return;
      const name = field(() => checkModelName(body.name, 'name'), 'name');
      const opt = (k: string) => {
        const v = body[k];
        if (v === undefined || v === null) return null;
        if (typeof v !== 'string') throw badField(k, `${k} must be a string`);
        field(() => checkModelText(v, k), k);
        return v;
      };
      const upstream = opt('upstream');
      if (upstream !== null && !control.upstreamNames().includes(upstream)) {
        throw badField(
          'upstream',
          `upstream "${upstream}" is not configured; known upstreams: ${control.upstreamNames().join(', ')}`,
        );
      }
      const deployment = opt('deployment');
      if (deployment !== null) field(() => checkModelName(deployment, 'deployment'), 'deployment');
      const model = await control.addModel({
        name,
        displayName: opt('display_name'),
        description: opt('description'),
        upstream: upstream === 'default' ? null : upstream,
        deployment,
      });
      return x.respondJson(
        201,
        control.view().models.find((v) => v.name === model.name),
      );
    }
    return notAllowed(x, 'GET, POST');
  }
  if (path.startsWith('/admin/models/') && path.length > '/admin/models/'.length) {
    if (method !== 'DELETE') return notAllowed(x, 'DELETE');
    const name = tail('/admin/models/');
    if (!(await control.removeModel(name))) {
      const isAlias = Object.hasOwn(control.view().mappings, name);
      return notFound(
        x,
        isAlias
          ? `"${name}" is an alias, not a model; remove it with DELETE /admin/model-mappings/${encodeURIComponent(name)}`
          : `Model "${name}" is not registered`,
      );
    }
    return x.respondRaw(204, '', {});
  }
  if (path === '/admin/model-mappings') {
    if (method === 'GET') return x.respondJson(200, control.view().mappings);
    if (method !== 'POST') return notAllowed(x, 'GET, POST');
    const body = await readJson(x, ['alias', 'actual_model']);
    if (!body) return;
    const alias = field(() => checkModelName(body.alias, 'alias'), 'alias');
    const actual = field(() => checkModelName(body.actual_model, 'actual_model'), 'actual_model');
    const outcome = await control.setMapping(alias, actual);
    return x.respondJson(outcome === 'created' ? 201 : 200, { alias, actual_model: actual });
  }
  if (path.startsWith('/admin/model-mappings/') && path.length > '/admin/model-mappings/'.length) {
    if (method !== 'DELETE') return notAllowed(x, 'DELETE');
    const alias = tail('/admin/model-mappings/');
    if (!(await control.removeMapping(alias))) return notFound(x, `Alias "${alias}" does not exist`);
    return x.respondRaw(204, '', {});
  }
  if (path === '/admin/reload-config') {
    if (method !== 'POST') return notAllowed(x, 'POST');
    try {
      const view = await control.reload();
      return x.respondJson(200, { status: 'reloaded', ...view });
    } catch (err) {
      if (isOaiProxyError(err) && err.code !== 'database_unavailable') {
        return x.respondError(
          400,
          null,
          `Configuration not reloaded (the previous one stays in force): ${err.message}`,
          'invalid_request_error',
          'config_invalid',
        );
      }
      throw err;
    }
  }
  return notFound(
    x,
    `No admin route ${method} ${path}; see /admin/models, /admin/model-mappings, /admin/reload-config`,
  );
}

async function readJson(x: ExchangeContext, allowed: string[]): Promise<Record<string, unknown> | null> {
  const buf = await x.readBody(MAX_ADMIN_BODY, MAX_ADMIN_BODY_NAME);
  if (!buf) return null;
  let parsed: unknown;
  try {
    parsed = JSON.parse(buf.toString('utf8') || 'null');
  } catch (err) {
    // V8 quotes the text around the error, which may hold a key: keep only what and where.
    const why = (err as Error).message.replace(/,\s*\S.* is not valid JSON$/s, '');
    throw badField(null, `The request body is not valid JSON: ${why}`);
  }
  if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw badField(null, `The request body must be a JSON object with ${allowed.join(', ')}`);
  }
  for (const k of Object.keys(parsed)) {
    if (!allowed.includes(k)) throw badField(k, `Unknown field "${k}"; expected ${allowed.join(', ')}`);
  }
  return parsed as Record<string, unknown>;
}

function field<T>(fn: () => T, name: string): T {
  try {
    return fn();
  } catch (err) {
    throw badField(name, (err as Error).message);
  }
}

class BadField extends OaiProxyError {
  constructor(
    readonly param: string | null,
    message: string,
  ) {
    super('invalid_request', message, { status: 400 });
  }
}

function badField(param: string | null, message: string): BadField {
  return new BadField(param, message);
}

function notFound(x: ExchangeContext, message: string): void {
  x.respondError(404, null, message, 'invalid_request_error', 'not_found');
}

function notAllowed(x: ExchangeContext, allow: string): void {
  const message = `Method ${x.req.method} not allowed here; use ${allow}`;
  x.errorMessage = message;
  x.respondRaw(405, openAiErrorBody(message, 'invalid_request_error', 'method_not_allowed'), {
    'content-type': 'application/json',
    allow,
  });
}
