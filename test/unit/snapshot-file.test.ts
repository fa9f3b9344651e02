import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SnapshotMeta } from '../../gen/cairn/raft/v1/raft';
import { CairnError } from '../../src/errors';
import {
  encodeSnapshotFile,
  MAX_SNAPSHOT_FILE_RECORD_BYTES,
  openSnapshotFile,
  openSnapshotStream,
  SNAPSHOT_FILE_MAGIC,
  verifySnapshotFile,
  writeSnapshotFile,
} from '../../src/storage/snapshot-file';

const META: SnapshotMeta = {
  index: 1234,
  term: 7,
  config: { voters: [{ id: 1, peerAddr: '127.0.0.1:1', clientAddr: '' }, { id: 2, peerAddr: '127.0.0.1:2', clientAddr: 'c' }], learners: [] },
};

async function* from<T>(items: readonly T[]): AsyncIterable<T> {
  for (const item of items) yield item;
}

async function collect<T>(items: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of items) out.push(item);
  return out;
}

async function fileBytes(meta: SnapshotMeta, chunks: Uint8Array[]): Promise<Buffer> {
  return Buffer.concat(await collect(encodeSnapshotFile(meta, from(chunks))));
}

/** Reads a whole file image through the stream decoder, `pieceBytes` at a time. */
async function decode(bytes: Buffer, pieceBytes = bytes.length || 1) {
  const pieces: Buffer[] = [];
  for (let at = 0; at < bytes.length; at += pieceBytes) pieces.push(bytes.subarray(at, at + pieceBytes));
  const reader = await openSnapshotStream(from(pieces), 'test.snap');
  return { meta: reader.meta, chunks: await collect(reader.chunks()) };
}

async function refusal(bytes: Buffer): Promise<CairnError> {
  try {
    await decode(bytes);
  } catch (err) {
    expect(err).toBeInstanceOf(CairnError);
    expect((err as CairnError).code).toBe('CORRUPTION');
    return err as CairnError;
  }
  throw new Error(`a file of ${bytes.length} bytes was accepted`);
}

const CHUNKS = [Buffer.from('first chunk'), Buffer.alloc(70_000, 0xab), Buffer.from([0x00]), Buffer.from('last')];

