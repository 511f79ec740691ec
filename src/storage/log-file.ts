import {
  close,
  closeSync,
  existsSync,
  fstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  renameSync,
  statSync,
  unlinkSync,
  write,
  writeSync,
} from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { OaiProxyError } from '../errors.js';
import { createFailureStreak, type FailureStreak } from './failure-streak.js';
import { pathProblem } from './path-problem.js';

/**
 * The file operations the log file uses: node:fs by default; tests wrap them to fail the way a full
 * disk, a quota or a dying device does (ENOSPC, EDQUOT, EIO) on the descriptor already open.
 */
export interface LogFileSystem {
  /** Open `path` for appending (mode 0600), creating its folder: throws when it cannot. */
  openSync(path: string): number;
  write(fd: number, data: Buffer, done: (err: NodeJS.ErrnoException | null, written: number) => void): void;
  /** Throws on failure; may write fewer bytes than given. */
  writeSync(fd: number, data: Buffer): number;
  close(fd: number): void;
}

export const nodeLogFileSystem: LogFileSystem = {
  openSync(path) {
    mkdirSync(dirname(path), { recursive: true });
    return openSync(path, 'a', 0o600);
  },
  write: (fd, data, done) => write(fd, data, 0, data.length, null, done),
  writeSync: (fd, data) => writeSync(fd, data),
  close: (fd) => close(fd, () => undefined),
};

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
  /** File operations (tests inject failures). */
  fs?: LogFileSystem;
  /** While writes fail, how often (ms) they are tried again. Default 1000. */
  retryMs?: number;
  /** While writes fail, bytes of lines kept to write later; lines beyond are dropped and counted. Default 1 MiB. */
  keptBytes?: number;
  /**
   * While writes succeed but slowly (a slow or hung disk, an NFS hard mount), bytes of lines waiting;
   * lines beyond are dropped and counted. Default 16 MiB. Applies only once the file is slow (see
   * `slowMs`): a burst on a healthy disk (spilled rows at a stop) is all written.
   */
  pendingMaxBytes?: number;
  /**
   * The file is slow once a write has been in flight, or a line has waited, this long (ms); end(timeoutMs)
   * waits at least this long for a write that makes no progress. Default 1000.
   */
  slowMs?: number;
  /** A write in flight this long (ms) is reported as stalled by health(). Default 10 s. */
  stallMs?: number;
  /** The file stopped taking writes (a full disk, EIO, a folder gone at a rotation): once per outage. */
  onError?: (err: NodeJS.ErrnoException) => void;
  /** A write succeeded again after onError; `dropped`: lines dropped during the outage. */
  onRecover?: (dropped: number) => void;
  /**
   * A rotation failed (a rename refused: a directory at `path.N`, permissions): once, until one succeeds.
   * Lines are still appended to `path`, which meanwhile grows past maxBytes.
   */
  onRotateError?: (err: NodeJS.ErrnoException) => void;
  /** Lines the file dropped (whole lines, except the rest of a line partly written): what they were. */
  onDrop?: (lines: string | Buffer) => void;
}

/** Whether the log file takes writes, and how many lines it could not keep. */
export interface LogFileHealth {
  /** The last write or open error while failing (`ENOSPC: no space left on device, write`), null when ok. */
  error: string | null;
  /**
   * Lines dropped since start: beyond `keptBytes` while failing or `pendingMaxBytes` while slow, or
   * pending when it was closed failing or stalled.
   */
  droppedLines: number;
  /** Bytes of lines waiting to be written (the write in flight included). */
  pendingBytes: number;
  /** How long (ms) the write in flight has not returned, once past `stallMs`; null otherwise. */
  stalledMs: number | null;
  /** A write has not returned yet (after end() gave up on it: a hung disk). */
  writeInFlight: boolean;
}

/** The most bytes handed to one write(2). */
const MAX_WRITE = 1024 * 1024;
/** A chunk up to this many characters is encoded when queued (see write()); a longer one when written. */
const ENCODE_AT_ONCE_CHARS = 64 * 1024;
/** Bytes of lines waiting for a slow file before new lines are dropped. */
const PENDING_MAX = 16 * 1024 * 1024;
/** A write in flight (or a line waiting) this long (ms) makes the file slow. */
const SLOW_MS = 1000;

