import { afterEach, describe, expect, test } from 'vitest';
import { main } from '../../src/cli.js';
import { createFakeUpstream } from '../helpers/fake-upstream.js';
import { createTestPgDatabase, pgUrl, warnIfNoPg } from '../helpers/pg.js';
import { createTestIo, startTestProxy } from '../helpers/test-proxy.js';
import { until } from '../helpers/until.js';

// What JSON.parse would change: a seed past 2^53, `1.0`, a duplicate key (JSON.parse keeps the last).
const TESTER_BODY =
  '{"model":"gpt-4o-mini","seed":12345678901234567890,"temperature":1.0,' +
  '"messages":[{"role":"user","content":"compact"}],"user":"dup","user":"dup2"}';
// Pretty-printed with CRLF, and a raw U+2028 inside a string (valid JSON, a line break to some readers).
const PRETTY_BODY = [
  '{',
  '  "model": "gpt-4o-mini",',
  '  "seed": 12345678901234567890,',
  '  "temperature": 1.0,',
  '  "messages": [ { "role": "user", "content": "pretty\u2028line" } ],',
  '  "user": "dup",',
  '  "user": "dup2"',
  '}',
].join('\r\n');
// The upstream answers pretty-printed too, with a number JSON.parse would round.
const RESPONSE_BODY = `{
  "id": "chatcmpl-exact",
  "object": "chat.completion",
  "created": 1700000000,
  "model": "gpt-4o-mini",
  "big": 98765432109876543210,
  "ratio": 2.50,
  "choices": [ { "index": 0, "message": { "role": "assistant", "content": "ok" }, "finish_reason": "stop" } ],
  "usage": { "prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2 }
}`;

const cleanups: (() => Promise<unknown> | unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** Send both bodies through a real proxy recording to `databaseUrl` (a file path or a PostgreSQL URL). */
async function recordThroughProxy(databaseUrl?: string): Promise<{ db: string; home: string }> {
  const upstream = await createFakeUpstream();
  cleanups.push(() => upstream.close());
  upstream.on('/v1/chat/completions', (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(RESPONSE_BODY);
  });
  const proxy = await startTestProxy({
    OPENAI_BASE_URL: upstream.baseUrl,
    ...(databaseUrl ? { DATABASE_URL: databaseUrl } : {}),
  });
  cleanups.push(() => proxy.close());
  for (const body of [TESTER_BODY, PRETTY_BODY]) {
    const res = await fetch(`${proxy.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer sk-client-0000000000' },
      body,
    });
    expect(res.status).toBe(200);
    expect(await res.text()).toBe(RESPONSE_BODY);
  }
  await proxy.flush();
  const db = databaseUrl ?? proxy.dbPath;
  await until(
    'both exchanges recorded',
    async () => (await logs(db, proxy.dir, 'export')).split('\n').length === 3,
  );
  return { db, home: proxy.dir };
}

async function logs(db: string, home: string, ...argv: string[]): Promise<string> {
  const io = createTestIo({ HOME: home }, home);
  const code = await main(['logs', ...argv, '--db', db], io);
  expect(code, io.err()).toBe(0);
  return io.out();
}

function exactBodiesSuite(name: string, database: () => Promise<string | undefined>): void {
  describe(name, () => {
    test('show --json, show, export jsonl and csv carry the bodies as recorded: digits, 1.0, both "user" members', async () => {
      const { db, home } = await recordThroughProxy(await database());

      // JSON lines: one exchange a line, each line valid JSON, bodies spliced in as recorded.
      const jsonl = await logs(db, home, 'export');
      const lines = jsonl.trimEnd().split('\n');
      expect(lines).toHaveLength(2);
      const records = lines.map((l) => JSON.parse(l));
      expect(records.map((r) => r.request_body.messages[0].content)).toEqual(['compact', 'pretty\u2028line']);
      expect(lines[0]).toContain(`"request_body":${TESTER_BODY},`);
      // The pretty body's CRLFs (whitespace between tokens) became spaces; its U+2028 is escaped, not raw.
      expect(lines[1]).toContain(
        '"request_body":{    "model": "gpt-4o-mini",    "seed": 12345678901234567890,    "temperature": 1.0,',
      );
      expect(lines[1]).toContain('"pretty\\u2028line"');
      expect(lines[1]).toContain('"user": "dup",    "user": "dup2"  }');
      expect(jsonl).not.toMatch(/[\r\u2028\u2029]/);
      for (const l of lines) {
        expect(l).toContain('"big": 98765432109876543210,');
        expect(l).toContain('"ratio": 2.50,');
      }

      // CSV: the recorded text, as before.
      const csv = await logs(db, home, 'export', '--format', 'csv');
      expect(csv).toContain(`"${TESTER_BODY.replace(/"/g, '""')}"`);
      expect(csv).toContain(`"${PRETTY_BODY.replace(/"/g, '""')}"`);

      const [compactId, prettyId] = records.map((r) => r.id as string);
      for (const id of [compactId, prettyId]) {
        // show --json: indented, every token as recorded.
        const shown = await logs(db, home, 'show', id, '--json');
        expect(JSON.parse(shown).id).toBe(id);
        expect(shown).toContain(
          '  "request_body": {\n    "model": "gpt-4o-mini",\n    "seed": 12345678901234567890,\n    "temperature": 1.0,',
        );
        expect(shown).toContain('    "user": "dup",\n    "user": "dup2"\n  },\n  "request_bytes"');
        expect(shown).toContain('    "big": 98765432109876543210,\n    "ratio": 2.50,');

        // show: the same numbers and keys, for people.
        const human = await logs(db, home, 'show', id);
        expect(human).toContain('  "seed": 12345678901234567890,\n  "temperature": 1.0,');
        expect(human).toContain('  "user": "dup",\n  "user": "dup2"\n}');
        expect(human).toContain('  "big": 98765432109876543210,\n  "ratio": 2.50,');
      }
    });
  });
}

exactBodiesSuite('SQLite', async () => undefined);

warnIfNoPg();
describe.skipIf(!pgUrl)('PostgreSQL (OAI_PROXY_TEST_PG_URL)', () => {
  exactBodiesSuite('through serve', async () => {
    const db = await createTestPgDatabase();
    cleanups.push(() => db.drop());
    return db.url;
  });
});
