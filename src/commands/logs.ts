import { once } from 'node:events';
import { createWriteStream, openSync } from 'node:fs';
import { resolve as resolvePath } from 'node:path';
import { type Command, Option } from 'commander';
import type { CommandRunner } from '../cli.js';
import {
  type ResolvedConfig,
  requireFlagValue,
  resolveConfig,
  settingSource,
  withoutConfiguredSecrets,
} from '../config/load.js';
import { isSameFile, resolveDatabaseLocation, resolveLogFilePath, sqliteFiles } from '../config/paths.js';
import { unusedSettings } from '../config/schema.js';
import { OaiProxyError } from '../errors.js';
import { isSqliteBusy, lockedDatabaseError } from '../storage/busy-wait.js';
import { openDatabase } from '../storage/database.js';
import {
  countExchanges,
  createExchangeFollower,
  type ExchangeFollower,
  exchangeStats,
  type FollowPosition,
  findExchanges,
  iterateExchanges,
  type LogFilter,
  listExchanges,
  pruneExchanges,
  type StatsKey,
  sqliteOf,
  streamExchanges,
} from '../storage/log-queries.js';
import { isConnectionLoss, openPostgres, postgresError, redactMessage } from '../storage/postgres.js';
import { searchIndexLag } from '../storage/search-index.js';
import { postgresStorage, type Storage, sqliteStorage } from '../storage/storage.js';
import { type CliIo, waitForStop } from './io.js';
import {
  CSV_COLUMNS,
  formatExchangeDetailJson,
  formatExchangeLine,
  renderExchangeDetail,
  renderExchangeTable,
  renderStatsTable,
  SHORT_ID_LENGTH,
  toCsvLine,
  toExchangeDetailJson,
  toExchangeJson,
} from './logs-format.js';
import {
  type LogFilterFlags,
  parseChoice,
  parseCount,
  parseDuration,
  parseTimeBound,
  resolveLogFilter,
} from './logs-options.js';
import { terminalSafe, useColor } from './terminal-text.js';

/** `--db` / `--config`, on every logs subcommand. */
export interface DatabaseFlags {
  db?: string;
  config?: string;
}

export interface LogsListOptions extends LogFilterFlags, DatabaseFlags {
  limit?: string;
  order?: string;
  json?: boolean;
  jsonl?: boolean;
  follow?: boolean;
  interval?: string;
}

export interface LogsShowOptions extends DatabaseFlags {
  json?: boolean;
  raw?: boolean;
}

export interface LogsStatsOptions extends LogFilterFlags, DatabaseFlags {
  by?: string;
  json?: boolean;
}

export interface LogsExportOptions extends LogFilterFlags, DatabaseFlags {
  format?: string;
  out?: string;
  order?: string;
}

export interface LogsPruneOptions extends DatabaseFlags {
  olderThan?: string;
  dryRun?: boolean;
  vacuum?: boolean;
  json?: boolean;
}

/** Hooks other features plug into `logs` (e.g. vector search deleting points of pruned exchanges). */
export interface LogsExtensions {
  /** Called with each batch of pruned exchange ids after it was deleted; a rejection fails the prune. */
  onPruned?: (ids: string[], context: { resolved: ResolvedConfig; io: CliIo }) => void | Promise<void>;
}

/**
 * Resolve `--db` / `--config` / DATABASE_URL the way `serve` does and open the database. `command`: the
 * one whose settings are checked (default `oai-proxy logs`; see SETTINGS_READ_BY).
 */
export async function openLogsDatabase(
  flags: DatabaseFlags,
  io: CliIo,
  options: { readonly: boolean; command?: 'oai-proxy logs' | 'oai-proxy logs prune' },
): Promise<{ handle: Storage; resolved: ResolvedConfig }> {
  const resolved = resolveConfig({
    configPath: flags.config,
    flags: { db: flags.db },
    env: io.env,
    cwd: io.cwd,
    unused: unusedSettings(options.command ?? 'oai-proxy logs'),
  });
  for (const w of resolved.warnings) io.stderr.write(`warning: ${w}\n`);
  try {
    return { handle: await openResolved(resolved, io, options), resolved };
  } catch (err) {
    // A key pasted into DATABASE_URL is quoted by the errors below: never printed.
    throw withoutConfiguredSecrets(err, resolved);
  }
}

