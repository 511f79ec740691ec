import type { AssembledMessage, Usage } from '../storage/exchange-record.js';

/**
 * Incrementally reassembles a streamed answer: OpenAI's server-sent events (chat, completions, Responses
 * API, audio transcription and speech), llama.cpp's native `/completion` events, and Ollama's NDJSON.
 */
export interface StreamAssembler {
  push(chunk: Buffer | string): void;
  /**
   * The message so far; `complete` is true only if the stream's final event was seen, or when
   * `endedCleanly` (the upstream ended the response; it was not cut, aborted or reset) without an error
   * event and either every choice of a chat or completions stream had its finish_reason (a server that
   * sends no `data: [DONE]`) or the stream is of a format the assembler does not know (no final event
   * to see).
   */
  result(endedCleanly?: boolean): AssembledMessage;
  /** The message of the upstream's error event (`event: error`, `{"type":"error"}`, `response.failed`, a chunk's `error`, llama.cpp's `error:` field), else null. */
  streamError(): string | null;
  /**
   * Streamed text the message does not keep (reasoning, Ollama's thinking, refusals, audio transcripts,
   * a chat stream's legacy `function_call` arguments, every other string `delta` of a Responses
   * `*.delta` event but the base64 audio), joined per field and choice or item and part (maxChars in
   * all): only for finding a key split across its events.
   */
  hiddenText(): string;
}

export interface StreamAssemblerOptions {
  /** Cap on the assembled text (content and each tool call's arguments). */
  maxChars?: number;
  /** How events are framed: server-sent events (the default) or one JSON object a line (NDJSON). */
  framing?: StreamFraming;
}

export type StreamFraming = 'sse' | 'ndjson';

/** The framing of a streamed response by its content type (any case), or null when it is no stream. */
export function streamFraming(contentType: string | undefined): StreamFraming | null {
  if (contentType === undefined) return null;
  const ct = contentType.toLowerCase();
  if (ct.includes('text/event-stream')) return 'sse';
  if (ct.includes('application/x-ndjson') || ct.includes('application/ndjson')) return 'ndjson';
  return null;
}

interface ToolCallAcc {
  id?: string;
  type?: string;
  name?: string;
  arguments: string;
}

