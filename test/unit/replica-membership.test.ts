import { Command } from '../../gen/cairn/kv/v1/kv';
import { ClusterConfig, ConfigChangeType, InstallSnapshotResponse, Message, SnapshotHeader } from '../../gen/cairn/raft/v1/raft';
import { ErrorCode } from '../../src/errors';
import { KvStateMachine } from '../../src/kv/state-machine';
import { KvReplica, openKvReplica } from '../../src/kv/kv-replica';
import { DEFAULT_RAFT_CONFIG, NodeId } from '../../src/raft/node';
import { SeededRandom } from '../../src/raft/random';
import { Db, LevelDb } from '../../src/storage/db';
import { LevelRaftStorage } from '../../src/storage/raft-storage';

const ELECTION_TICKS = DEFAULT_RAFT_CONFIG.electionTimeoutTicks;
const member = (id: NodeId, peerAddr = '') => ({ id, peerAddr, clientAddr: '' });
const put = (key: string): Command => ({
  op: { $case: 'put', value: { key: Buffer.from(key), value: Buffer.from('v'), prevKv: false, clientId: '', sequence: 0, lowestUnansweredSequence: 0 } },
  proposedAtUnixMs: 0,
});
const voterIds = (config: ClusterConfig) => config.voters.map((m) => m.id);
const learnerIds = (config: ClusterConfig) => config.learners.map((m) => m.id);

/**
 * Replicas on memory-level wired by an in-process network: messages are delivered on the
 * next turn of the event loop unless their link is cut. The test drives the clock.
 */
class ReplicaCluster {
  readonly replicas = new Map<NodeId, KvReplica>();
  readonly configsSeen = new Map<NodeId, ClusterConfig[]>();
  readonly cut = new Set<NodeId>();
  private readonly dbs: Db[] = [];

  readonly installs: { to: NodeId; installed: boolean }[] = [];

  async start(ids: NodeId[], voters: NodeId[], compaction: { snapshotEntries?: number; snapshotCatchupEntries?: number } = {}): Promise<void> {
    for (const id of ids) {
      const db = await LevelDb.openMemory();
      this.dbs.push(db);
      this.configsSeen.set(id, []);
      const replica = await openKvReplica({
        config: { ...DEFAULT_RAFT_CONFIG, id, voters, random: new SeededRandom(id) },
        storage: new LevelRaftStorage(db),
        stateMachine: await KvStateMachine.open(db),
        transport: { send: (messages) => this.deliver(messages), sendSnapshot: (to, header, chunks) => this.sendSnapshot(to, header, chunks) },
        ...compaction,
        onFatal: (err) => {
          throw err;
        },
        onConfigChange: (config) => this.configsSeen.get(id)!.push(config),
      });
      this.replicas.set(id, replica);
    }
  }

  get(id: NodeId): KvReplica {
    return this.replicas.get(id)!;
  }

  private deliver(messages: readonly Message[]): void {
    for (const message of messages) {
      if (this.cut.has(message.to) || this.cut.has(message.fromId)) continue;
      setImmediate(() => this.replicas.get(message.to)?.receive(message));
    }
  }

  private async sendSnapshot(to: NodeId, header: SnapshotHeader, chunks: AsyncIterable<Uint8Array>): Promise<InstallSnapshotResponse> {
    if (this.cut.has(to) || this.cut.has(header.fromId)) throw new Error('unreachable');
    const response = await this.replicas.get(to)!.receiveSnapshot(header, chunks);
    this.installs.push({ to, installed: response.installed });
    return response;
  }

  /** Ticks every replica (ids in `only`, when given) until `done`, at most `maxTicks` times. */
  async tickUntil(done: () => boolean, maxTicks = 20 * ELECTION_TICKS, only?: NodeId[]): Promise<void> {
    for (let i = 0; i < maxTicks && !done(); i++) {
      for (const [id, replica] of this.replicas) if (!only || only.includes(id)) replica.tick();
      for (let turn = 0; turn < 5; turn++) await new Promise((resolve) => setImmediate(resolve));
    }
    if (!done()) throw new Error(`condition not reached within ${maxTicks} ticks`);
  }

  leader(): KvReplica | undefined {
    return [...this.replicas.values()].find((r) => r.node.role === 'leader');
  }

  async stop(): Promise<void> {
    for (const replica of this.replicas.values()) await replica.stop();
    for (const db of this.dbs) await db.close();
  }
}

