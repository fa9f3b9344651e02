import { ClusterConfig, ConfigChange, InstallSnapshotResponse, Message, SnapshotHeader, SnapshotMeta } from '../../gen/cairn/raft/v1/raft';
import { assert, isInvariantViolation } from '../assert';
import { CairnError, ErrorCode } from '../errors';
import { ConfigProposeResult, NO_NODE, NodeId, RaftConfig, RaftNode, Ready, sendableBeforePersist } from '../raft/node';
import { RaftStorage } from '../storage/raft-storage';
import { ApplyOutcome, Fsm, FsmRestore, isSnapshotting, ProposalCodec } from './fsm';

/** Carries messages to peers. Delivery is best effort: Raft tolerates loss. */
export interface Transport {
  send(messages: readonly Message[]): void;
  /**
   * Streams a snapshot to one follower on its own channel (never the Raft stream), and
   * resolves with the follower's answer; rejects when the transfer breaks. The transport
   * fills in the header's cluster id.
   */
  sendSnapshot?(to: NodeId, header: SnapshotHeader, chunks: AsyncIterable<Uint8Array>): Promise<InstallSnapshotResponse>;
}

/** The largest chunk of an InstallSnapshot stream: 1 MiB of encoded SnapshotBatch, well under gRPC's 4 MiB message limit. */
export const MAX_SNAPSHOT_CHUNK_BYTES = 1 << 20;
/**
 * How far the state machine may fall behind the commit index (the apply path runs apart
 * from the persist path, so nothing else holds it back): beyond either bound a leader
 * refuses proposals as OVERLOADED, and every node stops taking Readies (so it stops
 * acknowledging entries) until its applies catch up. The unapplied entries stay in memory
 * (compaction stops at the applied index): these bound that too.
 */
export const MAX_APPLY_LAG_ENTRIES = 10_000;
export const MAX_APPLY_LAG_BYTES = 64 << 20;

/** Compact once this many applied entries follow the snapshot point (--snapshot-entries). */
export const DEFAULT_SNAPSHOT_ENTRIES = 10_000;
/** Entries kept before the snapshot point at compaction, for slow followers (--snapshot-catchup-entries). */
export const DEFAULT_SNAPSHOT_CATCHUP_ENTRIES = 5_000;

/** When and how much the Replica compacts. */
export interface CompactionOptions {
  /** Compact once applied - snapshotIndex reaches this many entries. */
  snapshotEntries: number;
  /** Entries kept before the snapshot point. */
  snapshotCatchupEntries: number;
  /** Bytes of one chunk of an outgoing snapshot (at most MAX_SNAPSHOT_CHUNK_BYTES). */
  snapshotChunkBytes: number;
}

/** Calls `start` later, once (the server: on the next turn of the event loop; the simulator: as an event of the current instant). */
export type Deferral = (start: () => void) => void;

/** One of the Replica's paths: one task at a time, each after the one before. */
interface TaskPath {
  readonly name: string;
  /** A task is queued or running. */
  busy: boolean;
  /** Settles when every task run so far has ended. */
  idle: Promise<void>;
}

/** How far applies may fall behind commits (MAX_APPLY_LAG_ENTRIES, MAX_APPLY_LAG_BYTES). */
interface ApplyLagBounds {
  entries: number;
  bytes: number;
}

/** A snapshot received whole, offered to the core, waiting for its Ready to install it. */
interface PendingInstall extends Settle<void> {
  index: number;
  restore: FsmRestore;
}

interface Settle<T> {
  resolve(value: T): void;
  reject(err: Error): void;
}

interface PendingProposal<R> extends Settle<R> {
  term: number;
}

type PendingRead = Settle<number>;

interface AppliedWaiter extends Settle<void> {
  index: number;
}

interface PendingConfigChange extends Settle<ClusterConfig> {
  term: number;
  config: ClusterConfig;
}

/** A leadership transfer this node started, waiting to see another leader of a later term. */
interface PendingTransfer extends Settle<NodeId> {
  term: number;
  target: NodeId;
  ticksWaited: number;
}

/** How many callers wait in each of the Replica's maps: for tests and metrics. */
export interface PendingCounts {
  proposals: number;
  reads: number;
  appliedWaiters: number;
}

/**
 * The shell around one RaftNode: it carries out what the core decides. It is the
 * same code in production (LevelDB, gRPC, a timer) and in the simulator (memory-level
 * that forgets unsynced writes, a simulated network and clock).
 *
 * Two paths carry out the core's work. The persist path (drain) takes one Ready at a
 * time: a leader's appends go out at once (sendableBeforePersist), then one synced
 * write, then the other messages. Inputs that arrive while a batch is being persisted
 * pile up in the core and go out together in the next batch: that is the group commit.
 * Both paths start through `defer` when one is given: the server defers them by one turn
 * of the event loop (setImmediate), so that the proposals and AppendRequests read from the
 * sockets in one turn go out in one Ready, and the commits learned from several
 * acknowledgements in one turn are applied as one batch, instead of the first alone.
 * The apply path takes the committed entries that are durable here straight from the
 * core (takeCommitted, never through a Ready, so a commit learned during an fsync does
 * not wait for it) and applies them one batch at a time; everything committed while a
 * batch is applied goes in the next one. Compactions run on a third path beside it: their
 * flush to disk (100-150 ms with a full memtable) no longer holds up the next applies.
 *
 * It is generic over the state machine: `C` is what callers propose (encoded by the
 * ProposalCodec), `R` what they get back, `F` the state machine (an Fsm<R>).
 */
