import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect, test } from 'vitest';
import { SETTINGS } from '../../src/config/schema.js';

const root = join(import.meta.dirname, '../..');
const readme = readFileSync(join(root, 'README.md'), 'utf8');
const envExample = readFileSync(join(root, '.env.example'), 'utf8');

test.each(SETTINGS.filter((s) => s.env).map((s) => [s.env!, s.key]))(
  '%s is documented in .env.example and the README',
  (env, key) => {
    expect(envExample).toMatch(new RegExp(`^# ${env}=`, 'm'));
    expect(readme).toContain(`\`${env}\``);
    expect(readme).toContain(`\`${key}\``);
  },
);

test('file-only settings are documented in the README', () => {
  for (const s of SETTINGS.filter((x) => !x.env)) expect(readme).toContain(`\`${s.key}\``);
});
