import { type LogFileSystem, nodeLogFileSystem } from '../../src/storage/log-file.js';

/**
 * The log file's file operations over node:fs, with every write failing with `code` (ENOSPC, EIO,
 * EDQUOT…) from `fail(code)` until `heal()`: what a full disk, a quota or a failing device does to the
 * descriptor already open (nothing is reopened to recover). Opens keep working.
 */
export function failingLogFile(): { fs: LogFileSystem; fail(code: string): void; heal(): void } {
  let failing: string | null = null;
  const error = (code: string) =>
    Object.assign(new Error(`${code}: injected write failure, write`), { code, errno: -1, syscall: 'write' });
  return {
    fs: {
      ...nodeLogFileSystem,
      write(fd, data, done) {
        if (failing) {
          const err = error(failing);
          setImmediate(() => done(err, 0));
        } else nodeLogFileSystem.write(fd, data, done);
      },
      writeSync(fd, data) {
        if (failing) throw error(failing);
        return nodeLogFileSystem.writeSync(fd, data);
      },
    },
    fail(code) {
      failing = code;
    },
    heal() {
      failing = null;
    },
  };
}

/**
 * The log file's file operations over node:fs, where every write started after `hang()` never returns
 * (a hung disk, an NFS hard mount whose server went away): its callback is never called.
 */
export function hangingLogFile(): { fs: LogFileSystem; hang(): void } {
  let hung = false;
  return {
    fs: {
      ...nodeLogFileSystem,
      write(fd, data, done) {
        if (!hung) nodeLogFileSystem.write(fd, data, done);
      },
    },
    hang() {
      hung = true;
    },
  };
}
