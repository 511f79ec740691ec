import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse as parsePgUrl } from 'pg-connection-string';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { closestKey, maskSecret, resolveConfig } from '../../src/config/load.js';
import { redactUrl, resolveDatabaseLocation, resolveLogFilePath } from '../../src/config/paths.js';
import { type ReadingCommand, SETTINGS, SETTINGS_READ_BY, unusedSettings } from '../../src/config/schema.js';
import { createTempDir } from '../helpers/temp-dir.js';

let dir: { path: string; cleanup(): void };
beforeEach(() => {
  dir = createTempDir();
});
afterEach(() => dir.cleanup());

const write = (name: string, content: unknown) => {
  const p = join(dir.path, name);
  mkdirSync(join(p, '..'), { recursive: true });
  writeFileSync(p, typeof content === 'string' ? content : JSON.stringify(content));
  return p;
};

const resolve = (env: Record<string, string> = {}, extra: Parameters<typeof resolveConfig>[0] = {}) =>
  resolveConfig({ env: { HOME: dir.path, ...env }, cwd: dir.path, ...extra });

describe('precedence: defaults < config file < .env < environment < flags', () => {
  test('defaults', () => {
    const { config, configFile } = resolve();
    expect(configFile).toBeUndefined();
    expect(config).toMatchObject({
      openaiBaseUrl: 'https://api.openai.com/v1',
      host: '127.0.0.1',
      port: 8000,
      validateModels: false,
      maxRequestBodyBytes: 32 * 1024 * 1024,
      captureBodyBytes: 4 * 1024 * 1024,
      upstreamConnectTimeoutMs: 10_000,
      upstreamHeadersTimeoutMs: 600_000,
      upstreamIdleTimeoutMs: 300_000,
      clientBodyTimeoutMs: 60_000,
      shutdownGraceMs: 10_000,
    });
  });

  test.each([
    ['file only', { file: 1001 }, 1001],
    ['.env beats file', { file: 1001, dotenv: '1002' }, 1002],
    ['environment beats .env', { file: 1001, dotenv: '1002', env: '1003' }, 1003],
    ['flag beats environment', { file: 1001, dotenv: '1002', env: '1003', flag: '1004' }, 1004],
    ['an unset flag keeps the file value', { file: 1001 }, 1001],
  ])('%s', (_name, layers: { file?: number; dotenv?: string; env?: string; flag?: string }, expected) => {
    if (layers.file !== undefined) write('oai-proxy.config.json', { port: layers.file });
    if (layers.dotenv !== undefined) write('.env', `# comment\nPORT=${layers.dotenv}\n`);
    const { config, sources } = resolve(layers.env ? { PORT: layers.env } : {}, {
      flags: { port: layers.flag },
    });
    expect(config.port).toBe(expected);
    expect(sources.port).toBeDefined();
  });

  test('a .env and a config file saved with a UTF-8 byte-order mark (Windows editors) are read whole', () => {
    write(
      '.env',
      '\uFEFFOPENAI_BASE_URL=http://127.0.0.1:18101/bom/v1\r\nOPENAI_API_KEY=sk-bom-test-9876\r\n',
    );
    write('oai-proxy.config.json', `\uFEFF${JSON.stringify({ port: 1234 })}`);
    const { config, sources, warnings } = resolve();
    expect(config.openaiBaseUrl).toBe('http://127.0.0.1:18101/bom/v1');
    expect(sources.openaiBaseUrl).toBe(`.env in ${dir.path}`);
    expect(config.openaiApiKey).toBe('sk-bom-test-9876');
    expect(config.port).toBe(1234);
    expect(warnings).toEqual([]);
  });

  describe('a .env line that is not NAME=value is ignored, with a warning naming its line, never its text', () => {
    const KEY = 'sk-proj-abcdefghijklmnop1234';
    test.each([
      [
        'a key wrapped onto the line after its NAME=',
        `OPENAI_API_KEY=\n${KEY}\nOPENAI_BASE_URL=http://127.0.0.1:2/v1\n`,
        { openaiBaseUrl: 'http://127.0.0.1:2/v1' },
        'Line 2',
      ],
      ['a word alone', 'garbage\nPORT=8109\n', { port: 8109 }, 'Line 1'],
      ['a line with no name before =', '=oops\nPORT=8110\n', { port: 8110 }, 'Line 1'],
      [
        'several, CRLF, beside comments and a multi-line quoted value that holds a line with no =',
        `# c\r\nfirst\r\nMODEL_MAPPINGS='{\r\n  "a": "b"\r\n}'\r\n${KEY}\r\n   \r\nPORT=8111\r\n\tHOST=0.0.0.0\r\nlast`,
        { port: 8111, host: '0.0.0.0', modelMappings: { a: 'b' } },
        'Lines 2, 6, 10',
      ],
    ])('%s', (_name, text, expected, lines) => {
      const p = write('.env', text);
      const { config, warnings } = resolve();
      expect(config).toMatchObject(expected);
      expect(warnings).toEqual([
        `${lines} of ${p} ${lines.startsWith('Lines') ? 'are' : 'is'} not NAME=value and ${lines.startsWith('Lines') ? 'are' : 'is'} ignored; write each setting on one line as NAME=value (a value that goes on over several lines must be in quotes)`,
      ]);
      expect(warnings.join('\n')).not.toContain('abcdefgh');
    });

    test('quoted values over several lines are read as before, with no warning', () => {
      write('.env', `A="x\nno equals here\ny"\nB='p\nq'\nC=\`r\ns\`\nPORT=8112\n`);
      const { config, env, warnings } = resolve();
      expect(env).toMatchObject({ A: 'x\nno equals here\ny', B: 'p\nq', C: 'r\ns' });
      expect(config.port).toBe(8112);
      expect(warnings).toEqual([]);
    });
  });

  test.each([
    ['FF FE', Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from('PORT=8113\r\n', 'utf16le')])],
    ['FE FF', Buffer.concat([Buffer.from([0xfe, 0xff]), Buffer.from('PORT=8113\r\n', 'utf16le').swap16()])],
  ])(
    'a UTF-16 .env or config file (BOM %s, as PowerShell writes it) is refused, saying to save it as UTF-8',
    (_bom, bytes) => {
      const p = join(dir.path, '.env');
      writeFileSync(p, bytes);
      expect(() => resolve()).toThrow(
        `Cannot read ${p}: it is saved as UTF-16 (as Windows PowerShell's > and Out-File write it); save it as UTF-8`,
      );
      expect(() => resolve({}, { dotenv: false })).not.toThrow();
      const c = join(dir.path, 'oai-proxy.config.json');
      writeFileSync(c, bytes);
      expect(() => resolve({}, { dotenv: false })).toThrow(
        expect.objectContaining({
          code: 'config_invalid',
          message: expect.stringContaining(`Cannot read ${c}: it is saved as UTF-16`),
        }),
      );
    },
  );

  test('config file lookup: --config > OAI_PROXY_CONFIG > ./oai-proxy.config.json > XDG', () => {
    write('.config/oai-proxy/config.json', { port: 1 });
    expect(resolve().config.port).toBe(1);
    write('oai-proxy.config.json', { port: 2 });
    expect(resolve().config.port).toBe(2);
    const viaEnv = write('env.json', { port: 3 });
    expect(resolve({ OAI_PROXY_CONFIG: viaEnv }).config.port).toBe(3);
    const explicit = write('explicit.json', { port: 4 });
    expect(resolve({ OAI_PROXY_CONFIG: viaEnv }, { configPath: explicit }).config.port).toBe(4);
  });

  test('OAI_PROXY_CONFIG and XDG_CONFIG_HOME are read from .env too (the environment wins); --config "" is refused', () => {
    write('oai-proxy.config.json', { port: 2 });
    const viaDotenv = write('conf/dotenv.json', { port: 5 });
    const viaEnv = write('env.json', { port: 3 });
    write('.env', 'OAI_PROXY_CONFIG=conf/dotenv.json\n');
    expect(resolve()).toMatchObject({ configFile: viaDotenv, config: { port: 5 } });
    expect(resolve({ OAI_PROXY_CONFIG: viaEnv }).config.port).toBe(3);
    expect(resolve({}, { dotenv: false }).config.port).toBe(2);
    write('xdg/oai-proxy/config.json', { port: 6 });
    write('.env', `XDG_CONFIG_HOME=${join(dir.path, 'xdg')}\n`);
    expect(resolve({}, { cwd: join(dir.path, 'conf') }).config.port).toBe(8000);
    write('conf/.env', `XDG_CONFIG_HOME=${join(dir.path, 'xdg')}\n`);
    expect(resolve({}, { cwd: join(dir.path, 'conf') }).config.port).toBe(6);
    expect(() => resolve({}, { configPath: ' ' })).toThrow(/^--config needs a value: a config file path/);
  });

  // OAI_PROXY_CONFIG= in the environment hid the one in .env (and read the usual file instead).
  test('an empty OAI_PROXY_CONFIG or XDG_CONFIG_HOME in the environment counts as unset: .env still names the file', () => {
    write('oai-proxy.config.json', { port: 2 });
    const viaDotenv = write('conf/dotenv.json', { port: 5 });
    write('.env', 'OAI_PROXY_CONFIG=conf/dotenv.json\n');
    expect(resolve({ OAI_PROXY_CONFIG: '' })).toMatchObject({ configFile: viaDotenv, config: { port: 5 } });
    write('.env', 'OAI_PROXY_CONFIG=conf/nope.json\n');
    expect(() => resolve({ OAI_PROXY_CONFIG: '' })).toThrow(
      `(from OAI_PROXY_CONFIG in ${join(dir.path, '.env')}) does not exist`,
    );
    const viaXdg = write('xdg/oai-proxy/config.json', { port: 6 });
    write('conf/.env', `XDG_CONFIG_HOME=${join(dir.path, 'xdg')}\n`);
    expect(resolve({ XDG_CONFIG_HOME: '' }, { cwd: join(dir.path, 'conf') })).toMatchObject({
      configFile: viaXdg,
      config: { port: 6 },
    });
  });

  test('XDG_CONFIG_HOME is honoured', () => {
    write('xdg/oai-proxy/config.json', { host: '0.0.0.0' });
    expect(resolve({ XDG_CONFIG_HOME: join(dir.path, 'xdg') }).config.host).toBe('0.0.0.0');
  });

  test('structured settings: MODEL_MAPPINGS JSON, AVAILABLE_MODELS list, upstreams from the file', () => {
    write('oai-proxy.config.json', {
      availableModels: ['a', { name: 'b', upstream: 'local' }],
      upstreams: { local: { baseUrl: 'http://127.0.0.1:11434/v1/', type: 'openai' } },
    });
    const { config } = resolve({ MODEL_MAPPINGS: '{"fast":"gpt-4o-mini"}', VALIDATE_MODELS: 'true' });
    expect(config.modelMappings).toEqual({ fast: 'gpt-4o-mini' });
    expect(config.availableModels).toEqual(['a', { name: 'b', upstream: 'local' }]);
    expect(config.upstreams.local.baseUrl).toBe('http://127.0.0.1:11434/v1');
    expect(config.validateModels).toBe(true);
    expect(resolve({ AVAILABLE_MODELS: 'x, y ,z' }).config.availableModels).toEqual(['x', 'y', 'z']);
  });

  // Commas alone would empty the model list (every model refused while VALIDATE_MODELS is on).
  test('AVAILABLE_MODELS holding no name (",") is refused, naming it', () => {
    expect(() => resolve({ AVAILABLE_MODELS: ' , ,' })).toThrow(
      /^Invalid AVAILABLE_MODELS \(environment\): expected comma-separated model names; it holds none: give at least one model name, or leave it unset for the default list$/,
    );
    // The file's empty array is a choice: a registry filled with `oai-proxy models add` only.
    write('oai-proxy.config.json', { availableModels: [] });
    expect(resolve().config.availableModels).toEqual([]);
  });
});

