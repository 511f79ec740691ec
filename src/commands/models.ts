import { existsSync, statSync } from 'node:fs';
import Table from 'cli-table3';
import type { Command } from 'commander';
import type { CommandRunner } from '../cli.js';
import {
  type ResolvedConfig,
  resolveConfig,
  settingNames,
  settingSource,
  withoutConfiguredSecrets,
} from '../config/load.js';
import { resolveDatabaseLocation } from '../config/paths.js';
import { unusedSettings } from '../config/schema.js';
import { OaiProxyError } from '../errors.js';
import { checkModelName, checkModelText, type ModelRegistry } from '../registry/registry.js';
import {
  createPgRegistryStore,
  createSqliteRegistryStore,
  type RegistryStore,
} from '../registry/registry-store.js';
import { buildSeedPlan, upstreamNames } from '../registry/seed.js';
import { isSqliteBusy, lockedDatabaseError } from '../storage/busy-wait.js';
import { openStorage } from '../storage/storage.js';
import type { CliIo } from './io.js';
import { terminalSafe as safe } from './terminal-text.js';

/** Options every `models` subcommand takes (database resolution as in `serve`). */
export interface ModelsCommonOptions {
  db?: string;
  config?: string;
}

export interface ModelsAddOptions extends ModelsCommonOptions {
  displayName?: string;
  description?: string;
  upstream?: string;
  deployment?: string;
}

/** Register `oai-proxy models …`. */
export function registerModelsCommand(program: Command, io: CliIo, run: CommandRunner): void {
  const models = program
    .command('models')
    .description('List and edit the model registry (models, aliases, upstreams); works with serve running')
    .option('--db <path>', 'SQLite database path or URL (DATABASE_URL)')
    .option('-c, --config <path>', 'config file (OAI_PROXY_CONFIG)')
    .addHelpText(
      'after',
      `
Edits take effect in a running \`oai-proxy serve\` on the same database within about a second.

Examples:
  $ oai-proxy models list
  $ oai-proxy models show gpt-4o --json
  $ oai-proxy models add llama3 --upstream local --description "Llama 3 on the local vLLM"
  $ oai-proxy models add gpt-4o-eu --upstream azure --deployment gpt4o-prod
  $ oai-proxy models map gpt4 gpt-4o
  $ oai-proxy models unmap gpt4
  $ oai-proxy models remove llama3`,
    );
  const common = (cmd: Command): ModelsCommonOptions => cmd.optsWithGlobals() as ModelsCommonOptions;
  // Each subcommand takes --db/--config too, so they work after it (`models list --db x`) under
  // the program's positional options as well as before it (`models --db x list`).
  const sub = (name: string): Command =>
    models
      .command(name)
      .option('--db <path>', 'SQLite database path or URL (DATABASE_URL)')
      .option('-c, --config <path>', 'config file (OAI_PROXY_CONFIG)');

  sub('list')
    .description('Show every model with its aliases, upstream and source')
    .option('--json', 'print the same object as GET /admin/models')
    .addHelpText(
      'after',
      '\nExamples:\n  $ oai-proxy models list\n  $ oai-proxy models list --json | jq .mappings',
    )
    .action((opts, cmd: Command) => run(() => runModelsList({ ...common(cmd), json: opts.json }, io)));

  sub('show')
    .description('Show one model or alias')
    .argument('<name>', 'model name or alias')
    .option('--json', 'print as JSON')
    .addHelpText(
      'after',
      '\nExamples:\n  $ oai-proxy models show gpt-4o\n  $ oai-proxy models show gpt4 --json',
    )
    .action((name: string, opts, cmd: Command) =>
      run(() => runModelsShow(name, { ...common(cmd), json: opts.json }, io)),
    );

  sub('add')
    .description('Register a model')
    .argument('<name>', 'model name as clients send it')
    .option('--display-name <text>', 'human-readable name')
    .option('--description <text>', 'description')
    .option(
      '--upstream <name>',
      'named upstream from the config file\'s "upstreams" (default: OPENAI_BASE_URL)',
    )
    .option('--deployment <name>', 'Azure deployment name (default: the model name)')
    .addHelpText(
      'after',
      '\nExamples:\n  $ oai-proxy models add gpt-4o-mini\n  $ oai-proxy models add llama3 --upstream local --display-name "Llama 3 8B"',
    )
    .action((name: string, _opts, cmd: Command) =>
      run(() => runModelsAdd(name, common(cmd) as ModelsAddOptions, io)),
    );

  sub('remove')
    .description('Remove a model (its aliases stay)')
    .argument('<name>', 'model name')
    .addHelpText('after', '\nExamples:\n  $ oai-proxy models remove llama3')
    .action((name: string, _opts, cmd: Command) => run(() => runModelsRemove(name, common(cmd), io)));

  sub('map')
    .description('Make ALIAS a name for ACTUAL: requests for ALIAS are sent upstream as ACTUAL')
    .argument('<alias>', 'name clients may send')
    .argument('<actual>', 'model (or alias) it stands for')
    .addHelpText(
      'after',
      '\nExamples:\n  $ oai-proxy models map gpt4 gpt-4o\n  $ oai-proxy models map fast gpt-4o-mini',
    )
    .action((alias: string, actual: string, _opts, cmd: Command) =>
      run(() => runModelsMap(alias, actual, common(cmd), io)),
    );

  sub('unmap')
    .description('Remove an alias')
    .argument('<alias>', 'alias to remove')
    .addHelpText('after', '\nExamples:\n  $ oai-proxy models unmap gpt4')
    .action((alias: string, _opts, cmd: Command) => run(() => runModelsUnmap(alias, common(cmd), io)));
}

