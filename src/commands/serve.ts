import { closeSync, existsSync, fstatSync, openSync } from 'node:fs';
import { type AddressInfo, createServer as createNetServer, type Server as NetServer } from 'node:net';
import { basename, dirname } from 'node:path';
import { Writable } from 'node:stream';
import pino, { type Logger } from 'pino';
import {
  type ConfigFlags,
  checkBaseUrls,
  configuredKeys,
  maskSecret,
  type ResolvedConfig,
  resolveConfig,
  settingSource,
  withoutConfiguredSecrets,
  withoutSecrets,
} from '../config/load.js';
import {
  type DatabaseLocation,
  isSameFile,
  redactUrl,
  resolveDatabaseLocation,
  resolveLogFilePath,
  sqliteFiles,
} from '../config/paths.js';
import type { Config } from '../config/schema.js';
import { isOaiProxyError, OaiProxyError } from '../errors.js';
import { createBodyMemoryReleaser } from '../proxy/body-memory.js';
import { MIN_SECRET_LENGTH, needsJsonEscape } from '../proxy/capture.js';
import { createDispatcher, createUpstreamTarget } from '../proxy/forward.js';
import {
  createProxyServer,
  type ModelRouter,
  type OwnRoute,
  type ProxyLimits,
  type ProxyServer,
} from '../proxy/server.js';
import { ModelStore, type RegistryRows } from '../registry/model-store.js';
import {
  createPgRegistryStore,
  createSqliteRegistryStore,
  type RegistryStore,
} from '../registry/registry-store.js';
import {
  isSqliteBusy,
  lockedDatabaseError,
  withoutBusyWait,
  withShortBusyWait,
} from '../storage/busy-wait.js';
import { startBackgroundCheckpoints } from '../storage/checkpointer.js';
import { type OpenDatabase, openDatabase } from '../storage/database.js';
import type { ExchangeRecord, SpillReason } from '../storage/exchange-record.js';
import { type LogFileHealth, type LogFileSystem, RotatingFile } from '../storage/log-file.js';
import { createExchangeWriter, type ExchangeWriter } from '../storage/log-store.js';
import { createPgExchangeWriter } from '../storage/pg-log-store.js';
import { openPostgres, type PostgresDatabase, postgresError, subscribeNotify } from '../storage/postgres.js';
import { startRecorderThread } from '../storage/recorder-thread.js';
import { createSearchIndexer } from '../storage/search-index.js';
import { createStatsRollup } from '../storage/stats-rollup.js';
import {
  postgresStorage,
  type RecordingWriter,
  type RecordingWriterOptions,
  type Storage,
  sqliteStorage,
} from '../storage/storage.js';
import { VERSION } from '../version.js';
import { BatchedWriter, type CliIo, createQuietConsole, watchStopSignals } from './io.js';
import { type RegistryRuntime, startRegistry } from './registry-setup.js';
import { terminalSafe, useColor } from './terminal-text.js';
import { configSecrets, startVectorIndexing, type VectorIndexing } from './vector-setup.js';

export interface ServeOptions extends ConfigFlags {
  config?: string;
}

/** A started proxy: its address and everything needed to stop it cleanly. */
export interface RunningProxy {
  url: string;
  port: number;
  proxy: ProxyServer;
  writer: RecordingWriter;
  /** The recording database (SQLite file or PostgreSQL). */
  storage: Storage;
  /** The SQLite database; throws when the proxy records to PostgreSQL (use `storage`). */
  database: OpenDatabase;
  logFile: string;
  /** Whether the log file takes writes (`error`: the last failure, null when ok) and the lines it dropped. */
  logFileHealth(): LogFileHealth & { lostRows: number };
  logger: Logger;
  /**
   * Record the exchanges that finished and write what the log file has buffered, now (tests and
   * diagnostics read the file right after).
   */
  flushLogs(): void;
  /** The model registry: routing, `/models`, the admin API. */
  registry: RegistryRuntime;
  /** Qdrant indexing, present only when QDRANT_URL is set. */
  vector: VectorIndexing | null;
  /** Stop accepting, let in-flight requests finish within the grace period, flush every row, close files. */
  close(): Promise<void>;
}

/** Extension points later features (registry, admin API, vector indexing) plug into. */
export interface ServeExtensions {
  router?: ModelRouter;
  routes?: OwnRoute[];
  health?: () => Record<string, unknown>;
  onRecord?: (r: ExchangeRecord) => void;
  /**
   * Resolves the configuration again for `POST /admin/reload-config` from `configPath`, the config file in
   * use (undefined when none is: look for one as at start-up). Default: that file, the same environment.
   */
  reloadConfig?: (configPath: string | undefined) => ResolvedConfig;
  /** The recorder thread's script (tests: one that dies, to run the main-thread fallback). */
  recorderWorkerFile?: string;
  /**
   * Aborted by a stop signal during start-up (its reason: the signal's name): start-up stops before it
   * seeds the registry or, when already seeding, before it listens; what it opened is closed and
   * flushed, and startProxy throws OaiProxyError('start_stopped').
   */
  stopStart?: AbortSignal;
  /** The log file's file operations (tests: writes that fail as on a full disk). */
  logFileSystem?: LogFileSystem;
  /** While the log file fails, how often writes are tried again (ms; default 1000). */
  logFileRetryMs?: number;
  /** While the log file fails, bytes of lines kept for later (default 1 MiB); beyond, lines are dropped. */
  logFileKeptBytes?: number;
  /** While the log file is slow, bytes of lines waiting (default 16 MiB); beyond, lines are dropped. */
  logFilePendingMaxBytes?: number;
  /** A log file write in flight this long (ms) shows as log_file 'stalled' in /health (default 10 s). */
  logFileStallMs?: number;
  /** Tests: how long (ms) a write in flight makes the log file slow (its pending bound applies). */
  logFileSlowMs?: number;
}

