import { randomBytes } from 'node:crypto';
import { chmodSync, closeSync, fsyncSync, mkdirSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { OaiProxyError } from '../errors.js';

/**
 * Write a config object as pretty JSON to `path` atomically: a temporary file in the same directory,
 * mode 0600 (it holds secrets), fsynced, then renamed over the target. The directory is created (0700)
 * if missing. On failure the temporary file is removed and the target is untouched.
 */
export function writeConfigFile(path: string, values: Record<string, unknown>): void {
  const dir = dirname(path);
  const tmp = join(dir, `.${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  let fd: number | undefined;
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    fd = openSync(tmp, 'wx', 0o600);
    writeSync(fd, `${JSON.stringify(values, null, 2)}\n`);
    fsyncSync(fd);
    closeSync(fd);
    fd = undefined;
    chmodSync(tmp, 0o600);
    renameSync(tmp, path);
  } catch (err) {
    if (fd !== undefined) closeSync(fd);
    rmSync(tmp, { force: true });
    const code = (err as NodeJS.ErrnoException).code ?? String(err);
    throw new OaiProxyError(
      'internal',
      `Cannot write config file ${path}: ${code}; choose another location with --config PATH or fix the directory's permissions`,
      { cause: err },
    );
  }
}