describe('client keys: set but holding no key is refused, naming where, never showing a key', () => {
  const KEY = 'pk-team-key-0123456789';
  test.each([
    [
      'file [""]',
      { proxyApiKeys: [''] },
      {},
      '"proxyApiKeys" in config file {p}, proxyApiKeys[0]: expected a client key; it is empty: put a key in it or remove the entry (remove "proxyApiKeys" from the file to run without client keys)',
    ],
    [
      'file [key, "  "]',
      { proxyApiKeys: [KEY, '  '] },
      {},
      '"proxyApiKeys" in config file {p}, proxyApiKeys[1]: expected a client key; it is empty',
    ],
    [
      'file []',
      { proxyApiKeys: [] },
      {},
      '"proxyApiKeys" in config file {p}: expected client keys; it holds none: give at least one key, or remove "proxyApiKeys" from the file to run without client keys',
    ],
    [
      'file ","',
      { proxyApiKeys: ',' },
      {},
      '"proxyApiKeys" in config file {p}: expected client keys; it holds none',
    ],
    [
      'PROXY_API_KEYS=,',
      undefined,
      { PROXY_API_KEYS: ',' },
      'PROXY_API_KEYS (environment): expected comma-separated client keys; it holds none: give at least one key, or leave PROXY_API_KEYS empty or unset to run without client keys',
    ],
    [
      'PROXY_API_KEYS=" "',
      undefined,
      { PROXY_API_KEYS: ' ' },
      'PROXY_API_KEYS (environment): expected comma-separated client keys; it holds none',
    ],
    [
      'PROXY_API_KEYS=" , "',
      undefined,
      { PROXY_API_KEYS: ' , ' },
      'PROXY_API_KEYS (environment): expected comma-separated client keys; it holds none',
    ],
  ])('%s', (_name, file, env, message) => {
    const p = file ? write('oai-proxy.config.json', file) : '';
    expect(() => resolve({ OPENAI_API_KEY: KEY.replace('pk', 'sk'), ...env })).toThrow(
      `Invalid ${message.replace('{p}', p)}`,
    );
    try {
      resolve(env);
    } catch (err) {
      expect((err as Error).message).not.toContain(KEY);
    }
  });

  test.each([
    ['PROXY_API_KEYS= (empty: unset, as for every variable)', { PROXY_API_KEYS: '' }, []],
    ['a trailing comma', { PROXY_API_KEYS: `${KEY},` }, [KEY]],
    ['two keys', { PROXY_API_KEYS: `${KEY}, k2-0123456789` }, [KEY, 'k2-0123456789']],
  ])('%s is accepted', (_name, env, keys) => {
    expect(resolve(env).config.proxyApiKeys).toEqual(keys);
  });
});

