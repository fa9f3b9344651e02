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
 * A state machine that can also be snapshotted and restored, in hashicorp/raft's FSM
 * shape (issue 8). Its live LevelDB state is the snapshot of everything up to its applied
 * index: compaction needs nothing from it, InstallSnapshot streams it (snapshot) to a
 * follower that stages and switches to it (beginRestore).
 */
export interface SnapshottingFsm<R> extends Fsm<R> {
  /** A consistent, point-in-time view of the state at the current applied index. */
  snapshot(): Promise<FsmSnapshot>;
  /** Starts staging a snapshot into fresh storage, invisible until the switch. */
  beginRestore(): Promise<FsmRestore>;
}

/** A consistent view of the state (a LevelDB snapshot), read lazily as chunks. */
export interface FsmSnapshot {
  /** The applied index the view is at. */
  index: number;
  /** The state as encoded cairn.storage.v1.SnapshotBatch chunks of at most `maxChunkBytes` each. */
  chunks(maxChunkBytes: number): AsyncIterable<Uint8Array>;
  /** Frees what the view holds, whether or not it was read. */
  release(): void;
}

/**
 * A snapshot being staged. Restore is atomic: the staged data becomes live only through
 * switchOps, written in the same synced batch as the Raft side of the install.
 */
export interface FsmRestore {
  /** Stages one chunk (unsynced is fine: the switch batch syncs). */
  write(chunk: Uint8Array): Promise<void>;
  /** The applied index of the staged state (from its meta/applied). */
  appliedIndex(): number;
  /** The operations that make the staged state live, with its applied state. */
  switchOps(): DbOp[];
  /** After the switch batch is durable: serve the new state, drop the old one in the background. */
  activate(): Promise<void>;
  /** Drops what was staged; the live state is untouched. */
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
