import { describe, expect, test } from 'vitest';
import { createBodyMemoryReleaser, youngCollector } from '../../src/proxy/body-memory.js';

const MB = 1024 * 1024;

/** Leave `megabytes` of unreferenced Buffers outside the heap, as node:http's parser does per chunk. */
function leaveGarbage(megabytes: number): void {
  for (let i = 0; i < megabytes * 16; i++) Buffer.allocUnsafeSlow(64 * 1024).fill(i & 0xff);
}

const arrayBuffersMb = () => process.memoryUsage().arrayBuffers / MB;

/**
 * The Buffers' memory as V8 accounts it once `ms` have passed, or as soon as it fell below `below`:
 * V8 frees dead buffers on a background thread after the collection that found them.
 */
async function arrayBuffersAfter(ms: number, below = 0): Promise<number> {
  const end = Date.now() + ms;
  for (;;) {
    const now = arrayBuffersMb();
    if (now < below || Date.now() >= end) return now;
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('createBodyMemoryReleaser', () => {
  // Whether a collection ran is counted at the collector: the memory figure alone cannot say, as V8 may
  // collect on its own at any time (it did, once in a CI run, within the 100 ms after 4 MB).
  const countingCollector = () => {
    const collect = youngCollector();
    expect(collect).toBeTypeOf('function');
    const counted = () => {
      counted.calls++;
      collect!();
    };
    counted.calls = 0;
    return counted;
  };

  test('frees dead body buffers once the streamed bytes reach the threshold, not before', async () => {
    const collect = countingCollector();
    const release = createBodyMemoryReleaser(8 * MB, collect);
    expect(release).toBeTypeOf('function');
    leaveGarbage(24);
    const before = arrayBuffersMb();
    expect(before).toBeGreaterThan(20);
    // Below the threshold: nothing collected.
    release!(4 * MB);
    expect(collect.calls).toBe(0);
    // The threshold reached: a young-generation collection frees the dead buffers.
    release!(4 * MB);
    expect(collect.calls).toBe(1);
    expect(await arrayBuffersAfter(3000, before - 20)).toBeLessThan(before - 20);
  });

  test('counts again from zero after each collection', async () => {
    const collect = countingCollector();
    const release = createBodyMemoryReleaser(8 * MB, collect)!;
    release(8 * MB);
    expect(collect.calls).toBe(1);
    await arrayBuffersAfter(100);
    leaveGarbage(24);
    const before = arrayBuffersMb();
    release(7 * MB);
    expect(collect.calls).toBe(1);
    release(1 * MB);
    expect(collect.calls).toBe(2);
    expect(await arrayBuffersAfter(3000, before - 20)).toBeLessThan(before - 20);
  });

  test('the releaser serve uses calls V8 for real (no collector given)', async () => {
    const release = createBodyMemoryReleaser(8 * MB)!;
    leaveGarbage(24);
    const before = arrayBuffersMb();
    release(8 * MB);
    expect(await arrayBuffersAfter(3000, before - 20)).toBeLessThan(before - 20);
  });

  test('does not make `gc` visible to the program', () => {
    createBodyMemoryReleaser(1024);
    expect((globalThis as { gc?: unknown }).gc).toBeUndefined();
  });
});
