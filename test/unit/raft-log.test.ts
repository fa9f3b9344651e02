import { Entry, EntryType } from '../../gen/cairn/raft/v1/raft';
import { entryBytes, NO_SNAPSHOT, RaftLog } from '../../src/raft/log';
import { Command } from '../../gen/cairn/kv/v1/kv';
import { stampCommand } from '../../src/kv/log-time';
import { encodeMessage } from '../../src/proto-writer';

function entry(index: number, term: number, data = `e${index}`): Entry {
  return { index, term, type: EntryType.ENTRY_TYPE_COMMAND, data: Buffer.from(data) };
}

/** Entries from..to, all of `term`. */
function run(from: number, to: number, term: number): Entry[] {
  return Array.from({ length: to - from + 1 }, (_, i) => entry(from + i, term));
}

const SNAPSHOT = { index: 100, term: 3 };

describe('RaftLog after a snapshot point', () => {
  test('restored at 100/term 3 with entries 101..105, lookups are offset by the first index', () => {
    const log = RaftLog.restore([...run(101, 103, 3), ...run(104, 105, 4)], 100, SNAPSHOT);
    expect(log.firstIndex()).toBe(101);
    expect(log.snapshotIndex()).toBe(100);
    expect(log.snapshotTerm()).toBe(3);
    expect(log.lastIndex()).toBe(105);
    expect(log.lastTerm()).toBe(4);
    expect(log.termAt(100)).toBe(3);
    expect(log.termAt(99)).toBeUndefined();
    expect(log.termAt(0)).toBeUndefined();
    expect(log.termAt(101)).toBe(3);
    expect(log.termAt(105)).toBe(4);
    expect(log.termAt(106)).toBeUndefined();
    expect(log.entry(101).index).toBe(101);
    expect(log.entry(105).term).toBe(4);
    expect(() => log.entry(100)).toThrow(/compacted/);
    expect(log.stableIndex).toBe(105);
    expect(log.commitIndex).toBe(100);
    expect(log.appliedIndex).toBe(100);
  });

  test('an empty log at the snapshot point answers for the snapshot and appends after it', () => {
    const log = RaftLog.restore([], 100, SNAPSHOT);
    expect(log.lastIndex()).toBe(100);
    expect(log.lastTerm()).toBe(3);
    expect(log.isUpToDate(100, 3)).toBe(true);
    expect(log.isUpToDate(99, 3)).toBe(false);
    expect(log.hasUnstable()).toBe(false);
    log.appendAsLeader(entry(101, 5));
    expect(log.takeUnstable().map((e) => e.index)).toEqual([101]);
    expect(() => log.appendAsLeader(entry(103, 5))).toThrow(/leader appends index 103 after 101/);
  });

  test('slice and byte totals count from the first index', () => {
    const entries = [entry(101, 3, 'a'), entry(102, 3, 'bb'), entry(103, 3, 'ccc')];
    const log = RaftLog.restore(entries, 100, SNAPSHOT);
    expect(log.slice(101, 10, Number.MAX_SAFE_INTEGER).map((e) => e.index)).toEqual([101, 102, 103]);
    expect(log.slice(102, 1, Number.MAX_SAFE_INTEGER).map((e) => e.index)).toEqual([102]);
    expect(log.slice(104, 10, Number.MAX_SAFE_INTEGER)).toEqual([]);
    const [a, b, c] = entries.map(entryBytes) as [number, number, number];
    expect(log.bytesBetween(101, 103)).toBe(a + b + c);
    expect(log.bytesBetween(102, 103)).toBe(b + c);
    expect(log.bytesBetween(101, 101)).toBe(a);
    expect(log.bytesBetween(103, 102)).toBe(0);
    expect(log.uncommittedBytes()).toBe(a + b + c);
    log.commitTo(101);
    expect(log.uncommittedBytes()).toBe(b + c);
    expect(() => log.bytesBetween(100, 101)).toThrow(/outside the log 101\.\.103/);
    expect(() => log.slice(99, 10, Number.MAX_SAFE_INTEGER)).toThrow(/compacted/);
  });

  test('a follower matches at the snapshot point, replaces a conflicting suffix and keeps byte totals right', () => {
    const log = RaftLog.restore(run(101, 104, 3), 100, SNAPSHOT);
    // Matching prefix skipped, conflict at 103 truncates 103..104.
    const last = log.appendFromLeader(100, [entry(101, 3), entry(102, 3), entry(103, 5, 'new')]);
    expect(last).toBe(103);
    expect(log.lastIndex()).toBe(103);
    expect(log.entry(103).data.toString()).toBe('new');
    expect(log.termAt(104)).toBeUndefined();
    expect(log.stableIndex).toBe(102);
    expect(log.takeUnstable().map((e) => `${e.index}/${e.term}`)).toEqual(['103/5']);
    expect(log.bytesBetween(101, 103)).toBe(entryBytes(entry(101, 3)) + entryBytes(entry(102, 3)) + entryBytes(entry(103, 5, 'new')));
    // An append that does not reach the snapshot cannot be taken.
    expect(() => log.appendFromLeader(99, [entry(100, 3)])).toThrow(/inside the snapshot/);
  });

  test('truncation never reaches committed entries or the snapshot', () => {
    const log = RaftLog.restore(run(101, 103, 3), 100, SNAPSHOT);
    expect(() => log.appendFromLeader(100, [entry(101, 4)])).not.toThrow();
    expect(log.lastIndex()).toBe(101);
    log.commitTo(101);
    expect(() => log.appendFromLeader(100, [entry(101, 6)])).toThrow(/truncating committed entry 101/);
  });

  test('conflict search stops at the snapshot index', () => {
    const log = RaftLog.restore([...run(101, 102, 4), ...run(103, 104, 6)], 100, SNAPSHOT);
    expect(log.findConflictByTerm(104, 5)).toBe(102);
    expect(log.findConflictByTerm(104, 2)).toBe(100);
    expect(log.findConflictByTerm(200, 6)).toBe(104);
  });

  test('committed entries are handed out from the first index on', () => {
    const log = RaftLog.restore(run(101, 103, 3), 100, SNAPSHOT);
    log.commitTo(102);
    expect(log.takeCommitted(Number.MAX_SAFE_INTEGER).map((e) => e.index)).toEqual([101, 102]);
    expect(log.hasCommitted()).toBe(false);
  });

  test('restore refuses logs that start after the snapshot, gaps, and impossible points', () => {
    expect(() => RaftLog.restore(run(102, 103, 3), 100, SNAPSHOT)).toThrow(/starts at 102, after the snapshot index 100/);
    expect(() => RaftLog.restore([entry(101, 3), entry(103, 3)], 100, SNAPSHOT)).toThrow(/index 103 where 102 belongs/);
    expect(() => RaftLog.restore(run(1, 3, 1), 100, SNAPSHOT)).toThrow(/ends at 3, before the snapshot index 100/);
    expect(() => RaftLog.restore([entry(101, 2)], 100, SNAPSHOT)).toThrow(/term goes down after the snapshot at 101/);
    expect(() => RaftLog.restore(run(101, 102, 3), 99, SNAPSHOT)).toThrow(/applied index 99 below the snapshot index 100/);
    expect(() => RaftLog.restore([], 100, { index: 100, term: 0 })).toThrow(/only index 0 has term 0/);
    expect(() => RaftLog.restore([], 0, { index: -1, term: 0 })).toThrow(/snapshot index -1/);
  });

  test('without a snapshot the log starts at 1 with the 0/0 sentinel, as before', () => {
    const log = RaftLog.restore(run(1, 2, 1), 0, NO_SNAPSHOT);
    expect(log.firstIndex()).toBe(1);
    expect(log.termAt(0)).toBe(0);
    expect(log.termAt(-1)).toBeUndefined();
    expect(log.entry(1).index).toBe(1);
    expect(log.bytesBetween(1, 2)).toBe(entryBytes(entry(1, 1)) + entryBytes(entry(2, 1)));
    expect(new RaftLog().lastIndex()).toBe(0);
  });
});

