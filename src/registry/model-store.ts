import { OaiProxyError } from '../errors.js';
import type { ModelMappingsTable, ModelsTable } from '../storage/tables.js';
import {
  checkModelName,
  checkModelText,
  type MappingInfo,
  type ModelInfo,
  ModelRegistry,
  type RegistrySource,
} from './registry.js';
import type { SeedPlan } from './seed.js';

/** The subset of better-sqlite3 the store needs (like kysely's `SqliteDatabase`). */
export interface RegistryDatabase {
  prepare(sql: string): {
    run(...params: unknown[]): { changes: number };
    get(...params: unknown[]): unknown;
    all(...params: unknown[]): unknown[];
  };
  transaction(fn: () => any): { immediate(): any };
  pragma(source: string, options: { simple: true }): unknown;
}

/** The registry tables' rows as stored (see `ModelStore.rows`). */
export interface RegistryRows {
  models: Record<string, unknown>[];
  model_mappings: Record<string, unknown>[];
}

/** Fields of a model a user adds. */
export interface NewModel {
  name: string;
  displayName?: string | null;
  description?: string | null;
  upstream?: string | null;
  deployment?: string | null;
}

/**
 * Check a model to register, the same on every store (SQLite and PostgreSQL refuse alike): a valid name
 * and deployment, no NUL in any text. Throws OaiProxyError('usage', 400) naming the admin API's field;
 * the admin API and `models add` check each field first, to name it their way.
 */
export function checkNewModel(m: NewModel): void {
  checkModelName(m.name, 'name');
  checkModelText(m.displayName, 'display_name');
  checkModelText(m.description, 'description');
  if (m.deployment != null) checkModelName(m.deployment, 'deployment');
}

/** What one seeding changed, and what it skipped because a user's entry stands in the way. */
export interface SeedResult {
  added: number;
  updated: number;
  removed: number;
  warnings: string[];
}

const SEEDED = new Set<RegistrySource>(['default', 'config']);

/**
 * The registry's persistence in the exchanges database: the `models` and `model_mappings` tables.
 * Every write runs in an IMMEDIATE transaction, so checks and writes are atomic across processes
 * (`serve`, the admin API and the `models` CLI may share one file).
 */
export class ModelStore {
  constructor(private readonly sqlite: RegistryDatabase) {}

  /** The current registry (tombstones left out). */
  load(): ModelRegistry {
    const models = this.sqlite.prepare('select * from models where removed = 0').all() as ModelsTable[];
    const mappings = this.sqlite
      .prepare('select * from model_mappings where removed = 0')
      .all() as ModelMappingsTable[];
    return new ModelRegistry(models.map(toModel), mappings.map(toMapping));
  }

  /** True once anything was ever written to the registry (seeded or by a user). */
  isSeeded(): boolean {
    return (
      this.sqlite.prepare('select 1 from models union all select 1 from model_mappings limit 1').get() !==
      undefined
    );
  }

  /** Every registry row, tombstones and sources included (to carry the registry to a new file: `adopt`). */
  rows(): RegistryRows {
    return {
      models: this.sqlite.prepare('select * from models').all() as Record<string, unknown>[],
      model_mappings: this.sqlite.prepare('select * from model_mappings').all() as Record<string, unknown>[],
    };
  }

  /**
   * Copy `rows` (another file's `rows()`) into this database, if it has no registry yet: a database file
   * deleted while `serve` ran is recreated empty, and the registry comes over from the old file. A
   * replacement that has a registry of its own keeps it. Returns whether anything was copied.
   */
  adopt(rows: RegistryRows): boolean {
    if (this.isSeeded()) return false;
    const copy = (table: keyof RegistryRows) => {
      const list = rows[table];
      if (list.length === 0) return 0;
      const cols = Object.keys(list[0]);
      const insert = this.sqlite.prepare(
        `insert into ${table} (${cols.map((c) => `"${c}"`).join(', ')}) values (${cols.map(() => '?').join(', ')})`,
      );
      for (const row of list) insert.run(...cols.map((c) => row[c]));
      return list.length;
    };
    return this.sqlite.transaction(() => copy('models') + copy('model_mappings') > 0).immediate();
  }

