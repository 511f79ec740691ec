import { readFileSync } from 'node:fs';
import Database from 'better-sqlite3';
import OpenAI from 'openai';
import { Agent } from 'undici';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { main } from '../../src/cli.js';
import type { ExchangeRecord } from '../../src/storage/exchange-record.js';
import { createEmbeddingClient } from '../../src/vector/embedding-client.js';
import { pointIdFor } from '../../src/vector/qdrant-store.js';
import {
  createVectorFixture,
  deadUrl,
  type QdrantUnderTest,
  type VectorFixture,
} from '../helpers/fake-qdrant.js';
import { embed, type FakeHandler, type FakeUpstream } from '../helpers/fake-upstream.js';
import { createTestIo, startTestProxy, type TestProxy } from '../helpers/test-proxy.js';
import { until } from '../helpers/until.js';

const UPSTREAM_KEY = 'sk-upstream-secret-key-vector-1234567';
const QDRANT_KEY = 'qdrant-secret-key-abcdef123456';

let upstream: FakeUpstream;
let qdrant: QdrantUnderTest;
let fixture: VectorFixture;
let proxy: TestProxy | null = null;

beforeEach(async () => {
  fixture = await createVectorFixture({ upstreamKey: UPSTREAM_KEY, qdrantKey: QDRANT_KEY });
  ({ upstream, qdrant } = fixture);
});

afterEach(async () => {
  await proxy?.close();
  proxy = null;
  await fixture.close();
});

const vectorEnv = (extra: Record<string, string> = {}) => fixture.env(extra);

function clientFor(p: TestProxy): OpenAI {
  return new OpenAI({ apiKey: 'sk-client-000000000000', baseURL: `${p.url}/v1`, maxRetries: 0 });
}

async function health(p: TestProxy): Promise<Record<string, any>> {
  return (await fetch(`${p.url}/health`)).json();
}

