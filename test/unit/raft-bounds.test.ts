import { AppendRequest, Entry, EntryType, Message } from '../../gen/cairn/raft/v1/raft';
import { entryBytes } from '../../src/raft/log';
import { DEFAULT_RAFT_CONFIG, MAX_INDEX, MAX_TERM, RaftConfig, RaftNode } from '../../src/raft/node';
import { SeededRandom } from '../../src/raft/random';
import { RaftNetwork } from '../support/raft-network';

const KIB = Buffer.alloc(1000, 7);
const KIB_ENTRY_BYTES = entryBytes({ data: KIB });

function appendsTo(messages: Message[], to: number): AppendRequest[] {
  return messages.flatMap((m) => (m.to === to && m.body?.$case === 'appendRequest' ? [m.body.value] : []));
}

function singleNode(overrides: Partial<RaftConfig>, term = 0): RaftNode {
  const node = new RaftNode(
    { ...DEFAULT_RAFT_CONFIG, id: 1, voters: [1], random: new SeededRandom(1), ...overrides },
    { hardState: { term, votedFor: 0 }, entries: [], appliedIndex: 0 },
  );
  for (let i = 0; i < 100 && node.role !== 'leader'; i++) node.tick();
  expect(node.role).toBe('leader');
  return node;
}

/** Carries out one Ready the way the shell does, persisting at once; returns it. */
function drainOne(node: RaftNode) {
  const ready = node.ready();
  const last = ready.entries[ready.entries.length - 1];
  if (last) node.onPersisted(last.index, last.term);
  return ready;
}

describe('in-flight bytes per follower (maxInflightBytes)', () => {
  test('unacknowledged append bytes stay within the budget, and an acknowledgement frees them', () => {
    const net = new RaftNetwork(3, { maxEntriesPerAppend: 1, maxInflightBytes: 3 * KIB_ENTRY_BYTES });
    net.elect(1);
    for (let i = 0; i < 10; i++) expect(net.node(1).propose(KIB).ok).toBe(true);
    const first = net.node(1).ready();
    const to2 = first.messages.filter((m) => m.to === 2 && m.body?.$case === 'appendRequest');
    expect(to2).toHaveLength(3); // the count window (64) would let all 10 go
    expect(net.node(1).status().progress.find((p) => p.id === 2)?.inflightBytes).toBe(3 * KIB_ENTRY_BYTES);
    expect(net.node(1).ready().messages.filter((m) => m.to === 2)).toEqual([]); // still full

    // Follower 2 acknowledges the first: exactly one more append may go.
    net.node(2).step(to2[0]!);
    for (const reply of net.node(2).ready().messages) net.node(1).step(reply);
    expect(appendsTo(net.node(1).ready().messages, 2)).toHaveLength(1);
    expect(net.node(1).status().progress.find((p) => p.id === 2)?.inflightBytes).toBe(3 * KIB_ENTRY_BYTES);
  });

  test('an entry larger than the whole budget still goes alone when nothing is in flight', () => {
    const net = new RaftNetwork(3, { maxInflightBytes: 100 });
    net.elect(1);
    net.settle();
    for (let i = 0; i < 3; i++) expect(net.node(1).propose(KIB).ok).toBe(true);
    const to2 = appendsTo(net.node(1).ready().messages, 2);
    expect(to2.map((a) => a.entries.length)).toEqual([1]);
    // Delivering everything moves one entry per round trip until all are replicated.
    for (let i = 0; i < 20 && net.node(1).status().commitIndex < 4; i++) {
      net.tick(1);
      net.settle();
    }
    expect(net.node(1).status().commitIndex).toBe(4);
    for (const id of [2, 3]) expect(net.node(id).status().lastIndex).toBe(4);
  });
  test('entries larger than maxBytesPerAppend are pipelined while they fit in the in-flight bytes', () => {
    // Each 1 KiB entry exceeds maxBytesPerAppend, so each goes alone, but the in-flight
    // budget holds all five: none waits for the one before it to be acknowledged.
    const net = new RaftNetwork(3, { maxBytesPerAppend: 500, maxInflightBytes: 100 * KIB_ENTRY_BYTES });
    net.elect(1);
    net.settle();
    for (let i = 0; i < 5; i++) expect(net.node(1).propose(KIB).ok).toBe(true);
    expect(appendsTo(net.node(1).ready().messages, 2).map((a) => a.entries.length)).toEqual([1, 1, 1, 1, 1]);
  });
});

