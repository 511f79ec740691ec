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
