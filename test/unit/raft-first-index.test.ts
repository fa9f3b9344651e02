import { Entry, EntryType } from '../../gen/cairn/raft/v1/raft';
import { NodeId, RestoredState } from '../../src/raft/node';
import { RaftNetwork } from '../support/raft-network';

const SNAPSHOT = { index: 100, term: 3 };

function entry(index: number, term: number): Entry {
  return { index, term, type: EntryType.ENTRY_TYPE_COMMAND, data: Buffer.from(`e${index}`) };
}

/** Restored after the snapshot at 100/term 3, with the log tail 101..lastIndex of term 3. */
function afterSnapshot(lastIndex: number): RestoredState {
  const entries = Array.from({ length: lastIndex - SNAPSHOT.index }, (_, i) => entry(SNAPSHOT.index + 1 + i, 3));
  return { hardState: { term: 3, votedFor: 0 }, entries, appliedIndex: SNAPSHOT.index, snapshot: SNAPSHOT };
}

describe('RaftNode restored from a snapshot point', () => {
  test('elects a leader and replicates the tail and new entries to followers restored the same way', () => {
    const tails: Record<NodeId, number> = { 1: 103, 2: 101, 3: 100 };
    const net = new RaftNetwork(3, {}, (id) => afterSnapshot(tails[id]!));
    net.elect(1);
    expect(net.leaders()).toEqual([1]);
    expect(net.node(1).term).toBe(4);
    // The leader's no-op of term 4 commits 101..104; the shorter followers are filled in from the tail.
    expect(net.node(1).status().commitIndex).toBe(104);
    net.node(1).propose(Buffer.from('after'));
    net.settle();
    // Followers learn the new commit index from the next heartbeat.
    for (let i = 0; i < 20; i++) {
      net.tick(1);
      net.settle();
    }
    for (const id of [1, 2, 3]) {
      expect(net.applied.get(id)).toEqual([101, 102, 103, 104, 105]);
      expect(net.node(id).entryAt(105)?.data.toString()).toBe('after');
      expect(net.node(id).entryAt(102)?.term).toBe(3);
      expect(net.node(id).entryAt(100)).toBeUndefined();
    }
  });

  test('a follower with a conflicting tail after the snapshot is repaired down to the snapshot point', () => {
    const restore = (id: NodeId): RestoredState =>
      id === 3
        ? { hardState: { term: 5, votedFor: 0 }, entries: [entry(101, 5), entry(102, 5)], appliedIndex: 100, snapshot: SNAPSHOT }
        : { ...afterSnapshot(101), hardState: { term: 6, votedFor: 0 } };
    const net = new RaftNetwork(3, {}, restore);
    net.isolate(3);
    net.elect(1);
    net.heal();
    for (let i = 0; i < 20; i++) {
      net.tick(1);
      net.settle();
    }
    expect(net.node(3).entryAt(101)?.term).toBe(3);
    expect(net.node(3).entryAt(102)?.term).toBe(7);
    expect(net.applied.get(3)).toEqual([101, 102]);
  });

  test('a follower behind the leader\'s snapshot is sent a snapshot, not an AppendRequest', () => {
    const net = new RaftNetwork(3, {}, (id) =>
      id === 3 ? { hardState: { term: 3, votedFor: 0 }, entries: [], appliedIndex: 0 } : afterSnapshot(102),
    );
    net.elect(1);
    for (let i = 0; i < 20; i++) {
      net.tick(1);
      net.settle();
    }
    expect(net.snapshotRequests).toEqual([{ from: 1, to: 3 }]);
    expect(net.node(1).status().progress.find((p) => p.id === 3)?.state).toBe('snapshot');
    const appendsTo3 = net.readies.get(1)!.flatMap((r) => r.messages).filter((m) => m.to === 3 && m.body?.$case === 'appendRequest');
    expect(appendsTo3.every((m) => m.body?.$case === 'appendRequest' && m.body.value.prevLogIndex >= 100)).toBe(true);
  });
});
