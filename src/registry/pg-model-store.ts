import { type Kysely, sql, type Transaction } from 'kysely';
import { OaiProxyError } from '../errors.js';
import type { DatabaseSchema, ModelMappingsTable, ModelsTable } from '../storage/tables.js';
import {
  aliasInTheWay,
  checkNewModel,
  differs,
  type NewModel,
  planSeedMappings,
  type SeedResult,
  toMapping,
  toModel,
} from './model-store.js';
import { type ModelInfo, ModelRegistry, type RegistrySource } from './registry.js';
import type { SeedPlan } from './seed.js';

/** The channel every registry write notifies (at commit) so other instances reload within moments. */
export const REGISTRY_CHANNEL = 'oai_proxy_registry';

// Registry writes from every instance and the CLI take this transaction lock, so a check and the write
// that depends on it are atomic across processes (SQLite gets the same from IMMEDIATE transactions).
const REGISTRY_LOCK = 0x6f61_6972; // "oair"

const SEEDED = new Set<RegistrySource>(['default', 'config']);

type Trx = Transaction<DatabaseSchema>;

/**
 * The model registry persisted in PostgreSQL: the same tables, rules and results as `ModelStore` (SQLite),
 * asynchronous. Every write runs in one transaction under an advisory lock and sends a NOTIFY on
 * `oai_proxy_registry`.
 */
export class PgModelStore {
  constructor(private readonly db: Kysely<DatabaseSchema>) {}

  /** The current registry (tombstones left out). */
  async load(): Promise<ModelRegistry> {
    return loadFrom(this.db);
  }

  /** True once anything was ever written to the registry (seeded or by a user). */
  async isSeeded(): Promise<boolean> {
    const m = await this.db.selectFrom('models').select('name').limit(1).execute();
    if (m.length > 0) return true;
    const a = await this.db.selectFrom('model_mappings').select('alias').limit(1).execute();
    return a.length > 0;
  }

  /** A value that changes whenever any row of the registry changes (the polling fallback compares it). */
  async version(): Promise<string> {
    const { rows } = await sql<{ v: string }>`select
      (select coalesce(string_agg(name || ':' || updated_at || ':' || removed, ',' order by name), '') from models)
      || '|' ||
      (select coalesce(string_agg(alias || ':' || updated_at || ':' || removed || ':' || actual_model, ',' order by alias), '') from model_mappings)
      as v`.execute(this.db);
    return rows[0]?.v ?? '';
  }

  /** See `ModelStore.seed`: same rules. */
  async seed(plan: SeedPlan, now = Date.now()): Promise<SeedResult> {
    return this.write(async (trx) => {
      const result: SeedResult = { added: 0, updated: 0, removed: 0, warnings: [] };
      const rows = new Map(
        ((await trx.selectFrom('models').selectAll().execute()) as ModelsTable[]).map((r) => [r.name, r]),
      );
      const wanted = new Set(plan.models.map((m) => m.name));
      for (const m of plan.models) {
        const row = rows.get(m.name);
        const clash = await trx
          .selectFrom('model_mappings')
          .select('source')
          .where('alias', '=', m.name)
          .where('removed', '=', 0)
          .where('source', 'in', ['cli', 'admin'])
          .executeTakeFirst();
        if (!row && clash) {
          result.warnings.push(aliasInTheWay(m.name));
        } else if (!row) {
          await trx
            .insertInto('models')
            .values({
              name: m.name,
              display_name: m.displayName,
              description: m.description,
              upstream: m.upstream,
              deployment: m.deployment,
              source: m.source,
              created_at: now,
              updated_at: now,
              removed: 0,
            })
            .execute();
          result.added++;
        } else if (SEEDED.has(row.source) && row.removed === 0 && differs(row, m)) {
          await trx
            .updateTable('models')
            .set({
              display_name: m.displayName,
              description: m.description,
              upstream: m.upstream,
              deployment: m.deployment,
              source: m.source,
              updated_at: now,
            })
            .where('name', '=', m.name)
            .execute();
          result.updated++;
        }
      }
      for (const row of rows.values()) {
        if (SEEDED.has(row.source) && !wanted.has(row.name)) {
          await trx.deleteFrom('models').where('name', '=', row.name).execute();
          if (row.removed === 0) result.removed++;
        }
      }
      const maps = new Map(
        ((await trx.selectFrom('model_mappings').selectAll().execute()) as ModelMappingsTable[]).map((r) => [
          r.alias,
          r,
        ]),
      );
      for (const row of maps.values()) {
        if (SEEDED.has(row.source) && !(row.alias in plan.mappings)) {
          await trx.deleteFrom('model_mappings').where('alias', '=', row.alias).execute();
          if (row.removed === 0) result.removed++;
        }
      }
      const mappings = planSeedMappings(await loadFrom(trx), maps, plan.mappings);
      result.warnings.push(...mappings.warnings);
      for (const alias of mappings.drop) {
        await trx.deleteFrom('model_mappings').where('alias', '=', alias).execute();
        result.removed++;
      }
      for (const { alias, actual, update } of mappings.write) {
        if (update) {
          await trx
            .updateTable('model_mappings')
            .set({ actual_model: actual, updated_at: now })
            .where('alias', '=', alias)
            .execute();
          result.updated++;
        } else {
          await trx
            .insertInto('model_mappings')
            .values({
              alias,
              actual_model: actual,
              source: 'config',
              created_at: now,
              updated_at: now,
              removed: 0,
            })
            .execute();
          result.added++;
        }
      }
      return result;
    });
  }