async function openResolved(
  resolved: ResolvedConfig,
  io: CliIo,
  options: { readonly: boolean },
): Promise<Storage> {
  const location = resolveDatabaseLocation(
    resolved.config.databaseUrl,
    resolved.env,
    io.cwd,
    settingSource(resolved, 'databaseUrl'),
  );
  if (location.kind === 'postgres') {
    // Never migrated from here: a reader (and prune) only checks that `serve` created the tables. The
    // pool itself can write, which is all prune needs.
    const database = await openPostgres(location.url, { readonly: true, setting: location.setting });
    return postgresStorage({ ...database, readonly: options.readonly });
  }
  if (location.path === ':memory:')
    throw new OaiProxyError(
      'usage',
      '--db :memory: holds nothing to read; point --db at the file `oai-proxy serve` writes',
    );
  // Even a writer (prune) must not create a database: check it as a reader first.
  const reader = await openDatabase(location.path, { readonly: true });
  if (options.readonly) return sqliteStorage(reader);
  await reader.close();
  return sqliteStorage(await openDatabase(location.path));
}

async function withDatabase<T>(
  flags: DatabaseFlags,
  io: CliIo,
  options: Parameters<typeof openLogsDatabase>[2],
  fn: (handle: Storage, resolved: ResolvedConfig) => Promise<T>,
): Promise<T> {
  const { handle, resolved } = await openLogsDatabase(flags, io, options);
  try {
    return await fn(handle, resolved);
  } catch (err) {
    throw asDatabaseError(err, handle);
  } finally {
    await handle.close();
  }
}

function asDatabaseError(err: unknown, handle: Storage): unknown {
  if (err instanceof OaiProxyError) return err;
  const e = err as { code?: string; message?: string };
  // A PostgreSQL error has a SQLSTATE (or a socket code): say which database, password hidden.
  if (handle.kind === 'postgres' && typeof e.code === 'string')
    return postgresError(handle.label, err, handle.postgres?.setting);
  // Only prune writes; it deletes in transactions of 2,000 rows, and what one committed stays deleted.
  if (isSqliteBusy(err))
    return lockedDatabaseError(
      handle.label,
      handle.readonly
        ? 'nothing was changed'
        : 'exchanges deleted before that stay deleted, the rest are kept',
      err,
    );
  if (typeof e.code === 'string' && e.code.startsWith('SQLITE_'))
    return new OaiProxyError(
      'database_error',
      /CORRUPT|NOTADB/.test(e.code)
        ? `${handle.label} is corrupt (${e.message}); move it aside and let \`oai-proxy serve\` create a new one`
        : `Reading ${handle.label} failed: ${e.message}`,
      { cause: err },
    );
  return err;
}

function outputFormat(opts: { json?: boolean; jsonl?: boolean }): 'table' | 'json' | 'jsonl' {
  if (opts.json && opts.jsonl) throw new OaiProxyError('usage', '--json and --jsonl are exclusive; pick one');
  return opts.json ? 'json' : opts.jsonl ? 'jsonl' : 'table';
}

/** `oai-proxy logs`: list recorded exchanges (or follow them with --follow). */
export async function runLogsList(opts: LogsListOptions, io: CliIo): Promise<number> {
  if (opts.follow) return runLogsFollow(opts, io);
  const format = outputFormat(opts);
  const filter = resolveLogFilter(opts, Date.now());
  const limit = parseCount(opts.limit, '--limit', 50, { zero: 'all' });
  const order = parseChoice(opts.order, '--order', ['asc', 'desc'] as const, 'desc');
  return withDatabase(opts, io, { readonly: true }, async (handle) => {
    if (format === 'table') {
      const rows = (await listExchanges(handle, filter, { limit, order })).map(toExchangeJson);
      warnSearchLag(handle, filter, io);
      if (rows.length === 0) io.stderr.write('No exchanges match.\n');
      else io.stdout.write(renderExchangeTable(rows, { color: useColor(io.env, io.stdout) }));
      return 0;
    }
    // Written as read: `--limit 0` may be millions of rows (the array as JSON.stringify lays it out).
    warnSearchLag(handle, filter, io);
    const write = stdoutWriter(io);
    let n = 0;
    for await (const row of iterateExchanges(handle, filter, { limit, order })) {
      const json = JSON.stringify(toExchangeJson(row), null, format === 'json' ? 2 : undefined);
      await write(
        format === 'json' ? `${n === 0 ? '[\n' : ',\n'}  ${json.replace(/\n/g, '\n  ')}` : `${json}\n`,
      );
      n++;
    }
    if (format === 'json') await write(n === 0 ? '[]\n' : '\n]\n');
    return 0;
  });
}

