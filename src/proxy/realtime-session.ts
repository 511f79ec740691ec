import type { AssembledMessage, Usage } from '../storage/exchange-record.js';
import {
  createFrameParser,
  type DeflateAgreement,
  type FrameParser,
  type WebSocketMessage,
} from './websocket-frames.js';

/**
 * What a Realtime API (WebSocket) session said and spent, read from copies of the relayed bytes: each
 * direction's messages as NDJSON bodies, the model's text and transcripts, and the usage of its
 * `response.done` events. Pure: it is handed bytes, and never touches the sockets.
 *
 * Audio (`input_audio_buffer.append`'s `audio`, `response.audio.delta` and `response.output_audio.delta`'s
 * `delta`, the `audio` of a `conversation.item.create`'s audio content parts) is stored as
 * `[base64 audio, N characters]`, found by scanning bytes, never parsing.
 *
 * What a session holds at most, beyond the two bodies (CAPTURE_BODY_BYTES each) and the reassembled text
 * (`maxChars` characters, as much again for tool call arguments, REALTIME_MAX_TOOL_CALLS calls):
 * - server to client: the message being read (REALTIME_MESSAGE_MAX_BYTES), messages waiting for the one
 *   inflating (as much again) and its output (as much again); a 32 KiB window with context takeover;
 * - client to server: the same, each bounded by the room left in the request body instead, and nothing
 *   once the body is full;
 * - a copy of a server event being parsed (REALTIME_PARSE_MAX_BYTES).
 */

/** Input audio transcription usage (a separate model, billed on its own): tokens, or seconds of audio. */
export interface TranscriptionUsage extends Usage {
  seconds: number | null;
}

/** A Realtime session reassembled: the AssembledMessage fields, plus input transcription usage when any. */
export interface RealtimeAssembled extends AssembledMessage {
  kind: 'realtime';
  input_transcription_usage?: TranscriptionUsage;
}

/** The session as recorded. */
export interface RealtimeRecord {
  /** Client messages, one a line (NDJSON); null when none. */
  requestBody: string | null;
  requestTruncated: boolean;
  /** Server events, one a line; null when none. */
  responseBody: string | null;
  responseTruncated: boolean;
  /** Summed over `response.done` events; null when there was none with usage. */
  usage: Usage | null;
  /** Null when no server event was read. */
  assembled: RealtimeAssembled | null;
  /**
   * The message of the session's first `error` event or failed response (`response.done` with status
   * `failed`), with how many there were when more than one; null when none.
   */
  streamError: string | null;
  /**
   * Whether each side sent a close frame; null when that direction was not being read to its end
   * (frames it could not read, or client messages past a full request body).
   */
  closeFrame: { client: boolean | null; upstream: boolean | null };
}

/** Largest Realtime message read, compressed and inflated: past it a message is a placeholder line. */
export const REALTIME_MESSAGE_MAX_BYTES = 16 * 1024 * 1024;
/** Largest server event JSON-parsed for the text and usage (events carrying audio never are). */
export const REALTIME_PARSE_MAX_BYTES = 1024 * 1024;
/** Most function calls kept in the reassembled message of a session. */
export const REALTIME_MAX_TOOL_CALLS = 256;
/** Most output parts (response, item, content index) whose text is kept. */
const MAX_PARTS = 4096;
/** Most response ids remembered as having streamed their text. */
const MAX_RESPONSES = 1024;
/** Cap on an error event's message (as for an HTTP stream's). */
const MAX_ERROR_CHARS = 4000;

export interface RealtimeSessionOptions {
  /** permessage-deflate as the upstream's 101 agreed it; null when none. */
  deflate: DeflateAgreement | null;
  /** Stored bytes of each body (CAPTURE_BODY_BYTES); past it the body is cut and marked truncated. */
  captureBytes: number;
  /** Cap on the reassembled text, and on the arguments of its tool calls together. */
  maxChars: number;
  /**
   * Largest message read (payload, and inflated); a larger one is a placeholder line. A client message
   * is read only while it fits in the room left in the request body.
   */
  maxMessageBytes: number;
}

