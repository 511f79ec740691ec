import { existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parseEnv } from 'node:util';
import { isOaiProxyError, OaiProxyError } from '../errors.js';
import { defaultConfigPath, redactUrl } from './paths.js';
import {
  type Config,
  type ConfigKey,
  type ModelEntry,
  SETTINGS,
  type SettingDef,
  type UpstreamEntry,
} from './schema.js';
import { isKeyShaped, isSecretName } from './secret-names.js';

type Env = Record<string, string | undefined>;

/** Flags that may override settings: values as commander parsed them (strings). Undefined = not given. */
export type ConfigFlags = Partial<
  Record<'port' | 'host' | 'upstream' | 'db' | 'logFile', string | undefined>
>;

export interface ResolveConfigOptions {
  /** `--config PATH`, which must exist. */
  configPath?: string;
  flags?: ConfigFlags;
  env?: Env;
  cwd?: string;
  /** Read `./.env` (default true). */
  dotenv?: boolean;
  /**
   * For a command other than `serve` (`oai-proxy logs`): the settings it never reads. An invalid value of
   * one is a warning and the value is skipped, instead of stopping a command that does not use it.
   */
  unused?: { command: string; settings: readonly ConfigKey[] };
}

export interface ResolvedConfig {
  config: Config;
  /** The config file that was read, if any. */
  configFile?: string;
  /** Non-fatal problems, e.g. unknown keys in the config file. */
  warnings: string[];
  /** Where each non-default value came from. */
  sources: Partial<Record<ConfigKey, string>>;
  /** The environment as seen after `.env` was merged under it (for apiKeyEnv lookups). */
  env: Env;
  /** Every configured secret, longest first: what withoutConfiguredSecrets hides. */
  secrets?: readonly string[];
}

/**
 * How a message names the setting `key`'s value came from: its flag (`--db`), `"databaseUrl" in config file
 * PATH`, or its variable (`DATABASE_URL`, with `(.env in DIR)` when read from there).
 */
export function settingSource(resolved: Pick<ResolvedConfig, 'sources'>, key: ConfigKey): string {
  const name = SETTINGS.find((s) => s.key === key)?.env ?? key;
  const source = resolved.sources[key];
  if (!source || source === 'environment') return name;
  if (source.startsWith('-')) return source;
  if (source.startsWith('config file ')) return `"${key}" in ${source}`;
  return `${name} (${source})`;
}

/**
 * settingSource bound to `resolved`, and the same for element `index` of a list setting: by its JSON path
 * in the config file (`"models" in config file PATH, models[0]`), else by position (`AVAILABLE_MODELS,
 * entry 2`). For code outside config/ that names settings in its messages (buildSeedPlan).
 */
export function settingNames(resolved: Pick<ResolvedConfig, 'sources'>): {
  setting(key: ConfigKey): string;
  entry(key: ConfigKey, index: number): string;
} {
  return {
    setting: (key) => settingSource(resolved, key),
    entry: (key, index) =>
      resolved.sources[key]?.startsWith('config file ')
        ? `${settingSource(resolved, key)}, ${key}[${index}]`
        : `${settingSource(resolved, key)}, entry ${index + 1}`,
  };
}

/** `needs`: what an empty value of the flag is refused with (it would mean the default, silently). */
const FLAG_TO_KEY: Record<
  keyof ConfigFlags,
  { key: ConfigKey; flag: string; needs?: [what: string, example: string, hint: string] }
> = {
  port: { key: 'port', flag: '--port' },
  host: { key: 'host', flag: '--host' },
  upstream: { key: 'openaiBaseUrl', flag: '--upstream' },
  db: {
    key: 'databaseUrl',
    flag: '--db',
    needs: ['a database path or URL', '--db ./proxy.db', 'leave it out for the default database'],
  },
  logFile: {
    key: 'logFilePath',
    flag: '--log-file',
    needs: ['a file path', '--log-file ./proxy.log', 'leave it out for oai-proxy.log beside the database'],
  },
};

/**
 * A flag's value, refused when empty or blank (`--model ""`, `--db "$UNSET"`): it would match nothing or
 * mean the default, silently. `example` is the flag with a value; `hint` what leaving the flag out does.
 */
export function requireFlagValue(
  text: string,
  flag: string,
  what: string,
  example: string,
  hint?: string,
): string {
  if (text.trim() === '')
    throw new OaiProxyError(
      'usage',
      `${flag} needs a value: ${what}, e.g. ${example}${hint ? ` (${hint})` : ''}`,
    );
  return text;
}

/**
 * Resolve the configuration once: defaults < config file < `.env` in the working directory <
 * environment < command-line flags. Throws OaiProxyError('config_invalid' | 'config_not_found').
 */
export function resolveConfig(options: ResolveConfigOptions = {}): ResolvedConfig {
  const env = options.env ?? process.env;
  const cwd = options.cwd ?? process.cwd();
  const dotenvWarnings: string[] = [];
  const dotenv = options.dotenv === false ? {} : readDotenv(cwd, dotenvWarnings);
  // Every value that could be a secret, gathered from every layer before any is checked: a key pasted
  // into the wrong variable (OPENAI_BASE_URL=sk-…) must not be quoted by that variable's message.
  const secrets = new Set<string>();
  addLayerSecrets(secrets, dotenv);
  addLayerSecrets(secrets, env);
  addUrlPassword(secrets, options.flags?.db);
  addUrlPassword(secrets, options.flags?.upstream);
  const lookup = { ...dotenv, ...env };
  shownSecrets = orderSecrets(secrets);
  try {
    const resolved = resolveLayers(options, env, dotenv, cwd, (raw) => {
      addFileSecrets(secrets, raw, lookup);
      shownSecrets = orderSecrets(secrets);
    });
    resolved.secrets = orderSecrets(secrets);
    resolved.warnings = [...dotenvWarnings, ...resolved.warnings].map((w) =>
      scrubConfigSecrets(w, resolved.secrets!),
    );
    return resolved;
  } catch (err) {
    if (!(err instanceof OaiProxyError)) throw err;
    throw withoutConfiguredSecrets(err, { secrets: orderSecrets(secrets) });
  } finally {
    shownSecrets = [];
  }
}