export class Replica<C, R, F extends Fsm<R> = Fsm<R>> {
  private readonly proposals = new Map<number, PendingProposal<R>>();
  private readonly reads = new Map<number, PendingRead>();
  /** Callers waiting for the state machine to reach an index. */
  private appliedWaiters: AppliedWaiter[] = [];
  /** Config change proposals by log index, resolved once their entry is applied here. */
  private readonly configChanges = new Map<number, PendingConfigChange>();
  private transfers: PendingTransfer[] = [];
  /** The config onConfigChange was last told about. */
  private announcedConfig: ClusterConfig | undefined;
  private nextReadId = 1;
  private draining = false;
  private stopped = false;
  private halted = false;
  private drained: Promise<void> = Promise.resolve();
  /** The apply path: applies, one batch at a time (see the class comment). */
  private readonly applyPath: TaskPath = { name: 'apply', busy: false, idle: Promise.resolve() };
  /** The compaction path: compactions, one at a time, beside the applies (see compact()). */
  private readonly compactionPath: TaskPath = { name: 'compaction', busy: false, idle: Promise.resolve() };
  /** An apply's start is deferred (startApply through `defer`). */
  private applyDeferred = false;
  /** Followers a snapshot is being streamed to: at most one transfer each. */
  private readonly outgoingSnapshots = new Set<NodeId>();
  /** An InstallSnapshot stream is being received (one at a time). */
  private receivingSnapshot = false;
  private pendingInstall: PendingInstall | undefined;
  private compactRequests: Settle<{ snapshotIndex: number; firstIndex: number }>[] = [];

  private constructor(
    readonly node: RaftNode,
    private readonly storage: RaftStorage,
    readonly stateMachine: F,
    private readonly codec: ProposalCodec<C>,
    private readonly transport: Transport,
    private readonly onFatal: (err: unknown) => void,
    private readonly electionTimeoutTicks: number,
    private readonly onConfigChange: (config: ClusterConfig) => void,
    private readonly compaction: CompactionOptions,
    private readonly applyLagBounds: ApplyLagBounds,
    private readonly defer: Deferral | undefined,
  ) {
    this.announceConfig();
  }

  static async open<C, R, F extends Fsm<R>>(options: {
    config: RaftConfig;
    storage: RaftStorage;
    stateMachine: F;
    /** Encodes (and, for the kv, stamps with log time) what callers propose. */
    codec: ProposalCodec<C>;
    transport: Transport;
    onFatal: (err: unknown) => void;
    /** Compact once this many applied entries follow the snapshot point (default DEFAULT_SNAPSHOT_ENTRIES). */
    snapshotEntries?: number;
    /** Entries kept before the snapshot point at compaction (default DEFAULT_SNAPSHOT_CATCHUP_ENTRIES). */
    snapshotCatchupEntries?: number;
    /** Bytes of one outgoing snapshot chunk (default MAX_SNAPSHOT_CHUNK_BYTES; the simulator uses small ones). */
    snapshotChunkBytes?: number;
    /** Called with the config in force at open and whenever it changes (peer links follow it). */
    onConfigChange?: (config: ClusterConfig) => void;
    /** How far applies may fall behind commits (defaults MAX_APPLY_LAG_ENTRIES, MAX_APPLY_LAG_BYTES; tests use small ones). */
    maxApplyLagEntries?: number;
    maxApplyLagBytes?: number;
    /** Starts the persist path and the apply path later (see the class comment); without it, at once. */
    defer?: Deferral;
  }): Promise<Replica<C, R, F>> {
    const compaction: CompactionOptions = {
      snapshotEntries: options.snapshotEntries ?? DEFAULT_SNAPSHOT_ENTRIES,
      snapshotCatchupEntries: options.snapshotCatchupEntries ?? DEFAULT_SNAPSHOT_CATCHUP_ENTRIES,
      snapshotChunkBytes: options.snapshotChunkBytes ?? MAX_SNAPSHOT_CHUNK_BYTES,
    };
    if (!Number.isSafeInteger(compaction.snapshotChunkBytes) || compaction.snapshotChunkBytes < 1 || compaction.snapshotChunkBytes > MAX_SNAPSHOT_CHUNK_BYTES) {
      throw new RangeError(`snapshotChunkBytes must be an integer in [1, ${MAX_SNAPSHOT_CHUNK_BYTES}]`);
    }
    if (!Number.isSafeInteger(compaction.snapshotEntries) || compaction.snapshotEntries < 1) throw new RangeError('snapshotEntries must be a positive integer');
    if (!Number.isSafeInteger(compaction.snapshotCatchupEntries) || compaction.snapshotCatchupEntries < 0) {
      throw new RangeError('snapshotCatchupEntries must be a non-negative integer');
    }
    const { hardState, entries, snapshot } = await options.storage.load();
    const appliedIndex = options.stateMachine.appliedIndex();
    const point = snapshot ? { index: snapshot.index, term: snapshot.term, config: snapshot.config } : undefined;
    const node = new RaftNode(options.config, { hardState, entries, appliedIndex, snapshot: point });
    return new Replica<C, R, F>(
      node,
      options.storage,
      options.stateMachine,
      options.codec,
      options.transport,
      options.onFatal,
      options.config.electionTimeoutTicks,
      options.onConfigChange ?? (() => undefined),
      compaction,
      { entries: options.maxApplyLagEntries ?? MAX_APPLY_LAG_ENTRIES, bytes: options.maxApplyLagBytes ?? MAX_APPLY_LAG_BYTES },
      options.defer,
    );
  }

  get id(): NodeId {
    return this.node.id;
  }

  tick(): void {
    if (this.stopped) return;
    this.guarded(() => this.node.tick());
    this.noteLeadership();
    for (const transfer of this.transfers) transfer.ticksWaited++;
    this.afterInput();
    this.schedule();
  }

