import { describe, expect, test } from 'vitest';
import { parseEmbeddings } from '../../src/vector/embedding-client.js';
import {
  exchangeText,
  type IndexableExchange,
  isIndexable,
  MAX_PART_CHARS,
  payloadOf,
} from '../../src/vector/exchange-text.js';
import { pointIdFor } from '../../src/vector/qdrant-store.js';

function exchange(over: Partial<IndexableExchange>): IndexableExchange {
  return {
    id: '01jf8z6x9q0000000000000000',
    startedAt: Date.UTC(2025, 0, 31, 12, 0, 0),
    method: 'POST',
    path: '/v1/chat/completions',
    status: 200,
    model: 'gpt-4o',
    upstreamModel: 'gpt-4o-2024-08-06',
    user: null,
    internal: false,
    error: null,
    requestBody: null,
    responseBody: null,
    assembled: null,
    ...over,
  };
}

const chatAnswer = (content: unknown) => JSON.stringify({ choices: [{ index: 0, message: { content } }] });

describe('exchangeText', () => {
  test.each([
    [
      'chat: last user message and the answer',
      {
        requestBody: JSON.stringify({
          messages: [
            { role: 'user', content: 'first question' },
            { role: 'assistant', content: 'first answer' },
            { role: 'user', content: 'refund policy?' },
          ],
        }),
        responseBody: chatAnswer('30 days.'),
      },
      'User: refund policy?\nAssistant: 30 days.',
    ],
    [
      'chat: content parts',
      {
        requestBody: JSON.stringify({
          messages: [
            {
              role: 'user',
              content: [
                { type: 'text', text: 'describe' },
                { type: 'image_url', image_url: { url: 'x' } },
              ],
            },
          ],
        }),
        responseBody: chatAnswer('a cat'),
      },
      'User: describe\nAssistant: a cat',
    ],
    [
      'chat: tool call answer',
      {
        requestBody: JSON.stringify({ messages: [{ role: 'user', content: 'weather?' }] }),
        responseBody: JSON.stringify({
          choices: [
            {
              message: {
                content: null,
                tool_calls: [{ function: { name: 'get_weather', arguments: '{"city":"Oslo"}' } }],
              },
            },
          ],
        }),
      },
      'User: weather?\nAssistant: get_weather({"city":"Oslo"})',
    ],
    [
      'stream: the reassembled answer',
      {
        requestBody: JSON.stringify({ messages: [{ role: 'user', content: 'count' }], stream: true }),
        responseBody: 'data: {"choices":[]}\n\n',
        assembled: {
          kind: 'chat.completion' as const,
          content: 'one two',
          tool_calls: [],
          finish_reason: 'stop',
          usage: null,
          complete: true,
          events: 3,
        },
      },
      'User: count\nAssistant: one two',
    ],
    [
      'completions: string prompt',
      {
        path: '/v1/completions',
        requestBody: JSON.stringify({ prompt: 'Once upon' }),
        responseBody: JSON.stringify({ choices: [{ text: ' a time' }] }),
      },
      'User: Once upon\nAssistant: a time',
    ],
    [
      'responses: input items and output message',
      {
        path: '/v1/responses',
        requestBody: JSON.stringify({
          input: [{ role: 'user', content: [{ type: 'input_text', text: 'Capital of France?' }] }],
        }),
        responseBody: JSON.stringify({
          output: [
            { type: 'reasoning', summary: [] },
            { type: 'message', content: [{ type: 'output_text', text: 'Paris.' }] },
          ],
        }),
      },
      'User: Capital of France?\nAssistant: Paris.',
    ],
    ['nothing to index', { requestBody: '{"messages":[]}', responseBody: '{}' }, null],
    ['unparsable bodies', { requestBody: 'not json', responseBody: '<html>' }, null],
  ])('%s', (_name, over, expected) => {
    expect(exchangeText(exchange(over as Partial<IndexableExchange>))).toBe(expected);
  });

  test('each part is capped', () => {
    const long = 'x'.repeat(MAX_PART_CHARS * 2);
    const text = exchangeText(
      exchange({
        requestBody: JSON.stringify({ messages: [{ role: 'user', content: long }] }),
        responseBody: chatAnswer(long),
      }),
    )!;
    expect(text.length).toBe(MAX_PART_CHARS * 2 + 'User: \nAssistant: '.length);
  });

  test('a request body stored truncated (CAPTURE_BODY_BYTES): the last user message in what was kept', () => {
    const question = `Tell me about zebra migration patterns\n"été" ${'more '.repeat(600)}`;
    const full = JSON.stringify({
      model: 'gpt-4o',
      messages: [
        { role: 'system', content: 'be brief' },
        { role: 'user', content: 'an earlier "quoted" question' },
        { role: 'assistant', content: 'an earlier answer' },
        { role: 'user', content: question },
      ],
    }).replace('été', '\\u00e9t\\u00e9'); // as Python's json.dumps sends it
    const at = full.lastIndexOf('"role":"user"');
    const cutAt = (cut: number) =>
      exchangeText(exchange({ requestBody: full.slice(0, cut), responseBody: chatAnswer('They walk.') }));
    // Before, the body no longer parsed and the question was left out: only the answer was embedded.
    const text = cutAt(full.indexOf('more ', at + 400) + 'more '.length)!;
    expect(text.startsWith('User: Tell me about zebra migration patterns\n"été" more more')).toBe(true);
    expect(text.endsWith(' more\nAssistant: They walk.')).toBe(true);
    // Cut inside an escape: up to the character before it.
    expect(cutAt(full.indexOf('\\u00e9') + 3)).toBe(
      'User: Tell me about zebra migration patterns\n"\nAssistant: They walk.',
    );
    expect(cutAt(full.indexOf('\\n', at) + 1)).toBe(
      'User: Tell me about zebra migration patterns\nAssistant: They walk.',
    );
    // The last user message was cut off whole: the last one kept.
    expect(cutAt(at)).toBe('User: an earlier "quoted" question\nAssistant: They walk.');
  });
});

