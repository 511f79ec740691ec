import { existsSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { main } from '../../src/cli.js';
import { openDatabase } from '../../src/storage/database.js';
import { createTestPgDatabase, pgQuery, pgUrl, warnIfNoPg } from '../helpers/pg.js';
import { createTempDir } from '../helpers/temp-dir.js';
import { createTestIo } from '../helpers/test-proxy.js';

let dir: { path: string; cleanup(): void };
let db: string;

beforeEach(() => {
  dir = createTempDir();
  db = join(dir.path, 'registry.db');
});
afterEach(() => dir.cleanup());

async function cli(args: string[], env: Record<string, string> = {}) {
  const io = createTestIo({ HOME: dir.path, ...env }, dir.path);
  const code = await main(args, io);
  return { code, out: io.out(), err: io.err() };
}

describe('oai-proxy models', () => {
  test('list on a fresh database shows the default models in a table; --json is the admin shape', async () => {
    await (await openDatabase(db)).close(); // as `serve` leaves it before the registry is seeded
    const r = await cli(['models', 'list', '--db', db]);
    expect(r.code).toBe(0);
    const lines = r.out.split('\n');
    expect(lines[1]).toMatch(/│ Name\s+│ Aliases\s+│ Upstream\s+│ Source\s+│/);
    expect(r.out).toMatch(/│ gpt-4o\s+│\s+│ default\s+│ default\s+│/);
    expect(r.out).toMatch(/\d+ models, 0 aliases/);
    expect(r.out).not.toContain('\u001b['); // no colour codes when not a TTY

    const j = await cli(['models', 'list', '--json', '--db', db]);
    const view = JSON.parse(j.out);
    expect(Object.keys(view)).toEqual(['models', 'mappings', 'upstreams']);
    expect(view.models.find((m: any) => m.name === 'whisper-1')).toMatchObject({
      source: 'default',
      upstream: null,
    });
  });

  test('add, show, map, unmap, remove — with the messages and exit codes a user sees', async () => {
    const config = join(dir.path, 'cfg.json');
    writeFileSync(
      config,
      JSON.stringify({ databaseUrl: db, upstreams: { local: { baseUrl: 'http://127.0.0.1:11434/v1' } } }),
    );
    const env = { OAI_PROXY_CONFIG: config };
    const add = await cli(
      [
        'models',
        'add',
        'llama3',
        '--upstream',
        'local',
        '--display-name',
        'Llama 3',
        '--description',
        'local',
      ],
      env,
    );
    expect(add).toMatchObject({ code: 0, out: 'Added model llama3 (upstream local)\n' });
    expect((await cli(['models', 'add', 'llama3'], env)).code).toBe(1);
    expect((await cli(['models', 'add', 'llama3'], env)).err).toMatch(/Model "llama3" already exists/);

    const map = await cli(['models', 'map', 'l3', 'llama3'], env);
    expect(map).toMatchObject({ code: 0, out: 'Mapped l3 → llama3\n' });
    expect((await cli(['models', 'map', 'l3b', 'l3'], env)).code).toBe(0);
    // A note is not data: stdout says what was done, stderr what to look at.
    const unregistered = await cli(['models', 'map', 'a', 'b'], env);
    expect(unregistered).toMatchObject({
      code: 0,
      out: 'Mapped a → b\n',
      err: 'note: b is not a registered model\n',
    });
    const loop = await cli(['models', 'map', 'l3', 'l3b'], env);
    expect(loop.code).toBe(1);
    expect(loop.err).toMatch(/would create a loop \(l3 → l3b → l3\)/);
    const clash = await cli(['models', 'map', 'llama3', 'gpt-4o'], env);
    expect(clash.code).toBe(1);
    expect(clash.err).toMatch(/"llama3" is a registered model/);

    const list = await cli(['models', 'list'], env);
    expect(list.out).toMatch(/│ llama3\s+│ l3, l3b\s+│ local\s+│ cli\s+│/);

    const show = await cli(['models', 'show', 'l3b'], env);
    expect(show.code).toBe(0);
    expect(show.out).toMatch(/^l3b is an alias of l3\n {2}resolves to llama3\n/);
    expect(show.out).toMatch(/Display name {2}Llama 3/);
    expect(show.out).toMatch(/Upstream {6}local/);
    const showJson = JSON.parse((await cli(['models', 'show', 'llama3', '--json'], env)).out);
    expect(showJson).toMatchObject({
      name: 'llama3',
      upstream: 'local',
      source: 'cli',
      aliases: ['l3', 'l3b'],
    });

    expect(await cli(['models', 'unmap', 'l3b'], env)).toMatchObject({ code: 0, out: 'Removed alias l3b\n' });
    const unmapAgain = await cli(['models', 'unmap', 'l3b'], env);
    expect(unmapAgain.code).toBe(1);
    expect(unmapAgain.err).toMatch(/No alias "l3b"/);
    const rm = await cli(['models', 'remove', 'llama3'], env);
    expect(rm.code).toBe(0);
    expect(rm.out).toBe('Removed model llama3\n');
    expect(rm.err).toMatch(/^Aliases still pointing to it: l3/);
    const notFound = await cli(['models', 'show', 'llama3'], env);
    expect(notFound.code).toBe(1);
    expect(notFound.err).toMatch(/No model or alias "llama3"/);

    // A removed default model stays removed (the next seeding does not bring it back).
    expect((await cli(['models', 'remove', 'gpt-4'], env)).code).toBe(0);
    expect((await cli(['models', 'show', 'gpt-4'], env)).code).toBe(1);
  });

  test('list and show never create a database: a missing or 0-byte file exits 1 naming it; add creates it', async () => {
    const typo = join(dir.path, 'typo', 'x.db');
    for (const args of [
      ['models', 'list'],
      ['models', 'show', 'gpt-4o', '--json'],
      ['models', 'list', '--json'],
    ]) {
      const r = await cli([...args, '--db', typo]);
      expect(r.code, args.join(' ')).toBe(1);
      expect(r.err).toBe(
        `oai-proxy: No database at ${typo}; start \`oai-proxy serve\` (or \`oai-proxy models add\`) first, or point --db / DATABASE_URL at an existing file\n`,
      );
      expect(r.out).toBe('');
    }
    expect(existsSync(join(dir.path, 'typo'))).toBe(false);
    // The same exit code as `logs` on a missing database.
    expect((await cli(['logs', '--db', typo])).code).toBe(1);

    // A 0-byte file (touched, or left by a failed copy) is no database either: nothing written to it.
    writeFileSync(db, '');
    for (const args of [
      ['models', 'list'],
      ['models', 'show', 'gpt-4o', '--json'],
      ['models', 'list', '--json'],
    ]) {
      const r = await cli([...args, '--db', db]);
      expect(r.code, args.join(' ')).toBe(1);
      expect(r.err).toBe(
        `oai-proxy: Database ${db} is empty; start \`oai-proxy serve\` (or \`oai-proxy models add\`) to create it, or point --db / DATABASE_URL at the right file\n`,
      );
      expect(r.out).toBe('');
      expect(statSync(db).size).toBe(0);
    }
    expect((await cli(['logs', '--db', db])).code).toBe(1);

    const add = await cli(['models', 'add', 'llama3', '--db', db]);
    expect(add.code, add.err).toBe(0);
    expect(existsSync(db)).toBe(true);
    expect((await cli(['models', 'show', 'llama3', '--db', db])).out).toMatch(/Source\s+cli/);
  });

  test('list and show refuse a database serve never wrote, as logs does: exit 1, its tables unchanged', async () => {
    const foreign = join(dir.path, 'foreign.db');
    const other = new BetterSqlite3(foreign);
    other.exec('create table notes(id int)');
    other.close();
    const tables = () => {
      const h = new BetterSqlite3(foreign, { readonly: true });
      try {
        return h.prepare("select name from sqlite_master where type = 'table' order by name").all();
      } finally {
        h.close();
      }
    };
    const logs = await cli(['logs', '--db', foreign]);
    expect(logs.code).toBe(1);
    expect(logs.err).toBe(
      `oai-proxy: Database ${foreign} has no oai-proxy tables; point --db / DATABASE_URL at the file \`oai-proxy serve\` writes\n`,
    );
    for (const args of [
      ['models', 'list'],
      ['models', 'list', '--json'],
      ['models', 'show', 'gpt-4o'],
      ['models', 'show', 'gpt-4o', '--json'],
    ]) {
      const r = await cli([...args, '--db', foreign]);
      expect([r.code, r.err, r.out], args.join(' ')).toEqual([logs.code, logs.err, '']);
    }
    expect(tables()).toEqual([{ name: 'notes' }]);
  });

  test('registry text is escaped in human output (no raw ESC, C1 or bidi override), exact in --json', async () => {
    const RAW_CONTROL = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/;
    const name = 'evil\u0085x\u202egnp';
    const description = '\u001b[31mred\u001b]0;TITLE\u0007\u009b2J';
    const displayName = 'D\u202eisplay\nsecond line';
    expect(
      (
        await cli([
          'models',
          'add',
          name,
          '--description',
          description,
          '--display-name',
          displayName,
          '--db',
          db,
        ])
      ).code,
    ).toBe(0);
    const alias = 'a\u202eb';
    const map = await cli(['models', 'map', alias, 'ghost\u0085', '--db', db]);
    expect(map.code).toBe(0);
    expect(map.out + map.err).not.toMatch(RAW_CONTROL);
    expect(map.out).toBe('Mapped a\\u202eb → ghost\\x85\n');
    expect(map.err).toBe('note: ghost\\x85 is not a registered model\n');

    const list = await cli(['models', 'list', '--db', db]);
    expect(list.code).toBe(0);
    expect(list.out).not.toMatch(RAW_CONTROL);
    expect(list.out).toMatch(/│ evil\\x85x\\u202egnp\s+│/);
    expect(list.out).toContain('Aliases of unregistered models: a\\u202eb → ghost\\x85\n');

    const show = await cli(['models', 'show', name, '--db', db]);
    expect(show.code).toBe(0);
    expect(show.out).not.toMatch(RAW_CONTROL);
    expect(show.out).toContain('Name          evil\\x85x\\u202egnp\n');
    expect(show.out).toContain('Display name  D\\u202eisplay\\nsecond line\n');
    expect(show.out).toContain('Description   \\x1b[31mred\\x1b]0;TITLE\\x07\\x9b2J\n');
    const showAlias = await cli(['models', 'show', alias, '--db', db]);
    expect(showAlias.out).not.toMatch(RAW_CONTROL);
    expect(showAlias.out).toContain('a\\u202eb is an alias of ghost\\x85\n');

    // --json is data for a program: the exact text, JSON-escaped only where JSON says.
    const json = JSON.parse((await cli(['models', 'show', name, '--json', '--db', db])).out);
    expect(json).toMatchObject({ name, description, display_name: displayName });
    const listJson = JSON.parse((await cli(['models', 'list', '--json', '--db', db])).out);
    expect(listJson.models.map((m: { name: string }) => m.name)).toContain(name);

    const similar = await cli(['models', 'show', 'evil', '--db', db]);
    expect(similar.code).toBe(1);
    expect(similar.err).not.toMatch(RAW_CONTROL);
    expect(similar.err).toContain('(similar: evil\\x85x\\u202egnp)');
    const remap = await cli(['models', 'map', alias, name, '--db', db]);
    expect(remap.out).toBe('Mapped a\\u202eb → evil\\x85x\\u202egnp (was ghost\\x85)\n');
    const removed = await cli(['models', 'remove', name, '--db', db]);
    expect(removed.code).toBe(0);
    expect(removed.out + removed.err).not.toMatch(RAW_CONTROL);
    expect(removed.err).toMatch(/^Aliases still pointing to it: a\\u202eb /);
  });

  test('a write while another process holds the write lock: after the 5 s busy wait, one line naming the file and what to do, exit 1, nothing changed', async () => {
    expect((await cli(['models', 'add', 'llama3', '--db', db])).code).toBe(0);
    const other = new BetterSqlite3(db);
    try {
      other.exec('begin immediate');
      // Every write goes through the same withRegistry: one is enough to pay the 5 s for.
      const r = await cli(['models', 'add', 'mistral', '--db', db]);
      expect(r.code).toBe(1);
      expect(r.err).toBe(
        `oai-proxy: Database ${db} is locked by another process (another \`oai-proxy models\` or \`oai-proxy logs prune\`, or an sqlite3 shell in a write transaction) and stayed locked for 5 s; nothing was changed. Try again once it has finished\n`,
      );
      expect(r.out).toBe('');
      other.exec('rollback');
    } finally {
      other.close();
    }
    const list = await cli(['models', 'list', '--json', '--db', db]);
    expect(JSON.parse(list.out).models.map((m: { name: string }) => m.name)).not.toContain('mistral');
  }, 20_000);

  test('bad usage exits 2 with a one-line message', async () => {
    for (const args of [
      ['models', 'add'],
      ['models', 'map', 'only-alias'],
      ['models', 'add', 'x', '--upstream', 'nowhere'],
      ['models', 'add', 'has space'],
      ['models', 'frobnicate'],
    ]) {
      const r = await cli([...args, '--db', db]);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.err.trim().split('\n')).toHaveLength(1);
    }
    expect((await cli(['models', 'add', 'x', '--upstream', 'nowhere', '--db', db])).err).toMatch(
      /--upstream nowhere is not configured; known upstreams: default/,
    );
    // Refused before anything is opened: a mistyped --upstream creates no database (and seeds none).
    expect(existsSync(db)).toBe(false);
  });

  test('a NUL in --display-name or --description exits 2 naming the option; nothing added', async () => {
    for (const [flag, value] of [
      ['--description', 'd\u0000esc'],
      ['--display-name', 'D\u0000'],
    ]) {
      const r = await cli(['models', 'add', 'okname', flag, value, '--db', db]);
      expect([r.code, r.err.trim()]).toEqual([2, expect.stringContaining(`${flag} must not contain a NUL`)]);
    }
    expect((await cli(['models', 'show', 'okname', '--db', db])).code).not.toBe(0);
  });

  test('database from DATABASE_URL, as serve resolves it; --help has examples', async () => {
    const viaEnv = await cli(['models', 'add', 'm1'], { DATABASE_URL: `sqlite:///${db}` });
    expect(viaEnv.code).toBe(0);
    expect((await cli(['models', 'show', 'm1', '--db', db])).code).toBe(0);
    const help = await cli(['models', '--help']);
    expect(help.code).toBe(0);
    expect(help.out).toMatch(/Examples:[\s\S]*oai-proxy models map gpt4 gpt-4o/);
  });
});