/** Create an assembler; feed it raw response chunks in order. */
export function createStreamAssembler(options: StreamAssemblerOptions = {}): StreamAssembler {
  const maxChars = options.maxChars ?? 4 * 1024 * 1024;
  let buffer = '';
  const maxEventChars = Math.max(maxChars, 1024 * 1024);
  let kind: AssembledMessage['kind'] = 'unknown';
  // The first choice (and a Responses stream's output), and the others of an `n` > 1 stream by index.
  const first = newChoice(0);
  const others = new Map<number, ChoiceAcc>();
  let usage: Usage | null = null;
  let complete = false;
  let streamError: string | null = null;
  let events = 0;
  // The event beyond maxEventChars being skipped: its start, kept to learn its type (null: none).
  let oversizedHead: string | null = null;
  const decoder = new TextDecoder();
  // The last push ended in a CR: a LF opening the next one completes that CRLF, it is no line of its own.
  let pendingCr = false;

  const appendCapped = (base: string, add: string) =>
    base.length >= maxChars ? base : (base + add).slice(0, maxChars);
  // Deltas of fields the message leaves out, per field and choice: scanned for keys, never stored. At
  // most maxChars in all (however many items a stream names): each char of them is a byte or more of
  // the raw events, of which no more than that many are stored.
  const hidden = new Map<string, string>();
  let hiddenChars = 0;
  const addHidden = (key: string, add: unknown) => {
    if (typeof add !== 'string' || add === '' || hiddenChars >= maxChars) return;
    const piece = add.length > maxChars - hiddenChars ? add.slice(0, maxChars - hiddenChars) : add;
    hiddenChars += piece.length;
    const had = hidden.get(key);
    hidden.set(key, had === undefined ? piece : had + piece);
  };

  const toolFor = (c: ChoiceAcc, key: string | number): ToolCallAcc => {
    let t = c.toolIndex.get(key);
    if (!t) {
      t = { arguments: '' };
      c.toolIndex.set(key, t);
      c.toolCalls.push(t);
    }
    return t;
  };

  /** The accumulator of choice `index`; undefined past MAX_CHOICES (a hostile upstream's indices). */
  const choiceFor = (index: unknown): ChoiceAcc | undefined => {
    const i = typeof index === 'number' && Number.isInteger(index) && index >= 0 ? index : 0;
    if (i === 0) return first;
    let c = others.get(i);
    if (!c && others.size < MAX_CHOICES - 1) {
      c = newChoice(i);
      others.set(i, c);
    }
    return c;
  };

  const onChoice = (choice: any) => {
    const c = choiceFor(choice.index);
    if (!c) return;
    if (choice.finish_reason) c.finishReason = choice.finish_reason;
    if (typeof choice.text === 'string') {
      kind = 'text_completion';
      c.content = appendCapped(c.content, choice.text);
    }
    const delta = choice.delta;
    if (delta && typeof delta === 'object') {
      if (typeof delta.content === 'string') c.content = appendCapped(c.content, delta.content);
      // DeepSeek/vLLM reasoning (`reasoning_content`, `reasoning`) and refusals: not in the message.
      addHidden(`${choice.index}:reasoning_content`, delta.reasoning_content);
      addHidden(`${choice.index}:reasoning`, delta.reasoning);
      addHidden(`${choice.index}:refusal`, delta.refusal);
      // gpt-4o-audio: the spoken answer's text (its `content` is null); the legacy `function_call`.
      if (delta.audio) addHidden(`${choice.index}:audio.transcript`, delta.audio.transcript);
      if (delta.function_call) addHidden(`${choice.index}:function_call`, delta.function_call.arguments);
      if (Array.isArray(delta.tool_calls)) {
        for (const tc of delta.tool_calls) {
          const t = toolFor(c, tc.index ?? c.toolCalls.length);
          if (tc.id) t.id = tc.id;
          if (tc.type) t.type = tc.type;
          if (tc.function?.name) t.name = (t.name ?? '') + tc.function.name;
          if (typeof tc.function?.arguments === 'string')
            t.arguments = appendCapped(t.arguments, tc.function.arguments);
        }
      }
    }
  };

  const onData = (eventName: string | null, data: string) => {
    events++;
    if (data === '[DONE]') {
      complete = true;
      return;
    }
    let ev: any;
    try {
      ev = JSON.parse(data);
    } catch {
      return;
    }
    if (!ev || typeof ev !== 'object') return;
    const type: string | undefined = typeof ev.type === 'string' ? ev.type : (eventName ?? undefined);
    if (type !== undefined) {
      if (type.startsWith('response.')) {
        kind = 'response';
        onResponsesEvent(type, ev);
        return;
      }
      if (type.startsWith('transcript.') || type.startsWith('speech.')) {
        onAudioEvent(type, ev);
        return;
      }
    }
    if (ev.object === 'chat.completion.chunk') kind = 'chat.completion';
    else if (ev.object === 'text_completion') kind = 'text_completion';
    else if (type === 'error' || ev.error) {
      // Chat: `event: error` + `{"error":{"message"…}}`; Responses: `{"type":"error","message"…}`;
      // Ollama: `{"error":"…"}`.
      noteError(errorMessageOf(ev));
      return;
    }
    // A chunk carrying an `error` beside its choices (OpenRouter's failure mid-generation, finish_reason
    // "error"): the openai SDK throws on any event whose `error` is set, and so the answer failed.
    if (ev.error) noteError(errorMessageOf(ev));
    if (ev.usage && typeof ev.usage === 'object') usage = normaliseUsage(ev.usage);
    if (!Array.isArray(ev.choices)) {
      if (typeof ev.done === 'boolean') onOllamaEvent(ev);
      else if (typeof ev.stop === 'boolean') onLlamaCppEvent(ev);
      return;
    }
    for (const choice of ev.choices) if (choice && typeof choice === 'object') onChoice(choice);
  };

  /** `audio.transcriptions` with `stream: true`, `audio.speech` with `stream_format: "sse"`. */
  const onAudioEvent = (type: string, ev: any) => {
    if (type.startsWith('transcript.')) {
      kind = 'transcription';
      if (type === 'transcript.text.delta') {
        if (typeof ev.delta === 'string') first.content = appendCapped(first.content, ev.delta);
      } else if (type === 'transcript.text.done') {
        complete = true;
        // The whole transcript, as the deltas spelt it (or as a diarized stream's segments did not).
        if (typeof ev.text === 'string') first.content = ev.text.slice(0, maxChars);
        if (ev.usage) usage = normaliseUsage(ev.usage);
      }
    } else {
      // The audio itself (base64 in `speech.audio.delta`) is no text to keep: the raw events hold it.
      kind = 'speech';
      if (type === 'speech.audio.done') {
        complete = true;
        if (ev.usage) usage = normaliseUsage(ev.usage);
      }
    }
  };

  // llama.cpp: each prompt's counts (a `prompt` array is answered per prompt, by `index`).
  const llamaUsage = new Map<ChoiceAcc, Usage>();
  /** llama.cpp's native `/completion`: `{"content","stop":false}`… then `{"stop":true,"tokens_predicted"…}`. */
  const onLlamaCppEvent = (ev: any) => {
    kind = 'llama.cpp';
    const c = choiceFor(ev.index);
    if (!c) return;
    if (typeof ev.content === 'string') c.content = appendCapped(c.content, ev.content);
    if (ev.stop !== true) return;
    c.finishReason = ev.stop_type === 'limit' || ev.stopped_limit === true ? 'length' : 'stop';
    // Whole once every prompt begun has stopped.
    complete = first.finishReason !== null && [...others.values()].every((o) => o.finishReason !== null);
    const u = normaliseUsage({ prompt_tokens: ev.tokens_evaluated, completion_tokens: ev.tokens_predicted });
    if (!u) return;
    llamaUsage.set(c, u);
    usage = llamaUsage.size === 1 ? u : sumUsage([...llamaUsage.values()]);
  };

  /** Ollama's `/api/chat` (`message`) and `/api/generate` (`response`) lines; the last has `done: true`. */
  const onOllamaEvent = (ev: any) => {
    const message = ev.message;
    if (message && typeof message === 'object') {
      kind = 'ollama';
      if (typeof message.content === 'string') first.content = appendCapped(first.content, message.content);
      // think mode: the reasoning before the answer, not in it.
      addHidden('ollama:thinking', message.thinking);
      if (Array.isArray(message.tool_calls))
        for (const tc of message.tool_calls) {
          if (!tc || typeof tc !== 'object') continue;
          const t = toolFor(first, first.toolCalls.length);
          if (typeof tc.id === 'string') t.id = tc.id;
          t.type = 'function';
          if (typeof tc.function?.name === 'string') t.name = tc.function.name;
          const args = tc.function?.arguments;
          if (args !== undefined)
            t.arguments = (typeof args === 'string' ? args : JSON.stringify(args)).slice(0, maxChars);
        }
    } else if (typeof ev.response === 'string') {
      kind = 'ollama';
      first.content = appendCapped(first.content, ev.response);
      addHidden('ollama:thinking', ev.thinking);
    }
    if (ev.done !== true) return;
    complete = true;
    if (typeof ev.done_reason === 'string') first.finishReason = ev.done_reason;
    // Ollama leaves prompt_eval_count out when the whole prompt came from its cache: 0 evaluated.
    const u = normaliseUsage({
      prompt_tokens: typeof ev.eval_count === 'number' ? (ev.prompt_eval_count ?? 0) : ev.prompt_eval_count,
      completion_tokens: ev.eval_count,
    });
    if (u) usage = u;
  };

  const onResponsesEvent = (type: string, ev: any) => {
    switch (type) {
      case 'response.output_text.delta':
        if (typeof ev.delta === 'string') first.content = appendCapped(first.content, ev.delta);
        break;
      case 'response.output_item.added':
        if (ev.item?.type === 'function_call') {
          const t = toolFor(first, ev.item.id ?? ev.output_index);
          t.id = ev.item.call_id ?? ev.item.id;
          t.type = 'function';
          t.name = ev.item.name;
          if (typeof ev.item.arguments === 'string') t.arguments = ev.item.arguments;
        }
        break;
      case 'response.function_call_arguments.delta': {
        const t = toolFor(first, ev.item_id ?? ev.output_index);
        if (typeof ev.delta === 'string') t.arguments = appendCapped(t.arguments, ev.delta);
        break;
      }
      case 'response.function_call_arguments.done': {
        const t = toolFor(first, ev.item_id ?? ev.output_index);
        if (typeof ev.arguments === 'string') t.arguments = ev.arguments.slice(0, maxChars);
        break;
      }
      case 'response.completed':
      case 'response.incomplete':
      case 'response.failed': {
        complete = true;
        const r = ev.response ?? {};
        first.finishReason = r.incomplete_details?.reason ?? r.status ?? type.slice('response.'.length);
        if (r.usage) usage = normaliseUsage(r.usage);
        if (type === 'response.failed') noteError(r.error?.message ?? 'The response failed');
        break;
      }
      default:
        // Every other text delta (reasoning, refusals, audio transcripts, custom tool input, code
        // interpreter code, MCP arguments, and those of event types yet to come): per item and part.
        if (typeof ev.delta === 'string' && type.endsWith('.delta') && !AUDIO_DELTAS.has(type))
          addHidden(
            `${type}:${ev.item_id ?? ev.output_index ?? ''}:${ev.summary_index ?? ev.content_index ?? ''}`,
            ev.delta,
          );
    }
  };

  const noteError = (message: unknown) => {
    streamError =
      typeof message === 'string' && message !== ''
        ? message.slice(0, MAX_ERROR_CHARS)
        : 'The upstream sent an error event';
  };

  /**
   * An event too large to hold (a `response.completed` carrying a generated image): only its head
   * (event name, type, status) and its tail (where `usage` is) were kept. A final event still ends the
   * stream and gives its usage and status.
   */
  const onOversized = (head: string, tail: string) => {
    events++;
    const eventName = /^event:[ \t]*(.*)$/m.exec(head)?.[1]?.trim();
    const dataAt = head.search(/^data:/m);
    if (dataAt === -1) return;
    const type = /"type"\s*:\s*"([^"\\]*)"/.exec(head.slice(dataAt))?.[1] ?? eventName;
    if (type === 'response.completed' || type === 'response.incomplete' || type === 'response.failed') {
      kind = 'response';
      complete = true;
      const inResponse = head.slice(Math.max(dataAt, head.indexOf('"response"')));
      first.finishReason =
        /"incomplete_details"\s*:\s*\{\s*"reason"\s*:\s*"([^"\\]*)"/.exec(inResponse)?.[1] ??
        /"status"\s*:\s*"([^"\\]*)"/.exec(inResponse)?.[1] ??
        type.slice('response.'.length);
      if (type === 'response.failed') {
        const m = /"error"\s*:\s*\{[^{}]*?"message"\s*:\s*("(?:[^"\\]|\\.)*")/.exec(inResponse);
        let message: unknown;
        try {
          message = m ? JSON.parse(m[1] as string) : undefined;
        } catch {}
        noteError(message ?? 'The response failed');
      }
    }
    const u = extractUsage(tail);
    if (u) usage = u;
  };

  /**
   * llama.cpp's failure after its 200: an `error:` field (not `data:`) holding `{code, message, type}`,
   * which SSE clients skip as an unknown field.
   */
  const onErrorField = (value: string) => {
    events++;
    let ev: any;
    try {
      ev = JSON.parse(value);
    } catch {}
    noteError(ev && typeof ev === 'object' ? errorMessageOf(ev) : value);
  };

  const parseBlock = (block: string) => {
    let eventName: string | null = null;
    let data: string | null = null;
    let errorField: string | null = null;
    for (const line of block.split('\n')) {
      if (line.startsWith('data:')) {
        const v = line.charCodeAt(5) === 32 ? line.slice(6) : line.slice(5);
        data = data === null ? v : `${data}\n${v}`;
      } else if (line.startsWith('event:')) {
        eventName = line.slice(6).trim();
      } else if (line.startsWith('error:')) {
        errorField = line.charCodeAt(6) === 32 ? line.slice(7) : line.slice(6);
      }
    }
    if (data !== null) onData(eventName, data);
    else if (errorField !== null) onErrorField(errorField);
  };

  const ndjson = options.framing === 'ndjson';
  // NDJSON: a line beyond maxEventChars is being skipped (its start was dropped; its end is not yet seen).
  let skippingLine = false;
  /** One JSON object a line (Ollama): each line is an event's data. */
  const pushLines = (chunk: Buffer | string) => {
    const text = typeof chunk === 'string' ? chunk : decoder.decode(chunk, { stream: true });
    let start = 0;
    let nl = text.indexOf('\n');
    while (nl !== -1) {
      if (skippingLine) skippingLine = false;
      else {
        const line = buffer === '' ? text.slice(start, nl) : buffer + text.slice(start, nl);
        buffer = '';
        // JSON.parse ignores a CRLF's CR; a blank line is no event.
        if (line.trim() !== '') onData(null, line);
      }
      start = nl + 1;
      nl = text.indexOf('\n', start);
    }
    if (skippingLine || start === text.length) return;
    buffer += text.slice(start);
    if (buffer.length > maxEventChars) {
      events++;
      buffer = '';
      skippingLine = true;
    }
  };

  /**
   * A chat or completions stream whose every choice gave its finish_reason: when the upstream then ends
   * the response normally, the answer is whole even without `data: [DONE]` (ik_llama.cpp sends none).
   */
  const allFinished = () =>
    (kind === 'chat.completion' || kind === 'text_completion') &&
    first.finishReason !== null &&
    [...others.values()].every((c) => c.finishReason !== null);

  return {
    hiddenText: () => [...hidden.values()].join('\n'),
    push(chunk) {
      if (ndjson) {
        pushLines(chunk);
        return;
      }
      let text = typeof chunk === 'string' ? chunk : decoder.decode(chunk, { stream: true });
      if (text.length === 0) return;
      if (pendingCr && text.charCodeAt(0) === 10) text = text.slice(1);
      pendingCr = text.charCodeAt(text.length - 1) === 13;
      // Scan only what is new (plus one char for a "\n\n" split across pushes): linear, not quadratic.
      let from = Math.max(0, buffer.length - 1);
      buffer += text;
      if (text.includes('\r')) {
        buffer = buffer.replace(/\r\n?/g, '\n');
        from = 0;
      }
      let end = buffer.indexOf('\n\n', from);
      while (end !== -1) {
        if (oversizedHead === null) parseBlock(buffer.slice(0, end));
        else {
          onOversized(oversizedHead, buffer.slice(0, end));
          oversizedHead = null;
        }
        buffer = buffer.slice(end + 2);
        end = buffer.indexOf('\n\n');
      }
      // One event beyond any sane size (no blank line in sight): keep only its head and its tail until it
      // ends, instead of buffering without bound.
      if (oversizedHead === null) {
        if (buffer.length > maxEventChars) {
          oversizedHead = buffer.slice(0, OVERSIZED_KEEP_CHARS);
          buffer = buffer.slice(-OVERSIZED_KEEP_CHARS);
        }
      } else if (buffer.length > OVERSIZED_KEEP_CHARS) buffer = buffer.slice(-OVERSIZED_KEEP_CHARS);
    },
    result(endedCleanly = false) {
      // A last NDJSON line without its newline is whole once the stream ended.
      if (endedCleanly && ndjson && buffer.trim() !== '' && !skippingLine) {
        onData(null, buffer);
        buffer = '';
      }
      const message: AssembledMessage = {
        kind,
        content: first.content,
        tool_calls: first.toolCalls.map((t) => ({ ...t })),
        finish_reason: first.finishReason,
        usage,
        complete: complete || (endedCleanly && streamError === null && (kind === 'unknown' || allFinished())),
        events,
      };
      if (others.size > 0)
        message.choices = [first, ...[...others.values()].sort((a, b) => a.index - b.index)].map((c) => ({
          index: c.index,
          content: c.content,
          tool_calls: c.toolCalls.map((t) => ({ ...t })),
          finish_reason: c.finishReason,
        }));
      return message;
    },
    streamError: () => streamError,
  };
}

