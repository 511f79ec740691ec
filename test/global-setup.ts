import { spawnSync } from 'node:child_process';
import { join } from 'node:path';

const script = join(import.meta.dirname, '..', 'scripts', 'pg-test-cluster.sh');

let startedDir: string | undefined;

/**
 * `npm test` runs the PostgreSQL suites too: when OAI_PROXY_TEST_PG_URL is not set and PostgreSQL's server
 * binaries are installed, start a throwaway cluster for this run (and remove it afterwards). Without the
 * binaries those suites skip, saying so.
 */
export function setup(): void {
  if (process.env.OAI_PROXY_TEST_PG_URL) return;
  const started = spawnSync('bash', [script, 'start'], { encoding: 'utf8' });
  if (started.status !== 0) {
    process.stderr.write(
      `PostgreSQL suites skipped: ${started.stderr.trim() || 'could not start a test cluster'}\n`,
    );
    return;
  }
  for (const m of started.stdout.matchAll(/^export (\w+)='([^']*)'$/gm)) process.env[m[1]] = m[2];
  startedDir = process.env.OAI_PROXY_TEST_PG_DIR;
}

export function teardown(): void {
  if (startedDir) spawnSync('bash', [script, 'stop', startedDir], { encoding: 'utf8' });
}
