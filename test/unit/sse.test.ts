import { describe, expect, test } from 'vitest';
import { createStreamAssembler, extractUsage, normaliseUsage, streamFraming } from '../../src/proxy/sse.js';

const sse = (events: unknown[]) =>
  events.map((e) => (typeof e === 'string' ? e : `data: ${JSON.stringify(e)}\n\n`)).join('');
const chunk = (delta: unknown, finish: string | null = null) => ({
  object: 'chat.completion.chunk',
  choices: [{ index: 0, delta, finish_reason: finish }],
});

function assemble(text: string, splitEvery = 0) {
  const a = createStreamAssembler();
  if (splitEvery > 0)
    for (let i = 0; i < text.length; i += splitEvery) a.push(Buffer.from(text.slice(i, i + splitEvery)));
  else a.push(text);
  return a.result();
}

const chat = sse([
  chunk({ role: 'assistant', content: '' }),
  chunk({ content: 'Hel' }),
  chunk({ content: 'lo ✓' }),
  chunk({
    tool_calls: [
      { index: 0, id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '' } },
    ],
  }),
  chunk({ tool_calls: [{ index: 0, function: { arguments: '{"city":' } }] }),
  chunk({ tool_calls: [{ index: 0, function: { arguments: '"Paris"}' } }] }),
  chunk({}, 'tool_calls'),
  {
    object: 'chat.completion.chunk',
    choices: [],
    usage: { prompt_tokens: 10, completion_tokens: 4, total_tokens: 14 },
  },
  'data: [DONE]\n\n',
]);

