import { describe, expect, test } from 'vitest';
import {
  BodyCapture,
  bearerToken,
  headerSecrets,
  isSecretHeaderName,
  isSecretHeaderNameCached,
  redactCutKey,
  redactedHeadersJson,
  redactHeaders,
  redactQuerySecrets,
  SECRET_NAME_CACHE_MAX,
  scrubAssembled,
  scrubBody,
  secretNameCacheSize,
  withClientKey,
} from '../../src/proxy/capture.js';
import { extractUsage } from '../../src/proxy/sse.js';
import type { AssembledMessage } from '../../src/storage/exchange-record.js';

test.each([
  ['Bearer sk-abc', 'sk-abc'],
  ['bearer   sk-abc  ', 'sk-abc'],
  ['Bearer ', undefined],
  ['Basic dXNlcjpwYXNz', undefined],
  [undefined, undefined],
  [['Bearer a', 'Bearer b'], undefined],
])('bearerToken(%j) → %j', (header, token) => {
  expect(bearerToken(header)).toBe(token);
});

test.each([
  [{ Authorization: 'Bearer sk-h-123456' }, ['Bearer sk-h-123456', 'sk-h-123456']],
  [{ 'proxy-authorization': 'Basic dXNlcjpwYXNz' }, ['Basic dXNlcjpwYXNz', 'dXNlcjpwYXNz']],
  [{ 'api-key': 'az-123456' }, ['az-123456']],
  [{ 'X-Api-Token': 'tok-123456', 'X-Client-Secret': 's3cr3t!!' }, ['tok-123456', 's3cr3t!!']],
  [
    { Cookie: 'session=abcdef', 'x-signature': 'sig-999', 'x-db-password': 'pw-123456' },
    ['session=abcdef', 'sig-999', 'pw-123456'],
  ],
  [
    { 'x-team': 'platform-eu', 'content-type': 'application/json', 'x-retries': '3', accept: 'text/plain' },
    [],
  ],
  [undefined, []],
])('headerSecrets(%j) → %j', (headers, secrets) => {
  expect(headerSecrets(headers)).toEqual(secrets);
});

test('redactHeaders: secret headers replaced, configured keys scrubbed from any other header', () => {
  const key = 'sk-configured-key-123456';
  expect(
    redactHeaders(
      {
        Authorization: `Bearer ${key}`,
        'x-api-key': 'whatever',
        'x-debug': `forwarded ${key} here`,
        'set-cookie': ['a=1', 'b=2'],
        via: ['one', `two ${key}`],
        'content-type': 'application/json',
        skipped: undefined,
      },
      [key],
    ),
  ).toEqual({
    authorization: '[redacted]',
    'x-api-key': '[redacted]',
    'x-debug': 'forwarded [redacted] here',
    'set-cookie': '[redacted]',
    via: ['one', 'two [redacted]'],
    'content-type': 'application/json',
  });
});

describe('redactedHeadersJson: the stored text, JSON.stringify(redactHeaders(…)) without the copy', () => {
  const key = 'sk-configured-key-123456';
  const headers = () => ({
    host: '127.0.0.1:8080',
    authorization: `Bearer ${key}`,
    'api-key': key,
    'x-debug': `forwarded ${key} here, and ${key} again`,
    'set-cookie': ['a=1', 'b=2'],
    via: ['one', `two ${key}`],
    'x-quoted': 'say "hi"\\there',
    'content-type': 'application/json',
    skipped: undefined,
  });

  test.each([
    ['keys configured', [key]],
    ['no keys', []],
    ['a key too short to scrub', ['sk-1']],
    ['a key JSON would escape', ['say "hi"\\th']],
    ['several keys', [key, 'forwarded']],
  ])('%s', (_name, secrets) => {
    const h = headers();
    const before = JSON.stringify(h);
    const text = redactedHeadersJson(h, secrets);
    expect(text).toBe(JSON.stringify(redactHeaders(headers(), secrets)));
    // The secret headers are redacted whatever is configured; configured keys wherever they appear.
    expect(JSON.parse(text)).toMatchObject({ authorization: '[redacted]', 'api-key': '[redacted]' });
    for (const s of secrets) if (s.length >= 6) expect(text).not.toContain(JSON.stringify(s).slice(1, -1));
    // The headers themselves are left as they were (they are forwarded upstream).
    expect(JSON.stringify(h)).toBe(before);
  });

  test('headers without secret ones are written as they are', () => {
    const h = { 'content-type': 'application/json', 'x-request-id': 'req_1' };
    expect(redactedHeadersJson(h, [key])).toBe('{"content-type":"application/json","x-request-id":"req_1"}');
  });
});

