import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { main } from '../../src/cli.js';
import { openLogsDatabase, registerLogsCommand } from '../../src/commands/logs.js';
import type { ExchangeRecord } from '../../src/storage/exchange-record.js';
import { createExchangeFollower } from '../../src/storage/log-queries.js';
import { createTempDir } from './temp-dir.js';
import { createTestIo } from './test-proxy.js';
import { until } from './until.js';

/** A database `oai-proxy logs` reads, as the shared logs suite needs it. */
export interface LogsTestDatabase {
  /** What `--db` gets: a file path or a postgres:// URL. */
  db: string;
  /** Record exchanges as `serve` would (on SQLite also indexed for --grep). */
  seed(records: ExchangeRecord[]): Promise<void>;
  /** Record one exchange from another process, as a running `serve` would. */
  writeFromAnotherProcess(record: ExchangeRecord): Promise<void>;
  cleanup(): Promise<void>;
}

export const NOW = Date.now();
const MIN = 60_000;
const HOUR = 60 * MIN;
const DAY = 24 * HOUR;

/** A recorded exchange with sensible defaults; `id` must be 26 chars of [0-9a-z]. */
export function rec(id: string, o: Partial<ExchangeRecord> = {}): ExchangeRecord {
  return {
    id: id.padEnd(26, '0'),
    startedAt: NOW - MIN,
    durationMs: 100,
    ttfbMs: 50,
    method: 'POST',
    path: '/v1/chat/completions',
    query: null,
    clientAddr: '127.0.0.1',
    status: 200,
    requestHeadersJson: '{"content-type":"application/json","authorization":"[redacted]"}',
    responseHeadersJson: '{"content-type":"application/json"}',
    requestBody: JSON.stringify({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hello there' }] }),
    requestBytes: 80,
    requestTruncated: false,
    responseBody: JSON.stringify({ choices: [{ message: { content: 'general kenobi' } }] }),
    responseBytes: 60,
    responseTruncated: false,
    model: 'gpt-4o',
    upstreamModel: 'gpt-4o',
    upstream: 'default',
    modelUnknown: false,
    stream: false,
    promptTokens: 10,
    completionTokens: 5,
    totalTokens: 15,
    user: null,
    error: null,
    errorMessage: null,
    assembled: null,
    internal: false,
    ...o,
  };
}

/** Run a node script in a child process (`argv` after the script), failing on a non-zero exit. */
export function runNode(script: string, argv: string[]): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const child = spawn(process.execPath, ['-e', script, ...argv], { stdio: 'inherit' });
    child.on('exit', (c) => (c === 0 ? resolve() : reject(new Error(`writer exited ${c}`))));
  });
}

const STREAM_ASSEMBLED = {
  kind: 'chat.completion' as const,
  content: 'the streamed aardvark answer',
  tool_calls: [{ id: 'call_1', type: 'function', name: 'lookup', arguments: '{"q":"zebra"}' }],
  finish_reason: 'tool_calls',
  usage: { prompt_tokens: 9, completion_tokens: 4, total_tokens: 13 },
  complete: true,
  events: 7,
};

/** Seven rows covering every filter. Ids are chosen so prefixes are unique, shared or unknown. */
export function standardRows(): ExchangeRecord[] {
  return [
    rec('a1', { startedAt: NOW - 10 * MIN, user: 'alice' }),
    rec('a2', {
      startedAt: NOW - 2 * HOUR,
      model: 'gpt-4',
      upstreamModel: 'gpt-4-0613',
      status: 429,
      durationMs: 300,
      promptTokens: null,
      completionTokens: null,
      totalTokens: null,
    }),
    rec('b1', {
      startedAt: NOW - 3 * DAY,
      model: 'fast',
      upstreamModel: 'gpt-4',
      stream: true,
      ttfbMs: 40,
      durationMs: 900,
      responseBody: 'data: {"choices":[{"delta":{"content":"the"}}]}\n\ndata: [DONE]\n\n',
      assembled: STREAM_ASSEMBLED,
      user: 'bob',
    }),
    rec('b2', {
      startedAt: NOW - 5 * MIN,
      status: null,
      error: 'upstream_timeout',
      errorMessage: 'no answer in 60s',
      responseBody: null,
      responseHeadersJson: null,
      durationMs: 60000,
      promptTokens: null,
      completionTokens: null,
      totalTokens: null,
    }),
    rec('c1', {
      startedAt: NOW - 40 * DAY,
      path: '/v1/embeddings',
      model: 'text-embedding-3-small',
      upstreamModel: 'text-embedding-3-small',
      status: 500,
      durationMs: 50,
    }),
    rec('c2', { startedAt: NOW - 1 * MIN, internal: true, path: '/v1/embeddings', model: 'internal-embed' }),
    rec('d1', {
      startedAt: NOW - 30 * MIN,
      // As Python's json.dumps sends it: the newline and the tab escaped, and the é too (`\u00e9`).
      requestBody: JSON.stringify({
        model: 'gpt-4o',
        messages: [{ role: 'user', content: 'Say "hi", please,\nnow\tcafé' }],
      }).replace('é', '\\u00e9'),
    }),
  ];
}

