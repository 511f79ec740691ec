import { expect, test } from 'vitest';
import { normaliseTarget, parseTarget } from '../../src/proxy/server.js';

test.each([
  ['/v1/chat/completions', { pathname: '/v1/chat/completions', query: '' }],
  ['/v1/files?purpose=fine-tune&limit=2', { pathname: '/v1/files', query: 'purpose=fine-tune&limit=2' }],
  ['/v1/x?q=a%20b', { pathname: '/v1/x', query: 'q=a%20b' }],
  ["/v1/x?q='a b'", { pathname: '/v1/x', query: 'q=%27a%20b%27' }],
  ['/v1//chat///completions', { pathname: '/v1/chat/completions', query: '' }],
  ['/v1/a/../chat/completions', { pathname: '/v1/chat/completions', query: '' }],
  ['/v1/./models', { pathname: '/v1/models', query: '' }],
  ['/v1/%2e%2e/admin', { pathname: '/admin', query: '' }],
  ['/v1/%2e%2e%2fadmin', null],
  ['/v1/x?a=b#frag', { pathname: '/v1/x', query: 'a=b' }],
  ['http://elsewhere.example/v1/models?x=1', { pathname: '/v1/models', query: 'x=1' }],
  ['*', null],
  ['', null],
])('normaliseTarget(%j) → %j', (raw, expected) => {
  expect(normaliseTarget(raw)).toEqual(expected);
});

test('the fast path answers exactly what the URL parser (parseTarget) would, for 20,000 random targets', () => {
  const alphabet = 'abcXYZ019-._~!$&\'()*+,;=:@/?%#\\ "<>^`{|}é..//';
  let seed = 42;
  const rand = (n: number) => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  for (let i = 0; i < 20_000; i++) {
    let raw = '/';
    const len = rand(24);
    for (let j = 0; j < len; j++) raw += alphabet[rand(alphabet.length)];
    expect(normaliseTarget(raw), raw).toEqual(parseTarget(raw));
  }
});
