import { expect, test } from 'vitest';
import { searchText } from '../../src/storage/search-index.js';

test('a JSON body is indexed with its string escapes decoded', () => {
  const body = JSON.stringify({ content: 'first line\nsecond\tthird\r\nfourth "quoted" a/b back\\slash' });
  expect(searchText(body)).toBe('{"content":"first line second third  fourth "quoted" a/b back\\slash"}');
  // As Python's json.dumps and others send non-ASCII: escaped, a surrogate pair for an emoji.
  expect(searchText('{"c":"caf\\u00e9 \\ud83d\\ude00 \\u00C9t\\u00e9"}')).toBe('{"c":"café 😀 Été"}');
  expect(searchText('  [ "x\\/y" ]')).toBe('  [ "x/y" ]');
});

test('text that is not a JSON document, or holds no backslash, is indexed as it is', () => {
  expect(searchText('C:\\new\\table.txt')).toBe('C:\\new\\table.txt');
  expect(searchText('data: {"a":"b\\nc"}\n\n')).toBe('data: {"a":"b\\nc"}\n\n');
  const plain = '{"content":"nothing escaped"}';
  expect(searchText(plain)).toBe(plain);
});