/** One JSON line per exchange in the log file. */
export function exchangeLogLine(r: ExchangeRecord): Record<string, unknown> {
  return {
    id: r.id,
    method: r.method,
    path: r.path,
    model: r.model,
    upstream_model: r.upstreamModel,
    upstream: r.upstream,
    status: r.status,
    stream: r.stream,
    duration_ms: Math.round(r.durationMs),
    ttfb_ms: r.ttfbMs === null ? null : Math.round(r.ttfbMs),
    prompt_tokens: r.promptTokens,
    completion_tokens: r.completionTokens,
    total_tokens: r.totalTokens,
    error: r.error,
  };
}

/** The log line of an exchange that went to the log file instead of the database, by why. */
const SPILL_MESSAGES: Record<SpillReason, string> = {
  queue_full: 'database queue full: exchange spilled to the log file',
  refused_at_close: 'the database still refused this exchange at shutdown: spilled to the log file',
  after_close: 'exchange finished after the database was closed: spilled to the log file',
  rejected: 'the database rejected this exchange: spilled to the log file',
};

/**
 * The log line pino would write for an exchange (`exchangeLogLine` plus level, time and msg), built by
 * hand on the hot path: 1.6 µs against 3.2 µs for JSON.stringify of the same object, and pino's own
 * serialiser cost several times that. It repeats exchangeLogLine's fields; console-lines.test.ts fails
 * when the two differ.
 */
export function exchangeLogText(r: ExchangeRecord, msg: string): string {
  const q = jsonString;
  const ttfb = r.ttfbMs === null ? null : Math.round(r.ttfbMs);
  return flat(
    `{"level":30,"time":"${isoNow()}","id":${q(r.id)},"method":${q(r.method)},"path":${q(r.path)},"model":${q(r.model)},"upstream_model":${q(r.upstreamModel)},"upstream":${q(r.upstream)},"status":${r.status},"stream":${r.stream},"duration_ms":${Math.round(r.durationMs)},"ttfb_ms":${ttfb},"prompt_tokens":${r.promptTokens},"completion_tokens":${r.completionTokens},"total_tokens":${r.totalTokens},"error":${q(r.error)},"msg":${q(msg)}}\n`,
  );
}

/**
 * `s`, made one flat string now. A template of many parts is a tree of ~35 pieces that V8 walks every
 * time it needs the characters: the console's batch and the log file's each walked it again (callgrind:
 * ~6k instructions a request). Reading one character flattens it in place, once.
 */
function flat(s: string): string {
  s.charCodeAt(0);
  return s;
}

/**
 * `JSON.stringify` of a string or null: the same text, without the call when nothing needs escaping (the
 * usual id, method, path and model): 30 against 73 ns a call on such values, ~0.3 µs per exchange line.
 */
export function jsonString(s: string | null): string {
  if (s === null) return 'null';
  return needsJsonEscape(s) ? JSON.stringify(s) : `"${s}"`;
}

let minuteStart = -1;
let minutePrefix = '';
/** `new Date().toISOString()` (1.5 µs a call on Node 20) for a clock that mostly stays in one minute. */
export function isoNow(now = Date.now()): string {
  const rest = now % 60_000;
  if (now - rest !== minuteStart) {
    minuteStart = now - rest;
    minutePrefix = new Date(minuteStart).toISOString().slice(0, 17);
  }
  const ms = rest % 1000;
  const sec = (rest - ms) / 1000;
  return `${minutePrefix}${sec < 10 ? '0' : ''}${sec}.${ms < 10 ? '00' : ms < 100 ? '0' : ''}${ms}Z`;
}

/** Said when PostgreSQL refuses serve a connection for its connection limit: the pool's 4 and the LISTEN one. */
const SERVE_PG_CONNECTIONS =
  'serve uses up to 5 connections (a pool of 4 and one listening for model-registry changes) and needs at least 3 to start';

