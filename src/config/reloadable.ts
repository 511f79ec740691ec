import { type Config, type ConfigKey, SETTINGS } from './schema.js';

/**
 * Settings `POST /admin/reload-config` applies to a running proxy: upstreams and their keys, the model
 * registry and validation, the admin and client keys, CORS origins, the body limits and the client body
 * timeout. Any other setting (listen address, database, log file and rotation, upstream timeouts, Qdrant,
 * …) is read at start-up only.
 */
export const RELOADABLE_SETTINGS: ReadonlySet<ConfigKey> = new Set<ConfigKey>([
  'openaiApiKey',
  'openaiBaseUrl',
  'openaiApiType',
  'openaiApiVersion',
  'availableModels',
  'models',
  'modelMappings',
  'validateModels',
  'allowUnknownModels',
  'upstreams',
  'adminApiKey',
  'proxyApiKeys',
  'corsOrigins',
  'maxRequestBodyBytes',
  'captureBodyBytes',
  'clientBodyTimeoutMs',
]);

/**
 * The settings whose value in `next` differs from the one the proxy started with and that a reload cannot
 * apply: their names (never their values), in the order of SETTINGS.
 */
export function restartRequired(running: Config, next: Config): string[] {
  return SETTINGS.map((s) => s.key).filter(
    (k) => !RELOADABLE_SETTINGS.has(k) && JSON.stringify(running[k]) !== JSON.stringify(next[k]),
  );
}
