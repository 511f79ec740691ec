import { describe, expect, test } from 'vitest';
import { multipartBoundary, scanMultipartModel } from '../../src/proxy/multipart-model.js';

const B = '----formBoundary7MA4YWxk';

function form(parts: { name: string; value: string | Buffer; filename?: string }[]): Buffer {
  const out: Buffer[] = [];
  for (const p of parts) {
    const disp = `form-data; name="${p.name}"${p.filename ? `; filename="${p.filename}"` : ''}`;
    const type = p.filename ? 'Content-Type: application/octet-stream\r\n' : '';
    out.push(Buffer.from(`--${B}\r\nContent-Disposition: ${disp}\r\n${type}\r\n`));
    out.push(Buffer.isBuffer(p.value) ? p.value : Buffer.from(p.value));
    out.push(Buffer.from('\r\n'));
  }
  out.push(Buffer.from(`--${B}--\r\n`));
  return Buffer.concat(out);
}

async function* chunks(buf: Buffer, size: number): AsyncGenerator<Buffer> {
  for (let i = 0; i < buf.length; i += size) yield buf.subarray(i, i + size);
}

async function collect(it: AsyncIterable<Buffer>): Promise<Buffer> {
  const out: Buffer[] = [];
  for await (const c of it) out.push(c);
  return Buffer.concat(out);
}

describe('multipart model field', () => {
  test.each([
    ['multipart/form-data; boundary=abc', 'abc'],
    ['multipart/form-data; boundary="a b;c"', 'a b;c'],
    ['Multipart/Form-Data;charset=utf-8; boundary=xyz', 'xyz'],
    ['application/json', null],
    ['multipart/form-data', null],
  ])('boundary of %s', (ct, boundary) => {
    expect(multipartBoundary(ct)).toBe(boundary);
  });

  const audio = Buffer.alloc(12_000, 0x41);
  const cases: [string, Buffer][] = [
    [
      'model before the file',
      form([
        { name: 'model', value: 'fast' },
        { name: 'file', value: audio, filename: 'a.mp3' },
      ]),
    ],
    [
      'model after the file',
      form([
        { name: 'file', value: audio, filename: 'a.mp3' },
        { name: 'language', value: 'en' },
        { name: 'model', value: 'fast' },
      ]),
    ],
  ];

  for (const [label, body] of cases) {
    test.each([1, 7, 64, 4096, 1 << 20])(
      `${label}: found and rewritten with %i-byte chunks`,
      async (size) => {
        const counted: number[] = [];
        const scan = await scanMultipartModel(chunks(body, size), B, {
          memoryLimit: 4_000, // forces the temporary-file path when the file comes first
          onChunk: (c) => counted.push(c.length),
        });
        expect(scan.model).toBe('fast');
        const rewritten = await collect(scan.body('gpt-4o-mini'));
        expect(rewritten.length).toBe(body.length + scan.lengthDelta('gpt-4o-mini'));
        expect(rewritten.toString('latin1')).toBe(
          body
            .toString('latin1')
            .replace('name="model"\r\n\r\nfast\r\n', 'name="model"\r\n\r\ngpt-4o-mini\r\n'),
        );
        expect(counted.reduce((a, b) => a + b, 0)).toBe(body.length);
      },
    );
  }

  test('unchanged body when not rewritten; a filename part named model is not the field', async () => {
    const body = form([
      { name: 'model', value: 'not-this', filename: 'model.txt' },
      { name: 'file', value: audio, filename: 'a.mp3' },
    ]);
    const scan = await scanMultipartModel(chunks(body, 1000), B);
    expect(scan.model).toBeNull();
    expect((await collect(scan.body(null))).equals(body)).toBe(true);
  });

  test('past maxBytes without a model field the body is forwarded untouched', async () => {
    const body = form([
      { name: 'file', value: audio, filename: 'a.mp3' },
      { name: 'model', value: 'fast' },
    ]);
    const scan = await scanMultipartModel(chunks(body, 1000), B, { maxBytes: 5000 });
    expect(scan.model).toBeNull();
    expect(scan.unsearched).toBe(true);
    expect((await collect(scan.body('other'))).equals(body)).toBe(true);
  });

  test.each([
    ['the field found', [{ name: 'model', value: 'fast' }], false],
    ['a whole body without the field', [{ name: 'prompt', value: 'x' }], false],
    ['a value too long to hold', [{ name: 'model', value: 'm'.repeat(5000) }], true],
    ['a part header too long to hold', [{ name: `x${'h'.repeat(17_000)}`, value: 'v' }], true],
  ])('unsearched: %s → %s', async (_, parts, unsearched) => {
    const scan = await scanMultipartModel(chunks(form(parts), 1000), B);
    expect(scan.unsearched).toBe(unsearched);
  });

  test('only the part up to the model field is read before routing', async () => {
    const body = form([
      { name: 'model', value: 'whisper-1' },
      { name: 'file', value: Buffer.alloc(1_000_000, 1), filename: 'big.wav' },
    ]);
    let read = 0;
    const source = (async function* () {
      for await (const c of chunks(body, 16_384)) {
        read += c.length;
        yield c;
      }
    })();
    const scan = await scanMultipartModel(source, B);
    expect(scan.model).toBe('whisper-1');
    expect(read).toBe(16_384);
    expect((await collect(scan.body(null))).equals(body)).toBe(true);
    expect(read).toBe(body.length);
  });
});
