import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import OpenAI from 'openai';
import { afterEach, expect, test } from 'vitest';
import { main } from '../../src/cli.js';
import { openDatabase } from '../../src/storage/database.js';
import { CHAT_ANSWER, createFakeUpstream } from '../helpers/fake-upstream.js';
import { createTempDir } from '../helpers/temp-dir.js';
import { createTestIo, startTestProxy } from '../helpers/test-proxy.js';

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const UPSTREAM_A = { a: { baseUrl: 'http://127.0.0.1:1/v1' } };

// Found after loading, by the registry and the vector setup: the message still names the config file, the
// .env or the variable the value came from (and says `remove it` for the file, `unset it` for a variable).
test.each([
  [
    'embeddingUpstream in the file',
    { file: { embeddingUpstream: 'nope', upstreams: UPSTREAM_A }, env: { QDRANT_URL: 'http://127.0.0.1:1' } },
    `"embeddingUpstream" in config file {file} names "nope", which is not in that file's "upstreams" (known: a); fix the name or remove it to use OPENAI_BASE_URL`,
  ],
  [
    'EMBEDDING_UPSTREAM in .env',
    {
      file: { upstreams: UPSTREAM_A },
      dotenv: 'EMBEDDING_UPSTREAM=nope\nQDRANT_URL=http://127.0.0.1:1\n',
    },
    `EMBEDDING_UPSTREAM (.env in {dir}) names "nope", which is not in "upstreams" in config file {file} (known: a); fix the name or unset it to use OPENAI_BASE_URL`,
  ],
  [
    'a model entry naming an undeclared upstream',
    { file: { models: [{ name: 'x', upstream: 'nope' }] } },
    `"models" in config file {file}, models[0] (model "x") names upstream "nope", which the config file's "upstreams" does not declare (declared: default)`,
  ],
  [
    'an upstream apiKeyEnv that is not set',
    { file: { upstreams: { a: { baseUrl: 'http://127.0.0.1:1/v1', apiKeyEnv: 'NOPE_KEY' } } } },
    'upstreams.a.apiKeyEnv in config file {file} names NOPE_KEY, which is not set; set it in the environment or .env',
  ],
  [
    'an AVAILABLE_MODELS entry in .env',
    { dotenv: 'AVAILABLE_MODELS=a, b\tc\n' },
    'AVAILABLE_MODELS (.env in {dir}), entry 2 name "b\tc" must not contain spaces or control characters',
  ],
  [
    'aliases in the file that loop',
    { file: { modelMappings: { a: 'b', b: 'a' } } },
    'Invalid "modelMappings" in config file {file}: ',
  ],
  // Set, but with no usable client key: serve ran with client auth off, without a word.
  [
    'an empty client key in the file',
    { file: { proxyApiKeys: [''] } },
    'Invalid "proxyApiKeys" in config file {file}, proxyApiKeys[0]: expected a client key; it is empty: put a key in it or remove the entry (remove "proxyApiKeys" from the file to run without client keys)',
  ],
  [
    'a blank client key beside a real one in the file',
    { file: { proxyApiKeys: ['pk-team-key-0123456789', ' '] } },
    'Invalid "proxyApiKeys" in config file {file}, proxyApiKeys[1]: expected a client key; it is empty',
  ],
  [
    'PROXY_API_KEYS of commas only',
    { env: { PROXY_API_KEYS: ',' } },
    'Invalid PROXY_API_KEYS (environment): expected comma-separated client keys; it holds none: give at least one key, or leave PROXY_API_KEYS empty or unset to run without client keys',
  ],
  [
    'PROXY_API_KEYS of a space in .env',
    { dotenv: 'PROXY_API_KEYS=" "\n' },
    'Invalid PROXY_API_KEYS (.env in {dir}): expected comma-separated client keys; it holds none',
  ],
])('serve refusing %s names where it came from, exit 2', async (_name, layers, expected) => {
  const { tmp, file, env } = layeredDir(layers);
  const io = createTestIo({ HOME: tmp.path, LOG_LEVEL: 'silent', ...env }, tmp.path);
  expect(await main(['serve', '--port', '0', '--db', join(tmp.path, 'a.db')], io)).toBe(2);
  expect(io.err()).toContain(expected.replace('{file}', file).replace('{dir}', tmp.path));
  expect(io.err()).not.toContain('pk-team-key');
});

