import { checkLeaseRecord } from './leases';
import { AppliedState, AuthState, KeyRecord, SessionRecord, SnapshotBatch, SnapshotRecord } from '../../gen/cairn/storage/v1/storage';
import { assert } from '../assert';
import { CairnError, ErrorCode } from '../errors';
import { FsmSnapshot } from '../node/fsm';
import { Db, DbOp, DbSnapshot } from '../storage/db';
import { AUTH_STATE_KEY } from './auth-state';
import { checkHistoryRecord } from './watch-history';

/**
 * The kv state machine's snapshot format: a stream of chunks, each an encoded
 * cairn.storage.v1.SnapshotBatch. Records come in this sublevel order, each sublevel in
 * key order, and the `meta` part is exactly one record, `applied`, last. The receiver
 * checks all of it, so a truncated, reordered or foreign stream is refused, not installed.
 */
export const SNAPSHOT_SUBLEVEL_ORDER = ['kv', 'sessions', 'auth', 'history', 'leases', 'meta'] as const;
type SnapshotSublevel = (typeof SNAPSHOT_SUBLEVEL_ORDER)[number];

export const APPLIED_KEY = Buffer.from('applied');

/** SnapshotBatch field 1 (records), length-delimited. */
const RECORDS_TAG = 0x0a;

export const EMPTY_APPLIED_STATE: AppliedState = { index: 0, revision: 0, logTimeUnixMs: 0 };

/** Opens a consistent view of `kv`, `sessions`, `auth`, `history` and `meta/applied`; its index is the applied index it holds. */
export async function openKvSnapshot(db: Db): Promise<FsmSnapshot> {
  const view = await db.snapshot();
  try {
    const value = await db.get('meta', APPLIED_KEY, { snapshot: view });
    return new KvSnapshot(db, view, value ? Buffer.from(value) : Buffer.from(AppliedState.encode(EMPTY_APPLIED_STATE).finish()));
  } catch (err) {
    await view.release().catch(() => undefined);
    throw err;
  }
}

class KvSnapshot implements FsmSnapshot {
  readonly index: number;
  private released = false;

  constructor(
    private readonly db: Db,
    private readonly view: DbSnapshot,
    private readonly appliedValue: Buffer,
  ) {
    this.index = AppliedState.decode(appliedValue).index;
  }

  async *chunks(maxChunkBytes: number): AsyncIterable<Uint8Array> {
    assert(Number.isSafeInteger(maxChunkBytes) && maxChunkBytes >= 1, () => `maxChunkBytes must be an integer >= 1, got ${maxChunkBytes}`);
    const chunk = new ChunkBuilder(maxChunkBytes);
    for (const sublevel of ['kv', 'sessions', 'auth', 'history', 'leases'] as const) {
      this.checkLive();
      for await (const [key, value] of this.db.entries(sublevel, { snapshot: this.view })) {
        const full = chunk.add({ sublevel, key, value });
        if (full) yield full;
      }
    }
    const full = chunk.add({ sublevel: 'meta', key: APPLIED_KEY, value: this.appliedValue });
    if (full) yield full;
    yield chunk.finish();
  }

  release(): void {
    if (this.released) return;
    this.released = true;
    // The view only pins old data; closing it cannot fail in a way the caller could act on.
    void this.view.release().catch(() => undefined);
  }

  private checkLive(): void {
    if (this.released) throw new CairnError(ErrorCode.STOPPED, 'the state-machine snapshot was released while it was being read');
  }
}

/** Packs encoded records into SnapshotBatch chunks of at most maxChunkBytes (a larger record goes alone). */
class ChunkBuilder {
  private parts: Uint8Array[] = [];
  private bytes = 0;

  constructor(private readonly maxChunkBytes: number) {}

  /** Adds a record; returns the chunk it closed, if adding it would have gone over the budget. */
  add(record: SnapshotRecord): Uint8Array | undefined {
    const encoded = SnapshotRecord.encode(record).finish();
    const prefix = Buffer.from([RECORDS_TAG, ...varint(encoded.length)]);
    const size = prefix.length + encoded.length;
    let closed: Uint8Array | undefined;
    if (this.parts.length > 0 && this.bytes + size > this.maxChunkBytes) closed = this.finish();
    this.parts.push(prefix, encoded);
    this.bytes += size;
    return closed;
  }

