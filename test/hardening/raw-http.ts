import dc from 'node:diagnostics_channel';
import { connect } from 'node:net';

const openUpstream = new Map<object, string>();
dc.subscribe('undici:request:create', (m: any) =>
  openUpstream.set(m.request, `${m.request.method} ${m.request.path}`),
);
dc.subscribe('undici:request:trailers', (m: any) => openUpstream.delete(m.request));
dc.subscribe('undici:request:error', (m: any) => openUpstream.delete(m.request));

/**
 * Upstream requests (undici, this process) not yet finished or failed. After a test settles this must be
 * empty: a request left paused or waiting for a body holds an upstream connection forever.
 */
export function openUpstreamRequests(): string[] {
  return [...openUpstream.values()];
}

/** What came back on a raw connection: the bytes, and the status codes of every response in them. */
export interface RawReply {
  text: string;
  statuses: number[];
  /** True when the proxy closed the connection (rather than the wait timing out). */
  closed: boolean;
}

/**
 * Write raw bytes to `url`'s host and port and collect everything the server sends until it closes the
 * connection or `waitMs` passes. For shapes an HTTP client library refuses to send.
 */
export function rawHttp(url: string, payload: string | Buffer, waitMs = 1500): Promise<RawReply> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const socket = connect(Number(port), hostname);
    let closed = false;
    const finish = () => {
      clearTimeout(timer);
      socket.destroy();
      const text = Buffer.concat(chunks).toString('latin1');
      const statuses = [...text.matchAll(/(?:^|\r\n)HTTP\/1\.[01] (\d{3}) /g)].map((m) => Number(m[1]));
      resolve({ text, statuses, closed });
    };
    const timer = setTimeout(finish, waitMs);
    socket.on('data', (d) => chunks.push(d));
    socket.on('end', () => {
      closed = true;
      finish();
    });
    socket.on('close', () => {
      closed = true;
      finish();
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ECONNRESET' || err.code === 'EPIPE') {
        closed = true;
        finish();
      } else reject(err);
    });
    socket.write(payload);
  });
}

/** The JSON body of the first response in a raw reply. */
export function firstBody(reply: RawReply): any {
  const start = reply.text.indexOf('\r\n\r\n');
  const rest = reply.text.slice(start + 4);
  const end = rest.indexOf('HTTP/1.');
  return JSON.parse(end > 0 ? rest.slice(0, end) : rest);
}