/** A temp dir with the layers a test names: a config file `oai-proxy.config.json`, a `.env`, environment. */
function layeredDir(layers: { file?: object; dotenv?: string; env?: Record<string, string> }) {
  const tmp = createTempDir();
  cleanups.push(tmp.cleanup);
  const file = join(tmp.path, 'oai-proxy.config.json');
  if (layers.file) writeFileSync(file, JSON.stringify(layers.file));
  if (layers.dotenv) writeFileSync(join(tmp.path, '.env'), layers.dotenv);
  return { tmp, file, env: layers.env };
}

/** A temp dir holding an empty oai-proxy database `a.db`, as `serve` leaves it. */
async function dirWithDatabase(): Promise<{ dir: string; db: string }> {
  const tmp = createTempDir();
  cleanups.push(tmp.cleanup);
  const db = join(tmp.path, 'a.db');
  await (await openDatabase(db)).close();
  return { dir: tmp.path, db };
}

// `PORT=abc oai-proxy logs` stopped on a setting logs never reads.
test('logs and models warn about a bad value of a setting only serve reads, and run; serve still refuses it', async () => {
  const { dir, db } = await dirWithDatabase();
  writeFileSync(join(dir, 'oai-proxy.config.json'), JSON.stringify({ corsOrigins: 5, proxyApiKeys: [''] }));
  const env = { HOME: dir, LOG_LEVEL: 'silent', PORT: 'abc', UPSTREAM_IDLE_TIMEOUT_MS: '-1' };
  const ignored = (command: string) =>
    `; ignored: \`${command}\` does not use it (\`oai-proxy serve\` would refuse it)\n`;
  for (const [argv, command, out] of [
    [['logs', '--json'], 'oai-proxy logs', '[]\n'],
    [['models', 'list', '--json'], 'oai-proxy models', '"gpt-4o"'],
  ] as const) {
    const io = createTestIo(env, dir);
    expect(await main([...argv, '--db', db], io), io.err()).toBe(0);
    expect(io.out()).toContain(out);
    const err = io.err();
    expect(err).toContain(
      `warning: Invalid PORT (environment) = abc: expected an integer from 0 to 65535${ignored(command)}`,
    );
    expect(err).toContain(
      `warning: Invalid UPSTREAM_IDLE_TIMEOUT_MS (environment) = -1: expected an integer from 1 to 2147483647${ignored(command)}`,
    );
    expect(err).toContain(
      `warning: Invalid "corsOrigins" in config file ${join(dir, 'oai-proxy.config.json')}`,
    );
    expect(err).toContain(`proxyApiKeys[0]: expected a client key; it is empty`);
  }
  const io = createTestIo(env, dir);
  expect(await main(['serve', '--port', '0', '--db', db], io)).toBe(2);
  expect(io.err()).toMatch(/^oai-proxy: Invalid /);
});

test('a setting the command reads is still checked: the log files logs names, the timeouts logs search uses', async () => {
  const { dir, db } = await dirWithDatabase();
  const run = async (argv: string[], env: Record<string, string>) => {
    const io = createTestIo({ HOME: dir, PORT: 'abc', ...env }, dir);
    return { code: await main([...argv, '--db', db], io), err: io.err() };
  };
  let r = await run(['logs'], { LOG_MAX_FILES: '0' });
  expect(r.code).toBe(2);
  expect(r.err).toContain(
    'oai-proxy: Invalid LOG_MAX_FILES (environment) = 0: expected an integer from 1 to 1000\n',
  );
  r = await run(['logs', 'search', 'x'], {
    UPSTREAM_IDLE_TIMEOUT_MS: '-1',
    QDRANT_URL: 'http://127.0.0.1:1',
  });
  expect(r.code).toBe(2);
  expect(r.err).toContain(
    'oai-proxy: Invalid UPSTREAM_IDLE_TIMEOUT_MS (environment) = -1: expected an integer',
  );
  r = await run(['logs', 'search', 'x'], {});
  expect(r.err).toContain(
    'warning: Invalid PORT (environment) = abc: expected an integer from 0 to 65535; ignored: `oai-proxy logs search` does not use it',
  );
});

