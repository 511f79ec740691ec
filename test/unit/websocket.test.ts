import type { IncomingMessage } from 'node:http';
import { expect, test } from 'vitest';
import {
  dropSubprotocolKey,
  headWithoutUpgrade,
  isWebSocketUpgrade,
  queryDeployments,
  queryModels,
  replaceQueryModel,
  subprotocolKey,
  switchingProtocolsHead,
  withoutSubprotocolKey,
} from '../../src/proxy/websocket.js';

test.each([
  ['model=gpt-4o-realtime-preview', ['gpt-4o-realtime-preview']],
  ['a=1&model=voice&b=2', ['voice']],
  ['model=my%20model', ['my model']],
  ['model=', ['']],
  ['models=x', []],
  ['', []],
  ['x=1', []],
  ['model=a', ['a']],
  ['mod%65l=a', ['a']],
  ['x=1&%6dodel=a', ['a']],
  ['%6D%6F%64%65%6C=a+b', ['a b']],
  ['model=a&model=b', ['a', 'b']],
  ['model=a&mod%65l=b', ['a', 'b']],
  ['model=&model=b', ['', 'b']],
  ['mo+del=a&model%20=b', []],
])('queryModels(%j) → %j: names decoded as the upstream decodes them', (query, expected) => {
  expect(queryModels(query)).toEqual(expected);
});

test.each([
  ['model=voice', 'gpt-4o-realtime-preview', 'model=gpt-4o-realtime-preview'],
  ['x=1&mod%65l=voice&y=a+b%20c', 'gpt-4o', 'x=1&model=gpt-4o&y=a+b%20c'],
  ['%6dodel=voice', 'm/1', 'model=m%2F1'],
  ['mo+del=voice&model=voice', 'gpt-4o', 'mo+del=voice&model=gpt-4o'],
  ['a=%ff&model=voice&b=x+y', 'gpt-4o', 'a=%ff&model=gpt-4o&b=x+y'],
  ['model=a&model=b', 'c', 'model=c&model=c'],
  ['xmodel=a&model', 'm/1', 'xmodel=a&model=m%2F1'],
  // Azure's `deployment` names the model too.
  ['api-version=v&deployment=voice', 'gpt-4o', 'api-version=v&deployment=gpt-4o'],
  ['deploym%65nt=voice&model=voice', 'gpt-4o', 'deployment=gpt-4o&model=gpt-4o'],
])('replaceQueryModel(%j, %j) → %j: only the model parameter changes', (query, model, expected) => {
  expect(replaceQueryModel(query, model)).toBe(expected);
});

test.each([
  ['model=voice&x=1', 'deployment', 'dep', 'deployment=dep&x=1'],
  ['api-version=v&deployment=voice', 'deployment', 'd/1', 'api-version=v&deployment=d%2F1'],
  ['model=voice&api-version=v&deployment=voice', 'deployment', 'dep', 'deployment=dep&api-version=v'],
  ['deployment=voice&model=voice', 'model', 'dep', 'model=dep'],
  ['x=1&mod%65l=voice', 'model', 'dep', 'x=1&model=dep'],
  ['x=1', 'deployment', 'dep', 'x=1'],
])(
  'replaceQueryModel(%j, %j as %j) → %j: one parameter, the one Azure reads',
  (query, as, model, expected) => {
    expect(replaceQueryModel(query, model, as as 'model' | 'deployment')).toBe(expected);
  },
);

test.each([
  ['api-version=2024-10-01-preview&deployment=rt', ['rt']],
  ['deploym%65nt=a&deployment=b', ['a', 'b']],
  ['model=a', []],
])('queryDeployments(%j) → %j', (query, expected) => {
  expect(queryDeployments(query)).toEqual(expected);
});

const req = (method: string, rawHeaders: string[]) =>
  ({
    method,
    url: '/v1/chat/completions?x=1',
    httpVersion: '1.1',
    rawHeaders,
    headers: Object.fromEntries(
      Array.from({ length: rawHeaders.length / 2 }, (_, i) => [
        rawHeaders[2 * i].toLowerCase(),
        rawHeaders[2 * i + 1],
      ]),
    ),
  }) as unknown as IncomingMessage;

test.each([
  ['GET', 'websocket', true],
  ['GET', 'WebSocket', true],
  ['GET', 'h2c', false],
  ['POST', 'websocket', false],
])('isWebSocketUpgrade(%s, Upgrade: %s) → %s', (method, upgrade, expected) => {
  expect(isWebSocketUpgrade(req(method, ['Upgrade', upgrade]))).toBe(expected);
});

test('headWithoutUpgrade drops the Upgrade header and the upgrade token, keeps the rest as sent', () => {
  const head = headWithoutUpgrade(
    req('POST', [
      'Host',
      'x',
      'Connection',
      'Upgrade, HTTP2-Settings',
      'Upgrade',
      'h2c',
      'HTTP2-Settings',
      'AAMA',
      'Content-Length',
      '2',
    ]),
  );
  expect(head.toString('latin1')).toBe(
    'POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: x\r\nConnection: HTTP2-Settings\r\nHTTP2-Settings: AAMA\r\nContent-Length: 2\r\n\r\n',
  );
  expect(headWithoutUpgrade(req('GET', ['Connection', 'upgrade', 'Upgrade', 'h2c'])).toString()).toBe(
    'GET /v1/chat/completions?x=1 HTTP/1.1\r\n\r\n',
  );
});

test.each([
  [
    'realtime, openai-insecure-api-key.sk-abc, openai-beta.realtime-v1',
    'sk-abc',
    'realtime, openai-beta.realtime-v1',
  ],
  ['openai-insecure-api-key.sk-abc', 'sk-abc', undefined],
  ['realtime', null, 'realtime'],
  [undefined, null, undefined],
])('subprotocol key in %j: %j; dropped: %j', (protocols, key, kept) => {
  const headers = protocols === undefined ? {} : { 'sec-websocket-protocol': protocols };
  expect(subprotocolKey(headers)).toBe(key);
  expect(dropSubprotocolKey(headers)['sec-websocket-protocol']).toBe(kept);
  if (key) expect(JSON.stringify(withoutSubprotocolKey(headers))).not.toContain(key);
});

test('switchingProtocolsHead writes every header, repeated ones on their own lines', () => {
  expect(
    switchingProtocolsHead({ upgrade: 'websocket', 'set-cookie': ['a=1', 'b=2'], skipped: undefined }),
  ).toBe(
    'HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nset-cookie: a=1\r\nset-cookie: b=2\r\n\r\n',
  );
});
