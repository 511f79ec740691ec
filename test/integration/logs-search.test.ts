import OpenAI from 'openai';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { main } from '../../src/cli.js';
import {
  createVectorFixture,
  deadUrl,
  type QdrantUnderTest,
  type VectorFixture,
} from '../helpers/fake-qdrant.js';
import type { FakeUpstream } from '../helpers/fake-upstream.js';
import { createTestIo, startTestProxy, type TestProxy } from '../helpers/test-proxy.js';

const UPSTREAM_KEY = 'sk-upstream-secret-key-search-1234567';
const QDRANT_KEY = 'qdrant-secret-key-search-987654';

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

/** Run the CLI in-process against the test proxy's database. */
async function cli(argv: string[], env: Record<string, string>, options: { tty?: boolean } = {}) {
  const io = createTestIo({ HOME: proxy!.dir, DATABASE_URL: proxy!.dbPath, ...env }, proxy!.dir);
  if (options.tty) io.stderr.isTTY = true;
  const code = await main(argv, io);
  return { code, out: io.out(), err: io.err() };
}

/** Each answer echoes a distinct text, so the bag-of-letters embeddings differ. */
function answerWith(text: string) {
  upstream.on('/v1/chat/completions', (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ choices: [{ index: 0, message: { role: 'assistant', content: text } }] }));
  });
}

async function chat(model: string, question: string, answer: string) {
  answerWith(answer);
  const client = new OpenAI({ apiKey: 'sk-client-000000000000', baseURL: `${proxy!.url}/v1`, maxRetries: 0 });
  await client.chat.completions.create({ model, messages: [{ role: 'user', content: question }] });
}

async function seed() {
  await chat('gpt-4o', 'What is your refund policy?', 'Refunds are possible within thirty days.');
  await chat('gpt-4o-mini', 'zzz buzz fizz jazz', 'zzz buzz');
  await chat('gpt-4o-mini', 'Can I get a refund for my order?', 'Yes, refunds within thirty days.');
  await proxy!.waitForRows(3);
  await proxy!.drainIndexer();
  proxy!.flush();
}