  receive(message: Message): void {
    if (this.stopped) return;
    this.guarded(() => this.node.step(message));
    this.noteLeadership();
    this.afterInput();
    this.schedule();
  }

  /** The connection from peer `id` broke (see RaftNode.leaderConnectionLost). */
  peerConnectionLost(id: NodeId): void {
    if (this.stopped) return;
    this.guarded(() => this.node.leaderConnectionLost(id));
    this.afterInput();
    this.schedule();
  }

  /**
   * Stops the node for good because of `err` (a broken invariant): no more input, and
   * the fatal handler (which logs and exits the process) is told once. Request handlers
   * call this too, so an invariant broken on any path stops the node.
   */
  halt(err: unknown): void {
    if (this.halted) return;
    this.halted = true;
    this.stopped = true;
    this.onFatal(err);
  }

  /** Whether halt() stopped this node (a broken invariant or a failed write). */
  isHalted(): boolean {
    return this.halted;
  }

  /** Tells the codec whether this node leads (the kv starts its term's log-time clock then). */
  private noteLeadership(): void {
    this.codec.observeLeadership(this.node.term, this.node.role === 'leader');
  }

  /** The bytes to log for `encoded`, prepared (stamped) as of this node's current leadership. */
  private prepareProposal(encoded: Uint8Array): Uint8Array {
    this.noteLeadership();
    return this.codec.prepare(encoded);
  }

  /** Callers waiting in each map; all zero once every caller was answered or gave up. */
  pendingCounts(): PendingCounts {
    return { proposals: this.proposals.size, reads: this.reads.size, appliedWaiters: this.appliedWaiters.length };
  }

  /**
   * Proposes a write; resolves with its result once it is committed and its outcome decided
   * here (the state write may still be landing: reads wait for it through the applied index).
   * `encoded` spares a second encoding when the caller already holds the bytes (a write
   * forwarded by a follower). The codec prepares the bytes (the kv stamps them with this
   * node's log time): only a leader's proposal enters the log. When `signal` aborts (the caller's deadline
   * passed), the caller gets TIMEOUT and stops waiting here; the entry may still commit later.
   */
  propose(command: C, encoded: Uint8Array = this.codec.encode(command), signal?: AbortSignal): Promise<R> {
    if (this.stopped) return Promise.reject(stoppedError());
    if (signal?.aborted) return Promise.reject(abortError(signal, WRITE_TIMED_OUT));
    const lag = this.applyLag();
    if (lag) return Promise.reject(new CairnError(ErrorCode.OVERLOADED, `cannot propose: the state machine is ${lag} behind the commit index; retry shortly`));
    const proposed = this.guarded(() => this.node.propose(this.prepareProposal(encoded)));
    if (!proposed.ok) {
      const code = { 'not-leader': ErrorCode.NOT_LEADER, overloaded: ErrorCode.OVERLOADED, transferring: ErrorCode.LEADER_TRANSFERRING }[proposed.reason];
      return Promise.reject(new CairnError(code, `cannot propose: ${proposed.reason}`, { leader: proposed.leader }));
    }
    const superseded = this.proposals.get(proposed.index);
    if (superseded) {
      // An older term's proposal at this index was truncated here while we did not
      // lead; another node may still hold it and commit it later.
      this.guarded(() => assert(superseded.term < proposed.term, () => `two proposals for index ${proposed.index} in term ${proposed.term}`));
      superseded.reject(new CairnError(ErrorCode.OUTCOME_UNKNOWN, `lost track of the proposal at index ${proposed.index}`));
    }
    const result = new Promise<R>((resolve, reject) => {
      const pending: PendingProposal<R> = {
        term: proposed.term,
        ...releasedOnAbort(signal, { resolve, reject }, () => {
          if (this.proposals.get(proposed.index) !== pending) return;
          this.proposals.delete(proposed.index);
          pending.reject(abortError(signal!, WRITE_TIMED_OUT));
        }),
      };
      this.proposals.set(proposed.index, pending);
    });
    this.schedule();
    return result;
  }

  /**
   * Resolves when a linearizable read may be served from this node's state machine:
   * leadership was confirmed after the call and everything committed before it is applied.
   */
  async readBarrier(signal?: AbortSignal): Promise<void> {
    await this.waitForApplied(await this.confirmReadIndex(signal), signal);
  }

  /**
   * Leader only: resolves with a read index once leadership has been confirmed by a
   * quorum after this call (ReadIndex). A follower asks the leader for one over the
   * peer service and then waits for its own state machine to reach it.
   */
  confirmReadIndex(signal?: AbortSignal): Promise<number> {
    if (this.stopped) return Promise.reject(stoppedError());
    if (signal?.aborted) return Promise.reject(abortError(signal, READ_TIMED_OUT));
    const readId = this.nextReadId++;
    const asked = this.guarded(() => this.node.readIndex(readId));
    if (!asked.ok) {
      return Promise.reject(new CairnError(ErrorCode.NOT_LEADER, 'not the leader', { leader: asked.leader }));
    }
    const confirmed = new Promise<number>((resolve, reject) => {
      const pending: PendingRead = releasedOnAbort(signal, { resolve, reject }, () => {
        if (this.reads.get(readId) !== pending) return;
        this.reads.delete(readId);
        pending.reject(abortError(signal!, READ_TIMED_OUT));
      });
      this.reads.set(readId, pending);
    });
    this.schedule();
    return confirmed;
  }

