import { assert } from '../assert';

/** A member id (node.ts's NodeId; redeclared so that this module imports nothing of the core). */
type NodeId = number;

/**
 * Who counts towards a decision: one quorum abstraction for commit, elections,
 * check-quorum and ReadIndex (as etcd-io/raft's quorum package).
 *
 * voters:   the (incoming) voter set; a decision needs a majority of it.
 * outgoing: during joint consensus (Raft thesis §4.3) the previous voter set; a decision
 *           then needs a majority of each set. Absent or empty: not joint.
 * learners: receive the log but never count. Disjoint from voters and outgoing (a voter
 *           demoted during a joint change stays only in outgoing until the change ends).
 *
 * An empty majority set is a majority of nothing: it commits every index, wins every
 * vote and has quorum (etcd's semantics), so that the outgoing half of a config that is
 * not joint never constrains the incoming one. A node's own config always has voters.
 */
export interface QuorumConfig {
  readonly voters: ReadonlySet<NodeId>;
  readonly outgoing?: ReadonlySet<NodeId>;
  readonly learners: ReadonlySet<NodeId>;
}

export type VoteResult = 'won' | 'lost' | 'pending';

/** Builds a QuorumConfig, asserting its invariants (distinct ids, learners never voters). */
export function quorumConfig(parts: {
  voters: Iterable<NodeId>;
  outgoing?: Iterable<NodeId>;
  learners?: Iterable<NodeId>;
}): QuorumConfig {
  const voters = distinctIds('voters', parts.voters);
  const outgoing = distinctIds('outgoing', parts.outgoing ?? []);
  const learners = distinctIds('learners', parts.learners ?? []);
  for (const id of learners) {
    assert(!voters.has(id) && !outgoing.has(id), () => `learner ${id} is also a voter`);
  }
  return outgoing.size > 0 ? { voters, outgoing, learners } : { voters, learners };
}

export function isJoint(config: QuorumConfig): boolean {
  return (config.outgoing?.size ?? 0) > 0;
}

/** Whether `id` counts in any half of the config. */
export function isVoter(config: QuorumConfig, id: NodeId): boolean {
  return config.voters.has(id) || (config.outgoing?.has(id) ?? false);
}

/** How many of `voterCount` voters make a majority. */
export function majoritySize(voterCount: number): number {
  return Math.floor(voterCount / 2) + 1;
}

/**
 * The highest index a quorum has acknowledged: in each majority set, the largest index
 * that a majority holds (matchIndexOf gives each voter's acknowledged index), and when
 * joint the lower of the two. Infinity when every set is empty (see QuorumConfig).
 */
export function committedIndex(config: QuorumConfig, matchIndexOf: (id: NodeId) => number): number {
  const incoming = majorityCommittedIndex(config.voters, matchIndexOf);
  return config.outgoing ? Math.min(incoming, majorityCommittedIndex(config.outgoing, matchIndexOf)) : incoming;
}

/**
 * The outcome of an election from the votes so far (id -> granted; ids outside the
 * config are ignored): won once each majority set has a majority granting, lost once
 * either set can no longer reach one, pending otherwise.
 */
export function voteResult(config: QuorumConfig, votes: ReadonlyMap<NodeId, boolean>): VoteResult {
  const incoming = majorityVoteResult(config.voters, votes);
  if (!config.outgoing) return incoming;
  const outgoing = majorityVoteResult(config.outgoing, votes);
  if (incoming === 'lost' || outgoing === 'lost') return 'lost';
  if (incoming === 'won' && outgoing === 'won') return 'won';
  return 'pending';
}

/** Whether the members that answered (check-quorum, a ReadIndex round) form a quorum. */
export function hasQuorum(config: QuorumConfig, responded: ReadonlySet<NodeId>): boolean {
  return voteResult(config, grantedBy(config, responded)) === 'won';
}

function majorityCommittedIndex(voters: ReadonlySet<NodeId>, matchIndexOf: (id: NodeId) => number): number {
  if (voters.size === 0) return Infinity;
  const matches: number[] = [];
  for (const id of voters) {
    const match = matchIndexOf(id);
    assert(Number.isSafeInteger(match) && match >= 0, () => `match index ${match} of ${id} is not an index`);
    matches.push(match);
  }
  matches.sort((a, b) => b - a);
  return matches[majoritySize(voters.size) - 1]!;
}

function majorityVoteResult(voters: ReadonlySet<NodeId>, votes: ReadonlyMap<NodeId, boolean>): VoteResult {
  if (voters.size === 0) return 'won';
  let granted = 0;
  let missing = 0;
  for (const id of voters) {
    const vote = votes.get(id);
    if (vote === undefined) missing++;
    else if (vote) granted++;
  }
  const needed = majoritySize(voters.size);
  if (granted >= needed) return 'won';
  if (granted + missing >= needed) return 'pending';
  return 'lost';
}

function grantedBy(config: QuorumConfig, responded: ReadonlySet<NodeId>): Map<NodeId, boolean> {
  const votes = new Map<NodeId, boolean>();
  for (const id of responded) if (isVoter(config, id)) votes.set(id, true);
  return votes;
}

function distinctIds(name: string, ids: Iterable<NodeId>): Set<NodeId> {
  const list = [...ids];
  const set = new Set(list);
  assert(set.size === list.length, () => `${name} are not distinct: ${list.join(',')}`);
  for (const id of set) assert(Number.isSafeInteger(id) && id >= 1, () => `${name} holds ${id}, not a node id`);
  return set;
}
