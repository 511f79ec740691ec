import { describe, expect, test } from 'vitest';
import {
  azureRealtimeModelParam,
  createUpstreamTarget,
  isDeploymentInPath,
  shapeUpstreamRequest,
} from '../../src/proxy/forward.js';

const azure = (baseUrl: string, extra: { apiKey?: string; apiVersion?: string } = {}) =>
  createUpstreamTarget('az', baseUrl, { type: 'azure', ...extra });

describe('upstream path', () => {
  test.each([
    // OpenAI-style requests on a classic Azure base: deployment-scoped operations per deployment.
    ['https://r.openai.azure.com', '/chat/completions', 'dep', '/openai/deployments/dep/chat/completions'],
    ['https://r.openai.azure.com/openai', '/embeddings', 'dep', '/openai/deployments/dep/embeddings'],
    ['https://r.openai.azure.com', '/audio/speech', 'dep', '/openai/deployments/dep/audio/speech'],
    ['https://r.openai.azure.com', '/images/variations', 'd', '/openai/deployments/d/images/variations'],
    [
      'https://r.openai.azure.com',
      '/extensions/chat/completions',
      'd',
      '/openai/deployments/d/extensions/chat/completions',
    ],
    ['https://gw.example/aoai', '/completions', 'a b', '/aoai/openai/deployments/a%20b/completions'],
    // The rest lives under {root}/openai with its model in the body.
    ['https://r.openai.azure.com', '/responses', 'dep', '/openai/responses'],
    ['https://r.openai.azure.com', '/fine_tuning/jobs', 'dep', '/openai/fine_tuning/jobs'],
    ['https://r.openai.azure.com', '/assistants', 'dep', '/openai/assistants'],
    ['https://r.openai.azure.com', '/threads/t1/runs', 'dep', '/openai/threads/t1/runs'],
    ['https://r.openai.azure.com', '/vector_stores', 'dep', '/openai/vector_stores'],
    ['https://r.openai.azure.com', '/batches', 'dep', '/openai/batches'],
    ['https://r.openai.azure.com/openai', '/files', undefined, '/openai/files'],
    ['https://r.openai.azure.com', '/models', undefined, '/openai/models'],
    // A base naming a deployment: its deployment-scoped operations appended, the rest under the root.
    [
      'http://h/openai/deployments/legacy',
      '/chat/completions',
      'x',
      '/openai/deployments/legacy/chat/completions',
    ],
    ['http://h/openai/deployments/legacy', '/files', undefined, '/openai/files'],
    // A client already speaking Azure: under the root as sent, the deployment the routed one.
    [
      'https://r.openai.azure.com',
      '/openai/deployments/gpt4o-prod/chat/completions',
      'gpt4o-prod',
      '/openai/deployments/gpt4o-prod/chat/completions',
    ],
    [
      'https://r.openai.azure.com/openai',
      '/openai/deployments/eu/chat/completions',
      'gpt4o-prod',
      '/openai/deployments/gpt4o-prod/chat/completions',
    ],
    ['https://r.openai.azure.com/openai', '/openai/files', undefined, '/openai/files'],
    [
      'https://r.openai.azure.com/openai',
      '/deployments/eu/embeddings',
      'gpt4o-prod',
      '/openai/deployments/gpt4o-prod/embeddings',
    ],
    ['https://gw.example/aoai/openai', '/openai/responses', 'dep', '/aoai/openai/responses'],
    ['https://r.openai.azure.com/openai/v1', '/openai/v1/responses', 'dep', '/openai/v1/responses'],
    // Azure's /openai/v1 base: OpenAI-style, no deployment in the path.
    ['https://r.openai.azure.com/openai/v1', '/chat/completions', 'dep', '/openai/v1/chat/completions'],
    ['https://r.openai.azure.com/openai/v1/', '/files', undefined, '/openai/v1/files'],
  ])('azure %s + %s (deployment %s) → %s', (base, rest, deployment, expected) => {
    const shape = shapeUpstreamRequest(azure(base), rest, '', {}, { deployment });
    expect(shape.path).toBe(expected);
  });

  test.each([
    ['https://api.openai.com/v1', '/chat/completions', '/v1/chat/completions'],
    ['http://127.0.0.1:8080', '/chat/completions', '/chat/completions'],
    // Ollama's native API sits beside its OpenAI-compatible /v1.
    ['http://h:11434/v1', '/api/chat', '/api/chat'],
    ['http://h:11434/v1/', '/api/tags', '/api/tags'],
    ['https://gw/x/v1', '/api/generate', '/x/api/generate'],
    ['http://h:11434', '/api/chat', '/api/chat'],
    ['https://gw/x', '/api/chat', '/x/api/chat'],
  ])('openai %s + %s → %s', (base, rest, expected) => {
    const shape = shapeUpstreamRequest(createUpstreamTarget('o', base), rest, '', {}, { deployment: 'm' });
    expect(shape.path).toBe(expected);
  });

  test.each([
    ['https://r.openai.azure.com', '/chat/completions', true],
    ['https://r.openai.azure.com', '/responses', false],
    ['https://r.openai.azure.com', '/openai/deployments/d/chat/completions', false],
    ['https://r.openai.azure.com/openai/v1', '/chat/completions', false],
  ])('isDeploymentInPath(%s, %s) = %s', (base, rest, expected) => {
    expect(isDeploymentInPath(azure(base), rest)).toBe(expected);
  });

  test.each([
    // The Realtime handshake: classic Azure reads `deployment` at /openai/realtime, the v1 API `model`.
    ['https://r.openai.azure.com', '/realtime', 'deployment', '/openai/realtime'],
    ['https://r.openai.azure.com/openai', '/realtime', 'deployment', '/openai/realtime'],
    ['https://r.openai.azure.com/openai/deployments/d', '/realtime', 'deployment', '/openai/realtime'],
    ['https://r.openai.azure.com/openai/v1', '/realtime', 'model', '/openai/v1/realtime'],
    // Azure's own paths as sent, whichever the base.
    ['https://r.openai.azure.com/openai/v1', '/openai/realtime', 'deployment', '/openai/realtime'],
    ['https://r.openai.azure.com', '/openai/v1/realtime', 'model', '/openai/v1/realtime'],
  ])('azure %s + %s: the model in `%s`, at %s', (base, rest, param, path) => {
    expect(azureRealtimeModelParam(azure(base), rest)).toBe(param);
    expect(shapeUpstreamRequest(azure(base), rest, '', {}).path).toBe(path);
  });

  test('an OpenAI-type upstream takes the query as the client named it', () => {
    expect(
      azureRealtimeModelParam(createUpstreamTarget('o', 'https://api.openai.com/v1'), '/realtime'),
    ).toBeNull();
  });
});