  /** Resolves once the state machine has applied `index`; rejects with TIMEOUT if `signal` aborts first. */
  waitForApplied(index: number, signal?: AbortSignal): Promise<void> {
    if (this.stateMachine.appliedIndex() >= index) return Promise.resolve();
    if (this.stopped) return Promise.reject(stoppedError());
    if (signal?.aborted) return Promise.reject(abortError(signal, CATCH_UP_TIMED_OUT));
    return new Promise((resolve, reject) => {
      const waiter: AppliedWaiter = {
        index,
        ...releasedOnAbort(signal, { resolve, reject }, () => {
          const before = this.appliedWaiters.length;
          this.appliedWaiters = this.appliedWaiters.filter((w) => w !== waiter);
          if (this.appliedWaiters.length < before) waiter.reject(abortError(signal!, CATCH_UP_TIMED_OUT));
        }),
      };
      this.appliedWaiters.push(waiter);
    });
  }

  // ------------------------------------------------------------ membership

  /** The configuration in force here: the latest in the log, committed or not. */
  clusterConfig(): ClusterConfig {
    return this.node.clusterConfig();
  }

  /**
   * Leader only: proposes a single-server membership change; resolves with the new
   * configuration once its entry is applied here. Errors: NOT_LEADER,
   * CONFIG_CHANGE_PENDING, LEADER_TRANSFERRING, INVALID_ARGUMENT, LEARNER_NOT_CAUGHT_UP,
   * MEMBER_NOT_FOUND, MEMBER_EXISTS; TIMEOUT when `signal` aborts first (the change may
   * still commit).
   */
  proposeConfigChange(change: ConfigChange, signal?: AbortSignal): Promise<ClusterConfig> {
    if (this.stopped) return Promise.reject(stoppedError());
    if (signal?.aborted) return Promise.reject(abortError(signal, CONFIG_TIMED_OUT));
    const proposed = this.guarded(() => this.node.proposeConfigChange(change));
    if (!proposed.ok) return Promise.reject(configRefusalError(proposed));
    this.afterInput();
    const result = new Promise<ClusterConfig>((resolve, reject) => {
      const pending: PendingConfigChange = {
        term: proposed.term,
        config: proposed.config,
        ...releasedOnAbort(signal, { resolve, reject }, () => {
          if (this.configChanges.get(proposed.index) !== pending) return;
          this.configChanges.delete(proposed.index);
          pending.reject(abortError(signal!, CONFIG_TIMED_OUT));
        }),
      };
      this.configChanges.get(proposed.index)?.reject(new CairnError(ErrorCode.OUTCOME_UNKNOWN, `lost track of the change at index ${proposed.index}`));
      this.configChanges.set(proposed.index, pending);
    });
    this.schedule();
    return result;
  }

  /**
   * Leader only: hands leadership to voter `to` (default: the most caught-up one).
   * Resolves with the new leader once this node sees a leader of a later term;
   * rejects TRANSFER_FAILED when the transfer is abandoned (or this node leads again),
   * NOT_LEADER, LEADER_TRANSFERRING (one is under way), INVALID_ARGUMENT.
   */
  transferLeadership(to?: NodeId, signal?: AbortSignal): Promise<NodeId> {
    if (this.stopped) return Promise.reject(stoppedError());
    if (signal?.aborted) return Promise.reject(abortError(signal, TRANSFER_TIMED_OUT));
    const started = this.guarded(() => this.node.transferLeadership(to));
    if (!started.ok) {
      const code = { 'not-leader': ErrorCode.NOT_LEADER, transferring: ErrorCode.LEADER_TRANSFERRING, invalid: ErrorCode.INVALID_ARGUMENT }[started.reason];
      return Promise.reject(new CairnError(code, `cannot transfer leadership: ${started.message}`, { leader: started.leader }));
    }
    const term = this.node.term;
    const result = new Promise<NodeId>((resolve, reject) => {
      const pending: PendingTransfer = {
        term,
        target: started.target,
        ticksWaited: 0,
        ...releasedOnAbort(signal, { resolve, reject }, () => {
          if (!this.transfers.includes(pending)) return;
          this.transfers = this.transfers.filter((t) => t !== pending);
          pending.reject(abortError(signal!, TRANSFER_TIMED_OUT));
        }),
      };
      this.transfers.push(pending);
    });
    this.schedule();
    return result;
  }

  /** After every input to the core: tell about a new config, settle transfers that ended. */
  private afterInput(): void {
    this.announceConfig();
    if (this.transfers.length > 0) this.settleTransfers();
  }

  private announceConfig(): void {
    const config = this.node.clusterConfig();
    if (config === this.announcedConfig) return;
    this.announcedConfig = config;
    this.onConfigChange(config);
  }

  private settleTransfers(): void {
    const node = this.node;
    const waiting: PendingTransfer[] = [];
    for (const transfer of this.transfers) {
      const outcome = transferOutcome(transfer, node, this.electionTimeoutTicks);
      if (outcome === undefined) waiting.push(transfer);
      else if (typeof outcome === 'number') transfer.resolve(outcome);
      else transfer.reject(new CairnError(ErrorCode.TRANSFER_FAILED, `leadership transfer to ${transfer.target} failed: ${outcome}`, { leader: node.leader }));
    }
    this.transfers = waiting;
  }

  /** Stops taking input; pending requests fail with STOPPED (a write's outcome is then unknown). */
  async stop(): Promise<void> {
    this.stopped = true;
    await this.drained;
    await this.applyPath.idle;
    await this.compactionPath.idle;
    for (const pending of this.configChanges.values()) pending.reject(stoppedError());
    for (const transfer of this.transfers) transfer.reject(stoppedError());
    this.configChanges.clear();
    this.transfers = [];
    for (const pending of this.proposals.values()) pending.reject(stoppedError());
    for (const pending of this.reads.values()) pending.reject(stoppedError());
    for (const waiter of this.appliedWaiters) waiter.reject(stoppedError());
    this.proposals.clear();
    this.reads.clear();
    this.appliedWaiters = [];
    for (const request of this.compactRequests.splice(0)) request.reject(stoppedError());
    this.pendingInstall?.reject(stoppedError());
    this.pendingInstall = undefined;
  }

