import { describe, expect, test } from 'vitest';
import { BackgroundResponses } from '../../src/proxy/background-responses.js';

const entry = { model: 'o3-pro', upstreamModel: 'o3-pro', user: 'u-1' };
const queued = (id: string) => JSON.stringify({ id, object: 'response', status: 'queued', usage: null });

describe('BackgroundResponses', () => {
  test('remembers only background creates on a /responses path (as routed: `/v1` taken off), by the id of the answer', () => {
    const b = new BackgroundResponses();
    b.created('/responses', { background: false }, queued('resp_a'), entry);
    b.created('/responses', null, queued('resp_b'), entry);
    b.created('/chat/completions', { background: true }, queued('resp_c'), entry);
    b.created('/responses', { background: true }, '{"error":{"message":"x"}}', entry);
    expect(b.size).toBe(0);
    b.created('/openai/v1/responses', { background: true }, queued('resp_d'), entry);
    expect(b.pendingId('/openai/v1/responses/resp_d')).toBe('resp_d');
    expect(b.pendingId('/responses/resp_d/cancel')).toBe('resp_d');
    expect(b.pendingId('/responses/resp_d/input_items')).toBeNull();
    expect(b.settle('resp_d')).toEqual(entry);
    expect(b.pendingId('/responses/resp_d')).toBeNull();
  });

  test('a streamed create cut before its usage: the id from its response.created event', () => {
    const b = new BackgroundResponses();
    const sse = `event: response.created\ndata: {"type":"response.created","sequence_number":0,"response":{"id":"resp_s","object":"response","status":"queued"}}\n\n`;
    b.created('/responses', { background: true, stream: true }, sse, entry);
    expect(b.pendingId('/responses/resp_s')).toBe('resp_s');
  });

  test('a JSON answer cut at the capture limit still gives its id', () => {
    const b = new BackgroundResponses();
    b.created(
      '/responses',
      { background: true },
      '{"id":"resp_cut","object":"response","instructions":"aaaa',
      entry,
    );
    expect(b.pendingId('/responses/resp_cut')).toBe('resp_cut');
  });

  test('beyond its size the oldest pending response is forgotten', () => {
    const b = new BackgroundResponses(2);
    for (const id of ['resp_1', 'resp_2', 'resp_3'])
      b.created('/responses', { background: true }, queued(id), entry);
    expect(b.size).toBe(2);
    expect(b.pendingId('/responses/resp_1')).toBeNull();
    expect(b.pendingId('/responses/resp_3')).toBe('resp_3');
  });
});