describe('stream reassembly', () => {
  test.each([0, 1, 7, 64])('chat completion with tool calls, split every %i bytes', (split) => {
    expect(assemble(chat, split)).toEqual({
      kind: 'chat.completion',
      content: 'Hello ✓',
      tool_calls: [{ id: 'call_1', type: 'function', name: 'get_weather', arguments: '{"city":"Paris"}' }],
      finish_reason: 'tool_calls',
      usage: { prompt_tokens: 10, completion_tokens: 4, total_tokens: 14 },
      complete: true,
      events: 9,
    });
  });

  test('an n > 1 stream reassembles every choice; the top-level fields are the first choice', () => {
    const c = (index: number, delta: unknown, finish: string | null = null) => ({
      object: 'chat.completion.chunk',
      choices: [{ index, delta, finish_reason: finish }],
    });
    const text = sse([
      // As OpenAI interleaves them: one choice per event, in any order.
      c(0, { role: 'assistant', content: '' }),
      c(1, { role: 'assistant', content: '' }),
      c(1, { content: 'Bonjour' }),
      c(0, { content: 'Hello' }),
      c(1, {
        tool_calls: [
          { index: 0, id: 'call_b', type: 'function', function: { name: 'f', arguments: '{"a"' } },
        ],
      }),
      c(1, { tool_calls: [{ index: 0, function: { arguments: ':1}' } }] }),
      c(0, { content: ' world' }),
      c(0, {}, 'stop'),
      c(1, {}, 'tool_calls'),
      // Both in one event, as some servers send them.
      {
        object: 'chat.completion.chunk',
        choices: [
          { index: 1, delta: { content: '!' } },
          { index: 0, delta: {} },
        ],
      },
      'data: [DONE]\n\n',
    ]);
    for (const split of [0, 5]) {
      const r = assemble(text, split);
      expect(r).toMatchObject({
        content: 'Hello world',
        tool_calls: [],
        finish_reason: 'stop',
        complete: true,
      });
      expect(r.choices).toEqual([
        { index: 0, content: 'Hello world', tool_calls: [], finish_reason: 'stop' },
        {
          index: 1,
          content: 'Bonjour!',
          tool_calls: [{ id: 'call_b', type: 'function', name: 'f', arguments: '{"a":1}' }],
          finish_reason: 'tool_calls',
        },
      ]);
    }
    expect(assemble(chat)).not.toHaveProperty('choices');
  });

  test('an n > 1 text completion stream, and no more choices than the API allows', () => {
    const t = (index: number, text: string) => ({ object: 'text_completion', choices: [{ index, text }] });
    const r = assemble(sse([t(2, 'c'), t(0, 'a'), t(1, 'b'), t(2, 'C')]));
    expect(r.kind).toBe('text_completion');
    expect(r.choices?.map((c) => [c.index, c.content])).toEqual([
      [0, 'a'],
      [1, 'b'],
      [2, 'cC'],
    ]);
    const many = assemble(sse(Array.from({ length: 1000 }, (_, i) => t(i, `x${i}`))));
    expect(many.choices).toHaveLength(128);
    expect(many.choices?.at(-1)).toMatchObject({ index: 127, content: 'x127' });
  });

  test('CRLF line endings and multi-line data', () => {
    const r = assemble(chat.replace(/\n/g, '\r\n'));
    expect(r.content).toBe('Hello ✓');
    expect(r.complete).toBe(true);
  });

  // An event name, or a multi-line data event, must survive a CRLF cut between its CR and its LF.
  const responsesCrlf = [
    'event: response.output_text.delta\ndata: {"delta":"Hi "}\n\n',
    'event: response.output_text.delta\ndata: {"delta":\ndata: "there"}\n\n',
    'event: response.completed\ndata: {"response":{"status":"completed","usage":{"input_tokens":3,"output_tokens":2}}}\n\n',
  ]
    .join('')
    .replace(/\n/g, '\r\n');
  const chatCrlf = sse([
    chunk({ content: 'Hel' }),
    'data: {"object":"chat.completion.chunk",\ndata: "choices":[{"index":0,"delta":{"content":"lo"}}]}\n\n',
    chunk({}, 'stop'),
    'data: [DONE]\n\n',
  ]).replace(/\n/g, '\r\n');
  test.each([
    ['Responses API', responsesCrlf, 'Hi there'],
    ['chat', chatCrlf, 'Hello'],
  ])('a CRLF %s stream cut at any point reassembles as when whole', (_name, text, content) => {
    const whole = assemble(text);
    expect(whole).toMatchObject({ content, complete: true });
    for (let i = 1; i < text.length; i++) {
      const a = createStreamAssembler();
      a.push(Buffer.from(text.slice(0, i)));
      a.push(Buffer.from(text.slice(i)));
      expect([i, a.result()]).toEqual([i, whole]);
    }
    // one byte a push: every cut at once
    expect(assemble(text, 1)).toEqual(whole);
  });

  test('legacy completions', () => {
    const r = assemble(
      sse([
        { object: 'text_completion', choices: [{ index: 0, text: 'foo', finish_reason: null }] },
        { object: 'text_completion', choices: [{ index: 0, text: 'bar', finish_reason: 'length' }] },
        'data: [DONE]\n\n',
      ]),
    );
    expect(r).toMatchObject({
      kind: 'text_completion',
      content: 'foobar',
      finish_reason: 'length',
      complete: true,
    });
  });

  test('Responses API stream with a function call', () => {
    const text = [
      `event: response.created\ndata: ${JSON.stringify({ type: 'response.created', response: { status: 'in_progress' } })}\n\n`,
      `event: response.output_text.delta\ndata: ${JSON.stringify({ type: 'response.output_text.delta', delta: 'Hi ' })}\n\n`,
      `event: response.output_text.delta\ndata: ${JSON.stringify({ type: 'response.output_text.delta', delta: 'there' })}\n\n`,
      `event: response.output_item.added\ndata: ${JSON.stringify({ type: 'response.output_item.added', output_index: 1, item: { type: 'function_call', id: 'fc_1', call_id: 'call_9', name: 'lookup', arguments: '' } })}\n\n`,
      `event: response.function_call_arguments.delta\ndata: ${JSON.stringify({ type: 'response.function_call_arguments.delta', item_id: 'fc_1', delta: '{"q":1}' })}\n\n`,
      `event: response.completed\ndata: ${JSON.stringify({ type: 'response.completed', response: { status: 'completed', usage: { input_tokens: 5, output_tokens: 3, total_tokens: 8 } } })}\n\n`,
    ].join('');
    expect(assemble(text, 5)).toMatchObject({
      kind: 'response',
      content: 'Hi there',
      tool_calls: [{ id: 'call_9', type: 'function', name: 'lookup', arguments: '{"q":1}' }],
      finish_reason: 'completed',
      usage: { prompt_tokens: 5, completion_tokens: 3, total_tokens: 8 },
      complete: true,
    });
  });

  test('a stream cut off midway keeps its partial text and says so', () => {
    const cut = chat.slice(0, chat.indexOf('tool_calls') - 40);
    const r = assemble(cut);
    expect(r.content).toBe('Hello ✓');
    expect(r.complete).toBe(false);
    expect(r.finish_reason).toBeNull();
  });

  // ik_llama.cpp's /v1/chat/completions sends no `data: [DONE]`: every choice's finish_reason, then the
  // response's normal end, is the whole answer.
  test('a chat or completions stream without [DONE] is complete when it ended cleanly after every finish_reason', () => {
    const ended = (text: string, endedCleanly: boolean) => {
      const a = createStreamAssembler();
      a.push(text);
      return a.result(endedCleanly);
    };
    const noDone = chat.slice(0, chat.indexOf('data: [DONE]'));
    expect(ended(noDone, true)).toMatchObject({ finish_reason: 'tool_calls', complete: true });
    // Cut (reset, aborted): not complete, finish_reason or not.
    expect(ended(noDone, false)).toMatchObject({ complete: false });
    // Ended, but before the finish_reason: cut short by the upstream.
    expect(ended(chat.slice(0, chat.indexOf('tool_calls') - 40), true)).toMatchObject({ complete: false });
    // An error event instead of the end.
    expect(ended(`${noDone}event: error\ndata: {"error":{"message":"boom"}}\n\n`, true)).toMatchObject({
      complete: false,
    });
    // Legacy completions.
    const text = (t: string, finish: string | null = null) => ({
      object: 'text_completion',
      choices: [{ index: 0, text: t, finish_reason: finish }],
    });
    expect(ended(sse([text('Hi'), text('!', 'length')]), true)).toMatchObject({
      kind: 'text_completion',
      content: 'Hi!',
      complete: true,
    });
    // n > 1: every choice needs its finish_reason.
    const c = (index: number, finish: string | null) => ({
      object: 'chat.completion.chunk',
      choices: [{ index, delta: { content: 'x' }, finish_reason: finish }],
    });
    expect(ended(sse([c(0, null), c(1, null), c(0, 'stop')]), true)).toMatchObject({ complete: false });
    expect(ended(sse([c(0, null), c(1, null), c(0, 'stop'), c(1, 'stop')]), true)).toMatchObject({
      complete: true,
    });
  });

  test('malformed events are skipped, not fatal', () => {
    const r = assemble(`data: {not json\n\n${sse([chunk({ content: 'ok' })])}data: [DONE]\n\n`);
    expect(r.content).toBe('ok');
    expect(r.complete).toBe(true);
  });

  test('assembled text is capped', () => {
    const a = createStreamAssembler({ maxChars: 5 });
    a.push(sse([chunk({ content: 'abcdefgh' }), chunk({ content: 'ijk' })]));
    expect(a.result().content).toBe('abcde');
  });

  const named = (type: string, ev: object) => `event: ${type}\ndata: ${JSON.stringify({ type, ...ev })}\n\n`;

  test.each([
    [
      'chat: event: error',
      `${sse([chunk({ content: 'partial' })])}event: error\ndata: ${JSON.stringify({ error: { message: 'The server had an error', type: 'server_error' } })}\n\n`,
      'The server had an error',
      false,
    ],
    [
      // OpenRouter's mid-stream failure: a chunk with an `error` beside its choices (the openai SDK throws on it).
      'chat: a chunk carrying an error',
      sse([
        chunk({ content: 'partial' }),
        { ...chunk({ content: '' }, 'error'), error: { code: 502, message: 'Provider disconnected' } },
      ]),
      'Provider disconnected',
      false,
    ],
    [
      'completions: a chunk carrying an error',
      sse([
        { object: 'text_completion', choices: [{ index: 0, text: 'partial', finish_reason: null }] },
        { object: 'text_completion', choices: [], error: 'Provider disconnected' },
        'data: [DONE]\n\n',
      ]),
      'Provider disconnected',
      true,
    ],
    [
      'Responses: type error',
      `${named('response.output_text.delta', { delta: 'partial' })}${named('error', { code: 'server_error', message: 'Something went wrong', param: null })}`,
      'Something went wrong',
      false,
    ],
    [
      'Responses: response.failed',
      `${named('response.output_text.delta', { delta: 'partial' })}${named('response.failed', { response: { status: 'failed', error: { code: 'server_error', message: 'Model crashed' }, usage: null } })}`,
      'Model crashed',
      true,
    ],
  ])('an error event in the stream is noted (%s)', (_name, text, message, complete) => {
    for (const split of [0, 7]) {
      const a = createStreamAssembler();
      if (split) for (let i = 0; i < text.length; i += split) a.push(text.slice(i, i + split));
      else a.push(text);
      expect(a.streamError()).toBe(message);
      expect(a.result()).toMatchObject({ content: 'partial', complete });
    }
  });

  test('hidden text: every text delta the message does not keep, joined per item and part, not base64 audio', () => {
    const a = createStreamAssembler();
    // two items interleaved: each one's pieces join in order, apart from the other's
    a.push(
      named('response.mcp_call_arguments.delta', { item_id: 'mcp_1', output_index: 0, delta: '{"k":"AB' }) +
        named('response.code_interpreter_call_code.delta', {
          item_id: 'ci_1',
          output_index: 1,
          delta: 'x = "CD',
        }) +
        named('response.mcp_call_arguments.delta', { item_id: 'mcp_1', output_index: 0, delta: 'CD"}' }) +
        named('response.code_interpreter_call_code.delta', {
          item_id: 'ci_1',
          output_index: 1,
          delta: 'EF"',
        }) +
        named('response.audio.transcript.delta', { delta: 'sa' }) +
        named('response.audio.delta', { delta: 'UklGRiQAAABXQVZF' }) +
        named('response.audio.transcript.delta', { delta: 'id' }) +
        named('response.custom_tool_call_input.delta', { item_id: 'ctc_1', output_index: 2, delta: 'in' }) +
        named('response.future_thing.delta', { item_id: 'f_1', delta: 'new' }) +
        named('response.output_text.delta', { delta: 'kept' }) +
        named('response.function_call_arguments.delta', { item_id: 'fc_1', delta: '{}' }),
    );
    expect(a.hiddenText().split('\n')).toEqual(['{"k":"ABCD"}', 'x = "CDEF"', 'said', 'in', 'new']);
    expect(a.result()).toMatchObject({ content: 'kept', tool_calls: [{ arguments: '{}' }] });

    const chat = createStreamAssembler();
    chat.push(
      sse([
        chunk({ content: null, audio: { id: 'audio_1', transcript: 'hel' } }),
        chunk({ audio: { transcript: 'lo', data: 'UklGRg==' } }),
        chunk({ function_call: { name: 'f', arguments: '{"a":' } }),
        chunk({ function_call: { arguments: '1}' } }),
      ]),
    );
    expect(chat.hiddenText().split('\n')).toEqual(['hello', '{"a":1}']);
    expect(chat.result().content).toBe('');
  });

  test('hidden text is capped in all, however many items a stream names', () => {
    const a = createStreamAssembler({ maxChars: 10 });
    for (let i = 0; i < 100; i++)
      a.push(named('response.reasoning_text.delta', { item_id: `rs_${i}`, delta: 'abcd' }));
    expect(a.hiddenText()).toBe('abcd\nabcd\nab');
  });

  test('a stream without an error event has no stream error', () => {
    const a = createStreamAssembler();
    a.push(chat);
    expect(a.streamError()).toBeNull();
  });

  // `response.completed` repeats the whole output: with the image_generation tool, the base64 image.
  test.each([
    ['response.completed', { status: 'completed', incomplete_details: null }, 'completed', null],
    [
      'response.incomplete',
      { status: 'incomplete', incomplete_details: { reason: 'max_output_tokens' } },
      'max_output_tokens',
      null,
    ],
    [
      'response.failed',
      { status: 'failed', error: { code: 'server_error', message: 'Model "x" crashed' } },
      'failed',
      'Model "x" crashed',
    ],
  ])(
    'a final event larger than the event limit still ends the stream with its usage (%s)',
    (type, head, finish, error) => {
      const a = createStreamAssembler({ maxChars: 1000 });
      const response = {
        id: 'resp_1',
        object: 'response',
        ...head,
        output: [{ type: 'image_generation_call', id: 'ig_1', result: 'A'.repeat(1_500_000) }],
        usage: { input_tokens: 50, output_tokens: 60, total_tokens: 110 },
        user: null,
      };
      const text = `${named('response.output_text.delta', { delta: 'Here' })}${named(type, { sequence_number: 2, response })}`;
      for (let i = 0; i < text.length; i += 64 * 1024) a.push(text.slice(i, i + 64 * 1024));
      expect(a.result()).toEqual({
        kind: 'response',
        content: 'Here',
        tool_calls: [],
        finish_reason: finish,
        usage: { prompt_tokens: 50, completion_tokens: 60, total_tokens: 110 },
        complete: true,
        events: 2,
      });
      expect(a.streamError()).toBe(error);
    },
  );
});

