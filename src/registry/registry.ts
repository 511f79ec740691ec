import { OaiProxyError } from '../errors.js';
import type { RegistrySource } from '../storage/tables.js';

export type { RegistrySource };

/** One registered model. `upstream` null = the default upstream; `deployment` null = the model name. */
export interface ModelInfo {
  name: string;
  displayName: string | null;
  description: string | null;
  upstream: string | null;
  deployment: string | null;
  source: RegistrySource;
  /** Epoch milliseconds. */
  created: number;
}

/** One alias: requests naming `alias` are sent as `actual` (which may itself be an alias). */
export interface MappingInfo {
  alias: string;
  actual: string;
  source: RegistrySource;
  created: number;
}

/** What a requested model name resolves to. */
export interface Resolution {
  requested: string;
  /** The name sent upstream: the end of the alias chain. */
  actual: string;
  /** The registered model at the end of the chain, if any. */
  model: ModelInfo | null;
  /** True when `requested` is an alias. */
  alias: boolean;
}

/** The registry as `GET /admin/models` and `oai-proxy models list --json` show it. */
export interface RegistryView {
  models: {
    name: string;
    display_name: string | null;
    description: string | null;
    upstream: string | null;
    deployment: string | null;
    source: RegistrySource;
    /** Unix seconds. */
    created: number;
  }[];
  mappings: Record<string, string>;
  upstreams: string[];
}

/** Longest alias chain followed; registries written through this module never come close. */
const MAX_CHAIN = 64;

/** An immutable snapshot of the registry with alias resolution and the write-time checks. */
export class ModelRegistry {
  readonly models: ReadonlyMap<string, ModelInfo>;
  readonly mappings: ReadonlyMap<string, MappingInfo>;

  constructor(models: Iterable<ModelInfo>, mappings: Iterable<MappingInfo>) {
    this.models = new Map([...models].sort((a, b) => cmp(a.name, b.name)).map((m) => [m.name, m]));
    this.mappings = new Map([...mappings].sort((a, b) => cmp(a.alias, b.alias)).map((m) => [m.alias, m]));
  }

  /** Follow aliases to the model actually sent upstream. A registered name is never treated as an alias. */
  resolve(requested: string): Resolution {
    let actual = requested;
    const seen = new Set<string>();
    while (!this.models.has(actual) && this.mappings.has(actual) && !seen.has(actual)) {
      if (seen.size >= MAX_CHAIN) break;
      seen.add(actual);
      actual = this.mappings.get(actual)!.actual;
    }
    return {
      requested,
      actual,
      model: this.models.get(actual) ?? null,
      alias: actual !== requested || (this.mappings.has(requested) && !this.models.has(requested)),
    };
  }

  /** True when `name` is a registered model or an alias. */
  isKnown(name: string): boolean {
    return this.models.has(name) || this.mappings.has(name);
  }

  /** Aliases whose chain ends at `name`. */
  aliasesOf(name: string): string[] {
    return [...this.mappings.keys()].filter((a) => a !== name && this.resolve(a).actual === name);
  }

  /**
   * Throws OaiProxyError('conflict') when `alias → actual` may not be written: the alias is a registered
   * model name, or the mapping would close a loop.
   */
  checkMapping(alias: string, actual: string): void {
    if (this.models.has(alias)) {
      throw new OaiProxyError(
        'conflict',
        `"${alias}" is a registered model, so it cannot also be an alias; remove the model first or pick another alias`,
        { status: 400 },
      );
    }
    const chain = [alias];
    let cur: string | undefined = actual;
    while (cur !== undefined && chain.length <= MAX_CHAIN) {
      chain.push(cur);
      if (cur === alias) {
        throw new OaiProxyError(
          'conflict',
          `Mapping ${alias} → ${actual} would create a loop (${chain.join(' → ')})`,
          { status: 400 },
        );
      }
      if (this.models.has(cur)) return;
      cur = this.mappings.get(cur)?.actual;
    }
  }

  /** The registry in the `GET /admin/models` shape. */
  view(upstreams: string[]): RegistryView {
    return {
      models: [...this.models.values()].map((m) => ({
        name: m.name,
        display_name: m.displayName,
        description: m.description,
        upstream: m.upstream,
        deployment: m.deployment,
        source: m.source,
        created: Math.floor(m.created / 1000),
      })),
      mappings: Object.fromEntries([...this.mappings.values()].map((m) => [m.alias, m.actual])),
      upstreams,
    };
  }
}

/** Check a model or alias name; returns it, or throws OaiProxyError('usage') naming `field`. */
export function checkModelName(value: unknown, field: string): string {
  if (typeof value !== 'string' || value === '') {
    throw new OaiProxyError('usage', `${field} must be a non-empty string`, { status: 400 });
  }
  if (value.length > 256) {
    throw new OaiProxyError('usage', `${field} is longer than 256 characters`, { status: 400 });
  }
  if (/[\s\u0000-\u001f\u007f]/.test(value)) {
    throw new OaiProxyError('usage', `${field} "${value}" must not contain spaces or control characters`, {
      status: 400,
    });
  }
  return value;
}

/**
 * Check a free-text registry field (display name, description): any text but NUL, which PostgreSQL text
 * cannot hold (both stores refuse it alike). Throws OaiProxyError('usage', 400) naming `field`.
 */
export function checkModelText(value: string | null | undefined, field: string): void {
  if (value?.includes('\u0000')) {
    throw new OaiProxyError('usage', `${field} must not contain a NUL character (\\u0000)`, { status: 400 });
  }
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