describe('snapshot files', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'cairn-snapfile-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  test('a written file reads back the same metadata and chunks, and starts with the magic line', async () => {
    const path = join(dir, 'backup.snap');
    const { bytes } = await writeSnapshotFile(path, META, from(CHUNKS));
    const image = readFileSync(path);
    expect(image.length).toBe(bytes);
    expect(image.subarray(0, SNAPSHOT_FILE_MAGIC.length).toString()).toBe('cairn-snapshot v1\n');
    expect(existsSync(`${path}.partial`)).toBe(false);
    const reader = await openSnapshotFile(path);
    expect(reader.meta).toEqual(META);
    expect((await collect(reader.chunks())).map((c) => Buffer.from(c))).toEqual(CHUNKS);
    expect(await verifySnapshotFile(path)).toEqual({ meta: META, chunks: CHUNKS.length, bytes: CHUNKS.reduce((n, c) => n + c.length, 0) });
  });

  test('the decoder takes the bytes in pieces of any size, even one byte at a time', async () => {
    const image = await fileBytes(META, CHUNKS.slice(0, 1).concat(CHUNKS.slice(2)));
    for (const pieceBytes of [1, 3, 7, 64]) {
      const { meta, chunks } = await decode(image, pieceBytes);
      expect(meta).toEqual(META);
      expect(chunks.map((c) => Buffer.from(c))).toEqual([CHUNKS[0], CHUNKS[2], CHUNKS[3]]);
    }
  });

  test('both directions stream: the encoder yields per chunk, the reader hands out a chunk before it has read the rest', async () => {
    const pieces = await collect(encodeSnapshotFile(META, from(CHUNKS)));
    expect(pieces.length).toBeGreaterThanOrEqual(2 * CHUNKS.length + 3);
    let pulled = 0;
    async function* counting(): AsyncIterable<Uint8Array> {
      for (const piece of pieces) {
        pulled++;
        yield piece;
      }
    }
    const reader = await openSnapshotStream(counting(), 'counted');
    const iterator = reader.chunks()[Symbol.asyncIterator]();
    const first = await iterator.next();
    expect(Buffer.from(first.value as Uint8Array)).toEqual(CHUNKS[0]);
    expect(pulled).toBeLessThan(pieces.length / 2);
    await iterator.return?.();
  });

  test('empty chunks are skipped (a zero length is the end marker) and a snapshot with no chunks round-trips', async () => {
    expect((await decode(await fileBytes(META, [Buffer.alloc(0), Buffer.from('x')]))).chunks.map((c) => c.toString())).toEqual(['x']);
    expect(await decode(await fileBytes({ index: 0, term: 0, config: undefined }, []))).toEqual({ meta: { index: 0, term: 0, config: undefined }, chunks: [] });
  });

  test('every truncation is refused, saying that the file is truncated', async () => {
    const image = await fileBytes(META, [Buffer.from('chunk one'), Buffer.from('chunk two')]);
    for (let length = 0; length < image.length; length++) {
      const err = await refusal(image.subarray(0, length));
      expect(err.message).toMatch(/^snapshot file test\.snap is truncated: it ends at byte \d+, inside .* \(\d+ more bytes expected\)$/);
    }
  });

  test('every single flipped byte is refused', async () => {
    const image = await fileBytes(META, [Buffer.from('chunk one'), Buffer.from('chunk two')]);
    for (let at = 0; at < image.length; at++) {
      const damaged = Buffer.from(image);
      damaged[at] = damaged[at]! ^ 0x01;
      await refusal(damaged);
    }
    const flippedData = Buffer.from(image);
    flippedData[image.length - 40] = flippedData[image.length - 40]! ^ 0x01;
    expect((await refusal(flippedData)).message).toBe('snapshot file test.snap fails its SHA-256 check: the file is corrupted');
  });

  test('bytes after the trailer, a foreign file and an absurd record length are refused with a clear message', async () => {
    const image = await fileBytes(META, [Buffer.from('x')]);
    expect((await refusal(Buffer.concat([image, Buffer.from([0])]))).message).toBe('snapshot file test.snap has bytes after its SHA-256 trailer');
    expect((await refusal(Buffer.from('{"not": "a snapshot at all, but long enough"}'))).message).toBe(
      'snapshot file test.snap is not a cairn snapshot file (it does not start with the line "cairn-snapshot v1")',
    );
    const huge = Buffer.concat([SNAPSHOT_FILE_MAGIC, Buffer.from([0xff, 0xff, 0xff, 0xff])]);
    expect((await refusal(huge)).message).toMatch(new RegExp(`names a record of 4294967295 bytes at offset 18 \\(the snapshot metadata\\), over MAX_SNAPSHOT_FILE_RECORD_BYTES \\(${MAX_SNAPSHOT_FILE_RECORD_BYTES}\\)`));
  });

  test('a missing file or a directory is one clear error', async () => {
    await expect(openSnapshotFile(join(dir, 'nope.snap'))).rejects.toThrow(`cannot read snapshot file ${join(dir, 'nope.snap')}: no such file`);
    await expect(openSnapshotFile(dir)).rejects.toThrow(`cannot read snapshot file ${dir}: not a regular file`);
  });

  test('a save that fails midway leaves neither the file nor its partial copy', async () => {
    const path = join(dir, 'broken.snap');
    async function* failing(): AsyncIterable<Uint8Array> {
      yield Buffer.from('one');
      throw new Error('source went away');
    }
    await expect(writeSnapshotFile(path, META, failing())).rejects.toThrow('source went away');
    expect(existsSync(path)).toBe(false);
    expect(existsSync(`${path}.partial`)).toBe(false);
  });

  test('a corrupted file on disk is refused by verify', async () => {
    const path = join(dir, 'bad.snap');
    await writeSnapshotFile(path, META, from(CHUNKS));
    const image = readFileSync(path);
    image[SNAPSHOT_FILE_MAGIC.length + 30] ^= 0x40;
    writeFileSync(path, image);
    await expect(verifySnapshotFile(path)).rejects.toThrow(/snapshot file .*bad\.snap/);
  });
});
