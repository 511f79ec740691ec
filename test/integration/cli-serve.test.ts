import { spawn } from 'node:child_process';
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import Database from 'better-sqlite3';
import OpenAI from 'openai';
import { afterEach, describe, expect, test } from 'vitest';
import { main } from '../../src/cli.js';
import { scrubSecrets } from '../../src/proxy/capture.js';
import { createFakeUpstream } from '../helpers/fake-upstream.js';
import { createServeFixture, type ServeProcess, spawnServe } from '../helpers/spawn-serve.js';
import { createTempDir } from '../helpers/temp-dir.js';
import { createTestIo, startTestProxy } from '../helpers/test-proxy.js';
import { until } from '../helpers/until.js';

const BIN = join(import.meta.dirname, '../../bin/oai-proxy.js');
const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

describe('CLI basics', () => {
  test('--help lists commands and examples; serve --help shows its flags', async () => {
    const io = createTestIo();
    expect(await main(['--help'], io)).toBe(0);
    expect(io.out()).toMatch(/Usage: oai-proxy/);
    expect(io.out()).toMatch(/serve/);
    const io2 = createTestIo();
    expect(await main(['serve', '--help'], io2)).toBe(0);
    for (const flag of ['--port', '--host', '--upstream', '--db', '--log-file', '--config', 'Examples:'])
      expect(io2.out()).toContain(flag);
    expect(io2.out()).not.toMatch(/api-key/i);
    expect(io2.out()).toMatch(/SIGHUP[\s\S]*a second signal cuts them now[\s\S]*a third kills/);
  });

  // The tester's repro: `oai-proxy models $EMPTY` printed help and exited 0, so a script went on.
  test.each([[[]], [['models']]])('%j (a subcommand missing) → help on stderr, exit 2', async (argv) => {
    const io = createTestIo();
    expect(await main(argv, io)).toBe(2);
    expect(io.err()).toMatch(/^Usage: oai-proxy/);
    expect(io.out()).toBe('');
  });

  test.each([[['--help']], [['help']], [['models', '--help']], [['models', 'help']], [['help', 'models']]])(
    '%j (help asked for) → help on stdout, exit 0',
    async (argv) => {
      const io = createTestIo();
      expect(await main(argv, io)).toBe(0);
      expect(io.out()).toMatch(/^Usage: oai-proxy/);
      expect(io.err()).toBe('');
    },
  );

  test('--version prints the package version', async () => {
    const io = createTestIo();
    expect(await main(['--version'], io)).toBe(0);
    expect(io.out().trim()).toMatch(/^\d+\.\d+\.\d+$/);
  });

  test.each([
    // Far from every command name: no suggestion line (`bogus` gets "Did you mean logs?").
    [['frobnicate'], /unknown command 'frobnicate'/],
    [['serve', '--bogus'], /unknown option '--bogus'/],
    [['serve', '--port'], /argument missing/],
  ])('%j → one line on stderr and exit 2', async (argv, message) => {
    const io = createTestIo();
    expect(await main(argv, io)).toBe(2);
    expect(io.err()).toMatch(message);
    expect(io.err().trim().split('\n')).toHaveLength(1);
  });

  test.each([
    [['serv'], "error: unknown command 'serv'\n(Did you mean serve?)\n"],
    [['serve', '--prot', '0'], "error: unknown option '--prot'\n(Did you mean --port?)\n"],
    [['models', 'ad', 'x'], "error: unknown command 'ad'\n(Did you mean add?)\n"],
  ])("%j → the error and commander's suggestion, exit 2", async (argv, err) => {
    const io = createTestIo();
    expect(await main(argv, io)).toBe(2);
    expect(io.err()).toBe(err);
  });

  test('an invalid setting → message naming it, exit 2', async () => {
    const tmp = createTempDir();
    cleanups.push(tmp.cleanup);
    const io = createTestIo({ HOME: tmp.path, PORT: 'abc' }, tmp.path);
    expect(await main(['serve'], io)).toBe(2);
    expect(io.err()).toBe(
      'oai-proxy: Invalid PORT (environment) = abc: expected an integer from 0 to 65535\n',
    );
  });

  // The tester's repro: a key pasted into the wrong variable must not be printed by that variable's message.
  test.each([
    ['OPENAI_BASE_URL', 'expected an absolute http(s) URL'],
    ['PORT', 'expected an integer from 0 to 65535'],
    ['LOG_LEVEL', 'expected one of trace'],
    ['MODEL_MAPPINGS', 'expected a JSON object'],
  ])('a key pasted into %s → named, the key [redacted]; exit 2 where it is read', async (name, expected) => {
    const tmp = createTempDir();
    cleanups.push(tmp.cleanup);
    const key = 'sk-SECRETUPSTREAM0123456789';
    for (const argv of [['serve'], ['logs'], ['models', 'list'], ['init', '--yes', '--no-check']]) {
      const io = createTestIo({ HOME: tmp.path, OPENAI_API_KEY: key, [name]: key }, tmp.path);
      const code = await main(argv, io);
      const printed = io.err() + io.out();
      expect(printed).not.toContain('SECRET');
      const message = `Invalid ${name} (environment) = [redacted]: ${expected}`;
      if (argv[0] === 'init') {
        // init writes the file, then warns that serve would refuse to start.
        expect(code).toBe(0);
        expect(io.err()).toContain(`warning: serve would currently refuse to start: ${message}`);
        continue;
      }
      // Of these, logs reads none and models reads MODEL_MAPPINGS: for the others they warn and go on
      // (here to find no database).
      if (argv[0] !== 'serve' && !(argv[0] === 'models' && name === 'MODEL_MAPPINGS')) {
        expect(io.err()).toMatch(
          new RegExp(
            `^warning: ${message.replace(/[()[\]]/g, '\\$&')}[^\n]*; ignored: \`oai-proxy ${argv[0]}\` does not use it`,
          ),
        );
        continue;
      }
      expect(code).toBe(2);
      expect(io.err()).toMatch(new RegExp(`^oai-proxy: ${message.replace(/[()[\]]/g, '\\$&')}[^\n]*\n$`));
    }
  });

  // Found after loading: the error serve stops with still quotes the value, never the key.
  test.each([
    [{ DATABASE_URL: 'mysql://{key}' }, 'DATABASE_URL "mysql://[redacted]" has an unsupported scheme'],
    [{ MODEL_MAPPINGS: '{"{key}":"{key}"}' }, 'Mapping [redacted] → [redacted] would create a loop'],
    [
      { EMBEDDING_UPSTREAM: '{key}', QDRANT_URL: 'http://127.0.0.1:1' },
      'EMBEDDING_UPSTREAM names "[redacted]", which is not in',
    ],
  ])('serve refusing %j names the setting, the key [redacted]', async (settings, expected) => {
    const tmp = createTempDir();
    cleanups.push(tmp.cleanup);
    const key = 'sk-SECRETUPSTREAM0123456789';
    const env = Object.fromEntries(Object.entries(settings).map(([k, v]) => [k, v.replaceAll('{key}', key)]));
    const io = createTestIo({ HOME: tmp.path, OPENAI_API_KEY: key, ...env }, tmp.path);
    expect(await main(['serve', '--port', '0'], io)).toBe(2);
    expect(io.err()).toContain(expected);
    expect(io.err()).not.toContain('SECRET');
  });

  test.each([
    [
      ['logs'],
      { DATABASE_URL: 'mysql://{key}' },
      'DATABASE_URL "mysql://[redacted]" has an unsupported scheme',
    ],
    [['models', 'list'], { DATABASE_URL: 'mysql://{key}' }, 'DATABASE_URL "mysql://[redacted]"'],
    [
      ['models', 'add', 'm1'],
      { MODEL_MAPPINGS: '{"{key}":"{key}"}' },
      'Mapping [redacted] → [redacted] would create a loop',
    ],
  ])('%j refusing %j after loading: the key [redacted]', async (argv, settings, expected) => {
    const tmp = createTempDir();
    cleanups.push(tmp.cleanup);
    const key = 'sk-SECRETUPSTREAM0123456789';
    const env = Object.fromEntries(Object.entries(settings).map(([k, v]) => [k, v.replaceAll('{key}', key)]));
    const io = createTestIo({ HOME: tmp.path, OPENAI_API_KEY: key, ...env }, tmp.path);
    expect(await main(argv, io)).not.toBe(0);
    expect(io.err()).toContain(expected);
    expect(io.err() + io.out()).not.toContain('SECRET');
  });

  // The tester's repro: `--upstream "http://h/v1?key=$OPENAI_API_KEY"` started, printed the key in the
  // banner, and never sent the query. A base URL's query is refused, its secret-named values masked.
  test.each([
    [
      {},
      ['--upstream', 'http://h.test/v1?key={key}'],
      'Invalid --upstream = http://h.test/v1?key=***: expected a URL without ?query or #fragment (neither is ever sent; ?api-version alone is taken, for an Azure upstream, as its api-version); put a key in OPENAI_API_KEY',
    ],
    // The tester's repro: a key under a name that is no secret's (not configured anywhere) was printed.
    [
      {},
      ['--upstream', 'http://127.0.0.1:1/v1?code=sk-proj-SECRETabcdefghijklmnop'],
      'Invalid --upstream = http://127.0.0.1:1/v1?code=***: expected a URL without ?query',
    ],
    [
      { file: { upstreams: { local: { baseUrl: 'http://h.test/v1?code=sk-proj-SECRETabcdefghijklmnop' } } } },
      [],
      'upstreams.local.baseUrl in config file {dir}/oai-proxy.config.json = http://h.test/v1?code=***: expected a URL without ?query',
    ],
    [
      { QDRANT_URL: 'http://127.0.0.1:6333/?code=sk-proj-SECRETabcdefghijklmnop' },
      [],
      'Invalid QDRANT_URL (environment) = http://127.0.0.1:6333/?code=***: expected a URL without ?query',
    ],
    [
      // An Azure upstream's ?api-version is taken (as OPENAI_API_VERSION), the rest refused.
      {
        OPENAI_BASE_URL: 'http://h.test/v1?key=plain-SECRET-777&api-version=2024-10-21',
        OPENAI_API_TYPE: 'azure',
      },
      [],
      'Invalid OPENAI_BASE_URL (environment) = http://h.test/v1?key=***: expected a URL without ?query',
    ],
    [
      { QDRANT_URL: 'http://127.0.0.1:6333/?api-key=SECRET-qdrant-1' },
      [],
      'Invalid QDRANT_URL (environment) = http://127.0.0.1:6333/?api-key=***: expected a URL without ?query or #fragment (neither is ever sent; ?api-version alone is taken, for an Azure upstream, as its api-version); put a Qdrant key in QDRANT_API_KEY',
    ],
    [
      { file: { upstreams: { local: { baseUrl: 'http://h.test/v1?Signature=SECRET-sig-1#top' } } } },
      [],
      "upstreams.local.baseUrl in config file {dir}/oai-proxy.config.json = http://h.test/v1?Signature=***#***: expected a URL without ?query or #fragment (neither is ever sent; ?api-version alone is taken, for an Azure upstream, as its api-version); put a key in the upstream's apiKey (or apiKeyEnv) or headers",
    ],
    // Review: ?api-version was taken whatever the upstream's type, and dropped for an OpenAI one (only
    // Azure is sent an api-version): it is refused there, with the setting that makes the upstream Azure.
    [
      { OPENAI_BASE_URL: 'http://127.0.0.1:1/openai?api-version=2024-02-01' },
      [],
      'Invalid OPENAI_BASE_URL (environment) = http://127.0.0.1:1/openai?api-version=2024-02-01: expected a URL without ?query or #fragment (neither is ever sent; ?api-version alone is taken, for an Azure upstream, as its api-version); ?api-version is read only for an Azure upstream: set OPENAI_API_TYPE=azure if it is one',
    ],
    [
      { OPENAI_BASE_URL: 'http://h.test/v1?api-version=2024-02-01&key=SECRET-k-1' },
      [],
      'Invalid OPENAI_BASE_URL (environment) = http://h.test/v1?api-version=2024-02-01&key=***: expected a URL without ?query or #fragment (neither is ever sent; ?api-version alone is taken, for an Azure upstream, as its api-version); ?api-version is read only for an Azure upstream: set OPENAI_API_TYPE=azure if it is one; put a key in OPENAI_API_KEY',
    ],
    [
      {
        file: { upstreams: { az: { baseUrl: 'https://x.openai.azure.com/openai?api-version=2024-02-01' } } },
      },
      [],
      'upstreams.az.baseUrl in config file {dir}/oai-proxy.config.json = https://x.openai.azure.com/openai?api-version=2024-02-01: expected a URL without ?query or #fragment (neither is ever sent; ?api-version alone is taken, for an Azure upstream, as its api-version); ?api-version is read only for an Azure upstream: set its "type": "azure" if it is one',
    ],
    // A base URL's user:password@ was dropped without a word (only its origin and path are used).
    [
      { OPENAI_BASE_URL: 'http://vllm:SECRET-pw-42@h.test/v1' },
      [],
      'Invalid OPENAI_BASE_URL (environment) = http://vllm:***@h.test/v1: expected a URL without user:password@ (credentials in it are never sent); put a key in OPENAI_API_KEY, or other credentials in a named upstream\'s "headers" in the config file',
    ],
    [
      { file: { upstreams: { local: { baseUrl: 'http://vllm:SECRET-pw-43@h.test/v1' } } } },
      [],
      'upstreams.local.baseUrl in config file {dir}/oai-proxy.config.json = http://vllm:***@h.test/v1: expected a URL without user:password@',
    ],
    // Review: a fragment was printed whole (only ?… and &… parameters were looked at), and an Azure SAS
    // token's `sig` in full: a fragment is masked whole, `sig` as any secret-named parameter.
    [
      { OPENAI_BASE_URL: 'http://h.test/v1#access_token=SECRETfrag123' },
      [],
      'Invalid OPENAI_BASE_URL (environment) = http://h.test/v1#***: expected',
    ],
    [
      { OPENAI_BASE_URL: 'https://a.blob.core.windows.net/v1?sv=2022-11-02&se=2026-01-01&sig=SECRETsig123' },
      [],
      'Invalid OPENAI_BASE_URL (environment) = https://a.blob.core.windows.net/v1?sv=2022-11-02&se=2026-01-01&sig=***: expected',
    ],
  ])(
    'a base URL with a query or credentials (%j, serve %j) → exit 2, the secret masked',
    async (settings, flags, expected) => {
      const tmp = createTempDir();
      cleanups.push(tmp.cleanup);
      const key = 'sk-SECRETUPSTREAM0123456789';
      const { file, ...env } = settings as Record<string, unknown>;
      if (file) writeFileSync(join(tmp.path, 'oai-proxy.config.json'), JSON.stringify(file));
      const ac = new AbortController();
      const io = {
        ...createTestIo(
          { HOME: tmp.path, OPENAI_API_KEY: key, ...(env as Record<string, string>) },
          tmp.path,
        ),
        signal: ac.signal,
      };
      const argv = ['serve', '--port', '0', '--db', 'p.db', ...flags.map((f) => f.replace('{key}', key))];
      let code: number | undefined;
      const done = main(argv, io).then((c) => {
        code = c;
        return c;
      });
      // Before the fix it started: stop it once the banner is out, and see what it printed.
      await until('exit or banner', () => code !== undefined || io.err().includes('listening on'));
      ac.abort();
      await done;
      expect(io.err()).not.toContain('SECRET');
      expect(code).toBe(2);
      expect(io.err()).toContain(expected.replace('{dir}', tmp.path));
      expect(io.err().trim().split('\n')).toHaveLength(1);
    },
  );

  // Review: the refusal ran in config load, so `logs` and `models` (which never use a base URL) refused too.
  test('logs and models do not refuse a base URL or QDRANT_URL with a query: only serve uses them', async () => {
    const tmp = createTempDir();
    cleanups.push(tmp.cleanup);
    writeFileSync(
      join(tmp.path, 'cfg.json'),
      JSON.stringify({ upstreams: { local: { baseUrl: 'http://h.test/v1?x=1' } } }),
    );
    const env = {
      HOME: tmp.path,
      OPENAI_BASE_URL: 'http://h.test/v1?key=SECRET-in-query-1',
      QDRANT_URL: 'http://127.0.0.1:6333/?api-key=SECRET-qdrant-1',
    };
    for (const argv of [
      ['models', 'add', 'llama3', '-c', 'cfg.json', '--db', 'a.db'],
      ['models', 'list', '-c', 'cfg.json', '--db', 'a.db'],
      ['logs', '-c', 'cfg.json', '--db', 'a.db'],
    ]) {
      const io = createTestIo(env, tmp.path);
      expect(await main(argv, io), `${argv.join(' ')}: ${io.err()}`).toBe(0);
      expect(io.err()).not.toMatch(/Invalid|warning|SECRET/);
      expect(io.out()).not.toContain('SECRET');
    }
    // serve, which uses them, refuses (the first it finds), naming the setting.
    const io = createTestIo(env, tmp.path);
    expect(await main(['serve', '--port', '0', '-c', 'cfg.json', '--db', 'a.db'], io)).toBe(2);
    expect(io.err()).toMatch(
      /^oai-proxy: Invalid OPENAI_BASE_URL \(environment\) = http:\/\/h\.test\/v1\?key=\*\*\*: /,
    );
  });

  // Review: an old-style Azure base URL pasted from the portal worked before a query was refused (the
  // query was dropped, the default api-version sent); its api-version is now the one sent.
  test.each([
    [{}, '2024-02-01', []],
    [
      { OPENAI_API_VERSION: '2024-10-21' },
      '2024-10-21',
      [
        'warning: OPENAI_BASE_URL holds ?api-version=2024-02-01, but OPENAI_API_VERSION is 2024-10-21, which is used; remove one of them',
      ],
    ],
  ])(
    "an Azure portal base URL's ?api-version (with %j): serve starts and sends api-version=%s",
    async (env, sent, warnings) => {
      const { home, upstream, cleanup } = await createServeFixture();
      cleanups.push(cleanup);
      const base = `${upstream.origin}/openai/deployments/gpt4o-prod`;
      const ac = new AbortController();
      const io = {
        ...createTestIo(
          {
            HOME: home,
            OPENAI_BASE_URL: `${base}?api-version=2024-02-01`,
            OPENAI_API_KEY: 'azure-key-0123456789abcdef',
            ...env,
          },
          home,
        ),
        signal: ac.signal,
      };
      const done = main(['serve', '--port', '0', '--db', 'p.db'], io);
      let url = '';
      await until('the banner or an exit', () => {
        url = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(io.err())?.[1] ?? '';
        return url !== '' || io.err().startsWith('oai-proxy:');
      });
      expect(io.err()).toContain(`  upstream   ${base}  (key `);
      const client = new OpenAI({ apiKey: 'sk-client-0000000000', baseURL: `${url}/v1`, maxRetries: 0 });
      const answer = await client.chat.completions.create({
        model: 'gpt-4o',
        messages: [{ role: 'user', content: 'hi' }],
      });
      expect(answer.choices[0]?.message.content).toBeTruthy();
      ac.abort();
      expect(await done).toBe(0);
      expect(upstream.requests.map((r) => r.url)).toEqual([
        `/openai/deployments/gpt4o-prod/chat/completions?api-version=${sent}`,
      ]);
      expect(
        io
          .err()
          .split('\n')
          .filter((l) => l.startsWith('warning: ')),
      ).toEqual(warnings);
    },
  );

  test('a key pasted into --db or --log-file: the banner shows the path with the key [redacted]', async () => {
    const tmp = createTempDir();
    cleanups.push(tmp.cleanup);
    const key = 'sk-SECRETUPSTREAM0123456789';
    const ac = new AbortController();
    const io = { ...createTestIo({ HOME: tmp.path, OPENAI_API_KEY: key }, tmp.path), signal: ac.signal };
    const done = main(['serve', '--port', '0', '--db', `${key}.db`, '--log-file', `${key}.log`], io);
    await until('the banner', () => io.err().includes('log file'));
    ac.abort();
    expect(await done).toBe(0);
    expect(io.err()).toContain(`  database   ${join(tmp.path, '[redacted].db')}\n`);
    expect(io.err()).toContain(`  log file   ${join(tmp.path, '[redacted].log')}\n`);
    expect(io.err()).not.toContain('SECRET');
    expect(existsSync(join(tmp.path, `${key}.db`))).toBe(true);
  });

  // Review: every configured secret of 6+ characters was scrubbed from the banner, so Ollama's documented
  // placeholder key hid its compose service name: `upstream http://[redacted]:11434/v1`.
  test('a short key (OPENAI_API_KEY=ollama) does not hide the host and directory of the same name', async () => {
    const tmp = createTempDir();
    cleanups.push(tmp.cleanup);
    mkdirSync(join(tmp.path, 'ollama'));
    const ac = new AbortController();
    const env = { HOME: tmp.path, OPENAI_API_KEY: 'ollama', OPENAI_BASE_URL: 'http://ollama:11434/v1' };
    const io = { ...createTestIo(env, tmp.path), signal: ac.signal };
    const done = main(['serve', '--port', '0', '--db', join(tmp.path, 'ollama', 'n.db')], io);
    await until('the banner', () => io.err().includes('log file'));
    ac.abort();
    expect(await done).toBe(0);
    expect(io.err()).toContain('  upstream   http://ollama:11434/v1  (key …****)\n');
    expect(io.err()).toContain(`  database   ${join(tmp.path, 'ollama', 'n.db')}\n`);
    expect(io.err()).not.toContain('[redacted]');
  });

  test('serve warns about each key too short to scrub, naming its setting, never the key', async () => {
    const { home, upstream, cleanup } = await createServeFixture();
    cleanups.push(cleanup);
    writeFileSync(
      join(home, 'oai-proxy.config.json'),
      JSON.stringify({ upstreams: { loc: { baseUrl: upstream.baseUrl, apiKey: 'Ab1' } } }),
    );
    const ac = new AbortController();
    const env = {
      HOME: home,
      PROXY_API_KEYS: 'long-enough-key,Zq9x7',
      ADMIN_API_KEY: 'Wv3k8',
      OPENAI_API_KEY: 'Qq7xy1',
    };
    const io = { ...createTestIo(env, home), signal: ac.signal };
    const done = main(['serve', '--port', '0', '--db', 'p.db', '--upstream', upstream.baseUrl], io);
    await until('the banner', () => /listening on/.test(io.err()));
    ac.abort();
    expect(await done).toBe(0);
    const warnings = io
      .err()
      .split('\n')
      .filter((l) => l.startsWith('warning: '));
    const file = join(home, 'oai-proxy.config.json');
    const why = 'is shorter than 6 characters, so it cannot be scrubbed from recorded bodies';
    expect(warnings).toEqual([
      expect.stringMatching(new RegExp(`^warning: ADMIN_API_KEY ${why}.*use a longer key$`)),
      expect.stringContaining(`warning: PROXY_API_KEYS, entry 2 ${why}`),
      expect.stringContaining(`warning: upstreams.loc.apiKey in config file ${file} ${why}`),
    ]);
    for (const key of ['Zq9x7', 'Wv3k8', 'Ab1']) expect(io.err()).not.toContain(key);
    // The 6-character OPENAI_API_KEY gets none: the scrubber takes keys from 6 characters on, and only those.
    expect(scrubSecrets('Qq7xy1 Zq9x7', ['Qq7xy1', 'Zq9x7'])).toBe('[redacted] Zq9x7');
  });

  test('a missing --config file → exit 2 naming the path', async () => {
    const tmp = createTempDir();
    cleanups.push(tmp.cleanup);
    const io = createTestIo({ HOME: tmp.path }, tmp.path);
    expect(await main(['serve', '--config', 'nope.json'], io)).toBe(2);
    expect(io.err()).toContain(join(tmp.path, 'nope.json'));
  });

  test('a port in use → runtime failure, exit 1', async () => {
    const tmp = createTempDir();
    cleanups.push(tmp.cleanup);
    const blocker = createServer();
    await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', () => r()));
    cleanups.push(() => new Promise((r) => blocker.close(r)));
    const port = (blocker.address() as { port: number }).port;
    const io = createTestIo({ HOME: tmp.path, LOG_LEVEL: 'silent' }, tmp.path);
    expect(await main(['serve', '--port', String(port), '--db', 'x.db'], io)).toBe(1);
    expect(io.err()).toMatch(new RegExp(`port ${port} is in use; choose another with --port or PORT`));
    // Found before start-up creates anything: no database, no log file beside it.
    expect(existsSync(join(tmp.path, 'x.db'))).toBe(false);
    expect(existsSync(join(tmp.path, 'oai-proxy.log'))).toBe(false);
  });

  test('--port 0 on a host this machine does not have → exit 1, nothing created, no registry seeded', async () => {
    const tmp = createTempDir();
    cleanups.push(tmp.cleanup);
    writeFileSync(join(tmp.path, 'cfg.json'), JSON.stringify({ modelMappings: { myalias: 'gpt-4o' } }));
    const io = createTestIo({ HOME: tmp.path, LOG_LEVEL: 'silent' }, tmp.path);
    // 203.0.113.0/24 is TEST-NET-3: never an address of this machine.
    const argv = ['serve', '--port', '0', '--host', '203.0.113.7', '--db', 'x.db', '--config', 'cfg.json'];
    expect(await main(argv, io)).toBe(1);
    expect(io.err()).toMatch(/Cannot listen on 203\.0\.113\.7:0/);
    expect(existsSync(join(tmp.path, 'x.db'))).toBe(false);
    expect(existsSync(join(tmp.path, 'oai-proxy.log'))).toBe(false);
  });

  test('another process holds the database locked through start-up → one line naming the file and what to do, exit 1', async () => {
    const tmp = createTempDir();
    cleanups.push(tmp.cleanup);
    const io0 = createTestIo({ HOME: tmp.path }, tmp.path);
    expect(await main(['models', 'add', 'llama3', '--db', 'x.db'], io0)).toBe(0);
    const other = new Database(join(tmp.path, 'x.db'));
    cleanups.push(() => other.close());
    other.exec('begin immediate');
    const io = createTestIo({ HOME: tmp.path, LOG_LEVEL: 'silent' }, tmp.path);
    // Start-up brings the registry in line with the configuration: it waits for the lock up to 5 s.
    expect(await main(['serve', '--port', '0', '--db', 'x.db'], io)).toBe(1);
    other.exec('rollback');
    expect(io.err()).toBe(
      `oai-proxy: Database ${join(tmp.path, 'x.db')} is locked by another process (another \`oai-proxy models\` or \`oai-proxy logs prune\`, or an sqlite3 shell in a write transaction) and stayed locked for 5 s; the proxy did not start. Try again once it has finished\n`,
    );
  }, 20_000);

  test.each([
    ['info', true],
    ['warn', false],
  ])('console not a terminal, LOG_LEVEL=%s: the exchange line is printed: %s', async (level, printed) => {
    const { home, upstream, cleanup } = await createServeFixture();
    cleanups.push(cleanup);
    const ac = new AbortController();
    const io = { ...createTestIo({ HOME: home, LOG_LEVEL: level }, home), signal: ac.signal };
    const done = main(['serve', '--port', '0', '--db', 'p.db', '--upstream', upstream.baseUrl], io);
    let url = '';
    for (let i = 0; i < 100 && !url; i++) {
      url = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(io.err())?.[1] ?? '';
      await new Promise((r) => setTimeout(r, 20));
    }
    expect((await fetch(`${url}/v1/models`)).status).toBe(200);
    ac.abort();
    expect(await done).toBe(0);
    const exchangeLines = io
      .err()
      .split('\n')
      .filter((l) => l.startsWith('{') && JSON.parse(l).path === '/v1/models');
    if (printed)
      expect(exchangeLines.map((l) => JSON.parse(l))).toEqual([
        expect.objectContaining({
          level: 30,
          status: 200,
          msg: expect.stringMatching(/^GET \/v1\/models 200 \d+ms/),
        }),
      ]);
    else expect(exchangeLines).toEqual([]);
    // The log file gets the line either way.
    const file = readFileSync(join(home, 'oai-proxy.log'), 'utf8');
    expect(file).toContain('"path":"/v1/models"');
  });

  test('an exit without close() (an uncaught error) still writes the batched log lines; close() unhooks it', async () => {
    const upstream = await createFakeUpstream();
    cleanups.push(() => upstream.close());
    const before = process.listeners('exit');
    const proxy = await startTestProxy({ OPENAI_BASE_URL: upstream.baseUrl });
    const flushAtExit = process
      .listeners('exit')
      .find((l) => !before.includes(l) && l.name === 'flushAtExit');
    expect(flushAtExit).toBeDefined();
    expect((await fetch(`${proxy.url}/v1/models`)).status).toBe(200);
    await proxy.waitForRows(1);
    // The line waits in the 20 ms batch; what process exit runs writes it synchronously.
    (flushAtExit as () => void)();
    expect(readFileSync(proxy.logPath, 'utf8')).toContain('"path":"/v1/models"');
    await proxy.close();
    expect(process.listeners('exit')).not.toContain(flushAtExit);
  });

  test.each([
    ['0.0.0.0', 'http://0.0.0.0', 'http://127.0.0.1'],
    ['::', 'http://[::]', 'http://[::1]'],
  ])(
    '--host %s: the banner says all interfaces and gives a base URL a client can use',
    async (host, listening, client) => {
      const { home, upstream, cleanup } = await createServeFixture();
      cleanups.push(cleanup);
      const ac = new AbortController();
      const io = { ...createTestIo({ HOME: home, LOG_LEVEL: 'silent' }, home), signal: ac.signal };
      const done = main(
        ['serve', '--host', host, '--port', '0', '--db', 'p.db', '--upstream', upstream.baseUrl],
        io,
      );
      await until('the banner', () => io.err().includes('client base URL'));
      const first = io.err().split('\n')[0];
      const port = /:(\d+) /.exec(first)![1];
      expect(first).toContain(
        ` listening on ${listening}:${port} (all interfaces)  (client base URL: ${client}:${port}/v1 here, this machine's address elsewhere)`,
      );
      const baseURL = /client base URL: (\S+)/.exec(first)![1];
      expect(baseURL).toBe(`${client}:${port}/v1`);
      const sdk = new OpenAI({ apiKey: 'sk-client-0000000000', baseURL, maxRetries: 0 });
      expect((await sdk.models.list()).data.map((m) => m.id)).toContain('gpt-4o');
      ac.abort();
      expect(await done).toBe(0);
    },
  );

  test('serve in-process: banner with the real port and masked key; stops on signal with exit 0', async () => {
    const { home, upstream, cleanup } = await createServeFixture();
    cleanups.push(cleanup);
    const ac = new AbortController();
    const io = {
      ...createTestIo(
        { HOME: home, LOG_LEVEL: 'silent', OPENAI_API_KEY: 'sk-test-banner-key-abcd9876' },
        home,
      ),
      signal: ac.signal,
    };
    const done = main(['serve', '--port', '0', '--db', 'p.db', '--upstream', upstream.baseUrl], io);
    let url = '';
    for (let i = 0; i < 100 && !url; i++) {
      url = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(io.err())?.[1] ?? '';
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(url).not.toBe('');
    expect(url).not.toMatch(/:0$/);
    expect(io.err()).toContain('sk-…9876');
    expect(io.err()).not.toContain('sk-test-banner-key-abcd9876');
    expect(io.err()).toContain(join(home, 'p.db'));
    expect(io.err()).toContain(join(home, 'oai-proxy.log'));
    const res = await fetch(`${url}/v1/models`);
    expect(res.status).toBe(200);
    ac.abort();
    expect(await done).toBe(0);
    const db = new Database(join(home, 'p.db'), { readonly: true });
    expect(db.prepare('select path, status from exchanges').all()).toEqual([
      { path: '/v1/models', status: 200 },
    ]);
    db.close();
  });
});

describe('serve: the console stream', () => {
  test('each run removes the error listener it put on the console (11 runs in one process warned MaxListenersExceeded)', async () => {
    const { home, upstream, cleanup } = await createServeFixture();
    cleanups.push(cleanup);
    // A real stream, as process.stderr is: it outlives every run of serve in this process.
    const stderr = new PassThrough();
    let printed = '';
    stderr.on('data', (d) => {
      printed += d;
    });
    const before = stderr.listenerCount('error');
    for (let run = 0; run < 2; run++) {
      const ac = new AbortController();
      const io = {
        ...createTestIo({ HOME: home, LOG_LEVEL: 'warn' }, home),
        stderr: Object.assign(stderr, { isTTY: false }),
        signal: ac.signal,
      };
      const done = main(['serve', '--port', '0', '--db', 'p.db', '--upstream', upstream.baseUrl], io);
      await until('listening', () => printed.split('listening on').length === run + 2);
      ac.abort();
      expect(await done).toBe(0);
      expect(stderr.listenerCount('error')).toBe(before);
    }
    expect(printed.match(/oai-proxy: stopped;/g)).toHaveLength(2);
  });
});

describe('serve: POST /admin/reload-config', () => {
  const ADMIN = 'admin-key-reload-0123456789abcdef';

  async function serveIn(dir: string, env: Record<string, string> = {}) {
    const ac = new AbortController();
    const io = { ...createTestIo({ HOME: dir, LOG_LEVEL: 'silent', ...env }, dir), signal: ac.signal };
    const done = main(['serve', '--port', '0', '--db', 'p.db'], io);
    cleanups.push(async () => {
      ac.abort();
      await done;
    });
    let url = '';
    await until('the banner', () => {
      url = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(io.err())?.[1] ?? '';
      return url !== '';
    });
    const reload = async () => {
      const res = await fetch(`${url}/admin/reload-config`, {
        method: 'POST',
        headers: { authorization: `Bearer ${ADMIN}` },
      });
      return { status: res.status, body: await res.json() };
    };
    return { url, reload };
  }

  test('the config file found at start-up moved away: 400 naming it, the old config stays (no fall-back to defaults)', async () => {
    const { home, upstream, cleanup } = await createServeFixture();
    cleanups.push(cleanup);
    const file = join(home, 'oai-proxy.config.json');
    writeFileSync(file, JSON.stringify({ openaiBaseUrl: upstream.baseUrl, adminApiKey: ADMIN }));
    const { url, reload } = await serveIn(home);
    expect((await reload()).status).toBe(200);

    renameSync(file, join(home, 'moved.json'));
    const refused = await reload();
    expect(refused.status).toBe(400);
    expect(refused.body.error.code).toBe('config_invalid');
    expect(refused.body.error.message).toBe(
      `Configuration not reloaded (the previous one stays in force): The config file ${file} in use is gone (moved or deleted); put it back there, or restart with --config naming its new path`,
    );
    // Still the old configuration: the admin key works, chat goes to the configured upstream.
    const admin = await fetch(`${url}/admin/models`, { headers: { authorization: `Bearer ${ADMIN}` } });
    expect(admin.status).toBe(200);
    const client = new OpenAI({ apiKey: 'sk-client-0000000000', baseURL: `${url}/v1`, maxRetries: 0 });
    await client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] });
    expect(upstream.requests.map((r) => r.url)).toEqual(['/v1/chat/completions']);

    // Put back (edited): read again from there.
    writeFileSync(
      file,
      JSON.stringify({
        openaiBaseUrl: upstream.baseUrl,
        adminApiKey: ADMIN,
        modelMappings: { fast: 'gpt-4o' },
      }),
    );
    const back = await reload();
    expect(back.status).toBe(200);
    expect(back.body.mappings).toEqual({ fast: 'gpt-4o' });
  });

  test('no config file at start-up: a reload finds one created since, and from then on keeps to it', async () => {
    const { home, upstream, cleanup } = await createServeFixture();
    cleanups.push(cleanup);
    const { reload } = await serveIn(home, { ADMIN_API_KEY: ADMIN });
    const file = join(home, 'oai-proxy.config.json');
    writeFileSync(
      file,
      JSON.stringify({ openaiBaseUrl: upstream.baseUrl, modelMappings: { fast: 'gpt-4o' } }),
    );
    const found = await reload();
    expect(found.status).toBe(200);
    expect(found.body.mappings).toEqual({ fast: 'gpt-4o' });
    renameSync(file, join(home, 'moved.json'));
    const refused = await reload();
    expect(refused.status).toBe(400);
    expect(refused.body.error.message).toContain(`The config file ${file} in use is gone`);
  });

  test('a reload whose base URL holds a query is refused as serve refuses it at start, the old config kept', async () => {
    const { home, upstream, cleanup } = await createServeFixture();
    cleanups.push(cleanup);
    const file = join(home, 'oai-proxy.config.json');
    writeFileSync(file, JSON.stringify({ openaiBaseUrl: upstream.baseUrl, adminApiKey: ADMIN }));
    const { url, reload } = await serveIn(home);
    writeFileSync(
      file,
      JSON.stringify({ openaiBaseUrl: `${upstream.baseUrl}?key=SECRET-reload-1`, adminApiKey: ADMIN }),
    );
    const refused = await reload();
    expect(refused.status).toBe(400);
    expect(refused.body.error.message).toContain(
      `Invalid "openaiBaseUrl" in config file ${file} = ${upstream.baseUrl}?key=***: expected a URL without ?query`,
    );
    expect(JSON.stringify(refused.body)).not.toContain('SECRET');
    const client = new OpenAI({ apiKey: 'sk-client-0000000000', baseURL: `${url}/v1`, maxRetries: 0 });
    await client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] });
    expect(upstream.requests.map((r) => r.url)).toEqual(['/v1/chat/completions']);
  });
});