/**
 * The secrets resolveConfig would hide, for a command that checks values of its own (init's flags): those
 * the environment and `.env` in `cwd` set, those a raw config file holds, and the passwords of `urls`.
 * Longest first, for shownValue.
 */
export function knownSecrets(options: {
  env: Env;
  cwd: string;
  file?: Record<string, unknown>;
  urls?: readonly (string | undefined)[];
}): string[] {
  const secrets = new Set<string>();
  // An unreadable .env is reported by resolveConfig; here it only holds no secrets to hide.
  const dotenv = readDotenvQuietly(options.cwd);
  addLayerSecrets(secrets, dotenv);
  addLayerSecrets(secrets, options.env);
  for (const u of options.urls ?? []) addUrlPassword(secrets, u);
  if (options.file) addFileSecrets(secrets, options.file, { ...dotenv, ...options.env });
  return orderSecrets(secrets);
}

function resolveLayers(
  options: ResolveConfigOptions,
  env: Env,
  dotenv: Env,
  cwd: string,
  onFile: (raw: Record<string, unknown>) => void,
): ResolvedConfig {
  const warnings: string[] = [];
  const sources: Partial<Record<ConfigKey, string>> = {};
  const values: Partial<Record<ConfigKey, unknown>> = {};

  for (const s of SETTINGS) if (s.default !== undefined) values[s.key] = structuredClone(s.default);

  // An invalid value of a setting the command never reads is a warning naming it, and that layer's value
  // is skipped (SKIP); any other error stops the command.
  const SKIP = Symbol('skip');
  const parse = (key: ConfigKey, fn: () => unknown): unknown => {
    const unused = options.unused;
    if (!unused?.settings.includes(key)) return fn();
    try {
      return fn();
    } catch (err) {
      if (!isOaiProxyError(err, 'config_invalid')) throw err;
      warnings.push(
        `${err.message}; ignored: \`${unused.command}\` does not use it (\`oai-proxy serve\` would refuse it)`,
      );
      return SKIP;
    }
  };

  const configFile = findConfigFile(options.configPath, env, cwd, dotenv);
  if (configFile) {
    const raw = readConfigFile(configFile);
    onFile(raw);
    const where = `config file ${configFile}`;
    // Names only: a value may be a key.
    const unknownKey: UnknownKey = (path, near) =>
      warnings.push(
        `Unknown key "${path}" in ${configFile}${near ? ` (did you mean "${near}"?)` : ''}; it is ignored`,
      );
    for (const [k, v] of Object.entries(raw)) {
      const def = SETTINGS.find((s) => s.key === k);
      if (!def) {
        unknownKey(k, closestKey(k));
        continue;
      }
      if (v === null || v === undefined) continue;
      const parsed = parse(def.key, () => {
        refuseBlank(def, v, where);
        return fromFile(def, v, where, unknownKey);
      });
      if (parsed === SKIP) continue;
      values[def.key] = parsed;
      sources[def.key] = where;
    }
  }

  for (const [layer, where] of [
    [dotenv, `.env in ${cwd}`],
    [env, 'environment'],
  ] as const) {
    for (const def of SETTINGS) {
      if (!def.env) continue;
      const v = layer[def.env];
      if (v === undefined || v === '') continue;
      const parsed = parse(def.key, () => {
        refuseBlank(def, v, `${def.env} (${where})`);
        return fromString(def, v, `${def.env} (${where})`);
      });
      if (parsed === SKIP) continue;
      values[def.key] = parsed;
      sources[def.key] = where;
    }
  }

  for (const [name, { key, flag, needs }] of Object.entries(FLAG_TO_KEY)) {
    const v = options.flags?.[name as keyof ConfigFlags];
    if (v === undefined) continue;
    if (needs) requireFlagValue(v, flag, ...needs);
    const def = SETTINGS.find((s) => s.key === key)!;
    const parsed = parse(key, () => fromString(def, v, flag));
    if (parsed === SKIP) continue;
    values[key] = parsed;
    sources[key] = flag;
  }

  const config = values as unknown as Config;
  takeApiVersions(config, sources, warnings);
  return { config, configFile, warnings, sources, env: { ...dotenv, ...env } };
}

/**
 * `err` with every configured secret in its message replaced by [redacted], for an error thrown after the
 * configuration was resolved that quotes a setting's value (HOST=sk-… fails to listen): the same error
 * (code, status, cause) when nothing needed hiding.
 */
export function withoutConfiguredSecrets(err: unknown, resolved: Pick<ResolvedConfig, 'secrets'>): unknown {
  if (!(err instanceof Error) || !resolved.secrets?.length) return err;
  const message = scrubConfigSecrets(err.message, resolved.secrets);
  if (message === err.message) return err;
  if (err instanceof OaiProxyError)
    return new OaiProxyError(err.code, message, { status: err.status, cause: err.cause });
  return new Error(message);
}

/**
 * `text` with every one of `secrets` (ResolvedConfig.secrets, knownSecrets) that is long or shaped like a
 * key replaced by [redacted], for console lines that print settings' values as they are (a host, a file
 * path a key was pasted into). A shorter one is left, as a URL password is outside its URL: Ollama's
 * placeholder key `ollama` must not hide the host and directory of the same name.
 */
export function withoutSecrets(text: string, secrets: readonly string[] | undefined): string {
  const hidden = secrets?.filter((s) => s.length >= URL_PASSWORD_MIN || isKeyShaped(s));
  return hidden?.length ? scrubConfigSecrets(text, hidden) : text;
}

/** What a configuration message shows instead of a secret (as recorded bodies and headers do). */
export const REDACTED_SECRET = '[redacted]';

/**
 * The secrets `show` hides while resolveConfig runs (it runs synchronously, so no other call sees them):
 * a quoted value is cut to 80 characters, and a cut key would escape the scrub of the whole message.
 */
let shownSecrets: readonly string[] = [];

/** A setting whose values are secrets: keys, the admin key, client keys, upstream entries (apiKey, headers). */
function isSecretSetting(def: SettingDef): boolean {
  return def.type === 'secret' || def.type === 'upstreams' || def.secret === true;
}

/** The secret values an environment or `.env` layer sets, and the password of any URL it holds. */
function addLayerSecrets(secrets: Set<string>, layer: Env): void {
  for (const def of SETTINGS) {
    const v = def.env ? layer[def.env] : undefined;
    if (!v) continue;
    if (isSecretSetting(def)) addSecretValue(secrets, def, v);
    addUrlPassword(secrets, v);
  }
}

