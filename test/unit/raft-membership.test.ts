import { ClusterConfig, ConfigChange, ConfigChangeType, EntryType } from '../../gen/cairn/raft/v1/raft';
import { PROMOTE_MAX_LAG_ENTRIES } from '../../src/raft/membership';
import { DEFAULT_RAFT_CONFIG, NodeId, REMOVED_MEMBER_GRACE_ELECTION_TIMEOUTS } from '../../src/raft/node';
import { RaftNetwork } from '../support/raft-network';

const data = (text: string) => Buffer.from(text);
const member = (id: NodeId, peerAddr = `node${id}:7000`) => ({ id, peerAddr, clientAddr: '' });
const addLearner = (id: NodeId, peerAddr?: string): ConfigChange => ({ type: ConfigChangeType.CONFIG_CHANGE_TYPE_ADD_LEARNER, member: member(id, peerAddr) });
const promote = (id: NodeId): ConfigChange => ({ type: ConfigChangeType.CONFIG_CHANGE_TYPE_PROMOTE, member: member(id, '') });
const remove = (id: NodeId): ConfigChange => ({ type: ConfigChangeType.CONFIG_CHANGE_TYPE_REMOVE, member: member(id, '') });
const ids = (config: ClusterConfig) => ({ voters: config.voters.map((m) => m.id), learners: config.learners.map((m) => m.id) });
const LONG_TIME = DEFAULT_RAFT_CONFIG.electionTimeoutTicks * 10;

/** A three-voter cluster led by node 1, its no-op committed everywhere. */
function threeNodes(): RaftNetwork {
  const net = new RaftNetwork(3);
  net.elect(1);
  net.heartbeats(1, 1);
  return net;
}

describe('membership: learners', () => {
  test('an added learner receives the log, never campaigns, and does not count for commit', () => {
    const net = threeNodes();
    net.addNode(4);
    const added = net.node(1).proposeConfigChange(addLearner(4));
    expect(added).toMatchObject({ ok: true, index: 2 });
    net.heartbeats(1);
    // Config in force everywhere, the learner's log equal to the leader's.
    for (const id of [1, 2, 3, 4]) expect(ids(net.node(id).clusterConfig())).toEqual({ voters: [1, 2, 3], learners: [4] });
    expect(net.node(4).status().lastIndex).toBe(net.node(1).status().lastIndex);
    expect(net.applied.get(4)).toEqual([1, 2]);

    // Cut off from everyone for a long time: a voter would campaign, the learner does not.
    net.isolate(4);
    net.tick(4, LONG_TIME);
    net.settle();
    expect(net.node(4).role).toBe('follower');
    expect(net.node(4).term).toBe(1);

    // Leader plus learner are not a majority of the voters {1, 2, 3}.
    net.heal();
    net.isolate(2);
    net.isolate(3);
    const proposed = net.node(1).propose(data('x'));
    net.settle();
    expect(proposed).toMatchObject({ ok: true, index: 3 });
    expect(net.node(4).status().lastIndex).toBe(3);
    expect(net.node(1).status().commitIndex).toBe(2);
  });

  test('a node that is not a voter of its config ignores TimeoutNow', () => {
    const net = threeNodes();
    net.addNode(4);
    net.node(1).proposeConfigChange(addLearner(4));
    net.heartbeats(1);
    net.node(4).step({ fromId: 1, to: 4, term: 1, body: { $case: 'timeoutNow', value: {} } });
    expect(net.node(4).role).toBe('follower');
    expect(net.node(4).term).toBe(1);
  });

  test('promote is refused while the learner lags and accepted once it has caught up', () => {
    const net = threeNodes();
    net.addNode(4);
    net.isolate(4);
    expect(net.node(1).proposeConfigChange(addLearner(4))).toMatchObject({ ok: true });
    net.heartbeats(1);
    expect(net.node(1).status().commitIndex).toBe(2); // committed by the voters alone

    // Never heard from, holds nothing.
    expect(net.node(1).proposeConfigChange(promote(4))).toMatchObject({ ok: false, reason: 'not-caught-up' });

    net.heal();
    net.heartbeats(1);
    expect(net.node(4).status().lastIndex).toBe(2);

    // Cut off again while the leader's log runs more than PROMOTE_MAX_LAG_ENTRIES ahead;
    // then one heartbeat round trip makes it recently active, but still far behind.
    net.isolate(4);
    for (let i = 0; i <= PROMOTE_MAX_LAG_ENTRIES; i++) net.node(1).propose(data(`p${i}`));
    net.settle();
    net.heal();
    net.tick(1);
    net.flush();
    net.deliverOnce(); // heartbeat -> node 4
    net.pending.splice(0).forEach((m) => m.body?.$case === 'heartbeatResponse' && net.node(m.to).step(m));
    expect(net.node(4).status().lastIndex).toBe(2);
    const lagging = net.node(1).proposeConfigChange(promote(4));
    expect(lagging).toMatchObject({ ok: false, reason: 'not-caught-up' });

    net.heartbeats(1);
    expect(net.node(4).status().lastIndex).toBe(net.node(1).status().lastIndex);
    const promoted = net.node(1).proposeConfigChange(promote(4));
    expect(promoted).toMatchObject({ ok: true });
    net.heartbeats(1);
    for (const id of [1, 2, 3, 4]) expect(ids(net.node(id).clusterConfig())).toEqual({ voters: [1, 2, 3, 4], learners: [] });
  });

  test('the refusal rules: invalid changes and unknown members', () => {
    const net = threeNodes();
    const leader = net.node(1);
    expect(leader.proposeConfigChange(addLearner(2))).toMatchObject({ ok: false, reason: 'invalid', refusal: 'member-exists' });
    expect(leader.proposeConfigChange(addLearner(0))).toMatchObject({ ok: false, reason: 'invalid', refusal: 'invalid' });
    expect(leader.proposeConfigChange(addLearner(4, ''))).toMatchObject({ ok: false, reason: 'invalid', message: expect.stringMatching(/peer address/) });
    expect(leader.proposeConfigChange(promote(9))).toMatchObject({ ok: false, reason: 'invalid', refusal: 'member-not-found' });
    expect(leader.proposeConfigChange(promote(2))).toMatchObject({ ok: false, reason: 'invalid', message: expect.stringMatching(/already a voter/) });
    expect(leader.proposeConfigChange(remove(9))).toMatchObject({ ok: false, reason: 'invalid', refusal: 'member-not-found' });
    expect(leader.proposeConfigChange({ type: ConfigChangeType.CONFIG_CHANGE_TYPE_UNSPECIFIED, member: member(5) })).toMatchObject({ ok: false, reason: 'invalid' });
    expect(net.node(2).proposeConfigChange(addLearner(4))).toMatchObject({ ok: false, reason: 'not-leader', leader: 1 });
    expect(leader.status().lastIndex).toBe(1); // nothing was logged
  });

  test('the last voter cannot be removed', () => {
    const net = new RaftNetwork(1);
    net.elect(1);
    net.settle();
    expect(net.node(1).proposeConfigChange(remove(1))).toMatchObject({ ok: false, reason: 'invalid', message: expect.stringMatching(/last voter/) });
  });
});

