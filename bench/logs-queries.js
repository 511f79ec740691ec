#!/usr/bin/env node
// Benchmarks for `oai-proxy logs` (issue 4). Runs against the built CLI in dist/ (`npm run build` first).
//
//   node bench/logs-queries.js generate [--rows 1000000] [--db bench/results/logs-queries-1m.db] [--body-bytes 800]
//   node bench/logs-queries.js queries  [--db bench/results/logs-queries-1m.db] [--runs 5]
//   node bench/logs-queries.js writes   [--write-rows 50000] [--body-bytes 2048]
//   node bench/logs-queries.js all      (generate if the database is missing, then queries and writes)
//   node bench/logs-queries.js --quick  (all of it once on 20,000 rows in a temp file: proves the script works)
//
// `--db postgres://…` runs `generate` and `queries` against PostgreSQL instead (an existing database;
// `generate` empties its exchanges table first, then inserts as the batched writer does: 500-row INSERTs,
// the GIN search index maintained as rows go in).
//
// `generate` writes synthetic exchanges spread over the last 30 days through the recorder's own insert
// statement (so the FTS triggers and indexes of the real schema do their work). `queries` times the
// commands the issue names, in-process through the CLI's `main()` (a fresh read-only open each run), after
// rolling up the closed hours as `serve` does in the background. `writes` measures the batched recorder
// (`createExchangeWriter`) on the 0001 schema, with every migration, and with every row landing late in a
// rolled-up hour (the rollup trigger's slow path).
import { existsSync, mkdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const dist = resolve(process.env.OAI_PROXY_DIST ?? join(root, 'dist'));
const load = (p) => import(pathToFileURL(join(dist, p)).href);

const args = process.argv.slice(2);
const mode = args[0] && !args[0].startsWith('-') ? args.shift() : 'all';
{
  // The usage is the comment at the top of this file.
  const usage = () =>
    readFileSync(fileURLToPath(import.meta.url), 'utf8')
      .split('\n')
      .slice(3, 8)
      .map((l) => l.replace(/^\/\/ {3}/, ''))
      .join('\n');
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(`usage:\n${usage()}\n`);
    process.exit(0);
  }
  const VALUE_FLAGS = ['--rows', '--db', '--body-bytes', '--runs', '--write-rows'];
  let bad = ['generate', 'queries', 'writes', 'all'].includes(mode) ? null : `unknown mode ${mode}`;
  for (let i = 0; i < args.length && !bad; i++) {
    if (VALUE_FLAGS.includes(args[i])) {
      if (args[i + 1] === undefined || args[i + 1].startsWith('--')) bad = `${args[i]} needs a value`;
      i++;
    } else if (args[i] !== '--quick') bad = `unknown argument ${args[i]}`;
  }
  if (bad) {
    process.stderr.write(`logs-queries: ${bad}\nusage:\n${usage()}\n`);
    process.exit(2);
  }
}
const flag = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const MODELS = [
  ['gpt-4', 'gpt-4', 0.1],
  ['gpt-4o', 'gpt-4o', 0.35],
  ['gpt-4o-mini', 'gpt-4o-mini', 0.35],
  ['fast', 'gpt-4o-mini', 0.1],
  ['text-embedding-3-small', 'text-embedding-3-small', 0.1],
];
const WORDS = Array.from({ length: 3000 }, (_, i) => syllables(i));

function syllables(n) {
  const s = ['ka', 'lo', 'mi', 'ne', 'ru', 'ta', 'so', 'vi', 'da', 'pe', 'zu', 'ho', 'ba', 'ge', 'fi', 'wo'];
  let w = '';
  let x = n + 17;
  do {
    w += s[x % 16];
    x = Math.floor(x / 16);
  } while (x > 0);
  return w;
}

/** xorshift32: the same database every run. */
function rng(seed) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 4294967296;
  };
}

