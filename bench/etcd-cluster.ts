/**
 * Three etcd members with etcd's default settings: only names, URLs (127.0.0.1), data dirs
 * and the initial cluster are given.
 */
import { execFileSync } from 'node:child_process';
import { allocateNodes, BenchCluster, makeRoot, spawnTracked } from './cluster';
import { SystemName } from './targets';

/** The etcd binary on PATH, or undefined. */
export function findEtcd(): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(':')) {
    try {
      const path = `${dir || '.'}/etcd`;
      execFileSync(path, ['--version'], { stdio: 'ignore', timeout: 10_000 });
      return path;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** "etcd 3.4.23" from `etcd --version`. */
export function etcdVersion(binary: string): string {
  const out = execFileSync(binary, ['--version'], { encoding: 'utf8', timeout: 10_000 });
  return `etcd ${/etcd Version:\s*(\S+)/.exec(out)?.[1] ?? 'unknown'}`;
}

export class EtcdCluster extends BenchCluster {
  readonly system: SystemName = 'etcd';

  private constructor(root: string, nodes: Awaited<ReturnType<typeof allocateNodes>>, readonly runtime: string) {
    super(root, nodes);
  }

  static async start(binary: string, version: string, token: string): Promise<EtcdCluster> {
    const root = makeRoot('etcd-bench-');
    const nodes = await allocateNodes(root, 3, 'n');
    const cluster = new EtcdCluster(root, nodes, version);
    const initialCluster = nodes.map((n) => `${n.name}=http://${n.peerAddr}`).join(',');
    for (const n of nodes) {
      n.process = spawnTracked(binary, [
        '--name', n.name, '--data-dir', n.dataDir,
        '--listen-client-urls', `http://${n.clientAddr}`, '--advertise-client-urls', `http://${n.clientAddr}`,
        '--listen-peer-urls', `http://${n.peerAddr}`, '--initial-advertise-peer-urls', `http://${n.peerAddr}`,
        '--initial-cluster', initialCluster, '--initial-cluster-state', 'new', '--initial-cluster-token', token,
      ], n.logFile);
    }
    return cluster;
  }
}
