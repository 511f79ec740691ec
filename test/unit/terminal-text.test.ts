import { describe, expect, test } from 'vitest';
import { terminalSafe, useColor } from '../../src/commands/terminal-text.js';

describe('terminalSafe', () => {
  test.each([
    ['plain text → arrow, émoji 🙂', 'line', 'plain text → arrow, émoji 🙂'],
    ['\u001b[31mred\u001b[0m', 'line', '\\x1b[31mred\\x1b[0m'],
    ['osc \u001b]52;c;eA==\u0007', 'line', 'osc \\x1b]52;c;eA==\\x07'],
    ['a\nb\rc\td', 'line', 'a\\nb\\rc\\td'],
    ['a\nb\r\nc\td\re', 'block', 'a\nb\nc\td\\re'],
    ['nul\u0000 del\u007f c1\u0085\u009b', 'block', 'nul\\x00 del\\x7f c1\\x85\\x9b'],
    ['ls\u2028ps\u2029', 'block', 'ls\\u2028ps\\u2029'],
    [
      '\u202a\u202b\u202c\u202d\u202e|\u2066\u2067\u2068\u2069',
      'line',
      '\\u202a\\u202b\\u202c\\u202d\\u202e|\\u2066\\u2067\\u2068\\u2069',
    ],
  ] as const)('%j (%s) → %j', (input, mode, expected) => {
    expect(terminalSafe(input, mode)).toBe(expected);
  });
});

describe('useColor (no-color.org)', () => {
  test.each([
    [{}, true, true],
    [{}, false, false],
    [{ NO_COLOR: '1' }, true, false],
    [{ NO_COLOR: '' }, true, true],
    [{ FORCE_COLOR: '1' }, false, true],
    [{ FORCE_COLOR: 'true' }, false, true],
    [{ FORCE_COLOR: '0' }, false, false],
    [{ FORCE_COLOR: '' }, false, false],
    [{ NO_COLOR: 'x', FORCE_COLOR: '1' }, true, false],
  ])('env %j, a terminal: %s → %s', (env, isTTY, expected) => {
    expect(useColor(env, { isTTY })).toBe(expected);
  });
});
