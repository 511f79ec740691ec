import { closeSync, existsSync, mkdirSync, openSync, renameSync, statSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import pino from 'pino';
import { OaiProxyError } from '../errors.js';
import { pathProblem } from './path-problem.js';

type Boom = ReturnType<typeof pino.destination>;

export interface RotatingFileOptions {
  path: string;
  /** Rotate when the file reaches this many bytes; 0 = never by size. */
  maxBytes: number;
  /** Rotated files kept: `path.1` (newest) … `path.N`. */
  maxFiles: number;
  /** Also rotate when the UTC day changes. */
  daily: boolean;
  /** The clock (tests). */
  now?: () => number;
}

/**
 * An append-only log file (pino's SonicBoom, mode 0600) that rotates by size and/or day, keeping
 * `maxFiles` old files, and can be reopened in place for an external logrotate (SIGUSR2).
 */
export class RotatingFile {
  private boom: Boom;
  private size: number;
  /** When the current UTC day ends (ms): daily rotation compares a number, not a formatted date, per line. */
  private dayEndsAt: number;
  /** False while the file is being (re)opened: rotating then would rename a file nobody writes to yet. */
  private open = false;
  private opened: Promise<void>;
  private readonly now: () => number;

  /** Throws OaiProxyError('config_invalid') naming the path when the file cannot be created or opened. */
  constructor(private readonly options: RotatingFileOptions) {
    this.now = options.now ?? Date.now;
    // Open it once here, synchronously: pino's asynchronous open would fail unseen, and the first
    // write (or the flush at exit) would then throw from a descriptor of -1.
    try {
      mkdirSync(dirname(options.path), { recursive: true });
      closeSync(openSync(options.path, 'a', 0o600));
    } catch (err) {
      throw new OaiProxyError(
        'config_invalid',
        `Cannot write the log file ${options.path}: ${pathProblem(options.path, err)}; choose a writable path with --log-file or LOG_FILE_PATH`,
        { cause: err },
      );
    }
    // A file last written on an earlier UTC day (the proxy was not running at midnight) is rotated
    // before the first line of today, as it would have been at midnight.
    const { size, mtimeMs } = statSync(options.path);
    this.size = size;
    this.dayEndsAt = nextUtcMidnight(size > 0 ? mtimeMs : this.now());
    if (options.daily && this.size > 0 && this.now() >= this.dayEndsAt && this.shiftFiles()) {
      this.size = 0;
      this.dayEndsAt = nextUtcMidnight(this.now());
    }
    this.boom = pino.destination({ dest: options.path, sync: false, mkdir: true, mode: 0o600 } as any);
    this.opened = this.whenOpen();
  }

  /** Resolves once the file is open (or failed to open: writes are then dropped by pino's destination). */
  ready(): Promise<void> {
    return this.opened;
  }

  private whenOpen(): Promise<void> {
    this.open = false;
    return new Promise((resolve) => {
      const done = () => {
        this.boom.off('ready', onReady);
        this.boom.off('error', done);
        resolve();
      };
      const onReady = () => {
        this.open = true;
        done();
      };
      this.boom.once('ready', onReady);
      this.boom.once('error', done);
    });
  }

  write(chunk: string): boolean {
    // The day is checked before writing, so the first batch of a new day starts the new file (an empty
    // file is kept: rotating it would only push a day of history out).
    if (this.options.daily && this.open && this.now() >= this.dayEndsAt) {
      if (this.size > 0) this.rotate();
      else this.dayEndsAt = nextUtcMidnight(this.now());
    }
    const ok = this.boom.write(chunk);
    // Bytes, not UTF-16 units: CJK text is 3 bytes a character. Called per 20 ms batch, not per line.
    this.size += Buffer.byteLength(chunk);
    if (this.open && this.options.maxBytes > 0 && this.size >= this.options.maxBytes) this.rotate();
    return ok;
  }

  /** Shift `path` → `path.1` → … → `path.N` (dropping the oldest) and continue in a fresh file. */
  rotate(): void {
    if (!this.shiftFiles()) return;
    this.size = 0;
    this.dayEndsAt = nextUtcMidnight(this.now());
    // Lines already handed to the old descriptor land in the renamed file; buffered ones in the new file.
    this.boom.reopen();
    this.opened = this.whenOpen();
  }

  /** The renames of a rotation; false (nothing more to do: keep writing to the current file) if one failed. */
  private shiftFiles(): boolean {
    const { path, maxFiles } = this.options;
    try {
      for (let i = maxFiles - 1; i >= 1; i--) {
        if (existsSync(`${path}.${i}`)) renameSync(`${path}.${i}`, `${path}.${i + 1}`);
      }
      if (existsSync(path)) renameSync(path, `${path}.1`);
      return true;
    } catch {
      // Rotation is best effort.
      return false;
    }
  }

  /** Reopen the file at its path (after an external tool moved it). */
  reopen(): void {
    this.boom.reopen();
    this.opened = this.whenOpen();
    this.size = existsSync(this.options.path) ? statSync(this.options.path).size : 0;
  }

  /**
   * Append `chunk` now, synchronously, after whatever the file has buffered: for process exit, when a
   * write started now would never complete. (A write already in flight may still land after it.)
   */
  writeSync(chunk: string): void {
    if (chunk === '') return;
    this.flushSync();
    const fd = (this.boom as unknown as { fd: number }).fd;
    if (fd < 0) return; // never opened: nothing to append to
    try {
      writeSync(fd, chunk);
      this.size += Buffer.byteLength(chunk);
    } catch {
      // the file is gone or the disk full: at exit there is nowhere else to put it
    }
  }

  flushSync(): void {
    try {
      this.boom.flushSync();
    } catch {
      // not open yet, or nothing to flush
    }
  }

  end(): Promise<void> {
    return new Promise((resolve) => {
      this.boom.once('close', () => resolve());
      this.boom.once('error', () => resolve());
      this.boom.end();
    });
  }
}

/** The end (ms) of the UTC day `at` falls in. */
function nextUtcMidnight(at: number): number {
  const DAY_MS = 86_400_000;
  return Math.floor(at / DAY_MS) * DAY_MS + DAY_MS;
}
