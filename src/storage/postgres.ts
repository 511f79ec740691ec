import { Kysely, type MigrationProvider, Migrator, PostgresDialect, sql } from 'kysely';
import type * as Pg from 'pg';
import { redactUrl } from '../config/paths.js';
import { OaiProxyError } from '../errors.js';
import { pg as loadPg } from '../lazy-modules.js';
import { checkMigrationsKnown, migrations } from './migrations/index.js';
import { settlesWithin } from './settles-within.js';
import type { DatabaseSchema } from './tables.js';

/** An open PostgreSQL database: a connection pool and Kysely over it. */
export interface PostgresDatabase {
  kind: 'postgres';
  /** The URL with its password hidden, for banners and messages. */
  label: string;
  /** Where the URL came from (`--db`, `DATABASE_URL`, `"databaseUrl" in config file PATH`), for messages. */
  setting: string;
  url: string;
  pool: Pg.Pool;
  db: Kysely<DatabaseSchema>;
  readonly: boolean;
  close(): Promise<void>;
}

export interface OpenPostgresOptions {
  /** Never migrates; fails when the tables are missing. */
  readonly?: boolean;
  /** Pool size (default 4: one batch writer, registry, `logs` queries). */
  max?: number;
  /** Give up connecting after this long (default 5 s); a failing database must not hang anything. */
  connectTimeoutMs?: number;
  /** Abort a statement after this long (default 30 s). */
  statementTimeoutMs?: number;
  /** Where the URL came from, named by errors (default `DATABASE_URL`; see settingSource). */
  setting?: string;
  /** How many connections the command needs, said when PostgreSQL refuses one (see postgresError). */
  needs?: string;
}

// Migrations run under this session advisory lock, so instances starting at once migrate one at a time
// (Kysely's own lock is taken after it creates its bookkeeping tables, which can race).
const MIGRATION_LOCK = 0x6f61_6970; // "oaip"

/** How long close() lets the pool's connections end by themselves before cutting them. */
const CLOSE_WAIT_MS = 1000;

/** pg returns int8 (bigint: epoch ms, byte counts, count(*)) as strings; every such value here fits a double. */
const types = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') =>
    oid === 20 ? (v: string) => Number(v) : loadPg().types.getTypeParser(oid, format as 'text')) as any,
};

/** Create the pool behind a PostgreSQL database (no connection is made yet). */
export function createPool(url: string, options: OpenPostgresOptions = {}): Pg.Pool {
  const pool = new (loadPg().Pool)({
    connectionString: url,
    max: options.max ?? 4,
    connectionTimeoutMillis: options.connectTimeoutMs ?? 5000,
    statement_timeout: options.statementTimeoutMs ?? 30_000,
    query_timeout: (options.statementTimeoutMs ?? 30_000) + 5000,
    idleTimeoutMillis: 10_000,
    application_name: 'oai-proxy',
    types,
  });
  // An idle client losing its connection (server restart) emits on the pool; without a listener that
  // would crash the process. The next query gets a fresh connection.
  pool.on('error', () => undefined);
  // A client lent out (Kysely holds one for each query and transaction) has no listener of the pool's:
  // its connection cut mid-query emitted 'error' to nobody, an uncaught exception. The query itself is
  // rejected all the same, and the pool drops the broken client when it comes back.
  pool.on('connect', (client) => client.on('error', () => undefined));
  return pool;
}

/** Open (and for writers migrate) the PostgreSQL database at `url`. */
export async function openPostgres(
  url: string,
  options: OpenPostgresOptions = {},
): Promise<PostgresDatabase> {
  const label = redactUrl(url);
  const setting = options.setting ?? 'DATABASE_URL';
  const pool = createPool(url, options);
  // Every connection until its socket closes (a pool forgets one as it ends it): see close().
  const connections = new Set<Pg.Client>();
  pool.on('connect', (client) => {
    connections.add(client);
    client.once('end', () => connections.delete(client));
  });
  const db = new Kysely<DatabaseSchema>({ dialect: new PostgresDialect({ pool }) });
  const handle: PostgresDatabase = {
    kind: 'postgres',
    label,
    setting,
    url,
    pool,
    db,
    readonly: options.readonly ?? false,
    async close() {
      // A server that stopped answering (a network cut, no reset) would hold a query until pg's query
      // timeout (35 s) and a closing connection for ever (its goodbye is never answered), and the
      // process with them: after a moment they are cut.
      const ended = db.destroy();
      if (await settlesWithin(ended, CLOSE_WAIT_MS)) return ended;
      for (const c of connections) cutConnection(c);
      await ended;
    },
  };
  try {
    await checkMigrationsKnown(db, label);
    if (handle.readonly) {
      const { rows } = await pool.query("select to_regclass('exchanges') is not null as has");
      if (!rows[0].has) {
        throw new OaiProxyError(
          'database_not_found',
          `Database ${label} has no oai-proxy tables; start \`oai-proxy serve\` with this database first, or point ${setting} at the one it writes`,
        );
      }
    } else {
      await migratePostgres(db, label);
    }
  } catch (err) {
    await db.destroy().catch(() => undefined);
    throw postgresError(label, err, setting, options.needs);
  }
  return handle;
}