describe('oai-proxy logs search', () => {
  test('ranks by meaning, prints the table with scores, applies --model and --since in Qdrant', async () => {
    proxy = await startTestProxy(vectorEnv());
    await seed();
    const rows = proxy.rows().filter((r) => r.internal === 0);
    expect(rows).toHaveLength(3);

    const json = await cli(['logs', 'search', 'refund policy', '--json'], vectorEnv());
    expect(json.err).toBe('');
    expect(json.code).toBe(0);
    const hits = json.out
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    expect(hits).toHaveLength(3);
    // Both refund conversations rank above the unrelated one; scores descend.
    expect(
      hits
        .slice(0, 2)
        .map((h) => h.id)
        .sort(),
    ).toEqual([rows[0].id, rows[2].id].sort());
    expect(hits[2].id).toBe(rows[1].id);
    expect(hits[0].score).toBeGreaterThanOrEqual(hits[1].score);
    expect(hits[1].score).toBeGreaterThan(hits[2].score);
    expect(hits[0]).toMatchObject({ path: '/v1/chat/completions', status: 200 });

    const limited = await cli(['logs', 'search', 'refund policy', '--json', '--limit', '1'], vectorEnv());
    expect(limited.out.trim().split('\n')).toHaveLength(1);

    const byModel = await cli(['logs', 'search', 'refund', '--json', '--model', 'gpt-4o-mini'], vectorEnv());
    const modelHits = byModel.out
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    expect(modelHits.map((h) => h.id).sort()).toEqual([rows[1].id, rows[2].id].sort());

    const future = new Date(Date.now() + 3_600_000).toISOString().slice(0, 19) + 'Z';
    const none = await cli(['logs', 'search', 'refund', '--json', '--since', future], vectorEnv());
    expect(none.code).toBe(0);
    expect(none.out).toBe('');
    const recent = await cli(['logs', 'search', 'refund', '--json', '--since', '1h'], vectorEnv());
    expect(recent.out.trim().split('\n')).toHaveLength(3);

    // The filters went to Qdrant, not applied afterwards.
    if (qdrant.fake) {
      const queries = qdrant.fake.requests.filter((r) => r.path.endsWith('/points/query'));
      expect(queries.some((q) => JSON.stringify(q.body.filter ?? null).includes('"gpt-4o-mini"'))).toBe(true);
      expect(
        queries.some((q) => q.body.filter?.must?.some((c: any) => c.key === 'time' && c.range?.gte)),
      ).toBe(true);
    }

    const table = await cli(['logs', 'search', 'refund policy'], vectorEnv());
    expect(table.code).toBe(0);
    const lines = table.out.split('\n');
    expect(table.out).toMatch(/score/i);
    expect(table.out).toContain('gpt-4o-mini');
    const firstDataLine = lines.find((l) => /0\.\d{2,}/.test(l));
    expect(firstDataLine).toBeDefined();

    // The CLI's own embedding calls are recorded as internal exchanges; secrets appear nowhere.
    const internal = proxy.rows().filter((r) => r.internal === 1);
    expect(internal.length).toBeGreaterThanOrEqual(6);
    const everything = JSON.stringify(proxy.rows()) + JSON.stringify(proxy.logLines()) + json.out + table.out;
    expect(everything).not.toContain(UPSTREAM_KEY);
    expect(everything).not.toContain(QDRANT_KEY);
  });

  test('without QDRANT_URL it says how to enable it and exits 2', async () => {
    proxy = await startTestProxy({ OPENAI_BASE_URL: upstream.baseUrl });
    const r = await cli(['logs', 'search', 'anything'], { OPENAI_BASE_URL: upstream.baseUrl });
    expect(r.code).toBe(2);
    expect(r.out).toBe('');
    expect(r.err).toMatch(/QDRANT_URL/);
    expect(r.err).toMatch(/logs reindex/);
    const re = await cli(['logs', 'reindex'], { OPENAI_BASE_URL: upstream.baseUrl });
    expect(re.code).toBe(2);
    // What to configure, not "then run `oai-proxy logs reindex`" (the command just run).
    expect(re.err).toBe(
      'oai-proxy: `oai-proxy logs reindex` needs Qdrant, which is off: set QDRANT_URL (e.g. QDRANT_URL=http://127.0.0.1:6333 in the environment, .env or the config file as "qdrantUrl"), and QDRANT_API_KEY if your Qdrant needs a key; with it set, `oai-proxy serve` indexes each new exchange and this command indexes those recorded before\n',
    );
  });

  // Review: a base URL's ?query is refused by serve only, and these commands dropped it: a Qdrant key
  // in QDRANT_URL (or an upstream key in OPENAI_BASE_URL) was never sent, and the call failed with 401.
  test('a key in QDRANT_URL or OPENAI_BASE_URL: exit 2 naming the setting, the key masked', async () => {
    const { QDRANT_API_KEY: _, ...env } = vectorEnv();
    proxy = await startTestProxy(vectorEnv());
    const inQdrantUrl = { ...env, QDRANT_URL: `${env.QDRANT_URL}/?api-key=${QDRANT_KEY}` };
    for (const argv of [
      ['logs', 'search', 'refund'],
      ['logs', 'reindex'],
    ]) {
      const r = await cli(argv, inQdrantUrl);
      expect(r.code, r.err).toBe(2);
      expect(r.err).toBe(
        `oai-proxy: Invalid QDRANT_URL (environment) = ${env.QDRANT_URL}/?api-key=***: expected a URL without ?query or #fragment (neither is ever sent; ?api-version alone is taken, for an Azure upstream, as its api-version); put a Qdrant key in QDRANT_API_KEY\n`,
      );
    }
    // The tester's repro: a key under a parameter name that says nothing (`?code=`) was printed in full.
    const unnamed = await cli(['logs', 'search', 'refund'], {
      ...env,
      QDRANT_URL: `${env.QDRANT_URL}/?code=sk-proj-SECRETabcdefghijklmnop`,
    });
    expect(unnamed.code, unnamed.err).toBe(2);
    expect(unnamed.err).toContain(`Invalid QDRANT_URL (environment) = ${env.QDRANT_URL}/?code=***: `);
    expect(unnamed.err).not.toContain('SECRET');
    const { OPENAI_API_KEY: __, ...noKey } = vectorEnv();
    const r = await cli(['logs', 'search', 'refund'], {
      ...noKey,
      OPENAI_BASE_URL: `${upstream.baseUrl}?key=${UPSTREAM_KEY}`,
    });
    expect(r.code, r.err).toBe(2);
    expect(r.err).toMatch(/^oai-proxy: Invalid OPENAI_BASE_URL \(environment\) = http:\/\/\S+\?key=\*\*\*: /);
    expect(r.out).toBe('');
    expect(r.err).not.toContain(UPSTREAM_KEY);
  });

  test('bad --limit is a usage error', async () => {
    proxy = await startTestProxy(vectorEnv());
    const r = await cli(['logs', 'search', 'x', '--limit', '0'], vectorEnv());
    expect(r.code).toBe(2);
    expect(r.err).toContain('--limit');
  });
});