/** Write to standard output, waiting for it to drain when it is behind (a slow pipe). */
function stdoutWriter(io: CliIo): (s: string) => Promise<void> {
  const stdout = io.stdout as CliIo['stdout'] & { once?: (e: string, f: () => void) => void };
  return async (s) => {
    if (stdout.write(s) === false && stdout.once) await new Promise<void>((r) => stdout.once!('drain', r));
  };
}

/** SQLite indexes bodies after they are written; PostgreSQL's search index is always current. */
function warnSearchLag(handle: Storage, filter: LogFilter, io: CliIo): void {
  if (filter.grep === undefined || handle.kind !== 'sqlite') return;
  const lag = searchIndexLag(sqliteOf(handle));
  if (lag.maxRowid > lag.indexedRowid)
    io.stderr.write(
      `note: the newest exchanges (after row ${lag.indexedRowid} of ${lag.maxRowid}) are not in the search index yet; \`oai-proxy serve\` indexes them in the background (unless SEARCH_INDEX=false)\n`,
    );
}

/** `oai-proxy logs --follow` / `logs tail`: print new exchanges as they are recorded, until stopped. */
export async function runLogsFollow(opts: LogsListOptions, io: CliIo): Promise<number> {
  if (opts.order !== undefined)
    throw new OaiProxyError(
      'usage',
      '--order does not apply when following: new exchanges print as they are recorded (the backlog oldest first)',
    );
  const format = outputFormat(opts);
  const filter = resolveLogFilter(opts, Date.now());
  const backlog = parseCount(opts.limit, '--limit', 10, { zero: 'no backlog' });
  const intervalMs = Math.max(20, parseCount(opts.interval, '--interval', 250, { max: 3_600_000 }));
  const print = (rows: ReturnType<typeof toExchangeJson>[]) => {
    for (const r of rows)
      io.stdout.write(format === 'table' ? formatExchangeLine(r) : `${JSON.stringify(r)}\n`);
  };
  // Not withDatabase: the handle changes when the SQLite file is replaced.
  let { handle } = await openLogsDatabase(opts, io, { readonly: true });
  try {
    let stopped = false;
    let wake: () => void = () => {};
    const stop = waitForStop(io).then(() => {
      stopped = true;
      wake();
    });
    let follower = await createExchangeFollower(handle, filter);
    if (backlog > 0) {
      const recent = await listExchanges(handle, filter, { limit: backlog, order: 'desc' });
      print(recent.filter(follower.isBacklog).reverse().map(toExchangeJson));
    }
    const pause = (ms: number) =>
      new Promise<void>((resolve) => {
        const t = setTimeout(resolve, ms);
        wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
    // A dropped connection (a PostgreSQL restart or failover) is waited out, not fatal: following is for
    // leaving running. Anything else still ends the command.
    let lostSince: number | null = null;
    let retryMs = intervalMs;
    let waitingForFile = false;
    while (!stopped) {
      // `serve` recreates a deleted or replaced file: print what the old one got last, then follow the new.
      if (handle.moved()) {
        // The old file is still open, unless reading it fails now: then there is nothing more to get from it.
        const last = () => follower.next().catch(() => []);
        for (let rows = await last(); rows.length > 0; rows = await last()) print(rows.map(toExchangeJson));
        const path = handle.label;
        const switched = await followReplacement(path, filter, follower.position());
        if (switched === null) {
          if (!waitingForFile)
            io.stderr.write(
              `oai-proxy: the database file ${path} was deleted or replaced; waiting for a new one there (Ctrl-C to stop)\n`,
            );
          waitingForFile = true;
          await pause(intervalMs);
          continue;
        }
        const next = switched.handle;
        follower = switched.follower;
        await handle.close();
        handle = next;
        waitingForFile = false;
        io.stderr.write(`oai-proxy: the database file ${path} was replaced; following the new one\n`);
      }
      let rows: Awaited<ReturnType<typeof follower.next>>;
      try {
        rows = await follower.next();
      } catch (err) {
        if (!isConnectionLoss(err)) throw err;
        if (lostSince === null) {
          lostSince = Date.now();
          io.stderr.write(
            `oai-proxy: lost the connection to ${handle.label} (${redactMessage((err as Error).message)}); retrying until it is back (Ctrl-C to stop)\n`,
          );
        }
        retryMs = Math.min(retryMs * 2, 5000);
        await pause(retryMs);
        continue;
      }
      if (lostSince !== null) {
        io.stderr.write(
          `oai-proxy: reconnected to ${handle.label} after ${Math.round((Date.now() - lostSince) / 1000)} s\n`,
        );
        lostSince = null;
        retryMs = intervalMs;
      }
      if (rows.length > 0) {
        print(rows.map(toExchangeJson));
        continue;
      }
      await pause(intervalMs);
    }
    await stop;
    return 0;
  } catch (err) {
    throw asDatabaseError(err, handle);
  } finally {
    await handle.close();
  }
}

/**
 * Open the SQLite file that replaced the followed one and start following it where `resume` left off,
 * or null while it is not ready: missing, or one `serve` is still creating. Its migrations run one by one
 * without a transaction, so a file with the exchanges table can still lack the search index's tables.
 */
async function followReplacement(
  path: string,
  filter: LogFilter,
  resume: FollowPosition,
): Promise<{ handle: Storage; follower: ExchangeFollower } | null> {
  const replacement = await openDatabase(path, { readonly: true }).catch(() => null);
  if (replacement === null) return null;
  const handle = sqliteStorage(replacement);
  try {
    return { handle, follower: await createExchangeFollower(handle, filter, { resume }) };
  } catch {
    await handle.close();
    return null;
  }
}

/** `oai-proxy logs show ID`: one exchange in full. */
export async function runLogsShow(id: string, opts: LogsShowOptions, io: CliIo): Promise<number> {
  return withDatabase(opts, io, { readonly: true }, async (handle) => {
    const found = await findExchanges(handle, id, 10);
    if (found.length === 0)
      throw new OaiProxyError(
        'not_found',
        `No exchange with id or prefix "${id}" in ${handle.label}; list ids with \`oai-proxy logs\``,
      );
    if (found.length > 1) {
      io.stderr.write(
        `oai-proxy: "${id}" matches several exchanges${found.length >= 10 ? ' (first 10 shown)' : ''}; give more characters:\n`,
      );
      for (const r of found) {
        const j = toExchangeJson(r);
        io.stderr.write(
          terminalSafe(`  ${j.id}  ${j.time}  ${j.method} ${j.path}  ${j.status ?? '-'}`) + '\n',
        );
      }
      return 1;
    }
    const detail = toExchangeDetailJson(found[0]);
    io.stdout.write(
      opts.json
        ? `${formatExchangeDetailJson(detail, 'pretty')}\n`
        : renderExchangeDetail(detail, opts.raw === true),
    );
    return 0;
  });
}

/** `oai-proxy logs stats`: requests, errors, tokens and latency percentiles per group. */
export async function runLogsStats(opts: LogsStatsOptions, io: CliIo): Promise<number> {
  const filter = resolveLogFilter(opts, Date.now());
  const by = parseChoice(
    opts.by,
    '--by',
    ['model', 'path', 'status', 'day', 'user'] as const,
    'model',
  ) as StatsKey;
  return withDatabase(opts, io, { readonly: true }, async (handle) => {
    warnSearchLag(handle, filter, io);
    const groups = await exchangeStats(handle, filter, by);
    if (opts.json) io.stdout.write(`${JSON.stringify(groups, null, 2)}\n`);
    else if (groups.length === 0) io.stderr.write('No exchanges match.\n');
    else io.stdout.write(renderStatsTable(groups, by, useColor(io.env, io.stdout)));
    return 0;
  });
}

/** `oai-proxy logs export`: every matching exchange as JSON lines or CSV, streamed. */
export async function runLogsExport(opts: LogsExportOptions, io: CliIo): Promise<number> {
  const filter = resolveLogFilter(opts, Date.now());
  const format = parseChoice(opts.format, '--format', ['jsonl', 'csv'] as const, 'jsonl');
  if (opts.out !== undefined) requireFlagValue(opts.out, '--out', 'a file to write', '--out week.jsonl');
  const order = parseChoice(opts.order, '--order', ['asc', 'desc'] as const, 'asc');
  return withDatabase(opts, io, { readonly: true }, async (handle, resolved) => {
    if (opts.out) refuseOwnFiles(opts.out, resolved, io.cwd);
    warnSearchLag(handle, filter, io);
    const total = opts.out && io.stderr.isTTY ? await countExchanges(handle, filter) : 0;
    const out = opts.out ? openOutFile(opts.out) : null;
    const write = out ? (s: string) => out.write(s) : stdoutWriter(io);
    let n = 0;
    let drawn = -1;
    let step = -1;
    const columns = (io.stderr as { columns?: number }).columns || 80;
    const draw = () => {
      drawn = n;
      io.stderr.write(`\r${exportProgressLine(n, total, columns)}`);
    };
    // Redrawn each percent, and past the count (rows serve recorded since) as often.
    const progress = () => {
      const at = Math.floor((n * 100) / total);
      if (at === step) return;
      step = at;
      draw();
    };
    if (format === 'csv') await write(`${CSV_COLUMNS.join(',')}\r\n`);
    for await (const row of streamExchanges(handle, filter, order)) {
      await write(
        format === 'csv'
          ? toCsvLine(row)
          : `${formatExchangeDetailJson(toExchangeDetailJson(row), 'line')}\n`,
      );
      n++;
      if (total > 0) progress();
    }
    if (out) {
      await out.close();
      if (total > 0 && drawn !== n) draw();
      if (total > 0) io.stderr.write('\n');
      io.stderr.write(`exported ${n} exchanges to ${opts.out}\n`);
    }
    return 0;
  });
}

/**
 * The `logs export --out` progress line: `n` exchanges written of the `total` counted before, at most
 * `columns - 1` wide (a full-width line wraps on some terminals). Exchanges recorded after the count grow
 * the total to `n`, shown `n/n+`: never past 100%.
 */
export function exportProgressLine(n: number, total: number, columns = 80): string {
  const grown = n > total;
  const pct = grown || total <= 0 ? 100 : Math.floor((n / total) * 100);
  const tail = ` ${pct}% ${n}/${grown ? `${n}+` : total}`;
  const room = Math.max(0, columns - 1);
  const width = Math.min(25, room - 'exporting []'.length - tail.length);
  if (width < 5) return `exporting${tail}`.slice(0, room);
  const bar = '#'.repeat(Math.floor((pct * width) / 100)).padEnd(width, '.');
  return `exporting [${bar}]${tail}`;
}

/**
 * Refuses an `--out` that is the database being read (or its -wal, -shm or -journal file) or the log file
 * `serve` writes: opening it for writing would truncate it. The same file by device and inode when both
 * exist, else the same resolved path.
 */
function refuseOwnFiles(out: string, resolved: ResolvedConfig, cwd: string): void {
  const location = resolveDatabaseLocation(resolved.config.databaseUrl, resolved.env, cwd);
  const owned = location.kind === 'sqlite' ? sqliteFiles(location.path) : [];
  const logPath = resolveLogFilePath(resolved.config.logFilePath, location, resolved.env, cwd);
  owned.push({ path: logPath, what: 'the log file `oai-proxy serve` writes' });
  for (let n = 1; n <= resolved.config.logMaxFiles; n++)
    owned.push({ path: `${logPath}.${n}`, what: 'a rotated log file' });
  const target = resolvePath(cwd, out);
  for (const { path, what } of owned) {
    if (isSameFile(target, path))
      throw new OaiProxyError(
        'usage',
        `--out ${out} is ${what} (${path}): writing the export there would destroy it; choose another file`,
      );
  }
}

/**
 * The `logs export --out` file, created 0600 (it holds prompts; an existing file keeps its mode). Opened at
 * once so a bad path fails before any row is read; any write error (disk full, EPIPE on a FIFO) rejects the
 * next write or `close()` with one message naming --out.
 */
function openOutFile(path: string): { write(s: string): Promise<void>; close(): Promise<void> } {
  const failed = (err: NodeJS.ErrnoException) =>
    new OaiProxyError('internal', `Cannot write --out ${path}: ${err.code ?? err.message}`, { cause: err });
  let fd: number;
  try {
    fd = openSync(path, 'w', 0o600);
  } catch (err) {
    throw failed(err as NodeJS.ErrnoException);
  }
  const stream = createWriteStream(path, { fd });
  let error: OaiProxyError | undefined;
  const errored = new Promise<never>((_, reject) =>
    stream.once('error', (err: NodeJS.ErrnoException) => {
      error = failed(err);
      reject(error);
    }),
  );
  errored.catch(() => undefined);
  return {
    async write(s) {
      if (error) throw error;
      if (!stream.write(s))
        await Promise.race([once(stream, 'drain'), errored]).catch((err) => {
          throw error ?? failed(err);
        });
    },
    async close() {
      if (error) throw error;
      // end()'s callback also runs (with the error) when the last writes fail: it must not mean success.
      await Promise.race([
        new Promise<void>((resolve, reject) =>
          stream.end((err?: Error | null) => (err ? reject(err) : resolve())),
        ),
        errored,
      ]).catch((err) => {
        throw error ?? failed(err);
      });
    },
  };
}

/** `oai-proxy logs prune`: delete exchanges older than a duration. */
export async function runLogsPrune(
  opts: LogsPruneOptions,
  io: CliIo,
  ext: LogsExtensions = {},
): Promise<number> {
  if (opts.olderThan === undefined)
    throw new OaiProxyError('usage', 'logs prune needs --older-than, e.g. --older-than 30d');
  const now = Date.now();
  const before = parseTimeBound(opts.olderThan, '--older-than', now);
  if (parseDuration(opts.olderThan) === 0)
    throw new OaiProxyError(
      'usage',
      '--older-than 0 would delete everything; give a positive duration such as 30d',
    );
  if (before > now)
    throw new OaiProxyError(
      'usage',
      `--older-than "${opts.olderThan}" is in the future: it would delete every exchange, those being recorded now too; give an age such as 30d or a past date`,
    );
  const open = { readonly: opts.dryRun === true, command: 'oai-proxy logs prune' } as const;
  return withDatabase(opts, io, open, async (handle, resolved) => {
    const result = await pruneExchanges(handle, {
      before,
      dryRun: opts.dryRun,
      vacuum: opts.vacuum,
      onPruned: ext.onPruned ? (ids) => ext.onPruned!(ids, { resolved, io }) : undefined,
    });
    if (opts.json) io.stdout.write(`${JSON.stringify(result)}\n`);
    else {
      const when = new Date(before).toISOString();
      io.stdout.write(
        result.dry_run
          ? `would delete ${result.deleted} exchanges started before ${when} (dry run: nothing changed)\n`
          : `deleted ${result.deleted} exchanges started before ${when}; ${formatBytes(result.bytes_freed)} freed${pruneNote(handle.kind, opts.vacuum === true)}\n`,
      );
    }
    return 0;
  });
}

function pruneNote(kind: Storage['kind'], vacuum: boolean): string {
  if (kind === 'postgres')
    return vacuum
      ? ' (table compacted: VACUUM FULL)'
      : ' (the space is reused once autovacuum has run; add --vacuum to give it back now)';
  return vacuum ? ' (file compacted)' : ' inside the file (add --vacuum to shrink it)';
}

function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 ** 3) return `${(n / 1024 ** 2).toFixed(1)} MiB`;
  return `${(n / 1024 ** 3).toFixed(2)} GiB`;
}

