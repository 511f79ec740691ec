import { existsSync, statSync } from 'node:fs';
import type { Command } from 'commander';
import type { CommandRunner } from '../cli.js';
import {
  checkBaseUrls,
  type ResolvedConfig,
  requireFlagValue,
  resolveConfig,
  settingSource,
} from '../config/load.js';
import { redactUrl, resolveDatabaseLocation } from '../config/paths.js';
import { unusedSettings } from '../config/schema.js';
import { OaiProxyError } from '../errors.js';
import { createDispatcher } from '../proxy/forward.js';
import { type OpenDatabase, openDatabase } from '../storage/database.js';
import type { ExchangeRecord } from '../storage/exchange-record.js';
import { INSERT_EXCHANGE_SQL, toRow } from '../storage/log-store.js';
import type { ExchangesTable } from '../storage/tables.js';
import { fromRow, INDEXABLE_SQL } from '../vector/exchange-text.js';
import { indexExchanges } from '../vector/indexer.js';
import { createQdrantStore, type VectorStore } from '../vector/qdrant-store.js';
import type { CliIo } from './io.js';
import type { LogsExtensions } from './logs.js';
import { renderExchangeTable, toExchangeJson } from './logs-format.js';
import { parseTimeBound } from './logs-options.js';
import { useColor } from './terminal-text.js';
import {
  createVectorServices,
  REINDEX_ENABLE_HINT,
  requireQdrant,
  type VectorServices,
} from './vector-setup.js';

export interface LogsVectorCommonOptions {
  config?: string;
  db?: string;
}

export interface LogsSearchOptions extends LogsVectorCommonOptions {
  limit?: string;
  model?: string;
  since?: string;
  json?: boolean;
}

export interface LogsReindexOptions extends LogsVectorCommonOptions {
  since?: string;
  batchSize?: string;
}

/** A database, dispatcher and vector services for one command run. */
interface VectorSession {
  resolved: ResolvedConfig;
  database: OpenDatabase;
  services: VectorServices;
  close(): Promise<void>;
}

async function openVectorSession(
  options: LogsVectorCommonOptions,
  io: CliIo,
  command: 'oai-proxy logs search' | 'oai-proxy logs reindex',
  enableHint?: string,
): Promise<VectorSession> {
  const what = `\`${command}\``;
  const resolved = resolveConfig({
    configPath: options.config,
    flags: { db: options.db },
    env: io.env,
    cwd: io.cwd,
    unused: unusedSettings(command),
  });
  for (const w of resolved.warnings) io.stderr.write(`warning: ${w}\n`);
  // The PostgreSQL limit first: "set QDRANT_URL" would only lead to it.
  const location = resolveDatabaseLocation(
    resolved.config.databaseUrl,
    resolved.env,
    io.cwd,
    settingSource(resolved, 'databaseUrl'),
  );
  if (location.kind !== 'sqlite')
    throw new OaiProxyError(
      'config_invalid',
      `${settingSource(resolved, 'databaseUrl')} ${redactUrl(location.url)} is PostgreSQL: semantic search works with an SQLite database only in this version; point --db at the SQLite file serve records to`,
    );
  requireQdrant(resolved, what, enableHint);
  // A ?query in either URL is never sent (a key in it would fail as a puzzling 401): refused as by serve.
  checkBaseUrls(resolved, { upstreams: [resolved.config.embeddingUpstream || 'default'], qdrant: true });
  if (location.path !== ':memory:' && (!existsSync(location.path) || statSync(location.path).size === 0)) {
    throw new OaiProxyError(
      'database_not_found',
      `No database at ${location.path}; start \`oai-proxy serve\` first, or point --db / DATABASE_URL at an existing file`,
    );
  }
  const database = await openDatabase(location.path);
  const c = resolved.config;
  const dispatcher = createDispatcher({
    connectTimeoutMs: c.upstreamConnectTimeoutMs,
    headersTimeoutMs: Math.min(c.upstreamHeadersTimeoutMs, 120_000),
    idleTimeoutMs: Math.min(c.upstreamIdleTimeoutMs, 120_000),
  });
  const insert = database.sqlite.prepare(INSERT_EXCHANGE_SQL);
  // The command's own embedding calls are recorded like the proxy's: internal exchanges.
  const record = (r: ExchangeRecord) => {
    try {
      insert.run(toRow(r));
    } catch {
      // A read-only or busy database must not fail the search.
    }
  };
  try {
    const services = await createVectorServices(resolved, { sqlite: database.sqlite, dispatcher, record });
    return {
      resolved,
      database,
      services,
      async close() {
        await dispatcher.close().catch(() => undefined);
        await database.close();
      },
    };
  } catch (err) {
    await dispatcher.close().catch(() => undefined);
    await database.close();
    throw err;
  }
}

function positiveInt(value: string | undefined, flag: string, fallback: number, max: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > max)
    throw new OaiProxyError('usage', `${flag} must be a whole number from 1 to ${max}, got "${value}"`);
  return n;
}