interface ChoiceAcc {
  index: number;
  content: string;
  toolCalls: ToolCallAcc[];
  toolIndex: Map<string | number, ToolCallAcc>;
  finishReason: string | null;
}

function newChoice(index: number): ChoiceAcc {
  return { index, content: '', toolCalls: [], toolIndex: new Map(), finishReason: null };
}

/** Responses events whose `delta` is base64 audio, not text: not scanned (the raw events hold it). */
const AUDIO_DELTAS = new Set(['response.audio.delta', 'response.output_audio.delta']);

/** Choices reassembled per stream: the API's own limit on `n`. */
const MAX_CHOICES = 128;
/** What is kept of an event beyond the size limit: this much of its start, and of its end. */
const OVERSIZED_KEEP_CHARS = 64 * 1024;
/** Cap on an error event's message. */
const MAX_ERROR_CHARS = 4000;

/** Map chat/completions (`prompt_tokens`…) and Responses (`input_tokens`…) usage to one shape. */
export function normaliseUsage(u: any): Usage | null {
  if (!u || typeof u !== 'object') return null;
  const num = (v: unknown) => (typeof v === 'number' && Number.isFinite(v) ? v : null);
  const prompt = num(u.prompt_tokens) ?? num(u.input_tokens);
  const completion = num(u.completion_tokens) ?? num(u.output_tokens);
  let total = num(u.total_tokens);
  if (total === null && prompt !== null) total = prompt + (completion ?? 0);
  if (prompt === null && completion === null && total === null) return null;
  return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: total };
}

