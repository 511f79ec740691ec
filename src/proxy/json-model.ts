/**
 * `body`, a JSON object already known to parse, with the value of its top-level `model` member replaced
 * by `model` and every other byte as it was (numbers, escapes, spacing, key order, a leading UTF-8 byte
 * order mark). Every top-level `model` member is replaced when the object repeats the key. Null when it
 * has no top-level `model`.
 */
export function replaceJsonModel(body: Buffer, model: string): Buffer | null {
  const spans: [number, number][] = [];
  const bom = body[0] === 0xef && body[1] === 0xbb && body[2] === 0xbf;
  let i = skipSpace(body, bom ? 3 : 0);
  if (body[i] !== OPEN_BRACE) return null;
  i = skipSpace(body, i + 1);
  if (body[i] === CLOSE_BRACE) return null;
  for (;;) {
    if (body[i] !== QUOTE) return null;
    const keyEnd = stringEnd(body, i);
    if (keyEnd === -1) return null;
    const isModel = keyText(body, i, keyEnd) === 'model';
    i = skipSpace(body, keyEnd);
    if (body[i] !== COLON) return null;
    const valueStart = skipSpace(body, i + 1);
    const valueEnd = valueEndAt(body, valueStart);
    if (valueEnd === -1) return null;
    if (isModel) spans.push([valueStart, valueEnd]);
    i = skipSpace(body, valueEnd);
    if (body[i] === COMMA) i = skipSpace(body, i + 1);
    else if (body[i] === CLOSE_BRACE) break;
    else return null;
  }
  if (spans.length === 0) return null;
  const value = Buffer.from(JSON.stringify(model));
  const parts: Buffer[] = [];
  let from = 0;
  for (const [start, end] of spans) {
    parts.push(body.subarray(from, start), value);
    from = end;
  }
  parts.push(body.subarray(from));
  return Buffer.concat(parts);
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const COLON = 0x3a;
const COMMA = 0x2c;
const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACKET = 0x5d;

function skipSpace(b: Buffer, i: number): number {
  // JSON's whitespace: space, tab, LF, CR
  while (i < b.length && (b[i] === 0x20 || b[i] === 0x09 || b[i] === 0x0a || b[i] === 0x0d)) i++;
  return i;
}

/** Index just past the string opening at `start` (a `"`), or -1. UTF-8 continuation bytes never match. */
function stringEnd(b: Buffer, start: number): number {
  for (let i = start + 1; i < b.length; i++) {
    if (b[i] === BACKSLASH) i++;
    else if (b[i] === QUOTE) return i + 1;
  }
  return -1;
}

/** A member name as JSON.parse reads it (`"mod\u0065l"` is `model`). */
function keyText(b: Buffer, start: number, end: number): string {
  const raw = b.toString('utf8', start, end);
  return raw.includes('\\') ? (JSON.parse(raw) as string) : raw.slice(1, -1);
}

/** Index just past the value starting at `start`, or -1. */
function valueEndAt(b: Buffer, start: number): number {
  const c = b[start];
  if (c === QUOTE) return stringEnd(b, start);
  if (c === OPEN_BRACE || c === OPEN_BRACKET) {
    let depth = 0;
    for (let i = start; i < b.length; i++) {
      const d = b[i];
      if (d === QUOTE) {
        i = stringEnd(b, i) - 1;
        if (i < 0) return -1;
      } else if (d === OPEN_BRACE || d === OPEN_BRACKET) depth++;
      else if ((d === CLOSE_BRACE || d === CLOSE_BRACKET) && --depth === 0) return i + 1;
    }
    return -1;
  }
  // number, true, false, null: up to the next delimiter
  let i = start;
  while (i < b.length && b[i] !== COMMA && b[i] !== CLOSE_BRACE && skipSpace(b, i) === i) i++;
  return i === start ? -1 : i;
}
