import { defineConfig } from 'tsup';

export default defineConfig({
  // The storage entries let `npm run bench` drive the recorder alone from dist/.
  entry: {
    cli: 'src/cli.ts',
    'storage/database': 'src/storage/database.ts',
    'storage/log-store': 'src/storage/log-store.ts',
    'storage/checkpointer': 'src/storage/checkpointer.ts',
    'storage/storage': 'src/storage/storage.ts',
    'storage/pg-log-store': 'src/storage/pg-log-store.ts',
    'storage/stats-rollup': 'src/storage/stats-rollup.ts',
    'storage/recorder-worker': 'src/storage/recorder-worker.ts',
    'storage/recorder-thread': 'src/storage/recorder-thread.ts',
  },
  format: ['esm'],
  target: 'node20',
  platform: 'node',
  outDir: 'dist',
  clean: true,
  sourcemap: true,
  splitting: true,
  dts: false,
  noExternal: ['kysely'],
});