/** Build and start the proxy from a resolved configuration. */
export async function startProxy(
  resolved: ResolvedConfig,
  io: CliIo,
  ext: ServeExtensions = {},
): Promise<RunningProxy> {
  const { config } = checkBaseUrls(resolved);
  checkHost(resolved);
  const location = resolveDatabaseLocation(
    config.databaseUrl,
    resolved.env,
    io.cwd,
    settingSource(resolved, 'databaseUrl'),
  );
  if (location.kind === 'postgres' && config.qdrantUrl) {
    throw new OaiProxyError(
      'config_invalid',
      `${settingSource(resolved, 'qdrantUrl')} is set but ${settingSource(resolved, 'databaseUrl')} ${redactUrl(location.url)} is PostgreSQL: semantic search indexing works with an SQLite database only in this version; unset QDRANT_URL or use an SQLite path`,
    );
  }
  const where = location.kind === 'postgres' ? redactUrl(location.url) : location.path;
  const logPath = resolveLogFilePath(config.logFilePath, location, resolved.env, io.cwd);
  checkLogFileApart(resolved, location, logPath);
  // A start that cannot listen (the port taken by another instance, a host this machine does not have)
  // creates no database or log file and leaves the shared model registry alone. Port 0 is probed too: it
  // checks the host. Held only for a moment: the proxy listens once built (a port another process takes
  // in between still fails the start after seeding).
  {
    const probe = createNetServer();
    await listenOn(probe, config);
    await new Promise<void>((r) => probe.close(() => r()));
  }

  // Plain console lines (stderr not a terminal: CI, containers, journald) are batched per event-loop turn.
  const batchedConsole = io.stderr.isTTY ? null : new BatchedWriter(io.stderr);
  const consoleStream = batchedConsole ?? (await prettyStream(io.stderr, useColor(io.env, io.stderr)));
  // The database first: the default log file lives beside it, and a bad --db is the error to report.
  // Exactly one of the two is open: the SQLite file, or the PostgreSQL pool.
  const pgDatabase: PostgresDatabase | null =
    location.kind === 'postgres'
      ? await openPostgres(location.url, { setting: location.setting, needs: SERVE_PG_CONNECTIONS })
      : null;
  let database = (
    location.kind === 'sqlite' ? await openDatabase(location.path, { requireWritable: true }) : null
  ) as OpenDatabase;
  const closeDatabase = async () => {
    await database?.close();
    await pgDatabase?.close();
  };
  // A log file that stops taking writes (a full disk, EIO) is said once on the console (it cannot say
  // it in itself), in /health, and in both once it takes writes again; nothing else waits for it.
  const consoleOnly = pino(
    { level: config.logLevel, timestamp: pino.stdTimeFunctions.isoTime, base: undefined },
    consoleStream as any,
  );
  // Rows spilled to the log file (the database refused them) that the log file dropped in turn: lost.
  let lostRows = 0;
  // Said once; not at the stop, where end() drops what a hung write left waiting (the stop line says it).
  let saidBehind = false;
  let logFile: RotatingFile;
  try {
    logFile = new RotatingFile({
      path: logPath,
      maxBytes: config.logMaxBytes,
      maxFiles: config.logMaxFiles,
      daily: config.logRotateDaily,
      fs: ext.logFileSystem,
      retryMs: ext.logFileRetryMs,
      keptBytes: ext.logFileKeptBytes,
      pendingMaxBytes: ext.logFilePendingMaxBytes,
      stallMs: ext.logFileStallMs,
      slowMs: ext.logFileSlowMs,
      onError: (err) =>
        consoleOnly.error(
          { err: { message: err.message, code: err.code } },
          `log file ${logPath} cannot be written; proxying and the database go on, log lines are kept in memory (up to 1 MiB, then dropped and counted in /health) and written once it takes writes again`,
        ),
      onDrop: (lines) => {
        if (!saidBehind && logFile.health().error === null) {
          saidBehind = true;
          consoleOnly.error(
            `log file ${logPath} is not keeping up (a slow or hung disk): ${(logFile.health().pendingBytes / 1048576).toFixed(1)} MiB of lines are waiting; further lines are dropped and counted in /health dropped_log_lines`,
          );
        }
        const lost = countOccurrences(lines, SPILL_MARKER);
        if (lost === 0) return;
        if (lostRows === 0)
          consoleOnly.error(
            `exchanges the database could not take were spilled to the log file ${logPath}, which cannot keep them either: they are lost (counted in /health lost_log_rows and in the stop line)`,
          );
        lostRows += lost;
      },
      onRecover: (dropped) =>
        logger.warn(
          `log file ${logPath} is writable again; ${dropped} lines could not be written and were dropped`,
        ),
      onRotateError: (err) =>
        logger.warn(
          `log file ${logPath} could not be rotated (${err.message}): lines are still appended to it, past LOG_MAX_BYTES, until a rotation works; make ${logPath}.1 to .${config.logMaxFiles} plain files this user can rename, or remove them`,
        ),
    });
  } catch (err) {
    await closeDatabase();
    throw err;
  }
  await logFile.ready();
  // Lines reach the file every 20 ms in one write (sonic-boom would start a write per line when idle).
  const fileLines = new BatchedWriter(logFile, 20);
  const logger = pino(
    { level: minLevel(config.logLevel), timestamp: pino.stdTimeFunctions.isoTime, base: undefined },
    pino.multistream([
      { level: config.logLevel === 'silent' ? 'fatal' : config.logLevel, stream: consoleStream as any },
      { level: 'info', stream: fileLines as any },
    ]),
  );
  const consoleOn = config.logLevel !== 'silent';
  // Exchange lines are info: the console shows them at LOG_LEVEL info or below (not warn…fatal, silent).
  const consoleShowsExchanges = showsInfo(config.logLevel);
  const flushLines = () => {
    batchedConsole?.flush();
    fileLines.flush();
  };
  // An exit without close() (an uncaught error) still writes what the batches hold, synchronously: the
  // log file's own writes are asynchronous and would not complete.
  const flushAtExit = () => {
    batchedConsole?.flush();
    logFile.writeSync(fileLines.take());
  };
  process.on('exit', flushAtExit);
  // Handled while the log file is open, start-up and the shutdown's grace included: SIGUSR2's default
  // action ends the process, and logrotate's postrotate may send it at any moment.
  const onUsr2 = () => logFile.reopen();
  process.on('SIGUSR2', onUsr2);
  const closeLogs = async () => {
    batchedConsole?.flush();
    fileLines.end();
    process.off('exit', flushAtExit);
    saidBehind = true;
    // A write that never returns (a hung disk, an NFS hard mount) must not hold the stop forever.
    await logFile.end(config.shutdownGraceMs);
    process.off('SIGUSR2', onUsr2);
  };

  // What start-up has opened so far, undone newest first when a later step fails.
  const undo: (() => unknown)[] = [closeLogs, closeDatabase, () => checkpoints.stop()];
  // A database error while reading or seeding the registry, as `logs` and `models` say it.
  const startFailure = (err: unknown): unknown =>
    isSqliteBusy(err)
      ? lockedDatabaseError(where, 'the proxy did not start', err)
      : pgDatabase
        ? postgresError(pgDatabase.label, err, pgDatabase.setting, SERVE_PG_CONNECTIONS)
        : err;
  const abandon = async (err: unknown): Promise<never> => {
    for (const step of undo.reverse()) await step();
    throw err;
  };
  const stopIfAsked = async (): Promise<void> => {
    if (!ext.stopStart?.aborted) return;
    await abandon(
      new OaiProxyError(
        'start_stopped',
        `${String(ext.stopStart.reason)} received during start-up: stopped before listening, nothing was recorded`,
      ),
    );
  };
  // A file database is written from the recorder thread, which also runs the WAL checkpoints; this
  // thread's connection must never checkpoint (a commit here would copy the whole WAL on the event loop).
  const threaded = database !== null && database.path !== ':memory:';
  const checkpointsHere = () =>
    startBackgroundCheckpoints(database.sqlite, {
      onError: (err) => logger.warn(`database ${where}: ${(err as Error)?.message ?? String(err)}`),
      onRecover: (message) => logger.info(`database ${where}: ${message}`),
    });
  const noCheckpoints = { stop: () => undefined };
  let checkpoints: { stop(): void | Promise<void> } = noCheckpoints;
  if (threaded) database.sqlite.pragma('wal_autocheckpoint = 0');
  else if (database) checkpoints = checkpointsHere();
  /**
   * The database file was deleted or replaced: close this thread's handle on the old file (after the
   * recorder thread closed its own, see RecorderThreadOptions.onMoved), remove the -wal and -shm it left
   * at the path (SQLite keeps them once the file was unlinked; a new file opened beside them would share
   * them, and a backup put in place would be overwritten with the old file's pages), then open the file
   * now at the path. The registry follows: a recreated (empty) file gets the old file's rows; a
   * replacement with a registry of its own keeps that one.
   */
  const reopenHere = async (): Promise<OpenDatabase> => {
    const old = database;
    let registryRows: RegistryRows | null = null;
    try {
      registryRows = new ModelStore(old.sqlite).rows();
    } catch (err) {
      logger.warn(`database ${where}: the model registry could not be read: ${(err as Error).message}`);
    }
    const checkpointing = checkpoints !== noCheckpoints;
    await checkpoints.stop();
    checkpoints = noCheckpoints;
    await old.close().catch(() => undefined);
    old.removeLeftovers();
    const next = await openDatabase(where);
    database = next;
    if (threaded) next.sqlite.pragma('wal_autocheckpoint = 0');
    if (checkpointing) checkpoints = checkpointsHere();
    try {
      const rows = registryRows;
      if (rows)
        await withoutBusyWait(
          () => next.sqlite,
          () => new ModelStore(next.sqlite).adopt(rows),
        );
    } catch (err) {
      logger.warn(
        `database ${where}: the model registry could not be copied to the new file: ${(err as Error).message}`,
      );
    }
    void registry?.refresh();
    logger.warn(`database ${where} was deleted or replaced; recording into a new file there`);
    return next;
  };
  const writerOptions = {
    reopen: { moved: () => database.moved(), open: async () => (await reopenHere()).sqlite },
  };
  const recording: RecordingWriterOptions = {
    flushIntervalMs: config.logFlushIntervalMs,
    queueMax: config.logQueueMax,
    onSpill: (rows, reason) => {
      for (const r of rows)
        logger.warn(
          {
            spilled_exchange: {
              ...exchangeLogLine(r),
              request_body: r.requestBody,
              response_body: r.responseBody,
            },
            reason,
          },
          SPILL_MESSAGES[reason],
        );
    },
    onError: (err) =>
      logger.error(
        { err: { message: err.message, code: (err as any).code } },
        `database ${where} is failing; rows are queued and retried`,
      ),
    onRecover: () => logger.info(`database ${where} recovered; queued rows written`),
  };
  // SQLite background jobs on this thread: with an in-memory database (no second connection can see it),
  // or after the recorder thread died. PostgreSQL indexes rows as they are inserted (GIN, migration 0002)
  // and aggregates stats on the server.
  const jobs: { close(): void }[] = [];
  // A slice that meets a file another process holds locked fails at once and is retried on the next
  // tick: SQLite's busy timeout (5 s) would hold the event loop.
  const around = <T>(slice: () => T): T => withShortBusyWait(database.sqlite, slice);
  const startJobsHere = () => {
    if (config.searchIndex)
      jobs.push(
        createSearchIndexer({
          around,
          sqlite: () => database.sqlite,
          onError: (err) =>
            logger.warn({ err: { message: err.message } }, 'full-text indexing failed; will retry'),
        }),
      );
    jobs.push(
      createStatsRollup({
        around,
        sqlite: () => database.sqlite,
        onError: (err) => logger.warn({ err: { message: err.message } }, 'stats rollup failed; will retry'),
      }),
    );
  };
  const writeHere = (): ExchangeWriter => {
    startJobsHere();
    if (threaded) checkpoints = checkpointsHere();
    return createExchangeWriter({ sqlite: database.sqlite, ...writerOptions, ...recording });
  };
  // A file database is written from the recorder thread: INSERTs, full-text indexing and rollups never
  // hold the event loop that proxies.
  const writer: RecordingWriter = pgDatabase
    ? createPgExchangeWriter({ db: pgDatabase.db, ...recording })
    : database.path === ':memory:'
      ? writeHere()
      : await startRecorderThread({
          path: database.path,
          searchIndex: config.searchIndex,
          workerFile: ext.recorderWorkerFile,
          ...recording,
          onMoved: async () => {
            await reopenHere();
          },
          onJobError: (job, err) =>
            logger.warn({ err: { message: err.message } }, `${job} failed; will retry`),
          onJobRecover: (_job, message) => logger.info(`database ${where}: ${message}`),
          fallback: () => {
            logger.error(
              `the recorder thread for ${where} stopped; recording on the main thread from now on`,
            );
            return writeHere();
          },
        }).catch(abandon);
  undo.push(() => writer.close());
  const registryStore: RegistryStore = pgDatabase
    ? createPgRegistryStore(pgDatabase.db, (channel, onNotify, onState) =>
        subscribeNotify(pgDatabase.url, channel, onNotify, onState),
      )
    : // Admin writes and reloads run on the event loop: a file another process holds locked is waited
      // for on timers, never in SQLite's busy timeout (5 s during which no request would move).
      createSqliteRegistryStore(
        () => database.sqlite,
        (call) => withoutBusyWait(() => database.sqlite, call),
      );

  const defaultUpstream = createUpstreamTarget('default', config.openaiBaseUrl, {
    type: config.openaiApiType,
    apiKey: config.openaiApiKey,
    apiVersion: config.openaiApiVersion,
  });
  const dispatcher = createDispatcher({
    connectTimeoutMs: config.upstreamConnectTimeoutMs,
    headersTimeoutMs: config.upstreamHeadersTimeoutMs,
    idleTimeoutMs: config.upstreamIdleTimeoutMs,
  });
  undo.push(() => dispatcher.close());
  // Scrubbed from everything recorded. A reload adds the keys it brings and keeps the old ones (they may
  // still be echoed in answers to requests made before it); the admin key is the current one.
  let secrets: string[] = [];
  let adminKey = config.adminApiKey;
  // Client keys, CORS origins and body limits reach the proxy server once it exists.
  let reconfigureProxy: ((c: Config) => void) | null = null;
  // The file a reload reads again: the one in use, never a different one found by a new look-up.
  let configInUse = resolved.configFile;
  const onConfig = (next: ResolvedConfig) => {
    secrets = [...new Set([...secrets, ...configSecrets(next)])];
    adminKey = next.config.adminApiKey;
    configInUse = next.configFile;
    reconfigureProxy?.(next.config);
  };
  const resolveAgain =
    ext.reloadConfig ??
    ((configPath: string | undefined) => resolveConfig({ configPath, env: io.env, cwd: io.cwd }));
  let registry: RegistryRuntime;
  try {
    registry = await startRegistry(resolved, {
      onConfig,
      store: registryStore,
      logger,
      databaseLabel: where,
      reloadConfig: () => {
        if (configInUse && !existsSync(configInUse))
          throw new OaiProxyError(
            'config_not_found',
            `The config file ${configInUse} in use is gone (moved or deleted); put it back there, or restart with --config naming its new path`,
          );
        return checkBaseUrls(resolveAgain(configInUse));
      },
    });
  } catch (err) {
    return abandon(startFailure(err));
  }
  undo.push(() => registry.close());
  // Only with QDRANT_URL: otherwise nothing of the vector feature is built or loaded.
  const vector = config.qdrantUrl
    ? await startVectorIndexing(resolved, {
        sqlite: () => database.sqlite,
        dispatcher,
        logger,
        record: (r) => {
          writer.record(r);
          logger.info({ ...exchangeLogLine(r), internal: true }, 'internal exchange');
        },
      }).catch(abandon)
    : null;
  if (vector) undo.push(() => vector.close());

  const proxy = createProxyServer({
    limits: proxyLimits(config),
    dispatcher,
    defaultUpstream,
    router: ext.router ?? registry.router,
    routes: [...(ext.routes ?? []), ...registry.routes],
    version: VERSION,
    secrets: () => secrets,
    clientKeys: config.proxyApiKeys,
    adminKey: () => adminKey,
    sink: {
      record(r) {
        writer.record(r);
        const line = exchangeLogText(
          r,
          // The pretty console prints msg as it is: the client's model escaped (terminalSafe).
          consoleOn
            ? `${r.method} ${terminalSafe(r.path)} ${r.status ?? '-'} ${Math.round(r.durationMs)}ms${r.model ? ` ${terminalSafe(r.model)}` : ''}${r.error ? ` ${r.error}` : ''}`
            : 'exchange',
        );
        fileLines.write(line);
        if (consoleShowsExchanges) consoleStream.write(line);
        ext.onRecord?.(r);
        vector?.onRecord(r);
      },
    },
    health: () => {
      // What finished is counted as queued or written, not left out.
      proxy.recordFinished();
      const h = writer.health();
      const logHealth = logFile.health();
      // The registry's: a reload may have changed OPENAI_BASE_URL.
      const upstream = registry.defaultUpstream();
      // An idle instance writes nothing: its registry poll is what notices the database gone.
      const pollError = registry.databaseError();
      return {
        upstream: upstream.origin + upstream.basePath,
        database: pollError ? 'error' : h.database,
        database_error: h.lastError ?? pollError,
        queued_log_rows: h.queued,
        spilled_log_rows: h.spilled,
        lost_log_rows: lostRows,
        log_file: logHealth.error !== null ? 'error' : logHealth.stalledMs !== null ? 'stalled' : 'ok',
        log_file_error:
          logHealth.error ??
          (logHealth.stalledMs !== null
            ? `a write has not returned for ${Math.round(logHealth.stalledMs / 1000)} s (a slow or hung disk)`
            : null),
        log_file_pending_bytes: logHealth.pendingBytes,
        dropped_log_lines: logHealth.droppedLines,
        inflight: proxy.inflight(),
        ...(vector ? vector.health() : { qdrant: 'disabled' }),
        ...registry.health(),
        ...ext.health?.(),
      };
    },
    // Uploads free the parser's chunk copies every 16 MB instead of at V8's ~64 MB threshold.
    onStreamedBody: createBodyMemoryReleaser(16 * 1024 * 1024) ?? undefined,
    onError: (err, context) =>
      logger.error({ err: { message: err.message, stack: err.stack } }, `error while ${context}`),
  });

  reconfigureProxy = (c) => proxy.reconfigure({ limits: proxyLimits(c), clientKeys: c.proxyApiKeys });

  // A stop signal so far ends the start here: nothing seeded, nothing served.
  await stopIfAsked();
  // The registry is shared with every process on this database: seeded once nothing but the listen below
  // can fail, and before it, so that no request is routed by the registry as it was before this start (an
  // alias not applied yet, a model refused). The port was checked before anything was opened; a port
  // taken between that check and this listen still fails the start with the registry already seeded.
  await registry.seed().catch((err) => abandon(startFailure(err)));
  // Seeding may have waited up to 5 s for a lock another process held.
  await stopIfAsked();
  await listenOn(proxy.server, config).catch(abandon);
  // Should a later step fail: exchanges accepted by then are finished or cut, and recorded.
  undo.push(() => proxy.shutdown(0));
  const addr = proxy.server.address() as AddressInfo;
  const hostForUrl = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  const url = `http://${hostForUrl}:${addr.port}`;

  let closing: Promise<void> | null = null;
  return {
    url,
    port: addr.port,
    proxy,
    writer,
    storage: pgDatabase ? postgresStorage(pgDatabase) : sqliteStorage(database),
    get database() {
      if (!database)
        throw new OaiProxyError(
          'internal',
          'This proxy records to PostgreSQL; use `storage`, not `database`',
        );
      return database;
    },
    logFile: logPath,
    // Spilled rows in a write that end() gave up on are lost only while it has not returned.
    logFileHealth: () => ({
      ...logFile.health(),
      lostRows: lostRows + countOccurrences(logFile.abandonedWrite() ?? '', SPILL_MARKER),
    }),
    logger,
    vector,
    registry,
    flushLogs() {
      proxy.recordFinished();
      flushLines();
      logFile.flushSync();
    },
    close() {
      closing ??= (async () => {
        await proxy.shutdown(config.shutdownGraceMs);
        registry.close();
        await vector?.close(config.shutdownGraceMs);
        for (const job of jobs) job.close();
        await writer.close();
        await checkpoints.stop();
        await dispatcher.close().catch(() => undefined);
        await closeDatabase();
        await closeLogs();
      })();
      return closing;
    },
  };
}