/** `oai-proxy logs search TEXT`: embed TEXT, query Qdrant with the filters, print the matching exchanges ranked. */
export async function runLogsSearch(text: string, options: LogsSearchOptions, io: CliIo): Promise<number> {
  if (!text.trim()) throw new OaiProxyError('usage', 'logs search needs a non-empty TEXT to search for');
  const limit = positiveInt(options.limit, '--limit', 10, 1000);
  const since =
    options.since !== undefined ? new Date(parseTimeBound(options.since, '--since', Date.now())) : undefined;
  if (options.model !== undefined)
    requireFlagValue(options.model, '--model', 'a model name', '--model gpt-4o');
  const session = await openVectorSession(options, io, 'oai-proxy logs search');
  try {
    const { services, database } = session;
    const [vector] = await services.embedder.embed([text]);
    const hits = await services.store.search(vector, { limit, model: options.model, since });
    const byId = new Map<string, ExchangesTable>();
    if (hits.length > 0) {
      const ids = hits.map((h) => h.exchangeId);
      const rows = database.sqlite
        .prepare(`select * from exchanges where id in (${ids.map(() => '?').join(', ')})`)
        .all(...ids) as ExchangesTable[];
      for (const r of rows) byId.set(r.id, r);
    }
    const found = hits.filter((h) => byId.has(h.exchangeId));
    const missing = hits.length - found.length;
    const results = found.map((h) => ({ ...toExchangeJson(byId.get(h.exchangeId)!), score: h.score }));
    if (options.json) {
      for (const r of results) io.stdout.write(`${JSON.stringify(r)}\n`);
    } else if (results.length === 0) {
      io.stderr.write(
        `No matching exchanges in Qdrant collection ${services.store.collection}${missing ? '' : '; if exchanges were recorded before QDRANT_URL was set, run `oai-proxy logs reindex`'}\n`,
      );
    } else {
      io.stdout.write(
        renderExchangeTable(results, {
          color: useColor(io.env, io.stdout),
          extraColumns: [{ header: 'score', value: (r) => r.score.toFixed(3) }],
        }),
      );
    }
    if (missing > 0)
      io.stderr.write(
        `note: ${missing} hit(s) refer to exchanges no longer in ${database.path} (pruned, or another database)\n`,
      );
    return 0;
  } finally {
    await session.close();
  }
}

/** `oai-proxy logs reindex`: index every recorded exchange not yet in Qdrant, in batches, resumably. */
export async function runLogsReindex(options: LogsReindexOptions, io: CliIo): Promise<number> {
  const sinceMs =
    options.since !== undefined ? parseTimeBound(options.since, '--since', Date.now()) : undefined;
  const batchSize = positiveInt(options.batchSize, '--batch-size', 64, 2048);
  const session = await openVectorSession(options, io, 'oai-proxy logs reindex', REINDEX_ENABLE_HINT);
  try {
    const { services } = session;
    const { state } = services;
    // A collection that does not exist (new name, new or emptied Qdrant) holds nothing: index everything.
    let exists: boolean;
    try {
      exists = await services.store.exists();
    } catch (err) {
      throw new OaiProxyError(
        'vector_error',
        `${(err as Error).message}\nNothing was indexed; fix the cause and run \`oai-proxy logs reindex\` again.`,
        { cause: err },
      );
    }
    if (exists) state.claimUnclaimed();
    else state.reset();
    const total = state.countPending({ eligibleSql: INDEXABLE_SQL, sinceMs });
    const collection = services.store.collection;
    if (total === 0) {
      io.stdout.write(
        `Nothing to index: every recorded exchange is already in Qdrant collection ${collection}.\n`,
      );
      return 0;
    }
    const progress = createProgress(io, total);
    let done = 0;
    let indexed = 0;
    let skipped = 0;
    let cursor: { startedAt: number; id: string } | undefined;
    for (;;) {
      const rows = state.pending({ eligibleSql: INDEXABLE_SQL, sinceMs, after: cursor, limit: batchSize });
      if (rows.length === 0) break;
      const last = rows[rows.length - 1];
      cursor = { startedAt: last.started_at, id: last.id };
      try {
        const r = await indexExchanges(rows.map(fromRow), {
          embedder: services.embedder,
          store: services.store,
          outcomes: { mark: (o) => void state.mark(o) },
        });
        indexed += r.indexed;
        skipped += r.skipped;
      } catch (err) {
        progress.end();
        throw new OaiProxyError(
          'vector_error',
          `${(err as Error).message}\nIndexed ${indexed} of ${total} before the failure; fix the cause and run \`oai-proxy logs reindex\` again to resume.`,
          { cause: err },
        );
      }
      done += rows.length;
      progress.update(done);
    }
    progress.end();
    io.stdout.write(
      `Indexed ${indexed} exchange${indexed === 1 ? '' : 's'} into Qdrant collection ${collection}${skipped ? ` (${skipped} without text to index skipped)` : ''}.\n`,
    );
    return 0;
  } finally {
    await session.close();
  }
}

