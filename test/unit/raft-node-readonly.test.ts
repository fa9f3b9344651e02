import { DEFAULT_RAFT_CONFIG, NO_NODE, RaftNode } from '../../src/raft/node';
import { SeededRandom } from '../../src/raft/random';

// Role, term, vote and leader are the core's own state: code outside src/raft reads them
// but cannot write them. tsc proves the compile-time half (each @ts-expect-error fails the
// build if the assignment becomes legal again); the runtime half is that a getter-only
// property refuses assignment in strict mode.
describe('RaftNode state is read-only from outside', () => {
  const node = () => new RaftNode({ ...DEFAULT_RAFT_CONFIG, id: 1, voters: [1, 2, 3], random: new SeededRandom(1) }, { hardState: { term: 4, votedFor: 2 }, entries: [], appliedIndex: 0 });

  test('readers see the restored hard state', () => {
    const n = node();
    expect([n.role, n.term, n.votedFor, n.leader]).toEqual(['follower', 4, 2, NO_NODE]);
  });

  test('assignments are refused', () => {
    const n = node();
    expect(() => {
      // @ts-expect-error role is read-only outside the core
      n.role = 'leader';
    }).toThrow(TypeError);
    expect(() => {
      // @ts-expect-error term is read-only outside the core
      n.term = 9;
    }).toThrow(TypeError);
    expect(() => {
      // @ts-expect-error votedFor is read-only outside the core
      n.votedFor = 3;
    }).toThrow(TypeError);
    expect(() => {
      // @ts-expect-error leader is read-only outside the core
      n.leader = 1;
    }).toThrow(TypeError);
    expect([n.role, n.term, n.votedFor, n.leader]).toEqual(['follower', 4, 2, NO_NODE]);
  });
});
