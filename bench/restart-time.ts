/**
 * Time to serving after a restart, with a large state (issue 8: "restart a node with 1M
 * keys and report the time to serving; goal: under 5 s").
 *
 *   npm run bench:restart -- [--keys N] [--value-bytes B]
 *
 * Builds a state of N keys in-process (KvStateMachine.apply, no Raft), writes it as a
 * snapshot file, seeds a 3-node loopback cluster from it with `cairn snapshot restore`,
 * then measures, for real `cairn serve` processes: the restored cluster's first
 * linearizable read, and a follower's and the leader's restart (SIGTERM, start again) to
 * their first linearizable read of the last key. Reports only; nothing here passes or
 * fails on time. Everything runs on 127.0.0.1 and stops by itself.
 */
import { execFile } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Command, Consistency, PutRequest } from '../gen/cairn/kv/v1/kv';
import { EntryType } from '../gen/cairn/raft/v1/raft';
import { KvStateMachine } from '../src/kv/state-machine';
import { LevelDb } from '../src/storage/db';
import { writeSnapshotFile } from '../src/storage/snapshot-file';
import { CAIRN_MAIN, ProcessCluster, waitFor } from '../test/support/process-cluster';

const run = promisify(execFile);
const APPLY_BATCH_ENTRIES = 1000;
const SERVING_DEADLINE_MS = 120_000;

function parseArgs(argv: string[]): { keys: number; valueBytes: number } {
  const args = { keys: 1_000_000, valueBytes: 100 };
  for (let i = 0; i < argv.length; i += 2) {
    const value = Number(argv[i + 1]);
    if (!Number.isSafeInteger(value) || value < 1) throw new Error(`${argv[i]} needs a positive integer`);
    if (argv[i] === '--keys') args.keys = value;
    else if (argv[i] === '--value-bytes') args.valueBytes = value;
    else throw new Error(`unknown flag ${argv[i]}`);
  }
  return args;
}

const keyOf = (i: number) => Buffer.from(`key-${String(i).padStart(8, '0')}`);

async function buildSnapshotFile(dir: string, file: string, keys: number, valueBytes: number, voters: number[]): Promise<void> {
  const db = await LevelDb.openDirectory(join(dir, 'seed'));
  const machine = await KvStateMachine.open(db);
  const value = Buffer.alloc(valueBytes, 'v');
  for (let first = 1; first <= keys; first += APPLY_BATCH_ENTRIES) {
    const entries = [];
    for (let index = first; index < first + APPLY_BATCH_ENTRIES && index <= keys; index++) {
      const command = Command.fromPartial({ op: { $case: 'put', value: PutRequest.fromPartial({ key: keyOf(index), value }) }, proposedAtUnixMs: 1 });
      entries.push({ index, term: 1, type: EntryType.ENTRY_TYPE_COMMAND, data: Buffer.from(Command.encode(command).finish()) });
    }
    await machine.apply(entries);
  }
  const snapshot = await machine.snapshot();
  try {
    const config = { voters: voters.map((id) => ({ id, peerAddr: '', clientAddr: '' })), learners: [] };
    await writeSnapshotFile(file, { index: snapshot.index, term: 1, config }, snapshot.chunks(1 << 20));
  } finally {
    snapshot.release();
    await db.close();
  }
}

async function timeToServing(cluster: ProcessCluster, id: number, lastKey: Buffer): Promise<number> {
  const started = Date.now();
  const client = cluster.client([id], Consistency.CONSISTENCY_LINEARIZABLE, 1000);
  try {
    await waitFor(`node ${id} serves a linearizable read`, async () => (await client.get(lastKey).catch(() => undefined))?.kv !== undefined, SERVING_DEADLINE_MS);
    return Date.now() - started;
  } finally {
    client.close();
  }
}

function rssMiB(cluster: ProcessCluster, id: number): number {
  const pid = cluster.node(id).process?.pid;
  const kib = pid ? Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]) : NaN;
  return Math.round(kib / 1024);
}

async function main(): Promise<void> {
  const { keys, valueBytes } = parseArgs(process.argv.slice(2));
  const cluster = await ProcessCluster.prepare(3);
  const file = join(cluster.root, 'state.snap');
  const lastKey = keyOf(keys);
  try {
    let t = Date.now();
    await buildSnapshotFile(cluster.root, file, keys, valueBytes, [1, 2, 3]);
    console.log(`built ${keys} keys of ${valueBytes} B and their snapshot file in ${Date.now() - t} ms`);
    rmSync(join(cluster.root, 'seed'), { recursive: true, force: true });
    t = Date.now();
    for (const node of cluster.nodes) {
      await run(process.execPath, [CAIRN_MAIN, 'snapshot', 'restore', file, '--data-dir', node.dataDir, '--id', String(node.id), '--peers', cluster.peers, '--cluster-token', 'bench-restart']);
    }
    console.log(`restored 3 data dirs in ${Date.now() - t} ms`);
    for (const node of cluster.nodes) cluster.spawn(node);
    console.log(`restored cluster: first linearizable read after ${await timeToServing(cluster, 1, lastKey)} ms`);
    const leader = await cluster.waitForLeader();
    const follower = [1, 2, 3].find((id) => id !== leader)!;
    for (const [role, id] of [['follower', follower], ['leader', leader]] as const) {
      await cluster.kill(id, 'SIGTERM');
      cluster.restart(id);
      const servingMs = await timeToServing(cluster, id, lastKey);
      console.log(`restart of the ${role} (node ${id}) with ${keys} keys: serving after ${servingMs} ms, RSS ${rssMiB(cluster, id)} MiB`);
      await cluster.waitForLeader();
    }
  } finally {
    await cluster.stop();
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
