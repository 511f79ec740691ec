import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, test } from 'vitest';
import {
  applyAnswers,
  type InitAnswers,
  inferKind,
  maskValues,
  validateApiVersion,
  validateHost,
  validatePort,
  validateUrl,
} from '../../src/commands/init.js';
import { writeConfigFile } from '../../src/config/write.js';
import { isOaiProxyError } from '../../src/errors.js';
import { createTempDir } from '../helpers/temp-dir.js';

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

describe('init validators', () => {
  test.each([
    [validatePort, '0', true],
    [validatePort, '65535', true],
    [validatePort, '65536', false],
    [validatePort, '-1', false],
    [validatePort, '80a', false],
    [validateHost, '127.0.0.1', true],
    [validateHost, '::1', true],
    [validateHost, 'localhost', true],
    [validateHost, 'my host', false],
    [validateHost, '', false],
    [validateUrl, 'https://api.openai.com/v1', true],
    [validateUrl, 'http://127.0.0.1:11434/v1', true],
    [validateUrl, 'api.openai.com/v1', false],
    [validateUrl, 'file:///etc/passwd', false],
    [validateUrl, 'https://x.test/v1?a=1', false],
    [validateApiVersion, '2024-10-21', true],
    [validateApiVersion, '2025-04-01-preview', true],
    [validateApiVersion, 'v1', false],
  ] as const)('%o(%j) ok=%j', (fn, value, ok) => {
    const r = fn(value);
    if (ok) expect(r).toBe(true);
    else expect(typeof r).toBe('string');
  });

  test.each([
    ['https://api.openai.com/v1', undefined, 'openai'],
    ['https://contoso.openai.azure.com/openai', undefined, 'azure'],
    ['https://contoso.cognitiveservices.azure.com/openai', undefined, 'azure'],
    ['https://gateway.example/v1', 'azure', 'azure'],
    ['http://127.0.0.1:8001/v1', undefined, 'compatible'],
    // As serve infers it: a base URL naming a deployment is Azure, on any host.
    ['http://127.0.0.1:8001/openai/deployments/gpt4o', undefined, 'azure'],
    // The file's "openai" wins over the URL, as it does in serve.
    ['https://contoso.openai.azure.com/openai', 'openai', 'compatible'],
    [undefined, undefined, 'openai'],
  ])('inferKind(%j, %j) = %s', (url, type, kind) => {
    expect(inferKind(url, type)).toBe(kind);
  });
});

describe('applyAnswers', () => {
  const answers: InitAnswers = {
    kind: 'compatible',
    baseUrl: 'http://127.0.0.1:8001/v1',
    host: '127.0.0.1',
    port: 8000,
    databaseUrl: '/data/p.db',
    logFilePath: '/data/p.log',
    policy: 'off',
    adminKeyGenerated: false,
  };

  test('sets init keys, removes the ones answered empty, keeps everything else', () => {
    const out = applyAnswers(
      {
        openaiApiKey: 'sk-old',
        openaiApiVersion: '2024-10-21',
        qdrantUrl: 'http://q:6333',
        adminApiKey: 'old-admin',
        logLevel: 'warn',
        custom: [1, 2],
      },
      answers,
    );
    expect(out).toEqual({
      logLevel: 'warn',
      custom: [1, 2],
      openaiBaseUrl: 'http://127.0.0.1:8001/v1',
      host: '127.0.0.1',
      port: 8000,
      databaseUrl: '/data/p.db',
      logFilePath: '/data/p.log',
      validateModels: false,
      allowUnknownModels: false,
    });
  });

  // Serve infers Azure from the base URL: the type is written only when chosen or contradicting that.
  test.each([
    ['openai', 'https://api.openai.com/v1', {}, undefined],
    ['compatible', 'http://127.0.0.1:8001/v1', {}, undefined],
    ['compatible', 'http://127.0.0.1:8001/v1', { openaiApiType: 'openai' }, 'openai'],
    ['compatible', 'http://127.0.0.1:8001/v1', { openaiApiType: 'azure' }, undefined],
    ['openai', 'https://x.openai.azure.com/openai', {}, 'openai'],
    ['compatible', 'http://127.0.0.1:8001/openai/deployments/d', {}, 'openai'],
    ['azure', 'https://x.openai.azure.com/openai', {}, 'azure'],
    ['azure', 'https://gw.example/openai', {}, 'azure'],
  ] as const)('kind %s, %s, file %j: openaiApiType %j', (kind, baseUrl, existing, type) => {
    expect(applyAnswers(existing, { ...answers, kind, baseUrl }).openaiApiType).toBe(type);
  });

  test('an unset api-version, database or log file is left out, or removed from the file', () => {
    const out = applyAnswers(
      { openaiApiVersion: '2024-06-01', databaseUrl: '/old.db', logFilePath: '/old.log' },
      {
        ...answers,
        kind: 'azure',
        baseUrl: 'https://x.openai.azure.com/openai',
        databaseUrl: undefined,
        logFilePath: undefined,
      },
    );
    expect(out).not.toHaveProperty('openaiApiVersion');
    expect(out).not.toHaveProperty('databaseUrl');
    expect(out).not.toHaveProperty('logFilePath');
  });

  // What `--check` read from an Ollama-like server's GET /models.
  const listed = { outcome: 'reachable' as const, url: 'x', httpStatus: 200, models: 4 };
  const ids = ['llama3.1:8b', 'qwen2.5:7b', 'bad name', 'llama3.1:8b'];

  test.each([
    ['compatible', 'strict', ['llama3.1:8b', 'qwen2.5:7b']],
    ['compatible', 'record', ['llama3.1:8b', 'qwen2.5:7b']],
    ['compatible', 'off', undefined],
    ['openai', 'strict', undefined],
    ['azure', 'strict', undefined],
  ] as const)('%s upstream, policy %s: availableModels = %j', (kind, policy, expected) => {
    const out = applyAnswers({}, { ...answers, kind, policy, check: { ...listed, ids } });
    expect(out.availableModels).toEqual(expected);
  });

  test('the listed models are added after the file’s own availableModels, none twice', () => {
    const out = applyAnswers(
      { availableModels: ['mine', { name: 'qwen2.5:7b', displayName: 'Qwen' }] },
      { ...answers, policy: 'strict', check: { ...listed, ids } },
    );
    expect(out.availableModels).toEqual(['mine', { name: 'qwen2.5:7b', displayName: 'Qwen' }, 'llama3.1:8b']);
  });

  test('no check, or a check without a model list: nothing registered', () => {
    expect(applyAnswers({}, { ...answers, policy: 'strict' })).not.toHaveProperty('availableModels');
    const unreachable = { outcome: 'unreachable' as const, url: 'x', errorCode: 'ECONNREFUSED' };
    expect(applyAnswers({}, { ...answers, policy: 'strict', check: unreachable })).not.toHaveProperty(
      'availableModels',
    );
  });
});

