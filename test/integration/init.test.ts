import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import OpenAI from 'openai';
import { afterEach, describe, expect, test } from 'vitest';
import { main } from '../../src/cli.js';
import { resolveConfig } from '../../src/config/load.js';
import { defaultConfigPath } from '../../src/config/paths.js';
import { CHAT_ANSWER, createFakeUpstream, type FakeUpstream } from '../helpers/fake-upstream.js';
import { createTempDir } from '../helpers/temp-dir.js';
import { createTestIo } from '../helpers/test-proxy.js';

const KEY = 'sk-init-test-secret-key-0123456789wxyz';
const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function tempHome() {
  const tmp = createTempDir();
  cleanups.push(tmp.cleanup);
  const env = {
    HOME: tmp.path,
    XDG_CONFIG_HOME: join(tmp.path, 'config'),
    XDG_DATA_HOME: join(tmp.path, 'data'),
  };
  return { dir: tmp.path, env, configPath: defaultConfigPath(env) };
}

async function fakeUpstream(): Promise<FakeUpstream> {
  const fake = await createFakeUpstream();
  cleanups.push(() => fake.close());
  return fake;
}

function readJson(path: string): Record<string, any> {
  return JSON.parse(readFileSync(path, 'utf8'));
}

describe('oai-proxy init --yes', () => {
  test('writes defaults plus flags to the XDG config file, mode 0600, key from OPENAI_API_KEY, masked output', async () => {
    const h = tempHome();
    const io = createTestIo({ ...h.env, OPENAI_API_KEY: KEY }, h.dir);
    const code = await main(
      [
        'init',
        '--yes',
        '--port',
        '9123',
        '--host',
        '0.0.0.0',
        '--db',
        'rec/proxy.db',
        '--model-policy',
        'record',
      ],
      io,
    );
    expect(io.err()).toBe('');
    expect(code).toBe(0);
    // No openaiApiType, no logFilePath: serve derives them (see "init writes only what…" below).
    expect(readJson(h.configPath)).toEqual({
      openaiBaseUrl: 'https://api.openai.com/v1',
      openaiApiKey: KEY,
      host: '0.0.0.0',
      port: 9123,
      databaseUrl: join(h.dir, 'rec/proxy.db'),
      validateModels: true,
      allowUnknownModels: true,
    });
    expect(statSync(h.configPath).mode & 0o777).toBe(0o600);
    expect(readdirSync(join(h.dir, 'config', 'oai-proxy'))).toEqual(['config.json']);
    const out = io.out();
    expect(out).toContain(`Wrote ${h.configPath} (mode 0600)`);
    expect(out).toContain('"openaiApiKey": "sk-…wxyz"');
    expect(out).not.toContain(KEY);
    expect(out).toContain('Next: oai-proxy serve\n');
    expect(out).toContain('http://0.0.0.0:9123/v1');
    // No --check by default with --yes: nothing was asked of any upstream.
    expect(out).not.toMatch(/upstream (reachable|unreachable|unauthorised)/);
  });

  test('without OPENAI_API_KEY no key is written: clients’ own keys are forwarded', async () => {
    const h = tempHome();
    const io = createTestIo(h.env, h.dir);
    expect(await main(['init', '--yes'], io)).toBe(0);
    const written = readJson(h.configPath);
    expect(written).not.toHaveProperty('openaiApiKey');
    expect(written).not.toHaveProperty('databaseUrl');
    expect(written.port).toBe(8000);
  });

  test('`serve` with no flags picks up the written file and forwards to its upstream with its key', async () => {
    const h = tempHome();
    const fake = await fakeUpstream();
    const initIo = createTestIo({ ...h.env, OPENAI_API_KEY: KEY }, h.dir);
    expect(
      await main(['init', '--yes', '--upstream', fake.baseUrl, '--port', '0', '--db', 'served.db'], initIo),
    ).toBe(0);

    // No OPENAI_API_KEY, no flags: everything comes from the file init wrote.
    const ac = new AbortController();
    const serveIo = { ...createTestIo({ ...h.env, LOG_LEVEL: 'silent' }, h.dir), signal: ac.signal };
    const done = main(['serve'], serveIo);
    let url = '';
    for (let i = 0; i < 200 && !url; i++) {
      url = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(serveIo.err())?.[1] ?? '';
      if (!url) await new Promise((r) => setTimeout(r, 20));
    }
    expect(serveIo.err()).toContain(`config     ${h.configPath}`);
    const client = new OpenAI({ apiKey: 'sk-client-own-key', baseURL: `${url}/v1`, maxRetries: 0 });
    const answer = await client.chat.completions.create({
      model: 'gpt-4o',
      messages: [{ role: 'user', content: 'hi' }],
    });
    expect(answer.choices[0].message.content).toBe(CHAT_ANSWER);
    expect(fake.requests.at(-1)!.headers.authorization).toBe(`Bearer ${KEY}`);
    ac.abort();
    expect(await done).toBe(0);
    expect(existsSync(join(h.dir, 'served.db'))).toBe(true);
    expect(serveIo.err()).not.toContain(KEY);
  });

  test('refuses to overwrite an existing file without --force (exit 1, file untouched)', async () => {
    const h = tempHome();
    mkdirSync(join(h.dir, 'config', 'oai-proxy'), { recursive: true });
    writeFileSync(h.configPath, '{"port": 7000}\n');
    const io = createTestIo(h.env, h.dir);
    expect(await main(['init', '--yes', '--port', '9000'], io)).toBe(1);
    expect(io.err()).toBe(
      `oai-proxy: Config file ${h.configPath} already exists; add --force to overwrite it (its values and the keys init does not manage are kept unless flags change them)\n`,
    );
    expect(readFileSync(h.configPath, 'utf8')).toBe('{"port": 7000}\n');
    // A bad flag is named first (exit 2), whether or not the file exists.
    const bad = createTestIo(h.env, h.dir);
    expect(await main(['init', '--yes', '--port', '70000'], bad)).toBe(2);
    expect(bad.err()).toMatch(/^oai-proxy: Invalid --port = 70000: /);
    expect(readFileSync(h.configPath, 'utf8')).toBe('{"port": 7000}\n');
  });

  test('--force keeps existing values and unknown keys, applies the flags, and tightens the mode to 0600', async () => {
    const h = tempHome();
    mkdirSync(join(h.dir, 'config', 'oai-proxy'), { recursive: true });
    writeFileSync(
      h.configPath,
      JSON.stringify({
        openaiBaseUrl: 'http://127.0.0.1:11434/v1',
        openaiApiKey: 'sk-kept-from-file-1111',
        port: 7000,
        logLevel: 'debug',
        myOwnNote: { keep: 'me' },
        upstreams: { local: { baseUrl: 'http://127.0.0.1:9/v1', type: 'openai' } },
      }),
      { mode: 0o644 },
    );
    const io = createTestIo(h.env, h.dir);
    expect(await main(['init', '--yes', '--force', '--model-policy', 'strict'], io)).toBe(0);
    const written = readJson(h.configPath);
    expect(written).toMatchObject({
      openaiBaseUrl: 'http://127.0.0.1:11434/v1',
      openaiApiKey: 'sk-kept-from-file-1111',
      port: 7000,
      logLevel: 'debug',
      myOwnNote: { keep: 'me' },
      upstreams: { local: { baseUrl: 'http://127.0.0.1:9/v1', type: 'openai' } },
      validateModels: true,
      allowUnknownModels: false,
    });
    expect(statSync(h.configPath).mode & 0o777).toBe(0o600);
    expect(io.out()).not.toContain('sk-kept-from-file-1111');
  });

  test("--force with an upstream on another host does not carry the file's key there (unless OPENAI_API_KEY gives one)", async () => {
    const h = tempHome();
    mkdirSync(join(h.dir, 'config', 'oai-proxy'), { recursive: true });
    // No openaiBaseUrl: the key was going to OpenAI's API (serve's default).
    writeFileSync(h.configPath, JSON.stringify({ openaiApiKey: KEY, port: 7000 }));
    const io = createTestIo(h.env, h.dir);
    const args = [
      'init',
      '--yes',
      '--force',
      '--kind',
      'compatible',
      '--upstream',
      'http://10.1.2.3:8000/v1',
    ];
    expect(await main([...args, '--no-check'], io)).toBe(0);
    const written = readJson(h.configPath);
    expect(written).toMatchObject({ openaiBaseUrl: 'http://10.1.2.3:8000/v1', port: 7000 });
    expect(written).not.toHaveProperty('openaiApiKey');
    expect(io.err()).toContain(
      "warning: the existing file's API key was written for https://api.openai.com; it is not kept for http://10.1.2.3:8000. Set OPENAI_API_KEY to write the key for the new upstream\n",
    );
    expect(`${io.out()}${io.err()}`).not.toContain(KEY);
    // The same host on another path keeps it; a key from the environment is written whatever the host.
    writeFileSync(
      h.configPath,
      JSON.stringify({ openaiBaseUrl: 'http://10.1.2.3:8000/v1', openaiApiKey: KEY }),
    );
    const same = createTestIo(h.env, h.dir);
    expect(
      await main(
        ['init', '--yes', '--force', '--upstream', 'http://10.1.2.3:8000/api/v1', '--no-check'],
        same,
      ),
    ).toBe(0);
    expect(readJson(h.configPath).openaiApiKey).toBe(KEY);
    expect(same.err()).toBe('');
    const fromEnv = createTestIo({ ...h.env, OPENAI_API_KEY: 'sk-env-key-for-new-host-5555' }, h.dir);
    expect(await main([...args.slice(0, -1), 'http://10.9.9.9:8000/v1', '--no-check'], fromEnv)).toBe(0);
    expect(readJson(h.configPath).openaiApiKey).toBe('sk-env-key-for-new-host-5555');
    expect(fromEnv.err()).toBe('');
  });

  // The tester's repro: the printed file showed Cookie and X-Signature in clear, X-Api-Key masked.
  test('the file printed after writing masks every secret header of an upstream, Cookie and *signature* too', async () => {
    const h = tempHome();
    const path = join(h.dir, 'that.json');
    const headers = {
      Cookie: 'session=COOKIESECRET12345',
      'X-Signature': 'sig-SIGNATURESECRET',
      'X-Api-Key': 'APIKEYSECRET-6789',
      'Proxy-Authorization': 'Basic PROXYSECRET-4321',
      'X-Provider': 'openai',
    };
    writeFileSync(
      path,
      JSON.stringify({ upstreams: { local: { baseUrl: 'http://127.0.0.1:9/v1', headers } } }),
    );
    const io = createTestIo(h.env, h.dir);
    expect(await main(['init', '--yes', '--force', '-c', path], io)).toBe(0);
    expect(readJson(path).upstreams.local.headers).toEqual(headers);
    const out = io.out();
    expect(out).not.toMatch(/SECRET/);
    for (const shown of [
      '"Cookie": "…2345"',
      '"X-Signature": "…CRET"',
      '"X-Api-Key": "…6789"',
      '"X-Provider": "openai"',
    ])
      expect(out).toContain(shown);
  });

  test('an existing file that is not JSON: exit 2 naming it and --force; with --force it is replaced', async () => {
    const h = tempHome();
    mkdirSync(join(h.dir, 'config', 'oai-proxy'), { recursive: true });
    writeFileSync(h.configPath, '{ not json');
    const io = createTestIo(h.env, h.dir);
    expect(await main(['init', '--yes'], io)).toBe(2);
    expect(io.err()).toContain(`Config file ${h.configPath} is not valid JSON`);
    expect(io.err()).toContain('rerun with --force to replace it');
    const io2 = createTestIo(h.env, h.dir);
    expect(await main(['init', '--yes', '--force'], io2)).toBe(0);
    expect(readJson(h.configPath).port).toBe(8000);
  });

  test('--force over a file that is not JSON warns that its contents are lost, naming the file, no value', async () => {
    const h = tempHome();
    const path = join(h.dir, 'bad.json');
    writeFileSync(path, '{"apiKey": "sk-lost-in-bad-file-4242", "port": 9123,');
    const io = createTestIo(h.env, h.dir);
    expect(await main(['init', '--yes', '--force', '-c', 'bad.json', '--no-check'], io)).toBe(0);
    expect(readJson(path).port).toBe(8000);
    const err = io.err();
    expect(err.split('\n')).toHaveLength(2); // one line
    expect(err).toMatch(/^warning: /);
    expect(err).toContain(`Config file ${path} is not valid JSON: `);
    expect(err).toMatch(/; its contents could not be read and are not kept: --force replaces the file\n$/);
    expect(err).not.toContain('sk-lost');
    expect(err).not.toContain('9123');
    expect(io.out()).not.toContain('sk-lost');
  });

  test('--config PATH writes there and the next command names it', async () => {
    const h = tempHome();
    const io = createTestIo(h.env, h.dir);
    expect(await main(['init', '--yes', '--config', 'sub dir/my.json'], io)).toBe(0);
    const path = join(h.dir, 'sub dir', 'my.json');
    expect(readJson(path).host).toBe('127.0.0.1');
    expect(existsSync(h.configPath)).toBe(false);
    expect(io.out()).toContain(`Next: oai-proxy serve --config '${path}'`);
    expect(resolveConfig({ configPath: path, env: h.env, cwd: h.dir, dotenv: false }).config.port).toBe(8000);
  });

  test('--generate-admin-key stores a strong key and prints it in full exactly once', async () => {
    const h = tempHome();
    const io = createTestIo(h.env, h.dir);
    expect(await main(['init', '--yes', '--generate-admin-key'], io)).toBe(0);
    const key = readJson(h.configPath).adminApiKey as string;
    expect(key).toMatch(/^oaip_[A-Za-z0-9_-]{43}$/);
    expect(io.out().split(key)).toHaveLength(2);
    expect(io.out()).toContain('shown only this once');
  });

  test('Azure: --kind azure needs a real endpoint, writes type and api-version', async () => {
    const h = tempHome();
    const io = createTestIo(h.env, h.dir);
    expect(await main(['init', '--yes', '--kind', 'azure'], io)).toBe(2);
    expect(io.err()).toContain('replace YOUR-RESOURCE with your Azure OpenAI resource name');
    expect(existsSync(h.configPath)).toBe(false);

    const io2 = createTestIo(h.env, h.dir);
    const url = 'https://contoso.openai.azure.com/openai';
    expect(
      await main(
        ['init', '--yes', '--kind', 'azure', '--upstream', url, '--api-version', '2025-04-01-preview'],
        io2,
      ),
    ).toBe(0);
    expect(readJson(h.configPath)).toMatchObject({
      openaiBaseUrl: url,
      openaiApiType: 'azure',
      openaiApiVersion: '2025-04-01-preview',
    });
  });

  test.each([
    [['--port', '70000'], 'Invalid --port = 70000: expected an integer from 0 to 65535'],
    [['--port', 'abc'], 'Invalid --port = abc:'],
    [
      ['--upstream', 'ftp://example.test/v1'],
      'Invalid --upstream = ftp://example.test/v1: expected an http:// or https:// URL',
    ],
    [['--upstream', 'not a url'], 'expected an absolute URL'],
    [['--host', 'bad host'], 'Invalid --host = bad host:'],
    [['--kind', 'bedrock'], 'Invalid --kind = bedrock: expected openai, azure or compatible'],
    [['--model-policy', 'maybe'], 'expected off, strict or record'],
    [['--api-version', 'latest'], 'Invalid --api-version = latest:'],
    [
      ['--db', 'postgres://oai:pw-9f3k@db.internal:5432'],
      'Invalid --db = postgres://oai:***@db.internal:5432: names no database',
    ],
    [['--db', 'postgres://oai:pw-9f3k@/oai_proxy'], 'not a valid URL'],
    [['--db', 'postgres:///oai_proxy'], 'names no host'],
    [['--qdrant-url', 'qdrant:6333'], 'Invalid --qdrant-url'],
  ])('bad flag %j → exit 2, a message naming it, no file', async (flags, message) => {
    const h = tempHome();
    const io = createTestIo(h.env, h.dir);
    expect(await main(['init', '--yes', ...flags], io)).toBe(2);
    expect(io.err()).toContain(message);
    expect(io.err()).not.toContain('pw-9f3k');
    expect(io.err().trim().split('\n')).toHaveLength(1);
    expect(existsSync(h.configPath)).toBe(false);
  });

  // The tester's repro: a key pasted into a flag is refused as `serve --port "$OPENAI_API_KEY"` is, never
  // quoted, whether the key is a known one (the environment's, the file's) or only shaped like a key.
  const PASTED = 'sk-proj-INITKEY-abcdefghijklmnop';
  test.each([
    [
      { OPENAI_API_KEY: PASTED },
      ['--upstream', PASTED],
      'Invalid --upstream = [redacted]: expected an absolute URL',
    ],
    [
      { OPENAI_API_KEY: PASTED },
      ['--qdrant-url', PASTED],
      'Invalid --qdrant-url = [redacted]: expected an absolute',
    ],
    [
      { OPENAI_API_KEY: PASTED },
      ['--port', PASTED],
      'Invalid --port = [redacted]: expected an integer from 0',
    ],
    [
      { OPENAI_API_KEY: PASTED },
      ['--upstream', `http://h.test/v1?key=${PASTED}`],
      'Invalid --upstream = http://h.test/v1?key=***: leave out ?query and #fragment',
    ],
    [
      {},
      ['--upstream', 'http://h.test/v1?api-version=2024-10-21&key=INITKEY-plain'],
      'Invalid --upstream = http://h.test/v1?api-version=2024-10-21&key=***: leave out ?query',
    ],
    [
      { ADMIN_API_KEY: PASTED },
      ['--port', PASTED],
      'Invalid --port = [redacted]: expected an integer from 0',
    ],
    [
      { ADMIN_API_KEY: PASTED },
      ['--host', `${PASTED}!`],
      'Invalid --host = [redacted]!: expected a host name',
    ],
    [{}, ['--port', PASTED], 'Invalid --port = sk-…mnop (looks like a key; not shown): expected an integer'],
    [
      {},
      ['--api-version', PASTED],
      'Invalid --api-version = sk-…mnop (looks like a key; not shown): expected',
    ],
  ])('%j, init --yes %j → exit 2, the key not shown', async (keys, flags, message) => {
    const h = tempHome();
    const io = createTestIo({ ...h.env, ...keys }, h.dir);
    expect(await main(['init', '--yes', '-c', './k.json', ...flags], io)).toBe(2);
    expect(io.err()).toContain(`oai-proxy: ${message}`);
    expect(io.err().trim().split('\n')).toHaveLength(1);
    expect(io.err() + io.out()).not.toContain('INITKEY');
    expect(existsSync(join(h.dir, 'k.json'))).toBe(false);
  });

  // A key is a valid host name and file name: written as given, then printed [redacted], never as is.
  test('a key pasted into --host or --log-file is written, and printed as [redacted]', async () => {
    const h = tempHome();
    const io = createTestIo({ ...h.env, OPENAI_API_KEY: PASTED }, h.dir);
    const flags = ['--host', PASTED, '--log-file', `${PASTED}.log`];
    expect(await main(['init', '--yes', '-c', './k.json', ...flags], io)).toBe(0);
    expect(readJson(join(h.dir, 'k.json'))).toMatchObject({
      host: PASTED,
      logFilePath: join(h.dir, `${PASTED}.log`),
    });
    const out = io.out();
    expect(out).not.toContain('INITKEY');
    expect(out).toContain('"host": "[redacted]"');
    expect(out).toContain(`"logFilePath": "${join(h.dir, '[redacted].log')}"`);
    expect(out).toContain('then point OpenAI clients at http://[redacted]:8000/v1');
  });

  // A query is refused by serve, which uses the URL, no longer by config load: init's check after writing
  // asks what serve would, so it still says serve would refuse (the key masked).
  test('an OPENAI_BASE_URL with a ?query: written, and a warning that serve would refuse it, the key masked', async () => {
    const h = tempHome();
    const io = createTestIo({ ...h.env, OPENAI_BASE_URL: 'http://h.test/v1?key=SECRET-query-1' }, h.dir);
    expect(await main(['init', '--yes', '--no-check', '-c', './k.json'], io)).toBe(0);
    expect(io.err()).toBe(
      'warning: serve would currently refuse to start: Invalid OPENAI_BASE_URL (environment) = http://h.test/v1?key=***: expected a URL without ?query or #fragment (neither is ever sent; ?api-version alone is taken, for an Azure upstream, as its api-version); put a key in OPENAI_API_KEY\n',
    );
    expect(io.out()).not.toContain('SECRET');
  });

  // Review: every secret of 6+ characters was scrubbed from init's output, so Ollama's placeholder key
  // turned the URL and path it wrote into http://[redacted]:11434/v1 and …/[redacted]/n.db.
  test('a short key (OPENAI_API_KEY=ollama) does not hide the host and directory of the same name', async () => {
    const h = tempHome();
    mkdirSync(join(h.dir, 'ollama'));
    const io = createTestIo({ ...h.env, OPENAI_API_KEY: 'ollama' }, h.dir);
    const flags = ['--upstream', 'http://ollama:11434/v1', '--db', 'ollama/n.db', '--no-check'];
    expect(await main(['init', '--yes', '-c', './k.json', ...flags], io)).toBe(0);
    const out = io.out();
    expect(out).toContain('"openaiBaseUrl": "http://ollama:11434/v1"');
    expect(out).toContain(`"databaseUrl": "${join(h.dir, 'ollama', 'n.db')}"`);
    expect(out).toContain('"openaiApiKey": "…****"');
    expect(out).not.toContain('[redacted]');
  });

  // Serve takes an Azure portal base URL's ?api-version as the api-version; init writes it so.
  test.each([
    [[], '2024-02-01', ''],
    [
      ['--api-version', '2024-10-21'],
      '2024-10-21',
      'warning: --upstream holds ?api-version=2024-02-01, but --api-version is 2024-10-21, which is written\n',
    ],
  ])(
    "--upstream pasted from Azure's portal (%j): the URL without its ?api-version, api-version %s",
    async (flags, written, err) => {
      const h = tempHome();
      const io = createTestIo(h.env, h.dir);
      const portal = 'https://x.openai.azure.com/openai/deployments/gpt4o?api-version=2024-02-01';
      const argv = ['init', '--yes', '-c', './k.json', '--no-check', '--upstream', portal, ...flags];
      expect(await main(argv, io)).toBe(0);
      expect(io.err()).toBe(err);
      expect(readJson(join(h.dir, 'k.json'))).toMatchObject({
        openaiBaseUrl: 'https://x.openai.azure.com/openai/deployments/gpt4o',
        openaiApiType: 'azure',
        openaiApiVersion: written,
      });
    },
  );

  test('--upstream from the portal with another query parameter too is still refused, the key masked', async () => {
    const h = tempHome();
    const io = createTestIo(h.env, h.dir);
    const url = 'https://x.openai.azure.com/openai/deployments/d?api-version=2024-02-01&sig=SECRET-sig-7';
    expect(await main(['init', '--yes', '-c', './k.json', '--upstream', url], io)).toBe(2);
    expect(io.err()).toBe(
      'oai-proxy: Invalid --upstream = https://x.openai.azure.com/openai/deployments/d?api-version=2024-02-01&sig=***: leave out ?query and #fragment\n',
    );
    expect(existsSync(join(h.dir, 'k.json'))).toBe(false);
  });

  test('a key the existing file holds, pasted into a flag, is not shown either', async () => {
    const h = tempHome();
    const path = join(h.dir, 'k.json');
    writeFileSync(
      path,
      JSON.stringify({ upstreams: { loc: { baseUrl: 'http://127.0.0.1:9/v1', apiKey: 'FILEKEY-0123' } } }),
    );
    const io = createTestIo(h.env, h.dir);
    expect(await main(['init', '--yes', '--force', '-c', path, '--port', 'FILEKEY-0123'], io)).toBe(2);
    expect(io.err()).toContain('Invalid --port = [redacted]: expected an integer');
    expect(io.err() + io.out()).not.toContain('FILEKEY');
  });

  test('a postgres:// --db is written as given; its password never appears in the output', async () => {
    const h = tempHome();
    const url = 'postgres://oai:pw-9f3k-secret@db.internal:5432/oai_proxy?sslmode=require';
    const io = createTestIo(h.env, h.dir);
    expect(await main(['init', '--yes', '--db', url], io)).toBe(0);
    expect(io.out() + io.err()).not.toContain('pw-9f3k-secret');
    expect(io.out()).toContain(
      '"databaseUrl": "postgres://oai:***@db.internal:5432/oai_proxy?sslmode=require"',
    );
    const written = readJson(h.configPath);
    expect(written.databaseUrl).toBe(url);
    expect(written).not.toHaveProperty('logFilePath');
    // serve, models and logs resolve it to the PostgreSQL database.
    const resolved = resolveConfig({ env: h.env, cwd: h.dir });
    expect(resolved.config.databaseUrl).toBe(url);
  });

  test('unwritable locations are refused on the spot: database under a file, config under a file', async () => {
    const h = tempHome();
    writeFileSync(join(h.dir, 'plain-file'), 'x');
    const io = createTestIo(h.env, h.dir);
    expect(await main(['init', '--yes', '--db', 'plain-file/proxy.db'], io)).toBe(2);
    expect(io.err()).toContain(
      `${join(h.dir, 'plain-file')} is a file, so no directory can be created under it`,
    );
    const io2 = createTestIo(h.env, h.dir);
    expect(await main(['init', '--yes', '--log-file', h.dir], io2)).toBe(2);
    expect(io2.err()).toContain(`${h.dir} is a directory; give a file path`);
    const io3 = createTestIo(h.env, h.dir);
    expect(await main(['init', '--yes', '--config', 'plain-file/c.json'], io3)).toBe(2);
    expect(io3.err()).toContain(`Cannot write the config file ${join(h.dir, 'plain-file', 'c.json')}`);
    expect(existsSync(h.configPath)).toBe(false);
  });

  // init looked at the environment only, so OAI_PROXY_CONFIG in ./.env (which serve honours) was ignored:
  // the file went to ~/.config and serve, reading the .env, then stopped on the missing file it names.
  test('OAI_PROXY_CONFIG or XDG_CONFIG_HOME in ./.env: init writes where serve reads, and says why', async () => {
    const h = tempHome();
    const env = { HOME: h.dir };
    const dotenv = join(h.dir, '.env');
    const write = async (extra: Record<string, string> = {}) => {
      const io = createTestIo({ ...env, ...extra }, h.dir);
      expect(await main(['init', '--yes', '--force'], io)).toBe(0);
      expect(io.err()).toBe('');
      return io.out();
    };
    const servesFrom = (extra: Record<string, string> = {}) =>
      resolveConfig({ env: { ...env, ...extra }, cwd: h.dir }).configFile;

    writeFileSync(dotenv, 'OAI_PROXY_CONFIG=conf/proxy.json\n');
    const named = join(h.dir, 'conf', 'proxy.json');
    let out = await write();
    expect(out).toContain(`Wrote ${named} (mode 0600), chosen by OAI_PROXY_CONFIG in ${dotenv}:\n`);
    expect(out).toContain('Next: oai-proxy serve\n');
    expect(readJson(named).port).toBe(8000);
    expect(servesFrom()).toBe(named);
    expect(existsSync(join(h.dir, '.config'))).toBe(false);

    // The environment wins over .env, for init as for serve.
    const other = join(h.dir, 'other.json');
    out = await write({ OAI_PROXY_CONFIG: 'other.json' });
    expect(out).toContain(`Wrote ${other} (mode 0600), chosen by OAI_PROXY_CONFIG:\n`);
    expect(servesFrom({ OAI_PROXY_CONFIG: 'other.json' })).toBe(other);
    // Unless empty there: an empty variable is unset, as for serve.
    out = await write({ OAI_PROXY_CONFIG: '' });
    expect(out).toContain(`Wrote ${named} (mode 0600), chosen by OAI_PROXY_CONFIG in ${dotenv}:\n`);
    expect(servesFrom({ OAI_PROXY_CONFIG: '' })).toBe(named);

    writeFileSync(dotenv, `XDG_CONFIG_HOME=${join(h.dir, 'xdg')}\n`);
    const xdg = join(h.dir, 'xdg', 'oai-proxy', 'config.json');
    out = await write();
    expect(out).toContain(`Wrote ${xdg} (mode 0600), chosen by XDG_CONFIG_HOME in ${dotenv}:\n`);
    expect(out).toContain('Next: oai-proxy serve\n');
    expect(servesFrom()).toBe(xdg);
    expect(existsSync(join(h.dir, '.config'))).toBe(false);
  });

  // As for every command: an empty --config ("$CONFIG" unset) must not mean the per-user file silently.
  test('--config "" → exit 2 naming the flag, nothing written', async () => {
    const h = tempHome();
    const io = createTestIo(h.env, h.dir);
    expect(await main(['init', '--yes', '--config', ''], io)).toBe(2);
    expect(io.err()).toContain(
      '--config needs a value: a file to write, e.g. --config ./oai-proxy.config.json',
    );
    expect(existsSync(h.configPath)).toBe(false);
  });

  test('no terminal and no --yes → exit 2 at once with a clear message, nothing written', async () => {
    const h = tempHome();
    const io = createTestIo(h.env, h.dir);
    expect(await main(['init'], io)).toBe(2);
    expect(io.err()).toContain('standard input is not a terminal');
    expect(io.err()).toContain('oai-proxy init --yes');
    expect(existsSync(h.configPath)).toBe(false);
  });

  test('--help documents the flags and examples', async () => {
    const io = createTestIo();
    expect(await main(['init', '--help'], io)).toBe(0);
    for (const s of [
      '--yes',
      '--force',
      '--config',
      '--upstream',
      '--check',
      '--no-check',
      'OPENAI_API_KEY',
      'a stored key is kept only for\nthe host it was written for',
      'Examples:',
    ])
      expect(io.out()).toContain(s);
    // --force is needed with --yes only when the file already exists.
    expect(io.out()).not.toContain('required with --yes');
    expect(io.out()).toMatch(/with\s+--yes: needed only when the\s+file exists/);
    expect(io.out()).toMatch(/--check registers the models\s+its GET \/models lists/);
  });
});

