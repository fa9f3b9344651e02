import { ClusterConfig, Entry } from '../../gen/cairn/raft/v1/raft';
import { assert } from '../assert';

/**
 * An upper bound on the protobuf framing of one entry inside an AppendRequest: the
 * field tag and length of the entry itself (6 bytes), index and term as tagged varints
 * (11 bytes each at most), the type (2 bytes for the values that exist), and the data
 * field's tag and length (6 bytes). Byte limits count `entryBytes`, so a message built
 * under a byte budget encodes to at most that budget plus a fixed header.
 */
export const ENTRY_FRAMING_BYTES = 36;

/** The bytes an entry costs against every byte limit: its data plus its framing. */
export function entryBytes(entry: { data: Uint8Array }): number {
  return dataBytes(entry.data);
}

/** entryBytes of an entry carrying `data`, before the entry exists. */
export function dataBytes(data: Uint8Array): number {
  return data.length + ENTRY_FRAMING_BYTES;
}

/**
 * The last log entry a snapshot covers: entries up to `index` are no longer in the log,
 * only their effect in the state machine. {0, 0} (NO_SNAPSHOT) is the empty log's sentinel.
 */
export interface SnapshotPoint {
  index: number;
  term: number;
  /** The configuration at `index`, when the snapshot recorded one. */
  config?: ClusterConfig;
}

export const NO_SNAPSHOT: SnapshotPoint = Object.freeze({ index: 0, term: 0 });

/** Whether `data` is all of its ArrayBuffer (not a view into a larger one). */
function ownsItsBuffer(data: Uint8Array): boolean {
  return data.byteOffset === 0 && data.byteLength === data.buffer.byteLength;
}

/**
 * `entries` as the log keeps them in memory: each one's data owns its buffer, or the
 * entries share one buffer of exactly their bytes. A view into a larger buffer (a slab of
 * Node's Buffer pool, 64 KiB on Node 26, or the received gRPC message) would keep all of
 * that buffer alive for as long as the entry stays in the log: measured on a leader at
 * about 3 KB held per 330-byte entry, up to the 15,000 entries a log keeps between
 * compactions by default. Entries appended together mostly leave the log together
 * (compaction, or a truncation of the tail), so they share one buffer: where a compaction
 * point or a conflict splits them, the rest keep at most one append's bytes alive.
 */
export function withOwnedData(entries: readonly Entry[]): readonly Entry[] {
  let bytes = 0;
  let owned = true;
  for (const entry of entries) {
    bytes += entry.data.byteLength;
    owned &&= ownsItsBuffer(entry.data);
  }
  if (owned) return entries;
  const shared = Buffer.allocUnsafeSlow(bytes);
  let offset = 0;
  const copies = entries.map((entry) => {
    shared.set(entry.data, offset);
    const data = shared.subarray(offset, offset + entry.data.byteLength);
    offset += entry.data.byteLength;
    return { ...entry, data };
  });
  assert(offset === shared.byteLength, () => `copied ${offset} bytes of entry data into a buffer of ${shared.byteLength}`);
  return copies;
}

function assertSnapshotPoint(snapshot: SnapshotPoint): void {
  assert(Number.isSafeInteger(snapshot.index) && snapshot.index >= 0, () => `snapshot index ${snapshot.index} is not a safe non-negative integer`);
  assert(Number.isSafeInteger(snapshot.term) && snapshot.term >= 0, () => `snapshot term ${snapshot.term} is not a safe non-negative integer`);
  assert((snapshot.index === 0) === (snapshot.term === 0), () => `snapshot point ${snapshot.index}/${snapshot.term}: only index 0 has term 0`);
}

/**
 * The in-memory view of a node's Raft log, and the bookkeeping of how much of it is
 * durable, committed and handed out for applying.
 *
 * The snapshot point (`snapshotIndex()`, `snapshotTerm()`) is the last index the state
 * machine's snapshot covers; it stands in for the entries before it as the sentinel that
 * AppendRequest consistency checks match against. Without a snapshot it is index 0, term 0.
 * The log holds the contiguous entries from `firstIndex()` on. Compaction keeps a tail of
 * entries before the snapshot point for slow followers, so the first index may lie at or
 * before it (firstIndex <= snapshotIndex + 1); with no entries it is snapshotIndex + 1.
 * Every position in the arrays is `index - firstIndex()`. The durable copy lives in a
 * LogStore, and `stableIndex` says how far it goes.
 *
 *   firstIndex <= snapshotIndex + 1, snapshotIndex <= appliedIndex .. commitIndex .. lastIndex
 *   (a follower may know entries are committed before it has persisted them, so
 *   commitIndex and stableIndex are not ordered; entries are applied only once both)
 */
