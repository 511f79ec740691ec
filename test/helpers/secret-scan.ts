import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Config } from '../../src/config/schema.js';

type Env = Record<string, string | undefined>;

/** Shortest value treated as a secret (shorter test keys like `sk-x` would match everywhere). */
const MIN_SECRET = 8;

/** Every secret a configuration holds: upstream, admin, client and Qdrant keys, named upstreams' keys and secret headers. */
export function configSecrets(config: Config, env: Env): string[] {
  return [
    config.openaiApiKey,
    config.adminApiKey,
    config.qdrantApiKey,
    ...config.proxyApiKeys,
    ...Object.values(config.upstreams).flatMap((u) => [
      u.apiKey,
      u.apiKeyEnv ? env[u.apiKeyEnv] : undefined,
      // header values that carry a credential (Authorization, x-api-key, x-*-token, …)
      ...Object.entries(u.headers ?? {})
        .filter(([name]) => /auth|key|token|secret|cookie|password|signature/i.test(name))
        .map(([, value]) => value),
    ]),
  ].filter((s): s is string => typeof s === 'string' && s.length >= MIN_SECRET);
}

/** Values of environment variables that name keys (`*_KEY`, `*_KEYS`, comma-separated). */
export function envSecrets(env: Env): string[] {
  return Object.entries(env)
    .filter(([k]) => /(^|_)(API_)?KEYS?$/.test(k))
    .flatMap(([, v]) => (v ?? '').split(','))
    .map((s) => s.trim())
    .filter((s) => s.length >= MIN_SECRET);
}

/** Where a secret was found, the secret masked. */
export interface SecretLeak {
  where: string;
  secret: string;
}

function mask(s: string): string {
  return `${s.slice(0, 3)}…${s.slice(-4)}`;
}

/** Look for each secret in the texts (name → content). */
export function findLeaks(secrets: readonly string[], texts: Record<string, string>): SecretLeak[] {
  const leaks: SecretLeak[] = [];
  for (const [where, text] of Object.entries(texts)) {
    for (const s of secrets) if (text.includes(s)) leaks.push({ where, secret: mask(s) });
  }
  return leaks;
}

/**
 * Keys split across the events of a stored stream (SSE `data:` lines, or the one JSON message a line of a
 * WebSocket session), which no event holds whole: each string field's values joined in event order, per
 * field (`chat.completion.chunk.choices.1.delta.content`, `response.output_text.delta.delta`; an array
 * element with an `index` is placed by it), then searched like `findLeaks`.
 */
export function deltaLeaks(secrets: readonly string[], body: string | null): SecretLeak[] {
  const joined: Record<string, string> = {};
  const walk = (v: unknown, path: string): void => {
    if (typeof v === 'string') joined[path] = (joined[path] ?? '') + v;
    else if (Array.isArray(v))
      for (const [i, e] of v.entries()) walk(e, `${path}.${(e as { index?: unknown } | null)?.index ?? i}`);
    else if (v && typeof v === 'object') for (const [k, e] of Object.entries(v)) walk(e, `${path}.${k}`);
  };
  for (const line of (body ?? '').split('\n')) {
    const json = line.startsWith('data:') ? line.slice(5).trim() : line.trim();
    if (!json.startsWith('{')) continue;
    try {
      const event = JSON.parse(json) as Record<string, unknown>;
      walk(event, String(event.type ?? event.object ?? ''));
    } catch {
      // not a JSON event
    }
  }
  return findLeaks(secrets, joined);
}

/**
 * Every file under `dir` the proxy writes: databases (with -wal/-shm), log files and rotated logs, read as
 * latin1 so binary pages compare byte for byte. Config files are not included (they hold keys by design).
 */
export function readProxyFiles(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  if (!existsSync(dir)) return out;
  const walk = (d: string) => {
    for (const name of readdirSync(d)) {
      const p = join(d, name);
      try {
        const st = statSync(p);
        if (st.isDirectory()) walk(p);
        else if (/\.(db|sqlite|log)(-wal|-shm|\.\d+)?$/.test(name) || /\.log\b/.test(name))
          out[p] = readFileSync(p).toString('latin1');
      } catch (err) {
        // SQLite removes -wal/-shm when the last connection (a background thread's) closes.
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
    }
  };
  walk(dir);
  return out;
}

/** Throw when any secret appears in the texts: the test suite's standing guarantee that keys never leak. */
export function assertNoLeaks(
  secrets: readonly string[],
  texts: Record<string, string>,
  context: string,
): void {
  const leaks = findLeaks(secrets, texts);
  if (leaks.length > 0) {
    throw new Error(
      `secret leaked (${context}): ${leaks.map((l) => `${l.secret} in ${l.where}`).join('; ')}`,
    );
  }
}

/** Test IOs created during the current test, scanned after it by test/helpers/secret-scan-setup.ts. */
export const watchedIos: { env: Env; out: () => string; err: () => string }[] = [];
