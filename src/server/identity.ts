import { createHash } from 'node:crypto';
import { ClusterIdentity } from '../../gen/cairn/storage/v1/storage';
import { CairnError, ErrorCode } from '../errors';
import { Db } from '../storage/db';

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

export async function loadOrCreateIdentity(db: Db, nodeId: number, derivedClusterId: number): Promise<ClusterIdentity> {
  const stored = await db.get('meta', CLUSTER_KEY);
  if (stored) {
    const identity = ClusterIdentity.decode(stored);
    if (identity.nodeId !== nodeId) {
      throw new CairnError(ErrorCode.CORRUPTION, `data dir belongs to node ${identity.nodeId}, not node ${nodeId}`);
    }
    return identity;
  }
  const identity: ClusterIdentity = { clusterId: derivedClusterId, nodeId };
  await db.write([{ type: 'put', sublevel: 'meta', key: CLUSTER_KEY, value: ClusterIdentity.encode(identity).finish() }], { sync: true });
  return identity;
}
