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
  build();
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

/**
 * Build dist/ first: `serve` records from a worker thread that runs the built
 * dist/storage/recorder-worker.js (a worker cannot load the TypeScript sources), and the bin smoke tests
 * run the built CLI. A stale dist would test yesterday's worker.
 */
function build(): void {
  const root = join(import.meta.dirname, '..');
  const r = spawnSync(process.execPath, [join(root, 'node_modules', 'tsup', 'dist', 'cli-default.js')], {
    cwd: root,
    encoding: 'utf8',
  });
  if (r.status !== 0) throw new Error(`npm run build failed before the tests:\n${r.stdout}\n${r.stderr}`);
}

export function teardown(): void {
  if (startedDir) spawnSync('bash', [script, 'stop', startedDir], { encoding: 'utf8' });
}