// The tester's repro: `init --yes` wrote "openaiApiType": "openai" and an absolute logFilePath, which then
// overrode what serve derives by itself (Azure from the base URL, the log file beside --db).
describe('init writes only what serve would not derive by itself', () => {
  /** `serve --port 0 ARGS` with `env`, one chat completion through it with the openai SDK, then stop. */
  async function serveOnce(env: Record<string, string>, cwd: string, args: string[] = []) {
    const ac = new AbortController();
    const io = { ...createTestIo({ ...env, LOG_LEVEL: 'silent' }, cwd), signal: ac.signal };
    const done = main(['serve', '--port', '0', ...args], io);
    let url = '';
    for (let i = 0; i < 250 && !url && !io.err().startsWith('oai-proxy:'); i++) {
      url = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(io.err())?.[1] ?? '';
      if (!url) await new Promise((r) => setTimeout(r, 20));
    }
    expect(url, io.err()).not.toBe('');
    const client = new OpenAI({ apiKey: 'sk-client-own-key', baseURL: `${url}/v1`, maxRetries: 0 });
    const answer = await client.chat.completions.create({
      model: 'gpt-4o',
      messages: [{ role: 'user', content: 'hi' }],
    });
    expect(answer.choices[0].message.content).toBe(CHAT_ANSWER);
    ac.abort();
    expect(await done).toBe(0);
    return io;
  }

  test('init --yes: no openaiApiType, openaiApiVersion, databaseUrl or logFilePath in the file', async () => {
    const h = tempHome();
    const io = createTestIo(h.env, h.dir);
    expect(await main(['init', '--yes', '--no-check'], io)).toBe(0);
    expect(readJson(h.configPath)).toEqual({
      openaiBaseUrl: 'https://api.openai.com/v1',
      host: '127.0.0.1',
      port: 8000,
      validateModels: false,
      allowUnknownModels: false,
    });
    // The summary still says where serve will put them.
    expect(io.out()).toContain('then point OpenAI clients at http://127.0.0.1:8000/v1');
  });

  test('serve --db ./d.db with that file logs beside d.db, as without it', async () => {
    const h = tempHome();
    const fake = await fakeUpstream();
    expect(
      await main(['init', '--yes', '--no-check', '--upstream', fake.baseUrl], createTestIo(h.env, h.dir)),
    ).toBe(0);
    await serveOnce(h.env, h.dir, ['--db', './d.db']);
    expect(existsSync(join(h.dir, 'd.db'))).toBe(true);
    expect(readFileSync(join(h.dir, 'oai-proxy.log'), 'utf8')).toContain('/v1/chat/completions');
    expect(existsSync(join(h.dir, 'data', 'oai-proxy', 'oai-proxy.log'))).toBe(false);
    expect(existsSync(join(h.dir, 'data', 'oai-proxy', 'oai-proxy.db'))).toBe(false);
  });

  test('OPENAI_BASE_URL naming an Azure deployment, with that file: Azure detected (api-version, api-key header)', async () => {
    const h = tempHome();
    const fake = await fakeUpstream();
    expect(await main(['init', '--yes', '--no-check'], createTestIo(h.env, h.dir))).toBe(0);
    const env = { ...h.env, OPENAI_BASE_URL: `${fake.origin}/openai/deployments/gpt4o`, OPENAI_API_KEY: KEY };
    await serveOnce(env, h.dir, ['--db', 'p.db']);
    const sent = fake.requests.at(-1)!;
    expect(sent.url).toBe('/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21');
    expect(sent.headers['api-key']).toBe(KEY);
    expect(sent.headers.authorization).toBeUndefined();
  });

  test('--upstream naming an Azure deployment is Azure: the file says so and serve sends it Azure-style', async () => {
    const h = tempHome();
    const fake = await fakeUpstream();
    const io = createTestIo({ ...h.env, OPENAI_API_KEY: KEY }, h.dir);
    const base = `${fake.origin}/openai/deployments/gpt4o`;
    expect(await main(['init', '--yes', '--no-check', '--upstream', base], io)).toBe(0);
    expect(readJson(h.configPath)).toMatchObject({ openaiBaseUrl: base, openaiApiType: 'azure' });
    expect(readJson(h.configPath)).not.toHaveProperty('openaiApiVersion');
    await serveOnce(h.env, h.dir, ['--db', 'p.db']);
    const sent = fake.requests.at(-1)!;
    expect(sent.url).toBe('/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21');
    expect(sent.headers['api-key']).toBe(KEY);
  });

  test("Azure's …/openai/v1 API: no api-version written, so serve sends none", async () => {
    const h = tempHome();
    const url = 'https://contoso.openai.azure.com/openai/v1';
    expect(
      await main(
        ['init', '--yes', '--no-check', '--kind', 'azure', '--upstream', url],
        createTestIo(h.env, h.dir),
      ),
    ).toBe(0);
    const written = readJson(h.configPath);
    expect(written).toMatchObject({ openaiBaseUrl: url, openaiApiType: 'azure' });
    expect(written).not.toHaveProperty('openaiApiVersion');
  });

  test('--kind openai for an Azure-looking URL: "openaiApiType": "openai" is written, since serve would say Azure', async () => {
    const h = tempHome();
    const url = 'https://gw.openai.azure.com/openai/deployments/d';
    expect(
      await main(
        ['init', '--yes', '--no-check', '--kind', 'openai', '--upstream', url],
        createTestIo(h.env, h.dir),
      ),
    ).toBe(0);
    expect(readJson(h.configPath)).toMatchObject({ openaiBaseUrl: url, openaiApiType: 'openai' });
  });

  test('values given as flags are written even when equal to the default', async () => {
    const h = tempHome();
    const db = join(h.dir, 'data', 'oai-proxy', 'oai-proxy.db');
    const log = join(h.dir, 'data', 'oai-proxy', 'oai-proxy.log');
    const flags = [
      '--db',
      db,
      '--log-file',
      log,
      '--kind',
      'azure',
      '--upstream',
      'https://c.openai.azure.com/openai',
      '--api-version',
      '2024-10-21',
    ];
    expect(await main(['init', '--yes', '--no-check', ...flags], createTestIo(h.env, h.dir))).toBe(0);
    expect(readJson(h.configPath)).toMatchObject({
      databaseUrl: db,
      logFilePath: log,
      openaiApiType: 'azure',
      openaiApiVersion: '2024-10-21',
    });
  });

  test('re-running init keeps what the file already set, even values equal to the defaults', async () => {
    const h = tempHome();
    const own = {
      openaiApiType: 'openai',
      databaseUrl: join(h.dir, 'data', 'oai-proxy', 'oai-proxy.db'),
      logFilePath: join(h.dir, 'data', 'oai-proxy', 'oai-proxy.log'),
    };
    mkdirSync(join(h.dir, 'config', 'oai-proxy'), { recursive: true });
    writeFileSync(h.configPath, JSON.stringify(own));
    expect(
      await main(['init', '--yes', '--force', '--no-check', '--port', '9001'], createTestIo(h.env, h.dir)),
    ).toBe(0);
    expect(readJson(h.configPath)).toMatchObject({ ...own, port: 9001 });
    // Azure keeps its api-version too.
    writeFileSync(
      h.configPath,
      JSON.stringify({ openaiBaseUrl: 'https://c.openai.azure.com/openai', openaiApiVersion: '2024-10-21' }),
    );
    expect(await main(['init', '--yes', '--force', '--no-check'], createTestIo(h.env, h.dir))).toBe(0);
    expect(readJson(h.configPath)).toMatchObject({ openaiApiType: 'azure', openaiApiVersion: '2024-10-21' });
  });

  // serve reads enums in any case and with spaces around; init read only "azure" / "openai" as written,
  // so a gateway URL typed "Azure" became plain OpenAI on the next run and lost its api-version.
  test.each([
    ['Azure', 'azure'],
    [' AZURE ', 'azure'],
  ])(
    're-running init over "openaiApiType": %j at a gateway host keeps it Azure, api-version too',
    async (type, written) => {
      const h = tempHome();
      const base = 'https://gw.example.com/openai';
      mkdirSync(join(h.dir, 'config', 'oai-proxy'), { recursive: true });
      writeFileSync(
        h.configPath,
        JSON.stringify({ openaiBaseUrl: base, openaiApiType: type, openaiApiVersion: '2024-06-01' }),
      );
      const io = createTestIo(h.env, h.dir);
      expect(await main(['init', '--yes', '--force', '--no-check', '--port', '9001'], io)).toBe(0);
      expect(io.err()).toBe('');
      expect(readJson(h.configPath)).toMatchObject({
        openaiBaseUrl: base,
        openaiApiType: written,
        openaiApiVersion: '2024-06-01',
        port: 9001,
      });
    },
  );

  test('re-running init over "openaiApiType": "OpenAI" at an Azure-looking URL keeps it OpenAI', async () => {
    const h = tempHome();
    const base = 'https://gw.openai.azure.com/openai/deployments/d';
    mkdirSync(join(h.dir, 'config', 'oai-proxy'), { recursive: true });
    writeFileSync(h.configPath, JSON.stringify({ openaiBaseUrl: base, openaiApiType: 'OpenAI' }));
    expect(
      await main(['init', '--yes', '--force', '--no-check', '--port', '9001'], createTestIo(h.env, h.dir)),
    ).toBe(0);
    const file = readJson(h.configPath);
    expect(file).toMatchObject({ openaiBaseUrl: base, openaiApiType: 'openai' });
    expect(file).not.toHaveProperty('openaiApiVersion');
  });
});

