import { ClusterConfig, ConfigChange, Message } from '../../gen/cairn/raft/v1/raft';
import { assert, isInvariantViolation } from '../assert';
import { CairnError, ErrorCode } from '../errors';
import { ConfigProposeResult, NO_NODE, NodeId, RaftConfig, RaftNode, Ready } from '../raft/node';
import { RaftStorage } from '../storage/raft-storage';
import { ApplyOutcome, Fsm, ProposalCodec } from './fsm';

/** Carries messages to peers. Delivery is best effort: Raft tolerates loss. */
export interface Transport {
  send(messages: readonly Message[]): void;
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
 * One loop drains the core's Ready batches: persist (one synced write), then send,
 * then apply. Inputs that arrive while a batch is being persisted pile up in the
 * core and go out together in the next batch: that is the group commit.
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

  private constructor(
    readonly node: RaftNode,
    private readonly storage: RaftStorage,
    readonly stateMachine: F,
    private readonly codec: ProposalCodec<C>,
    private readonly transport: Transport,
    private readonly onFatal: (err: unknown) => void,
    private readonly electionTimeoutTicks: number,
    private readonly onConfigChange: (config: ClusterConfig) => void,
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
    /** Called with the config in force at open and whenever it changes (peer links follow it). */
    onConfigChange?: (config: ClusterConfig) => void;
  }): Promise<Replica<C, R, F>> {
    const { hardState, entries } = await options.storage.load();
    const appliedIndex = options.stateMachine.appliedIndex();
    const node = new RaftNode(options.config, { hardState, entries, appliedIndex });
    return new Replica<C, R, F>(
      node,
      options.storage,
      options.stateMachine,
      options.codec,
      options.transport,
      options.onFatal,
      options.config.electionTimeoutTicks,
      options.onConfigChange ?? (() => undefined),
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
   * Proposes a write; resolves with its result once it is committed and applied here.
   * `encoded` spares a second encoding when the caller already holds the bytes (a write
   * forwarded by a follower). The codec prepares the bytes (the kv stamps them with this
   * node's log time): only a leader's proposal enters the log. When `signal` aborts (the caller's deadline
   * passed), the caller gets TIMEOUT and stops waiting here; the entry may still commit later.
   */
  propose(command: C, encoded: Uint8Array = this.codec.encode(command), signal?: AbortSignal): Promise<R> {
    if (this.stopped) return Promise.reject(stoppedError());
    if (signal?.aborted) return Promise.reject(abortError(signal, WRITE_TIMED_OUT));
    const proposed = this.guarded(() => this.node.propose(this.prepareProposal(encoded)));
    if (!proposed.ok) {
      const code = { 'not-leader': ErrorCode.NOT_LEADER, overloaded: ErrorCode.OVERLOADED, transferring: ErrorCode.LEADER_TRANSFERRING }[proposed.reason];
      return Promise.reject(new CairnError(code, `cannot propose: ${proposed.reason}`, { leader: proposed.leader }));
    }
    const superseded = this.proposals.get(proposed.index);
    if (superseded) {
      // An older term's proposal at this index was truncated here while we did not
      // lead; another node may still hold it and commit it later.
      this.guarded(() => assert(superseded.term < proposed.term, `two proposals for index ${proposed.index} in term ${proposed.term}`));
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
  }

  private schedule(): void {
    if (this.draining || this.stopped) return;
    this.draining = true;
    this.drained = this.drain().finally(() => {
      this.draining = false;
    });
  }

  private async drain(): Promise<void> {
    try {
      while (!this.stopped && this.node.hasReady()) {
        await this.handleReady(this.node.ready());
        this.afterInput();
      }
    } catch (err) {
      this.halt(err);
    }
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
    if (ready.hardState || ready.entries.length > 0) {
      await this.storage.persist(ready.hardState, ready.entries);
      const last = ready.entries[ready.entries.length - 1];
      if (last) this.node.onPersisted(last.index, last.term);
    }
    if (this.stopped) return; // a crash between persisting and sending
    this.transport.send(ready.messages);
    for (const readId of ready.failedReads) this.failRead(readId);
    for (const grant of ready.reads) this.grantRead(grant.readId, grant.index);
    if (ready.committed.length > 0) {
      const outcomes = await this.stateMachine.apply(ready.committed);
      this.resolveProposals(outcomes);
      this.resolveConfigChanges(ready.committed);
      this.releaseAppliedWaiters();
    }
  }

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