describe('committed bytes per Ready (maxCommittedBytesPerReady)', () => {
  test('committed entries are handed out within the byte budget, the rest in later Readies', () => {
    const node = singleNode({ maxCommittedBytesPerReady: 2 * KIB_ENTRY_BYTES });
    drainOne(node); // persists the no-op
    for (let i = 0; i < 5; i++) node.propose(KIB);
    const handedOut: number[][] = [];
    for (let i = 0; i < 20 && node.hasReady(); i++) {
      const ready = drainOne(node);
      if (ready.committed.length > 0) handedOut.push(ready.committed.map((e) => e.index));
    }
    const all = handedOut.flat();
    expect(all).toEqual([1, 2, 3, 4, 5, 6]);
    for (const batch of handedOut) {
      const bytes = batch.map((index) => entryBytes(node.entryAt(index)!)).reduce((a, b) => a + b, 0);
      expect(bytes).toBeLessThanOrEqual(2 * KIB_ENTRY_BYTES);
    }
    expect(node.hasReady()).toBe(false);
  });

  test('hasReady stays true while committed entries remain, and a huge entry goes alone', () => {
    const node = singleNode({ maxCommittedBytesPerReady: 10 });
    drainOne(node);
    node.propose(KIB);
    node.propose(KIB);
    const batches: number[][] = [];
    batches.push(drainOne(node).committed.map((e) => e.index)); // the no-op; persists both entries
    expect(node.hasReady()).toBe(true); // both committed, neither handed out yet
    while (node.hasReady()) batches.push(drainOne(node).committed.map((e) => e.index));
    expect(batches.filter((b) => b.length > 0)).toEqual([[1], [2], [3]]);
  });
});

describe('uncommitted bytes on the leader (maxUncommittedBytes)', () => {
  test('a proposal that would take the uncommitted tail beyond the budget is refused as overloaded', () => {
    const net = new RaftNetwork(3, { maxUncommittedBytes: 3 * KIB_ENTRY_BYTES });
    net.elect(1);
    net.settle(); // the no-op commits: the tail is empty
    net.isolate(2);
    net.isolate(3);
    for (let i = 0; i < 3; i++) expect(net.node(1).propose(KIB).ok).toBe(true);
    expect(net.node(1).status().uncommittedBytes).toBe(3 * KIB_ENTRY_BYTES);
    expect(net.node(1).propose(KIB)).toEqual({ ok: false, reason: 'overloaded', leader: 1 });
    expect(net.node(1).propose(Buffer.alloc(0)).ok).toBe(false); // even a small one does not fit
    // Once the tail commits there is room again.
    net.heal();
    for (let i = 0; i < DEFAULT_RAFT_CONFIG.electionTimeoutTicks && net.node(1).status().commitIndex < 4; i++) {
      net.tick(1);
      net.settle();
    }
    expect(net.node(1).status()).toMatchObject({ commitIndex: 4, uncommittedBytes: 0 });
    expect(net.node(1).propose(KIB).ok).toBe(true);
  });

  test('a proposal larger than the whole budget is accepted when the tail is empty, and only then', () => {
    const net = new RaftNetwork(3, { maxUncommittedBytes: 100 });
    net.elect(1);
    net.settle();
    net.isolate(2);
    net.isolate(3);
    expect(net.node(1).propose(KIB).ok).toBe(true);
    expect(net.node(1).propose(KIB)).toMatchObject({ ok: false, reason: 'overloaded' });
  });
});

describe('configuration of the byte bounds', () => {
  test('each byte bound must be a positive integer', () => {
    const base = { ...DEFAULT_RAFT_CONFIG, id: 1, voters: [1, 2, 3], random: new SeededRandom(1) };
    const restored = { hardState: { term: 0, votedFor: 0 }, entries: [], appliedIndex: 0 };
    for (const name of ['maxInflightBytes', 'maxCommittedBytesPerReady', 'maxUncommittedBytes'] as const) {
      expect(() => new RaftNode({ ...base, [name]: 0 }, restored)).toThrow(new RegExp(name));
      expect(() => new RaftNode({ ...base, [name]: 1.5 }, restored)).toThrow(new RegExp(name));
    }
  });
});

