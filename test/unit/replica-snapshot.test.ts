import { InstallSnapshotResponse, Message, SnapshotHeader } from '../../gen/cairn/raft/v1/raft';
import { Replica } from '../../src/node/replica';
import { DEFAULT_RAFT_CONFIG, NodeId } from '../../src/raft/node';
import { SeededRandom } from '../../src/raft/random';
import { Db, LevelDb } from '../../src/storage/db';
import { LevelRaftStorage, SNAPSHOT_KEY } from '../../src/storage/raft-storage';
import { CounterFsm, textCodec } from '../support/counter-fsm';

type CounterReplica = Replica<string, string, CounterFsm>;

/** Three Replicas over memory-level, wired by an in-process network whose links can be cut. */
class Cluster {
  readonly replicas = new Map<NodeId, CounterReplica>();
  readonly dbs = new Map<NodeId, Db>();
  readonly cut = new Set<NodeId>();
  readonly transfers: { to: NodeId; response?: InstallSnapshotResponse }[] = [];
  readonly fatal: unknown[] = [];
  /** Makes the next transfers to a node break after their first chunk. */
  breakTransfersTo = new Set<NodeId>();

  async start(id: NodeId, options: { snapshotEntries: number; snapshotCatchupEntries: number }): Promise<CounterReplica> {
    const db = this.dbs.get(id) ?? (await LevelDb.openMemory());
    this.dbs.set(id, db);
    const replica = await Replica.open<string, string, CounterFsm>({
      config: { ...DEFAULT_RAFT_CONFIG, id, voters: [1, 2, 3], random: new SeededRandom(id * 31) },
      storage: new LevelRaftStorage(db),
      stateMachine: await CounterFsm.open(db),
      codec: textCodec,
      transport: {
        send: (messages) => this.deliver(messages),
        sendSnapshot: (to, header, chunks) => this.sendSnapshot(to, header, chunks),
      },
      onFatal: (err) => this.fatal.push(err),
      ...options,
    });
    this.replicas.set(id, replica);
    return replica;
  }

  private deliver(messages: readonly Message[]): void {
    for (const message of messages) {
      if (this.cut.has(message.to) || this.cut.has(message.fromId)) continue;
      setImmediate(() => this.replicas.get(message.to)?.receive(Message.fromPartial(message)));
    }
  }

  private async sendSnapshot(to: NodeId, header: SnapshotHeader, chunks: AsyncIterable<Uint8Array>): Promise<InstallSnapshotResponse> {
    const transfer: { to: NodeId; response?: InstallSnapshotResponse } = { to };
    this.transfers.push(transfer);
    if (this.cut.has(to)) throw new Error('unreachable');
    const broken = this.breakTransfersTo.has(to);
    async function* relay(): AsyncIterable<Uint8Array> {
      let sent = 0;
      for await (const chunk of chunks) {
        if (broken && sent++ >= 1) throw new Error('the stream broke');
        yield chunk;
      }
    }
    transfer.response = await this.replicas.get(to)!.receiveSnapshot(header, relay());
    return transfer.response;
  }

  async tickUntil(what: string, condition: () => boolean, maxTicks = 2000): Promise<void> {
    for (let i = 0; i < maxTicks; i++) {
      if (condition()) return;
      for (const replica of this.replicas.values()) replica.tick();
      await new Promise((resolve) => setImmediate(resolve));
      await new Promise((resolve) => setImmediate(resolve));
    }
    const describe = [...this.replicas.values()].map((r) => JSON.stringify({ ...r.node.status(), applied: r.stateMachine.appliedIndex() }));
    throw new Error(`not reached within ${maxTicks} ticks: ${what}; transfers ${JSON.stringify(this.transfers)}; ${describe.join('\n')}`);
  }

  leader(): CounterReplica | undefined {
    return [...this.replicas.values()].find((r) => r.node.role === 'leader' && !this.cut.has(r.id));
  }

  async stopAll(): Promise<void> {
    for (const replica of this.replicas.values()) await replica.stop();
  }
}

const COMPACTION = { snapshotEntries: 10, snapshotCatchupEntries: 3 };

async function clusterWithFollowerLeftBehind(): Promise<{ cluster: Cluster; leader: CounterReplica; behind: NodeId }> {
  const cluster = new Cluster();
  for (const id of [1, 2, 3]) await cluster.start(id, COMPACTION);
  await cluster.tickUntil('a leader', () => cluster.leader() !== undefined);
  const leader = cluster.leader()!;
  const behind = ([1, 2, 3] as NodeId[]).find((id) => id !== leader.id)!;
  cluster.cut.add(behind);
  for (let i = 0; i < 40; i++) await leader.propose(`item${i}`);
  await cluster.tickUntil('the leader compacts', () => leader.node.status().snapshotIndex >= 30);
  return { cluster, leader, behind };
}

