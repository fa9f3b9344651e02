import { Entry } from '../../gen/cairn/raft/v1/raft';

/**
 * What the Replica needs from the replicated state machine, and nothing more: the shell
 * stays generic, and the key-value store (src/kv) is one implementation. `R` is the result
 * a proposer gets back for its entry (for the kv, a CommandResult).
 */
export interface Fsm<R> {
  /** The index of the last entry applied (durably, or re-applied after a crash). */
  appliedIndex(): number;
  /** Applies committed entries in order, atomically with the new applied index. */
  apply(entries: readonly Entry[]): Promise<ApplyOutcome<R>[]>;
}

/** What applying one log entry produced: a result for the proposer, or none (a no-op). */
export interface ApplyOutcome<R> {
  index: number;
  term: number;
  result?: R;
}

/**
 * The next step, not built yet (issue 8, snapshots): a state machine that can also be
 * snapshotted and restored, in hashicorp/raft's FSM shape (Snapshot returns an FSMSnapshot
 * that is persisted to a sink and then released; Restore replaces the whole state from a
 * stream). No state machine implements it today and the Replica never calls it.
 */
export interface SnapshottingFsm<R> extends Fsm<R> {
  snapshot(): Promise<FsmSnapshot>;
  /** Replaces the state with the snapshot's, atomically: the old state or the new, never a mix. */
  restore(chunks: AsyncIterable<Uint8Array>): Promise<void>;
}

/** A consistent, point-in-time view of the state, written out as a stream of chunks. */
export interface FsmSnapshot {
  persist(sink: (chunk: Uint8Array) => Promise<void>): Promise<void>;
  /** Frees what the snapshot holds (e.g. a LevelDB snapshot), whether or not it was persisted. */
  release(): void;
}

/**
 * Turns a caller's command `C` into the bytes of a log entry. The Replica tells it about
 * leadership after every input and just before each proposal, so an implementation can
 * stamp proposals with a clock that belongs to the current leader's term (the kv's log time).
 */
export interface ProposalCodec<C> {
  encode(command: C): Uint8Array;
  /** Whether this node leads `term`, as last seen by the shell. */
  observeLeadership(term: number, leading: boolean): void;
  /** The bytes to log for a proposal whose command is `encoded` (e.g. stamped). */
  prepare(encoded: Uint8Array): Uint8Array;
}
