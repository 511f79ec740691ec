import { expect, test } from 'vitest';
import type { ExchangeRecord } from '../../src/storage/exchange-record.js';
import { fromWire, toWire } from '../../src/storage/exchange-wire.js';

test('an exchange crosses to the recorder thread and back unchanged, every field in its place', () => {
  // Every field set, and no two to the same value: a field dropped or swapped shows.
  const r: ExchangeRecord = {
    id: '01JF3X8Y2Z4ABCDEFGHJKMNPQR',
    startedAt: 1_760_000_000_001,
    durationMs: 12.5,
    ttfbMs: 3.25,
    method: 'POST',
    path: '/v1/chat/completions',
    query: 'api-version=1',
    clientAddr: '127.0.0.1',
    status: 201,
    requestHeadersJson: '{"content-type":"application/json"}',
    responseHeadersJson: '{"x-request-id":"req_1"}',
    requestBody: '{"model":"a"}',
    requestBytes: 13,
    requestTruncated: true,
    responseBody: '{"ok":1}',
    responseBytes: 8,
    responseTruncated: false,
    model: 'alias',
    upstreamModel: 'gpt-4o',
    upstream: 'azure',
    modelUnknown: true,
    stream: false,
    promptTokens: 7,
    completionTokens: 11,
    totalTokens: 18,
    user: 'user-42',
    error: 'client_aborted',
    errorMessage: 'gone',
    assembled: {
      kind: 'chat.completion',
      content: 'hi',
      tool_calls: [],
      finish_reason: 'stop',
      usage: { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 },
      complete: true,
      events: 4,
    },
    internal: true,
  };
  // As postMessage would: through the structured clone.
  const back = fromWire(structuredClone(toWire(r)));
  expect(back).toStrictEqual(r);
  expect(Object.keys(back)).toEqual(Object.keys(r));
});