// The lists of settings logs and models skip were short: these stopped `logs` and `models list` (exit 2).
test('logs and models skip every setting they never read: the upstream, the model settings, Qdrant', async () => {
  const { dir, db } = await dirWithDatabase();
  const run = async (argv: string[], env: Record<string, string>) => {
    const io = createTestIo({ HOME: dir, ...env }, dir);
    return { code: await main([...argv, '--db', db], io), out: io.out(), err: io.err() };
  };
  const ignored = (command: string) =>
    `; ignored: \`${command}\` does not use it (\`oai-proxy serve\` would refuse it)\n`;
  const cases: [string[], string, Record<string, string>, string, string][] = [
    [
      ['logs', '--json'],
      'oai-proxy logs',
      { OPENAI_BASE_URL: 'localhost:8080' },
      'Invalid OPENAI_BASE_URL (environment) = localhost:8080: expected an http:// or https:// URL',
      '[]\n',
    ],
    [
      ['logs', '--json'],
      'oai-proxy logs',
      { MODEL_MAPPINGS: '{bad' },
      'Invalid MODEL_MAPPINGS (environment) = {bad: expected a JSON object such as {"alias":"model"}',
      '[]\n',
    ],
    [
      ['logs', 'stats', '--json'],
      'oai-proxy logs',
      { OPENAI_API_TYPE: 'bogus' },
      'Invalid OPENAI_API_TYPE (environment) = bogus: expected one of openai, azure',
      '[]\n',
    ],
    [
      ['logs', '--json'],
      'oai-proxy logs',
      { QDRANT_URL: 'qdrant:6333' },
      'Invalid QDRANT_URL (environment) = qdrant:6333: expected an http:// or https:// URL',
      '[]\n',
    ],
    [
      ['models', 'list', '--json'],
      'oai-proxy models',
      { QDRANT_URL: 'qdrant:6333' },
      'Invalid QDRANT_URL (environment) = qdrant:6333: expected an http:// or https:// URL',
      '"gpt-4o"',
    ],
    [
      ['models', 'list', '--json'],
      'oai-proxy models',
      { OPENAI_BASE_URL: 'localhost:8080', OPENAI_API_TYPE: 'bogus' },
      'Invalid OPENAI_BASE_URL (environment) = localhost:8080: expected an http:// or https:// URL',
      '"gpt-4o"',
    ],
    [
      ['logs', 'prune', '--older-than', '1d', '--json'],
      'oai-proxy logs prune',
      { MODEL_MAPPINGS: '{bad', LOG_MAX_FILES: '0' },
      'Invalid MODEL_MAPPINGS (environment) = {bad: expected a JSON object such as {"alias":"model"}',
      '"deleted":0',
    ],
  ];
  for (const [argv, command, env, warning, out] of cases) {
    const r = await run(argv, env);
    expect(r.code, `${argv.join(' ')} ${r.err}`).toBe(0);
    expect(r.out).toContain(out);
    expect(r.err).toContain(`warning: ${warning}${ignored(command)}`);
  }
});

test('each command still checks what it reads: prune Qdrant, models the model settings, search the upstream', async () => {
  const { dir, db } = await dirWithDatabase();
  const run = async (argv: string[], env: Record<string, string>) => {
    const io = createTestIo({ HOME: dir, ...env }, dir);
    return { code: await main([...argv, '--db', db], io), err: io.err() };
  };
  const cases: [string[], Record<string, string>, string][] = [
    [
      ['logs', 'prune', '--older-than', '1d'],
      { QDRANT_URL: 'qdrant:6333' },
      'Invalid QDRANT_URL (environment) = qdrant:6333',
    ],
    [['models', 'list'], { MODEL_MAPPINGS: '{bad' }, 'Invalid MODEL_MAPPINGS (environment) = {bad'],
    [['models', 'add', 'x'], { MODEL_MAPPINGS: '["x"]' }, 'Invalid MODEL_MAPPINGS (environment) = ["x"]'],
    [
      ['logs', 'search', 'x'],
      { OPENAI_API_TYPE: 'bogus', QDRANT_URL: 'http://127.0.0.1:1' },
      'Invalid OPENAI_API_TYPE (environment) = bogus',
    ],
    [
      ['logs', 'reindex'],
      { OPENAI_BASE_URL: 'localhost:8080', QDRANT_URL: 'http://127.0.0.1:1' },
      'Invalid OPENAI_BASE_URL (environment) = localhost:8080',
    ],
  ];
  for (const [argv, env, message] of cases) {
    const r = await run(argv, env);
    expect(r.code, `${argv.join(' ')} ${r.err}`).toBe(2);
    expect(r.err).toMatch(new RegExp(`^oai-proxy: ${message.replace(/[()[\]{}]/g, '\\$&')}`));
  }
  writeFileSync(join(dir, 'oai-proxy.config.json'), JSON.stringify({ upstreams: { a: { baseUrl: 'x' } } }));
  const r = await run(['models', 'list'], {});
  expect(r.code).toBe(2);
  expect(r.err).toContain(`upstreams.a.baseUrl`);
});

