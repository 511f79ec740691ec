import { createHash, randomBytes } from 'node:crypto';
import { createServer, type IncomingHttpHeaders, type IncomingMessage, request } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { constants, createDeflateRaw, type DeflateRaw } from 'node:zlib';

/**
 * Just enough RFC 6455 for tests, on node:http and node:net alone (Node 20 has no stable global
 * WebSocket): the handshake, masking, messages in one frame or fragmented, permessage-deflate (RFC 7692)
 * compression on the sending side.
 */

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
export const OPCODE = { text: 1, binary: 2, close: 8, ping: 9, pong: 10 } as const;

export interface Frame {
  opcode: number;
  payload: Buffer;
}

/** Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 §4.2.2). */
export function acceptKey(key: string): string {
  return createHash('sha1')
    .update(key + GUID)
    .digest('base64');
}

/** One final frame; `masked` as a client must send it (§5.3), unmasked as a server does. */
export function encodeFrame(opcode: number, payload: Buffer | string, masked: boolean): Buffer {
  const data = Buffer.from(payload);
  const len = data.length;
  const head = Buffer.alloc(len < 126 ? 2 : len < 65536 ? 4 : 10);
  head[0] = 0x80 | opcode;
  if (len < 126) head[1] = len;
  else if (len < 65536) {
    head[1] = 126;
    head.writeUInt16BE(len, 2);
  } else {
    head[1] = 127;
    head.writeBigUInt64BE(BigInt(len), 2);
  }
  if (!masked) return Buffer.concat([head, data]);
  head[1] |= 0x80;
  const mask = randomBytes(4);
  for (let i = 0; i < len; i++) data[i] ^= mask[i & 3];
  return Buffer.concat([head, mask, data]);
}

/**
 * Call `onFrame` for every complete frame arriving on `socket`, unmasked. Read a chunk at a time (never
 * joining what came so far), so a test relaying big messages does not stall its own event loop;
 * `keepPayload` false for an opcode hands that frame out with an empty payload.
 */
export function readFrames(
  socket: Duplex,
  onFrame: (frame: Frame) => void,
  keepPayload: (opcode: number) => boolean = () => true,
): void {
  let head = Buffer.alloc(0);
  let payload: Buffer[] | null = null;
  let opcode = 0;
  let remaining = 0;
  let mask: Buffer | null = null;
  let maskAt = 0;
  let keep = true;
  const headNeeds = () => {
    if (head.length < 2) return 2;
    const len7 = head[1] & 0x7f;
    return 2 + (len7 === 126 ? 2 : len7 === 127 ? 8 : 0) + (head[1] & 0x80 ? 4 : 0);
  };
  const endFrame = () => {
    onFrame({ opcode, payload: Buffer.concat(payload ?? []) });
    payload = null;
    head = Buffer.alloc(0);
  };
  socket.on('data', (chunk: Buffer) => {
    let i = 0;
    while (i < chunk.length) {
      if (payload === null) {
        const need = headNeeds();
        const take = Math.min(need - head.length, chunk.length - i);
        head = Buffer.concat([head, chunk.subarray(i, i + take)]);
        i += take;
        if (head.length < need || headNeeds() !== need) continue;
        const len7 = head[1] & 0x7f;
        remaining =
          len7 === 126 ? head.readUInt16BE(2) : len7 === 127 ? Number(head.readBigUInt64BE(2)) : len7;
        mask = head[1] & 0x80 ? head.subarray(need - 4, need) : null;
        maskAt = 0;
        opcode = head[0] & 0x0f;
        keep = keepPayload(opcode);
        payload = [];
        if (remaining === 0) endFrame();
        continue;
      }
      const take = Math.min(remaining, chunk.length - i);
      if (keep) {
        const part = Buffer.from(chunk.subarray(i, i + take));
        if (mask) for (let k = 0; k < part.length; k++) part[k] ^= mask[(maskAt + k) & 3];
        payload.push(part);
      }
      maskAt += take;
      i += take;
      remaining -= take;
      if (remaining === 0) endFrame();
    }
  });
}

/**
 * The server side of an echo WebSocket on an upgraded socket: answers 101, sends every text or binary
 * frame back, answers ping with pong and close with close (then ends the connection). False when the
 * request was no WebSocket handshake (answered 400).
 */