describe('oai-proxy logs reindex', () => {
  test('Qdrant down while serving: nothing indexed; reindex catches up, then finds nothing more', async () => {
    const env = vectorEnv();
    proxy = await startTestProxy({ ...env, QDRANT_URL: await deadUrl() });
    await seed();
    expect(await qdrant.points()).toEqual([]);
    const h = await (await fetch(`${proxy.url}/health`)).json();
    expect(h.qdrant).toBe('error');

    const r = await cli(['logs', 'reindex', '--batch-size', '2'], env);
    expect(r.err).toMatch(/reindex: 3\/3 \(100%\)/);
    expect(r.code).toBe(0);
    expect(r.out).toContain(`Indexed 3 exchanges into Qdrant collection ${qdrant.collection}.`);
    const points = await qdrant.points();
    const ids = proxy
      .rows()
      .filter((x) => x.internal === 0)
      .map((x) => x.id)
      .sort();
    expect(points.map((p) => p.payload.exchange_id).sort()).toEqual(ids);

    const again = await cli(['logs', 'reindex'], env);
    expect(again.code).toBe(0);
    expect(again.out).toMatch(/Nothing to index/);

    const found = await cli(['logs', 'search', 'refund', '--json', '--limit', '1'], env);
    expect(JSON.parse(found.out).id).not.toBe(ids[1]);
  });

  test('another QDRANT_COLLECTION starts from the first exchange: reindex indexes them all into it', async () => {
    const env = vectorEnv();
    proxy = await startTestProxy(env);
    await seed();
    const ids = proxy
      .rows()
      .filter((x) => x.internal === 0)
      .map((x) => x.id)
      .sort();
    expect((await qdrant.points()).map((p) => p.payload.exchange_id).sort()).toEqual(ids);

    const other = qdrant.another('other');
    const r = await cli(['logs', 'reindex'], vectorEnv({ QDRANT_COLLECTION: other }));
    expect(r.code).toBe(0);
    expect(r.out).toContain(`Indexed 3 exchanges into Qdrant collection ${other}.`);
    expect((await qdrant.points(other)).map((p) => p.payload.exchange_id).sort()).toEqual(ids);

    const again = await cli(['logs', 'reindex'], vectorEnv({ QDRANT_COLLECTION: other }));
    expect(again.out).toBe(
      `Nothing to index: every recorded exchange is already in Qdrant collection ${other}.\n`,
    );
    // Each collection keeps its own progress: the first one is still complete.
    const back = await cli(['logs', 'reindex'], env);
    expect(back.out).toBe(
      `Nothing to index: every recorded exchange is already in Qdrant collection ${qdrant.collection}.\n`,
    );
  });

  test('a collection that disappeared (deleted, or Qdrant restarted empty): reindex indexes everything again', async () => {
    const env = vectorEnv();
    proxy = await startTestProxy(env);
    await seed();
    expect(await qdrant.points()).toHaveLength(3);
    await qdrant.drop();

    const r = await cli(['logs', 'reindex'], env);
    expect(r.code).toBe(0);
    expect(r.out).toContain(`Indexed 3 exchanges into Qdrant collection ${qdrant.collection}.`);
    expect(await qdrant.points()).toHaveLength(3);
    const zzz = proxy
      .rows()
      .filter((x) => x.internal === 0)
      .map((x) => x.id)
      .sort()[1];
    const found = await cli(['logs', 'search', 'refund', '--json', '--limit', '1'], env);
    expect(found.code).toBe(0);
    expect(JSON.parse(found.out).id).not.toBe(zzz);
  });

  test('state recorded before targets were (migration 0009) counts for the collection that exists', async () => {
    const env = vectorEnv();
    proxy = await startTestProxy(env);
    await seed();
    proxy.running.database.sqlite.prepare("update exchange_index set target = ''").run();
    const r = await cli(['logs', 'reindex'], env);
    expect(r.out).toMatch(/^Nothing to index/);
    const other = await cli(['logs', 'reindex'], vectorEnv({ QDRANT_COLLECTION: qdrant.another('b') }));
    expect(other.out).toContain('Indexed 3 exchanges');
  });

  test('embedding upstream down during reindex: exit 1 with how to resume; a later run resumes', async () => {
    const env = vectorEnv();
    proxy = await startTestProxy({ ...env, QDRANT_URL: await deadUrl() });
    await seed();
    let calls = 0;
    const original = upstream.requests.length;
    upstream.on('/v1/embeddings', (_req, res) => {
      calls++;
      if (calls === 2) {
        res.writeHead(500, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: { message: 'embedding backend exploded', type: 'server_error' } }));
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ data: [{ index: 0, embedding: [1, 0, 0, 0, 0, 0, 0, 0] }] }));
    });
    const first = await cli(['logs', 'reindex', '--batch-size', '1'], env);
    expect(first.code).toBe(1);
    expect(first.err).toContain('embedding backend exploded');
    expect(first.err).toContain('Indexed 1 of 3 before the failure');
    expect(first.err).toContain('run `oai-proxy logs reindex` again to resume');
    expect(await qdrant.points()).toHaveLength(1);
    expect(upstream.requests.length).toBeGreaterThan(original);

    const second = await cli(['logs', 'reindex', '--batch-size', '1'], env);
    expect(second.code).toBe(0);
    expect(second.out).toContain('Indexed 2 exchanges');
    expect(await qdrant.points()).toHaveLength(3);
  });

  test('on a terminal it draws a progress bar', async () => {
    const env = vectorEnv();
    proxy = await startTestProxy({ ...env, QDRANT_URL: await deadUrl() });
    await seed();
    const r = await cli(['logs', 'reindex', '--batch-size', '2'], env, { tty: true });
    expect(r.code).toBe(0);
    expect(r.err).toContain(`\rreindex [${'#'.repeat(20)}${'.'.repeat(10)}] 2/3 66%`);
    expect(r.err).toContain(`\rreindex [${'#'.repeat(30)}] 3/3 100%\n`);
  });

  test('--since limits what is indexed', async () => {
    const env = vectorEnv();
    proxy = await startTestProxy({ ...env, QDRANT_URL: await deadUrl() });
    await seed();
    const future = new Date(Date.now() + 3_600_000).toISOString().slice(0, 19) + 'Z';
    const r = await cli(['logs', 'reindex', '--since', future], env);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/Nothing to index/);
    expect(await qdrant.points()).toEqual([]);
  });
});