/**
 * How a spilled exchange's line starts its field (pino writes it right after `time`): inside a body, a
 * string value, the quotes are escaped, so it cannot be taken for one.
 */
const SPILL_MARKER = ',"spilled_exchange":{';

/** How many times `marker` occurs in `text`. */
function countOccurrences(text: string | Buffer, marker: string): number {
  let n = 0;
  for (let at = text.indexOf(marker); at !== -1; at = text.indexOf(marker, at + marker.length)) n++;
  return n;
}

/**
 * Refuse an empty host (`--host "$HOST"` with HOST unset, `"host": ""`): node would listen on every
 * interface. An empty HOST in the environment is unset, as every variable (127.0.0.1).
 */
function checkHost(resolved: ResolvedConfig): void {
  if (resolved.config.host.trim() !== '') return;
  throw new OaiProxyError(
    'config_invalid',
    `${settingSource(resolved, 'host')} is empty: give the address to listen on (leave it unset for 127.0.0.1, this machine only; 0.0.0.0 explicitly to listen on every interface)`,
  );
}

/**
 * Refuse a log file that is the SQLite database or one of its -wal, -shm or -journal files (`--log-file`
 * given the database's path), or whose rotation would rename or delete one (a database at `LOG.N`): its
 * lines would be appended to the database and lost at the next checkpoint, and a rotation would move the
 * database away, leaving an empty one in its place. The same file by device and inode when both exist
 * (a link), else the same path.
 */
