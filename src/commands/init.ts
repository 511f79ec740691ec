import { randomBytes } from 'node:crypto';
import { accessSync, constants, existsSync, statSync } from 'node:fs';
import { isIP } from 'node:net';
import { dirname, resolve } from 'node:path';
import type { Command } from 'commander';
import type { CommandRunner } from '../cli.js';
import {
  checkBaseUrls,
  configFileTarget,
  findConfigFile,
  knownSecrets,
  maskSecret,
  readConfigFile,
  requireFlagValue,
  resolveConfig,
  shownValue,
  splitApiVersion,
  withoutConfiguredSecrets,
  withoutSecrets,
} from '../config/load.js';
import { redactUrl, resolveDatabaseLocation, resolveLogFilePath } from '../config/paths.js';
import { isSecretName } from '../config/secret-names.js';
import { writeConfigFile } from '../config/write.js';
import { isOaiProxyError, OaiProxyError } from '../errors.js';
import { createUpstreamTarget, isAzureV1Base } from '../proxy/forward.js';
import { checkUpstream, describeUpstreamCheck, type UpstreamCheckResult } from '../proxy/upstream-check.js';
import { checkModelName } from '../registry/registry.js';
import type { CliIo } from './io.js';

/** Flags of `oai-proxy init`, as commander parsed them. */
export interface InitOptions {
  config?: string;
  yes?: boolean;
  force?: boolean;
  check?: boolean;
  kind?: string;
  upstream?: string;
  apiVersion?: string;
  host?: string;
  port?: string;
  db?: string;
  logFile?: string;
  modelPolicy?: string;
  qdrantUrl?: string;
  generateAdminKey?: boolean;
}

export type UpstreamKind = 'openai' | 'azure' | 'compatible';
export type ModelPolicy = 'off' | 'strict' | 'record';

/**
 * Everything `init` asks; turned into config-file keys by `applyAnswers`. An unset `apiVersion`,
 * `databaseUrl` or `logFilePath` is left out of the file, so serve derives it where it runs: pinned,
 * it would override that derivation (`serve --db ./d.db` would log elsewhere than beside d.db).
 */
export interface InitAnswers {
  kind: UpstreamKind;
  baseUrl: string;
  apiKey?: string;
  /** Azure only; unset: serve's default for the base URL. */
  apiVersion?: string;
  host: string;
  port: number;
  /** Unset: serve's default, `$XDG_DATA_HOME/oai-proxy/oai-proxy.db`. */
  databaseUrl?: string;
  /** Unset: `oai-proxy.log` beside the database. */
  logFilePath?: string;
  policy: ModelPolicy;
  qdrantUrl?: string;
  adminApiKey?: string;
  /** The admin key was generated in this run: print it once after writing. */
  adminKeyGenerated: boolean;
  /** What `GET {baseUrl}/models` answered, when init asked (`--check`). */
  check?: UpstreamCheckResult;
}

const KINDS: readonly UpstreamKind[] = ['openai', 'azure', 'compatible'];
const POLICIES: readonly ModelPolicy[] = ['off', 'strict', 'record'];

/** The base URL each kind of upstream starts from. */
export const KIND_BASE_URL: Record<UpstreamKind, string> = {
  openai: 'https://api.openai.com/v1',
  azure: 'https://YOUR-RESOURCE.openai.azure.com/openai',
  compatible: 'http://127.0.0.1:11434/v1',
};
/** The api-version serve sends Azure when none is configured (registry-setup.ts has the same). */
export const DEFAULT_AZURE_API_VERSION = '2024-10-21';

const KIND_LABEL: Record<UpstreamKind, string> = {
  openai: 'OpenAI',
  azure: 'Azure OpenAI',
  compatible: 'OpenAI-compatible server',
};
const POLICY_LABEL: Record<ModelPolicy, string> = {
  off: 'forward any model name (no validation)',
  strict: 'reject unknown models with 404 model_not_found',
  record: 'validate, but let unknown models through (recorded as unknown)',
};

