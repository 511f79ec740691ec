import { randomUUID } from 'node:crypto';
import { strlen as displayWidth } from 'cli-table3/src/utils.js';
import type { ExchangeSummaryRow, StatsGroup } from '../storage/log-queries.js';
import type { ExchangesTable } from '../storage/tables.js';
import { terminalSafe } from './terminal-text.js';

/** The stable JSON shape of one exchange in `logs --json/--jsonl`, `logs tail` and search hits. */
export interface ExchangeJson {
  id: string;
  /** ISO-8601 (UTC) start time. */
  time: string;
  method: string;
  path: string;
  status: number | null;
  model: string | null;
  upstream_model: string | null;
  upstream: string | null;
  stream: boolean;
  duration_ms: number;
  ttfb_ms: number | null;
  prompt_tokens: number | null;
  completion_tokens: number | null;
  total_tokens: number | null;
  user: string | null;
  error: string | null;
  error_message: string | null;
  internal: boolean;
  /** The model was not in the registry and was let through (VALIDATE_MODELS with ALLOW_UNKNOWN_MODELS). */
  model_unknown: boolean;
}

/** `logs show --json` and `logs export --format jsonl`: the list fields plus headers, bodies, reassembly. */
export interface ExchangeDetailJson extends ExchangeJson {
  query: string | null;
  client_addr: string | null;
  request_headers: Record<string, unknown> | null;
  /** A JSON body as recorded (emitted token for token), other text as a string. */
  request_body: RecordedJson | string | null;
  request_bytes: number;
  request_truncated: boolean;
  response_headers: Record<string, unknown> | null;
  response_body: RecordedJson | string | null;
  response_bytes: number;
  response_truncated: boolean;
  assembled: {
    /** The stream's format: chat.completion, text_completion, response, transcription, speech, realtime (a WebSocket session), llama.cpp, ollama or unknown. */
    kind: string;
    content: string;
    tool_calls: unknown[];
    finish_reason: string | null;
    usage: unknown;
    /** False when the stream ended before its final event (cut off, or an error event instead). */
    complete: boolean;
    /** Every choice of an `n` > 1 stream, the first included; absent for one choice. */
    choices?: { index: number; content: string; tool_calls: unknown[]; finish_reason: string | null }[];
    /** A realtime session's server events. */
    events?: number;
    /** A realtime session's input audio transcription usage (its own model): tokens or seconds. */
    input_transcription_usage?: unknown;
  } | null;
}

type SummaryLike = Omit<ExchangeSummaryRow, 'rowid'>;

/** Map a stored row to the stable list JSON. */
export function toExchangeJson(row: SummaryLike): ExchangeJson {
  return {
    id: row.id,
    time: new Date(row.started_at).toISOString(),
    method: row.method,
    path: row.path,
    status: row.status,
    model: row.model,
    upstream_model: row.upstream_model,
    upstream: row.upstream,
    stream: row.stream === 1,
    duration_ms: row.duration_ms,
    ttfb_ms: row.ttfb_ms,
    prompt_tokens: row.prompt_tokens,
    completion_tokens: row.completion_tokens,
    total_tokens: row.total_tokens,
    user: row.user,
    error: row.error,
    error_message: row.error_message,
    internal: row.internal === 1,
    model_unknown: row.model_unknown === 1,
  };
}

/**
 * A recorded JSON text (a body), kept as text: JSON.parse would round numbers past 2^53 and decimals like
 * `1.0`, and keep only the last of duplicate keys, so the output would not be what was sent.
 */
export class RecordedJson {
  constructor(readonly text: string) {}
}

/** A body as the detail JSON holds it: a valid JSON object or array as RecordedJson, anything else as text. */
export function recordedJsonBody(text: string | null): RecordedJson | string | null {
  if (text === null) return null;
  const t = text.trimStart();
  if (t[0] !== '{' && t[0] !== '[') return text;
  try {
    JSON.parse(text);
  } catch {
    return text;
  }
  // Valid JSON: what surrounds the value can only be JSON whitespace.
  return new RecordedJson(text.trim());
}