describe('streams of other formats', () => {
  const transcription = sse([
    { type: 'transcript.text.delta', delta: 'Hello' },
    { type: 'transcript.text.delta', delta: ' world', logprobs: [] },
    {
      type: 'transcript.text.done',
      text: 'Hello world',
      usage: {
        type: 'tokens',
        input_tokens: 14,
        input_token_details: { text_tokens: 0, audio_tokens: 14 },
        output_tokens: 3,
        total_tokens: 17,
      },
    },
  ]);
  const audio = Buffer.alloc(3000, 9).toString('base64');
  const speech = sse([
    { type: 'speech.audio.delta', audio },
    { type: 'speech.audio.delta', audio },
    { type: 'speech.audio.done', usage: { input_tokens: 5, output_tokens: 40, total_tokens: 45 } },
  ]);
  const timings = { prompt_n: 4, prompt_ms: 1.2, predicted_n: 3, predicted_ms: 30.1 };
  const llamaCpp = sse([
    { content: 'Once', stop: false, id_slot: 0, index: 0, tokens: [7454] },
    { content: ' upon', stop: false, id_slot: 0, index: 0, tokens: [5304] },
    {
      content: '',
      stop: true,
      id_slot: 0,
      model: 'gguf',
      tokens_predicted: 2,
      tokens_evaluated: 4,
      stop_type: 'limit',
      stopping_word: '',
      truncated: false,
      timings,
      index: 0,
    },
  ]);
  const ndjson = (lines: unknown[]) => lines.map((l) => `${JSON.stringify(l)}\n`).join('');
  const ollamaEnd = {
    done: true,
    done_reason: 'stop',
    total_duration: 1000,
    prompt_eval_count: 26,
    eval_count: 3,
    eval_duration: 500,
  };
  const ollamaChat = ndjson([
    { model: 'llama3', message: { role: 'assistant', content: 'The' }, done: false },
    { model: 'llama3', message: { role: 'assistant', content: ' sky' }, done: false },
    { model: 'llama3', message: { role: 'assistant', content: '' }, ...ollamaEnd },
  ]);
  const ollamaGenerate = ndjson([
    { model: 'llama3', response: 'The', done: false },
    { model: 'llama3', response: ' sky', done: false },
    { model: 'llama3', response: '', context: [1, 2, 3], ...ollamaEnd, done_reason: 'length' },
  ]);

  function assembleAs(framing: 'sse' | 'ndjson', text: string, split = 0, endedCleanly?: boolean) {
    const a = createStreamAssembler({ framing });
    if (split > 0) for (let i = 0; i < text.length; i += split) a.push(Buffer.from(text.slice(i, i + split)));
    else a.push(text);
    return a.result(endedCleanly);
  }

  test.each([0, 1, 7])('audio transcription (stream: true), split every %i bytes', (split) => {
    expect(assembleAs('sse', transcription, split)).toEqual({
      kind: 'transcription',
      content: 'Hello world',
      tool_calls: [],
      finish_reason: null,
      usage: { prompt_tokens: 14, completion_tokens: 3, total_tokens: 17 },
      complete: true,
      events: 3,
    });
    expect(
      assembleAs('sse', transcription.slice(0, transcription.indexOf('transcript.text.done'))),
    ).toMatchObject({
      kind: 'transcription',
      content: 'Hello world',
      complete: false,
    });
  });

  test('an Ollama stream whose prompt came whole from its cache (no prompt_eval_count): 0 prompt tokens', () => {
    const cached = ndjson([
      { model: 'llama3', response: 'Hi', done: false },
      { model: 'llama3', response: '', done: true, done_reason: 'stop', eval_count: 4 },
    ]);
    expect(assembleAs('ndjson', cached).usage).toEqual({
      prompt_tokens: 0,
      completion_tokens: 4,
      total_tokens: 4,
    });
  });

  test('speech (stream_format: "sse"): usage and completion, not the base64 audio', () => {
    expect(assembleAs('sse', speech, 1000)).toEqual({
      kind: 'speech',
      content: '',
      tool_calls: [],
      finish_reason: null,
      usage: { prompt_tokens: 5, completion_tokens: 40, total_tokens: 45 },
      complete: true,
      events: 3,
    });
    expect(assembleAs('sse', speech.slice(0, speech.indexOf('speech.audio.done')))).toMatchObject({
      kind: 'speech',
      usage: null,
      complete: false,
    });
  });

  test.each([0, 1, 9])("llama.cpp's native /completion stream, split every %i bytes", (split) => {
    expect(assembleAs('sse', llamaCpp, split)).toEqual({
      kind: 'llama.cpp',
      content: 'Once upon',
      tool_calls: [],
      finish_reason: 'length',
      usage: { prompt_tokens: 4, completion_tokens: 2, total_tokens: 6 },
      complete: true,
      events: 3,
    });
    const cut = llamaCpp.slice(0, llamaCpp.indexOf('"stop":true'));
    expect(assembleAs('sse', cut, split)).toMatchObject({
      content: 'Once upon',
      complete: false,
      usage: null,
    });
  });

  test.each([
    ['/api/chat', ollamaChat, 'stop'],
    ['/api/generate', ollamaGenerate, 'length'],
  ])('Ollama %s NDJSON stream', (_path, text, finish) => {
    const whole = assembleAs('ndjson', text);
    expect(whole).toEqual({
      kind: 'ollama',
      content: 'The sky',
      tool_calls: [],
      finish_reason: finish,
      usage: { prompt_tokens: 26, completion_tokens: 3, total_tokens: 29 },
      complete: true,
      events: 3,
    });
    for (const split of [1, 5, 64]) expect(assembleAs('ndjson', text, split)).toEqual(whole);
    expect(assembleAs('ndjson', text.replace(/\n/g, '\r\n'), 3)).toEqual(whole);
    // The last line without its newline: whole once the upstream ended the response.
    expect(assembleAs('ndjson', text.slice(0, -1), 0, true)).toEqual(whole);
    const cut = text.slice(0, text.indexOf('"done":true'));
    expect(assembleAs('ndjson', cut, 0, false)).toMatchObject({
      content: 'The sky',
      complete: false,
      usage: null,
    });
  });

  test('Ollama tool calls and a mid-stream error line', () => {
    const a = createStreamAssembler({ framing: 'ndjson' });
    a.push(
      ndjson([
        {
          message: {
            role: 'assistant',
            content: '',
            tool_calls: [{ function: { name: 'get_weather', arguments: { city: 'Paris' } } }],
          },
          done: false,
        },
        { error: 'model runner has unexpectedly stopped' },
      ]),
    );
    expect(a.streamError()).toBe('model runner has unexpectedly stopped');
    expect(a.result(true)).toMatchObject({
      kind: 'ollama',
      tool_calls: [{ type: 'function', name: 'get_weather', arguments: '{"city":"Paris"}' }],
      complete: false,
    });
  });

  test('an NDJSON line beyond the event limit is skipped, not buffered; later lines still count', () => {
    const a = createStreamAssembler({ framing: 'ndjson', maxChars: 10 });
    a.push(ndjson([{ response: 'a', done: false }]));
    a.push('{"response":"');
    for (let i = 0; i < 40; i++) a.push('x'.repeat(64 * 1024));
    a.push(`"}\n${ndjson([{ response: 'b', ...ollamaEnd }])}`);
    expect(a.result()).toMatchObject({ content: 'ab', complete: true, events: 3 });
  });

  // A stream the assembler cannot read has no final event to wait for: how it ended decides.
  test.each([
    ['SSE', 'sse' as const, 'event: progress\ndata: {"pct":50}\n\nevent: progress\ndata: {"pct":100}\n\n'],
    [
      'NDJSON (ollama pull)',
      'ndjson' as const,
      ndjson([{ status: 'pulling manifest' }, { status: 'success' }]),
    ],
  ])(
    'an unknown %s stream is complete when the upstream ended it, not when it was cut',
    (_n, framing, text) => {
      expect(assembleAs(framing, text, 0, true)).toMatchObject({
        kind: 'unknown',
        complete: true,
        events: 2,
      });
      expect(assembleAs(framing, text, 0, false)).toMatchObject({ kind: 'unknown', complete: false });
      // A known format still needs its final event.
      expect(assembleAs('sse', sse([chunk({ content: 'Hi' })]), 0, true)).toMatchObject({ complete: false });
      // So does an unknown one that carried an error event.
      const error = framing === 'sse' ? 'event: error\ndata: {"message":"boom"}\n\n' : '{"error":"boom"}\n';
      expect(assembleAs(framing, `${text}${error}`, 0, true)).toMatchObject({ complete: false });
    },
  );
});