/** The same for the raw config file, before any check: its keys, upstream keys and header values. */
function addFileSecrets(secrets: Set<string>, raw: Record<string, unknown>, env: Env): void {
  for (const def of SETTINGS) {
    const v = raw[def.key];
    if (typeof v === 'string') addUrlPassword(secrets, v);
    if (!isSecretSetting(def)) continue;
    if (typeof v === 'string') addSecretValue(secrets, def, v);
    else if (Array.isArray(v)) for (const x of v) if (typeof x === 'string') addSecretValue(secrets, def, x);
  }
  if (!isPlainObject(raw.upstreams)) return;
  for (const u of Object.values(raw.upstreams)) {
    if (!isPlainObject(u)) continue;
    if (typeof u.apiKey === 'string') secrets.add(u.apiKey);
    if (typeof u.apiKeyEnv === 'string' && env[u.apiKeyEnv]) {
      secrets.add(env[u.apiKeyEnv]!);
      secrets.add(env[u.apiKeyEnv]!.trim());
    }
    if (typeof u.baseUrl === 'string') addUrlPassword(secrets, u.baseUrl);
    // Secret-named headers only: `"x-provider": "openai"` must not hide the word openai from every message.
    if (isPlainObject(u.headers))
      for (const [name, h] of Object.entries(u.headers)) {
        if (typeof h !== 'string' || !isSecretName(name)) continue;
        secrets.add(h.trim());
        const credential = /^\s*(?:Bearer|Basic)\s+(\S.*?)\s*$/i.exec(h)?.[1];
        if (credential) secrets.add(credential);
      }
  }
}

function addSecretValue(secrets: Set<string>, def: SettingDef, v: string): void {
  secrets.add(v);
  secrets.add(v.trim());
  if (def.type === 'list') for (const k of v.split(',')) secrets.add(k.trim());
}

/** The password of a URL (`postgres://u:PASSWORD@host`), as written and percent-decoded. */
function addUrlPassword(secrets: Set<string>, v: string | undefined): void {
  const rest = v ? /^[a-z][a-z0-9+.-]*:\/\/(.*)$/is.exec(v)?.[1] : undefined;
  if (!v || !rest) return;
  // In a URL a password is always masked (redactUrl). Hidden anywhere else in a message only from
  // URL_PASSWORD_MIN characters: `postgres://postgres:postgres@postgres/postgres`, as compose files
  // write it, must not turn every mention of postgres (the host among them) into [redacted].
  const add = (p: string) => {
    if (p.length >= URL_PASSWORD_MIN) secrets.add(p);
  };
  // Up to the last @ of all (more than WHATWG URL takes when the path holds an @): too much, never too little.
  const userinfo = rest.slice(0, Math.max(rest.lastIndexOf('@'), 0));
  const colon = userinfo.indexOf(':');
  if (colon !== -1) add(userinfo.slice(colon + 1));
  try {
    const password = new URL(v).password;
    add(password);
    add(decodeURIComponent(password));
  } catch {
    // Unparseable, or a % that is not an escape: the text as written is what was added.
  }
}

/** A URL password shorter than this is masked only inside URLs (see addUrlPassword); see withoutSecrets too. */
const URL_PASSWORD_MIN = 12;

/** Longest first, so a key that holds a shorter one is replaced whole; empty values dropped. */
function orderSecrets(secrets: Set<string>): string[] {
  return [...secrets].filter(Boolean).sort((a, b) => b.length - a.length);
}

/**
 * `text` with every secret replaced by [redacted]: a key of 6 characters or more wherever it appears; a
 * shorter one only as a whole word, and only with `short` (in a quoted value, where ADMIN_API_KEY=an
 * cannot turn `expected an integer` into `expected [redacted] integer`). Recorded bodies skip short keys
 * too, which `serve` warns about.
 */
function scrubConfigSecrets(text: string, secrets: readonly string[], short = false): string {
  let out = text;
  for (const s of secrets) {
    if (!out.includes(s)) continue;
    if (s.length >= 6) out = out.split(s).join(REDACTED_SECRET);
    else if (short) {
      const escaped = s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
      out = out.replace(
        new RegExp(`(?<![\\p{L}\\p{N}_-])${escaped}(?![\\p{L}\\p{N}_-])`, 'gu'),
        REDACTED_SECRET,
      );
    }
  }
  return out;
}

/**
 * Every configured key with the setting it came from (`PROXY_API_KEYS (environment), entry 2`,
 * `upstreams.azure.apiKey in config file PATH`), for messages that must name a key without showing it.
 */
export function configuredKeys(resolved: ResolvedConfig): { setting: string; value: string }[] {
  const c = resolved.config;
  const out: { setting: string; value: string }[] = [];
  for (const key of ['openaiApiKey', 'adminApiKey', 'qdrantApiKey'] as const) {
    const value = c[key];
    if (value) out.push({ setting: settingSource(resolved, key), value });
  }
  const clientKeys = c.proxyApiKeys.filter(Boolean);
  for (const [i, value] of clientKeys.entries())
    out.push({
      setting: `${settingSource(resolved, 'proxyApiKeys')}${clientKeys.length > 1 ? `, entry ${i + 1}` : ''}`,
      value,
    });
  const file = resolved.configFile ? ` in config file ${resolved.configFile}` : '';
  for (const [name, u] of Object.entries(c.upstreams)) {
    const value = upstreamApiKey(u, resolved.env);
    if (value)
      out.push({
        setting: u.apiKey
          ? `upstreams.${name}.apiKey${file}`
          : `${u.apiKeyEnv} (upstreams.${name}.apiKeyEnv)`,
        value,
      });
  }
  return out;
}

/**
 * A named upstream's key: its `apiKey`, else the variable its `apiKeyEnv` names (environment or `.env`),
 * trimmed as every key setting is (a pasted line end could not be sent in a header).
 */
export function upstreamApiKey(u: Pick<UpstreamEntry, 'apiKey' | 'apiKeyEnv'>, env: Env): string | undefined {
  return u.apiKey || (u.apiKeyEnv ? env[u.apiKeyEnv]?.trim() : undefined) || undefined;
}

