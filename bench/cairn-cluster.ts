/**
 * Three `cairn serve` processes with the settings a user gets by default (LevelDB with
 * fsync, default timing): only ids, ports, peers, data dirs and a cluster token are given.
 * They run under the Node binary the caller chooses (the machine's, or Node 26).
 */
import { existsSync } from 'node:fs';
import { CAIRN_MAIN } from '../test/support/process-cluster';
import { allocateNodes, BenchCluster, makeRoot, spawnTracked } from './cluster';
import { SystemName } from './targets';

export class CairnCluster extends BenchCluster {
  readonly system: SystemName = 'cairn';

  private constructor(root: string, nodes: Awaited<ReturnType<typeof allocateNodes>>, readonly runtime: string) {
    super(root, nodes);
  }

  static async start(nodeBinary: string, nodeVersion: string, token: string): Promise<CairnCluster> {
    if (!existsSync(CAIRN_MAIN)) throw new Error(`${CAIRN_MAIN} is missing: build first (npm run bench does)`);
    const root = makeRoot('cairn-bench-');
    const nodes = await allocateNodes(root, 3, 'node');
    const cluster = new CairnCluster(root, nodes, `node ${nodeVersion}`);
    const peers = nodes.map((n, i) => `${i + 1}=${n.peerAddr}`).join(',');
    nodes.forEach((n, i) => {
      n.process = spawnTracked(nodeBinary, [
        CAIRN_MAIN, 'serve', '--id', String(i + 1), '--data-dir', n.dataDir,
        '--client-addr', n.clientAddr, '--peer-addr', n.peerAddr, '--peers', peers, '--cluster-token', token,
      ], n.logFile);
    });
    return cluster;
  }
}
