import { expect, test } from 'vitest';
import { fromWire, toWire } from '../../src/storage/exchange-wire.js';
import { distinctExchange } from '../helpers/exchange-fixtures.js';

test('an exchange crosses to the recorder thread and back unchanged, every field in its place', () => {
  // Every field set, and no two to the same value: a field dropped or swapped shows.
  const r = distinctExchange();
  // As postMessage would: through the structured clone.
  const back = fromWire(structuredClone(toWire(r)));
  expect(back).toStrictEqual(r);
  expect(Object.keys(back)).toEqual(Object.keys(r));
});
