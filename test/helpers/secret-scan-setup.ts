import { afterEach } from 'vitest';
import { assertNoLeaks, envSecrets, watchedIos } from './secret-scan.js';

// Every CLI run through createTestIo in the whole suite: no key from its environment may be printed.
afterEach(() => {
  const ios = watchedIos.splice(0);
  for (const io of ios) {
    assertNoLeaks(envSecrets(io.env), { stdout: io.out(), stderr: io.err() }, 'CLI output');
  }
});