  /** Changes whenever another connection commits to the database file (SQLite's `PRAGMA data_version`). */
  dataVersion(): number {
    return Number(this.sqlite.pragma('data_version', { simple: true }));
  }

  /**
   * Bring the seeded entries in line with `plan`: add what is missing, update entries seeding owns, drop
   * seeded entries the configuration no longer names. Entries written by the CLI or the admin API, and
   * seeded entries a user removed, are left alone.
   */
  seed(plan: SeedPlan, now = Date.now()): SeedResult {
    return this.sqlite
      .transaction(() => {
        const result: SeedResult = { added: 0, updated: 0, removed: 0, warnings: [] };
        const rows = new Map(
          (this.sqlite.prepare('select * from models').all() as ModelsTable[]).map((r) => [r.name, r]),
        );
        const wanted = new Set(plan.models.map((m) => m.name));
        for (const m of plan.models) {
          const row = rows.get(m.name);
          const clash = this.sqlite
            .prepare(
              "select source from model_mappings where alias = ? and removed = 0 and source in ('cli', 'admin')",
            )
            .get(m.name);
          if (!row && clash) {
            result.warnings.push(aliasInTheWay(m.name));
          } else if (!row) {
            this.sqlite
              .prepare(
                'insert into models (name, display_name, description, upstream, deployment, source, created_at, updated_at, removed) values (?, ?, ?, ?, ?, ?, ?, ?, 0)',
              )
              .run(m.name, m.displayName, m.description, m.upstream, m.deployment, m.source, now, now);
            result.added++;
          } else if (SEEDED.has(row.source) && row.removed === 0 && differs(row, m)) {
            this.sqlite
              .prepare(
                'update models set display_name = ?, description = ?, upstream = ?, deployment = ?, source = ?, updated_at = ? where name = ?',
              )
              .run(m.displayName, m.description, m.upstream, m.deployment, m.source, now, m.name);
            result.updated++;
          }
        }
        for (const row of rows.values()) {
          if (SEEDED.has(row.source) && !wanted.has(row.name)) {
            this.sqlite.prepare('delete from models where name = ?').run(row.name);
            if (row.removed === 0) result.removed++;
          }
        }

        const maps = new Map(
          (this.sqlite.prepare('select * from model_mappings').all() as ModelMappingsTable[]).map((r) => [
            r.alias,
            r,
          ]),
        );
        for (const row of maps.values()) {
          if (SEEDED.has(row.source) && !(row.alias in plan.mappings)) {
            this.sqlite.prepare('delete from model_mappings where alias = ?').run(row.alias);
            if (row.removed === 0) result.removed++;
          }
        }
        const mappings = planSeedMappings(this.load(), maps, plan.mappings);
        result.warnings.push(...mappings.warnings);
        for (const alias of mappings.drop) {
          this.sqlite.prepare('delete from model_mappings where alias = ?').run(alias);
          result.removed++;
        }
        for (const { alias, actual, update } of mappings.write) {
          if (update) {
            this.sqlite
              .prepare('update model_mappings set actual_model = ?, updated_at = ? where alias = ?')
              .run(actual, now, alias);
            result.updated++;
          } else {
            this.sqlite
              .prepare(
                "insert into model_mappings (alias, actual_model, source, created_at, updated_at, removed) values (?, ?, 'config', ?, ?, 0)",
              )
              .run(alias, actual, now, now);
            result.added++;
          }
        }
        return result;
      })
      .immediate();
  }

