import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { REDACTED } from './capture.js';

/**
 * WebSocket pass-through (the Realtime API): the handshake is an HTTP request the proxy routes like any
 * other; after the upstream's 101 the bytes are relayed both ways unchanged (a copy is read for the
 * record: realtime-session.ts).
 */

/** True for a WebSocket handshake (`Upgrade: websocket`); other upgrades (h2c) are plain requests to the proxy. */
export function isWebSocketUpgrade(req: IncomingMessage): boolean {
  const upgrade = req.headers.upgrade;
  return req.method === 'GET' && typeof upgrade === 'string' && /^\s*websocket\s*$/i.test(upgrade);
}

/**
 * The request head of an upgrade request the proxy does not tunnel, without its upgrade offer (the
 * `Upgrade` header and the `upgrade` token of `Connection`): fed back to the HTTP parser, it is the plain
 * HTTP/1.1 request a server that declines the upgrade answers (RFC 9110 §7.8).
 */
export function headWithoutUpgrade(req: IncomingMessage): Buffer {
  let head = `${req.method} ${req.url} HTTP/${req.httpVersion}\r\n`;
  const raw = req.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i].toLowerCase();
    let value = raw[i + 1];
    if (name === 'upgrade') continue;
    if (name === 'connection') {
      value = value
        .split(',')
        .map((t) => t.trim())
        .filter((t) => t !== '' && t.toLowerCase() !== 'upgrade')
        .join(', ');
      if (value === '') continue;
    }
    head += `${raw[i]}: ${value}\r\n`;
  }
  return Buffer.from(`${head}\r\n`, 'latin1');
}

/**
 * Every `model` query parameter's value (the Realtime API names its model there), read as the upstream
 * reads them (URLSearchParams, Starlette's parse_qsl): names and values percent-decoded, `+` a space, so
 * `mod%65l=x` is a model too. Empty values count: `model=&model=x` names two.
 */
export function queryModels(query: string): string[] {
  return new URLSearchParams(query).getAll('model');
}

/**
 * Every `deployment` query parameter's value, read as queryModels reads `model`: Azure's Realtime API
 * (`/openai/realtime?api-version=…&deployment=…`) names its model, the deployment, there.
 */
export function queryDeployments(query: string): string[] {
  return new URLSearchParams(query).getAll('deployment');
}

/**
 * `query` with every parameter naming the model (`model` or `deployment`, by its decoded name: `mod%65l`
 * too) set to `model`, encoded, under its decoded name; every other byte as it was. With `as`, the first
 * of them becomes `as=<model>` and the others are dropped (the one an Azure upstream reads).
 */
export function replaceQueryModel(query: string, model: string, as?: 'model' | 'deployment'): string {
  const value = encodeURIComponent(model);
  let named = false;
  const out: string[] = [];
  for (const pair of query.split('&')) {
    const name = modelParamName(pair);
    if (name === null) out.push(pair);
    else if (as === undefined) out.push(`${name}=${value}`);
    else if (!named) {
      named = true;
      out.push(`${as}=${value}`);
    }
  }
  return out.join('&');
}

/** `model` or `deployment` when `pair` is that parameter, by its name decoded as URLSearchParams decodes it. */
function modelParamName(pair: string): 'model' | 'deployment' | null {
  const eq = pair.indexOf('=');
  const name = eq === -1 ? pair : pair.slice(0, eq);
  // One name, decoded as URLSearchParams decodes it (`+` a space, a bad escape left as it is).
  const params = new URLSearchParams(`${name}=`);
  return params.has('model') ? 'model' : params.has('deployment') ? 'deployment' : null;
}

/** A key offered as a subprotocol (`Sec-WebSocket-Protocol: realtime, openai-insecure-api-key.<key>`). */
const SUBPROTOCOL_KEY = /(openai-insecure-api-key\.)[^,\s]+/gi;

/**
 * The handshake's headers as recorded: browsers cannot set Authorization on a WebSocket, so OpenAI takes
 * their key as a subprotocol, which is redacted like an Authorization header (and forwarded as it is).
 */
export function withoutSubprotocolKey(headers: IncomingHttpHeaders): IncomingHttpHeaders {
  const protocols = headers['sec-websocket-protocol'];
  if (typeof protocols !== 'string' || !/openai-insecure-api-key\./i.test(protocols)) return headers;
  return { ...headers, 'sec-websocket-protocol': protocols.replace(SUBPROTOCOL_KEY, `$1${REDACTED}`) };
}