/**
 * `oai-proxy logs` end to end, every subcommand, against whatever database `create` makes: the same
 * seeded rows and the same assertions on SQLite and PostgreSQL (like the storage contract suite).
 */
export function logsSuite(name: string, create: () => Promise<LogsTestDatabase>): void {
  describe(`oai-proxy logs: ${name}`, () => {
    let tmp: { path: string; cleanup(): void };
    let database: LogsTestDatabase;
    const seed = (records: ExchangeRecord[]) => database.seed(records);

    async function logs(...argv: string[]) {
      const io = createTestIo({ HOME: tmp.path }, tmp.path);
      const code = await main(['logs', ...argv, '--db', database.db], io);
      return { code, out: io.out(), err: io.err() };
    }

    async function ids(...argv: string[]): Promise<string[]> {
      const r = await logs(...argv, '--json');
      expect(r.code, r.err).toBe(0);
      return (JSON.parse(r.out) as { id: string }[]).map((x) => x.id.replace(/0+$/, ''));
    }

    beforeEach(async () => {
      tmp = createTempDir();
      database = await create();
    });
    afterEach(async () => {
      await database.cleanup();
      tmp.cleanup();
    });

    test('--grep newest first over many matches, recorded out of start order', async () => {
      // 700 matches; each row is recorded when its exchange ends, so a long exchange that started early is
      // recorded late. The listing is by start time whatever the recording order.
      const records: ExchangeRecord[] = [];
      for (let i = 0; i < 700; i++) {
        const long = i % 50 === 0 || i === 697;
        records.push(
          rec(`g${String(i).padStart(4, '0')}`, {
            startedAt: NOW - HOUR + i * 1000 - (long ? 40_000 : 0),
            durationMs: long ? 45_000 : 200,
            responseBody: JSON.stringify({ choices: [{ message: { content: `needle number ${i}` } }] }),
          }),
        );
      }
      // Recorded in end-time order, as serve does.
      records.sort((a, b) => a.startedAt + a.durationMs - (b.startedAt + b.durationMs));
      await seed(records);
      const expected = [...records]
        .sort((a, b) => b.startedAt - a.startedAt)
        .slice(0, 5)
        .map((r) => r.id.replace(/0+$/, ''));
      expect(await ids('--grep', 'needle', '--limit', '5')).toEqual(expected);
      const inWindow = records.filter((r) => r.startedAt >= NOW - HOUR + 600_000).length;
      const r = await logs(
        '--grep',
        'needle',
        '--since',
        new Date(NOW - HOUR + 600_000).toISOString(),
        '--limit',
        '0',
        '--json',
      );
      expect(JSON.parse(r.out)).toHaveLength(inWindow);
    });

    test('--grep prefix with punctuation in the last word finds the same rows on both engines', async () => {
      const says = (content: string) => JSON.stringify({ model: 'x', messages: [{ role: 'user', content }] });
      const contents = [
        'try gpt-4o today',
        'pinned gpt-4-0613 here',
        'write to bob@example.com soon',
        'we hit the rate limit again',
        'gpt 5 and rates with limits, bob at example',
        'the gpt-4o-mini model',
      ];
      await seed(
        contents.map((content, i) =>
          rec(`p${i + 1}`, {
            startedAt: NOW - (i + 1) * MIN,
            requestBody: says(content),
            responseBody: JSON.stringify({ choices: [{ message: { content: 'ok' } }] }),
          }),
        ),
      );
      expect(await ids('--grep', 'gpt-4*')).toEqual(['p1', 'p2', 'p6']);
      expect(await ids('--grep', 'gpt-4o*')).toEqual(['p1', 'p6']);
      expect(await ids('--grep', 'GPT-4O*')).toEqual(['p1', 'p6']);
      expect(await ids('--grep', 'try gpt-4*')).toEqual(['p1']);
      expect(await ids('--grep', 'the gpt-4o-m*')).toEqual(['p6']);
      expect(await ids('--grep', 'bob@ex*')).toEqual(['p3']);
      expect(await ids('--grep', 'rate lim*')).toEqual(['p4']);
      expect(await ids('--grep', "it's a \\ quote'*")).toEqual([]);
      expect(await ids('--grep', `${'x'.repeat(3000)}*`)).toEqual([]);
    });

    test('--grep with no letter or digit exits 2 saying it needs text; emoji beside words still match', async () => {
      const says = (content: string) => JSON.stringify({ model: 'x', messages: [{ role: 'user', content }] });
      await seed([
        rec('e1', { requestBody: says("party 😀 time (it's late)") }),
        rec('e2', { startedAt: NOW - MIN, requestBody: says('quiet evening') }),
      ]);
      for (const query of ['😀', "'", '(', '"', '" * "', '—…']) {
        const r = await logs('--grep', query);
        expect(r.err, query).toBe(
          'oai-proxy: --grep needs some text to search for, e.g. --grep "rate limit"\n',
        );
        expect(r.code).toBe(2);
        expect((await logs('export', '--grep', query)).code).toBe(2);
      }
      expect(await ids('--grep', 'party 😀 time')).toEqual(['e1']);
      expect(await ids('--grep', '😀 party')).toEqual(['e1']);
      expect(await ids('--grep', "(it's")).toEqual(['e1']);
    });

    test('an n > 1 stream: --grep finds the text of any choice, show lists every choice', async () => {
      const choices = [
        { index: 0, content: 'first platypus', tool_calls: [], finish_reason: 'stop' },
        {
          index: 1,
          content: 'second wombat',
          tool_calls: [{ id: 'call_9', type: 'function', name: 'lookup', arguments: '{"q":"quokka"}' }],
          finish_reason: 'tool_calls',
        },
      ];
      await seed([
        rec('n1', {
          stream: true,
          responseBody: 'data: [DONE]\n\n',
          assembled: {
            ...STREAM_ASSEMBLED,
            content: 'first platypus',
            tool_calls: [],
            finish_reason: 'stop',
            choices,
          },
        }),
        rec('n2', { stream: true, responseBody: 'data: [DONE]\n\n', assembled: STREAM_ASSEMBLED }),
      ]);
      expect(await ids('--grep', 'platypus')).toEqual(['n1']);
      expect(await ids('--grep', 'wombat')).toEqual(['n1']);
      expect(await ids('--grep', 'quokka')).toEqual(['n1']);
      const json = JSON.parse((await logs('show', 'n1', '--json')).out);
      expect(json.assembled.choices).toEqual(choices);
      const human = (await logs('show', 'n1')).out;
      expect(human).toMatch(/── choice 0\nfirst platypus\nfinish_reason: stop\n── choice 1\nsecond wombat\n/);
      expect(human).toContain('tool call: lookup({"q":"quokka"})');
      // One choice: as before, no `choices` and no choice headings.
      expect(JSON.parse((await logs('show', 'n2', '--json')).out).assembled).not.toHaveProperty('choices');
      expect((await logs('show', 'n2')).out).not.toContain('── choice');
    });

    test('an embeddings answer is searched without its vectors: its input, model and usage are found, a float is not', async () => {
      const floats = [0.0123456789, -0.0456789123, 0.0789123456];
      const answer = (embedding: unknown) =>
        JSON.stringify({
          object: 'list',
          data: [{ object: 'embedding', index: 0, embedding }],
          model: 'text-embedding-3-small',
          usage: { prompt_tokens: 4, total_tokens: 4 },
        });
      await seed([
        rec('e1', {
          path: '/v1/embeddings',
          requestBody: JSON.stringify({ model: 'text-embedding-3-small', input: 'capybara facts' }),
          responseBody: answer(floats),
        }),
        rec('e2', {
          path: '/v1/embeddings',
          requestBody: JSON.stringify({ model: 'text-embedding-3-small', input: 'axolotl facts' }),
          responseBody: answer(Buffer.from(new Float32Array(floats).buffer).toString('base64')),
        }),
        // Ollama's /api/embed: the vectors under `embeddings`.
        rec('e3', {
          path: '/api/embed',
          requestBody: JSON.stringify({ model: 'nomic-embed-text', input: 'okapi facts' }),
          responseBody: JSON.stringify({ model: 'nomic-embed-text', embeddings: [floats] }),
        }),
        // llama.cpp's /embedding: an array of {index, embedding}, written after a newline.
        rec('e4', {
          path: '/embedding',
          requestBody: JSON.stringify({ content: 'quokka facts' }),
          responseBody: `\n${JSON.stringify([{ index: 0, embedding: [floats] }], null, 2)}`,
        }),
        // A chat answer that talks about embeddings keeps every word, numbers too.
        rec('c1', {
          responseBody: JSON.stringify({
            choices: [{ message: { content: 'an embedding such as 0.0123456789 is a vector' } }],
          }),
        }),
      ]);
      expect(await ids('--grep', 'capybara')).toEqual(['e1']);
      expect(await ids('--grep', 'okapi')).toEqual(['e3']);
      expect(await ids('--grep', 'quokka')).toEqual(['e4']);
      expect((await ids('--grep', 'text-embedding-3-small')).sort()).toEqual(['e1', 'e2']);
      expect(await ids('--grep', 'nomic-embed-text')).toEqual(['e3']);
      // The float is in the chat answer's words only.
      expect(await ids('--grep', '0.0123456789')).toEqual(['c1']);
      expect(await ids('--grep', '0.0456789123')).toEqual([]);
      const base64Word = Buffer.from(new Float32Array(floats).buffer)
        .toString('base64')
        .split(/[^A-Za-z0-9]/)[0]!;
      expect(await ids('--grep', base64Word)).toEqual([]);
      // Stored as sent all the same.
      expect(JSON.parse((await logs('show', 'e1', '--json')).out).response_body).toEqual(
        JSON.parse(answer(floats)),
      );
    });

    test('show elides long base64 values (images, audio, data: URLs); --json keeps them', async () => {
      const image = 'iVBORw0KGgo'.repeat(1000);
      const sent = `data:image/png;base64,${'QUJD'.repeat(100)}`;
      await seed([
        rec('i1', {
          path: '/v1/images/generations',
          requestBody: JSON.stringify({
            model: 'gpt-4o',
            messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: sent } }] }],
          }),
          responseBody: JSON.stringify({
            data: [{ b64_json: image, revised_prompt: 'a cat' }],
            digest: 'ab12'.repeat(80),
          }),
        }),
      ]);
      const human = (await logs('show', 'i1')).out;
      expect(human).toContain('"b64_json": "[base64, 11,000 characters: see --json]"');
      expect(human).toContain('"url": "data:image/png;base64,[base64, 400 characters: see --json]"');
      expect(human).toContain('"revised_prompt": "a cat"');
      expect(human).toContain(`"digest": "${'ab12'.repeat(80)}"`); // hex is not base64
      expect(human).not.toContain('iVBORw0KGgoiVBORw0KGgo');
      const json = JSON.parse((await logs('show', 'i1', '--json')).out);
      expect(json.response_body.data[0].b64_json).toBe(image);
      expect(json.request_body.messages[0].content[0].image_url.url).toBe(sent);
    });

    test('a model let through unknown (ALLOW_UNKNOWN_MODELS) is marked in the table, show, --json and export; --unknown-models selects it', async () => {
      const unknown = { model: 'my-own-model', upstreamModel: 'my-own-model', modelUnknown: true };
      await seed([
        rec('u1', { startedAt: NOW - 2 * MIN, ...unknown }),
        rec('k1', { startedAt: NOW - 3 * MIN }),
        // In a closed hour: on SQLite `stats` would read it from the hourly rollups, which know no models.
        rec('u2', { startedAt: NOW - 3 * HOUR, ...unknown }),
        rec('k2', { startedAt: NOW - 3 * HOUR - MIN }),
      ]);
      expect(await ids()).toEqual(['u1', 'k1', 'u2', 'k2']);
      expect(await ids('--unknown-models')).toEqual(['u1', 'u2']);
      expect(await ids('--unknown-models', '--since', '1h')).toEqual(['u1']);
      expect(await ids('--unknown-models', '--model', 'gpt-4o')).toEqual([]);

      const listed = JSON.parse((await logs('--json')).out);
      expect(listed.map((r: any) => [r.model, r.model_unknown])).toEqual([
        ['my-own-model', true],
        ['gpt-4o', false],
        ['my-own-model', true],
        ['gpt-4o', false],
      ]);
      const table = (await logs()).out.split('\n');
      expect(table.find((l) => l.includes('u10000000000'))).toMatch(/│ my-own-model \(unknown\)\s+│ 200/);
      expect(table.find((l) => l.includes('k10000000000'))).not.toContain('unknown');

      const shown = await logs('show', 'u1');
      expect(shown.code, shown.err).toBe(0);
      expect(shown.out).toContain(
        'model      my-own-model  via default  (unknown: not in the model registry, let through)\n',
      );
      expect((await logs('show', 'k1')).out).toContain('model      gpt-4o  via default\n');
      expect(JSON.parse((await logs('show', 'u1', '--json')).out)).toMatchObject({
        model: 'my-own-model',
        model_unknown: true,
      });
      expect(JSON.parse((await logs('show', 'k1', '--json')).out).model_unknown).toBe(false);

      const exported = (await logs('export', '--unknown-models')).out
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l));
      expect(exported.map((l) => [l.id.replace(/0+$/, ''), l.model_unknown])).toEqual([
        ['u2', true],
        ['u1', true],
      ]);
      const csv = parseCsv((await logs('export', '--format', 'csv')).out);
      // Appended: the columns before it keep their places.
      expect(csv[0]).toEqual([
        'id',
        'time',
        'method',
        'path',
        'status',
        'model',
        'upstream_model',
        'upstream',
        'stream',
        'duration_ms',
        'ttfb_ms',
        'prompt_tokens',
        'completion_tokens',
        'total_tokens',
        'user',
        'error',
        'error_message',
        'internal',
        'request_body',
        'response_body',
        'assembled_content',
        'model_unknown',
      ]);
      expect(csv.slice(1).map((r) => [r[0].replace(/0+$/, ''), r[21]])).toEqual([
        ['k2', 'false'],
        ['u2', 'true'],
        ['k1', 'false'],
        ['u1', 'true'],
      ]);

      const stats = JSON.parse((await logs('stats', '--unknown-models', '--json')).out);
      expect(stats.map((g: any) => [g.key, g.requests])).toEqual([['my-own-model', 2]]);
      const io = createTestIo({ HOME: tmp.path }, tmp.path);
      expect(await main(['logs', '--help'], io)).toBe(0);
      expect(io.out().replace(/\s+/g, ' ')).toContain(
        '--unknown-models only requests for models not in the registry',
      );
    });

    describe('logs listing', () => {
      beforeEach(() => seed(standardRows()));

      test('newest first, internal rows hidden unless --internal', async () => {
        expect(await ids()).toEqual(['b2', 'a1', 'd1', 'a2', 'b1', 'c1']);
        expect(await ids('--internal')).toEqual(['c2', 'b2', 'a1', 'd1', 'a2', 'b1', 'c1']);
        expect(await ids('--order', 'asc', '--limit', '2')).toEqual(['c1', 'b1']);
      });

      test.each([
        [
          ['--model', 'gpt-4'],
          ['a2', 'b1'],
        ],
        [['--model', 'fast'], ['b1']],
        [
          ['--since', '1h'],
          ['b2', 'a1', 'd1'],
        ],
        [
          ['--since', '7d', '--until', '1h'],
          ['a2', 'b1'],
        ],
        [['--until', new Date(NOW - 30 * DAY).toISOString()], ['c1']],
        [
          ['--status', '200'],
          ['a1', 'd1', 'b1'],
        ],
        [['--status', '4xx'], ['a2']],
        [['--status', '5xx'], ['c1']],
        [['--status', 'error'], ['b2']],
        [
          ['--status', '4xx,error'],
          ['b2', 'a2'],
        ],
        [['--path', '/v1/emb'], ['c1']],
        [['--user', 'alice'], ['a1']],
        [['--stream'], ['b1']],
        [
          ['--no-stream', '--since', '1h'],
          ['b2', 'a1', 'd1'],
        ],
        [
          ['--grep', 'kenobi', '--since', '1h'],
          ['a1', 'd1'],
        ],
        [['--grep', 'aardvark'], ['b1']],
        [['--grep', 'zebra'], ['b1']],
        [['--grep', 'aard*'], ['b1']],
        [['--grep', 'hi please'], ['d1']],
        // Words after an escaped newline or tab, and escaped non-ASCII, as the body says them.
        [['--grep', 'now'], ['d1']],
        [['--grep', 'café'], ['d1']],
        [['--grep', 'please now café'], ['d1']],
        [['--grep', 'nothing-like-this'], []],
        [['--model', 'gpt-4o', '--since', '1h', '--status', '200', '--user', 'alice'], ['a1']],
      ])('filter %j', async (argv, expected) => {
        expect(await ids(...argv)).toEqual(expected);
      });

      test('--status error takes every exchange without a complete answer, one cut at shutdown too', async () => {
        await seed([
          rec('e1', { startedAt: NOW - 2 * MIN, status: null, error: 'proxy_shutdown', errorMessage: 'cut' }),
          rec('e2', { startedAt: NOW - 3 * MIN, error: 'client_aborted', errorMessage: 'gone' }),
          // The client's body stopped arriving: answered 408 by the proxy, never by the upstream.
          rec('e3', {
            startedAt: NOW - 4 * MIN,
            status: 408,
            error: 'client_body_timeout',
            errorMessage: 'stalled',
          }),
        ]);
        expect(await ids('--status', 'error')).toEqual(['e1', 'e2', 'e3', 'b2']);
      });

      test('--json fields are the documented stable set', async () => {
        const r = await logs('--json', '--stream');
        const [row] = JSON.parse(r.out);
        expect(Object.keys(row)).toEqual([
          'id',
          'time',
          'method',
          'path',
          'status',
          'model',
          'upstream_model',
          'upstream',
          'stream',
          'duration_ms',
          'ttfb_ms',
          'prompt_tokens',
          'completion_tokens',
          'total_tokens',
          'user',
          'error',
          'error_message',
          'internal',
          'model_unknown',
        ]);
        expect(row).toMatchObject({
          time: new Date(NOW - 3 * DAY).toISOString(),
          model: 'fast',
          upstream_model: 'gpt-4',
          stream: true,
          duration_ms: 900,
          ttfb_ms: 40,
          user: 'bob',
          internal: false,
          model_unknown: false,
        });
      });

      test('--jsonl prints one object per line; no match prints nothing (or []) and exits 0', async () => {
        const r = await logs('--jsonl', '--since', '1h');
        expect(r.code).toBe(0);
        expect(
          r.out
            .trim()
            .split('\n')
            .map((l) => JSON.parse(l).status),
        ).toEqual([null, 200, 200]);
        expect(await logs('--jsonl', '--user', 'nobody')).toMatchObject({ code: 0, out: '' });
        expect(await logs('--json', '--user', 'nobody')).toMatchObject({ code: 0, out: '[]\n' });
        expect(await logs('--user', 'nobody')).toMatchObject({ code: 0, out: '' });
      });

      test('the table shows time, short id, model alias → actual, status, duration, tokens, stream, error', async () => {
        const r = await logs('--since', '7d');
        expect(r.code).toBe(0);
        const lines = r.out.split('\n');
        expect(lines[1]).toMatch(
          /time.*id.*method.*path.*model.*status.*duration.*tokens in\/out.*stream.*error/,
        );
        const b1 = lines.find((l) => l.includes('b10000000000'))!;
        expect(b1).toMatch(/POST.*\/v1\/chat\/completions.*fast → gpt-4.*200.*900ms.*10\/5.*stream/);
        expect(lines.find((l) => l.includes('b20000000000'))).toMatch(/│ -\s+│ 1m00s.*upstream_timeout/);
      });

      test.each([
        [['--since', 'yesterday'], /--since "yesterday" is neither a duration/],
        [['--until', '5 parsecs'], /--until/],
        [['--status', '2xxx'], /--status "2xxx"/],
        [['--limit', '-3'], /--limit/],
        [['--order', 'sideways'], /--order/],
        [['--json', '--jsonl'], /exclusive/],
        [['--since', '1h', '--until', '2h'], /not before/],
      ])('bad arguments %j exit 2 with the reason', async (argv, message) => {
        const r = await logs(...argv);
        expect(r.code).toBe(2);
        expect(r.err).toMatch(message);
        expect(r.out).toBe('');
      });
    });

    describe('logs show', () => {
      beforeEach(() => seed(standardRows()));

      test('a unique prefix shows headers (redacted) and pretty bodies', async () => {
        const r = await logs('show', 'A1');
        expect(r.code, r.err).toBe(0);
        expect(r.out).toContain(`exchange   ${'a1'.padEnd(26, '0')}`);
        expect(r.out).toContain('authorization: [redacted]');
        expect(r.out).toContain('"content": "hello there"');
        expect(r.out).toContain('"content": "general kenobi"');
      });

      test('a stream shows the reassembled message first, raw events with --raw', async () => {
        let r = await logs('show', 'b1');
        expect(r.out.indexOf('the streamed aardvark answer')).toBeGreaterThan(
          r.out.indexOf('reassembled message'),
        );
        expect(r.out).toContain('tool call: lookup({"q":"zebra"})');
        expect(r.out).not.toContain('data: [DONE]');
        r = await logs('show', 'b1', '--raw');
        expect(r.out).toContain('data: [DONE]');
      });

      test('--json gives the whole record with parsed bodies and the assembled message', async () => {
        const r = await logs('show', 'b1', '--json');
        const d = JSON.parse(r.out);
        expect(d).toMatchObject({
          id: 'b1'.padEnd(26, '0'),
          stream: true,
          request_headers: { authorization: '[redacted]' },
          request_body: { model: 'gpt-4o' },
          response_body: expect.stringContaining('data: [DONE]'),
          assembled: {
            content: 'the streamed aardvark answer',
            finish_reason: 'tool_calls',
            usage: { total_tokens: 13 },
            tool_calls: [{ name: 'lookup' }],
          },
        });
        const a1 = JSON.parse((await logs('show', 'a1', '--json')).out);
        expect(a1.response_body).toEqual({ choices: [{ message: { content: 'general kenobi' } }] });
        expect(a1.assembled).toBeNull();
      });

      test('an ambiguous prefix lists the candidates and exits 1; an unknown id exits 1', async () => {
        let r = await logs('show', 'b');
        expect(r.code).toBe(1);
        expect(r.err).toContain('matches several exchanges');
        expect(r.err).toContain('b1'.padEnd(26, '0'));
        expect(r.err).toContain('b2'.padEnd(26, '0'));
        expect(r.out).toBe('');
        r = await logs('show', 'zz');
        expect(r.code).toBe(1);
        expect(r.err).toMatch(/No exchange with id or prefix "zz"/);
      });
    });

    describe('logs stats', () => {
      test('figures per model match a hand computation', async () => {
        // gpt-4o: durations 100..1000 (10 rows), one 500 error, ttfb on the 4 streamed rows.
        const rows = Array.from({ length: 10 }, (_, i) =>
          rec(`s${i}`, {
            startedAt: NOW - (i + 1) * MIN,
            durationMs: (i + 1) * 100,
            status: i === 9 ? 500 : 200,
            stream: i < 4,
            ttfbMs: i < 4 ? (i + 1) * 10 : 999,
            promptTokens: 10,
            completionTokens: i,
          }),
        );
        rows.push(
          rec('t1', {
            model: 'gpt-4',
            durationMs: 70,
            status: null,
            error: 'upstream_reset',
            promptTokens: null,
            completionTokens: null,
          }),
        );
        rows.push(rec('t2', { startedAt: NOW - 20 * DAY, model: 'gpt-4', durationMs: 5 }));
        await seed(rows);
        const r = await logs('stats', '--since', '7d', '--json');
        expect(r.code, r.err).toBe(0);
        expect(JSON.parse(r.out)).toEqual([
          {
            key: 'gpt-4o',
            requests: 10,
            errors: 1,
            error_rate: 0.1,
            prompt_tokens: 100,
            completion_tokens: 45,
            p50_ms: 500,
            p95_ms: 1000,
            p99_ms: 1000,
            ttfb_p50_ms: 20,
            ttfb_p95_ms: 40,
          },
          {
            key: 'gpt-4',
            requests: 1,
            errors: 1,
            error_rate: 1,
            prompt_tokens: 0,
            completion_tokens: 0,
            p50_ms: 70,
            p95_ms: 70,
            p99_ms: 70,
            ttfb_p50_ms: null,
            ttfb_p95_ms: null,
          },
        ]);
        const byStatus = JSON.parse((await logs('stats', '--by', 'status', '--json')).out);
        expect(byStatus.map((g: any) => [g.key, g.requests])).toEqual([
          ['200', 10],
          ['500', 1],
          ['upstream_reset', 1],
        ]);
        const table = await logs('stats', '--since', '7d');
        expect(table.out).toMatch(/gpt-4o.*10.*1.*10\.0%.*100.*45.*500ms.*1\.00s.*1\.00s.*20ms.*40ms/);
        expect((await logs('stats', '--by', 'week')).code).toBe(2);
      });

      test('--by day groups by UTC date', async () => {
        const day = Date.UTC(2024, 4, 1, 12);
        await seed([
          rec('x1', { startedAt: day }),
          rec('x2', { startedAt: day + 1000 }),
          rec('x3', { startedAt: day + DAY }),
        ]);
        const groups = JSON.parse((await logs('stats', '--by', 'day', '--json')).out);
        expect(groups.map((g: any) => [g.key, g.requests])).toEqual([
          ['2024-05-01', 2],
          ['2024-05-02', 1],
        ]);
      });
    });

    describe('logs export', () => {
      test('jsonl and csv row counts, CSV quoting, --out file', async () => {
        await seed(standardRows());
        let r = await logs('export');
        expect(r.code, r.err).toBe(0);
        const lines = r.out
          .trim()
          .split('\n')
          .map((l) => JSON.parse(l));
        expect(lines.map((l) => l.id.replace(/0+$/, ''))).toEqual(['c1', 'b1', 'a2', 'd1', 'a1', 'b2']);
        expect(lines[1].assembled.content).toBe('the streamed aardvark answer');

        const out = join(tmp.path, 'x.csv');
        r = await logs('export', '--format', 'csv', '--out', out, '--since', '1h');
        expect(r.code, r.err).toBe(0);
        expect(r.err).toContain(`exported 3 exchanges to ${out}`);
        const csv = readFileSync(out, 'utf8');
        const records = parseCsv(csv);
        expect(records).toHaveLength(4);
        expect(records[0].slice(0, 5)).toEqual(['id', 'time', 'method', 'path', 'status']);
        const d1 = records.find((x) => x[0].startsWith('d1'))!;
        const body = d1[records[0].indexOf('request_body')];
        expect(JSON.parse(body).messages[0].content).toBe('Say "hi", please,\nnow\tcafé');
        expect(csv).toContain('\\""hi\\""');
        expect((await logs('export', '--format', 'xml')).code).toBe(2);
      });

      test('a large export streams all rows', async () => {
        await seed(
          Array.from({ length: 3000 }, (_, i) =>
            rec(`e${String(i).padStart(5, '0')}`, { startedAt: NOW - i * 1000 }),
          ),
        );
        const r = await logs('export', '--format', 'csv');
        expect(r.out.trim().split('\r\n')).toHaveLength(3001);
      });
    });

    describe('logs prune', () => {
      test('dry run counts; prune deletes rows and their search entries and calls the hook', async () => {
        await seed(standardRows());
        let r = await logs('prune', '--older-than', '2d', '--dry-run', '--json');
        expect(r.code, r.err).toBe(0);
        expect(JSON.parse(r.out)).toEqual({ deleted: 2, dry_run: true, bytes_freed: 0 });
        expect(await ids()).toHaveLength(6);

        r = await logs('prune', '--older-than', '2d');
        expect(r.out).toMatch(/^deleted 2 exchanges started before/);
        expect(await ids()).toEqual(['b2', 'a1', 'd1', 'a2']);
        expect(await ids('--grep', 'aardvark')).toEqual([]);

        r = await logs('prune', '--older-than', '90m', '--vacuum', '--json');
        expect(JSON.parse(r.out)).toMatchObject({ deleted: 1, dry_run: false });
        expect(await ids('--grep', 'kenobi')).toEqual(['a1', 'd1']);
        expect((await logs('prune')).code).toBe(2);
        expect((await logs('prune', '--older-than', 'soon')).code).toBe(2);
      });

      test('bytes_freed reflects the space given back', async () => {
        // Random text: PostgreSQL compresses a repetitive body to almost nothing.
        await seed(
          Array.from({ length: 50 }, (_, i) =>
            rec(`p${String(i).padStart(3, '0')}`, {
              startedAt: NOW - 10 * DAY,
              requestBody: randomBytes(15_000).toString('base64'),
            }),
          ),
        );
        const r = await logs('prune', '--older-than', '1d', '--vacuum', '--json');
        const res = JSON.parse(r.out);
        expect(res.deleted).toBe(50);
        expect(res.bytes_freed).toBeGreaterThan(50 * 20_000);
      });

      test('the onPruned hook receives every deleted id', async () => {
        await seed(Array.from({ length: 5 }, (_, i) => rec(`h${i}`, { startedAt: NOW - 10 * DAY })));
        const seen: string[] = [];
        const { Command } = await import('commander');
        const program = new Command().exitOverride();
        const io = createTestIo({ HOME: tmp.path }, tmp.path);
        let code = -1;
        const cmd = registerLogsCommand(
          program,
          io,
          async (fn) => {
            code = await fn();
          },
          { onPruned: (batch) => void seen.push(...batch) },
        );
        expect(cmd.name()).toBe('logs');
        await program.parseAsync(['logs', 'prune', '--older-than', '1d', '--db', database.db], {
          from: 'user',
        });
        expect(code).toBe(0);
        expect(seen.sort()).toEqual(Array.from({ length: 5 }, (_, i) => `h${i}`.padEnd(26, '0')));
      });
    });

    describe('logs --follow', () => {
      test('prints rows another process writes, until stopped', async () => {
        await seed([rec('f1', { startedAt: NOW - HOUR })]);
        const ac = new AbortController();
        const io = { ...createTestIo({ HOME: tmp.path }, tmp.path), signal: ac.signal };
        const done = main(['logs', '--follow', '--jsonl', '--interval', '30', '--db', database.db], io);
        await until("'f1' on stdout", () => io.out().includes('f1'));
        // Another process writes, as a running `serve` would.
        await database.writeFromAnotherProcess(rec('f2', { startedAt: Date.now(), model: 'gpt-4o-mini' }));
        await until("'f2' on stdout", () => io.out().includes('f2'));
        ac.abort();
        expect(await done).toBe(0);
        const printed = io
          .out()
          .trim()
          .split('\n')
          .map((l) => JSON.parse(l));
        expect(printed.map((p) => [p.id.slice(0, 2), p.model])).toEqual([
          ['f1', 'gpt-4o'],
          ['f2', 'gpt-4o-mini'],
        ]);
      });

      test.each([
        ['no filter', {}],
        ['--grep (SQLite: rows wait for the search index)', { grep: 'hello there' }],
      ])(
        'a prune that deletes the newest row (a long stream recorded last): each row since comes once, %s',
        async (_name, filter) => {
          await seed([rec('k0', { startedAt: Date.now() - 10 * MIN })]);
          const { handle } = await openLogsDatabase({ db: database.db }, createTestIo({}, tmp.path), {
            readonly: true,
          });
          const short = (rows: { id: string }[]) => rows.map((r) => r.id.replace(/0+$/, ''));
          const prune = async () => {
            const r = await logs('prune', '--older-than', '1h', '--json');
            expect(r.code, r.err).toBe(0);
            return JSON.parse(r.out).deleted as number;
          };
          try {
            const follower = await createExchangeFollower(handle, filter);
            // Five quick requests that started after the cut, then a long stream that started before it and
            // ended last: it has the highest rowid, and the prune deletes just that row.
            const quick = (id: string) => rec(id, { startedAt: Date.now() - 30 * MIN });
            const long = (id: string) => rec(id, { startedAt: Date.now() - 2 * HOUR, durationMs: 90 * MIN });
            await seed([quick('q1'), quick('q2'), quick('q3'), quick('q4'), quick('q5'), long('s1')]);
            expect(short(await follower.next())).toEqual(['q1', 'q2', 'q3', 'q4', 'q5', 's1']);
            expect(await prune()).toBe(1);
            // A request recorded before the next poll (on SQLite it takes the pruned row's rowid).
            await seed([quick('n1')]);
            expect(short(await follower.next())).toEqual(['n1']);
            // The same, with a poll between the prune and the next request: the kept rows are not new.
            await seed([quick('q6'), long('s2')]);
            expect(short(await follower.next())).toEqual(['q6', 's2']);
            expect(await prune()).toBe(1);
            expect(await follower.next()).toEqual([]);
            await seed([quick('n2')]);
            expect(short(await follower.next())).toEqual(['n2']);
            expect(await follower.next()).toEqual([]);
          } finally {
            await handle.close();
          }
        },
      );

      test('logs tail applies filters and prints lines', async () => {
        await seed([rec('g1', { model: 'gpt-4' }), rec('g2', { model: 'gpt-4o' })]);
        const ac = new AbortController();
        const io = { ...createTestIo({ HOME: tmp.path }, tmp.path), signal: ac.signal };
        const done = main(['logs', 'tail', '--model', 'gpt-4', '--interval', '30', '--db', database.db], io);
        await until("'g1' on stdout", () => io.out().includes('g1'));
        await seed([
          rec('g3', { model: 'gpt-4', startedAt: Date.now() }),
          rec('g4', { startedAt: Date.now() }),
        ]);
        await until("'g3' on stdout", () => io.out().includes('g3'));
        ac.abort();
        expect(await done).toBe(0);
        expect(io.out()).not.toContain('g2');
        expect(io.out()).not.toContain('g4');
        expect(io.out().split('\n')[0]).toMatch(
          /g10000000000\s+POST\s+\/v1\/chat\/completions\s+gpt-4 → gpt-4o\s+200\s+100ms\s+10\/5$/,
        );
      });
    });
  });
}

/** Minimal RFC 4180 parser for the assertions. */
function parseCsv(text: string): string[][] {
  const out: string[][] = [];
  let row: string[] = [];
  let field = '';
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') {
        field += '"';
        i++;
      } else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"') quoted = true;
    else if (c === ',') {
      row.push(field);
      field = '';
    } else if (c === '\r' && text[i + 1] === '\n') {
      row.push(field);
      out.push(row);
      row = [];
      field = '';
      i++;
    } else field += c;
  }
  return out;
}