  private schedule(): void {
    this.startApply();
    if (this.draining || this.stopped) return;
    this.draining = true;
    const defer = this.defer;
    const drain = defer ? new Promise<void>((start) => defer(start)).then(() => this.drain()) : this.drain();
    this.drained = drain.finally(() => {
      this.draining = false;
      // Input that arrived after drain's last look (in a microtask before this one: a
      // caller answered by an apply proposing again) found it still draining: look again.
      if (this.hasWork()) this.schedule();
    });
  }

  /** Whether drain has something to do now. */
  private hasWork(): boolean {
    if (this.stopped) return false;
    if (this.node.hasReady({ withCommitted: false })) return true;
    return this.compactionWanted();
  }

  private async drain(): Promise<void> {
    try {
      while (this.hasWork()) {
        // Back-pressure: a node whose applies fall behind stops taking (and acknowledging) entries.
        while (this.applyPath.busy && this.applyLag() !== undefined) await this.applyPath.idle;
        if (this.stopped) break;
        if (this.node.hasReady({ withCommitted: false })) {
          await this.handleReady(this.node.ready({ withCommitted: false }));
          this.afterInput();
          this.startApply();
        } else {
          this.startCompaction();
        }
      }
    } catch (err) {
      this.halt(err);
    }
  }

  /** How far applies are behind commits, when beyond MAX_APPLY_LAG_ENTRIES or MAX_APPLY_LAG_BYTES; undefined otherwise. */
  private applyLag(): string | undefined {
    const applied = this.stateMachine.appliedIndex();
    const entries = this.node.commitIndex - applied;
    if (entries > this.applyLagBounds.entries) return `${entries} entries`;
    if (entries <= 0) return undefined;
    const bytes = this.node.committedBytesAfter(applied);
    return bytes > this.applyLagBounds.bytes ? `${bytes} bytes` : undefined;
  }

  /** Starts applying what is committed and durable here (through `defer`), unless an apply (or compaction) runs. */
  private startApply(): void {
    if (!this.defer) return this.applyNow();
    if (this.applyDeferred || !this.canApply()) return;
    this.applyDeferred = true;
    this.defer(() => {
      this.applyDeferred = false;
      this.applyNow();
    });
  }

  /** Whether an apply may start now (checked again when a deferred start runs: a stop or a compaction may have come first). */
  private canApply(): boolean {
    return !this.stopped && !this.applyPath.busy && this.node.hasCommittedToApply();
  }

  private applyNow(): void {
    if (!this.canApply()) return;
    const committed = this.guarded(() => this.node.takeCommitted());
    if (committed.length > 0) this.onPath(this.applyPath, () => this.applyCommitted(committed));
  }

  /**
   * Runs `task` on `path` (the apply or the compaction path); the persist path looks for
   * work again when it ends. A failure halts the node, as on the persist path.
   */
  private onPath(path: TaskPath, task: () => Promise<void>): void {
    assert(!path.busy, () => `a second task on the ${path.name} path while one is queued`);
    path.busy = true;
    path.idle = path.idle
      .then(async () => {
        if (!this.stopped) await task();
      })
      .then(
        () => {
          path.busy = false;
          this.schedule();
        },
        (err: unknown) => {
          path.busy = false;
          this.halt(err);
        },
      );
  }

  /** Applies one batch of committed (durable) entries and answers their callers. */
  private async applyCommitted(committed: Ready['committed']): Promise<void> {
    // Proposers are answered when the outcomes are decided (maybe before the state write
    // lands); a state machine that does not say so early is answered here.
    let answered = false;
    const outcomes = await this.stateMachine.apply(committed, (decided) => {
      answered = true;
      this.resolveProposals(decided);
    });
    if (!answered) this.resolveProposals(outcomes);
    this.resolveConfigChanges(committed);
    this.releaseAppliedWaiters();
    // Here, not only when the persist path is idle: under steady load it never is.
    this.startCompaction();
  }

  /** Whether a compaction is asked for (Cluster.Snapshot) or due (--snapshot-entries), and none runs. */
  private compactionWanted(): boolean {
    return !this.stopped && !this.compactionPath.busy && (this.compactRequests.length > 0 || this.compactionDue());
  }

  /**
   * Starts a compaction on the compaction path when one is wanted. It runs beside the
   * applies: compact() covers only what the state machine had landed when it began, and it
   * makes that durable before the log entries go; applies after that point are not its
   * concern. An install waits for it (handleReady), and it never starts while one is
   * pending (compactionDue, compact).
   */
  private startCompaction(): void {
    if (this.compactionWanted()) this.onPath(this.compactionPath, () => this.compactIfAskedOrDue());
  }

  /** Serves Cluster.Snapshot requests, or compacts when --snapshot-entries says so (on the compaction path). */
  private async compactIfAskedOrDue(): Promise<void> {
    if (this.compactRequests.length > 0) await this.serveCompactRequests();
    else if (this.compactionDue()) await this.compact();
  }

  /** Runs a step of the core; a broken invariant in it halts the node before it is rethrown. */
  private guarded<T>(step: () => T): T {
    try {
      return step();
    } catch (err) {
      if (isInvariantViolation(err)) this.halt(err);
      throw err;
    }
  }

