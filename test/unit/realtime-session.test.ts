import { describe, expect, test } from 'vitest';
import { createRealtimeSession, type RealtimeSessionOptions } from '../../src/proxy/realtime-session.js';
import { encodeFrame, OPCODE } from '../helpers/websocket.js';

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

describe('a Realtime session read from its frames', () => {
  test('usage summed over response.done events; text and transcripts in order; events counted', () => {
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

  test('no response.done: usage null; a session cut without a close frame is incomplete', () => {
    const s = createRealtimeSession(options);
    s.upstream(server({ type: 'session.created' }));
    const r = s.result(true);
    expect(r.usage).toBeNull();
    expect(r.assembled).toMatchObject({ usage: null, complete: false, events: 1, content: '' });
  });

  test('a response whose deltas were not seen takes its text from response.done; function calls are tool calls', () => {
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

  test('bodies: one message a line, binary as a placeholder, pretty JSON made one line, cut at captureBytes', () => {
    const s = createRealtimeSession({ ...options, captureBytes: 60 });
    s.client(
      Buffer.concat([
        encodeFrame(OPCODE.text, '{\n  "type": "session.update"\n}', true),
        encodeFrame(OPCODE.binary, Buffer.alloc(5), true),
        client({ type: 'input_audio_buffer.append', audio: 'QUJD'.repeat(50) }),
      ]),
    );
    const r = s.result(false);
    expect(r.requestBody?.startsWith('{"type":"session.update"}\n[binary message, 5 bytes]\n{"type"')).toBe(
      true,
    );
    expect(Buffer.byteLength(r.requestBody ?? '')).toBe(60);
    expect(r.requestTruncated).toBe(true);
    expect(r.assembled).toBeNull(); // no server event
  });

  test('garbage from the server: what came before is recorded, then a line saying reading stopped', () => {
    const s = createRealtimeSession(options);
    s.upstream(
      Buffer.concat([
        server(responseDone('r1', { input_tokens: 1, output_tokens: 1, total_tokens: 2 })),
        Buffer.from('\xff\xfe not a frame', 'latin1'),
      ]),
    );
    s.upstream(server(responseDone('r2', { input_tokens: 100, output_tokens: 100, total_tokens: 200 })));
    const r = s.result(true);
    expect(r.usage).toEqual({ prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 });
    expect(r.responseBody?.split('\n')[1]).toMatch(/^\[frames not read from here on: /);
  });
});