function checkLogFileApart(resolved: ResolvedConfig, location: DatabaseLocation, logPath: string): void {
  if (location.kind !== 'sqlite' || location.path === ':memory:') return;
  const rotated = new RegExp(`^${escapeRegExp(basename(logPath))}\\.[1-9]\\d{0,3}$`);
  for (const { path: file, what: which } of sqliteFiles(location.path)) {
    const same = isSameFile(logPath, file);
    const rotatedAway = dirname(file) === dirname(logPath) && rotated.test(basename(file));
    if (!same && !rotatedAway) continue;
    const what = `${which} ${file} (${settingSource(resolved, 'databaseUrl')})`;
    const harm = same
      ? `is ${what}: its lines would be appended to the database and lost`
      : `would rotate ${what} away: rotating the log file renames it, and deletes it past LOG_MAX_FILES`;
    throw new OaiProxyError(
      'config_invalid',
      `The log file ${logPath} (${settingSource(resolved, 'logFilePath')}) ${harm}; give the log file a path of its own with --log-file or LOG_FILE_PATH`,
    );
  }
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** Listen on the configured host and port; an OaiProxyError naming them (and what to do) when it cannot. */
function listenOn(server: NetServer, config: Config): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      const hint =
        err.code === 'EADDRINUSE'
          ? `port ${config.port} is in use; choose another with --port or PORT`
          : err.code === 'EACCES'
            ? `no permission to listen on ${config.host}:${config.port}; use a port above 1023`
            : err.message;
      reject(
        new OaiProxyError('internal', `Cannot listen on ${config.host}:${config.port}: ${hint}`, {
          cause: err,
        }),
      );
    });
    server.listen(config.port, config.host, () => resolve());
  });
}

