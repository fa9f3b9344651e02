import { ConfigChangeType } from '../../gen/cairn/raft/v1/raft';
import { MAX_READ_ROUNDS_IN_FLIGHT } from '../../src/raft/node';
import { RaftNetwork } from '../support/raft-network';

/** ReadIndex batching: many concurrent reads share heartbeat rounds, one round in flight at a time. */
describe('read rounds', () => {
  test('reads that arrive while a round is in flight wait for it, then all go in the next round together', () => {
    expect(MAX_READ_ROUNDS_IN_FLIGHT).toBe(1);
    const net = RaftNetwork.ledBy(1);
    const leader = net.node(1);
    const heartbeatsSoFar = () => net.readies.get(1)!.flatMap((r) => r.messages).filter((m) => m.body?.$case === 'heartbeatRequest' && m.body.value.readRound > 0);

    expect(leader.readIndex(1).ok).toBe(true);
    net.flush(); // round 1 goes out
    expect(heartbeatsSoFar().map((m) => m.to).sort()).toEqual([2, 3]);
    for (let id = 2; id <= 20; id++) {
      expect(leader.readIndex(id).ok).toBe(true);
      net.flush(); // the leader drains after every read, as the shell does
    }
    expect(heartbeatsSoFar()).toHaveLength(2); // no new round while round 1 waits
    expect(leader.hasReady()).toBe(false); // and no empty Readies either

    net.settle(); // round 1 is confirmed; reads 2..20 go out as round 2, confirmed too
    const rounds = new Set(heartbeatsSoFar().map((m) => (m.body?.$case === 'heartbeatRequest' ? m.body.value.readRound : 0)));
    expect(rounds.size).toBe(2);
    expect(net.grantedReads.filter((g) => g.node === 1).map((g) => g.readId).sort((a, b) => a - b)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
  });

  test('a round whose heartbeats are lost is confirmed by the next periodic heartbeat', () => {
    const net = RaftNetwork.ledBy(1);
    const leader = net.node(1);
    leader.readIndex(1);
    net.flush();
    net.pending.splice(0); // round 1's heartbeats are lost
    leader.readIndex(2); // waits behind round 1
    net.flush();
    expect(net.pending).toEqual([]);
    net.heartbeats(1, 1); // a tick's heartbeat carries the latest round: both are confirmed in turn
    net.settle();
    expect(net.grantedReads.filter((g) => g.node === 1).map((g) => g.readId).sort()).toEqual([1, 2]);
  });
});

describe('read rounds when the leader is left the only voter', () => {
  test('a round in flight, and the reads waiting behind it, are granted once a config change leaves the leader alone', () => {
    const net = RaftNetwork.ledBy(1, 2);
    const leader = net.node(1);
    net.isolate(2); // node 2 is down for good: no heartbeat answer will come
    leader.readIndex(1);
    net.flush();
    leader.readIndex(2); // waits behind round 1
    net.flush();
    expect(net.grantedReads).toEqual([]);
    const removal = leader.proposeConfigChange({ type: ConfigChangeType.CONFIG_CHANGE_TYPE_REMOVE, member: { id: 2, peerAddr: '', clientAddr: '' } });
    expect(removal).toMatchObject({ ok: true });
    net.flush();
    expect(net.grantedReads.filter((g) => g.node === 1).map((g) => g.readId).sort()).toEqual([1, 2]);
  });
});