// `"databaseUrl": ""` recorded to the default database, DATABASE_URL=" " to a file named " ", without a word.
describe('an empty or blank string setting is refused, naming where; an empty variable is unset', () => {
  const FILE_TAIL =
    'expected a value; it is {what}: give one, or remove "{key}" from the file to use the default';
  test.each([
    ['databaseUrl', '', 'empty'],
    ['databaseUrl', '  ', 'blank'],
    ['logFilePath', '', 'empty'],
    ['openaiBaseUrl', ' ', 'blank'],
    ['qdrantUrl', '', 'empty'],
    ['openaiApiKey', '', 'empty'],
    ['embeddingUpstream', '\t', 'blank'],
  ])('"%s": %j in the config file', (key, value, what) => {
    const p = write('oai-proxy.config.json', { [key]: value });
    expect(() => resolve()).toThrow(
      `Invalid "${key}" in config file ${p}: ${FILE_TAIL.replace('{what}', what).replace('{key}', key)}`,
    );
  });

  test.each([
    ['DATABASE_URL', 'environment'],
    ['LOG_FILE_PATH', 'environment'],
    ['OPENAI_API_KEY', 'environment'],
    ['QDRANT_URL', '.env'],
    ['AVAILABLE_MODELS', '.env'],
  ])('%s=" " in the %s', (name, layer) => {
    if (layer === '.env') write('.env', `${name}=" "\n`);
    const where = layer === '.env' ? `.env in ${dir.path}` : 'environment';
    expect(() => resolve(layer === '.env' ? {} : { [name]: ' ' })).toThrow(
      `Invalid ${name} (${where}): expected a value; it is blank: give one, or unset it (${name}= counts as unset) to use the default`,
    );
  });

  test('an empty variable is unset: the lower layer or the default applies', () => {
    write('oai-proxy.config.json', { databaseUrl: 'from-file.db' });
    expect(resolve({ DATABASE_URL: '' }).config.databaseUrl).toBe('from-file.db');
    write('oai-proxy.config.json', {});
    const { config } = resolve({ DATABASE_URL: '', LOG_FILE_PATH: '', OPENAI_API_KEY: '' });
    expect(config.databaseUrl).toBeUndefined();
    expect(config.logFilePath).toBeUndefined();
    expect(config.openaiApiKey).toBeUndefined();
  });

  test('logs is only warned about a blank setting it does not read', () => {
    write('oai-proxy.config.json', { adminApiKey: ' ' });
    const { warnings } = resolve({}, { unused: { command: 'oai-proxy logs', settings: ['adminApiKey'] } });
    expect(warnings).toEqual([
      expect.stringMatching(/^Invalid "adminApiKey" in config file .*: expected a value; it is blank/),
    ]);
  });
});

// A key written with a space around it in the file could never match: HTTP trims the Authorization header.
test('client keys and CORS origins in the file are trimmed, as the comma-separated forms are', () => {
  write('oai-proxy.config.json', {
    proxyApiKeys: [' pk-team-key-0123456789\n', 'pk-two'],
    corsOrigins: [' https://a.example '],
  });
  const { config } = resolve();
  expect(config.proxyApiKeys).toEqual(['pk-team-key-0123456789', 'pk-two']);
  expect(config.corsOrigins).toEqual(['https://a.example']);
  expect(resolve({ PROXY_API_KEYS: ' pk-a , pk-b ' }).config.proxyApiKeys).toEqual(['pk-a', 'pk-b']);
});

// The same for the proxy's other keys: an admin key " k" could never match a client's (trimmed) Bearer,
// and an upstream key with a newline would be sent as part of the Authorization header.
test('the upstream, admin and Qdrant keys are trimmed, in the file and the environment', () => {
  write('oai-proxy.config.json', {
    adminApiKey: ' adm-key-0123456789 ',
    upstreams: { local: { baseUrl: 'http://127.0.0.1:9/v1', apiKey: 'sk-upstream-0123456789\n' } },
  });
  const { config } = resolve({
    OPENAI_API_KEY: ' sk-env-0123456789 ',
    QDRANT_API_KEY: 'qd-key-0123456789\t',
  });
  expect(config.adminApiKey).toBe('adm-key-0123456789');
  expect(config.openaiApiKey).toBe('sk-env-0123456789');
  expect(config.qdrantApiKey).toBe('qd-key-0123456789');
  expect(config.upstreams.local!.apiKey).toBe('sk-upstream-0123456789');
});

describe('unused: a bad value of a setting the command does not read is a warning', () => {
  const unused = { command: 'oai-proxy logs', settings: ['port', 'corsOrigins'] as const };
  test('the value is skipped (the lower layer or default kept), with a warning naming it', () => {
    write('oai-proxy.config.json', { port: 1234, corsOrigins: 5 });
    const { config, warnings, sources } = resolve({ PORT: 'abc' }, { unused });
    expect(config.port).toBe(1234);
    expect(config.corsOrigins).toEqual([]);
    expect(sources.corsOrigins).toBeUndefined();
    expect(warnings).toEqual([
      `Invalid "corsOrigins" in config file ${join(dir.path, 'oai-proxy.config.json')} = 5: expected an array of strings; ignored: \`oai-proxy logs\` does not use it (\`oai-proxy serve\` would refuse it)`,
      'Invalid PORT (environment) = abc: expected an integer from 0 to 65535; ignored: `oai-proxy logs` does not use it (`oai-proxy serve` would refuse it)',
    ]);
  });

  test('any other setting still stops it, and without `unused` so does a listed one', () => {
    expect(() => resolve({ LOG_MAX_FILES: '0' }, { unused })).toThrow(/^Invalid LOG_MAX_FILES/);
    expect(() => resolve({ PORT: 'abc' })).toThrow(/^Invalid PORT/);
  });

  // Each command skips exactly what it never reads (SETTINGS_READ_BY); the keys logs search/reindex scrub
  // from the exchanges they record are read.
  test.each([
    ['oai-proxy logs', { OPENAI_BASE_URL: 'localhost:8080' }, 'skipped'],
    ['oai-proxy logs', { OPENAI_API_TYPE: 'bogus' }, 'skipped'],
    ['oai-proxy logs', { MODEL_MAPPINGS: '{bad' }, 'skipped'],
    // Valid JSON whose alias is empty: refused by serve and models, not a reason to stop logs.
    ['oai-proxy logs', { MODEL_MAPPINGS: '{"":"gpt-4o"}' }, 'skipped'],
    ['oai-proxy models', { MODEL_MAPPINGS: '{"":"gpt-4o"}' }, 'refused'],
    ['oai-proxy logs', { QDRANT_URL: 'qdrant:6333' }, 'skipped'],
    ['oai-proxy logs', { PROXY_API_KEYS: ',' }, 'skipped'],
    ['oai-proxy logs', { LOG_MAX_FILES: '0' }, 'refused'],
    ['oai-proxy logs prune', { QDRANT_URL: 'qdrant:6333' }, 'refused'],
    ['oai-proxy logs prune', { LOG_MAX_FILES: '0' }, 'skipped'],
    ['oai-proxy logs prune', { OPENAI_BASE_URL: 'localhost:8080' }, 'skipped'],
    ['oai-proxy models', { QDRANT_URL: 'qdrant:6333' }, 'skipped'],
    ['oai-proxy models', { OPENAI_BASE_URL: 'localhost:8080' }, 'skipped'],
    ['oai-proxy models', { MODEL_MAPPINGS: '{bad' }, 'refused'],
    ['oai-proxy logs search', { OPENAI_BASE_URL: 'localhost:8080' }, 'refused'],
    ['oai-proxy logs search', { UPSTREAM_IDLE_TIMEOUT_MS: '-1' }, 'refused'],
    ['oai-proxy logs search', { PROXY_API_KEYS: ',' }, 'refused'],
    ['oai-proxy logs reindex', { PROXY_API_KEYS: ',' }, 'refused'],
    ['oai-proxy logs search', { LOG_MAX_FILES: '0' }, 'skipped'],
    ['oai-proxy logs search', { MODEL_MAPPINGS: '{bad' }, 'skipped'],
  ] as const)('%s, %j: %s', (command, env, outcome) => {
    const run = () => resolve(env, { unused: unusedSettings(command) });
    const name = Object.keys(env)[0];
    if (outcome === 'refused') expect(run).toThrow(new RegExp(`^Invalid ${name} `));
    else
      expect(run().warnings).toEqual([
        expect.stringMatching(new RegExp(`^Invalid ${name} .*; ignored: \`${command}\` does not use it`)),
      ]);
  });

  test('every command reads the database, and only settings that exist', () => {
    const keys = SETTINGS.map((s) => s.key);
    for (const [command, reads] of Object.entries(SETTINGS_READ_BY)) {
      expect(reads, command).toContain('databaseUrl');
      for (const key of reads) expect(keys, command).toContain(key);
      expect(unusedSettings(command as ReadingCommand).settings.length).toBe(keys.length - reads.length);
    }
  });
});

