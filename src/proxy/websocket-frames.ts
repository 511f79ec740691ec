import { constants, createInflateRaw } from 'node:zlib';

/**
 * RFC 6455 frames read from a copy of one direction of a relayed WebSocket, reassembled into messages
 * (RFC 7692 permessage-deflate inflated). Pure: it never writes, and a failure only stops it.
 * Compressed messages are inflated off the event loop (zlib's thread pool), one at a time, so no step run
 * on the loop handles more than one socket read or one memory copy of a message.
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
  /**
   * Its content as read, in pieces of at most a socket read or an inflater chunk: never joined here, so
   * no step copies a whole large message at once.
   */
  | { type: 'text' | 'binary'; parts: Buffer[]; bytes: number; cut?: boolean }
  /** A message whose content was not read: over `maxMessageBytes` (payload or inflated), or not inflatable. */
  | { type: 'skipped'; opcode: 'text' | 'binary'; bytes: number; reason: string }
  | { type: 'close'; code: number | null };

export interface FrameParserOptions {
  /** Frames are masked (client to server). Read from each frame's mask bit; used only to check. */
  masked: boolean;
  /** permessage-deflate for this direction: `contextTakeover` false when no_context_takeover was agreed. */
  deflate: { contextTakeover: boolean } | null;
  /**
   * Largest message read, in payload bytes and again once inflated; larger ones are skipped (not unmasked,
   * nor kept). A function is asked as each message begins. Messages read but not yet handed out (waiting
   * for inflation) are held up to this many bytes in all; past it parsing stops.
   */
  maxMessageBytes: number | (() => number);
  /** Bytes of messages held while waiting for inflation, past which parsing stops; default `maxMessageBytes` (a number). */
  maxQueuedBytes?: number;
  /**
   * A message over `maxMessageBytes` keeps its first `maxMessageBytes` bytes (inflated, when compressed)
   * and comes out `cut`, instead of skipped; the rest of it is neither unmasked nor kept.
   */
  keepPrefix?: boolean;
  /** Messages in order. Called synchronously from `push`, or later when a message before it was compressed. */
  onMessage(message: WebSocketMessage): void;
  /** Called once, in order after the messages read before it, when parsing stops (see `failure`). */
  onFailure?(reason: string): void;
}

export interface FrameParser {
  /** Feed the next bytes of the direction, as relayed. Never throws. */
  push(chunk: Buffer): void;
  /** Why parsing stopped (garbage, an unknown extension, lost compression context); null while it reads. */
  readonly failure: string | null;
  /** Resolves once every message read so far was handed out (compressed ones inflated). Never rejects. */
  idle(): Promise<void>;
}

const OP_CONTINUATION = 0;
const OP_TEXT = 1;
const OP_BINARY = 2;
const OP_CLOSE = 8;
const DEFLATE_TAIL = Buffer.from([0x00, 0x00, 0xff, 0xff]);
/** The LZ77 window a permessage-deflate sender may refer back into (RFC 7692 §7.1.2: 2^15 at most). */
const WINDOW_BYTES = 32 * 1024;

/** Pieces of a message shorter than this are gathered into one Buffer before they are kept. */
const SMALL_PIECE_BYTES = 1024;

/** Output chunks of the inflater: fewer round trips to the thread pool for a large message. */
const INFLATE_CHUNK_BYTES = 64 * 1024;

/** The last `n` bytes of `parts`, copied. */
function lastBytes(parts: Buffer[], n: number): Buffer {
  const tail: Buffer[] = [];
  let have = 0;
  for (let i = parts.length - 1; i >= 0 && have < n; i--) {
    const p = parts[i] as Buffer;
    const take = Math.min(p.length, n - have);
    tail.unshift(p.subarray(p.length - take));
    have += take;
  }
  return Buffer.concat(tail, have);
}

