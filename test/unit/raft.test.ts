import { EntryType, Message } from '../../gen/cairn/raft/v1/raft';
import { DEFAULT_RAFT_CONFIG, RaftNode } from '../../src/raft/node';
import { SeededRandom } from '../../src/raft/random';
import { RaftNetwork } from '../support/raft-network';

const data = (text: string) => Buffer.from(text);

describe('leader election', () => {
  test('a single node elects itself and commits alone', () => {
    const net = new RaftNetwork(1);
    net.elect(1);
    expect(net.node(1).role).toBe('leader');
    const proposed = net.node(1).propose(data('x'));
    expect(proposed).toMatchObject({ ok: true, index: 2 });
    net.settle();
    expect(net.node(1).status().commitIndex).toBe(2);
    expect(net.applied.get(1)).toEqual([1, 2]);
  });

  test('three nodes elect exactly one leader, and everyone learns it', () => {
    const net = new RaftNetwork(3);
    net.elect(1);
    expect(net.leaders()).toEqual([1]);
    net.tick(1);
    net.settle();
    expect([2, 3].map((id) => net.node(id).leader)).toEqual([1, 1]);
    expect([1, 2, 3].map((id) => net.node(id).term)).toEqual([1, 1, 1]);
  });

  test('a vote is in the same Ready as its hard state, so it is persisted before it is sent', () => {
    const net = new RaftNetwork(3);
    net.elect(1);
    const voteReady = net.readies.get(2)!.find((r) => r.messages.some((m) => m.body?.$case === 'voteResponse' && !m.body.value.preVote));
    expect(voteReady?.hardState).toEqual({ term: 1, votedFor: 1 });
  });

  test('a node votes once per term', () => {
    const net = new RaftNetwork(3, { preVote: false });
    const ask = (fromId: number): Message => ({ fromId, to: 3, term: 1, body: { $case: 'voteRequest', value: { lastLogIndex: 0, lastLogTerm: 0, preVote: false, leadershipTransfer: false } } });
    net.node(3).step(ask(1));
    net.node(3).step(ask(2));
    const responses = net.node(3).ready().messages.map((m) => (m.body?.$case === 'voteResponse' ? [m.to, m.body.value.granted] : null));
    expect(responses).toEqual([
      [1, true],
      [2, false],
    ]);
  });

  test('a candidate with a shorter log does not get the vote', () => {
    const net = new RaftNetwork(3, { checkQuorum: false });
    net.elect(1);
    net.node(1).propose(data('a'));
    net.settle();
    net.isolate(1);
    net.node(3).step({ fromId: 2, to: 3, term: 5, body: { $case: 'voteRequest', value: { lastLogIndex: 1, lastLogTerm: 1, preVote: false, leadershipTransfer: false } } });
    const response = net.node(3).ready().messages.find((m) => m.body?.$case === 'voteResponse');
    expect(response?.body?.value).toMatchObject({ granted: false });
  });

  test('pre-vote: a partitioned node does not inflate its term, and rejoins without disrupting', () => {
    const net = new RaftNetwork(3);
    net.elect(1);
    net.isolate(3);
    net.tick(3, 100);
    net.settle();
    expect(net.node(3).term).toBe(1);
    expect(net.node(3).role).toBe('pre-candidate');
    net.heal();
    net.tick(1);
    net.settle();
    expect(net.leaders()).toEqual([1]);
    expect(net.node(1).term).toBe(1);
    expect(net.node(3).role).toBe('follower');
  });

  test('check-quorum: an isolated leader steps down after an election timeout', () => {
    const net = new RaftNetwork(3);
    net.elect(1);
    net.isolate(1);
    net.tick(1, DEFAULT_RAFT_CONFIG.electionTimeoutTicks * 2);
    net.settle();
    expect(net.node(1).role).toBe('follower');
  });

  test('followers that hear their leader ignore a disruptive higher-term vote request', () => {
    const net = new RaftNetwork(3);
    net.elect(1);
    net.node(2).step({ fromId: 3, to: 2, term: 9, body: { $case: 'voteRequest', value: { lastLogIndex: 99, lastLogTerm: 9, preVote: false, leadershipTransfer: false } } });
    expect(net.node(2).term).toBe(1);
    expect(net.node(2).ready().messages).toEqual([]);
  });
});

