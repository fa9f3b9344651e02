import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command, KeyValue } from '../../gen/cairn/kv/v1/kv';
import { EntryType, HardState } from '../../gen/cairn/raft/v1/raft';
import { ClusterIdentity, StoredSnapshot } from '../../gen/cairn/storage/v1/storage';
import { runSnapshotRestore } from '../../src/cli/snapshot-restore';
import { UsageError } from '../../src/cli/flags';
import { CairnError } from '../../src/errors';
import { KvStateMachine } from '../../src/kv/state-machine';
import { deriveClusterId, loadOrCreateIdentity } from '../../src/server/identity';
import { restoreDataDir } from '../../src/server/snapshot-restore';
import { LevelRaftStorage, SNAPSHOT_KEY } from '../../src/storage/raft-storage';
import { LevelDb } from '../../src/storage/db';
import { writeSnapshotFile } from '../../src/storage/snapshot-file';

const PEERS = new Map([
  [1, '127.0.0.1:17101'],
  [2, '127.0.0.1:17102'],
  [3, '127.0.0.1:17103'],
]);
const PEERS_FLAG = '1=127.0.0.1:17101,2=127.0.0.1:17102,3=127.0.0.1:17103';
const QUIET = { info: () => undefined, warn: () => undefined };

function putEntry(index: number, key: string, value: string, session?: { clientId: string; sequence: number }) {
  const command: Command = {
    op: { $case: 'put', value: { key: Buffer.from(key), value: Buffer.from(value), prevKv: false, clientId: session?.clientId ?? '', sequence: session?.sequence ?? 0, lowestUnansweredSequence: 0 } },
    proposedAtUnixMs: 1_000 + index,
  };
  return { index, term: 2, type: EntryType.ENTRY_TYPE_COMMAND, data: Buffer.from(Command.encode(command).finish()) };
}

async function everything(sm: KvStateMachine): Promise<{ index: number; revision: number; logTime: number; kvs: KeyValue[] }> {
  const { kvs } = await sm.range({ start: Buffer.alloc(0), limit: 10_000, keysOnly: false });
  return { index: sm.appliedIndex(), revision: sm.revision(), logTime: sm.logTimeUnixMs(), kvs };
}