  /** The chunk of everything added since the last one (a SnapshotBatch's encoding is its records' concatenation). */
  finish(): Uint8Array {
    const chunk = Buffer.concat(this.parts);
    this.parts = [];
    this.bytes = 0;
    return chunk;
  }
}

function varint(value: number): number[] {
  const bytes: number[] = [];
  while (value > 0x7f) {
    bytes.push((value & 0x7f) | 0x80);
    value = Math.floor(value / 128);
  }
  bytes.push(value);
  return bytes;
}

/**
 * Checks and stages the chunks of one snapshot stream into `generation`: it returns the
 * writes for each chunk, and keeps the stream's `applied` record for the switch.
 */
export class SnapshotStager {
  private chunkCount = 0;
  private recordCount = 0;
  private last: { rank: number; key: Buffer } | undefined;
  private appliedState: AppliedState | undefined;

  constructor(private readonly generation: number) {}

  get records(): number {
    return this.recordCount;
  }

  /** The staged applied state, once the stream's `meta/applied` record arrived. */
  applied(): AppliedState | undefined {
    return this.appliedState;
  }

  /** The writes of one chunk, after checking every record in it; bad data throws INVALID_ARGUMENT. */
  stage(chunk: Uint8Array): DbOp[] {
    this.chunkCount++;
    let batch: SnapshotBatch;
    try {
      batch = SnapshotBatch.decode(chunk);
    } catch (err) {
      throw this.invalid(`does not decode as a SnapshotBatch (${(err as Error).message})`, err);
    }
    const ops: DbOp[] = [];
    for (const record of batch.records) {
      this.recordCount++;
      const op = this.stageRecord(record);
      if (op) ops.push(op);
    }
    return ops;
  }

  private stageRecord(record: SnapshotRecord): DbOp | undefined {
    const rank = SNAPSHOT_SUBLEVEL_ORDER.indexOf(record.sublevel as SnapshotSublevel);
    if (rank < 0) throw this.invalid(`record ${this.recordCount} names the unknown sublevel ${JSON.stringify(record.sublevel)}`);
    const key = Buffer.from(record.key);
    if (this.appliedState) throw this.invalid(`record ${this.recordCount} (${record.sublevel}) follows meta/applied, which must be the last record`);
    if (this.last && (rank < this.last.rank || (rank === this.last.rank && Buffer.compare(key, this.last.key) <= 0))) {
      throw this.invalid(`record ${this.recordCount} (${record.sublevel} key ${key.toString('hex')}) is out of order`);
    }
    this.last = { rank, key };
    const sublevel = SNAPSHOT_SUBLEVEL_ORDER[rank]!;
    this.checkValue(sublevel, key, record.value);
    if (sublevel === 'meta') {
      this.appliedState = AppliedState.decode(record.value);
      return undefined;
    }
    return { type: 'put', sublevel, key, value: record.value, generation: this.generation };
  }

  private checkValue(sublevel: SnapshotSublevel, key: Buffer, value: Uint8Array): void {
    try {
      if (sublevel === 'kv') KeyRecord.decode(value);
      else if (sublevel === 'sessions') SessionRecord.decode(value);
      else if (sublevel === 'leases') checkLeaseRecord(key, value);
      else if (sublevel === 'auth') {
        if (!key.equals(AUTH_STATE_KEY)) throw new Error(`auth key ${JSON.stringify(key.toString('latin1'))} is not one cairn writes`);
        AuthState.decode(value);
      }
      else if (sublevel === 'history') checkHistoryRecord(key, value);
      else if (key.equals(APPLIED_KEY)) AppliedState.decode(value);
      else throw new Error(`meta key ${JSON.stringify(key.toString('latin1'))} is not part of a snapshot`);
    } catch (err) {
      throw this.invalid(`record ${this.recordCount} (${sublevel}): ${(err as Error).message}`, err);
    }
  }

  private invalid(what: string, cause?: unknown): CairnError {
    return new CairnError(ErrorCode.INVALID_ARGUMENT, `snapshot chunk ${this.chunkCount} ${what.startsWith('record') ? `is invalid: ${what}` : what}`, { cause });
  }
}