describe('init --check: one GET {baseUrl}/models, reported, never blocking the write', () => {
  test('reachable: sends the key and reports the models listed', async () => {
    const h = tempHome();
    const fake = await fakeUpstream();
    const io = createTestIo({ ...h.env, OPENAI_API_KEY: KEY }, h.dir);
    expect(await main(['init', '--yes', '--check', '--upstream', fake.baseUrl], io)).toBe(0);
    expect(fake.requests).toHaveLength(1);
    expect(fake.requests[0]).toMatchObject({ method: 'GET', url: '/v1/models' });
    expect(fake.requests[0].headers.authorization).toBe(`Bearer ${KEY}`);
    expect(io.out()).toContain(`✔ upstream reachable: GET ${fake.baseUrl}/models → 200 (2 models listed)`);
    expect(io.out()).not.toContain(KEY);
    expect(existsSync(h.configPath)).toBe(true);
  });

  test('unauthorised: a 401 is reported and the file is still written', async () => {
    const h = tempHome();
    const fake = await fakeUpstream();
    fake.on('/v1/models', (_req, res) => {
      res.writeHead(401, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({ error: { message: 'Incorrect API key provided', type: 'invalid_request_error' } }),
      );
    });
    const io = createTestIo({ ...h.env, OPENAI_API_KEY: KEY }, h.dir);
    expect(await main(['init', '--yes', '--check', '--upstream', fake.baseUrl], io)).toBe(0);
    expect(io.out()).toContain(
      `✖ upstream unauthorised: GET ${fake.baseUrl}/models → 401; check the API key`,
    );
    expect(readJson(h.configPath).openaiBaseUrl).toBe(fake.baseUrl);
  });

  test('unreachable: a refused port is reported and the file is still written', async () => {
    const h = tempHome();
    const srv = createServer();
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
    const port = (srv.address() as { port: number }).port;
    await new Promise((r) => srv.close(r));
    const io = createTestIo(h.env, h.dir);
    const base = `http://127.0.0.1:${port}/v1`;
    expect(await main(['init', '--yes', '--check', '--upstream', base], io)).toBe(0);
    expect(io.out()).toContain(`✖ upstream unreachable: GET ${base}/models failed (ECONNREFUSED)`);
    expect(readJson(h.configPath).openaiBaseUrl).toBe(base);
  });

  test('Azure: asks {base}/models?api-version=… with the api-key header', async () => {
    const h = tempHome();
    const fake = await fakeUpstream();
    fake.on('/openai/models', (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ object: 'list', data: [{ id: 'gpt-4o' }] }));
    });
    const io = createTestIo({ ...h.env, OPENAI_API_KEY: KEY }, h.dir);
    const base = `${fake.origin}/openai`;
    expect(
      await main(
        ['init', '--yes', '--check', '--kind', 'azure', '--upstream', base, '--api-version', '2024-10-21'],
        io,
      ),
    ).toBe(0);
    expect(fake.requests[0].url).toBe('/openai/models?api-version=2024-10-21');
    expect(fake.requests[0].headers['api-key']).toBe(KEY);
    expect(fake.requests[0].headers.authorization).toBeUndefined();
    expect(io.out()).toContain('✔ upstream reachable');
    expect(io.out()).toContain('(1 models listed)');
  });
});