describe('cairn snapshot restore (restoreDataDir)', () => {
  let root: string;
  let file: string;
  let sourceState: Awaited<ReturnType<typeof everything>>;

  beforeEach(async () => {
    root = mkdtempSync(join(tmpdir(), 'cairn-restore-'));
    file = join(root, 'backup.snap');
    const db = await LevelDb.openMemory();
    const source = await KvStateMachine.open(db);
    await source.apply(Array.from({ length: 300 }, (_, i) => putEntry(i + 1, `key-${i}`, `value-${i}`, i % 50 === 0 ? { clientId: `client-${i}`, sequence: 1 } : undefined)));
    sourceState = await everything(source);
    const snapshot = await source.snapshot();
    await writeSnapshotFile(file, { index: snapshot.index, term: 2, config: { voters: [{ id: 9, peerAddr: 'old:1', clientAddr: '' }], learners: [] } }, snapshot.chunks(1024));
    snapshot.release();
    await db.close();
  });
  afterEach(() => rmSync(root, { recursive: true, force: true }));

  test('writes a data dir that reopens with the file state, meta/snapshot, the new identity and the hard state, and no log', async () => {
    const dataDir = join(root, 'node-2');
    const outcome = await restoreDataDir({ file, dataDir, nodeId: 2, peers: PEERS, clusterToken: 'restored' });
    expect(outcome.meta.index).toBe(300);
    expect(outcome.clusterId).toBe(deriveClusterId('restored', PEERS));
    expect(outcome.chunks).toBeGreaterThan(5);

    const db = await LevelDb.openDirectory(dataDir);
    try {
      const sm = await KvStateMachine.open(db);
      expect(await everything(sm)).toEqual(sourceState);
      // Sessions came along: a retry of a kept sequence is answered, not applied again.
      const [retry] = await sm.apply([putEntry(301, 'key-0', 'changed', { clientId: 'client-0', sequence: 1 })]);
      expect(retry!.result?.revision).toBe(1);
      expect((await sm.get(Buffer.from('key-0')))?.value.toString()).toBe('value-0');

      const stored = StoredSnapshot.decode((await db.get('meta', SNAPSHOT_KEY))!);
      expect(stored.meta).toEqual({
        index: 300,
        term: 2,
        config: { voters: [...PEERS].map(([id, peerAddr]) => ({ id, peerAddr, clientAddr: '' })), learners: [] },
      });
      expect(HardState.decode((await db.get('meta', Buffer.from('hard-state')))!)).toEqual({ term: 2, votedFor: 0 });
      const identity = ClusterIdentity.decode((await db.get('meta', Buffer.from('cluster')))!);
      expect(identity).toEqual({ clusterId: deriveClusterId('restored', PEERS), nodeId: 2, voters: [...PEERS].map(([id, peerAddr]) => ({ id, peerAddr })) });
      // What `cairn serve` with the same flags checks at start.
      expect(await loadOrCreateIdentity(db, 2, deriveClusterId('restored', PEERS), PEERS, QUIET)).toEqual(identity);
      const logEntries: unknown[] = [];
      for await (const entry of db.entries('log')) logEntries.push(entry);
      expect(logEntries).toEqual([]);
      // And what the Raft storage reads back at start: the snapshot point, the hard state, no entries.
      expect(await new LevelRaftStorage(db).load()).toEqual({ hardState: { term: 2, votedFor: 0 }, entries: [], snapshot: stored.meta });
    } finally {
      await db.close();
    }
  });

  test('an existing empty directory is used; a non-empty one or a file is refused and left as it was', async () => {
    const empty = join(root, 'empty');
    mkdirSync(empty);
    await restoreDataDir({ file, dataDir: empty, nodeId: 1, peers: PEERS, clusterToken: 't' });
    expect(readdirSync(empty).length).toBeGreaterThan(0);

    const busy = join(root, 'busy');
    mkdirSync(busy);
    writeFileSync(join(busy, 'keep-me'), 'data');
    await expect(restoreDataDir({ file, dataDir: busy, nodeId: 1, peers: PEERS, clusterToken: 't' })).rejects.toThrow(
      `--data-dir ${busy} is not empty: snapshot restore writes a new data dir (move the old one away, or choose another)`,
    );
    expect(readdirSync(busy)).toEqual(['keep-me']);
    await expect(restoreDataDir({ file, dataDir: file, nodeId: 1, peers: PEERS, clusterToken: 't' })).rejects.toThrow(`--data-dir ${file} is not a directory`);
  });

  test('a damaged or truncated file is refused before the data dir is touched', async () => {
    const image = readFileSync(file);
    const damaged = join(root, 'damaged.snap');
    const flipped = Buffer.from(image);
    flipped[image.length - 100] ^= 0x10;
    writeFileSync(damaged, flipped);
    const missingDir = join(root, 'never');
    await expect(restoreDataDir({ file: damaged, dataDir: missingDir, nodeId: 1, peers: PEERS, clusterToken: 't' })).rejects.toThrow(
      `snapshot file ${damaged} fails its SHA-256 check: the file is corrupted`,
    );
    expect(existsSync(missingDir)).toBe(false);
    writeFileSync(damaged, image.subarray(0, image.length - 33));
    const emptyDir = join(root, 'stays-empty');
    mkdirSync(emptyDir);
    await expect(restoreDataDir({ file: damaged, dataDir: emptyDir, nodeId: 1, peers: PEERS, clusterToken: 't' })).rejects.toThrow(/is truncated/);
    expect(readdirSync(emptyDir)).toEqual([]);
  });

  test('a file whose metadata disagrees with its state is refused, and what was written is removed', async () => {
    const db = await LevelDb.openMemory();
    const source = await KvStateMachine.open(db);
    await source.apply([putEntry(1, 'a', 'b')]);
    const snapshot = await source.snapshot();
    const lying = join(root, 'lying.snap');
    await writeSnapshotFile(lying, { index: 99, term: 1, config: undefined }, snapshot.chunks(1 << 20));
    snapshot.release();
    await db.close();
    const dataDir = join(root, 'lied-to');
    const error = await restoreDataDir({ file: lying, dataDir, nodeId: 1, peers: PEERS, clusterToken: 't' }).catch((err: unknown) => err);
    expect(error).toBeInstanceOf(CairnError);
    expect((error as Error).message).toBe(`snapshot file ${lying} says it is at index 99, but its state is at applied index 1`);
    expect(existsSync(dataDir)).toBe(false);
  });

  test('--id must be one of --peers', async () => {
    await expect(restoreDataDir({ file, dataDir: join(root, 'x'), nodeId: 4, peers: PEERS, clusterToken: 't' })).rejects.toThrow(/does not name this node \(--id 4\)/);
  });

  test('the command prints one line, and missing flags are usage errors', async () => {
    const lines: string[] = [];
    const dataDir = join(root, 'cli');
    expect(await runSnapshotRestore([file, '--data-dir', dataDir, '--id', '3', '--peers', PEERS_FLAG, '--cluster-token', 'tok'], (line) => lines.push(line))).toBe(0);
    expect(lines).toEqual([
      `restored ${file} (index 300, term 2) into ${dataDir} as node 3 of cluster ${deriveClusterId('tok', PEERS)} with voters ${PEERS_FLAG}; ` +
        'start it with cairn serve and the same --id, --data-dir, --peers and --cluster-token',
    ]);
    await expect(runSnapshotRestore([file, '--id', '3', '--peers', PEERS_FLAG], () => undefined)).rejects.toThrow(UsageError);
    await expect(runSnapshotRestore(['--data-dir', dataDir, '--id', '3', '--peers', PEERS_FLAG], () => undefined)).rejects.toThrow(/takes one FILE/);
    await expect(runSnapshotRestore([file, '--data-dir', dataDir, '--id', 'x', '--peers', PEERS_FLAG, '--cluster-token', 'tok'], () => undefined)).rejects.toThrow(/--id must be an integer/);
    await expect(runSnapshotRestore([file, '--data-dir', dataDir, '--id', '3', '--peers', PEERS_FLAG], () => undefined)).rejects.toThrow(/needs --cluster-token/);
    await expect(runSnapshotRestore([file, '--data-dir', dataDir, '--id', '3', '--peers', PEERS_FLAG, '--cluster-token', 'cairn'], () => undefined)).rejects.toThrow(/must name the new cluster/);
  });
});