/**
 * `--config` (must exist) > OAI_PROXY_CONFIG (must exist) > ./oai-proxy.config.json > XDG config.json.
 * OAI_PROXY_CONFIG and XDG_CONFIG_HOME are looked up in `env`, then in `dotenv`, `./.env` in `cwd` (read
 * here when not given): it is found before the config file and does not depend on it.
 */
export function findConfigFile(
  explicit: string | undefined,
  env: Env,
  cwd: string,
  dotenv: Env = readDotenvQuietly(cwd),
): string | undefined {
  if (explicit !== undefined) {
    requireFlagValue(
      explicit,
      '--config',
      'a config file path',
      '--config ./oai-proxy.config.json',
      'leave it out to use the one found as usual',
    );
    const p = resolve(cwd, explicit);
    if (!existsSync(p))
      throw new OaiProxyError(
        'config_not_found',
        `Config file ${p} (from --config) does not exist; create it with \`oai-proxy init --config ${explicit}\` or fix the path`,
      );
    return p;
  }
  const lookup = configLookup(dotenv, env);
  if (lookup.OAI_PROXY_CONFIG) {
    const p = resolve(cwd, lookup.OAI_PROXY_CONFIG);
    const dotenvFile = resolve(cwd, '.env');
    if (!existsSync(p))
      throw new OaiProxyError(
        'config_not_found',
        env.OAI_PROXY_CONFIG
          ? `Config file ${p} (from OAI_PROXY_CONFIG) does not exist; unset OAI_PROXY_CONFIG or fix the path`
          : `Config file ${p} (from OAI_PROXY_CONFIG in ${dotenvFile}) does not exist; remove that line from ${dotenvFile} or fix the path`,
      );
    return p;
  }
  const local = resolve(cwd, 'oai-proxy.config.json');
  if (existsSync(local)) return local;
  const user = defaultConfigPath(lookup);
  if (existsSync(user)) return user;
  return undefined;
}

/** `.env` under the environment, for locating the config file: an empty variable counts as unset, as for
 * every setting (OAI_PROXY_CONFIG= does not hide `.env`'s). findConfigFile and configFileTarget agree. */
function configLookup(dotenv: Env, env: Env): Env {
  return { ...dotenv, ...Object.fromEntries(Object.entries(env).filter(([, v]) => v !== '')) };
}

/**
 * Where a config file named by no `--config` is written (`oai-proxy init`), so that findConfigFile finds
 * it: OAI_PROXY_CONFIG, else the per-user file under XDG_CONFIG_HOME, each looked up as findConfigFile
 * does (the environment, then `./.env` in `cwd`). `from` says which variable chose it (`OAI_PROXY_CONFIG
 * in /dir/.env`), undefined for the usual per-user file (XDG_CONFIG_HOME from the environment included).
 */
export function configFileTarget(env: Env, cwd: string): { path: string; from?: string } {
  const lookup = configLookup(readDotenvQuietly(cwd), env);
  const inDotenv = `in ${resolve(cwd, '.env')}`;
  if (lookup.OAI_PROXY_CONFIG)
    return {
      path: resolve(cwd, lookup.OAI_PROXY_CONFIG),
      from: `OAI_PROXY_CONFIG${env.OAI_PROXY_CONFIG ? '' : ` ${inDotenv}`}`,
    };
  const path = defaultConfigPath(lookup);
  return path === defaultConfigPath(env) ? { path } : { path, from: `XDG_CONFIG_HOME ${inDotenv}` };
}

/** Read a config file as a raw JSON object. Throws OaiProxyError('config_invalid') naming the file. */
export function readConfigFile(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = readTextFile(path);
  } catch (err) {
    if (err instanceof OaiProxyError) throw err;
    throw new OaiProxyError(
      'config_invalid',
      `Cannot read config file ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}; check its permissions`,
    );
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new OaiProxyError(
      'config_invalid',
      // V8 quotes the text around the error, which may be a key: keep only what and where.
      `Config file ${path} is not valid JSON: ${(err as Error).message.replace(/,\s*\S.* is not valid JSON$/s, '')}`,
    );
  }
  if (!isPlainObject(parsed))
    throw new OaiProxyError('config_invalid', `Config file ${path} must hold a JSON object`);
  return parsed;
}

/**
 * A UTF-8 file's text without the byte-order mark some Windows editors write (it would join the first key).
 * Throws OaiProxyError('config_invalid') naming the file if it is UTF-16, which reads as no settings at all.
 */
function readTextFile(path: string): string {
  const bytes = readFileSync(path);
  if (
    bytes.length >= 2 &&
    ((bytes[0] === 0xff && bytes[1] === 0xfe) || (bytes[0] === 0xfe && bytes[1] === 0xff))
  )
    throw new OaiProxyError(
      'config_invalid',
      `Cannot read ${path}: it is saved as UTF-16 (as Windows PowerShell's > and Out-File write it); save it as UTF-8 (e.g. Set-Content -Encoding utf8, or your editor's "Save with encoding")`,
    );
  const text = bytes.toString('utf8');
  return text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
}

/** `./.env` in `cwd`, or nothing when it cannot be read (resolveConfig reports that). */
function readDotenvQuietly(cwd: string): Env {
  try {
    return readDotenv(cwd);
  } catch {
    return {};
  }
}

/** `./.env` in `cwd` as parseEnv reads it, with a warning naming the lines it ignored (see withoutBareLines). */
function readDotenv(cwd: string, warnings?: string[]): Env {
  const p = resolve(cwd, '.env');
  if (!existsSync(p)) return {};
  let text: string;
  try {
    text = readTextFile(p);
  } catch (err) {
    if (err instanceof OaiProxyError) throw err;
    throw new OaiProxyError('config_invalid', `Cannot read ${p}: ${(err as Error).message}`);
  }
  const { text: kept, ignored } = withoutBareLines(text);
  // Line numbers only: a line with no `=` may be a key whose `NAME=` is on the line above.
  if (ignored.length)
    warnings?.push(
      `${ignored.length > 1 ? 'Lines' : 'Line'} ${ignored.join(', ')} of ${p} ${ignored.length > 1 ? 'are' : 'is'} not NAME=value and ${ignored.length > 1 ? 'are' : 'is'} ignored; write each setting on one line as NAME=value (a value that goes on over several lines must be in quotes)`,
    );
  return parseEnv(kept) as Env;
}

