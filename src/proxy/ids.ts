import { randomFillSync } from 'node:crypto';

const ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
const pool = Buffer.alloc(16 * 256);
let poolOffset = pool.length;

/** A time-sortable id (ULID layout: 10 chars of milliseconds, 16 random chars), lower-case. */
export function newExchangeId(now = Date.now()): string {
  let time = '';
  let t = now;
  for (let i = 0; i < 10; i++) {
    time = ALPHABET[t % 32] + time;
    t = Math.floor(t / 32);
  }
  if (poolOffset + 16 > pool.length) {
    randomFillSync(pool);
    poolOffset = 0;
  }
  let rand = '';
  for (let i = 0; i < 16; i++) rand += ALPHABET[pool[poolOffset + i] & 31];
  poolOffset += 16;
  return (time + rand).toLowerCase();
}
