// `npm run bench [-- --quick] [-- --only=http,streams,recorder,concurrency,upload,logs] [-- --profile]`
// `npm run bench -- --only=instructions` (needs valgrind; not part of the default set)
//
// Starts on 127.0.0.1 a fake upstream, the bare pipe proxy (the floor) and `oai-proxy serve` with full
// recording, each as its own child process, drives them in the same run (interleaved, after a warm-up),
// prints one table with ratios and writes the same as JSON under bench/results/. Run `npm run build` first.
import { execFileSync, spawn } from 'node:child_process';
import {
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import autocannon from 'autocannon';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const argv = process.argv.slice(2);
const flag = (name) => argv.includes(`--${name}`);
const option = (name) => argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1];
const quick = flag('quick');
const only = option('only')?.split(',') ?? ['http', 'streams', 'recorder', 'concurrency', 'upload', 'logs'];
const driver = option('driver') ?? 'autocannon';
const PARTS = ['http', 'streams', 'recorder', 'concurrency', 'upload', 'logs', 'instructions'];
const USAGE = `usage: npm run bench [-- --quick] [-- --only=PART,...] [-- --driver=wrk] [-- --profile]
  --quick        every part once, briefly (about a minute; what .ci/run runs; no thresholds)
  --only=PARTS   comma-separated, from: http, streams, recorder, concurrency, upload, logs (the default
                 set) and instructions (instructions per request under callgrind; needs valgrind)
  --driver=wrk   drive the non-streamed load with wrk (on PATH; Debian: apt-get install wrk) instead of
                 autocannon in this process (the default, --driver=autocannon)
  --profile      write node --cpu-prof profiles of oai-proxy to bench/results/profiles/
Run \`npm run build\` first. Prints a table and writes the same as JSON under bench/results/.`;
if (flag('help') || argv.includes('-h')) {
  process.stdout.write(`${USAGE}\n`);
  process.exit(0);
}
{
  const unknown = argv.filter(
    (a) => a !== '--quick' && a !== '--profile' && !a.startsWith('--only=') && !a.startsWith('--driver='),
  );
  const badParts = only.filter((p) => !PARTS.includes(p));
  const problem =
    unknown.length > 0
      ? `unknown argument ${unknown.join(' ')}`
      : badParts.length > 0
        ? `unknown part ${badParts.join(', ')} in --only`
        : !['autocannon', 'wrk'].includes(driver)
          ? `unknown --driver ${driver} (autocannon or wrk)`
          : null;
  if (problem) {
    process.stderr.write(`bench: ${problem}\n${USAGE}\n`);
    process.exit(2);
  }
  if (driver === 'wrk') {
    try {
      execFileSync('wrk', ['--version'], { stdio: 'ignore' });
    } catch (err) {
      // `wrk --version` exits 1 after printing it; only a missing binary is ENOENT.
      if (err.code === 'ENOENT') {
        process.stderr.write('bench: --driver=wrk needs wrk on PATH (Debian: apt-get install wrk)\n');
        process.exit(2);
      }
    }
  }
}
const profileDir = flag('profile') ? join(root, 'bench', 'results', 'profiles') : null;

const plan = quick
  ? {
      warmupS: 1,
      durationS: 2,
      rounds: 1,
      streams: 24,
      recorderS: 1,
      concStreams: 1000,
      concChunks: 10,
      uploadMb: 200,
    }
  : {
      warmupS: 2,
      durationS: 5,
      rounds: 5,
      streams: 80,
      recorderS: 5,
      concStreams: 1000,
      concChunks: 20,
      uploadMb: 200,
    };
const STREAM = { chunks: 20, intervalMs: 10, concurrency: 4 };
const CONC_INTERVAL_MS = 100;

const tmp = mkdtempSync(join(os.tmpdir(), 'oai-proxy-bench-'));
const children = new Set();
const CLK_TCK = 100; // Linux USER_HZ; /proc times are in these ticks

const REQUEST_BODY = JSON.stringify({
  model: 'gpt-4o-mini',
  messages: [
    { role: 'system', content: 'You are a helpful assistant that answers briefly.' },
    { role: 'user', content: 'Give me one sentence about why benchmarks should be reproducible.' },
  ],
  temperature: 0.2,
  max_tokens: 64,
});
const STREAM_BODY = JSON.stringify({
  ...JSON.parse(REQUEST_BODY),
  stream: true,
  stream_options: { include_usage: true },
});
const CLIENT_HEADERS = { 'content-type': 'application/json', authorization: 'Bearer sk-bench-fake-key' };

// ---------------------------------------------------------------- child processes

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Spawn a node child whose stdout+stderr go to a file; resolve once `pattern` shows its port. */
async function spawnServer(
  name,
  args,
  { env = {}, nodeArgs = [], pattern = /listening (\d+)/, wrap = [], startTimeoutMs = 20_000 } = {},
) {
  const logPath = join(tmp, `${name}-${children.size}.out`);
  const fd = openSync(logPath, 'w');
  const command = [...wrap, process.execPath, ...nodeArgs, ...args];
  const proc = spawn(command[0], command.slice(1), {
    cwd: tmp,
    env: {
      PATH: process.env.PATH,
      HOME: tmp,
      XDG_CONFIG_HOME: join(tmp, 'config'),
      XDG_DATA_HOME: join(tmp, 'data'),
      ...env,
    },
    stdio: ['ignore', fd, fd],
  });
  closeSync(fd);
  children.add(proc);
  let exited = null;
  proc.once('exit', (code, signal) => {
    exited = { code, signal };
    children.delete(proc);
  });
  const deadline = Date.now() + startTimeoutMs;
  for (;;) {
    const out = existsSync(logPath) ? readFileSync(logPath, 'utf8') : '';
    const m = pattern.exec(out);
    if (m) {
      const port = Number(m[1]);
      return {
        name,
        pid: proc.pid,
        origin: `http://127.0.0.1:${port}`,
        output: () => readFileSync(logPath, 'utf8'),
        stop: () => stopChild(proc),
      };
    }
    if (exited || Date.now() > deadline)
      throw new Error(
        `${name} did not start (${exited ? `exit ${exited.code ?? exited.signal}` : 'timeout'}):\n${out.slice(-2000)}`,
      );
    await sleep(30);
  }
}

function stopChild(proc) {
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(() => proc.kill('SIGKILL'), 10_000);
    proc.once('exit', () => {
      clearTimeout(t);
      resolve();
    });
    proc.kill('SIGTERM');
  });
}

const startUpstream = () => spawnServer('upstream', [join(root, 'bench', 'fake-upstream.js')]);
const startBare = (upstream, spawnOptions = {}) =>
  spawnServer('bare-pipe', [join(root, 'bench', 'bare-pipe.js'), upstream.origin], spawnOptions);
