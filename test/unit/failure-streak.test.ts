import { afterEach, beforeEach, expect, test, vi } from 'vitest';
import { createFailureStreak } from '../../src/storage/failure-streak.js';

beforeEach(() => {
  vi.useFakeTimers({ now: 1_700_000_000_000 });
});
afterEach(() => {
  vi.useRealTimers();
});

test('a streak is reported once, backs off doubling up to 5 s, and ends on the first success', () => {
  const events: string[] = [];
  const streak = createFailureStreak({
    baseMs: 1000,
    onError: (e) => events.push(`error: ${e.message}`),
    onRecover: () => events.push('recovered'),
  });
  expect(streak.failing).toBe(false);
  expect(streak.waiting()).toBe(false);

  // Back-offs: 2 s, 4 s, then 5 s each time.
  const waits: number[] = [];
  for (let i = 0; i < 4; i++) {
    streak.fail(new Error(`disk I/O error ${i}`));
    let waited = 0;
    while (streak.waiting()) {
      vi.advanceTimersByTime(100);
      waited += 100;
    }
    waits.push(waited);
  }
  expect(waits).toEqual([2000, 4000, 5000, 5000]);
  expect(events).toEqual(['error: disk I/O error 0']);
  expect(streak.lastError).toBe('disk I/O error 3');

  streak.succeeded();
  streak.succeeded();
  expect(events).toEqual(['error: disk I/O error 0', 'recovered']);
  expect(streak.failing).toBe(false);
  expect(streak.lastError).toBeNull();

  // A new streak starts from the base back-off again, and retryNow() makes the retry due at once.
  streak.fail(new Error('database is locked'));
  expect(events.at(-1)).toBe('error: database is locked');
  vi.advanceTimersByTime(1900);
  expect(streak.waiting()).toBe(true);
  streak.retryNow();
  expect(streak.waiting()).toBe(false);
  expect(streak.failing).toBe(true);
});

test('its methods work passed on as callbacks', async () => {
  const streak = createFailureStreak({ baseMs: 10 });
  const { fail, succeeded } = streak;
  await Promise.reject(new Error('connection refused')).catch(fail);
  expect(streak.failing).toBe(true);
  expect(streak.lastError).toBe('connection refused');
  succeeded();
  expect(streak.lastError).toBeNull();
});

test('with reportEveryMs, a long streak is reported again at most that often, counting its attempts since it began', () => {
  const t0 = Date.now();
  const events: unknown[] = [];
  const streak = createFailureStreak({
    baseMs: 1000,
    reportEveryMs: 60_000,
    onError: (e, count) => events.push([e.message, count]),
    onRecover: (count) => events.push(['recovered', count]),
  });
  streak.fail(new Error('disk I/O error'));
  vi.advanceTimersByTime(59_999);
  streak.fail(new Error('disk I/O error'));
  vi.advanceTimersByTime(1);
  streak.fail(new Error('disk I/O error'));
  vi.advanceTimersByTime(30_000);
  streak.fail(new Error('disk I/O error'));
  streak.succeeded();
  expect(events).toEqual([
    ['disk I/O error', { attempts: 1, since: t0 }],
    ['disk I/O error', { attempts: 3, since: t0 }],
    ['recovered', { attempts: 4, since: t0 }],
  ]);
  // The next streak counts from 1 again, from its own start.
  streak.fail(new Error('database is locked'));
  expect(events.at(-1)).toEqual(['database is locked', { attempts: 1, since: t0 + 90_000 }]);
});