describe('invalid values name the setting and where it came from', () => {
  test.each([
    [{ PORT: 'abc' }, /Invalid PORT \(environment\) = abc: expected an integer from 0 to 65535/],
    [{ PORT: '70000' }, /PORT \(environment\).*0 to 65535/],
    [{ MODEL_MAPPINGS: '{nope' }, /Invalid MODEL_MAPPINGS \(environment\).*JSON object/],
    [{ MODEL_MAPPINGS: '["a"]' }, /MODEL_MAPPINGS.*JSON object/],
    [
      { MODEL_MAPPINGS: '{"fast":" "}' },
      /^Invalid MODEL_MAPPINGS \(environment\) = \{"fast":" "\}: expected a JSON object of non-empty alias → model names; "fast" maps to an empty model$/,
    ],
    [{ VALIDATE_MODELS: 'maybe' }, /VALIDATE_MODELS \(environment\) = maybe: expected true or false/],
    [{ OPENAI_BASE_URL: 'not a url' }, /OPENAI_BASE_URL.*absolute http/],
    [{ LOG_LEVEL: 'loud' }, /LOG_LEVEL.*one of trace, debug/],
    [
      { CLIENT_BODY_TIMEOUT_MS: '-1' },
      /Invalid CLIENT_BODY_TIMEOUT_MS \(environment\) = -1: expected an integer from 0 to 2147483647/,
    ],
    [{ CLIENT_BODY_TIMEOUT_MS: '60s' }, /Invalid CLIENT_BODY_TIMEOUT_MS \(environment\) = 60s/],
    [{ CLIENT_BODY_TIMEOUT_MS: '2147483648' }, /CLIENT_BODY_TIMEOUT_MS.*0 to 2147483647/],
    // Node's timers fire after 1 ms beyond 2^31-1 ms: every *_MS setting stops there.
    [
      { SHUTDOWN_GRACE_MS: '99999999999999' },
      /^Invalid SHUTDOWN_GRACE_MS \(environment\) = 99999999999999: expected an integer from 0 to 2147483647$/,
    ],
    [{ UPSTREAM_CONNECT_TIMEOUT_MS: '2147483648' }, /UPSTREAM_CONNECT_TIMEOUT_MS.*1 to 2147483647$/],
    [{ UPSTREAM_HEADERS_TIMEOUT_MS: '2147483648' }, /UPSTREAM_HEADERS_TIMEOUT_MS.*1 to 2147483647$/],
    [{ UPSTREAM_IDLE_TIMEOUT_MS: '2147483648' }, /UPSTREAM_IDLE_TIMEOUT_MS.*1 to 2147483647$/],
  ])('%j', (env, message) => {
    expect(() => resolve(env)).toThrow(message);
    try {
      resolve(env);
    } catch (err) {
      expect((err as { code: string }).code).toBe('config_invalid');
    }
  });

  // The value as the file holds it (in quotes if a string); a string the environment would take says how to write it.
  test.each([
    [
      { port: '8000' },
      '"port" in {p} = "8000": expected an integer from 0 to 65535; write it without quotes: "port": 8000',
    ],
    [{ port: '70000' }, '"port" in {p} = "70000": expected an integer from 0 to 65535'],
    [{ port: 'abc' }, '"port" in {p} = "abc": expected an integer from 0 to 65535'],
    [{ port: true }, '"port" in {p} = true: expected an integer from 0 to 65535'],
    [
      { validateModels: 'true' },
      '"validateModels" in {p} = "true": expected true or false; write it without quotes: "validateModels": true',
    ],
    [
      { logRotateDaily: 'no' },
      '"logRotateDaily" in {p} = "no": expected true or false; write it without quotes: "logRotateDaily": false',
    ],
    [{ searchIndex: 1 }, '"searchIndex" in {p} = 1: expected true or false'],
    [
      { logLevel: 'loud' },
      '"logLevel" in {p} = "loud": expected one of trace, debug, info, warn, error, fatal, silent',
    ],
  ])('a wrong type in the config file: %j', (file, expected) => {
    const p = write('oai-proxy.config.json', file);
    expect(() => resolve()).toThrow(`Invalid ${expected.replace('{p}', `config file ${p}`)}`);
    expect(() => resolve()).not.toThrow(/; write it.*; write it/);
  });

  test('an enum in the config file is read as from the environment: trimmed, in any case', () => {
    write('oai-proxy.config.json', { logLevel: 'INFO', openaiApiType: ' Azure' });
    expect(resolve().config).toMatchObject({ logLevel: 'info', openaiApiType: 'azure' });
    expect(resolve({ LOG_LEVEL: 'WARN' }).config.logLevel).toBe('warn');
  });

  test('every *_MS setting takes up to 2147483647 (2^31-1), in the file as in the environment', () => {
    const ms = {
      shutdownGraceMs: 2_147_483_647,
      upstreamConnectTimeoutMs: 2_147_483_647,
      upstreamHeadersTimeoutMs: 2_147_483_647,
      upstreamIdleTimeoutMs: 2_147_483_647,
    };
    write('oai-proxy.config.json', ms);
    expect(resolve().config).toMatchObject(ms);
    const p = write('oai-proxy.config.json', { shutdownGraceMs: 99999999999999 });
    expect(() => resolve()).toThrow(
      `Invalid "shutdownGraceMs" in config file ${p} = 99999999999999: expected an integer from 0 to 2147483647`,
    );
  });

  test('the client body timeout in the config file: 0 turns it off, a fraction is refused', () => {
    write('oai-proxy.config.json', { clientBodyTimeoutMs: 0 });
    expect(resolve().config.clientBodyTimeoutMs).toBe(0);
    const p = write('oai-proxy.config.json', { clientBodyTimeoutMs: 2.5 });
    expect(() => resolve()).toThrow(
      `Invalid "clientBodyTimeoutMs" in config file ${p} = 2.5: expected an integer from 0 to 2147483647`,
    );
  });

  test('a flag value', () => {
    expect(() => resolve({}, { flags: { port: 'x' } })).toThrow(/Invalid --port = x/);
  });

  test('a missing explicit config file', () => {
    expect(() => resolve({}, { configPath: 'missing.json' })).toThrow(
      /missing\.json \(from --config\) does not exist/,
    );
  });

  test('a config file that is not JSON', () => {
    write('oai-proxy.config.json', '{ port: 1 ');
    expect(() => resolve()).toThrow(/is not valid JSON/);
  });

  const SECRET = 'sk-SECRET-9999';
  const message = (file: Record<string, unknown>) => {
    const p = write('oai-proxy.config.json', file);
    try {
      resolve();
    } catch (err) {
      return { p, message: (err as Error).message };
    }
    throw new Error('expected the config to be rejected');
  };

  // Each message names the key, the file and what was expected, and never holds the secret.
  test.each([
    [{ openaiApiKey: 12345678901234 }, '"openaiApiKey" in config file {p}: expected a string; got a number'],
    [{ adminApiKey: [SECRET] }, '"adminApiKey" in config file {p}: expected a string; got an array'],
    [{ qdrantApiKey: { k: SECRET } }, '"qdrantApiKey" in config file {p}: expected a string; got an object'],
    [
      { proxyApiKeys: [SECRET, 7] },
      '"proxyApiKeys" in config file {p}: expected an array of strings; element [1] is a number',
    ],
    [
      { proxyApiKeys: { a: SECRET } },
      '"proxyApiKeys" in config file {p}: expected an array of strings; got an object',
    ],
    [
      {
        upstreams: {
          u: { baseUrl: 'http://u', headers: { Authorization: `Bearer ${SECRET}`, 'x-retries': 3 } },
        },
      },
      '"upstreams" in config file {p}, upstreams.u.headers: expected a JSON object of strings such as {"x-header":"value"}; "x-retries" is a number',
    ],
    [
      { upstreams: { u: { baseUrl: 'http://u', headers: `Bearer ${SECRET}` } } },
      'upstreams.u.headers: expected a JSON object of strings such as {"x-header":"value"}; got a string',
    ],
    [
      { upstreams: { u: { baseUrl: 'http://u', apiKey: [SECRET] } } },
      'upstreams.u.apiKey: expected a string; got an array',
    ],
    [
      { upstreams: { u: SECRET } },
      'upstreams.u: expected an object {baseUrl, apiKey | apiKeyEnv, type, …}; got a string',
    ],
    [{ upstreams: SECRET }, '"upstreams" in config file {p}: expected an object name'],
  ])('secrets are never echoed: %j', (file, expected) => {
    const { p, message: m } = message(file);
    expect(m).toContain(expected.replace('{p}', p));
    expect(m).not.toContain('SECRET');
  });

  test('an upstream URL and type are shown, its password redacted', () => {
    expect(message({ upstreams: { u: { baseUrl: 'ftp://me:pw-SECRET@h/v1' } } }).message).toMatch(
      /upstreams\.u\.baseUrl = "ftp:\/\/me:\*\*\*@h\/v1": expected an http/,
    );
    expect(message({ upstreams: { u: { baseUrl: 'http://h', type: 'azzure' } } }).message).toMatch(
      /upstreams\.u\.type = "azzure": expected "openai" or "azure"/,
    );
  });

  // A URL setting given an array or object is quoted as JSON: the passwords and keys in it masked too.
  test.each([
    [
      { databaseUrl: ['postgres://u:pw-SECRET-123456@h/db'] },
      '"databaseUrl" in config file {p} = ["postgres://u:***@h/db"]',
    ],
    [
      { databaseUrl: { url: 'postgres://u:pw-SECRET-123456@h/db' } },
      '= {"url":"postgres://u:***@h/db"}: expected a string',
    ],
    [
      { upstreams: { u: { baseUrl: ['http://me:pw-SECRET-123456@h/v1'] } } },
      'upstreams.u.baseUrl = ["http://me:***@h/v1"]',
    ],
    [
      { upstreams: { u: { baseUrl: ['sk-proj-SECRET0123456789abc'] } } },
      'upstreams.u.baseUrl = ["sk-…9abc"]',
    ],
  ])('a URL inside an array or object is shown with its password masked: %j', (file, expected) => {
    const { p, message: m } = message(file);
    expect(m).toContain(expected.replace('{p}', p));
    expect(m).not.toContain('SECRET');
  });

  test('a config file that is not JSON: the error does not quote the text', () => {
    write('oai-proxy.config.json', `{"openaiApiKey": ${SECRET}}`);
    expect(() => resolve()).toThrow(/is not valid JSON: Unexpected token/);
    expect(() => resolve()).not.toThrow(/SECRET/);
  });
});

