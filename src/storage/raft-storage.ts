import { Entry, HardState, SnapshotMeta } from '../../gen/cairn/raft/v1/raft';
import { StoredSnapshot } from '../../gen/cairn/storage/v1/storage';
import { assert } from '../assert';
import { NO_SNAPSHOT, SnapshotPoint } from '../raft/log';
import { Db, DbOp } from './db';
import { encodeMessage } from '../proto-writer';

const INDEX_KEY_BYTES = 8;
const HARD_STATE_KEY = Buffer.from('hard-state');
/** meta/snapshot: the StoredSnapshot of the node's latest snapshot (compaction or install). */
export const SNAPSHOT_KEY = Buffer.from('snapshot');

/** Log keys are 8-byte big-endian indexes, so LevelDB's byte order is log order. */
export function encodeIndexKey(index: number): Buffer {
  assert(Number.isSafeInteger(index) && index >= 0, () => `log index ${index} is not a safe non-negative integer`);
  const key = Buffer.alloc(INDEX_KEY_BYTES);
  key.writeUInt32BE(Math.floor(index / 0x1_0000_0000), 0);
  key.writeUInt32BE(index >>> 0, 4);
  return key;
}

export function decodeIndexKey(key: Uint8Array): number {
  assert(key.length === INDEX_KEY_BYTES, () => `log key of ${key.length} bytes`);
  const buffer = Buffer.from(key.buffer, key.byteOffset, key.byteLength);
  return buffer.readUInt32BE(0) * 0x1_0000_0000 + buffer.readUInt32BE(4);
}

/** The durable Raft log. */
export interface LogStore {
  /**
   * Reads back the log: contiguous entries F..N with F <= snapshot.index + 1 (compaction
   * keeps a tail before the snapshot point) and, when F is before it, N >= snapshot.index
   * (without a snapshot, 1..N). A gap anywhere, or a first entry after snapshot.index + 1,
   * fails loudly.
   */
  load(snapshot?: SnapshotPoint): Promise<Entry[]>;
  /** The operations that replace the entries at or after entries[0].index with `entries`. */
  stageAppend(entries: readonly Entry[]): DbOp[];
  /** The operations that delete the stored entries up to `compactThrough`. */
  stageCompact(compactThrough: number): DbOp[];
  /**
   * The operations that delete what an installed snapshot at `snapshotIndex` replaces:
   * every stored entry up to it, and every one after `keptLastIndex` (the core's last
   * index after the install: the snapshot index itself when it discarded its whole log).
   */
  stageInstall(snapshotIndex: number, keptLastIndex: number): DbOp[];
}

/** The durable term and vote. */
export interface HardStateStore {
  load(): Promise<HardState>;
  stageSave(hardState: HardState): DbOp[];
}

/** What the shell persists for the core: one synced batch per Ready. */
export interface RaftStorage {
  /**
   * The hard state, the latest snapshot's meta (from meta/snapshot, undefined when the
   * node never compacted nor installed one) and the log read back after it (LogStore.load).
   */
  load(): Promise<{ hardState: HardState; entries: Entry[]; snapshot?: SnapshotMeta }>;
  /** Persists both in one synced, atomic write. */
  persist(hardState: HardState | undefined, entries: readonly Entry[]): Promise<void>;
  /** The operations persist() would write, for a batch that carries more (an installed snapshot). */
  stagePersist(hardState: HardState | undefined, entries: readonly Entry[]): DbOp[];
  /** Compaction: meta/snapshot = `snapshot`, and the stored entries up to `compactThrough` go. */
  stageCompaction(snapshot: SnapshotMeta, compactThrough: number): DbOp[];
  /** An installed snapshot: meta/snapshot = `snapshot`, and the entries it replaces go (LogStore.stageInstall). */
  stageInstall(snapshot: SnapshotMeta, keptLastIndex: number): DbOp[];
  /** Writes staged operations (with the state machine's own) in one synced, atomic batch. */
  writeSynced(ops: readonly DbOp[]): Promise<void>;
  /** Makes every earlier write durable, unsynced ones included (Db.flushToDisk): before compaction and install batches. */
  flushToDisk(): Promise<void>;
}

export class LevelLogStore implements LogStore {
  /** The last index written (staged), so a truncation knows which keys to delete (the snapshot index when none is stored). */
  private lastIndex = 0;
  /** The first index stored (staged): compaction and installs delete from here. */
  private firstIndex = 1;
  /** The snapshot index the log was loaded after: appends never reach into the snapshot. */
  private snapshotIndex = 0;

  constructor(private readonly db: Db) {}

  async load(snapshot: SnapshotPoint = NO_SNAPSHOT): Promise<Entry[]> {
    const entries: Entry[] = [];
    for await (const [key, value] of this.db.entries('log')) {
      const index = decodeIndexKey(key);
      const entry = Entry.decode(value);
      assert(entry.index === index, () => `log key ${index} holds entry ${entry.index}`);
      if (entries.length === 0) {
        assert(
          index <= snapshot.index + 1,
          `log has a gap before index ${index}: the first stored entry must be at most ${snapshot.index + 1}, right after the snapshot index ${snapshot.index}`,
        );
      } else {
        const expected = entries[0]!.index + entries.length;
        assert(index === expected, () => `log has a gap before index ${index} (expected ${expected})`);
      }
      entries.push(entry);
    }
    const last = entries[entries.length - 1]?.index;
    assert(last === undefined || last >= snapshot.index, () => `log ends at ${last}, before the snapshot index ${snapshot.index}`);
    this.snapshotIndex = snapshot.index;
    this.firstIndex = entries[0]?.index ?? snapshot.index + 1;
    this.lastIndex = last ?? snapshot.index;
    return entries;
  }