/** Register `oai-proxy init` on the program. */
export function registerInitCommand(program: Command, io: CliIo, run: CommandRunner): void {
  program
    .command('init')
    .description('Guided setup: answer a few questions, get the config file `serve` reads')
    .option(
      '-c, --config <path>',
      'file to write (default: OAI_PROXY_CONFIG, else $XDG_CONFIG_HOME/oai-proxy/config.json; both read from the environment, then ./.env, as serve reads them)',
    )
    .option('-y, --yes', 'ask nothing: write defaults plus the flags below (API key from OPENAI_API_KEY)')
    .option(
      '-f, --force',
      'overwrite an existing file without asking (with --yes: needed only when the file exists)',
    )
    .option('--kind <kind>', 'upstream kind: openai, azure, or compatible (vLLM, Ollama, llama.cpp…)')
    .option('-u, --upstream <url>', 'upstream base URL (default depends on --kind)')
    .option('--api-version <version>', `Azure api-version (default ${DEFAULT_AZURE_API_VERSION})`)
    .option('-H, --host <host>', 'address serve listens on (default 127.0.0.1)')
    .option('-p, --port <port>', 'port serve listens on (default 8000)')
    .option(
      '--db <path>',
      'SQLite database file or postgres:// URL (default $XDG_DATA_HOME/oai-proxy/oai-proxy.db)',
    )
    .option('--log-file <path>', 'JSON-lines log file (default oai-proxy.log beside the database)')
    .option('--model-policy <policy>', 'off (default), strict (404 for unknown models) or record')
    .option('--qdrant-url <url>', 'Qdrant URL for semantic log search (default: off)')
    .option('--generate-admin-key', 'generate an admin API key, print it once')
    .option('--check', 'GET {upstream}/models once and report the result (default when interactive)')
    .option('--no-check', 'skip that request')
    .addHelpText(
      'after',
      `
API keys never come from flags: interactively the key is asked with a hidden prompt; with --yes it is
taken from OPENAI_API_KEY (and the admin key from ADMIN_API_KEY) if set. Leave it empty and the proxy
forwards each client's own key. The file is written atomically with mode 0600. Re-running init offers
the current values as defaults and keeps settings it does not ask about; a stored key is kept only for
the host it was written for (an upstream moved to another host does not get it).
What serve derives by itself is written only when given or different: the database, the log file
beside it, Azure's api-version, and "openaiApiType" (Azure is told by a *.openai.azure.com host or a
deployment's path, also when OPENAI_BASE_URL names one later).
For an OpenAI-compatible server with --model-policy strict or record, --check registers the models
its GET /models lists (as availableModels, in place of the default OpenAI list); without them every
model would be refused (strict) or recorded as unknown (record).

Examples:
  $ oai-proxy init
  $ oai-proxy init --config ./oai-proxy.config.json
  $ OPENAI_API_KEY=sk-... oai-proxy init --yes --port 9000 --check
  $ oai-proxy init --yes --kind compatible --upstream http://127.0.0.1:11434/v1
  $ oai-proxy init --yes --force --model-policy strict     update one setting of an existing file`,
    )
    .action((opts) => run(() => runInit(opts, io)));
}

/** `oai-proxy init`: ask (or take flags), confirm, write the config file atomically, say what to run next. */
export async function runInit(options: InitOptions, io: CliIo): Promise<number> {
  const interactive = !options.yes;
  if (interactive && !io.stdin?.isTTY) {
    throw new OaiProxyError(
      'usage',
      'oai-proxy init asks questions but standard input is not a terminal; in scripts use `oai-proxy init --yes [--upstream URL] [--port N] …` (the API key comes from OPENAI_API_KEY)',
    );
  }
  const target = targetPath(options, io);
  const { path } = target;
  const pathOk = validateWritableFile(path);
  if (pathOk !== true) throw new OaiProxyError('usage', `Cannot write the config file ${path}: ${pathOk}`);

  const exists = existsSync(path);
  let existing: Record<string, unknown> = {};
  let unreadable = false;
  if (exists) {
    try {
      existing = readConfigFile(path);
    } catch (err) {
      if (!isOaiProxyError(err) || !options.force) {
        throw new OaiProxyError(
          'config_invalid',
          `${(err as Error).message}; fix it, or rerun with --force to replace it`,
        );
      }
      // --force replaces it; say so, since whatever the file held is lost (its reason names no value).
      io.stderr.write(
        `warning: ${(err as Error).message}; its contents could not be read and are not kept: --force replaces the file\n`,
      );
      unreadable = true;
    }
  }

  // A key pasted into a flag (`--port "$OPENAI_API_KEY"`) is refused as serve refuses it: never quoted.
  const secrets = knownSecrets({
    env: io.env,
    cwd: io.cwd,
    file: existing,
    urls: [options.upstream, options.db, options.qdrantUrl],
  });
  // Flags are checked first: a bad one is exit 2 whether or not the file exists.
  const initial = initialAnswers(existing, options, io, interactive, secrets);
  if (exists && !interactive && !options.force) {
    throw new OaiProxyError(
      'conflict',
      `Config file ${path} already exists; add --force to overwrite it (its values and the keys init does not manage are kept unless flags change them)`,
    );
  }
  if (interactive) {
    if (exists && !unreadable)
      io.stdout.write(
        `Updating ${path}: its current values are offered as defaults; settings init does not ask about are kept.\n`,
      );
    try {
      return await runInteractive(target, exists && !options.force, existing, initial, options, io);
    } catch (err) {
      const name = (err as Error)?.name;
      if (name === 'ExitPromptError' || name === 'AbortPromptError') {
        io.stderr.write('\noai-proxy init: interrupted; nothing was written\n');
        return 130;
      }
      throw err;
    }
  }

  if (options.check) initial.check = await reportCheck(initial, io);
  return writeAndReport(target, applyAnswers(existing, initial), initial, io);
}

/** The file init writes; `from`: the variable that chose it (`OAI_PROXY_CONFIG in /dir/.env`), if one did. */
type ConfigTarget = { path: string; from?: string };

/**
 * `--config` > OAI_PROXY_CONFIG > the per-user default, the variables read from the environment and
 * `./.env` as serve reads them (configFileTarget).
 */