export class RaftLog {
  /** entries[index - first]: contiguous, from `first` on. */
  private entries: Entry[] = [];
  /** bytesThrough[index - first]: the sum of entryBytes from `first` through index (so byte budgets cost no scan). */
  private bytesThrough: number[] = [];
  /** The index of entries[0] (snapshot index + 1 when the log holds none). */
  private first: number;
  private snapshot: SnapshotPoint;
  /** Highest index known to be durable (synced) in the LogStore (or covered by the snapshot). */
  stableIndex: number;
  /** First index not yet handed to storage for persisting. */
  private unstableFrom: number;
  commitIndex: number;
  /** Highest index handed out for applying. */
  appliedIndex: number;

  /** An empty log after `snapshot`: everything up to it is durable, committed and applied. */
  constructor(snapshot: SnapshotPoint = NO_SNAPSHOT) {
    assertSnapshotPoint(snapshot);
    this.snapshot = { ...snapshot };
    this.first = snapshot.index + 1;
    this.stableIndex = snapshot.index;
    this.unstableFrom = snapshot.index + 1;
    this.commitIndex = snapshot.index;
    this.appliedIndex = snapshot.index;
  }

  /**
   * Restores a log that was read back from storage: all of it is durable. `entries` must
   * be contiguous and start at or before snapshot.index + 1 (compaction keeps a tail
   * before the snapshot point), and reach the snapshot index when they start before it;
   * the state machine has applied at least through the snapshot (it was restored from it).
   */
  static restore(entries: readonly Entry[], appliedIndex: number, snapshot: SnapshotPoint = NO_SNAPSHOT): RaftLog {
    const log = new RaftLog(snapshot);
    const start = entries[0]?.index ?? snapshot.index + 1;
    assert(start >= 1 && start <= snapshot.index + 1, () => `restored log starts at ${start}, after the snapshot index ${snapshot.index} + 1`);
    log.first = start;
    entries.forEach((entry, i) => {
      const expected = start + i;
      assert(entry.index === expected, () => `restored log has index ${entry.index} where ${expected} belongs (snapshot index ${log.snapshotIndex()})`);
      if (i > 0) assert(entry.term >= entries[i - 1]!.term, () => `restored log term goes down at index ${entry.index}`);
      if (entry.index === snapshot.index) assert(entry.term === snapshot.term, () => `restored entry ${entry.index} has term ${entry.term}, the snapshot says ${snapshot.term}`);
      if (entry.index === snapshot.index + 1) assert(entry.term >= snapshot.term, () => `restored log term goes down after the snapshot at ${entry.index}`);
      log.push(entry);
    });
    if (entries.length > 0) {
      assert(log.lastIndex() >= snapshot.index, () => `restored log ends at ${log.lastIndex()}, before the snapshot index ${snapshot.index}`);
    }
    assert(appliedIndex >= log.snapshotIndex(), () => `applied index ${appliedIndex} below the snapshot index ${log.snapshotIndex()}`);
    assert(appliedIndex <= log.lastIndex(), () => `applied index ${appliedIndex} beyond restored log end ${log.lastIndex()}`);
    log.stableIndex = log.lastIndex();
    log.unstableFrom = log.lastIndex() + 1;
    log.commitIndex = appliedIndex;
    log.appliedIndex = appliedIndex;
    return log;
  }

  /** The first index the log holds (or would hold next, when empty): at most snapshotIndex() + 1. */
  firstIndex(): number {
    return this.first;
  }

  /** The last index the snapshot covers (0 without one): termAt answers for it. */
  snapshotIndex(): number {
    return this.snapshot.index;
  }

  snapshotTerm(): number {
    return this.snapshot.term;
  }

  /** The snapshot point, with the configuration the snapshot recorded (if any). */
  snapshotPoint(): SnapshotPoint {
    return this.snapshot;
  }

  lastIndex(): number {
    return this.entries.length > 0 ? this.first + this.entries.length - 1 : this.snapshot.index;
  }

  lastTerm(): number {
    return this.termAt(this.lastIndex())!;
  }

  /**
   * The term of the entry at `index`: the snapshot term at the snapshot index (0 at index
   * 0 without a snapshot), the entry's term for the entries the log holds, undefined
   * otherwise (compacted, or beyond the end).
   */
  termAt(index: number): number | undefined {
    if (index === this.snapshot.index) return this.snapshot.term;
    if (index < this.first) return undefined;
    return this.entries[index - this.first]?.term;
  }

  entry(index: number): Entry {
    assert(index >= this.first, () => `entry ${index} is compacted (first index ${this.first})`);
    const entry = this.entries[index - this.first];
    assert(entry !== undefined, () => `no entry at index ${index} (last ${this.lastIndex()})`);
    return entry;
  }