describe('indexing exchanges into Qdrant while serving', () => {
  test('a non-streamed and a streamed chat completion are embedded and upserted with their payload', async () => {
    proxy = await startTestProxy(vectorEnv());
    const client = clientFor(proxy);
    await client.chat.completions.create({
      model: 'gpt-4o',
      messages: [
        { role: 'system', content: 'be brief' },
        { role: 'user', content: 'What is the refund policy?' },
      ],
      user: 'alice',
    });
    upstream.streamWords = 4;
    const stream = await client.chat.completions.create({
      model: 'gpt-4o-mini',
      messages: [{ role: 'user', content: 'count for me' }],
      stream: true,
    });
    for await (const _ of stream);

    await proxy.drainIndexer();
    const rows = await proxy.waitForRows(3);
    const chats = rows.filter((r) => r.path === '/v1/chat/completions');
    expect(chats).toHaveLength(2);

    const points = await qdrant.points();
    expect(points).toHaveLength(2);
    const byExchange = new Map(points.map((p) => [p.payload.exchange_id, p]));
    const plain = byExchange.get(chats[0].id)!;
    expect(plain.id).toBe(pointIdFor(chats[0].id));
    expect(plain.payload).toEqual({
      exchange_id: chats[0].id,
      model: 'gpt-4o',
      upstream_model: 'gpt-4o',
      status: 200,
      path: '/v1/chat/completions',
      time: new Date(chats[0].started_at).toISOString(),
      user: 'alice',
    });
    expect(byExchange.get(chats[1].id)!.payload).toMatchObject({ model: 'gpt-4o-mini', user: null });

    // The embedded texts: the last user message and the answer (reassembled for the stream).
    const embedCalls = upstream.requests.filter((r) => r.url === '/v1/embeddings');
    const inputs = embedCalls.flatMap((r) => JSON.parse(r.body.toString()).input as string[]);
    expect(inputs).toContain('User: What is the refund policy?\nAssistant: Hello from the fake upstream!');
    expect(inputs).toContain('User: count for me\nAssistant: w0 w1 w2 w3');
    expect(embedCalls[0].headers.authorization).toBe(`Bearer ${UPSTREAM_KEY}`);
    expect(JSON.parse(embedCalls[0].body.toString()).model).toBe('text-embedding-3-small');

    // The collection: cosine, the embedding's dimension, payload indexes for model and time.
    const info = await qdrant.info();
    expect(info.config.params.vectors).toMatchObject({ size: 8, distance: 'Cosine' });
    expect(Object.keys(info.payload_schema).sort()).toEqual(['model', 'time']);

    // The proxy's own embedding calls are recorded as internal exchanges, without secrets.
    const internal = rows.filter((r) => r.internal === 1);
    expect(internal.length).toBeGreaterThanOrEqual(1);
    expect(internal[0]).toMatchObject({
      path: '/v1/embeddings',
      status: 200,
      model: 'text-embedding-3-small',
    });
    expect(rows.filter((r) => r.internal === 0)).toHaveLength(2);

    const h = await health(proxy);
    expect(h).toMatchObject({ qdrant: 'ok', qdrant_pending: 0, qdrant_indexed: 2, qdrant_failed: 0 });

    const state = proxy.running.database.sqlite
      .prepare('select exchange_id, status from exchange_index order by exchange_id')
      .all();
    expect(state).toEqual(
      chats
        .map((c) => ({ exchange_id: c.id, status: 'indexed' }))
        .sort((a, b) => a.exchange_id.localeCompare(b.exchange_id)),
    );
  });

  test("the embedding calls are recorded without the embedding upstream's cookies or an echoed key", async () => {
    upstream.on('/v1/embeddings', (_req, res, body) => {
      const inputs = JSON.parse(body.toString()).input as string[];
      res.writeHead(200, {
        'content-type': 'application/json',
        'set-cookie': ['session=embed-cookie-value-123456; Path=/', 'route=embed-cookie-second-654321'],
        'x-echoed-key': UPSTREAM_KEY,
      });
      res.end(
        JSON.stringify({
          object: 'list',
          data: inputs.map((input, index) => ({ object: 'embedding', index, embedding: embed(input) })),
          usage: { prompt_tokens: 4, total_tokens: 4 },
        }),
      );
    });
    proxy = await startTestProxy(vectorEnv());
    await clientFor(proxy).chat.completions.create({
      model: 'gpt-4o',
      messages: [{ role: 'user', content: 'Where is my parcel?' }],
    });
    await proxy.drainIndexer();
    const internal = (await proxy.waitForRows(2)).find((r) => r.internal === 1)!;
    expect(internal).toMatchObject({ path: '/v1/embeddings', status: 200 });
    expect(JSON.parse(internal.response_headers!)).toMatchObject({
      'set-cookie': '[redacted]',
      'x-echoed-key': '[redacted]',
    });
    expect(JSON.stringify(internal)).not.toMatch(/embed-cookie|sk-upstream-secret/);
  });

  test('an Azure upstream with no api-version configured: the embedding call gets the default one, as its chat did, and the exchange is indexed', async () => {
    // Azure answers a request without an api-version 404.
    const azure =
      (answer: (sent: Record<string, any>) => unknown): FakeHandler =>
      (req, res, body) => {
        const versioned = new URL(req.url ?? '/', 'http://x').searchParams.get('api-version') !== null;
        res.writeHead(versioned ? 200 : 404, { 'content-type': 'application/json' });
        res.end(
          JSON.stringify(
            versioned
              ? answer(JSON.parse(body.toString()))
              : { error: { code: '404', message: 'Resource not found' } },
          ),
        );
      };
    upstream.on(
      '/openai/deployments/gpt-4o/chat/completions',
      azure((sent) => ({
        id: 'chatcmpl-1',
        object: 'chat.completion',
        created: 1,
        model: sent.model,
        choices: [
          { index: 0, message: { role: 'assistant', content: 'It is on its way.' }, finish_reason: 'stop' },
        ],
      })),
    );
    upstream.on(
      '/openai/deployments/text-embedding-3-small/embeddings',
      azure((sent) => ({
        object: 'list',
        data: (sent.input as string[]).map((input, index) => ({
          object: 'embedding',
          index,
          embedding: embed(input),
        })),
        usage: { prompt_tokens: 4, total_tokens: 4 },
      })),
    );
    proxy = await startTestProxy(vectorEnv({ OPENAI_BASE_URL: upstream.origin, OPENAI_API_TYPE: 'azure' }));
    await clientFor(proxy).chat.completions.create({
      model: 'gpt-4o',
      messages: [{ role: 'user', content: 'Where is my parcel?' }],
    });
    await proxy.drainIndexer();
    expect(upstream.requests.map((r) => r.url)).toEqual([
      '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21',
      '/openai/deployments/text-embedding-3-small/embeddings?api-version=2024-10-21',
    ]);
    expect(await qdrant.points()).toHaveLength(1);
    expect(await health(proxy)).toMatchObject({ qdrant: 'ok', qdrant_indexed: 1, qdrant_failed: 0 });
  });

  test('completions and Responses-API exchanges are indexed; embeddings, models and failures are not', async () => {
    upstream.on('/v1/responses', (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({
          id: 'resp_1',
          object: 'response',
          status: 'completed',
          model: 'gpt-4o',
          output: [
            { type: 'message', role: 'assistant', content: [{ type: 'output_text', text: 'Paris.' }] },
          ],
        }),
      );
    });
    proxy = await startTestProxy(vectorEnv());
    const client = clientFor(proxy);
    await client.completions.create({ model: 'gpt-3.5-turbo-instruct', prompt: 'Once upon a time' });
    await client.responses.create({ model: 'gpt-4o', input: 'Capital of France?' });
    await client.embeddings.create({ model: 'text-embedding-3-small', input: 'not indexed' });
    await client.models.list();
    upstream.on('/v1/chat/completions', (_req, res) => {
      res.writeHead(400, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: { message: 'bad', type: 'invalid_request_error' } }));
    });
    await expect(
      client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'fails' }] }),
    ).rejects.toThrow();

    await proxy.waitForRows(6);
    await proxy.drainIndexer();
    const points = await qdrant.points();
    const paths = points.map((p) => p.payload.path).sort();
    expect(paths).toEqual(['/v1/completions', '/v1/responses']);
    const inputs = upstream.requests
      .filter((r) => r.url === '/v1/embeddings')
      .flatMap((r) => [JSON.parse(r.body.toString()).input].flat());
    expect(inputs).toContain('User: Once upon a time\nAssistant: Hello from the fake upstream!');
    expect(inputs).toContain('User: Capital of France?\nAssistant: Paris.');
  });

  test('Qdrant down: proxying is unaffected, /health shows the error, exchanges are marked not indexed', async () => {
    proxy = await startTestProxy(vectorEnv({ QDRANT_URL: await deadUrl() }));
    const client = clientFor(proxy);
    const answer = await client.chat.completions.create({
      model: 'gpt-4o',
      messages: [{ role: 'user', content: 'still works?' }],
    });
    expect(answer.choices[0].message.content).toBe('Hello from the fake upstream!');
    await proxy.drainIndexer();

    const h = await health(proxy);
    expect(h.status).toBe('ok');
    expect(h.qdrant).toBe('error');
    expect(h.qdrant_error).toMatch(
      /Qdrant at http:\/\/127\.0\.0\.1:\d+: upserting 1 points failed: ECONNREFUSED/,
    );
    expect(h.qdrant_failed).toBe(1);
    expect(h.qdrant_pending).toBe(0);

    const rows = await proxy.waitForRows(2);
    const chat = rows.find((r) => r.path === '/v1/chat/completions')!;
    expect(chat.status).toBe(200);
    const state = proxy.running.database.sqlite
      .prepare('select status, error from exchange_index where exchange_id = ?')
      .get(chat.id) as any;
    expect(state.status).toBe('failed');
    expect(state.error).toMatch(/ECONNREFUSED/);

    // The log file is written asynchronously: give the line a moment to land.
    let logged: Record<string, any> | undefined;
    for (let i = 0; i < 100 && !logged; i++) {
      logged = proxy.logLines().find((l) => /vector indexing is failing/.test(l.msg));
      if (!logged) await new Promise((r) => setTimeout(r, 20));
    }
    expect(logged).toBeDefined();
    expect(JSON.stringify(proxy.logLines())).not.toContain(QDRANT_KEY);
  });

  test('another process holds the write lock: proxying goes on, and the indexing outcomes are written once it lets go', async () => {
    proxy = await startTestProxy(vectorEnv());
    const client = clientFor(proxy);
    const indexed = () => {
      const db = new Database(proxy!.dbPath, { readonly: true });
      try {
        return db.prepare("select exchange_id from exchange_index where status = 'indexed'").all();
      } finally {
        db.close();
      }
    };
    const ask = async (content: string) =>
      (await client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content }] }))
        .choices[0].message.content;
    const other = new Database(proxy.dbPath);
    try {
      other.exec('begin immediate');
      expect(await ask('first')).toBe('Hello from the fake upstream!');
      // Embedded and upserted; its outcome now waits for the lock (on timers, not on the event loop).
      await proxy.drainIndexer();
      expect(await qdrant.points()).toHaveLength(1);
      expect(await ask('second')).toBe('Hello from the fake upstream!');
      await proxy.drainIndexer();
      expect(indexed()).toEqual([]);
      other.exec('rollback');
    } finally {
      other.close();
    }
    // Before, the first mark held the event loop for SQLite's 5 s busy wait, failed, and was lost.
    await until('both outcomes to be written', () => indexed().length === 2);
    expect(await qdrant.points()).toHaveLength(2);
  }, 30_000);

  test('stopped while another process holds the write lock: the last indexing outcomes are written before the database closes', async ({
    skip,
  }) => {
    if (!qdrant.fake) skip(); // holding an upsert in flight needs the fake
    const fake = qdrant.fake!;
    proxy = await startTestProxy(vectorEnv());
    const client = clientFor(proxy);
    let release!: () => void;
    fake.holdUpserts = new Promise<void>((r) => {
      release = r;
    });
    await client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'last' }] });
    await proxy.waitForRows(1); // and handed to the indexer
    await until('the upsert to reach Qdrant', () =>
      fake.requests.some((r) => r.method === 'PUT' && r.path.endsWith('/points')),
    );
    // The exchange and its embedding call are recorded: only the indexing outcome is left to write.
    const rows = await proxy.waitForRows(2);
    const chat = rows.find((r) => r.internal === 0)!;
    const other = new Database(proxy.dbPath);
    try {
      other.exec('begin immediate');
      fake.holdUpserts = null;
      release();
      await proxy.drainIndexer();
      expect(await qdrant.points()).toHaveLength(1);
      // The lock outlasts the start of the shutdown, not the busy budget.
      setTimeout(() => other.exec('rollback'), 1000);
      await proxy.running.close();
    } finally {
      other.close();
    }
    const db = new Database(proxy.dbPath, { readonly: true });
    try {
      // Before, the outcome was dropped with the closed handle: the exchange looked unindexed.
      expect(db.prepare('select exchange_id, status from exchange_index').all()).toEqual([
        { exchange_id: chat.id, status: 'indexed' },
      ]);
    } finally {
      db.close();
    }
  }, 30_000);

  test('the collection disappears while serving: it is created again, the exchange indexed, /health ok', async () => {
    const env = vectorEnv();
    proxy = await startTestProxy(env);
    const client = clientFor(proxy);
    await client.chat.completions.create({
      model: 'gpt-4o',
      messages: [{ role: 'user', content: 'before' }],
    });
    await proxy.drainIndexer();
    expect(await qdrant.points()).toHaveLength(1);

    await qdrant.drop(); // as a Qdrant restarted without a storage volume would have lost it
    await client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'after' }] });
    await proxy.drainIndexer();

    const rows = (await proxy.waitForRows(4)).filter((r) => r.path === '/v1/chat/completions');
    const points = await qdrant.points();
    expect(points.map((p) => p.payload.exchange_id)).toEqual([rows[1].id]);
    const h = await health(proxy);
    expect(h).toMatchObject({ qdrant: 'ok', qdrant_error: null, qdrant_indexed: 2, qdrant_failed: 0 });

    let lines: Record<string, any>[] = [];
    for (let i = 0; i < 100 && !lines.some((l) => /did not exist and was created/.test(l.msg)); i++) {
      await new Promise((r) => setTimeout(r, 20));
      lines = proxy.logLines();
    }
    expect(lines.find((l) => /is gone/.test(l.msg))?.level).toBe(40);
    expect(lines.some((l) => /did not exist and was created.*logs reindex/.test(l.msg))).toBe(true);

    // What the lost collection held is indexed again by `logs reindex`.
    proxy.flush();
    const io = createTestIo({ HOME: proxy.dir, DATABASE_URL: proxy.dbPath, ...env }, proxy.dir);
    expect(await main(['logs', 'reindex'], io)).toBe(0);
    expect(io.out()).toContain(`Indexed 1 exchange into Qdrant collection ${qdrant.collection}.`);
    expect((await qdrant.points()).map((p) => p.payload.exchange_id).sort()).toEqual(
      rows.map((r) => r.id).sort(),
    );
  });

  test('embedding upstream down: proxying is unaffected and the exchange is marked failed', async () => {
    upstream.on('/v1/embeddings', (_req, res) => {
      res.writeHead(503, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: { message: 'embeddings overloaded', type: 'server_error' } }));
    });
    proxy = await startTestProxy(vectorEnv());
    const client = clientFor(proxy);
    const answer = await client.chat.completions.create({
      model: 'gpt-4o',
      messages: [{ role: 'user', content: 'hello' }],
    });
    expect(answer.choices[0].message.content).toBe('Hello from the fake upstream!');
    await proxy.drainIndexer();

    const h = await health(proxy);
    expect(h.qdrant).toBe('error');
    expect(h.qdrant_error).toContain('answered 503 (embeddings overloaded)');
    expect(await qdrant.points()).toEqual([]);
    const rows = await proxy.waitForRows(2);
    const internal = rows.find((r) => r.internal === 1)!;
    expect(internal).toMatchObject({ path: '/v1/embeddings', status: 503 });
    expect(internal.error_message).toContain('503');
    const chat = rows.find((r) => r.internal === 0)!;
    const state = proxy.running.database.sqlite
      .prepare('select status from exchange_index where exchange_id = ?')
      .get(chat.id) as any;
    expect(state.status).toBe('failed');
  });

  test('a slow embedding upstream never delays the proxied answer', async () => {
    let release!: () => void;
    const held = new Promise<void>((r) => {
      release = r;
    });
    upstream.on('/v1/embeddings', async (_req, res) => {
      await held;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ object: 'list', data: [{ index: 0, embedding: embed('x') }] }));
    });
    proxy = await startTestProxy(vectorEnv());
    const client = clientFor(proxy);
    await client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'one' }] });
    // Wait until the indexer is blocked on the embedding call.
    for (let i = 0; i < 100 && !upstream.requests.some((r) => r.url === '/v1/embeddings'); i++)
      await new Promise((r) => setTimeout(r, 20));
    const t0 = performance.now();
    const second = await client.chat.completions.create({
      model: 'gpt-4o',
      messages: [{ role: 'user', content: 'two' }],
    });
    expect(second.choices[0].message.content).toBe('Hello from the fake upstream!');
    expect(performance.now() - t0).toBeLessThan(1000);
    expect((await health(proxy)).qdrant_pending).toBeGreaterThanOrEqual(1);
    release();
    await proxy.drainIndexer();
    expect((await health(proxy)).qdrant_pending).toBe(0);
  });

  test('without QDRANT_URL nothing is indexed and /health says disabled', async () => {
    proxy = await startTestProxy({ OPENAI_BASE_URL: upstream.baseUrl, OPENAI_API_KEY: UPSTREAM_KEY });
    await clientFor(proxy).chat.completions.create({
      model: 'gpt-4o',
      messages: [{ role: 'user', content: 'hi' }],
    });
    await proxy.waitForRows(1);
    await new Promise((r) => setTimeout(r, 300));
    expect(proxy.running.vector).toBeNull();
    expect(upstream.requests.some((r) => r.url === '/v1/embeddings')).toBe(false);
    expect((await health(proxy)).qdrant).toBe('disabled');
    expect(qdrant.fake?.requests ?? []).toEqual([]);
  });
});