describe('Replica snapshots', () => {
  test('automatic compaction bounds the in-memory log and is durable: meta/snapshot, log tail only', async () => {
    const { cluster, leader } = await clusterWithFollowerLeftBehind();
    const status = leader.node.status();
    expect(status.snapshotIndex).toBeGreaterThanOrEqual(30);
    expect(status.firstIndex).toBe(status.snapshotIndex - COMPACTION.snapshotCatchupEntries + 1);
    expect(leader.node.entryAt(status.firstIndex - 1)).toBeUndefined();
    const db = cluster.dbs.get(leader.id)!;
    expect(await db.get('meta', SNAPSHOT_KEY)).toBeDefined();
    const stored: number[] = [];
    for await (const [key] of db.entries('log')) stored.push(key.readUInt32BE(4));
    expect(stored[0]).toBe(status.firstIndex);
    expect(stored.length).toBeLessThanOrEqual(COMPACTION.snapshotEntries + COMPACTION.snapshotCatchupEntries);
    await cluster.stopAll();
    expect(cluster.fatal).toEqual([]);
  });

  test('a follower behind the compacted leader installs a snapshot, then takes entries; it survives a restart', async () => {
    const { cluster, leader, behind } = await clusterWithFollowerLeftBehind();
    cluster.cut.delete(behind);
    const follower = cluster.replicas.get(behind)!;
    await cluster.tickUntil('the follower installs a snapshot', () => follower.stateMachine.restores > 0);
    expect(cluster.transfers.filter((t) => t.to === behind).some((t) => t.response?.installed)).toBe(true);
    await leader.propose('after');
    await cluster.tickUntil('the follower applies the new entry', () => follower.stateMachine.items.at(-1) === 'after');
    expect(follower.stateMachine.items).toEqual(leader.stateMachine.items);
    expect(follower.node.status().snapshotIndex).toBeGreaterThanOrEqual(30);

    // Restarted, it reads its snapshot point and log tail back and holds the same state.
    await follower.stop();
    const restarted = await cluster.start(behind, COMPACTION);
    expect(restarted.stateMachine.items).toEqual(leader.stateMachine.items);
    expect(restarted.node.status().snapshotIndex).toBeGreaterThanOrEqual(30);
    await cluster.stopAll();
    expect(cluster.fatal).toEqual([]);
  });

  test('a transfer that breaks mid-stream installs nothing, and a later one succeeds', async () => {
    const { cluster, leader, behind } = await clusterWithFollowerLeftBehind();
    cluster.breakTransfersTo.add(behind);
    cluster.cut.delete(behind);
    const follower = cluster.replicas.get(behind)!;
    await cluster.tickUntil('a broken transfer', () => cluster.transfers.some((t) => t.to === behind && t.response && !t.response.installed));
    expect(follower.stateMachine.restores).toBe(0);
    expect(follower.stateMachine.appliedIndex()).toBeLessThan(leader.node.status().snapshotIndex);
    cluster.breakTransfersTo.delete(behind);
    await cluster.tickUntil('the follower installs a snapshot', () => follower.stateMachine.restores > 0);
    await cluster.tickUntil('the follower catches up', () => follower.stateMachine.appliedIndex() === leader.stateMachine.appliedIndex());
    expect(follower.stateMachine.items).toEqual(leader.stateMachine.items);
    await cluster.stopAll();
    expect(cluster.fatal).toEqual([]);
  });

  test('compactNow compacts at the applied index and reports the snapshot and first index', async () => {
    const cluster = new Cluster();
    for (const id of [1, 2, 3]) await cluster.start(id, { snapshotEntries: 1000, snapshotCatchupEntries: 2 });
    await cluster.tickUntil('a leader', () => cluster.leader() !== undefined);
    const leader = cluster.leader()!;
    for (let i = 0; i < 8; i++) await leader.propose(`x${i}`);
    const result = await leader.compactNow();
    expect(result).toEqual({ snapshotIndex: leader.stateMachine.appliedIndex(), firstIndex: leader.stateMachine.appliedIndex() - 1 });
    const saved = await leader.saveSnapshot();
    const chunks: string[] = [];
    for await (const chunk of saved.chunks) chunks.push(Buffer.from(chunk).toString());
    saved.release();
    expect(saved.meta.index).toBe(leader.stateMachine.appliedIndex());
    expect(chunks.join('')).toContain('x7');
    await cluster.stopAll();
    expect(cluster.fatal).toEqual([]);
  });
});

test('a backup taken while a compaction moves the snapshot point past it retries instead of halting the node', async () => {
  // Found by review: snapshotMetaAt(the view's index) asserted once compaction had passed it.
  const db = await LevelDb.openMemory();
  const fatal: unknown[] = [];
  const replica = await Replica.open<string, string, CounterFsm>({
    config: { ...DEFAULT_RAFT_CONFIG, id: 1, voters: [1], random: new SeededRandom(1) },
    storage: new LevelRaftStorage(db),
    stateMachine: await CounterFsm.open(db),
    codec: textCodec,
    transport: { send: () => undefined },
    onFatal: (err) => fatal.push(err),
    snapshotEntries: 1000,
    snapshotCatchupEntries: 2,
  });
  for (let i = 0; i < 50 && replica.node.role !== 'leader'; i++) {
    replica.tick();
    await new Promise((resolve) => setImmediate(resolve));
  }
  expect(replica.node.role).toBe('leader');
  for (let i = 0; i < 5; i++) await replica.propose(`a${i}`);
  const fsm = replica.stateMachine;
  const takeView = fsm.snapshot.bind(fsm);
  let openGate!: () => void;
  const gate = new Promise<void>((resolve) => (openGate = resolve));
  fsm.snapshot = async () => {
    const view = await takeView();
    await gate; // the first view waits here while the state moves on
    return view;
  };
  const saving = replica.saveSnapshot();
  for (let i = 0; i < 5; i++) await replica.propose(`b${i}`);
  const compacted = await replica.compactNow();
  openGate();
  const saved = await saving;
  saved.release();
  expect(fatal).toEqual([]);
  expect(saved.meta.index).toBeGreaterThanOrEqual(compacted.snapshotIndex);
});
