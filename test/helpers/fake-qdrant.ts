import { randomBytes } from 'node:crypto';
import { createServer, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { createFakeUpstream, type FakeUpstream } from './fake-upstream.js';

/**
 * A small Qdrant-compatible REST server on 127.0.0.1, port 0, speaking the request and response shapes
 * of Qdrant's OpenAPI schema for what oai-proxy uses: collections (list, get, exists, create, delete),
 * payload index, points upsert / retrieve / scroll / count / delete (ids or filter), and query / search
 * with filters. It really stores vectors and ranks by cosine similarity (vectors normalised on insert,
 * score = dot product, as Qdrant does for `Cosine`).
 */
export interface FakeQdrant {
  url: string;
  /** Every request received: method, path (without query) and parsed body. */
  requests: { method: string; path: string; body: any; headers: Record<string, unknown> }[];
  /** When set, every request must carry this `api-key` header (else 401). */
  apiKey?: string;
  /** While set, point upserts are recorded at once but answered only once it resolves (held in flight). */
  holdUpserts: Promise<void> | null;
  close(): Promise<void>;
}

type PointId = string | number;
interface StoredPoint {
  id: PointId;
  vector: number[];
  payload: Record<string, unknown>;
  version: number;
}
interface Collection {
  size: number;
  distance: string;
  points: Map<string, StoredPoint>;
  payloadSchema: Record<string, { data_type: string; points: number }>;
}

const UUID = /^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$/i;

export async function createFakeQdrant(options: { apiKey?: string } = {}): Promise<FakeQdrant> {
  const collections = new Map<string, Collection>();
  const sockets = new Set<Socket>();
  let operation = 0;
  const fake: FakeQdrant = {
    url: '',
    requests: [],
    apiKey: options.apiKey,
    holdUpserts: null,
    async close() {
      for (const s of sockets) s.destroy();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };

  const server: Server = createServer(async (req, res) => {
    const t0 = performance.now();
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const raw = Buffer.concat(chunks).toString('utf8');
    let body: any = null;
    if (raw) {
      try {
        body = JSON.parse(raw);
      } catch {
        return fail(res, 400, `Format error in JSON body: ${raw.slice(0, 40)}`, t0);
      }
    }
    const path = (req.url ?? '/').split('?')[0];
    fake.requests.push({ method: req.method ?? '', path, body, headers: req.headers });
    if (fake.holdUpserts && req.method === 'PUT' && path.endsWith('/points')) await fake.holdUpserts;
    if (fake.apiKey && req.headers['api-key'] !== fake.apiKey) {
      res.writeHead(401, { 'content-type': 'text/plain' });
      res.end('Must provide an API key or an Authorization bearer token');
      return;
    }
    try {
      route(req.method ?? 'GET', path, body, res, t0);
    } catch (err) {
      fail(res, 500, `Service internal error: ${(err as Error).message}`, t0);
    }
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });

  const route = (method: string, path: string, body: any, res: ServerResponse, t0: number) => {
    if (path === '/' && method === 'GET') {
      return send(res, 200, { title: 'qdrant - vector search engine (fake)', version: '1.15.0' });
    }
    if (path === '/collections' && method === 'GET') {
      return ok(res, { collections: [...collections.keys()].map((name) => ({ name })) }, t0);
    }
    const m = /^\/collections\/([^/]+)(\/.*)?$/.exec(path);
    if (!m) return fail(res, 404, `Not found: ${method} ${path}`, t0);
    const name = decodeURIComponent(m[1]);
    const rest = m[2] ?? '';
    const col = collections.get(name);
    const missing = () => fail(res, 404, `Not found: Collection \`${name}\` doesn't exist!`, t0);

    if (rest === '/exists' && method === 'GET') return ok(res, { exists: !!col }, t0);
    if (rest === '') {
      if (method === 'GET') return col ? ok(res, collectionInfo(col), t0) : missing();
      if (method === 'PUT') {
        if (col) return fail(res, 409, `Wrong input: Collection \`${name}\` already exists!`, t0);
        const v = body?.vectors;
        if (!v || typeof v.size !== 'number' || v.size < 1 || typeof v.distance !== 'string')
          return fail(res, 422, 'Format error in JSON body: vectors: missing field `size` or `distance`', t0);
        collections.set(name, { size: v.size, distance: v.distance, points: new Map(), payloadSchema: {} });
        return ok(res, true, t0);
      }
      if (method === 'DELETE') return ok(res, collections.delete(name), t0);
    }
    if (!col) return missing();

    if (rest === '/index' && method === 'PUT') {
      if (typeof body?.field_name !== 'string') return fail(res, 422, 'missing field `field_name`', t0);
      const schema = typeof body.field_schema === 'string' ? body.field_schema : body.field_schema?.type;
      col.payloadSchema[body.field_name] = { data_type: String(schema), points: 0 };
      return ok(res, updateResult(), t0);
    }
    if (rest === '/points' && method === 'PUT') {
      const points: { id: PointId; vector: unknown; payload?: Record<string, unknown> }[] = Array.isArray(
        body?.points,
      )
        ? body.points
        : body?.batch
          ? body.batch.ids.map((id: PointId, i: number) => ({
              id,
              vector: body.batch.vectors[i],
              payload: body.batch.payloads?.[i],
            }))
          : [];
      for (const p of points) {
        const key = pointKey(p.id);
        if (key === null)
          return fail(
            res,
            400,
            `Unable to parse point id ${JSON.stringify(p.id)}: not a UUID or an unsigned integer`,
            t0,
          );
        if (!Array.isArray(p.vector) || p.vector.length !== col.size)
          return fail(
            res,
            400,
            `Wrong input: Vector dimension error: expected dim: ${col.size}, got ${Array.isArray(p.vector) ? p.vector.length : 0}`,
            t0,
          );
      }
      for (const p of points) {
        const vector = col.distance === 'Cosine' ? normalise(p.vector as number[]) : (p.vector as number[]);
        col.points.set(pointKey(p.id)!, {
          id: canonicalId(p.id),
          vector,
          payload: p.payload ?? {},
          version: ++operation,
        });
      }
      return ok(res, updateResult(), t0);
    }
    if (rest === '/points' && method === 'POST') {
      const ids: PointId[] = body?.ids ?? [];
      const found = ids.map((id) => col.points.get(pointKey(id) ?? '')).filter((p): p is StoredPoint => !!p);
      return ok(
        res,
        found.map((p) => record(p, body?.with_payload ?? true, body?.with_vector ?? false)),
        t0,
      );
    }
    if (rest === '/points/delete' && method === 'POST') {
      if (Array.isArray(body?.points)) {
        for (const id of body.points) col.points.delete(pointKey(id) ?? '');
      } else if (body?.filter) {
        for (const [k, p] of col.points) {
          if (matchesFilter(p, body.filter)) col.points.delete(k);
        }
      } else {
        return fail(res, 422, 'Format error in JSON body: expected `points` or `filter`', t0);
      }
      return ok(res, updateResult(), t0);
    }
    if (rest === '/points/scroll' && method === 'POST') {
      const all = [...col.points.values()]
        .filter((p) => !body?.filter || matchesFilter(p, body.filter))
        .sort((a, b) => String(a.id).localeCompare(String(b.id)));
      const start =
        body?.offset !== undefined && body.offset !== null ? all.findIndex((p) => p.id === body.offset) : 0;
      const limit = body?.limit ?? 10;
      const page = all.slice(Math.max(start, 0), Math.max(start, 0) + limit);
      const next = all[Math.max(start, 0) + limit];
      return ok(
        res,
        {
          points: page.map((p) => record(p, body?.with_payload ?? true, body?.with_vector ?? false)),
          next_page_offset: next ? next.id : null,
        },
        t0,
      );
    }
    if (rest === '/points/count' && method === 'POST') {
      const n = [...col.points.values()].filter((p) => !body?.filter || matchesFilter(p, body.filter)).length;
      return ok(res, { count: n }, t0);
    }
    if ((rest === '/points/query' || rest === '/points/search') && method === 'POST') {
      const q = rest === '/points/search' ? body?.vector : body?.query;
      const vector: unknown = Array.isArray(q) ? q : q?.nearest;
      if (!Array.isArray(vector) || vector.length !== col.size)
        return fail(
          res,
          400,
          `Wrong input: Vector dimension error: expected dim: ${col.size}, got ${Array.isArray(vector) ? vector.length : 0}`,
          t0,
        );
      const qv = normalise(vector as number[]);
      const scored = [...col.points.values()]
        .filter((p) => !body?.filter || matchesFilter(p, body.filter))
        .map((p) => ({ p, score: dot(qv, p.vector) }))
        .filter((s) => body?.score_threshold == null || s.score >= body.score_threshold)
        .sort((a, b) => b.score - a.score)
        .slice(body?.offset ?? 0, (body?.offset ?? 0) + (body?.limit ?? 10))
        .map(({ p, score }) => ({
          ...record(p, body?.with_payload ?? false, body?.with_vector ?? false),
          version: p.version,
          score,
        }));
      return ok(res, rest === '/points/search' ? scored : { points: scored }, t0);
    }
    return fail(res, 404, `Not found: ${method} ${path}`, t0);
  };

  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  fake.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return fake;

  function updateResult() {
    return { operation_id: ++operation, status: 'completed' };
  }
}

function collectionInfo(col: Collection) {
  return {
    status: 'green',
    optimizer_status: 'ok',
    indexed_vectors_count: 0,
    points_count: col.points.size,
    segments_count: 1,
    config: {
      params: {
        vectors: { size: col.size, distance: col.distance },
        shard_number: 1,
        replication_factor: 1,
        write_consistency_factor: 1,
        on_disk_payload: true,
      },
      hnsw_config: { m: 16, ef_construct: 100, full_scan_threshold: 10000, max_indexing_threads: 0 },
      optimizer_config: {
        deleted_threshold: 0.2,
        vacuum_min_vector_number: 1000,
        default_segment_number: 0,
        flush_interval_sec: 5,
      },
      wal_config: { wal_capacity_mb: 32, wal_segments_ahead: 0 },
    },
    payload_schema: Object.fromEntries(
      Object.entries(col.payloadSchema).map(([k, v]) => [k, { ...v, points: col.points.size }]),
    ),
  };
}

function record(p: StoredPoint, withPayload: unknown, withVector: unknown) {
  return {
    id: p.id,
    payload: withPayload ? p.payload : null,
    vector: withVector ? p.vector : null,
    shard_key: null,
    order_value: null,
  };
}

function pointKey(id: unknown): string | null {
  if (typeof id === 'number' && Number.isInteger(id) && id >= 0) return `n:${id}`;
  if (typeof id === 'string' && UUID.test(id)) return `u:${id.replace(/-/g, '').toLowerCase()}`;
  return null;
}

function canonicalId(id: PointId): PointId {
  if (typeof id === 'number') return id;
  const h = id.replace(/-/g, '').toLowerCase();
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function normalise(v: number[]): number[] {
  const n = Math.hypot(...v);
  return n === 0 ? v : v.map((x) => x / n);
}

function dot(a: number[], b: number[]): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

function asList<T>(x: T | T[] | null | undefined): T[] {
  return x === null || x === undefined ? [] : Array.isArray(x) ? x : [x];
}

/** Qdrant filter semantics for the conditions oai-proxy (and its tests) use. */
export function matchesFilter(p: StoredPoint, filter: any): boolean {
  const must = asList(filter?.must);
  const should = asList(filter?.should);
  const mustNot = asList(filter?.must_not);
  if (!must.every((c) => matchesCondition(p, c))) return false;
  if (should.length > 0 && !should.some((c) => matchesCondition(p, c))) return false;
  if (mustNot.some((c) => matchesCondition(p, c))) return false;
  return true;
}

function matchesCondition(p: StoredPoint, c: any): boolean {
  if (c?.must !== undefined || c?.should !== undefined || c?.must_not !== undefined)
    return matchesFilter(p, c);
  if (Array.isArray(c?.has_id)) return c.has_id.some((id: unknown) => pointKey(id) === pointKey(p.id));
  if (typeof c?.is_null?.key === 'string') return p.payload[c.is_null.key] === null;
  if (typeof c?.key !== 'string') throw new Error(`unsupported condition ${JSON.stringify(c)}`);
  const value = p.payload[c.key];
  const values = Array.isArray(value) ? value : [value];
  if (c.match) {
    if ('value' in c.match) return values.some((v) => v === c.match.value);
    if ('any' in c.match) return values.some((v) => c.match.any.includes(v));
    if ('except' in c.match) return values.every((v) => v !== undefined && !c.match.except.includes(v));
    throw new Error(`unsupported match ${JSON.stringify(c.match)}`);
  }
  if (c.range) {
    const r = c.range;
    const isDate = [r.gt, r.gte, r.lt, r.lte].some((b) => typeof b === 'string');
    const num = (x: unknown) => (isDate ? Date.parse(String(x)) : Number(x));
    return values.some((v) => {
      if (v === null || v === undefined) return false;
      const n = num(v);
      if (Number.isNaN(n)) return false;
      if (r.gt != null && !(n > num(r.gt))) return false;
      if (r.gte != null && !(n >= num(r.gte))) return false;
      if (r.lt != null && !(n < num(r.lt))) return false;
      if (r.lte != null && !(n <= num(r.lte))) return false;
      return true;
    });
  }
  throw new Error(`unsupported condition ${JSON.stringify(c)}`);
}

function send(res: ServerResponse, status: number, obj: unknown) {
  const text = JSON.stringify(obj);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function ok(res: ServerResponse, result: unknown, t0: number) {
  send(res, 200, { result, status: 'ok', time: (performance.now() - t0) / 1000 });
}

function fail(res: ServerResponse, status: number, error: string, t0: number) {
  send(res, status, { status: { error }, time: (performance.now() - t0) / 1000 });
}

/** A Qdrant to test against: the real one at QDRANT_TEST_URL (QDRANT_TEST_API_KEY) if set, else a fake. */
export interface QdrantUnderTest {
  url: string;
  apiKey?: string;
  /** A fresh collection name for this test. */
  collection: string;
  fake: FakeQdrant | null;
  /** Points of the collection, or of `name` (via REST scroll), payloads included; [] when it does not exist. */
  points(name?: string): Promise<{ id: PointId; payload: Record<string, any> }[]>;
  /** Delete the collection (as a Qdrant restarted without storage would have lost it). */
  drop(): Promise<void>;
  /** Another fresh collection name for this test (deleted with the test's own). */
  another(suffix: string): string;
  /** The collection's info (GET /collections/{name}), or null when it does not exist. */
  info(): Promise<any>;
  close(): Promise<void>;
}

export async function createQdrantUnderTest(options: { apiKey?: string } = {}): Promise<QdrantUnderTest> {
  const realUrl = process.env.QDRANT_TEST_URL;
  const fake = realUrl ? null : await createFakeQdrant(options);
  const url = (realUrl ?? fake!.url).replace(/\/$/, '');
  const apiKey = realUrl ? process.env.QDRANT_TEST_API_KEY : options.apiKey;
  const collection = `oai_proxy_test_${randomBytes(6).toString('hex')}`;
  const others: string[] = [];
  const call = async (method: string, path: string, body?: unknown) => {
    const res = await fetch(`${url}${path}`, {
      method,
      headers: { 'content-type': 'application/json', ...(apiKey ? { 'api-key': apiKey } : {}) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: res.status, json: (await res.json().catch(() => null)) as any };
  };
  return {
    url,
    apiKey,
    collection,
    fake,
    async points(name = collection) {
      const out: { id: PointId; payload: Record<string, any> }[] = [];
      let offset: PointId | null = null;
      do {
        const r = await call('POST', `/collections/${name}/points/scroll`, {
          limit: 100,
          offset,
          with_payload: true,
        });
        if (r.status === 404) return [];
        for (const p of r.json.result.points) out.push({ id: p.id, payload: p.payload });
        offset = r.json.result.next_page_offset;
      } while (offset !== null && offset !== undefined);
      return out;
    },
    another(suffix) {
      others.push(`${collection}_${suffix}`);
      return others[others.length - 1];
    },
    async drop() {
      const r = await call('DELETE', `/collections/${collection}`);
      if (r.status !== 200) throw new Error(`deleting collection ${collection}: HTTP ${r.status}`);
    },
    async info() {
      const r = await call('GET', `/collections/${collection}`);
      return r.status === 200 ? r.json.result : null;
    },
    async close() {
      if (realUrl)
        for (const name of [collection, ...others])
          await call('DELETE', `/collections/${name}`).catch(() => undefined);
      await fake?.close();
    },
  };
}

/** A URL on 127.0.0.1 where nothing listens (for "Qdrant is down"). */
export async function deadUrl(): Promise<string> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const { port } = s.address() as AddressInfo;
  await new Promise<void>((r) => s.close(() => r()));
  return `http://127.0.0.1:${port}`;
}

/** A fake upstream plus a Qdrant under test, and the environment a proxy indexing into them needs. */
export interface VectorFixture {
  upstream: FakeUpstream;
  qdrant: QdrantUnderTest;
  env(extra?: Record<string, string>): Record<string, string>;
  close(): Promise<void>;
}

export async function createVectorFixture(keys: {
  upstreamKey: string;
  qdrantKey: string;
}): Promise<VectorFixture> {
  const upstream = await createFakeUpstream();
  const qdrant = await createQdrantUnderTest({ apiKey: keys.qdrantKey });
  return {
    upstream,
    qdrant,
    env: (extra = {}) => ({
      OPENAI_BASE_URL: upstream.baseUrl,
      OPENAI_API_KEY: keys.upstreamKey,
      QDRANT_URL: qdrant.url,
      ...(qdrant.apiKey ? { QDRANT_API_KEY: qdrant.apiKey } : {}),
      QDRANT_COLLECTION: qdrant.collection,
      ...extra,
    }),
    async close() {
      await qdrant.close();
      await upstream.close();
    },
  };
}
