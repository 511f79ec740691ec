import { Command, CommanderError } from 'commander';
import { registerInitCommand } from './commands/init.js';
import type { CliIo } from './commands/io.js';
import { registerLogsCommand } from './commands/logs.js';
import { createPruneVectorHook, registerLogsVectorCommands } from './commands/logs-search.js';
import { registerModelsCommand } from './commands/models.js';
import { isOaiProxyError } from './errors.js';
import { VERSION } from './version.js';

/** Runs one command to completion. Sets the exit code the CLI returns. */
export type CommandRunner = (fn: () => Promise<number>) => Promise<void>;

/** Build the commander program. `run` wraps every action so its exit code reaches `main`. */
export function createProgram(io: CliIo, run: CommandRunner): Command {
  const program = new Command('oai-proxy')
    .description(
      'Local-first proxy for the OpenAI API: forwards every request unchanged and records every exchange.',
    )
    .version(VERSION, '-v, --version', 'print the version')
    .helpOption('-h, --help', 'show help')
    .showSuggestionAfterError(true)
    // Needed for `logs` options to stay positional: `logs search x --json` is search's --json, not logs'.
    .enablePositionalOptions()
    .addHelpText(
      'after',
      `
Examples:
  $ oai-proxy serve                          start on http://127.0.0.1:8000, record to ~/.local/share/oai-proxy/
  $ oai-proxy serve --port 9000 --upstream http://127.0.0.1:11434/v1
  $ OPENAI_BASE_URL=http://127.0.0.1:8000/v1 node app.js   point any OpenAI client at it

Docs: settings come from defaults < config file < .env < environment < flags (see README).`,
    );

  program
    .command('serve')
    .description('Start the proxy: forward every request to the upstream and record each exchange')
    .option('-p, --port <port>', 'port to listen on (PORT; default 8000; 0 picks a free port)')
    .option('-H, --host <host>', 'address to listen on (HOST; default 127.0.0.1)')
    .option('-u, --upstream <url>', 'upstream base URL (OPENAI_BASE_URL; default https://api.openai.com/v1)')
    .option('--db <path>', 'SQLite database path or URL (DATABASE_URL)')
    .option(
      '--log-file <path>',
      'JSON-lines log file (LOG_FILE_PATH; default oai-proxy.log beside the database)',
    )
    .option(
      '-c, --config <path>',
      'config file (OAI_PROXY_CONFIG; default ./oai-proxy.config.json or ~/.config/oai-proxy/config.json)',
    )
    .addHelpText(
      'after',
      `
API keys are read from OPENAI_API_KEY (environment, .env or config file), never from flags.

Stopping: SIGINT (Ctrl-C), SIGTERM or SIGHUP lets in-flight requests finish within
SHUTDOWN_GRACE_MS and writes every row; a second signal cuts them now (recorded as
proxy_shutdown); a third kills the process at once.

Examples:
  $ oai-proxy serve
  $ oai-proxy serve --port 0 --db ./proxy.db --log-file ./proxy.log
  $ OPENAI_API_KEY=sk-... oai-proxy serve --upstream https://api.openai.com/v1
  $ curl http://127.0.0.1:8000/health`,
    )
    .action((opts) => run(async () => (await import('./commands/serve.js')).runServe(opts, io)));

  registerInitCommand(program, io, run);
  registerModelsCommand(program, io, run);
  const logs = registerLogsCommand(program, io, run, { onPruned: createPruneVectorHook() });
  registerLogsVectorCommands(logs, io, run);
  refuseUnknownSubcommands(logs);

  return program;
}

/**
 * For a command that runs by itself and has subcommands (`logs`): a word that names no subcommand (`logs
 * stat`) is an unknown command with commander's suggestion, not "too many arguments", and `logs help
 * stats` shows that subcommand's help. Called once every subcommand exists: commander copies
 * allowExcessArguments into the subcommands created after it.
 */
function refuseUnknownSubcommands(cmd: Command): void {
  cmd
    .helpCommand(true)
    .allowExcessArguments(true)
    .hook('preAction', (_hooked, action) => {
      // unknownCommand is commander's own message and suggestion, left out of its typings.
      if (action === cmd && cmd.args.length > 0)
        (cmd as Command & { unknownCommand(): never }).unknownCommand();
    });
}

/** The CLI entry point: parse argv, run the command, map errors to exit codes (2 usage, 1 runtime). */
export async function main(argv: string[], io: CliIo = defaultIo()): Promise<number> {
  let exitCode = 0;
  const run: CommandRunner = async (fn) => {
    exitCode = await fn();
  };
  const program = createProgram(io, run);
  const configure = (cmd: Command) => {
    cmd.exitOverride();
    cmd.configureOutput({
      writeOut: (s) => io.stdout.write(s),
      writeErr: (s) => io.stderr.write(s),
      // Every line: the second is commander's "(Did you mean --limit?)".
      outputError: (s, write) =>
        write(
          `${s
            .split('\n')
            .filter((l) => l.trim() !== '')
            .join('\n')}\n`,
        ),
    });
    for (const sub of cmd.commands) configure(sub);
  };
  configure(program);
  // Help shown because a subcommand is missing (`oai-proxy models`) goes to stderr as an error: exit 2.
  let helpForMissingCommand = false;
  program.on('beforeAllHelp', (context: { error: boolean }) => {
    helpForMissingCommand = context.error;
  });
  try {
    await program.parseAsync(argv, { from: 'user' });
    return exitCode;
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.code === 'commander.help') return helpForMissingCommand ? 2 : 0;
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version') return 0;
      return 2;
    }
    if (isOaiProxyError(err)) {
      io.stderr.write(`oai-proxy: ${err.message}\n`);
      return err.exitCode;
    }
    io.stderr.write(`oai-proxy: ${(err as Error)?.message ?? String(err)}\n`);
    return 1;
  }
}

function defaultIo(): CliIo {
  // `oai-proxy logs | head`: a reader that goes away ends the output quietly, as with any Unix tool. Any
  // other write error (a full disk, a device error) is one line on stderr and exit 1, not a stack trace.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(0);
    try {
      process.stderr.write(`oai-proxy: Cannot write standard output: ${err.code ?? err.message}\n`);
    } catch {
      // stderr is gone too: the exit code says it.
    }
    process.exit(1);
  });
  return {
    stdout: process.stdout,
    stderr: process.stderr,
    env: process.env,
    cwd: process.cwd(),
    stdin: process.stdin,
  };
}
