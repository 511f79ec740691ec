import { readlinkSync } from 'node:fs';
import { getPriority, setPriority } from 'node:os';

/**
 * How much lower than the thread that starts them the recorder thread and its checkpoint worker run
 * (nice values). Their work (INSERTs, the full-text index, WAL checkpoints) can wait; the event loop
 * that proxies requests cannot. On a busy machine the scheduler then gives a shared core to the event
 * loop about three times out of four (nice 5: weight 335 against 1024) instead of half the time; on an
 * idle core nothing changes. It is not lower still: a thread at nice 10 gets ~10% of a contended core,
 * and rows that wait too long are spilled to the log file only.
 */
export const BACKGROUND_NICE = 5;

/**
 * Lower the calling thread's scheduling priority by BACKGROUND_NICE (Linux, where every thread has its
 * own nice value and /proc/thread-self names it; elsewhere, or if the system refuses, nothing happens).
 * Returns whether it did.
 */
export function lowerThisThreadPriority(by = BACKGROUND_NICE): boolean {
  if (process.platform !== 'linux' || by <= 0) return false;
  try {
    const tid = Number(readlinkSync('/proc/thread-self').split('/').pop());
    if (!Number.isInteger(tid) || tid <= 0) return false;
    setPriority(tid, Math.min(19, getPriority(tid) + by));
    return true;
  } catch {
    return false;
  }
}