describe('isIndexable', () => {
  test.each([
    ['completed chat', {}, true],
    ['responses', { path: '/v1/responses' }, true],
    ['embeddings', { path: '/v1/embeddings' }, false],
    ['GET', { method: 'GET' }, false],
    ['4xx', { status: 400 }, false],
    ['transport error', { status: 502, error: 'upstream_unreachable' }, false],
    ['client aborted', { error: 'client_aborted' }, false],
    ['internal', { internal: true }, false],
    [
      'cut-off stream',
      {
        assembled: {
          kind: 'chat.completion' as const,
          content: 'par',
          tool_calls: [],
          finish_reason: null,
          usage: null,
          complete: false,
          events: 2,
        },
      },
      false,
    ],
  ])('%s', (_name, over, expected) => {
    expect(isIndexable(exchange(over as Partial<IndexableExchange>))).toBe(expected);
  });
});

test('payloadOf: requested and upstream model, ISO time', () => {
  expect(payloadOf(exchange({ user: 'bob' }))).toEqual({
    exchange_id: '01jf8z6x9q0000000000000000',
    model: 'gpt-4o',
    upstream_model: 'gpt-4o-2024-08-06',
    status: 200,
    path: '/v1/chat/completions',
    time: '2025-01-31T12:00:00.000Z',
    user: 'bob',
  });
});

describe('pointIdFor', () => {
  test('a ULID maps to its own 128 bits as a UUID; distinct ids give distinct points', () => {
    expect(pointIdFor('00000000000000000000000001')).toBe('00000000-0000-0000-0000-000000000001');
    expect(pointIdFor('7zzzzzzzzzzzzzzzzzzzzzzzzz')).toBe('ffffffff-ffff-ffff-ffff-ffffffffffff');
    const a = pointIdFor('01jf8z6x9q0000000000000000');
    const b = pointIdFor('01jf8z6x9q0000000000000001');
    expect(a).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    expect(a).not.toBe(b);
  });

  test('other ids are hashed into a stable UUID', () => {
    const id = pointIdFor('imported-exchange-42');
    expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    expect(pointIdFor('imported-exchange-42')).toBe(id);
  });
});

describe('parseEmbeddings', () => {
  test('float arrays in index order', () => {
    const body = JSON.stringify({
      data: [
        { index: 1, embedding: [0, 1] },
        { index: 0, embedding: [1, 0] },
      ],
    });
    expect(parseEmbeddings(body, 2)).toEqual([
      [1, 0],
      [0, 1],
    ]);
  });

  test('base64 float32', () => {
    const b64 = Buffer.from(new Float32Array([0.5, -0.25]).buffer).toString('base64');
    expect(parseEmbeddings(JSON.stringify({ data: [{ index: 0, embedding: b64 }] }), 1)).toEqual([
      [0.5, -0.25],
    ]);
  });

  test.each([['{}'], ['not json'], [JSON.stringify({ data: [{ index: 0, embedding: [] }] })]])(
    'malformed %s → null',
    (body) => {
      expect(parseEmbeddings(body, 1)).toBeNull();
    },
  );
});