  /** Register a model. Throws OaiProxyError('conflict', 409) when the name is taken by a model or an alias. */
  addModel(m: NewModel, source: 'cli' | 'admin', now = Date.now()): ModelInfo {
    checkNewModel(m);
    return this.sqlite
      .transaction(() => {
        const current = this.load();
        if (current.models.has(m.name)) {
          throw new OaiProxyError('conflict', `Model "${m.name}" already exists`, { status: 409 });
        }
        if (current.mappings.has(m.name)) {
          throw new OaiProxyError(
            'conflict',
            `"${m.name}" is already an alias of "${current.mappings.get(m.name)!.actual}"; remove the alias first`,
            { status: 409 },
          );
        }
        const values = [
          m.displayName ?? null,
          m.description ?? null,
          m.upstream ?? null,
          m.deployment ?? null,
          source,
          now,
          now,
          m.name,
        ];
        const updated = this.sqlite
          .prepare(
            'update models set display_name = ?, description = ?, upstream = ?, deployment = ?, source = ?, created_at = ?, updated_at = ?, removed = 0 where name = ?',
          )
          .run(...values);
        if (updated.changes === 0) {
          this.sqlite
            .prepare(
              'insert into models (display_name, description, upstream, deployment, source, created_at, updated_at, name, removed) values (?, ?, ?, ?, ?, ?, ?, ?, 0)',
            )
            .run(...values);
        }
        return toModel(this.sqlite.prepare('select * from models where name = ?').get(m.name) as ModelsTable);
      })
      .immediate();
  }

  /** Remove a model; false when there is none. Seeded models stay removed across restarts. */
  removeModel(name: string, now = Date.now()): boolean {
    return this.sqlite
      .transaction(() => {
        const row = this.sqlite.prepare('select * from models where name = ? and removed = 0').get(name) as
          | ModelsTable
          | undefined;
        if (!row) return false;
        if (SEEDED.has(row.source))
          this.sqlite.prepare('update models set removed = 1, updated_at = ? where name = ?').run(now, name);
        else this.sqlite.prepare('delete from models where name = ?').run(name);
        return true;
      })
      .immediate();
  }

  /**
   * Map `alias` to `actual`; returns whether it replaced an existing alias. Throws
   * OaiProxyError('conflict', 400) for a loop or an alias that is a registered model.
   */
  setMapping(
    alias: string,
    actual: string,
    source: 'cli' | 'admin',
    now = Date.now(),
  ): 'created' | 'replaced' {
    return this.sqlite
      .transaction(() => {
        const current = this.load();
        current.checkMapping(alias, actual);
        const replaced = current.mappings.has(alias);
        const changed = this.sqlite
          .prepare(
            'update model_mappings set actual_model = ?, source = ?, updated_at = ?, removed = 0, created_at = case when removed = 1 then ? else created_at end where alias = ?',
          )
          .run(actual, source, now, now, alias);
        if (changed.changes === 0) {
          this.sqlite
            .prepare(
              'insert into model_mappings (alias, actual_model, source, created_at, updated_at, removed) values (?, ?, ?, ?, ?, 0)',
            )
            .run(alias, actual, source, now, now);
        }
        return replaced ? 'replaced' : 'created';
      })
      .immediate();
  }

  /** Remove an alias; false when there is none. */
  removeMapping(alias: string, now = Date.now()): boolean {
    return this.sqlite
      .transaction(() => {
        const row = this.sqlite
          .prepare('select * from model_mappings where alias = ? and removed = 0')
          .get(alias) as ModelMappingsTable | undefined;
        if (!row) return false;
        if (SEEDED.has(row.source))
          this.sqlite
            .prepare('update model_mappings set removed = 1, updated_at = ? where alias = ?')
            .run(now, alias);
        else this.sqlite.prepare('delete from model_mappings where alias = ?').run(alias);
        return true;
      })
      .immediate();
  }
}

/** Seeding's warning for a configured model a user has made an alias: not added, and how to clear the way. */
export function aliasInTheWay(name: string): string {
  return `Model "${name}" from the configuration was not added: a user made "${name}" an alias; remove it (\`oai-proxy models unmap ${name}\` or DELETE /admin/model-mappings/${name}) and reload the configuration or restart`;
}

