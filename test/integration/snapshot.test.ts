import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Consistency } from '../../gen/cairn/kv/v1/kv';
import { CairnClient } from '../../src/cli/client';
import { LevelDb } from '../../src/storage/db';
import { verifySnapshotFile } from '../../src/storage/snapshot-file';
import { CAIRN_MAIN, freePort, ProcessCluster, waitFor } from '../support/process-cluster';

const run = promisify(execFile);

jest.setTimeout(300_000);

const SNAPSHOT_ENTRIES = 500;
const CATCHUP_ENTRIES = 100;
const COMPACTION_FLAGS = ['--snapshot-entries', String(SNAPSHOT_ENTRIES), '--snapshot-catchup-entries', String(CATCHUP_ENTRIES)];
/** Writes in flight at once: the loops below are bounded by count, this only sets their pace. */
const WRITERS = 16;

const keyOf = (i: number) => `k-${String(i).padStart(6, '0')}`;

/** Writes keys [from, to) with WRITERS lanes; every one must be acknowledged. */
async function writeKeys(client: CairnClient, from: number, to: number): Promise<void> {
  let next = from;
  await Promise.all(
    Array.from({ length: WRITERS }, async () => {
      for (let i = next++; i < to; i = next++) {
        const key = keyOf(i);
        await client.put(Buffer.from(key), Buffer.from(`v${i}`));
      }
    }),
  );
}

/** Every key in [0, count) read back from the endpoint(s) of `client`, 100 per linearizable range. */
async function readAll(client: CairnClient, count: number): Promise<Map<string, string>> {
  const found = new Map<string, string>();
  for (let block = 0; block * 100 < count; block++) {
    const prefix = `k-${String(block).padStart(4, '0')}`;
    const response = await client.list(Buffer.from(prefix), 1000);
    for (const kv of response.kvs) found.set(kv.key.toString(), kv.value.toString());
  }
  return found;
}

async function logEntryCount(dataDir: string): Promise<number> {
  const db = await LevelDb.openDirectory(dataDir);
  try {
    let count = 0;
    for await (const _ of db.entries('log')) count++;
    return count;
  } finally {
    await db.close();
  }
}