/** Settles `promise` while the cluster's clock runs. */
async function whileTicking<T>(cluster: ReplicaCluster, promise: Promise<T>, only?: NodeId[]): Promise<T> {
  let settled = false;
  const watched = promise.finally(() => {
    settled = true;
  });
  watched.catch(() => undefined);
  await cluster.tickUntil(() => settled, 20 * ELECTION_TICKS, only);
  return watched;
}

describe('Replica: membership', () => {
  let cluster: ReplicaCluster;
  afterEach(() => cluster.stop());

  test('a learner is added and promoted; the promise resolves with the config once applied, and onConfigChange follows', async () => {
    cluster = new ReplicaCluster();
    await cluster.start([1, 2, 3], [1, 2, 3]);
    expect(cluster.configsSeen.get(1)!.map(voterIds)).toEqual([[1, 2, 3]]); // told at open
    await cluster.tickUntil(() => cluster.leader() !== undefined && cluster.leader()!.node.status().commitIndex >= 1);
    const leader = cluster.leader()!;
    await cluster.start([4], [1, 2, 3]);

    const added = await whileTicking(cluster, leader.proposeConfigChange({ type: ConfigChangeType.CONFIG_CHANGE_TYPE_ADD_LEARNER, member: member(4, 'n4:1') }));
    expect(learnerIds(added)).toEqual([4]);
    expect(leader.stateMachine.appliedIndex()).toBeGreaterThanOrEqual(2);
    await cluster.tickUntil(() => cluster.get(4).node.status().lastIndex === leader.node.status().lastIndex);

    const promoted = await whileTicking(cluster, leader.proposeConfigChange({ type: ConfigChangeType.CONFIG_CHANGE_TYPE_PROMOTE, member: member(4) }));
    expect(voterIds(promoted)).toEqual([1, 2, 3, 4]);
    await cluster.tickUntil(() => voterIds(cluster.get(4).clusterConfig()).length === 4);
    expect(cluster.configsSeen.get(4)!.map((c) => [voterIds(c), learnerIds(c)])).toEqual([
      [[1, 2, 3], []],
      [[1, 2, 3], [4]],
      [[1, 2, 3, 4], []],
    ]);
  });

  test('refusals carry their error codes', async () => {
    cluster = new ReplicaCluster();
    await cluster.start([1, 2, 3], [1, 2, 3]);
    await cluster.tickUntil(() => cluster.leader() !== undefined && cluster.leader()!.node.status().commitIndex >= 1);
    const leader = cluster.leader()!;
    const follower = [...cluster.replicas.values()].find((r) => r !== leader)!;
    const change = (type: ConfigChangeType, id: NodeId, peerAddr = 'n:1') => ({ type, member: member(id, peerAddr) });
    await expect(follower.proposeConfigChange(change(ConfigChangeType.CONFIG_CHANGE_TYPE_ADD_LEARNER, 7))).rejects.toMatchObject({ code: ErrorCode.NOT_LEADER });
    await expect(leader.proposeConfigChange(change(ConfigChangeType.CONFIG_CHANGE_TYPE_ADD_LEARNER, 2))).rejects.toMatchObject({ code: ErrorCode.MEMBER_EXISTS });
    await expect(leader.proposeConfigChange(change(ConfigChangeType.CONFIG_CHANGE_TYPE_REMOVE, 9))).rejects.toMatchObject({ code: ErrorCode.MEMBER_NOT_FOUND });
    await expect(leader.proposeConfigChange(change(ConfigChangeType.CONFIG_CHANGE_TYPE_ADD_LEARNER, 7, ''))).rejects.toMatchObject({ code: ErrorCode.INVALID_ARGUMENT });
    // With the followers cut off the change cannot commit: it stays pending, and so does the caller.
    for (const id of cluster.replicas.keys()) if (id !== leader.id) cluster.cut.add(id);
    let settled = false;
    const pending = leader.proposeConfigChange(change(ConfigChangeType.CONFIG_CHANGE_TYPE_ADD_LEARNER, 7));
    void pending.finally(() => (settled = true));
    await expect(leader.proposeConfigChange(change(ConfigChangeType.CONFIG_CHANGE_TYPE_ADD_LEARNER, 8))).rejects.toMatchObject({ code: ErrorCode.CONFIG_CHANGE_PENDING });
    await cluster.tickUntil(() => false, ELECTION_TICKS / 2, [leader.id]).catch(() => undefined);
    expect(settled).toBe(false);
    cluster.cut.clear();
    await expect(whileTicking(cluster, pending)).resolves.toMatchObject({ learners: [member(7, 'n:1')] });
    await expect(leader.proposeConfigChange(change(ConfigChangeType.CONFIG_CHANGE_TYPE_PROMOTE, 7))).rejects.toMatchObject({ code: ErrorCode.LEARNER_NOT_CAUGHT_UP });
  });
});