  /** Register a model. Throws OaiProxyError('conflict', 409) when the name is taken by a model or an alias. */
  async addModel(m: NewModel, source: 'cli' | 'admin', now = Date.now()): Promise<ModelInfo> {
    checkNewModel(m);
    return this.write(async (trx) => {
      const current = await loadFrom(trx);
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
      const values = {
        display_name: m.displayName ?? null,
        description: m.description ?? null,
        upstream: m.upstream ?? null,
        deployment: m.deployment ?? null,
        source,
        created_at: now,
        updated_at: now,
        removed: 0,
      };
      await trx
        .insertInto('models')
        .values({ name: m.name, ...values })
        .onConflict((oc) => oc.column('name').doUpdateSet(values))
        .execute();
      const row = await trx
        .selectFrom('models')
        .selectAll()
        .where('name', '=', m.name)
        .executeTakeFirstOrThrow();
      return toModel(row as ModelsTable);
    });
  }

  /** Remove a model; false when there is none. Seeded models stay removed across restarts. */
  async removeModel(name: string, now = Date.now()): Promise<boolean> {
    return this.write(async (trx) => {
      const row = (await trx
        .selectFrom('models')
        .selectAll()
        .where('name', '=', name)
        .where('removed', '=', 0)
        .executeTakeFirst()) as ModelsTable | undefined;
      if (!row) return false;
      if (SEEDED.has(row.source))
        await trx
          .updateTable('models')
          .set({ removed: 1, updated_at: now })
          .where('name', '=', name)
          .execute();
      else await trx.deleteFrom('models').where('name', '=', name).execute();
      return true;
    });
  }

  /** Map `alias` to `actual` (see `ModelStore.setMapping`). */
  async setMapping(
    alias: string,
    actual: string,
    source: 'cli' | 'admin',
    now = Date.now(),
  ): Promise<'created' | 'replaced'> {
    return this.write(async (trx) => {
      const current = await loadFrom(trx);
      current.checkMapping(alias, actual);
      const replaced = current.mappings.has(alias);
      const changed = await trx
        .updateTable('model_mappings')
        .set({
          actual_model: actual,
          source,
          updated_at: now,
          created_at: sql`case when removed = 1 then ${now}::bigint else created_at end`,
          removed: 0,
        })
        .where('alias', '=', alias)
        .executeTakeFirst();
      if (Number(changed.numUpdatedRows) === 0) {
        await trx
          .insertInto('model_mappings')
          .values({ alias, actual_model: actual, source, created_at: now, updated_at: now, removed: 0 })
          .execute();
      }
      return replaced ? 'replaced' : 'created';
    });
  }

  /** Remove an alias; false when there is none. */
  async removeMapping(alias: string, now = Date.now()): Promise<boolean> {
    return this.write(async (trx) => {
      const row = (await trx
        .selectFrom('model_mappings')
        .selectAll()
        .where('alias', '=', alias)
        .where('removed', '=', 0)
        .executeTakeFirst()) as ModelMappingsTable | undefined;
      if (!row) return false;
      if (SEEDED.has(row.source))
        await trx
          .updateTable('model_mappings')
          .set({ removed: 1, updated_at: now })
          .where('alias', '=', alias)
          .execute();
      else await trx.deleteFrom('model_mappings').where('alias', '=', alias).execute();
      return true;
    });
  }

  /** One registry write: a transaction under the registry lock, announced to listeners at commit. */
  private write<T>(fn: (trx: Trx) => Promise<T>): Promise<T> {
    return this.db.transaction().execute(async (trx) => {
      await sql`select pg_advisory_xact_lock(${REGISTRY_LOCK})`.execute(trx);
      const out = await fn(trx);
      await sql`select pg_notify(${REGISTRY_CHANNEL}, '')`.execute(trx);
      return out;
    });
  }
}

async function loadFrom(db: Kysely<DatabaseSchema>): Promise<ModelRegistry> {
  const models = (await db
    .selectFrom('models')
    .selectAll()
    .where('removed', '=', 0)
    .execute()) as ModelsTable[];
  const mappings = (await db
    .selectFrom('model_mappings')
    .selectAll()
    .where('removed', '=', 0)
    .execute()) as ModelMappingsTable[];
  return new ModelRegistry(models.map(toModel), mappings.map(toMapping));
}