// `--log-file` given the database's path (or a database named like a rotated log file): the lines were
// appended to the database file and lost at its next checkpoint, and a rotation renamed the database away
// (deleting it past LOG_MAX_FILES), leaving an empty one in its place.
describe('a log file that is the database, or would rotate it away', () => {
  test.each([
    [
      'the database',
      ['--db', 'p.db', '--log-file', 'p.db'],
      'is the database $/p.db (--db): its lines would be appended to the database and lost',
    ],
    [
      'its -wal file',
      ['--db', 'p.db', '--log-file', 'p.db-wal'],
      'is the -wal file of the database $/p.db-wal (--db): its lines would be appended to the database and lost',
    ],
    [
      'a link to the database',
      ['--db', 'p.db', '--log-file', 'link.log'],
      'is the database $/p.db (--db): its lines would be appended to the database and lost',
    ],
    [
      'named so that a rotation renames the database',
      ['--db', 'p.log.3', '--log-file', 'p.log'],
      'would rotate the database $/p.log.3 (--db) away: rotating the log file renames it, and deletes it past LOG_MAX_FILES',
    ],
  ])('%s: exit 2 naming both settings, the database untouched', async (_, args, harm) => {
    const tmp = createTempDir();
    cleanups.push(tmp.cleanup);
    const dbPath = join(tmp.path, args[1]);
    const db = new Database(dbPath);
    db.exec('create table kept (n integer); insert into kept values (42)');
    db.close();
    symlinkSync(dbPath, join(tmp.path, 'link.log'));
    const before = readFileSync(dbPath);
    const io = createTestIo({ HOME: tmp.path }, tmp.path);
    const code = await main(['serve', '--port', '0', ...args], io);
    const logPath = join(tmp.path, args[3]);
    expect(io.err()).toBe(
      `oai-proxy: The log file ${logPath} (--log-file) ${harm.replace('$', tmp.path)}; give the log file a path of its own with --log-file or LOG_FILE_PATH\n`,
    );
    expect(code).toBe(2);
    expect(readFileSync(dbPath).equals(before)).toBe(true);
    expect(readdirSync(tmp.path).sort()).toEqual([args[1], 'link.log'].sort());
  });
});

