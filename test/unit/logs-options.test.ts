import { describe, expect, test } from 'vitest';
import { parseCount, parseTimeBound } from '../../src/commands/logs-options.js';
import { isOaiProxyError } from '../../src/errors.js';

const NOW = Date.UTC(2026, 5, 15, 12, 0, 0);

function usageMessage(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    if (isOaiProxyError(err, 'usage')) return err.message;
    throw err;
  }
  throw new Error('no error thrown');
}

describe('parseTimeBound', () => {
  test.each([
    ['1h', NOW - 3_600_000],
    ['7d', NOW - 7 * 86_400_000],
    ['2026-02-28', new Date(2026, 1, 28).getTime()],
    ['2024-02-29', new Date(2024, 1, 29).getTime()],
    ['2000-02-29T00:00:00Z', Date.UTC(2000, 1, 29)],
    ['2026-04-30T23:59:59Z', Date.UTC(2026, 3, 30, 23, 59, 59)],
    ['2026-02-01T10:00:00.250Z', Date.UTC(2026, 1, 1, 10, 0, 0, 250)],
    ['2026-02-01t10:00z', Date.UTC(2026, 1, 1, 10, 0)],
    ['2026-02-01T10:00:00+02:00', Date.UTC(2026, 1, 1, 8, 0)],
    ['2026-02-01T10:00:00-0130', Date.UTC(2026, 1, 1, 11, 30)],
    ['2026-02-01 10:00:00Z', Date.UTC(2026, 1, 1, 10, 0)],
    // No zone: local time.
    ['2026-02-01T10:00', new Date(2026, 1, 1, 10, 0).getTime()],
    ['2026-02-01 10:00:30', new Date(2026, 1, 1, 10, 0, 30).getTime()],
  ])('%s is accepted', (text, expected) => {
    expect(parseTimeBound(text, '--since', NOW)).toBe(expected);
  });

  test('a date alone is local midnight, like a time without a zone (README: no zone = local time)', () => {
    const tz = process.env.TZ;
    process.env.TZ = 'America/New_York';
    try {
      expect(parseTimeBound('2024-05-01', '--since', NOW)).toBe(Date.UTC(2024, 4, 1, 4, 0));
      expect(parseTimeBound('2024-12-01', '--since', NOW)).toBe(Date.UTC(2024, 11, 1, 5, 0));
      expect(parseTimeBound('2024-05-01T00:00', '--since', NOW)).toBe(Date.UTC(2024, 4, 1, 4, 0));
    } finally {
      if (tz === undefined) delete process.env.TZ;
      else process.env.TZ = tz;
    }
  });

  test.each([
    ['America/New_York', '2024-03-10T02:30'],
    ['America/New_York', '2024-03-10 02:00:00'],
    ['Europe/Berlin', '2024-03-31T02:15'],
  ])(
    '%s: %s, skipped by the change to summer time, is a usage error saying so (it was taken as an hour later)',
    (zone, text) => {
      const tz = process.env.TZ;
      process.env.TZ = zone;
      try {
        expect(usageMessage(() => parseTimeBound(text, '--since', NOW))).toContain(
          `--since "${text}" does not exist in the local time zone (a daylight-saving change skips it)`,
        );
        // The hour around it, the same time with a zone, and a date alone are fine.
        const before = text.replace(/T| /, 'T').slice(0, 11);
        expect(parseTimeBound(`${before}01:59`, '--since', NOW)).toBeGreaterThan(0);
        expect(parseTimeBound(`${before}03:00`, '--since', NOW)).toBeGreaterThan(0);
        expect(parseTimeBound(`${before}02:30Z`, '--since', NOW)).toBe(Date.parse(`${before}02:30Z`));
        expect(parseTimeBound(before.slice(0, 10), '--since', NOW)).toBeGreaterThan(0);
      } finally {
        if (tz === undefined) delete process.env.TZ;
        else process.env.TZ = tz;
      }
    },
  );

  test.each([
    '2026-02-30',
    '2026-02-31T10:00:00Z',
    '2026-02-29',
    '1900-02-29',
    '2026-04-31',
    '2026-06-31T00:00',
    '2026-00-10',
    '2026-13-01',
    '2026-01-00',
    '2026-01-32',
    '2026-02-01T25:00:00Z',
    '2026-02-01T24:00:00Z',
    '2026-02-01T10:61Z',
    '2026-02-01T10:00:60Z',
    '2026-02-01T10:00:00+25:00',
    '2026-02-01T10:00:00+02:75',
  ])('%s does not exist: a usage error naming the flag and the accepted forms', (text) => {
    const message = usageMessage(() => parseTimeBound(text, '--older-than', NOW));
    expect(message).toContain(`--older-than "${text}" is not a date or time that exists`);
    expect(message).toContain('2024-05-01T12:00:00Z');
  });

  test.each(['yesterday', '2026-02-01T10', '2026-2-1', '2026-02-01T10:00:00+02'])(
    '%s is not a form it accepts',
    (text) => {
      expect(usageMessage(() => parseTimeBound(text, '--until', NOW))).toContain(
        `--until "${text}" is neither a duration`,
      );
    },
  );
});

describe('parseCount', () => {
  test.each([
    [undefined, 50],
    ['0', 0],
    [' 7 ', 7],
    ['9007199254740991', Number.MAX_SAFE_INTEGER],
  ])('%s gives %s', (text, expected) => {
    expect(parseCount(text, '--limit', 50)).toBe(expected);
  });

  test.each(['-1', '1.5', '1e3', 'ten', '', '9007199254740992', '9223372036854775807'])(
    '%s is a usage error naming the flag and the range',
    (text) => {
      expect(usageMessage(() => parseCount(text, '--limit', 50, { zero: 'all' }))).toBe(
        `--limit "${text}" must be a whole number from 0 to 9007199254740991 (0 = all)`,
      );
    },
  );

  test('a smaller maximum', () => {
    expect(parseCount('3600000', '--interval', 250, { max: 3_600_000 })).toBe(3_600_000);
    expect(usageMessage(() => parseCount('3600001', '--interval', 250, { max: 3_600_000 }))).toBe(
      '--interval "3600001" must be a whole number from 0 to 3600000',
    );
  });
});
