import { Entry } from '../../gen/cairn/raft/v1/raft';
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
 * The in-memory view of a node's Raft log, and the bookkeeping of how much of it is
 * durable, committed and handed out for applying.
 *
 * Index 0 is a sentinel with term 0. Every entry the node holds is in memory; the
 * durable copy lives in a LogStore, and `stableIndex` says how far it goes.
 *
 *   1 ........ appliedIndex ..... commitIndex ..... stableIndex ..... lastIndex
 *   (a follower may know entries are committed before it has persisted them, so
 *   commitIndex and stableIndex are not ordered; entries are applied only once both)
 */
export class RaftLog {
  private readonly entries: Entry[] = [];
  /** bytesThrough[i - 1]: the sum of entryBytes over entries 1..i (so byte budgets cost no scan). */
  private readonly bytesThrough: number[] = [];
  /** Highest index known to be durable (synced) in the LogStore. */
  stableIndex = 0;
  /** First index not yet handed to storage for persisting. */
  private unstableFrom = 1;
  commitIndex = 0;
  /** Highest index handed out for applying. */
  appliedIndex = 0;

  /** Restores a log that was read back from storage: all of it is durable. */
  static restore(entries: readonly Entry[], appliedIndex: number): RaftLog {
    const log = new RaftLog();
    entries.forEach((entry, i) => {
      assert(entry.index === i + 1, () => `restored log has index ${entry.index} at position ${i + 1}`);
      assert(i === 0 || entry.term >= entries[i - 1]!.term, () => `restored log term goes down at index ${entry.index}`);
      log.push(entry);
    });
    assert(appliedIndex <= log.lastIndex(), () => `applied index ${appliedIndex} beyond restored log end ${log.lastIndex()}`);
    log.stableIndex = log.lastIndex();
    log.unstableFrom = log.lastIndex() + 1;
    log.commitIndex = appliedIndex;
    log.appliedIndex = appliedIndex;
    return log;
  }

  lastIndex(): number {
    return this.entries.length;
  }

  lastTerm(): number {
    return this.termAt(this.lastIndex())!;
  }

  /** The term of the entry at `index`, 0 for the sentinel, undefined beyond the end. */
  termAt(index: number): number | undefined {
    if (index === 0) return 0;
    return this.entries[index - 1]?.term;
  }

  entry(index: number): Entry {
    const entry = this.entries[index - 1];
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
    assert(from >= 1 && to <= this.lastIndex(), () => `byte range [${from}, ${to}] outside the log 1..${this.lastIndex()}`);
    return this.bytesThrough[to - 1]! - (from > 1 ? this.bytesThrough[from - 2]! : 0);
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

  /** The largest index <= `index` whose term is <= `term`: where two logs may still agree. */
  findConflictByTerm(index: number, term: number): number {
    let i = Math.min(index, this.lastIndex());
    while (i > 0 && this.termAt(i)! > term) i--;
    return i;
  }

  /** A leader appends its own new entries. */
  appendAsLeader(entry: Entry): void {
    assert(entry.index === this.lastIndex() + 1, () => `leader appends index ${entry.index} after ${this.lastIndex()}`);
    assert(entry.term >= this.lastTerm(), () => `leader appends term ${entry.term} after term ${this.lastTerm()}`);
    this.push(entry);
  }

  /**
   * A follower takes a leader's entries that follow a matching (prevIndex, prevTerm):
   * entries it already has are skipped, the first conflicting one and everything after
   * it is replaced. Returns the index of the last entry now known to match the leader.
   */
  appendFromLeader(prevIndex: number, entries: readonly Entry[]): number {
    assert(prevIndex <= this.lastIndex(), () => `append after ${prevIndex} beyond log end ${this.lastIndex()}`);
    for (const [i, entry] of entries.entries()) {
      assert(entry.index === prevIndex + 1 + i, () => `leader sent index ${entry.index} at offset ${i} after ${prevIndex}`);
      const existingTerm = this.termAt(entry.index);
      if (existingTerm === entry.term) continue;
      if (existingTerm !== undefined) this.truncateFrom(entry.index);
      this.push(entry);
    }
    return prevIndex + entries.length;
  }

  private truncateFrom(index: number): void {
    assert(index > this.commitIndex, () => `truncating committed entry ${index} (commit ${this.commitIndex})`);
    assert(index > this.appliedIndex, () => `truncating applied entry ${index} (applied ${this.appliedIndex})`);
    this.entries.length = index - 1;
    this.bytesThrough.length = index - 1;
    this.stableIndex = Math.min(this.stableIndex, index - 1);
    this.unstableFrom = Math.min(this.unstableFrom, index);
  }

  /** Hands out the entries that storage must persist next; truncation is implied by the first index. */
  takeUnstable(): Entry[] {
    const out = this.entries.slice(this.unstableFrom - 1);
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

  private push(entry: Entry): void {
    const before = this.bytesThrough.length > 0 ? this.bytesThrough[this.bytesThrough.length - 1]! : 0;
    this.entries.push(entry);
    this.bytesThrough.push(before + entryBytes(entry));
  }
}