describe('membership: one change at a time', () => {
  test('a second change is refused while the first is uncommitted', () => {
    const net = threeNodes();
    net.addNode(4);
    net.addNode(5);
    net.isolate(2);
    net.isolate(3);
    expect(net.node(1).proposeConfigChange(addLearner(4))).toMatchObject({ ok: true, index: 2 });
    expect(net.node(1).proposeConfigChange(addLearner(5))).toMatchObject({ ok: false, reason: 'pending' });
    net.heal();
    net.heartbeats(1);
    expect(net.node(1).status().commitIndex).toBe(2);
    expect(net.node(1).proposeConfigChange(addLearner(5))).toMatchObject({ ok: true, index: 3 });
  });

  test('a new leader refuses a change until the no-op of its term commits', () => {
    const net = new RaftNetwork(3);
    for (let i = 0; i < 100 && net.node(1).role === 'follower'; i++) net.node(1).tick();
    net.flush();
    for (let i = 0; i < 10 && net.node(1).role !== 'leader'; i++) net.deliverOnce();
    expect(net.node(1).role).toBe('leader');
    expect(net.node(1).status().commitIndex).toBe(0);
    expect(net.node(1).proposeConfigChange(addLearner(4))).toMatchObject({ ok: false, reason: 'pending', message: expect.stringMatching(/term 1/) });
    net.settle();
    expect(net.node(1).status().commitIndex).toBe(1);
    expect(net.node(1).proposeConfigChange(addLearner(4))).toMatchObject({ ok: true });
  });
});