/**
 * `.env` text without the lines outside a quoted value that hold no `=` or nothing before it, and their
 * (1-based) numbers. Node's parseEnv reads such a line and the next as one name (`junk\nPORT=1` sets
 * `junk\nPORT`, not PORT) or, for `=value`, stops reading the file. Comment lines go too, silently, and
 * leading blanks before a name: parseEnv keeps a tab in the name. Lines inside a quoted value spanning
 * lines (an opening quote whose closing one is on a later line, as parseEnv finds it) are kept as they are.
 */
function withoutBareLines(text: string): { text: string; ignored: number[] } {
  const lines = text.split('\n');
  const ignored: number[] = [];
  let quote: string | undefined;
  for (const [i, line] of lines.entries()) {
    if (quote) {
      if (line.includes(quote)) quote = undefined;
      continue;
    }
    const t = line.trim();
    if (t === '' || t.startsWith('#')) {
      lines[i] = '';
      continue;
    }
    const eq = t.indexOf('=');
    if (eq <= 0) {
      ignored.push(i + 1);
      lines[i] = '';
      continue;
    }
    lines[i] = line.replace(/^\s+/, '');
    const value = t.slice(eq + 1).replace(/^\s+/, '');
    const q = value[0];
    if (
      (q === '"' || q === "'" || q === '`') &&
      !value.includes(q, 1) &&
      lines.slice(i + 1).some((l) => l.includes(q))
    )
      quote = q;
  }
  return { text: lines.join('\n'), ignored };
}

/** Report a key the file holds but no setting reads: its path (`upstreams.loc.apikey`), the closest known key. */
type UnknownKey = (path: string, near: string | undefined) => void;

const UPSTREAM_KEYS = ['baseUrl', 'apiKey', 'apiKeyEnv', 'type', 'apiVersion', 'headers'] as const;
const MODEL_ENTRY_KEYS = ['name', 'upstream', 'deployment', 'displayName', 'description'] as const;

const NO_VALUE = Symbol('no value');

/**
 * Throw config_invalid naming the setting, where it came from and what was expected. The offending
 * value is echoed only for settings that cannot hold a secret; otherwise `detail` (or the value's
 * type) says what is wrong, since the message reaches the console, the admin API and the database.
 */
function invalid(
  where: string,
  def: SettingDef,
  expected: string,
  v: unknown = NO_VALUE,
  detail?: string,
): never {
  const fromFile = where.startsWith('config file');
  const name = fromFile ? `"${def.key}" in ${where}` : where;
  const secret = isSecretSetting(def);
  // A file's value as JSON: `"port": "8000"` must not read as `= 8000`, a valid port.
  const shown = v === NO_VALUE || secret ? '' : ` = ${show(v, fromFile)}`;
  const why = detail ?? (v !== NO_VALUE && secret ? `got ${kindOf(v)}` : undefined);
  throw new OaiProxyError(
    'config_invalid',
    `Invalid ${name}${shown}: expected ${expected}${why ? `; ${why}` : ''}`,
  );
}

function show(v: unknown, json = false): string {
  return shownValue(v, shownSecrets, json);
}

/**
 * How a message quotes a value it refuses (`Invalid --port = VALUE: …`): a URL's password masked, every
 * one of `secrets` (knownSecrets) [redacted], a value shaped like a key masked, cut to 80 characters;
 * the same for every string inside an array or object (`"databaseUrl": ["postgres://u:PASSWORD@h/db"]`).
 * With `json`, a string is shown in quotes, as a config file holds it.
 */
export function shownValue(v: unknown, secrets: readonly string[], json = false): string {
  const text =
    typeof v === 'string'
      ? redactUrl(v)
      : JSON.stringify(v, (_name, x: unknown) =>
          typeof x !== 'string' ? x : isKeyShaped(x) ? maskSecret(x.trim()) : redactUrl(x),
        );
  let s = scrubConfigSecrets(text, secrets, true);
  if (typeof v === 'string' && s === v && isKeyShaped(v))
    return `${maskSecret(v.trim())} (looks like a key; not shown)`;
  if (json && typeof v === 'string') s = JSON.stringify(s);
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}

/** `a number`, `an array`…: what a value is, without saying what it holds. */
function kindOf(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'object') return 'an object';
  if (typeof v === 'boolean') return 'true/false';
  return `a ${typeof v}`;
}

/**
 * Refuse an empty or blank value, in the config file or a variable (an empty variable is unset and never
 * gets here), of a setting that would take it as something else without a word: `"databaseUrl": ""` the
 * default database, DATABASE_URL=" " a file named " ", `"openaiApiKey": ""` no key. `host` is left to
 * serve's checkHost, which refuses it from any source, flags too, saying what to listen on instead.
 */
function refuseBlank(def: SettingDef, v: unknown, where: string): void {
  if (typeof v !== 'string' || v.trim() !== '' || def.key === 'host') return;
  if (!['string', 'secret', 'url', 'models'].includes(def.type)) return;
  const instead = where.startsWith('config file')
    ? `remove "${def.key}" from the file to use the default`
    : `unset it (${def.env}= counts as unset) to use the default`;
  invalid(where, def, 'a value', NO_VALUE, `it is ${v === '' ? 'empty' : 'blank'}: give one, or ${instead}`);
}

/** `a, b,,c` → `['a', 'b', 'c']`: entries trimmed, empty ones dropped. */
function commaList(v: string): string[] {
  return v
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
}

/** Parse an environment / .env / flag string into the setting's type. */
function fromString(def: SettingDef, v: string, where: string): unknown {
  switch (def.type) {
    case 'string':
      return v;
    case 'secret':
      // A key is compared with, or sent as, a trimmed header value: a space around it could never match.
      return v.trim();
    case 'url':
      return checkUrl(def, v, where);
    case 'int': {
      if (!/^-?\d+$/.test(v.trim())) invalid(where, def, intExpectation(def), v);
      return checkInt(def, Number(v), where, v);
    }
    case 'bool': {
      const t = v.trim().toLowerCase();
      if (['1', 'true', 'yes', 'on'].includes(t)) return true;
      if (['0', 'false', 'no', 'off'].includes(t)) return false;
      return invalid(where, def, 'true or false', v);
    }
    case 'enum': {
      const t = v.trim().toLowerCase();
      if (!def.values!.includes(t)) invalid(where, def, `one of ${def.values!.join(', ')}`, v);
      return t;
    }
    case 'list':
      return checkClientKeys(def, commaList(v), where);
    case 'models': {
      const names = commaList(v);
      if (names.length === 0)
        invalid(
          where,
          def,
          'comma-separated model names',
          NO_VALUE,
          'it holds none: give at least one model name, or leave it unset for the default list',
        );
      return names;
    }
    case 'object': {
      let parsed: unknown;
      try {
        parsed = JSON.parse(v);
      } catch {
        return invalid(where, def, 'a JSON object such as {"alias":"model"}', v);
      }
      return checkMappings(def, checkStringMap(def, parsed, where), where, v);
    }
    default:
      return invalid(where, def, 'a value set in the config file only');
  }
}

