import { afterEach, expect, test } from 'vitest';
import type { OwnRoute } from '../../src/proxy/server.js';
import { createFakeUpstream, type FakeUpstream } from '../helpers/fake-upstream.js';
import { startTestProxy, type TestProxy } from '../helpers/test-proxy.js';

let upstream: FakeUpstream | undefined;
let proxy: TestProxy | undefined;
afterEach(async () => {
  await proxy?.close();
  await upstream?.close();
});

// Handlers that fail in every way a handler can: synchronously, asynchronously, after answering started.
const faulty: OwnRoute = async (x) => {
  if (x.path === '/v1/boom-sync') throw new Error('sync failure in a handler');
  if (x.path === '/v1/boom-async') {
    await new Promise((r) => setTimeout(r, 10));
    throw new TypeError("Cannot read properties of undefined (reading 'x')");
  }
  if (x.path === '/v1/boom-late') {
    x.status = 200;
    x.res.writeHead(200, { 'content-type': 'text/event-stream' });
    x.res.write('data: {"partial":true}\n\n');
    await new Promise((r) => setTimeout(r, 10));
    throw new RangeError('late failure');
  }
  return false;
};

test('an exception in a handler never kills the proxy: 500 in OpenAI shape (or a cut stream), recorded, logged', async () => {
  upstream = await createFakeUpstream();
  let onRecordCalls = 0;
  proxy = await startTestProxy(
    { OPENAI_BASE_URL: upstream.baseUrl },
    {
      routes: [faulty],
      // a failing observer of records must not fail the request or the recording either
      onRecord: () => {
        onRecordCalls++;
        throw new Error('observer failure');
      },
    },
  );
  for (const path of ['/v1/boom-sync', '/v1/boom-async']) {
    const res = await fetch(`${proxy.url}${path}`);
    expect(res.status).toBe(500);
    expect(await res.json()).toEqual({
      error: { message: 'Internal proxy error', type: 'proxy_error', param: null, code: 'internal_error' },
    });
  }
  const late = await fetch(`${proxy.url}/v1/boom-late`);
  expect(late.status).toBe(200);
  await expect(late.text()).rejects.toThrow();
  // still serving
  expect((await fetch(`${proxy.url}/v1/models`)).status).toBe(200);
  const rows = await proxy.waitForRows(4);
  expect(rows.map((r) => [r.path, r.status, r.error])).toEqual([
    ['/v1/boom-sync', 500, 'proxy_error'],
    ['/v1/boom-async', 500, 'proxy_error'],
    ['/v1/boom-late', 200, 'proxy_error'],
    ['/v1/models', 200, null],
  ]);
  expect(onRecordCalls).toBe(4);
  const errorLines = (lines: Record<string, any>[]) =>
    lines.filter((l) => l.level >= 50).map((l) => l.msg as string);
  const errors = errorLines(
    await proxy.waitForLogLines((lines) =>
      errorLines(lines).includes('error while handling GET /v1/boom-async'),
    ),
  );
  expect(errors).toEqual(
    expect.arrayContaining([
      'error while handling GET /v1/boom-sync',
      'error while handling GET /v1/boom-async',
    ]),
  );
});