  private async handleReady(ready: Ready): Promise<void> {
    const early: Message[] = [];
    const late: Message[] = [];
    for (const message of ready.messages) (sendableBeforePersist(ready, message) ? early : late).push(message);
    if (early.length > 0) this.transport.send(early);
    if (ready.snapshot) {
      // The install switches the state machine and rewrites the log: no apply or compaction may be running.
      await this.applyPath.idle;
      await this.compactionPath.idle;
      await this.installSnapshot(ready);
    } else if (ready.hardState || ready.entries.length > 0) {
      await this.storage.persist(ready.hardState, ready.entries);
      const last = ready.entries[ready.entries.length - 1];
      if (last) this.node.onPersisted(last.index, last.term);
    }
    if (this.stopped) return; // a crash between persisting and sending
    this.transport.send(late);
    for (const readId of ready.failedReads) this.failRead(readId);
    for (const grant of ready.reads) this.grantRead(grant.readId, grant.index);
    for (const { to } of ready.snapshotsToSend) void this.sendSnapshot(to);
    assert(ready.committed.length === 0, 'a Ready taken without committed entries carries some');
  }

  // ------------------------------------------------------------ snapshots

  /**
   * Compacts now at the applied index (Cluster.Snapshot, `cairn snapshot`): resolves
   * with the snapshot index and the log's first index after it.
   */
  compactNow(): Promise<{ snapshotIndex: number; firstIndex: number }> {
    if (this.stopped) return Promise.reject(stoppedError());
    const done = new Promise<{ snapshotIndex: number; firstIndex: number }>((resolve, reject) => this.compactRequests.push({ resolve, reject }));
    this.schedule();
    return done;
  }

  /**
   * A consistent snapshot of the state at the applied index, for a backup
   * (`cairn snapshot save`): its meta, its chunks (read lazily), and release(),
   * which the caller must call when done.
   */
  async saveSnapshot(): Promise<{ meta: SnapshotMeta; chunks: AsyncIterable<Uint8Array>; release(): void }> {
    if (this.stopped) throw stoppedError();
    const fsm = this.stateMachine;
    if (!isSnapshotting(fsm)) throw new Error('this state machine cannot be snapshotted');
    let snapshot = await fsm.snapshot();
    // A compaction or an install may move the snapshot point past the view while it is
    // taken; the next view is at the new applied index, which the core can describe.
    for (let attempt = 1; snapshot.index < this.node.snapshotIndex; attempt++) {
      snapshot.release();
      if (attempt >= SAVE_SNAPSHOT_ATTEMPTS) throw new CairnError(ErrorCode.OVERLOADED, 'the state moved on while a backup was being taken: try again');
      snapshot = await fsm.snapshot();
    }
    try {
      const meta = this.guarded(() => this.node.snapshotMetaAt(snapshot.index));
      return { meta, chunks: snapshot.chunks(MAX_SNAPSHOT_CHUNK_BYTES), release: () => snapshot.release() };
    } catch (err) {
      snapshot.release();
      throw err;
    }
  }

  /**
   * Receives an InstallSnapshot stream from the leader: stages every chunk, and only
   * once the last one is in offers the snapshot to the core. If the core accepts it,
   * the next Ready installs it (one synced batch with the state machine's switch) and
   * the answer is sent after that. One transfer at a time.
   */
  async receiveSnapshot(header: SnapshotHeader, chunks: AsyncIterable<Uint8Array>): Promise<InstallSnapshotResponse> {
    const refuse = (reason: string): InstallSnapshotResponse => ({ term: this.node.term, installed: false, reason });
    const fsm = this.stateMachine;
    const meta = header.meta;
    if (this.stopped) return refuse('the node has stopped');
    if (!isSnapshotting(fsm)) return refuse('this state machine cannot be restored from a snapshot');
    if (!meta) return refuse('the header has no snapshot meta');
    if (this.receivingSnapshot) return refuse('another snapshot is being received');
    if (header.term < this.node.term) return refuse(`stale term ${header.term} (ours is ${this.node.term})`);
    this.receivingSnapshot = true;
    let restore: FsmRestore | undefined;
    try {
      restore = await fsm.beginRestore();
      for await (const chunk of chunks) {
        if (this.stopped) return refuse('the node has stopped');
        await restore.write(chunk);
      }
      if (restore.appliedIndex() !== meta.index) return refuse(`the snapshot data is at index ${restore.appliedIndex()}, its header says ${meta.index}`);
      const installed = this.offerSnapshot(header, meta, restore);
      if (!installed) return refuse(`not installed: index ${meta.index} is already committed here, or the offer was refused`);
      restore = undefined; // the install owns it now
      await installed;
      return { term: this.node.term, installed: true, reason: '' };
    } catch (err) {
      return refuse(`${(err as Error).message ?? err}`);
    } finally {
      this.receivingSnapshot = false;
      if (restore) await restore.abort().catch(() => undefined);
    }
  }

  /** Steps the core with the staged snapshot; returns the install's promise when the core accepted it. */
  private offerSnapshot(header: SnapshotHeader, meta: SnapshotMeta, restore: FsmRestore): Promise<void> | undefined {
    if (this.stopped) return undefined;
    const message: Message = { fromId: header.fromId, to: this.id, term: header.term, body: { $case: 'installSnapshot', value: { meta } } };
    this.guarded(() => this.node.step(message));
    this.noteLeadership();
    let installed: Promise<void> | undefined;
    if (this.node.pendingSnapshotMeta()?.index === meta.index) {
      assert(this.pendingInstall === undefined, () => `snapshot ${meta.index} accepted while ${this.pendingInstall?.index} is being installed`);
      installed = new Promise<void>((resolve, reject) => {
        this.pendingInstall = { index: meta.index, restore, resolve, reject };
      });
    }
    this.schedule(); // after pendingInstall is set: the Ready that installs it may be handled at once
    return installed;
  }