/**
 * An append-only log file (mode 0600) that rotates by size and/or day, keeping `maxFiles` old files,
 * and can be reopened in place for an external logrotate (SIGUSR2).
 *
 * Writes are asynchronous, one at a time. A write that fails (a full disk, EIO, EDQUOT) is never
 * thrown or emitted: the file reports it once (onError, health()), keeps the lines that failed and up
 * to `keptBytes` of later ones, drops and counts the rest, and tries again every `retryMs` until a
 * write succeeds. A slow file (no error, writes taking long) keeps up to `pendingMaxBytes` waiting and
 * drops and counts the rest too. Nothing in here ever waits or retries synchronously: closing or
 * exiting with a failing file returns at once, end(timeoutMs) gives up on a write that does not return
 * (what it could not write is counted as dropped).
 */
export class RotatingFile {
  private fd = -1;
  /** The open file's identity, to notice the path naming another file (or none); null when unknown. */
  private opened: { dev: number; ino: number } | null = null;
  private size: number;
  /** When the current UTC day ends (ms): daily rotation compares a number, not a formatted date, per line. */
  private dayEndsAt: number;
  /** Lines waiting, oldest first, and their bytes. */
  private pending: (string | Buffer)[] = [];
  private pendingBytes = 0;
  /** When (Date.now()) the queue last went from empty to not empty; 0 while empty. */
  private waitingSince = 0;
  /** The bytes of the write in flight, or of the one that failed (written first when retried). */
  private head: Buffer | null = null;
  private writing = false;
  /** When (Date.now()) the write in flight started. */
  private writeStartedAt = 0;
  /** The descriptor the write in flight uses (closed once it is done when the file was switched meanwhile). */
  private writingFd = -1;
  /** Failing from a write or open that failed until one succeeds (retried every `retryMs`, not backed off). */
  private readonly streak: FailureStreak;
  private dropped = 0;
  /** The last rotation failed (said once through onRotateError). */
  private rotateFailing = false;
  /** Lines dropped since the outage began (reported on recovery). */
  private droppedInOutage = 0;
  private retryTimer: NodeJS.Timeout | null = null;
  private ending: (() => void) | null = null;
  private ended = false;
  /** end(timeoutMs)'s no-progress timer, restarted by each write that returns, and its length. */
  private endTimer: NodeJS.Timeout | null = null;
  private endTimeoutMs = 0;
  /**
   * The write in flight when end() gave up on it: counted as dropped while it has not returned (what
   * the stop line and /health report), and not at all once it lands.
   */
  private abandoned: Buffer | null = null;
  private readonly now: () => number;
  private readonly fs: LogFileSystem;