describe('membership: the leader-change bug (Ongaro, raft-dev 2015)', () => {
  test('two changes from leaders of different terms cannot form disjoint majorities: a new leader changes nothing before its no-op commits', () => {
    const net = new RaftNetwork(4, { checkQuorum: false, preVote: false });
    net.elect(1);
    net.heartbeats(1, 1);
    net.addNode(5);
    net.node(1).proposeConfigChange(addLearner(5));
    net.heartbeats(1);
    // Leader 1 promotes 5: C1 = {1..5}, in force on 1 and 5 only, uncommitted.
    for (const to of [2, 3, 4]) net.cutLink(1, to);
    expect(net.node(1).proposeConfigChange(promote(5))).toMatchObject({ ok: true, index: 3 });
    net.settle();
    expect(ids(net.node(5).clusterConfig()).voters).toEqual([1, 2, 3, 4, 5]);

    // Nodes 2, 3, 4 (still on C0 = {1..4}) elect node 2 in term 2; its entries then reach node 3 only.
    net.heal();
    net.isolate(1);
    net.isolate(5);
    for (let i = 0; i < 100 && net.node(2).role === 'follower'; i++) net.node(2).tick();
    net.flush();
    for (let i = 0; i < 10 && net.node(2).role !== 'leader'; i++) net.deliverOnce();
    expect(net.node(2).status()).toMatchObject({ role: 'leader', term: 2 });
    net.cutLink(2, 4);
    // Removing 1 now would give C2 = {2, 3, 4}, a majority of which ({2, 3}) shares no node
    // with the majority {1, 4, 5} of C1. It is refused until the no-op of term 2 commits.
    const removal = net.node(2).proposeConfigChange(remove(1));
    net.settle();

    // Nodes 1, 4, 5 elect node 5 under C1; whatever nodes 2 and 3 committed, it must hold.
    net.heal();
    net.isolate(2);
    net.isolate(3);
    for (let i = 0; i < 200 && net.node(5).role !== 'leader'; i++) {
      net.tick(5);
      net.settle();
    }
    expect(net.node(5).role).toBe('leader');
    const committedElsewhere = Math.max(net.node(2).status().commitIndex, net.node(3).status().commitIndex);
    for (let index = 1; index <= committedElsewhere; index++) {
      expect({ index, entry: net.node(5).entryAt(index) }).toEqual({ index, entry: net.node(2).entryAt(index) });
    }
    expect(removal).toMatchObject({ ok: false, reason: 'pending' });
  });
});

describe('membership: removal', () => {
  test('a removed follower is no longer replicated to nor counted, and never campaigns', () => {
    const net = threeNodes();
    expect(net.node(1).proposeConfigChange(remove(3))).toMatchObject({ ok: true, index: 2 });
    net.heartbeats(1);
    for (const id of [1, 2, 3]) expect(ids(net.node(id).clusterConfig())).toEqual({ voters: [1, 2], learners: [] });
    expect(net.node(1).status().progress.map((p) => p.id)).toEqual([2]);

    net.isolate(3);
    net.node(1).propose(data('x'));
    net.settle();
    expect(net.node(1).status().commitIndex).toBe(3); // 2 of the voters {1, 2}
    net.tick(3, LONG_TIME);
    net.settle();
    expect(net.node(3).role).toBe('follower');
    expect(net.node(3).term).toBe(1);
  });

  test('a removed leader counts only the others, steps down once the change commits, and a remaining voter leads', () => {
    const net = threeNodes();
    net.isolate(3);
    expect(net.node(1).proposeConfigChange(remove(1))).toMatchObject({ ok: true, index: 2 });
    net.heartbeats(1, 3);
    // Node 1 and node 2 hold the entry, but node 1 does not count for {2, 3}.
    expect(net.node(2).status().lastIndex).toBe(2);
    expect(net.node(1).status().commitIndex).toBe(1);
    expect(net.node(1).role).toBe('leader');

    net.heal();
    net.heartbeats(1, 3);
    expect(net.node(1).role).toBe('follower');
    const leaders = net.leaders();
    expect(leaders).toHaveLength(1);
    const next = leaders[0]!;
    expect([2, 3]).toContain(next);
    expect(net.node(next).term).toBe(2);
    expect(net.node(next).status().electedBy.sort()).toEqual([2, 3]);

    // The new leader commits with {2, 3}; the old one never campaigns again.
    const proposed = net.node(next).propose(data('after'));
    net.heartbeats(next, 2);
    expect(proposed).toMatchObject({ ok: true });
    expect(net.node(next).status().commitIndex).toBe(net.node(next).status().lastIndex);
    net.isolate(1);
    net.tick(1, LONG_TIME);
    expect(net.node(1).role).toBe('follower');
  });
});