/** A progress bar on a terminal's stderr; plain lines every ~10% otherwise. */
function createProgress(io: CliIo, total: number): { update(done: number): void; end(): void } {
  const tty = !!io.stderr.isTTY;
  let lastTenth = -1;
  let drawn = false;
  return {
    update(done) {
      const pct = Math.min(100, Math.floor((done / total) * 100));
      if (tty) {
        const width = 30;
        const filled = Math.round((pct / 100) * width);
        io.stderr.write(
          `\rreindex [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${total} ${pct}%`,
        );
        drawn = true;
      } else if (Math.floor(pct / 10) !== lastTenth) {
        lastTenth = Math.floor(pct / 10);
        io.stderr.write(`reindex: ${done}/${total} (${pct}%)\n`);
      }
    },
    end() {
      if (tty && drawn) io.stderr.write('\n');
    },
  };
}

/** Add `logs search` and `logs reindex` to the `logs` command. */
export function registerLogsVectorCommands(logs: Command, io: CliIo, run: CommandRunner): void {
  logs
    .command('search')
    .description('Find exchanges by meaning (semantic search in Qdrant; needs QDRANT_URL)')
    .argument('<text>', 'what to look for, in your own words')
    .option('-n, --limit <n>', 'most results to print (default 10)')
    .option('-m, --model <model>', 'only exchanges that requested this model')
    .option('--since <when>', 'only exchanges since then (e.g. 2h, 7d, 2025-01-31)')
    .option('--json', 'one JSON object per line (the `logs --json` fields plus score)')
    .option('--db <path>', 'SQLite database path or URL (DATABASE_URL)')
    .option('-c, --config <path>', 'config file (OAI_PROXY_CONFIG)')
    .addHelpText(
      'after',
      `
Embeds TEXT with EMBEDDING_MODEL through the upstream, asks Qdrant (QDRANT_URL, QDRANT_COLLECTION) for the
nearest exchanges with the filters applied there, and prints them best first with their similarity score.
Exchanges recorded while Qdrant was off or failing are found after \`oai-proxy logs reindex\`.

Examples:
  $ oai-proxy logs search "the conversation about the refund policy"
  $ oai-proxy logs search "sql injection" --model gpt-4o --since 7d --limit 5
  $ oai-proxy logs search "invoice totals" --json | jq .score`,
    )
    .action((text: string, opts: LogsSearchOptions) => run(() => runLogsSearch(text, opts, io)));

  logs
    .command('reindex')
    .description(
      'Index recorded exchanges not yet in Qdrant (after an outage, or when enabling it); resumable',
    )
    .option('--since <when>', 'only exchanges since then (e.g. 24h, 30d, 2025-01-31)')
    .option('--batch-size <n>', 'exchanges embedded per request (default 64)')
    .option('--db <path>', 'SQLite database path or URL (DATABASE_URL)')
    .option('-c, --config <path>', 'config file (OAI_PROXY_CONFIG)')
    .addHelpText(
      'after',
      `
Each batch is marked in the database once it is in Qdrant, so an interrupted run resumes where it stopped.
Exchanges without text to embed (e.g. tool-only requests) are marked skipped.

Examples:
  $ QDRANT_URL=http://127.0.0.1:6333 oai-proxy logs reindex
  $ oai-proxy logs reindex --since 7d`,
    )
    .action((opts: LogsReindexOptions) => run(() => runLogsReindex(opts, io)));
}

/**
 * The `logs prune` hook: with QDRANT_URL set, delete each pruned batch's points (and their index state).
 * It never rejects: Qdrant trouble is one warning on stderr, and the prune goes on. Without QDRANT_URL
 * it does nothing and loads nothing.
 */
export function createPruneVectorHook(): NonNullable<LogsExtensions['onPruned']> {
  let store: Promise<VectorStore> | null = null;
  let gaveUp = false;
  return async (ids, { resolved, io }) => {
    const c = resolved.config;
    if (!c.qdrantUrl || gaveUp || ids.length === 0) return;
    try {
      // A ?query in QDRANT_URL is never sent: the reason, rather than Qdrant's 401.
      checkBaseUrls(resolved, { upstreams: [], qdrant: true });
      store ??= createQdrantStore({
        url: c.qdrantUrl,
        apiKey: c.qdrantApiKey,
        collection: c.qdrantCollection,
      });
      await (await store).deleteExchanges(ids);
    } catch (err) {
      gaveUp = true;
      io.stderr.write(
        `warning: pruned exchanges' points could not be deleted from Qdrant collection ${c.qdrantCollection}: ${(err as Error).message}; the rows are pruned anyway and \`logs search\` skips their points\n`,
      );
    }
  };
}
