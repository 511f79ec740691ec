import { describe, expect, test } from 'vitest';
import {
  createFrameParser,
  type FrameParserOptions,
  negotiatedDeflate,
  type WebSocketMessage,
} from '../../src/proxy/websocket-frames.js';
import { encodeFrame, encodeMessage, MessageDeflater, OPCODE } from '../helpers/websocket.js';

/** Parse `bytes` fed in `chunks` pieces of the sizes given (the rest in one piece); messages as readable values. */
async function parse(bytes: Buffer, o: Partial<FrameParserOptions> = {}, cuts: number[] = []) {
  const out: unknown[] = [];
  const parser = createFrameParser({
    masked: false,
    deflate: null,
    maxMessageBytes: 1024 * 1024,
    onMessage: (m: WebSocketMessage) =>
      out.push(
        m.type === 'text' || m.type === 'binary' ? { [m.type]: Buffer.concat(m.parts).toString() } : m,
      ),
    ...o,
  });
  let at = 0;
  for (const cut of [...cuts, bytes.length]) {
    parser.push(bytes.subarray(at, cut));
    at = cut;
  }
  await parser.idle();
  return { messages: out, failure: parser.failure };
}

const ping = (masked: boolean) => encodeFrame(OPCODE.ping, 'are you there', masked);
const close1000 = (masked: boolean) => {
  const code = Buffer.alloc(2);
  code.writeUInt16BE(1000);
  return encodeFrame(OPCODE.close, code, masked);
};

describe('frames into messages', () => {
  test.each([
    ['server (unmasked)', false],
    ['client (masked)', true],
  ])('%s: text and binary messages, 7-, 16- and 64-bit lengths, a close frame', async (_, masked) => {
    const medium = 'm'.repeat(300);
    const long = 'l'.repeat(70_000);
    const bytes = Buffer.concat([
      encodeFrame(OPCODE.text, '{"type":"a"}', masked),
      encodeFrame(OPCODE.binary, 'bin', masked),
      encodeFrame(OPCODE.text, medium, masked),
      encodeFrame(OPCODE.text, long, masked),
      encodeFrame(OPCODE.text, '', masked),
      close1000(masked),
    ]);
    expect(await parse(bytes, { masked })).toEqual({
      messages: [
        { text: '{"type":"a"}' },
        { binary: 'bin' },
        { text: medium },
        { text: long },
        { text: '' },
        { type: 'close', code: 1000 },
      ],
      failure: null,
    });
  });

  test('a message fragmented over three frames with a ping between, fed at every split point', async () => {
    const text = '{"type":"session.update","session":{"instructions":"fragmented"}}';
    const bytes = Buffer.concat([
      encodeMessage(OPCODE.text, text, { masked: true, fragments: 3, interleave: ping(true) }),
      encodeFrame(OPCODE.text, 'next', true),
    ]);
    for (let cut = 0; cut <= bytes.length; cut++)
      expect((await parse(bytes, { masked: true }, [cut])).messages).toEqual([{ text }, { text: 'next' }]);
    // and one byte at a time
    const cuts = Array.from({ length: bytes.length }, (_, i) => i);
    expect((await parse(bytes, { masked: true }, cuts)).messages).toEqual([{ text }, { text: 'next' }]);
  });

  test('a message in 200,000 one-byte fragments is held in a few pieces, not one Buffer per byte', async () => {
    const text = 'x'.repeat(200_000);
    const bytes = encodeMessage(OPCODE.text, text, { masked: true, fragments: text.length });
    let got: { parts: number; text: string } | null = null;
    const parser = createFrameParser({
      masked: true,
      deflate: null,
      maxMessageBytes: 1024 * 1024,
      onMessage: (m) => {
        if (m.type === 'text') got = { parts: m.parts.length, text: Buffer.concat(m.parts).toString() };
      },
    });
    parser.push(bytes);
    await parser.idle();
    expect(got).toEqual({ parts: expect.any(Number), text });
    expect((got as unknown as { parts: number }).parts).toBeLessThanOrEqual(200);
  });

  test('a message over maxMessageBytes is skipped, with its size; the next one is read', async () => {
    const bytes = Buffer.concat([
      encodeMessage(OPCODE.text, 'x'.repeat(100), { masked: false, fragments: 2 }),
      encodeFrame(OPCODE.text, 'small', false),
    ]);
    expect(await parse(bytes, { maxMessageBytes: 50 }, [10, 60])).toEqual({
      messages: [{ type: 'skipped', opcode: 'text', bytes: 100, reason: 'over 50 bytes' }, { text: 'small' }],
      failure: null,
    });
  });

  test.each([
    ['garbage', Buffer.from('GET / HTTP/1.1\r\n\r\n'), /RSV2 or RSV3|unknown/],
    ['an unknown data opcode', encodeFrame(3, 'x', false), /unknown data opcode 3/],
    ['an unknown control opcode', encodeFrame(11, 'x', false), /unknown control opcode 11/],
    [
      'RSV2 (an unknown extension)',
      (() => {
        const f = encodeFrame(OPCODE.text, 'x', false);
        f[0] |= 0x20;
        return f;
      })(),
      /RSV2 or RSV3/,
    ],
    [
      'RSV1 without permessage-deflate',
      encodeMessage(OPCODE.text, 'x', { masked: false, compressed: true }),
      /RSV1 without/,
    ],
    ['a continuation frame outside a message', encodeFrame(0, 'x', false), /continuation frame outside/],
    ['a masked server frame', encodeFrame(OPCODE.text, 'x', true), /masked server frame/],
  ])('%s stops parsing: what came before is kept, nothing after is read', async (_, bad, reason) => {
    const bytes = Buffer.concat([
      encodeFrame(OPCODE.text, 'before', false),
      bad,
      encodeFrame(OPCODE.text, 'after', false),
    ]);
    const { messages, failure } = await parse(bytes);
    expect(messages).toEqual([{ text: 'before' }]);
    expect(failure).toMatch(reason);
  });
});

