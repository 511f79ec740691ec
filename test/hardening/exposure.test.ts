import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, test } from 'vitest';
import { main } from '../../src/cli.js';
import { exposureWarning, isLoopbackAddress } from '../../src/commands/serve.js';
import { resolveConfig } from '../../src/config/load.js';
import { createFakeUpstream } from '../helpers/fake-upstream.js';
import { createTempDir } from '../helpers/temp-dir.js';
import { createTestIo } from '../helpers/test-proxy.js';
import { until } from '../helpers/until.js';

const KEY = 'sk-exposure-upstream-key-4242';
const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

test.each([
  ['127.0.0.1', true],
  ['127.8.9.10', true],
  ['::1', true],
  ['[::1]', true],
  ['::ffff:127.0.0.1', true],
  ['localhost', true],
  ['0.0.0.0', false],
  ['::', false],
  ['192.168.1.20', false],
  ['10.0.0.1', false],
  ['::ffff:10.0.0.1', false],
  ['128.0.0.1', false],
])('isLoopbackAddress(%s) = %s', (address, loopback) => {
  expect(isLoopbackAddress(address)).toBe(loopback);
});

describe('exposureWarning', () => {
  const resolved = (env: Record<string, string>) => resolveConfig({ env, cwd: '/', dotenv: false });
  test.each([
    ['all interfaces, upstream key, no client keys', 'http://0.0.0.0:8000', { OPENAI_API_KEY: KEY }, true],
    ['IPv6 any, upstream key', 'http://[::]:8000', { OPENAI_API_KEY: KEY }, true],
    ['a LAN address, upstream key', 'http://192.168.1.20:8000', { OPENAI_API_KEY: KEY }, true],
    ['loopback', 'http://127.0.0.1:8000', { OPENAI_API_KEY: KEY }, false],
    ['client keys set', 'http://0.0.0.0:8000', { OPENAI_API_KEY: KEY, PROXY_API_KEYS: 'pk-a-123456' }, false],
    ['no upstream key (clients send their own)', 'http://0.0.0.0:8000', {}, false],
  ])('%s → warns: %s', (_name, url, env, warns) => {
    const w = exposureWarning({ url }, resolved({ HOME: '/nonexistent', ...env }));
    if (!warns) expect(w).toBeNull();
    else {
      expect(w).toContain('WARNING');
      expect(w).toContain('PROXY_API_KEYS');
      expect(w).toContain(`port 8000`);
      expect(w).not.toContain(KEY);
    }
  });
});

test('serve --host 0.0.0.0 with an upstream key and no client keys starts, and prints the warning (key not shown)', async () => {
  const tmp = createTempDir();
  cleanups.push(tmp.cleanup);
  const upstream = await createFakeUpstream();
  cleanups.push(() => upstream.close());
  const ac = new AbortController();
  const io = {
    ...createTestIo({ HOME: tmp.path, LOG_LEVEL: 'silent', OPENAI_API_KEY: KEY }, tmp.path),
    signal: ac.signal,
  };
  const done = main(
    ['serve', '--host', '0.0.0.0', '--port', '0', '--db', 'p.db', '--upstream', upstream.baseUrl],
    io,
  );
  let port = '';
  for (let i = 0; i < 200 && !port; i++) {
    port = /listening on http:\/\/0\.0\.0\.0:(\d+)/.exec(io.err())?.[1] ?? '';
    await new Promise((r) => setTimeout(r, 20));
  }
  expect(port).not.toBe('');
  // it does serve (reached over loopback only)
  expect((await fetch(`http://127.0.0.1:${port}/health`)).status).toBe(200);
  ac.abort();
  expect(await done).toBe(0);
  expect(io.err()).toMatch(/WARNING: listening on 0\.0\.0\.0 .*with an upstream API key/);
  expect(io.err()).toContain('ANYONE who can reach port');
  expect(io.err()).not.toContain(KEY);
});

// The tester's repro: `--host "$HOST"` with HOST unset (or `"host": ""`) listened on every interface ([::]),
// while an empty HOST in the environment means 127.0.0.1. Refused, naming where it came from.
test.each([
  [['--host', ''], undefined, '--host is empty'],
  [['--host', ' '], undefined, '--host is empty'],
  [[], { host: '' }, '"host" in config file {dir}/oai-proxy.config.json is empty'],
])('serve %j (config file %j) → exit 2, nothing listens, nothing created', async (flags, file, expected) => {
  const tmp = createTempDir();
  cleanups.push(tmp.cleanup);
  if (file) writeFileSync(join(tmp.path, 'oai-proxy.config.json'), JSON.stringify(file));
  const ac = new AbortController();
  const io = { ...createTestIo({ HOME: tmp.path, OPENAI_API_KEY: KEY }, tmp.path), signal: ac.signal };
  let code: number | undefined;
  const done = main(['serve', '--port', '0', '--db', 'p.db', ...flags], io).then((c) => (code = c));
  // Before the fix it started: stop it once the banner is out, and see what it printed.
  await until('exit or banner', () => code !== undefined || io.err().includes('listening on'));
  ac.abort();
  await done;
  expect(io.err()).toBe(
    `oai-proxy: ${expected.replace('{dir}', tmp.path)}: give the address to listen on (leave it unset for 127.0.0.1, this machine only; 0.0.0.0 explicitly to listen on every interface)\n`,
  );
  expect(code).toBe(2);
  expect(existsSync(join(tmp.path, 'p.db'))).toBe(false);
});

test('an empty HOST in the environment is unset: serve listens on 127.0.0.1', async () => {
  const tmp = createTempDir();
  cleanups.push(tmp.cleanup);
  const ac = new AbortController();
  const io = {
    ...createTestIo({ HOME: tmp.path, HOST: '', LOG_LEVEL: 'silent' }, tmp.path),
    signal: ac.signal,
  };
  const done = main(['serve', '--port', '0', '--db', 'p.db'], io);
  await until('the banner', () => io.err().includes('listening on'));
  ac.abort();
  expect(await done).toBe(0);
  expect(io.err()).toMatch(/listening on http:\/\/127\.0\.0\.1:\d+/);
});