function targetPath(options: InitOptions, io: CliIo): ConfigTarget {
  if (options.config !== undefined) {
    const path = requireFlagValue(
      options.config,
      '--config',
      'a file to write',
      '--config ./oai-proxy.config.json',
      'leave it out for the file serve reads by default',
    );
    return { path: resolve(io.cwd, path) };
  }
  return configFileTarget(io.env, io.cwd);
}

/**
 * The hosts (origins) when `baseUrl` is not where the existing file's key was going: the file's
 * `openaiBaseUrl`, or OpenAI's API when it names none (serve's default). Null when it is the same.
 */
function keyHostChange(
  existing: Record<string, unknown>,
  baseUrl: string,
): { from: string; to: string } | null {
  const was =
    typeof existing.openaiBaseUrl === 'string' && existing.openaiBaseUrl !== ''
      ? existing.openaiBaseUrl
      : KIND_BASE_URL.openai;
  const from = originOf(was);
  const to = originOf(baseUrl);
  return from !== null && to !== null && from !== to ? { from, to } : null;
}

function originOf(url: string): string | null {
  try {
    return new URL(url).origin;
  } catch {
    return null;
  }
}

/** Start values: the existing file, overridden by flags (validated here: a bad flag is exit 2). */
function initialAnswers(
  existing: Record<string, unknown>,
  options: InitOptions,
  io: CliIo,
  interactive: boolean,
  secrets: readonly string[],
): InitAnswers {
  const refuse = (name: string, value: string, why: string): never => {
    throw withoutConfiguredSecrets(
      new OaiProxyError('usage', `Invalid ${name} = ${shownValue(value, secrets)}: ${why}`),
      { secrets },
    );
  };
  const flag = <T>(
    name: string,
    value: string | undefined,
    check: (v: string) => true | string,
    to: (v: string) => T,
  ) => {
    if (value === undefined) return undefined;
    const ok = check(value);
    if (ok !== true) refuse(name, value, ok);
    return to(value);
  };
  const str = (k: string) =>
    typeof existing[k] === 'string' && existing[k] !== '' ? (existing[k] as string) : undefined;

  const fileType = fileApiType(existing);
  const kindFlag = flag('--kind', options.kind, validateKind, (v) => v.toLowerCase() as UpstreamKind);
  // An Azure portal URL's ?api-version (…/deployments/d?api-version=2024-02-01) is the api-version, as
  // serve takes it. With any other query the URL is refused as written.
  const portal = options.upstream === undefined ? undefined : splitApiVersion(options.upstream.trim());
  const fromPortal =
    portal && !/[?#]/.test(portal.url) && (kindFlag ?? inferKind(portal.url, undefined)) === 'azure'
      ? portal
      : undefined;
  const upstreamFlag = flag('--upstream', fromPortal?.url ?? options.upstream, validateUrl, trimSlash);
  // An explicit --upstream decides the kind by itself; otherwise the file's type and URL do.
  const kind =
    kindFlag ??
    (upstreamFlag ? inferKind(upstreamFlag, undefined) : inferKind(str('openaiBaseUrl'), fileType));
  const baseUrl =
    upstreamFlag ??
    (kindFlag && kindFlag !== inferKind(str('openaiBaseUrl'), fileType) ? undefined : str('openaiBaseUrl')) ??
    KIND_BASE_URL[kind];
  if (!interactive) {
    const ok = validateBaseUrl(baseUrl, kind);
    if (ok !== true) refuse('--upstream', baseUrl, ok);
  }

  const versionFlag = flag('--api-version', options.apiVersion, validateApiVersion, (v) => v.trim());
  if (fromPortal) {
    const ok = validateApiVersion(fromPortal.version);
    if (ok !== true) refuse('--upstream', options.upstream!, `its ?api-version: ${ok}`);
    if (versionFlag && versionFlag !== fromPortal.version)
      io.stderr.write(
        `warning: --upstream holds ?api-version=${fromPortal.version}, but --api-version is ${versionFlag}, which is written\n`,
      );
  }
  // What the flags or the file set; the rest is left to serve (a default pinned here would override it).
  const apiVersion = versionFlag ?? fromPortal?.version ?? str('openaiApiVersion');
  const host = flag('--host', options.host, validateHost, (v) => v.trim()) ?? str('host') ?? '127.0.0.1';
  const port =
    flag('--port', options.port, validatePort, (v) => Number(v)) ??
    (Number.isInteger(existing.port) ? (existing.port as number) : 8000);
  const databaseUrl =
    flag(
      '--db',
      options.db,
      (v) => validateDatabase(v, io),
      (v) => normaliseDatabase(v, io),
    ) ?? str('databaseUrl');
  const logFilePath =
    flag(
      '--log-file',
      options.logFile,
      (v) => validateLogFile(v, io),
      (v) => normaliseLogFile(v, io),
    ) ?? str('logFilePath');
  const policy =
    flag('--model-policy', options.modelPolicy, validatePolicy, (v) => v.toLowerCase() as ModelPolicy) ??
    (existing.validateModels === true ? (existing.allowUnknownModels === true ? 'record' : 'strict') : 'off');
  const qdrantUrl = flag('--qdrant-url', options.qdrantUrl, validateUrl, trimSlash) ?? str('qdrantUrl');

  // Keys come from the environment only in --yes mode; interactively they are typed at a hidden prompt.
  const envKey = interactive ? undefined : io.env.OPENAI_API_KEY || undefined;
  const envAdmin = interactive ? undefined : io.env.ADMIN_API_KEY || undefined;
  const generate = Boolean(options.generateAdminKey);
  let fileKey = str('openaiApiKey');
  const moved = keyHostChange(existing, baseUrl);
  // (Without --force an existing file is not written at all: nothing to warn about.)
  if (!interactive && options.force && envKey === undefined && fileKey !== undefined && moved) {
    // The file's key would be sent to a host it was not written for (an OpenAI key to a local server).
    io.stderr.write(
      `warning: the existing file's API key was written for ${moved.from}; it is not kept for ${moved.to}. Set OPENAI_API_KEY to write the key for the new upstream\n`,
    );
    fileKey = undefined;
  }
  return {
    kind,
    baseUrl,
    apiKey: envKey ?? fileKey,
    apiVersion,
    host,
    port,
    databaseUrl,
    logFilePath,
    policy,
    qdrantUrl,
    adminApiKey: generate ? generateAdminKey() : (envAdmin ?? str('adminApiKey')),
    adminKeyGenerated: generate,
  };
}

type Prompts = typeof import('@inquirer/prompts');

async function runInteractive(
  target: ConfigTarget,
  overwriting: boolean,
  existing: Record<string, unknown>,
  initial: InitAnswers,
  options: InitOptions,
  io: CliIo,
): Promise<number> {
  const { path } = target;
  // Loaded only here so that `serve` never pays for the prompt library.
  const p: Prompts = await import('@inquirer/prompts');
  const ctx = {
    input: io.stdin as NodeJS.ReadableStream,
    output: io.stdout as unknown as NodeJS.WritableStream,
    signal: io.signal,
  };

  const kind = await p.select<UpstreamKind>(
    {
      message: 'Upstream kind',
      default: initial.kind,
      choices: [
        { name: 'OpenAI (api.openai.com)', value: 'openai' },
        { name: 'Azure OpenAI', value: 'azure' },
        {
          name: 'Other OpenAI-compatible server (vLLM, Ollama, llama.cpp, LM Studio…)',
          value: 'compatible',
        },
      ],
    },
    ctx,
  );
  const baseUrl = trimSlash(
    await inputUrl(
      p,
      {
        message: kind === 'azure' ? 'Azure endpoint base URL' : 'Upstream base URL',
        default: kind === initial.kind ? initial.baseUrl : KIND_BASE_URL[kind],
        validate: (v) => validateBaseUrl(v.trim(), kind),
      },
      ctx,
    ),
  );
  let apiVersion: string | undefined;
  if (kind === 'azure') {
    // Azure's …/openai/v1 API takes none: there an empty answer leaves it out.
    const derived = defaultApiVersion(baseUrl);
    const answer = (
      await p.input(
        {
          message: derived
            ? 'Azure api-version'
            : 'Azure api-version (empty: none, as the …/openai/v1 API needs)',
          default: initial.apiVersion ?? derived ?? '',
          validate: (v) => (!derived && v.trim() === '') || validateApiVersion(v),
        },
        ctx,
      )
    ).trim();
    apiVersion = unlessDerived(answer || undefined, derived, existing.openaiApiVersion);
  }

  let apiKey: string | undefined;
  let keep = false;
  if (initial.apiKey) {
    const moved = keyHostChange(existing, baseUrl);
    keep = await p.confirm(
      moved
        ? {
            message: `Keep the stored API key ${maskSecret(initial.apiKey)}? It was written for ${moved.from}, and the upstream is now ${moved.to}`,
            default: false,
          }
        : { message: `Keep the stored API key ${maskSecret(initial.apiKey)}?`, default: true },
      ctx,
    );
    if (keep) apiKey = initial.apiKey;
  }
  if (!keep) {
    apiKey =
      (
        await p.password(
          {
            message: "API key (hidden; leave empty to forward each client's own key)",
            mask: '*',
            validate: (v) => (/\s/.test(v.trim()) ? 'an API key has no spaces' : true),
          },
          ctx,
        )
      ).trim() || undefined;
  }

  const upstream = { ...initial, kind, baseUrl, apiVersion, apiKey };
  const check = options.check !== false ? await reportCheck(upstream, io) : undefined;

  const host = (
    await p.input({ message: 'Listen host', default: initial.host, validate: validateHost }, ctx)
  ).trim();
  const port = Number(
    await p.input({ message: 'Listen port', default: String(initial.port), validate: validatePort }, ctx),
  );
  const initialDatabase = initial.databaseUrl ?? defaultDatabaseUrl(io);
  const database = normaliseDatabase(
    await inputUrl(
      p,
      {
        message: 'SQLite database file or postgres:// URL',
        default: initialDatabase,
        validate: (v) => validateDatabase(v, io),
      },
      ctx,
    ),
    io,
  );
  // An answer equal to what serve derives is left out of the file (unless the file set it already).
  const databaseUrl = unlessDerived(database, defaultDatabaseUrl(io), existing.databaseUrl);
  const derivedLog = defaultLogFile(databaseUrl, io);
  const logDefault = database === initialDatabase ? (initial.logFilePath ?? derivedLog) : derivedLog;
  const logFilePath = unlessDerived(
    normaliseLogFile(
      await p.input(
        { message: 'Log file', default: logDefault, validate: (v) => validateLogFile(v, io) },
        ctx,
      ),
      io,
    ),
    derivedLog,
    existing.logFilePath,
  );
  const policy = await p.select<ModelPolicy>(
    {
      message: 'Model validation',
      default: initial.policy,
      choices: POLICIES.map((value) => ({ name: POLICY_LABEL[value], value })),
    },
    ctx,
  );
  const qdrantUrl =
    trimSlash(
      await inputUrl(
        p,
        {
          message: 'Qdrant URL for semantic log search (empty: off)',
          default: initial.qdrantUrl ?? '',
          validate: (v) => v.trim() === '' || validateUrl(v.trim()),
        },
        ctx,
      ),
    ) || undefined;

  type AdminChoice = 'keep' | 'none' | 'generate' | 'enter';
  const adminChoices: { name: string; value: AdminChoice }[] = [];
  if (initial.adminApiKey)
    adminChoices.push({ name: `Keep the stored key ${maskSecret(initial.adminApiKey)}`, value: 'keep' });
  adminChoices.push(
    { name: 'None (the /admin API stays off)', value: 'none' },
    { name: 'Generate a strong random key (shown once)', value: 'generate' },
    { name: 'Enter my own key', value: 'enter' },
  );
  const adminChoice = await p.select<AdminChoice>(
    { message: 'Admin API key', default: adminChoices[0].value, choices: adminChoices },
    ctx,
  );
  let adminApiKey: string | undefined;
  if (adminChoice === 'keep') adminApiKey = initial.adminApiKey;
  if (adminChoice === 'generate') adminApiKey = generateAdminKey();
  if (adminChoice === 'enter')
    adminApiKey = (
      await p.password(
        {
          message: 'Admin API key (hidden, at least 16 characters)',
          mask: '*',
          validate: (v) => (v.trim().length >= 16 ? true : 'use at least 16 characters'),
        },
        ctx,
      )
    ).trim();

  const answers: InitAnswers = {
    kind,
    baseUrl,
    apiKey,
    apiVersion,
    host,
    port,
    databaseUrl,
    logFilePath,
    policy,
    qdrantUrl,
    adminApiKey,
    adminKeyGenerated: adminChoice === 'generate',
    check,
  };
  const values = applyAnswers(existing, answers);
  io.stdout.write(`\n${summary(answers, existing, io)}\n`);
  const ok = await p.confirm(
    {
      message: `${overwriting ? 'Overwrite' : 'Write'} ${path}${target.from ? ` (chosen by ${target.from})` : ''}?`,
      default: true,
    },
    ctx,
  );
  if (!ok) {
    io.stdout.write('Nothing written.\n');
    return 0;
  }
  return writeAndReport(target, values, answers, io);
}

/**
 * A URL prompt whose default may hold a password (a postgres:// URL, credentials in a base URL): the
 * default is offered masked (`redactUrl`), Enter keeps the stored value, and the answered line shows
 * the answer masked too.
 */
async function inputUrl(
  p: Prompts,
  config: { message: string; default: string; validate: (v: string) => string | boolean },
  ctx: Parameters<Prompts['input']>[1],
): Promise<string> {
  const stored = config.default;
  const shown = redactUrl(stored);
  const masked = shown !== stored;
  const keeps = (v: string) => masked && v.trim() === shown;
  const answer = await p.input(
    {
      message: config.message,
      default: shown,
      validate: (v) =>
        keeps(v)
          ? true
          : masked && v.includes('***')
            ? 'type the whole URL with its password, or leave it empty to keep the stored one'
            : config.validate(v),
      transformer: (v, { isFinal }) => (isFinal ? redactUrl(v) : v),
    },
    ctx,
  );
  return keeps(answer) ? stored : answer;
}

async function reportCheck(a: InitAnswers, io: CliIo): Promise<UpstreamCheckResult> {
  const target = createUpstreamTarget('default', a.baseUrl, {
    type: a.kind === 'azure' ? 'azure' : 'openai',
    apiKey: a.apiKey,
    apiVersion: a.kind === 'azure' ? (a.apiVersion ?? defaultApiVersion(a.baseUrl)) : undefined,
  });
  const result = await checkUpstream(target);
  const mark = result.outcome === 'reachable' ? '✔' : '✖';
  io.stdout.write(`${mark} ${describeUpstreamCheck(result)}\n`);
  return result;
}

/**
 * The models to register for the answers: what an OpenAI-compatible server (Ollama, vLLM…) listed at
 * the check, when the policy validates. Their names are nothing like the default OpenAI list, so
 * without them `strict` would refuse every request. Names the registry would refuse are left out, so
 * the file stays one `serve` accepts.
 */
export function modelsToRegister(a: InitAnswers): string[] {
  if (a.kind !== 'compatible' || a.policy === 'off' || !a.check?.ids) return [];
  const names = a.check.ids.filter((id) => {
    try {
      checkModelName(id, 'model');
      return true;
    } catch {
      return false;
    }
  });
  return [...new Set(names)];
}

/** The file's new content: the existing object with init's keys set or removed; other keys kept. */
export function applyAnswers(existing: Record<string, unknown>, a: InitAnswers): Record<string, unknown> {
  const out: Record<string, unknown> = { ...existing };
  const set = (k: string, v: unknown) => {
    if (v === undefined) delete out[k];
    else out[k] = v;
  };
  set('openaiBaseUrl', a.baseUrl);
  // Serve infers Azure from the base URL (and from OPENAI_BASE_URL when that replaces it): a pinned
  // "openai" would turn that off. Written only when chosen, or needed to contradict the inference.
  const openaiType =
    inferredType(a.baseUrl) === 'azure' || fileApiType(existing) === 'openai' ? 'openai' : undefined;
  set('openaiApiType', a.kind === 'azure' ? 'azure' : openaiType);
  set('openaiApiVersion', a.kind === 'azure' ? a.apiVersion : undefined);
  set('openaiApiKey', a.apiKey);
  set('host', a.host);
  set('port', a.port);
  set('databaseUrl', a.databaseUrl);
  set('logFilePath', a.logFilePath);
  set('validateModels', a.policy !== 'off');
  set('allowUnknownModels', a.policy === 'record');
  set('qdrantUrl', a.qdrantUrl);
  set('adminApiKey', a.adminApiKey);
  const listed = modelsToRegister(a);
  if (listed.length) {
    // `availableModels` replaces the default OpenAI list (which such a server does not serve); the
    // file's own entries stay, the listed names are added after them.
    const own = Array.isArray(existing.availableModels) ? (existing.availableModels as unknown[]) : [];
    const have = new Set(own.map((m) => (typeof m === 'string' ? m : (m as { name?: unknown })?.name)));
    out.availableModels = [...own, ...listed.filter((n) => !have.has(n))];
  }
  return out;
}

const MANAGED = new Set([
  'openaiBaseUrl',
  'openaiApiType',
  'openaiApiVersion',
  'openaiApiKey',
  'host',
  'port',
  'databaseUrl',
  'logFilePath',
  'validateModels',
  'allowUnknownModels',
  'qdrantUrl',
  'adminApiKey',
]);

/** What will be written, for the confirmation: secrets masked; what serve derives, marked so. */
function summary(a: InitAnswers, existing: Record<string, unknown>, io: CliIo): string {
  const lines = [
    'Configuration:',
    `  upstream        ${KIND_LABEL[a.kind]}  ${redactUrl(a.baseUrl)}`,
    `  API key         ${a.apiKey ? maskSecret(a.apiKey) : "(none: each client's own key is forwarded)"}`,
  ];
  if (a.kind === 'azure') {
    const version = a.apiVersion ?? defaultApiVersion(a.baseUrl);
    lines.push(
      `  api-version     ${version ?? '(none: the …/openai/v1 API)'}${a.apiVersion ? '' : "  (serve's default)"}`,
    );
  }
  lines.push(
    `  listen          ${a.host}:${a.port}`,
    `  database        ${redactUrl(a.databaseUrl ?? defaultDatabaseUrl(io))}${a.databaseUrl ? '' : "  (serve's default)"}`,
    `  log file        ${a.logFilePath ?? defaultLogFile(a.databaseUrl, io)}${a.logFilePath ? '' : '  (beside the database)'}`,
    `  models          ${POLICY_LABEL[a.policy]}`,
  );
  const listed = modelsToRegister(a);
  if (listed.length) lines.push(`  registers       ${listedText(listed)}`);
  lines.push(
    `  Qdrant          ${a.qdrantUrl ? redactUrl(a.qdrantUrl) : '(off)'}`,
    `  admin API key   ${a.adminKeyGenerated ? '(generated; shown once after writing)' : a.adminApiKey ? maskSecret(a.adminApiKey) : '(none)'}`,
  );
  const kept = Object.keys(existing).filter((k) => !MANAGED.has(k));
  if (kept.length) lines.push(`  kept as is      ${kept.join(', ')}`);
  return lines.join('\n');
}

async function writeAndReport(
  { path, from }: ConfigTarget,
  values: Record<string, unknown>,
  a: InitAnswers,
  io: CliIo,
): Promise<number> {
  writeConfigFile(path, values);
  // Keys are masked by name; a key pasted into another setting (--host, --log-file) by value.
  const secrets = knownSecrets({ env: io.env, cwd: io.cwd, file: values });
  const say = (text: string) => io.stdout.write(withoutSecrets(text, secrets));
  say(
    `Wrote ${path} (mode 0600)${from ? `, chosen by ${from}` : ''}:\n${JSON.stringify(maskValues(values), null, 2)}\n`,
  );
  if (a.adminKeyGenerated && a.adminApiKey) {
    io.stdout.write(
      `\nGenerated admin API key, shown only this once (it is stored in the file):\n  ${a.adminApiKey}\nUse it as: Authorization: Bearer <key> on /admin/*\n`,
    );
  }
  try {
    checkBaseUrls(resolveConfig({ configPath: path, env: io.env, cwd: io.cwd }));
  } catch (err) {
    io.stderr.write(`warning: serve would currently refuse to start: ${(err as Error).message}\n`);
  }
  let found: string | undefined;
  try {
    found = findConfigFile(undefined, io.env, io.cwd);
  } catch {
    found = undefined;
  }
  const configArg = found === path ? '' : ` --config ${quote(path)}`;
  const next = `oai-proxy serve${configArg}`;
  if (found && found !== path) say(`note: here, serve would read ${found} first unless given --config\n`);
  const listed = modelsToRegister(a);
  if (listed.length) {
    say(
      `Registered ${listedText(listed)} (as "availableModels", in place of the default OpenAI model list; more with \`oai-proxy models add NAME${configArg}\`)\n`,
    );
  } else if (a.kind === 'compatible' && a.policy !== 'off' && !registersModels(values)) {
    const why = !a.check
      ? 'init did not ask the server for its models: no --check'
      : a.check.outcome !== 'reachable' || !a.check.ids
        ? 'the check could not read its model list'
        : 'it listed none';
    const effect =
      a.policy === 'strict'
        ? 'serve answers 404 model_not_found for every model not registered'
        : 'serve records every model not registered as unknown';
    io.stderr.write(
      withoutSecrets(
        `warning: --model-policy ${a.policy}: ${effect}, and none of this server's models is registered (${why}); register each with \`oai-proxy models add NAME${configArg}\` or list them under "availableModels" in ${path}, or rerun init with --check while the server runs\n`,
        secrets,
      ),
    );
  }
  const hostForUrl = a.host.includes(':') ? `[${a.host}]` : a.host;
  say(
    `\nNext: ${next}\nthen point OpenAI clients at http://${hostForUrl}:${a.port === 0 ? '<port>' : a.port}/v1\n`,
  );
  return 0;
}

/** "2 models the upstream lists: a, b", at most five names shown. */
function listedText(names: string[]): string {
  const shown = names.slice(0, 5).join(', ');
  const more = names.length > 5 ? `, … (${names.length - 5} more)` : '';
  return `${names.length} model${names.length === 1 ? '' : 's'} the upstream lists: ${shown}${more}`;
}

/** The file names models of its own (`availableModels` or `models`), beyond the default list. */
function registersModels(values: Record<string, unknown>): boolean {
  const has = (k: string) => Array.isArray(values[k]) && (values[k] as unknown[]).length > 0;
  return has('availableModels') || has('models');
}

/**
 * A copy of the file's values safe to print: the value of every key-like name masked, an upstream's
 * secret headers (Cookie, X-Signature…) among them, as the proxy judges header names.
 */
export function maskValues(values: Record<string, unknown>): Record<string, unknown> {
  const walk = (v: unknown, key: string): unknown => {
    // redactUrl: e.g. a DATABASE_URL password.
    if (typeof v === 'string') return isSecretName(key) && !/env$/i.test(key) ? maskSecret(v) : redactUrl(v);
    if (Array.isArray(v)) return v.map((x) => walk(x, key));
    if (v && typeof v === 'object')
      return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, walk(x, k)]));
    return v;
  };
  return walk(values, '') as Record<string, unknown>;
}

