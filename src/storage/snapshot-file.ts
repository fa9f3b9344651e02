import { createHash, Hash } from 'node:crypto';
import { open, rename, rm } from 'node:fs/promises';
import { SnapshotMeta } from '../../gen/cairn/raft/v1/raft';
import { CairnError, ErrorCode } from '../errors';

/**
 * A cairn snapshot file (`cairn snapshot save FILE` writes one, `cairn snapshot restore
 * FILE` reads one), streamed both ways, never all in memory:
 *
 *   the magic line  "cairn-snapshot v1\n"
 *   records         each a 4-byte big-endian length and that many bytes:
 *                   first the encoded cairn.raft.v1.SnapshotMeta, then the state
 *                   machine's chunks in order (each non-empty)
 *   end marker      a record of length 0 (after the metadata record, which may be empty)
 *   trailer         the SHA-256 of every byte before it (32 bytes), then end of file
 *
 * A file that ends early, has bytes after its trailer, a record over
 * MAX_SNAPSHOT_FILE_RECORD_BYTES, or a checksum that does not match is refused
 * (CORRUPTION) with a message saying which.
 */
export const SNAPSHOT_FILE_MAGIC = Buffer.from('cairn-snapshot v1\n');
/** The largest record a reader accepts: far above any chunk, so a corrupt length cannot make it allocate gigabytes. */
export const MAX_SNAPSHOT_FILE_RECORD_BYTES = 64 * 1024 * 1024;
const LENGTH_BYTES = 4;
const SHA256_BYTES = 32;

/** The bytes of a snapshot file for `meta` and `chunks`, in order (e.g. for a SnapshotSave stream). */
export async function* encodeSnapshotFile(meta: SnapshotMeta, chunks: AsyncIterable<Uint8Array>): AsyncIterable<Uint8Array> {
  const hash = createHash('sha256');
  const emit = (bytes: Uint8Array): Uint8Array => {
    hash.update(bytes);
    return bytes;
  };
  yield emit(SNAPSHOT_FILE_MAGIC);
  yield emit(lengthPrefix(SnapshotMeta.encode(meta).finish()));
  for await (const chunk of chunks) {
    if (chunk.length === 0) continue; // a zero length is the end marker
    if (chunk.length > MAX_SNAPSHOT_FILE_RECORD_BYTES) {
      throw new CairnError(ErrorCode.INVALID_ARGUMENT, `a snapshot chunk of ${chunk.length} bytes is over MAX_SNAPSHOT_FILE_RECORD_BYTES (${MAX_SNAPSHOT_FILE_RECORD_BYTES})`);
    }
    yield emit(lengthOf(chunk.length));
    yield emit(chunk);
  }
  yield emit(lengthOf(0));
  yield hash.digest();
}

/**
 * Writes a snapshot file: to FILE.partial, synced, then renamed to FILE, so FILE is
 * either a whole file or absent (a failed save removes the partial one).
 */
export async function writeSnapshotFile(path: string, meta: SnapshotMeta, chunks: AsyncIterable<Uint8Array>): Promise<{ bytes: number }> {
  const partial = `${path}.partial`;
  const file = await open(partial, 'w');
  let bytes = 0;
  try {
    for await (const piece of encodeSnapshotFile(meta, chunks)) {
      await file.write(piece);
      bytes += piece.length;
    }
    await file.sync();
  } catch (err) {
    await file.close().catch(() => undefined);
    await rm(partial, { force: true });
    throw err;
  }
  await file.close();
  await rename(partial, path);
  return { bytes };
}

/** What a whole, checked pass over a snapshot file found. */
export interface SnapshotFileSummary {
  meta: SnapshotMeta;
  chunks: number;
  bytes: number;
}

/**
 * A snapshot file opened for reading: `meta` is read at open; `chunks()` streams the
 * chunks and, after the last one, checks the end marker, the checksum and the end of file,
 * throwing CORRUPTION if any is wrong. So a consumer must not treat what it read as good
 * before the iteration ended without an error (stage, then commit).
 */
export interface SnapshotFileReader {
  meta: SnapshotMeta;
  /** Once only: the file is read as it goes. */
  chunks(): AsyncIterable<Uint8Array>;
  /** Stops reading (needed only when chunks() is not iterated to its end). */
  close(): Promise<void>;
}

/** Decodes a snapshot file's bytes from any stream of pieces; `name` is used in messages. */
export async function openSnapshotStream(pieces: AsyncIterable<Uint8Array>, name: string): Promise<SnapshotFileReader> {
  const reader = new HashingReader(pieces[Symbol.asyncIterator](), name);
  try {
    const magic = await reader.read(SNAPSHOT_FILE_MAGIC.length, 'its first line');
    if (!magic.equals(SNAPSHOT_FILE_MAGIC)) {
      throw corrupt(name, `is not a cairn snapshot file (it does not start with the line "${SNAPSHOT_FILE_MAGIC.toString().trim()}")`);
    }
    // The first record is always the metadata (an all-default one encodes to 0 bytes).
    const metaBytes = (await reader.record('the snapshot metadata')) ?? Buffer.alloc(0);
    let meta: SnapshotMeta;
    try {
      meta = SnapshotMeta.decode(metaBytes);
    } catch (err) {
      throw corrupt(name, `has snapshot metadata that does not decode (${(err as Error).message})`, err);
    }
    return {
      meta,
      chunks: () => readChunks(reader, name),
      close: () => reader.close(),
    };
  } catch (err) {
    await reader.close();
    throw err;
  }
}