// `logs search` skipped `"proxyApiKeys": ["team-key", ""]` with a warning, and no longer scrubbed team-key
// from the embedding exchanges it records (configSecrets). logs and models, which record nothing, skip it
// and still hide the key in what they print.
test('the keys logs search and reindex scrub from what they record are checked; logs and models still hide a skipped one', async () => {
  const { dir, db } = await dirWithDatabase();
  const key = 'team-key-0123456789';
  const file = join(dir, 'oai-proxy.config.json');
  writeFileSync(file, JSON.stringify({ proxyApiKeys: [key, ''], qdrantUrl: 'http://127.0.0.1:1' }));
  const run = async (argv: string[], env: Record<string, string> = {}) => {
    const io = createTestIo({ HOME: dir, ...env }, dir);
    return { code: await main(argv, io), printed: io.err() + io.out(), err: io.err() };
  };
  for (const argv of [
    ['logs', 'search', 'x'],
    ['logs', 'reindex'],
  ]) {
    const r = await run([...argv, '--db', db]);
    expect(r.code, r.err).toBe(2);
    expect(r.err).toBe(
      `oai-proxy: Invalid "proxyApiKeys" in config file ${file}, proxyApiKeys[1]: expected a client key; it is empty: put a key in it or remove the entry (remove "proxyApiKeys" from the file to run without client keys)\n`,
    );
  }
  writeFileSync(file, JSON.stringify({ proxyApiKeys: [key, ''] }));
  const ignored = (command: string) => `ignored: \`${command}\` does not use it`;
  for (const [argv, command] of [
    [['logs', '--db', join(dir, `${key}.db`)], 'oai-proxy logs'],
    [['models', 'list', '--db', join(dir, `${key}.db`)], 'oai-proxy models'],
  ] as const) {
    const r = await run([...argv]);
    expect(r.code).toBe(1);
    expect(r.err).toContain(`proxyApiKeys[1]: expected a client key; it is empty`);
    expect(r.err).toContain(ignored(command));
    expect(r.err).toContain(`No database at ${join(dir, '[redacted].db')}`);
    expect(r.printed).not.toContain(key);
  }
});

// OAI_PROXY_CONFIG in .env was ignored: the config file was looked for in the environment only.
test('OAI_PROXY_CONFIG in .env names the config file; the environment beats it; a missing one names the .env', async () => {
  const { dir, db } = await dirWithDatabase();
  mkdirSync(join(dir, 'conf'));
  writeFileSync(join(dir, 'conf', 'proxy.json'), JSON.stringify({ databaseUrl: db }));
  writeFileSync(join(dir, 'other.json'), JSON.stringify({ databaseUrl: join(dir, 'missing.db') }));
  writeFileSync(join(dir, '.env'), 'OAI_PROXY_CONFIG=conf/proxy.json\n');
  const logs = async (env: Record<string, string> = {}) => {
    const io = createTestIo({ HOME: dir, ...env }, dir);
    return { code: await main(['logs', '--json'], io), out: io.out(), err: io.err() };
  };
  let r = await logs();
  expect(r.err).toBe('');
  expect(r.code).toBe(0);
  expect(r.out).toBe('[]\n');
  r = await logs({ OAI_PROXY_CONFIG: 'other.json' });
  expect(r.code).toBe(1);
  expect(r.err).toContain(`No database at ${join(dir, 'missing.db')}`);
  writeFileSync(join(dir, '.env'), 'OAI_PROXY_CONFIG=conf/nope.json\n');
  r = await logs();
  expect(r.code).toBe(2);
  expect(r.err).toBe(
    `oai-proxy: Config file ${join(dir, 'conf', 'nope.json')} (from OAI_PROXY_CONFIG in ${join(dir, '.env')}) does not exist; remove that line from ${join(dir, '.env')} or fix the path\n`,
  );
});

