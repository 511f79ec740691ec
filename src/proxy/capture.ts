import type { IncomingHttpHeaders } from 'node:http';
import type { AssembledChoice, AssembledMessage } from '../storage/exchange-record.js';

/**
 * Shortest secret scrubbed from recorded text: shorter strings (`abc12`) are too likely to be ordinary
 * text, so they are left as they are (`serve` warns about configured keys this short).
 */
export const MIN_SECRET_LENGTH = 6;

/**
 * Headers whose values are secrets whatever their name says (`cookie`); with those `isSecretHeaderName`
 * matches, stored as `[redacted]`, never persisted or logged.
 */
export const SECRET_HEADERS: ReadonlySet<string> = new Set([
  'authorization',
  'api-key',
  'x-api-key',
  'cookie',
  'set-cookie',
  'proxy-authorization',
]);

export const REDACTED = '[redacted]';

/**
 * A name in SECRET_HEADERS or one naming a key, token, secret, password, signature or auth (any case),
 * except rate-limit headers: `x-ratelimit-remaining-tokens`, on every OpenAI answer, holds a count.
 */
export function isSecretHeaderName(name: string): boolean {
  const n = name.toLowerCase();
  if (SECRET_HEADERS.has(n)) return true;
  return /key|token|secret|auth|password|signature/.test(n) && !/rate-?limit/.test(n);
}

/** Names `isSecretHeaderNameCached` remembers at most: a client inventing names cannot grow it further. */
export const SECRET_NAME_CACHE_MAX = 4096;
/** Longer names are classified on every call, not remembered: 4,096 names of 16 KB would hold 64 MB. */
const CACHED_NAME_MAX_LENGTH = 128;
const secretNames = new Map<string, boolean>();

/**
 * `isSecretHeaderName`, remembered per name: every recorded exchange asks it of each of its headers, and a
 * Map lookup costs a fraction of lower-casing the name and running the regex. Full, the map starts over,
 * so a flood of invented names only costs the usual names one more regex each.
 */
export function isSecretHeaderNameCached(name: string): boolean {
  const known = secretNames.get(name);
  if (known !== undefined) return known;
  const secret = isSecretHeaderName(name);
  if (name.length <= CACHED_NAME_MAX_LENGTH) {
    if (secretNames.size >= SECRET_NAME_CACHE_MAX) secretNames.clear();
    secretNames.set(name, secret);
  }
  return secret;
}

/**
 * Query parameters that hold a secret under a name `isSecretHeaderName` does not flag: an Azure SAS
 * token's `sig`, and passwords as `pwd`/`passwd` (config's redactUrl hides the same in printed URLs).
 */
const SECRET_QUERY_NAMES = /^(?:sig|pwd|passwd)$/i;

/**
 * A query string as recorded: the values of parameters whose names mark them as secret (`api-key`, `key`,
 * `access_token`, `X-Amz-Signature`…, as `isSecretHeaderName` judges header names; `sig`, `pwd`,
 * `passwd`) replaced by `[redacted]`. Azure's Realtime API takes a browser's key as `?api-key=`;
 * configured keys are scrubbed anyway.
 */
export function redactQuerySecrets(query: string): string {
  const parts = query.split('&');
  let changed = false;
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i] as string;
    const eq = part.indexOf('=');
    if (eq <= 0 || !isSecretQueryName(part.slice(0, eq))) continue;
    parts[i] = `${part.slice(0, eq + 1)}${REDACTED}`;
    changed = true;
  }
  return changed ? parts.join('&') : query;
}

/**
 * The values (as sent and percent-decoded) of the query parameters `redactQuerySecrets` hides: a key a
 * client gives in its URL (`?api-key=`, `?key=`), to scrub from its exchange wherever the upstream echoes it.
 */
export function querySecretValues(query: string): string[] {
  const out: string[] = [];
  for (const part of query.split('&')) {
    const eq = part.indexOf('=');
    if (eq <= 0 || !isSecretQueryName(part.slice(0, eq))) continue;
    const value = part.slice(eq + 1);
    out.push(value);
    try {
      const decoded = decodeURIComponent(value.replace(/\+/g, ' '));
      if (decoded !== value) out.push(decoded);
    } catch {
      // not percent-encoded after all: the value as sent is the key
    }
  }
  return out;
}

/** A query parameter's name (as sent, percent-decoded here) that marks its value as secret. */
function isSecretQueryName(raw: string): boolean {
  let name = raw;
  try {
    name = decodeURIComponent(raw.replace(/\+/g, ' '));
  } catch {
    // not percent-encoded after all: judge it as it is
  }
  return isSecretHeaderNameCached(name.toLowerCase()) || SECRET_QUERY_NAMES.test(name);
}

