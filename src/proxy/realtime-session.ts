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
}

/** Largest Realtime message read, compressed and inflated: past it a message is a placeholder line. */
export const REALTIME_MESSAGE_MAX_BYTES = 16 * 1024 * 1024;

export interface RealtimeSessionOptions {
  /** permessage-deflate as the upstream's 101 agreed it; null when none. */
  deflate: DeflateAgreement | null;
  /** Stored bytes of each body (CAPTURE_BODY_BYTES); past it the body is cut and marked truncated. */
  captureBytes: number;
  /** Cap on the reassembled text. */
  maxChars: number;
  /** Largest message read (payload, and inflated); a larger one is a placeholder line. */
  maxMessageBytes: number;
}

export interface RealtimeSession {
  /** Bytes the client sent (after the 101), as relayed. Never throws. */
  client(chunk: Buffer): void;
  /** Bytes the upstream sent (after the 101), as relayed. Never throws. */
  upstream(chunk: Buffer): void;
  /** The record; `endedCleanly` when neither socket failed (a close frame is needed too for `complete`). */
  result(endedCleanly: boolean): RealtimeRecord;
}

/** Keeps the first `limit` bytes of a body built line by line. */
class LineCapture {
  private parts: string[] = [];
  private size = 0;
  truncated = false;

  constructor(private readonly limit: number) {}

  add(line: string): void {
    if (this.truncated) return;
    const text = `${line}\n`;
    const n = Buffer.byteLength(text);
    if (this.size + n <= this.limit) {
      this.parts.push(text);
      this.size += n;
      return;
    }
    const room = this.limit - this.size;
    // A character cut in two at the limit is dropped, not stored as a replacement character.
    if (room > 0)
      this.parts.push(
        Buffer.from(text)
          .subarray(0, room)
          .toString('utf8')
          .replace(/\uFFFD$/, ''),
      );
    this.size = this.limit;
    this.truncated = true;
  }

  text(): string | null {
    return this.parts.length === 0 ? null : this.parts.join('');
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
/** Events that are mostly base64 audio and carry nothing else the record reads: never JSON-parsed. */
const AUDIO_DELTAS = new Set(['response.audio.delta', 'response.output_audio.delta']);
/** The type, when it is the event's first key (as the Realtime API writes it). */
const LEADING_TYPE = /^\s*\{\s*"type"\s*:\s*"([^"\\]*)"/;

/** One message as one NDJSON line: JSON text is compact already unless a client pretty-printed it. */
function ndjsonLine(text: string): string {
  if (!/[\r\n]/.test(text)) return text;
  try {
    return JSON.stringify(JSON.parse(text));
  } catch {
    return JSON.stringify(text);
  }
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
  // The text of each output part (response, item, content index) in the order they began.
  const parts = new Map<string, string>();
  let chars = 0;
  const respondedWithText = new Set<string>();

  const setPart = (key: string, text: string, append: boolean) => {
    const before = parts.get(key) ?? '';
    if (chars >= maxChars && before === '') return;
    const whole = append ? before + text : text;
    const room = maxChars - (chars - before.length);
    const kept = whole.length > room ? whole.slice(0, Math.max(0, room)) : whole;
    chars += kept.length - before.length;
    parts.set(key, kept);
  };

  const line = (lines: LineCapture, m: WebSocketMessage): string | null => {
    if (m.type === 'close') {
      closed = true;
      return null;
    }
    if (m.type === 'skipped') {
      lines.add(`[${m.opcode} message, ${m.bytes} bytes: not read (${m.reason})]`);
      return null;
    }
    if (m.type === 'binary') {
      lines.add(`[binary message, ${m.data.length} bytes]`);
      return null;
    }
    const text = m.data.toString('utf8');
    // Once the body is cut, a long message (audio) is not scanned again for its line.
    if (!lines.truncated) lines.add(ndjsonLine(text));
    return text;
  };

  const onServerEvent = (text: string) => {
    const leading = LEADING_TYPE.exec(text);
    if (leading && AUDIO_DELTAS.has(leading[1] as string)) return;
    let ev: Record<string, any>;
    try {
      ev = JSON.parse(text);
    } catch {
      return;
    }
    if (ev === null || typeof ev !== 'object') return;
    const type = ev.type;
    if (typeof type !== 'string') return;
    const key = `${ev.response_id}\u0000${ev.item_id}\u0000${ev.output_index}\u0000${ev.content_index}`;
    if (TEXT_DELTAS.has(type) && typeof ev.delta === 'string') {
      setPart(key, ev.delta, true);
      respondedWithText.add(String(ev.response_id));
    } else if (TEXT_DONES.has(type)) {
      const whole = ev[TEXT_DONES.get(type) as string];
      if (typeof whole === 'string') setPart(key, whole, false);
      respondedWithText.add(String(ev.response_id));
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
    const output = Array.isArray(response.output) ? response.output : [];
    const id = String(response.id);
    output.forEach((item: Record<string, any>, i: number) => {
      if (item?.type === 'function_call')
        toolCalls.push({
          id: typeof item.call_id === 'string' ? item.call_id : undefined,
          type: 'function',
          name: typeof item.name === 'string' ? item.name : undefined,
          arguments: typeof item.arguments === 'string' ? item.arguments.slice(0, maxChars) : '',
        });
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

  const reader = (
    masked: boolean,
    contextTakeover: boolean,
    lines: LineCapture,
    onText: ((text: string) => void) | null,
  ) => {
    let noted = false;
    const parser: FrameParser = createFrameParser({
      masked,
      deflate: deflate === null ? null : { contextTakeover },
      maxMessageBytes,
      onMessage: (m) => {
        if (m.type === 'text' || (m.type === 'skipped' && m.opcode === 'text')) {
          if (onText) events++;
        }
        const text = line(lines, m);
        if (text !== null && onText) onText(text);
      },
    });
    return (chunk: Buffer) => {
      if (noted) return;
      parser.push(chunk);
      if (parser.failure !== null) {
        noted = true;
        lines.add(`[frames not read from here on: ${parser.failure}]`);
      }
    };
  };

  const client = reader(true, !deflate?.clientNoContextTakeover, requestLines, null);
  const upstream = reader(false, !deflate?.serverNoContextTakeover, responseLines, onServerEvent);

  return {
    client,
    upstream,
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
      };
    },
  };
}
