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