export interface RealtimeSession {
  /** Bytes the client sent (after the 101), as relayed. Never throws. */
  client(chunk: Buffer): void;
  /** Bytes the upstream sent (after the 101), as relayed. Never throws. */
  upstream(chunk: Buffer): void;
  /** Resolves once every message read so far was handled (compressed ones inflate off the loop). */
  settled(): Promise<void>;
  /**
   * The record of what was handled (call it after `settled`); `endedCleanly` when neither socket failed
   * (a close frame is needed too for `complete`).
   */
  result(endedCleanly: boolean): RealtimeRecord;
}

const NEWLINE = Buffer.from('\n');

/** Keeps the first `limit` bytes of a body built line by line. */
class LineCapture {
  private parts: Buffer[] = [];
  private size = 0;
  truncated = false;

  constructor(private readonly limit: number) {}

  /** Bytes still free. */
  get room(): number {
    return this.limit - this.size;
  }

  /**
   * Adds a line; a Buffer (made for this line, never changed after) is kept, not copied. `cut`: the line
   * is the start of a longer message, so the body ends with it.
   */
  add(line: string | Buffer, cut = false): void {
    if (this.truncated) return;
    const room = this.limit - this.size;
    // Cut before converting: a string is at least as many bytes as it has UTF-16 units.
    const data =
      typeof line === 'string' ? Buffer.from(line.length > room ? line.slice(0, room) : line) : line;
    if (!cut && data.length + 1 <= room) {
      this.parts.push(data, NEWLINE);
      this.size += data.length + 1;
      return;
    }
    // A character cut in two at the limit is dropped, not stored as a replacement character.
    let end = Math.min(room, data.length);
    if (end < data.length) while (end > 0 && (data[end] & 0xc0) === 0x80) end--;
    // A view, not a copy: every Buffer handed here was made for its line, at most a little longer.
    if (end > 0) this.parts.push(data.subarray(0, end));
    if (!cut && room > data.length) this.parts.push(NEWLINE);
    this.size = this.limit;
    this.truncated = true;
  }

  text(): string | null {
    return this.parts.length === 0 ? null : Buffer.concat(this.parts).toString('utf8');
  }
}

const TEXT_DELTAS = new Set([
  'response.text.delta',
  'response.output_text.delta',
  'response.audio_transcript.delta',
  'response.output_audio_transcript.delta',
]);
/** The done events that carry a part's whole text, and the field they carry it in. */
const TEXT_DONES = new Map([
  ['response.text.done', 'text'],
  ['response.output_text.done', 'text'],
  ['response.audio_transcript.done', 'transcript'],
  ['response.output_audio_transcript.done', 'transcript'],
]);
/** The server events the record reads; the others are only stored. */
const READ_EVENTS = new Set([
  ...TEXT_DELTAS,
  ...TEXT_DONES.keys(),
  'response.done',
  'conversation.item.input_audio_transcription.completed',
  'error',
]);
/** Events that are mostly base64 audio (beta and GA names), and their audio field: stored as a placeholder. */
const AUDIO_FIELDS = new Map([
  ['input_audio_buffer.append', 'audio'],
  ['response.audio.delta', 'delta'],
  ['response.output_audio.delta', 'delta'],
]);
/** The type, when it is the event's first key (as the Realtime API and its SDKs write it). */
const LEADING_TYPE = /^\s*\{\s*"type"\s*:\s*"([^"\\]*)"/;

/** The event type read from the head of a message; null when `type` is not its first key. */
function leadingType(head: Buffer): string | null {
  return LEADING_TYPE.exec(head.subarray(0, 256).toString('latin1'))?.[1] ?? null;
}

/** Bytes `from` to `to` of a message read in pieces, copied into one Buffer. */
function slice(parts: Buffer[], from: number, to: number): Buffer {
  const out: Buffer[] = [];
  let at = 0;
  for (const p of parts) {
    if (at >= to) break;
    const end = at + p.length;
    if (end > from) out.push(p.subarray(Math.max(0, from - at), Math.min(p.length, to - at)));
    at = end;
  }
  return Buffer.concat(out);
}

