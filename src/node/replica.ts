import { Message } from '../../gen/cairn/raft/v1/raft';
import { assert, isInvariantViolation } from '../assert';
import { CairnError, ErrorCode } from '../errors';
import { NodeId, RaftConfig, RaftNode, Ready } from '../raft/node';
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
  ) {}

  static async open<C, R, F extends Fsm<R>>(options: {
    config: RaftConfig;
    storage: RaftStorage;
    stateMachine: F;
    /** Encodes (and, for the kv, stamps with log time) what callers propose. */
    codec: ProposalCodec<C>;
    transport: Transport;
    onFatal: (err: unknown) => void;
  }): Promise<Replica<C, R, F>> {
    const { hardState, entries } = await options.storage.load();
    const appliedIndex = options.stateMachine.appliedIndex();
    const node = new RaftNode(options.config, { hardState, entries, appliedIndex });
    return new Replica<C, R, F>(node, options.storage, options.stateMachine, options.codec, options.transport, options.onFatal);
  }

  get id(): NodeId {
    return this.node.id;
  }

  tick(): void {
    if (this.stopped) return;
    this.guarded(() => this.node.tick());
    this.noteLeadership();
    this.schedule();
  }

  receive(message: Message): void {
    if (this.stopped) return;
    this.guarded(() => this.node.step(message));
    this.noteLeadership();
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
      const code = proposed.reason === 'not-leader' ? ErrorCode.NOT_LEADER : ErrorCode.OVERLOADED;
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

  /** Stops taking input; pending requests fail with STOPPED (a write's outcome is then unknown). */
  async stop(): Promise<void> {
    this.stopped = true;
    await this.drained;
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
      while (!this.stopped && this.node.hasReady()) await this.handleReady(this.node.ready());
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
