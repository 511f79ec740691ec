import { randomBytes } from 'node:crypto';
import { brotliCompressSync, deflateSync, gzipSync } from 'node:zlib';
import { describe, expect, test } from 'vitest';
import { isDecodable, RecordDecoder, TAIL_DECODE_MAX_BYTES } from '../../src/proxy/record-decoder.js';

const text = JSON.stringify({ words: Array.from({ length: 2000 }, (_, i) => `w${i}`) });

async function decode(encoding: string, body: Buffer, limit = 1 << 20, pieces = 7) {
  const seen: Buffer[] = [];
  const d = new RecordDecoder(encoding, limit, (b) => seen.push(b));
  const step = Math.ceil(body.length / pieces);
  for (let at = 0; at < body.length; at += step) d.write(body.subarray(at, at + step));
  await d.finish();
  return { d, handed: Buffer.concat(seen).toString() };
}

describe('RecordDecoder', () => {
  test.each([
    ['gzip', gzipSync],
    ['x-gzip', gzipSync],
    ['deflate', deflateSync],
    ['br', brotliCompressSync],
  ] as const)('%s in pieces: the whole text, stored and handed on', async (encoding, encode) => {
    const body = encode(text);
    const { d, handed } = await decode(encoding, body);
    expect(d.stored('application/json', encoding, body.length)).toBe(text);
    expect(handed).toBe(text);
    expect(d.truncated).toBe(false);
  });

  test('stops at its limit: the first bytes kept, marked truncated', async () => {
    const body = gzipSync('a'.repeat(5_000_000));
    const { d } = await decode('gzip', body, 100);
    expect(d.stored('application/json', 'gzip', body.length)).toBe('a'.repeat(100));
    expect(d.truncated).toBe(true);
  });

  test("with a tail: decodes on past its limit and keeps the decoded body's last bytes too", async () => {
    const json = `{"data":"${'a'.repeat(5_000_000)}","usage":{"total_tokens":322}}`;
    const body = gzipSync(json);
    const handed: Buffer[] = [];
    const d = new RecordDecoder('gzip', 100, (b) => handed.push(b), 8192);
    for (let at = 0; at < body.length; at += 1000) d.write(body.subarray(at, at + 1000));
    await d.finish();
    expect(d.stored('application/json', 'gzip', body.length)).toBe(json.slice(0, 100));
    expect(d.truncated).toBe(true);
    expect(d.capture.bytes).toBe(json.length);
    expect(d.capture.tailText()).toBe(json.slice(-8192));
    expect(Buffer.concat(handed).toString()).toBe(json);
  });

  test('with a tail: stops past 64 MB decoded, and keeps no tail that is not the end', async () => {
    // A 70 KB gzip bomb of 70 MB.
    const json = `{"data":"${'a'.repeat(70 << 20)}","usage":{"total_tokens":322}}`;
    const body = gzipSync(json);
    const d = new RecordDecoder('gzip', 100, undefined, 8192);
    d.write(body);
    await d.finish();
    expect(d.stored('application/json', 'gzip', body.length)).toBe(json.slice(0, 100));
    expect(d.truncated).toBe(true);
    expect(d.capture.bytes).toBeGreaterThan(64 << 20);
    expect(d.capture.bytes).toBeLessThan(json.length);
    expect(d.capture.tailText()).toBeNull();
  });

  test('with a tail: fed faster than it decodes past its limit, gives the tail up instead of queueing the body', async () => {
    // Incompressible, so the compressed body is as big as the decoded one: 16 MB in 64 KB chunks,
    // eight per turn of the event loop once past the limit, never waiting for the decoder.
    const json = `{"data":"${randomBytes(8 << 20).toString('hex')}","usage":{"total_tokens":322}}`;
    const body = gzipSync(json, { level: 1 });
    const d = new RecordDecoder('gzip', 100, undefined, 8192, TAIL_DECODE_MAX_BYTES, 1 << 20);
    const chunk = 64 * 1024;
    d.write(body.subarray(0, chunk));
    while (!d.truncated) await new Promise((r) => setImmediate(r));
    let pending = 0;
    for (let at = chunk, n = 0; at < body.length; at += chunk, n++) {
      d.write(body.subarray(at, at + chunk));
      pending = Math.max(pending, d.pendingBytes);
      if (n % 8 === 7) await new Promise((r) => setImmediate(r));
    }
    await d.finish();
    expect(pending).toBeLessThanOrEqual((1 << 20) + 8 * chunk);
    expect(d.stored('application/json', 'gzip', body.length)).toBe(json.slice(0, 100));
    expect(d.truncated).toBe(true);
    expect(d.capture.bytes).toBeLessThan(json.length);
    expect(d.capture.tailText()).toBeNull();
  });

  test('a body cut short gives what arrived, without failing', async () => {
    const body = gzipSync(text);
    const { d } = await decode('gzip', body.subarray(0, Math.floor(body.length / 2)));
    const stored = d.stored('application/json', 'gzip', body.length)!;
    expect(stored.length).toBeGreaterThan(0);
    expect(text.startsWith(stored)).toBe(true);
  });

  test('data that is not gzip: the placeholder naming the coding', async () => {
    const { d } = await decode('gzip', Buffer.from('not gzip at all'));
    expect(d.failure).not.toBeNull();
    expect(d.stored('application/json', 'gzip', 15)).toBe('[binary body: application/json, gzip, 15 bytes]');
  });

  test.each([
    ['gzip', true],
    [' BR ', true],
    ['deflate', true],
    ['zstd', false],
    ['gzip, br', false],
    ['identity', false],
  ])('isDecodable(%j) is %s', (encoding, expected) => {
    expect(isDecodable(encoding)).toBe(expected);
  });
});