/** What seeding does to the aliases (see `planSeedMappings`). */
export interface SeedMappingsPlan {
  /** Configured aliases to write: `update` an existing seeded row, else insert one. */
  write: { alias: string; actual: string; update: boolean }[];
  /** Seeded aliases to delete: their new value was refused and their old one would now close a loop. */
  drop: string[];
  warnings: string[];
}

/**
 * Which configured aliases seeding writes (both stores). `current` is the registry once the models are
 * seeded and the aliases the configuration dropped are gone; `rows` every `model_mappings` row by alias.
 * Each alias is checked against the aliases as they will be, not as they were: a configuration that
 * reverses a chain (`fast → mini → m` becoming `mini → fast → m`) is valid, though each new alias loops
 * through an old one. A user's alias (CLI, admin API) or a removed one is left alone; a configured alias
 * that would loop through a user's is refused with a warning and keeps its old value, unless that too
 * would now loop (then it is dropped).
 */
export function planSeedMappings(
  current: ModelRegistry,
  rows: ReadonlyMap<string, ModelMappingsTable>,
  wanted: Record<string, string>,
): SeedMappingsPlan {
  const out: SeedMappingsPlan = { write: [], drop: [], warnings: [] };
  const todo: { alias: string; actual: string; row: ModelMappingsTable | undefined }[] = [];
  for (const [alias, actual] of Object.entries(wanted)) {
    const row = rows.get(alias);
    if (row && (!SEEDED.has(row.source) || row.removed === 1)) continue;
    if (row && row.actual_model === actual) continue;
    todo.push({ alias, actual, row });
  }
  // The aliases as they stand once the changing ones are out of the way; each accepted one goes back in.
  const mappings = new Map(current.mappings);
  for (const { alias } of todo) mappings.delete(alias);
  const check = (alias: string, actual: string) =>
    new ModelRegistry(current.models.values(), mappings.values()).checkMapping(alias, actual);
  const put = (alias: string, actual: string) =>
    mappings.set(alias, { alias, actual, source: 'config', created: 0 });
  const refused: { alias: string; old: string }[] = [];
  for (const { alias, actual, row } of todo) {
    try {
      check(alias, actual);
    } catch (err) {
      out.warnings.push(`MODEL_MAPPINGS ${alias} → ${actual} was not applied: ${(err as Error).message}`);
      if (row) refused.push({ alias, old: row.actual_model });
      continue;
    }
    put(alias, actual);
    out.write.push({ alias, actual, update: row !== undefined });
  }
  // A refused alias keeps its old value, once every accepted one is in place, if that still holds.
  for (const { alias, old } of refused) {
    try {
      check(alias, old);
      put(alias, old);
    } catch (err) {
      out.warnings.push(
        `MODEL_MAPPINGS ${alias}: its previous target ${old} was removed: ${(err as Error).message}`,
      );
      out.drop.push(alias);
    }
  }
  return out;
}

/** True when a seeded row no longer matches its seed entry (seeding updates only what it owns). */
export function differs(row: ModelsTable, m: SeedPlan['models'][number]): boolean {
  return (
    row.display_name !== m.displayName ||
    row.description !== m.description ||
    row.upstream !== m.upstream ||
    row.deployment !== m.deployment ||
    row.source !== m.source
  );
}

/** A `models` row as the registry sees it (both database engines). */
export function toModel(r: ModelsTable): ModelInfo {
  return {
    name: r.name,
    displayName: r.display_name,
    description: r.description,
    upstream: r.upstream,
    deployment: r.deployment,
    source: r.source,
    created: Number(r.created_at),
  };
}

/** A `model_mappings` row as the registry sees it (both database engines). */
export function toMapping(r: ModelMappingsTable): MappingInfo {
  return { alias: r.alias, actual: r.actual_model, source: r.source, created: Number(r.created_at) };
}
