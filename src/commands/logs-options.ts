import { requireFlagValue } from '../config/load.js';
import { OaiProxyError } from '../errors.js';
import type { LogFilter, StatusFilter } from '../storage/log-queries.js';

/** Filter flags shared by `logs`, `logs tail`, `logs stats` and `logs export`, as commander parses them. */
export interface LogFilterFlags {
  model?: string;
  since?: string;
  until?: string;
  status?: string;
  path?: string;
  user?: string;
  stream?: boolean;
  grep?: string;
  internal?: boolean;
  unknownModels?: boolean;
}

const UNITS: Record<string, number> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
  w: 604_800_000,
};

/** Milliseconds in a duration such as `30s`, `15m`, `1h`, `7d`, `2w`; undefined when it is not one. */
export function parseDuration(text: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$/i.exec(text);
  return m ? Number(m[1]) * UNITS[m[2].toLowerCase()] : undefined;
}

const ISO_TIME =
  /^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?(?:Z|[+-](\d{2}):?(\d{2}))?)?$/i;

/**
 * A point in time from a flag: a duration ago (`1h` = one hour before `now`) or an ISO-8601 time
 * (`2024-05-01`, `2024-05-01T12:00:00Z`; without a zone it is local time). An impossible date or time
 * (Feb 30, hour 25) is rejected, not rolled over. Throws usage errors naming the flag.
 */
export function parseTimeBound(text: string, flag: string, now: number): number {
  const ms = parseDuration(text);
  if (ms !== undefined) {
    // Whole milliseconds, as recorded; and a time a Date can hold (±8.64e15 ms), or prune could not say it.
    const t = now - Math.round(ms);
    if (t >= -8.64e15) return t;
    throw new OaiProxyError(
      'usage',
      `${flag} "${text}" reaches back before any time a date can hold; give a shorter duration or an ISO-8601 time (2024-05-01)`,
    );
  }
  const m = ISO_TIME.exec(text.trim());
  if (m) {
    const [year, month, day, hour, minute, second, zoneHours, zoneMinutes] = m
      .slice(1)
      .map((x) => (x === undefined ? 0 : Number(x)));
    const exists =
      month >= 1 &&
      month <= 12 &&
      day >= 1 &&
      day <= daysInMonth(year, month) &&
      hour <= 23 &&
      minute <= 59 &&
      second <= 59 &&
      zoneHours <= 23 &&
      zoneMinutes <= 59;
    // A date alone is local midnight, as a time without a zone is (Date.parse would take it as UTC).
    const t = !exists ? Number.NaN : Date.parse(m[4] === undefined ? `${text.trim()}T00:00` : text.trim());
    // A local time a daylight-saving change skips (02:30 on a spring-forward night) is parsed as an hour
    // later: refused like Feb 30. A date alone is the day's first instant, whenever it starts.
    const zoned = /(?:z|[+-]\d{2}:?\d{2})$/i.test(text.trim());
    if (!Number.isNaN(t) && m[4] !== undefined && !zoned) {
      const d = new Date(t);
      if (
        d.getFullYear() !== year ||
        d.getMonth() + 1 !== month ||
        d.getDate() !== day ||
        d.getHours() !== hour ||
        d.getMinutes() !== minute
      )
        throw new OaiProxyError(
          'usage',
          `${flag} "${text}" does not exist in the local time zone (a daylight-saving change skips it); give the time with its UTC offset (2024-03-10T03:30:00-04:00) or in UTC (2024-03-10T07:30:00Z)`,
        );
    }
    if (!Number.isNaN(t)) return t;
    throw new OaiProxyError(
      'usage',
      `${flag} "${text}" is not a date or time that exists (month 01-12, a day of that month, hours 00-23, minutes and seconds 00-59); use a duration (30s, 15m, 1h, 7d) or an ISO-8601 time (2024-05-01, 2024-05-01T12:00:00Z, 2024-05-01 12:00 local, 2024-05-01T12:00:00+02:00)`,
    );
  }
  throw new OaiProxyError(
    'usage',
    `${flag} "${text}" is neither a duration (30s, 15m, 1h, 7d) nor an ISO-8601 time (2024-05-01T12:00:00Z)`,
  );
}

