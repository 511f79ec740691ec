import type { Kysely } from 'kysely';
import type { DatabaseSchema } from '../storage/tables.js';
import { ModelStore, type NewModel, type RegistryDatabase, type SeedResult } from './model-store.js';
import { PgModelStore, REGISTRY_CHANNEL } from './pg-model-store.js';
import type { ModelInfo, ModelRegistry } from './registry.js';
import type { SeedPlan } from './seed.js';

/** The registry's persistence, whichever database holds it (SQLite: `ModelStore`; PostgreSQL: `PgModelStore`). */
export interface RegistryStore {
  load(): Promise<ModelRegistry>;
  isSeeded(): Promise<boolean>;
  seed(plan: SeedPlan): Promise<SeedResult>;
  /** Throws OaiProxyError('conflict', 409) when the name is taken. */
  addModel(m: NewModel, source: 'cli' | 'admin'): Promise<ModelInfo>;
  removeModel(name: string): Promise<boolean>;
  /** Throws OaiProxyError('conflict', 400) for a loop or a clash with a model name. */
  setMapping(alias: string, actual: string, source: 'cli' | 'admin'): Promise<'created' | 'replaced'>;
  removeMapping(alias: string): Promise<boolean>;
  /**
   * Call `onChange` soon after any process changed the registry (SQLite: `data_version` polled every
   * `intervalMs`; PostgreSQL: LISTEN/NOTIFY, with polling every `intervalMs` as the fallback). Returns stop.
   * `onPoll` (PostgreSQL) hears each poll's outcome: null when it read the database, else the error.
   */
  watch(onChange: () => void, intervalMs: number, onPoll?: (err: Error | null) => void): () => void;
}

/** Subscribe to a PostgreSQL NOTIFY channel; `onState(true)` once listening, `onState(false)` when the connection is lost. */
export type NotifySubscriber = (
  channel: string,
  onNotify: () => void,
  onState: (listening: boolean) => void,
) => () => void;

/** Runs one synchronous store call; `serve` passes one that waits for a locked file on timers. */
export type SqliteAttempt = <T>(call: () => T) => Promise<T>;

/**
 * The registry store on an SQLite handle, or on whichever handle a getter returns now (`serve` reopens a
 * database file that was deleted or replaced while it ran). Each call runs through `attempt` (default:
 * at once, waiting out a lock in SQLite's busy timeout, which is fine in a CLI process).
 */
export function createSqliteRegistryStore(
  sqlite: RegistryDatabase | (() => RegistryDatabase),
  attempt: SqliteAttempt = async (call) => call(),
): RegistryStore {
  const handle = typeof sqlite === 'function' ? sqlite : () => sqlite;
  let current: { db: RegistryDatabase; store: ModelStore } | null = null;
  const at = () => {
    const db = handle();
    if (current?.db !== db) current = { db, store: new ModelStore(db) };
    return current.store;
  };
  return {
    load: () => attempt(() => at().load()),
    isSeeded: () => attempt(() => at().isSeeded()),
    seed: (plan) => attempt(() => at().seed(plan)),
    addModel: (m, source) => attempt(() => at().addModel(m, source)),
    removeModel: (name) => attempt(() => at().removeModel(name)),
    setMapping: (alias, actual, source) => attempt(() => at().setMapping(alias, actual, source)),
    removeMapping: (alias) => attempt(() => at().removeMapping(alias)),
    watch(onChange, intervalMs) {
      // Another handle (a reopened file) has its own data_version: the change is noticed too.
      let version = safe(() => at().dataVersion(), -1);
      const timer = setInterval(() => {
        const v = safe(() => at().dataVersion(), version);
        if (v !== version) {
          version = v;
          onChange();
        }
      }, intervalMs);
      timer.unref();
      return () => clearInterval(timer);
    },
  };
}

/** The registry store on PostgreSQL; `subscribe` (LISTEN) is optional, polling always runs as the fallback. */
export function createPgRegistryStore(
  db: Kysely<DatabaseSchema>,
  subscribe?: NotifySubscriber,
): RegistryStore {
  const store = new PgModelStore(db);
  return {
    load: () => store.load(),
    isSeeded: () => store.isSeeded(),
    seed: (plan) => store.seed(plan),
    addModel: (m, source) => store.addModel(m, source),
    removeModel: (name) => store.removeModel(name),
    setMapping: (alias, actual, source) => store.setMapping(alias, actual, source),
    removeMapping: (alias) => store.removeMapping(alias),
    watch(onChange, intervalMs, onPoll) {
      let version: string | null = null;
      let polling = false;
      const poll = async () => {
        if (polling) return;
        polling = true;
        try {
          const v = await store.version();
          if (version !== null && v !== version) onChange();
          version = v;
          onPoll?.(null);
        } catch (err) {
          // The database is failing: keep routing with what we have, and say so (the caller's /health).
          onPoll?.(err as Error);
        } finally {
          polling = false;
        }
      };
      void poll();
      const timer = setInterval(poll, intervalMs);
      timer.unref();
      const unsubscribe = subscribe?.(
        REGISTRY_CHANNEL,
        onChange,
        // (Re)connected: changes may have been missed while the listener was down.
        (listening) => listening && void poll(),
      );
      return () => {
        clearInterval(timer);
        unsubscribe?.();
      };
    },
  };
}

function safe<T>(fn: () => T, fallback: T): T {
  try {
    return fn();
  } catch {
    return fallback;
  }
}