/**
 * Open the registry on the database `serve` would use; seeds it when nothing was ever written. Only a
 * command that edits the registry may create a missing SQLite file (`create`). `check` runs on the
 * configuration before the database is opened: bad usage it throws leaves no database behind.
 */
async function withRegistry<T>(
  opts: ModelsCommonOptions,
  io: CliIo,
  fn: (store: RegistryStore, resolved: ResolvedConfig) => Promise<T>,
  { create = true, check }: { create?: boolean; check?: (resolved: ResolvedConfig) => void } = {},
): Promise<T> {
  const resolved = resolveConfig({
    configPath: opts.config,
    flags: { db: opts.db },
    env: io.env,
    cwd: io.cwd,
    unused: unusedSettings('oai-proxy models'),
  });
  for (const w of resolved.warnings) io.stderr.write(`warning: ${w}\n`);
  try {
    check?.(resolved);
    return await withResolvedRegistry(resolved, io, fn, create);
  } catch (err) {
    // A key pasted into DATABASE_URL or MODEL_MAPPINGS is quoted by the errors below: never printed.
    throw withoutConfiguredSecrets(err, resolved);
  }
}

async function withResolvedRegistry<T>(
  resolved: ResolvedConfig,
  io: CliIo,
  fn: (store: RegistryStore, resolved: ResolvedConfig) => Promise<T>,
  create: boolean,
): Promise<T> {
  const location = resolveDatabaseLocation(
    resolved.config.databaseUrl,
    resolved.env,
    io.cwd,
    settingSource(resolved, 'databaseUrl'),
  );
  if (!create && location.kind === 'sqlite' && location.path !== ':memory:') {
    if (!existsSync(location.path))
      throw new OaiProxyError(
        'database_not_found',
        `No database at ${location.path}; start \`oai-proxy serve\` (or \`oai-proxy models add\`) first, or point --db / DATABASE_URL at an existing file`,
      );
    // A 0-byte file is no database either (SQLite would make one in it): read-only commands leave it be.
    if (statSync(location.path).size === 0)
      throw new OaiProxyError(
        'database_not_found',
        `Database ${location.path} is empty; start \`oai-proxy serve\` (or \`oai-proxy models add\`) to create it, or point --db / DATABASE_URL at the right file`,
      );
  }
  // A database `serve` never wrote (another program's SQLite file, another PostgreSQL database) is refused
  // as `logs` refuses it, by the same reader check: migrating and seeding it would add oai-proxy's tables.
  if (!create && (location.kind === 'postgres' || location.path !== ':memory:')) {
    await (await openStorage(location, { readonly: true })).close();
  }
  const storage = await openStorage(location);
  try {
    // On PostgreSQL every write also NOTIFYs the running `serve` instances, which reload at once.
    const store = storage.sqlite
      ? createSqliteRegistryStore(storage.sqlite)
      : createPgRegistryStore(storage.db);
    if (!(await store.isSeeded())) await store.seed(buildSeedPlan(resolved.config, settingNames(resolved)));
    return await fn(store, resolved);
  } catch (err) {
    // Each write is one transaction: it did all or nothing.
    if (isSqliteBusy(err)) throw lockedDatabaseError(storage.label, 'nothing was changed', err);
    throw err;
  } finally {
    await storage.close();
  }
}

