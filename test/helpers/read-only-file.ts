import { spawnSync } from 'node:child_process';
import { chmodSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const root = process.getuid?.() === 0;

/**
 * Make the file at `path` unwritable for this process, as `chmod 0400` does for a user: root ignores file
 * modes, so as root the file is made immutable (`chattr +i`, which root obeys; a read-only mount fails the
 * same way). Returns the undo (call it before the temp dir is removed: an immutable file cannot be).
 */
export function makeReadOnly(path: string): () => void {
  if (!root) {
    chmodSync(path, 0o400);
    return () => chmodSync(path, 0o600);
  }
  const set = spawnSync('chattr', ['+i', path], { encoding: 'utf8' });
  if (set.status !== 0) throw new Error(`chattr +i ${path} failed: ${set.stderr || set.error}`);
  return () => {
    spawnSync('chattr', ['-i', path]);
  };
}

/**
 * Why makeReadOnly cannot work here (root without CAP_LINUX_IMMUTABLE, a temp file system without
 * attributes), or null when it can: tests that need a read-only file skip, saying so.
 */
export const readOnlyUnsupported: string | null = (() => {
  if (!root) return null;
  const probe = join(tmpdir(), `oai-proxy-chattr-probe-${process.pid}`);
  writeFileSync(probe, '');
  try {
    const set = spawnSync('chattr', ['+i', probe], { encoding: 'utf8' });
    if (set.status !== 0)
      return `running as root, and chattr +i fails here (${(set.stderr || String(set.error)).trim()})`;
    spawnSync('chattr', ['-i', probe]);
    return null;
  } finally {
    rmSync(probe, { force: true });
  }
})();
