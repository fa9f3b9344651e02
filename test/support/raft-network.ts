import { Message } from '../../gen/cairn/raft/v1/raft';
import { DEFAULT_RAFT_CONFIG, NodeId, RaftConfig, RaftNode, Ready, RestoredState } from '../../src/raft/node';
import { SeededRandom } from '../../src/raft/random';

function freshState(): RestoredState {
  return { hardState: { term: 0, votedFor: 0 }, entries: [], appliedIndex: 0 };
}

/**
 * A scripted network for scenario tests: nodes persist instantly, messages wait in a
 * queue until the script delivers them, and links can be cut. Every Ready is kept so
 * tests can assert on what a node asked to persist and send.
 */
export class RaftNetwork {
  readonly nodes = new Map<NodeId, RaftNode>();
  readonly pending: Message[] = [];
  readonly readies = new Map<NodeId, Ready[]>();
  readonly applied = new Map<NodeId, number[]>();
  readonly grantedReads: { node: NodeId; readId: number; index: number }[] = [];
  readonly failedReads: { node: NodeId; readId: number }[] = [];
  /** Snapshot transfers leaders asked for, in order; a test delivers them with deliverSnapshot. */
  readonly snapshotRequests: { from: NodeId; to: NodeId }[] = [];
  /** Snapshots each node installed (persisted at once), by index. */
  readonly installed = new Map<NodeId, number[]>();
  private readonly cut = new Set<string>();
  /** The bootstrap voters every node starts with (a node added later is not among them). */
  readonly bootstrapVoters: readonly NodeId[];

  /** `restore` gives each node the state it resumes from (default: a fresh node). */
  constructor(
    count: number,
    private readonly overrides: Partial<RaftConfig> = {},
    restore: (id: NodeId) => RestoredState = freshState,
  ) {
    const voters = Array.from({ length: count }, (_, i) => i + 1);
    this.bootstrapVoters = voters;
    for (const id of voters) {
      const config: RaftConfig = { ...DEFAULT_RAFT_CONFIG, id, voters, random: new SeededRandom(id), ...overrides };
      this.nodes.set(id, new RaftNode(config, restore(id)));
      this.readies.set(id, []);
      this.applied.set(id, []);
      this.installed.set(id, []);
    }
  }

  /** A network of `count` voters in which `leader` was elected and everything has settled. */
  static ledBy(leader: NodeId, count = 3, overrides: Partial<RaftConfig> = {}): RaftNetwork {
    const net = new RaftNetwork(count, overrides);
    net.elect(leader);
    net.settle();
    const leaders = net.leaders();
    if (leaders.length !== 1 || leaders[0] !== leader) throw new Error(`node ${leader} was to lead; leaders: [${leaders}]`);
    return net;
  }

  /**
   * A brand-new node with empty storage that will join the running cluster: its
   * bootstrap voters are the cluster's, so it learns the config from the leader's log.
   */
  addNode(id: NodeId, overrides: Partial<RaftConfig> = {}): RaftNode {
    const config: RaftConfig = { ...DEFAULT_RAFT_CONFIG, id, voters: this.bootstrapVoters, random: new SeededRandom(id), ...this.overrides, ...overrides };
    const node = new RaftNode(config, freshState());
    this.nodes.set(id, node);
    this.readies.set(id, []);
    this.applied.set(id, []);
    return node;
  }

  node(id: NodeId): RaftNode {
    return this.nodes.get(id)!;
  }

  isolate(id: NodeId): void {
    for (const other of this.nodes.keys()) {
      if (other === id) continue;
      this.cut.add(`${id}>${other}`);
      this.cut.add(`${other}>${id}`);
    }
  }

  /** Drops every message from `from` to `to` (one direction only), those already queued too. */
  cutLink(from: NodeId, to: NodeId): void {
    this.cut.add(`${from}>${to}`);
    const kept = this.pending.filter((m) => m.fromId !== from || m.to !== to);
    this.pending.splice(0, this.pending.length, ...kept);
  }

  heal(): void {
    this.cut.clear();
  }

  /** Drains every node's Ready (persisting at once) and queues their messages. */
  flush(): void {
    for (const [id, node] of this.nodes) {
      while (node.hasReady()) {
        const ready = node.ready();
        this.readies.get(id)!.push(ready);
        if (ready.snapshot) {
          this.installed.get(id)!.push(ready.snapshot.index);
          node.onSnapshotPersisted(ready.snapshot.index);
        }
        for (const request of ready.snapshotsToSend) this.snapshotRequests.push({ from: id, ...request });
        const last = ready.entries[ready.entries.length - 1];
        if (last) node.onPersisted(last.index, last.term);
        this.applied.get(id)!.push(...ready.committed.map((e) => e.index));
        for (const grant of ready.reads) this.grantedReads.push({ node: id, ...grant });
        for (const readId of ready.failedReads) this.failedReads.push({ node: id, readId });
        for (const message of ready.messages) {
          if (!this.cut.has(`${message.fromId}>${message.to}`)) this.pending.push(message);
        }
      }
    }
  }

  /** Delivers queued messages (and the messages they cause) until the network is quiet. */
  settle(maxRounds = 1000): void {
    this.flush();
    for (let round = 0; this.pending.length > 0; round++) {
      if (round >= maxRounds) throw new Error('network did not settle');
      const batch = this.pending.splice(0);
      for (const message of batch) this.nodes.get(message.to)?.step(message); // no such node: an unreachable address
      this.flush();
    }
  }

  /** Delivers the messages queued now (not the ones they cause). */
  deliverOnce(): void {
    for (const message of this.pending.splice(0)) this.nodes.get(message.to)?.step(message);
    this.flush();
  }

  /**
   * Carries out a leader's snapshot transfer as a shell would: the snapshot of its state
   * at its applied index is offered to the follower's core (unless `lost`), and the
   * transfer's end is reported back to the leader.
   */
  deliverSnapshot(from: NodeId, to: NodeId, options: { lost?: boolean } = {}): void {
    const leader = this.node(from);
    const meta = leader.snapshotMetaAt(leader.status().appliedIndex);
    let installed = false;
    if (!options.lost && !this.cut.has(`${from}>${to}`)) {
      this.node(to).step({ fromId: from, to, term: leader.term, body: { $case: 'installSnapshot', value: { meta } } });
      installed = this.node(to).pendingSnapshotMeta()?.index === meta.index;
    }
    if (installed) leader.reportSnapshot(to, 'finished', meta.index);
    else leader.reportSnapshot(to, 'failed');
    this.flush();
  }

  tick(id: NodeId, times = 1): void {
    for (let i = 0; i < times; i++) this.node(id).tick();
  }

  /** Ticks one node until it campaigns, then lets the election finish. */
  elect(id: NodeId): void {
    for (let i = 0; i < 100 && this.node(id).role === 'follower'; i++) this.node(id).tick();
    this.settle();
  }

  /** Ticks the leader and lets the network settle, `rounds` times: heartbeats repair lost appends. */
  heartbeats(leader: NodeId, rounds: number = DEFAULT_RAFT_CONFIG.electionTimeoutTicks): void {
    for (let i = 0; i < rounds; i++) {
      this.tick(leader);
      this.settle();
    }
  }

  leaders(): NodeId[] {
    return [...this.nodes.values()].filter((n) => n.role === 'leader').map((n) => n.id);
  }
}