  /**
   * Persists an accepted snapshot in ONE synced batch: the Raft log's deletions and
   * meta/snapshot, the state machine's switch to the staged data, and the rest of the
   * Ready's hard state and entries. A crash before it leaves the old state, after it the
   * new. Only then is the state machine switched in memory and the core told.
   */
  private async installSnapshot(ready: Ready): Promise<void> {
    const meta = ready.snapshot!;
    const pending = this.pendingInstall;
    assert(pending !== undefined && pending.index === meta.index, () => `a Ready installs snapshot ${meta.index} but the staged one is ${pending?.index}`);
    this.pendingInstall = undefined;
    try {
      const ops = [
        ...this.storage.stageInstall(meta, this.node.lastIndex),
        ...pending.restore.switchOps(),
        ...this.storage.stagePersist(ready.hardState, ready.entries),
      ];
      // The staged chunks were written unsynced: durable first, then the switch to them.
      await this.storage.flushToDisk();
      await this.storage.writeSynced(ops);
      const last = ready.entries[ready.entries.length - 1];
      if (last) this.node.onPersisted(last.index, last.term);
      await pending.restore.activate();
      assert(this.stateMachine.appliedIndex() === meta.index, () => `state machine at ${this.stateMachine.appliedIndex()} after installing snapshot ${meta.index}`);
      this.node.onSnapshotPersisted(meta.index);
      this.failCoveredBySnapshot(meta.index);
      this.releaseAppliedWaiters();
      pending.resolve();
    } catch (err) {
      pending.reject(err as Error);
      throw err;
    }
  }

  /** Leader: streams a snapshot of the state at the applied index to `to`, then reports the outcome to the core. */
  private async sendSnapshot(to: NodeId): Promise<void> {
    const fsm = this.stateMachine;
    if (this.outgoingSnapshots.has(to)) return; // its end reports for this request too
    this.outgoingSnapshots.add(to);
    let installedAt: { index: number; term: number } | undefined;
    try {
      if (!isSnapshotting(fsm) || !this.transport.sendSnapshot) return;
      const snapshot = await fsm.snapshot();
      try {
        if (this.stopped || this.node.role !== 'leader' || snapshot.index < this.node.snapshotIndex) return;
        const meta = this.guarded(() => this.node.snapshotMetaAt(snapshot.index));
        const header: SnapshotHeader = { clusterId: 0, fromId: this.id, to, term: this.node.term, meta };
        const response = await this.transport.sendSnapshot(to, header, snapshot.chunks(this.compaction.snapshotChunkBytes));
        if (response.installed) installedAt = { index: meta.index, term: header.term };
      } finally {
        snapshot.release();
      }
    } catch {
      installedAt = undefined; // a broken transfer: the core probes again once the follower is heard from
    } finally {
      this.outgoingSnapshots.delete(to);
      if (!this.stopped) {
        // An install counts as an acknowledgement only in the term that sent it.
        const acknowledged = installedAt !== undefined && installedAt.term === this.node.term ? installedAt.index : undefined;
        this.guarded(() => (acknowledged !== undefined ? this.node.reportSnapshot(to, 'finished', acknowledged) : this.node.reportSnapshot(to, 'failed')));
        this.schedule();
      }
    }
  }

  /** Whether enough entries were applied after the snapshot point to compact. */
  private compactionDue(): boolean {
    if (this.node.pendingSnapshotMeta() !== undefined) return false;
    return this.stateMachine.appliedIndex() - this.node.snapshotIndex >= this.compaction.snapshotEntries;
  }

  /**
   * Compacts at the state machine's applied index: the core moves its snapshot point and
   * drops the entries before the catch-up tail; the state machine's unsynced writes (the
   * state at that index) are flushed to disk, then meta/snapshot and the log deletions go
   * in one synced batch. It runs on the compaction path, beside the applies: appliedIndex()
   * counts only batches that have landed in LevelDB, so the flush, issued after, covers
   * them; later applies are covered by the log entries it keeps.
   */
  private async compact(): Promise<{ snapshotIndex: number; firstIndex: number }> {
    const applied = this.stateMachine.appliedIndex();
    if (this.node.pendingSnapshotMeta() === undefined && applied > this.node.snapshotIndex) {
      const { snapshot, compactThrough } = this.guarded(() => this.node.compact(applied, this.compaction.snapshotCatchupEntries));
      // The applies up to `applied` were written unsynced: durable first, then the entries go.
      await this.storage.flushToDisk();
      await this.storage.writeSynced(this.storage.stageCompaction(snapshot, compactThrough));
    }
    const status = this.node.status();
    return { snapshotIndex: status.snapshotIndex, firstIndex: status.firstIndex };
  }

  private async serveCompactRequests(): Promise<void> {
    const requests = this.compactRequests.splice(0);
    try {
      const result = await this.compact();
      for (const request of requests) request.resolve(result);
    } catch (err) {
      for (const request of requests) request.reject(err as Error);
      throw err;
    }
  }

  /** Answers the proposers of `outcomes` (each leaves `proposals`). */
  private resolveProposals(outcomes: readonly ApplyOutcome<R>[]): void {
    for (const outcome of outcomes) {
      const pending = this.proposals.get(outcome.index);
      if (!pending) continue;
      this.proposals.delete(outcome.index);
      if (pending.term === outcome.term && outcome.result !== undefined) {
        pending.resolve(outcome.result);
      } else {
        pending.reject(
          new CairnError(ErrorCode.PROPOSAL_DROPPED, `index ${outcome.index} was taken by another leader's entry`),
        );
      }
    }
  }