  /** Throws OaiProxyError('config_invalid') naming the path when the file cannot be created or opened. */
  constructor(private readonly options: RotatingFileOptions) {
    this.now = options.now ?? Date.now;
    this.fs = options.fs ?? nodeLogFileSystem;
    this.streak = createFailureStreak({
      baseMs: options.retryMs ?? 1000,
      onError: (err) => this.outageBegins(err as NodeJS.ErrnoException),
      onRecover: () => this.outageEnds(),
    });
    const cannotWrite = (err: unknown) =>
      new OaiProxyError(
        'config_invalid',
        `Cannot write the log file ${options.path}: ${pathProblem(options.path, err)}; choose a writable path with --log-file or LOG_FILE_PATH`,
        { cause: err },
      );
    try {
      closeSync(this.fs.openSync(options.path));
    } catch (err) {
      throw cannotWrite(err);
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
    try {
      this.openPath();
    } catch (err) {
      throw cannotWrite(err);
    }
  }

  /** Resolves at once: the file is opened synchronously (kept for callers that await it). */
  ready(): Promise<void> {
    return Promise.resolve();
  }

  /** Whether writes succeed, and the lines dropped so far. */
  health(): LogFileHealth {
    const inFlightMs = this.writing ? Date.now() - this.writeStartedAt : 0;
    return {
      error: this.streak.lastError,
      droppedLines: this.dropped + (this.abandoned ? countLines(this.abandoned) : 0),
      pendingBytes: this.pendingBytes + (this.head?.length ?? 0),
      stalledMs: inFlightMs >= (this.options.stallMs ?? 10_000) ? inFlightMs : null,
      writeInFlight: this.writing,
    };
  }

  /** The write end() gave up on, while it has not returned (counted in health().droppedLines); else null. */
  abandonedWrite(): Buffer | null {
    return this.abandoned;
  }

  /** Queue `chunk` (whole lines) for writing. False when it was dropped (closed, or over the bound). */
  write(chunk: string): boolean {
    if (chunk === '') return true;
    if (this.ended) {
      this.drop(chunk);
      return false;
    }
    // The day is checked before writing, so the first batch of a new day starts the new file (an empty
    // file is kept: rotating it would only push a day of history out).
    if (this.options.daily && !this.streak.failing && this.now() >= this.dayEndsAt) {
      if (this.size > 0) this.rotate();
      else this.dayEndsAt = nextUtcMidnight(this.now());
    }
    // Called per 20 ms batch, not per line. A usual batch (a few KB) is encoded here, once: its length is
    // then the bytes, and the write takes it as it is (Buffer.byteLength, then a join and Buffer.from at
    // write time, read it twice more). A big chunk (a burst of rows spilled at a stop) is measured and
    // kept as text, encoded when written: encoding megabytes here, in one go, held the caller that long.
    const buf = chunk.length <= ENCODE_AT_ONCE_CHARS ? Buffer.from(chunk) : null;
    const bytes = buf ? buf.length : Buffer.byteLength(chunk);
    const bound = this.streak.failing
      ? this.keptBytes()
      : this.isSlow()
        ? (this.options.pendingMaxBytes ?? PENDING_MAX)
        : Number.POSITIVE_INFINITY;
    if (this.pendingBytes + bytes > bound) {
      this.drop(buf ?? chunk);
      return false;
    }
    if (this.pending.length === 0) this.waitingSince = Date.now();
    this.pending.push(buf ?? chunk);
    this.pendingBytes += bytes;
    if (!this.streak.failing) this.pump();
    return true;
  }

  /**
   * A write has been in flight, or a line has waited, `slowMs` or longer: the disk does not keep up.
   * Until then lines are kept whatever their bytes, so that a burst queued in one go (rows spilled at a
   * stop) is written on a healthy disk rather than dropped before the disk had a chance.
   */
  private isSlow(): boolean {
    const slowMs = this.options.slowMs ?? SLOW_MS;
    const now = Date.now();
    return (
      (this.writing && now - this.writeStartedAt >= slowMs) ||
      (this.pending.length > 0 && now - this.waitingSince >= slowMs)
    );
  }

  /** Shift `path` → `path.1` → … → `path.N` (dropping the oldest) and continue in a fresh file. */
  rotate(): void {
    if (!this.shiftFiles()) return;
    // A write in flight lands in the renamed file; what is queued (a failed write included) in the new one.
    this.size = this.head && !this.writing ? this.head.length : 0;
    this.dayEndsAt = nextUtcMidnight(this.now());
    this.switchFile();
  }

  /** Reopen the file at its path (after an external tool moved it). */
  reopen(): void {
    // After end() gave up on a hung write: the file is not opened again.
    if (this.ended && !this.ending) return;
    this.switchFile();
    try {
      this.size = statSync(this.options.path).size;
    } catch {
      this.size = 0;
    }
  }

  /**
   * Append what is queued now, synchronously: for tests, at a stop signal and at exit. Each byte is tried
   * once. A failing file is left alone, and so is a file with a write in flight: what is queued would land
   * before it (end() writes it in order). `force` (the process exits: an asynchronous write would never
   * complete) tries both anyway.
   */
  flushSync(force = false): void {
    if (this.fd < 0 || (!force && (this.streak.failing || this.writing))) return;
    if (this.pending.length > 0 && !this.followPath()) return;
    if (!this.writing && this.head) {
      this.head = this.writeNow(this.head);
      if (this.head) return;
    }
    while (this.pending.length > 0) {
      if (this.options.maxBytes > 0 && this.size >= this.options.maxBytes) {
        this.rotate();
        if (this.fd < 0) return;
      }
      const item = this.pending.shift() as string | Buffer;
      const buf = typeof item === 'string' ? Buffer.from(item) : item;
      this.pendingBytes -= buf.length;
      const rest = this.writeNow(buf);
      this.size += buf.length - (rest?.length ?? 0);
      if (rest) {
        // Kept first in line: written by the next retry, unless this is the exit.
        this.pending.unshift(rest);
        this.pendingBytes += rest.length;
        return;
      }
    }
  }

  /**
   * Append `chunk` now, synchronously, after whatever the file has queued: for process exit, when a
   * write started now would never complete. Tried once: a file that fails drops it (counted).
   */
  writeSync(chunk: string): void {
    this.flushSync(true);
    if (chunk === '') return;
    if (this.fd < 0 || this.streak.failing || this.pending.length > 0) {
      this.drop(chunk);
      return;
    }
    const buf = Buffer.from(chunk);
    const rest = this.writeNow(buf);
    this.size += buf.length - (rest?.length ?? 0);
    if (rest) this.drop(rest);
  }

  /**
   * Write what is queued and close the file. Resolves at once when the file fails. With `timeoutMs`,
   * gives up once a write has made no progress for max(timeoutMs, slowMs) (a hung disk; the timer
   * restarts with each write that returns, so a long queue on a working disk is all written): what is
   * left is dropped (counted); the write in flight is counted only while it has not returned.
   */
  end(timeoutMs?: number): Promise<void> {
    if (this.ended) return Promise.resolve();
    this.ended = true;
    // Space may have come back since the last retry: one more try before what is left is dropped.
    if (this.streak.failing && !this.writing) this.flushSync(true);
    return new Promise((resolve) => {
      this.ending = resolve;
      if (timeoutMs !== undefined) {
        this.endTimeoutMs = Math.max(timeoutMs, this.options.slowMs ?? SLOW_MS);
        this.armEndTimer();
      }
      this.pump();
    });
  }

  /** (Re)start end()'s no-progress timer. */
  private armEndTimer(): void {
    if (this.endTimer) clearTimeout(this.endTimer);
    this.endTimer = setTimeout(() => this.abandon(), this.endTimeoutMs);
    this.endTimer.unref();
  }

  /**
   * end() saw no progress for its timeout: drop what is queued and resolve it. The write in flight is
   * kept aside (counted by health() while it has not returned, dropped if it fails).
   */
  private abandon(): void {
    if (!this.ending) return;
    if (this.head && this.writing) this.abandoned = this.head;
    else if (this.head) this.drop(this.head);
    this.head = null;
    for (const item of this.pending.splice(0)) this.drop(item);
    this.pendingBytes = 0;
    // The descriptor stays open for the write in flight: closing it under the write could hand its
    // number to another file.
    if (this.writing) this.fd = -1;
    this.finish();
  }

  private keptBytes(): number {
    return this.options.keptBytes ?? MAX_WRITE;
  }

  /** Write `buf` with write(2) now: null when all of it was written, else the rest (the failure recorded). */
  private writeNow(buf: Buffer): Buffer | null {
    let at = 0;
    try {
      while (at < buf.length) {
        const n = this.fs.writeSync(this.fd, at === 0 ? buf : buf.subarray(at));
        if (n <= 0) throw Object.assign(new Error('EIO: the log file took no bytes, write'), { code: 'EIO' });
        at += n;
      }
      this.streak.succeeded();
      return null;
    } catch (err) {
      this.streak.fail(err as NodeJS.ErrnoException);
      if (!this.writing) this.scheduleRetry();
      return buf.subarray(at);
    }
  }

  /** Start the next write when none is in flight; finish end() when all is written (or failing). */
  private pump(): void {
    // After end() gave up on a hung write: the file is not opened again when that write returns.
    if (this.writing || (this.ended && !this.ending)) return;
    if (this.streak.failing && this.ended) {
      // Closing with a file that takes nothing: drop what is left rather than wait.
      if (this.head) this.drop(this.head);
      this.head = null;
      for (const item of this.pending.splice(0)) this.drop(item);
      this.pendingBytes = 0;
      this.finish();
      return;
    }
    if (this.fd < 0) {
      try {
        this.openPath();
      } catch (err) {
        this.streak.fail(err as NodeJS.ErrnoException);
        this.scheduleRetry();
        return;
      }
    }
    if (!this.head) {
      if (this.pending.length === 0) {
        this.finish();
        return;
      }
      if (!this.followPath()) return; // the new file could not be opened: retried
      // Rotated between writes, so that a file ends at most one batch past maxBytes.
      const { maxBytes } = this.options;
      if (maxBytes > 0 && this.size >= maxBytes) {
        this.rotate();
        if (this.fd < 0) return; // the new file could not be opened: retried
      }
      this.head = this.takePending(maxBytes > 0 ? maxBytes - this.size : MAX_WRITE);
      // Bytes, not UTF-16 units: CJK text is 3 bytes a character.
      this.size += this.head.length;
    }
    const fd = this.fd;
    const buf = this.head;
    this.writing = true;
    this.writeStartedAt = Date.now();
    this.writingFd = fd;
    this.fs.write(fd, buf, (err, written) => {
      this.writing = false;
      this.writingFd = -1;
      // The file was switched (rotation, SIGUSR2) while this write was in flight.
      if (fd !== this.fd) this.fs.close(fd);
      if (this.abandoned) {
        // end() gave up on this write and has resolved: it landed after all, or what it did not write
        // is dropped now.
        const rest = err ? buf : written < buf.length ? buf.subarray(written) : null;
        this.abandoned = null;
        if (rest) this.drop(rest);
        return;
      }
      if (this.ending && this.endTimer) this.armEndTimer();
      if (err) {
        this.streak.fail(err);
        if (this.ended) {
          this.pump();
          return;
        }
        this.scheduleRetry();
        return;
      }
      this.head = written < buf.length ? buf.subarray(written) : null;
      if (fd === this.fd) this.streak.succeeded();
      this.pump();
    });
  }

  /** Queued chunks (at least one) up to `upTo` bytes (at most MAX_WRITE), joined. */
  private takePending(upTo: number): Buffer {
    const items: Buffer[] = [];
    let bytes = 0;
    const limit = Math.min(upTo, MAX_WRITE);
    while (this.pending.length > 0 && (items.length === 0 || bytes < limit)) {
      const next = this.pending.shift() as string | Buffer;
      const buf = typeof next === 'string' ? Buffer.from(next) : next;
      items.push(buf);
      bytes += buf.length;
    }
    this.pendingBytes = Math.max(0, this.pendingBytes - bytes);
    // One batch waiting (the usual case): written as it is, not copied.
    return items.length === 1 ? items[0] : Buffer.concat(items, bytes);
  }

  private finish(): void {
    if (!this.ending) return;
    const resolve = this.ending;
    this.ending = null;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.endTimer) clearTimeout(this.endTimer);
    this.endTimer = null;
    if (this.fd >= 0) this.fs.close(this.fd);
    this.fd = -1;
    resolve();
  }