describe('membership: a leader that loses leadership while removing itself', () => {
  test('two voters: the removed one may still campaign until its removal commits, so the cluster is not left without a leader', () => {
    const net = new RaftNetwork(2);
    net.elect(1);
    net.heartbeats(1, 1);
    // Leader 1 logs 'x' and its own removal (voters {2}); node 2 gets neither.
    net.isolate(2);
    net.node(1).propose(data('x'));
    expect(net.node(1).proposeConfigChange(remove(1))).toMatchObject({ ok: true, index: 3 });
    net.settle();
    // Check-quorum: it hears nothing from the voters {2} for an election timeout and steps down.
    net.tick(1, 2 * DEFAULT_RAFT_CONFIG.electionTimeoutTicks);
    expect(net.node(1).role).toBe('follower');
    expect(ids(net.node(1).clusterConfig()).voters).toEqual([2]);

    // Node 2 cannot win alone (its config is {1, 2} and its log is shorter than node 1's):
    // node 1 must campaign, win with node 2's vote, commit its removal and hand over.
    net.heal();
    for (let i = 0; i < LONG_TIME && !(net.node(2).role === 'leader' && net.node(2).status().commitIndex >= 3); i++) {
      net.tick(1);
      net.tick(2);
      net.settle();
    }
    expect(net.node(2).role).toBe('leader');
    expect(ids(net.node(2).clusterConfig()).voters).toEqual([2]);
    expect(net.node(2).entryAt(2)?.data.toString()).toBe('x');
    expect(net.node(1).role).toBe('follower');
    // Knowing its removal committed, node 1 never campaigns again.
    net.isolate(1);
    net.tick(1, LONG_TIME);
    expect(net.node(1).role).toBe('follower');
  });
});

describe('membership: configs follow the log', () => {
  test('a follower whose uncommitted config entry is truncated falls back to the config before it', () => {
    const net = new RaftNetwork(5, { checkQuorum: false });
    net.elect(1);
    net.heartbeats(1, 1);
    // Only node 2 gets the config entry, and its acknowledgement is lost.
    for (const to of [3, 4, 5]) net.cutLink(1, to);
    net.cutLink(2, 1);
    expect(net.node(1).proposeConfigChange(addLearner(6))).toMatchObject({ ok: true, index: 2 });
    net.settle();
    expect(ids(net.node(2).clusterConfig())).toEqual({ voters: [1, 2, 3, 4, 5], learners: [6] });
    expect(net.node(2).entryAt(2)?.type).toBe(EntryType.ENTRY_TYPE_CONFIG);

    // Nodes 3, 4, 5 elect node 3 without nodes 1 and 2, and commit entries of term 2.
    net.heal();
    net.isolate(1);
    net.isolate(2);
    net.elect(3);
    expect(net.leaders()).toContain(3);
    net.node(3).propose(data('x'));
    net.settle();

    // Node 2 rejoins: node 3's entry 2 replaces the config entry, the config falls back.
    net.heal();
    net.isolate(1);
    net.heartbeats(3);
    expect(net.node(2).entryAt(2)?.term).toBe(2);
    expect(ids(net.node(2).clusterConfig())).toEqual({ voters: [1, 2, 3, 4, 5], learners: [] });
    expect(ids(net.node(2).configAt(1))).toEqual({ voters: [1, 2, 3, 4, 5], learners: [] });
  });

  test('a config entry replaced by another at the same index: the quorum follows the new one', () => {
    const net = new RaftNetwork(5, { checkQuorum: false });
    net.elect(1);
    net.node(1).propose(data('x'));
    net.heartbeats(1, 2);
    // Leader 1 logs 'y' at 3 and the removal of node 2 at 4; only node 2 gets them.
    for (const to of [3, 4, 5]) net.cutLink(1, to);
    net.node(1).propose(data('y'));
    expect(net.node(1).proposeConfigChange(remove(2))).toMatchObject({ ok: true, index: 4 });
    net.settle();
    expect(ids(net.node(2).clusterConfig()).voters).toEqual([1, 3, 4, 5]);

    // Nodes 3, 4, 5 elect node 3: its no-op takes index 3, its own config entry (a learner) index 4.
    net.heal();
    net.isolate(1);
    net.isolate(2);
    net.elect(3);
    net.addNode(6);
    expect(net.node(3).proposeConfigChange(addLearner(6))).toMatchObject({ ok: true, index: 4 });
    net.settle();

    net.heal();
    net.isolate(1);
    net.heartbeats(3);
    expect(net.node(2).entryAt(4)?.term).toBe(2);
    expect(ids(net.node(2).clusterConfig())).toEqual({ voters: [1, 2, 3, 4, 5], learners: [6] });
    // A voter again: cut off, it campaigns (with the stale quorum it would think itself removed).
    net.isolate(2);
    net.tick(2, LONG_TIME);
    expect(net.node(2).role).not.toBe('follower');
  });

  test('a restarted node takes its config from the config entries in its log', () => {
    const net = threeNodes();
    net.addNode(4);
    net.node(1).proposeConfigChange(addLearner(4));
    net.heartbeats(1);
    const entries = [1, 2].map((i) => net.node(2).entryAt(i)!);
    const restarted = new RaftNetwork(3, {}, () => ({ hardState: { term: 1, votedFor: 0 }, entries, appliedIndex: 2 }));
    expect(ids(restarted.node(2).clusterConfig())).toEqual({ voters: [1, 2, 3], learners: [4] });
    expect(ids(restarted.node(2).configAt(1))).toEqual({ voters: [1, 2, 3], learners: [] });
  });

  test('the config handed out cannot be changed from outside', () => {
    const net = threeNodes();
    const config = net.node(1).clusterConfig();
    expect(() => config.voters.push(member(9))).toThrow(TypeError);
    expect(() => {
      (config.voters[0] as { id: number }).id = 9;
    }).toThrow(TypeError);
    expect(ids(net.node(1).clusterConfig())).toEqual({ voters: [1, 2, 3], learners: [] });
  });

  test('a config entry whose data is not a ClusterConfig is rejected as malformed', () => {
    const net = threeNodes();
    const bad = (data: Buffer) => ({
      fromId: 1,
      to: 2,
      term: 1,
      body: { $case: 'appendRequest' as const, value: { prevLogIndex: 1, prevLogTerm: 1, commit: 1, entries: [{ index: 2, term: 1, type: EntryType.ENTRY_TYPE_CONFIG, data }] } },
    });
    net.node(2).step(bad(Buffer.from([0xff, 0xff, 0xff])));
    const duplicated = Buffer.from(ClusterConfig.encode({ voters: [member(1), member(2)], learners: [member(2)] }).finish());
    net.node(2).step(bad(duplicated));
    expect(net.node(2).rejectedMessages).toEqual([
      expect.stringMatching(/config entry 2 does not decode/),
      expect.stringMatching(/config entry 2: member ids are not distinct/),
    ]);
    expect(net.node(2).status().lastIndex).toBe(1);
  });
});

