import type { Logger } from 'pino';
import { type ResolvedConfig, settingNames, upstreamApiKey } from '../config/load.js';
import { restartRequired } from '../config/reloadable.js';
import { OaiProxyError } from '../errors.js';
import { createAdminRoute, type RegistryControl } from '../proxy/admin-api.js';
import { createUpstreamTarget, isAzureV1Base, type UpstreamTarget } from '../proxy/forward.js';
import { createModelsRoute } from '../proxy/models-routes.js';
import type { ModelRouter, OwnRoute, RouteDecision } from '../proxy/server.js';
import type { ModelRegistry, RegistryView } from '../registry/registry.js';
import type { RegistryStore } from '../registry/registry-store.js';
import { buildSeedPlan, type SeedPlan, upstreamNames } from '../registry/seed.js';
import { isSqliteBusy } from '../storage/busy-wait.js';
import { createFailureStreak } from '../storage/failure-streak.js';
import { redactMessage } from '../storage/postgres.js';
import { isDatabaseUnavailable } from '../storage/storage.js';

/** api-version sent to classic Azure upstreams that name none (OPENAI_API_VERSION / `apiVersion`). */
export const DEFAULT_AZURE_API_VERSION = '2024-10-21';

/** The model registry as `serve` runs it: routing, `/models`, the admin API, live reload. */
export interface RegistryRuntime {
  router: ModelRouter;
  routes: OwnRoute[];
  store: RegistryStore;
  current(): ModelRegistry;
  /** The upstream of requests naming no registered model (OPENAI_BASE_URL), as last (re)loaded. */
  defaultUpstream(): UpstreamTarget;
  /** Fields for `GET /health`. */
  health(): Record<string, unknown>;
  /**
   * Why the registry's poll of the database fails now (password hidden), or null while it succeeds:
   * an instance that receives no requests still learns its database is gone (PostgreSQL).
   */
  databaseError(): string | null;
  /**
   * Re-read configuration (file + environment) and re-seed; throws and keeps the old state when invalid.
   * `restart_required` names the changed settings a reload cannot apply (see RELOADABLE_SETTINGS).
   */
  reload(): Promise<ReloadOutcome>;
  /**
   * Seed the store from the start-up configuration and route by the result. Until then the runtime routes
   * by the registry as the store held it: `serve` seeds as the last step before it listens, so that a start
   * that fails changes nothing another instance on the same database reads, and no request is routed
   * before the seeding.
   */
  seed(): Promise<void>;
  /** Re-read the registry from the store (its database file was reopened). */
  refresh(): Promise<void>;
  close(): void;
}

export interface RegistryRuntimeOptions {
  /** The registry's persistence (SQLite or PostgreSQL). */
  store: RegistryStore;
  /** Resolves the configuration again (for `POST /admin/reload-config`). */
  reloadConfig: () => ResolvedConfig;
  logger?: Pick<Logger, 'error' | 'warn' | 'info'>;
  /** The database as messages name it (password hidden). */
  databaseLabel?: string;
  /**
   * How often to look for registry changes made by other processes (default 500 ms). On PostgreSQL,
   * LISTEN/NOTIFY reports them at once and this polling is the fallback.
   */
  watchIntervalMs?: number;
  /** Called with each configuration that takes effect: the first, then each successful reload. */
  onConfig?(resolved: ResolvedConfig): void;
}

/** What `POST /admin/reload-config` answers: the registry now, and what still needs a restart. */
export type ReloadOutcome = RegistryView & { restart_required: string[]; warnings: string[] };

interface Settings {
  resolved: ResolvedConfig;
  defaultUpstream: UpstreamTarget;
  upstreams: Map<string, UpstreamTarget>;
}

/**
 * `t` with DEFAULT_AZURE_API_VERSION when it is a classic Azure upstream that names none. Azure's
 * `…/openai/v1` API needs no api-version: it gets one only when configured.
 */
export function withDefaultApiVersion(t: UpstreamTarget): UpstreamTarget {
  return t.type === 'azure' && !t.apiVersion && !isAzureV1Base(t.basePath)
    ? { ...t, apiVersion: DEFAULT_AZURE_API_VERSION }
    : t;
}

/**
 * The upstream targets a configuration declares: `default` (OPENAI_BASE_URL + OPENAI_API_KEY) and the
 * config file's named `upstreams`. Throws OaiProxyError('config_invalid') for a key variable that is unset.
 */