  /** Whether a candidate's log, ending at (lastIndex, lastTerm), is at least as up to date as ours. */
  isUpToDate(lastIndex: number, lastTerm: number): boolean {
    return lastTerm > this.lastTerm() || (lastTerm === this.lastTerm() && lastIndex >= this.lastIndex());
  }

  /** The summed entryBytes of the entries in [from, to] (0 when the range is empty). */
  bytesBetween(from: number, to: number): number {
    if (to < from) return 0;
    const first = this.firstIndex();
    assert(from >= first && to <= this.lastIndex(), () => `byte range [${from}, ${to}] outside the log ${first}..${this.lastIndex()}`);
    return this.bytesThrough[to - first]! - (from > first ? this.bytesThrough[from - first - 1]! : 0);
  }

  /** Bytes of the entries a leader has not yet committed: what back-pressure bounds. */
  uncommittedBytes(): number {
    return this.bytesBetween(this.commitIndex + 1, this.lastIndex());
  }

  /**
   * Entries from `from` on, at most `maxCount` of them and, beyond the first, at most
   * `maxBytes` (counted as entryBytes) in all. The first always comes, so one entry
   * larger than every budget still moves.
   */
  slice(from: number, maxCount: number, maxBytes: number): Entry[] {
    const out: Entry[] = [];
    let bytes = 0;
    for (let index = from; index <= this.lastIndex() && out.length < maxCount; index++) {
      const entry = this.entry(index);
      bytes += entryBytes(entry);
      if (out.length > 0 && bytes > maxBytes) break;
      out.push(entry);
    }
    return out;
  }

  /**
   * The largest index <= `index` whose term is <= `term`: where two logs may still agree.
   * It stops at the snapshot index: a snapshot holds only committed entries, which every
   * leader's log shares.
   */
  findConflictByTerm(index: number, term: number): number {
    let i = Math.min(index, this.lastIndex());
    while (i > this.snapshot.index && this.termAt(i)! > term) i--;
    return i;
  }

  /** A leader appends its own new entries. */
  appendAsLeader(entry: Entry): void {
    assert(entry.index === this.lastIndex() + 1, () => `leader appends index ${entry.index} after ${this.lastIndex()}`);
    assert(entry.term >= this.lastTerm(), () => `leader appends term ${entry.term} after term ${this.lastTerm()}`);
    this.push(withOwnedData([entry])[0]!);
  }

  /**
   * A follower takes a leader's entries that follow a matching (prevIndex, prevTerm):
   * entries it already has are skipped, the first conflicting one and everything after
   * it is replaced. Returns the index of the last entry now known to match the leader.
   */
  appendFromLeader(prevIndex: number, entries: readonly Entry[]): number {
    assert(prevIndex <= this.lastIndex(), () => `append after ${prevIndex} beyond log end ${this.lastIndex()}`);
    assert(prevIndex >= this.snapshot.index, () => `append after ${prevIndex}, inside the snapshot (snapshot index ${this.snapshot.index})`);
    for (const [i, entry] of entries.entries()) {
      assert(entry.index === prevIndex + 1 + i, () => `leader sent index ${entry.index} at offset ${i} after ${prevIndex}`);
    }
    const firstNew = entries.findIndex((entry) => this.termAt(entry.index) !== entry.term);
    if (firstNew >= 0) {
      // From the first entry we lack on, all are new: the truncation removes what followed it.
      if (this.termAt(entries[firstNew]!.index) !== undefined) this.truncateFrom(entries[firstNew]!.index);
      for (const entry of withOwnedData(entries.slice(firstNew))) this.push(entry);
    }
    return prevIndex + entries.length;
  }

  private truncateFrom(index: number): void {
    assert(index > this.commitIndex, () => `truncating committed entry ${index} (commit ${this.commitIndex})`);
    assert(index > this.appliedIndex, () => `truncating applied entry ${index} (applied ${this.appliedIndex})`);
    assert(index > this.snapshot.index, () => `truncating entry ${index} covered by the snapshot at ${this.snapshot.index}`);
    this.entries.length = index - this.first;
    this.bytesThrough.length = index - this.first;
    this.stableIndex = Math.min(this.stableIndex, index - 1);
    this.unstableFrom = Math.min(this.unstableFrom, index);
  }

  /** Hands out the entries that storage must persist next; truncation is implied by the first index. */
  takeUnstable(): Entry[] {
    const out = this.entries.slice(Math.max(0, this.unstableFrom - this.first));
    this.unstableFrom = this.lastIndex() + 1;
    return out;
  }

  hasUnstable(): boolean {
    return this.unstableFrom <= this.lastIndex();
  }

