import { execFileSync, spawnSync } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import { defaultConfigPath } from '../../src/config/paths.js';
import { createFakeUpstream, type FakeUpstream } from '../helpers/fake-upstream.js';
import { KEY, type PtySession, spawnPty } from '../helpers/pty.js';
import { createTempDir } from '../helpers/temp-dir.js';

// The interactive flow, end to end: the built CLI in a real pseudo-terminal, keys typed at the real prompts.
const ROOT = join(import.meta.dirname, '../..');
// Built privately (inside node_modules so the bundle resolves the project's dependencies), so other
// test files using dist/ are not disturbed by a rebuild.
const BUILD = join(ROOT, 'node_modules', '.cache', `oai-proxy-init-tty-${process.pid}`);
const BIN = join(BUILD, 'bin', 'oai-proxy.js');
const API_KEY = 'sk-tty-secret-key-abcdefghij0123456789';

beforeAll(() => {
  mkdirSync(join(BUILD, 'bin'), { recursive: true });
  copyFileSync(join(ROOT, 'bin', 'oai-proxy.js'), BIN);
  execFileSync(
    process.execPath,
    [
      join(ROOT, 'node_modules', 'tsup', 'dist', 'cli-default.js'),
      '--out-dir',
      join(BUILD, 'dist'),
      '--silent',
    ],
    {
      cwd: ROOT,
      stdio: 'pipe',
    },
  );
}, 120_000);
afterAll(() => rmSync(BUILD, { recursive: true, force: true }));

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
  return {
    dir: tmp.path,
    env,
    configPath: defaultConfigPath(env),
    configDir: join(tmp.path, 'config', 'oai-proxy'),
  };
}

function startInit(h: ReturnType<typeof tempHome>, args: string[] = []): PtySession {
  const s = spawnPty(process.execPath, [BIN, 'init', ...args], { env: h.env, cwd: h.dir });
  cleanups.push(() => s.kill());
  return s;
}

async function fakeUpstream(): Promise<FakeUpstream> {
  const fake = await createFakeUpstream();
  cleanups.push(() => fake.close());
  return fake;
}

/** Accept the defaults of every question after the upstream's key (listen address to admin key). */
async function acceptTheRest(s: PtySession): Promise<void> {
  for (const p of [
    'Listen host',
    'Listen port',
    'SQLite database file',
    'Log file',
    'Model validation',
    'Qdrant URL',
    'Admin API key',
  ])
    await answer(s, p, KEY.enter);
}

/** Wait for a prompt, then answer it. */
async function answer(s: PtySession, prompt: string | RegExp, keys: string): Promise<string> {
  const seen = await s.expect(prompt);
  s.send(keys);
  return seen;
}