test.each([
  ['x-api-token', true],
  ['x-goog-api-key', true],
  ['x-portkey-api-key', true],
  ['openai-api-key', true],
  ['X-Auth-Token', true],
  ['proxy-authorization', true],
  ['cookie', true],
  ['set-cookie', true],
  ['x-hub-signature-256', true],
  ['x-db-password', true],
  ['x-client-secret', true],
  ['x-ratelimit-remaining-tokens', false],
  ['anthropic-ratelimit-tokens-limit', false],
  ['x-team', false],
  ['x-request-id', false],
  ['openai-organization', false],
  ['content-type', false],
])('redactedHeadersJson stores a %s header as [redacted]: %s (and keeps its name)', (name, secret) => {
  const headers = { 'content-type': 'application/json', [name]: 'value-123456', 'x-after': 'kept' };
  const stored = JSON.parse(redactedHeadersJson(headers));
  expect(Object.keys(stored)).toEqual(Object.keys(headers));
  expect(stored[name]).toBe(secret ? '[redacted]' : 'value-123456');
  expect(stored['x-after']).toBe('kept');
  expect(redactHeaders(headers)[name.toLowerCase()]).toBe(secret ? '[redacted]' : 'value-123456');
  expect(headers[name]).toBe('value-123456'); // what is forwarded stays as it was
});

test('the per-name cache of secret header names stays bounded, and its answers stay right', () => {
  // A client inventing a new header name on every request cannot grow the cache past its cap.
  for (let i = 0; i < SECRET_NAME_CACHE_MAX * 3; i++) {
    const name = i % 2 ? `x-junk-${i}` : `x-junk-token-${i}`;
    expect(isSecretHeaderNameCached(name)).toBe(i % 2 === 0);
    expect(secretNameCacheSize()).toBeLessThanOrEqual(SECRET_NAME_CACHE_MAX);
  }
  expect(secretNameCacheSize()).toBeGreaterThan(0);
  // Names that were remembered, forgotten, then asked again: the same answers as the uncached check.
  for (const name of ['authorization', 'x-api-token', 'content-type', 'x-junk-token-0', 'x-junk-1'])
    for (let i = 0; i < 2; i++) expect(isSecretHeaderNameCached(name)).toBe(isSecretHeaderName(name));
  // A very long name is classified but not remembered (it would hold its length in memory).
  const before = secretNameCacheSize();
  const long = `x-${'a'.repeat(10_000)}-token`;
  expect(isSecretHeaderNameCached(long)).toBe(true);
  expect(isSecretHeaderNameCached(`x-${'a'.repeat(10_000)}`)).toBe(false);
  expect(secretNameCacheSize()).toBe(before);
});

