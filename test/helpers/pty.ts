import { type ChildProcess, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { stripVTControlCharacters } from 'node:util';

const HELPER = fileURLToPath(new URL('./pty-run.py', import.meta.url));

/** Keys as a terminal sends them. */
export const KEY = {
  enter: '\r',
  down: '\x1b[B',
  up: '\x1b[A',
  ctrlC: '\x03',
} as const;

/** A program running in a real pseudo-terminal (via python3's pty module), driven like a user would. */
export interface PtySession {
  /** Everything printed so far, ANSI escapes removed. */
  output(): string;
  /** Wait until `text` appears in output printed after the previous `expect` match; returns that output. */
  expect(text: string | RegExp, timeoutMs?: number): Promise<string>;
  /** Type keys (see KEY). */
  send(keys: string): void;
  /** Resolves with the exit code once the program ends. */
  exit(timeoutMs?: number): Promise<number>;
  kill(): void;
}

/** Start `command args…` in a pseudo-terminal with exactly `env` (plus PATH) and `cwd`. */
export function spawnPty(
  command: string,
  args: string[],
  options: { env: Record<string, string | undefined>; cwd: string },
): PtySession {
  const child: ChildProcess = spawn('python3', [HELPER, command, ...args], {
    cwd: options.cwd,
    env: { PATH: process.env.PATH, TERM: 'xterm-256color', ...options.env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let raw = '';
  let mark = 0;
  const listeners = new Set<() => void>();
  const onData = (b: Buffer) => {
    raw += b.toString('utf8');
    for (const l of listeners) l();
  };
  child.stdout!.on('data', onData);
  child.stderr!.on('data', onData);
  const exited = new Promise<number>((resolve) =>
    child.on('exit', (code, sig) => resolve(code ?? 128 + (sig ? 1 : 0))),
  );
  let done = false;
  exited.then(() => {
    done = true;
    for (const l of listeners) l();
  });
  const clean = () => stripVTControlCharacters(raw);

  return {
    output: clean,
    expect(text, timeoutMs = 10_000) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const all = clean();
          const rest = all.slice(mark);
          const m = typeof text === 'string' ? rest.indexOf(text) : rest.search(text);
          if (m >= 0) {
            const len = typeof text === 'string' ? text.length : (rest.match(text)?.[0].length ?? 0);
            mark += m + len;
            finish();
            resolve(rest.slice(0, m + len));
          } else if (done) {
            finish();
            reject(new Error(`program exited before printing ${String(text)}; output:\n${all}`));
          }
        };
        const timer = setTimeout(() => {
          finish();
          reject(new Error(`timed out waiting for ${String(text)}; output:\n${clean()}`));
        }, timeoutMs);
        const finish = () => {
          clearTimeout(timer);
          listeners.delete(check);
        };
        listeners.add(check);
        check();
      });
    },
    send(keys) {
      child.stdin!.write(keys);
    },
    exit(timeoutMs = 10_000) {
      return Promise.race([
        exited,
        new Promise<number>((_, reject) =>
          setTimeout(() => reject(new Error(`program did not exit; output:\n${clean()}`)), timeoutMs),
        ),
      ]);
    },
    kill() {
      if (!done) child.kill('SIGKILL');
    },
  };
}
