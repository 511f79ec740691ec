import { createRequire } from 'node:module';
import type * as Pg from 'pg';
import type * as Undici from 'undici';

const require = createRequire(import.meta.url);
let undiciModule: typeof Undici | undefined;
let pgModule: typeof Pg | undefined;

/**
 * undici, loaded on first use. Commands that never make HTTP requests (`logs`, `models`, `--help`)
 * start without paying for it (~80 ms of module loading on this machine).
 */
export function undici(): typeof Undici {
  undiciModule ??= require('undici') as typeof Undici;
  return undiciModule;
}

/** `pg`, loaded only when a postgres:// DATABASE_URL is used. */
export function pg(): typeof Pg {
  pgModule ??= require('pg') as typeof Pg;
  return pgModule;
}