/**
 * Usage from a JSON response body without parsing all of it: finds the last top-level-looking
 * `"usage"` object and parses only that. Falls back to a full parse for small bodies.
 */
export function extractUsage(body: string): Usage | null {
  // llama.cpp answers a `prompt` array with an array of results, each counting its own prompt.
  if (body.charCodeAt(0) === 0x5b) {
    const u = arrayUsage(body);
    if (u) return u;
  }
  let at = body.lastIndexOf('"usage"');
  if (at !== -1) {
    // The shape OpenAI and most compatible servers write: the three counts first, in this order. Read
    // them where they are (0.19 against 0.66 µs on a ~600-byte completion); anything else is parsed.
    USAGE_COUNTS.lastIndex = at;
    const m = USAGE_COUNTS.exec(body);
    if (m)
      return { prompt_tokens: Number(m[1]), completion_tokens: Number(m[2]), total_tokens: Number(m[3]) };
  }
  while (at !== -1) {
    const open = body.indexOf('{', at);
    const colon = body.indexOf(':', at);
    if (open !== -1 && colon !== -1 && colon < open && body.slice(colon + 1, open).trim() === '') {
      const close = matchBrace(body, open);
      if (close !== -1) {
        try {
          const u = normaliseUsage(JSON.parse(body.slice(open, close + 1)));
          if (u) return u;
        } catch {
          // not JSON there: keep looking
        }
      }
    }
    at = at === 0 ? -1 : body.lastIndexOf('"usage"', at - 1);
  }
  return nativeUsage(body);
}