/** Where `byte` first occurs at or after `from` in a message read in pieces; -1 when nowhere. */
function indexOfByte(parts: Buffer[], byte: number, from: number): number {
  let at = 0;
  for (const p of parts) {
    const end = at + p.length;
    if (end > from) {
      const i = p.indexOf(byte, Math.max(0, from - at));
      if (i !== -1) return at + i;
    }
    at = end;
  }
  return -1;
}

const isSpace = (b: number | undefined) => b === 0x20 || b === 0x09 || b === 0x0a || b === 0x0d;

/** How much of a message's start is searched for its audio field. */
const HEAD_BYTES = 4096;

/**
 * The message's line with the string value of its `field` (found in its first HEAD_BYTES) replaced by
 * `[base64 audio, N characters]`, found by scanning bytes, never parsing; at most `limit` bytes of what
 * follows the value are copied. Null when the value is not a plain string there.
 */
export function elideAudio(parts: Buffer[], bytes: number, field: string, limit: number): Buffer | null {
  const head = slice(parts, 0, HEAD_BYTES);
  const key = Buffer.from(`"${field}"`);
  for (let at = head.indexOf(key); at !== -1; at = head.indexOf(key, at + 1)) {
    let i = at + key.length;
    while (isSpace(head[i])) i++;
    if (head[i] !== 0x3a) continue; // a value that reads like the key, not the key
    i++;
    while (isSpace(head[i])) i++;
    if (i >= head.length || head[i] !== 0x22) return null;
    const start = i + 1;
    const end = indexOfByte(parts, 0x22, start);
    // Base64 has no backslash: an escape means this is no plain audio string.
    const backslash = indexOfByte(parts, 0x5c, start);
    if (end === -1 || (backslash !== -1 && backslash < end)) return null;
    return Buffer.concat([
      head.subarray(0, start),
      Buffer.from(`[base64 audio, ${end - start} characters]`),
      slice(parts, end, Math.min(bytes, end + limit)),
    ]);
  }
  return null;
}

/** The `type` of a content part whose `audio` is base64 audio (`input_audio`; `audio`, `output_audio` replayed). */
const AUDIO_PART = /"type"\s*:\s*"(?:input_audio|audio|output_audio)"/;
/** How far either side of an `audio` key its part's `type` is looked for. */
const PART_WINDOW = 1024;
/** Most `audio` keys of one message looked at (each looks at 2 × PART_WINDOW bytes). */
const MAX_AUDIO_KEYS = 256;

/**
 * A `conversation.item.create` with the `audio` string of each audio content part replaced by
 * `[base64 audio, N characters]`, found by scanning bytes; null when it has none. A part is told by the
 * `type` beside its `audio` key: between the nearest braces either side (a brace in a string, such as a
 * transcript, only narrows that; then the part is stored as it was), at most PART_WINDOW bytes away.
 */
export function elidePartAudio(data: Buffer): Buffer | null {
  const key = Buffer.from('"audio"');
  const out: Buffer[] = [];
  let copied = 0;
  let backslash = data.indexOf(0x5c);
  let at = data.indexOf(key);
  for (let n = 0; at !== -1 && n < MAX_AUDIO_KEYS; n++) {
    let i = at + key.length;
    while (isSpace(data[i])) i++;
    if (data[i] !== 0x3a) {
      at = data.indexOf(key, at + 1); // a value that reads like the key, not the key
      continue;
    }
    i++;
    while (isSpace(data[i])) i++;
    const start = i + 1;
    const end = data[i] === 0x22 ? data.indexOf(0x22, start) : -1;
    if (backslash !== -1 && backslash < start) backslash = data.indexOf(0x5c, start);
    // Base64 has no backslash: an escape means this is no plain audio string.
    if (end !== -1 && (backslash === -1 || backslash > end)) {
      const before = data.subarray(Math.max(0, at - PART_WINDOW), at);
      const after = data.subarray(end + 1, end + 1 + PART_WINDOW);
      const open = Math.max(before.lastIndexOf(0x7b), before.lastIndexOf(0x7d));
      const close = [after.indexOf(0x7b), after.indexOf(0x7d)].filter((x) => x !== -1);
      const beside = `${before.toString('latin1', open + 1)} ${after.toString('latin1', 0, close.length > 0 ? Math.min(...close) : after.length)}`;
      if (AUDIO_PART.test(beside)) {
        out.push(data.subarray(copied, start), Buffer.from(`[base64 audio, ${end - start} characters]`));
        copied = end;
      }
    }
    at = data.indexOf(key, end === -1 ? start : end + 1);
  }
  if (out.length === 0) return null;
  out.push(data.subarray(copied));
  return Buffer.concat(out);
}