function generateAdminKey(): string {
  return `oaip_${randomBytes(32).toString('base64url')}`;
}

/** The file's `openaiApiType` as serve reads it: trimmed, in any case ("Azure" is azure). */
function fileApiType(existing: Record<string, unknown>): string | undefined {
  const v = existing.openaiApiType;
  return typeof v === 'string' && v.trim() !== '' ? v.trim().toLowerCase() : undefined;
}

/**
 * The kind of upstream a base URL (and the file's `openaiApiType`) points at: Azure where serve infers
 * it (a *.openai.azure.com host, a deployment's path) and for a *.cognitiveservices.azure.com host,
 * unless the type says "openai".
 */
export function inferKind(baseUrl: string | undefined, apiType: string | undefined): UpstreamKind {
  if (apiType === 'azure') return 'azure';
  if (!baseUrl) return 'openai';
  let host: string;
  try {
    host = new URL(baseUrl).hostname;
  } catch {
    return 'openai';
  }
  if (host === 'api.openai.com') return 'openai';
  const azure = host.endsWith('.cognitiveservices.azure.com') || inferredType(baseUrl) === 'azure';
  return azure && apiType !== 'openai' ? 'azure' : 'compatible';
}

/** The type serve gives a base URL with no `openaiApiType` (createUpstreamTarget's inference). */
function inferredType(baseUrl: string): 'openai' | 'azure' {
  try {
    return createUpstreamTarget('default', baseUrl).type;
  } catch {
    return 'openai';
  }
}