let proxyCount = 0;
const startProxy = (upstream, env = {}, { name = 'oai-proxy', db, ...spawnOptions } = {}) => {
  const n = proxyCount++;
  return spawnServer(
    name,
    [
      join(root, 'bin', 'oai-proxy.js'),
      'serve',
      '--host',
      '127.0.0.1',
      '--port',
      '0',
      '--upstream',
      `${upstream.origin}/v1`,
      '--db',
      db ?? join(tmp, `proxy-${n}.db`),
      '--log-file',
      join(tmp, `proxy-${n}.log`),
    ],
    {
      env,
      nodeArgs: profileDir ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`] : [],
      pattern: /listening on http:\/\/127\.0\.0\.1:(\d+)/,
      ...spawnOptions,
    },
  );
};

// With OAI_PROXY_TEST_PG_URL (scripts/pg-test-cluster.sh), `oai-proxy-pg` records to PostgreSQL (a fresh
// database, dropped afterwards) and runs next to the SQLite proxy and the bare pipe in the same rounds.
const pgUrl = process.env.OAI_PROXY_TEST_PG_URL;
async function pgBenchDatabase() {
  const { default: pg } = await import('pg');
  const name = `oai_bench_${process.pid}_${Date.now()}`;
  const admin = async (q) => {
    const c = new pg.Client({ connectionString: pgUrl });
    await c.connect();
    try {
      await c.query(q);
    } finally {
      await c.end();
    }
  };
  await admin(`create database ${name}`);
  const url = new URL(pgUrl);
  url.pathname = `/${name}`;
  return { url: url.toString(), drop: () => admin(`drop database if exists ${name} with (force)`) };
}

/** User + system CPU seconds from a /proc stat file (a process's or one thread's). */
function statCpuS(path) {
  const stat = readFileSync(path, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
}

/** CPU seconds (user+system) and RSS / peak RSS in MB of a process, from /proc (null elsewhere). */
function procStats(pid) {
  try {
    const cpuS = statCpuS(`/proc/${pid}/stat`);
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (key) => Number(new RegExp(`${key}:\\s+(\\d+)`).exec(status)?.[1] ?? 0);
    return { cpuS, rssMb: kb('VmRSS') / 1024, hwmMb: kb('VmHWM') / 1024 };
  } catch {
    return null;
  }
}

/** CPU seconds of each thread of a process by thread id, from /proc/PID/task (null elsewhere). */
function threadCpu(pid) {
  try {
    const out = new Map();
    for (const tid of readdirSync(`/proc/${pid}/task`))
      out.set(tid, statCpuS(`/proc/${pid}/task/${tid}/stat`));
    return out;
  } catch {
    return null;
  }
}

/**
 * Where a process's CPU went between two threadCpu() readings, in µs per request: the main thread, the
 * busiest other thread (for oai-proxy, the recorder thread), and all other threads (GC helpers, libuv).
 */
function cpuSplit(pid, before, after, requests) {
  if (!before || !after || !requests) return null;
  let main = 0;
  let busiest = 0;
  let rest = 0;
  for (const [tid, s] of after) {
    const d = ((s - (before.get(tid) ?? 0)) * 1e6) / requests;
    if (tid === String(pid)) main = d;
    else if (d > busiest) {
      rest += busiest;
      busiest = d;
    } else rest += d;
  }
  return { main, busiest, rest };
}

/** Sample a process's RSS every `ms` until stopped; returns the peak. */
function rssSampler(pid, ms = 25) {
  let peak = procStats(pid)?.rssMb ?? 0;
  const t = setInterval(() => {
    const s = procStats(pid);
    if (s && s.rssMb > peak) peak = s.rssMb;
  }, ms);
  return () => {
    clearInterval(t);
    const s = procStats(pid);
    return Math.max(peak, s?.rssMb ?? 0);
  };
}

// ---------------------------------------------------------------- statistics

function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}
const median = (xs) =>
  percentile(
    [...xs].sort((a, b) => a - b),
    50,
  );
const round = (x, d = 2) => (x === null || x === undefined || Number.isNaN(x) ? null : Number(x.toFixed(d)));

// ---------------------------------------------------------------- non-streamed load (autocannon or wrk)

/** autocannon in this process; latency percentiles from per-response float timings (its histogram is whole ms). */
async function autocannonLoad(target, connections, durationS) {
  const times = [];
  const instance = autocannon(chatLoad(target, connections, { duration: durationS, timeout: 10 }));
  instance.on('response', (_client, _status, _bytes, ms) => times.push(ms));
  const result = await instance;
  times.sort((a, b) => a - b);
  return {
    requests: result.requests.total,
    p50: percentile(times, 50),
    p99: percentile(times, 99),
    errors: result.errors + result.timeouts + result.non2xx,
  };
}

/** The Lua script that makes wrk send the bench's POST (written once per run). */
let wrkScript = null;
const WRK_UNIT_MS = { us: 1e-3, ms: 1, s: 1e3 };

/** wrk with one thread, as its own process; latency percentiles from its --latency distribution. */
async function wrkLoad(target, connections, durationS) {
  if (!wrkScript) {
    wrkScript = join(tmp, 'post.lua');
    const headers = Object.entries(CLIENT_HEADERS).map(
      ([k, v]) => `wrk.headers[${JSON.stringify(k)}] = ${JSON.stringify(v)}\n`,
    );
    writeFileSync(
      wrkScript,
      `wrk.method = "POST"\n${headers.join('')}wrk.body = ${JSON.stringify(REQUEST_BODY)}\n`,
    );
  }
  const args = [
    '-t1',
    `-c${connections}`,
    `-d${durationS}s`,
    '--timeout',
    '10s',
    '--latency',
    '-s',
    wrkScript,
  ];
  const out = await new Promise((resolve, reject) => {
    const p = spawn('wrk', [...args, `${target.origin}/v1/chat/completions`], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let text = '';
    p.stdout.on('data', (d) => {
      text += d;
    });
    p.stderr.on('data', (d) => {
      text += d;
    });
    p.once('error', reject);
    p.once('close', (code) =>
      code === 0 ? resolve(text) : reject(new Error(`wrk exited ${code}:\n${text}`)),
    );
  });
  const latencyMs = (pct) => {
    const m = new RegExp(`^\\s*${pct}%\\s+([\\d.]+)(us|ms|s)\\s*$`, 'm').exec(out);
    return m ? Number(m[1]) * WRK_UNIT_MS[m[2]] : null;
  };
  const requests = /(\d+) requests in /.exec(out);
  if (!requests) throw new Error(`wrk printed no request count:\n${out}`);
  const non2xx = Number(/Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1] ?? 0);
  const socket = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  return {
    requests: Number(requests[1]),
    p50: latencyMs(50),
    p99: latencyMs(99),
    errors: non2xx + (socket ? socket.slice(1).reduce((a, x) => a + Number(x), 0) : 0),
  };
}

/** autocannon options for non-streamed chat completions to `target`; `more` sets duration or amount. */
const chatLoad = (target, connections, more) => ({
  url: `${target.origin}/v1/chat/completions`,
  method: 'POST',
  headers: CLIENT_HEADERS,
  body: REQUEST_BODY,
  connections,
  ...more,
});

/**
 * One load run against `target` with the chosen driver, and the target's CPU per request (per thread)
 * from /proc around it.
 */
async function cannon(target, connections, durationS) {
  const before = procStats(target.pid);
  const threadsBefore = threadCpu(target.pid);
  const load =
    driver === 'wrk'
      ? await wrkLoad(target, connections, durationS)
      : await autocannonLoad(target, connections, durationS);
  const after = procStats(target.pid);
  const threadsAfter = threadCpu(target.pid);
  const { requests } = load;
  return {
    rps: requests / durationS,
    p50: load.p50,
    p99: load.p99,
    errors: load.errors,
    cpuUsPerReq: before && after && requests ? ((after.cpuS - before.cpuS) * 1e6) / requests : null,
    cpuSplit: cpuSplit(target.pid, threadsBefore, threadsAfter, requests),
    rssMb: after?.rssMb ?? null,
  };
}

/**
 * Fresh processes for a scenario: the bare pipe, `oai-proxy` and, with OAI_PROXY_TEST_PG_URL,
 * `oai-proxy-pg` on a new database. `targets` lists the upstream first; `stop` ends them all.
 */
async function startProxies(upstream) {
  const bare = await startBare(upstream);
  const proxy = await startProxy(upstream);
  const pgDb = pgUrl ? await pgBenchDatabase() : null;
  const pgProxy = pgDb ? await startProxy(upstream, {}, { name: 'oai-proxy-pg', db: pgDb.url }) : null;
  return {
    targets: [upstream, bare, proxy, ...(pgProxy ? [pgProxy] : [])],
    stop: async () => {
      await Promise.all([bare.stop(), proxy.stop(), pgProxy?.stop()]);
      await pgDb?.drop();
    },
  };
}

/**
 * Non-streamed completions at 1 and 64 connections, in rounds. Each round starts the bare pipe and the
 * proxies afresh, warms them up and runs every target once, in an order that rotates. Fresh processes,
 * because a process's CPU per request depends on how V8 happened to optimise Node's own hot functions in
 * it (see the README, Where the CPU goes), for the bare pipe as for the proxy: the same code measured
 * 0.74×, 0.77×, 0.79× and 0.91× the bare pipe at 64 connections in four runs of one process pair each.
 * Each round draws again, and the figures are medians over the rounds.
 */
async function httpRounds(upstream) {
  const runs = { c1: new Map(), c64: new Map() };
  for (let r = 0; r < plan.rounds; r++) {
    const { targets: ts, stop } = await startProxies(upstream);
    try {
      for (const [key, connections] of [
        ['c1', 1],
        ['c64', 64],
      ]) {
        for (const t of ts) await cannon(t, connections, plan.warmupS);
        const order = ts.map((_, i) => ts[(i + r) % ts.length]);
        // --quick stays under a minute with a fourth target (oai-proxy-pg, when PostgreSQL is there).
        const seconds = quick && connections === 1 ? 1 : plan.durationS;
        for (const t of order) {
          const result = await cannon(t, connections, seconds);
          runs[key].set(t.name, [...(runs[key].get(t.name) ?? []), result]);
        }
      }
    } finally {
      await stop();
    }
  }
  return { c1: summariseRounds(runs.c1), c64: summariseRounds(runs.c64) };
}

/** Medians over the rounds of each target (RSS: the highest). */
function summariseRounds(runs) {
  const out = {};
  for (const [name, rs] of runs) {
    out[name] = {
      rps: median(rs.map((x) => x.rps)),
      p50: median(rs.map((x) => x.p50)),
      p99: median(rs.map((x) => x.p99)),
      cpuUsPerReq: median(rs.map((x) => x.cpuUsPerReq ?? 0)),
      cpuSplit: rs[0].cpuSplit && {
        main: median(rs.map((x) => x.cpuSplit?.main ?? 0)),
        busiest: median(rs.map((x) => x.cpuSplit?.busiest ?? 0)),
        rest: median(rs.map((x) => x.cpuSplit?.rest ?? 0)),
      },
      rssMb: Math.max(...rs.map((x) => x.rssMb ?? 0)),
      errors: rs.reduce((a, x) => a + x.errors, 0),
      rounds: rs.map((x) => round(x.rps, 0)),
    };
  }
  return out;
}

// ---------------------------------------------------------------- streamed completions

const streamAgent = new http.Agent({ keepAlive: true, maxSockets: Number.POSITIVE_INFINITY });

/** One streamed completion: time to first byte, total, and the gaps between arriving events. */
function streamOnce(origin, chunks, intervalMs) {
  return new Promise((resolve) => {
    const t0 = performance.now();
    const arrivals = [];
    let events = 0;
    const req = http.request(
      `${origin}/v1/chat/completions`,
      {
        method: 'POST',
        agent: streamAgent,
        headers: {
          ...CLIENT_HEADERS,
          'content-length': Buffer.byteLength(STREAM_BODY),
          'x-bench-chunks': String(chunks),
          'x-bench-interval-ms': String(intervalMs),
        },
      },
      (res) => {
        res.on('data', (d) => {
          arrivals.push(performance.now());
          events += d.toString('latin1').split('\n\n').length - 1;
        });
        res.on('end', () => {
          const gaps = [];
          for (let i = 1; i < arrivals.length - 1; i++) gaps.push(arrivals[i] - arrivals[i - 1]);
          resolve({
            ok: res.statusCode === 200,
            ttfb: arrivals[0] - t0,
            total: performance.now() - t0,
            events,
            reads: arrivals.length,
            gaps,
          });
        });
        res.on('error', () => resolve({ ok: false }));
      },
    );
    req.on('error', () => resolve({ ok: false }));
    req.end(STREAM_BODY);
  });
}

/** `count` streams, `concurrency` at a time; workers start `staggerMs` apart (a burst of 1,000 SYNs overflows accept queues). */
async function streamBatch(target, count, concurrency, chunks, intervalMs, staggerMs = 0) {
  const results = [];
  let next = 0;
  const worker = async (_, i) => {
    if (staggerMs) await sleep(i * staggerMs);
    while (next < count) {
      next++;
      results.push(await streamOnce(target.origin, chunks, intervalMs));
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return results;
}

async function streamScenario(targets) {
  const { chunks, intervalMs, concurrency } = STREAM;
  // Warmed up as the non-streamed rounds are (the processes are fresh), then with streams. --quick only
  // proves the suite runs (under a minute): the streams alone warm it up.
  if (!quick) for (const t of targets) await cannon(t, 64, plan.warmupS);
  for (const t of targets) await streamBatch(t, concurrency * 4, concurrency, chunks, intervalMs);
  const all = new Map(targets.map((t) => [t.name, []]));
  const perRound = Math.max(concurrency, Math.round(plan.streams / plan.rounds));
  for (let r = 0; r < plan.rounds; r++) {
    const order = targets.map((_, i) => targets[(i + r) % targets.length]);
    for (const t of order)
      all.get(t.name).push(...(await streamBatch(t, perRound, concurrency, chunks, intervalMs)));
  }
  const out = {};
  for (const [name, rs] of all) {
    const ok = rs.filter((x) => x.ok);
    const ttfb = ok.map((x) => x.ttfb).sort((a, b) => a - b);
    const total = ok.map((x) => x.total).sort((a, b) => a - b);
    const gaps = ok.flatMap((x) => x.gaps).sort((a, b) => a - b);
    const expectedEvents = chunks + 2; // content chunks, the final chunk, [DONE]
    out[name] = {
      streams: rs.length,
      failed: rs.length - ok.length,
      ttfbP50: percentile(ttfb, 50),
      ttfbP99: percentile(ttfb, 99),
      totalP50: percentile(total, 50),
      totalP99: percentile(total, 99),
      gapP50: percentile(gaps, 50),
      gapP1: percentile(gaps, 1),
      gapP99: percentile(gaps, 99),
      // Pacing survives when every event arrives as its own read, spaced by the upstream's interval.
      readsPerEvent: ok.reduce((a, x) => a + x.reads, 0) / ok.reduce((a, x) => a + x.events, 0),
      eventsOk: ok.every((x) => x.events === expectedEvents),
    };
  }
  return out;
}

// ---------------------------------------------------------------- recorder alone

/** Rows/s of the batched writer alone, set up as `serve` sets it up (checkpoints in a worker) unless `mainThreadCheckpoints`. */
/** ~2 KB request and response bodies, as the recorder targets say. */
function benchRecordFactory() {
  const body = (c) => JSON.stringify({ text: c.repeat(2000) }).slice(0, 2048);
  const reqBody = body('q');
  const resBody = body('a');
  let n = 0;
  const make = () => ({
    id: `bench-${n++}`,
    startedAt: Date.now(),
    durationMs: 12.3,
    ttfbMs: 4.5,
    method: 'POST',
    path: '/v1/chat/completions',
    query: null,
    clientAddr: '127.0.0.1',
    status: 200,
    requestHeadersJson: JSON.stringify({
      'content-type': 'application/json',
      authorization: '[redacted]',
      'user-agent': 'bench',
    }),
    responseHeadersJson: JSON.stringify({ 'content-type': 'application/json', 'x-request-id': 'req_bench' }),
    requestBody: reqBody,
    requestBytes: reqBody.length,
    requestTruncated: false,
    responseBody: resBody,
    responseBytes: resBody.length,
    responseTruncated: false,
    model: 'gpt-4o-mini',
    upstreamModel: 'gpt-4o-mini',
    upstream: 'default',
    modelUnknown: false,
    stream: false,
    promptTokens: 25,
    completionTokens: 36,
    totalTokens: 61,
    user: null,
    error: null,
    errorMessage: null,
    assembled: null,
    internal: false,
  });
  return { make, bodyBytes: reqBody.length };
}

/** Record 1,000 rows and flush, as fast as possible, for plan.recorderS seconds. */
async function driveRecorder(writer) {
  const { make, bodyBytes } = benchRecordFactory();
  let rows = 0;
  let worstFlushMs = 0;
  const t0 = performance.now();
  while (performance.now() - t0 < plan.recorderS * 1000) {
    for (let i = 0; i < 1000; i++) writer.record(make());
    const f0 = performance.now();
    writer.flush();
    // Counted from health(): the recorder thread may have written part of the rows before the flush.
    rows = writer.health().written;
    worstFlushMs = Math.max(worstFlushMs, performance.now() - f0);
    await new Promise((r) => setImmediate(r)); // let the worker's messages in, as the proxy's event loop would
  }
  const seconds = (performance.now() - t0) / 1000;
  return { rowsPerS: rows / seconds, rows, bodyBytes, worstBatchMs: worstFlushMs };
}

/**
 * Rows/s the recorder thread sustains while the main thread keeps recording, as in `serve`: 1,000 rows
 * per event-loop turn, waiting only while more than 10,000 are not yet written; the clock stops when the
 * last row is written. (driveRecorder's flush after every 1,000 rows makes the two threads take turns.)
 */
async function driveRecorderSustained(thread) {
  const { make, bodyBytes } = benchRecordFactory();
  let recorded = 0;
  const t0 = performance.now();
  while (performance.now() - t0 < plan.recorderS * 1000) {
    for (let i = 0; i < 1000; i++) thread.record(make());
    recorded += 1000;
    while (recorded - thread.health().written > 10_000) await sleep(1);
    await new Promise((r) => setImmediate(r));
  }
  thread.flush();
  const seconds = (performance.now() - t0) / 1000;
  const rows = thread.health().written;
  return { rowsPerS: rows / seconds, rows, bodyBytes };
}

/**
 * What `serve` records with on an SQLite file: the recorder thread (src/storage/recorder-thread.ts),
 * without the full-text indexing it also does, so the figure compares with the in-thread writer's.
 * `sustained` is the target's measure; `flushEach1000` the same with a synchronous flush per 1,000 rows.
 */
async function recorderThreadBench() {
  return {
    ...(await withRecorderThread('sustained', driveRecorderSustained)),
    flushEach1000: await withRecorderThread('flush-each', driveRecorder),
  };
}

async function withRecorderThread(name, drive) {
  const { openDatabase } = await import(join(root, 'dist', 'storage', 'database.js'));
  const { startRecorderThread } = await import(join(root, 'dist', 'storage', 'recorder-thread.js'));
  const path = join(tmp, `recorder-thread-${name}.db`);
  await (await openDatabase(path)).close();
  const thread = await startRecorderThread({
    path,
    searchIndex: false,
    flushIntervalMs: 60_000,
    queueMax: 1e9,
    fallback: () => {
      throw new Error('the recorder thread died during the benchmark');
    },
  });
  try {
    return await drive(thread);
  } finally {
    await thread.close();
  }
}

async function recorderBench(mainThreadCheckpoints = false) {
  const { openDatabase } = await import(join(root, 'dist', 'storage', 'database.js'));
  const { createExchangeWriter } = await import(join(root, 'dist', 'storage', 'log-store.js'));
  const { startBackgroundCheckpoints } = await import(join(root, 'dist', 'storage', 'checkpointer.js'));
  const database = await openDatabase(join(tmp, `recorder-${mainThreadCheckpoints ? 'main' : 'worker'}.db`));
  const checkpoints = mainThreadCheckpoints ? null : startBackgroundCheckpoints(database.sqlite);
  const writer = createExchangeWriter({ sqlite: database.sqlite, flushIntervalMs: 60_000, queueMax: 1e9 });
  const result = await driveRecorder(writer);
  writer.close();
  checkpoints?.stop();
  await database.close();
  return result;
}

// ---------------------------------------------------------------- 1,000 concurrent streams

async function concurrencyBench(upstream) {
  const proxy = await startProxy(upstream);
  try {
    await streamBatch(proxy, 20, 10, 4, 0);
    const baseline = procStats(proxy.pid)?.rssMb ?? null;
    const stop = rssSampler(proxy.pid);
    const t0 = performance.now();
    const rs = await streamBatch(
      proxy,
      plan.concStreams,
      plan.concStreams,
      plan.concChunks,
      CONC_INTERVAL_MS,
      0.5,
    );
    const seconds = (performance.now() - t0) / 1000;
    const peak = stop();
    const ok = rs.filter((x) => x.ok && x.events === plan.concChunks + 2);
    const gaps = rs
      .filter((x) => x.ok)
      .flatMap((x) => x.gaps)
      .sort((a, b) => a - b);
    return {
      streams: plan.concStreams,
      completed: ok.length,
      seconds,
      baselineRssMb: baseline,
      peakRssMb: peak,
      gapP50: percentile(gaps, 50),
      gapP99: percentile(gaps, 99),
    };
  } finally {
    await proxy.stop();
  }
}

// ---------------------------------------------------------------- 200 MB multipart upload

/** POST a multipart body of `megabytes` (a `model` field, then a file) to `/v1/audio/transcriptions`. */
function uploadOnce(target, megabytes) {
  const total = megabytes * 1024 * 1024;
  const boundary = '----oaiproxybench';
  const head = Buffer.from(
    `--${boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="audio.wav"\r\nContent-Type: audio/wav\r\n\r\n`,
  );
  const tail = Buffer.from(`\r\n--${boundary}--\r\n`);
  const block = Buffer.alloc(64 * 1024, 7);
  return new Promise((resolve, reject) => {
    const req = http.request(`${target.origin}/v1/audio/transcriptions`, {
      method: 'POST',
      headers: {
        authorization: CLIENT_HEADERS.authorization,
        'content-type': `multipart/form-data; boundary=${boundary}`,
        'content-length': head.length + total + tail.length,
      },
    });
    req.on('response', (res) => {
      let text = '';
      res.on('data', (d) => {
        text += d;
      });
      res.on('end', () => resolve({ status: res.statusCode, text }));
    });
    req.on('error', reject);
    req.write(head);
    let sent = 0;
    const pump = () => {
      while (sent < total) {
        const n = Math.min(block.length, total - sent);
        sent += n;
        if (!req.write(n === block.length ? block : block.subarray(0, n)))
          return void req.once('drain', pump);
      }
      req.end(tail);
    };
    pump();
  });
}

/**
 * Wait until a process has settled: oai-proxy has written what it recorded (`/health`), and its RSS moved
 * less than 1 MB over 200 ms (at most 5 s). Measured earlier, right after start-up, an "upload" figure
 * included the recorder thread's start-up allocations, which glibc returns on its own a moment later
 * (about 35 MB on this machine, in the thread's malloc arena).
 */
async function settle(target) {
  const deadline = Date.now() + 5_000;
  while (target.name !== 'bare-pipe' && Date.now() < deadline) {
    const health = await fetch(`${target.origin}/health`).then(
      (r) => r.json(),
      () => null,
    );
    if (health?.queued_log_rows === 0) break;
    await sleep(50);
  }
  let last = procStats(target.pid)?.rssMb ?? 0;
  while (Date.now() < deadline) {
    await sleep(200);
    const now = procStats(target.pid)?.rssMb ?? 0;
    if (Math.abs(now - last) < 1) break;
    last = now;
  }
}

/** RSS growth while one large multipart upload passes through `target`, after a small one warmed it up. */
async function uploadThrough(target) {
  await uploadOnce(target, 4);
  await settle(target);
  const baseline = procStats(target.pid)?.rssMb ?? null;
  const stop = rssSampler(target.pid, 10);
  const t0 = performance.now();
  const answer = await uploadOnce(target, plan.uploadMb);
  const seconds = (performance.now() - t0) / 1000;
  const peak = stop();
  let upstreamBytes = null;
  try {
    upstreamBytes = JSON.parse(answer.text).bytes;
  } catch {
    // leave null: the table shows the status
  }
  return {
    megabytes: plan.uploadMb,
    status: answer.status,
    upstreamReceivedBytes: upstreamBytes,
    seconds,
    mbPerS: plan.uploadMb / seconds,
    baselineRssMb: baseline,
    peakRssMb: peak,
    growthMb: baseline === null ? null : peak - baseline,
  };
}

/** The same upload through the bare pipe and through oai-proxy, one after the other in this run. */
async function uploadBench(upstream) {
  const out = {};
  const bare = await startBare(upstream);
  try {
    out['bare-pipe'] = await uploadThrough(bare);
  } finally {
    await bare.stop();
  }
  const proxy = await startProxy(upstream, { MAX_REQUEST_BODY_BYTES: String(512 * 1024 * 1024) });
  try {
    out['oai-proxy'] = await uploadThrough(proxy);
  } finally {
    await proxy.stop();
  }
  return out;
}

// ---------------------------------------------------------------- instructions per request (callgrind)

const hasValgrind = () => {
  try {
    execFileSync('valgrind', ['--version'], { stdio: 'ignore' });
    execFileSync('callgrind_control', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
};

/** `amount` non-streamed chat completions over `connections` connections. */
const cannonAmount = (target, connections, amount) =>
  autocannon(chatLoad(target, connections, { amount, timeout: 60 }));

/**
 * Instructions each thread of `target` executed per request, counted by valgrind's callgrind over
 * `requests` requests after a warm-up. Unlike CPU time on a shared machine, the count does not depend on
 * what else runs, though a young-generation collection inside the window or V8's optimisation of Node's
 * `nextTick` can still move it by ~10% (README, Where the CPU goes). The process runs ~50× slower
 * under valgrind: the recorder thread then gathers fewer rows per transaction than at full speed, so
 * its figure is an upper bound; the event loop's is representative.
 */
async function instructionsThrough(start, name, requests) {
  const dir = join(tmp, `callgrind-${name}`);
  mkdirSync(dir, { recursive: true });
  const target = await start({
    wrap: [
      'valgrind',
      '--tool=callgrind',
      '--instr-atstart=no',
      '--separate-threads=yes',
      '--smc-check=all-non-file',
      `--callgrind-out-file=${join(dir, 'cg.%p')}`,
    ],
    startTimeoutMs: 120_000,
  });
  try {
    await cannonAmount(target, 16, requests);
    await cannonAmount(target, 16, requests);
    execFileSync('callgrind_control', ['-i', 'on', String(target.pid)], { stdio: 'ignore' });
    const result = await cannonAmount(target, 16, requests);
    // Let the recorder thread write and index what it was handed.
    await sleep(2000);
    execFileSync('callgrind_control', ['-i', 'off', String(target.pid)], { stdio: 'ignore' });
    execFileSync('callgrind_control', ['-d', String(target.pid)], { stdio: 'ignore' });
    const done = result.requests.total;
    // One file per thread: cg.PID.1-NN, thread 01 being the main thread (the event loop).
    const counts = readdirSync(dir)
      .filter((f) => /^cg\.\d+\.1-\d+$/.test(f))
      .map((f) => {
        const text = readFileSync(join(dir, f), 'utf8');
        return { thread: Number(f.split('-').pop()), ir: Number(/^totals:\s*(\d+)/m.exec(text)?.[1] ?? 0) };
      });
    const main = counts.find((c) => c.thread === 1)?.ir ?? 0;
    const others = counts.filter((c) => c.thread !== 1).sort((a, b) => b.ir - a.ir);
    const ki = (ir) => round(ir / done / 1000, 1);
    const mainFile = readdirSync(dir).find((f) => /^cg\.\d+\.1-0*1$/.test(f));
    const split = mainFile ? splitByWork(readFileSync(join(dir, mainFile), 'utf8')) : null;
    return {
      requests: done,
      errors: result.errors + result.non2xx,
      mainKi: ki(main),
      mainCompilerKi: split ? ki(split.compiler) : null,
      mainGcKi: split ? ki(split.gc) : null,
      mainSteadyKi: split ? ki(split.rest) : null,
      busiestKi: ki(others[0]?.ir ?? 0),
      restKi: ki(others.slice(1).reduce((a, c) => a + c.ir, 0)),
      totalKi: ki(main + others.reduce((a, c) => a + c.ir, 0)),
    };
  } finally {
    await target.stop();
  }
}

/** V8's compilers (the optimising one runs on the event loop for part of each job). */
const COMPILER_FN =
  /v8::internal::(compiler|maglev|baseline|interpreter|wasm)::|v8::internal::(Compiler|Zone|Parser|Scanner|AstNode|BytecodeGenerator)\b|[Tt]urboshaft|OptimizedCompilationJob/;
/** V8's garbage collector. */
const GC_FN =
  /v8::internal::(Scavenger|Scavenge|Heap|MarkCompact|Sweeper|Evacuat|GCTracer|MemoryAllocator|MarkingVisitor|ConcurrentMarking|IncrementalMarking|MinorMarkCompact|PagedSpace|NewSpace|SemiSpace)|v8::internal::heap::|heap::base::|cppgc::/;

/**
 * A thread's callgrind self costs (instructions) split into V8's compilers, its garbage collector and
 * the rest. The total moves by ~10% between runs of the same code (a collection or an optimisation
 * inside the window); the rest (the JavaScript, Node and undici, the system calls' user side) moves by
 * ~0.1%: the figure to compare two builds by.
 */
function splitByWork(text) {
  const names = new Map();
  let current = '';
  let inCall = false;
  const out = { compiler: 0, gc: 0, rest: 0 };
  let kind = 'rest';
  for (const line of text.split('\n')) {
    const c = line.charCodeAt(0);
    if ((c >= 48 && c <= 57) || c === 43 || c === 45 || c === 42) {
      // A cost line: "position cost"; the one after a calls= line is the call's inclusive cost.
      if (inCall) {
        inCall = false;
        continue;
      }
      const space = line.indexOf(' ');
      if (space !== -1) out[kind] += Number(line.slice(space + 1).split(' ', 1)[0]) || 0;
    } else if (line.startsWith('fn=')) {
      const m = /^fn=\((\d+)\)(?: (.*))?$/.exec(line);
      if (!m) continue;
      if (m[2] !== undefined) names.set(m[1], m[2]);
      current = names.get(m[1]) ?? '';
      kind = COMPILER_FN.test(current) ? 'compiler' : GC_FN.test(current) ? 'gc' : 'rest';
    } else if (line.startsWith('cfn=')) {
      const m = /^cfn=\((\d+)\) (.*)$/.exec(line);
      if (m) names.set(m[1], m[2]);
    } else if (line.startsWith('calls=')) inCall = true;
  }
  return out;
}

async function instructionsBench(upstream) {
  if (!hasValgrind()) return { skipped: 'valgrind is not installed (Debian: apt-get install valgrind)' };
  const requests = quick ? 500 : 2000;
  return {
    'bare-pipe': await instructionsThrough((o) => startBare(upstream, o), 'bare-pipe', requests),
    'oai-proxy': await instructionsThrough((o) => startProxy(upstream, {}, o), 'oai-proxy', requests),
  };
}

// ---------------------------------------------------------------- logs queries (issue 4's script)

async function logsBench() {
  const script = ['logs-queries.js', 'logs-queries.mjs'].map((f) => join(root, 'bench', f)).find(existsSync);
  if (!script) return { skipped: 'bench/logs-queries.js does not exist yet (logs issue); skipped' };
  return new Promise((resolve) => {
    let out = '';
    const p = spawn(process.execPath, [script, ...(quick ? ['--quick'] : [])], {
      cwd: root,
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    p.stdout.on('data', (d) => {
      out += d;
      process.stdout.write(d);
    });
    // The quick form must stay under a minute in CI: cap the logs script's share of it.
    const timer = quick ? setTimeout(() => p.kill('SIGTERM'), 12_000) : null;
    p.on('exit', (code, signal) => {
      if (timer) clearTimeout(timer);
      resolve({ script: script.slice(root.length + 1), exitCode: code ?? signal, output: out.slice(-8000) });
    });
  });
}

// ---------------------------------------------------------------- report

function pad(cells, widths) {
  return cells
    .map((c, i) => (i === 0 ? String(c).padEnd(widths[i]) : String(c).padStart(widths[i])))
    .join('  ');
}

function printTable(title, header, rows) {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)));
  console.log(`\n${title}`);
  console.log(pad(header, widths));
  console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  for (const r of rows) console.log(pad(r, widths));
}

const fmt = (x, d = 2) => (x === null || x === undefined || Number.isNaN(x) ? '-' : x.toFixed(d));

/** `a`'s req/s over `b`'s in each round. */
const roundsRatios = (s, a, b) => s[a].rounds.map((x, i) => x / s[b].rounds[i]);
/**
 * `a`'s req/s over `b`'s: the median of the rounds' own ratios. Each round ran both within seconds of
 * each other; the ratio of the two medians can pair a fast round of one with a slow round of the other
 * when the machine's speed drifts during the run (it moves by 2× within hours).
 */
const roundsRatio = (s, a, b) => median(roundsRatios(s, a, b));

function report(results) {
  const names = ['upstream', 'bare-pipe', 'oai-proxy'];
  if (results.http?.c1?.['oai-proxy-pg'] || results.streams?.['oai-proxy-pg']) names.push('oai-proxy-pg');
  const rows = [];
  for (const c of ['c1', 'c64']) {
    const s = results.http?.[c];
    if (!s) continue;
    for (const n of names) {
      const x = s[n];
      rows.push([
        `${n} ${c}`,
        fmt(x.rps, 0),
        fmt(x.p50, 3),
        fmt(x.p99, 2),
        fmt(x.cpuUsPerReq, 0),
        fmt(x.rssMb, 0),
        n === 'upstream' ? '-' : fmt(roundsRatio(s, n, 'bare-pipe')),
        fmt(roundsRatio(s, n, 'upstream')),
        fmt(x.p50 - s.upstream.p50, 3),
        fmt(x.p99 / s['bare-pipe'].p99),
        String(x.errors),
      ]);
    }
  }
  if (rows.length)
    printTable(
      `Non-streamed chat completions, driven by ${results.driver} (median of rounds; ×bare and ×upstream: median of the rounds' ratios)`,
      [
        'target',
        'req/s',
        'p50 ms',
        'p99 ms',
        'CPU µs/req',
        'RSS MB',
        '×bare',
        '×upstream',
        '+p50 ms',
        'p99 ×bare',
        'errors',
      ],
      rows,
    );
  const c64 = results.http?.c64;
  if (c64 && names.every((n) => c64[n]?.cpuSplit))
    printTable(
      'Where the CPU goes at 64 connections (µs per request, median of rounds; for oai-proxy the busiest other thread is the recorder thread)',
      ['target', 'main thread', 'busiest other thread', 'all other threads', 'total'],
      names.map((n) => {
        const x = c64[n].cpuSplit;
        return [
          `${n} c64`,
          fmt(x.main, 0),
          fmt(x.busiest, 0),
          fmt(x.rest, 0),
          fmt(x.main + x.busiest + x.rest, 0),
        ];
      }),
    );
  if (results.streams) {
    const s = results.streams;
    printTable(
      `Streamed completions (${STREAM.chunks} events every ${STREAM.intervalMs} ms, ${STREAM.concurrency} at a time)`,
      [
        'target',
        'TTFB p50',
        'TTFB p99',
        '+TTFB vs bare',
        'total p50',
        'gap p50',
        'gap p1..p99',
        'reads/event',
        'events ok',
        'failed',
      ],
      names.map((n) => [
        n,
        fmt(s[n].ttfbP50, 3),
        fmt(s[n].ttfbP99, 3),
        fmt(s[n].ttfbP50 - s['bare-pipe'].ttfbP50, 3),
        fmt(s[n].totalP50, 1),
        fmt(s[n].gapP50, 2),
        `${fmt(s[n].gapP1, 1)}..${fmt(s[n].gapP99, 1)}`,
        fmt(s[n].readsPerEvent),
        String(s[n].eventsOk),
        String(s[n].failed),
      ]),
    );
  }
  const extra = [];
  if (results.recorderThread)
    extra.push([
      'recorder thread (what serve uses)',
      `${fmt(results.recorderThread.rowsPerS, 0)} rows/s sustained (flushing every 1000 rows: ${fmt(results.recorderThread.flushEach1000.rowsPerS, 0)} rows/s, worst flush ${fmt(results.recorderThread.flushEach1000.worstBatchMs, 1)} ms)`,
    ]);
  if (results.recorder)
    extra.push([
      'recorder alone',
      `${fmt(results.recorder.rowsPerS, 0)} rows/s (${results.recorder.bodyBytes} B bodies, worst 1000-row batch ${fmt(results.recorder.worstBatchMs, 1)} ms)`,
    ]);
  if (results.recorderMainThreadCheckpoints)
    extra.push([
      'recorder, main-thread WAL checkpoints',
      `${fmt(results.recorderMainThreadCheckpoints.rowsPerS, 0)} rows/s (worst batch ${fmt(results.recorderMainThreadCheckpoints.worstBatchMs, 1)} ms)`,
    ]);
  if (results.concurrency) {
    const c = results.concurrency;
    extra.push([
      'concurrent streams',
      `${c.completed}/${c.streams} complete, RSS ${fmt(c.baselineRssMb, 0)} → peak ${fmt(c.peakRssMb, 0)} MB, gap p50/p99 ${fmt(c.gapP50, 0)}/${fmt(c.gapP99, 0)} ms`,
    ]);
  }
  if (results.upload) {
    for (const [name, u] of Object.entries(results.upload))
      extra.push([
        `multipart upload, ${name}`,
        `${u.megabytes} MB → ${u.status}, ${fmt(u.mbPerS, 0)} MB/s, RSS ${fmt(u.baselineRssMb, 0)} → peak ${fmt(u.peakRssMb, 0)} MB (+${fmt(u.growthMb, 0)} MB)`,
      ]);
  }
  if (results.instructions?.skipped) extra.push(['instructions per request', results.instructions.skipped]);
  else if (results.instructions) {
    const b = results.instructions['bare-pipe'];
    for (const [name, x] of Object.entries(results.instructions))
      extra.push([
        `instructions per request, ${name}`,
        `event loop ${fmt(x.mainKi, 1)}k (${fmt(x.mainKi / b.mainKi)}× the bare pipe's; without V8's compilers ${fmt(x.mainCompilerKi, 1)}k and garbage collector ${fmt(x.mainGcKi, 1)}k: ${fmt(x.mainSteadyKi, 1)}k, ${fmt(x.mainSteadyKi / b.mainSteadyKi)}×), busiest other thread ${fmt(x.busiestKi, 1)}k, the rest ${fmt(x.restKi, 1)}k; ${x.requests} requests at 16 connections under callgrind${x.errors ? `, ${x.errors} FAILED` : ''}`,
      ]);
  }
  if (results.logs)
    extra.push([
      'logs queries',
      results.logs.skipped ?? `${results.logs.script} exit ${results.logs.exitCode}`,
    ]);
  if (extra.length) printTable('Other measurements', ['what', 'result'], extra);

  const t = targets(results);
  if (t.length)
    printTable(
      'Targets (issue 8)',
      ['target', 'measured', 'met'],
      t.map((x) => [x.name, x.measured, x.met === null ? '-' : x.met ? 'yes' : 'NO']),
    );
}

function targets(results) {
  const out = [];
  const h = results.http;
  if (h?.c64) {
    // Each round ran every target once, on fresh processes: the median and spread of the rounds' ratios.
    const perRound = roundsRatios(h.c64, 'oai-proxy', 'bare-pipe');
    const r = median(perRound);
    const spread =
      perRound.length > 1 ? ` (rounds ${fmt(Math.min(...perRound))}–${fmt(Math.max(...perRound))}×)` : '';
    out.push({ name: 'c64 throughput ≥ 0.8 × bare pipe', measured: `${fmt(r)}×${spread}`, met: r >= 0.8 });
    const p = h.c64['oai-proxy'].p99 / h.c64['bare-pipe'].p99;
    out.push({ name: 'c64 p99 ≤ 1.5 × bare pipe p99', measured: `${fmt(p)}×`, met: p <= 1.5 });
  }
  if (h?.c1) {
    const d = h.c1['oai-proxy'].p50 - h.c1.upstream.p50;
    out.push({ name: 'c1 added p50 vs upstream ≤ 0.3 ms', measured: `${fmt(d, 3)} ms`, met: d <= 0.3 });
  }
  const s = results.streams;
  if (s) {
    const d = s['oai-proxy'].ttfbP50 - s['bare-pipe'].ttfbP50;
    out.push({
      name: 'stream TTFB ≤ bare pipe + 0.5 ms',
      measured: `${d < 0 ? '' : '+'}${fmt(d, 3)} ms`,
      met: d <= 0.5,
    });
    const p = s['oai-proxy'];
    const intact =
      p.eventsOk &&
      p.readsPerEvent >= 0.9 * s['bare-pipe'].readsPerEvent &&
      Math.abs(p.gapP50 - STREAM.intervalMs) <= STREAM.intervalMs * 0.2;
    out.push({
      name: 'paced events keep their pacing',
      measured: `gap p50 ${fmt(p.gapP50)} ms, ${fmt(p.readsPerEvent)} reads/event`,
      met: intact,
    });
  }
  const recorder = results.recorderThread ?? results.recorder;
  if (recorder)
    out.push({
      name: 'recorder ≥ 20,000 rows/s (~2 KB bodies)',
      measured: fmt(recorder.rowsPerS, 0),
      met: recorder.rowsPerS >= 20_000,
    });
  if (results.concurrency) {
    const c = results.concurrency;
    out.push({
      name: '1,000 open streams: RSS ≤ 250 MB',
      measured: `${fmt(c.peakRssMb, 0)} MB (${c.completed} ok)`,
      met: c.peakRssMb <= 250 && c.completed === c.streams,
    });
  }
  if (results.upload) {
    const u = results.upload['oai-proxy'];
    out.push({
      name: '200 MB upload grows RSS ≤ 64 MB',
      measured: `+${fmt(u.growthMb, 0)} MB (${u.status}; bare pipe +${fmt(results.upload['bare-pipe'].growthMb, 0)} MB)`,
      met: u.status === 200 && u.growthMb <= 64,
    });
  }
  return out;
}

// ---------------------------------------------------------------- main

/** Run one part of the suite, noting how long it took. */
async function phase(results, label, fn) {
  const t0 = Date.now();
  console.error(`${label}…`);
  try {
    return await fn();
  } finally {
    results.phaseSeconds[label] = round((Date.now() - t0) / 1000, 1);
  }
}

async function main() {
  if (!existsSync(join(root, 'dist', 'cli.js')))
    throw new Error('dist/ is missing: run `npm run build` first');
  const started = Date.now();
  const results = {
    version: 1,
    date: new Date().toISOString(),
    quick,
    driver,
    plan,
    machine: {
      cpus: os.cpus().length,
      model: os.cpus()[0]?.model,
      memGb: round(os.totalmem() / 2 ** 30, 1),
      node: process.version,
      platform: `${os.platform()} ${os.release()}`,
      loadavg: os.loadavg().map((x) => round(x)),
    },
    phaseSeconds: {},
  };
  const upstream = await startUpstream();
  try {
    if (only.includes('http')) {
      results.http = await phase(results, 'non-streamed, 1 and 64 connections', () => httpRounds(upstream));
    }
    if (only.includes('streams')) {
      const { targets: ts, stop } = await startProxies(upstream);
      try {
        results.streams = await phase(results, 'streams', () => streamScenario(ts));
      } finally {
        await stop();
      }
    }
    if (only.includes('recorder')) {
      results.recorderThread = await phase(results, 'recorder thread', () => recorderThreadBench());
      results.recorder = await phase(results, 'recorder alone', () => recorderBench(false));
      results.recorderMainThreadCheckpoints = await phase(
        results,
        'recorder, checkpoints on the main thread',
        () => recorderBench(true),
      );
    }
    if (only.includes('concurrency')) {
      results.concurrency = await phase(results, `${plan.concStreams} concurrent streams`, () =>
        concurrencyBench(upstream),
      );
    }
    if (only.includes('instructions')) {
      results.instructions = await phase(results, 'instructions per request (callgrind)', () =>
        instructionsBench(upstream),
      );
    }
    if (only.includes('upload')) {
      results.upload = await phase(results, `${plan.uploadMb} MB upload`, () => uploadBench(upstream));
    }
    if (only.includes('logs')) {
      results.logs = await phase(results, 'logs queries', logsBench);
    }
  } finally {
    await upstream.stop();
    streamAgent.destroy();
  }
  results.targets = targets(results);
  results.seconds = round((Date.now() - started) / 1000, 1);
  report(results);
  const dir = join(root, 'bench', 'results');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `bench-${results.date.replace(/[:.]/g, '-')}${quick ? '-quick' : ''}.json`);
  writeFileSync(file, `${JSON.stringify(results, null, 2)}\n`);
  console.log(`\nphases (s): ${JSON.stringify(results.phaseSeconds)}`);
  console.log(
    `${results.seconds} s; machine ${results.machine.cpus}× ${results.machine.model}, load ${results.machine.loadavg.join(' ')}; results in ${file.slice(root.length + 1)}`,
  );
}

try {
  await main();
} catch (err) {
  console.error(`bench failed: ${err.stack ?? err}`);
  process.exitCode = 1;
} finally {
  await Promise.all([...children].map(stopChild));
  rmSync(tmp, { recursive: true, force: true });
}