describe('the built bin', () => {
  /** `serve args…` from the built bin, killed after the test. */
  function startServe(args: string[], env: Record<string, string>): ServeProcess {
    const serve = spawnServe(args, { env });
    cleanups.push(serve.kill);
    return serve;
  }

  function runBin(
    args: string[],
    env: Record<string, string>,
  ): Promise<{ code: number | null; stderr: string }> {
    const child = spawn(process.execPath, [BIN, ...args], {
      env: { PATH: process.env.PATH ?? '', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    cleanups.push(() => child.exitCode === null && child.kill('SIGKILL'));
    let stderr = '';
    child.stderr!.on('data', (d) => {
      stderr += d;
    });
    return new Promise((resolve) => child.once('close', (code) => resolve({ code, stderr })));
  }

  // The path that cannot be used, named with what is wrong with it and what to do; no stack trace,
  // no "sonic boom is not ready yet" from the log file's flush at exit.
  test.each([
    [
      'a log file under a regular file',
      (t: string) => ['serve', '--port', '0', '--db', `${t}/p.db`, '--log-file', `${t}/afile/p.log`],
      2,
      (t: string) =>
        `oai-proxy: Cannot write the log file ${t}/afile/p.log: ${t}/afile is a file, not a directory; choose a writable path with --log-file or LOG_FILE_PATH\n`,
    ],
    [
      'a log file where no file can be created',
      (t: string) => ['serve', '--port', '0', '--db', `${t}/p.db`, '--log-file', '/proc/oai-proxy-test.log'],
      2,
      () =>
        'oai-proxy: Cannot write the log file /proc/oai-proxy-test.log: /proc does not take new files (ENOENT); choose a writable path with --log-file or LOG_FILE_PATH\n',
    ],
    [
      'a log file that is a directory',
      (t: string) => ['serve', '--port', '0', '--db', `${t}/p.db`, '--log-file', `${t}/adir`],
      2,
      (t: string) =>
        `oai-proxy: Cannot write the log file ${t}/adir: ${t}/adir is a directory; choose a writable path with --log-file or LOG_FILE_PATH\n`,
    ],
    // The tester's repro: these exited 1 while the same for --log-file exits 2 (README: a database serve
    // cannot write stops it with exit 2).
    [
      'a database under a regular file',
      (t: string) => ['serve', '--port', '0', '--db', `${t}/afile/x.db`],
      2,
      (t: string) =>
        `oai-proxy: Cannot create database ${t}/afile/x.db: ${t}/afile is a file, not a directory; choose another location with --db or DATABASE_URL\n`,
    ],
    [
      'a database that is a directory',
      (t: string) => ['serve', '--port', '0', '--db', `${t}/adir`],
      2,
      (t: string) =>
        `oai-proxy: Database ${t}/adir is a directory, not a database file; point --db / DATABASE_URL at a file (e.g. ${t}/adir/oai-proxy.db)\n`,
    ],
    [
      'logs reading a directory',
      (t: string) => ['logs', '--db', `${t}/adir`],
      1,
      (t: string) =>
        `oai-proxy: Database ${t}/adir is a directory, not a database file; point --db / DATABASE_URL at a file (e.g. ${t}/adir/oai-proxy.db)\n`,
    ],
  ])('%s: refuses to start, one line on stderr', async (_, args, code, message) => {
    const tmp = createTempDir();
    cleanups.push(tmp.cleanup);
    writeFileSync(join(tmp.path, 'afile'), '');
    mkdirSync(join(tmp.path, 'adir'));
    const run = await runBin(args(tmp.path), { HOME: tmp.path });
    expect(run.stderr).toBe(message(tmp.path));
    expect(run.code).toBe(code);
  });

  test('SIGUSR2 reopens the log file at its path (for an external logrotate)', async () => {
    const { home, dbPath, logPath, upstream, cleanup } = await createServeFixture();
    cleanups.push(cleanup);
    const { child, url } = startServe(
      ['--port', '0', '--db', dbPath, '--log-file', logPath, '--upstream', upstream.baseUrl],
      { HOME: home, LOG_LEVEL: 'warn' },
    );
    const base = await url;
    const lines = (p: string) => (existsSync(p) ? readFileSync(p, 'utf8').split('\n').filter(Boolean) : []);
    await fetch(`${base}/v1/files?n=1`);
    await until('the first line in the log file', () => lines(logPath).length === 1);
    renameSync(logPath, `${logPath}.rotated`);
    child.kill('SIGUSR2');
    await until('the log file reopened at its path', () => existsSync(logPath));
    await fetch(`${base}/v1/files?n=2`);
    await until('the second line in the new log file', () => lines(logPath).length === 1);
    expect(lines(`${logPath}.rotated`).map((l) => JSON.parse(l).path)).toEqual(['/v1/files']);
    expect(JSON.parse(lines(logPath)[0])).toMatchObject({ path: '/v1/files', status: 404 });
    child.kill('SIGTERM');
  });

  // logrotate's postrotate (`kill -USR2`) at the moment a deploy stops the proxy: SIGUSR2's default
  // action would end the process, cutting the stream and losing its row.
  test('SIGUSR2 during the shutdown grace reopens the log file; the stream finishes, every row and line is written, exit 0', async () => {
    const { home, dbPath, logPath, upstream, cleanup } = await createServeFixture();
    cleanups.push(cleanup);
    upstream.streamIntervalMs = 100;
    upstream.streamWords = 10;
    const { child, url, exited, stderr } = startServe(
      ['--port', '0', '--db', dbPath, '--log-file', logPath, '--upstream', upstream.baseUrl],
      { HOME: home, LOG_LEVEL: 'warn', SHUTDOWN_GRACE_MS: '5000' },
    );
    const base = await url;
    const lines = (p: string) => (existsSync(p) ? readFileSync(p, 'utf8').split('\n').filter(Boolean) : []);
    const client = new OpenAI({ apiKey: 'sk-x', baseURL: `${base}/v1`, maxRetries: 0 });
    await client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'one' }] });
    await until('the first line in the log file', () => lines(logPath).length === 1);
    const stream = await client.chat.completions.create({ model: 'gpt-4o', messages: [], stream: true });
    let text = '';
    let signalled = false;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta?.content ?? '';
      if (!signalled) {
        signalled = true;
        child.kill('SIGTERM');
        await until('the stop begun', () => /SIGTERM received/.test(stderr()));
        renameSync(logPath, `${logPath}.1`);
        child.kill('SIGUSR2');
      }
    }
    expect(text).toBe('w0 w1 w2 w3 w4 w5 w6 w7 w8 w9 ');
    expect(await exited).toBe(0);
    const db = new Database(dbPath, { readonly: true });
    const rows = db.prepare('select stream, status, error from exchanges order by started_at').all();
    db.close();
    expect(rows).toEqual([
      { stream: 0, status: 200, error: null },
      { stream: 1, status: 200, error: null },
    ]);
    expect(lines(`${logPath}.1`).map((l) => JSON.parse(l).stream)).toEqual([false]);
    expect(lines(logPath).map((l) => JSON.parse(l).stream)).toEqual([true]);
  });

  test('on a terminal the console is pretty-printed, one line per exchange', async () => {
    const { home, upstream, cleanup } = await createServeFixture();
    cleanups.push(cleanup);
    const ac = new AbortController();
    const io = { ...createTestIo({ HOME: home }, home), signal: ac.signal };
    io.stderr.isTTY = true;
    const done = main(['serve', '--port', '0', '--db', 'p.db', '--upstream', upstream.baseUrl], io);
    let base = '';
    for (let i = 0; i < 100 && !base; i++) {
      base = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(io.err())?.[1] ?? '';
      await new Promise((r) => setTimeout(r, 20));
    }
    await fetch(`${base}/v1/files`);
    for (let i = 0; i < 100 && !io.err().includes('GET /v1/files 404'); i++)
      await new Promise((r) => setTimeout(r, 20));
    ac.abort();
    expect(await done).toBe(0);
    const line = io
      .err()
      .split('\n')
      .find((l) => l.includes('GET /v1/files 404'));
    expect(line).toBeDefined();
    expect(line!.trimStart().startsWith('{')).toBe(false);
    expect(line).toMatch(/INFO/);
    // One line per exchange: the fields are in the log file, not repeated on the console.
    expect(io.err()).not.toMatch(/^\s+duration_ms:/m);
  });

  test.each([
    { env: {}, colour: true },
    { env: { NO_COLOR: '1' }, colour: false },
  ])(
    "on a terminal with $env the console is coloured: $colour; a client's model never reaches it raw",
    async ({ env, colour }) => {
      const { home, upstream, cleanup } = await createServeFixture();
      cleanups.push(cleanup);
      const ac = new AbortController();
      const io = { ...createTestIo({ HOME: home, ...env }, home), signal: ac.signal };
      io.stderr.isTTY = true;
      const done = main(['serve', '--port', '0', '--db', 'p.db', '--upstream', upstream.baseUrl], io);
      await until('listening', () => /listening on http:\/\/127\.0\.0\.1:\d+/.test(io.err()));
      const base = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(io.err())![1];
      const model = 'evil\u001b]0;TITLE\u0007\u009b2J\u202e\nfake';
      const res = await fetch(`${base}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model, messages: [] }),
      });
      await res.arrayBuffer();
      await until('the exchange line', () => io.err().includes('POST /v1/chat/completions'));
      ac.abort();
      expect(await done).toBe(0);
      expect(io.err().includes('\u001b['), io.err()).toBe(colour);
      // Only the console's own colours remain: no OSC, BEL, C1, bidi override or injected newline.
      const text = io.err().replace(/\u001b\[[0-9;]*m/g, '');
      expect(text).not.toMatch(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u202a-\u202e]/);
      expect(text).toContain('evil\\x1b]0;TITLE\\x07\\x9b2J\\u202e\\nfake');
    },
  );

  // A log shipper or supervisor restarting, `serve 2>&1 | head`: the console's reader goes away.
  test('the console reader goes away: serve keeps answering and recording, exit 0 on SIGTERM', async () => {
    const { home, dbPath, logPath, upstream, cleanup } = await createServeFixture();
    cleanups.push(cleanup);
    const { child, url, exited } = startServe(
      ['--port', '0', '--db', dbPath, '--log-file', logPath, '--upstream', upstream.baseUrl],
      { HOME: home },
    );
    const base = await url;
    child.stderr!.destroy();
    const client = new OpenAI({ apiKey: 'sk-x', baseURL: `${base}/v1`, maxRetries: 0 });
    for (const content of ['one', 'two', 'three']) {
      const answer = await client.chat.completions.create({
        model: 'gpt-4o',
        messages: [{ role: 'user', content }],
      });
      expect(answer.choices[0].message.content).toBe('Hello from the fake upstream!');
      await new Promise((r) => setTimeout(r, 50)); // the console line of each is written (and fails)
    }
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    const db = new Database(dbPath, { readonly: true });
    const rows = db.prepare('select status from exchanges').all();
    db.close();
    expect(rows).toEqual([{ status: 200 }, { status: 200 }, { status: 200 }]);
    expect(readFileSync(logPath, 'utf8').split('\n').filter(Boolean)).toHaveLength(3);
  });

  test('a console that cannot be written (2>/dev/full): serve starts, answers and records', async () => {
    const { home, dbPath, upstream, cleanup } = await createServeFixture();
    cleanups.push(cleanup);
    // No banner to read the port from: take a free one (released just before serve binds it).
    const probe = createServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', () => r()));
    const port = (probe.address() as { port: number }).port;
    await new Promise((r) => probe.close(r));
    const full = openSync('/dev/full', 'w');
    const child = spawn(
      process.execPath,
      [BIN, 'serve', '--port', String(port), '--db', dbPath, '--upstream', upstream.baseUrl],
      { env: { PATH: process.env.PATH ?? '', HOME: home }, stdio: ['ignore', 'ignore', full] },
    );
    closeSync(full);
    cleanups.push(() => child.exitCode === null && child.kill('SIGKILL'));
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    const base = `http://127.0.0.1:${port}`;
    await until(
      'serve listening',
      async () => (await fetch(`${base}/health`).catch(() => null))?.ok === true,
    );
    const client = new OpenAI({ apiKey: 'sk-x', baseURL: `${base}/v1`, maxRetries: 0 });
    for (const content of ['one', 'two']) {
      await client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content }] });
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(child.exitCode).toBe(null);
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    const db = new Database(dbPath, { readonly: true });
    expect(db.prepare('select count(*) as n from exchanges').get()).toEqual({ n: 2 });
    db.close();
  });

  test('SIGTERM with a stream in flight: the stream finishes, its row is written, exit 0', async () => {
    const { home, dbPath, upstream, cleanup } = await createServeFixture();
    cleanups.push(cleanup);
    upstream.streamIntervalMs = 60;
    upstream.streamWords = 10;
    const { child, url, exited } = startServe(
      ['--port', '0', '--db', dbPath, '--upstream', upstream.baseUrl],
      {
        HOME: home,
        LOG_LEVEL: 'warn',
        SHUTDOWN_GRACE_MS: '5000',
      },
    );
    const base = await url;
    const client = new OpenAI({ apiKey: 'sk-x', baseURL: `${base}/v1`, maxRetries: 0 });
    await client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'one' }] });
    const stream = await client.chat.completions.create({ model: 'gpt-4o', messages: [], stream: true });
    let text = '';
    let signalled = false;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta?.content ?? '';
      if (!signalled) {
        signalled = true;
        child.kill('SIGTERM');
      }
    }
    expect(text).toBe('w0 w1 w2 w3 w4 w5 w6 w7 w8 w9 ');
    expect(await exited).toBe(0);
    const db = new Database(dbPath, { readonly: true });
    const rows = db
      .prepare('select stream, status, error, assembled from exchanges order by started_at')
      .all() as { stream: number; status: number; error: string | null; assembled: string | null }[];
    db.close();
    expect(rows).toHaveLength(2);
    expect(rows[1]).toMatchObject({ stream: 1, status: 200, error: null });
    expect(JSON.parse(rows[1].assembled!)).toMatchObject({ content: text, complete: true });
  });
});