// Real processes on a shared 2-core machine: give each flow room.
describe('oai-proxy init in a terminal', { timeout: 60_000 }, () => {
  test('OpenAI-compatible server: every question, the check, the summary, the file (0600), the next command', async () => {
    const h = tempHome();
    const fake = await fakeUpstream();
    const s = startInit(h);

    await answer(s, 'Upstream kind', KEY.down + KEY.down + KEY.enter);
    await answer(s, 'Upstream base URL', `${fake.baseUrl}${KEY.enter}`);
    await answer(
      s,
      "API key (hidden; leave empty to forward each client's own key)",
      `${API_KEY}${KEY.enter}`,
    );
    await s.expect(`✔ upstream reachable: GET ${fake.baseUrl}/models → 200 (2 models listed)`);
    expect(fake.requests[0].headers.authorization).toBe(`Bearer ${API_KEY}`);
    await answer(s, 'Listen host', KEY.enter);
    // Validation on the spot: a bad port is refused and asked again.
    await answer(s, 'Listen port', `99999${KEY.enter}`);
    await s.expect('expected an integer from 0 to 65535');
    s.send('\x7f'.repeat(5) + `9191${KEY.enter}`);
    await answer(s, 'SQLite database file', `rec/proxy.db${KEY.enter}`);
    // The log file default follows the database just chosen.
    await answer(s, `Log file (${join(h.dir, 'rec', 'oai-proxy.log')})`, KEY.enter);
    await answer(s, 'Model validation', KEY.down + KEY.enter);
    await answer(s, 'Qdrant URL', `http://127.0.0.1:6333${KEY.enter}`);
    await answer(s, 'Admin API key', KEY.enter);
    const summary = await s.expect(`Write ${h.configPath}?`);
    expect(summary).toContain('upstream        OpenAI-compatible server');
    expect(summary).toContain('API key         sk-…6789');
    expect(summary).toContain('listen          127.0.0.1:9191');
    expect(summary).toContain('models          reject unknown models with 404 model_not_found');
    // strict on a compatible server: the models its GET /models listed are registered.
    expect(summary).toContain('registers       2 models the upstream lists: gpt-4o, gpt-4o-mini');
    s.send(KEY.enter);
    await s.expect('Next: oai-proxy serve');
    expect(s.output()).toContain('Registered 2 models the upstream lists: gpt-4o, gpt-4o-mini');
    expect(await s.exit()).toBe(0);

    // The log file accepted as offered (beside the database) is left to serve, as is the type.
    expect(JSON.parse(readFileSync(h.configPath, 'utf8'))).toEqual({
      openaiBaseUrl: fake.baseUrl,
      openaiApiKey: API_KEY,
      host: '127.0.0.1',
      port: 9191,
      databaseUrl: join(h.dir, 'rec', 'proxy.db'),
      validateModels: true,
      allowUnknownModels: false,
      qdrantUrl: 'http://127.0.0.1:6333',
      availableModels: ['gpt-4o', 'gpt-4o-mini'],
    });
    expect(statSync(h.configPath).mode & 0o777).toBe(0o600);
    expect(readdirSync(h.configDir)).toEqual(['config.json']);
    expect(s.output()).toContain(`Wrote ${h.configPath} (mode 0600)`);
    expect(s.output()).toContain('then point OpenAI clients at http://127.0.0.1:9191/v1');
    expect(s.output()).not.toContain(API_KEY);
  });

  test('Azure OpenAI: endpoint validated, api-version asked, check with api-key, admin key generated and shown once', async () => {
    const h = tempHome();
    const fake = await fakeUpstream();
    fake.on('/openai/models', (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ object: 'list', data: [{ id: 'gpt-4o' }, { id: 'o3' }, { id: 'gpt-4.1' }] }));
    });
    const s = startInit(h);

    await answer(s, 'Upstream kind', KEY.down + KEY.enter);
    // The prefilled placeholder is refused until a real endpoint is given.
    await answer(s, 'Azure endpoint base URL (https://YOUR-RESOURCE.openai.azure.com/openai)', KEY.enter);
    await s.expect('replace YOUR-RESOURCE with your Azure OpenAI resource name');
    s.send(`${fake.origin}/openai${KEY.enter}`);
    await answer(s, 'Azure api-version (2024-10-21)', KEY.enter);
    await answer(s, 'API key', `${API_KEY}${KEY.enter}`);
    await s.expect('✔ upstream reachable');
    await s.expect('(3 models listed)');
    expect(fake.requests[0].url).toBe('/openai/models?api-version=2024-10-21');
    expect(fake.requests[0].headers['api-key']).toBe(API_KEY);
    await answer(s, 'Listen host', KEY.enter);
    await answer(s, 'Listen port', KEY.enter);
    await answer(s, 'SQLite database file', KEY.enter);
    await answer(s, 'Log file', KEY.enter);
    await answer(s, 'Model validation', KEY.enter);
    await answer(s, 'Qdrant URL', KEY.enter);
    await answer(s, 'Admin API key', KEY.down + KEY.enter);
    const summary = await s.expect(`Write ${h.configPath}?`);
    expect(summary).toContain('upstream        Azure OpenAI');
    expect(summary).toContain("api-version     2024-10-21  (serve's default)");
    expect(summary).toContain(
      `database        ${join(h.dir, 'data', 'oai-proxy', 'oai-proxy.db')}  (serve's default)`,
    );
    expect(summary).toContain(
      `log file        ${join(h.dir, 'data', 'oai-proxy', 'oai-proxy.log')}  (beside the database)`,
    );
    expect(summary).toContain('admin API key   (generated; shown once after writing)');
    s.send(KEY.enter);
    await s.expect('Next: oai-proxy serve');
    expect(await s.exit()).toBe(0);

    const written = JSON.parse(readFileSync(h.configPath, 'utf8'));
    expect(written).toMatchObject({
      openaiBaseUrl: `${fake.origin}/openai`,
      openaiApiType: 'azure',
      openaiApiKey: API_KEY,
      port: 8000,
      validateModels: false,
    });
    // Defaults accepted with Enter stay serve's to derive.
    for (const k of ['openaiApiVersion', 'databaseUrl', 'logFilePath']) expect(written).not.toHaveProperty(k);
    expect(written.adminApiKey).toMatch(/^oaip_[A-Za-z0-9_-]{43}$/);
    expect(s.output().split(written.adminApiKey)).toHaveLength(2);
    expect(s.output()).not.toContain(API_KEY);
    expect(statSync(h.configPath).mode & 0o777).toBe(0o600);
  });

  // Azure's …/openai/v1 API takes no api-version: init offered (and wrote) 2024-10-21 for it anyway.
  test("Azure's …/openai/v1 API: the api-version may be left empty; none is sent or written", async () => {
    const h = tempHome();
    const fake = await fakeUpstream();
    fake.on('/openai/v1/models', (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ object: 'list', data: [{ id: 'gpt-4o' }] }));
    });
    const s = startInit(h);
    await answer(s, 'Upstream kind', KEY.down + KEY.enter);
    await answer(s, 'Azure endpoint base URL', `${fake.origin}/openai/v1${KEY.enter}`);
    await answer(s, 'Azure api-version (empty: none, as the …/openai/v1 API needs)', KEY.enter);
    await answer(s, 'API key', `${API_KEY}${KEY.enter}`);
    await s.expect('✔ upstream reachable');
    expect(fake.requests[0].url).toBe('/openai/v1/models');
    await acceptTheRest(s);
    const summary = await s.expect(`Write ${h.configPath}?`);
    expect(summary).toContain("api-version     (none: the …/openai/v1 API)  (serve's default)");
    s.send(KEY.enter);
    await s.expect('Next: oai-proxy serve');
    expect(await s.exit()).toBe(0);
    const written = JSON.parse(readFileSync(h.configPath, 'utf8'));
    expect(written).toMatchObject({ openaiBaseUrl: `${fake.origin}/openai/v1`, openaiApiType: 'azure' });
    expect(written).not.toHaveProperty('openaiApiVersion');
  });

  test.each([
    ['the first question', 'Upstream kind', false],
    ['the final confirmation', 'Write ', true],
  ])('Ctrl-C at %s exits 130 and leaves no file behind', async (_name, prompt, answerAll) => {
    const h = tempHome();
    const s = startInit(h, ['--no-check']);
    if (answerAll) {
      await answer(s, 'Upstream kind', KEY.enter);
      await answer(s, 'Upstream base URL', KEY.enter);
      await answer(s, 'API key', `${API_KEY}${KEY.enter}`);
      await acceptTheRest(s);
    }
    await answer(s, prompt, KEY.ctrlC);
    await s.expect('oai-proxy init: interrupted; nothing was written');
    expect(await s.exit()).toBe(130);
    expect(existsSync(h.configPath)).toBe(false);
    expect(existsSync(h.configDir) ? readdirSync(h.configDir) : []).toEqual([]);
  });

  test('re-running offers the current values, keeps unknown keys, and asks before overwriting', async () => {
    const h = tempHome();
    mkdirSync(h.configDir, { recursive: true });
    const before = JSON.stringify({
      openaiBaseUrl: 'http://127.0.0.1:11434/v1',
      openaiApiKey: API_KEY,
      port: 7000,
      databaseUrl: join(h.dir, 'old.db'),
      adminApiKey: 'admin-key-kept-0123456789',
      myOwnNote: 'keep me',
    });
    writeFileSync(h.configPath, before);

    // First: answer everything with the defaults, then decline.
    const s = startInit(h, ['--no-check']);
    await s.expect(`Updating ${h.configPath}`);
    await answer(s, /Upstream kind[^\n]*\n[^\n]*\n[^\n]*\n[^\n]*❯ Other OpenAI-compatible/, KEY.enter);
    await answer(s, 'Upstream base URL (http://127.0.0.1:11434/v1)', KEY.enter);
    await answer(s, 'Keep the stored API key sk-…6789?', KEY.enter);
    await answer(s, 'Listen host (127.0.0.1)', KEY.enter);
    await answer(s, 'Listen port (7000)', KEY.enter);
    await answer(s, `SQLite database file or postgres:// URL (${join(h.dir, 'old.db')})`, KEY.enter);
    await answer(s, `Log file (${join(h.dir, 'oai-proxy.log')})`, KEY.enter);
    await answer(s, 'Model validation', KEY.enter);
    await answer(s, 'Qdrant URL', KEY.enter);
    await answer(s, 'Admin API key', KEY.enter);
    const summary = await s.expect(`Overwrite ${h.configPath}?`);
    expect(summary).toContain('admin API key   …6789');
    expect(summary).toContain('kept as is      myOwnNote');
    s.send(`n${KEY.enter}`);
    await s.expect('Nothing written.');
    expect(await s.exit()).toBe(0);
    expect(readFileSync(h.configPath, 'utf8')).toBe(before);

    // Then: change the port only, and accept.
    const s2 = startInit(h, ['--no-check']);
    await answer(s2, 'Upstream kind', KEY.enter);
    await answer(s2, 'Upstream base URL', KEY.enter);
    await answer(s2, 'Keep the stored API key', KEY.enter);
    await answer(s2, 'Listen host', KEY.enter);
    await answer(s2, 'Listen port (7000)', `7001${KEY.enter}`);
    for (const p of ['SQLite database file', 'Log file', 'Model validation', 'Qdrant URL', 'Admin API key'])
      await answer(s2, p, KEY.enter);
    await answer(s2, `Overwrite ${h.configPath}?`, `y${KEY.enter}`);
    expect(await s2.exit()).toBe(0);
    expect(JSON.parse(readFileSync(h.configPath, 'utf8'))).toEqual({
      openaiBaseUrl: 'http://127.0.0.1:11434/v1',
      openaiApiKey: API_KEY,
      port: 7001,
      databaseUrl: join(h.dir, 'old.db'),
      adminApiKey: 'admin-key-kept-0123456789',
      myOwnNote: 'keep me',
      host: '127.0.0.1',
      validateModels: false,
      allowUnknownModels: false,
    });
    expect(s2.output()).not.toContain(API_KEY);
    expect(s2.output()).not.toContain('admin-key-kept-0123456789');
  });

  test('a stored key is offered for a new host with No as the default, naming both hosts', async () => {
    const h = tempHome();
    mkdirSync(h.configDir, { recursive: true });
    // No openaiBaseUrl: the key was going to OpenAI's API.
    writeFileSync(h.configPath, JSON.stringify({ openaiApiKey: API_KEY, port: 7000 }));
    const s = startInit(h, ['--no-check']);
    await answer(s, /Upstream kind[^\n]*\n[^\n]*❯ OpenAI/, `${KEY.down}${KEY.down}${KEY.enter}`);
    await answer(s, 'Upstream base URL', `http://127.0.0.1:11434/v1${KEY.enter}`);
    await answer(
      s,
      'Keep the stored API key sk-…6789? It was written for https://api.openai.com, and the upstream is now http://127.0.0.1:11434 (y/N)',
      KEY.enter,
    );
    await answer(s, 'API key (hidden', KEY.enter);
    await acceptTheRest(s);
    await answer(s, `Overwrite ${h.configPath}?`, `y${KEY.enter}`);
    expect(await s.exit()).toBe(0);
    const written = JSON.parse(readFileSync(h.configPath, 'utf8'));
    expect(written.openaiBaseUrl).toBe('http://127.0.0.1:11434/v1');
    expect(written).not.toHaveProperty('openaiApiKey');
    expect(s.output()).not.toContain(API_KEY);
  });

  test('re-running with a stored postgres:// URL offers it masked, keeps it on Enter, never prints its password', async () => {
    const h = tempHome();
    mkdirSync(h.configDir, { recursive: true });
    const dbUrl = 'postgres://oai:SuperSecretPw1@db.internal:5432/oai_proxy';
    const masked = 'postgres://oai:***@db.internal:5432/oai_proxy';
    writeFileSync(
      h.configPath,
      JSON.stringify({ openaiBaseUrl: 'http://127.0.0.1:11434/v1', databaseUrl: dbUrl, port: 7000 }),
    );

    const s = startInit(h, ['--no-check']);
    await answer(s, 'Upstream kind', KEY.enter);
    await answer(s, 'Upstream base URL', KEY.enter);
    await answer(s, 'API key', KEY.enter);
    await answer(s, 'Listen host', KEY.enter);
    await answer(s, 'Listen port (7000)', KEY.enter);
    await answer(s, `SQLite database file or postgres:// URL (${masked})`, KEY.enter);
    // The answered line shows the masked URL too.
    await s.expect(`SQLite database file or postgres:// URL ${masked}`);
    for (const p of ['Log file', 'Model validation', 'Qdrant URL', 'Admin API key'])
      await answer(s, p, KEY.enter);
    const summary = await s.expect(`Overwrite ${h.configPath}?`);
    expect(summary).toContain(`database        ${masked}`);
    s.send(`y${KEY.enter}`);
    expect(await s.exit()).toBe(0);
    expect(JSON.parse(readFileSync(h.configPath, 'utf8')).databaseUrl).toBe(dbUrl);
    expect(s.output()).not.toContain('SuperSecretPw1');

    // Editing the masked default (Tab fills it in) without typing the password is refused, not stored as ***.
    const s2 = startInit(h, ['--no-check']);
    for (const p of ['Upstream kind', 'Upstream base URL', 'API key', 'Listen host', 'Listen port'])
      await answer(s2, p, KEY.enter);
    await answer(s2, 'SQLite database file', `\t${'\x7f'.repeat('oai_proxy'.length)}other${KEY.enter}`);
    await s2.expect('type the whole URL with its password, or leave it empty to keep the stored one');
    // A new URL typed in full is taken, and its answered line is masked.
    s2.send(`${'\x7f'.repeat(60)}postgres://oai:NewSecretPw2@db2.internal/oai_proxy${KEY.enter}`);
    await s2.expect('SQLite database file or postgres:// URL postgres://oai:***@db2.internal/oai_proxy');
    s2.kill();
    expect(s2.output()).not.toContain('SuperSecretPw1');
  });

  test('the built bin without a terminal and without --yes fails at once with exit 2', () => {
    const h = tempHome();
    const r = spawnSync(process.execPath, [BIN, 'init'], {
      env: { PATH: process.env.PATH, ...h.env },
      cwd: h.dir,
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: 10_000,
      encoding: 'utf8',
    });
    expect(r.status).toBe(2);
    expect(r.stderr).toContain('standard input is not a terminal');
    expect(existsSync(h.configPath)).toBe(false);
  });
});
