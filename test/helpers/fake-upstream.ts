import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { serveEchoWebSocket } from './websocket.js';

/** A request as the fake upstream received it. */
export interface ReceivedRequest {
  method: string;
  url: string;
  headers: IncomingMessage['headers'];
  body: Buffer;
  /** True when the client went away before the fake finished answering. */
  aborted: boolean;
}

export type FakeHandler = (req: IncomingMessage, res: ServerResponse, body: Buffer) => void | Promise<void>;

export interface FakeUpstream {
  /** Origin, e.g. http://127.0.0.1:1234 */
  origin: string;
  /** Base URL clients would use: `${origin}/v1` */
  baseUrl: string;
  requests: ReceivedRequest[];
  /** Milliseconds between streamed events (default 0). */
  streamIntervalMs: number;
  /** Words in a streamed answer (default 5). */
  streamWords: number;
  /** When set, WebSocket upgrades are refused with this status (an OpenAI error body) instead of echoed. */
  websocketRefusal: number | null;
  /** The upstream side of every WebSocket session it echoed. */
  websockets: Socket[];
  /** Replace the handler for one path (exact match on the path without query). */
  on(path: string, handler: FakeHandler): void;
  /** Resolves when a request to `path` has been aborted by the client side. */
  waitForAbort(path: string, timeoutMs?: number): Promise<ReceivedRequest>;
  close(): Promise<void>;
}

export const CHAT_ANSWER = 'Hello from the fake upstream!';

/** Non-streamed chat completion body, OpenAI shaped, ~600 bytes. */
export function chatCompletionBody(model: string, content = CHAT_ANSWER): Record<string, unknown> {
  return {
    id: 'chatcmpl-fake123',
    object: 'chat.completion',
    created: 1700000000,
    model,
    choices: [
      {
        index: 0,
        message: { role: 'assistant', content, refusal: null },
        logprobs: null,
        finish_reason: 'stop',
      },
    ],
    usage: { prompt_tokens: 12, completion_tokens: 7, total_tokens: 19 },
    system_fingerprint: 'fp_fake',
  };
}

/**
 * A fake OpenAI-compatible upstream on 127.0.0.1, port 0: chat (plain and streamed, paced), completions,
 * embeddings, audio transcription (multipart), image generation, models; records every request; closes itself.
 */
