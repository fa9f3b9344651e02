import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Command } from '../../gen/cairn/kv/v1/kv';
import { EntryType } from '../../gen/cairn/raft/v1/raft';
import { KvStateMachine } from '../../src/kv/state-machine';
import { LevelDb } from '../../src/storage/db';
import { writeSnapshotFile } from '../../src/storage/snapshot-file';
import { CAIRN_MAIN, ProcessCluster, waitFor } from '../support/process-cluster';

jest.setTimeout(120_000);

const execFileAsync = promisify(execFile);

/** Runs the built `cairn` command; resolves with its output and exit code, never rejects. */
async function cairn(args: string[]): Promise<{ stdout: string; stderr: string; code: number }> {
  try {
    const { stdout, stderr } = await execFileAsync(process.execPath, [CAIRN_MAIN, ...args], { timeout: 60_000, maxBuffer: 16 << 20 });
    return { stdout, stderr, code: 0 };
  } catch (err) {
    const e = err as { stdout: string; stderr: string; code: number };
    return { stdout: e.stdout, stderr: e.stderr, code: e.code };
  }
}

const KEY_COUNT = 2_000;
const keyOf = (i: number) => `restored/${String(i).padStart(5, '0')}`;
const valueOf = (i: number) => `value-${i}-${'v'.repeat(i % 50)}`;

/** A snapshot file of KEY_COUNT keys, written from a state machine in this process (no cluster needed). */
async function offlineSnapshotFile(path: string): Promise<number> {
  const db = await LevelDb.openMemory();
  try {
    const sm = await KvStateMachine.open(db);
    const entries = Array.from({ length: KEY_COUNT }, (_, i) => {
      const command: Command = {
        op: { $case: 'put', value: { key: Buffer.from(keyOf(i)), value: Buffer.from(valueOf(i)), prevKv: false, clientId: '', sequence: 0, lowestUnansweredSequence: 0 } },
        proposedAtUnixMs: Date.now(),
      };
      return { index: i + 1, term: 3, type: EntryType.ENTRY_TYPE_COMMAND, data: Buffer.from(Command.encode(command).finish()) };
    });
    for (let at = 0; at < entries.length; at += 500) await sm.apply(entries.slice(at, at + 500));
    const snapshot = await sm.snapshot();
    try {
      await writeSnapshotFile(path, { index: snapshot.index, term: 3, config: undefined }, snapshot.chunks(64 * 1024));
    } finally {
      snapshot.release();
    }
    return snapshot.index;
  } finally {
    await db.close();
  }
}

/** Restores `file` into every node's data dir of a prepared (not started) cluster, through the real command. */
async function restoreCluster(cluster: ProcessCluster, file: string, token: string): Promise<void> {
  for (const node of cluster.nodes) {
    const result = await cairn(['snapshot', 'restore', file, '--data-dir', node.dataDir, '--id', String(node.id), '--peers', cluster.peers, '--cluster-token', token]);
    expect(result).toMatchObject({ code: 0, stderr: '' });
    expect(result.stdout).toMatch(new RegExp(`^restored .* into ${node.dataDir} as node ${node.id} of cluster \\d+ with voters ${cluster.peers}; start it with cairn serve`));
  }
}

/** Every key, read linearizably through node `id` alone (one Range: well within the default limits). */
async function readAll(cluster: ProcessCluster, id: number): Promise<Map<string, string>> {
  const client = cluster.client([id], undefined, 5000);
  const response = await client.list(Buffer.from('restored/'), KEY_COUNT + 100);
  expect(response.more).toBe(false);
  return new Map(response.kvs.map((kv) => [kv.key.toString(), kv.value.toString()]));
}

function expectAllKeys(seen: Map<string, string>): void {
  expect(seen.size).toBe(KEY_COUNT);
  for (let i = 0; i < KEY_COUNT; i += 97) expect(seen.get(keyOf(i))).toBe(valueOf(i));
}