/** One message as one NDJSON line: JSON text is compact already unless a client pretty-printed it. */
function ndjsonLine(data: Buffer): string | Buffer {
  if (data.indexOf(0x0a) === -1 && data.indexOf(0x0d) === -1) return data;
  const text = data.toString('utf8');
  try {
    return JSON.stringify(JSON.parse(text));
  } catch {
    return JSON.stringify(text);
  }
}

/** The first `limit` bytes of a message too long to parse, line breaks as spaces (JSON's whitespace). */
function cutLine(parts: Buffer[], limit: number): Buffer {
  const line = slice(parts, 0, limit);
  for (let i = line.indexOf(0x0a); i !== -1; i = line.indexOf(0x0a, i + 1)) line[i] = 0x20;
  for (let i = line.indexOf(0x0d); i !== -1; i = line.indexOf(0x0d, i + 1)) line[i] = 0x20;
  return line;
}

function num(v: unknown): number | null {
  return typeof v === 'number' && Number.isFinite(v) ? v : null;
}

function add(a: number | null, b: number | null): number | null {
  return b === null ? a : (a ?? 0) + b;
}

/** A session's reader: one frame parser per direction, the events of both, the record at the end. */
export function createRealtimeSession(options: RealtimeSessionOptions): RealtimeSession {
  const { deflate, maxChars, maxMessageBytes } = options;
  const requestLines = new LineCapture(options.captureBytes);
  const responseLines = new LineCapture(options.captureBytes);
  let usage: Usage | null = null;
  let transcription: TranscriptionUsage | null = null;
  let finishReason: string | null = null;
  let events = 0;
  let closed = false;
  const toolCalls: AssembledMessage['tool_calls'] = [];
  let toolChars = 0;
  // The text of each output part (response, item, content index) in the order they began.
  const parts = new Map<string, string>();
  let chars = 0;
  const respondedWithText = new Set<string>();
  // The first error is kept, not the last (an HTTP stream's ends it, so there it is the last too): a
  // session goes on after one, and what follows is often caused by it. The others are counted, and are
  // in the response body.
  let firstError: string | null = null;
  let errors = 0;
  const noteError = (message: unknown, fallback: string) => {
    errors++;
    firstError ??=
      typeof message === 'string' && message !== '' ? message.slice(0, MAX_ERROR_CHARS) : fallback;
  };

  const setPart = (key: string, text: string, append: boolean) => {
    const before = parts.get(key) ?? '';
    if (chars >= maxChars && before === '') return;
    if (!parts.has(key) && parts.size >= MAX_PARTS) return;
    const whole = append ? before + text : text;
    const room = maxChars - (chars - before.length);
    const kept = whole.length > room ? whole.slice(0, Math.max(0, room)) : whole;
    chars += kept.length - before.length;
    parts.set(key, kept);
  };

  const responded = (id: string) => {
    respondedWithText.add(id);
    if (respondedWithText.size > MAX_RESPONSES)
      respondedWithText.delete(respondedWithText.values().next().value as string);
  };

  /** Stores the message's line; returns its type and data when it is text to read further. */
  const line = (lines: LineCapture, m: WebSocketMessage): { type: string | null; data: Buffer } | null => {
    if (m.type === 'close') {
      closed = true;
      return null;
    }
    if (m.type === 'skipped') {
      lines.add(`[${m.opcode} message, ${m.bytes} bytes: not read (${m.reason})]`);
      return null;
    }
    if (m.type === 'binary') {
      lines.add(`[binary message, ${m.cut ? 'more than ' : ''}${m.bytes} bytes]`, m.cut);
      return null;
    }
    if (m.cut) {
      // The start of a client message longer than the room left: the request body ends with it.
      lines.add(cutLine(m.parts, lines.room + 1), true);
      return null;
    }
    // Joined only when short enough to parse: a longer one is only cut for its line.
    const whole = m.bytes <= REALTIME_PARSE_MAX_BYTES ? Buffer.concat(m.parts, m.bytes) : null;
    const type = leadingType(whole ?? slice(m.parts, 0, 256));
    const audioField = type === null ? undefined : AUDIO_FIELDS.get(type);
    if (audioField !== undefined) {
      // The audio is neither stored nor parsed: its line says how long it was.
      if (!lines.truncated)
        lines.add(
          elideAudio(m.parts, m.bytes, audioField, lines.room) ??
            (whole ? ndjsonLine(whole) : cutLine(m.parts, lines.room + 1)),
        );
      return null;
    }
    const elided =
      type === 'conversation.item.create' && !lines.truncated
        ? elidePartAudio(whole ?? Buffer.concat(m.parts, m.bytes))
        : null;
    if (elided !== null)
      lines.add(
        elided.length <= REALTIME_PARSE_MAX_BYTES ? ndjsonLine(elided) : cutLine([elided], lines.room + 1),
      );
    else if (!lines.truncated) lines.add(whole ? ndjsonLine(whole) : cutLine(m.parts, lines.room + 1));
    return whole ? { type, data: whole } : null;
  };

  const onServerEvent = (type: string | null, data: Buffer) => {
    if (type !== null && !READ_EVENTS.has(type)) return;
    let ev: Record<string, any>;
    try {
      ev = JSON.parse(data.toString('utf8'));
    } catch {
      return;
    }
    if (ev === null || typeof ev !== 'object') return;
    type = ev.type;
    if (typeof type !== 'string') return;
    const key = `${ev.response_id}\u0000${ev.item_id}\u0000${ev.output_index}\u0000${ev.content_index}`;
    if (TEXT_DELTAS.has(type) && typeof ev.delta === 'string') {
      setPart(key, ev.delta, true);
      responded(String(ev.response_id));
    } else if (TEXT_DONES.has(type)) {
      const whole = ev[TEXT_DONES.get(type) as string];
      if (typeof whole === 'string') setPart(key, whole, false);
      responded(String(ev.response_id));
    } else if (type === 'error') {
      // `{"type":"error","error":{"type":"server_error","code":…,"message":…}}`. An invalid_request_error
      // answers a client event the server refused (a cancel with no response active, an empty audio
      // commit, a bad session.update): the session goes on, as an HTTP 4xx is no failed exchange; it
      // stays in the body, and does not make the row an error. But the server ends a session that ran
      // out its maximum duration with an invalid_request_error `session_expired`: that one is an error.
      const e = ev.error;
      if (e?.type !== 'invalid_request_error' || e?.code === 'session_expired')
        noteError(e?.message, typeof e?.code === 'string' ? e.code : 'The upstream sent an error event');
    } else if (type === 'response.done' && ev.response && typeof ev.response === 'object') {
      onResponseDone(ev.response);
    } else if (type === 'conversation.item.input_audio_transcription.completed' && ev.usage) {
      const u = ev.usage;
      transcription ??= { prompt_tokens: null, completion_tokens: null, total_tokens: null, seconds: null };
      transcription.prompt_tokens = add(transcription.prompt_tokens, num(u.input_tokens));
      transcription.completion_tokens = add(transcription.completion_tokens, num(u.output_tokens));
      transcription.total_tokens = add(transcription.total_tokens, num(u.total_tokens));
      transcription.seconds = add(transcription.seconds, num(u.seconds));
    }
  };

  const onResponseDone = (response: Record<string, any>) => {
    if (typeof response.status === 'string') finishReason = response.status;
    if (response.status === 'failed') {
      const e = response.status_details?.error;
      noteError(e?.message, typeof e?.code === 'string' ? e.code : 'The response failed');
    }
    const output = Array.isArray(response.output) ? response.output : [];
    const id = String(response.id);
    output.forEach((item: Record<string, any>, i: number) => {
      if (item?.type === 'function_call') {
        if (toolCalls.length >= REALTIME_MAX_TOOL_CALLS) return;
        const args = typeof item.arguments === 'string' ? item.arguments : '';
        const kept = args.slice(0, Math.max(0, maxChars - toolChars));
        toolChars += kept.length;
        toolCalls.push({
          id: typeof item.call_id === 'string' ? item.call_id.slice(0, 256) : undefined,
          type: 'function',
          name: typeof item.name === 'string' ? item.name.slice(0, 256) : undefined,
          arguments: kept,
        });
      }
      // Deltas not seen (a response whose events were skipped): its final output has the text.
      else if (!respondedWithText.has(id) && Array.isArray(item?.content))
        item.content.forEach((c: Record<string, any>, j: number) => {
          const text = typeof c?.text === 'string' ? c.text : c?.transcript;
          if (typeof text === 'string' && text !== '')
            setPart(`${id}\u0000done\u0000${i}\u0000${j}`, text, false);
        });
    });
    const u = response.usage;
    if (!u || typeof u !== 'object') return;
    const input = num(u.input_tokens);
    const output_ = num(u.output_tokens);
    const total = num(u.total_tokens) ?? (input !== null && output_ !== null ? input + output_ : null);
    if (input === null && output_ === null && total === null) return;
    usage ??= { prompt_tokens: null, completion_tokens: null, total_tokens: null };
    usage.prompt_tokens = add(usage.prompt_tokens, input);
    usage.completion_tokens = add(usage.completion_tokens, output_);
    usage.total_tokens = add(usage.total_tokens, total);
  };

  const closeFrom = { client: false, upstream: false };
  const reader = (
    masked: boolean,
    contextTakeover: boolean,
    lines: LineCapture,
    onText: ((type: string | null, data: Buffer) => void) | null,
  ) => {
    const parser: FrameParser = createFrameParser({
      masked,
      deflate: deflate === null ? null : { contextTakeover },
      // Client messages feed only the request body: of one longer than the room left in it, only what fits
      // is read (unmasked, inflated), and the body ends with it.
      maxMessageBytes: onText ? maxMessageBytes : () => Math.min(maxMessageBytes, lines.room + 1),
      keepPrefix: !onText,
      maxQueuedBytes: onText ? maxMessageBytes : Math.min(maxMessageBytes, options.captureBytes + 1),
      onMessage: (m) => {
        if (m.type === 'text' || (m.type === 'skipped' && m.opcode === 'text')) {
          if (onText) events++;
        }
        if (m.type === 'close') closeFrom[onText ? 'upstream' : 'client'] = true;
        const text = line(lines, m);
        if (text !== null && onText) onText(text.type, text.data);
      },
      onFailure: (reason) => lines.add(`[frames not read from here on: ${reason}]`),
    });
    const push = (chunk: Buffer) => {
      // Once the request body is cut, client messages have nowhere to go: they are not read.
      if (parser.failure !== null || (!onText && lines.truncated)) return;
      parser.push(chunk);
    };
    return { push, parser };
  };

  const client = reader(true, !deflate?.clientNoContextTakeover, requestLines, null);
  const upstream = reader(false, !deflate?.serverNoContextTakeover, responseLines, onServerEvent);

  return {
    client: client.push,
    upstream: upstream.push,
    async settled() {
      await Promise.all([client.parser.idle(), upstream.parser.idle()]);
    },
    result(endedCleanly) {
      const assembled: RealtimeAssembled | null =
        events === 0
          ? null
          : {
              kind: 'realtime',
              content: [...parts.values()].filter((t) => t !== '').join('\n'),
              tool_calls: toolCalls,
              finish_reason: finishReason,
              usage: usage === null ? null : { ...usage },
              complete: closed && endedCleanly,
              events,
              ...(transcription ? { input_transcription_usage: { ...transcription } } : {}),
            };
      return {
        requestBody: requestLines.text(),
        requestTruncated: requestLines.truncated,
        responseBody: responseLines.text(),
        responseTruncated: responseLines.truncated,
        usage: usage === null ? null : { ...usage },
        assembled,
        streamError:
          firstError === null || errors === 1
            ? firstError
            : `${firstError} (the first of ${errors} errors in the session)`,
        closeFrame: {
          client: client.parser.failure === null && !requestLines.truncated ? closeFrom.client : null,
          upstream: upstream.parser.failure === null ? closeFrom.upstream : null,
        },
      };
    },
  };
}