describe('log replication', () => {
  test('proposals of one turn go out as one AppendRequest per follower', () => {
    const net = new RaftNetwork(3);
    net.elect(1);
    for (const text of ['a', 'b', 'c']) net.node(1).propose(data(text));
    const ready = net.node(1).ready();
    const appends = ready.messages.filter((m) => m.body?.$case === 'appendRequest');
    expect(appends.map((m) => m.to)).toEqual([2, 3]);
    for (const m of appends) expect(m.body?.$case === 'appendRequest' && m.body.value.entries.length).toBe(3);
  });

  test('the in-flight window bounds unanswered AppendRequests per follower', () => {
    const net = new RaftNetwork(3, { maxInflightAppends: 2, maxEntriesPerAppend: 1 });
    net.elect(1);
    for (let i = 0; i < 10; i++) net.node(1).propose(data(`p${i}`));
    const appendsTo2 = net.node(1).ready().messages.filter((m) => m.to === 2 && m.body?.$case === 'appendRequest');
    expect(appendsTo2).toHaveLength(2);
    expect(net.node(1).status().progress.find((p) => p.id === 2)?.inflight).toBe(2);
  });

  test('entries commit on a majority and are applied everywhere in order', () => {
    const net = new RaftNetwork(5);
    net.elect(1);
    net.isolate(5);
    net.isolate(4);
    net.node(1).propose(data('x'));
    net.settle();
    expect(net.node(1).status().commitIndex).toBe(2);
    net.heal();
    // Their AppendRequests were lost: heartbeat answers without acknowledgements
    // make the leader probe them again.
    for (let i = 0; i < DEFAULT_RAFT_CONFIG.electionTimeoutTicks; i++) {
      net.tick(1);
      net.settle();
    }
    for (const id of [1, 2, 3, 4, 5]) expect(net.applied.get(id)).toEqual([1, 2]);
  });

  test('without a majority nothing commits', () => {
    const net = new RaftNetwork(3);
    net.elect(1);
    net.isolate(2);
    net.isolate(3);
    net.node(1).propose(data('x'));
    net.settle();
    expect(net.node(1).status().commitIndex).toBe(1);
  });

  test('a leader does not count itself before its entries are persisted', () => {
    const node = new RaftNode(
      { ...DEFAULT_RAFT_CONFIG, id: 1, voters: [1], random: new SeededRandom(1) },
      { hardState: { term: 0, votedFor: 0 }, entries: [], appliedIndex: 0 },
    );
    for (let i = 0; i < 100 && node.role !== 'leader'; i++) node.tick();
    const ready = node.ready();
    expect(ready.entries).toHaveLength(1);
    expect(node.status().commitIndex).toBe(0);
    node.onPersisted(1, 1);
    expect(node.status().commitIndex).toBe(1);
  });

  test('conflict hints catch up a follower with a long divergent suffix in a few round trips', () => {
    // Node 3 leads term 1 alone and appends 50 entries nobody else gets.
    const net = new RaftNetwork(3, { checkQuorum: false });
    net.elect(3);
    net.isolate(3);
    for (let i = 0; i < 50; i++) net.node(3).propose(data(`lost${i}`));
    net.settle();
    // Nodes 1 and 2 elect node 1 and commit 30 entries of their own.
    net.heal();
    net.isolate(3);
    net.elect(1);
    for (let i = 0; i < 30; i++) net.node(1).propose(data(`kept${i}`));
    net.settle();
    // Count the AppendRequests node 1 needs to repair node 3.
    net.heal();
    const before = net.readies.get(1)!.length;
    for (let i = 0; i < DEFAULT_RAFT_CONFIG.electionTimeoutTicks; i++) {
      net.tick(1);
      net.settle();
    }
    const appendsTo3 = net.readies
      .get(1)!
      .slice(before)
      .flatMap((r) => r.messages)
      .filter((m) => m.to === 3 && m.body?.$case === 'appendRequest');
    expect(appendsTo3.length).toBeLessThanOrEqual(4);
    expect(net.node(3).status().lastIndex).toBe(net.node(1).status().lastIndex);
    expect(net.node(3).entryAt(35)?.data.toString()).toBe(net.node(1).entryAt(35)?.data.toString());
  });

  test('a new leader commits a previous-term entry only through an entry of its own term', () => {
    // Raft §5.4.2 (Figure 8): node 1 holds entries 1-2 of term 1 and wins term 2.
    const entry = (index: number, term: number) => ({ index, term, type: EntryType.ENTRY_TYPE_COMMAND, data: data(`${index}`) });
    const node = new RaftNode(
      { ...DEFAULT_RAFT_CONFIG, id: 1, voters: [1, 2, 3], random: new SeededRandom(1) },
      { hardState: { term: 1, votedFor: 0 }, entries: [entry(1, 1), entry(2, 1)], appliedIndex: 0 },
    );
    for (let i = 0; i < 100 && node.role === 'follower'; i++) node.tick();
    const vote = (preVote: boolean): Message => ({ fromId: 2, to: 1, term: 2, body: { $case: 'voteResponse', value: { granted: true, preVote } } });
    node.step(vote(true));
    node.step(vote(false));
    expect(node.role).toBe('leader');
    const ready = node.ready();
    expect(ready.entries.map((e) => [e.index, e.term, e.type])).toEqual([[3, 2, EntryType.ENTRY_TYPE_NOOP]]);
    node.onPersisted(3, 2);
    const ack = (index: number): Message => ({ fromId: 2, to: 1, term: 2, body: { $case: 'appendResponse', value: { index, rejected: false, hintIndex: 0, hintTerm: 0 } } });
    // A majority (1 and 2) now holds entry 2, but it is of term 1: counting it is not enough.
    node.step(ack(2));
    expect(node.status().commitIndex).toBe(0);
    // Once the majority holds the term-2 no-op, everything up to it commits.
    node.step(ack(3));
    expect(node.status().commitIndex).toBe(3);
  });
});

