import { join } from 'node:path';
import OpenAI from 'openai';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { main } from '../../src/cli.js';
import { openDatabase } from '../../src/storage/database.js';
import type { ExchangeRecord } from '../../src/storage/exchange-record.js';
import { INSERT_EXCHANGE_SQL, toRow } from '../../src/storage/log-store.js';
import { rec } from '../helpers/logs-suite.js';
import { createTempDir } from '../helpers/temp-dir.js';
import { createTestIo, proxyWithUpstreamPerTest } from '../helpers/test-proxy.js';
import { until } from '../helpers/until.js';

// What a client or the upstream can send: colour, a window-title OSC ended by BEL, a newline to fake a
// second row, an OSC 52 clipboard write, a C1 CSI, bidi overrides and a line separator.
const MODEL = 'evil\u001b[31mRED\u001b]0;TITLE\u0007\nfake';
const USER = 'bob\u202egnp.exe\u2066x\u2069\u009b2J';
const CONTENT = 'line one\n\u001b]52;c;cHduZWQ=\u0007pwned\tok\u2028hidden\r\nline two';
// Anything a terminal would act on when printed (newline and tab are checked separately where single-line).
const RAW_CONTROL = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/;

const hostile = (id: string, o: Partial<ExchangeRecord> = {}) =>
  rec(id, {
    model: MODEL,
    upstreamModel: MODEL,
    user: USER,
    stream: true,
    responseBody: `data: {"choices":[{"delta":{"content":${JSON.stringify(CONTENT)}}}]}\n\ndata: [DONE]\n\n`,
    assembled: {
      kind: 'chat.completion',
      content: CONTENT,
      tool_calls: [],
      finish_reason: 'stop\u001b[2J',
      usage: null,
      complete: true,
    } as unknown as ExchangeRecord['assembled'],
    ...o,
  });

/** A temp database holding one exchange, made afresh before each test of the block that calls this. */
function databaseWith(record: () => ExchangeRecord) {
  let dir: ReturnType<typeof createTempDir>;
  beforeEach(async () => {
    dir = createTempDir();
    const database = await openDatabase(join(dir.path, 'proxy.db'));
    database.sqlite.prepare(INSERT_EXCHANGE_SQL).run(toRow(record()));
    await database.close();
  });
  afterEach(() => dir.cleanup());
  return { tmp: () => dir.path, db: () => join(dir.path, 'proxy.db') };
}

describe('recorded text is escaped in human output, exact in JSON', () => {
  const { tmp, db } = databaseWith(() => hostile('h1'));

  const run = async (argv: string[], env: Record<string, string> = {}) => {
    const io = createTestIo({ HOME: tmp(), ...env }, tmp());
    const code = await main([...argv, '--db', db()], io);
    expect(code, io.err()).toBe(0);
    return io.out();
  };

  test('logs: the table shows escapes, no raw controls, and the row stays one line', async () => {
    const out = await run(['logs', '-n', '1']);
    expect(out).not.toMatch(RAW_CONTROL);
    expect(out).toContain('evil\\x1b[31mRED\\x1b]0;TITLE\\x07\\nfake');
    // Header, row and borders: 5 lines (top, head, separator, row, bottom), the model not split in two.
    expect(out.trimEnd().split('\n')).toHaveLength(5);
    expect(out.split('\n').find((l) => l.includes('h1000000000'))).toContain('evil\\x1b[31m');
  });

  test('logs stats --by user: the group key is escaped', async () => {
    const out = await run(['logs', 'stats', '--by', 'user']);
    expect(out).not.toMatch(RAW_CONTROL);
    expect(out).toContain('bob\\u202egnp.exe\\u2066x\\u2069\\x9b2J');
  });

  test('logs tail: the follow line is one line with the escapes', async () => {
    const ac = new AbortController();
    const io = { ...createTestIo({ HOME: tmp() }, tmp()), signal: ac.signal };
    const done = main(['logs', 'tail', '--interval', '30', '--db', db()], io);
    await until('the backlog row on stdout', () => io.out().includes('h1000000000'));
    ac.abort();
    expect(await done, io.err()).toBe(0);
    expect(io.out()).not.toMatch(RAW_CONTROL);
    expect(io.out().trimEnd().split('\n')).toHaveLength(1);
    expect(io.out()).toContain('evil\\x1b[31mRED\\x1b]0;TITLE\\x07\\nfake');
  });

  test('logs show: summary lines and the reassembled message escaped, its newlines and tabs kept', async () => {
    const out = await run(['logs', 'show', 'h1', '--raw']);
    expect(out).not.toMatch(RAW_CONTROL);
    expect(out).toContain('model      evil\\x1b[31mRED\\x1b]0;TITLE\\x07\\nfake');
    expect(out).toContain('user       bob\\u202egnp.exe\\u2066x\\u2069\\x9b2J');
    expect(out).toContain(
      'line one\n\\x1b]52;c;cHduZWQ=\\x07pwned\tok\\u2028hidden\nline two\nfinish_reason: stop\\x1b[2J',
    );
    // The raw events are JSON-escaped already; nothing raw there either (checked above for the whole output).
    expect(out).toContain('── raw events');
  });

  test('--json, --jsonl, show --json and export keep the exact recorded values', async () => {
    const list = JSON.parse(await run(['logs', '--json']));
    expect(list[0]).toMatchObject({ model: MODEL, user: USER });
    const line = JSON.parse(await run(['logs', '--jsonl']));
    expect(line).toMatchObject({ model: MODEL, user: USER });
    const detail = JSON.parse(await run(['logs', 'show', 'h1', '--json']));
    expect(detail.assembled.content).toBe(CONTENT);
    const exported = JSON.parse(await run(['logs', 'export']));
    expect(exported).toMatchObject({ model: MODEL, user: USER });
    expect(exported.assembled.content).toBe(CONTENT);
  });
});

