import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // The load test runs on its own: `npm run test:load` (vitest.load.config.ts).
    exclude: ['test/load/**', '**/node_modules/**'],
    globalSetup: ['test/global-setup.ts'],
    // After every test: no key from a CLI run's environment printed (test/helpers/secret-scan.ts).
    setupFiles: ['test/helpers/secret-scan-setup.ts'],
    testTimeout: 20_000,
    hookTimeout: 20_000,
    pool: 'forks',
  },
});
