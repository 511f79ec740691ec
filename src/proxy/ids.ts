import { randomFillSync } from 'node:crypto';

/** Crockford's base32, lower-case. */
const ALPHABET = '0123456789abcdefghjkmnpqrstvwxyz';
const CODES = Buffer.from(ALPHABET, 'latin1');
const pool = Buffer.alloc(16 * 256);
let poolOffset = pool.length;
const out = Buffer.alloc(26);

/** A time-sortable id (ULID layout: 10 chars of milliseconds, 16 random chars), lower-case. */
export function newExchangeId(now = Date.now()): string {
  let t = now;
  for (let i = 9; i >= 0; i--) {
    out[i] = CODES[t % 32];
    t = Math.floor(t / 32);
  }
  if (poolOffset + 16 > pool.length) {
    randomFillSync(pool);
    poolOffset = 0;
  }
  for (let i = 0; i < 16; i++) out[10 + i] = CODES[pool[poolOffset + i] & 31];
  poolOffset += 16;
  return out.toString('latin1', 0, 26);
}
