import { afterEach, describe, expect, test } from 'vitest';
import { newExchangeId } from '../../src/proxy/ids.js';
import { createPgExchangeWriter } from '../../src/storage/pg-log-store.js';
import { openPostgres } from '../../src/storage/postgres.js';
import { distinctExchange } from '../helpers/exchange-fixtures.js';
import { createTestPgDatabase, pgQuery, pgUrl, warnIfNoPg } from '../helpers/pg.js';
import { until } from '../helpers/until.js';

const cleanups: (() => Promise<unknown> | unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** A JSON chat body of about `bytes`, with escapes (read through jsonb by the search index, the slow path). */
function bigBody(bytes: number): string {
  const words: string[] = [];
  for (let n = 0, i = 0; n < bytes; i++) {
    const w = i % 9 === 0 ? `line${i % 4000}\n` : `word${i % 5000}`;
    words.push(w);
    n += w.length + 1;
  }
  return JSON.stringify({ model: 'gpt-4o', messages: [{ role: 'user', content: words.join(' ') }] });
}

warnIfNoPg();
describe.skipIf(!pgUrl)('the PostgreSQL exchange writer', () => {
  test('a batch of large rows that outlasts statement_timeout is written in smaller batches, not retried as is for ever', async () => {
    const database = await createTestPgDatabase();
    cleanups.push(() => database.drop());
    // serve's timeout is 30 s; the same with 1 s, and rows of which ~10 take longer than that to index.
    const pg = await openPostgres(database.url, { statementTimeoutMs: 1000 });
    cleanups.push(() => pg.close());
    const body = bigBody(400_000);
    const t = Date.now();
    await pgQuery(database.url, 'select length(oai_proxy_search_vector($1, $1, null))', [body]);
    const perRow = Date.now() - t;
    const n = Math.max(8, Math.ceil(3000 / Math.max(perRow, 1)));
    const errors: string[] = [];
    const writer = createPgExchangeWriter({
      db: pg.db,
      flushIntervalMs: 20,
      queueMax: 10_000,
      onError: (err) => errors.push(err.message),
    });
    cleanups.push(() => writer.close());
    // Queued while the database was away (here: all at once), then written as one batch.
    for (let i = 0; i < n; i++)
      writer.record({
        ...distinctExchange(),
        id: newExchangeId(),
        startedAt: Date.now() + i,
        internal: false,
        requestBody: body,
        responseBody: body,
        assembled: null,
      });
    const rows = await until(
      `all ${n} rows written (a row takes ~${perRow} ms to index)`,
      async () => {
        const [{ count }] = await pgQuery<{ count: string }>(database.url, 'select count(*) from exchanges');
        return Number(count) === n ? Number(count) : undefined;
      },
      30_000,
      100,
    );
    expect(rows).toBe(n);
    expect(writer.health()).toMatchObject({ database: 'ok', queued: 0, written: n, spilled: 0 });
    expect(errors.join('\n')).toMatch(/statement timeout/);
  }, 60_000);
});
