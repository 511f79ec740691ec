/** What a command may touch of the outside world; tests pass their own. */
export interface CliIo {
  stdout: { write(s: string): unknown; isTTY?: boolean };
  stderr: { write(s: string): unknown; isTTY?: boolean };
  env: Record<string, string | undefined>;
  cwd: string;
  stdin?: NodeJS.ReadableStream & { isTTY?: boolean };
  /** Ends long-running commands (serve, logs --follow) as SIGINT would. */
  signal?: AbortSignal;
}

/** Resolves when the process gets SIGINT/SIGTERM or `io.signal` aborts; returns the reason. */
export function waitForStop(io: CliIo): Promise<string> {
  return new Promise((resolve) => {
    const done = (why: string) => {
      process.off('SIGINT', onInt);
      process.off('SIGTERM', onTerm);
      io.signal?.removeEventListener('abort', onAbort);
      resolve(why);
    };
    const onInt = () => done('SIGINT');
    const onTerm = () => done('SIGTERM');
    const onAbort = () => done('abort');
    process.once('SIGINT', onInt);
    process.once('SIGTERM', onTerm);
    if (io.signal?.aborted) done('abort');
    else io.signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * `stream` as a long-running command's console: the first write error, thrown (a full disk: ENOSPC) or
 * emitted (a reader gone: EPIPE; a hung-up terminal: EIO), silences it for good and the command goes on.
 * `dispose()` removes the 'error' listener it put on `stream` (process.stderr outlives the command).
 */
export function createQuietConsole(stream: CliIo['stderr']): CliIo['stderr'] & { dispose(): void } {
  let gone = false;
  const emitter = stream as Partial<NodeJS.WritableStream>;
  const onError = () => {
    gone = true;
  };
  const listens = typeof emitter.on === 'function' && typeof emitter.off === 'function';
  if (listens) emitter.on?.('error', onError);
  return {
    isTTY: stream.isTTY,
    write(s: string) {
      if (gone) return true;
      try {
        return stream.write(s);
      } catch {
        gone = true;
        return true;
      }
    },
    dispose() {
      if (listens) emitter.off?.('error', onError);
    },
  };
}

/** How `serve` is asked to stop: by signals (see watchStopSignals) or `io.signal`. */
export interface StopSignals {
  /** Resolves with the first stop signal's name ('abort' for `io.signal`): stop gracefully. */
  readonly requested: Promise<string>;
  /** Resolves with the second signal's name: stop now (the grace period ends). */
  readonly hurried: Promise<string>;
  /** Remove the handlers: Node's default handling is back. */
  dispose(): void;
}

/** SIGHUP too: the terminal or ssh session `serve` runs in was closed. */
const STOP_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

/**
 * Watches SIGINT, SIGTERM and SIGHUP until disposed: the first one (or `io.signal` aborting) resolves
 * `requested`, the second `hurried`; a third kills the process with that signal at once (Node's default
 * handling: nothing more is written), the way out when stopping hangs.
 */
export function watchStopSignals(io: CliIo): StopSignals {
  let request!: (why: string) => void;
  let hurry!: (why: string) => void;
  const requested = new Promise<string>((r) => {
    request = r;
  });
  const hurried = new Promise<string>((r) => {
    hurry = r;
  });
  let received = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    received++;
    if (received === 1) request(signal);
    else if (received === 2) hurry(signal);
    else {
      dispose();
      process.kill(process.pid, signal);
    }
  };
  const onAbort = () => {
    received++;
    request('abort');
  };
  const dispose = () => {
    for (const s of STOP_SIGNALS) process.off(s, onSignal);
    io.signal?.removeEventListener('abort', onAbort);
  };
  for (const s of STOP_SIGNALS) process.on(s, onSignal);
  if (io.signal?.aborted) onAbort();
  else io.signal?.addEventListener('abort', onAbort, { once: true });
  return { requested, hurried, dispose };
}

/**
 * Lines for `dest` written together: once per event-loop turn, or every `delayMs` when given (and at once
 * past 64 KB). A busy proxy then makes one write() for many exchange lines instead of one each.
 * `flush()` writes what is pending now.
 */
export class BatchedWriter {
  private pending = '';
  private scheduled = false;
  private ended = false;

  constructor(
    private readonly dest: { write(s: string): unknown },
    private readonly delayMs = 0,
  ) {}

  write(s: string): boolean {
    // After end() the destination is closed: a late line is dropped rather than thrown from a timer.
    if (this.ended) return false;
    this.pending += s;
    if (this.pending.length >= 65_536) this.flush();
    else if (!this.scheduled) {
      this.scheduled = true;
      if (this.delayMs > 0) setTimeout(this.flush, this.delayMs).unref();
      else setImmediate(this.flush);
    }
    return true;
  }

  /** Take what is pending without writing it (to write it another way, e.g. synchronously at exit). */
  take(): string {
    const text = this.pending;
    this.pending = '';
    return text;
  }

  /** Write what is pending; later lines are dropped (call before closing the destination). */
  end(): void {
    this.flush();
    this.ended = true;
  }

  readonly flush = (): void => {
    this.scheduled = false;
    if (this.pending === '') return;
    const text = this.pending;
    this.pending = '';
    this.dest.write(text);
  };
}
