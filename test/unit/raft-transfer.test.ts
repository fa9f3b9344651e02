import { ConfigChangeType, Message } from '../../gen/cairn/raft/v1/raft';
import { DEFAULT_RAFT_CONFIG } from '../../src/raft/node';
import { RaftNetwork } from '../support/raft-network';

const data = (text: string) => Buffer.from(text);

/** A three-voter cluster led by node 1, its no-op committed everywhere. */
function threeNodes(): RaftNetwork {
  const net = new RaftNetwork(3);
  net.elect(1);
  net.heartbeats(1, 1);
  return net;
}

const timeoutNowsTo = (net: RaftNetwork, to: number) =>
  net.readies.get(1)!.flatMap((r) => r.messages).filter((m) => m.to === to && m.body?.$case === 'timeoutNow');

describe('leadership transfer', () => {
  test('to a caught-up follower: it wins the next term at once, and proposals are refused meanwhile', () => {
    const net = threeNodes();
    expect(net.node(1).transferLeadership(2)).toEqual({ ok: true, target: 2 });
    expect(net.node(1).status().transferee).toBe(2);
    expect(net.node(1).propose(data('x'))).toMatchObject({ ok: false, reason: 'transferring' });
    expect(net.node(1).proposeConfigChange({ type: ConfigChangeType.CONFIG_CHANGE_TYPE_PROMOTE, member: { id: 3, peerAddr: '', clientAddr: '' } })).toMatchObject({ ok: false, reason: 'transferring' });
    net.settle();
    expect(net.leaders()).toEqual([2]);
    expect(net.node(2).term).toBe(2);
    expect(net.node(1).role).toBe('follower');
    expect(net.node(1).status().transferee).toBe(0);
  });

  test('without a target, the most caught-up voter is chosen', () => {
    const net = threeNodes();
    net.isolate(2);
    net.node(1).propose(data('x'));
    net.settle();
    net.heal();
    expect(net.node(1).transferLeadership()).toEqual({ ok: true, target: 3 });
  });

  test('to a lagging follower: it is caught up first, then told to campaign', () => {
    const net = threeNodes();
    net.isolate(3);
    for (let i = 0; i < 5; i++) net.node(1).propose(data(`p${i}`));
    net.settle();
    net.heal();
    expect(net.node(3).status().lastIndex).toBe(1);
    expect(net.node(1).transferLeadership(3)).toEqual({ ok: true, target: 3 });
    net.settle();
    expect(timeoutNowsTo(net, 3)).toHaveLength(0); // not caught up yet: its appends were lost
    for (let i = 0; i < DEFAULT_RAFT_CONFIG.electionTimeoutTicks && net.leaders()[0] !== 3; i++) {
      net.tick(1);
      net.settle();
    }
    expect(timeoutNowsTo(net, 3)).toHaveLength(1);
    expect(net.leaders()).toEqual([3]);
    expect(net.node(3).term).toBe(2);
    expect(net.node(3).entryAt(6)?.data.toString()).toBe('p4');
  });

  test('to a partitioned follower: abandoned after an election timeout, and proposals resume', () => {
    const net = threeNodes();
    net.isolate(3);
    expect(net.node(1).transferLeadership(3)).toEqual({ ok: true, target: 3 });
    net.heartbeats(1, DEFAULT_RAFT_CONFIG.electionTimeoutTicks - 1);
    expect(net.node(1).propose(data('x'))).toMatchObject({ ok: false, reason: 'transferring' });
    net.heartbeats(1, 1);
    expect(net.node(1).status()).toMatchObject({ role: 'leader', term: 1, transferee: 0 });
    expect(net.node(1).propose(data('x'))).toMatchObject({ ok: true });
  });

  test('refusals: not the leader, a transfer under way, a non-voter target, itself', () => {
    const net = threeNodes();
    expect(net.node(2).transferLeadership(3)).toMatchObject({ ok: false, reason: 'not-leader', leader: 1 });
    expect(net.node(1).transferLeadership(1)).toMatchObject({ ok: false, reason: 'invalid' });
    expect(net.node(1).transferLeadership(9)).toMatchObject({ ok: false, reason: 'invalid', message: expect.stringMatching(/not a voter/) });
    net.isolate(3);
    expect(net.node(1).transferLeadership(3)).toMatchObject({ ok: true });
    expect(net.node(1).transferLeadership(2)).toMatchObject({ ok: false, reason: 'transferring' });
  });

  test('a TimeoutNow vote is granted in lease, an ordinary one is not', () => {
    const net = threeNodes();
    const ask = (leadershipTransfer: boolean): Message => ({
      fromId: 3,
      to: 2,
      term: 2,
      body: { $case: 'voteRequest', value: { lastLogIndex: 1, lastLogTerm: 1, preVote: false, leadershipTransfer } },
    });
    net.node(2).step(ask(false));
    expect(net.node(2).term).toBe(1);
    expect(net.node(2).ready().messages).toEqual([]);
    net.node(2).step(ask(true));
    expect(net.node(2).term).toBe(2);
    const response = net.node(2).ready().messages.find((m) => m.body?.$case === 'voteResponse');
    expect(response?.body?.value).toMatchObject({ granted: true, preVote: false });
  });

  test('a transfer vote still needs an up-to-date log', () => {
    const net = threeNodes();
    net.node(1).propose(data('x'));
    net.settle();
    net.node(2).step({ fromId: 3, to: 2, term: 2, body: { $case: 'voteRequest', value: { lastLogIndex: 1, lastLogTerm: 1, preVote: false, leadershipTransfer: true } } });
    const response = net.node(2).ready().messages.find((m) => m.body?.$case === 'voteResponse');
    expect(response?.body?.value).toMatchObject({ granted: false });
  });
});