describe('a secret quoted by another setting is [redacted] in its message', () => {
  const KEY = 'sk-SECRETUPSTREAM0123456789';
  const rejected = (env: Record<string, string>, extra: Parameters<typeof resolveConfig>[0] = {}) => {
    try {
      resolve(env, extra);
    } catch (err) {
      return { code: (err as { code: string }).code, message: (err as Error).message };
    }
    throw new Error('expected the config to be rejected');
  };

  // The value is hidden wherever it came from: the key in any secret setting, any layer, pasted anywhere.
  test.each([
    [
      { OPENAI_API_KEY: KEY, OPENAI_BASE_URL: KEY },
      'Invalid OPENAI_BASE_URL (environment) = [redacted]: expected',
    ],
    [{ OPENAI_API_KEY: KEY, PORT: KEY }, 'Invalid PORT (environment) = [redacted]: expected an integer'],
    [{ ADMIN_API_KEY: KEY, LOG_LEVEL: KEY }, 'Invalid LOG_LEVEL (environment) = [redacted]: expected one of'],
    [
      { QDRANT_API_KEY: KEY, MODEL_MAPPINGS: KEY },
      'Invalid MODEL_MAPPINGS (environment) = [redacted]: expected',
    ],
    [
      { PROXY_API_KEYS: `other-key-1, ${KEY}`, PORT: KEY },
      'Invalid PORT (environment) = [redacted]: expected',
    ],
    // Inside a longer value, and beyond the 80 characters a quoted value is cut to.
    [{ OPENAI_API_KEY: KEY, OPENAI_BASE_URL: `https ${KEY}` }, '= https [redacted]: expected'],
    [
      { OPENAI_API_KEY: `${KEY}${'x'.repeat(90)}`, PORT: `${KEY}${'x'.repeat(90)}` },
      '= [redacted]: expected',
    ],
    // A short key is hidden as a whole word (the scrubber of recorded bodies skips it; `serve` warns).
    [
      { PROXY_API_KEYS: 'Zq9x7', LOG_LEVEL: 'Zq9x7' },
      'Invalid LOG_LEVEL (environment) = [redacted]: expected one of',
    ],
    // A DATABASE_URL password, not only where the URL itself is shown.
    [
      { DATABASE_URL: `postgres://u:${KEY}@db/x`, PORT: KEY },
      'Invalid PORT (environment) = [redacted]: expected',
    ],
    [
      { DATABASE_URL: `postgres://u:${KEY}@db/x`, OPENAI_BASE_URL: KEY },
      'OPENAI_BASE_URL (environment) = [redacted]',
    ],
  ])('%j', (env, expected) => {
    const { code, message } = rejected(env);
    expect(code).toBe('config_invalid');
    expect(message).toContain(expected);
    expect(message).not.toContain('SECRET');
    expect(message).not.toContain('Zq9x7');
  });

  test('a key pasted only into the wrong setting (its own holding something else) is masked as a key', () => {
    const message = rejected({ OPENAI_API_KEY: 'https://api.openai.com/v1', OPENAI_BASE_URL: KEY }).message;
    expect(message).toContain(
      'Invalid OPENAI_BASE_URL (environment) = sk-…6789 (looks like a key; not shown)',
    );
    expect(message).not.toContain('SECRET');
    const token = 'a1B2'.repeat(10);
    expect(rejected({ PORT: token }).message).toContain(
      `= …${token.slice(-4)} (looks like a key; not shown)`,
    );
    // Ordinary wrong values are still quoted.
    expect(rejected({ PORT: 'eighty' }).message).toContain('Invalid PORT (environment) = eighty');
  });

  test('a short URL password (postgres:postgres, as compose files write it) is masked in the URL, not as a word', async () => {
    const { withoutConfiguredSecrets } = await import('../../src/config/load.js');
    const url = 'postgres://postgres:postgres@postgres:5432/postgres';
    const resolved = resolve({ DATABASE_URL: url });
    const err = withoutConfiguredSecrets(
      new Error(`Cannot connect to PostgreSQL at ${redactUrl(url)}: ECONNREFUSED; is postgres running?`),
      resolved,
    ) as Error;
    expect(err.message).toBe(
      'Cannot connect to PostgreSQL at postgres://postgres:***@postgres:5432/postgres: ECONNREFUSED; is postgres running?',
    );
    // A quoted value still never shows the password itself.
    expect(rejected({ DATABASE_URL: url, PORT: url }).message).toContain('postgres://postgres:***@postgres');
  });

  test('from .env, a flag, and the config file (its keys, an upstream apiKey, apiKeyEnv and header value)', () => {
    write('.env', `OPENAI_API_KEY=${KEY}\n`);
    expect(rejected({}, { flags: { port: KEY } }).message).toBe(
      'Invalid --port = [redacted]: expected an integer from 0 to 65535',
    );
    write('.env', '');
    for (const upstream of [
      { baseUrl: 'http://u', apiKey: KEY },
      { baseUrl: 'http://u', apiKeyEnv: 'MY_KEY' },
      { baseUrl: 'http://u', headers: { 'api-key': KEY } },
      { baseUrl: 'http://u', headers: { authorization: `Bearer ${KEY}` } },
    ]) {
      const p = write('oai-proxy.config.json', { upstreams: { u: upstream }, logLevel: KEY });
      expect(rejected({ MY_KEY: KEY }).message).toBe(
        `Invalid "logLevel" in config file ${p} = "[redacted]": expected one of trace, debug, info, warn, error, fatal, silent`,
      );
    }
    // Before the config file is even found; and a key only the file holds, quoted by the environment.
    expect(rejected({ OPENAI_API_KEY: KEY, OAI_PROXY_CONFIG: KEY }).message).not.toContain('SECRET');
    // A header value that is no secret stays readable.
    const p = write('oai-proxy.config.json', {
      upstreams: { u: { baseUrl: 'http://u', headers: { 'x-provider': 'openai' }, type: 'nope' } },
    });
    expect(rejected({}).message).toBe(
      `Invalid "upstreams" in config file ${p}, upstreams.u.type = "nope": expected "openai" or "azure"`,
    );
    write('oai-proxy.config.json', { adminApiKey: KEY });
    expect(rejected({ PORT: KEY }).message).toBe(
      'Invalid PORT (environment) = [redacted]: expected an integer from 0 to 65535',
    );
  });

  test('a short key does not eat the words of the message', () => {
    expect(rejected({ ADMIN_API_KEY: 'an', PORT: 'x' }).message).toBe(
      'Invalid PORT (environment) = x: expected an integer from 0 to 65535',
    );
  });
});