function text(rand, bytes) {
  const out = [];
  let n = 0;
  while (n < bytes) {
    // Zipf-ish: common words often, the long tail rarely.
    const w = WORDS[Math.floor(WORDS.length * rand() ** 3)];
    out.push(w);
    n += w.length + 1;
  }
  return out.join(' ');
}

function pick(rand) {
  let r = rand();
  for (const m of MODELS) {
    r -= m[2];
    if (r <= 0) return m;
  }
  return MODELS[0];
}

/** One synthetic ExchangeRecord; `i` spreads them evenly over `spanMs` ending at `end`. */
function makeRecord(rand, i, rows, end, spanMs, bodyBytes, newId) {
  const startedAt = Math.floor(end - spanMs + (spanMs * i) / rows);
  const [model, upstreamModel] = pick(rand);
  const embedding = model.startsWith('text-embedding');
  const stream = !embedding && rand() < 0.5;
  const r = rand();
  const status = r < 0.94 ? 200 : r < 0.97 ? 429 : r < 0.985 ? 400 : r < 0.995 ? 500 : null;
  const error = status === null ? (rand() < 0.5 ? 'upstream_timeout' : 'upstream_reset') : null;
  const prompt = 20 + Math.floor(rand() * 2000);
  const completion = embedding ? 0 : 5 + Math.floor(rand() * 800);
  const duration = Math.floor(200 + 4000 * rand() ** 2);
  // A rare marker word (about 1 row in 10,000) for the selective --grep case.
  const question = text(rand, bodyBytes / 2) + (rand() < 0.0001 ? ' zanzibar' : '');
  const answer = text(rand, bodyBytes / 2);
  const requestBody = JSON.stringify({
    model,
    messages: [{ role: 'user', content: question }],
    ...(stream ? { stream: true } : {}),
  });
  const responseBody = stream
    ? `data: {"choices":[{"delta":{"content":"${answer.slice(0, 40)}"}}]}\n\ndata: [DONE]\n\n`
    : JSON.stringify({
        id: 'chatcmpl-bench',
        object: 'chat.completion',
        model: upstreamModel,
        choices: [{ index: 0, message: { role: 'assistant', content: answer }, finish_reason: 'stop' }],
        usage: { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion },
      });
  return {
    id: newId(startedAt),
    startedAt,
    durationMs: duration,
    ttfbMs: stream ? Math.floor(duration * 0.2) : Math.floor(duration * 0.9),
    method: 'POST',
    path: embedding ? '/v1/embeddings' : '/v1/chat/completions',
    query: null,
    clientAddr: '127.0.0.1',
    status,
    requestHeadersJson: '{"content-type":"application/json","authorization":"[redacted]"}',
    responseHeadersJson: status
      ? JSON.stringify({ 'content-type': stream ? 'text/event-stream' : 'application/json' })
      : null,
    requestBody,
    requestBytes: requestBody.length,
    requestTruncated: false,
    responseBody: status ? responseBody : null,
    responseBytes: status ? responseBody.length : 0,
    responseTruncated: false,
    model,
    upstreamModel,
    upstream: 'default',
    modelUnknown: false,
    stream,
    promptTokens: status === 200 ? prompt : null,
    completionTokens: status === 200 ? completion : null,
    totalTokens: status === 200 ? prompt + completion : null,
    user: `user-${Math.floor(rand() * 50)}`,
    error,
    errorMessage: error ? 'synthetic failure' : null,
    assembled:
      stream && status === 200
        ? {
            kind: 'chat.completion',
            content: answer,
            tool_calls: [],
            finish_reason: 'stop',
            usage: null,
            complete: true,
            events: 20,
          }
        : null,
    internal: false,
  };
}

function idFactory() {
  const A = '0123456789abcdefghjkmnpqrstvwxyz';
  let n = 0;
  return (ms) => {
    let t = '';
    let x = ms;
    for (let i = 0; i < 10; i++) {
      t = A[x % 32] + t;
      x = Math.floor(x / 32);
    }
    let c = '';
    let y = n++;
    for (let i = 0; i < 16; i++) {
      c = A[y % 32] + c;
      y = Math.floor(y / 32);
    }
    return t + c;
  };
}

