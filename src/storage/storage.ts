import type { Kysely } from 'kysely';
import type { DatabaseLocation } from '../config/paths.js';
import { type OpenDatabase, openDatabase, type SqliteHandle } from './database.js';
import type { ExchangeSink, RecordingWriterOptions } from './exchange-record.js';
import { createExchangeWriter, type ExchangeWriterHealth } from './log-store.js';
import { createPgExchangeWriter } from './pg-log-store.js';
import { isConnectionLoss, openPostgres, type PostgresDatabase } from './postgres.js';
import type { DatabaseSchema } from './tables.js';

/** The batched recorder, whichever database it writes: `record()` only enqueues. */
export interface RecordingWriter extends ExchangeSink {
  /** Write what is queued now; rows written (SQLite answers synchronously, PostgreSQL with a promise). */
  flush(): number | Promise<number>;
  health(): ExchangeWriterHealth;
  /** Write what is queued and stop. */
  close(): void | Promise<void>;
}

export type { RecordingWriterOptions };

/**
 * The recording database: one interface, two implementations (an SQLite file, a PostgreSQL server).
 * Queries go through `db` (Kysely, either dialect); `sqlite` is there for SQLite-only fast paths.
 */
export interface Storage {
  kind: 'sqlite' | 'postgres';
  /** Where it is, for banners and messages: the file path, or the URL with its password hidden. */
  label: string;
  db: Kysely<DatabaseSchema>;
  readonly: boolean;
  /** The better-sqlite3 handle; null on PostgreSQL. */
  sqlite: SqliteHandle | null;
  /** The PostgreSQL handle (pool, URL); null on SQLite. */
  postgres: PostgresDatabase | null;
  /** True when the SQLite file at the path is no longer the one open (deleted or replaced); PostgreSQL: false. */
  moved(): boolean;
  createWriter(options: RecordingWriterOptions): RecordingWriter;
  close(): Promise<void>;
}

export interface OpenStorageOptions {
  /** Open for reading only: never creates, never migrates. */
  readonly?: boolean;
}

/** Open (for writers: create and migrate) the database `location` names. */
export async function openStorage(
  location: DatabaseLocation,
  options: OpenStorageOptions = {},
): Promise<Storage> {
  if (location.kind === 'postgres')
    return postgresStorage(await openPostgres(location.url, { ...options, setting: location.setting }));
  return sqliteStorage(await openDatabase(location.path, options));
}

/** The Storage view of an open SQLite database. */
export function sqliteStorage(database: OpenDatabase): Storage {
  return {
    kind: 'sqlite',
    label: database.path,
    db: database.db,
    readonly: database.readonly,
    sqlite: database.sqlite,
    postgres: null,
    moved: () => database.moved(),
    createWriter: (options) => createExchangeWriter({ sqlite: database.sqlite, ...options }),
    close: () => database.close(),
  };
}

/** The Storage view of an open PostgreSQL database. */
export function postgresStorage(database: PostgresDatabase): Storage {
  return {
    kind: 'postgres',
    label: database.label,
    db: database.db,
    readonly: database.readonly,
    sqlite: null,
    postgres: database,
    moved: () => false,
    createWriter: (options) => createPgExchangeWriter({ db: database.db, ...options }),
    close: () => database.close(),
  };
}

const SQLITE_UNAVAILABLE = /^SQLITE_(BUSY|LOCKED|READONLY|CANTOPEN|IOERR|FULL)/;

/**
 * True when a write failed because the database cannot take it now (PostgreSQL unreachable or
 * restarting; an SQLite file busy, locked, read-only or out of space), not because of what was written.
 */
export function isDatabaseUnavailable(err: unknown): boolean {
  const e = err as { code?: unknown; message?: unknown } | null;
  if (!e) return false;
  if (typeof e.code === 'string' && SQLITE_UNAVAILABLE.test(e.code)) return true;
  return isConnectionLoss(err);
}