describe('api-version', () => {
  test.each([
    ['configured, client sent none', '2024-10-21', '', 'api-version=2024-10-21'],
    [
      'the client’s own kept',
      '2024-10-21',
      'api-version=2025-04-01-preview',
      'api-version=2025-04-01-preview',
    ],
    ['none configured (an /openai/v1 base), none sent', undefined, '', ''],
    ['none configured, the client’s kept', undefined, 'api-version=preview', 'api-version=preview'],
  ])('%s', (_label, apiVersion, query, expected) => {
    const shape = shapeUpstreamRequest(
      azure('https://r.openai.azure.com', { apiVersion }),
      '/files',
      query,
      {},
    );
    expect(shape.path).toBe(expected ? `/openai/files?${expected}` : '/openai/files');
  });

  test.each([
    // Azure's v1 API refuses a dated api-version: a client path in its form gets none from a classic base.
    ['https://r.openai.azure.com', '/openai/v1/chat/completions', '', '/openai/v1/chat/completions'],
    ['https://r.openai.azure.com/openai', '/openai/v1/realtime', 'model=d', '/openai/v1/realtime?model=d'],
    [
      'https://r.openai.azure.com',
      '/openai/v1/responses',
      'api-version=preview',
      '/openai/v1/responses?api-version=preview',
    ],
    // A v1 base's configured api-version is meant for that API; classic paths keep theirs.
    [
      'https://r.openai.azure.com/openai/v1',
      '/openai/v1/responses',
      '',
      '/openai/v1/responses?api-version=2024-10-21',
    ],
    ['https://r.openai.azure.com/openai/v1', '/responses', '', '/openai/v1/responses?api-version=2024-10-21'],
    ['https://r.openai.azure.com', '/openai/responses', '', '/openai/responses?api-version=2024-10-21'],
  ])('azure %s + %s?%s → %s', (base, rest, query, expected) => {
    const shape = shapeUpstreamRequest(azure(base, { apiVersion: '2024-10-21' }), rest, query, {});
    expect(shape.path).toBe(expected);
  });
});

test('an /openai/v1 base still gets the key as api-key', () => {
  const t = azure('https://r.openai.azure.com/openai/v1', { apiKey: 'upstream-key' });
  const h = shapeUpstreamRequest(t, '/chat/completions', '', { authorization: 'Bearer x' }).headers;
  expect(h['api-key']).toBe('upstream-key');
  expect(h.authorization).toBeUndefined();
});

describe('Azure credentials', () => {
  const JWT =
    'eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL2NvZ25pdGl2ZXNlcnZpY2VzLmF6dXJlLmNvbSJ9.c2lnbmF0dXJl';
  const shapeHeaders = (headers: Record<string, string>, apiKey?: string) =>
    shapeUpstreamRequest(azure('https://r.openai.azure.com', { apiKey }), '/chat/completions', '', headers, {
      deployment: 'd',
    }).headers;

  test('a plain key sent as Bearer becomes api-key', () => {
    const h = shapeHeaders({ authorization: 'Bearer client-azure-key-9999' });
    expect(h['api-key']).toBe('client-azure-key-9999');
    expect(h.authorization).toBeUndefined();
  });

  test('an Entra ID token (JWT) stays Authorization: Bearer', () => {
    const h = shapeHeaders({ authorization: `Bearer ${JWT}` });
    expect(h.authorization).toBe(`Bearer ${JWT}`);
    expect(h['api-key']).toBeUndefined();
  });

  test.each([
    ['eyJ but not three segments', 'eyJabc.def'],
    ['three segments, no JSON header', 'abc.def.ghi'],
  ])('%s: treated as a key', (_label, token) => {
    const h = shapeHeaders({ authorization: `Bearer ${token}` });
    expect(h['api-key']).toBe(token);
    expect(h.authorization).toBeUndefined();
  });

  test('a configured key replaces even an Entra ID token', () => {
    const h = shapeHeaders({ authorization: `Bearer ${JWT}` }, 'upstream-key');
    expect(h['api-key']).toBe('upstream-key');
    expect(h.authorization).toBeUndefined();
  });
});
