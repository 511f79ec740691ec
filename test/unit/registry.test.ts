import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import type { Config } from '../../src/config/schema.js';
import { isOaiProxyError } from '../../src/errors.js';
import { DEFAULT_MODELS } from '../../src/registry/defaults.js';
import { ModelStore } from '../../src/registry/model-store.js';
import { type MappingInfo, type ModelInfo, ModelRegistry } from '../../src/registry/registry.js';
import { buildSeedPlan } from '../../src/registry/seed.js';
import { type OpenDatabase, openDatabase } from '../../src/storage/database.js';

const model = (name: string, upstream: string | null = null): ModelInfo => ({
  name,
  displayName: null,
  description: null,
  upstream,
  deployment: null,
  source: 'config',
  created: 0,
});
const alias = (a: string, actual: string): MappingInfo => ({ alias: a, actual, source: 'cli', created: 0 });

type SeedConfig = Pick<Config, 'availableModels' | 'models' | 'modelMappings' | 'upstreams'>;
const seedConfig = (over: Partial<SeedConfig> = {}): SeedConfig => ({
  availableModels: undefined,
  models: undefined,
  modelMappings: {},
  upstreams: {},
  ...over,
});

describe('alias resolution', () => {
  const reg = new ModelRegistry(
    [model('gpt-4o'), model('llama3', 'local')],
    [alias('gpt4', 'gpt-4o'), alias('smart', 'gpt4'), alias('ghost', 'not-registered')],
  );

  test.each([
    ['gpt-4o', 'gpt-4o', false, 'gpt-4o'],
    ['gpt4', 'gpt-4o', true, 'gpt-4o'],
    ['smart', 'gpt-4o', true, 'gpt-4o'],
    ['ghost', 'not-registered', true, null],
    ['unknown', 'unknown', false, null],
  ])('%s resolves to %s', (requested, actual, isAlias, registered) => {
    const r = reg.resolve(requested);
    expect(r.actual).toBe(actual);
    expect(r.alias).toBe(isAlias);
    expect(r.model?.name ?? null).toBe(registered);
  });

  test('aliasesOf follows chains', () => {
    expect(reg.aliasesOf('gpt-4o').sort()).toEqual(['gpt4', 'smart']);
  });

  test.each([
    ['gpt-4o', 'llama3', /registered model/],
    ['gpt-4o', 'gpt4', /registered model/],
    ['x', 'x', /loop \(x → x\)/],
    ['gpt4', 'smart', /loop \(gpt4 → smart → gpt4\)/],
  ])('writing %s → %s is refused', (a, actual, message) => {
    let err: unknown;
    try {
      reg.checkMapping(a, actual);
    } catch (e) {
      err = e;
    }
    expect(isOaiProxyError(err, 'conflict')).toBe(true);
    expect((err as Error).message).toMatch(message);
  });

  test.each([
    ['fast', 'gpt-4o'],
    ['smart', 'llama3'],
    ['x', 'anything-unregistered'],
  ])('writing %s → %s is allowed', (a, actual) => {
    expect(() => reg.checkMapping(a, actual)).not.toThrow();
  });
});

describe('seed plan from configuration', () => {
  test('no configuration: the default list, including the current families', () => {
    const plan = buildSeedPlan(seedConfig());
    const names = plan.models.map((m) => m.name);
    for (const n of [
      'gpt-4',
      'gpt-4-turbo',
      'gpt-4o',
      'gpt-4o-mini',
      'gpt-3.5-turbo',
      'text-embedding-ada-002',
      'text-embedding-3-small',
      'text-embedding-3-large',
      'whisper-1',
      'tts-1',
      'tts-1-hd',
      'dall-e-2',
      'dall-e-3',
      'gpt-4.1',
      'o3',
      'gpt-image-1',
    ])
      expect(names).toContain(n);
    expect(plan.models.every((m) => m.source === 'default')).toBe(true);
    expect(names).toHaveLength(DEFAULT_MODELS.length);
  });

  test('AVAILABLE_MODELS replaces the defaults; file entries merge over them by name', () => {
    const plan = buildSeedPlan(
      seedConfig({
        availableModels: ['a', { name: 'b', upstream: 'local', displayName: 'B' }],
        models: [{ name: 'a', deployment: 'a-dep' }, { name: 'c' }],
        upstreams: { local: { baseUrl: 'http://127.0.0.1:1/v1', type: 'openai' } },
        modelMappings: { fast: 'a' },
      }),
    );
    expect(plan.models).toEqual([
      {
        name: 'a',
        displayName: null,
        description: null,
        upstream: null,
        deployment: 'a-dep',
        source: 'config',
      },
      {
        name: 'b',
        displayName: 'B',
        description: null,
        upstream: 'local',
        deployment: null,
        source: 'config',
      },
      { name: 'c', displayName: null, description: null, upstream: null, deployment: null, source: 'config' },
    ]);
    expect(plan.mappings).toEqual({ fast: 'a' });
  });

  test.each([
    [
      { availableModels: [{ name: 'x', upstream: 'nowhere' }] },
      /names upstream "nowhere".*declared: default/,
    ],
    [{ modelMappings: { 'gpt-4o': 'gpt-4' } }, /registered model/],
    [{ modelMappings: { a: 'b', b: 'a' } }, /loop/],
    [{ availableModels: ['has space'] }, /spaces/],
    [{ models: [{ name: 'm', description: 'a\u0000b' }] }, /model "m"\) description must not contain a NUL/],
    [
      { availableModels: [{ name: 'm', displayName: 'x\u0000' }] },
      /model "m"\) displayName must not contain a NUL/,
    ],
    [{ models: [{ name: 'm', deployment: 'dep loy' }] }, /model "m"\) deployment/],
  ])('invalid configuration %j is refused', (over, message) => {
    let err: unknown;
    try {
      buildSeedPlan(seedConfig(over as Partial<SeedConfig>));
    } catch (e) {
      err = e;
    }
    expect(isOaiProxyError(err, 'config_invalid')).toBe(true);
    expect((err as Error).message).toMatch(message);
  });
});

