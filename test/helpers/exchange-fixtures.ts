import type { ExchangeRecord } from '../../src/storage/exchange-record.js';

/**
 * An exchange with every field set and no two fields to the same value (booleans aside: see
 * `BOOLEAN_FIELDS`), so a field dropped, swapped or moved in a conversion shows.
 */
export function distinctExchange(): ExchangeRecord {
  return {
    id: '01JF3X8Y2Z4ABCDEFGHJKMNPQR',
    startedAt: 1_760_000_000_001,
    durationMs: 42.4,
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
}

/** The boolean fields of an exchange: tests flip them one at a time, as their values repeat. */
export const BOOLEAN_FIELDS = [
  'requestTruncated',
  'responseTruncated',
  'modelUnknown',
  'stream',
  'internal',
] as const satisfies readonly (keyof ExchangeRecord)[];