/**
 * A subcommand's options merged over those of `logs`: the program does not use positional options, so a flag
 * both define (--db, --json, the filters) after the subcommand name is parsed by `logs`.
 */
function subOptions(cmd: Command): Record<string, any> {
  return { ...cmd.parent?.opts(), ...definedOnly(cmd.opts()) };
}

function definedOnly(o: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined));
}

function addDatabaseOptions(cmd: Command): Command {
  return cmd
    .option(
      '--db <path>',
      'SQLite database path or postgres:// URL (DATABASE_URL; default: where serve records)',
    )
    .option('-c, --config <path>', 'config file (OAI_PROXY_CONFIG)');
}

function addFilterOptions(cmd: Command): Command {
  return cmd
    .option('-m, --model <name>', 'requested or actual model')
    .option('--since <when>', 'from this time: a duration ago (30s, 15m, 1h, 7d) or ISO-8601')
    .option('--until <when>', 'before this time: a duration ago or ISO-8601')
    .option(
      '--status <status>',
      '200, 4xx, 5xx or error (no complete upstream answer); comma-separated or repeated for several',
      (value: string, previous?: string) => (previous === undefined ? value : `${previous},${value}`),
    )
    .option('--path <prefix>', 'request path starting with this, e.g. /v1/chat')
    .option('--user <id>', 'the request body\'s "user" field')
    .option('--stream', 'streamed exchanges only')
    .option('--no-stream', 'non-streamed exchanges only')
    .option(
      '-g, --grep <text>',
      'full-text search in request and response bodies (a phrase; end with * for a prefix)',
    )
    .option('--internal', 'include requests the proxy made itself (hidden by default)')
    .option(
      '--unknown-models',
      'only requests for models not in the registry (let through by ALLOW_UNKNOWN_MODELS)',
    );
}