describe('terms across their range (MAX_TERM)', () => {
  const hostileTerms = [Number.MAX_SAFE_INTEGER, MAX_TERM + 1];

  function hostileMessages(term: number, to: number): Message[] {
    return [
      { fromId: 2, to, term, body: { $case: 'heartbeatRequest', value: { commit: 0, readRound: 0 } } },
      { fromId: 2, to, term, body: { $case: 'appendRequest', value: { prevLogIndex: 0, prevLogTerm: 0, commit: 0, entries: [] } } },
      { fromId: 3, to, term, body: { $case: 'voteRequest', value: { lastLogIndex: 99, lastLogTerm: 1, preVote: false, leadershipTransfer: false } } },
      { fromId: 3, to, term, body: { $case: 'voteRequest', value: { lastLogIndex: 99, lastLogTerm: 1, preVote: true, leadershipTransfer: false } } },
      { fromId: 2, to, term, body: { $case: 'appendResponse', value: { index: 0, rejected: true, hintIndex: 0, hintTerm: 0 } } },
    ];
  }

  test.each(hostileTerms)('messages with term %d change no node\'s term, and the cluster still elects and commits', (term) => {
    const net = new RaftNetwork(3);
    net.elect(1);
    net.settle();
    for (const to of [1, 2, 3]) {
      for (const m of hostileMessages(term, to)) net.node(to).step({ ...m, fromId: m.fromId === to ? (to % 3) + 1 : m.fromId });
    }
    net.settle();
    expect([1, 2, 3].map((id) => net.node(id).term)).toEqual([1, 1, 1]);
    expect(net.leaders()).toEqual([1]);
    for (const id of [1, 2, 3]) {
      expect(net.node(id).rejectedMessages.length).toBeGreaterThanOrEqual(5);
      expect(net.node(id).rejectedMessages[0]).toMatch(/MAX_TERM/);
    }
    // Replication still works, and so does a new election once the leader is gone.
    expect(net.node(1).propose(Buffer.from('after')).ok).toBe(true);
    net.settle();
    net.tick(1); // the heartbeat carries the new commit index
    net.settle();
    expect(net.node(2).status().commitIndex).toBe(net.node(1).status().lastIndex);
    net.isolate(1);
    for (let i = 0; i < 100 && net.leaders().every((id) => id === 1); i++) {
      net.tick(2);
      net.tick(3);
      net.settle();
    }
    const newLeader = net.leaders().find((id) => id !== 1)!;
    expect([2, 3]).toContain(newLeader);
    expect(net.node(newLeader).propose(Buffer.from('later')).ok).toBe(true);
    net.settle();
    net.tick(newLeader);
    net.settle();
    expect(net.node(2).status().commitIndex).toBe(net.node(3).status().commitIndex);
    expect(net.node(newLeader).status().commitIndex).toBe(net.node(newLeader).status().lastIndex);
  });

  test('a term inside an entry or a vote beyond MAX_TERM is refused too', () => {
    const net = new RaftNetwork(3);
    net.elect(1);
    net.settle();
    const before = net.node(2).status();
    const entry: Entry = { index: 2, term: MAX_TERM + 1, type: EntryType.ENTRY_TYPE_COMMAND, data: Buffer.from('x') };
    net.node(2).step({ fromId: 1, to: 2, term: 1, body: { $case: 'appendRequest', value: { prevLogIndex: 1, prevLogTerm: 1, commit: 1, entries: [entry] } } });
    net.node(2).step({ fromId: 3, to: 2, term: 1, body: { $case: 'voteRequest', value: { lastLogIndex: 5, lastLogTerm: MAX_TERM + 1, preVote: false, leadershipTransfer: false } } });
    net.node(2).step({ fromId: 1, to: 2, term: 1, body: { $case: 'appendResponse', value: { index: 0, rejected: true, hintIndex: 0, hintTerm: Number.MAX_SAFE_INTEGER } } });
    // A log term above the candidate's own term cannot be: it would win votes it has no right to.
    net.node(2).step({ fromId: 3, to: 2, term: 2, body: { $case: 'voteRequest', value: { lastLogIndex: 5, lastLogTerm: 3, preVote: true, leadershipTransfer: false } } });
    expect(net.node(2).rejectedMessages).toHaveLength(4);
    expect(net.node(2).status()).toEqual(before);
    expect(net.node(2).ready().messages).toEqual([]);
  });

  test('a cluster at MAX_TERM - 1 elects once more, then stays followers and says why, without crashing', () => {
    const voters = [1, 2, 3];
    const nodes = voters.map(
      (id) =>
        new RaftNode(
          { ...DEFAULT_RAFT_CONFIG, id, voters, random: new SeededRandom(id) },
          { hardState: { term: MAX_TERM - 1, votedFor: 0 }, entries: [], appliedIndex: 0 },
        ),
    );
    const net = new RaftNetwork(3);
    nodes.forEach((node, i) => net.nodes.set(i + 1, node));
    net.elect(1);
    expect(net.leaders()).toEqual([1]);
    expect(net.node(1).term).toBe(MAX_TERM);
    expect(net.node(1).propose(Buffer.from('last term')).ok).toBe(true);
    net.settle();
    net.tick(1);
    net.settle();
    expect(net.node(3).status().commitIndex).toBe(2);
    // The leader goes away: nobody may campaign to MAX_TERM + 1.
    net.isolate(1);
    for (let i = 0; i < 100; i++) {
      for (const id of voters) net.tick(id);
      net.settle();
    }
    for (const id of voters) {
      expect(net.node(id).term).toBe(MAX_TERM);
      expect(net.node(id).role).toBe('follower');
      expect(net.node(id).status().campaignBlocked).toMatch(/MAX_TERM/);
    }
    for (const id of voters) expect(net.node(id).rejectedMessages).toEqual([]);
  });
});