  /**
   * Proposals and config changes waiting on entries a snapshot now covers will never see
   * their entry applied here: whether it was theirs is unknown (the entries are gone).
   */
  private failCoveredBySnapshot(index: number): void {
    const lost = (at: number) => new CairnError(ErrorCode.OUTCOME_UNKNOWN, `the entry at index ${at} was replaced by a snapshot through ${index}`);
    for (const [at, pending] of this.proposals) {
      if (at > index) continue;
      this.proposals.delete(at);
      pending.reject(lost(at));
    }
    for (const [at, pending] of this.configChanges) {
      if (at > index) continue;
      this.configChanges.delete(at);
      pending.reject(lost(at));
    }
  }

  private resolveConfigChanges(applied: Ready['committed']): void {
    if (this.configChanges.size === 0) return;
    for (const entry of applied) {
      const pending = this.configChanges.get(entry.index);
      if (!pending) continue;
      this.configChanges.delete(entry.index);
      if (pending.term === entry.term) pending.resolve(pending.config);
      else pending.reject(new CairnError(ErrorCode.PROPOSAL_DROPPED, `index ${entry.index} was taken by another leader's entry`));
    }
  }

  private grantRead(readId: number, index: number): void {
    this.reads.get(readId)?.resolve(index);
    this.reads.delete(readId);
  }

  private releaseAppliedWaiters(): void {
    const applied = this.stateMachine.appliedIndex();
    const waiting: AppliedWaiter[] = [];
    for (const waiter of this.appliedWaiters) {
      if (waiter.index <= applied) waiter.resolve();
      else waiting.push(waiter);
    }
    this.appliedWaiters = waiting;
  }

  private failRead(readId: number): void {
    this.reads.get(readId)?.reject(new CairnError(ErrorCode.READ_ABORTED, 'leadership lost before the read was confirmed'));
    this.reads.delete(readId);
  }
}

/** Views saveSnapshot takes before it gives up on one the core's snapshot point has not passed. */
const SAVE_SNAPSHOT_ATTEMPTS = 5;

function stoppedError(): CairnError {
  return new CairnError(ErrorCode.STOPPED, 'the node has stopped');
}

const WRITE_TIMED_OUT = 'the write did not commit in time; its outcome is unknown';
const READ_TIMED_OUT = 'the read could not be confirmed in time';
const CATCH_UP_TIMED_OUT = 'this node did not catch up with the leader in time';
const CONFIG_TIMED_OUT = 'the membership change did not commit in time; its outcome is unknown';
const TRANSFER_TIMED_OUT = 'the leadership transfer did not finish in time';

/** The error for a config change the core refused. */
function configRefusalError(refused: Exclude<ConfigProposeResult, { ok: true }>): CairnError {
  const code =
    refused.reason === 'invalid'
      ? { invalid: ErrorCode.INVALID_ARGUMENT, 'member-exists': ErrorCode.MEMBER_EXISTS, 'member-not-found': ErrorCode.MEMBER_NOT_FOUND }[refused.refusal ?? 'invalid']
      : {
          'not-leader': ErrorCode.NOT_LEADER,
          pending: ErrorCode.CONFIG_CHANGE_PENDING,
          transferring: ErrorCode.LEADER_TRANSFERRING,
          'not-caught-up': ErrorCode.LEARNER_NOT_CAUGHT_UP,
        }[refused.reason];
  return new CairnError(code, `cannot change membership: ${refused.message}`, { leader: refused.leader });
}

/**
 * How a transfer ended, as this node sees it: the new leader's id, a reason it failed,
 * or undefined while it may still succeed. Success is another leader of a later term;
 * the core abandoning it (we still lead, no transferee), or leading again in a later
 * term, is failure; so is seeing no new leader within two election timeouts (the
 * core abandons after one; a follower that stepped down may never hear the winner).
 */
function transferOutcome(transfer: PendingTransfer, node: RaftNode, electionTimeoutTicks: number): NodeId | string | undefined {
  if (node.term > transfer.term && node.leader !== NO_NODE && node.leader !== node.id) return node.leader;
  if (node.role === 'leader' && node.term === transfer.term && node.transferee === NO_NODE) {
    return `node ${transfer.target} did not win an election within ${electionTimeoutTicks} ticks`;
  }
  if (node.role === 'leader' && node.term > transfer.term) return `this node was elected again in term ${node.term}`;
  if (transfer.ticksWaited > 2 * electionTimeoutTicks) return `no new leader seen within ${2 * electionTimeoutTicks} ticks`;
  return undefined;
}

/** The error an aborted caller gets: the signal's own CairnError, else TIMEOUT. */
function abortError(signal: AbortSignal, message: string): CairnError {
  return signal.reason instanceof CairnError ? signal.reason : new CairnError(ErrorCode.TIMEOUT, message);
}

/**
 * Settle functions that also detach from `signal`, so a long-lived signal does not
 * collect listeners; `onAbort` runs if the signal aborts before the entry settles.
 */
function releasedOnAbort<T>(signal: AbortSignal | undefined, settle: Settle<T>, onAbort: () => void): Settle<T> {
  if (!signal) return settle;
  signal.addEventListener('abort', onAbort, { once: true });
  return {
    resolve: (value) => {
      signal.removeEventListener('abort', onAbort);
      settle.resolve(value);
    },
    reject: (err) => {
      signal.removeEventListener('abort', onAbort);
      settle.reject(err);
    },
  };
}