function daysInMonth(year: number, month: number): number {
  const leap = year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0);
  return month === 2 ? (leap ? 29 : 28) : [31, 0, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1];
}

/** `--status 200`, `4xx`, `5xx`, `error`, or several joined by commas. */
export function parseStatus(text: string): StatusFilter[] {
  return text.split(',').map((part) => {
    const p = part.trim().toLowerCase();
    if (/^[1-5]\d\d$/.test(p)) return { kind: 'exact', status: Number(p) };
    if (/^[1-5]xx$/.test(p)) {
      const base = Number(p[0]) * 100;
      return { kind: 'range', min: base, max: base + 99 };
    }
    if (p === 'error') return { kind: 'error' };
    throw new OaiProxyError(
      'usage',
      `--status "${part}" is not a status: use a code (200), a class (4xx, 5xx) or error (no complete upstream answer)`,
    );
  });
}

/**
 * A whole-number flag from 0 to `max` (`--limit`, `--interval`); `zero` says what 0 means, for the message.
 * Larger values (a 64-bit LIMIT the database rejects, a timer Node cannot set) are usage errors.
 */
export function parseCount(
  text: string | undefined,
  flag: string,
  dflt: number,
  { max = Number.MAX_SAFE_INTEGER, zero }: { max?: number; zero?: string } = {},
): number {
  if (text === undefined) return dflt;
  const n = Number(text.trim());
  if (!/^\d+$/.test(text.trim()) || n > max)
    throw new OaiProxyError(
      'usage',
      `${flag} "${text}" must be a whole number from 0 to ${max}${zero ? ` (0 = ${zero})` : ''}`,
    );
  return n;
}

/** Check a flag against its allowed values. */
export function parseChoice<T extends string>(
  text: string | undefined,
  flag: string,
  allowed: readonly T[],
  dflt: T,
): T {
  if (text === undefined) return dflt;
  const t = text.trim().toLowerCase() as T;
  if (!allowed.includes(t))
    throw new OaiProxyError('usage', `${flag} "${text}" must be one of ${allowed.join(', ')}`);
  return t;
}

/** A character the search index keeps in its words: a letter, a digit or a private-use character. */
const SEARCHABLE_CHARACTER = /[\p{L}\p{N}\p{Co}]/u;

/** Turn the filter flags into a LogFilter. `now` anchors relative times. */
export function resolveLogFilter(flags: LogFilterFlags, now: number): LogFilter {
  const filter: LogFilter = {};
  if (flags.model !== undefined)
    filter.model = requireFlagValue(flags.model, '--model', 'a model name', '--model gpt-4o');
  if (flags.since !== undefined) filter.since = parseTimeBound(flags.since, '--since', now);
  if (flags.until !== undefined) filter.until = parseTimeBound(flags.until, '--until', now);
  if (filter.since !== undefined && filter.until !== undefined && filter.since >= filter.until)
    throw new OaiProxyError(
      'usage',
      `--since ${flags.since} is not before --until ${flags.until}: nothing can match`,
    );
  if (flags.status !== undefined) filter.status = parseStatus(flags.status);
  if (flags.path !== undefined)
    filter.pathPrefix = requireFlagValue(flags.path, '--path', 'a request path prefix', '--path /v1/chat');
  if (flags.user !== undefined)
    filter.user = requireFlagValue(flags.user, '--user', 'the request body\'s "user" field', '--user alice');
  if (flags.stream !== undefined) filter.stream = flags.stream;
  if (flags.grep !== undefined) {
    // The index's words are runs of letters and digits (FTS5's unicode61): a query without one (only
    // quotes, punctuation or emoji) would match nothing, silently.
    if (!SEARCHABLE_CHARACTER.test(flags.grep))
      throw new OaiProxyError('usage', '--grep needs some text to search for, e.g. --grep "rate limit"');
    filter.grep = flags.grep;
  }
  if (flags.internal) filter.internal = true;
  if (flags.unknownModels) filter.modelUnknown = true;
  return filter;
}