/**
 * The counts of servers that write no `usage` object: Ollama's `/api/chat` and `/api/generate`
 * (`prompt_eval_count`, `eval_count`), its `/api/embed` (`prompt_eval_count` alone: no completion
 * tokens, null as in an OpenAI embeddings `usage`) and llama.cpp's `/completion` (`tokens_evaluated`,
 * `tokens_predicted`), as their final stream events carry them too. The last of each (a body's own, not
 * one quoted inside a string: those have escaped quotes).
 */
function nativeUsage(body: string): Usage | null {
  const last = (re: RegExp): number | undefined => {
    let found: string | undefined;
    for (const m of body.matchAll(re)) found = m[1];
    return found === undefined ? undefined : Number(found);
  };
  // `eval_count"` without its opening quote: `"prompt_eval_count"` too, the only count of an `/api/embed`
  // answer (one scan, as before).
  if (body.includes('eval_count"')) {
    const completion = last(/[{,]\s*"eval_count"\s*:\s*(\d{1,15})/g);
    const u = normaliseUsage({
      // Left out when the whole prompt came from Ollama's cache: none evaluated.
      prompt_tokens:
        last(/"prompt_eval_count"\s*:\s*(\d{1,15})/g) ?? (completion === undefined ? undefined : 0),
      completion_tokens: completion,
    });
    if (u) return u;
  }
  if (body.includes('"tokens_predicted"'))
    return normaliseUsage({
      prompt_tokens: last(/"tokens_evaluated"\s*:\s*(\d{1,15})/g),
      completion_tokens: last(/"tokens_predicted"\s*:\s*(\d{1,15})/g),
    });
  return null;
}

/**
 * The usage of a JSON array of results (llama.cpp's answer to a `prompt` array, on `/completion` and
 * `/v1/completions`): every element's `usage` object, or its `tokens_evaluated`/`tokens_predicted`, summed.
 */
function arrayUsage(body: string): Usage | null {
  const found: Usage[] = [];
  for (const m of body.matchAll(/"usage"\s*:\s*\{/g)) {
    const open = (m.index as number) + m[0].length - 1;
    const close = matchBrace(body, open);
    if (close === -1) continue;
    try {
      const u = normaliseUsage(JSON.parse(body.slice(open, close + 1)));
      if (u) found.push(u);
    } catch {
      // not JSON there
    }
  }
  if (found.length === 0 && body.includes('"tokens_predicted"')) {
    const sum = (re: RegExp): number | undefined => {
      let total: number | undefined;
      for (const m of body.matchAll(re)) total = (total ?? 0) + Number(m[1]);
      return total;
    };
    const u = normaliseUsage({
      prompt_tokens: sum(/"tokens_evaluated"\s*:\s*(\d{1,15})/g),
      completion_tokens: sum(/"tokens_predicted"\s*:\s*(\d{1,15})/g),
    });
    if (u) found.push(u);
  }
  return found.length === 0 ? null : sumUsage(found);
}

/** Counts added up; a count none of them has stays null. */
function sumUsage(all: Usage[]): Usage {
  const add = (a: number | null, b: number | null) => (a === null ? b : b === null ? a : a + b);
  return all.reduce((a, b) => ({
    prompt_tokens: add(a.prompt_tokens, b.prompt_tokens),
    completion_tokens: add(a.completion_tokens, b.completion_tokens),
    total_tokens: add(a.total_tokens, b.total_tokens),
  }));
}

/** An error event's message: `{"error":{"message"}}`, Ollama's `{"error":"…"}`, or `{"message"}` (Responses, llama.cpp). */
function errorMessageOf(ev: any): unknown {
  return ev.error?.message ?? ev.error ?? ev.message;
}

/** `"usage": {"prompt_tokens": N, "completion_tokens": N, "total_tokens": N` then `,` or `}`, at lastIndex. */
const USAGE_COUNTS =
  /"usage"\s*:\s*\{\s*"prompt_tokens"\s*:\s*(\d{1,15})\s*,\s*"completion_tokens"\s*:\s*(\d{1,15})\s*,\s*"total_tokens"\s*:\s*(\d{1,15})\s*[,}]/y;

function matchBrace(s: string, open: number): number {
  let depth = 0;
  let inString = false;
  for (let i = open; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (inString) {
      if (c === 92) i++;
      else if (c === 34) inString = false;
    } else if (c === 34) inString = true;
    else if (c === 123) depth++;
    else if (c === 125 && --depth === 0) return i;
  }
  return -1;
}
