import { expect, test } from 'vitest';
import { COLUMNS, rowValues, toRow } from '../../src/storage/log-store.js';
import { BOOLEAN_FIELDS, distinctExchange } from '../helpers/exchange-fixtures.js';

test('the batched insert binds every column its own value, in the order of its column list', () => {
  const r = distinctExchange();
  const row = toRow(r);
  const values = rowValues(r);
  expect(values).toEqual(COLUMNS.map((c) => row[c]));
  // Converted values stay distinct, so a swap of two columns would have failed the line above.
  expect(new Set(values.filter((v) => v !== 0 && v !== 1)).size).toBe(COLUMNS.length - BOOLEAN_FIELDS.length);
});

test('each boolean lands in its own column', () => {
  for (const field of BOOLEAN_FIELDS) {
    const r = distinctExchange();
    for (const f of BOOLEAN_FIELDS) r[f] = f === field;
    const row = toRow(r);
    expect(rowValues(r), field).toEqual(COLUMNS.map((c) => row[c]));
    expect(rowValues(r).filter((v) => v === 1)).toHaveLength(1);
  }
});
