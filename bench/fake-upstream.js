// A fake OpenAI upstream for benchmarks: a fixed ~600-byte chat completion, paced SSE streams, and a
// multipart sink. Run as a child (`node bench/fake-upstream.js`); it prints `listening <port>` on stdout.
import { createServer } from 'node:http';

const COMPLETION = Buffer.from(
  JSON.stringify({
    id: 'chatcmpl-bench0000000000000000000000',
    object: 'chat.completion',
    created: 1700000000,
    model: 'gpt-4o-mini-2024-07-18',
    choices: [
      {
        index: 0,
        message: {
          role: 'assistant',
          content:
            'Benchmarks measure what they measure. This answer is fixed so that every request costs the same, and long enough to look like a real short reply from a chat model.',
          refusal: null,
        },
        logprobs: null,
        finish_reason: 'stop',
      },
    ],
    usage: {
      prompt_tokens: 25,
      completion_tokens: 36,
      total_tokens: 61,
      prompt_tokens_details: { cached_tokens: 0 },
    },
    system_fingerprint: 'fp_bench',
  }),
);

const chunk = (i, last) =>
  `data: ${JSON.stringify({
    id: 'chatcmpl-bench-stream',
    object: 'chat.completion.chunk',
    created: 1700000000,
    model: 'gpt-4o-mini-2024-07-18',
    choices: [{ index: 0, delta: last ? {} : { content: ` word${i}` }, finish_reason: last ? 'stop' : null }],
    ...(last ? { usage: { prompt_tokens: 10, completion_tokens: i, total_tokens: 10 + i } } : {}),
  })}\n\n`;

/** Start the fake upstream on 127.0.0.1 (port 0 by default). Streams take `x-bench-chunks` and `x-bench-interval-ms`. */
export function startFakeUpstream(port = 0) {
  const server = createServer({ keepAliveTimeout: 65_000, requestTimeout: 0 }, (req, res) => {
    let size = 0;
    let head = null;
    req.on('data', (c) => {
      size += c.length;
      if (!head) head = c;
    });
    req.on('end', () => {
      if (req.url.startsWith('/v1/audio/')) {
        const body = JSON.stringify({ text: 'received', bytes: size });
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
        res.end(body);
        return;
      }
      const wantsStream = head?.includes('"stream":true');
      if (!wantsStream) {
        res.writeHead(200, {
          'content-type': 'application/json',
          'content-length': COMPLETION.length,
          'x-request-id': 'req_bench',
        });
        res.end(COMPLETION);
        return;
      }
      const chunks = Number(req.headers['x-bench-chunks'] ?? 20);
      const interval = Number(req.headers['x-bench-interval-ms'] ?? 0);
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
      let i = 0;
      const next = () => {
        if (res.destroyed) return;
        if (i < chunks) {
          res.write(chunk(i, false));
          i++;
          if (interval > 0) setTimeout(next, interval);
          else setImmediate(next);
          return;
        }
        res.write(chunk(i, true));
        res.end('data: [DONE]\n\n');
      };
      next();
    });
  });
  return new Promise((resolve) =>
    server.listen({ port, host: '127.0.0.1', backlog: 4096 }, () => resolve(server)),
  );
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const server = await startFakeUpstream(Number(process.argv[2] ?? 0));
  process.stdout.write(`listening ${server.address().port}\n`);
  process.on('SIGTERM', () => {
    server.closeAllConnections();
    server.close(() => process.exit(0));
  });
}