/**
 * The detail JSON as text: `pretty` (`logs show --json`) is indented by 2, a body re-indented token by
 * token; `line` (`logs export` JSON lines) is one line, a body spliced in as recorded. Both keep every
 * number's digits and every duplicate key of a body. Headers and `assembled` are the proxy's own
 * JSON.stringify output, so parsing them loses nothing.
 */
export function formatExchangeDetailJson(d: ExchangeDetailJson, style: 'pretty' | 'line'): string {
  const bodies: RecordedJson[] = [];
  const mark = randomUUID();
  const text = JSON.stringify(
    d,
    (_k, v) => {
      if (!(v instanceof RecordedJson)) return v;
      bodies.push(v);
      return `${mark}:${bodies.length - 1}`;
    },
    style === 'pretty' ? 2 : undefined,
  );
  const spliced = text.replace(new RegExp(`"${mark}:(\\d+)"`, 'g'), (_m, i: string) => {
    const body = bodies[Number(i)].text;
    // In valid JSON, CR and LF are only whitespace between tokens (inside a string they are escaped).
    return style === 'pretty' ? reindentJson(body, '  ', 1) : body.replace(/[\r\n]/g, ' ');
  });
  // U+2028/U+2029 can stand unescaped only inside a string, where the escape means the same; escaped,
  // a reader that splits lines on them (Python's splitlines, editors) still sees one record a line.
  return style === 'line'
    ? spliced.replace(/[\u2028\u2029]/g, (c) => `\\u${c.charCodeAt(0).toString(16)}`)
    : spliced;
}

/** How many levels `reindentJson` indents; deeper levels are laid out compact. */
export const MAX_INDENT_DEPTH = 32;

/**
 * Re-indent valid JSON text token by token, as JSON.stringify(value, null, indent) lays it out (`indent`
 * '' is compact), without parsing the whole: numbers keep their recorded digits, duplicate keys stay.
 * `str` may rewrite a string token (`isKey` for an object's key); by default tokens are kept as recorded.
 */
export function reindentJson(
  text: string,
  indent: string,
  depth = 0,
  str: (token: string, isKey: boolean) => string = (t) => t,
): string {
  const out: string[] = [];
  // Deeper than MAX_INDENT_DEPTH the rest is compact: indenting every level of a body nested 200,000
  // deep (400 KB, within any request limit) would print gigabytes.
  const nl = (d: number) => (indent && d <= MAX_INDENT_DEPTH ? `\n${indent.repeat(d)}` : '');
  const isSpace = (c: string) => c === ' ' || c === '\t' || c === '\n' || c === '\r';
  const nextToken = (from: number) => {
    while (from < text.length && isSpace(text[from])) from++;
    return from;
  };
  for (let i = nextToken(0); i < text.length; i = nextToken(i)) {
    const c = text[i];
    if (c === '{' || c === '[') {
      const next = nextToken(i + 1);
      if (text[next] === (c === '{' ? '}' : ']')) {
        out.push(c === '{' ? '{}' : '[]');
        i = next + 1;
      } else {
        depth++;
        out.push(c, nl(depth));
        i++;
      }
    } else if (c === '}' || c === ']') {
      depth--;
      out.push(nl(depth), c);
      i++;
    } else if (c === ',') {
      out.push(',', nl(depth));
      i++;
    } else if (c === ':') {
      out.push(indent ? ': ' : ':');
      i++;
    } else if (c === '"') {
      // The closing quote is the first one after an even number of backslashes.
      let end = i + 1;
      for (;;) {
        const q = text.indexOf('"', end);
        if (q < 0) throw new Error('reindentJson: unterminated string (not valid JSON)');
        let b = q - 1;
        while (text[b] === '\\') b--;
        end = q + 1;
        if ((q - 1 - b) % 2 === 0) break;
      }
      out.push(str(text.slice(i, end), text[nextToken(end)] === ':'));
      i = end;
    } else {
      // A number, true, false or null: as recorded.
      let end = i + 1;
      while (end < text.length && !isSpace(text[end]) && !',:]}'.includes(text[end])) end++;
      out.push(text.slice(i, end));
      i = end;
    }
  }
  return out.join('');
}

