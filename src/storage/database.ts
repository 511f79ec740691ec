import { accessSync, closeSync, constants, existsSync, mkdirSync, openSync, rmSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { Kysely, type MigrationProvider, Migrator, SqliteDialect } from 'kysely';
import { type ErrorCode, OaiProxyError } from '../errors.js';
import { withoutBusyWait } from './busy-wait.js';
import { checkMigrationsKnown, migrations } from './migrations/index.js';
import { isDirectory, pathProblem } from './path-problem.js';
import type { DatabaseSchema } from './tables.js';

export type SqliteHandle = BetterSqlite3.Database;

/** An open SQLite database: the raw handle (for prepared hot-path statements) and Kysely (for queries). */
export interface OpenDatabase {
  path: string;
  sqlite: SqliteHandle;
  db: Kysely<DatabaseSchema>;
  readonly: boolean;
  /** True when the file at `path` is no longer the one this handle writes (deleted or replaced). */
  moved(): boolean;
  /**
   * Once every handle on a deleted or replaced file is closed: remove the -wal and -shm files it used if
   * they are still at the path (SQLite leaves them when the database file was unlinked). A new file opened
   * beside them would share them, and SQLite would read the old file's pages from that WAL and checkpoint
   * them into the new file. Files at those paths that are not the ones this handle used are left alone.
   */
  removeLeftovers(): void;
  close(): Promise<void>;
}

export interface OpenDatabaseOptions {
  /** Open for reading only: never creates the file, never migrates. */
  readonly?: boolean;
  /**
   * Refuse (config_invalid, exit 2) a file this process cannot write, naming it: `serve` would start and
   * record nothing (SQLite opens such a file read-only without a word, and fails each write). A path where
   * no file can be created (under a regular file, a directory) is refused the same way.
   */
  requireWritable?: boolean;
}

/**
 * Open (and for writers create + migrate) the SQLite database at `path`: WAL, synchronous=NORMAL,
 * busy_timeout. Files are created with mode 0600 (they hold prompts).
 */
export async function openDatabase(path: string, options: OpenDatabaseOptions = {}): Promise<OpenDatabase> {
  const readonly = options.readonly ?? false;
  const memory = path === ':memory:';
  if (readonly && !memory) checkReadable(path);
  if (!readonly && !memory) ensureFile(path, options.requireWritable ? 'config_invalid' : 'database_error');
  if (!readonly && !memory && options.requireWritable) checkWritable(path);

  let sqlite: SqliteHandle;
  try {
    sqlite = new BetterSqlite3(path, { readonly, fileMustExist: readonly });
    sqlite.pragma('busy_timeout = 5000');
  } catch (err) {
    throw databaseError(path, err);
  }
  try {
    if (!readonly) {
      // Switching a new file from the rollback journal takes the write lock from inside a read, where
      // SQLite does not wait (busy_timeout) but answers SQLITE_BUSY at once, as waiting could deadlock:
      // a second `serve` starting on the same new file while the first switches or migrates it failed
      // its start with "database is locked". Retried on a timer instead, for up to 5 s.
      const handle = sqlite;
      await withoutBusyWait(
        () => handle,
        () => handle.pragma('journal_mode = WAL'),
      );
      sqlite.pragma('synchronous = NORMAL');
    }
    // Fails fast on a file that is not a database.
    sqlite.prepare('select count(*) from sqlite_master').get();
  } catch (err) {
    sqlite.close();
    throw databaseError(path, err);
  }
  const db = new Kysely<DatabaseSchema>({ dialect: new SqliteDialect({ database: sqlite }) });
  const identity = memory ? null : fileIdentity(path);
  // The WAL and its index exist from the first read in WAL mode, and keep their inode while open.
  const companions =
    memory || readonly ? [] : [`${path}-wal`, `${path}-shm`].map((f) => ({ f, id: fileIdentity(f) }));
  const handle: OpenDatabase = {
    path,
    sqlite,
    db,
    readonly,
    moved: () => identity !== null && fileIdentity(path) !== identity,
    removeLeftovers() {
      for (const { f, id } of companions)
        if (id !== null && fileIdentity(f) === id) rmSync(f, { force: true });
    },
    async close() {
      await db.destroy();
      // Kysely closes the handle only if it ever ran a query; the raw handle may have done all the work.
      if (sqlite.open) sqlite.close();
    },
  };
  try {
    await checkMigrationsKnown(db, path);
  } catch (err) {
    await handle.close();
    throw err;
  }
  if (!readonly) {
    await migrate(db, path);
  } else {
    const has = sqlite
      .prepare("select 1 from sqlite_master where type = 'table' and name = 'exchanges'")
      .get();
    if (!has) {
      sqlite.close();
      throw new OaiProxyError(
        'database_not_found',
        `Database ${path} has no oai-proxy tables; point --db / DATABASE_URL at the file \`oai-proxy serve\` writes`,
      );
    }
  }
  return handle;
}

/** Run every pending migration; safe to call on an up-to-date database and from several processes. */
export async function migrate(db: Kysely<any>, path: string): Promise<void> {
  const provider: MigrationProvider = { getMigrations: async () => migrations };
  const migrator = new Migrator({ db, provider });
  let { error, results } = await migrator.migrateToLatest();
  // Kysely takes no cross-process lock on SQLite: two processes starting on a fresh file race, and the
  // loser finds a migration already recorded or its table already there. By then the winner is done.
  for (let attempt = 1; error && attempt <= 5 && isMigrationRace(error); attempt++) {
    await new Promise((r) => setTimeout(r, 50 * attempt));
    ({ error, results } = await migrator.migrateToLatest());
  }
  if (error) {
    const failed = results?.find((r) => r.status === 'Error')?.migrationName;
    throw new OaiProxyError(
      'database_error',
      `Migrating database ${path} failed${failed ? ` at ${failed}` : ''}: ${(error as Error).message ?? String(error)}`,
      { cause: error },
    );
  }
}

function isMigrationRace(error: unknown): boolean {
  const msg = (error as Error)?.message ?? '';
  return /UNIQUE constraint failed: kysely_migration|already exists|database is locked/i.test(msg);
}

function fileIdentity(path: string): string | null {
  try {
    const st = statSync(path);
    return `${st.dev}:${st.ino}`;
  } catch {
    return null;
  }
}

/**
 * `code`: config_invalid (exit 2) for serve, which must write the path it was given, when the path is
 * what is wrong; a full disk, a quota or an I/O error is a runtime failure (database_error, exit 1).
 */
function ensureFile(path: string, code: ErrorCode): void {
  checkNotDirectory(path, code);
  try {
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    if (!existsSync(path)) closeSync(openSync(path, 'a', 0o600));
  } catch (err) {
    throw new OaiProxyError(
      isPathError(err) ? code : 'database_error',
      `Cannot create database ${path}: ${pathProblem(path, err)}; choose another location with --db or DATABASE_URL`,
      { cause: err },
    );
  }
}

/** Errors another path fixes (the user's setting); anything else (ENOSPC, EDQUOT, EIO, unknown) is not. */
const PATH_ERRORS: ReadonlySet<string> = new Set([
  'EACCES',
  'EPERM',
  'EROFS',
  'ENOTDIR',
  'EISDIR',
  'EEXIST',
  'ENOENT',
  'ENAMETOOLONG',
  'ELOOP',
]);

function isPathError(err: unknown): boolean {
  return PATH_ERRORS.has((err as NodeJS.ErrnoException)?.code ?? '');
}

function checkNotDirectory(path: string, code: ErrorCode = 'database_error'): void {
  if (isDirectory(path)) {
    throw new OaiProxyError(
      code,
      `Database ${path} is a directory, not a database file; point --db / DATABASE_URL at a file (e.g. ${join(path, 'oai-proxy.db')})`,
    );
  }
}

/**
 * Throw when this process cannot write `path`, or the -wal and -shm SQLite keeps beside it (or, while
 * they do not exist, the directory it creates them in). access() answers as the kernel would for a write:
 * file modes (root passes), an immutable file, a read-only mount.
 */
function checkWritable(path: string): void {
  const companions = [`${path}-wal`, `${path}-shm`];
  const needed = [path, ...companions.filter((f) => existsSync(f))];
  if (needed.length < 3) needed.push(dirname(path));
  for (const f of needed) {
    try {
      accessSync(f, constants.W_OK);
    } catch (err) {
      const what = f === path ? '' : f === dirname(path) ? ` (its directory ${f})` : ` (${f})`;
      const code = (err as NodeJS.ErrnoException).code;
      const problem =
        code === 'EROFS' ? 'the file system is read-only (EROFS)' : `permission denied (${code})`;
      throw new OaiProxyError(
        'config_invalid',
        `Cannot write the database ${path}${what}: ${problem}; make it writable for this user, or choose another location with --db or DATABASE_URL`,
        { cause: err },
      );
    }
  }
}

function checkReadable(path: string): void {
  checkNotDirectory(path);
  if (!existsSync(path)) {
    throw new OaiProxyError(
      'database_not_found',
      `No database at ${path}; start \`oai-proxy serve\` first, or point --db / DATABASE_URL at an existing file`,
    );
  }
  if (statSync(path).size === 0) {
    throw new OaiProxyError(
      'database_not_found',
      `Database ${path} is empty; start \`oai-proxy serve\` to create it, or point --db / DATABASE_URL at the right file`,
    );
  }
}

function databaseError(path: string, err: unknown): OaiProxyError {
  const code = (err as { code?: string }).code ?? '';
  const msg = (err as Error).message ?? String(err);
  if (code === 'SQLITE_NOTADB' || /not a database/i.test(msg)) {
    return new OaiProxyError(
      'database_error',
      `${path} is not an SQLite database (or is corrupt); move it aside and let \`oai-proxy serve\` create a new one`,
      { cause: err },
    );
  }
  return new OaiProxyError('database_error', `Cannot open database ${path}: ${msg}`, { cause: err });
}