describe('absurd indexes in peer messages', () => {
  const absurd = [-1, 0.5, MAX_INDEX + 1, Number.MAX_SAFE_INTEGER, Number.NaN];

  test.each(absurd)('index fields of %d are refused before they touch any state', (value) => {
    const net = new RaftNetwork(3);
    net.elect(1);
    net.settle();
    const append = (fields: Partial<AppendRequest>): Message => ({
      fromId: 1,
      to: 2,
      term: 1,
      body: { $case: 'appendRequest', value: { prevLogIndex: 1, prevLogTerm: 1, commit: 1, entries: [], ...fields } },
    });
    const toFollower: Message[] = [
      append({ prevLogIndex: value }),
      append({ commit: value }),
      append({ entries: [{ index: value, term: 1, type: EntryType.ENTRY_TYPE_COMMAND, data: Buffer.from('x') }] }),
      { fromId: 1, to: 2, term: 1, body: { $case: 'heartbeatRequest', value: { commit: value, readRound: 0 } } },
      { fromId: 1, to: 2, term: 1, body: { $case: 'heartbeatRequest', value: { commit: 1, readRound: value } } },
      { fromId: 3, to: 2, term: 2, body: { $case: 'voteRequest', value: { lastLogIndex: value, lastLogTerm: 1, preVote: true, leadershipTransfer: false } } },
    ];
    const toLeader: Message[] = [
      { fromId: 2, to: 1, term: 1, body: { $case: 'appendResponse', value: { index: value, rejected: false, hintIndex: 0, hintTerm: 0 } } },
      { fromId: 2, to: 1, term: 1, body: { $case: 'appendResponse', value: { index: 1, rejected: true, hintIndex: value, hintTerm: 1 } } },
      { fromId: 2, to: 1, term: 1, body: { $case: 'heartbeatResponse', value: { readRound: value } } },
      { fromId: 2, to: 1, term: value, body: { $case: 'heartbeatResponse', value: { readRound: 0 } } },
    ];
    const before = [net.node(1).status(), net.node(2).status()];
    for (const m of toFollower) net.node(2).step(m);
    for (const m of toLeader) net.node(1).step(m);
    expect(net.node(2).rejectedMessages).toHaveLength(toFollower.length);
    expect(net.node(1).rejectedMessages).toHaveLength(toLeader.length);
    expect([net.node(1).status(), net.node(2).status()]).toEqual(before);
    expect(net.node(2).ready().messages).toEqual([]);
  });

  test('an entry of an unknown type is refused', () => {
    const net = new RaftNetwork(3);
    net.elect(1);
    net.settle();
    const entry = { index: 2, term: 1, type: 99 as EntryType, data: Buffer.from('x') };
    net.node(2).step({ fromId: 1, to: 2, term: 1, body: { $case: 'appendRequest', value: { prevLogIndex: 1, prevLogTerm: 1, commit: 1, entries: [entry] } } });
    expect(net.node(2).rejectedMessages[0]).toMatch(/unknown type 99/);
    expect(net.node(2).status().lastIndex).toBe(1);
  });

  test('rejections are counted beyond the ones kept', () => {
    const net = new RaftNetwork(3);
    net.elect(1);
    for (let i = 0; i < 150; i++) net.node(2).step({ fromId: 1, to: 2, term: -1, body: { $case: 'heartbeatResponse', value: { readRound: 0 } } });
    expect(net.node(2).rejectedMessages).toHaveLength(100);
    expect(net.node(2).rejectedMessageCount).toBe(150);
  });
});