/** The proxy server's limits from a configuration (at start-up and on each reload). */
function proxyLimits(c: Config): ProxyLimits {
  return {
    maxRequestBodyBytes: c.maxRequestBodyBytes,
    captureBodyBytes: c.captureBodyBytes,
    corsOrigins: c.corsOrigins,
    clientBodyTimeoutMs: c.clientBodyTimeoutMs,
  };
}

/** The startup banner: where it listens, where it forwards, where it records. Keys masked, even pasted elsewhere. */
export function banner(running: RunningProxy, resolved: ResolvedConfig): string {
  const c = resolved.config;
  const key = c.openaiApiKey ? `key ${maskSecret(c.openaiApiKey)}` : "clients' own keys forwarded";
  const lines = [
    `oai-proxy ${VERSION} listening on ${running.url}${isAnyAddress(running.url) ? ' (all interfaces)' : ''}  (client base URL: ${clientBaseUrl(running.url)})`,
    `  upstream   ${redactUrl(c.openaiBaseUrl)}  (${key})`,
    ...Object.entries(c.upstreams).map(
      ([name, u]) =>
        `  upstream   ${name}: ${redactUrl(u.baseUrl)}${u.type === 'azure' ? ' (azure)' : ''}${u.apiKey || u.apiKeyEnv ? `  (key ${u.apiKeyEnv ? `from ${u.apiKeyEnv}` : maskSecret(u.apiKey)})` : ''}`,
    ),
    `  models     ${registrySummary(running, c)}`,
    `  database   ${running.storage.label}`,
    `  log file   ${running.logFile}`,
  ];
  if (resolved.configFile) lines.push(`  config     ${resolved.configFile}`);
  return withoutSecrets(`${lines.join('\n')}\n`, resolved.secrets);
}