export function buildUpstreams(resolved: ResolvedConfig): Pick<Settings, 'defaultUpstream' | 'upstreams'> {
  const { config, env } = resolved;
  const file = resolved.configFile ? ` in config file ${resolved.configFile}` : '';
  const defaultUpstream = withDefaultApiVersion(
    createUpstreamTarget('default', config.openaiBaseUrl, {
      type: config.openaiApiType,
      apiKey: config.openaiApiKey,
      apiVersion: config.openaiApiVersion,
    }),
  );
  const upstreams = new Map<string, UpstreamTarget>();
  for (const [name, u] of Object.entries(config.upstreams)) {
    if (name === 'default') {
      throw new OaiProxyError(
        'config_invalid',
        `The upstream name "default" is reserved for OPENAI_BASE_URL; rename upstreams.default${file}`,
      );
    }
    const apiKey = upstreamApiKey(u, env);
    if (!apiKey && u.apiKeyEnv) {
      throw new OaiProxyError(
        'config_invalid',
        `upstreams.${name}.apiKeyEnv${file} names ${u.apiKeyEnv}, which is not set; set it in the environment or .env`,
      );
    }
    upstreams.set(
      name,
      withDefaultApiVersion(
        createUpstreamTarget(name, u.baseUrl, {
          type: u.type,
          apiKey,
          apiVersion: u.apiVersion,
          headers: u.headers,
        }),
      ),
    );
  }
  return { defaultUpstream, upstreams };
}

/**
 * Check the registry configuration in `resolved`, read the registry and build everything `serve` needs
 * from it. Writes nothing: `seed()` does (throws OaiProxyError('config_invalid') here for a bad one).
 */