describe('colour: NO_COLOR and FORCE_COLOR (no-color.org)', () => {
  const { tmp, db } = databaseWith(() => rec('c1'));

  test.each([
    { tty: true, env: {}, color: true },
    { tty: false, env: {}, color: false },
    { tty: true, env: { NO_COLOR: '1' }, color: false },
    { tty: true, env: { NO_COLOR: '' }, color: true },
    { tty: false, env: { FORCE_COLOR: '1' }, color: true },
    { tty: false, env: { FORCE_COLOR: '0' }, color: false },
    { tty: true, env: { NO_COLOR: '1', FORCE_COLOR: '1' }, color: false },
  ])(
    'stdout a terminal: $tty, env $env → coloured: $color (list and stats tables)',
    async ({ tty, env, color }) => {
      for (const argv of [['logs'], ['logs', 'stats']]) {
        const io = createTestIo({ HOME: tmp(), ...env }, tmp());
        io.stdout.isTTY = tty;
        expect(await main([...argv, '--db', db()], io), io.err()).toBe(0);
        expect(io.out()).toContain('gpt-4o');
        expect(io.out().includes('\u001b['), io.out()).toBe(color);
      }
    },
  );
});

describe('through a real serve: a hostile client and a hostile upstream', () => {
  const setup = proxyWithUpstreamPerTest();

  test('the model the client sent and the stream the upstream sent print escaped in logs and logs show', async () => {
    const { upstream, proxy } = await setup();
    upstream.on('/v1/chat/completions', (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      const delta = (d: Record<string, unknown>, finish: string | null) =>
        `data: ${JSON.stringify({ id: 'c1', object: 'chat.completion.chunk', created: 1, model: 'gpt-4o', choices: [{ index: 0, delta: d, finish_reason: finish }] })}\n\n`;
      res.write(delta({ role: 'assistant', content: CONTENT }, null));
      res.write(delta({}, 'stop'));
      res.end('data: [DONE]\n\n');
    });
    const client = new OpenAI({
      apiKey: 'sk-client-key-000000000000',
      baseURL: `${proxy.url}/v1`,
      maxRetries: 0,
    });
    const stream = await client.chat.completions.create({
      model: MODEL,
      user: USER,
      messages: [{ role: 'user', content: 'hi' }],
      stream: true,
    });
    let received = '';
    for await (const c of stream) received += c.choices[0]?.delta?.content ?? '';
    expect(received).toBe(CONTENT);
    const [row] = await proxy.waitForRows(1);
    expect(row.model).toBe(MODEL);

    const run = async (argv: string[]) => {
      const io = createTestIo({ HOME: proxy.dir }, proxy.dir);
      expect(await main([...argv, '--db', proxy.dbPath], io), io.err()).toBe(0);
      return io.out();
    };
    const table = await run(['logs']);
    expect(table).not.toMatch(RAW_CONTROL);
    expect(table).toContain('evil\\x1b[31mRED\\x1b]0;TITLE\\x07\\nfake');
    const shown = await run(['logs', 'show', row.id]);
    expect(shown).not.toMatch(RAW_CONTROL);
    expect(shown).toContain('user       bob\\u202egnp.exe\\u2066x\\u2069\\x9b2J');
    expect(shown).toContain('line one\n\\x1b]52;c;cHduZWQ=\\x07pwned\tok\\u2028hidden\nline two');
    expect(JSON.parse(await run(['logs', 'show', row.id, '--json'])).assembled.content).toBe(CONTENT);
  });
});
