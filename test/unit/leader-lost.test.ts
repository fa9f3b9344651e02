import { DEFAULT_RAFT_CONFIG, LEADER_LOST_CAMPAIGN_TICKS } from '../../src/raft/node';
import { RaftNetwork } from '../support/raft-network';

/**
 * A follower whose connection from its leader broke (the transport saw UNAVAILABLE)
 * campaigns within LEADER_LOST_CAMPAIGN_TICKS, not after a whole election timeout
 * (RaftNode.leaderConnectionLost); a wrong guess disrupts nothing.
 */
describe('leader connection lost', () => {
  test('when the leader process dies, the followers that see its connection break elect a new leader within a few ticks', () => {
    const net = RaftNetwork.ledBy(1);
    const term = net.node(1).term;
    net.isolate(1); // the leader is gone
    net.node(2).leaderConnectionLost(1);
    net.node(3).leaderConnectionLost(1);
    expect(net.node(2).leader).toBe(0);
    // Each process ticks on its own clock: never both at the same instant.
    for (let tick = 0; tick < LEADER_LOST_CAMPAIGN_TICKS && net.leaders().every((id) => id === 1); tick++) {
      net.tick(2);
      net.settle();
      net.tick(3);
      net.settle();
    }
    const leaders = net.leaders().filter((id) => id !== 1);
    expect(leaders).toHaveLength(1);
    expect(net.node(leaders[0]!).term).toBe(term + 1);
    expect(LEADER_LOST_CAMPAIGN_TICKS).toBeLessThan(DEFAULT_RAFT_CONFIG.electionTimeoutTicks / 2);
  });

  test('a follower wrong about it (the leader still reaches the others) does not disrupt the cluster', () => {
    const net = RaftNetwork.ledBy(1);
    const term = net.node(1).term;
    net.cutLink(1, 2); // only node 2 stops hearing the leader
    net.node(2).leaderConnectionLost(1);
    for (let tick = 0; tick < 2 * LEADER_LOST_CAMPAIGN_TICKS; tick++) {
      net.tick(2);
      net.tick(3);
      net.settle();
    }
    // Node 3 still hears the leader: it refuses node 2's pre-vote, so nobody's term moves.
    expect(net.node(2).role).not.toBe('leader');
    expect(net.node(1).role).toBe('leader');
    expect([net.node(1).term, net.node(2).term, net.node(3).term]).toEqual([term, term, term]);
    net.heal();
    net.heartbeats(1, 1);
    expect(net.node(2).leader).toBe(1); // the next heartbeat brings it back
  });

  test('it means nothing when the lost peer is not our leader, or we lead', () => {
    const net = RaftNetwork.ledBy(1);
    net.node(2).leaderConnectionLost(3);
    expect(net.node(2).leader).toBe(1);
    net.node(1).leaderConnectionLost(2);
    expect(net.node(1).role).toBe('leader');
  });
});
