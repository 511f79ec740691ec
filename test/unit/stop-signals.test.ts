import { afterEach, expect, test, vi } from 'vitest';
import { type CliIo, watchStopSignals } from '../../src/commands/io.js';

const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
const io = (signal?: AbortSignal): CliIo => ({
  stdout: { write: () => true },
  stderr: { write: () => true },
  env: {},
  cwd: '/',
  signal,
});

/** The listener watchStopSignals added for `signal` (called directly: emitting would reach vitest's own). */
function added(before: Map<string, unknown[]>, signal: (typeof SIGNALS)[number]) {
  const now = process.listeners(signal).filter((l) => !before.get(signal)!.includes(l));
  expect(now).toHaveLength(1);
  return now[0] as (s: NodeJS.Signals) => void;
}

afterEach(() => {
  vi.restoreAllMocks();
});

test('the first stop signal asks to stop, the second to stop now, the third kills with that signal', async () => {
  const kill = vi.spyOn(process, 'kill').mockImplementation(() => true);
  const before = new Map(SIGNALS.map((s) => [s, process.listeners(s)]));
  const stop = watchStopSignals(io());
  const listeners = SIGNALS.map((s) => added(before, s));
  listeners[2]('SIGHUP');
  expect(await stop.requested).toBe('SIGHUP');
  listeners[0]('SIGINT');
  expect(await stop.hurried).toBe('SIGINT');
  expect(kill).not.toHaveBeenCalled();
  listeners[1]('SIGTERM');
  // Node's default handling is back before the signal is raised again.
  for (const s of SIGNALS) expect(process.listeners(s)).toEqual(before.get(s));
  expect(kill).toHaveBeenCalledWith(process.pid, 'SIGTERM');
});

test('io.signal aborting asks to stop; dispose() removes every handler', async () => {
  const before = new Map(SIGNALS.map((s) => [s, process.listeners(s)]));
  const ac = new AbortController();
  const stop = watchStopSignals(io(ac.signal));
  ac.abort();
  expect(await stop.requested).toBe('abort');
  stop.dispose();
  for (const s of SIGNALS) expect(process.listeners(s)).toEqual(before.get(s));
});
