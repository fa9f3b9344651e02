import { Entry, HardState } from '../../gen/cairn/raft/v1/raft';
import { assert } from '../assert';
import { NO_SNAPSHOT, SnapshotPoint } from '../raft/log';
import { Db, DbOp } from './db';

const INDEX_KEY_BYTES = 8;
const HARD_STATE_KEY = Buffer.from('hard-state');

/** Log keys are 8-byte big-endian indexes, so LevelDB's byte order is log order. */
export function encodeIndexKey(index: number): Buffer {
  assert(Number.isSafeInteger(index) && index >= 0, `log index ${index} is not a safe non-negative integer`);
  const key = Buffer.alloc(INDEX_KEY_BYTES);
  key.writeUInt32BE(Math.floor(index / 0x1_0000_0000), 0);
  key.writeUInt32BE(index >>> 0, 4);
  return key;
}

export function decodeIndexKey(key: Uint8Array): number {
  assert(key.length === INDEX_KEY_BYTES, `log key of ${key.length} bytes`);
  const buffer = Buffer.from(key.buffer, key.byteOffset, key.byteLength);
  return buffer.readUInt32BE(0) * 0x1_0000_0000 + buffer.readUInt32BE(4);
}

/** The durable Raft log. */
export interface LogStore {
  /**
   * Reads back the log after the snapshot point: indexes snapshot.index + 1 .. N,
   * contiguous (without a snapshot, 1..N). A gap anywhere, including before the first
   * stored entry, fails loudly.
   */
  load(snapshot?: SnapshotPoint): Promise<Entry[]>;
  /** The operations that replace the entries at or after entries[0].index with `entries`. */
  stageAppend(entries: readonly Entry[]): DbOp[];
}

/** The durable term and vote. */
export interface HardStateStore {
  load(): Promise<HardState>;
  stageSave(hardState: HardState): DbOp[];
}

/** What the shell persists for the core: one synced batch per Ready. */
export interface RaftStorage {
  /** `snapshot` is where the state machine's snapshot ends (NO_SNAPSHOT today: nothing compacts yet). */
  load(snapshot?: SnapshotPoint): Promise<{ hardState: HardState; entries: Entry[] }>;
  /** Persists both in one synced, atomic write. */
  persist(hardState: HardState | undefined, entries: readonly Entry[]): Promise<void>;
}

export class LevelLogStore implements LogStore {
  /** The last index written (staged), so a truncation knows which keys to delete. */
  private lastIndex = 0;
  /** The snapshot index the log was loaded after: appends never reach into the snapshot. */
  private snapshotIndex = 0;

  constructor(private readonly db: Db) {}

  async load(snapshot: SnapshotPoint = NO_SNAPSHOT): Promise<Entry[]> {
    const firstIndex = snapshot.index + 1;
    const entries: Entry[] = [];
    for await (const [key, value] of this.db.entries('log')) {
      const index = decodeIndexKey(key);
      const entry = Entry.decode(value);
      assert(entry.index === index, `log key ${index} holds entry ${entry.index}`);
      const expected = firstIndex + entries.length;
      assert(
        index === expected,
        entries.length === 0
          ? `log has a gap before index ${index}: the first stored entry must be ${expected}, right after the snapshot index ${snapshot.index}`
          : `log has a gap before index ${index} (expected ${expected})`,
      );
      entries.push(entry);
    }
    this.snapshotIndex = snapshot.index;
    this.lastIndex = snapshot.index + entries.length;
    return entries;
  }

  stageAppend(entries: readonly Entry[]): DbOp[] {
    if (entries.length === 0) return [];
    const first = entries[0]!.index;
    assert(first > this.snapshotIndex, `append at ${first} inside the snapshot (snapshot index ${this.snapshotIndex})`);
    assert(first <= this.lastIndex + 1, `append at ${first} leaves a gap after ${this.lastIndex}`);
    const ops: DbOp[] = [];
    const newLast = first + entries.length - 1;
    for (let index = newLast + 1; index <= this.lastIndex; index++) {
      ops.push({ type: 'del', sublevel: 'log', key: encodeIndexKey(index) });
    }
    for (const [i, entry] of entries.entries()) {
      assert(entry.index === first + i, `entries not contiguous at ${entry.index}`);
      ops.push({ type: 'put', sublevel: 'log', key: encodeIndexKey(entry.index), value: Entry.encode(entry).finish() });
    }
    this.lastIndex = newLast;
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
    return [{ type: 'put', sublevel: 'meta', key: HARD_STATE_KEY, value: HardState.encode(hardState).finish() }];
  }
}

export class LevelRaftStorage implements RaftStorage {
  private readonly log: LevelLogStore;
  private readonly hardState: LevelHardStateStore;

  constructor(private readonly db: Db) {
    this.log = new LevelLogStore(db);
    this.hardState = new LevelHardStateStore(db);
  }

  async load(snapshot: SnapshotPoint = NO_SNAPSHOT): Promise<{ hardState: HardState; entries: Entry[] }> {
    return { hardState: await this.hardState.load(), entries: await this.log.load(snapshot) };
  }

  async persist(hardState: HardState | undefined, entries: readonly Entry[]): Promise<void> {
    const ops = [...(hardState ? this.hardState.stageSave(hardState) : []), ...this.log.stageAppend(entries)];
    await this.db.write(ops, { sync: true });
  }
}
