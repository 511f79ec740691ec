import { execFile } from 'node:child_process';
import { type AddressInfo, connect, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';

/** The throwaway cluster's URL (`eval "$(scripts/pg-test-cluster.sh start)"`); unset = PostgreSQL tests skip. */
export const pgUrl = process.env.OAI_PROXY_TEST_PG_URL;

/** Why PostgreSQL tests are skipped, printed once per file that has them. */
export const PG_SKIP_MESSAGE =
  'OAI_PROXY_TEST_PG_URL is not set: PostgreSQL tests are skipped. Run `eval "$(scripts/pg-test-cluster.sh start)"` first (CI always does).';

export function warnIfNoPg(): void {
  if (!pgUrl) console.warn(PG_SKIP_MESSAGE);
}

/** A fresh, empty database on the test cluster; `drop()` removes it (ending its sessions first). */
export async function createTestPgDatabase(): Promise<{ url: string; name: string; drop(): Promise<void> }> {
  if (!pgUrl) throw new Error(PG_SKIP_MESSAGE);
  const name = `oai_test_${process.pid}_${Math.random().toString(36).slice(2, 10)}`;
  await adminQuery(`create database ${name}`);
  const url = new URL(pgUrl);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    name,
    async drop() {
      await adminQuery(`drop database if exists ${name} with (force)`).catch(() => undefined);
    },
  };
}

/** Run one statement on the cluster's maintenance database. */
export async function adminQuery(text: string): Promise<pg.QueryResult> {
  const client = new pg.Client({ connectionString: pgUrl });
  await client.connect();
  try {
    return await client.query(text);
  } finally {
    await client.end();
  }
}

/** Run one query against `url` with a short-lived connection. */
export async function pgQuery<T extends pg.QueryResultRow = any>(
  url: string,
  text: string,
  values: unknown[] = [],
): Promise<T[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query<T>(text, values)).rows;
  } finally {
    await client.end();
  }
}

const script = join(import.meta.dirname, '..', '..', 'scripts', 'pg-test-cluster.sh');
const run = (args: string[], env: NodeJS.ProcessEnv = process.env) =>
  promisify(execFile)('bash', [script, ...args], { env, timeout: 60_000 });

/**
 * A private cluster (scripts/pg-test-cluster.sh) for a test that stops and restarts PostgreSQL, so other
 * test files sharing OAI_PROXY_TEST_PG_URL are not disturbed. `pause` is an immediate shutdown (like a crash).
 */
export async function startPrivateCluster(): Promise<{
  url: string;
  pause(): Promise<void>;
  resume(): Promise<void>;
  stop(): Promise<void>;
}> {
  const env = { ...process.env, OAI_PROXY_TEST_PG_DIR: '' };
  const { stdout } = await run(['start'], env);
  const url = /OAI_PROXY_TEST_PG_URL='([^']+)'/.exec(stdout)?.[1];
  const dir = /OAI_PROXY_TEST_PG_DIR='([^']+)'/.exec(stdout)?.[1];
  if (!url || !dir) throw new Error(`pg-test-cluster.sh start printed no URL: ${stdout}`);
  return {
    url,
    pause: async () => void (await run(['pause', dir])),
    resume: async () => void (await run(['resume', dir])),
    stop: async () => void (await run(['stop', dir])),
  };
}

/**
 * A TCP relay from a loopback port to `targetPort`: `down()` cuts every connection and stops listening;
 * `freeze()` makes it a black hole (a network cut: connections stay open, nothing gets through either
 * way, not even their closing).
 */
export async function startRelay(targetPort: number) {
  const sockets = new Set<Socket>();
  let server: Server | null = null;
  let port = 0;
  let frozen = false;
  const relay = (from: Socket, to: Socket) => {
    from.on('data', (d) => {
      if (!frozen) to.write(d);
    });
    from.on('end', () => {
      if (!frozen) to.end();
    });
  };
  const up = () =>
    new Promise<void>((resolve) => {
      server = createServer({ allowHalfOpen: true }, (client) => {
        const upstream = connect({ port: targetPort, host: '127.0.0.1', allowHalfOpen: true });
        for (const s of [client, upstream]) {
          sockets.add(s);
          s.on('error', () => undefined);
          s.on('close', () => sockets.delete(s));
        }
        relay(client, upstream);
        relay(upstream, client);
      });
      server.listen(port, '127.0.0.1', () => {
        port = (server!.address() as AddressInfo).port;
        resolve();
      });
    });
  const down = () =>
    new Promise<void>((resolve) => {
      for (const s of sockets) s.destroy();
      if (!server) return resolve();
      const s = server;
      server = null;
      s.close(() => resolve());
    });
  await up();
  return {
    port,
    up,
    down,
    freeze: () => {
      frozen = true;
    },
  };
}