  /**
   * Storage finished persisting entries up to (index, term). Ignored when the log has
   * since been truncated there: the entries that replaced them are on their way.
   */
  markStable(index: number, term: number): void {
    if (this.termAt(index) !== term) return;
    this.stableIndex = Math.max(this.stableIndex, index);
    assert(this.stableIndex < this.unstableFrom, () => `stable ${this.stableIndex} beyond handed-out ${this.unstableFrom - 1}`);
  }

  commitTo(index: number): void {
    if (index <= this.commitIndex) return;
    assert(index <= this.lastIndex(), () => `commit ${index} beyond log end ${this.lastIndex()}`);
    this.commitIndex = index;
  }

  /**
   * Committed entries that are durable here and not yet handed out for applying, at
   * most `maxBytes` of them (counted as entryBytes) beyond the first, so a huge entry is
   * never stuck. The rest stay for the next call; hasCommitted() says whether any do.
   */
  takeCommitted(maxBytes: number): Entry[] {
    const upTo = Math.min(this.commitIndex, this.stableIndex);
    if (upTo <= this.appliedIndex) return [];
    const out = this.slice(this.appliedIndex + 1, upTo - this.appliedIndex, maxBytes);
    this.appliedIndex += out.length;
    return out;
  }

  hasCommitted(): boolean {
    return Math.min(this.commitIndex, this.stableIndex) > this.appliedIndex;
  }

  /**
   * Moves the snapshot point to `snapshot` (an applied index of this log, with its term)
   * and drops the entries up to `compactThrough` (at most the snapshot index): the
   * entries between them stay, for followers that are only a little behind.
   */
  compact(snapshot: SnapshotPoint, compactThrough: number): void {
    assertSnapshotPoint(snapshot);
    assert(snapshot.index >= this.snapshot.index, () => `compaction at ${snapshot.index} below the snapshot index ${this.snapshot.index}`);
    assert(snapshot.index <= this.appliedIndex, () => `compaction at ${snapshot.index} beyond the applied index ${this.appliedIndex}`);
    assert(this.termAt(snapshot.index) === snapshot.term, () => `compaction at ${snapshot.index} with term ${snapshot.term}, the log says ${this.termAt(snapshot.index)}`);
    assert(compactThrough <= snapshot.index, () => `compacting through ${compactThrough}, beyond the snapshot index ${snapshot.index}`);
    this.snapshot = { ...snapshot };
    this.dropThrough(compactThrough);
  }

  /**
   * Installs a snapshot from the leader (Raft Figure 13): the snapshot point becomes
   * `snapshot`, everything up to it is committed and counts as applied (the state machine
   * is replaced), and the entries up to it go. When the log holds an entry at the
   * snapshot index with the snapshot's term (`keepsTail`), the entries after it match the
   * leader's log (Log Matching) and stay; otherwise the whole log is discarded.
   */
  installSnapshot(snapshot: SnapshotPoint): { keptTail: boolean } {
    assertSnapshotPoint(snapshot);
    assert(snapshot.index > this.commitIndex, () => `installing a snapshot at ${snapshot.index}, at or below the commit index ${this.commitIndex}`);
    const keptTail = snapshot.index <= this.lastIndex() && this.termAt(snapshot.index) === snapshot.term;
    if (keptTail) {
      this.dropThrough(snapshot.index);
    } else {
      this.entries = [];
      this.bytesThrough = [];
    }
    this.snapshot = { ...snapshot };
    this.first = snapshot.index + 1;
    this.stableIndex = Math.max(this.stableIndex, snapshot.index);
    this.unstableFrom = Math.max(this.unstableFrom, snapshot.index + 1);
    if (!keptTail) {
      this.stableIndex = snapshot.index;
      this.unstableFrom = snapshot.index + 1;
    }
    this.commitIndex = snapshot.index;
    this.appliedIndex = snapshot.index;
    return { keptTail };
  }

  /** Drops the entries up to `index` from memory (the ones the log holds). */
  private dropThrough(index: number): void {
    const count = Math.min(Math.max(0, index - this.first + 1), this.entries.length);
    if (count === 0) return;
    const droppedBytes = this.bytesThrough[count - 1]!;
    this.entries = this.entries.slice(count);
    this.bytesThrough = this.bytesThrough.slice(count).map((bytes) => bytes - droppedBytes);
    this.first += count;
    if (this.entries.length === 0) this.first = this.snapshot.index + 1;
  }

  private push(entry: Entry): void {
    const before = this.bytesThrough.length > 0 ? this.bytesThrough[this.bytesThrough.length - 1]! : 0;
    this.entries.push(entry);
    this.bytesThrough.push(before + entryBytes(entry));
  }
}