function addListOutputOptions(cmd: Command): Command {
  return cmd
    .option(
      '-n, --limit <n>',
      'at most this many rows, 0 for all (default 50); when following, the backlog printed first: default 10, 0 for none',
    )
    .option('--order <asc|desc>', 'by start time (default desc: newest first)')
    .option('--json', 'one JSON array (fields: see README "Logs"); with --follow, one object per line')
    .option('--jsonl', 'one JSON object per line')
    .addOption(new Option('--interval <ms>', 'poll interval when following').hideHelp());
}

/** What `logs tail` takes (a follow never ends, so no array and no order: rows print as recorded). */
function addFollowOutputOptions(cmd: Command): Command {
  return cmd
    .option('-n, --limit <n>', 'first print the last N matching exchanges (default 10; 0 for none)')
    .option('--json', 'one JSON object per line (same as --jsonl)')
    .option('--jsonl', 'one JSON object per line')
    .addOption(new Option('--interval <ms>', 'poll interval').hideHelp());
}

/**
 * Register `oai-proxy logs` and its subcommands (show, tail, stats, export, prune). Returns the `logs`
 * command so other features can add subcommands to it.
 */
export function registerLogsCommand(
  program: Command,
  io: CliIo,
  run: CommandRunner,
  ext: LogsExtensions = {},
): Command {
  const logs = program
    .command('logs')
    .description('List, inspect, follow, summarise, export and prune recorded exchanges');
  addFilterOptions(logs);
  addListOutputOptions(logs);
  logs.option('-f, --follow', 'keep printing new exchanges as they are recorded (Ctrl-C to stop)');
  addDatabaseOptions(logs);
  logs
    .addHelpText(
      'after',
      `
Reads the database \`oai-proxy serve\` writes (read-only; safe while it runs).

Examples:
  $ oai-proxy logs                                   latest 50 exchanges
  $ oai-proxy logs --model gpt-4o --since 1h --status 5xx
  $ oai-proxy logs --grep "rate limit" --since 7d --json
  $ oai-proxy logs --follow --jsonl | jq .status
  $ oai-proxy logs show 01hx2k3m4n5p          one exchange (id or unique prefix)
  $ oai-proxy logs stats --since 7d --by day
  $ oai-proxy logs export --format csv --out last-week.csv --since 7d
  $ oai-proxy logs prune --older-than 30d --dry-run`,
    )
    .action((opts) => run(() => runLogsList(opts, io)));

  addDatabaseOptions(
    logs
      .command('show')
      .description('Show one exchange: headers (redacted), pretty bodies, reassembled stream')
      .argument(
        '<id>',
        `exchange id or a unique prefix (the ${SHORT_ID_LENGTH}-character id in listings works)`,
      )
      .option('--json', 'the whole record as JSON (list fields plus headers, bodies, assembled)')
      .option('--raw', 'for streams, also print the raw server-sent events'),
  )
    .addHelpText(
      'after',
      `
Examples:
  $ oai-proxy logs show 01hx2k3m4n5p
  $ oai-proxy logs show 01hx2k3m4n5p --raw
  $ oai-proxy logs show 01hx2k3m4n5p --json | jq .response_body`,
    )
    .action((id, _opts, cmd: Command) => run(() => runLogsShow(id, subOptions(cmd), io)));

  const tail = logs
    .command('tail')
    .description('Follow new exchanges as they are recorded (same as logs --follow)');
  addDatabaseOptions(addFollowOutputOptions(addFilterOptions(tail)))
    .addHelpText(
      'after',
      `
Examples:
  $ oai-proxy logs tail
  $ oai-proxy logs tail --status 5xx --jsonl >> errors.jsonl`,
    )
    .action((_opts, cmd: Command) => run(() => runLogsFollow(subOptions(cmd), io)));

  const stats = logs
    .command('stats')
    .description('Requests, error rate, tokens and latency percentiles, grouped')
    .option('--by <key>', 'model, path, status, day (UTC) or user (default model)')
    .option('--json', 'a JSON array of groups');
  addDatabaseOptions(addFilterOptions(stats))
    .addHelpText(
      'after',
      `
Latencies are nearest-rank percentiles of duration_ms; ttfb percentiles cover streamed exchanges only.
An error is an HTTP status >= 400 or no complete upstream answer.

Examples:
  $ oai-proxy logs stats --since 7d
  $ oai-proxy logs stats --since 30d --by day --json`,
    )
    .action((_opts, cmd: Command) => run(() => runLogsStats(subOptions(cmd), io)));

  const exp = logs
    .command('export')
    .description('Write matching exchanges (with bodies) as JSON lines or CSV; streamed, any size')
    .option('--format <format>', 'jsonl or csv (default jsonl)')
    .option('-o, --out <file>', 'write to this file instead of stdout (progress bar on a terminal)')
    .option('--order <asc|desc>', 'by start time (default asc: oldest first)');
  addDatabaseOptions(addFilterOptions(exp))
    .addHelpText(
      'after',
      `
Examples:
  $ oai-proxy logs export --since 7d > week.jsonl
  $ oai-proxy logs export --format csv --out errors.csv --status 5xx,error`,
    )
    .action((_opts, cmd: Command) => run(() => runLogsExport(subOptions(cmd), io)));

  addDatabaseOptions(
    logs
      .command('prune')
      .description('Delete exchanges older than a duration (and their search index entries)')
      .option(
        '--older-than <age>',
        'delete exchanges that started before this long ago (30d, 12h) or an ISO-8601 time',
      )
      .option('--dry-run', 'only count what would be deleted')
      .option('--vacuum', 'compact the file afterwards to give the space back (rewrites the database)')
      .option('--json', 'print {deleted, dry_run, bytes_freed}'),
  )
    .addHelpText(
      'after',
      `
Safe while \`oai-proxy serve\` runs: rows go in small batches. --vacuum rewrites the whole file; the
server queues new rows meanwhile.

Examples:
  $ oai-proxy logs prune --older-than 30d --dry-run
  $ oai-proxy logs prune --older-than 90d --vacuum`,
    )
    .action((_opts, cmd: Command) => run(() => runLogsPrune(subOptions(cmd), io, ext)));

  return logs;
}