describe('ModelStore seeding and user edits', () => {
  let db: OpenDatabase;
  let store: ModelStore;
  beforeEach(async () => {
    db = await openDatabase(':memory:');
    store = new ModelStore(db.sqlite);
  });
  afterEach(async () => {
    await db.close();
  });

  const plan = (names: string[], mappings: Record<string, string> = {}) =>
    buildSeedPlan(seedConfig({ availableModels: names, modelMappings: mappings }));

  test('seeding adds, updates what it owns, drops what the config no longer names, keeps user entries', () => {
    expect(store.isSeeded()).toBe(false);
    expect(store.seed(plan(['a', 'b'], { fast: 'a' }))).toMatchObject({ added: 3, removed: 0 });
    expect(store.isSeeded()).toBe(true);
    store.addModel({ name: 'mine', upstream: null }, 'cli');
    store.setMapping('short', 'b', 'admin');

    const again = store.seed(plan(['b', 'c'], {}));
    expect(again).toMatchObject({ added: 1, removed: 2 });
    const reg = store.load();
    expect([...reg.models.keys()]).toEqual(['b', 'c', 'mine']);
    expect(Object.fromEntries([...reg.mappings.values()].map((m) => [m.alias, m.actual]))).toEqual({
      short: 'b',
    });
    expect(reg.models.get('mine')!.source).toBe('cli');
    expect(reg.mappings.get('short')!.source).toBe('admin');
  });

  test('a seeded model the user removed is not brought back by the next seeding; adding it again revives it', () => {
    store.seed(plan(['a', 'b']));
    expect(store.removeModel('a')).toBe(true);
    expect(store.removeModel('a')).toBe(false);
    store.seed(plan(['a', 'b']));
    expect([...store.load().models.keys()]).toEqual(['b']);
    store.addModel({ name: 'a', description: 'back' }, 'cli');
    expect(store.load().models.get('a')).toMatchObject({ source: 'cli', description: 'back' });
  });

  test('a user entry with the name of a configured model is left alone', () => {
    store.addModel({ name: 'a', description: 'user' }, 'admin');
    store.seed(plan(['a']));
    expect(store.load().models.get('a')).toMatchObject({ source: 'admin', description: 'user' });
  });

  test('conflicts: duplicate model, model named like an alias, alias loops and clashes', () => {
    store.seed(plan(['a']));
    store.setMapping('x', 'a', 'cli');
    expect(() => store.addModel({ name: 'a' }, 'cli')).toThrow(/already exists/);
    expect(() => store.addModel({ name: 'x' }, 'cli')).toThrow(/already an alias/);
    expect(() => store.setMapping('a', 'x', 'cli')).toThrow(/registered model/);
    store.setMapping('y', 'x', 'cli');
    expect(() => store.setMapping('x', 'y', 'cli')).toThrow(/loop/);
    expect(store.setMapping('y', 'a', 'cli')).toBe('replaced');
    expect(store.removeMapping('y')).toBe(true);
    expect(store.removeMapping('y')).toBe(false);
  });

  test('a configured alias that clashes with a user model is skipped with a warning', () => {
    store.addModel({ name: 'fast' }, 'cli');
    const r = store.seed(plan(['a'], { fast: 'a' }));
    expect(r.warnings.join('\n')).toMatch(/fast → a was not applied/);
    expect(store.load().mappings.size).toBe(0);
  });
});