  /** The first write or open of an outage failed: keep at most `keptBytes` of lines, and say so once. */
  private outageBegins(err: NodeJS.ErrnoException): void {
    this.droppedInOutage = 0;
    // Beyond the bound: the newest lines go first, the oldest stay to be written in order.
    while (this.pendingBytes > this.keptBytes() && this.pending.length > 0) {
      const item = this.pending.pop() as string | Buffer;
      this.pendingBytes -= Buffer.byteLength(item);
      this.drop(item);
    }
    this.options.onError?.(err);
  }

  /** A write succeeded after an outage: stop retrying, and say so once with the lines it dropped. */
  private outageEnds(): void {
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    const dropped = this.droppedInOutage;
    this.droppedInOutage = 0;
    this.options.onRecover?.(dropped);
  }

  private scheduleRetry(): void {
    if (this.retryTimer || this.ended) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.pump();
    }, this.options.retryMs ?? 1000);
    this.retryTimer.unref();
  }

  private drop(lines: string | Buffer): void {
    const n = countLines(lines);
    this.dropped += n;
    this.droppedInOutage += n;
    this.options.onDrop?.(lines);
  }

  /** Open the file at the path for appending, noting which file it is. */
  private openPath(): void {
    this.fd = this.fs.openSync(this.options.path);
    try {
      const { dev, ino } = fstatSync(this.fd);
      this.opened = { dev, ino };
    } catch {
      this.opened = null;
    }
  }

  /**
   * Before a write: when the path no longer names the open file (deleted, its folder removed, moved away
   * by a tool that sends no SIGUSR2), continue in a new file there, as reopen() does; lines written to the
   * old one would reach no file anyone can read, and a deleted file's space is freed only once it is
   * closed. False when the new file could not be opened (retried).
   */
  private followPath(): boolean {
    if (this.opened === null) return true;
    let now: { dev: number; ino: number } | undefined;
    try {
      now = statSync(this.options.path, { throwIfNoEntry: false });
    } catch {
      return true; // unreadable now (a folder's permissions): keep the file open
    }
    if (now && now.dev === this.opened.dev && now.ino === this.opened.ino) return true;
    this.reopen();
    return this.fd >= 0;
  }

  /** Continue in the file now at the path; the old descriptor is closed once its write in flight is done. */
  private switchFile(): void {
    const old = this.fd;
    this.fd = -1;
    if (old >= 0 && old !== this.writingFd) this.fs.close(old);
    try {
      this.openPath();
    } catch (err) {
      // Tried again with the next write (scheduled).
      this.streak.fail(err as NodeJS.ErrnoException);
      this.scheduleRetry();
    }
  }

  /** The renames of a rotation; false (nothing more to do: keep writing to the current file) if one failed. */
  private shiftFiles(): boolean {
    const { path, maxFiles } = this.options;
    try {
      for (let i = maxFiles - 1; i >= 1; i--) {
        if (existsSync(`${path}.${i}`)) renameSync(`${path}.${i}`, `${path}.${i + 1}`);
      }
      if (existsSync(path)) renameSync(path, `${path}.1`);
    } catch (err) {
      // Rotation is best effort: the lines still go to `path`. Said once, until a rotation works again.
      if (!this.rotateFailing) {
        this.rotateFailing = true;
        this.options.onRotateError?.(err as NodeJS.ErrnoException);
      }
      return false;
    }
    this.rotateFailing = false;
    // Rotated files beyond maxFiles, left by a run with a larger LOG_MAX_FILES: deleted only when the
    // proxy rotates by itself, never at start-up, so that an external logrotate's files (`rotate 14`,
    // `dateformat .%Y%m%d`) survive a restart.
    this.pruneOldFiles();
    return true;
  }

  /**
   * Delete `path.N` for N above maxFiles up to 1000 (the largest LOG_MAX_FILES): a date suffix
   * (`path.20261201`) is not one of ours (best effort).
   */
  private pruneOldFiles(): void {
    const { path, maxFiles } = this.options;
    const prefix = `${basename(path)}.`;
    try {
      for (const name of readdirSync(dirname(path))) {
        if (!name.startsWith(prefix)) continue;
        const n = name.slice(prefix.length);
        if (/^[1-9]\d{0,3}$/.test(n) && Number(n) > maxFiles && Number(n) <= 1000)
          unlinkSync(join(dirname(path), name));
      }
    } catch {
      // An old file left behind is no reason not to log.
    }
  }
}

/** Lines in `text` (a last one without its newline counts too). */
function countLines(text: string | Buffer): number {
  let n = 0;
  const at = (from: number) => (typeof text === 'string' ? text.indexOf('\n', from) : text.indexOf(10, from));
  let last = -1;
  for (let i = at(0); i !== -1; i = at(i + 1)) {
    n++;
    last = i;
  }
  return last === text.length - 1 ? n : n + 1;
}

/** The end (ms) of the UTC day `at` falls in. */
function nextUtcMidnight(at: number): number {
  const DAY_MS = 86_400_000;
  return Math.floor(at / DAY_MS) * DAY_MS + DAY_MS;
}
