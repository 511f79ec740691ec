import { expect, test } from 'vitest';
import { bearerToken, redactHeaders } from '../../src/proxy/capture.js';

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