describe('permessage-deflate', () => {
  test.each([
    ['permessage-deflate', { serverNoContextTakeover: false, clientNoContextTakeover: false }],
    [
      'permessage-deflate; server_no_context_takeover; client_max_window_bits=15',
      { serverNoContextTakeover: true, clientNoContextTakeover: false },
    ],
    [
      'x-other, Permessage-Deflate; client_no_context_takeover ; server_no_context_takeover',
      { serverNoContextTakeover: true, clientNoContextTakeover: true },
    ],
    ['x-webkit-deflate-frame', null],
    [undefined, null],
  ])('negotiatedDeflate(%j)', (header, expected) => {
    expect(negotiatedDeflate(header)).toEqual(expected);
  });

  test.each([
    ['with context takeover', true],
    ['without context takeover', false],
  ])('compressed messages %s are inflated, fragmented or not, masked or not', async (_, takeover) => {
    for (const masked of [false, true]) {
      const deflater = new MessageDeflater(takeover);
      const texts = [
        '{"type":"response.text.delta","delta":"hello hello hello"}',
        '{"type":"response.text.delta","delta":"hello hello hello again"}',
        '{"type":"response.text.delta","delta":"hello hello hello again and again"}',
      ];
      const frames: Buffer[] = [];
      for (const [i, t] of texts.entries())
        frames.push(
          encodeMessage(OPCODE.text, await deflater.compress(t), {
            masked,
            compressed: true,
            fragments: i + 1,
            interleave: ping(masked),
          }),
        );
      // an uncompressed message in between is allowed (RSV1 clear)
      frames.splice(1, 0, encodeFrame(OPCODE.text, 'plain', masked));
      const bytes = Buffer.concat(frames);
      const cuts = Array.from({ length: bytes.length }, (_, i) => i);
      expect(await parse(bytes, { masked, deflate: { contextTakeover: takeover } }, cuts)).toEqual({
        messages: [{ text: texts[0] }, { text: 'plain' }, { text: texts[1] }, { text: texts[2] }],
        failure: null,
      });
    }
  });

  test('a message inflating beyond maxMessageBytes: skipped without context takeover, parsing stops with it', async () => {
    const big = `{"delta":"${'a'.repeat(5000)}"}`;
    const make = async (takeover: boolean) => {
      const d = new MessageDeflater(takeover);
      return Buffer.concat([
        encodeMessage(OPCODE.text, await d.compress(big), { masked: false, compressed: true }),
        encodeMessage(OPCODE.text, await d.compress('{"small":1}'), { masked: false, compressed: true }),
      ]);
    };
    expect(
      await parse(await make(false), { deflate: { contextTakeover: false }, maxMessageBytes: 1000 }),
    ).toEqual({
      messages: [
        { type: 'skipped', opcode: 'text', bytes: expect.any(Number), reason: 'over 1000 bytes inflated' },
        { text: '{"small":1}' },
      ],
      failure: null,
    });
    const kept = await parse(await make(true), { deflate: { contextTakeover: true }, maxMessageBytes: 1000 });
    expect(kept.messages).toEqual([
      { type: 'skipped', opcode: 'text', bytes: expect.any(Number), reason: 'over 1000 bytes inflated' },
    ]);
    expect(kept.failure).toBe('compression context lost: over 1000 bytes inflated');
  });
});