/** Map a full stored row to the detail JSON (bodies that are JSON kept as recorded, headers parsed). */
export function toExchangeDetailJson(row: ExchangesTable): ExchangeDetailJson {
  const assembled = parseMaybeJson(row.assembled) as Record<string, any> | null;
  // A WebSocket session's bodies are NDJSON, one message a line: text, also when it held one message.
  const recordedBody = row.status === 101 ? (text: string | null) => text : recordedJsonBody;
  return {
    ...toExchangeJson(row),
    query: row.query,
    client_addr: row.client_addr,
    request_headers: parseMaybeJson(row.request_headers) as Record<string, unknown> | null,
    request_body: recordedBody(row.request_body),
    request_bytes: row.request_bytes,
    request_truncated: row.request_truncated === 1,
    response_headers: parseMaybeJson(row.response_headers) as Record<string, unknown> | null,
    response_body: recordedBody(row.response_body),
    response_bytes: row.response_bytes,
    response_truncated: row.response_truncated === 1,
    assembled:
      assembled && typeof assembled === 'object'
        ? {
            kind: typeof assembled.kind === 'string' ? assembled.kind : 'unknown',
            content: assembled.content ?? '',
            tool_calls: assembled.tool_calls ?? [],
            finish_reason: assembled.finish_reason ?? null,
            usage: assembled.usage ?? null,
            complete: assembled.complete !== false,
            ...(Array.isArray(assembled.choices) ? { choices: assembled.choices } : {}),
            ...(assembled.kind === 'realtime' && typeof assembled.events === 'number'
              ? { events: assembled.events }
              : {}),
            ...(assembled.input_transcription_usage
              ? { input_transcription_usage: assembled.input_transcription_usage }
              : {}),
          }
        : null,
  };
}