/** How many names `isSecretHeaderNameCached` remembers now (tests). */
export function secretNameCacheSize(): number {
  return secretNames.size;
}

/**
 * The secrets among configured header values (`upstreams.*.headers`), to scrub like keys: the values of
 * secret-named headers, and for `Bearer X` / `Basic X` also X. Other values (`application/json`, a team
 * name) are not secrets and stay readable wherever they appear.
 */
export function headerSecrets(headers: Record<string, string> | undefined): string[] {
  const out: string[] = [];
  for (const [name, value] of Object.entries(headers ?? {})) {
    if (typeof value !== 'string' || !isSecretHeaderName(name)) continue;
    out.push(value);
    const credential = /^\s*(?:Bearer|Basic)\s+(\S.*?)\s*$/i.exec(value)?.[1];
    if (credential) out.push(credential);
  }
  return out;
}

/** The token of an `Authorization: Bearer <token>` header value, if it is one. */
export function bearerToken(authorization: unknown): string | undefined {
  if (typeof authorization !== 'string') return undefined;
  return /^Bearer\s+(.+)$/i.exec(authorization)?.[1]?.trim() || undefined;
}

/**
 * Copy of `headers` ready to persist: the values of secret headers (`isSecretHeaderName`) replaced, and
 * any of `secrets` (configured keys) echoed in another header scrubbed from its value.
 */
export function redactHeaders(
  headers: IncomingHttpHeaders | Record<string, string | string[] | undefined>,
  secrets: readonly string[] = [],
): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const k in headers) {
    const v = headers[k];
    if (v === undefined) continue;
    const name = k.toLowerCase();
    if (isSecretHeaderNameCached(name)) out[name] = REDACTED;
    else if (secrets.length === 0) out[name] = v;
    else out[name] = Array.isArray(v) ? v.map((s) => scrubSecrets(s, secrets)) : scrubSecrets(v, secrets);
  }
  return out;
}

/** Anything but printable ASCII other than `"` and `\` (non-ASCII counts too, to be safe). */
const NEEDS_JSON_ESCAPE = /[^\x20\x21\x23-\x5b\x5d-\x7e]/;

/** True unless `JSON.stringify(s)` is `s` between quotes, character for character. */
export function needsJsonEscape(s: string): boolean {
  return NEEDS_JSON_ESCAPE.test(s);
}

/**
 * `JSON.stringify(redactHeaders(headers, secrets))`, the form the headers are stored in, for headers whose
 * names are in lower case (as node:http and undici give them). It copies the object only when it holds a
 * secret header, and scrubs the configured keys from the JSON text: on the hot path that costs a third of
 * building the redacted copy, handing it to the recorder thread and serialising it there. A key that JSON
 * would escape is scrubbed value by value (redactHeaders), as a match in the escaped text could differ.
 */
export function redactedHeadersJson(
  headers: IncomingHttpHeaders | Record<string, string | string[] | undefined>,
  secrets: readonly string[] = [],
): string {
  let copy = headers;
  for (const name in headers) {
    if (!isSecretHeaderNameCached(name) || headers[name] === undefined) continue;
    if (copy === headers) copy = { ...headers };
    copy[name] = REDACTED;
  }
  let text = JSON.stringify(copy);
  for (const s of secrets) {
    if (!s || s.length < MIN_SECRET_LENGTH) continue;
    if (needsJsonEscape(s)) return JSON.stringify(redactHeaders(headers, secrets));
    // Plain text holds no `"` or `\`, so a match lies inside one name or one value, never across them.
    if (text.includes(s)) text = text.split(s).join(REDACTED);
  }
  return text;
}

/** Remove every occurrence of each secret from `text` (for error messages and bodies that echo keys). */
export function scrubSecrets(text: string, secrets: readonly (string | undefined)[]): string {
  let out = text;
  for (const s of secrets)
    if (s && s.length >= MIN_SECRET_LENGTH && out.includes(s)) out = out.split(s).join(REDACTED);
  return out;
}

/** `scrubSecrets` of a string or null. */
export function scrubNullable(text: string | null, secrets: readonly (string | undefined)[]): string | null {
  return text === null ? null : scrubSecrets(text, secrets);
}

/**
 * Shortest end of a cut text redacted as the start of a key (`redactCutKey`). Three characters are what
 * the masked keys the proxy prints show anyway (`sk-…0001`), and a body cut just after `sk-` says nothing.
 */
