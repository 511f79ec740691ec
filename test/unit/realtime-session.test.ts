import { monitorEventLoopDelay } from 'node:perf_hooks';
import { describe, expect, test } from 'vitest';
import {
  createRealtimeSession,
  REALTIME_MAX_TOOL_CALLS,
  type RealtimeSessionOptions,
} from '../../src/proxy/realtime-session.js';
import { encodeFrame, encodeMessage, MessageDeflater, OPCODE } from '../helpers/websocket.js';

const options: RealtimeSessionOptions = {
  deflate: null,
  captureBytes: 64 * 1024,
  maxChars: 64 * 1024,
  maxMessageBytes: 1024 * 1024,
};
const server = (ev: unknown) => encodeFrame(OPCODE.text, JSON.stringify(ev), false);
const client = (ev: unknown) => encodeFrame(OPCODE.text, JSON.stringify(ev), true);
const closeFrame = (masked: boolean) => encodeFrame(OPCODE.close, Buffer.from([0x03, 0xe8]), masked);

function responseDone(id: string, usage: Record<string, number> | undefined, output: unknown[] = []) {
  return {
    type: 'response.done',
    event_id: `ev_${id}`,
    response: { id, status: 'completed', output, usage },
  };
}

describe('a Realtime session read from its frames', async () => {
  test('usage summed over response.done events; text and transcripts in order; events counted', async () => {
    const s = createRealtimeSession(options);
    s.client(client({ type: 'response.create' }));
    s.upstream(
      Buffer.concat([
        server({ type: 'session.created', session: { id: 'sess_1' } }),
        server({
          type: 'response.text.delta',
          response_id: 'r1',
          item_id: 'i1',
          output_index: 0,
          content_index: 0,
          delta: 'Hello',
        }),
        server({
          type: 'response.text.delta',
          response_id: 'r1',
          item_id: 'i1',
          output_index: 0,
          content_index: 0,
          delta: ' there',
        }),
        server(responseDone('r1', { input_tokens: 10, output_tokens: 5, total_tokens: 15 })),
        server({ type: 'response.audio.delta', response_id: 'r2', item_id: 'i2', delta: 'AAAA'.repeat(100) }),
        server({
          type: 'response.output_audio_transcript.delta',
          response_id: 'r2',
          item_id: 'i2',
          output_index: 0,
          content_index: 0,
          delta: 'Hi',
        }),
        server({
          type: 'response.output_audio_transcript.done',
          response_id: 'r2',
          item_id: 'i2',
          output_index: 0,
          content_index: 0,
          transcript: 'Hi!',
        }),
        server({
          type: 'conversation.item.input_audio_transcription.completed',
          item_id: 'u1',
          transcript: 'hello?',
          usage: { type: 'tokens', input_tokens: 7, output_tokens: 3, total_tokens: 10 },
        }),
        server(responseDone('r2', { input_tokens: 20, output_tokens: 30, total_tokens: 50 })),
      ]),
    );
    s.client(closeFrame(true));
    s.upstream(closeFrame(false));
    await s.settled();
    const r = s.result(true);
    expect(r.usage).toEqual({ prompt_tokens: 30, completion_tokens: 35, total_tokens: 65 });
    expect(r.assembled).toEqual({
      kind: 'realtime',
      content: 'Hello there\nHi!',
      tool_calls: [],
      finish_reason: 'completed',
      usage: { prompt_tokens: 30, completion_tokens: 35, total_tokens: 65 },
      complete: true,
      events: 9,
      input_transcription_usage: { prompt_tokens: 7, completion_tokens: 3, total_tokens: 10, seconds: null },
    });
    expect(r.requestBody).toBe('{"type":"response.create"}\n');
    expect(r.responseBody?.split('\n')).toHaveLength(10); // nine events and the final newline
  });

  test('no response.done: usage null; a session cut without a close frame is incomplete', async () => {
    const s = createRealtimeSession(options);
    s.upstream(server({ type: 'session.created' }));
    await s.settled();
    const r = s.result(true);
    expect(r.usage).toBeNull();
    expect(r.assembled).toMatchObject({ usage: null, complete: false, events: 1, content: '' });
  });

  test.each([
    ['no error event', [{ type: 'session.created' }], null],
    [
      'an error event: its message',
      [{ type: 'error', error: { type: 'server_error', code: 'server_error', message: 'Bad' } }],
      'Bad',
    ],
    [
      'a client event refused (invalid_request_error) is no error: the session goes on',
      [
        {
          type: 'error',
          error: { type: 'invalid_request_error', code: 'response_cancel_not_active', message: 'x' },
        },
        { type: 'error', error: { type: 'invalid_request_error', code: 'input_audio_buffer_commit_empty' } },
      ],
      null,
    ],
    [
      'but a session the server ended at its maximum duration (session_expired) is',
      [
        {
          type: 'error',
          error: {
            type: 'invalid_request_error',
            code: 'session_expired',
            message: 'Your session hit the maximum duration of 30 minutes.',
          },
        },
      ],
      'Your session hit the maximum duration of 30 minutes.',
    ],
    ['type not the first key', [{ error: { code: 'c', message: 'Late type' }, type: 'error' }], 'Late type'],
    [
      'no message: the code',
      [{ type: 'error', error: { type: 'server_error', code: 'server_error' } }],
      'server_error',
    ],
    ['neither', [{ type: 'error', error: {} }], 'The upstream sent an error event'],
    [
      'several: the first, and how many',
      [
        { type: 'error', error: { message: 'First' } },
        { type: 'response.done', response: { id: 'r', status: 'failed', status_details: { error: {} } } },
        { type: 'error', error: { message: 'Third' } },
      ],
      'First (the first of 3 errors in the session)',
    ],
    [
      'a cancelled response is no error',
      [{ type: 'response.done', response: { id: 'r', status: 'cancelled' } }],
      null,
    ],
    ['a long message is cut', [{ type: 'error', error: { message: 'x'.repeat(5000) } }], 'x'.repeat(4000)],
  ])('streamError: %s', async (_name, events, expected) => {
    const s = createRealtimeSession(options);
    for (const e of events) s.upstream(server(e));
    await s.settled();
    expect(s.result(true).streamError).toBe(expected);
  });

  test('a response whose deltas were not seen takes its text from response.done; function calls are tool calls', async () => {
    const s = createRealtimeSession(options);
    s.upstream(
      server(
        responseDone('r1', { input_tokens: 1, output_tokens: 2, total_tokens: 3 }, [
          { type: 'message', content: [{ type: 'audio', transcript: 'from the final output' }] },
          { type: 'function_call', call_id: 'call_1', name: 'get_weather', arguments: '{"city":"Oslo"}' },
        ]),
      ),
    );
    expect(s.result(false).assembled).toMatchObject({
      content: 'from the final output',
      tool_calls: [{ id: 'call_1', type: 'function', name: 'get_weather', arguments: '{"city":"Oslo"}' }],
    });
  });

  test('bodies: one message a line, binary as a placeholder, pretty JSON made one line, cut at captureBytes', async () => {
    const s = createRealtimeSession({ ...options, captureBytes: 60 });
    s.client(
      Buffer.concat([
        encodeFrame(OPCODE.text, '{\n  "type": "session.update"\n}', true),
        encodeFrame(OPCODE.binary, Buffer.alloc(5), true),
        client({ type: 'conversation.item.create', item: { text: 'x'.repeat(50) } }),
      ]),
    );
    await s.settled();
    const r = s.result(false);
    // Of a message longer than the room left, what fits.
    expect(r.requestBody).toBe('{"type":"session.update"}\n[binary message, 5 bytes]\n{"type":');
    expect(Buffer.byteLength(r.requestBody ?? '')).toBe(60);
    expect(r.requestTruncated).toBe(true);
    expect(r.assembled).toBeNull(); // no server event
  });

  test('garbage from the server: what came before is recorded, then a line saying reading stopped', async () => {
    const s = createRealtimeSession(options);
    s.upstream(
      Buffer.concat([
        server(responseDone('r1', { input_tokens: 1, output_tokens: 1, total_tokens: 2 })),
        Buffer.from('\xff\xfe not a frame', 'latin1'),
      ]),
    );
    s.upstream(server(responseDone('r2', { input_tokens: 100, output_tokens: 100, total_tokens: 200 })));
    await s.settled();
    const r = s.result(true);
    expect(r.usage).toEqual({ prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 });
    expect(r.responseBody?.split('\n')[1]).toMatch(/^\[frames not read from here on: /);
  });
});

describe('bounded work and memory', () => {
  /** Feeds `bytes` in socket-read-sized pieces, each in its own turn of the event loop, as a relay would. */
  async function feed(push: (chunk: Buffer) => void, bytes: Buffer) {
    for (let at = 0; at < bytes.length; at += 64 * 1024) {
      push(bytes.subarray(at, at + 64 * 1024));
      await new Promise((resolve) => setImmediate(resolve));
    }
  }

  test('a message inflating to 16 MiB and 12 MiB plain messages never stall the event loop', async () => {
    const d = new MessageDeflater(true);
    const deflated = await d.compress(
      `{"type":"conversation.item.created","item":"${'a'.repeat(16 * 1024 * 1024 - 60)}"}`,
    );
    const image = `data:image/png;base64,${'QUJD'.repeat(3 * 1024 * 1024)}`;
    const clientImage = client({
      type: 'conversation.item.create',
      item: { content: [{ image_url: image }] },
    });
    const bomb = encodeMessage(OPCODE.text, deflated, { masked: false, compressed: true });
    const serverEcho = Buffer.concat([
      server({ type: 'conversation.item.created', item: { content: [{ image_url: image }] } }),
      server(responseDone('r1', { input_tokens: 3, output_tokens: 4, total_tokens: 7 })),
    ]);
    const s = createRealtimeSession({
      deflate: { serverNoContextTakeover: false, clientNoContextTakeover: false },
      captureBytes: 4 * 1024 * 1024,
      maxChars: 4 * 1024 * 1024,
      maxMessageBytes: 16 * 1024 * 1024,
    });
    const loop = monitorEventLoopDelay({ resolution: 1 });
    loop.enable();
    await feed(s.upstream, bomb);
    await feed(s.client, clientImage);
    await feed(s.upstream, serverEcho);
    await s.settled();
    loop.disable();
    const r = s.result(true);
    // Read, not skipped: the usage after them is counted.
    expect(r.usage).toEqual({ prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 });
    expect(r.responseTruncated).toBe(true);
    expect(loop.max / 1e6).toBeLessThan(50);
  });

  const A = 'UklGRiQAAABXQVZF'.repeat(200); // 3200 characters of base64
  const P = '[base64 audio, 3200 characters]';
  const itemCreate = (content: string) =>
    `{"type":"conversation.item.create","item":{"type":"message","role":"user","content":[${content}]}}`;
  test.each([
    [
      'an input_audio part',
      itemCreate(`{"type":"input_audio","audio":"${A}"}`),
      itemCreate(`{"type":"input_audio","audio":"${P}"}`),
    ],
    [
      'two audio parts (GA `audio`, a replayed `output_audio`), text between, type after the audio',
      itemCreate(
        `{"type":"audio","audio":"${A}"},{"type":"input_text","text":"and {this}"},{"audio":"${A}","transcript":"hi","type":"output_audio"}`,
      ),
      itemCreate(
        `{"type":"audio","audio":"${P}"},{"type":"input_text","text":"and {this}"},{"audio":"${P}","transcript":"hi","type":"output_audio"}`,
      ),
    ],
    [
      'pretty-printed: made one line',
      `{\n  "type": "conversation.item.create",\n  "item": {"content": [{"type" : "input_audio", "audio" : "${A}"}]}\n}`,
      `{"type":"conversation.item.create","item":{"content":[{"type":"input_audio","audio":"${P}"}]}}`,
    ],
    [
      'an `audio` string in a part that is not audio is kept',
      itemCreate(`{"type":"input_text","text":"x","audio":"AAAA"}`),
      itemCreate(`{"type":"input_text","text":"x","audio":"AAAA"}`),
    ],
    [
      'text that quotes an audio part is kept',
      itemCreate(JSON.stringify({ type: 'input_text', text: '{"type":"input_audio","audio":"AAAA"}' })),
      itemCreate(JSON.stringify({ type: 'input_text', text: '{"type":"input_audio","audio":"AAAA"}' })),
    ],
  ])('conversation.item.create: %s', async (_name, sent, stored) => {
    const s = createRealtimeSession(options);
    s.client(encodeFrame(OPCODE.text, sent, true));
    await s.settled();
    expect(s.result(false).requestBody).toBe(`${stored}\n`);
  });

  test('conversation.item.create over REALTIME_PARSE_MAX_BYTES: its audio is a placeholder too', async () => {
    const audio = 'QUJD'.repeat(500_000); // 2 MB
    const s = createRealtimeSession({
      ...options,
      captureBytes: 4 * 1024 * 1024,
      maxMessageBytes: 4 * 1024 * 1024,
    });
    s.client(
      client({ type: 'conversation.item.create', item: { content: [{ type: 'input_audio', audio }] } }),
    );
    s.client(client({ type: 'response.create' }));
    await s.settled();
    const r = s.result(false);
    expect(r.requestBody).toBe(
      '{"type":"conversation.item.create","item":{"content":[{"type":"input_audio","audio":"[base64 audio, 2000000 characters]"}]}}\n' +
        '{"type":"response.create"}\n',
    );
  });

  test('audio (beta and GA events) is stored as a placeholder; text events after it still fit', async () => {
    const audio = 'QUJD'.repeat(100_000);
    // Room for every line with the audio elided, not for one with it.
    const s = createRealtimeSession({ ...options, captureBytes: 600_000 });
    s.client(
      Buffer.concat([
        client({ type: 'input_audio_buffer.append', audio }),
        // an event_id that reads like the key, and spaces around the colon
        encodeFrame(
          OPCODE.text,
          `{"type": "input_audio_buffer.append", "event_id": "audio", "audio" : "${audio}"}`,
          true,
        ),
      ]),
    );
    s.upstream(
      Buffer.concat([
        server({ type: 'response.audio.delta', response_id: 'r1', item_id: 'i1', delta: audio }),
        server({ type: 'response.output_audio.delta', response_id: 'r1', item_id: 'i1', delta: audio }),
        server({
          type: 'response.output_audio_transcript.delta',
          response_id: 'r1',
          item_id: 'i1',
          delta: 'Hi',
        }),
      ]),
    );
    await s.settled();
    const r = s.result(false);
    expect(r.requestBody).toBe(
      '{"type":"input_audio_buffer.append","audio":"[base64 audio, 400000 characters]"}\n' +
        '{"type": "input_audio_buffer.append", "event_id": "audio", "audio" : "[base64 audio, 400000 characters]"}\n',
    );
    expect(r.responseBody?.split('\n')).toEqual([
      '{"type":"response.audio.delta","response_id":"r1","item_id":"i1","delta":"[base64 audio, 400000 characters]"}',
      '{"type":"response.output_audio.delta","response_id":"r1","item_id":"i1","delta":"[base64 audio, 400000 characters]"}',
      '{"type":"response.output_audio_transcript.delta","response_id":"r1","item_id":"i1","delta":"Hi"}',
      '',
    ]);
    expect(r.responseTruncated).toBe(false);
    expect(r.assembled?.content).toBe('Hi');
  });

  test('tool calls: at most REALTIME_MAX_TOOL_CALLS, their arguments within maxChars together', async () => {
    const s = createRealtimeSession({ ...options, maxChars: 1000 });
    const call = (n: number) => ({
      type: 'function_call',
      call_id: `call_${n}`,
      name: 'f',
      arguments: 'a'.repeat(100),
    });
    s.upstream(
      server(
        responseDone(
          'r1',
          undefined,
          Array.from({ length: 300 }, (_, n) => call(n)),
        ),
      ),
    );
    await s.settled();
    const calls = s.result(true).assembled?.tool_calls ?? [];
    expect(calls).toHaveLength(REALTIME_MAX_TOOL_CALLS);
    expect(calls.reduce((n, c) => n + (c.arguments?.length ?? 0), 0)).toBe(1000);
  });
});
