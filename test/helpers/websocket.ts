import { createHash, randomBytes } from 'node:crypto';
import { type IncomingHttpHeaders, type IncomingMessage, request } from 'node:http';
import type { Duplex } from 'node:stream';

/**
 * Just enough RFC 6455 for tests, on node:http and node:net alone (Node 20 has no stable global
 * WebSocket): the handshake, single-frame messages, masking. No fragmentation, no extensions.
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

/** Call `onFrame` for every complete frame arriving on `socket`, unmasked. */
export function readFrames(socket: Duplex, onFrame: (frame: Frame) => void): void {
  let buf = Buffer.alloc(0);
  socket.on('data', (chunk: Buffer) => {
    buf = Buffer.concat([buf, chunk]);
    for (;;) {
      if (buf.length < 2) return;
      let len = buf[1] & 0x7f;
      let off = 2;
      if (len === 126) {
        if (buf.length < 4) return;
        len = buf.readUInt16BE(2);
        off = 4;
      } else if (len === 127) {
        if (buf.length < 10) return;
        len = Number(buf.readBigUInt64BE(2));
        off = 10;
      }
      const masked = (buf[1] & 0x80) !== 0;
      if (buf.length < off + (masked ? 4 : 0) + len) return;
      const mask = masked ? buf.subarray(off, off + 4) : null;
      if (masked) off += 4;
      const payload = Buffer.from(buf.subarray(off, off + len));
      if (mask) for (let i = 0; i < len; i++) payload[i] ^= mask[i & 3];
      onFrame({ opcode: buf[0] & 0x0f, payload });
      buf = buf.subarray(off + len);
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