export const MIN_KEY_PREFIX = 4;

/**
 * `text`, cut at a size limit, with its end replaced by `[redacted]` when that end (MIN_KEY_PREFIX
 * characters or more) is the start of one of `secrets`: a key straddling the limit is not whole, so
 * `scrubSecrets` cannot find it.
 */
export function redactCutKey(text: string, secrets: readonly (string | undefined)[]): string {
  let longest = 0;
  for (const s of secrets) {
    if (!s || s.length < MIN_SECRET_LENGTH) continue;
    for (let k = Math.min(s.length - 1, text.length); k >= MIN_KEY_PREFIX && k > longest; k--) {
      if (text.startsWith(s.slice(0, k), text.length - k)) {
        longest = k;
        break;
      }
    }
  }
  return longest === 0 ? text : `${text.slice(0, text.length - longest)}${REDACTED}`;
}

/** `scrubSecrets`, then `redactCutKey` when the body was `cut` at its size limit. */
export function scrubBody(text: string, secrets: readonly (string | undefined)[], cut: boolean): string {
  const out = scrubSecrets(text, secrets);
  return cut ? redactCutKey(out, secrets) : out;
}

/**
 * A client's key (Bearer token, `api-key` or `x-api-key` header, subprotocol key, a secret query parameter) is scrubbed from its own exchange from this
 * length on. Real keys are far longer (32 to 200 characters); local servers take short placeholders
 * (`ollama`, `lm-studio`) that would otherwise turn every such word in a record into `[redacted]`.
 */
export const CLIENT_KEY_MIN = 16;

/**
 * `secrets` plus `key`, a key this exchange's client presented, to scrub from its record; `secrets`
 * itself (no copy) when there is no such key, it is shorter than CLIENT_KEY_MIN, or already there.
 */
export function withClientKey(secrets: readonly string[], key: unknown): readonly string[] {
  if (typeof key !== 'string' || key.length < CLIENT_KEY_MIN || secrets.includes(key)) return secrets;
  return [...secrets, key];
}

/**
 * A reassembled stream with every secret scrubbed from its text: content, tool calls, finish reason, of
 * every choice. Scrubbed as a whole, after reassembly: a key split across two deltas is whole only here.
 * A text `maxChars` long or longer was cut there: its end is also redacted if it starts a key.
 * Returns `a` itself when nothing was redacted, a copy otherwise: a copy means the raw stream held a key
 * too, split across events where no scrubber finds it (see `withheldStreamBody`).
 */
export function scrubAssembled(
  a: AssembledMessage,
  secrets: readonly (string | undefined)[],
  maxChars = Number.POSITIVE_INFINITY,
): AssembledMessage {
  if (secrets.length === 0) return a;
  let changed = false;
  const text = (s: string) => {
    const out = scrubBody(s, secrets, s.length >= maxChars);
    if (out !== s) changed = true;
    return out;
  };
  const str = (s: string | undefined) => (s === undefined ? undefined : text(s));
  const scrubChoice = <C extends Omit<AssembledChoice, 'index'>>(c: C): C => ({
    ...c,
    content: text(c.content),
    tool_calls: c.tool_calls.map((t) => ({
      ...t,
      id: str(t.id),
      type: str(t.type),
      name: str(t.name),
      arguments: text(t.arguments),
    })),
    finish_reason: c.finish_reason === null ? null : text(c.finish_reason),
  });
  const out = scrubChoice(a);
  if (a.choices) out.choices = a.choices.map(scrubChoice);
  return changed ? out : a;
}

/**
 * The response body stored for a stream whose reassembled message held a key: the events themselves are
 * not stored, as the key is split across them (`"sk"`, `"-SEC"`, `"RETU"`…) where no search can find it.
 */
export function withheldStreamBody(
  bytes: number,
  why = 'the reassembled message held a key, redacted there',
): string {
  return `[stream events withheld: ${why}; ${bytes} bytes]`;
}

/** True for content types stored as text; everything else is stored as a placeholder. */
export function isTextual(contentType: string | undefined): boolean {
  if (!contentType) return true;
  const ct = contentType.toLowerCase();
  return (
    ct.startsWith('text/') ||
    ct.includes('json') ||
    ct.includes('xml') ||
    ct.includes('event-stream') ||
    ct.includes('x-www-form-urlencoded') ||
    ct.includes('javascript') ||
    ct.includes('yaml')
  );
}

