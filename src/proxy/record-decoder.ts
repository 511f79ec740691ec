import type { Transform } from 'node:stream';
import { constants, createBrotliDecompress, createGunzip, createInflate } from 'node:zlib';
import { BodyCapture } from './capture.js';

/** The content-codings a response can be decoded from for its record: gzip, deflate, br. */
export function isDecodable(encoding: string): boolean {
  const e = encoding.trim().toLowerCase();
  return e === 'gzip' || e === 'x-gzip' || e === 'deflate' || e === 'br';
}

/**
 * Decoded bytes past which a body is no longer decoded for its tail: a small compressed answer can
 * inflate to gigabytes, each of them decoded by the proxy for nothing but its last few KB.
 */
export const TAIL_DECODE_MAX_BYTES = 64 * 1024 * 1024;

/**
 * Compressed bytes waiting for the decoder past which, once past the capture limit, the tail is given
 * up: the upstream is paced by the client alone, and both can outrun the decompression.
 */
export const TAIL_PENDING_MAX_BYTES = 8 * 1024 * 1024;

/**
 * Decodes a compressed response body for the record only (the client gets the bytes the upstream
 * sent): keeps at most `limit` decoded bytes and hands each decoded piece to `onData` (the stream
 * assembler) too. With a `tailLimit`, it decodes on past the limit (up to `decodeMax` bytes) to keep
 * the body's last `tailLimit` bytes, where a JSON answer has its usage; without one, it stops there.
 * Past the limit it also gives the tail up when more than `pendingMax` compressed bytes wait to be decoded.
 */
export class RecordDecoder {
  /** The decoded body, cut at `limit`. */
  readonly capture: BodyCapture;
  /** Why the body could not be decoded (corrupt data), if it could not. */
  failure: string | null = null;
  private readonly zlib: Transform;
  private stopped = false;
  private readonly done: Promise<void>;

  constructor(
    encoding: string,
    limit: number,
    private readonly onData?: (decoded: Buffer) => void,
    tailLimit = 0,
    decodeMax = TAIL_DECODE_MAX_BYTES,
    private readonly pendingMax = TAIL_PENDING_MAX_BYTES,
  ) {
    this.capture = new BodyCapture(limit, tailLimit);
    const e = encoding.trim().toLowerCase();
    // A body cut short (client gone, upstream reset) still yields what arrived, without an error.
    this.zlib =
      e === 'br'
        ? createBrotliDecompress({ finishFlush: constants.BROTLI_OPERATION_FLUSH })
        : e === 'deflate'
          ? createInflate({ finishFlush: constants.Z_SYNC_FLUSH })
          : createGunzip({ finishFlush: constants.Z_SYNC_FLUSH });
    this.done = new Promise<void>((resolve) => {
      this.zlib.on('data', (d: Buffer) => {
        if (this.stopped) return;
        this.capture.push(d);
        this.onData?.(d);
        if (!this.capture.truncated) return;
        if (tailLimit === 0) this.stop();
        else if (this.capture.bytes > decodeMax) {
          // What is kept now is not the body's end: no usage is read from its middle.
          this.capture.forgetTail();
          this.stop();
        }
      });
      this.zlib.on('error', (err: Error) => {
        this.failure = err.message;
        this.stop();
        resolve();
      });
      this.zlib.on('end', resolve);
      this.zlib.on('close', resolve);
    });
  }

  /** Decode one chunk of the body as it came from the upstream. */
  write(chunk: Buffer): void {
    if (this.stopped) return;
    if (this.capture.truncated && this.zlib.writableLength > this.pendingMax) {
      // Only the tail is being decoded now, and it falls behind: drop it rather than queue the body.
      this.capture.forgetTail();
      this.stop();
      return;
    }
    this.zlib.write(chunk);
  }

  /** Compressed bytes written but not yet decoded. */
  get pendingBytes(): number {
    return this.stopped ? 0 : this.zlib.writableLength;
  }

  /** The body has ended (or was cut): resolves once what arrived is decoded. */
  finish(): Promise<void> {
    if (!this.stopped) this.zlib.end();
    return this.done;
  }

  /**
   * The stored form: the decoded text; a placeholder naming the coding when nothing could be decoded.
   * `bytes` is the body's size as sent.
   */
  stored(contentType: string | undefined, encoding: string, bytes: number): string | null {
    if (bytes === 0) return null;
    if (this.failure !== null && this.capture.bytes === 0)
      return `[binary body: ${contentType ?? 'unknown type'}, ${encoding}, ${bytes} bytes]`;
    return this.capture.stored(contentType);
  }

  /** True when the stored text is not the whole decoded body (cut at the limit, or corrupt data). */
  get truncated(): boolean {
    return this.capture.truncated || this.failure !== null;
  }

  private stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.zlib.destroy();
  }
}
