import type { AssembledMessage, ExchangeRecord } from '../storage/exchange-record.js';
import type { ExchangesTable } from '../storage/tables.js';

/** The fields of an exchange the indexer needs; built from a live record or a stored row. */
export interface IndexableExchange {
  id: string;
  startedAt: number;
  method: string;
  path: string;
  status: number | null;
  model: string | null;
  upstreamModel: string | null;
  user: string | null;
  internal: boolean;
  error: string | null;
  requestBody: string | null;
  responseBody: string | null;
  assembled: AssembledMessage | null;
}

/** Payload stored with each Qdrant point. */
export interface ExchangePayload {
  exchange_id: string;
  model: string | null;
  upstream_model: string | null;
  status: number | null;
  path: string;
  time: string;
  user: string | null;
}

/** Characters kept of the user's message and of the answer (together well under 8k embedding tokens). */
export const MAX_PART_CHARS = 4000;

const INDEXED_PATH = /\/(chat\/completions|completions|responses)$/;

/** SQL condition (on table `exchanges`) equivalent to the cheap part of `isIndexable`. */
export const INDEXABLE_SQL = `exchanges.method = 'POST' and exchanges.status between 200 and 299 and exchanges.internal = 0 and exchanges.error is null and (exchanges.path like '%/completions' or exchanges.path like '%/responses')`;

/** From a live exchange record. */
export function fromRecord(r: ExchangeRecord): IndexableExchange {
  return {
    id: r.id,
    startedAt: r.startedAt,
    method: r.method,
    path: r.path,
    status: r.status,
    model: r.model,
    upstreamModel: r.upstreamModel,
    user: r.user,
    internal: r.internal,
    error: r.error,
    requestBody: r.requestBody,
    responseBody: r.responseBody,
    assembled: r.assembled,
  };
}

/** From a stored row of the exchanges table. */
export function fromRow(r: ExchangesTable): IndexableExchange {
  let assembled: AssembledMessage | null = null;
  if (r.assembled) {
    try {
      assembled = JSON.parse(r.assembled);
    } catch {
      assembled = null;
    }
  }
  return {
    id: r.id,
    startedAt: r.started_at,
    method: r.method,
    path: r.path,
    status: r.status,
    model: r.model,
    upstreamModel: r.upstream_model,
    user: r.user,
    internal: r.internal === 1,
    error: r.error,
    requestBody: r.request_body,
    responseBody: r.response_body,
    assembled,
  };
}

/** True for a completed, successful chat completion, completion or Responses-API exchange from a client. */
export function isIndexable(x: IndexableExchange): boolean {
  if (x.internal || x.error || x.method !== 'POST') return false;
  if (x.status === null || x.status < 200 || x.status > 299) return false;
  if (!INDEXED_PATH.test(x.path.split('?')[0])) return false;
  if (x.assembled && !x.assembled.complete) return false;
  return true;
}

/** The Qdrant payload of an exchange. */
export function payloadOf(x: IndexableExchange): ExchangePayload {
  return {
    exchange_id: x.id,
    model: x.model,
    upstream_model: x.upstreamModel,
    status: x.status,
    path: x.path,
    time: new Date(x.startedAt).toISOString(),
    user: x.user,
  };
}

/**
 * The text embedded for an exchange: the last user message and the assistant's answer (reassembled for
 * streams), each capped at MAX_PART_CHARS. Null when neither can be found.
 */
export function exchangeText(x: IndexableExchange): string | null {
  const request = parse(x.requestBody);
  const question = cap(request ? lastUserText(request) : cutUserText(x.requestBody));
  const answer = cap(
    x.assembled ? x.assembled.content || toolCallsText(x.assembled) : answerText(x.responseBody),
  );
  if (!question && !answer) return null;
  const parts: string[] = [];
  if (question) parts.push(`User: ${question}`);
  if (answer) parts.push(`Assistant: ${answer}`);
  return parts.join('\n');
}

function cap(s: string): string {
  const t = s.trim();
  return t.length > MAX_PART_CHARS ? t.slice(0, MAX_PART_CHARS) : t;
}

function parse(body: string | null): any {
  if (!body) return null;
  try {
    return JSON.parse(body);
  } catch {
    return null;
  }
}

/** Text of a message `content`: a string, or an array of parts with text. */
function contentText(content: unknown): string {
  if (typeof content === 'string') return content;
  if (!Array.isArray(content)) return '';
  return content
    .map((p) => (typeof p === 'string' ? p : typeof p?.text === 'string' ? p.text : ''))
    .filter(Boolean)
    .join('\n');
}

/**
 * A request body stored truncated (CAPTURE_BODY_BYTES) no longer parses: the last user message whose
 * (string) content starts in what was kept, decoded as far as it was kept. A message cut off whole is lost.
 */
function cutUserText(body: string | null): string {
  if (!body) return '';
  const start = /"role"\s*:\s*"user"\s*,\s*"content"\s*:\s*"/g;
  let from = -1;
  for (let m = start.exec(body); m; m = start.exec(body)) from = start.lastIndex;
  if (from < 0) return '';
  // To the closing quote or the end, without an escape cut at the end.
  let end = from;
  for (; end < body.length; end++) {
    const c = body[end];
    if (c === '"') break;
    if (c === '\\') {
      const size = body[end + 1] === 'u' ? 6 : 2;
      if (end + size > body.length) break;
      end += size - 1;
    }
  }
  try {
    return JSON.parse(`"${body.slice(from, end)}"`);
  } catch {
    return '';
  }
}

function lastUserText(req: any): string {
  if (!req || typeof req !== 'object') return '';
  // Chat completions.
  if (Array.isArray(req.messages)) {
    const m = [...req.messages].reverse().find((x: any) => x?.role === 'user');
    return m ? contentText(m.content) : '';
  }
  // Legacy completions.
  if (req.prompt !== undefined) {
    if (typeof req.prompt === 'string') return req.prompt;
    if (Array.isArray(req.prompt)) {
      const last = req.prompt.filter((p: unknown) => typeof p === 'string').at(-1);
      return last ?? '';
    }
    return '';
  }
  // Responses API: `input` is a string or a list of items.
  if (typeof req.input === 'string') return req.input;
  if (Array.isArray(req.input)) {
    const m = [...req.input].reverse().find((x: any) => x?.role === 'user' || x?.type === 'input_text');
    if (!m) return '';
    return m.type === 'input_text' ? String(m.text ?? '') : contentText(m.content);
  }
  return '';
}

function answerText(body: string | null): string {
  const res = parse(body);
  if (!res || typeof res !== 'object') return '';
  if (Array.isArray(res.choices)) {
    const c = res.choices.find((x: any) => (x?.index ?? 0) === 0) ?? res.choices[0];
    if (!c) return '';
    if (typeof c.text === 'string') return c.text;
    const msg = c.message ?? {};
    const text = contentText(msg.content);
    if (text) return text;
    if (Array.isArray(msg.tool_calls))
      return msg.tool_calls
        .map((t: any) => `${t?.function?.name ?? ''}(${t?.function?.arguments ?? ''})`)
        .join('\n');
    return '';
  }
  if (typeof res.output_text === 'string') return res.output_text;
  if (Array.isArray(res.output)) {
    return res.output
      .filter((o: any) => o?.type === 'message')
      .map((o: any) => contentText(o.content))
      .filter(Boolean)
      .join('\n');
  }
  return '';
}

function toolCallsText(a: AssembledMessage): string {
  return a.tool_calls.map((t) => `${t.name ?? ''}(${t.arguments})`).join('\n');
}
