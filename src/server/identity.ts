import { createHash } from 'node:crypto';
import { ClusterIdentity, Voter } from '../../gen/cairn/storage/v1/storage';
import { CairnError, ErrorCode } from '../errors';
import { Db, DbOp } from '../storage/db';
import { Logger } from './logger';

const CLUSTER_KEY = Buffer.from('cluster');

/**
 * The cluster id every node derives from the same bootstrap inputs (the token and the
 * initial members), as etcd does, so nodes agree on it without talking. It is stored in
 * `meta` at first start and read back afterwards: later flag changes do not alter it.
 */
export function deriveClusterId(token: string, peers: Map<number, string>): number {
  const spec = [...peers].sort(([a], [b]) => a - b).map(([id, addr]) => `${id}=${addr}`).join(',');
  const digest = createHash('sha256').update(`${token}\n${spec}`).digest();
  // 48 bits: a safe integer, and plenty to tell clusters apart.
  return digest.readUIntBE(0, 6) || 1;
}

/** A voter set as people write it in --peers: `1=host:port,2=host:port`, in id order. */
export function describeVoters(voters: readonly Voter[]): string {
  return voters.map((v) => `${v.id}=${v.peerAddr}`).join(',');
}

export function votersOf(peers: Map<number, string>): Voter[] {
  return [...peers].sort(([a], [b]) => a - b).map(([id, peerAddr]) => ({ id, peerAddr }));
}

function sameIds(a: readonly Voter[], b: readonly Voter[]): boolean {
  return a.length === b.length && a.every((voter, i) => voter.id === b[i]!.id);
}

/**
 * Reads this data dir's identity (cluster id, node id, voter set), or stores one at first
 * start. A restart must name the same voter ids in --peers as the stored set: starting with
 * other voters would let a node count a quorum of a different cluster, so it is refused (the
 * way to change membership is a later issue). A voter's peer address may change (addresses
 * move, e.g. in Kubernetes; ids are what Raft counts): the new one is stored.
 */
export async function loadOrCreateIdentity(
  db: Db,
  nodeId: number,
  derivedClusterId: number,
  peers: Map<number, string>,
  logger: Pick<Logger, 'info' | 'warn'>,
): Promise<ClusterIdentity> {
  const flagged = votersOf(peers);
  const stored = await db.get('meta', CLUSTER_KEY);
  if (!stored) return storeIdentity(db, { clusterId: derivedClusterId, nodeId, voters: flagged });
  const identity = ClusterIdentity.decode(stored);
  if (identity.nodeId !== nodeId) {
    throw new CairnError(ErrorCode.CORRUPTION, `data dir belongs to node ${identity.nodeId}, not node ${nodeId}`);
  }
  if (identity.voters.length === 0) {
    logger.warn({ voters: describeVoters(flagged) }, 'data dir has no stored voter set (written by an older cairn): adopting --peers and storing it');
    return storeIdentity(db, { ...identity, voters: flagged });
  }
  if (!sameIds(identity.voters, flagged)) {
    throw new CairnError(
      ErrorCode.INVALID_ARGUMENT,
      `--peers names the voters ${describeVoters(flagged)} but this data dir's cluster has the voters ${describeVoters(identity.voters)}: ` +
        'changing membership by restarting with other --peers is unsafe, so the node refuses to start (start it with the stored set)',
    );
  }
  if (describeVoters(identity.voters) !== describeVoters(flagged)) {
    logger.warn({ stored: describeVoters(identity.voters), flags: describeVoters(flagged) }, 'peer addresses changed (same voter ids): storing the new ones');
    return storeIdentity(db, { ...identity, voters: flagged });
  }
  return identity;
}

async function storeIdentity(db: Db, identity: ClusterIdentity): Promise<ClusterIdentity> {
  await db.write(stageIdentity(identity), { sync: true });
  return identity;
}

/** The write that stores `identity` (for a batch of the caller's, e.g. a snapshot restore's). */
export function stageIdentity(identity: ClusterIdentity): DbOp[] {
  return [{ type: 'put', sublevel: 'meta', key: CLUSTER_KEY, value: ClusterIdentity.encode(identity).finish() }];
}