/** withRegistry for `list` and `show`: a mistyped --db is an error, not a new database showing the defaults. */
function readRegistry<T>(
  opts: ModelsCommonOptions,
  io: CliIo,
  fn: (store: RegistryStore, resolved: ResolvedConfig) => Promise<T>,
): Promise<T> {
  return withRegistry(opts, io, fn, { create: false });
}

/** `models list [--json]`. */
export async function runModelsList(
  opts: ModelsCommonOptions & { json?: boolean },
  io: CliIo,
): Promise<number> {
  return readRegistry(opts, io, async (store, resolved) => {
    const registry = await store.load();
    if (opts.json) {
      io.stdout.write(`${JSON.stringify(registry.view(upstreamNames(resolved.config)), null, 2)}\n`);
      return 0;
    }
    const table = new Table({
      head: ['Name', 'Aliases', 'Upstream', 'Source'],
      style: { head: [], border: [] },
      chars: { mid: '', 'left-mid': '', 'mid-mid': '', 'right-mid': '' },
    });
    for (const m of registry.models.values()) {
      table.push([
        safe(m.name),
        safe(registry.aliasesOf(m.name).join(', ')),
        safe(m.upstream ?? 'default'),
        m.source,
      ]);
    }
    io.stdout.write(`${table.toString()}\n`);
    const dangling = [...registry.mappings.values()].filter((a) => !registry.resolve(a.alias).model);
    if (dangling.length) {
      io.stdout.write(
        `Aliases of unregistered models: ${dangling.map((a) => `${safe(a.alias)} → ${safe(a.actual)}`).join(', ')}\n`,
      );
    }
    io.stdout.write(`${registry.models.size} models, ${registry.mappings.size} aliases\n`);
    return 0;
  });
}

/** `models show NAME [--json]`. */
export async function runModelsShow(
  name: string,
  opts: ModelsCommonOptions & { json?: boolean },
  io: CliIo,
): Promise<number> {
  return readRegistry(opts, io, async (store, resolved) => {
    const registry = await store.load();
    const view = registry.view(upstreamNames(resolved.config));
    const r = registry.resolve(name);
    if (!r.model && !r.alias) throw notFound(name, registry);
    const entry = view.models.find((m) => m.name === r.actual) ?? null;
    const aliases = r.model ? registry.aliasesOf(r.actual) : [];
    if (opts.json) {
      const out = r.alias
        ? {
            alias: name,
            actual_model: registry.mappings.get(name)!.actual,
            resolves_to: r.actual,
            model: entry,
          }
        : { ...entry, aliases };
      io.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
      return 0;
    }
    // Registry text comes from the CLI, the admin API and the config file: escaped, one line per field.
    const lines: string[] = [];
    if (r.alias) {
      const actual = registry.mappings.get(name)!.actual;
      lines.push(`${safe(name)} is an alias of ${safe(actual)}`);
      if (r.actual !== actual) lines.push(`  resolves to ${safe(r.actual)}`);
      if (!entry)
        lines.push(`  ${safe(r.actual)} is not a registered model; requests go to the default upstream`);
    }
    if (entry) {
      if (r.alias) lines.push('');
      lines.push(
        `Name          ${safe(entry.name)}`,
        `Display name  ${safe(entry.display_name ?? '-')}`,
        `Description   ${safe(entry.description ?? '-')}`,
        `Upstream      ${safe(entry.upstream ?? 'default')}`,
        `Deployment    ${safe(entry.deployment ?? '-')}`,
        `Source        ${entry.source}`,
        `Created       ${new Date(entry.created * 1000).toISOString()}`,
        `Aliases       ${safe(aliases.join(', ') || '-')}`,
      );
    }
    io.stdout.write(`${lines.join('\n')}\n`);
    return 0;
  });
}