test('--config "" exits 2 saying it needs a value (it was ignored, and the usual file read)', async () => {
  const { dir, db } = await dirWithDatabase();
  const io = createTestIo({ HOME: dir }, dir);
  expect(await main(['logs', '--config', '', '--db', db], io)).toBe(2);
  expect(io.err()).toBe(
    'oai-proxy: --config needs a value: a config file path, e.g. --config ./oai-proxy.config.json (leave it out to use the one found as usual)\n',
  );
});

// `serve --db "$DB"` with DB unset recorded to the default database, without a word.
test.each([
  [['serve', '--port', '0', '--db', ''], '--db needs a value: a database path or URL'],
  [
    ['serve', '--port', '0', '--db', '{dir}/a.db', '--log-file', ' '],
    '--log-file needs a value: a file path',
  ],
  [['logs', '--db', ''], '--db needs a value'],
  [['models', 'list', '--db', ''], '--db needs a value'],
])('%j: exit 2 saying the flag needs a value, nothing created', async (argv, message) => {
  const tmp = createTempDir();
  cleanups.push(tmp.cleanup);
  const io = createTestIo({ HOME: tmp.path, LOG_LEVEL: 'silent' }, tmp.path);
  expect(
    await main(
      argv.map((a) => a.replace('{dir}', tmp.path)),
      io,
    ),
  ).toBe(2);
  expect(io.err()).toMatch(new RegExp(`^oai-proxy: ${message}`));
  expect(existsSync(join(tmp.path, '.local'))).toBe(false);
  expect(existsSync(join(tmp.path, 'a.db'))).toBe(false);
});

// `"databaseUrl": ""` recorded to the default database and DATABASE_URL=" " to a file named " ", without a word.
test.each([
  [
    '"databaseUrl": "" in the file',
    { file: { databaseUrl: '' } },
    'Invalid "databaseUrl" in config file {file}: expected a value; it is empty: give one, or remove "databaseUrl" from the file to use the default',
  ],
  [
    'DATABASE_URL=" " in the environment',
    { env: { DATABASE_URL: ' ' } },
    'Invalid DATABASE_URL (environment): expected a value; it is blank: give one, or unset it (DATABASE_URL= counts as unset) to use the default',
  ],
  [
    'LOG_FILE_PATH=" " in .env',
    { dotenv: 'LOG_FILE_PATH=" "\n' },
    'Invalid LOG_FILE_PATH (.env in {dir}): expected a value; it is blank: give one, or unset it (LOG_FILE_PATH= counts as unset) to use the default',
  ],
])('serve and logs with %s: exit 2 naming it, nothing created', async (_name, layers, expected) => {
  const { tmp, file, env } = layeredDir(layers);
  const before = readdirSync(tmp.path).sort();
  for (const argv of [['serve', '--port', '0'], ['logs']]) {
    const io = createTestIo({ HOME: tmp.path, LOG_LEVEL: 'silent', ...env }, tmp.path);
    expect(await main(argv, io)).toBe(2);
    expect(io.err()).toBe(`oai-proxy: ${expected.replace('{file}', file).replace('{dir}', tmp.path)}\n`);
  }
  expect(readdirSync(tmp.path).sort()).toEqual(before);
});

// A client key written with a space around it in the file could never match: HTTP trims the header.
test('a client key in the file with spaces around it is trimmed: the client presenting it gets through', async () => {
  const tmp = createTempDir();
  cleanups.push(tmp.cleanup);
  const upstream = await createFakeUpstream();
  cleanups.push(() => upstream.close());
  const KEY = 'pk-team-key-0123456789';
  const file = join(tmp.path, 'keys.json');
  writeFileSync(file, JSON.stringify({ proxyApiKeys: [` ${KEY}\t`] }));
  const proxy = await startTestProxy({ OAI_PROXY_CONFIG: file, OPENAI_BASE_URL: upstream.baseUrl });
  cleanups.push(() => proxy.close());
  const client = new OpenAI({ apiKey: KEY, baseURL: `${proxy.url}/v1`, maxRetries: 0 });
  const answer = await client.chat.completions.create({ model: 'gpt-4o', messages: [] });
  expect(answer.choices[0].message.content).toBe(CHAT_ANSWER);
  const other = new OpenAI({ apiKey: 'pk-someone-else-0000', baseURL: `${proxy.url}/v1`, maxRetries: 0 });
  await expect(other.chat.completions.create({ model: 'gpt-4o', messages: [] })).rejects.toMatchObject({
    status: 401,
  });
});