/**
 * The key a client offers as a subprotocol (what the openai SDK's OpenAIRealtimeWebSocket sends, having no
 * way to set Authorization on a WebSocket); null when none.
 */
export function subprotocolKey(headers: IncomingHttpHeaders): string | null {
  const protocols = headers['sec-websocket-protocol'];
  if (typeof protocols !== 'string') return null;
  return /(?:^|,)\s*openai-insecure-api-key\.([^,\s]+)/i.exec(protocols)?.[1] ?? null;
}

/** `headers` without the subprotocol key (and without the header, when that was its only protocol). */
export function dropSubprotocolKey(headers: IncomingHttpHeaders): IncomingHttpHeaders {
  const protocols = headers['sec-websocket-protocol'];
  if (typeof protocols !== 'string') return headers;
  const kept = protocols
    .split(',')
    .map((t) => t.trim())
    .filter((t) => t !== '' && !/^openai-insecure-api-key\./i.test(t))
    .join(', ');
  const out = { ...headers };
  if (kept === '') delete out['sec-websocket-protocol'];
  else out['sec-websocket-protocol'] = kept;
  return out;
}

/** The upstream's 101 as the client gets it: status line and every header as the upstream sent it. */
export function switchingProtocolsHead(headers: Record<string, string | string[] | undefined>): string {
  let head = 'HTTP/1.1 101 Switching Protocols\r\n';
  for (const name in headers) {
    const v = headers[name];
    if (v === undefined) continue;
    for (const one of Array.isArray(v) ? v : [v]) head += `${name}: ${one}\r\n`;
  }
  return `${head}\r\n`;
}

/** How a relayed session ended: which side failed first, if one did. */
export interface RelayEnd {
  /** Bytes from the client to the upstream, and back. */
  clientBytes: number;
  upstreamBytes: number;
  /** The first socket error, and on which side; null when both sides closed without one. */
  error: { side: 'client' | 'upstream'; err: NodeJS.ErrnoException } | null;
  /** The side whose connection ended (FIN) first; null when neither ended normally. */
  firstEnd: 'client' | 'upstream' | null;
}

/** Readers of a copy of each direction's bytes, called after the bytes were passed on. */
export interface RelayTap {
  client(chunk: Buffer): void;
  upstream(chunk: Buffer): void;
}

/**
 * Pipe `client` and `upstream` into each other, with backpressure, until both have closed; an end on one
 * side ends the other, an error or a cut on one destroys both.
 * `onEnd` is called once, after both sockets closed. `tap` sees every chunk once it is written on; what
 * it throws is ignored.
 */
export function relaySockets(
  client: Duplex,
  upstream: Duplex,
  onEnd: (end: RelayEnd) => void,
  tap?: RelayTap,
): void {
  const end: RelayEnd = { clientBytes: 0, upstreamBytes: 0, error: null, firstEnd: null };
  let open = 2;
  const closed = () => {
    if (--open === 0) onEnd(end);
  };
  const fail = (side: 'client' | 'upstream') => (err: NodeJS.ErrnoException) => {
    end.error ??= { side, err };
    client.destroy();
    upstream.destroy();
  };
  client.on('error', fail('client'));
  upstream.on('error', fail('upstream'));
  // A side that closed after its end (FIN) has had that end passed on by pipe(), and the other side closes
  // in its own time, once what it still has to send is sent. One cut off without an end (destroyed at
  // shutdown, reset) takes the other with it.
  client.once('close', () => {
    if (!client.readableEnded) upstream.destroy();
    closed();
  });
  upstream.once('close', () => {
    if (!upstream.readableEnded) client.destroy();
    closed();
  });
  client.on('data', (chunk: Buffer) => {
    end.clientBytes += chunk.length;
  });
  upstream.on('data', (chunk: Buffer) => {
    end.upstreamBytes += chunk.length;
  });
  client.once('end', () => {
    end.firstEnd ??= 'client';
  });
  upstream.once('end', () => {
    end.firstEnd ??= 'upstream';
  });
  client.pipe(upstream);
  upstream.pipe(client);
  // After pipe()'s own listeners: a chunk is on its way to the other side before it is read here.
  if (tap) {
    client.on('data', (chunk: Buffer) => {
      try {
        tap.client(chunk);
      } catch {
        // reading the copy never affects the relay
      }
    });
    upstream.on('data', (chunk: Buffer) => {
      try {
        tap.upstream(chunk);
      } catch {
        // reading the copy never affects the relay
      }
    });
  }
}