describe('cairn snapshot restore with the real command', () => {
  let root: string;
  let file: string;
  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), 'cairn-it-restore-'));
    file = join(root, 'backup.snap');
    await offlineSnapshotFile(file);
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  test('refuses a non-empty data dir and a damaged file with one line and exit 1, leaving both as they were', async () => {
    const busy = join(root, 'busy');
    mkdirSync(busy);
    writeFileSync(join(busy, 'CURRENT'), 'someone else');
    const refused = await cairn(['snapshot', 'restore', file, '--data-dir', busy, '--id', '1', '--peers', '1=127.0.0.1:1', '--cluster-token', 'restored']);
    expect(refused).toMatchObject({ code: 1, stdout: '' });
    expect(refused.stderr).toBe(`cairn: --data-dir ${busy} is not empty: snapshot restore writes a new data dir (move the old one away, or choose another)\n`);
    expect(readFileSync(join(busy, 'CURRENT'), 'utf8')).toBe('someone else');

    const damaged = join(root, 'damaged.snap');
    const image = readFileSync(file);
    image[Math.floor(image.length / 2)] ^= 0x08;
    writeFileSync(damaged, image);
    const corrupt = await cairn(['snapshot', 'restore', damaged, '--data-dir', join(root, 'fresh'), '--id', '1', '--peers', '1=127.0.0.1:1', '--cluster-token', 'restored']);
    expect(corrupt).toMatchObject({ code: 1, stdout: '' });
    expect(corrupt.stderr.trim().split('\n')).toHaveLength(1);
    expect(corrupt.stderr).toMatch(/^cairn: CORRUPTION: snapshot file .*damaged\.snap (fails its SHA-256 check|is truncated|names a record)/);

    const usage = await cairn(['snapshot', 'restore', file, '--id', '1']);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toContain('needs --data-dir');

    // Without a token of its own the new cluster could get the old one's id.
    const noToken = await cairn(['snapshot', 'restore', file, '--data-dir', join(root, 'fresh'), '--id', '1', '--peers', '1=127.0.0.1:1']);
    expect(noToken.code).toBe(2);
    expect(noToken.stderr).toContain('needs --cluster-token');
    const defaultToken = await cairn(['snapshot', 'restore', file, '--data-dir', join(root, 'fresh'), '--id', '1', '--peers', '1=127.0.0.1:1', '--cluster-token', 'cairn']);
    expect(defaultToken.code).toBe(2);
    expect(defaultToken.stderr).toContain('--cluster-token must name the new cluster');
  });

  test('three nodes restored from one file elect a leader, serve every key from every node, take writes and restart', async () => {
    const cluster = await ProcessCluster.prepare(3, ['--cluster-token', 'restored-it']);
    try {
      await restoreCluster(cluster, file, 'restored-it');
      for (const node of cluster.nodes) cluster.spawn(node);
      await cluster.waitForLeader();
      for (const node of cluster.nodes) expectAllKeys(await waitFor(`node ${node.id} serving the restored keys`, () => readAll(cluster, node.id)));
      const status = await cluster.status(1);
      expect(status.snapshotIndex).toBe(KEY_COUNT);
      await cluster.client().put(Buffer.from('after-restore'), Buffer.from('new'));
      expect(await cluster.kill(2, 'SIGTERM')).toBe(0);
      cluster.restart(2);
      await cluster.waitForLeader();
      const fromTwo = await waitFor('node 2 after its restart', async () => (await readAll(cluster, 2)).size === KEY_COUNT && (await cluster.client([2]).get(Buffer.from('after-restore'))).kv);
      expect(fromTwo.value.toString()).toBe('new');
    } finally {
      await cluster.stop();
    }
  });

  test('etcd-style backup and restore: cairn snapshot save from a live cluster, restore into a new one, every key there', async () => {
    const live = await ProcessCluster.start(3);
    const backup = join(root, 'live.snap');
    try {
      await live.waitForLeader();
      const client = live.client();
      for (let i = 0; i < 200; i++) await client.put(Buffer.from(keyOf(i)), Buffer.from(valueOf(i)));
      const saved = await cairn(['snapshot', 'save', backup, '--endpoints', live.node(1).clientAddr]);
      expect(saved).toMatchObject({ code: 0, stderr: '' });
      expect(saved.stdout).toMatch(new RegExp(`^saved ${backup} \\(index \\d+, term \\d+, \\d+ bytes\\) from ${live.node(1).clientAddr}\n$`));
    } finally {
      await live.stop();
    }
    const restored = await ProcessCluster.prepare(3, ['--cluster-token', 'from-backup']);
    try {
      await restoreCluster(restored, backup, 'from-backup');
      for (const node of restored.nodes) restored.spawn(node);
      await restored.waitForLeader();
      for (const node of restored.nodes) {
        const seen = await waitFor(`node ${node.id} serving the backed-up keys`, async () => ((await readAll(restored, node.id)).size === 200 ? readAll(restored, node.id) : undefined));
        for (let i = 0; i < 200; i += 13) expect(seen.get(keyOf(i))).toBe(valueOf(i));
      }
    } finally {
      await restored.stop();
    }
  });
});