describe('ReadIndex', () => {
  test('reads arriving together share one heartbeat round and are granted on a quorum', () => {
    const net = new RaftNetwork(3);
    net.elect(1);
    net.settle();
    for (const readId of [1, 2, 3]) expect(net.node(1).readIndex(readId)).toEqual({ ok: true });
    const ready = net.node(1).ready();
    const heartbeats = ready.messages.filter((m) => m.body?.$case === 'heartbeatRequest');
    expect(heartbeats.map((m) => m.to)).toEqual([2, 3]);
    expect(net.grantedReads).toEqual([]);
    for (const m of heartbeats) net.pending.push(m);
    net.settle();
    expect(net.grantedReads.map((g) => g.readId)).toEqual([1, 2, 3]);
    expect(new Set(net.grantedReads.map((g) => g.index))).toEqual(new Set([net.node(1).status().commitIndex]));
  });

  test('an isolated leader never grants a read', () => {
    const net = new RaftNetwork(3);
    net.elect(1);
    net.isolate(1);
    net.node(1).readIndex(7);
    net.settle();
    expect(net.grantedReads).toEqual([]);
    net.tick(1, 30); // check-quorum steps it down: the read fails
    net.settle();
    expect(net.failedReads).toEqual([{ node: 1, readId: 7 }]);
  });

  test('a new leader serves reads only after committing an entry of its term', () => {
    const net = new RaftNetwork(3);
    for (let i = 0; i < 100 && net.node(1).role === 'follower'; i++) net.node(1).tick();
    net.flush();
    while (net.node(1).role !== 'leader') net.deliverOnce();
    // Leader, noop not yet acknowledged by anyone.
    expect(net.node(1).role).toBe('leader');
    net.node(1).readIndex(1);
    net.flush();
    expect(net.grantedReads).toEqual([]);
    net.settle();
    expect(net.grantedReads).toEqual([{ node: 1, readId: 1, index: 1 }]);
  });

  test('followers refuse reads and name the leader', () => {
    const net = new RaftNetwork(3);
    net.elect(1);
    net.tick(1);
    net.settle();
    expect(net.node(2).readIndex(1)).toEqual({ ok: false, reason: 'not-leader', leader: 1 });
    expect(net.node(2).propose(data('x'))).toEqual({ ok: false, reason: 'not-leader', leader: 1 });
  });
});