/**
 * The client keys `keys` as read from `where`, refused when the setting is there but turns client auth
 * off unawares: it holds no key (`[]`, `PROXY_API_KEYS=,`, `" "`), or the file's array has an empty or
 * blank entry (`[""]`). `keys` of any other setting are returned as they are. The keys are never shown.
 */
function checkClientKeys(def: SettingDef, keys: string[], where: string): string[] {
  if (def.key !== 'proxyApiKeys') return keys;
  const fromFile = where.startsWith('config file');
  const off = fromFile
    ? `remove "${def.key}" from the file to run without client keys`
    : `leave ${def.env} empty or unset to run without client keys`;
  const blank = keys.findIndex((k) => k.trim() === '');
  if (blank !== -1)
    invalid(
      `${where}, ${def.key}[${blank}]`,
      def,
      'a client key',
      NO_VALUE,
      `it is empty: put a key in it or remove the entry (${off})`,
    );
  if (keys.length === 0)
    invalid(
      where,
      def,
      fromFile ? 'client keys' : 'comma-separated client keys',
      NO_VALUE,
      `it holds none: give at least one key, or ${off}`,
    );
  return keys;
}

/** Check a config-file JSON value against the setting's type; keys unknown inside its entries go to `unknownKey`. */
function fromFile(def: SettingDef, v: unknown, where: string, unknownKey: UnknownKey): unknown {
  switch (def.type) {
    case 'string':
    case 'secret':
      if (typeof v !== 'string') invalid(where, def, 'a string', v);
      return def.type === 'secret' ? v.trim() : v;
    case 'url':
      if (typeof v !== 'string') invalid(where, def, 'a URL string', v);
      return checkUrl(def, v, where);
    case 'int':
      if (typeof v !== 'number' || !Number.isInteger(v))
        invalid(where, def, intExpectation(def), v, withoutQuotes(def, v));
      return checkInt(def, v, where);
    case 'bool':
      if (typeof v !== 'boolean') invalid(where, def, 'true or false', v, withoutQuotes(def, v));
      return v;
    case 'enum': {
      // As LOG_LEVEL=INFO is read from the environment.
      const t = typeof v === 'string' ? v.trim().toLowerCase() : undefined;
      if (t === undefined || !def.values!.includes(t))
        invalid(where, def, `one of ${def.values!.join(', ')}`, v);
      return t;
    }
    case 'list':
      if (typeof v === 'string') return checkClientKeys(def, commaList(v), where);
      if (!Array.isArray(v)) invalid(where, def, 'an array of strings', v);
      for (const [i, x] of v.entries())
        if (typeof x !== 'string')
          invalid(where, def, 'an array of strings', v, `element [${i}] is ${kindOf(x)}`);
      // Trimmed, as the comma-separated form is: a client presents its key in a header, which HTTP trims.
      return checkClientKeys(
        def,
        v.map((x: string) => x.trim()),
        where,
      );
    case 'object':
      return checkMappings(def, checkStringMap(def, v, where), where, v);
    case 'models':
      if (!Array.isArray(v)) invalid(where, def, 'an array of model names or {name, …} objects', v);
      return v.map((item, i) =>
        typeof item === 'string' ? item : checkModelEntry(def, item, where, `${def.key}[${i}]`, unknownKey),
      );
    case 'modelEntries':
      if (!Array.isArray(v))
        invalid(where, def, 'an array of {name, upstream?, deployment?, displayName?, description?}', v);
      return v.map((item, i) => checkModelEntry(def, item, where, `${def.key}[${i}]`, unknownKey));
    case 'upstreams':
      return checkUpstreams(def, v, where, unknownKey);
  }
}

/**
 * For a config file's string that the environment form would take (`"port": "8000"`, `"validateModels":
 * "true"`): how to write it in the file. Undefined for any other value.
 */
function withoutQuotes(def: SettingDef, v: unknown): string | undefined {
  if (typeof v !== 'string') return undefined;
  try {
    return `write it without quotes: "${def.key}": ${JSON.stringify(fromString(def, v, def.key))}`;
  } catch {
    return undefined;
  }
}

function intExpectation(def: SettingDef): string {
  if (def.min !== undefined && def.max !== undefined) return `an integer from ${def.min} to ${def.max}`;
  if (def.min !== undefined) return `an integer ≥ ${def.min}`;
  return 'an integer';
}

/** `written`: the value as the user wrote it, quoted instead of `n` (PORT=0099999 is not 99999). */
function checkInt(def: SettingDef, n: number, where: string, written: unknown = n): number {
  if (
    !Number.isSafeInteger(n) ||
    (def.min !== undefined && n < def.min) ||
    (def.max !== undefined && n > def.max)
  ) {
    invalid(where, def, intExpectation(def), written);
  }
  return n;
}