describe('init for a local OpenAI-compatible server (Ollama, vLLM) with a validating policy', () => {
  /** A fake Ollama: its GET /v1/models lists two models, none of the default OpenAI list. */
  async function fakeOllama(): Promise<FakeUpstream> {
    const fake = await fakeUpstream();
    fake.on('/v1/models', (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({
          object: 'list',
          data: [
            { id: 'llama3.1:8b', object: 'model', created: 1700000000, owned_by: 'library' },
            { id: 'qwen2.5:7b', object: 'model', created: 1700000000, owned_by: 'library' },
          ],
        }),
      );
    });
    return fake;
  }

  function initArgs(fake: FakeUpstream, ...more: string[]): string[] {
    return [
      'init',
      '--yes',
      '--kind',
      'compatible',
      '--upstream',
      fake.baseUrl,
      '--model-policy',
      'strict',
      '--config',
      'c.json',
      '--port',
      '0',
      '--db',
      'i.db',
      '--log-file',
      'i.log',
      ...more,
    ];
  }

  test('--check registers the models the server lists, says so, and serve then forwards them under strict', async () => {
    const h = tempHome();
    const fake = await fakeOllama();
    const initIo = createTestIo(h.env, h.dir);
    expect(await main(initArgs(fake, '--check'), initIo)).toBe(0);
    expect(initIo.err()).toBe('');
    const configPath = join(h.dir, 'c.json');
    expect(readJson(configPath)).toMatchObject({
      validateModels: true,
      allowUnknownModels: false,
      availableModels: ['llama3.1:8b', 'qwen2.5:7b'],
    });
    expect(initIo.out()).toContain('(2 models listed)');
    expect(initIo.out()).toContain(
      `Registered 2 models the upstream lists: llama3.1:8b, qwen2.5:7b (as "availableModels", in place of the default OpenAI model list; more with \`oai-proxy models add NAME --config ${configPath}\`)`,
    );

    const ac = new AbortController();
    const serveIo = { ...createTestIo({ ...h.env, LOG_LEVEL: 'silent' }, h.dir), signal: ac.signal };
    const done = main(['serve', '--config', 'c.json'], serveIo);
    cleanups.push(async () => {
      ac.abort();
      await done;
    });
    let url = '';
    for (let i = 0; i < 200 && !url; i++) {
      url = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(serveIo.err())?.[1] ?? '';
      if (!url) await new Promise((r) => setTimeout(r, 20));
    }
    const client = new OpenAI({ apiKey: 'sk-client-own-key', baseURL: `${url}/v1`, maxRetries: 0 });
    const res = await client.chat.completions
      .create({ model: 'llama3.1:8b', messages: [{ role: 'user', content: 'hi' }] })
      .withResponse();
    expect(res.response.status).toBe(200);
    expect(res.data.choices[0].message.content).toBe(CHAT_ANSWER);
    expect(JSON.parse(fake.requests.at(-1)!.body.toString()).model).toBe('llama3.1:8b');
    // The proxy's model list is the server's, not the 33 OpenAI defaults it does not serve.
    const listedIds = [];
    for await (const m of client.models.list()) listedIds.push(m.id);
    expect(listedIds).toEqual(['llama3.1:8b', 'qwen2.5:7b']);
    // strict still refuses what the server does not list.
    await expect(
      client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] }),
    ).rejects.toMatchObject({ status: 404, code: 'model_not_found' });
  });

  test('without --check: a warning that strict refuses every model until one is registered, and how', async () => {
    const h = tempHome();
    const fake = await fakeOllama();
    const io = createTestIo(h.env, h.dir);
    expect(await main(initArgs(fake), io)).toBe(0);
    const configPath = join(h.dir, 'c.json');
    expect(readJson(configPath)).not.toHaveProperty('availableModels');
    expect(fake.requests).toHaveLength(0);
    expect(io.err()).toBe(
      `warning: --model-policy strict: serve answers 404 model_not_found for every model not registered, and none of this server's models is registered (init did not ask the server for its models: no --check); register each with \`oai-proxy models add NAME --config ${configPath}\` or list them under "availableModels" in ${configPath}, or rerun init with --check while the server runs\n`,
    );
  });

  test('record, and a check that cannot read the list: the warning says unknown models are recorded', async () => {
    const h = tempHome();
    const fake = await fakeOllama();
    fake.on('/v1/models', (_req, res) => {
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end('{"error":"not found"}');
    });
    const io = createTestIo(h.env, h.dir);
    expect(await main([...initArgs(fake, '--check'), '--model-policy', 'record'], io)).toBe(0);
    expect(readJson(join(h.dir, 'c.json'))).not.toHaveProperty('availableModels');
    expect(io.err()).toContain(
      "warning: --model-policy record: serve records every model not registered as unknown, and none of this server's models is registered (the check could not read its model list)",
    );
  });
});

describe('serve stays fast', () => {
  test('@inquirer/prompts is imported only dynamically, and only by src/commands/init.ts', () => {
    const srcDir = join(import.meta.dirname, '../../src');
    const files = (readdirSync(srcDir, { recursive: true }) as string[]).filter((f) => f.endsWith('.ts'));
    const importers = files.filter((f) => readFileSync(join(srcDir, f), 'utf8').includes('@inquirer/'));
    expect(importers).toEqual([join('commands', 'init.ts')]);
    const init = readFileSync(join(srcDir, 'commands', 'init.ts'), 'utf8');
    expect(init).toMatch(/await import\('@inquirer\/prompts'\)/);
    expect(init).not.toMatch(/^import[^;]*from '@inquirer/m);
  });
});