/** Run every pending migration under a session advisory lock (safe for several instances at once). */
export async function migratePostgres(db: Kysely<any>, label: string): Promise<void> {
  await db.connection().execute(async (conn) => {
    await sql`select pg_advisory_lock(${MIGRATION_LOCK})`.execute(conn);
    try {
      const provider: MigrationProvider = { getMigrations: async () => migrations };
      const { error, results } = await new Migrator({ db: conn, provider }).migrateToLatest();
      if (error) {
        const failed = results?.find((r) => r.status === 'Error')?.migrationName;
        throw new OaiProxyError(
          'database_error',
          `Migrating database ${label} failed${failed ? ` at ${failed}` : ''}: ${(error as Error).message ?? String(error)}`,
          { cause: error },
        );
      }
    } finally {
      await sql`select pg_advisory_unlock(${MIGRATION_LOCK})`.execute(conn);
    }
  });
}

/**
 * A connection or server error as the user should read it: which database, what to check, and in which
 * setting (`--db`, `DATABASE_URL`, `"databaseUrl" in config file PATH`). `needs` (how many connections the
 * command opens) is said when the server refuses one for its connection limit.
 */
export function postgresError(
  label: string,
  err: unknown,
  setting = 'DATABASE_URL',
  needs?: string,
): OaiProxyError {
  if (err instanceof OaiProxyError) return err;
  const e = err as { code?: string; message?: string };
  const msg = redactMessage(e.message ?? String(err));
  if (e.code === 'ECONNREFUSED' || e.code === 'ENOTFOUND' || e.code === 'ETIMEDOUT' || /timeout/i.test(msg)) {
    return new OaiProxyError(
      'database_error',
      `Cannot connect to PostgreSQL at ${label}: ${msg}; check that the server runs and ${setting} names its host and port`,
      { cause: err },
    );
  }
  if (e.code === '28P01' || e.code === '28000') {
    return new OaiProxyError(
      'database_error',
      `PostgreSQL at ${label} refused the login: ${msg}; check the user and password in ${setting}`,
      { cause: err },
    );
  }
  if (e.code === '53300') {
    // too_many_connections: the role's or database's CONNECTION LIMIT, or the server's max_connections.
    return new OaiProxyError(
      'database_error',
      `PostgreSQL at ${label} refused a connection: ${msg}; ${needs ? `${needs}; ` : ''}close other sessions, raise the limit (ALTER ROLE … CONNECTION LIMIT, or the server's max_connections), or name another user in ${setting}`,
      { cause: err },
    );
  }
  if (e.code === '3D000') {
    return new OaiProxyError(
      'database_error',
      `PostgreSQL at ${label}: ${msg}; create it (createdb) or name an existing database in ${setting}`,
      { cause: err },
    );
  }
  return new OaiProxyError('database_error', `PostgreSQL at ${label}: ${msg}`, { cause: err });
}

const CONNECTION_LOSS_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  // A network cut or a failover also fails routes and name resolution for a while.
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  '57P01', // admin_shutdown: the server is restarting, or the backend was terminated
  '57P02', // crash_shutdown
  '57P03', // cannot_connect_now: still starting up
  '08000',
  '08001',
  '08003',
  '08006',
]);

/** True when `err` says the server went away (a restart, a failover, a network cut), not that a query failed. */
export function isConnectionLoss(err: unknown): boolean {
  const e = err as { code?: string; message?: string } | null;
  if (!e) return false;
  if (e.code && CONNECTION_LOSS_CODES.has(e.code)) return true;
  // "Query read timeout": pg's query_timeout ran out with no answer at all (a server cut off without a reset).
  return /connection terminated|connection ended|server closed the connection|query read timeout|timeout exceeded when trying to connect/i.test(
    e.message ?? '',
  );
}

/** Error text from pg may quote the connection string; never let a password through. */
export function redactMessage(msg: string): string {
  return msg.replace(/postgres(ql)?:\/\/[^\s'"]+/gi, (u) => redactUrl(u));
}

/**
 * LISTEN on `channel` over a dedicated connection (a pooled one could be handed to a query mid-wait).
 * Reconnects with backoff after the server restarts; `onState(true)` each time it is listening again,
 * `onState(false)` when the connection is lost. Returns stop.
 */
export function subscribeNotify(
  url: string,
  channel: string,
  onNotify: () => void,
  onState: (listening: boolean) => void,
): () => void {
  let client: Pg.Client | null = null;
  let stopped = false;
  let retryMs = 250;
  const schedule = () => {
    if (stopped) return;
    const t = setTimeout(connect, retryMs);
    t.unref();
    retryMs = Math.min(retryMs * 2, 5000);
  };
  const connect = async () => {
    if (stopped) return;
    const c = new (loadPg().Client)({
      connectionString: url,
      connectionTimeoutMillis: 5000,
      application_name: 'oai-proxy listen',
      keepAlive: true,
    });
    c.on('error', () => undefined);
    c.on('notification', (n) => {
      if (n.channel === channel) onNotify();
    });
    c.on('end', () => {
      if (client !== c) return;
      client = null;
      onState(false);
      schedule();
    });
    try {
      await c.connect();
      await c.query(`listen ${c.escapeIdentifier(channel)}`);
    } catch {
      c.end().catch(() => undefined);
      schedule();
      return;
    }
    if (stopped) {
      c.end().catch(() => undefined);
      return;
    }
    client = c;
    retryMs = 250;
    onState(true);
  };
  void connect();
  return () => {
    stopped = true;
    const c = client;
    client = null;
    if (!c) return;
    c.end().catch(() => undefined);
    // Its goodbye unanswered (a network cut), the connection would keep the process alive.
    setTimeout(() => cutConnection(c), CLOSE_WAIT_MS).unref();
  };
}

/** Close a connection's socket now: its query in flight, if any, fails at once. */
function cutConnection(client: Pg.Client): void {
  (client as unknown as { connection?: { stream?: { destroy(): void } } }).connection?.stream?.destroy();
}
