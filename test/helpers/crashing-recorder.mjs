// A recorder thread that starts, then dies on the first rows it is handed (as a bug or an out-of-memory
// would kill the real one): for the fallback test of src/storage/recorder-thread.ts.
import { parentPort } from 'node:worker_threads';

parentPort.on('message', (m) => {
  if (m.type === 'rows') throw new Error('recorder thread crashed on purpose');
});
parentPort.postMessage({ type: 'ready' });
