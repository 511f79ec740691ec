import { type FileHandle, mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** The `boundary` parameter of a multipart/form-data content type, or null. */
export function multipartBoundary(contentType: string): string | null {
  if (!/^\s*multipart\/form-data\b/i.test(contentType)) return null;
  const m = /;\s*boundary=(?:"([^"]+)"|([^;\s]+))/i.exec(contentType);
  const b = m?.[1] ?? m?.[2];
  return b && b.length <= 200 ? b : null;
}

/** A multipart body whose `model` field has been read; the body itself is still to be forwarded. */
export interface MultipartModelScan {
  /** Value of the first form field named `model`, or null when the body has none (or `unsearched`). */
  model: string | null;
  /**
   * True when the scan gave up before it could tell whether the body has a `model` field: past
   * `maxBytes`, or a part's headers or the field's value too long to hold.
   */
  unsearched: boolean;
  /** Bytes the body grows by when the model is replaced by `replacement`. */
  lengthDelta(replacement: string): number;
  /** The whole body as received, with the `model` value replaced when `replacement` is given. */
  body(replacement: string | null): AsyncIterable<Buffer>;
  /** Release what is held (temporary file) when the body will not be forwarded. Idempotent. */
  dispose(): Promise<void>;
}

export interface ScanOptions {
  /** Bytes held in memory while looking for the field; beyond it they go to a temporary file. */
  memoryLimit?: number;
  /** Give up looking after this many bytes (the body is then forwarded untouched, model unknown). */
  maxBytes?: number;
  /** Called for every chunk read from the source (byte counting). */
  onChunk?(chunk: Buffer): void;
}

const MAX_HEADER_BYTES = 16 * 1024;
const MAX_VALUE_BYTES = 4 * 1024;
const READ_BLOCK = 64 * 1024;

/**
 * Read a multipart/form-data body from `source` only as far as its `model` field. What was read is
 * held (in memory up to `memoryLimit`, then in an unlinked temporary file), so a large file placed
 * before the field never sits whole in memory; everything after the field is never read here and
 * streams straight through `body()`.
 */
export async function scanMultipartModel(
  source: AsyncIterator<Buffer>,
  boundary: string,
  options: ScanOptions = {},
): Promise<MultipartModelScan> {
  const held = new HeldBytes(options.memoryLimit ?? 4 * 1024 * 1024);
  const scanner = new ModelFieldScanner(boundary);
  let ended = false;
  try {
    while (scanner.state !== 'done') {
      const next = await source.next();
      if (next.done) {
        ended = true;
        break;
      }
      const chunk = Buffer.isBuffer(next.value) ? next.value : Buffer.from(next.value);
      options.onChunk?.(chunk);
      await held.push(chunk);
      scanner.push(chunk);
      if (!scanner.done() && held.size >= (options.maxBytes ?? Number.POSITIVE_INFINITY)) break;
    }
  } catch (err) {
    await held.dispose();
    throw err;
  }
  const found = scanner.found;
  const model = found ? found.value : null;
  return {
    model,
    unsearched: !ended && (scanner.state !== 'done' || scanner.gaveUp),
    lengthDelta: (replacement) => (found ? Buffer.byteLength(replacement) - (found.end - found.start) : 0),
    body: (replacement) =>
      (async function* () {
        try {
          if (found && replacement !== null && replacement !== model) {
            yield* held.read(0, found.start);
            yield Buffer.from(replacement, 'utf8');
            yield* held.read(found.end, held.size);
          } else {
            yield* held.read(0, held.size);
          }
        } finally {
          await held.dispose();
        }
        if (ended) return;
        for (;;) {
          const next = await source.next();
          if (next.done) return;
          const chunk = Buffer.isBuffer(next.value) ? next.value : Buffer.from(next.value);
          options.onChunk?.(chunk);
          yield chunk;
        }
      })(),
    dispose: () => held.dispose(),
  };
}

/**
 * Incremental search for the first part named `model`. Positions are byte offsets in the body. The
 * stream is scanned as if it began with CRLF, so the first boundary line matches the same delimiter.
 */
class ModelFieldScanner {
  state: 'seek' | 'afterDelimiter' | 'headers' | 'value' | 'done' = 'seek';
  found: { value: string; start: number; end: number } | null = null;
  /** Stopped (state 'done') at a part's headers or a field's value too long to hold. */
  gaveUp = false;
  private readonly delimiter: Buffer;
  private window: Buffer = Buffer.from('\r\n');
  /** Body offset of window[0] (−2 for the virtual leading CRLF). */
  private windowStart = -2;
  private cursor = 0;

  constructor(boundary: string) {
    this.delimiter = Buffer.from(`\r\n--${boundary}`, 'latin1');
  }