describe('oai-proxy logs prune with Qdrant', () => {
  async function ageFirstExchange(): Promise<string> {
    const old = proxy!.rows().find((r) => r.internal === 0)!;
    proxy!.running.database.sqlite
      .prepare('update exchanges set started_at = ? where id = ?')
      .run(Date.now() - 40 * 86_400_000, old.id);
    return old.id;
  }

  test("deletes the pruned exchanges' points and their index state", async () => {
    const env = vectorEnv();
    proxy = await startTestProxy(env);
    await seed();
    expect(await qdrant.points()).toHaveLength(3);
    const oldId = await ageFirstExchange();

    const r = await cli(['logs', 'prune', '--older-than', '30d'], env);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/deleted 1 exchanges/);
    const left = (await qdrant.points()).map((p) => p.payload.exchange_id);
    expect(left).toHaveLength(2);
    expect(left).not.toContain(oldId);
    const state = proxy.running.database.sqlite
      .prepare('select count(*) as n from exchange_index where exchange_id = ?')
      .get(oldId) as { n: number };
    expect(state.n).toBe(0);

    const search = await cli(['logs', 'search', 'refund', '--json'], env);
    expect(search.out).not.toContain(oldId);
  });

  test('with Qdrant down the rows are still pruned, with a warning', async () => {
    const env = vectorEnv();
    proxy = await startTestProxy(env);
    await seed();
    await ageFirstExchange();
    const r = await cli(['logs', 'prune', '--older-than', '30d'], { ...env, QDRANT_URL: await deadUrl() });
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/deleted 1 exchanges/);
    expect(r.err).toMatch(
      /warning: pruned exchanges' points could not be deleted from Qdrant .*ECONNREFUSED/,
    );
    expect(r.err).not.toContain(QDRANT_KEY);
    expect(await qdrant.points()).toHaveLength(3);
  });

  test('a key in QDRANT_URL: the rows are pruned, with a warning naming QDRANT_URL, the key masked', async () => {
    const env = vectorEnv();
    proxy = await startTestProxy(env);
    await seed();
    await ageFirstExchange();
    const { QDRANT_API_KEY: _, ...noKey } = env;
    const r = await cli(['logs', 'prune', '--older-than', '30d'], {
      ...noKey,
      QDRANT_URL: `${env.QDRANT_URL}/?api-key=${QDRANT_KEY}`,
    });
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/deleted 1 exchanges/);
    expect(r.err).toContain(
      `warning: pruned exchanges' points could not be deleted from Qdrant collection ${env.QDRANT_COLLECTION}: Invalid QDRANT_URL (environment) = ${env.QDRANT_URL}/?api-key=***: expected a URL without ?query`,
    );
    expect(r.err).not.toContain(QDRANT_KEY);
    expect(await qdrant.points()).toHaveLength(3);
  });
});

describe('internal exchanges in logs', () => {
  test('the embedding calls are hidden from `logs` unless --internal is given', async () => {
    const env = vectorEnv();
    proxy = await startTestProxy(env);
    await seed();
    const plain = await cli(['logs', '--json'], env);
    expect(plain.code).toBe(0);
    const listed = JSON.parse(plain.out) as { path: string; internal: boolean }[];
    expect(listed.map((x) => x.path)).toEqual(Array(3).fill('/v1/chat/completions'));
    const all = await cli(['logs', '--json', '--internal'], env);
    const withInternal = JSON.parse(all.out) as { path: string; internal: boolean }[];
    expect(withInternal.some((x) => x.internal && x.path === '/v1/embeddings')).toBe(true);
  });
});
