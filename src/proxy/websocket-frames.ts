import { constants, inflateRawSync } from 'node:zlib';

/**
 * RFC 6455 frames read from a copy of one direction of a relayed WebSocket, reassembled into messages
 * (RFC 7692 permessage-deflate inflated). Pure: it never writes, and a failure only stops it.
 */

/** What permessage-deflate the upstream's 101 agreed to, per direction; null when none. */
export interface DeflateAgreement {
  /** `server_no_context_takeover`: each server message is compressed on its own. */
  serverNoContextTakeover: boolean;
  /** `client_no_context_takeover`: each client message is compressed on its own. */
  clientNoContextTakeover: boolean;
}

/**
 * The permessage-deflate parameters of a `Sec-WebSocket-Extensions` response header; null when the
 * upstream accepted no permessage-deflate (RSV1 then means an extension the proxy cannot read).
 */
export function negotiatedDeflate(header: string | string[] | undefined): DeflateAgreement | null {
  if (header === undefined) return null;
  const offers = (Array.isArray(header) ? header.join(',') : header).split(',');
  for (const offer of offers) {
    const [name, ...params] = offer.split(';').map((p) => p.trim().toLowerCase());
    if (name !== 'permessage-deflate') continue;
    const names = params.map((p) => p.split('=')[0]?.trim());
    return {
      serverNoContextTakeover: names.includes('server_no_context_takeover'),
      clientNoContextTakeover: names.includes('client_no_context_takeover'),
    };
  }
  return null;
}

/** One message (or close frame) read from the stream. */
export type WebSocketMessage =
  | { type: 'text' | 'binary'; data: Buffer }
  /** A message whose content was not read: over `maxMessageBytes` (payload or inflated), or not inflatable. */
  | { type: 'skipped'; opcode: 'text' | 'binary'; bytes: number; reason: string }
  | { type: 'close'; code: number | null };

export interface FrameParserOptions {
  /** Frames are masked (client to server). Read from each frame's mask bit; used only to check. */
  masked: boolean;
  /** permessage-deflate for this direction: `contextTakeover` false when no_context_takeover was agreed. */
  deflate: { contextTakeover: boolean } | null;
  /** Largest message read, in payload bytes and again once inflated; larger ones are skipped. */
  maxMessageBytes: number;
  onMessage(message: WebSocketMessage): void;
}

export interface FrameParser {
  /** Feed the next bytes of the direction, as relayed. Never throws. */
  push(chunk: Buffer): void;
  /** Why parsing stopped (garbage, an unknown extension, lost compression context); null while it reads. */
  readonly failure: string | null;
}

const OP_CONTINUATION = 0;
const OP_TEXT = 1;
const OP_BINARY = 2;
const OP_CLOSE = 8;
const DEFLATE_TAIL = Buffer.from([0x00, 0x00, 0xff, 0xff]);
/** The LZ77 window a permessage-deflate sender may refer back into (RFC 7692 §7.1.2: 2^15 at most). */
const WINDOW_BYTES = 32 * 1024;

