import { InvariantViolation } from '../../src/assert';
import { committedIndex, hasQuorum, isJoint, QuorumConfig, quorumConfig, voteResult, VoteResult } from '../../src/raft/quorum';
import { SeededRandom } from '../../src/raft/random';

const config = (voters: number[], outgoing: number[] = [], learners: number[] = []) => quorumConfig({ voters, outgoing, learners });
const matchesOf = (matches: Record<number, number>) => (id: number) => matches[id] ?? 0;
const votesOf = (votes: Record<number, boolean>) => new Map(Object.entries(votes).map(([id, v]) => [Number(id), v]));

describe('quorum tables', () => {
  test.each([
    // voters, outgoing, match indexes, committed
    [[1], [], { 1: 5 }, 5],
    [[1, 2, 3], [], { 1: 5, 2: 3, 3: 1 }, 3],
    [[1, 2, 3], [], { 1: 5 }, 0],
    [[1, 2, 3, 4], [], { 1: 5, 2: 4, 3: 3, 4: 2 }, 3],
    [[1, 2, 3, 4, 5], [], { 1: 9, 2: 9, 3: 1, 4: 1, 5: 9 }, 9],
    [[1, 2, 3], [1], { 1: 7, 2: 2, 3: 2 }, 2],
    [[1, 2, 3], [4, 5, 6], { 1: 8, 2: 8, 3: 8, 4: 1, 5: 3, 6: 0 }, 1],
    [[], [], {}, Infinity],
  ])('voters %j outgoing %j matches %j commit %d', (voters, outgoing, matches, expected) => {
    expect(committedIndex(config(voters, outgoing), matchesOf(matches))).toBe(expected);
  });

  test('learners never count towards commit', () => {
    expect(committedIndex(config([1, 2, 3], [], [4, 5]), matchesOf({ 1: 9, 4: 9, 5: 9 }))).toBe(0);
  });

  test.each([
    // voters, outgoing, votes, result
    [[1], [], {}, 'pending'],
    [[1], [], { 1: true }, 'won'],
    [[1], [], { 1: false }, 'lost'],
    [[1, 2, 3], [], { 1: true }, 'pending'],
    [[1, 2, 3], [], { 1: true, 2: true }, 'won'],
    [[1, 2, 3], [], { 1: true, 2: false }, 'pending'],
    [[1, 2, 3], [], { 1: false, 2: false }, 'lost'],
    // An even cluster is lost as soon as a majority can no longer grant (etcd's rule).
    [[1, 2, 3, 4], [], { 1: false, 2: false }, 'lost'],
    [[1, 2, 3, 4], [], { 1: true, 2: true }, 'pending'],
    [[1, 2, 3], [], { 7: true, 8: true }, 'pending'],
    // Joint: both majorities must win; either losing loses.
    [[1, 2, 3], [4, 5, 6], { 1: true, 2: true }, 'pending'],
    [[1, 2, 3], [4, 5, 6], { 1: true, 2: true, 4: true, 5: true }, 'won'],
    [[1, 2, 3], [4, 5, 6], { 1: true, 2: true, 4: false, 5: false }, 'lost'],
    [[1, 2, 3], [1, 2, 4], { 1: true, 2: true }, 'won'],
    [[1, 2, 3], [3, 4, 5], { 1: true, 2: true, 3: true }, 'pending'],
    [[], [], {}, 'won'],
  ])('voters %j outgoing %j votes %j: %s', (voters, outgoing, votes, expected) => {
    expect(voteResult(config(voters, outgoing), votesOf(votes))).toBe(expected);
  });

  test('learners never vote', () => {
    expect(voteResult(config([1, 2, 3], [], [4, 5]), votesOf({ 1: true, 4: true, 5: true }))).toBe('pending');
  });

  test.each([
    [[1], [], [1], true],
    [[1, 2, 3], [], [1], false],
    [[1, 2, 3], [], [1, 3], true],
    [[1, 2, 3, 4], [], [1, 3], false],
    [[1, 2, 3], [4, 5, 6], [1, 2, 4], false],
    [[1, 2, 3], [4, 5, 6], [1, 2, 4, 6], true],
    [[1, 2, 3], [], [4, 5, 6], false],
  ])('voters %j outgoing %j responded %j: quorum %s', (voters, outgoing, responded, expected) => {
    expect(hasQuorum(config(voters, outgoing), new Set(responded))).toBe(expected);
  });

  test('learners do not make a quorum', () => {
    expect(hasQuorum(config([1, 2, 3], [], [4, 5]), new Set([1, 4, 5]))).toBe(false);
  });

  test('an empty outgoing set means not joint', () => {
    expect(isJoint(config([1, 2, 3]))).toBe(false);
    expect(isJoint(config([1, 2, 3], [1, 2]))).toBe(true);
  });

  test('invariants: learners are never voters, ids are distinct node ids', () => {
    expect(() => config([1, 2, 3], [], [3])).toThrow(InvariantViolation);
    expect(() => config([1, 2], [3, 4], [4])).toThrow(/learner 4 is also a voter/);
    expect(() => config([1, 1, 2])).toThrow(/not distinct/);
    expect(() => config([0, 1])).toThrow(/not a node id/);
    expect(() => committedIndex(config([1]), () => -1)).toThrow(InvariantViolation);
  });
});

