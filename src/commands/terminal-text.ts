import type { CliIo } from './io.js';

// C0 controls, DEL, C1 controls, the Unicode line/paragraph separators and the bidi overrides/isolates:
// anything a terminal acts on (colour, title, clipboard via OSC 52, cursor moves) or that reorders text.
const UNSAFE_ONE_LINE = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;
const UNSAFE_BLOCK = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;

function escapeChar(c: string): string {
  if (c === '\n') return '\\n';
  if (c === '\r') return '\\r';
  if (c === '\t') return '\\t';
  const code = c.charCodeAt(0);
  return code < 0x100
    ? `\\x${code.toString(16).padStart(2, '0')}`
    : `\\u${code.toString(16).padStart(4, '0')}`;
}

/**
 * Recorded text (client- or upstream-controlled) made safe to print to a terminal: control characters,
 * C1 controls, U+2028/2029 and bidi overrides become visible escapes such as `\x1b` or `\u202e`. A
 * `block` (a message, a body) keeps its newlines and tabs (CRLF shown as a newline); anything else is
 * kept on one line, so \n, \r and \t are escaped too.
 */
export function terminalSafe(text: string, mode: 'line' | 'block' = 'line'): string {
  if (mode === 'line') return text.replace(UNSAFE_ONE_LINE, escapeChar);
  return text.replace(/\r\n/g, '\n').replace(UNSAFE_BLOCK, escapeChar);
}

/**
 * Whether to colour output written to `stream`: never when NO_COLOR is set (non-empty), always when
 * FORCE_COLOR is set and not `0`, else only on a terminal (https://no-color.org).
 */
export function useColor(env: CliIo['env'], stream: { isTTY?: boolean }): boolean {
  if (env.NO_COLOR) return false;
  if (env.FORCE_COLOR && env.FORCE_COLOR !== '0') return true;
  return stream.isTTY === true;
}
