import { statSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { OaiProxyError } from '../errors.js';
import { isKeyShaped, isSecretName } from './secret-names.js';

type Env = Record<string, string | undefined>;

/** `$XDG_CONFIG_HOME/oai-proxy`, else `~/.config/oai-proxy`. */
export function configDir(env: Env): string {
  const base =
    env.XDG_CONFIG_HOME && isAbsolute(env.XDG_CONFIG_HOME) ? env.XDG_CONFIG_HOME : join(home(env), '.config');
  return join(base, 'oai-proxy');
}

/** `$XDG_DATA_HOME/oai-proxy`, else `~/.local/share/oai-proxy`. */
export function dataDir(env: Env): string {
  const base =
    env.XDG_DATA_HOME && isAbsolute(env.XDG_DATA_HOME)
      ? env.XDG_DATA_HOME
      : join(home(env), '.local', 'share');
  return join(base, 'oai-proxy');
}

/** The per-user config file, used when no other config file is named or present. */
export function defaultConfigPath(env: Env): string {
  return join(configDir(env), 'config.json');
}

/** `setting`: where a postgres:// URL came from, for its connection errors (default `DATABASE_URL`). */
export type DatabaseLocation =
  | { kind: 'sqlite'; path: string }
  | { kind: 'postgres'; url: string; setting?: string };

/**
 * Resolve DATABASE_URL / --db into a location. Accepts a plain path, `sqlite:///relative.db`,
 * `sqlite:////absolute.db`, `file:` URLs and `postgres://` URLs. Refuses (config_invalid) other `scheme://`
 * URLs, `postgres:` or `sqlite:` without `//` (a mistyped URL, not a file name) and a postgres:// URL pg
 * cannot parse. `setting` names where the value came from in errors (see settingSource).
 */
export function resolveDatabaseLocation(
  databaseUrl: string | undefined,
  env: Env,
  cwd: string,
  setting = 'DATABASE_URL',
): DatabaseLocation {
  if (!databaseUrl) return { kind: 'sqlite', path: join(dataDir(env), 'oai-proxy.db') };
  if (/^postgres(ql)?:\/\//i.test(databaseUrl)) {
    checkPostgresUrl(databaseUrl, setting);
    return { kind: 'postgres', url: databaseUrl, setting };
  }
  // A mistyped URL (`postgres:/u:pw@h/db`, `postgres:u:pw@h/db`) is not a file name to create: refused
  // before anything is opened or printed, its password hidden.
  const scheme = /^(postgres(?:ql)?):/i.exec(databaseUrl);
  if (scheme) {
    throw new OaiProxyError(
      'config_invalid',
      `${setting} "${redactLooseUrl(databaseUrl)}" is not a valid PostgreSQL URL: "${scheme[1]}:" must be followed by //; write ${PG_URL_FORM}`,
    );
  }
  let path: string;
  if (/^sqlite(\+\w+)?:/i.test(databaseUrl)) {
    // SQLAlchemy style: sqlite:///rel.db is relative, sqlite:////abs.db is absolute.
    const rest = databaseUrl.replace(/^sqlite(\+\w+)?:(\/\/)?/i, '');
    if (!/^sqlite(\+\w+)?:\/\//i.test(databaseUrl) || !rest.startsWith('/')) {
      throw new OaiProxyError(
        'config_invalid',
        `${setting} "${databaseUrl}" is not a valid sqlite URL: use sqlite:///relative.db or sqlite:////absolute/path.db`,
      );
    }
    path = rest.slice(1).split('?')[0];
  } else if (/^file:/i.test(databaseUrl)) {
    path = databaseUrl.startsWith('file://')
      ? fileURLToPath(databaseUrl.split('?')[0])
      : databaseUrl.slice(5).split('?')[0];
  } else if (/^[a-z][a-z0-9+.-]*:\/\//i.test(databaseUrl)) {
    throw new OaiProxyError(
      'config_invalid',
      `${setting} "${redactUrl(databaseUrl)}" has an unsupported scheme: use a file path, sqlite:///path.db, file:path.db or postgres://…`,
    );
  } else {
    path = databaseUrl;
  }
  if (path === '') throw new OaiProxyError('config_invalid', `${setting} "${databaseUrl}" names no file`);
  if (path === ':memory:') return { kind: 'sqlite', path };
  return { kind: 'sqlite', path: resolve(cwd, expandHome(path, env)) };
}

const PG_URL_FORM = 'postgres://user:password@host:port/database';

/**
 * Refuse (config_invalid, naming `setting`) a postgres:// URL that pg cannot parse, saying what is wrong:
 * a port that is not a number or out of range, or characters in the user name or password that must be
 * percent-encoded. The password is never shown.
 */
function checkPostgresUrl(url: string, setting: string): void {
  if (isPgParseable(url)) return;
  const [, scheme, rest] = /^([a-z]+:\/\/)(.*)$/is.exec(url) as RegExpExecArray;
  // The userinfo ends at the last @ (as redactUrl reads an unparseable URL): a # / or ? in it ends the
  // authority early for WHATWG URL, so pg reads part of the password as the host and port.
  const at = rest.lastIndexOf('@');
  const encoded =
    at === -1
      ? url
      : `${scheme}${rest.slice(0, at).replace(/[#/?@]/g, (c) => encodeURIComponent(c))}${rest.slice(at)}`;
  const why = (() => {
    if (encoded !== url && isPgParseable(encoded))
      return 'characters # / ? and @ in the user name or password must be percent-encoded (# as %23, / as %2F, ? as %3F, @ as %40)';
    const afterAt = at === -1 ? rest : rest.slice(at + 1);
    const authority = afterAt.slice(0, afterAt.search(/[/?#]|$/));
    const port = /^(?:\[[^\]]*\]|[^:[\]]*):(.*)$/s.exec(authority)?.[1];
    if (port !== undefined && port !== '' && !/^\d+$/.test(port)) return `the port "${port}" is not a number`;
    if (port !== undefined && Number(port) > 65535) return `the port ${port} is out of range (0-65535)`;
    return 'it cannot be parsed as a URL';
  })();
  throw new OaiProxyError(
    'config_invalid',
    `${setting} "${redactUrl(url)}" is not a valid PostgreSQL URL: ${why}; write ${PG_URL_FORM}`,
  );
}

/** Whether pg (pg-connection-string) can parse `url`: it encodes spaces and stray %, and allows an empty host. */
function isPgParseable(url: string): boolean {
  const s = / |%[^a-f0-9]|%[a-f0-9][^a-f0-9]/i.test(url) ? encodeURI(url).replace(/%25(\d\d)/g, '%$1') : url;
  return URL.canParse(s) || URL.canParse(s.replace('@/', '@___DUMMY___/'));
}

/** A URL written without `//` after its scheme, its password hidden as redactUrl would hide it with `//`. */
function redactLooseUrl(value: string): string {
  const [, scheme, slash, rest] = /^([a-z][a-z0-9+.-]*:)(\/?)(.*)$/is.exec(value) as RegExpExecArray;
  return `${scheme}${slash}${redactUrl(`${scheme}//${rest}`).slice(scheme.length + 2)}`;
}

/** A SQLite database's own files (the database, its -wal, -shm and -journal files), each with what it is. */
export function sqliteFiles(path: string): { path: string; what: string }[] {
  return ['', '-wal', '-shm', '-journal'].map((suffix) => ({
    path: path + suffix,
    what: suffix ? `the ${suffix} file of the database` : 'the database',
  }));
}

/** True when `a` and `b` name the same file: by device and inode when both exist (a link), else by path. */
export function isSameFile(a: string, b: string): boolean {
  const sa = statIfAny(a);
  const sb = sa && statIfAny(b);
  return sa && sb ? sa.dev === sb.dev && sa.ino === sb.ino : a === b;
}

/** The file's stat, or undefined when there is none to read (missing, a path through a file: ENOTDIR…). */
function statIfAny(path: string): { dev: number; ino: number } | undefined {
  try {
    return statSync(path, { throwIfNoEntry: false });
  } catch {
    return undefined;
  }
}

/** The log file: LOG_FILE_PATH, else `oai-proxy.log` beside the SQLite database (or in the data dir). */
export function resolveLogFilePath(
  logFilePath: string | undefined,
  db: DatabaseLocation,
  env: Env,
  cwd: string,
): string {
  if (logFilePath) return resolve(cwd, expandHome(logFilePath, env));
  if (db.kind === 'sqlite' && db.path !== ':memory:') return join(dirname(db.path), 'oai-proxy.log');
  return join(dataDir(env), 'oai-proxy.log');
}

/**
 * Hide a URL's password (all of it, whatever it holds), the values of secret-named query parameters
 * (`password=`, `key=`, `api-key=`, `access_token=`, Azure SAS `sig=`…) and of key-shaped ones (`code=sk-…`),
 * and its #fragment, whole (an OAuth `#access_token=`), before the URL is printed. The rest of the URL is shown as written.
 */
export function redactUrl(url: string): string {
  const m = /^([a-z][a-z0-9+.-]*:\/\/)(.*)$/is.exec(url);
  if (!m) return redactQuery(url);
  const [, scheme, whole] = m;
  // A fragment is never sent and may hold anything: hidden whole. A # in a password makes the URL
  // unparseable; then the fragment is looked for after the userinfo's last @ (too much, never too little).
  const from = isParseable(url) ? 0 : whole.lastIndexOf('@') + 1;
  const hash = whole.indexOf('#', from);
  const rest = hash === -1 || hash === whole.length - 1 ? whole : `${whole.slice(0, hash)}#***`;
  // As WHATWG URL (so pg and undici) reads it: the authority ends at the first / ? or #, and its
  // last @ ends the userinfo, so a password may hold @ and :. A password holding / ? or # makes the
  // URL unparseable; then the userinfo runs to the last @ of all, which hides too much, never too little.
  const end = rest.search(/[/?#]/);
  const at = isParseable(url)
    ? (end === -1 ? rest : rest.slice(0, end)).lastIndexOf('@')
    : rest.lastIndexOf('@');
  if (at === -1) return scheme + redactQuery(rest);
  const userinfo = rest.slice(0, at);
  const colon = userinfo.indexOf(':');
  const shown = colon === -1 ? (isParseable(url) ? userinfo : '***') : `${userinfo.slice(0, colon)}:***`;
  return `${scheme}${shown}@${redactQuery(rest.slice(at + 1))}`;
}

function isParseable(url: string): boolean {
  try {
    new URL(url);
    return true;
  } catch {
    return false;
  }
}

/**
 * Values of query parameters named like secrets (isSecretName: `key`, `api-key`, `…signature`, as headers;
 * and `passwd`, `pwd`, an Azure SAS token's `sig`) masked, and values shaped like a key whatever their
 * name (`?code=sk-…`); a parameter whose name is shaped like a key (`?sk-…`) masked whole.
 */
function redactQuery(s: string): string {
  return s.replace(/([?&])([^=&#]*)(=[^&#]*)?/g, (param, sep: string, name: string, value = '') => {
    const decoded = decodeQueryPart(name);
    if (isKeyShaped(decoded)) return `${sep}***`;
    if (!value) return param;
    return isSecretName(decoded) ||
      /^(?:passwd|pwd|sig)$/i.test(decoded) ||
      isKeyShaped(decodeQueryPart(value.slice(1)))
      ? `${sep}${name}=***`
      : param;
  });
}

function decodeQueryPart(part: string): string {
  try {
    return decodeURIComponent(part.replace(/\+/g, ' '));
  } catch {
    return part; // not percent-encoded after all: judged as written
  }
}

function expandHome(path: string, env: Env): string {
  return path === '~' || path.startsWith('~/') ? join(home(env), path.slice(1)) : path;
}

function home(env: Env): string {
  return env.HOME || homedir();
}