describe('the core produces only messages that encode', () => {
  test('every message of a busy run near MAX_TERM round-trips through the wire format', () => {
    const voters = [1, 2, 3];
    const net = new RaftNetwork(3, { maxEntriesPerAppend: 4 });
    for (const id of voters) {
      net.nodes.set(
        id,
        new RaftNode(
          { ...DEFAULT_RAFT_CONFIG, id, voters, random: new SeededRandom(id), maxEntriesPerAppend: 4 },
          { hardState: { term: MAX_TERM - 2, votedFor: 0 }, entries: [], appliedIndex: 0 },
        ),
      );
    }
    net.elect(1);
    for (let i = 0; i < 20; i++) net.node(1).propose(Buffer.from(`v${i}`));
    net.node(1).readIndex(1);
    net.settle();
    net.isolate(1);
    for (let i = 0; i < 100 && !net.leaders().some((id) => id !== 1); i++) {
      for (const id of [2, 3]) net.tick(id);
      net.settle();
    }
    net.heal();
    for (let i = 0; i < 30; i++) {
      for (const id of voters) net.tick(id);
      net.settle();
    }
    const messages = [...net.readies.values()].flat().flatMap((r) => r.messages);
    expect(messages.length).toBeGreaterThan(50);
    expect(Math.max(...messages.map((m) => m.term))).toBe(MAX_TERM);
    for (const m of messages) expect(Message.decode(Message.encode(m).finish())).toEqual(m);
  });

  test('a node restored at term 2^53 - 1 (a term saved from a hostile heartbeat) never sends a term that does not decode', () => {
    const node = new RaftNode(
      { ...DEFAULT_RAFT_CONFIG, id: 1, voters: [1, 2, 3], random: new SeededRandom(1) },
      { hardState: { term: Number.MAX_SAFE_INTEGER, votedFor: 0 }, entries: [], appliedIndex: 0 },
    );
    const sent: Message[] = [];
    for (let i = 0; i < 100; i++) {
      node.tick();
      while (node.hasReady()) sent.push(...node.ready().messages);
    }
    expect(node.role).toBe('follower');
    expect(node.status().campaignBlocked).toMatch(/MAX_TERM/);
    for (const m of sent) expect(Message.decode(Message.encode(m).finish())).toEqual(m);
    expect(sent.filter((m) => m.body?.$case === 'voteRequest')).toEqual([]);
  });

  test('ENTRY_FRAMING_BYTES bounds the wire size of entries, even with the largest index and term', () => {
    const entries: Entry[] = [Buffer.alloc(0), Buffer.alloc(127), Buffer.alloc(128), KIB, Buffer.alloc(70_000)].map((data, i) => ({
      index: MAX_INDEX - 10 + i,
      term: MAX_TERM,
      type: EntryType.ENTRY_TYPE_COMMAND,
      data,
    }));
    const header: AppendRequest = { prevLogIndex: MAX_INDEX, prevLogTerm: MAX_TERM, commit: MAX_INDEX, entries: [] };
    const headerBytes = AppendRequest.encode(header).finish().length;
    for (const entry of entries) {
      const withEntry = AppendRequest.encode({ ...header, entries: [entry] }).finish().length;
      expect(withEntry - headerBytes).toBeLessThanOrEqual(entryBytes(entry));
    }
  });
});
