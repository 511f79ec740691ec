import type { ModelRegistry } from '../registry/registry.js';
import type { ExchangeContext, OwnRoute } from './server.js';

/** One entry of OpenAI's model list. */
export interface OpenAiModel {
  id: string;
  object: 'model';
  created: number;
  owned_by: string;
}

/** The registry as OpenAI's model objects: every model, then every alias (owned by its target's upstream). */
export function openAiModels(registry: ModelRegistry): OpenAiModel[] {
  const owner = (upstream: string | null | undefined) => upstream ?? 'oai-proxy';
  const out: OpenAiModel[] = [];
  for (const m of registry.models.values()) {
    out.push({
      id: m.name,
      object: 'model',
      created: Math.floor(m.created / 1000),
      owned_by: owner(m.upstream),
    });
  }
  for (const a of registry.mappings.values()) {
    if (registry.models.has(a.alias)) continue;
    const target = registry.resolve(a.alias).model;
    out.push({
      id: a.alias,
      object: 'model',
      created: Math.floor(a.created / 1000),
      owned_by: owner(target?.upstream),
    });
  }
  return out;
}

/**
 * `GET /models`, `GET /v1/models` and `GET /v1/models/{id}` answered from the registry in OpenAI's
 * format (no longer passed through to the upstream).
 */
export function createModelsRoute(current: () => ModelRegistry): OwnRoute {
  return (x: ExchangeContext) => {
    const method = x.req.method ?? 'GET';
    if (method !== 'GET' && method !== 'HEAD') return false;
    if (x.path === '/v1/models') {
      x.respondJson(200, { object: 'list', data: openAiModels(current()) });
      return true;
    }
    if (!x.path.startsWith('/v1/models/') || x.path.length === '/v1/models/'.length) return false;
    let id: string;
    try {
      id = decodeURIComponent(x.path.slice('/v1/models/'.length));
    } catch {
      return false;
    }
    const found = openAiModels(current()).find((m) => m.id === id);
    if (found) x.respondJson(200, found);
    else
      x.respondError(
        404,
        'model_not_found',
        `The model \`${id}\` does not exist or is not available on this proxy`,
        'invalid_request_error',
        'model_not_found',
        'model',
      );
    return true;
  };
}