export async function startRegistry(
  resolved: ResolvedConfig,
  options: RegistryRuntimeOptions,
): Promise<RegistryRuntime> {
  const { store } = options;
  const logger = options.logger;

  const prepare = (next: ResolvedConfig) => ({
    plan: buildSeedPlan(next.config, settingNames(next)),
    settings: { resolved: next, ...buildUpstreams(next) } satisfies Settings,
  });
  /** Seed; returns (and logs) what seeding skipped because a user's entry stands in the way. */
  const seedStore = async (plan: SeedPlan): Promise<string[]> => {
    const result = await store.seed(plan);
    for (const w of result.warnings) logger?.warn(w);
    return result.warnings;
  };

  const start = prepare(resolved);
  let settings = start.settings;
  options.onConfig?.(resolved);
  let registry = await store.load();

  // Reloads never overlap, and a reload asked for while one runs is done again after it.
  let loading: Promise<void> | null = null;
  let again = false;
  const refresh = async (): Promise<void> => {
    if (loading) {
      again = true;
      return loading;
    }
    loading = (async () => {
      do {
        again = false;
        try {
          registry = await store.load();
        } catch {
          // The database is failing; the recorder reports it. Keep routing with what we have.
        }
      } while (again);
    })().finally(() => {
      loading = null;
    });
    return loading;
  };
  // A failing poll is logged once per failure streak and reported by /health until a poll succeeds.
  const where = options.databaseLabel ?? 'the database';
  const poll = createFailureStreak({
    baseMs: options.watchIntervalMs ?? 500,
    onError: (err) =>
      logger?.error(
        { err: { message: redactMessage(err.message), code: (err as { code?: unknown }).code } },
        `database ${where}: reading the model registry failed; /health reports "database": "error" until it succeeds`,
      ),
    onRecover: () => logger?.info(`database ${where}: the model registry is readable again`),
  });
  const stopWatching = store.watch(
    () => void refresh(),
    options.watchIntervalMs ?? 500,
    (err) => (err ? poll.fail(err) : poll.succeeded()),
  );

  const names = () => upstreamNames(settings.resolved.config);

  const router: ModelRouter = {
    route(model): RouteDecision | null {
      const { config } = settings.resolved;
      if (model === null) return { upstream: settings.defaultUpstream, model: null, unknown: false };
      const r = registry.resolve(model);
      const known = r.model !== null || r.alias;
      if (!known && config.validateModels && !config.allowUnknownModels) return null;
      const upstreamName = r.model?.upstream ?? null;
      const upstream =
        upstreamName === null ? settings.defaultUpstream : settings.upstreams.get(upstreamName);
      if (!upstream) {
        throw new OaiProxyError(
          'upstream_unreachable',
          `The model \`${r.actual}\` is assigned to upstream "${upstreamName}", which is not configured; declare it under "upstreams" in the config file or change the model's upstream`,
          { status: 502 },
        );
      }
      return {
        upstream,
        model: r.actual,
        deployment: r.model?.deployment ?? r.actual,
        unknown: !known && config.validateModels,
      };
    },
    refusesUnknown() {
      const { config } = settings.resolved;
      return config.validateModels && !config.allowUnknownModels;
    },
  };

  const reload = async (): Promise<ReloadOutcome> => {
    const next = options.reloadConfig();
    const prepared = prepare(next);
    const skipped = await seedStore(prepared.plan);
    options.onConfig?.(next);
    settings = prepared.settings;
    await refresh();
    // Compared with the start-up configuration: that is what the proxy still runs with for these.
    const pending = restartRequired(resolved.config, next.config);
    logger?.info(`configuration reloaded: ${registry.models.size} models, ${registry.mappings.size} aliases`);
    if (pending.length > 0)
      logger?.warn(
        `configuration reloaded, but these changed settings need a restart: ${pending.join(', ')}`,
      );
    for (const w of next.warnings) logger?.warn(w);
    // What the new configuration asked for but did not get is the caller's to know, not only the log's.
    return {
      ...registry.view(names()),
      restart_required: pending,
      warnings: [...next.warnings, ...skipped],
    };
  };

  // An admin write the database cannot take now is a 503 that says so, not an internal error.
  const write = async <T>(
    what: string,
    fn: () => Promise<T>,
    unchanged = 'the registry was not changed',
  ): Promise<T> => {
    try {
      return await fn();
    } catch (err) {
      if (!isDatabaseUnavailable(err)) throw err;
      if (isSqliteBusy(err)) {
        // The store waited for the lock (on timers) as long as SQLite's busy timeout would have.
        logger?.warn(`admin API: ${what} not made, the database stayed locked by another process`);
        throw new OaiProxyError(
          'database_unavailable',
          `The database is locked by another process (an \`oai-proxy models\` or \`oai-proxy logs prune\` command, or an sqlite3 shell in a write transaction) and stayed locked for 5 s; ${unchanged}. Try again in a moment`,
          { status: 503, cause: err },
        );
      }
      const reason = redactMessage((err as Error).message ?? String(err));
      logger?.warn(`admin API: ${what} not made, the database is unavailable: ${reason}`);
      throw new OaiProxyError(
        'database_unavailable',
        `The database is unavailable (${reason}); ${unchanged}. Retry once it is back: GET /health reports "database": "ok"`,
        { status: 503, cause: err },
      );
    }
  };

  const control: RegistryControl = {
    adminKey: () => settings.resolved.config.adminApiKey,
    upstreamNames: names,
    view: () => registry.view(names()),
    async addModel(m) {
      const info = await write(`adding model "${m.name}"`, () => store.addModel(m, 'admin'));
      await refresh();
      return info;
    },
    async removeModel(name) {
      const done = await write(`removing model "${name}"`, () => store.removeModel(name));
      await refresh();
      return done;
    },
    async setMapping(alias, actual) {
      const outcome = await write(`mapping alias "${alias}"`, () => store.setMapping(alias, actual, 'admin'));
      await refresh();
      return outcome;
    },
    async removeMapping(alias) {
      const done = await write(`removing alias "${alias}"`, () => store.removeMapping(alias));
      await refresh();
      return done;
    },
    reload: () =>
      write(
        'reloading the configuration',
        reload,
        'the configuration was not reloaded (the previous one stays in force)',
      ),
  };

  return {
    router,
    routes: [createModelsRoute(() => registry), createAdminRoute(control)],
    store,
    current: () => registry,
    defaultUpstream: () => settings.defaultUpstream,
    health: () => ({
      models: registry.models.size,
      model_aliases: registry.mappings.size,
      validate_models: settings.resolved.config.validateModels,
      admin_api: settings.resolved.config.adminApiKey ? 'enabled' : 'disabled',
    }),
    databaseError: () =>
      poll.failing && poll.lastError !== null
        ? `reading the model registry failed: ${redactMessage(poll.lastError)}`
        : null,
    reload,
    async seed() {
      await seedStore(start.plan);
      // A refresh begun before the seeding must not land after this load.
      await loading;
      registry = await store.load();
    },
    refresh,
    close: stopWatching,
  };
}