describe('maskValues', () => {
  test('masks every key-like value, nested ones included, and leaves the rest', () => {
    expect(
      maskValues({
        openaiApiKey: 'sk-abcdefghijklmnop1234',
        adminApiKey: 'oaip_abcdefghijklmnopqrstuvwxyz',
        proxyApiKeys: ['client-key-one-aaaa1111'],
        upstreams: {
          a: {
            baseUrl: 'https://x.test/v1',
            apiKey: 'secret-upstream-key-9999',
            apiKeyEnv: 'A_KEY',
            headers: { Authorization: 'Bearer zzzzzzzzzz' },
          },
        },
        port: 8000,
      }),
    ).toEqual({
      openaiApiKey: 'sk-…1234',
      adminApiKey: '…wxyz',
      proxyApiKeys: ['…1111'],
      upstreams: {
        a: {
          baseUrl: 'https://x.test/v1',
          apiKey: '…9999',
          apiKeyEnv: 'A_KEY',
          headers: { Authorization: '…zzzz' },
        },
      },
      port: 8000,
    });
  });
});

describe('writeConfigFile', () => {
  test('creates missing directories, writes pretty JSON with mode 0600, leaves no temporary file', () => {
    const tmp = createTempDir();
    cleanups.push(tmp.cleanup);
    const path = join(tmp.path, 'a', 'b', 'config.json');
    writeConfigFile(path, { port: 1 });
    expect(readFileSync(path, 'utf8')).toBe('{\n  "port": 1\n}\n');
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(statSync(join(tmp.path, 'a', 'b')).mode & 0o777).toBe(0o700);
    expect(readdirSync(join(tmp.path, 'a', 'b'))).toEqual(['config.json']);
  });

  test('a failed rename leaves the target untouched and no temporary file behind', () => {
    const tmp = createTempDir();
    cleanups.push(tmp.cleanup);
    // The target is a non-empty directory: the rename fails after the temporary file was written.
    const path = join(tmp.path, 'config.json');
    mkdirSync(path);
    writeFileSync(join(path, 'inside'), 'x');
    let err: unknown;
    try {
      writeConfigFile(path, { port: 1 });
    } catch (e) {
      err = e;
    }
    expect(isOaiProxyError(err, 'internal')).toBe(true);
    expect((err as Error).message).toContain(`Cannot write config file ${path}`);
    expect(readdirSync(tmp.path)).toEqual(['config.json']);
    expect(readdirSync(path)).toEqual(['inside']);
  });
});