export async function createFakeUpstream(): Promise<FakeUpstream> {
  const handlers = new Map<string, FakeHandler>();
  const requests: ReceivedRequest[] = [];
  const sockets = new Set<Socket>();
  const abortWaiters: { path: string; resolve: (r: ReceivedRequest) => void }[] = [];

  const fake: FakeUpstream = {
    origin: '',
    baseUrl: '',
    requests,
    streamIntervalMs: 0,
    streamWords: 5,
    websocketRefusal: null,
    websockets: [],
    on(path, handler) {
      handlers.set(path, handler);
    },
    waitForAbort(path, timeoutMs = 5000) {
      const done = requests.find((r) => r.aborted && r.url.split('?')[0] === path);
      if (done) return Promise.resolve(done);
      return new Promise((resolve, reject) => {
        const t = setTimeout(
          () => reject(new Error(`no aborted request to ${path} within ${timeoutMs} ms`)),
          timeoutMs,
        );
        abortWaiters.push({
          path,
          resolve: (r) => {
            clearTimeout(t);
            resolve(r);
          },
        });
      });
    },
    async close() {
      for (const s of sockets) s.destroy();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };

  const server: Server = createServer(async (req, res) => {
    const chunks: Buffer[] = [];
    const received: ReceivedRequest = {
      method: req.method ?? '',
      url: req.url ?? '',
      headers: req.headers,
      body: Buffer.alloc(0),
      aborted: false,
    };
    requests.push(received);
    res.on('close', () => {
      if (!res.writableEnded) {
        received.aborted = true;
        for (const w of abortWaiters.splice(0)) {
          if (received.url.split('?')[0] === w.path) w.resolve(received);
          else abortWaiters.push(w);
        }
      }
    });
    try {
      for await (const c of req) chunks.push(c as Buffer);
    } catch {
      received.aborted = true;
      return;
    }
    received.body = Buffer.concat(chunks);
    const path = (req.url ?? '/').split('?')[0];
    const handler = handlers.get(path) ?? defaultHandler;
    try {
      await handler(req, res, received.body);
    } catch (err) {
      if (!res.headersSent) {
        res.writeHead(500, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: { message: String(err), type: 'fake_error' } }));
      } else res.destroy();
    }
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  // WebSocket upgrades (the Realtime API): recorded like requests, then an echo server or a refusal.
  server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
    requests.push({
      method: req.method ?? '',
      url: req.url ?? '',
      headers: req.headers,
      body: Buffer.alloc(0),
      aborted: false,
    });
    if (fake.websocketRefusal === null) {
      if (serveEchoWebSocket(req, socket, head)) fake.websockets.push(socket);
      return;
    }
    const body = JSON.stringify({
      error: {
        message: 'WebSocket refused by the fake upstream',
        type: 'invalid_request_error',
        param: null,
        code: null,
      },
    });
    socket.end(
      `HTTP/1.1 ${fake.websocketRefusal} Refused\r\ncontent-type: application/json\r\nx-request-id: req_fake_ws_refused\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
    );
  });

  const defaultHandler: FakeHandler = async (req, res, body) => {
    const path = (req.url ?? '/').split('?')[0].replace(/^\/openai\/deployments\/[^/]+/, '/v1');
    const json = parseJson(body);
    const model = typeof json?.model === 'string' ? json.model : 'unknown';
    const send = (status: number, obj: unknown, headers: Record<string, string> = {}) => {
      const text = JSON.stringify(obj);
      res.writeHead(status, {
        'content-type': 'application/json',
        'x-request-id': 'req_fake_1',
        'openai-processing-ms': '5',
        'x-ratelimit-remaining-requests': '99',
        ...headers,
      });
      res.end(text);
    };
    if (path === '/v1/chat/completions' && req.method === 'POST') {
      if (json?.stream) {
        const n = typeof json.n === 'number' && json.n > 1 ? json.n : 1;
        return streamChat(res, model, Boolean((json.stream_options as any)?.include_usage), n);
      }
      return send(200, chatCompletionBody(model));
    }
    if (path === '/v1/completions' && req.method === 'POST') {
      return send(200, {
        id: 'cmpl-1',
        object: 'text_completion',
        model,
        choices: [{ index: 0, text: CHAT_ANSWER, finish_reason: 'stop' }],
        usage: { prompt_tokens: 3, completion_tokens: 5, total_tokens: 8 },
      });
    }
    if (path === '/v1/embeddings' && req.method === 'POST') {
      const inputs = Array.isArray(json?.input) ? json.input : [json?.input];
      return send(200, {
        object: 'list',
        model,
        data: inputs.map((input: unknown, index: number) => {
          const vector = embed(String(input));
          const embedding =
            json?.encoding_format === 'base64'
              ? Buffer.from(new Float32Array(vector).buffer).toString('base64')
              : vector;
          return { object: 'embedding', index, embedding };
        }),
        usage: { prompt_tokens: 4, total_tokens: 4 },
      });
    }
    if (path === '/v1/audio/transcriptions' && req.method === 'POST') {
      const m = /name="model"\r\n\r\n([^\r]*)/.exec(body.toString('latin1'));
      return send(200, { text: `transcribed ${body.length} bytes with ${m?.[1] ?? 'no model'}` });
    }
    if (path === '/v1/images/generations' && req.method === 'POST') {
      return send(200, {
        created: 1700000000,
        data: [{ url: 'https://example.invalid/image.png', revised_prompt: String(json?.prompt ?? '') }],
      });
    }
    if (path === '/v1/models' && req.method === 'GET') {
      return send(200, {
        object: 'list',
        data: [
          { id: 'gpt-4o', object: 'model', created: 1700000000, owned_by: 'fake' },
          { id: 'gpt-4o-mini', object: 'model', created: 1700000000, owned_by: 'fake' },
        ],
      });
    }
    return send(404, {
      error: {
        message: `Unknown fake route ${req.method} ${path}`,
        type: 'invalid_request_error',
        param: null,
        code: 'unknown_url',
      },
    });
  };

  /** `n` choices interleave, one per event as OpenAI sends them; choice i's words are `c<i>w<j>`. */
  const streamChat = async (res: ServerResponse, model: string, includeUsage: boolean, n = 1) => {
    res.writeHead(200, {
      'content-type': 'text/event-stream',
      'cache-control': 'no-cache',
      'x-request-id': 'req_fake_stream',
    });
    const words = Array.from({ length: fake.streamWords }, (_, i) => `w${i} `);
    const chunk = (delta: Record<string, unknown>, finish: string | null, index = 0) =>
      `data: ${JSON.stringify({ id: 'chatcmpl-s1', object: 'chat.completion.chunk', created: 1700000000, model, choices: [{ index, delta, finish_reason: finish }] })}\n\n`;
    const choices = Array.from({ length: n }, (_, i) => i);
    const word = (i: number, w: string) => (n === 1 ? w : `c${i}${w}`);
    for (const i of choices) res.write(chunk({ role: 'assistant', content: '' }, null, i));
    for (const w of words) {
      if (fake.streamIntervalMs > 0) await sleep(fake.streamIntervalMs);
      if (res.destroyed) return;
      for (const i of choices) res.write(chunk({ content: word(i, w) }, null, i));
    }
    for (const i of choices) res.write(chunk({}, 'stop', i));
    if (includeUsage) {
      const completion = words.length * n;
      res.write(
        `data: ${JSON.stringify({ id: 'chatcmpl-s1', object: 'chat.completion.chunk', created: 1700000000, model, choices: [], usage: { prompt_tokens: 9, completion_tokens: completion, total_tokens: 9 + completion } })}\n\n`,
      );
    }
    res.end('data: [DONE]\n\n');
  };

  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const { port } = server.address() as AddressInfo;
  fake.origin = `http://127.0.0.1:${port}`;
  fake.baseUrl = `${fake.origin}/v1`;
  return fake;
}

/** A deterministic 8-dimensional bag-of-letters embedding: similar texts get similar vectors. */
export function embed(text: string): number[] {
  const v = new Array(8).fill(0);
  for (const ch of text.toLowerCase()) if (ch >= 'a' && ch <= 'z') v[(ch.charCodeAt(0) - 97) % 8] += 1;
  const norm = Math.hypot(...v) || 1;
  return v.map((x) => x / norm);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function parseJson(body: Buffer): Record<string, any> | null {
  try {
    const v = JSON.parse(body.toString('utf8'));
    return v && typeof v === 'object' ? v : null;
  } catch {
    return null;
  }
}
