import { setImmediate as nextTurn } from 'node:timers/promises';
import pino from 'pino';
import { expect, test } from 'vitest';
import { BatchedWriter } from '../../src/commands/io.js';
import { exchangeLogLine, exchangeLogText, isoNow, jsonString } from '../../src/commands/serve.js';
import type { ExchangeRecord } from '../../src/storage/exchange-record.js';

const record = (over: Partial<ExchangeRecord> = {}): ExchangeRecord =>
  ({
    id: '01m8fzfbzj3na4rrwe05jkm6vn',
    method: 'POST',
    path: '/v1/chat/"quoted"\\path\u2028',
    model: 'gpt-4o-mini',
    upstreamModel: null,
    upstream: 'default',
    status: 200,
    stream: true,
    durationMs: 25.6,
    ttfbMs: 3.4,
    promptTokens: 25,
    completionTokens: null,
    totalTokens: 25,
    error: null,
    ...over,
  }) as ExchangeRecord;

// What pino (as serve configures it) writes for the same object and message.
function viaPino(fields: Record<string, unknown>, msg: string): string {
  let out = '';
  const logger = pino(
    { timestamp: pino.stdTimeFunctions.isoTime, base: undefined },
    { write: (s: string) => (out += s) },
  );
  logger.info(fields, msg);
  return out;
}

test.each([
  ['a streamed exchange with awkward characters', record(), 'POST /v1/chat/completions 200 26ms'],
  [
    'a failed exchange with nulls',
    record({ status: null, ttfbMs: null, model: null, promptTokens: null, error: 'upstream_timeout' }),
    'exchange',
  ],
])('exchangeLogText: %s is the line pino writes, key for key', (_name, r, msg) => {
  const ours = exchangeLogText(r, msg);
  const theirs = viaPino(exchangeLogLine(r), msg);
  expect(ours.endsWith('\n')).toBe(true);
  const a = JSON.parse(ours);
  const b = JSON.parse(theirs);
  expect(Object.keys(a)).toEqual(Object.keys(b));
  expect({ ...a, time: 'T' }).toEqual({ ...b, time: 'T' });
  expect(Math.abs(Date.parse(a.time) - Date.parse(b.time))).toBeLessThan(1000);
});

test('BatchedWriter: lines written in one write per event-loop turn, at once on flush() or past 64 KB', async () => {
  const writes: string[] = [];
  const w = new BatchedWriter({ write: (s: string) => writes.push(s) });
  w.write('a\n');
  w.write('b\n');
  expect(writes).toEqual([]);
  await nextTurn();
  expect(writes).toEqual(['a\nb\n']);
  w.write('c\n');
  w.flush();
  expect(writes).toEqual(['a\nb\n', 'c\n']);
  w.write('x'.repeat(70_000));
  expect(writes).toHaveLength(3);
  await nextTurn();
  expect(writes).toHaveLength(3);
});

test('BatchedWriter with a delay writes after it, not before', async () => {
  const writes: string[] = [];
  const w = new BatchedWriter({ write: (s: string) => writes.push(s) }, 30);
  w.write('a\n');
  await nextTurn();
  expect(writes).toEqual([]);
  await new Promise((r) => setTimeout(r, 60));
  expect(writes).toEqual(['a\n']);
});

test.each([
  ['plain', '/v1/chat/completions'],
  ['empty', ''],
  ['quote', 'say "hi"'],
  ['backslash', 'C:\\path'],
  ['newline and tab', 'a\nb\tc'],
  ['NUL and DEL', '\u0000x\u007f'],
  ['non-ASCII', 'modèle 模型 🚀'],
  ['line separator', 'a\u2028b'],
  ['lone surrogate', 'a\ud800b'],
  ['every printable ASCII', String.fromCharCode(...Array.from({ length: 95 }, (_, i) => i + 32))],
])('jsonString is JSON.stringify: %s', (_name, s) => {
  expect(jsonString(s)).toBe(JSON.stringify(s));
  expect(JSON.parse(jsonString(s))).toBe(s);
});

test('jsonString(null) is null', () => {
  expect(jsonString(null)).toBe('null');
});

test('isoNow formats like Date#toISOString, across minutes, seconds and milliseconds', () => {
  const start = Date.UTC(2026, 10, 28, 23, 58, 59, 0);
  for (let t = start; t < start + 130_000; t += 7) expect(isoNow(t)).toBe(new Date(t).toISOString());
  for (const t of [0, 9, 99, 999, 1000, 59_999, 60_000, Date.UTC(2030, 0, 1)])
    expect(isoNow(t)).toBe(new Date(t).toISOString());
});

test('BatchedWriter.end writes what is pending and drops later lines instead of writing to a closed file', async () => {
  const writes: string[] = [];
  const w = new BatchedWriter({ write: (s: string) => writes.push(s) }, 10);
  w.write('a\n');
  w.end();
  expect(writes).toEqual(['a\n']);
  expect(w.write('late\n')).toBe(false);
  await new Promise((r) => setTimeout(r, 30));
  expect(writes).toEqual(['a\n']);
});