describe('stopping while indexing', () => {
  /** Stop the proxy and how long it took; the database is then read from the file. */
  async function stopTimed(p: TestProxy): Promise<number> {
    const t0 = performance.now();
    await p.running.close();
    return performance.now() - t0;
  }

  function readDb<T>(p: TestProxy, read: (db: Database.Database) => T): T {
    const db = new Database(p.dbPath, { readonly: true });
    try {
      return read(db);
    } finally {
      db.close();
    }
  }

  test('a hung embedding upstream: the shutdown takes SHUTDOWN_GRACE_MS, no batch starts after it, every row is written', async () => {
    upstream.on('/v1/embeddings', () => new Promise<void>(() => undefined)); // never answers
    proxy = await startTestProxy(vectorEnv({ SHUTDOWN_GRACE_MS: '1000' }));
    const client = clientFor(proxy);
    const ask = (content: string) =>
      client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content }] });
    await ask('first');
    await proxy.waitForRows(1);
    const embedCalls = () => upstream.requests.filter((r) => r.url === '/v1/embeddings').length;
    await until('the embedding call to be in flight', () => embedCalls() === 1);
    await ask('second'); // queued behind the hung batch
    await proxy.waitForRows(2);
    proxy.running.proxy.recordFinished();

    // Before, the close waited for the 30 s embedding time limit (a test timeout here).
    const took = await stopTimed(proxy);
    expect(took).toBeLessThan(1000 + 1500);
    await new Promise((r) => setTimeout(r, 300));
    // Before, drain() went on after close and sent the queued exchange on the closed dispatcher.
    expect(embedCalls()).toBe(1);

    const rows = readDb(proxy, (db) =>
      db.prepare('select id, internal, path, error, error_message from exchanges order by started_at').all(),
    ) as { id: string; internal: number; path: string; error: string | null; error_message: string | null }[];
    const internal = rows.filter((r) => r.internal === 1);
    expect(internal).toEqual([expect.objectContaining({ path: '/v1/embeddings', error: 'proxy_shutdown' })]);
    expect(internal[0].error_message).toContain('cut short: the proxy is stopping');
    const first = rows.find((r) => r.internal === 0)!;
    expect(readDb(proxy, (db) => db.prepare('select exchange_id, status from exchange_index').all())).toEqual(
      [{ exchange_id: first.id, status: 'failed' }],
    );
    expect(readFileSync(proxy.logPath, 'utf8')).not.toContain('spilled_exchange');
  }, 20_000);

  test('a second stop signal (hurry) ends the indexing grace at once: the hung batch is cut short', async () => {
    upstream.on('/v1/embeddings', () => new Promise<void>(() => undefined)); // never answers
    proxy = await startTestProxy(vectorEnv({ SHUTDOWN_GRACE_MS: '10000' }));
    await clientFor(proxy).chat.completions.create({
      model: 'gpt-4o',
      messages: [{ role: 'user', content: 'only' }],
    });
    await proxy.waitForRows(1);
    await until('the embedding call to be in flight', () =>
      upstream.requests.some((r) => r.url === '/v1/embeddings'),
    );
    const stopping = stopTimed(proxy);
    await new Promise((r) => setTimeout(r, 200));
    // What serve's handler of a second SIGINT/SIGTERM does besides cutting the requests in flight.
    proxy.running.vector!.hurry();
    // Not the 10 s grace: the ~200 ms before the second signal and up to 1 s for the batch to settle.
    expect(await stopping).toBeLessThan(200 + 1500);
    const internal = readDb(proxy, (db) =>
      db.prepare('select error from exchanges where internal = 1').all(),
    ) as { error: string | null }[];
    expect(internal).toEqual([{ error: 'proxy_shutdown' }]);
  }, 20_000);

  test('a hung Qdrant: the shutdown takes SHUTDOWN_GRACE_MS and the exchange is left for `logs reindex`', async ({
    skip,
  }) => {
    if (!qdrant.fake) skip(); // holding an upsert in flight needs the fake
    const fake = qdrant.fake!;
    fake.holdUpserts = new Promise<void>(() => undefined); // never answered
    proxy = await startTestProxy(vectorEnv({ SHUTDOWN_GRACE_MS: '1000' }));
    await clientFor(proxy).chat.completions.create({
      model: 'gpt-4o',
      messages: [{ role: 'user', content: 'last' }],
    });
    await proxy.waitForRows(1);
    await until('the upsert to reach Qdrant', () =>
      fake.requests.some((r) => r.method === 'PUT' && r.path.endsWith('/points')),
    );
    // Before, the close waited for the Qdrant client's 10 s time limit.
    expect(await stopTimed(proxy)).toBeLessThan(1000 + 1500);
    const state = readDb(proxy, (db) => db.prepare('select status, error from exchange_index').all());
    expect(state).toEqual([
      { status: 'failed', error: expect.stringContaining('cut short: the proxy is stopping') },
    ]);
  }, 20_000);
});

