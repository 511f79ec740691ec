import { defineConfig } from 'vitest/config';

// `npm run test:load`: the load test only (LOAD_SECONDS, LOAD_CLIENTS, LOAD_MAX_REQUESTS, LOAD_RSS_BOUND_MB).
export default defineConfig({
  test: {
    include: ['test/load/**/*.test.ts'],
    testTimeout: 300_000,
    hookTimeout: 60_000,
    pool: 'forks',
  },
});