const isPostgres = (db) => /^postgres(ql)?:\/\//i.test(db);
const redact = (db) => db.replace(/\/\/([^:/@]+):([^@/]+)@/, '//$1:***@');

async function generatePostgres(url, rows, bodyBytes) {
  const { openStorage } = await load('storage/storage.js');
  const { pgRow } = await load('storage/pg-log-store.js');
  const storage = await openStorage({ kind: 'postgres', url });
  const { sql } = await import('kysely');
  await sql`truncate exchanges`.execute(storage.db);
  const rand = rng(42);
  const newId = idFactory();
  const end = Date.now();
  const t0 = performance.now();
  let recs = [];
  for (let i = 0; i < rows; i++) {
    recs.push(pgRow(makeRecord(rand, i, rows, end, 30 * DAY, bodyBytes, newId)));
    if (recs.length === 500 || i === rows - 1) {
      await storage.db.insertInto('exchanges').values(recs).execute();
      recs = [];
      if ((i + 1) % 10_000 === 0 || i === rows - 1)
        process.stderr.write(`  ${i + 1} rows, ${((performance.now() - t0) / 1000).toFixed(0)} s\r`);
    }
  }
  const secs = (performance.now() - t0) / 1000;
  await sql`vacuum analyze exchanges`.execute(storage.db);
  const { rows: size } = await sql`select pg_total_relation_size('exchanges') as b`.execute(storage.db);
  await storage.close();
  console.log(
    `\ngenerated ${rows} rows in ${secs.toFixed(1)} s (${Math.round(rows / secs)} rows/s, search index ` +
      `maintained on insert); exchanges is ${(Number(size[0].b) / 2 ** 20).toFixed(0)} MiB on ${redact(url)}`,
  );
}

async function generate(dbPath, rows, bodyBytes) {
  if (isPostgres(dbPath)) return generatePostgres(dbPath, rows, bodyBytes);
  const { openDatabase } = await load('storage/database.js');
  const { INSERT_EXCHANGE_SQL, toRow } = await load('storage/log-store.js');
  mkdirSync(dirname(dbPath), { recursive: true });
  for (const suffix of ['', '-wal', '-shm']) rmSync(dbPath + suffix, { force: true });
  const db = await openDatabase(dbPath);
  const insert = db.sqlite.prepare(INSERT_EXCHANGE_SQL);
  const batch = db.sqlite.transaction((recs) => {
    for (const r of recs) insert.run(toRow(r));
  });
  const rand = rng(42);
  const newId = idFactory();
  const end = Date.now();
  const t0 = performance.now();
  let recs = [];
  for (let i = 0; i < rows; i++) {
    recs.push(makeRecord(rand, i, rows, end, 30 * DAY, bodyBytes, newId));
    if (recs.length === 20_000 || i === rows - 1) {
      batch(recs);
      recs = [];
      if ((i + 1) % 100_000 === 0 || i === rows - 1)
        process.stderr.write(`  ${i + 1} rows, ${((performance.now() - t0) / 1000).toFixed(0)} s\r`);
    }
  }
  const secs = (performance.now() - t0) / 1000;
  // What `serve`'s background indexer does (src/storage/search-index.ts), in big batches. The generated
  // bodies hold no backslash, so its escape decoding (migration 0008) would change nothing here.
  const t1 = performance.now();
  const index = db.sqlite.transaction((from, to) => {
    db.sqlite
      .prepare(
        `insert into exchanges_fts (rowid, request, response) select rowid, request_body,
           case when json_valid(assembled) then coalesce(json_extract(assembled, '$.content'), '') || ' ' ||
             coalesce(json_extract(assembled, '$.tool_calls'), '') else response_body end
         from exchanges where rowid > ? and rowid <= ?`,
      )
      .run(from, to);
    db.sqlite.prepare('update exchanges_fts_state set indexed_rowid = ? where id = 1').run(to);
  });
  const max = db.sqlite.prepare('select max(rowid) as m from exchanges').get().m;
  for (let from = 0; from < max; from += 50_000) index(from, Math.min(max, from + 50_000));
  const ftsSecs = (performance.now() - t1) / 1000;
  db.sqlite.pragma('wal_checkpoint(TRUNCATE)');
  await db.close();
  console.log(
    `\ngenerated ${rows} rows in ${secs.toFixed(1)} s (${Math.round(rows / secs)} rows/s), full-text indexed in ` +
      `${ftsSecs.toFixed(1)} s (${Math.round(rows / ftsSecs)} rows/s); ${dbPath} is ` +
      `${(statSync(dbPath).size / 2 ** 20).toFixed(0)} MiB`,
  );
}

