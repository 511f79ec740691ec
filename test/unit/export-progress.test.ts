import { describe, expect, test } from 'vitest';
import { exportProgressLine } from '../../src/commands/logs.js';

describe('exportProgressLine (logs export --out on a terminal)', () => {
  test.each([
    [0, 5555, 80, `exporting [${'.'.repeat(25)}] 0% 0/5555`],
    [2777, 5555, 80, `exporting [${'#'.repeat(12)}${'.'.repeat(13)}] 49% 2777/5555`],
    [5555, 5555, 80, `exporting [${'#'.repeat(25)}] 100% 5555/5555`],
    // serve recorded more while the export ran: the total grows to the count, never past 100%.
    [5722, 5555, 80, `exporting [${'#'.repeat(25)}] 100% 5722/5722+`],
    // A 40-column terminal: the bar shrinks so the line stays within 39 columns (a 40th would wrap).
    [2777, 5555, 40, `exporting [${'#'.repeat(6)}${'.'.repeat(7)}] 49% 2777/5555`],
    [5722, 5555, 40, `exporting [${'#'.repeat(11)}] 100% 5722/5722+`],
    // Too narrow for a bar: the figures alone, cut to fit.
    [2777, 5555, 28, 'exporting 49% 2777/5555'],
    [2777, 5555, 12, 'exporting 4'],
  ] as const)('%i of %i in %i columns → %j', (n, total, columns, line) => {
    expect(exportProgressLine(n, total, columns)).toBe(line);
    expect(line.length).toBeLessThan(columns);
  });

  test('never wider than the terminal, never past 100%, for any count', () => {
    for (const columns of [1, 10, 20, 40, 80, 200])
      for (const n of [0, 1, 99, 100, 101, 5000, 123456]) {
        const line = exportProgressLine(n, 100, columns);
        expect(line.length).toBeLessThanOrEqual(columns - 1);
        const pct = /(\d+)%/.exec(line)?.[1];
        if (pct) expect(Number(pct)).toBeLessThanOrEqual(100);
      }
  });
});