describe('BodyCapture', () => {
  const body = Buffer.from('{"model":"m","messages":[{"role":"user","content":"héllo"}]}');

  test('stores the text a reader already decoded, the same as decoding the bytes', () => {
    const decodedOnce = new BodyCapture(1024);
    decodedOnce.push(body.subarray(0, 10));
    decodedOnce.push(body.subarray(10));
    const text = body.toString('utf8');
    decodedOnce.decoded(text);
    const plain = new BodyCapture(1024);
    plain.push(body);
    expect(decodedOnce.stored('application/json')).toBe(text);
    expect(plain.stored('application/json')).toBe(text);
  });

  test('a truncated capture stores its own bytes, not the whole text', () => {
    const c = new BodyCapture(12);
    c.push(body);
    c.decoded(body.toString('utf8'));
    expect(c.stored('application/json')).toBe('{"model":"m"');
    expect(c.truncated).toBe(true);
    expect(c.bytes).toBe(body.length);
  });

  test.each([
    ['in one chunk', [100]],
    ['in small chunks', [7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 9]],
    ['head and tail split inside a chunk', [5, 90, 5]],
  ])('past its limit it keeps the last tailLimit bytes too (%s)', (_name, sizes) => {
    const all = Buffer.from(
      Array.from({ length: 100 }, (_, i) => String.fromCharCode(65 + (i % 26))).join(''),
    );
    const c = new BodyCapture(10, 16);
    let at = 0;
    for (const n of sizes) {
      c.push(all.subarray(at, at + n));
      at += n;
    }
    expect(c.stored('application/json')).toBe(all.subarray(0, 10).toString());
    expect(c.tailText()).toBe(all.subarray(84).toString());
    expect(c.bytes).toBe(100);
  });

  test.each([
    ['fewer bytes past the limit than the tail holds', 20, [20]],
    ['the same, in small chunks', 20, [3, 4, 5, 6, 2]],
    ['the limit cut inside the chunk', 20, [8, 12]],
    ['one byte past the limit', 11, [11]],
    ['a tail longer than the head', 14, [14]],
  ])(
    "its tail is the body's last tailLimit bytes, some of them before the limit (%s)",
    (_name, size, sizes) => {
      const all = Buffer.from(
        Array.from({ length: size }, (_, i) => String.fromCharCode(65 + (i % 26))).join(''),
      );
      const c = new BodyCapture(10, 16);
      let at = 0;
      for (const n of sizes) {
        c.push(all.subarray(at, at + n));
        at += n;
      }
      expect(c.stored('application/json')).toBe(all.subarray(0, 10).toString());
      expect(c.tailText()).toBe(all.subarray(Math.max(0, size - 16)).toString());
    },
  );

  // A chat completion of 1000 + N bytes, `usage` at its end, cut at 1000: at N = 250 the cut falls
  // inside `"usage":{…}`, which neither the first 1000 bytes nor the 250 after them held whole.
  test.each([1, 50, 150, 200, 250, 300, 400, 2000, 20_000])(
    'the usage of a JSON body cut at its limit is in its tail, wherever the cut falls (1000 + %i bytes)',
    (over) => {
      const counts = { prompt_tokens: 123, completion_tokens: 456, total_tokens: 579 };
      const usage = {
        ...counts,
        prompt_tokens_details: { cached_tokens: 0, audio_tokens: 0 },
        completion_tokens_details: {
          reasoning_tokens: 0,
          audio_tokens: 0,
          accepted_prediction_tokens: 0,
          rejected_prediction_tokens: 0,
        },
      };
      const shape = (content: string) =>
        JSON.stringify({
          id: 'chatcmpl-1',
          object: 'chat.completion',
          choices: [{ index: 0, message: { role: 'assistant', content }, finish_reason: 'stop' }],
          usage,
        });
      const body = Buffer.from(shape('x'.repeat(1000 + over - shape('').length)));
      expect(body.length).toBe(1000 + over);
      for (const step of [body.length, 64, 7]) {
        const c = new BodyCapture(1000, 8192);
        for (let at = 0; at < body.length; at += step) c.push(body.subarray(at, at + step));
        expect(c.truncated).toBe(true);
        expect(extractUsage(c.tailText() as string)).toEqual(counts);
        expect(c.tailText()).toBe(body.subarray(Math.max(0, body.length - 8192)).toString());
      }
    },
  );

  test.each([
    ['é (2 bytes) cut after 1', 'é', 1],
    ['€ (3 bytes) cut after 1', '€', 1],
    ['€ (3 bytes) cut after 2', '€', 2],
    ['😀 (4 bytes) cut after 1', '😀', 1],
    ['😀 (4 bytes) cut after 3', '😀', 3],
    ['😀 (4 bytes) whole at the limit', '😀', 4],
  ])('a body cut inside a character is stored up to the last whole one: %s', (_name, char, keep) => {
    const body = Buffer.from(`{"text":"ab${char}${char}"}`);
    const limit = 11 + keep; // `{"text":"ab` is 11 bytes
    for (const step of [body.length, 1]) {
      const c = new BodyCapture(limit);
      for (let at = 0; at < body.length; at += step) c.push(body.subarray(at, at + step));
      const stored = c.stored('application/json') as string;
      expect(stored).toBe(`{"text":"ab${keep === Buffer.byteLength(char) ? char : ''}`);
      expect(Buffer.byteLength(stored)).toBeLessThanOrEqual(limit);
      expect(c.truncated).toBe(true);
    }
  });

  test('a body that is not UTF-8 is stored as decoded, cut at its limit', () => {
    const c = new BodyCapture(4);
    c.push(Buffer.from([0x61, 0x80, 0x80, 0x80, 0x80, 0x62]));
    expect(c.stored('text/plain')).toBe('a\ufffd\ufffd\ufffd');
  });

  test('no tail unless the limit was passed or one was asked for', () => {
    const fits = new BodyCapture(1024, 16);
    fits.push(body);
    expect(fits.tailText()).toBeNull();
    const noTail = new BodyCapture(4);
    noTail.push(body);
    expect(noTail.tailText()).toBeNull();
  });

  test('a compressed body is stored as a placeholder even when decoded text is given', () => {
    const c = new BodyCapture(1024);
    c.push(body);
    c.decoded('not what is stored');
    expect(c.stored('application/json', 'gzip')).toBe(
      `[binary body: application/json, gzip, ${body.length} bytes]`,
    );
  });
});