test('an unknown key in the file is a warning naming the closest known key', () => {
  write('oai-proxy.config.json', { prot: 9000, openaiBaseURL: 'http://x' });
  const { warnings, config } = resolve();
  expect(config.port).toBe(8000);
  expect(warnings).toEqual([
    expect.stringMatching(/Unknown key "prot".*did you mean "port"/),
    expect.stringMatching(/"openaiBaseURL".*"openaiBaseUrl"/),
  ]);
  expect(closestKey('zzzzzzzzzzzz')).toBeUndefined();
});

test('an unknown key inside an upstreams or models entry is a warning naming its path and the closest known key', () => {
  const key = 'sk-typo-SECRET-5555';
  write('oai-proxy.config.json', {
    upstreams: {
      loc: {
        baseUrl: 'http://127.0.0.1:9/v1',
        apikey: key,
        header: { authorization: `Bearer ${key}` },
        typ: 'azure',
        zzzzzzzz: 1,
      },
    },
    models: [{ name: 'm1', upstream: 'loc', display_name: 'M One', deployement: 'd' }],
    availableModels: ['gpt-4o', { name: 'm2', descripton: 'two' }],
  });
  const { warnings, config } = resolve();
  expect(config.upstreams.loc.type).toBe('openai');
  const file = join(dir.path, 'oai-proxy.config.json');
  expect(warnings).toEqual([
    `Unknown key "upstreams.loc.apikey" in ${file} (did you mean "apiKey"?); it is ignored`,
    `Unknown key "upstreams.loc.header" in ${file} (did you mean "headers"?); it is ignored`,
    `Unknown key "upstreams.loc.typ" in ${file} (did you mean "type"?); it is ignored`,
    `Unknown key "upstreams.loc.zzzzzzzz" in ${file}; it is ignored`,
    `Unknown key "models[0].display_name" in ${file} (did you mean "displayName"?); it is ignored`,
    `Unknown key "models[0].deployement" in ${file} (did you mean "deployment"?); it is ignored`,
    `Unknown key "availableModels[1].descripton" in ${file} (did you mean "description"?); it is ignored`,
  ]);
  expect(warnings.join('\n')).not.toContain('SECRET');
});