/** The api-version serve sends an Azure base URL given none: the default, or none for the …/openai/v1 API. */
function defaultApiVersion(baseUrl: string): string | undefined {
  try {
    if (isAzureV1Base(createUpstreamTarget('default', baseUrl).basePath)) return undefined;
  } catch {
    // An invalid URL is refused elsewhere.
  }
  return DEFAULT_AZURE_API_VERSION;
}

/** The database serve uses when none is configured, as resolved where init runs. */
function defaultDatabaseUrl(io: CliIo): string {
  const loc = resolveDatabaseLocation(undefined, io.env, io.cwd);
  return loc.kind === 'sqlite' ? loc.path : loc.url;
}

/**
 * An answer to write, or undefined to leave the key out: when it is what serve derives by itself and the
 * file did not set it already (a value the file holds stays, even one equal to the default).
 */
function unlessDerived<T>(value: T | undefined, derived: T | undefined, inFile: unknown): T | undefined {
  return value === derived && inFile === undefined ? undefined : value;
}

function trimSlash(v: string): string {
  return v.trim().replace(/\/+$/, '');
}

function quote(p: string): string {
  return /^[\w@%+=:,./-]+$/.test(p) ? p : `'${p.replace(/'/g, `'\\''`)}'`;
}

// Validators: `true` or a message saying what is expected (the inquirer convention, reused for flags).

export function validateKind(v: string): true | string {
  return KINDS.includes(v.toLowerCase() as UpstreamKind) ? true : 'expected openai, azure or compatible';
}

export function validatePolicy(v: string): true | string {
  return POLICIES.includes(v.toLowerCase() as ModelPolicy) ? true : 'expected off, strict or record';
}

export function validateUrl(v: string): true | string {
  let u: URL;
  try {
    u = new URL(v.trim());
  } catch {
    return 'expected an absolute URL such as https://api.openai.com/v1';
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') return 'expected an http:// or https:// URL';
  if (u.search || u.hash) return 'leave out ?query and #fragment';
  return true;
}

export function validateBaseUrl(v: string, kind: UpstreamKind): true | string {
  const ok = validateUrl(v);
  if (ok !== true) return ok;
  if (kind === 'azure' && v.includes('YOUR-RESOURCE'))
    return 'replace YOUR-RESOURCE with your Azure OpenAI resource name';
  return true;
}

export function validateApiVersion(v: string): true | string {
  return /^\d{4}-\d{2}-\d{2}(-preview)?$/.test(v.trim())
    ? true
    : `expected a date version such as ${DEFAULT_AZURE_API_VERSION} or 2025-04-01-preview`;
}

export function validateHost(v: string): true | string {
  const h = v.trim();
  if (isIP(h) || /^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$/.test(h)) return true;
  return 'expected a host name or IP address such as 127.0.0.1, 0.0.0.0 or localhost';
}

export function validatePort(v: string): true | string {
  const t = v.trim();
  if (!/^\d+$/.test(t) || Number(t) > 65535)
    return 'expected an integer from 0 to 65535 (0 picks a free port)';
  return true;
}

function validateDatabase(v: string, io: CliIo): true | string {
  if (v.trim() === '') return 'expected a file path';
  let loc: ReturnType<typeof resolveDatabaseLocation>;
  try {
    loc = resolveDatabaseLocation(v.trim(), io.env, io.cwd);
  } catch (err) {
    return (err as Error).message;
  }
  if (loc.kind === 'postgres') return validatePostgresUrl(loc.url);
  if (loc.path === ':memory:') return 'an in-memory database keeps nothing; give a file path';
  return validateWritableFile(loc.path);
}

const PG_URL_EXAMPLE = 'postgres://user:password@host:5432/database';

/** A postgres:// URL `pg` can connect with (nothing is connected to here). */
export function validatePostgresUrl(url: string): true | string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return `not a valid URL; expected ${PG_URL_EXAMPLE}`;
  }
  if (u.hostname === '' && !u.searchParams.get('host')) return `names no host; expected ${PG_URL_EXAMPLE}`;
  if (u.pathname.length <= 1) return `names no database; expected ${PG_URL_EXAMPLE}`;
  return true;
}

function normaliseDatabase(v: string, io: CliIo): string {
  const loc = resolveDatabaseLocation(v.trim(), io.env, io.cwd);
  return loc.kind === 'sqlite' ? loc.path : v.trim();
}

function validateLogFile(v: string, io: CliIo): true | string {
  if (v.trim() === '') return 'expected a file path';
  return validateWritableFile(normaliseLogFile(v, io));
}

function normaliseLogFile(v: string, io: CliIo): string {
  return resolveLogFilePath(v.trim(), { kind: 'sqlite', path: ':memory:' }, io.env, io.cwd);
}

/** The log file serve derives: `oai-proxy.log` beside the database (serve's default one when unset). */
function defaultLogFile(databaseUrl: string | undefined, io: CliIo): string {
  const loc = resolveDatabaseLocation(databaseUrl, io.env, io.cwd);
  return resolveLogFilePath(undefined, loc, io.env, io.cwd);
}

/** A file can be created at `path`: it is not a directory, and its nearest existing ancestor is a writable directory. */
export function validateWritableFile(path: string): true | string {
  try {
    if (existsSync(path)) {
      if (statSync(path).isDirectory()) return `${path} is a directory; give a file path`;
      accessSync(path, constants.W_OK);
      return true;
    }
    let dir = dirname(path);
    while (!existsSync(dir)) dir = dirname(dir);
    if (!statSync(dir).isDirectory()) return `${dir} is a file, so no directory can be created under it`;
    accessSync(dir, constants.W_OK);
    return true;
  } catch (err) {
    return `${path} is not writable (${(err as NodeJS.ErrnoException).code ?? String(err)})`;
  }
}
