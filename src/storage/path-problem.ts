import { statSync } from 'node:fs';
import { dirname } from 'node:path';

/**
 * Why `path` could not be created or opened, in words (`/a/b is a file, not a directory`), from the
 * error that mkdir/open gave: the bare code (EEXIST, ENOTDIR) names the wrong thing.
 */
export function pathProblem(path: string, err: unknown): string {
  const code = (err as NodeJS.ErrnoException)?.code;
  if (code === 'EEXIST' || code === 'ENOTDIR') {
    const blocker = fileAmongParents(path);
    if (blocker) return `${blocker} is a file, not a directory`;
  }
  if (code === 'EISDIR' || isDirectory(path)) return `${path} is a directory`;
  if (code === 'EACCES' || code === 'EPERM') return `permission denied (${code})`;
  if (code === 'EROFS') return 'the file system is read-only (EROFS)';
  if (code === 'ENOENT')
    return isDirectory(dirname(path))
      ? `${dirname(path)} does not take new files (ENOENT)`
      : `${dirname(path)} does not exist and cannot be created (ENOENT)`;
  return code ?? (err as Error)?.message ?? String(err);
}

/** True when `path` exists and is a directory. */
export function isDirectory(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

/** The nearest parent of `path` that exists as something other than a directory. */
function fileAmongParents(path: string): string | undefined {
  for (let dir = dirname(path); dir !== dirname(dir); dir = dirname(dir)) {
    try {
      return statSync(dir).isDirectory() ? undefined : dir;
    } catch {
      // does not exist: look further up
    }
  }
  return undefined;
}