function checkUrl(def: SettingDef, v: string, where: string): string {
  let u: URL;
  try {
    u = new URL(v);
  } catch {
    return invalid(where, def, 'an absolute http(s) URL such as https://api.openai.com/v1', v);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') invalid(where, def, 'an http:// or https:// URL', v);
  // A ?query or #fragment is kept here (an Azure ?api-version is taken by takeApiVersions) and refused by
  // checkBaseUrls where the URL is used: `logs` must not refuse a URL it never uses.
  return /[?#]/.test(v) ? v : v.replace(/\/+$/, '');
}

/**
 * An Azure base URL pasted from the portal (`…/deployments/d?api-version=2024-02-01`): its api-version is
 * the upstream's when none is configured, and leaves the URL. A configured one that differs wins (it is
 * what was sent before such a query was read at all), with a warning. Only an Azure upstream is sent an
 * api-version: another keeps the query in its URL, for checkBaseUrls to refuse.
 */
function takeApiVersions(
  config: Config,
  sources: Partial<Record<ConfigKey, string>>,
  warnings: string[],
): void {
  const take = (url: string, configured: string | undefined, urlName: string, versionName: string) => {
    const found = splitApiVersion(url);
    if (!found) return undefined;
    if (configured && configured !== found.version)
      warnings.push(
        `${urlName} holds ?api-version=${found.version}, but ${versionName} is ${configured}, which is used; remove one of them`,
      );
    return found;
  };
  const names = { sources } as Pick<ResolvedConfig, 'sources'>;
  const found =
    isAzureBase(config.openaiBaseUrl, config.openaiApiType) &&
    take(
      config.openaiBaseUrl,
      config.openaiApiVersion,
      settingSource(names, 'openaiBaseUrl'),
      settingSource(names, 'openaiApiVersion'),
    );
  if (found) {
    config.openaiBaseUrl = found.url;
    if (!config.openaiApiVersion) {
      config.openaiApiVersion = found.version;
      sources.openaiApiVersion = sources.openaiBaseUrl;
    }
  }
  for (const [name, u] of Object.entries(config.upstreams ?? {})) {
    if (u.type !== 'azure') continue;
    const f = take(u.baseUrl, u.apiVersion, `upstreams.${name}.baseUrl`, `upstreams.${name}.apiVersion`);
    if (f) config.upstreams[name] = { ...u, baseUrl: f.url, apiVersion: u.apiVersion || f.version };
  }
}

/**
 * Whether a base URL's upstream is Azure, as createUpstreamTarget (proxy/forward.ts) infers it: the
 * configured type, else a *.openai.azure.com host or a path naming a deployment.
 */
function isAzureBase(url: string, type: string | undefined): boolean {
  if (type) return type === 'azure';
  try {
    const u = new URL(url);
    return u.hostname.endsWith('.openai.azure.com') || /\/openai\/deployments\/[^/]+\/?$/.test(u.pathname);
  } catch {
    return false;
  }
}

/** `url` without its `api-version` query parameter(s), and the (first) value, or undefined when it has none. */
export function splitApiVersion(url: string): { url: string; version: string } | undefined {
  const q = url.indexOf('?');
  if (q === -1) return undefined;
  const hash = url.indexOf('#', q);
  const query = url.slice(q + 1, hash === -1 ? undefined : hash);
  const version = new URLSearchParams(query).get('api-version');
  if (!version) return undefined;
  const rest = query.split('&').filter((p) => p !== '' && !/^api-version(=|$)/.test(p));
  const base = url.slice(0, q).replace(/\/+$/, '');
  return {
    url: `${base}${rest.length ? `?${rest.join('&')}` : ''}${hash === -1 ? '' : url.slice(hash)}`,
    version: version.trim(),
  };
}

/**
 * Refuse a base URL that still holds a ?query or #fragment (other than an Azure upstream's ?api-version,
 * taken as its api-version): neither is ever sent (the proxy and Qdrant's client keep the origin and
 * path), and a key in it would be printed by the banner. For commands that use the URLs: `serve` and
 * its reloads check them all; `logs search`/`reindex`/`prune` pass `used`, the upstreams they call
 * (`default` for OPENAI_BASE_URL) and whether they use QDRANT_URL. Throws
 * OaiProxyError('config_invalid') naming the setting, the URL shown with its secrets masked.
 */
export function checkBaseUrls(
  resolved: ResolvedConfig,
  used?: { upstreams: readonly string[]; qdrant: boolean },
): ResolvedConfig {
  const { config, sources } = resolved;
  const secrets = resolved.secrets ?? [];
  const refuse = (name: string, url: string, without: string, instead: string): never => {
    throw withoutConfiguredSecrets(
      new OaiProxyError(
        'config_invalid',
        `Invalid ${name} = ${shownValue(url, secrets)}: expected a URL without ${without}; ${instead}`,
      ),
      resolved,
    );
  };
  const QUERY =
    '?query or #fragment (neither is ever sent; ?api-version alone is taken, for an Azure upstream, as its api-version)';
  // Only a base URL's origin and path are used: user:password@ would be dropped without a word.
  const CREDENTIALS = 'user:password@ (credentials in it are never sent)';
  // As settingSource names it, but saying `(environment)` too: the refusal quotes the value it names.
  const named = (key: ConfigKey): string =>
    sources[key] === 'environment'
      ? `${settingSource(resolved, key)} (environment)`
      : settingSource(resolved, key);
  // Left in the URL by takeApiVersions: the upstream is not (taken for) an Azure one.
  const instead = (url: string, azure: string, key: string): string => {
    const split = splitApiVersion(url);
    if (!split) return key;
    const hint = `?api-version is read only for an Azure upstream: ${azure} if it is one`;
    return hasQuery(split.url) ? `${hint}; ${key}` : hint;
  };
  const uses = (upstream: string): boolean => !used || used.upstreams.includes(upstream);
  const file = resolved.configFile ? ` in config file ${resolved.configFile}` : '';
  const upstreams = [
    ...(uses('default')
      ? [
          {
            name: named('openaiBaseUrl'),
            url: config.openaiBaseUrl,
            azure: 'set OPENAI_API_TYPE=azure',
            key: 'put a key in OPENAI_API_KEY',
            credentials:
              'put a key in OPENAI_API_KEY, or other credentials in a named upstream\'s "headers" in the config file',
          },
        ]
      : []),
    ...Object.entries(config.upstreams)
      .filter(([name]) => uses(name))
      .map(([name, u]) => ({
        name: `upstreams.${name}.baseUrl${file}`,
        url: u.baseUrl,
        azure: 'set its "type": "azure"',
        key: "put a key in the upstream's apiKey (or apiKeyEnv) or headers",
        credentials:
          'put them in the upstream\'s "headers" (an Authorization: Basic … header for user:password), or a key in its apiKey (or apiKeyEnv)',
      })),
  ];
  for (const u of upstreams) {
    if (hasCredentials(u.url)) refuse(u.name, u.url, CREDENTIALS, u.credentials);
    if (hasQuery(u.url)) refuse(u.name, u.url, QUERY, instead(u.url, u.azure, u.key));
  }
  if ((!used || used.qdrant) && config.qdrantUrl && hasQuery(config.qdrantUrl))
    refuse(named('qdrantUrl'), config.qdrantUrl, QUERY, 'put a Qdrant key in QDRANT_API_KEY');
  return resolved;
}

function hasCredentials(url: string): boolean {
  try {
    const u = new URL(url);
    return u.username !== '' || u.password !== '';
  } catch {
    return false;
  }
}

function hasQuery(url: string): boolean {
  try {
    const u = new URL(url);
    return u.search !== '' || u.hash !== '' || /[?#]/.test(url);
  } catch {
    return /[?#]/.test(url);
  }
}

function checkStringMap(
  def: SettingDef,
  v: unknown,
  where: string,
  example = '{"alias":"model"}',
): Record<string, string> {
  const expected = `a JSON object of strings such as ${example}`;
  if (!isPlainObject(v)) invalid(where, def, expected, v);
  for (const [k, x] of Object.entries(v))
    if (typeof x !== 'string') invalid(where, def, expected, v, `${JSON.stringify(k)} is ${kindOf(x)}`);
  return v as Record<string, string>;
}

function checkModelEntry(
  def: SettingDef,
  v: unknown,
  file: string,
  path: string,
  unknownKey: UnknownKey,
): ModelEntry {
  const where = `${file}, ${path}`;
  if (!isPlainObject(v) || typeof v.name !== 'string' || v.name === '') {
    invalid(where, def, 'a model name or an object with a string "name"', v);
  }
  for (const k of ['upstream', 'deployment', 'displayName', 'description']) {
    if (v[k] !== undefined && typeof v[k] !== 'string') invalid(`${where}.${k}`, def, 'a string', v[k]);
  }
  warnUnknownKeys(v, MODEL_ENTRY_KEYS, path, unknownKey);
  return v as unknown as ModelEntry;
}

function checkUpstreams(
  def: SettingDef,
  v: unknown,
  where: string,
  unknownKey: UnknownKey,
): Record<string, UpstreamEntry> {
  if (!isPlainObject(v))
    invalid(where, def, 'an object name → {baseUrl, apiKey | apiKeyEnv, type, apiVersion?, headers?}', v);
  const out: Record<string, UpstreamEntry> = {};
  for (const [name, raw] of Object.entries(v)) {
    const at = `${where}, upstreams.${name}`;
    if (!isPlainObject(raw)) invalid(at, def, 'an object {baseUrl, apiKey | apiKeyEnv, type, …}', raw);
    // An upstream's URL (redacted when shown) and type hold no secret, so they may be echoed.
    const plain: SettingDef = { ...def, type: 'string' };
    if (typeof raw.baseUrl !== 'string') invalid(`${at}.baseUrl`, plain, 'a URL string', raw.baseUrl);
    const baseUrl = checkUrl(plain, raw.baseUrl as string, `${at}.baseUrl`);
    const type = raw.type ?? 'openai';
    if (type !== 'openai' && type !== 'azure') invalid(`${at}.type`, plain, '"openai" or "azure"', type);
    for (const k of ['apiKey', 'apiKeyEnv', 'apiVersion']) {
      if (raw[k] !== undefined && typeof raw[k] !== 'string') invalid(`${at}.${k}`, def, 'a string', raw[k]);
    }
    if (raw.headers !== undefined) checkStringMap(def, raw.headers, `${at}.headers`, '{"x-header":"value"}');
    warnUnknownKeys(raw, UPSTREAM_KEYS, `upstreams.${name}`, unknownKey);
    out[name] = { ...(raw as unknown as UpstreamEntry), baseUrl, type };
    if (typeof raw.apiKey === 'string') out[name].apiKey = raw.apiKey.trim();
  }
  return out;
}

function warnUnknownKeys(
  entry: Record<string, unknown>,
  known: readonly string[],
  path: string,
  unknownKey: UnknownKey,
): void {
  for (const k of Object.keys(entry)) if (!known.includes(k)) unknownKey(`${path}.${k}`, closestOf(k, known));
}

/**
 * Aliases (`modelMappings`): no empty alias or model. Checked with the value, so that a command that never
 * reads the mappings (`logs`) only warns about it, as about any bad value.
 */
function checkMappings(
  def: SettingDef,
  map: Record<string, string>,
  where: string,
  v: unknown,
): Record<string, string> {
  for (const [alias, target] of Object.entries(map)) {
    const why =
      alias.trim() === ''
        ? 'an alias is empty'
        : target.trim() === ''
          ? `${JSON.stringify(alias)} maps to an empty model`
          : undefined;
    if (why) invalid(where, def, 'a JSON object of non-empty alias → model names', v, why);
  }
  return map;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** The known config key closest to `key` (Levenshtein ≤ 3, or same letters ignoring case/underscores). */
export function closestKey(key: string): string | undefined {
  const byEnv = SETTINGS.find((s) => s.env && normKey(s.env) === normKey(key));
  return byEnv
    ? byEnv.key
    : closestOf(
        key,
        SETTINGS.map((s) => s.key),
      );
}

/** The name in `known` closest to `key`, by the same rule as closestKey. */
function closestOf(key: string, known: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestD = Number.POSITIVE_INFINITY;
  for (const k of known) {
    if (normKey(k) === normKey(key)) return k;
    const d = levenshtein(normKey(key), normKey(k));
    if (d < bestD) {
      bestD = d;
      best = k;
    }
  }
  return bestD <= 3 ? best : undefined;
}

function normKey(s: string): string {
  return s.toLowerCase().replace(/[_-]/g, '');
}

function levenshtein(a: string, b: string): number {
  const prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let diag = prev[0];
    prev[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = prev[j];
      prev[j] = Math.min(prev[j] + 1, prev[j - 1] + 1, diag + (a[i - 1] === b[j - 1] ? 0 : 1));
      diag = tmp;
    }
  }
  return prev[b.length];
}

/** `sk-…abcd`: enough of a key to recognise it, never enough to use it. */
export function maskSecret(secret: string | undefined): string {
  if (!secret) return '(none)';
  if (secret.length <= 8) return '…' + '*'.repeat(4);
  const prefix = secret.startsWith('sk-') ? 'sk-' : '';
  return `${prefix}…${secret.slice(-4)}`;
}