function registrySummary(running: RunningProxy, c: ResolvedConfig['config']): string {
  const reg = running.registry.current();
  const validation = c.validateModels ? (c.allowUnknownModels ? 'on, unknown allowed' : 'on') : 'off';
  return `${reg.models.size} registered, ${reg.mappings.size} aliases; validation ${validation}; admin API ${c.adminApiKey ? 'on' : 'off'}`;
}

/** True when the proxy listens on every interface (0.0.0.0 or ::), an address no client can dial. */
function isAnyAddress(url: string): boolean {
  const host = new URL(url).hostname;
  return host === '0.0.0.0' || host === '[::]';
}

/** The `/v1` base URL a client can use, as the banner says it: loopback in place of 0.0.0.0 / ::. */
function clientBaseUrl(url: string): string {
  if (!isAnyAddress(url)) return `${url}/v1`;
  const u = new URL(url);
  u.hostname = u.hostname === '0.0.0.0' ? '127.0.0.1' : '[::1]';
  return `${u.origin}/v1 here, this machine's address elsewhere`;
}

/** True for addresses only this machine can reach (127.0.0.0/8, ::1, their IPv4-mapped forms). */
export function isLoopbackAddress(address: string): boolean {
  const a = address.replace(/^\[|\]$/g, '').toLowerCase();
  return a === '::1' || a === 'localhost' || /^(::ffff:)?127\.\d+\.\d+\.\d+$/.test(a);
}

/**
 * The warning printed when the proxy listens beyond loopback, spends an upstream key of its own, and asks
 * clients for no key (PROXY_API_KEYS unset): anyone who can reach the port uses that key. Null otherwise.
 */
export function exposureWarning(running: Pick<RunningProxy, 'url'>, resolved: ResolvedConfig): string | null {
  const c = resolved.config;
  const host = new URL(running.url).hostname;
  const hasUpstreamKey = !!c.openaiApiKey || Object.values(c.upstreams).some((u) => u.apiKey || u.apiKeyEnv);
  if (isLoopbackAddress(host) || !hasUpstreamKey || c.proxyApiKeys.length > 0) return null;
  const bar = '!'.repeat(78);
  return `${bar}
!! WARNING: listening on ${host} (reachable from other machines) with an upstream API key
!! and no client keys: ANYONE who can reach port ${new URL(running.url).port} spends that key.
!! Set PROXY_API_KEYS (comma-separated keys clients must send as their Bearer key),
!! or listen on 127.0.0.1 only (--host 127.0.0.1 / HOST).
${bar}
`;
}

/** One warning per configured key too short to be scrubbed from what is recorded, naming its setting, never the key. */
export function shortKeyWarnings(resolved: ResolvedConfig): string[] {
  return configuredKeys(resolved)
    .filter((k) => k.value.length < MIN_SECRET_LENGTH)
    .map(
      (k) =>
        `${k.setting} is shorter than ${MIN_SECRET_LENGTH} characters, so it cannot be scrubbed from recorded bodies (a prompt or answer that quotes it is stored as is); use a longer key`,
    );
}

/**
 * `oai-proxy serve`: start, print the banner, run until SIGINT/SIGTERM/SIGHUP, shut down cleanly (a second
 * signal cuts what is still in flight at once; every row is still written). A signal during start-up ends
 * it before the proxy listens: what was opened is closed, exit 0. A log file write that never returns (a
 * hung disk) is given up after SHUTDOWN_GRACE_MS; the process then ends by the signal itself.
 */
export async function runServe(options: ServeOptions, cliIo: CliIo): Promise<number> {
  // A console that goes away (a log shipper restarting, `| head`, a closed terminal, a full disk) must not
  // stop the proxy: the log file and the database keep everything the console would have said.
  const quietConsole = createQuietConsole(cliIo.stderr);
  try {
    return await serveWith({ ...cliIo, stderr: quietConsole }, options);
  } finally {
    quietConsole.dispose();
  }
}

