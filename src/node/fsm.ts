import { Entry } from '../../gen/cairn/raft/v1/raft';
import { DbOp } from '../storage/db';

/**
 * What the Replica needs from the replicated state machine, and nothing more: the shell
 * stays generic, and the key-value store (src/kv) is one implementation. `R` is the result
 * a proposer gets back for its entry (for the kv, a CommandResult).
 */
export interface Fsm<R> {
  /** The index of the last entry applied (durably, or re-applied after a crash). */
  appliedIndex(): number;
  /**
   * Applies committed entries in order, atomically with the new applied index. It may call
   * `decided` once the outcomes are known and before they are written: the entries are
   * committed and durable in the log, so a crash before the write only means they are applied
   * again, with the same outcomes. `appliedIndex()` moves (and reads see the effects) only
   * once the write has landed.
   */
  apply(entries: readonly Entry[], decided?: (outcomes: readonly ApplyOutcome<R>[]) => void): Promise<ApplyOutcome<R>[]>;
}

/** What applying one log entry produced: a result for the proposer, or none (a no-op). */
export interface ApplyOutcome<R> {
  index: number;
  term: number;
  result?: R;
}

/**
 * A state machine that can also be snapshotted and restored, in hashicorp/raft's FSM
 * shape (Snapshot returns an FSMSnapshot that is written out and then released; Restore
 * replaces the whole state from a stream). Restore is split so that the shell can make the
 * switch part of its own synced batch (with the log truncation and meta/snapshot): stage
 * the chunks (`write`), put `switchOps()` in the batch, then `activate()`.
 */
export interface SnapshottingFsm<R> extends Fsm<R> {
  /** A consistent view of the whole state at its applied index, read lazily. */
  snapshot(): Promise<FsmSnapshot>;
  /** Starts staging a replacement state; one restore at a time. */
  beginRestore(): Promise<FsmRestore>;
}

/** A consistent view of the state (a LevelDB snapshot), read lazily as chunks. */
export interface FsmSnapshot {
  /** The applied index the view is at: it holds exactly the entries up to it. */
  readonly index: number;
  /**
   * The state as opaque chunks of at most `maxChunkBytes` each (a single record larger than
   * that goes alone), read lazily: never all in memory. May be iterated more than once.
   */
  chunks(maxChunkBytes: number): AsyncIterable<Uint8Array>;
  /** Frees what the snapshot holds (e.g. a LevelDB snapshot), whether or not it was read. */
  release(): void;
}

/**
 * A restore in progress: chunks go to a staging area that nothing reads. The old state
 * stays live (and may still be applied to) until the batch holding `switchOps()` is
 * written; then `activate()`. A crash before that batch leaves the old state, after it the
 * new one, never a mix.
 */
export interface FsmRestore {
  /** Stages one chunk (unsynced: the switch batch is synced). Bad data: a CairnError. */
  write(chunk: Uint8Array): Promise<void>;
  /** The applied index of the staged state (once its chunks are written). */
  appliedIndex(): number;
  /** The writes that make the staged state live, for the shell's one synced batch. No apply may run from here until activate(). */
  switchOps(): DbOp[];
  /** After the switch batch is written: serve the new state (and free the old one in the background). */
  activate(): Promise<void>;
  /** Drops the staged state; the old one stays. */
  abort(): Promise<void>;
}

/** Whether `fsm` can be snapshotted and restored. */
export function isSnapshotting<R>(fsm: Fsm<R>): fsm is SnapshottingFsm<R> {
  const candidate = fsm as Partial<SnapshottingFsm<R>>;
  return typeof candidate.snapshot === 'function' && typeof candidate.beginRestore === 'function';
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
