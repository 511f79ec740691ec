import type { Config, ConfigKey, ModelEntry } from '../config/schema.js';
import { OaiProxyError } from '../errors.js';
import { DEFAULT_MODELS } from './defaults.js';
import { checkModelName, checkModelText, ModelRegistry } from './registry.js';

/** A model the configuration asks for. */
export interface SeedModel {
  name: string;
  displayName: string | null;
  description: string | null;
  upstream: string | null;
  deployment: string | null;
  source: 'default' | 'config';
}

/** What seeding writes: the models and aliases the configuration (or the defaults) declare. */
export interface SeedPlan {
  models: SeedModel[];
  mappings: Record<string, string>;
}

/**
 * How seeding's errors name a setting and an element of a list setting with where they came from
 * (`"models" in config file PATH, models[0]`): settingNames of the resolved configuration.
 */
export interface SeedNames {
  setting(key: ConfigKey): string;
  entry(key: ConfigKey, index: number): string;
}

/** The names alone, for a plan built without a resolved configuration (tests). */
const BARE_NAMES: SeedNames = { setting: (key) => key, entry: (key, i) => `${key}[${i}]` };

/** Names of the upstreams a model may name: `default` plus the config file's `upstreams`. */
export function upstreamNames(config: Pick<Config, 'upstreams'>): string[] {
  return ['default', ...Object.keys(config.upstreams).filter((n) => n !== 'default')];
}

/**
 * The seed plan for a configuration: AVAILABLE_MODELS / `availableModels` (else the default list), then
 * the file's `models` entries merged over them by name, and MODEL_MAPPINGS. Throws
 * OaiProxyError('config_invalid') for a model naming an undeclared upstream, an alias that is also a
 * model, or aliases that loop, naming the setting and where it came from by `names`.
 */
export function buildSeedPlan(
  config: Pick<Config, 'availableModels' | 'models' | 'modelMappings' | 'upstreams'>,
  names: SeedNames = BARE_NAMES,
): SeedPlan {
  const known = new Set(upstreamNames(config));
  const byName = new Map<string, SeedModel>();
  const add = (entry: string | ModelEntry, source: 'default' | 'config', where: string) => {
    const e: ModelEntry = typeof entry === 'string' ? { name: entry } : entry;
    const name = asConfig(() => checkModelName(e.name, `${where} name`));
    // What the admin API and `models add` refuse, refused here too (PostgreSQL cannot store a NUL).
    asConfig(() => {
      checkModelText(e.displayName, `${where} (model "${name}") displayName`);
      checkModelText(e.description, `${where} (model "${name}") description`);
      if (e.deployment != null) checkModelName(e.deployment, `${where} (model "${name}") deployment`);
    });
    if (e.upstream !== undefined && !known.has(e.upstream)) {
      throw new OaiProxyError(
        'config_invalid',
        `${where} (model "${name}") names upstream "${e.upstream}", which the config file's "upstreams" does not declare (declared: ${[...known].join(', ')})`,
      );
    }
    const prev = byName.get(name);
    byName.set(name, {
      name,
      displayName: e.displayName ?? prev?.displayName ?? null,
      description: e.description ?? prev?.description ?? null,
      upstream:
        e.upstream === undefined ? (prev?.upstream ?? null) : e.upstream === 'default' ? null : e.upstream,
      deployment: e.deployment ?? prev?.deployment ?? null,
      source,
    });
  };
  if (config.availableModels) {
    for (const [i, m] of config.availableModels.entries())
      add(m, 'config', names.entry('availableModels', i));
  } else {
    for (const m of DEFAULT_MODELS) add(m, 'default', 'default model list');
  }
  for (const [i, m] of (config.models ?? []).entries()) add(m, 'config', names.entry('models', i));

  const models = [...byName.values()];
  const registry = new ModelRegistry(
    models.map((m) => ({ ...m, created: 0 })),
    [],
  );
  const mappings: Record<string, string> = {};
  let partial = registry;
  const mappingsName = names.setting('modelMappings');
  for (const [alias, actual] of Object.entries(config.modelMappings)) {
    asConfig(() => checkModelName(alias, `${mappingsName}, alias`));
    asConfig(() => checkModelName(actual, `${mappingsName}, model for "${alias}"`));
    try {
      partial.checkMapping(alias, actual);
    } catch (err) {
      throw new OaiProxyError('config_invalid', `Invalid ${mappingsName}: ${(err as Error).message}`);
    }
    mappings[alias] = actual;
    partial = new ModelRegistry(
      partial.models.values(),
      Object.entries(mappings).map(([a, t]) => ({
        alias: a,
        actual: t,
        source: 'config' as const,
        created: 0,
      })),
    );
  }
  return { models, mappings };
}

function asConfig<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw new OaiProxyError('config_invalid', `Invalid configuration: ${(err as Error).message}`);
  }
}
