import { expect, test } from 'vitest';
import { searchText } from '../../src/storage/search-index.js';

test('in a JSON body, the escapes that would glue a letter to the next word become spaces', () => {
  const body = JSON.stringify({ content: 'first line\nsecond\tthird\r\nfourth "quoted" a/b back\\slash' });
  // \" and \/ stay: both characters separate words anyway.
  expect(searchText(body)).toBe('{"content":"first line second third  fourth \\"quoted\\" a/b back slash"}');
  // An escaped backslash is not the start of an escape: `C:\new` in the text is `new` here.
  expect(searchText(JSON.stringify({ path: 'C:\\new' }))).toBe('{"path":"C: new"}');
  expect(searchText('  [ "x\\ny" ]')).toBe('  [ "x y" ]');
});

test('\\u escapes become their characters, the other escapes as without them', () => {
  // As Python's json.dumps and others send non-ASCII: escaped, a surrogate pair for an emoji.
  expect(searchText('{"c":"caf\\u00e9 \\ud83d\\ude00 \\u00C9t\\u00e9"}')).toBe('{"c":"café 😀 Été"}');
  const withU = '{"a":"x\\ny \\\\n z \\"q\\" \\u0041"}';
  expect(searchText(withU)).toBe('{"a":"x y  n z \\"q\\" A"}');
  // The same text without the \u takes the other path, to the same result.
  expect(searchText(withU.replace(' \\u0041', ''))).toBe('{"a":"x y  n z \\"q\\""}');
});

test('text that is not a JSON document, or holds no backslash, is indexed as it is', () => {
  expect(searchText('C:\\new\\table.txt')).toBe('C:\\new\\table.txt');
  expect(searchText('data: {"a":"b\\nc"}\n\n')).toBe('data: {"a":"b\\nc"}\n\n');
  const plain = '{"content":"nothing escaped"}';
  expect(searchText(plain)).toBe(plain);
});