/**
 * What `serve`'s background job does for `logs stats` (src/storage/stats-rollup.ts): roll up every closed
 * hour not rolled up yet (all of them after `generate`, none on a second run). Opening the database
 * writable also migrates one generated by an older version.
 */
async function rollUp(dbPath, now = Date.now()) {
  if (isPostgres(dbPath)) return;
  const { openDatabase } = await load('storage/database.js');
  const { StatsRollup } = await load('storage/stats-rollup.js');
  const db = await openDatabase(dbPath);
  const rollup = new StatsRollup(() => db.sqlite);
  const t = performance.now();
  let rows = 0;
  for (let n = rollup.step(50_000, now); n > 0; n = rollup.step(50_000, now)) rows += n;
  const hours = db.sqlite.prepare('select count(distinct hour) as n from exchange_stats').get().n;
  db.sqlite.pragma('wal_checkpoint(TRUNCATE)');
  await db.close();
  if (rows > 0)
    console.log(
      `rolled up ${rows} rows into ${hours} hours for logs stats in ${((performance.now() - t) / 1000).toFixed(1)} s`,
    );
}

/**
 * The commands the issue names. Their windows ("the last hour", "the last 7 days") end at the newest
 * recorded exchange, so a database generated days ago is timed as if it had just been recorded.
 */
async function queries(dbPath, runs) {
  const { openStorage } = await load('storage/storage.js');
  const storage = await openStorage(
    isPostgres(dbPath) ? { kind: 'postgres', url: dbPath } : { kind: 'sqlite', path: dbPath },
    { readonly: true },
  );
  const row = await storage.db
    .selectFrom('exchanges')
    .select((eb) => eb.fn.max('started_at').as('m'))
    .executeTakeFirstOrThrow();
  await storage.close();
  const newest = Number(row.m) + 1;
  await rollUp(dbPath, newest);
  const ago = (ms) => new Date(newest - ms).toISOString();
  const { main } = await load('cli.js');
  const cases = [
    ['logs --model gpt-4 --since 1h --json', ['logs', '--model', 'gpt-4', '--since', ago(HOUR), '--json']],
    ['logs --json (latest 50)', ['logs', '--json']],
    ['logs --status 5xx --since 1d --json', ['logs', '--status', '5xx', '--since', ago(DAY), '--json']],
    ['logs stats --since 7d', ['logs', 'stats', '--since', ago(7 * DAY)]],
    ['logs stats --since 7d --by day', ['logs', 'stats', '--since', ago(7 * DAY), '--by', 'day']],
    ['logs stats --since 7d --model gpt-4o', ['logs', 'stats', '--since', ago(7 * DAY), '--model', 'gpt-4o']],
    ['logs --grep zanzibar (rare word)', ['logs', '--grep', 'zanzibar', '--json']],
    ['logs --grep <common word>', ['logs', '--grep', WORDS[0], '--json']],
    ['logs --grep <mid word> --since 1d', ['logs', '--grep', WORDS[400], '--since', ago(DAY), '--json']],
  ];
  console.log(
    `\nquery timings on ${redact(dbPath)} (median of ${runs}, ms, in-process main(), read-only open included)`,
  );
  for (const [label, argv] of cases) {
    const times = [];
    let lines = 0;
    for (let i = 0; i < runs; i++) {
      let out = '';
      const io = {
        stdout: {
          write: (s) => {
            out += s;
            return true;
          },
          isTTY: false,
        },
        stderr: { write: () => true, isTTY: false },
        env: { ...process.env, DATABASE_URL: dbPath },
        cwd: process.cwd(),
      };
      const t = performance.now();
      const code = await main([...argv, '--db', dbPath], io);
      times.push(performance.now() - t);
      if (code !== 0) throw new Error(`${label} exited ${code}`);
      lines = out.length;
    }
    times.sort((a, b) => a - b);
    const med = times[Math.floor(times.length / 2)];
    console.log(`  ${label.padEnd(40)} ${med.toFixed(0).padStart(6)} ms   (${lines} bytes of output)`);
  }
}