describe('membership: a member removed and added again', () => {
  /** Node 4 added, caught up, then cut off and removed (the removal committed by the voters). */
  function removedWhileAway(): RaftNetwork {
    const net = threeNodes();
    net.addNode(4);
    expect(net.node(1).proposeConfigChange(addLearner(4))).toMatchObject({ ok: true });
    for (let i = 0; i < 5; i++) net.node(1).propose(data(`a${i}`));
    net.heartbeats(1, 2);
    expect(net.node(4).status().lastIndex).toBe(net.node(1).status().lastIndex);
    net.isolate(4);
    expect(net.node(1).proposeConfigChange(remove(4))).toMatchObject({ ok: true });
    net.heartbeats(1, 2);
    const leader = net.node(1).status();
    expect(leader.commitIndex).toBe(leader.lastIndex);
    return net;
  }

  test('a wiped machine added again under its old id catches up and can be promoted', () => {
    // Found by a README run and the chaos campaign: the leader kept the old machine's
    // matchIndex, never probed below it, and the new one never caught up.
    const net = removedWhileAway();
    net.heal();
    net.addNode(4); // empty storage: the machine was wiped
    expect(net.node(1).proposeConfigChange(addLearner(4))).toMatchObject({ ok: true });
    net.heartbeats(1, 3);
    expect(net.node(4).status().lastIndex).toBe(net.node(1).status().lastIndex);
    expect(net.node(1).proposeConfigChange(promote(4))).toMatchObject({ ok: true });
    net.heartbeats(1, 2);
    expect(ids(net.node(4).clusterConfig())).toEqual({ voters: [1, 2, 3, 4], learners: [] });
  });

  test('a removed member that never comes back is replicated to only for a grace of election timeouts', () => {
    // Found by a README run: the leader heartbeated a removed, stopped node for ever.
    const net = removedWhileAway();
    expect(net.node(1).status().progress.map((p) => p.id)).toContain(4);
    net.heartbeats(1, REMOVED_MEMBER_GRACE_ELECTION_TIMEOUTS * DEFAULT_RAFT_CONFIG.electionTimeoutTicks + 1);
    expect(net.node(1).status().progress.map((p) => p.id).sort()).toEqual([2, 3]);
    expect(net.node(1).role).toBe('leader');
  });
});
