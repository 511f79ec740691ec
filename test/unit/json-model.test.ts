import { describe, expect, test } from 'vitest';
import { replaceJsonModel } from '../../src/proxy/json-model.js';

const replace = (text: string, model = 'gpt-4o-mini') =>
  replaceJsonModel(Buffer.from(text), model)?.toString('utf8') ?? null;

describe('replaceJsonModel: only the top-level model value changes', () => {
  test.each([
    [
      'big integer',
      '{"model":"fast","seed":9007199254740993}',
      '{"model":"gpt-4o-mini","seed":9007199254740993}',
    ],
    [
      'number forms',
      '{"temperature":1.0,"n":1e2,"model":"fast","x":-0.50E+1}',
      '{"temperature":1.0,"n":1e2,"model":"gpt-4o-mini","x":-0.50E+1}',
    ],
    [
      'unicode escapes',
      '{"model":"fast","messages":[{"content":"caf\\u00e9 \\ud83d\\ude00"}]}',
      '{"model":"gpt-4o-mini","messages":[{"content":"caf\\u00e9 \\ud83d\\ude00"}]}',
    ],
    [
      'nested model keys',
      '{"messages":[{"model":"fast","content":"{\\"model\\":1}"}],"tools":{"model":"fast"},"model":"fast"}',
      '{"messages":[{"model":"fast","content":"{\\"model\\":1}"}],"tools":{"model":"fast"},"model":"gpt-4o-mini"}',
    ],
    [
      'a string value holding braces and quotes',
      '{"a":"}{\\"model\\":\\"x\\"","model":"fast"}',
      '{"a":"}{\\"model\\":\\"x\\"","model":"gpt-4o-mini"}',
    ],
    [
      'pretty-printed',
      '\r\n{\n  "stream" : true ,\n\t"model"\t:\n "fast" ,\n  "n": [ 1 , 2 ]\n}\n',
      '\r\n{\n  "stream" : true ,\n\t"model"\t:\n "gpt-4o-mini" ,\n  "n": [ 1 , 2 ]\n}\n',
    ],
    ['an escaped key name', '{"mod\\u0065l":"fast","x":null}', '{"mod\\u0065l":"gpt-4o-mini","x":null}'],
    [
      'a repeated key (JSON.parse reads the last)',
      '{"model":"a","model":"fast"}',
      '{"model":"gpt-4o-mini","model":"gpt-4o-mini"}',
    ],
    [
      'non-ASCII around it',
      '{"note":"é✓😀","model":"fast","b":false}',
      '{"note":"é✓😀","model":"gpt-4o-mini","b":false}',
    ],
  ])('%s', (_name, body, expected) => {
    expect(replace(body)).toBe(expected);
    const a = JSON.parse(body);
    a.model = 'gpt-4o-mini';
    expect(JSON.parse(expected)).toEqual(a);
  });

  test('the new name is written as a JSON string', () => {
    expect(replace('{"model":"fast"}', 'say "hi"\\é')).toBe('{"model":"say \\"hi\\"\\\\é"}');
  });

  test.each(['{}', '{"messages":[{"model":"fast"}]}', '[{"model":"fast"}]', '"model"'])(
    'no top-level model: null (%s)',
    (body) => {
      expect(replace(body)).toBeNull();
    },
  );

  test('bytes that are not valid UTF-8 elsewhere in the body stay as they were', () => {
    const body = Buffer.concat([
      Buffer.from('{"x":"'),
      Buffer.from([0xff, 0xfe]),
      Buffer.from('","model":"fast"}'),
    ]);
    const out = replaceJsonModel(body, 'm')!;
    expect(out.subarray(0, 8)).toEqual(body.subarray(0, 8));
    expect(out.subarray(8).toString()).toBe('","model":"m"}');
  });
});

test('a leading UTF-8 byte order mark is kept, the model after it replaced', () => {
  const bom = Buffer.from([0xef, 0xbb, 0xbf]);
  const out = replaceJsonModel(Buffer.concat([bom, Buffer.from(' {"model":"fast","n":1.0}')]), 'm');
  expect(out).toEqual(Buffer.concat([bom, Buffer.from(' {"model":"m","n":1.0}')]));
});