describe('snapshots and compaction with real processes', () => {
  let cluster: ProcessCluster;
  afterEach(() => cluster?.stop());

  test('every node compacts; a follower left behind catches up through InstallSnapshot and serves every key', async () => {
    cluster = await ProcessCluster.start(3, COMPACTION_FLAGS);
    const leader = await cluster.waitForLeader();
    await writeKeys(cluster.client([leader], Consistency.CONSISTENCY_LINEARIZABLE, 5000), 0, 5000);
    for (const id of [1, 2, 3]) {
      const status = await waitFor(`node ${id} compacted`, async () => {
        const s = await cluster.status(id);
        return Number(s.firstIndex) > 1 && Number(s.appliedIndex) >= 5000 ? s : undefined;
      });
      expect(Number(status.snapshotIndex)).toBeGreaterThan(SNAPSHOT_ENTRIES);
      expect(Number(status.lastIndex) - Number(status.firstIndex) + 1).toBeLessThanOrEqual(SNAPSHOT_ENTRIES + CATCHUP_ENTRIES);
    }

    const follower = [1, 2, 3].find((id) => id !== leader)!;
    await cluster.kill(follower, 'SIGTERM');
    const stored = await logEntryCount(cluster.node(follower).dataDir);
    expect(stored).toBeGreaterThan(0);
    expect(stored).toBeLessThanOrEqual(SNAPSHOT_ENTRIES + CATCHUP_ENTRIES);

    const survivors = [1, 2, 3].filter((id) => id !== follower);
    await writeKeys(cluster.client(survivors, Consistency.CONSISTENCY_LINEARIZABLE, 5000), 5000, 7000);
    const leaderStatus = await waitFor('the leader compacted past the stopped follower', async () => {
      const s = await cluster.status(await cluster.waitForLeader(survivors));
      return Number(s.firstIndex) > 5000 + 2 ? s : undefined;
    });
    cluster.node(follower).logs.length = 0;
    cluster.restart(follower);
    const caughtUp = await waitFor(
      'the restarted follower installs a snapshot and catches up',
      async () => {
        const s = await cluster.status(follower);
        return Number(s.snapshotIndex) >= Number(leaderStatus.firstIndex) - 1 && Number(s.appliedIndex) >= Number(leaderStatus.appliedIndex) ? s : undefined;
      },
      60_000,
    );
    expect(Number(caughtUp.snapshotIndex)).toBeGreaterThan(5000);
    expect(cluster.node(follower).logs.some((line) => line.includes('snapshot received whole'))).toBe(true);

    const found = await readAll(cluster.client([follower], Consistency.CONSISTENCY_LINEARIZABLE, 5000), 7000);
    expect(found.size).toBe(7000);
    for (let i = 0; i < 7000; i++) expect(found.get(keyOf(i))).toBe(`v${i}`);
  });

  test('cairn snapshot compacts on demand; cairn snapshot save writes a checked backup that seeds a new cluster with every key', async () => {
    cluster = await ProcessCluster.start(3, ['--snapshot-entries', '100000', '--snapshot-catchup-entries', '10']);
    const leader = await cluster.waitForLeader();
    await writeKeys(cluster.client([leader], Consistency.CONSISTENCY_LINEARIZABLE, 5000), 0, 300);
    const endpoints = cluster.nodes.map((n) => n.clientAddr).join(',');
    await waitFor('every node applied the writes', async () => {
      const statuses = await Promise.all([1, 2, 3].map((id) => cluster.status(id)));
      return statuses.every((s) => Number(s.appliedIndex) >= 300);
    });
    const compacted = await run(process.execPath, [CAIRN_MAIN, 'snapshot', '--endpoints', endpoints]);
    const lines = compacted.stdout.trim().split('\n');
    expect(lines).toHaveLength(3);
    for (const line of lines) expect(line).toMatch(/^127\.0\.0\.1:\d+\s+snapshot_index \d{3,} first_index \d{3,}$/);
    for (const id of [1, 2, 3]) expect(Number((await cluster.status(id)).firstIndex)).toBeGreaterThan(250);

    const file = join(cluster.root, 'backup.snap');
    const saved = await run(process.execPath, [CAIRN_MAIN, 'snapshot', 'save', file, '--endpoints', cluster.node(leader).clientAddr]);
    expect(saved.stdout).toMatch(/^saved .*backup\.snap \(index \d+, term \d+, \d+ bytes\) from 127\.0\.0\.1:\d+$/m);
    const summary = await verifySnapshotFile(file);
    expect(summary.meta.index).toBeGreaterThanOrEqual(300);

    // The backup seeds a new one-node cluster that serves every key.
    const dataDir = join(cluster.root, 'restored');
    const clientAddr = `127.0.0.1:${await freePort()}`;
    const peerAddr = `127.0.0.1:${await freePort()}`;
    await run(process.execPath, [CAIRN_MAIN, 'snapshot', 'restore', file, '--data-dir', dataDir, '--id', '1', '--peers', `1=${peerAddr}`, '--cluster-token', 'restored-backup']);
    const restored = await ProcessCluster.prepare(1, [], join(cluster.root, 'second'));
    Object.assign(restored.node(1), { dataDir, clientAddr, peerAddr });
    restored.spawn(restored.node(1));
    try {
      await restored.waitForLeader([1]);
      const found = await readAll(restored.client([1], Consistency.CONSISTENCY_LINEARIZABLE, 5000), 300);
      expect(found.size).toBe(300);
      for (let i = 0; i < 300; i++) expect(found.get(keyOf(i))).toBe(`v${i}`);
    } finally {
      await restored.stop({ keepData: true });
    }
  });

  test('measure: heap and time to serving of a node restarted after 50,000 keys with compaction (reported, not asserted)', async () => {
    cluster = await ProcessCluster.start(3, COMPACTION_FLAGS);
    const leader = await cluster.waitForLeader();
    const started = Date.now();
    await writeKeys(cluster.client([leader], Consistency.CONSISTENCY_LINEARIZABLE, 5000), 0, 50_000);
    const writeMs = Date.now() - started;
    const follower = [1, 2, 3].find((id) => id !== leader)!;
    await waitFor('the follower applied everything', async () => Number((await cluster.status(follower)).appliedIndex) >= 50_000, 60_000);
    await cluster.kill(follower, 'SIGTERM');
    const storedEntries = await logEntryCount(cluster.node(follower).dataDir);
    const restartedAt = Date.now();
    cluster.restart(follower);
    const reader = cluster.client([follower], Consistency.CONSISTENCY_LINEARIZABLE, 1000);
    await waitFor('the restarted node serves a linearizable read', async () => (await reader.get(Buffer.from(keyOf(49_999)))).kv?.value.toString() === 'v49999', 60_000);
    const servingMs = Date.now() - restartedAt;
    const pid = cluster.node(follower).process!.pid!;
    const rssKiB = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? NaN);
    const status = await cluster.status(follower);
    console.log(
      `snapshot measurement: 50,000 keys written in ${writeMs} ms; restarted follower serving after ${servingMs} ms, ` +
        `RSS ${Math.round(rssKiB / 1024)} MiB, log entries on disk ${storedEntries}, snapshot_index ${status.snapshotIndex}, first_index ${status.firstIndex}`,
    );
    expect(storedEntries).toBeLessThanOrEqual(SNAPSHOT_ENTRIES + CATCHUP_ENTRIES);
  });
});