describe('DATABASE_URL forms', () => {
  const env = { HOME: '/home/u' };
  test.each([
    [undefined, '/home/u/.local/share/oai-proxy/oai-proxy.db'],
    ['data/x.db', '/srv/app/data/x.db'],
    ['/abs/x.db', '/abs/x.db'],
    ['sqlite:///rel.db', '/srv/app/rel.db'],
    ['sqlite:////abs/dir/x.db', '/abs/dir/x.db'],
    ['file:rel.db', '/srv/app/rel.db'],
    ['file:///abs/f.db', '/abs/f.db'],
    ['~/x.db', '/home/u/x.db'],
  ])('%s → %s', (url, path) => {
    expect(resolveDatabaseLocation(url, env, '/srv/app')).toEqual({ kind: 'sqlite', path });
  });

  test('XDG_DATA_HOME and the log file beside the database', () => {
    const loc = resolveDatabaseLocation(undefined, { HOME: '/h', XDG_DATA_HOME: '/data' }, '/');
    expect(loc).toEqual({ kind: 'sqlite', path: '/data/oai-proxy/oai-proxy.db' });
    expect(resolveLogFilePath(undefined, loc, {}, '/')).toBe('/data/oai-proxy/oai-proxy.log');
    expect(resolveLogFilePath('logs/p.log', loc, {}, '/srv')).toBe('/srv/logs/p.log');
  });

  test('postgres and unsupported schemes', () => {
    expect(resolveDatabaseLocation('postgres://u:p@h/db', env, '/').kind).toBe('postgres');
    expect(() => resolveDatabaseLocation('mysql://u:pw@h/db', env, '/')).toThrow(
      /mysql:\/\/u:\*\*\*@h.*unsupported scheme/,
    );
  });

  test.each([
    ['postgres://u:p@h/db'],
    ['postgresql://u:p@h:5432/db?sslmode=require'],
    ['postgres://u:p@/db?host=/run/postgresql'],
    ['postgres://u:p%23w@h/db'],
    ['postgres://u:p@ss@h/db'],
    ['postgres://u:pa ss@h/db'],
  ])('%s is a PostgreSQL URL pg can parse', (url) => {
    expect(resolveDatabaseLocation(url, env, '/', '--db')).toEqual({
      kind: 'postgres',
      url,
      setting: '--db',
    });
  });

  // A mistyped or malformed PostgreSQL URL is a config error naming the setting, its password hidden; it
  // is never taken for a file name (which serve would create and print, password and all).
  test.each([
    [
      'postgres:/oai:zzpw@127.0.0.1:40133/t1',
      '--db "postgres:/oai:***@127.0.0.1:40133/t1" is not a valid PostgreSQL URL: "postgres:" must be followed by //; write postgres://user:password@host:port/database',
    ],
    [
      'postgres:oai:zzpw@127.0.0.1:40133/t2',
      '--db "postgres:oai:***@127.0.0.1:40133/t2" is not a valid PostgreSQL URL: "postgres:" must be followed by //; write postgres://user:password@host:port/database',
    ],
    [
      'PostgreSQL:/oai:zzpw@h/db',
      '--db "PostgreSQL:/oai:***@h/db" is not a valid PostgreSQL URL: "PostgreSQL:" must be followed by //; write postgres://user:password@host:port/database',
    ],
    [
      'postgres://oai:hun#ter2zzpw@127.0.0.1:5432/t1',
      '--db "postgres://oai:***@127.0.0.1:5432/t1" is not a valid PostgreSQL URL: characters # / ? and @ in the user name or password must be percent-encoded (# as %23, / as %2F, ? as %3F, @ as %40); write postgres://user:password@host:port/database',
    ],
    [
      'postgres://oai:a/b?czzpw@127.0.0.1:5432/t1',
      '--db "postgres://oai:***@127.0.0.1:5432/t1" is not a valid PostgreSQL URL: characters # / ? and @ in the user name or password must be percent-encoded (# as %23, / as %2F, ? as %3F, @ as %40); write postgres://user:password@host:port/database',
    ],
    [
      'postgres://oai:zzpw@127.0.0.1:99999/t1',
      '--db "postgres://oai:***@127.0.0.1:99999/t1" is not a valid PostgreSQL URL: the port 99999 is out of range (0-65535); write postgres://user:password@host:port/database',
    ],
    [
      'postgres://oai:zzpw@127.0.0.1:abc/t1',
      '--db "postgres://oai:***@127.0.0.1:abc/t1" is not a valid PostgreSQL URL: the port "abc" is not a number; write postgres://user:password@host:port/database',
    ],
    [
      'postgres://oai:zzpw@[::1:5432/t1',
      '--db "postgres://oai:***@[::1:5432/t1" is not a valid PostgreSQL URL: it cannot be parsed as a URL; write postgres://user:password@host:port/database',
    ],
  ])('%s is refused', (url, message) => {
    let err: unknown;
    try {
      resolveDatabaseLocation(url, env, '/srv', '--db');
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code: 'config_invalid', message });
    expect((err as Error).message).not.toContain('zzpw');
  });

  test.each([['sqlite:x.db'], ['sqlite:/x.db'], ['SQLite+pysqlite:x.db']])(
    '%s (sqlite: without //) is refused, not taken for a file name',
    (url) => {
      expect(() => resolveDatabaseLocation(url, env, '/srv', 'DATABASE_URL')).toThrow(
        `DATABASE_URL "${url}" is not a valid sqlite URL: use sqlite:///relative.db or sqlite:////absolute/path.db`,
      );
    },
  );

  test.each([
    ['C:/data/x.db', '/srv/C:/data/x.db'],
    ['postgres.db', '/srv/postgres.db'],
    ['data/postgres:x.db', '/srv/data/postgres:x.db'],
    ['mysql:x.db', '/srv/mysql:x.db'],
  ])('%s is still a file path', (url, path) => {
    expect(resolveDatabaseLocation(url, env, '/srv')).toEqual({ kind: 'sqlite', path });
  });
});