/** A parser for one direction. Messages come out in order through `onMessage`, synchronously. */
export function createFrameParser(options: FrameParserOptions): FrameParser {
  const { deflate, maxMessageBytes, onMessage } = options;
  let failure: string | null = null;

  // The frame header being read: up to 2 + 8 + 4 bytes.
  const head = Buffer.alloc(14);
  let headLength = 0;
  let inPayload = false;

  // The current frame.
  let fin = false;
  let opcode = 0;
  let mask: Buffer | null = null;
  let remaining = 0;
  let maskOffset = 0;

  // The current data message (possibly over several frames), or the current control frame.
  let messageOpcode = -1;
  let compressed = false;
  let chunks: Buffer[] = [];
  let bytes = 0;
  let oversize = false;
  let control: Buffer[] = [];
  // The last WINDOW_BYTES of inflated output, for a sender that keeps its context between messages.
  let window: Buffer = Buffer.alloc(0);

  const fail = (reason: string) => {
    failure = reason;
    chunks = [];
    control = [];
  };

  const headNeeds = (): number => {
    if (headLength < 2) return 2;
    const len7 = head[1] & 0x7f;
    return 2 + (len7 === 126 ? 2 : len7 === 127 ? 8 : 0) + (head[1] & 0x80 ? 4 : 0);
  };

  const startFrame = () => {
    const b0 = head[0];
    const b1 = head[1];
    fin = (b0 & 0x80) !== 0;
    const rsv1 = (b0 & 0x40) !== 0;
    opcode = b0 & 0x0f;
    if ((b0 & 0x30) !== 0) return fail('a frame with RSV2 or RSV3 set (an unknown extension)');
    const len7 = b1 & 0x7f;
    let length = len7;
    let at = 2;
    if (len7 === 126) {
      length = head.readUInt16BE(2);
      at = 4;
    } else if (len7 === 127) {
      const big = head.readBigUInt64BE(2);
      if (big > BigInt(Number.MAX_SAFE_INTEGER)) return fail('a frame length beyond 2^53');
      length = Number(big);
      at = 10;
    }
    mask = b1 & 0x80 ? Buffer.from(head.subarray(at, at + 4)) : null;
    if ((mask !== null) !== options.masked)
      return fail(options.masked ? 'an unmasked client frame' : 'a masked server frame');
    remaining = length;
    maskOffset = 0;
    if (opcode >= 8) {
      if (opcode > 10) return fail(`unknown control opcode ${opcode}`);
      if (!fin || length > 125 || rsv1) return fail('a fragmented, long or compressed control frame');
      control = [];
    } else if (opcode === OP_CONTINUATION) {
      if (messageOpcode === -1) return fail('a continuation frame outside a message');
      if (rsv1) return fail('RSV1 on a continuation frame');
      countPayload(length);
    } else if (opcode === OP_TEXT || opcode === OP_BINARY) {
      if (messageOpcode !== -1) return fail('a new message before the previous one ended');
      if (rsv1 && deflate === null) return fail('RSV1 without permessage-deflate (an unknown extension)');
      messageOpcode = opcode;
      compressed = rsv1;
      chunks = [];
      bytes = 0;
      oversize = false;
      countPayload(length);
    } else return fail(`unknown data opcode ${opcode}`);
    inPayload = true;
    if (remaining === 0) endFrame();
  };

  const countPayload = (length: number) => {
    bytes += length;
    if (bytes > maxMessageBytes && !oversize) {
      oversize = true;
      chunks = [];
    }
  };

  const payload = (part: Buffer) => {
    if (opcode < 8 && oversize) {
      maskOffset = (maskOffset + part.length) & 3;
      return;
    }
    let data: Buffer;
    if (mask !== null) {
      data = Buffer.allocUnsafe(part.length);
      for (let i = 0; i < part.length; i++) data[i] = part[i] ^ mask[(maskOffset + i) & 3];
      maskOffset = (maskOffset + part.length) & 3;
    } else {
      // Never keep a view of the relayed chunk: it may be reused once written.
      data = Buffer.from(part);
    }
    if (opcode >= 8) control.push(data);
    else chunks.push(data);
  };

  const endFrame = () => {
    inPayload = false;
    headLength = 0;
    if (opcode >= 8) {
      if (opcode === OP_CLOSE) {
        const body = Buffer.concat(control);
        onMessage({ type: 'close', code: body.length >= 2 ? body.readUInt16BE(0) : null });
      }
      control = [];
      return;
    }
    if (fin) endMessage();
  };

  const endMessage = () => {
    const kind = messageOpcode === OP_TEXT ? 'text' : 'binary';
    const all = oversize ? null : Buffer.concat(chunks, bytes);
    const wasCompressed = compressed;
    messageOpcode = -1;
    chunks = [];
    const skip = (reason: string) => {
      // A sender that keeps its context refers back into this message: the ones after it are unreadable.
      if (wasCompressed && deflate?.contextTakeover) fail(`compression context lost: ${reason}`);
      onMessage({ type: 'skipped', opcode: kind, bytes, reason });
    };
    if (all === null) return skip(`over ${maxMessageBytes} bytes`);
    if (!wasCompressed) return onMessage({ type: kind, data: all });
    let data: Buffer;
    try {
      data = inflateRawSync(Buffer.concat([all, DEFLATE_TAIL]), {
        finishFlush: constants.Z_SYNC_FLUSH,
        maxOutputLength: maxMessageBytes,
        ...(deflate?.contextTakeover && window.length > 0 ? { dictionary: window } : {}),
      });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      return skip(
        code === 'ERR_BUFFER_TOO_LARGE' ? `over ${maxMessageBytes} bytes inflated` : 'not inflatable',
      );
    }
    if (deflate?.contextTakeover) {
      window =
        data.length >= WINDOW_BYTES
          ? Buffer.from(data.subarray(data.length - WINDOW_BYTES))
          : Buffer.concat([window, data]).subarray(-WINDOW_BYTES);
    }
    onMessage({ type: kind, data });
  };

  return {
    get failure() {
      return failure;
    },
    push(chunk: Buffer) {
      let i = 0;
      try {
        while (i < chunk.length && failure === null) {
          if (!inPayload) {
            const need = headNeeds();
            const take = Math.min(need - headLength, chunk.length - i);
            chunk.copy(head, headLength, i, i + take);
            headLength += take;
            i += take;
            // The first two bytes tell how long the rest of the header is.
            if (headLength === need && headNeeds() === need) startFrame();
            continue;
          }
          const take = Math.min(remaining, chunk.length - i);
          payload(chunk.subarray(i, i + take));
          i += take;
          remaining -= take;
          if (remaining === 0) endFrame();
        }
      } catch (err) {
        fail(`parser error: ${(err as Error).message}`);
      }
    },
  };
}
