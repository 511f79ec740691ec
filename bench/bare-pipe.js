// The floor: a bare node:http + undici pipe proxy with no recording, the cost any Node proxy pays.
// Run as a child: `node bench/bare-pipe.js <upstream origin>`; it prints `listening <port>` on stdout.
import { createServer } from 'node:http';
import { Agent } from 'undici';

const HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'host', 'upgrade', 'te', 'trailer']);

/** Start the bare pipe proxy in front of `origin` on 127.0.0.1 (port 0 by default). */
export function startBarePipe(origin, port = 0) {
  const agent = new Agent({ keepAliveTimeout: 30_000 });
  const server = createServer({ keepAliveTimeout: 65_000, requestTimeout: 0 }, (req, res) => {
    const headers = {};
    for (const [k, v] of Object.entries(req.headers)) if (!HOP.has(k)) headers[k] = v;
    const hasBody =
      req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined;
    let controller = null;
    res.once('close', () => {
      if (!res.writableEnded && controller && !controller.aborted)
        controller.abort(new Error('client aborted'));
    });
    agent.dispatch(
      { origin, path: req.url, method: req.method, headers, body: hasBody ? req : null },
      {
        onRequestStart(c) {
          controller = c;
        },
        onResponseStart(_c, status, upstreamHeaders) {
          const out = {};
          for (const [k, v] of Object.entries(upstreamHeaders)) if (!HOP.has(k)) out[k] = v;
          res.writeHead(status, out);
          if (String(upstreamHeaders['content-type']).includes('event-stream')) res.flushHeaders();
        },
        onResponseData(c, data) {
          if (!res.write(data)) {
            c.pause();
            res.once('drain', () => c.resume());
          }
        },
        onResponseEnd() {
          res.end();
        },
        onResponseError(_c, err) {
          if (!res.headersSent) {
            res.writeHead(502, { 'content-type': 'application/json' });
            res.end(JSON.stringify({ error: { message: String(err.message), type: 'proxy_error' } }));
          } else res.destroy();
        },
      },
    );
  });
  return new Promise((resolve) =>
    server.listen({ port, host: '127.0.0.1', backlog: 4096 }, () => resolve(server)),
  );
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const server = await startBarePipe(process.argv[2], Number(process.argv[3] ?? 0));
  process.stdout.write(`listening ${server.address().port}\n`);
  process.on('SIGTERM', () => {
    server.closeAllConnections();
    server.close(() => process.exit(0));
  });
}
