import { mkdir, readdir, rm, stat } from 'node:fs/promises';
import { ClusterConfig, SnapshotMeta } from '../../gen/cairn/raft/v1/raft';
import { StoredSnapshot } from '../../gen/cairn/storage/v1/storage';
import { CairnError, ErrorCode } from '../errors';
import { KvStateMachine } from '../kv/state-machine';
import { DbOp, LevelDb } from '../storage/db';
import { LevelHardStateStore, SNAPSHOT_KEY } from '../storage/raft-storage';
import { openSnapshotFile, verifySnapshotFile } from '../storage/snapshot-file';
import { deriveClusterId, describeVoters, stageIdentity, votersOf } from './identity';

export interface RestoreOptions {
  file: string;
  dataDir: string;
  /** This node's id: one of `peers`. */
  nodeId: number;
  /** The new cluster's bootstrap voters (id -> peer address), as `cairn serve --peers` will name them. */
  peers: Map<number, string>;
  clusterToken: string;
}

export interface RestoreOutcome {
  meta: SnapshotMeta;
  clusterId: number;
  chunks: number;
  bytes: number;
}

/**
 * Seeds a fresh data dir from a snapshot file, as `etcdutl snapshot restore` does: a new
 * cluster whose bootstrap voters are `peers`, holding the file's kv and sessions at the
 * file's index. It writes, in one synced batch after staging the state: the state
 * machine's generation switch and applied state, meta/snapshot (the file's index and
 * term, the new voters as its config), the cluster identity (id derived from the token
 * and peers, as at any bootstrap) and the hard state {term: the file's term, no vote}.
 * The log is empty: it starts after the snapshot index. `cairn serve` with the same
 * --id, --data-dir, --peers and --cluster-token then starts from it.
 *
 * The file is checked whole (SHA-256) before the data dir is touched; on any failure
 * what this wrote is removed, so DIR is left as it was.
 */
export async function restoreDataDir(options: RestoreOptions): Promise<RestoreOutcome> {
  if (!options.peers.has(options.nodeId)) {
    throw new CairnError(ErrorCode.INVALID_ARGUMENT, `--peers (${describeVoters(votersOf(options.peers))}) does not name this node (--id ${options.nodeId})`);
  }
  const exists = await checkEmptyDir(options.dataDir);
  const summary = await verifySnapshotFile(options.file);
  if (summary.meta.index < 1) {
    throw new CairnError(ErrorCode.INVALID_ARGUMENT, `snapshot file ${options.file} is at index 0 (an empty state): there is nothing to restore`);
  }
  if (!exists) await mkdir(options.dataDir, { recursive: true });
  const created = !exists;
  let db: LevelDb | undefined;
  try {
    db = await LevelDb.openDirectory(options.dataDir);
    const clusterId = deriveClusterId(options.clusterToken, options.peers);
    await db.write(await stageFileState(db, options, clusterId), { sync: true });
    await db.close();
    db = undefined;
    return { meta: summary.meta, clusterId, chunks: summary.chunks, bytes: summary.bytes };
  } catch (err) {
    await db?.close().catch(() => undefined);
    await releaseDir(options.dataDir, created);
    throw err;
  }
}

/** Stages the file's state into `db` and returns the one batch that makes the data dir whole. */
async function stageFileState(db: LevelDb, options: RestoreOptions, clusterId: number): Promise<DbOp[]> {
  const stateMachine = await KvStateMachine.open(db);
  const reader = await openSnapshotFile(options.file);
  const restore = await stateMachine.beginRestore();
  // Checked again as it is read: the file could have changed since the first pass.
  for await (const chunk of reader.chunks()) await restore.write(chunk);
  const { index, term } = reader.meta;
  if (restore.appliedIndex() !== index) {
    throw new CairnError(ErrorCode.CORRUPTION, `snapshot file ${options.file} says it is at index ${index}, but its state is at applied index ${restore.appliedIndex()}`);
  }
  const voters = votersOf(options.peers);
  const config: ClusterConfig = { voters: voters.map((v) => ({ id: v.id, peerAddr: v.peerAddr, clientAddr: '' })), learners: [] };
  const stored: StoredSnapshot = { meta: { index, term, config } };
  return [
    ...restore.switchOps(),
    { type: 'put', sublevel: 'meta', key: SNAPSHOT_KEY, value: StoredSnapshot.encode(stored).finish() },
    ...stageIdentity({ clusterId, nodeId: options.nodeId, voters }),
    ...new LevelHardStateStore(db).stageSave({ term, votedFor: 0 }),
  ];
}

/** Refuses a `dir` that is anything but missing or an empty directory; returns whether it exists. */
async function checkEmptyDir(dir: string): Promise<boolean> {
  const info = await stat(dir).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  });
  if (!info) return false;
  if (!info.isDirectory()) throw new CairnError(ErrorCode.INVALID_ARGUMENT, `--data-dir ${dir} is not a directory`);
  if ((await readdir(dir)).length > 0) {
    throw new CairnError(ErrorCode.INVALID_ARGUMENT, `--data-dir ${dir} is not empty: snapshot restore writes a new data dir (move the old one away, or choose another)`);
  }
  return true;
}

/** Leaves `dir` as it was before the restore: absent, or empty. */
async function releaseDir(dir: string, created: boolean): Promise<void> {
  if (created) {
    await rm(dir, { recursive: true, force: true });
    return;
  }
  for (const name of await readdir(dir).catch(() => [])) await rm(`${dir}/${name}`, { recursive: true, force: true });
}
