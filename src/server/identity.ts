import { createHash } from 'node:crypto';
import { ClusterConfig } from '../../gen/cairn/raft/v1/raft';
import { ClusterIdentity, Voter } from '../../gen/cairn/storage/v1/storage';
import { CairnError, ErrorCode } from '../errors';
import { Db, DbOp } from '../storage/db';
import { Logger } from './logger';

const CLUSTER_KEY = Buffer.from('cluster');

/** Logged when a node with state is started with bootstrap flags that differ from its data. */
export const IGNORED_BOOTSTRAP_FLAGS = 'data dir already has state: ignoring the bootstrap flags (--peers, --join); membership comes from the data dir and the log';

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

/** This data dir's identity, or undefined when it has none yet (a first start). */
export async function readIdentity(db: Db): Promise<ClusterIdentity | undefined> {
  const stored = await db.get('meta', CLUSTER_KEY);
  return stored ? ClusterIdentity.decode(stored) : undefined;
}

/**
 * The configuration a node starts from while its log and snapshot hold none: the stored
 * bootstrap configuration, or (data dirs written before it was stored) the voter set.
 */
export function bootstrapConfigOf(identity: ClusterIdentity): ClusterConfig {
  if (identity.bootstrapConfig) return identity.bootstrapConfig;
  return { voters: identity.voters.map((v) => ({ id: v.id, peerAddr: v.peerAddr, clientAddr: '' })), learners: [] };
}

/**
 * Stores the identity of a node that joined a running cluster (`--join`): the cluster's id,
 * and the configuration it was added with as its bootstrap configuration. Nothing of
 * --peers is stored: membership comes from the cluster.
 */
export async function storeJoinedIdentity(db: Db, nodeId: number, clusterId: number, config: ClusterConfig): Promise<ClusterIdentity> {
  const voters = config.voters.map((m) => ({ id: m.id, peerAddr: m.peerAddr }));
  return storeIdentity(db, { clusterId, nodeId, voters, bootstrapConfig: config });
}

/**
 * Reads this data dir's identity (cluster id, node id, bootstrap voter set), or stores one
 * at first start from --peers. The stored set is the bootstrap configuration only: once the
 * log or a snapshot holds a configuration, that one wins, and membership changes go through
 * Raft (cairn member add/promote/remove). So a restart whose --peers names other voter ids
 * is not a membership change: the data dir has state, and --peers is ignored with a warning.
 * A bootstrap voter's peer address may change (addresses move, e.g. in Kubernetes; ids are
 * what Raft counts): the new one is stored.
 */
export async function loadOrCreateIdentity(
  db: Db,
  nodeId: number,
  derivedClusterId: number,
  peers: Map<number, string>,
  logger: Pick<Logger, 'info' | 'warn'>,
): Promise<ClusterIdentity> {
  const flagged = votersOf(peers);
  const identity = await readIdentity(db);
  if (!identity) return storeIdentity(db, { clusterId: derivedClusterId, nodeId, voters: flagged });
  if (identity.nodeId !== nodeId) {
    throw new CairnError(ErrorCode.CORRUPTION, `data dir belongs to node ${identity.nodeId}, not node ${nodeId}`);
  }
  if (identity.voters.length === 0) {
    logger.warn({ voters: describeVoters(flagged) }, 'data dir has no stored voter set (written by an older cairn): adopting --peers and storing it');
    return storeIdentity(db, { ...identity, voters: flagged });
  }
  // A node that joined has no --peers of its own to compare (its caller says whether flags were ignored).
  if (identity.bootstrapConfig) return identity;
  if (!sameIds(identity.voters, flagged)) {
    logger.warn({ stored: describeVoters(identity.voters), flags: describeVoters(flagged) }, IGNORED_BOOTSTRAP_FLAGS);
    return identity;
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