warnIfNoPg();
describe.skipIf(!pgUrl)('PostgreSQL (OAI_PROXY_TEST_PG_URL)', () => {
  test('list and show refuse a database serve never wrote, as logs does: exit 1, no table created', async () => {
    const database = await createTestPgDatabase();
    try {
      await pgQuery(database.url, 'create table notes(id int)');
      const logs = await cli(['logs', '--db', database.url]);
      expect(logs.code).toBe(1);
      expect(logs.err).toMatch(/has no oai-proxy tables; start `oai-proxy serve`/);
      for (const args of [
        ['models', 'list'],
        ['models', 'show', 'gpt-4o', '--json'],
      ]) {
        const r = await cli([...args, '--db', database.url]);
        expect([r.code, r.err, r.out], args.join(' ')).toEqual([logs.code, logs.err, '']);
      }
      expect(
        await pgQuery(
          database.url,
          "select table_name from information_schema.tables where table_schema = 'public'",
        ),
      ).toEqual([{ table_name: 'notes' }]);
    } finally {
      await database.drop();
    }
  });
});

describe('serve banner', () => {
  test('names the registry, the named upstreams (keys masked) and the validation mode', async () => {
    const config = join(dir.path, 'cfg.json');
    writeFileSync(
      config,
      JSON.stringify({
        availableModels: ['a', 'b'],
        modelMappings: { fast: 'a' },
        upstreams: { local: { baseUrl: 'http://127.0.0.1:9/v1', apiKey: 'sk-local-secret-key-wxyz' } },
      }),
    );
    const ac = new AbortController();
    const io = {
      ...createTestIo({ HOME: dir.path, LOG_LEVEL: 'silent', VALIDATE_MODELS: 'true' }, dir.path),
      signal: ac.signal,
    };
    const done = main(['serve', '--port', '0', '--db', db, '--config', config], io);
    for (let i = 0; i < 100 && !io.err().includes('models  '); i++)
      await new Promise((r) => setTimeout(r, 20));
    ac.abort();
    expect(await done).toBe(0);
    expect(io.err()).toContain('upstream   local: http://127.0.0.1:9/v1  (key sk-…wxyz)');
    expect(io.err()).toContain('models     2 registered, 1 aliases; validation on; admin API off');
    expect(io.err()).not.toContain('sk-local-secret-key-wxyz');
  });
});