describe('redactQuerySecrets: the recorded query string', () => {
  test.each([
    ['api-version=2024-10-21', 'api-version=2024-10-21'],
    ['model=gpt-4o&api-key=abc123', 'model=gpt-4o&api-key=[redacted]'],
    [
      'key=abc&limit=20&access_token=t0k&X-Amz-Signature=s1g',
      'key=[redacted]&limit=20&access_token=[redacted]&X-Amz-Signature=[redacted]',
    ],
    ['api%2Dkey=abc', 'api%2Dkey=[redacted]'],
    // An Azure SAS token's signature, and passwords by their short names, as printed URLs hide them.
    [
      'sv=2024-11-04&se=2026-12-07&sig=Zm9vYmFy%3D&SIG=x&pwd=hunter2&passwd=p',
      'sv=2024-11-04&se=2026-12-07&sig=[redacted]&SIG=[redacted]&pwd=[redacted]&passwd=[redacted]',
    ],
    ['signal=on&design=x', 'signal=on&design=x'],
    ['%E0%A4%A=x&token', '%E0%A4%A=x&token'],
    ['after=file-1&order=desc&limit=', 'after=file-1&order=desc&limit='],
    ['', ''],
  ])('%s', (query, recorded) => {
    expect(redactQuerySecrets(query)).toBe(recorded);
  });
});

describe('redactCutKey: the end of a cut body that starts a key', () => {
  const key = 'sk-SECRETUPSTREAM0123456789';
  test.each([
    ['all of the key but its last character', `abc ${key.slice(0, -1)}`, 'abc [redacted]'],
    ['its first 4 characters', 'abc sk-S', 'abc [redacted]'],
    ['3 characters: what masked keys show anyway', 'abc sk-', 'abc sk-'],
    ['the whole key (scrubSecrets finds it)', `abc ${key}`, `abc ${key}`],
    ['a start of another text', 'abc sk-other', 'abc sk-other'],
    ['the key alone, cut', key.slice(0, 10), '[redacted]'],
  ])('%s', (_name, text, expected) => {
    expect(redactCutKey(text, ['short', key])).toBe(expected);
  });

  test('the longest start of any key wins', () => {
    expect(redactCutKey('x sk-SECRETUP', ['ETUP-other-key', key])).toBe('x [redacted]');
    expect(redactCutKey('x sk-SECRETUP', [key, 'ETUP-other-key'])).toBe('x [redacted]');
  });

  test('scrubBody scrubs whole keys, and the cut end only when cut', () => {
    const text = `${key} and ${key.slice(0, 8)}`;
    expect(scrubBody(text, [key], false)).toBe(`[redacted] and ${key.slice(0, 8)}`);
    expect(scrubBody(text, [key], true)).toBe('[redacted] and [redacted]');
  });
});

test('withClientKey adds a real-looking key once, and copies nothing otherwise', () => {
  const secrets = ['sk-configured-0001'];
  expect(withClientKey(secrets, undefined)).toBe(secrets);
  expect(withClientKey(secrets, 'ollama')).toBe(secrets); // a local server's placeholder
  expect(withClientKey(secrets, 'sk-configured-0001')).toBe(secrets);
  expect(withClientKey(secrets, 'sk-client-key-00002')).toEqual([...secrets, 'sk-client-key-00002']);
  expect(secrets).toEqual(['sk-configured-0001']);
});

describe('scrubAssembled', () => {
  const message = (content: string, args = '{}'): AssembledMessage => ({
    kind: 'chat.completion',
    content,
    tool_calls: [{ id: 'call_1', name: 'f', arguments: args }],
    finish_reason: 'stop',
    usage: null,
    complete: true,
    events: 3,
  });

  test('returns the message itself when it held no key, a scrubbed copy when it did', () => {
    const clean = message('hello');
    expect(scrubAssembled(clean, ['sk-SECRET-0001'])).toBe(clean);
    const leaky = message('hello', '{"k":"sk-SECRET-0001"}');
    const scrubbed = scrubAssembled(leaky, ['sk-SECRET-0001']);
    expect(scrubbed).not.toBe(leaky);
    expect(scrubbed.tool_calls[0].arguments).toBe('{"k":"[redacted]"}');
  });

  test('a text as long as the cap was cut there: its end is redacted if it starts a key', () => {
    const cut = message('0123456789 sk-SEC');
    expect(scrubAssembled(cut, ['sk-SECRET-0001'], 17).content).toBe('0123456789 [redacted]');
    expect(scrubAssembled(cut, ['sk-SECRET-0001'], 18)).toBe(cut);
  });
});