/** `models add NAME [--display-name] [--description] [--upstream] [--deployment]`. */
export async function runModelsAdd(name: string, opts: ModelsAddOptions, io: CliIo): Promise<number> {
  checkModelName(name, 'NAME');
  if (opts.deployment !== undefined) checkModelName(opts.deployment, '--deployment');
  checkModelText(opts.displayName, '--display-name');
  checkModelText(opts.description, '--description');
  const checkUpstream = (resolved: ResolvedConfig) => {
    const known = upstreamNames(resolved.config);
    if (opts.upstream !== undefined && !known.includes(opts.upstream)) {
      throw new OaiProxyError(
        'usage',
        `--upstream ${opts.upstream} is not configured; known upstreams: ${known.join(', ')} (declare more under "upstreams" in the config file)`,
      );
    }
  };
  return withRegistry(
    opts,
    io,
    async (store) => {
      const m = await store.addModel(
        {
          name,
          displayName: opts.displayName,
          description: opts.description,
          upstream: opts.upstream === 'default' ? null : opts.upstream,
          deployment: opts.deployment,
        },
        'cli',
      );
      io.stdout.write(`Added model ${safe(m.name)} (upstream ${safe(m.upstream ?? 'default')})\n`);
      return 0;
    },
    { check: checkUpstream },
  );
}

/** `models remove NAME`. */
export async function runModelsRemove(name: string, opts: ModelsCommonOptions, io: CliIo): Promise<number> {
  return withRegistry(opts, io, async (store) => {
    const registry = await store.load();
    if (!registry.models.has(name)) {
      if (registry.mappings.has(name)) {
        throw new OaiProxyError(
          'not_found',
          `"${safe(name)}" is an alias, not a model; remove it with \`oai-proxy models unmap ${safe(name)}\``,
        );
      }
      throw notFound(name, registry);
    }
    const aliases = registry.aliasesOf(name);
    await store.removeModel(name);
    io.stdout.write(`Removed model ${safe(name)}\n`);
    if (aliases.length) {
      io.stderr.write(
        `Aliases still pointing to it: ${safe(aliases.join(', '))} (remove them with \`oai-proxy models unmap\`)\n`,
      );
    }
    return 0;
  });
}

/** `models map ALIAS ACTUAL`. */
export async function runModelsMap(
  alias: string,
  actual: string,
  opts: ModelsCommonOptions,
  io: CliIo,
): Promise<number> {
  checkModelName(alias, 'ALIAS');
  checkModelName(actual, 'ACTUAL');
  return withRegistry(opts, io, async (store) => {
    const before = (await store.load()).mappings.get(alias)?.actual;
    const outcome = await store.setMapping(alias, actual, 'cli');
    const registry = await store.load();
    io.stdout.write(
      `Mapped ${safe(alias)} → ${safe(actual)}${outcome === 'replaced' ? ` (was ${safe(before ?? '')})` : ''}\n`,
    );
    // Notes go to stderr: stdout is what a script reads.
    const target = registry.resolve(alias).actual;
    if (!registry.models.has(target)) io.stderr.write(`note: ${safe(target)} is not a registered model\n`);
    return 0;
  });
}

/** `models unmap ALIAS`. */
export async function runModelsUnmap(alias: string, opts: ModelsCommonOptions, io: CliIo): Promise<number> {
  return withRegistry(opts, io, async (store) => {
    if (!(await store.removeMapping(alias))) {
      const registry = await store.load();
      if (registry.models.has(alias)) {
        throw new OaiProxyError(
          'not_found',
          `"${safe(alias)}" is a model, not an alias; remove it with \`oai-proxy models remove ${safe(alias)}\``,
        );
      }
      throw new OaiProxyError('not_found', `No alias "${safe(alias)}"; see \`oai-proxy models list\``);
    }
    io.stdout.write(`Removed alias ${safe(alias)}\n`);
    return 0;
  });
}

function notFound(name: string, registry: ModelRegistry): OaiProxyError {
  const near = [...registry.models.keys(), ...registry.mappings.keys()].filter(
    (n) => n.includes(name) || name.includes(n),
  );
  return new OaiProxyError(
    'not_found',
    `No model or alias "${safe(name)}"${near.length ? ` (similar: ${safe(near.slice(0, 5).join(', '))})` : ''}; see \`oai-proxy models list\``,
  );
}