async function serveWith(io: CliIo, options: ServeOptions): Promise<number> {
  const resolve = (configPath = options.config) =>
    resolveConfig({
      configPath,
      flags: {
        port: options.port,
        host: options.host,
        upstream: options.upstream,
        db: options.db,
        logFile: options.logFile,
      },
      env: io.env,
      cwd: io.cwd,
    });
  const resolved = resolve();
  for (const w of [...resolved.warnings, ...shortKeyWarnings(resolved)]) io.stderr.write(`warning: ${w}\n`);
  // Watched from the start: a signal during start-up (the database locked by another process, Qdrant
  // slow to answer) stops it cleanly instead of killing the process with what it had opened.
  const stop = watchStopSignals(io);
  try {
    const stopStart = new AbortController();
    void stop.requested.then((why) => stopStart.abort(why));
    let running: RunningProxy;
    try {
      running = await startProxy(resolved, io, {
        reloadConfig: (configPath) => resolve(configPath),
        stopStart: stopStart.signal,
      });
    } catch (err) {
      // A key pasted into HOST, LOG_FILE_PATH, DATABASE_URL… is quoted by the error it causes.
      if (!isOaiProxyError(err, 'start_stopped')) throw withoutConfiguredSecrets(err, resolved);
      io.stderr.write(`oai-proxy: ${err.message}\n`);
      if (stopStart.signal.reason === 'SIGHUP') releaseHungUpTerminal();
      return 0;
    }
    io.stderr.write(banner(running, resolved));
    const exposed = exposureWarning(running, resolved);
    if (exposed) io.stderr.write(exposed);
    // A signal that came after the last check of start-up (while it listened) stops the proxy now.
    const why = await stop.requested;
    let hungUp = why === 'SIGHUP';
    running.flushLogs();
    const graceMs = resolved.config.shutdownGraceMs;
    io.stderr.write(
      `oai-proxy: ${why} received, finishing in-flight requests (up to ${graceMs} ms; a second signal stops now)…\n`,
    );
    void stop.hurried.then((again) => {
      if (again === 'SIGHUP') hungUp = true;
      io.stderr.write(`oai-proxy: ${again} received again, cutting in-flight requests now…\n`);
      running.proxy.cutNow(
        `${again} received a second time before SHUTDOWN_GRACE_MS (${graceMs} ms) ran out`,
      );
      // Qdrant indexing gets its own grace after the requests': it ends now too.
      running.vector?.hurry();
    });
    await running.close();
    const { written, spilled } = running.writer.health();
    const { droppedLines, lostRows } = running.logFileHealth();
    const kept = spilled - lostRows;
    const elsewhere =
      (kept > 0 ? `, ${kept} spilled to the log file ${running.logFile} (see spilled_exchange)` : '') +
      (lostRows > 0
        ? `, ${lostRows} lost (the database refused them and the log file could not keep them either)`
        : '');
    const dropped =
      droppedLines > 0 ? `; ${droppedLines} log lines could not be written to ${running.logFile}` : '';
    const { writeInFlight } = running.logFileHealth();
    const hung = writeInFlight
      ? `; a write to ${running.logFile} had not returned after SHUTDOWN_GRACE_MS (${graceMs} ms, at least 1000 ms without progress): a hung disk?`
      : '';
    io.stderr.write(
      `oai-proxy: stopped; ${written} exchanges recorded this run${elsewhere}${dropped}${hung}\n`,
    );
    // That write (a hung disk, an NFS hard mount) keeps the process alive after serve returns, and
    // process.exit() would wait for it too (Node joins its threadpool): once nothing else is left (an
    // unref'd timer runs only then), the signal is raised again with Node's default handling, as a third
    // signal would, after every row was written and this line said.
    // Checked again then: the write may have returned meanwhile, while another handle kept the loop alive.
    if (writeInFlight && why !== 'abort')
      setTimeout(() => {
        if (running.logFileHealth().writeInFlight) process.kill(process.pid, why);
      }, 1000).unref();
    if (hungUp) releaseHungUpTerminal();
    return 0;
  } finally {
    stop.dispose();
  }
}

/**
 * Points the standard descriptors that are terminals at /dev/null. Called last, after a SIGHUP: Node 20
 * restores the terminal's settings at exit and aborts (SIGABRT, exit 134, after every row was written)
 * when the terminal was hung up (nodejs/node#51519); it skips descriptors that no longer name the file
 * they named at start-up.
 */
function releaseHungUpTerminal(): void {
  if (process.platform === 'win32') return;
  for (const fd of [0, 1, 2]) {
    try {
      if (!fstatSync(fd).isCharacterDevice()) continue;
      closeSync(fd);
      openSync('/dev/null', 'r+'); // the lowest free descriptor: fd again
    } catch {
      // Closed already, or /dev/null missing: nothing to restore at exit, or nothing more to do.
    }
  }
}

/** Exchange fields the console's one-line message already says (the log file keeps them all). */
const CONSOLE_HIDDEN_FIELDS = Object.keys(
  exchangeLogLine({ durationMs: 0, ttfbMs: null } as ExchangeRecord),
).join(',');

async function prettyStream(dest: CliIo['stderr'], colorize: boolean): Promise<NodeJS.WritableStream> {
  const { default: pretty } = await import('pino-pretty');
  // pino-pretty writes to a stream; CliIo only promises write().
  const destination =
    typeof (dest as Partial<NodeJS.WritableStream>).on === 'function'
      ? dest
      : new Writable({
          write(chunk, _encoding, done) {
            dest.write(String(chunk));
            done();
          },
        });
  return pretty({
    colorize,
    destination: destination as any,
    ignore: `pid,hostname,${CONSOLE_HIDDEN_FIELDS}`,
    translateTime: 'HH:MM:ss.l',
    sync: true,
  });
}

const LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal'];

/** True when a console at `consoleLevel` prints info lines. */
function showsInfo(consoleLevel: string): boolean {
  const i = LEVELS.indexOf(consoleLevel);
  return i !== -1 && i <= LEVELS.indexOf('info');
}

/** The logger's own level: the console's when lower than info (the log file always gets info). */
function minLevel(consoleLevel: string): string {
  return showsInfo(consoleLevel) ? consoleLevel : 'info';
}