describe('Replica: a snapshot covers a pending change', () => {
  let cluster: ReplicaCluster;
  afterEach(() => cluster.stop());

  test('a deposed leader whose change a snapshot replaced rejects its caller with OUTCOME_UNKNOWN', async () => {
    cluster = new ReplicaCluster();
    await cluster.start([1, 2, 3], [1, 2, 3], { snapshotEntries: 5, snapshotCatchupEntries: 0 });
    await cluster.tickUntil(() => cluster.leader() !== undefined && cluster.leader()!.node.status().commitIndex >= 1);
    const old = cluster.leader()!;
    cluster.cut.add(old.id);
    const change = old.proposeConfigChange({ type: ConfigChangeType.CONFIG_CHANGE_TYPE_ADD_LEARNER, member: member(9, 'n9:1') });
    change.catch(() => undefined);
    const others = [...cluster.replicas.keys()].filter((id) => id !== old.id);
    await cluster.tickUntil(() => others.some((id) => cluster.get(id).node.role === 'leader'), 20 * ELECTION_TICKS, others);
    const next = others.map((id) => cluster.get(id)).find((r) => r.node.role === 'leader')!;
    for (let i = 0; i < 12; i++) await whileTicking(cluster, next.propose(put(`k${i}`)), others);
    expect(next.node.status().snapshotIndex).toBeGreaterThan(old.node.status().lastIndex);
    cluster.cut.clear();
    await expect(whileTicking(cluster, change)).rejects.toMatchObject({ code: ErrorCode.OUTCOME_UNKNOWN });
    expect(cluster.installs).toContainEqual({ to: old.id, installed: true });
  });
});

describe('Replica: leadership transfer', () => {
  let cluster: ReplicaCluster;
  afterEach(() => cluster.stop());

  test('resolves with the new leader; writes are refused with LEADER_TRANSFERRING meanwhile', async () => {
    cluster = new ReplicaCluster();
    await cluster.start([1, 2, 3], [1, 2, 3]);
    await cluster.tickUntil(() => cluster.leader() !== undefined && cluster.leader()!.node.status().commitIndex >= 1);
    const leader = cluster.leader()!;
    const target = [...cluster.replicas.keys()].find((id) => id !== leader.id)!;
    const transfer = leader.transferLeadership(target);
    await expect(leader.propose(put('k'))).rejects.toMatchObject({ code: ErrorCode.LEADER_TRANSFERRING });
    await expect(whileTicking(cluster, transfer)).resolves.toBe(target);
    expect(cluster.get(target).node.role).toBe('leader');
  });

  test('rejects TRANSFER_FAILED when the target cannot win, and writes resume', async () => {
    cluster = new ReplicaCluster();
    await cluster.start([1, 2, 3], [1, 2, 3]);
    await cluster.tickUntil(() => cluster.leader() !== undefined && cluster.leader()!.node.status().commitIndex >= 1);
    const leader = cluster.leader()!;
    const target = [...cluster.replicas.keys()].find((id) => id !== leader.id)!;
    cluster.cut.add(target);
    const others = [...cluster.replicas.keys()].filter((id) => id !== target);
    await expect(whileTicking(cluster, leader.transferLeadership(target), others)).rejects.toMatchObject({ code: ErrorCode.TRANSFER_FAILED, message: expect.stringMatching(/did not win an election/) });
    expect(leader.node.role).toBe('leader');
    await expect(whileTicking(cluster, leader.propose(put('k')), others)).resolves.toMatchObject({ revision: 1 });
  });

  test('NOT_LEADER on a follower, INVALID_ARGUMENT for a target that is not a voter', async () => {
    cluster = new ReplicaCluster();
    await cluster.start([1, 2, 3], [1, 2, 3]);
    await cluster.tickUntil(() => cluster.leader() !== undefined);
    const leader = cluster.leader()!;
    const follower = [...cluster.replicas.values()].find((r) => r !== leader)!;
    await expect(follower.transferLeadership()).rejects.toMatchObject({ code: ErrorCode.NOT_LEADER });
    await expect(leader.transferLeadership(9)).rejects.toMatchObject({ code: ErrorCode.INVALID_ARGUMENT });
  });
});