describe('bad and stale peer messages', () => {
  test('a message with no body changes nobody\'s term', () => {
    const net = new RaftNetwork(3);
    net.elect(1);
    net.node(1).step({ fromId: 2, to: 1, term: 50, body: undefined });
    expect(net.node(1).term).toBe(1);
    expect(net.node(1).role).toBe('leader');
  });

  test('malformed messages are dropped and recorded, never a crash', () => {
    const net = new RaftNetwork(3);
    net.elect(1);
    const node2 = net.node(2);
    const append = (entries: { index: number; term: number }[]): Message => ({
      fromId: 1,
      to: 2,
      term: 1,
      body: { $case: 'appendRequest', value: { prevLogIndex: 1, prevLogTerm: 1, commit: 0, entries: entries.map((e) => ({ ...e, type: EntryType.ENTRY_TYPE_COMMAND, data: data('x') })) } },
    });
    node2.step(append([{ index: 5, term: 1 }])); // gap
    node2.step(append([{ index: 2, term: 7 }])); // term from the future
    node2.step({ fromId: 2, to: 2, term: 1, body: { $case: 'heartbeatRequest', value: { commit: 0, readRound: 0 } } }); // from itself
    node2.step({ fromId: 1, to: 3, term: 1, body: { $case: 'heartbeatRequest', value: { commit: 0, readRound: 0 } } }); // wrong node
    node2.step({ fromId: 1, to: 2, term: 1, body: { $case: 'heartbeatRequest', value: { commit: 99, readRound: 0 } } }); // commit beyond the log
    expect(node2.rejectedMessages).toHaveLength(5);
    expect(node2.status().lastIndex).toBe(1);
    expect(node2.status().commitIndex).toBeLessThanOrEqual(1);
  });

  test('a leader that hears another leader in its own term drops the message', () => {
    const net = new RaftNetwork(3);
    net.elect(1);
    net.node(1).step({ fromId: 2, to: 1, term: 1, body: { $case: 'heartbeatRequest', value: { commit: 0, readRound: 0 } } });
    expect(net.node(1).role).toBe('leader');
    expect(net.node(1).rejectedMessages[0]).toMatch(/second leader/);
  });

  test('a granted pre-vote left over from an earlier round does not count', () => {
    const net = new RaftNetwork(3, { checkQuorum: false });
    const node = net.node(1);
    for (let i = 0; i < 100 && node.role === 'follower'; i++) node.tick();
    expect(node.role).toBe('pre-candidate');
    node.ready();
    // A pre-vote granted for term 3 (our term + 3), from some earlier campaign: ignored.
    node.step({ fromId: 2, to: 1, term: 3, body: { $case: 'voteResponse', value: { granted: true, preVote: true } } });
    expect(node.role).toBe('pre-candidate');
    expect(node.term).toBe(0);
    // The real answer for this round (term 1) wins the pre-vote.
    node.step({ fromId: 2, to: 1, term: 1, body: { $case: 'voteResponse', value: { granted: true, preVote: true } } });
    expect(node.role).toBe('candidate');
  });

  test('heartbeat answers for read rounds do not make the leader resend an unanswered append', () => {
    const net = new RaftNetwork(3);
    net.elect(1);
    net.node(1).propose(data('a'));
    const appends = net.node(1).ready().messages.filter((m) => m.body?.$case === 'appendRequest');
    expect(appends).toHaveLength(2); // withheld: still in flight
    for (let readId = 1; readId <= 5; readId++) {
      net.node(1).readIndex(readId);
      const heartbeats = net.node(1).ready().messages.filter((m) => m.body?.$case === 'heartbeatRequest');
      for (const hb of heartbeats) net.node(hb.to).step(hb);
      for (const id of [2, 3]) for (const reply of net.node(id).ready().messages) net.node(1).step(reply);
      const resent = net.node(1).ready().messages.filter((m) => m.body?.$case === 'appendRequest');
      expect(resent).toEqual([]);
    }
    expect(net.node(1).status().progress.every((p) => p.state === 'replicate')).toBe(true);
  });
});

describe('configuration', () => {
  test('invalid settings are refused with a reason', () => {
    const base = { ...DEFAULT_RAFT_CONFIG, id: 1, voters: [1, 2, 3], random: new SeededRandom(1) };
    const restored = { hardState: { term: 0, votedFor: 0 }, entries: [], appliedIndex: 0 };
    expect(() => new RaftNode({ ...base, heartbeatIntervalTicks: 10 }, restored)).toThrow(/heartbeatIntervalTicks/);
    expect(() => new RaftNode({ ...base, id: 0 }, restored)).toThrow(/node id 0 must be >= 1/);
    expect(() => new RaftNode({ ...base, voters: [1, 1, 2] }, restored)).toThrow(/distinct/);
    expect(() => new RaftNode({ ...base, maxInflightAppends: 0 }, restored)).toThrow(/maxInflightAppends/);
  });
});