/** Opens a snapshot file on disk (see openSnapshotStream). */
export async function openSnapshotFile(path: string): Promise<SnapshotFileReader> {
  // Opened first so that a missing file is one clear error, not a stream error later.
  const handle = await open(path, 'r').catch((err: NodeJS.ErrnoException) => {
    throw new CairnError(ErrorCode.INVALID_ARGUMENT, `cannot read snapshot file ${path}: ${err.code === 'ENOENT' ? 'no such file' : err.message}`, { cause: err });
  });
  if (!(await handle.stat()).isFile()) {
    await handle.close();
    throw new CairnError(ErrorCode.INVALID_ARGUMENT, `cannot read snapshot file ${path}: not a regular file`);
  }
  return openSnapshotStream(handle.createReadStream() as AsyncIterable<Uint8Array>, path);
}

/** Reads a whole snapshot file and checks it, keeping nothing but counts. */
export async function verifySnapshotFile(path: string): Promise<SnapshotFileSummary> {
  const reader = await openSnapshotFile(path);
  let chunks = 0;
  let bytes = 0;
  for await (const chunk of reader.chunks()) {
    chunks++;
    bytes += chunk.length;
  }
  return { meta: reader.meta, chunks, bytes };
}

async function* readChunks(reader: HashingReader, name: string): AsyncIterable<Uint8Array> {
  try {
    for (let count = 1; ; count++) {
      const chunk = await reader.record(`chunk ${count}`);
      if (chunk === undefined) break;
      yield chunk;
    }
    const expected = reader.digest();
    const trailer = await reader.read(SHA256_BYTES, 'its SHA-256 trailer', false);
    if (!trailer.equals(expected)) throw corrupt(name, 'fails its SHA-256 check: the file is corrupted');
    if (!(await reader.atEnd())) throw corrupt(name, 'has bytes after its SHA-256 trailer');
  } finally {
    await reader.close();
  }
}

function corrupt(name: string, what: string, cause?: unknown): CairnError {
  return new CairnError(ErrorCode.CORRUPTION, `snapshot file ${name} ${what}`, { cause });
}

function lengthOf(length: number): Buffer {
  const prefix = Buffer.alloc(LENGTH_BYTES);
  prefix.writeUInt32BE(length, 0);
  return prefix;
}

function lengthPrefix(bytes: Uint8Array): Buffer {
  return Buffer.concat([lengthOf(bytes.length), bytes]);
}

/** Reads exact byte counts from a stream of pieces, hashing what it reads. */
class HashingReader {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private offset = 0;
  private ended = false;
  private readonly hash: Hash = createHash('sha256');

  constructor(
    private readonly source: AsyncIterator<Uint8Array>,
    private readonly name: string,
  ) {}

  /** A length-prefixed record, or undefined for the end marker. */
  async record(what: string): Promise<Buffer | undefined> {
    const length = (await this.read(LENGTH_BYTES, `the length of ${what}`)).readUInt32BE(0);
    if (length === 0) return undefined;
    if (length > MAX_SNAPSHOT_FILE_RECORD_BYTES) {
      throw corrupt(this.name, `names a record of ${length} bytes at offset ${this.offset - LENGTH_BYTES} (${what}), over MAX_SNAPSHOT_FILE_RECORD_BYTES (${MAX_SNAPSHOT_FILE_RECORD_BYTES}): the file is corrupted`);
    }
    return this.read(length, what);
  }

  async read(count: number, what: string, hashed = true): Promise<Buffer> {
    while (this.pendingBytes < count) {
      if (!(await this.pull())) {
        throw corrupt(this.name, `is truncated: it ends at byte ${this.offset + this.pendingBytes}, inside ${what} (${count - this.pendingBytes} more bytes expected)`);
      }
    }
    const all = this.pending.length === 1 ? this.pending[0]! : Buffer.concat(this.pending);
    const bytes = all.subarray(0, count);
    const rest = all.subarray(count);
    this.pending = rest.length > 0 ? [rest] : [];
    this.pendingBytes = rest.length;
    this.offset += count;
    if (hashed) this.hash.update(bytes);
    return bytes;
  }

  digest(): Buffer {
    return this.hash.digest();
  }

  async atEnd(): Promise<boolean> {
    if (this.pendingBytes > 0) return false;
    while (await this.pull()) if (this.pendingBytes > 0) return false;
    return true;
  }

  async close(): Promise<void> {
    if (this.ended) return;
    this.ended = true;
    await this.source.return?.();
  }

  private async pull(): Promise<boolean> {
    if (this.ended) return false;
    const next = await this.source.next();
    if (next.done) {
      this.ended = true;
      return false;
    }
    const piece = Buffer.from(next.value.buffer, next.value.byteOffset, next.value.byteLength);
    this.pending.push(piece);
    this.pendingBytes += piece.length;
    return true;
  }
}
