import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

/**
 * Returns what to call with the size of each streamed request-body chunk the proxy passes on.
 *
 * node:http's parser copies every body chunk it reads (up to 64 KB) into a new Buffer whose memory lives
 * outside the JavaScript heap. Nothing keeps those Buffers once they are written upstream, but V8 frees
 * them only at its next collection, and a busy upload allocates little else: V8 waits for about 64 MB of
 * such memory before it collects. A 200 MB upload through the bench's bare node:http pipe grows the
 * process by 28–36 MB, nearly all of it such garbage.
 *
 * After every `everyBytes` streamed, this asks V8 for a young-generation collection (0.3–5 ms here),
 * which frees the chunks already sent, so an upload grows the process by roughly `everyBytes` plus what
 * is in flight. The request path itself never waits on it beyond that pause.
 *
 * Returns null when this V8 does not let the collector be called; uploads then work as before.
 * `collect` is V8's young-generation collection unless given (a test counts the calls).
 */
export function createBodyMemoryReleaser(
  everyBytes: number,
  collect: (() => void) | null = youngCollector(),
): ((bytes: number) => void) | null {
  if (!collect) return null;
  let since = 0;
  return (bytes) => {
    since += bytes;
    if (since < everyBytes) return;
    since = 0;
    collect();
  };
}

let collector: (() => void) | null | undefined;

/** V8's collector, asked for a young-generation (minor) collection; null where V8 refuses. */
export function youngCollector(): (() => void) | null {
  if (collector !== undefined) return collector;
  collector = null;
  try {
    // `--expose-gc` set now defines `gc` only in contexts created afterwards: the process's own global
    // scope stays as it was.
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as (options?: { type: 'minor' | 'major' }) => void;
    if (typeof gc === 'function') collector = () => gc({ type: 'minor' });
  } catch {
    collector = null;
  }
  return collector;
}