  done(): boolean {
    return this.state === 'done';
  }

  push(chunk: Buffer): void {
    this.window = this.window.length === 0 ? chunk : Buffer.concat([this.window, chunk]);
    while (this.state !== 'done') {
      if (!this.step()) break;
    }
    if (this.state === 'done') {
      this.window = Buffer.alloc(0);
      return;
    }
    // Keep only what later steps may still need.
    let keepFrom = this.cursor;
    if (this.state === 'seek')
      keepFrom = Math.max(this.cursor, this.window.length - this.delimiter.length + 1);
    if (keepFrom > 0) {
      this.window = this.window.subarray(keepFrom);
      this.windowStart += keepFrom;
      this.cursor -= keepFrom;
    }
  }

  /** One state transition; false when more bytes are needed. */
  private step(): boolean {
    const w = this.window;
    switch (this.state) {
      case 'seek': {
        const i = w.indexOf(this.delimiter, this.cursor);
        if (i < 0) {
          this.cursor = Math.max(this.cursor, w.length - this.delimiter.length + 1);
          return false;
        }
        this.cursor = i + this.delimiter.length;
        this.state = 'afterDelimiter';
        return true;
      }
      case 'afterDelimiter': {
        if (w.length - this.cursor < 2) return false;
        if (w[this.cursor] === 0x2d && w[this.cursor + 1] === 0x2d) {
          this.state = 'done'; // closing delimiter: no model field
          return false;
        }
        this.state = 'headers';
        return true;
      }
      case 'headers': {
        const i = w.indexOf('\r\n\r\n', this.cursor, 'latin1');
        if (i < 0) {
          if (w.length - this.cursor > MAX_HEADER_BYTES) {
            this.state = 'done';
            this.gaveUp = true;
          }
          return false;
        }
        const headers = w.subarray(this.cursor, i).toString('latin1');
        this.cursor = i + 4;
        const disposition = /^content-disposition:([^\r\n]*)/im.exec(headers)?.[1] ?? '';
        const name = /(?:^|;)\s*name\s*=\s*(?:"([^"]*)"|([^;\s]+))/i.exec(disposition);
        const fieldName = name?.[1] ?? name?.[2];
        this.state = fieldName === 'model' && !/filename\s*=/i.test(disposition) ? 'value' : 'seek';
        return true;
      }
      case 'value': {
        const i = w.indexOf(this.delimiter, this.cursor);
        if (i < 0) {
          if (w.length - this.cursor > MAX_VALUE_BYTES) {
            this.state = 'done';
            this.gaveUp = true;
          }
          return false;
        }
        this.found = {
          value: w.subarray(this.cursor, i).toString('utf8'),
          start: this.windowStart + this.cursor,
          end: this.windowStart + i,
        };
        this.state = 'done';
        return false;
      }
      default:
        return false;
    }
  }
}

/** Bytes held back while scanning: in memory, then (past the limit) in an unlinked temporary file. */
class HeldBytes {
  size = 0;
  private chunks: Buffer[] = [];
  private file: FileHandle | null = null;
  private disposed = false;

  constructor(private readonly memoryLimit: number) {}

  async push(chunk: Buffer): Promise<void> {
    if (!this.file && this.size + chunk.length > this.memoryLimit) {
      const dir = await mkdtemp(join(tmpdir(), 'oai-proxy-upload-'));
      const path = join(dir, 'body');
      this.file = await open(path, 'w+', 0o600);
      // Unlinked at once: the data disappears with the handle, whatever happens to the request.
      await rm(dir, { recursive: true, force: true });
      for (const c of this.chunks) await this.file.write(c);
      this.chunks = [];
    }
    if (this.file) await this.file.write(chunk, 0, chunk.length, this.size);
    else this.chunks.push(chunk);
    this.size += chunk.length;
  }

  async *read(start: number, end: number): AsyncGenerator<Buffer> {
    if (start >= end) return;
    if (this.file) {
      for (let pos = start; pos < end; ) {
        const buf = Buffer.allocUnsafe(Math.min(READ_BLOCK, end - pos));
        const { bytesRead } = await this.file.read(buf, 0, buf.length, pos);
        if (bytesRead === 0) return;
        pos += bytesRead;
        yield buf.subarray(0, bytesRead);
      }
      return;
    }
    let offset = 0;
    for (const c of this.chunks) {
      const from = Math.max(start - offset, 0);
      const to = Math.min(end - offset, c.length);
      if (from < to) yield from === 0 && to === c.length ? c : c.subarray(from, to);
      offset += c.length;
      if (offset >= end) return;
    }
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    this.chunks = [];
    const f = this.file;
    this.file = null;
    await f?.close().catch(() => undefined);
  }
}