describe('stream framing', () => {
  test.each([
    ['text/event-stream', 'sse'],
    ['Text/Event-Stream; charset=utf-8', 'sse'],
    ['TEXT/EVENT-STREAM', 'sse'],
    ['application/x-ndjson', 'ndjson'],
    ['Application/X-NDJSON; charset=utf-8', 'ndjson'],
    ['application/ndjson', 'ndjson'],
    ['application/json', null],
    ['text/plain', null],
    [undefined, null],
  ])('the framing of content type %s is %s', (contentType, framing) => {
    expect(streamFraming(contentType)).toBe(framing);
  });
});

describe('usage extraction', () => {
  test.each([
    [
      'Ollama /api/chat, not streamed (no usage object)',
      JSON.stringify({
        model: 'llama3',
        message: { role: 'assistant', content: 'says "eval_count": 99 in its text' },
        done: true,
        prompt_eval_count: 26,
        eval_count: 298,
      }),
      { prompt_tokens: 26, completion_tokens: 298, total_tokens: 324 },
    ],
    [
      'llama.cpp /completion, not streamed',
      JSON.stringify({ content: 'hi', stop: true, tokens_evaluated: 5, tokens_predicted: 2, timings: {} }),
      { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 },
    ],
    [
      'Ollama with the whole prompt from its cache (no prompt_eval_count)',
      JSON.stringify({ model: 'llama3', response: 'hi', done: true, eval_count: 12 }),
      { prompt_tokens: 0, completion_tokens: 12, total_tokens: 12 },
    ],
    [
      'Ollama /api/embed (prompt_eval_count alone)',
      JSON.stringify({
        model: 'all-minilm',
        embeddings: [[0.010071029, -0.0017594862]],
        total_duration: 1,
        load_duration: 1,
        prompt_eval_count: 7,
      }),
      { prompt_tokens: 7, completion_tokens: null, total_tokens: 7 },
    ],
    ['a body with neither', JSON.stringify({ data: [] }), null],
    [
      'chat body',
      JSON.stringify({
        id: 'x',
        choices: [{ message: { content: '"usage": {"prompt_tokens": 999}' } }],
        usage: { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 },
      }),
      { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 },
    ],
    [
      'pretty printed',
      JSON.stringify({ usage: { prompt_tokens: 4, total_tokens: 4 } }, null, 2),
      { prompt_tokens: 4, completion_tokens: null, total_tokens: 4 },
    ],
    [
      'responses api',
      JSON.stringify({
        output: [],
        usage: {
          input_tokens: 7,
          output_tokens: 1,
          total_tokens: 8,
          output_tokens_details: { reasoning_tokens: 0 },
        },
      }),
      { prompt_tokens: 7, completion_tokens: 1, total_tokens: 8 },
    ],
    [
      'the usual order, with details after the counts',
      JSON.stringify({
        choices: [],
        usage: {
          prompt_tokens: 25,
          completion_tokens: 36,
          total_tokens: 61,
          prompt_tokens_details: { cached_tokens: 0 },
        },
        system_fingerprint: 'fp',
      }),
      { prompt_tokens: 25, completion_tokens: 36, total_tokens: 61 },
    ],
    [
      'the usual order, pretty printed',
      JSON.stringify({ usage: { prompt_tokens: 5, completion_tokens: 6, total_tokens: 11 } }, null, 2),
      { prompt_tokens: 5, completion_tokens: 6, total_tokens: 11 },
    ],
    [
      'another order',
      JSON.stringify({ usage: { total_tokens: 9, prompt_tokens: 4, completion_tokens: 5 } }),
      { prompt_tokens: 4, completion_tokens: 5, total_tokens: 9 },
    ],
    [
      'counts that are not whole numbers are parsed, not read',
      '{"usage":{"prompt_tokens":1.5,"completion_tokens":2,"total_tokens":3.5}}',
      { prompt_tokens: 1.5, completion_tokens: 2, total_tokens: 3.5 },
    ],
    [
      'a usage object in an earlier message and a later null usage',
      '{"a":{"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}},"usage":null}',
      { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 },
    ],
    ['no usage', JSON.stringify({ data: [] }), null],
    ['truncated body', '{"usage": {"prompt_tokens": 3', null],
  ])('%s', (_name, body, expected) => {
    expect(extractUsage(body)).toEqual(expected);
  });

  test('normaliseUsage derives a missing total', () => {
    expect(normaliseUsage({ input_tokens: 2, output_tokens: 3 })).toEqual({
      prompt_tokens: 2,
      completion_tokens: 3,
      total_tokens: 5,
    });
    expect(normaliseUsage({})).toBeNull();
  });
});