/** Keeps the first `limit` bytes of a body while counting all of it. */
export class BodyCapture {
  private chunks: Buffer[] = [];
  private captured = 0;
  /** The captured bytes already decoded by whoever read the whole body (see `decoded`). */
  private decodedText: string | null = null;
  /**
   * The bytes past `limit`, the last `tailLimit` of them at least (filled only once over the limit); with
   * fewer, the body's tail begins in `chunks`, which `tailText` reads instead of keeping a copy.
   */
  private tail: Buffer[] | null = null;
  private tailBytes = 0;
  /** Total bytes seen. */
  bytes = 0;
  truncated = false;

  /** `tailLimit`: past `limit`, also keep the body's last bytes (where a JSON answer has its usage). */
  constructor(
    readonly limit: number,
    private tailLimit = 0,
  ) {}

  push(chunk: Buffer): void {
    this.bytes += chunk.length;
    if (this.captured >= this.limit) {
      if (chunk.length > 0) {
        this.truncated = true;
        if (this.tailLimit > 0) this.keepTail(chunk);
      }
      return;
    }
    const room = this.limit - this.captured;
    const part = chunk.length <= room ? chunk : chunk.subarray(0, room);
    this.chunks.push(part);
    this.captured += part.length;
    if (part.length < chunk.length) {
      this.truncated = true;
      if (this.tailLimit > 0) this.keepTail(chunk.subarray(room));
    }
  }

  private keepTail(chunk: Buffer): void {
    this.tail ??= [];
    const tail = this.tail;
    tail.push(chunk);
    this.tailBytes += chunk.length;
    while (this.tailBytes - tail[0].length >= this.tailLimit) this.tailBytes -= tail.shift()!.length;
  }

  /** Drop the tail kept, and keep none from now on: the rest of the body will not be pushed. */
  forgetTail(): void {
    this.tail = null;
    this.tailBytes = 0;
    this.tailLimit = 0;
  }

  /**
   * The last `tailLimit` bytes of a truncated body as text, the bytes before `limit` included when fewer
   * came after it (its first character may be a cut one); null when the body was not truncated or no
   * tail is kept.
   */
  tailText(): string | null {
    if (!this.tail) return null;
    const parts = this.tail.slice();
    // Not trimmed yet, the tail starts right at `limit`: the head's end is the body's before it.
    let need = this.tailLimit - this.tailBytes;
    for (let i = this.chunks.length - 1; need > 0 && i >= 0; i--) {
      const chunk = this.chunks[i];
      const part = chunk.length <= need ? chunk : chunk.subarray(chunk.length - need);
      parts.unshift(part);
      need -= part.length;
    }
    const all = parts.length === 1 ? parts[0] : Buffer.concat(parts);
    return all.subarray(Math.max(0, all.length - this.tailLimit)).toString('utf8');
  }

  /** The stored form: text when textual (and not compressed), else a placeholder naming type and size. */
  stored(contentType: string | undefined, contentEncoding?: string): string | null {
    if (this.bytes === 0) return null;
    const encoded = contentEncoding && contentEncoding !== 'identity';
    if (!isTextual(contentType) || encoded) {
      return `[binary body: ${contentType ?? 'unknown type'}${encoded ? `, ${contentEncoding}` : ''}, ${this.bytes} bytes]`;
    }
    return this.text();
  }

  /**
   * The whole body, decoded as UTF-8 by a reader that needed the text anyway (the proxy parses a JSON
   * request): `text()` returns it instead of decoding the same bytes again. Ignored once truncated.
   */
  decoded(text: string): void {
    this.decodedText = text;
  }

  /** The kept bytes as UTF-8; cut at the limit, up to the last whole character (no U+FFFD for a cut one). */
  text(): string {
    if (this.decodedText !== null && !this.truncated) return this.decodedText;
    const kept = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks);
    return this.truncated ? kept.toString('utf8', 0, wholeUtf8End(kept)) : kept.toString('utf8');
  }
}

/**
 * The length of `buf` without a UTF-8 character cut at its end. A last byte that would start a multi-byte
 * character is taken for a cut one (a Latin-1 body's `é` too: it decodes as U+FFFD anyway).
 */
function wholeUtf8End(buf: Buffer): number {
  const n = buf.length;
  for (let i = n - 1; i >= 0 && i >= n - 4; i--) {
    const b = buf[i] as number;
    if ((b & 0xc0) === 0x80) continue; // a continuation byte: its lead byte is further back
    const size = b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : b >= 0xc0 ? 2 : 1;
    return i + size > n ? i : n;
  }
  return n;
}
