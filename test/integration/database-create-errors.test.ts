import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, test, vi } from 'vitest';
import { main } from '../../src/cli.js';
import { createTempDir } from '../helpers/temp-dir.js';
import { createTestIo } from '../helpers/test-proxy.js';

// A full disk, a quota or a failing device cannot be made for real in a test (tests run as root, with no
// small file system to fill): node:fs fails creating the database with the errno such a disk gives.
const failing: { path: string; syscall: 'open' | 'mkdir'; code: string } = {
  path: '',
  syscall: 'open',
  code: '',
};
vi.mock('node:fs', async (importOriginal) => {
  const fs = await importOriginal<typeof import('node:fs')>();
  const fail = (syscall: string, path: unknown) => {
    if (failing.path && failing.syscall === syscall && String(path).startsWith(failing.path))
      throw Object.assign(new Error(`${failing.code}: injected failure, ${syscall} '${path}'`), {
        code: failing.code,
        errno: -1,
        syscall,
        path,
      });
  };
  const openSync = ((path: any, ...rest: any[]) => {
    fail('open', path);
    return (fs.openSync as any)(path, ...rest);
  }) as typeof fs.openSync;
  const mkdirSync = ((path: any, ...rest: any[]) => {
    fail('mkdir', path);
    return (fs.mkdirSync as any)(path, ...rest);
  }) as typeof fs.mkdirSync;
  return { ...fs, default: { ...fs, openSync, mkdirSync }, openSync, mkdirSync };
});

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  failing.path = '';
  for (const c of cleanups.splice(0).reverse()) await c();
});

describe('serve --db: a database file that cannot be created', () => {
  // Exit 2 is bad usage: a path the user must change. A full disk or a failing device is not fixed by
  // another --db; it is a runtime failure (exit 1), said with the same message.
  test.each([
    ['open', 'ENOSPC', 1],
    ['open', 'EDQUOT', 1],
    ['open', 'EIO', 1],
    ['mkdir', 'EIO', 1],
    ['open', 'ESOMETHINGNEW', 1],
    ['open', 'EACCES', 2],
    ['open', 'EROFS', 2],
    ['open', 'ENAMETOOLONG', 2],
    ['mkdir', 'EPERM', 2],
  ] as const)(
    '%s failing with %s: exit %i, one line naming the file and the reason',
    async (syscall, code, exit) => {
      const tmp = createTempDir();
      cleanups.push(tmp.cleanup);
      const db = join(tmp.path, 'sub', 'p.db');
      Object.assign(failing, { path: syscall === 'open' ? db : join(tmp.path, 'sub'), syscall, code });
      const io = createTestIo({ HOME: tmp.path, XDG_CONFIG_HOME: join(tmp.path, 'config') }, tmp.path);
      const reason =
        code === 'EACCES' || code === 'EPERM'
          ? `permission denied (${code})`
          : code === 'EROFS'
            ? 'the file system is read-only (EROFS)'
            : code;
      expect(await main(['serve', '--port', '0', '--db', db], io)).toBe(exit);
      expect(io.err()).toBe(
        `oai-proxy: Cannot create database ${db}: ${reason}; choose another location with --db or DATABASE_URL\n`,
      );
      expect(existsSync(db)).toBe(false);
    },
  );
});