export function serveEchoWebSocket(req: IncomingMessage, socket: Duplex, head: Buffer): boolean {
  const key = req.headers['sec-websocket-key'];
  if (typeof key !== 'string' || String(req.headers.upgrade).toLowerCase() !== 'websocket') {
    socket.end('HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n');
    return false;
  }
  socket.on('error', () => undefined);
  // An upgraded server socket stays half-open after the peer's end: a WebSocket server closes too.
  socket.on('end', () => socket.end());
  socket.write(
    `HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: ${acceptKey(key)}\r\nx-request-id: req_fake_ws\r\n\r\n`,
  );
  if (head.length > 0) socket.unshift(head);
  readFrames(socket, ({ opcode, payload }) => {
    if (opcode === OPCODE.text || opcode === OPCODE.binary) socket.write(encodeFrame(opcode, payload, false));
    else if (opcode === OPCODE.ping) socket.write(encodeFrame(OPCODE.pong, payload, false));
    else if (opcode === OPCODE.close) socket.end(encodeFrame(OPCODE.close, payload, false));
  });
  return true;
}

/** A WebSocket client connection after a 101. */
export interface TestWebSocket {
  headers: IncomingHttpHeaders;
  socket: Duplex;
  /** Send a text message (one masked frame). */
  send(text: string): void;
  /** The next frame from the server. */
  next(timeoutMs?: number): Promise<Frame>;
  /** Send a close frame and wait for the connection to close. */
  close(): Promise<void>;
}

export type WebSocketAnswer =
  | { status: 101; ws: TestWebSocket }
  | { status: number; headers: IncomingHttpHeaders; body: string; ws: null };

/**
 * Open a WebSocket with http.request and its 'upgrade' event: resolves with the connection after a 101
 * (whose Sec-WebSocket-Accept it checks), or with any other answer's status, headers and body.
 */
export function openWebSocket(url: string, headers: Record<string, string> = {}): Promise<WebSocketAnswer> {
  const key = randomBytes(16).toString('base64');
  return new Promise((resolve, reject) => {
    const req = request(url, {
      headers: {
        connection: 'Upgrade',
        upgrade: 'websocket',
        'sec-websocket-version': '13',
        'sec-websocket-key': key,
        ...headers,
      },
    });
    req.on('error', reject);
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', reject);
      res.on('end', () =>
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          body: Buffer.concat(chunks).toString(),
          ws: null,
        }),
      );
    });
    req.on('upgrade', (res, socket, head) => {
      if (res.headers['sec-websocket-accept'] !== acceptKey(key)) {
        socket.destroy();
        reject(new Error(`bad sec-websocket-accept: ${res.headers['sec-websocket-accept']}`));
        return;
      }
      const frames: Frame[] = [];
      const waiters: ((f: Frame) => void)[] = [];
      if (head.length > 0) socket.unshift(head);
      readFrames(socket, (f) => {
        const w = waiters.shift();
        if (w) w(f);
        else frames.push(f);
      });
      socket.on('error', () => undefined);
      const closed = new Promise<void>((r) => socket.once('close', () => r()));
      resolve({
        status: 101,
        ws: {
          headers: res.headers,
          socket,
          send: (text) => socket.write(encodeFrame(OPCODE.text, text, true)),
          next: (timeoutMs = 5000) => {
            const f = frames.shift();
            if (f) return Promise.resolve(f);
            return new Promise((res2, rej) => {
              const t = setTimeout(() => rej(new Error(`no frame within ${timeoutMs} ms`)), timeoutMs);
              waiters.push((frame) => {
                clearTimeout(t);
                res2(frame);
              });
            });
          },
          close: async () => {
            const code = Buffer.alloc(2);
            code.writeUInt16BE(1000);
            if (socket.writable) socket.write(encodeFrame(OPCODE.close, code, true));
            await closed;
          },
        },
      });
    });
    req.end();
  });
}

export interface MessageOptions {
  /** Masked, as a client must send (§5.3). */
  masked: boolean;
  /** Split the payload into this many frames (a first frame, then continuation frames). */
  fragments?: number;
  /** Set RSV1 on the first frame: the payload is compressed (permessage-deflate). */
  compressed?: boolean;
  /** A control frame (ping) to put between the first and second fragments. */
  interleave?: Buffer;
}

