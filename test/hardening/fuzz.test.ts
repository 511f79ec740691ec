import { afterAll, beforeAll, expect, test } from 'vitest';
import { createFakeUpstream, type FakeUpstream } from '../helpers/fake-upstream.js';
import { startTestProxy, type TestProxy } from '../helpers/test-proxy.js';
import { openUpstreamRequests, rawHttp } from './raw-http.js';

const SEED = 0x5eed_0007;
const REQUESTS = 2500;
const CONCURRENCY = Number(process.env.FUZZ_CONCURRENCY ?? 24);
const FUZZ_KEY = 'sk-fuzz-secret-key-0123456789';

/** mulberry32: a tiny seeded PRNG, so a failure replays exactly. */
function prng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number) => Math.floor(next() * n);
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)];
  return { next, int, pick };
}

const METHODS = ['GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'HEAD', 'OPTIONS', 'TRACE', 'PROPFIND', 'BREW'];
const SEGMENTS = [
  'v1',
  'chat',
  'completions',
  'embeddings',
  'models',
  'admin',
  'files',
  'audio',
  'transcriptions',
  '..',
  '.',
  '%2e%2e',
  '%2F',
  '%00',
  '%',
  '%zz',
  '~',
  'a b',
  'ü',
  '%C3%BC',
  '\\',
  '*',
  '@',
  ':',
  '',
  'x'.repeat(300),
];
const HEADER_NAMES = [
  'content-type',
  'authorization',
  'x-custom',
  'accept',
  'accept-encoding',
  'origin',
  'api-key',
  'cookie',
  'connection',
  'te',
  'upgrade',
  'expect',
  'x-forwarded-for',
  'openai-organization',
  'range',
  'if-none-match',
];
const CONTENT_TYPES = [
  'application/json',
  'text/plain',
  'multipart/form-data; boundary=zz',
  'application/octet-stream',
  '',
];

/** A printable header value (no CR/LF: those are the malformed cases). */
function headerValue(r: ReturnType<typeof prng>): string {
  const kinds = [
    () => `Bearer ${FUZZ_KEY}`,
    () => 'keep-alive',
    () => '100-continue',
    () => 'gzip, br',
    () => Array.from({ length: r.int(40) }, () => String.fromCharCode(32 + r.int(95))).join(''),
    () => 'x'.repeat(r.int(4000)),
  ];
  return r.pick(kinds)();
}

function body(r: ReturnType<typeof prng>): Buffer {
  const kinds = [
    () => Buffer.alloc(0),
    () =>
      Buffer.from(
        JSON.stringify({
          model: r.pick(['gpt-4o', 'gpt-4o-mini', 'nope', '']),
          messages: [{ role: 'user', content: 'hi' }],
          stream: r.next() < 0.3,
        }),
      ),
    () => Buffer.from(JSON.stringify({ model: r.pick([1, null, {}, [], true]) })),
    () => Buffer.from('{"model":"gpt-4o",'),
    () => Buffer.from(Array.from({ length: r.int(2000) }, () => r.int(256))),
    () => Buffer.from('--zz\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n--zz--\r\n'),
  ];
  return r.pick(kinds)();
}

/** One random request as raw bytes; about one in six is deliberately malformed. */
function generate(r: ReturnType<typeof prng>): { bytes: Buffer; method: string; malformed: boolean } {
  const valid = r.next() < 0.35;
  const method = valid ? r.pick(['POST', 'POST', 'GET']) : r.pick(METHODS);
  const path = valid
    ? r.pick(['/v1/chat/completions', '/chat/completions', '/v1/embeddings', '/v1/models'])
    : `/${Array.from({ length: 1 + r.int(5) }, () => r.pick(SEGMENTS)).join('/')}`.replace(
        / /g,
        r.next() < 0.5 ? '%20' : '+',
      );
  const query = r.next() < 0.3 ? `?${r.pick(['limit=2', 'a=%ff', 'x', '&&', 'q=%'])}` : '';
  const b = r.next() < 0.6 ? body(r) : Buffer.alloc(0);
  const headers: string[] = ['Host: fuzz.invalid', 'Connection: close'];
  const ct = r.pick(CONTENT_TYPES);
  if (ct) headers.push(`Content-Type: ${ct}`);
  for (let i = r.int(6); i > 0; i--) headers.push(`${r.pick(HEADER_NAMES)}: ${headerValue(r)}`);
  const chunked = b.length > 0 && r.next() < 0.2;
  if (chunked) headers.push('Transfer-Encoding: chunked');
  else if (b.length > 0 || r.next() < 0.5) headers.push(`Content-Length: ${b.length}`);
  let head = `${method} ${path}${query} HTTP/1.1\r\n${headers.join('\r\n')}\r\n\r\n`;
  let payload = chunked
    ? Buffer.concat([Buffer.from(`${b.length.toString(16)}\r\n`), b, Buffer.from('\r\n0\r\n\r\n')])
    : b;
  let malformed = false;
  if (r.next() < 0.16) {
    malformed = true;
    const mutations = [
      () =>
        (head = head.replace(
          'Connection: close',
          'Connection: close\r\nContent-Length: 3\r\nTransfer-Encoding: chunked',
        )),
      () => (head = head.replace('Host: fuzz.invalid', 'Host: fuzz.invalid\rX-Injected: 1')),
      () => (head = head.replace(' HTTP/1.1', ' HTTP/9.9')),
      () =>
        (head = head.replace(
          'Connection: close',
          'Connection: close\r\nContent-Length: 1\r\nContent-Length: 2',
        )),
      () => (head = `${head.slice(0, r.int(head.length))}\x00${head.slice(r.int(head.length))}`),
      () => (head = head.replace(/\r\n\r\n$/, `\r\nX-Big: ${'b'.repeat(20_000)}\r\n\r\n`)),
      () => (payload = Buffer.concat([Buffer.from('zz\r\n'), payload])),
    ];
    r.pick(mutations)();
  }
  return { bytes: Buffer.concat([Buffer.from(head, 'latin1'), payload]), method, malformed };
}

/** Check one raw response is well-formed HTTP/1.1: status line, header lines, framing matching its body. */
function checkResponse(text: string, method: string): number {
  const end = text.indexOf('\r\n\r\n');
  expect(end, `no header end in ${JSON.stringify(text.slice(0, 200))}`).toBeGreaterThan(0);
  const [statusLine, ...lines] = text.slice(0, end).split('\r\n');
  const m = /^HTTP\/1\.1 (\d{3}) [^\r\n]*$/.exec(statusLine);
  expect(m, statusLine).not.toBeNull();
  const status = Number(m![1]);
  const headers = new Map<string, string>();
  for (const l of lines) {
    const h = /^([!#$%&'*+\-.^_`|~0-9A-Za-z]+): ?(.*)$/.exec(l);
    expect(h, `bad header line ${JSON.stringify(l)}`).not.toBeNull();
    headers.set(h![1].toLowerCase(), h![2]);
  }
  const rest = text.slice(end + 4);
  if (method === 'HEAD' || status === 204 || status === 304) return status;
  const cl = headers.get('content-length');
  if (cl !== undefined) expect(Buffer.byteLength(rest, 'latin1')).toBe(Number(cl));
  else if (headers.get('transfer-encoding') === 'chunked') expect(rest.endsWith('0\r\n\r\n')).toBe(true);
  return status;
}

let upstream: FakeUpstream;
let proxy: TestProxy;
beforeAll(async () => {
  upstream = await createFakeUpstream();
  proxy = await startTestProxy({
    OPENAI_BASE_URL: upstream.baseUrl,
    OPENAI_API_KEY: FUZZ_KEY,
    MAX_REQUEST_BODY_BYTES: '1500',
    LOG_QUEUE_MAX: '100000',
  });
});
afterAll(async () => {
  await proxy?.close();
  await upstream?.close();
});

test(`fuzz: ${REQUESTS} seeded random requests: never crashes, always well-formed HTTP, every answer recorded`, {
  timeout: 60_000,
}, async () => {
  const r = prng(SEED);
  const requests = Array.from({ length: REQUESTS }, () => generate(r));
  const statuses = new Map<number, number>();
  let answered = 0;
  let next = 0;
  const worker = async () => {
    while (next < requests.length) {
      const i = next++;
      const { bytes, method } = requests[i];
      const reply = await rawHttp(proxy.url, bytes, 3000);
      // a request may legitimately get no answer only if the connection was cut mid-upload (never here)
      const finals = reply.statuses.filter((s) => s >= 200);
      expect(finals.length, `request #${i} got ${finals.length} answers`).toBe(1);
      // an interim "100 Continue" (for expect: 100-continue) may come first
      const text = reply.text.replace(/^HTTP\/1\.1 100 Continue\r\n\r\n/, '');
      // exactly one answer: no second status line glued after the first
      expect(/.HTTP\/1\.1 \d{3}/s.test(text.slice(5)), `request #${i} got a second answer`).toBe(false);
      const status = checkResponse(text, method);
      statuses.set(status, (statuses.get(status) ?? 0) + 1);
      answered++;
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  expect(answered).toBe(REQUESTS);
  // a spread of outcomes, not one path exercised thousands of times
  expect([...statuses.keys()].length).toBeGreaterThan(4);
  expect(statuses.get(400)).toBeGreaterThan(50);
  expect(statuses.get(200)).toBeGreaterThan(50);
  // the proxy is still up and every answered request is in the database exactly once
  expect((await fetch(`${proxy.url}/health`)).status).toBe(200);
  const rows = await proxy.waitForRows(REQUESTS, 10_000);
  expect(rows).toHaveLength(REQUESTS);
  expect(new Set(rows.map((row) => row.id)).size).toBe(REQUESTS);
  // the upstream key (also sent by clients in random headers) is stored nowhere
  for (const row of rows) {
    expect(`${row.request_headers}${row.request_body}${row.error_message}`).not.toContain(FUZZ_KEY);
  }
  // no upstream request left hanging (a paused one would hold its connection forever)
  await new Promise((r) => setTimeout(r, 100));
  expect(openUpstreamRequests()).toEqual([]);
});