// ------------------------------------------------ brute-force reference

const MAX_ID = 7;
const MAX_INDEX = 5;
const CASES = 4_000;

interface Case {
  config: QuorumConfig;
  voters: number[];
  outgoing: number[];
  learners: number[];
}

/** A random small config: each id is an incoming voter, outgoing voter, both, a learner, or absent. */
function randomCase(random: SeededRandom): Case {
  const voters: number[] = [];
  const outgoing: number[] = [];
  const learners: number[] = [];
  const joint = random.chance(0.5);
  for (let id = 1; id <= MAX_ID; id++) {
    const roll = random.int(6);
    if (roll === 0 || roll === 2) voters.push(id);
    if (joint && (roll === 1 || roll === 2)) outgoing.push(id);
    if (roll === 3) learners.push(id);
  }
  return { config: quorumConfig({ voters, outgoing, learners }), voters, outgoing, learners };
}

/** More than half of `set` is in `chosen` (vacuously true for an empty set). */
const majorityIn = (set: number[], chosen: (id: number) => boolean) => set.length === 0 || set.filter(chosen).length * 2 > set.length;
const quorumIn = (c: Case, chosen: (id: number) => boolean) => majorityIn(c.voters, chosen) && majorityIn(c.outgoing, chosen);

/** The highest index i such that the voters holding >= i form a quorum: tried one by one. */
function referenceCommitted(c: Case, match: Map<number, number>): number {
  if (c.voters.length === 0 && c.outgoing.length === 0) return Infinity;
  let committed = 0;
  for (let index = 0; index <= MAX_INDEX; index++) {
    if (quorumIn(c, (id) => (match.get(id) ?? 0) >= index)) committed = index;
  }
  return committed;
}

/** Won if the granted votes are a quorum, lost if no way of casting the missing votes is one. */
function referenceVote(c: Case, votes: Map<number, boolean>): VoteResult {
  if (quorumIn(c, (id) => votes.get(id) === true)) return 'won';
  const members = [...new Set([...c.voters, ...c.outgoing])];
  const missing = members.filter((id) => !votes.has(id));
  for (let mask = 0; mask < 1 << missing.length; mask++) {
    const granted = new Set(missing.filter((_, bit) => mask & (1 << bit)));
    if (quorumIn(c, (id) => votes.get(id) === true || granted.has(id))) return 'pending';
  }
  return 'lost';
}

describe('quorum against a brute-force reference', () => {
  test(`committedIndex matches for ${CASES} random configs`, () => {
    const random = new SeededRandom(8001);
    for (let i = 0; i < CASES; i++) {
      const c = randomCase(random);
      const match = new Map<number, number>();
      for (let id = 1; id <= MAX_ID; id++) match.set(id, random.int(MAX_INDEX + 1));
      const got = committedIndex(c.config, (id) => match.get(id)!);
      const want = referenceCommitted(c, match);
      if (got !== want) throw new Error(`case ${i}: ${JSON.stringify({ c: { ...c, config: undefined }, match: [...match] })}: got ${got}, want ${want}`);
    }
  });

  test(`voteResult and hasQuorum match for ${CASES} random configs and votes`, () => {
    const random = new SeededRandom(8002);
    for (let i = 0; i < CASES; i++) {
      const c = randomCase(random);
      const votes = new Map<number, boolean>();
      for (let id = 1; id <= MAX_ID; id++) {
        const roll = random.int(3); // 0: no answer yet, 1: granted, 2: rejected (learners and strangers too)
        if (roll > 0) votes.set(id, roll === 1);
      }
      const got = voteResult(c.config, votes);
      const want = referenceVote(c, votes);
      if (got !== want) throw new Error(`case ${i}: ${JSON.stringify({ c: { ...c, config: undefined }, votes: [...votes] })}: got ${got}, want ${want}`);
      const responded = new Set([...votes].filter(([, granted]) => granted).map(([id]) => id));
      expect(hasQuorum(c.config, responded)).toBe(quorumIn(c, (id) => responded.has(id)));
    }
  });
});