/** One message as frames, in one buffer: fragmented, compressed (RSV1) and with a ping in between as asked. */
export function encodeMessage(opcode: number, payload: Buffer | string, o: MessageOptions): Buffer {
  const data = Buffer.from(payload);
  const n = Math.max(1, o.fragments ?? 1);
  const size = Math.ceil(data.length / n);
  const frames: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    const part = data.subarray(i * size, Math.min(data.length, (i + 1) * size));
    const frame = encodeFrame(i === 0 ? opcode : 0, part, o.masked);
    if (i < n - 1) frame[0] &= 0x7f; // not FIN
    if (i === 0 && o.compressed) frame[0] |= 0x40; // RSV1
    frames.push(frame);
    if (i === 0 && o.interleave) frames.push(o.interleave);
  }
  return Buffer.concat(frames);
}

/**
 * A permessage-deflate sender (RFC 7692 §7.2.1): each message compressed and flushed, the trailing
 * 00 00 ff ff removed. With `contextTakeover` one compressor (its window) serves every message; without,
 * each message gets a fresh one.
 */
export class MessageDeflater {
  private deflate: DeflateRaw | null = null;

  constructor(private readonly contextTakeover: boolean) {}

  compress(text: string | Buffer): Promise<Buffer> {
    if (!this.contextTakeover || this.deflate === null) this.deflate = createDeflateRaw();
    const deflate = this.deflate;
    const out: Buffer[] = [];
    const onData = (c: Buffer) => out.push(c);
    deflate.on('data', onData);
    return new Promise((resolve, reject) => {
      deflate.write(text, (err) => {
        if (err) return reject(err);
        deflate.flush(constants.Z_SYNC_FLUSH, () => {
          deflate.off('data', onData);
          const all = Buffer.concat(out);
          if (!all.subarray(-4).equals(Buffer.from([0, 0, 0xff, 0xff])))
            return reject(new Error('a sync flush that does not end in 00 00 ff ff'));
          resolve(all.subarray(0, all.length - 4));
        });
      });
    });
  }
}

/** A scripted Realtime upstream: answers every handshake with a 101 and leaves the session to the test. */
export interface ScriptedWebSocketUpstream {
  baseUrl: string;
  /** The upstream side of each session, in order: write server frames to it. */
  sessions: Socket[];
  /** Every byte each session received from the proxy. */
  received: Buffer[][];
  close(): Promise<void>;
}

/**
 * Start a scripted upstream on 127.0.0.1, port 0. `extensions` is sent as the 101's
 * Sec-WebSocket-Extensions (e.g. `permessage-deflate`). A close frame from the client is answered with a
 * close frame, then the connection is ended.
 */
export async function startScriptedWebSocketUpstream(
  extensions?: string,
): Promise<ScriptedWebSocketUpstream> {
  const sessions: Socket[] = [];
  const received: Buffer[][] = [];
  const server = createServer((_req, res) => {
    res.statusCode = 404;
    res.end();
  });
  server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
    const key = String(req.headers['sec-websocket-key']);
    socket.on('error', () => undefined);
    socket.on('end', () => socket.end());
    socket.write(
      `HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: ${acceptKey(key)}\r\n${extensions ? `sec-websocket-extensions: ${extensions}\r\n` : ''}\r\n`,
    );
    const bytes: Buffer[] = [];
    received.push(bytes);
    sessions.push(socket);
    if (head.length > 0) socket.unshift(head);
    socket.on('data', (c: Buffer) => bytes.push(c));
    readFrames(
      socket,
      ({ opcode, payload }) => {
        if (opcode === OPCODE.close && socket.writable) socket.end(encodeFrame(OPCODE.close, payload, false));
      },
      (opcode) => opcode === OPCODE.close,
    );
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const { port } = server.address() as AddressInfo;
  return {
    baseUrl: `http://127.0.0.1:${port}/v1`,
    sessions,
    received,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        for (const s of sessions) s.destroy();
        server.close(() => r());
      }),
  };
}

/** Write `data` one byte at a time, each in its own write (and TCP segment, with Nagle off), then resolve. */
export async function writeByteByByte(socket: Duplex, data: Buffer): Promise<void> {
  (socket as Socket).setNoDelay?.(true);
  for (let i = 0; i < data.length; i++) {
    await new Promise<void>((r) => socket.write(data.subarray(i, i + 1), () => r()));
  }
}
