import { expect, test } from 'vitest';
import { createStreamAssembler } from '../../src/proxy/sse.js';

const event = (content: string) =>
  `data: ${JSON.stringify({ object: 'chat.completion.chunk', choices: [{ index: 0, delta: { content } }] })}\n\n`;

test('an endless event (no blank line) is dropped, not buffered: linear time, later events still parsed', () => {
  const a = createStreamAssembler({ maxChars: 10_000 });
  a.push(Buffer.from(event('before ')));
  const piece = Buffer.alloc(64 * 1024, 'x');
  const t0 = performance.now();
  a.push(Buffer.from('data: '));
  for (let i = 0; i < 512; i++) a.push(piece); // 32 MB in one "event"
  const ms = performance.now() - t0;
  a.push(Buffer.from(`\n\n${event('after')}data: [DONE]\n\n`));
  expect(a.result()).toMatchObject({ content: 'before after', complete: true });
  // quadratic rescanning of a growing buffer took minutes here
  expect(ms).toBeLessThan(3000);
});

test.each([1, 2, 3, 7])('events split every %i bytes reassemble the same', (step) => {
  const text = `${event('a')}${event('b')}\r\n${event('c')}data: [DONE]\n\n`;
  const whole = createStreamAssembler();
  whole.push(text);
  const a = createStreamAssembler();
  for (let i = 0; i < text.length; i += step) a.push(text.slice(i, i + step));
  expect(a.result()).toEqual(whole.result());
  expect(a.result()).toMatchObject({ content: 'abc', complete: true });
});