/** Parse text that is JSON; anything else (SSE, form data, truncated JSON) stays a string. */
export function parseMaybeJson(text: string | null): unknown {
  if (text === null) return null;
  const t = text.trimStart();
  if (t[0] !== '{' && t[0] !== '[') return text;
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** An extra table column, e.g. `score` for search hits. */
export interface ExtraColumn<T> {
  header: string;
  value(row: T): string;
}

export interface TableOptions<T> {
  /** Colour the header (TTY only). */
  color?: boolean;
  /** Columns appended after the standard ones. */
  extraColumns?: ExtraColumn<T>[];
}

/** Characters of the id shown in tables; `logs show` accepts this (or any unique) prefix. */
export const SHORT_ID_LENGTH = 12;

const LIST_HEADERS = [
  'time',
  'id',
  'method',
  'path',
  'model',
  'status',
  'duration',
  'tokens in/out',
  'stream',
  'error',
];

/** Header cells coloured (cyan) on a terminal; their escape codes take no width (displayWidth strips them). */
function tableHeads(heads: string[], color: boolean | undefined): string[] {
  return color ? heads.map((h) => `\u001b[36m${h}\u001b[39m`) : heads;
}

/**
 * A boxed table drawn as cli-table3 draws one (one-line cells, left-aligned, a space of padding either side,
 * a rule between rows), in one pass. cli-table3 lays its cells out in time quadratic in the rows: a
 * `logs --limit 0` table of 8,000 rows took 17 s, and of 100,000 rows had not finished after 14 minutes.
 * Cells are single lines (recorded text is escaped by terminalSafe); widths are display widths.
 */
export function renderBoxTable(head: string[], rows: string[][]): string {
  const widths = head.map((h) => displayWidth(h));
  for (const row of rows)
    for (let i = 0; i < row.length; i++) widths[i] = Math.max(widths[i] ?? 0, displayWidth(row[i]));
  const rule = (left: string, mid: string, right: string) =>
    left + widths.map((w) => '─'.repeat(w + 2)).join(mid) + right;
  const line = (cells: string[]) => `│${widths.map((w, i) => ` ${padEnd(cells[i] ?? '', w)} `).join('│')}│`;
  const between = rule('├', '┼', '┤');
  const out = [rule('┌', '┬', '┐'), line(head)];
  for (const row of rows) out.push(between, line(row));
  out.push(rule('└', '┴', '┘'));
  return out.join('\n');
}

/** The listing table: time, short id, method, path, model (alias → actual; `(unknown)` when not registered), status, duration, tokens, stream, error. */
export function renderExchangeTable<T extends ExchangeJson>(
  rows: T[],
  options: TableOptions<T> = {},
): string {
  const extra = options.extraColumns ?? [];
  const head = tableHeads([...LIST_HEADERS, ...extra.map((c) => c.header)], options.color);
  const cells = rows.map((r) => [...listCells(r), ...extra.map((c) => terminalSafe(c.value(r)))]);
  return `${renderBoxTable(head, cells)}\n`;
}

/** One exchange as a single line (follow mode on a terminal); recorded text is escaped (terminalSafe). */
export function formatExchangeLine(r: ExchangeJson): string {
  const [time, id, method, path, model, status, duration, tokens, stream, error] = listCells(r);
  return (
    [
      time,
      id,
      padEnd(method, 6),
      padEnd(path, 24),
      padEnd(model, 22),
      padStart(status, 5),
      padStart(duration, 7),
      padStart(tokens, 11),
      padEnd(stream, 6),
      error,
    ]
      .join('  ')
      .trimEnd() + '\n'
  );
}

// Padded by display width, as the tables are (a CJK character or an emoji takes two columns).
const padEnd = (text: string, width: number) => text + ' '.repeat(Math.max(0, width - displayWidth(text)));
const padStart = (text: string, width: number) => ' '.repeat(Math.max(0, width - displayWidth(text))) + text;

/** The cells of a listing row, recorded text escaped for the terminal (one line each). */
function listCells(r: ExchangeJson): string[] {
  return [
    formatLocalTime(r.time),
    r.id.slice(0, SHORT_ID_LENGTH),
    terminalSafe(r.method),
    terminalSafe(r.path),
    terminalSafe(modelCell(r.model, r.upstream_model) + (r.model_unknown ? ' (unknown)' : '')),
    r.status === null ? '-' : String(r.status),
    formatMs(r.duration_ms),
    r.prompt_tokens === null && r.completion_tokens === null
      ? ''
      : `${r.prompt_tokens ?? '-'}/${r.completion_tokens ?? '-'}`,
    r.stream ? 'stream' : '',
    terminalSafe(r.error ?? ''),
  ];
}

function modelCell(model: string | null, actual: string | null): string {
  if (!model) return actual ?? '';
  return actual && actual !== model ? `${model} → ${actual}` : model;
}

/** `2024-05-01 12:34:56` in local time. */
export function formatLocalTime(iso: string): string {
  const d = new Date(iso);
  const p = (n: number) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** `850ms`, `1.25s`, `2m05s`. */
export function formatMs(ms: number | null): string {
  if (ms === null) return '-';
  if (ms < 1000) return `${Math.round(ms)}ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(2)}s`;
  const s = Math.round(ms / 1000);
  return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
}

/** The stats table. */
export function renderStatsTable(groups: StatsGroup[], by: string, color = false): string {
  const head = tableHeads(
    [
      by,
      'requests',
      'errors',
      'error %',
      'tokens in',
      'tokens out',
      'p50',
      'p95',
      'p99',
      'ttfb p50',
      'ttfb p95',
    ],
    color,
  );
  const cells = groups.map((g) => [
    terminalSafe(g.key),
    String(g.requests),
    String(g.errors),
    `${(g.error_rate * 100).toFixed(1)}%`,
    String(g.prompt_tokens),
    String(g.completion_tokens),
    formatMs(g.p50_ms),
    formatMs(g.p95_ms),
    formatMs(g.p99_ms),
    formatMs(g.ttfb_p50_ms),
    formatMs(g.ttfb_p95_ms),
  ]);
  return `${renderBoxTable(head, cells)}\n`;
}

/**
 * `logs show` for people: summary, headers, pretty bodies; streams show the reassembled message first.
 * Recorded text is escaped for the terminal (terminalSafe): summary and header lines stay one line each;
 * bodies and the message keep their newlines.
 */
export function renderExchangeDetail(d: ExchangeDetailJson, raw: boolean): string {
  const lines: string[] = [];
  const line = (s: string) => lines.push(terminalSafe(s));
  const block = (s: string) => lines.push(terminalSafe(s, 'block'));
  line(`exchange   ${d.id}`);
  line(`time       ${d.time} (${formatLocalTime(d.time)} local)`);
  line(`request    ${d.method} ${d.path}${d.query ? `?${d.query}` : ''}`);
  line(
    `status     ${d.status ?? '-'}${d.error ? `  error: ${d.error}${d.error_message ? ` (${d.error_message})` : ''}` : ''}`,
  );
  if (d.model || d.upstream_model)
    line(
      `model      ${modelCell(d.model, d.upstream_model)}${d.upstream ? `  via ${d.upstream}` : ''}${d.model_unknown ? '  (unknown: not in the model registry, let through)' : ''}`,
    );
  line(
    `timing     ${formatMs(d.duration_ms)} total${d.ttfb_ms !== null ? `, first byte after ${formatMs(d.ttfb_ms)}` : ''}${d.stream ? ' (stream)' : ''}`,
  );
  if (d.total_tokens !== null || d.prompt_tokens !== null)
    line(
      `tokens     ${d.prompt_tokens ?? '-'} in, ${d.completion_tokens ?? '-'} out, ${d.total_tokens ?? '-'} total`,
    );
  if (d.user) line(`user       ${d.user}`);
  if (d.internal) line('internal   yes (made by the proxy itself)');
  lines.push('', '── request headers');
  headerLines(d.request_headers).forEach(line);
  // A realtime session's bodies are its messages, one JSON event a line: shown a line each.
  const realtime = d.assembled?.kind === 'realtime';
  const body = realtime ? eventLines : bodyText;
  lines.push(
    '',
    `── ${realtime ? 'client messages' : 'request body'} (${d.request_bytes} bytes${realtime ? ' of frames' : ''}${d.request_truncated ? ', truncated' : ''})`,
  );
  block(body(d.request_body));
  lines.push('', '── response headers');
  headerLines(d.response_headers).forEach(line);
  if (d.assembled) {
    lines.push(
      '',
      realtime
        ? `── realtime session: the model's text and transcripts (${d.assembled.events ?? 0} server events${d.assembled.complete ? '' : '; incomplete: it ended without a normal close'})`
        : `── reassembled message${d.assembled.complete ? '' : ' (incomplete: the stream ended before its final event)'}`,
    );
    const choices = d.assembled.choices ?? [d.assembled];
    for (const c of choices) {
      if ('index' in c) line(`── choice ${c.index}`);
      // A speech stream's content is its audio: base64 in the raw events, nothing to read here.
      if (d.assembled.kind === 'speech') line(`(audio: in the raw events${raw ? ' below' : ', add --raw'})`);
      else block(c.content);
      for (const t of c.tool_calls as { name?: string; arguments?: string }[])
        line(`tool call: ${t.name ?? '?'}(${t.arguments ?? ''})`);
      line(`finish_reason: ${c.finish_reason ?? '-'}`);
    }
    if (d.assembled.usage) line(`usage: ${JSON.stringify(d.assembled.usage)}`);
    if (d.assembled.input_transcription_usage)
      line(`input transcription usage: ${JSON.stringify(d.assembled.input_transcription_usage)}`);
    if (raw) {
      lines.push(
        '',
        `── raw events (${d.response_bytes} bytes${realtime ? ' of frames' : ''}${d.response_truncated ? ', truncated' : ''})`,
      );
      block(body(d.response_body));
    } else lines.push('', '(raw events: add --raw)');
  } else {
    lines.push(
      '',
      `── response body (${d.response_bytes} bytes${d.response_truncated ? ', truncated' : ''})`,
    );
    block(bodyText(d.response_body));
  }
  return `${lines.join('\n')}\n`;
}

function headerLines(h: Record<string, unknown> | null): string[] {
  if (!h) return ['(none)'];
  return Object.entries(h).map(([k, v]) => `${k}: ${Array.isArray(v) ? v.join(', ') : String(v)}`);
}

/**
 * A body as text; JSON re-indented by 2 with the numbers and keys as recorded, strings shown as
 * JSON.stringify writes them (which escapes controls, but not bidi overrides or U+2028) and long base64
 * values (generated images, audio, base64 embeddings, data: URLs of images sent) elided: megabytes of
 * them are no use on a terminal, and `--json` keeps them.
 */
function bodyText(b: RecordedJson | string | null): string {
  if (b === null || b === '') return '(empty)';
  return typeof b === 'string' ? b : reindentJson(b.text, '  ', 0, shownString);
}

/** NDJSON (a realtime session's messages) a line each, compact, long base64 (audio) elided. */
function eventLines(b: RecordedJson | string | null): string {
  if (b === null || b === '') return '(empty)';
  if (typeof b !== 'string') return reindentJson(b.text, '', 0, shownString);
  return b
    .split('\n')
    .map((l) => {
      const json = l.startsWith('{') ? recordedJsonBody(l) : l;
      return json instanceof RecordedJson ? reindentJson(json.text, '', 0, shownString) : l;
    })
    .join('\n')
    .trimEnd();
}

/** A string token of a body as `logs show` displays it: normalised escapes, long base64 values elided. */
function shownString(token: string, isKey: boolean): string {
  // Without a backslash the token already reads as JSON.stringify writes it; a short one is no base64 to elide.
  if (!token.includes('\\') && (isKey || token.length <= BASE64_SHOWN_CHARS + 2)) return token;
  const v = JSON.parse(token) as string;
  return JSON.stringify(isKey ? v : elideBase64('', v));
}

/** Base64 values longer than this are elided by `logs show`. */
const BASE64_SHOWN_CHARS = 256;
/** Hex (a digest, an id) is shown: base64 of any length is never only hex digits in practice. */
const HEX_VALUE = /^[0-9a-fA-F]+$/;
const BASE64_VALUE = /^(data:[\w.+-]+\/[\w.+-]+;base64,)?[A-Za-z0-9+/_-]+={0,2}$/;

function elideBase64(_key: string, v: unknown): unknown {
  if (typeof v !== 'string' || v.length <= BASE64_SHOWN_CHARS || !BASE64_VALUE.test(v) || HEX_VALUE.test(v))
    return v;
  const prefix = v.startsWith('data:') ? v.slice(0, v.indexOf(',') + 1) : '';
  return `${prefix}[base64, ${(v.length - prefix.length).toLocaleString('en-US')} characters: see --json]`;
}

/**
 * Columns of `logs export --format csv`: the list fields, then the raw bodies and reassembled text, then
 * fields added later (appended, so a column keeps its place).
 */
export const CSV_COLUMNS = [
  'id',
  'time',
  'method',
  'path',
  'status',
  'model',
  'upstream_model',
  'upstream',
  'stream',
  'duration_ms',
  'ttfb_ms',
  'prompt_tokens',
  'completion_tokens',
  'total_tokens',
  'user',
  'error',
  'error_message',
  'internal',
  'request_body',
  'response_body',
  'assembled_content',
  'model_unknown',
] as const;

/** One CSV record (RFC 4180: fields with comma, quote, CR or LF are quoted, quotes doubled). */
export function toCsvLine(row: ExchangesTable): string {
  const j = toExchangeJson(row);
  const assembled = parseMaybeJson(row.assembled) as { content?: string } | null;
  const values: Record<(typeof CSV_COLUMNS)[number], unknown> = {
    ...j,
    request_body: row.request_body,
    response_body: row.response_body,
    assembled_content: assembled && typeof assembled === 'object' ? (assembled.content ?? '') : null,
  };
  return `${CSV_COLUMNS.map((c) => csvField(values[c])).join(',')}\r\n`;
}

export function csvField(v: unknown): string {
  if (v === null || v === undefined) return '';
  const s = String(v);
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}