/** A parser for one direction. Messages come out in order through `onMessage`. */
export function createFrameParser(options: FrameParserOptions): FrameParser {
  const { deflate, onMessage } = options;
  const keepPrefix = options.keepPrefix === true;
  const maxFor = (): number =>
    typeof options.maxMessageBytes === 'function' ? options.maxMessageBytes() : options.maxMessageBytes;
  const queueLimit =
    options.maxQueuedBytes ?? (typeof options.maxMessageBytes === 'number' ? options.maxMessageBytes : null);
  let failure: string | null = null;

  // Message handling, in order: a step returns a promise while a compressed message inflates.
  const queue: Array<() => Promise<void> | undefined> = [];
  let running = false;
  let queuedBytes = 0;
  let idleWaiters: Array<() => void> = [];
  const drain = () => {
    running = true;
    while (queue.length > 0) {
      const step = queue.shift() as () => Promise<void> | undefined;
      let pending: Promise<void> | undefined;
      try {
        pending = step();
      } catch {
        // what `onMessage` throws stops nothing here
      }
      if (pending) {
        pending.then(drain, drain);
        return;
      }
    }
    running = false;
    const waiters = idleWaiters;
    idleWaiters = [];
    for (const w of waiters) w();
  };
  const deliver = (step: () => Promise<void> | undefined) => {
    queue.push(step);
    if (!running) drain();
  };

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
  let messageMax = 0;
  // Payload bytes kept of the message: messageMax, but a compressed one cut to its first messageMax
  // bytes inflated needs more of its payload than that.
  let payloadMax = 0;
  let compressed = false;
  let chunks: Buffer[] = [];
  // Small pieces (tiny fragments, small reads) gathered before they join `chunks`: a client sending a
  // message as millions of 1-byte frames would otherwise hold a Buffer object (~160 bytes) per byte.
  let small: Buffer[] = [];
  let smallBytes = 0;
  const keepPiece = (data: Buffer) => {
    if (data.length >= SMALL_PIECE_BYTES) {
      flushSmall();
      chunks.push(data);
      return;
    }
    small.push(data);
    smallBytes += data.length;
    if (small.length >= 1024 || smallBytes >= 16 * SMALL_PIECE_BYTES) flushSmall();
  };
  const flushSmall = () => {
    if (small.length > 0)
      chunks.push(small.length === 1 ? (small[0] as Buffer) : Buffer.concat(small, smallBytes));
    small = [];
    smallBytes = 0;
  };
  const dropChunks = () => {
    chunks = [];
    small = [];
    smallBytes = 0;
  };
  let bytes = 0;
  let kept = 0;
  let oversize = false;
  let control: Buffer[] = [];
  // The last WINDOW_BYTES of inflated output, for a sender that keeps its context between messages.
  let window: Buffer = Buffer.alloc(0);

  /** Stop reading; `now` (a compressed message lost the context): what was read after it is dropped too. */
  const fail = (reason: string, now = false) => {
    if (failure !== null) return;
    failure = reason;
    dropChunks();
    control = [];
    if (now) {
      queue.length = 0;
      queuedBytes = 0;
    }
    deliver(() => {
      options.onFailure?.(reason);
      return undefined;
    });
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
      messageMax = maxFor();
      compressed = rsv1;
      payloadMax = keepPrefix && rsv1 ? Math.max(messageMax, queueLimit ?? 0) : messageMax;
      dropChunks();
      bytes = 0;
      kept = 0;
      oversize = false;
      countPayload(length);
    } else return fail(`unknown data opcode ${opcode}`);
    inPayload = true;
    if (remaining === 0) endFrame();
  };

  const countPayload = (length: number) => {
    bytes += length;
    if (bytes > payloadMax && !oversize) {
      oversize = true;
      if (!keepPrefix) dropChunks();
    }
  };

  const payload = (whole: Buffer) => {
    let part = whole;
    if (opcode < 8 && oversize) {
      if (!keepPrefix || kept >= payloadMax) {
        maskOffset = (maskOffset + whole.length) & 3;
        return;
      }
      part = whole.subarray(0, payloadMax - kept);
    }
    let data: Buffer;
    if (mask !== null) {
      data = Buffer.allocUnsafe(part.length);
      for (let i = 0; i < part.length; i++) data[i] = part[i] ^ mask[(maskOffset + i) & 3];
      maskOffset = (maskOffset + whole.length) & 3;
    } else {
      // Never keep a view of the relayed chunk: it may be reused once written.
      data = Buffer.from(part);
    }
    if (opcode >= 8) control.push(data);
    else {
      keepPiece(data);
      kept += data.length;
    }
  };

  const endFrame = () => {
    inPayload = false;
    headLength = 0;
    if (opcode >= 8) {
      if (opcode === OP_CLOSE) {
        const body = Buffer.concat(control);
        const code = body.length >= 2 ? body.readUInt16BE(0) : null;
        deliver(() => {
          onMessage({ type: 'close', code });
          return undefined;
        });
      }
      control = [];
      return;
    }
    if (fin) endMessage();
  };

  const endMessage = () => {
    const kind = messageOpcode === OP_TEXT ? 'text' : 'binary';
    const wasCompressed = compressed;
    const max = messageMax;
    const size = bytes;
    const cut = oversize && keepPrefix;
    flushSmall();
    const all = oversize && !keepPrefix ? null : chunks;
    const keptBytes = kept;
    messageOpcode = -1;
    dropChunks();
    const skip = (reason: string) => {
      // A sender that keeps its context refers back into this message: the ones after it are unreadable.
      if (wasCompressed && deflate?.contextTakeover) fail(`compression context lost: ${reason}`, true);
      onMessage({ type: 'skipped', opcode: kind, bytes: size, reason });
    };
    if (all === null)
      return deliver(() => {
        skip(`over ${max} bytes`);
        return undefined;
      });
    if (queueLimit !== null && queuedBytes + keptBytes > queueLimit && (running || queue.length > 0))
      return fail('messages arrived faster than they could be inflated');
    queuedBytes += keptBytes;
    if (!wasCompressed)
      return deliver(() => {
        queuedBytes -= keptBytes;
        onMessage({ type: kind, parts: all, bytes: keptBytes, ...(cut ? { cut } : {}) });
        return undefined;
      });
    deliver(() => {
      queuedBytes -= keptBytes;
      // Queued behind others (a burst): the room they left is what is inflated, not the room there was.
      return inflate(all, keepPrefix ? Math.min(max, maxFor()) : max, cut).then(
        (out) => {
          if (typeof out === 'string') return skip(out);
          if (deflate?.contextTakeover) window = lastBytes([window, ...out.parts], WINDOW_BYTES);
          onMessage({ type: kind, ...out, ...(cut || out.cut ? { cut: true } : {}) });
        },
        () => skip('not inflatable'),
      );
    });
  };

  /** Inflates one message on zlib's thread pool: its pieces, or why it was not read. */
  const inflate = (input: Buffer[], max: number, prefixOnly: boolean) =>
    new Promise<{ parts: Buffer[]; bytes: number; cut?: boolean } | string>((resolve, reject) => {
      const inflater = createInflateRaw({
        finishFlush: constants.Z_SYNC_FLUSH,
        chunkSize: INFLATE_CHUNK_BYTES,
        ...(deflate?.contextTakeover && window.length > 0 ? { dictionary: window } : {}),
      });
      const parts: Buffer[] = [];
      let bytes = 0;
      inflater.on('data', (chunk: Buffer) => {
        if (bytes + chunk.length <= max) {
          parts.push(chunk);
          bytes += chunk.length;
          return;
        }
        inflater.destroy();
        if (!keepPrefix) return resolve(`over ${max} bytes inflated`);
        parts.push(chunk.subarray(0, max - bytes));
        resolve({ parts, bytes: max, cut: true });
      });
      inflater.on('error', reject);
      inflater.on('end', () => resolve({ parts, bytes }));
      for (const part of input) inflater.write(part);
      // The tail would be read as the middle of a block of a message cut short.
      if (prefixOnly) inflater.end();
      else inflater.end(DEFLATE_TAIL);
    });

  return {
    get failure() {
      return failure;
    },
    idle() {
      return running || queue.length > 0
        ? new Promise<void>((resolve) => idleWaiters.push(resolve))
        : Promise.resolve();
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
