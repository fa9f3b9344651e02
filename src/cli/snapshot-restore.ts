import { parsePeers, SERVE_FLAGS } from '../server/config';
import { describeVoters, votersOf } from '../server/identity';
import { restoreDataDir } from '../server/snapshot-restore';
import { parseArgs, UsageError } from './flags';

export const SNAPSHOT_RESTORE_USAGE = `cairn snapshot restore FILE --data-dir DIR --id N --peers ID=HOST:PORT,... --cluster-token T

Writes a new data dir DIR (missing or empty) for node N of a new cluster whose voters are
--peers, seeded with the keys and client sessions of the snapshot file FILE (written by
cairn snapshot save). Run it once per node, with the same FILE, --peers and --cluster-token
and each node's own --id and --data-dir; then start each with cairn serve and the same flags.
FILE is checked whole (SHA-256) first; a damaged or truncated file is refused.
--cluster-token is required: it makes the new cluster's id, and a token other than the old
cluster's keeps the two from ever accepting each other's nodes (with the default token and
the same --peers the new cluster would get the old one's id).`;

const RESTORE_FLAGS = ['data-dir', 'id', 'peers', 'cluster-token'];
const DEFAULT_CLUSTER_TOKEN = SERVE_FLAGS.find((spec) => spec.flag === 'cluster-token')!.default;

/** `cairn snapshot restore ...`: one line on success; an error is one line from main (exit 1), a usage error exit 2. */
export async function runSnapshotRestore(argv: readonly string[], print: (line: string) => void): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    print(SNAPSHOT_RESTORE_USAGE);
    return 0;
  }
  const { positional, flags } = parseArgs(argv, [], RESTORE_FLAGS);
  if (positional.length !== 1) throw new UsageError(`cairn snapshot restore takes one FILE, got ${positional.length}\n\n${SNAPSHOT_RESTORE_USAGE}`);
  for (const flag of ['data-dir', 'id', 'peers', 'cluster-token']) {
    if (!flags[flag]) throw new UsageError(`cairn snapshot restore needs --${flag}\n\n${SNAPSHOT_RESTORE_USAGE}`);
  }
  const nodeId = Number(flags.id);
  if (!Number.isSafeInteger(nodeId) || nodeId < 1) throw new UsageError(`--id must be an integer >= 1, got "${flags.id}"`);
  const peers = parsePeers(flags.peers!);
  const clusterToken = flags['cluster-token']!;
  if (clusterToken === DEFAULT_CLUSTER_TOKEN) {
    throw new UsageError(`--cluster-token must name the new cluster: "${DEFAULT_CLUSTER_TOKEN}" is the default, which the old cluster most likely has`);
  }
  const file = positional[0]!;
  const dataDir = flags['data-dir']!;
  const outcome = await restoreDataDir({ file, dataDir, nodeId, peers, clusterToken });
  print(
    `restored ${file} (index ${outcome.meta.index}, term ${outcome.meta.term}) into ${dataDir} as node ${nodeId} of cluster ${outcome.clusterId} ` +
      `with voters ${describeVoters(votersOf(peers))}; start it with cairn serve and the same --id, --data-dir, --peers and --cluster-token`,
  );
  return 0;
}