  stageAppend(entries: readonly Entry[]): DbOp[] {
    if (entries.length === 0) return [];
    const first = entries[0]!.index;
    assert(first > this.snapshotIndex, () => `append at ${first} inside the snapshot (snapshot index ${this.snapshotIndex})`);
    assert(first <= this.lastIndex + 1, () => `append at ${first} leaves a gap after ${this.lastIndex}`);
    const ops: DbOp[] = [];
    const newLast = first + entries.length - 1;
    for (let index = newLast + 1; index <= this.lastIndex; index++) {
      ops.push({ type: 'del', sublevel: 'log', key: encodeIndexKey(index) });
    }
    for (const [i, entry] of entries.entries()) {
      assert(entry.index === first + i, () => `entries not contiguous at ${entry.index}`);
      ops.push({ type: 'put', sublevel: 'log', key: encodeIndexKey(entry.index), value: encodeMessage(Entry, entry) });
    }
    this.lastIndex = newLast;
    return ops;
  }

  stageCompact(compactThrough: number): DbOp[] {
    assert(compactThrough <= this.lastIndex, () => `compacting through ${compactThrough}, beyond the stored log end ${this.lastIndex}`);
    const ops = this.deleteRange(this.firstIndex, compactThrough);
    this.firstIndex = Math.max(this.firstIndex, compactThrough + 1);
    return ops;
  }

  stageInstall(snapshotIndex: number, keptLastIndex: number): DbOp[] {
    assert(keptLastIndex >= snapshotIndex, () => `kept log end ${keptLastIndex} before the snapshot index ${snapshotIndex}`);
    const ops = [...this.deleteRange(this.firstIndex, Math.min(snapshotIndex, this.lastIndex)), ...this.deleteRange(Math.max(keptLastIndex + 1, this.firstIndex), this.lastIndex)];
    this.snapshotIndex = snapshotIndex;
    this.firstIndex = snapshotIndex + 1;
    this.lastIndex = Math.max(snapshotIndex, Math.min(this.lastIndex, keptLastIndex));
    return ops;
  }

  private deleteRange(from: number, through: number): DbOp[] {
    const ops: DbOp[] = [];
    for (let index = from; index <= through; index++) ops.push({ type: 'del', sublevel: 'log', key: encodeIndexKey(index) });
    return ops;
  }
}

export class LevelHardStateStore implements HardStateStore {
  constructor(private readonly db: Db) {}

  async load(): Promise<HardState> {
    const value = await this.db.get('meta', HARD_STATE_KEY);
    return value ? HardState.decode(value) : { term: 0, votedFor: 0 };
  }

  stageSave(hardState: HardState): DbOp[] {
    return [{ type: 'put', sublevel: 'meta', key: HARD_STATE_KEY, value: encodeMessage(HardState, hardState) }];
  }
}

export class LevelRaftStorage implements RaftStorage {
  private readonly log: LevelLogStore;
  private readonly hardState: LevelHardStateStore;

  constructor(private readonly db: Db) {
    this.log = new LevelLogStore(db);
    this.hardState = new LevelHardStateStore(db);
  }

  async load(): Promise<{ hardState: HardState; entries: Entry[]; snapshot?: SnapshotMeta }> {
    const stored = await this.db.get('meta', SNAPSHOT_KEY);
    const snapshot = stored ? StoredSnapshot.decode(stored).meta : undefined;
    const point = snapshot ? { index: snapshot.index, term: snapshot.term } : NO_SNAPSHOT;
    return { hardState: await this.hardState.load(), entries: await this.log.load(point), ...(snapshot ? { snapshot } : {}) };
  }

  async persist(hardState: HardState | undefined, entries: readonly Entry[]): Promise<void> {
    await this.writeSynced(this.stagePersist(hardState, entries));
  }

  stagePersist(hardState: HardState | undefined, entries: readonly Entry[]): DbOp[] {
    return [...(hardState ? this.hardState.stageSave(hardState) : []), ...this.log.stageAppend(entries)];
  }

  stageCompaction(snapshot: SnapshotMeta, compactThrough: number): DbOp[] {
    assert(compactThrough <= snapshot.index, () => `compacting through ${compactThrough}, beyond the snapshot index ${snapshot.index}`);
    return [...this.log.stageCompact(compactThrough), putSnapshot(snapshot)];
  }

  stageInstall(snapshot: SnapshotMeta, keptLastIndex: number): DbOp[] {
    return [...this.log.stageInstall(snapshot.index, keptLastIndex), putSnapshot(snapshot)];
  }

  async writeSynced(ops: readonly DbOp[]): Promise<void> {
    await this.db.write(ops, { sync: true });
  }

  /** Makes every earlier write durable, unsynced ones included (Db.flushToDisk), before a batch that depends on them. */
  async flushToDisk(): Promise<void> {
    await this.db.flushToDisk();
  }
}

function putSnapshot(snapshot: SnapshotMeta): DbOp {
  return { type: 'put', sublevel: 'meta', key: SNAPSHOT_KEY, value: encodeMessage(StoredSnapshot, { meta: snapshot }) };
}