describe('keepPrefix (the client direction once its body is nearly full)', () => {
  test.each([
    ['plain', false],
    ['compressed', true],
  ])(
    '%s: a message over maxMessageBytes comes out cut, with its first maxMessageBytes bytes',
    async (_, compressed) => {
      const text = `{"type":"conversation.item.create","item":"${'x'.repeat(5000)}"}`;
      const payload = compressed ? await new MessageDeflater(false).compress(text) : text;
      const bytes = encodeMessage(OPCODE.text, payload, { masked: true, compressed, fragments: 2 });
      const out: WebSocketMessage[] = [];
      const parser = createFrameParser({
        masked: true,
        deflate: compressed ? { contextTakeover: false } : null,
        maxMessageBytes: 40,
        maxQueuedBytes: 1024 * 1024,
        keepPrefix: true,
        onMessage: (m) => out.push(m),
      });
      for (let at = 0; at < bytes.length; at += 7) parser.push(bytes.subarray(at, at + 7));
      await parser.idle();
      expect(out).toHaveLength(1);
      const m = out[0] as Extract<WebSocketMessage, { parts: Buffer[] }>;
      expect({ type: m.type, cut: m.cut, bytes: m.bytes }).toEqual({ type: 'text', cut: true, bytes: 40 });
      expect(Buffer.concat(m.parts).toString()).toBe(text.slice(0, 40));
    },
  );

  test('compressed messages queued before the body filled are inflated only as far as the room left then', async () => {
    const text = `{"type":"input_audio_buffer.append","audio":"${'A'.repeat(100_000)}"}`;
    const deflater = new MessageDeflater(false);
    const one = encodeMessage(OPCODE.text, await deflater.compress(text), { masked: true, compressed: true });
    let room = 1000;
    const sizes: number[] = [];
    const parser = createFrameParser({
      masked: true,
      deflate: { contextTakeover: false },
      maxMessageBytes: () => room + 1,
      maxQueuedBytes: 1024 * 1024,
      keepPrefix: true,
      onMessage: (m) => {
        if (m.type !== 'text') return;
        sizes.push(m.bytes);
        room = Math.max(0, room - m.bytes); // what the request body does with it
      },
    });
    // A burst: all three are queued before the first is inflated.
    parser.push(Buffer.concat([one, one, one]));
    await parser.idle();
    expect(sizes).toEqual([1001, 1, 1]);
  });
});