describe('the embedding client', () => {
  test('an embedding upstream that never answers: the timeout message is thrown and the call is reported', async () => {
    upstream.on('/v1/embeddings', () => new Promise<void>(() => undefined)); // never answers
    const dispatcher = new Agent();
    const reported: ExchangeRecord[] = [];
    const client = createEmbeddingClient({
      endpoint: { name: 'default', origin: upstream.origin, path: '/v1/embeddings', headers: {} },
      model: 'text-embedding-3-small',
      dispatcher,
      timeoutMs: 200,
      redact: { text: (s) => s, headers: (h) => JSON.stringify(h) },
      newId: () => 'internal-1',
      onExchange: (r) => reported.push(r),
    });
    try {
      // Before, the timeout's numeric DOMException code made the catch throw "code?.includes is not a function".
      await expect(client.embed(['hello'])).rejects.toThrow(
        `Embedding request to ${upstream.origin}/v1/embeddings did not finish within 200 ms`,
      );
      expect(reported).toHaveLength(1);
      expect(reported[0]).toMatchObject({
        path: '/v1/embeddings',
        status: null,
        error: 'upstream_timeout',
        internal: true,
      });
      expect(reported[0].errorMessage).toContain('did not finish within 200 ms');
    } finally {
      await dispatcher.destroy();
    }
  });
});
