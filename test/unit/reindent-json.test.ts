import { describe, expect, test } from 'vitest';
import {
  formatExchangeDetailJson,
  MAX_INDENT_DEPTH,
  recordedJsonBody,
  reindentJson,
} from '../../src/commands/logs-format.js';

describe('reindentJson lays out tokens as JSON.stringify would, without parsing', () => {
  test.each([
    '{"a":1,"b":[1,2,{"c":null}],"d":{},"e":[],"f":true}',
    ' [ ] ',
    '{ "x" : [ { } , [ ] ] }',
    '{"q":"a \\" quote","bs":"ends in a backslash \\\\","mixed":"\\\\\\"","k\\"ey":"v"}',
    '{"s":"commas, colons: and ] } inside","n":-1.5}',
    '[\r\n  "tab\\tand é",\n\t0\n]',
  ])('%j', (text) => {
    expect(reindentJson(text, '  ')).toBe(JSON.stringify(JSON.parse(text), null, 2));
    expect(reindentJson(text, '')).toBe(JSON.stringify(JSON.parse(text)));
  });

  test('keeps what JSON.parse would change: digits past 2^53, 1.0, -1.5e+3, escapes, duplicate keys', () => {
    expect(
      reindentJson('{"seed":12345678901234567890,"t":1.0,"e":-1.5e+3,"u":"\\u00e9","u":"b"}', '  '),
    ).toBe(
      '{\n  "seed": 12345678901234567890,\n  "t": 1.0,\n  "e": -1.5e+3,\n  "u": "\\u00e9",\n  "u": "b"\n}',
    );
  });
});

test('a deeply nested body is indented to MAX_INDENT_DEPTH levels, compact below: the output stays linear', () => {
  const depth = 200_000; // 400 KB of brackets: once gigabytes of indentation, then 'Invalid string length'
  const text = `${'['.repeat(depth)}1${']'.repeat(depth)}`;
  const out = reindentJson(text, '  ');
  expect(out.length).toBeLessThan(text.length + 4 * MAX_INDENT_DEPTH * (MAX_INDENT_DEPTH + 2));
  expect(out.startsWith('[\n  [\n    [')).toBe(true);
  expect(out.replace(/\s/g, '')).toBe(text);
  const shallow = '{"a":{"b":[1,2]}}';
  expect(reindentJson(shallow, '  ')).toBe(JSON.stringify(JSON.parse(shallow), null, 2));
});

describe('recordedJsonBody and formatExchangeDetailJson', () => {
  test('text that is not a JSON object or array stays a string', () => {
    expect(recordedJsonBody('{"cut": "off')).toBe('{"cut": "off');
    expect(recordedJsonBody('data: {}\n\n')).toBe('data: {}\n\n');
    expect(recordedJsonBody('42')).toBe('42');
    expect(recordedJsonBody(null)).toBeNull();
  });

  test('a JSON body is spliced in as recorded; a text body stays a JSON string', () => {
    const d = { id: 'x', request_body: recordedJsonBody('{"a":1.0}'), response_body: '"m:0"' };
    const line = formatExchangeDetailJson(d as any, 'line');
    expect(line).toBe('{"id":"x","request_body":{"a":1.0},"response_body":"\\"m:0\\""}');
  });
});