describe('RaftLog keeps only the bytes of its entries', () => {
  /** Entries whose data are views into one large buffer, as a received message or a pool slab gives them. */
  function viewsIntoOneBuffer(from: number, count: number, term: number, bufferBytes = 64 * 1024): { entries: Entry[]; source: Buffer } {
    const source = Buffer.alloc(bufferBytes, 7);
    const entries = Array.from({ length: count }, (_, i) => {
      const data = source.subarray(100 + i * 10, 100 + i * 10 + 4);
      data.write(`d${from + i}`);
      return { index: from + i, term, type: EntryType.ENTRY_TYPE_COMMAND, data };
    });
    return { entries, source };
  }

  test('a follower copies the new entries of one append into a buffer of exactly their bytes', () => {
    const log = RaftLog.restore(run(101, 102, 3), 100, SNAPSHOT);
    const { entries, source } = viewsIntoOneBuffer(101, 5, 3);
    log.appendFromLeader(100, entries);
    // 101 and 102 were there already; 103..105 are new and share one 12-byte buffer.
    expect(log.entry(101).data.toString()).toBe('e101');
    for (const index of [103, 104, 105]) {
      const data = log.entry(index).data;
      expect(data.buffer).not.toBe(source.buffer);
      expect(data.buffer.byteLength).toBe(12);
      expect(data.toString()).toBe(`d${index}`);
    }
    expect(log.bytesBetween(103, 105)).toBe(entries.slice(2).reduce((sum, e) => sum + entryBytes(e), 0));
  });

  test('after a conflict, the replacing entries are copied too', () => {
    const log = RaftLog.restore(run(101, 104, 3), 100, SNAPSHOT);
    const { entries } = viewsIntoOneBuffer(102, 2, 5);
    log.appendFromLeader(101, entries);
    expect(log.lastIndex()).toBe(103);
    expect(log.entry(102).data.buffer.byteLength).toBe(8);
    expect(log.entry(103).data.toString()).toBe('d103');
  });

  test('a leader copies a view into a larger buffer, and keeps data that owns its buffer as it is', () => {
    const log = RaftLog.restore([], 100, SNAPSHOT);
    const { entries } = viewsIntoOneBuffer(101, 1, 4);
    log.appendAsLeader(entries[0]!);
    expect(log.entry(101).data.buffer.byteLength).toBe(4);
    expect(log.entry(101).data.toString()).toBe('d101');
    const owning = { index: 102, term: 4, type: EntryType.ENTRY_TYPE_COMMAND, data: Buffer.from(new Uint8Array([1, 2, 3]).buffer) };
    log.appendAsLeader(owning);
    expect(log.entry(102)).toBe(owning);
  });
});

describe('stampCommand', () => {
  test('gives a stamped command a buffer of its own, so the leader log keeps it without a copy', () => {
    const encoded = encodeMessage(Command, Command.fromPartial({ op: { $case: 'put', value: { key: Buffer.from('k'), value: Buffer.from('v') } }, proposedAtUnixMs: 5 }));
    const stamped = stampCommand(encoded, 1234);
    expect(stamped.byteOffset).toBe(0);
    expect(stamped.buffer.byteLength).toBe(stamped.byteLength);
    expect(Command.decode(stamped).proposedAtUnixMs).toBe(1234);
    const log = RaftLog.restore([], 100, SNAPSHOT);
    const proposed = { index: 101, term: 3, type: EntryType.ENTRY_TYPE_COMMAND, data: Buffer.from(stamped.buffer, stamped.byteOffset, stamped.byteLength) };
    log.appendAsLeader(proposed);
    expect(log.entry(101)).toBe(proposed);
  });
});