describe("a base URL's ?api-version is the upstream's api-version unless one is configured", () => {
  const portal = 'https://x.openai.azure.com/openai/deployments/d?api-version=2024-02-01';
  test('taken, and the URL loses it; other query parameters are kept for serve to refuse', () => {
    const { config, warnings } = resolve({ OPENAI_BASE_URL: portal });
    expect(config.openaiBaseUrl).toBe('https://x.openai.azure.com/openai/deployments/d');
    expect(config.openaiApiVersion).toBe('2024-02-01');
    expect(warnings).toEqual([]);
    const other = resolve({
      OPENAI_BASE_URL: 'http://h/v1/?a=1&api-version=2025-01-01&b=2#f',
      OPENAI_API_TYPE: 'azure',
    }).config;
    expect(other.openaiBaseUrl).toBe('http://h/v1?a=1&b=2#f');
    expect(other.openaiApiVersion).toBe('2025-01-01');
  });

  // Only an Azure upstream is sent an api-version: another's stays in its URL, for serve to refuse.
  test('not taken for an upstream that is not Azure (by type, host or deployment path)', () => {
    for (const env of [
      { OPENAI_BASE_URL: 'http://h/openai?api-version=2024-02-01' } as Record<string, string>,
      { OPENAI_BASE_URL: portal, OPENAI_API_TYPE: 'openai' },
    ]) {
      const { config } = resolve(env);
      expect(config.openaiBaseUrl).toBe(env.OPENAI_BASE_URL);
      expect(config.openaiApiVersion).toBeUndefined();
    }
    write('oai-proxy.config.json', { upstreams: { az: { baseUrl: portal } } });
    expect(resolve().config.upstreams.az).toEqual({ baseUrl: portal, type: 'openai' });
  });

  test('a configured api-version that differs wins, with a warning naming both', () => {
    const { config, warnings } = resolve({ OPENAI_BASE_URL: portal, OPENAI_API_VERSION: '2024-10-21' });
    expect(config.openaiBaseUrl).toBe('https://x.openai.azure.com/openai/deployments/d');
    expect(config.openaiApiVersion).toBe('2024-10-21');
    expect(warnings).toEqual([
      'OPENAI_BASE_URL holds ?api-version=2024-02-01, but OPENAI_API_VERSION is 2024-10-21, which is used; remove one of them',
    ]);
    expect(resolve({ OPENAI_BASE_URL: portal, OPENAI_API_VERSION: '2024-02-01' }).warnings).toEqual([]);
  });

  test("the same for a file's upstreams.NAME.baseUrl and apiVersion", () => {
    write('oai-proxy.config.json', {
      upstreams: {
        az: { baseUrl: portal, type: 'azure' },
        pinned: { baseUrl: portal, type: 'azure', apiVersion: '2024-10-21' },
      },
    });
    const { config, warnings } = resolve();
    expect(config.upstreams.az).toMatchObject({
      baseUrl: 'https://x.openai.azure.com/openai/deployments/d',
      apiVersion: '2024-02-01',
    });
    expect(config.upstreams.pinned).toMatchObject({
      baseUrl: 'https://x.openai.azure.com/openai/deployments/d',
      apiVersion: '2024-10-21',
    });
    expect(warnings).toEqual([
      'upstreams.pinned.baseUrl holds ?api-version=2024-02-01, but upstreams.pinned.apiVersion is 2024-10-21, which is used; remove one of them',
    ]);
  });
});

describe('redactUrl hides the whole password, as pg reads it', () => {
  test.each([
    ['postgres://user:pw@dbhost/db', 'postgres://user:***@dbhost/db'],
    ['postgres://user:p@ssSECRET@dbhost/db', 'postgres://user:***@dbhost/db'],
    [
      'postgres://user:p@ss@SECRET@dbhost:5432/db?sslmode=require',
      'postgres://user:***@dbhost:5432/db?sslmode=require',
    ],
    ['postgres://user:pa:SECRET@dbhost/db', 'postgres://user:***@dbhost/db'],
    ['postgres://user:pa/SECRET@dbhost/db', 'postgres://user:***@dbhost/db'],
    ['postgres://user:pa#SECRET@dbhost/db', 'postgres://user:***@dbhost/db'],
    ['postgres://user:pa?SECRET@dbhost/db', 'postgres://user:***@dbhost/db'],
    ['postgres://user:pa SECRET@dbhost/db', 'postgres://user:***@dbhost/db'],
    ['postgres://user:pa%40SECRET@dbhost/db', 'postgres://user:***@dbhost/db'],
    [
      'postgres://dbhost/db?user=u&password=SECRET&sslmode=require',
      'postgres://dbhost/db?user=u&password=***&sslmode=require',
    ],
    // Query parameters named like secrets, as the proxy judges header names (README: `key`, `*signature`).
    [
      'http://h/v1?key=SECRET&x-goog-api-key=SECRET&access_token=SECRET&Signature=SECRET&pwd=SECRET',
      'http://h/v1?key=***&x-goog-api-key=***&access_token=***&Signature=***&pwd=***',
    ],
    [
      'http://h/v1?api%2Dkey=SECRET&api-version=2024-10-21',
      'http://h/v1?api%2Dkey=***&api-version=2024-10-21',
    ],
    // A fragment whole (OAuth's #access_token=…), an Azure SAS token's sig (se, its expiry, shown).
    ['http://h/v1#access_token=SECRETfrag123', 'http://h/v1#***'],
    ['http://h/v1?x=1#SECRET', 'http://h/v1?x=1#***'],
    ['http://h/v1#', 'http://h/v1#'],
    ['https://u:p#SECRET@h/v1#SECRET', 'https://u:***@h/v1#***'],
    [
      'https://a.blob.core.windows.net/c?se=2026-01-01&sig=SECRET',
      'https://a.blob.core.windows.net/c?se=2026-01-01&sig=***',
    ],
    // The tester's repro: a value shaped like a key is masked whatever its parameter's name (as
    // shownValue's "looks like a key"), percent-encoded or not; a bare key as a parameter, whole.
    ['http://127.0.0.1:1/v1?code=sk-proj-abcdefghijklmnopqrSECRET', 'http://127.0.0.1:1/v1?code=***'],
    ['http://h/v1?a=1&t=sk%2DprojSECRET1234&b=2', 'http://h/v1?a=1&t=***&b=2'],
    ['http://h/v1?x=SECRET0123456789abcdefghijklmnopqrstuv', 'http://h/v1?x=***'],
    ['http://h/v1?sk-proj-SECRET12345678&y=1', 'http://h/v1?***&y=1'],
    ['http://h/v1?sk-proj-SECRET12345678=1', 'http://h/v1?***'],
    ['postgres://u@h/db?application_name=sk-proj-SECRET12345', 'postgres://u@h/db?application_name=***'],
    // Not shaped like a key: shown.
    ['http://h/v1?model=gpt-4o-mini&n=2&q', 'http://h/v1?model=gpt-4o-mini&n=2&q'],
    ['http://h/v1?sk=short-1', 'http://h/v1?sk=short-1'],
    ['/tmp/a#b.db', '/tmp/a#b.db'],
    ['postgres://user@dbhost/db', 'postgres://user@dbhost/db'],
    ['http://host:8080/a@b', 'http://host:8080/a@b'],
    ['https://api.openai.com/v1', 'https://api.openai.com/v1'],
    ['not a url', 'not a url'],
  ])('%s → %s', (url, shown) => {
    expect(redactUrl(url)).toBe(shown);
    expect(redactUrl(url)).not.toContain('SECRET');
  });

  test.each([
    'postgres://user:p@ssSECRET@dbhost/db',
    'postgres://user:pa:SECRET@dbhost/db',
    'postgres://user:pa SECRET@dbhost/db',
  ])('pg reads a password from %s that the redacted form does not show', (url) => {
    const { password } = parsePgUrl(url);
    expect(password).toContain('SECRET');
    expect(redactUrl(url)).not.toContain(password!.slice(-6));
  });
});

test('maskSecret shows only the last four characters', () => {
  expect(maskSecret('sk-proj-abcdefghijklmnop1234')).toBe('sk-…1234');
  expect(maskSecret(undefined)).toBe('(none)');
  expect(maskSecret('short')).not.toContain('short');
});