async function writes(rows, bodyBytes) {
  const { openDatabase } = await load('storage/database.js');
  const { createExchangeWriter } = await load('storage/log-store.js');
  const dir = join(tmpdir(), `oai-proxy-bench-${process.pid}`);
  mkdirSync(dir, { recursive: true });
  console.log(
    `\nrecorder throughput: ${rows} rows, ~${bodyBytes} B request + ~${bodyBytes} B response bodies`,
  );
  try {
    const variants = [
      [
        '0001 schema (started_at index only)',
        (db) => {
          for (const t of [
            'exchanges_fts_delete',
            'exchange_stats_after_insert',
            'exchange_stats_after_delete',
          ])
            db.sqlite.exec(`drop trigger if exists ${t}`);
          db.sqlite.exec('drop index if exists exchanges_time_cover');
          db.sqlite.exec('create index if not exists exchanges_started_at on exchanges (started_at)');
        },
      ],
      ['all migrations (covering index, triggers)', () => undefined],
      [
        'every row late into a rolled-up hour',
        (db) => db.sqlite.exec(`update exchange_stats_state set sealed_until = ${Number.MAX_SAFE_INTEGER}`),
      ],
    ];
    for (const [i, [variant, setup]] of variants.entries()) {
      const path = join(dir, `${i}.db`);
      const db = await openDatabase(path);
      setup(db);
      const rand = rng(7);
      const newId = idFactory();
      const recs = Array.from({ length: rows }, (_, i) =>
        makeRecord(rand, i, rows, Date.now(), 3_600_000, bodyBytes * 2, newId),
      );
      const writer = createExchangeWriter({ sqlite: db.sqlite, flushIntervalMs: 50, queueMax: rows * 2 });
      const t = performance.now();
      for (const r of recs) writer.record(r);
      writer.flush();
      const secs = (performance.now() - t) / 1000;
      writer.close();
      await db.close();
      console.log(
        `  ${variant.padEnd(40)} ${Math.round(rows / secs)
          .toString()
          .padStart(7)} rows/s`,
      );
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

// `--quick` (what `npm run bench -- --quick` runs in CI): every step once, on 20,000 rows in a temp file.
const quick = args.includes('--quick');
const quickDir = quick ? join(tmpdir(), `oai-proxy-bench-logs-${process.pid}`) : null;
const dbArg = flag(
  'db',
  quickDir ? join(quickDir, 'logs.db') : join(root, 'bench', 'results', 'logs-queries-1m.db'),
);
const dbPath = isPostgres(dbArg) ? dbArg : resolve(dbArg);
try {
  if (mode === 'generate' || (mode === 'all' && !isPostgres(dbPath) && !existsSync(dbPath)))
    await generate(dbPath, Number(flag('rows', quick ? 20_000 : 1_000_000)), Number(flag('body-bytes', 800)));
  if (mode === 'queries' || mode === 'all') await queries(dbPath, Number(flag('runs', quick ? 1 : 5)));
  if (mode === 'writes' || mode === 'all')
    await writes(Number(flag('write-rows', quick ? 5000 : 50_000)), Number(flag('body-bytes', 2048)));
} finally {
  if (quickDir) rmSync(quickDir, { recursive: true, force: true });
}
