import {
  AppendRequest,
  AppendResponse,
  ClusterConfig,
  ConfigChange,
  ConfigChangeType,
  Entry,
  EntryType,
  HardState,
  HeartbeatRequest,
  HeartbeatResponse,
  Message,
  SnapshotMeta,
  SnapshotOffer,
  VoteRequest,
  VoteResponse,
} from '../../gen/cairn/raft/v1/raft';
import { assert } from '../assert';
import { dataBytes, entryBytes, NO_SNAPSHOT, RaftLog, SnapshotPoint } from './log';
import { Progress } from './progress';
import {
  applyConfigChange,
  badConfigReason,
  ConfigHistory,
  configOfVoters,
  isMember,
  isRefusal,
  peersOf,
  PROMOTE_MAX_LAG_ENTRIES,
  quorumOf,
  voterIds,
} from './membership';
import { committedIndex, hasQuorum, isVoter, QuorumConfig, voteResult } from './quorum';
import { Random } from './random';

export type NodeId = number;
/** "Nobody": no leader known, no vote cast. Node ids are >= 1. */
export const NO_NODE: NodeId = 0;

export type Role = 'follower' | 'pre-candidate' | 'candidate' | 'leader';

/**
 * The highest term a node holds, campaigns for, or accepts from a peer: 2^52.
 *
 * uint64 fields are JavaScript numbers (ts-proto forceLong=number), and a number above
 * Number.MAX_SAFE_INTEGER (2^53 - 1) does not decode. Once a heartbeat with term
 * 2^53 - 1 was believed and saved, the next pre-vote asked for 2^53, which no node could
 * decode, and the cluster never elected again. So a message with a term above MAX_TERM is
 * refused before it touches any state, and a node never campaigns beyond it: every term
 * ever sent stays encodable and decodable, with a margin of 2^52 below the limit that no
 * arithmetic here can cross. 2^52 terms is more elections than any cluster holds (one a
 * millisecond for 140,000 years), so only a corrupt or hostile message gets near it.
 * A node whose term reaches MAX_TERM (only a message at exactly MAX_TERM can put it
 * there) stays a follower and says why in status().campaignBlocked; peers that can send
 * such a message at will must be kept out by authentication (TLS, a later issue).
 */
export const MAX_TERM = 2 ** 52;

/**
 * The highest log index (and commit, hint, or read round) a peer message may name: no
 * log gets near 2^52 entries, and staying far below 2^53 keeps `index + 1` exact.
 */
export const MAX_INDEX = 2 ** 52;

/**
 * How long (in election timeouts) a leader keeps replicating to a member whose removal has
 * committed, so that it learns of the removal and does not campaign; after that the member
 * is dropped (it may be down for good), and if it comes back it learns from a peer's refusal.
 */
export const REMOVED_MEMBER_GRACE_ELECTION_TIMEOUTS = 2;

/**
 * Read rounds (ReadIndex heartbeat rounds) a leader keeps waiting for their quorum at
 * once. One, as etcd does: under many concurrent reads each round carries every read
 * that arrived during the previous one, instead of a round (two heartbeats and their
 * answers, on every follower) per batch of reads. A lost round is retried by the next
 * periodic heartbeat, which carries the latest round number.
 */
export const MAX_READ_ROUNDS_IN_FLIGHT = 1;

/**
 * A follower whose connection from its leader broke campaigns within 1..this many ticks
 * (randomized, so that two followers seldom campaign at once), not after a whole
 * election timeout: a leader process that died is replaced in a few hundred ms.
 */
export const LEADER_LOST_CAMPAIGN_TICKS = 3;

export interface RaftConfig {
  id: NodeId;
  /**
   * The bootstrap voters (this node among them, unless it joins a running cluster): the
   * configuration when neither the log nor a snapshot holds one (see bootstrapConfig).
   */
  voters: readonly NodeId[];
  /**
   * The bootstrap configuration with addresses; when absent it is `voters` without
   * addresses. Once the log or a snapshot holds a config entry, that one wins.
   */
  bootstrapConfig?: ClusterConfig;
  /** A follower that hears no leader for this long (randomized up to twice it) campaigns. */
  electionTimeoutTicks: number;
  /** A leader sends heartbeats this often. Must be well below electionTimeoutTicks. */
  heartbeatIntervalTicks: number;
  /** Unanswered AppendRequests a leader keeps in flight per follower. */
  maxInflightAppends: number;
  /**
   * Entry bytes (entryBytes: data plus framing) of the unanswered AppendRequests a leader
   * keeps in flight per follower. With nothing in flight one AppendRequest goes whatever
   * its size, so an entry larger than the budget still moves.
   */
  maxInflightBytes: number;
  /** Entries in one AppendRequest. */
  maxEntriesPerAppend: number;
  /** Entry bytes (data plus framing) in one AppendRequest (one entry may exceed it alone). */
  maxBytesPerAppend: number;
  /**
   * Entry bytes of committed entries handed out in one Ready for applying (at least one
   * entry goes, whatever its size); the rest come in the next Ready.
   */
  maxCommittedBytesPerReady: number;
  /** Proposals beyond this many uncommitted entries are refused (back-pressure). */
  maxUncommittedEntries: number;
  /**
   * Proposals that would take the leader's uncommitted tail beyond this many entry bytes
   * are refused as 'overloaded'. A proposal is always accepted when the tail is empty,
   * so one larger than the whole budget is not refused for ever.
   */
  maxUncommittedBytes: number;
  /** Ask "would you vote for me?" before disrupting a cluster with a new term. */
  preVote: boolean;
  /** A leader that hears no majority for an election timeout steps down. */
  checkQuorum: boolean;
  random: Random;
}

export const DEFAULT_RAFT_CONFIG = {
  electionTimeoutTicks: 10,
  heartbeatIntervalTicks: 1,
  maxInflightAppends: 64,
  maxInflightBytes: 8 << 20, // 8 MiB: eight full AppendRequests per follower
  maxEntriesPerAppend: 512,
  maxBytesPerAppend: 1 << 20, // 1 MiB, well under gRPC's 4 MiB message limit
  maxCommittedBytesPerReady: 4 << 20, // 4 MiB per apply batch
  maxUncommittedEntries: 10_000,
  maxUncommittedBytes: 32 << 20, // 32 MiB of proposals waiting to commit
  preVote: true,
  checkQuorum: true,
} as const;

/** What a node resumes from after a restart: everything it had synced. */
export interface RestoredState {
  hardState: HardState;
  /** The persisted log after the snapshot point: indexes snapshot.index + 1 .. N, contiguous. */
  entries: readonly Entry[];
  /** The state machine's applied index (at least snapshot.index): entries up to it are not handed out again. */
  appliedIndex: number;
  /**
   * The last index and term the state machine's snapshot covers, and its configuration
   * (from meta/snapshot); NO_SNAPSHOT ({0, 0}) when absent. `entries` may start before
   * snapshot.index + 1 (compaction keeps a tail), never after it.
   */
  snapshot?: SnapshotPoint;
}

/** A linearizable read may be served once the state machine has applied `index`. */
export interface ReadGrant {
  readId: number;
  index: number;
}

/**
 * One batch of work for the shell, in this order:
 *   1. persist `hardState` and `entries` in one synced write, then call onPersisted
 *      (the messages for which sendableBeforePersist is true may go before it);
 *   2. only then send the other `messages` (they may promise what step 1 made durable:
 *      a vote, an acknowledgement of entries);
 *   3. apply `committed` in order (they are durable here already, so the shell may apply
 *      them while it persists the next Ready). A shell with its own apply path takes
 *      Readies with `withCommitted: false` and committed entries through takeCommitted(),
 *      one batch at a time;
 *   4. serve `reads` once applied >= their index; fail `failedReads`.
 */
export interface Ready {
  hardState?: HardState;
  /** Entries to persist. Persisted entries at or after entries[0].index are replaced. */
  entries: Entry[];
  messages: Message[];
  committed: Entry[];
  reads: ReadGrant[];
  failedReads: number[];
  /**
   * Leader: followers that need a snapshot (their next entry is compacted away). The shell
   * streams each one and calls reportSnapshot when the transfer ends.
   */
  snapshotsToSend: { to: NodeId }[];
  /**
   * Follower: a snapshot the core accepted from the leader. Before anything else in this
   * Ready, the shell persists it in one synced batch with the state machine's switch to
   * the staged data and the deletion of the log entries it replaces, then calls
   * onSnapshotPersisted; until then nothing is handed out for applying, and the answer to
   * the leader waits.
   */
  snapshot?: SnapshotMeta;
}

/**
 * Whether the shell may send `message` of `ready` before it has persisted the Ready:
 * a leader's AppendRequests and heartbeats, when the Ready changes no hard state. The
 * leader then writes its own log in parallel with replicating it (thesis §10.2.1); it
 * counts itself toward a commit only once onPersisted says its entries are durable
 * (maybeCommit counts the leader's stableIndex, not its lastIndex). A follower's
 * heartbeat answers go early too: they promise nothing the Ready writes. With a hard state
 * change in the Ready the term the messages carry may not be durable yet: a leader that
 * crashed before persisting it could lead the same term again with another log.
 * Everything else (votes, acknowledgements) promises durable state and waits.
 */
export function sendableBeforePersist(ready: Pick<Ready, 'hardState'>, message: Message): boolean {
  if (ready.hardState !== undefined) return false;
  const kind = message.body?.$case;
  // A follower's heartbeat answer promises only its term, durable already (no hard state
  // in this Ready): it need not wait for the entries being written (ReadIndex rounds).
  return kind === 'appendRequest' || kind === 'heartbeatRequest' || kind === 'heartbeatResponse';
}

export type ProposeResult =
  | { ok: true; index: number; term: number }
  | { ok: false; reason: 'not-leader' | 'overloaded' | 'transferring'; leader: NodeId };

/**
 * The answer to proposeConfigChange. 'invalid' carries `refusal` to tell a bad request
 * ('invalid') from a member that already exists or does not ('member-exists',
 * 'member-not-found').
 */
export type ConfigProposeResult =
  | { ok: true; index: number; term: number; config: ClusterConfig }
  | {
      ok: false;
      reason: 'not-leader' | 'pending' | 'transferring' | 'invalid' | 'not-caught-up';
      leader: NodeId;
      message: string;
      refusal?: 'invalid' | 'member-exists' | 'member-not-found';
    };

export type TransferResult =
  | { ok: true; target: NodeId }
  | { ok: false; reason: 'not-leader' | 'transferring' | 'invalid'; leader: NodeId; message: string };

export type ReadResult = { ok: true } | { ok: false; reason: 'not-leader'; leader: NodeId };

/** A batch of reads confirmed together by one heartbeat round. */
interface ReadRound {
  round: number;
  /** The commit index when the round's heartbeats went out. */
  index: number;
  readIds: number[];
  acks: Set<NodeId>;
}

/**
 * RaftNode is the consensus core: a deterministic state machine with no I/O.
 *
 * Inputs: tick(), step(message), propose(data), readIndex(readId), and
 * onPersisted(index, term) when storage has synced what a Ready asked for.
 * Outputs: ready(), which the shell drains and carries out in the order Ready documents.
 */
export class RaftNode {
  readonly id: NodeId;
  private readonly config: RaftConfig;
  /** Who counts for commit, votes, check-quorum and reads: the voters of the latest config. */
  private quorum: QuorumConfig;
  /** The configurations in the log (the latest is in force, committed or not). */
  private readonly configs: ConfigHistory;
  private readonly log: RaftLog;

  // Written only by the core; the shell and tests read them through the getters below.
  private currentRole: Role = 'follower';
  private currentTerm: number;
  private currentVote: NodeId;
  private currentLeader: NodeId = NO_NODE;

  get role(): Role {
    return this.currentRole;
  }

  get term(): number {
    return this.currentTerm;
  }

  /** The candidate this node voted for in the current term (NO_NODE if none). */
  get votedFor(): NodeId {
    return this.currentVote;
  }

  get leader(): NodeId {
    return this.currentLeader;
  }

  /** The log's indexes, read without building a whole status() (the shell asks on every Ready). */
  get commitIndex(): number {
    return this.log.commitIndex;
  }

  get lastIndex(): number {
    return this.log.lastIndex();
  }

  get snapshotIndex(): number {
    return this.log.snapshotIndex();
  }

  private lastSavedHardState: HardState;
  /** Ticks since start: Progress uses it to notice lost AppendRequests. */
  private ticks = 0;
  /**
   * Peer messages dropped because they were malformed or broke the protocol (a second
   * leader in our term, a commit beyond our log). A correct cluster never produces
   * one; the simulator asserts the count stays zero. A node never crashes on them.
   */
  readonly rejectedMessages: string[] = [];
  /** Every rejected peer message, including those beyond the ones rejectedMessages keeps. */
  rejectedMessageCount = 0;
  private electionElapsedTicks = 0;
  private heartbeatElapsedTicks = 0;
  private randomizedElectionTimeoutTicks = 0;
  private votes = new Map<NodeId, boolean>();
  private progress = new Map<NodeId, Progress>();
  private outbox: Message[] = [];

  /** Leader: whether an entry of the current term has been committed. */
  private committedInTerm = false;
  private readsAwaitingTermCommit: number[] = [];
  private openReadRound: number[] = [];
  private sealedReadRounds: ReadRound[] = [];
  private lastReadRound = 0;
  private grantedReads: ReadGrant[] = [];
  private failedReads: number[] = [];

  /** Leader: followers whose snapshot transfer the shell has not been asked for yet. */
  private snapshotsToSend: { to: NodeId }[] = [];
  /**
   * Follower: an accepted snapshot that is not yet durable, whether it was handed out in a
   * Ready, and the answer to send its leader once it is.
   */
  private pendingSnapshot: { meta: SnapshotMeta; handedOut: boolean; leader: NodeId; term: number } | undefined;

  /**
   * Leader: members the latest (committed) config removed that are still replicated to so
   * that they learn of their removal, with the tick after which they no longer are.
   */
  private readonly removedMemberDeadlines = new Map<NodeId, number>();
  /** Leader: the voter leadership is being handed to (NO_NODE: no transfer under way). */
  private currentTransferee: NodeId = NO_NODE;
  private transferElapsedTicks = 0;
  private timeoutNowSent = false;
  /** The voters whose votes made this node leader of its current term (for invariant checks). */
  private electedBy: NodeId[] = [];

  /** Leader: the voter a leadership transfer is handing over to, NO_NODE when none. */
  get transferee(): NodeId {
    return this.currentTransferee;
  }

  constructor(config: RaftConfig, restored: RestoredState) {
    validateConfig(config);
    this.config = config;
    this.id = config.id;
    this.currentTerm = restored.hardState.term;
    this.currentVote = restored.hardState.votedFor;
    this.lastSavedHardState = { ...restored.hardState };
    const snapshot = restored.snapshot ?? NO_SNAPSHOT;
    this.log = RaftLog.restore(restored.entries, restored.appliedIndex, { index: snapshot.index, term: snapshot.term });
    this.configs = new ConfigHistory(restored.snapshot?.config ?? config.bootstrapConfig ?? configOfVoters(config.voters));
    this.noteConfigEntriesFrom(this.log.firstIndex());
    this.quorum = quorumOf(this.configs.latest());
    assert(this.log.lastTerm() <= this.term, () => `log term ${this.log.lastTerm()} above hard-state term ${this.term}`);
    this.resetElectionTimer();
  }

  // ---------------------------------------------------------------- inputs

  tick(): void {
    this.ticks++;
    if (this.role === 'leader') {
      this.tickLeader();
    } else {
      this.tickElection();
    }
  }

  step(message: Message): void {
    // Who may send is the transport's business (it follows the current config); here
    // only voters of the current config count, through the quorum.
    const malformed = malformedReason(message, this.id);
    if (malformed) return this.rejectMessage(message, malformed);
    if (!this.stepTerm(message)) return;
    switch (message.body?.$case) {
      case 'voteRequest':
        return this.handleVoteRequest(message, message.body.value);
      case 'voteResponse':
        return this.handleVoteResponse(message, message.body.value);
      case 'appendRequest':
        return this.handleAppendRequest(message, message.body.value);
      case 'appendResponse':
        return this.handleAppendResponse(message, message.body.value);
      case 'heartbeatRequest':
        return this.handleHeartbeatRequest(message, message.body.value);
      case 'heartbeatResponse':
        return this.handleHeartbeatResponse(message, message.body.value);
      case 'installSnapshot':
        return this.handleInstallSnapshot(message, message.body.value);
      case 'timeoutNow':
        return this.handleTimeoutNow(message);
      default:
        return;
    }
  }

  /** Appends a command to the leader's log. It is replicated in the next Ready. */
  propose(data: Uint8Array): ProposeResult {
    if (this.role !== 'leader') return { ok: false, reason: 'not-leader', leader: this.leader };
    if (this.transferee !== NO_NODE) return { ok: false, reason: 'transferring', leader: this.id };
    if (this.log.lastIndex() - this.log.commitIndex >= this.config.maxUncommittedEntries || this.uncommittedBytesExceeded(data)) {
      return { ok: false, reason: 'overloaded', leader: this.id };
    }
    const index = this.appendAsLeader(EntryType.ENTRY_TYPE_COMMAND, data);
    return { ok: true, index, term: this.term };
  }

  /**
   * Asks for a linearizable read. The answer comes in a later Ready: a ReadGrant with
   * the index to wait for, or a failed read if leadership is lost first.
   */
  readIndex(readId: number): ReadResult {
    if (this.role !== 'leader') return { ok: false, reason: 'not-leader', leader: this.leader };
    if (!this.committedInTerm) {
      this.readsAwaitingTermCommit.push(readId);
    } else if (this.aloneIsQuorum()) {
      this.grantedReads.push({ readId, index: this.log.commitIndex });
    } else {
      this.openReadRound.push(readId);
    }
    return { ok: true };
  }

  /**
   * The shell saw the connection from peer `id` break (its stream ended without a clean
   * close: the process died, or the network dropped it). If `id` is our leader we stop
   * trusting it: its lease ends (we grant votes again) and we campaign within
   * LEADER_LOST_CAMPAIGN_TICKS rather than after a whole election timeout. Safety never
   * rests on this (Raft's does not rest on timing); if the leader is in fact alive, the
   * pre-vote fails at the peers that still hear it and its next heartbeat brings us back.
   * For lease reads, should they come: this ends the follower's vote lease early
   * (inLease), so a leader may no longer assume that no one is elected within an election
   * timeout of its last quorum contact.
   */
  leaderConnectionLost(id: NodeId): void {
    if (this.role !== 'follower' || id === NO_NODE || this.leader !== id) return;
    this.currentLeader = NO_NODE;
    const waitTicks = 1 + this.config.random.int(LEADER_LOST_CAMPAIGN_TICKS);
    this.randomizedElectionTimeoutTicks = Math.min(this.randomizedElectionTimeoutTicks, this.electionElapsedTicks + waitTicks);
  }

  /** Storage has synced the entries of a Ready up to (index, term). */
  onPersisted(index: number, term: number): void {
    this.log.markStable(index, term);
    if (this.role === 'leader') this.maybeCommit();
  }

  // ------------------------------------------------------------ snapshots

  /**
   * Compaction (decided by the shell): the snapshot point moves to `index`, an index the
   * state machine has applied (its live state is the snapshot), and the entries up to
   * index - catchupEntries leave memory; the ones between stay for slow followers. The
   * shell persists both (meta/snapshot and the log deletions, one synced batch).
   * An index at or below the current snapshot point changes nothing.
   */
  compact(index: number, catchupEntries: number): { snapshot: SnapshotMeta; compactThrough: number } {
    assert(Number.isSafeInteger(catchupEntries) && catchupEntries >= 0, () => `catchup entries ${catchupEntries} is not a non-negative integer`);
    assert(index <= this.log.appliedIndex, () => `compaction at ${index} beyond the applied index ${this.log.appliedIndex}`);
    const at = Math.max(index, this.log.snapshotIndex());
    const snapshot = this.snapshotMetaAt(at);
    const compactThrough = Math.max(this.log.firstIndex() - 1, at - catchupEntries);
    this.log.compact({ index: snapshot.index, term: snapshot.term, config: snapshot.config }, compactThrough);
    this.configs.compactTo(snapshot.index);
    return { snapshot, compactThrough: Math.min(compactThrough, at) };
  }

  /** What a snapshot of the state at `index` covers: its index, term and configuration. */
  snapshotMetaAt(index: number): SnapshotMeta {
    assert(index >= this.log.snapshotIndex() && index <= this.log.lastIndex(), () => `no snapshot meta at ${index}: the log holds ${this.log.snapshotIndex()}..${this.log.lastIndex()}`);
    const term = this.log.termAt(index);
    assert(term !== undefined, () => `no term at ${index}`);
    return { index, term, config: this.configAt(index) };
  }

  /**
   * The leader's shell ended the snapshot transfer to `to`: 'failed' (the follower did
   * not install it) goes back to probing, paused until the follower is heard from;
   * 'finished' means the follower installed the snapshot at `installedIndex`, which
   * counts as its acknowledgement of that index. Ignored unless that follower is
   * receiving a snapshot (leadership may have changed since).
   */
  reportSnapshot(to: NodeId, outcome: 'failed'): void;
  reportSnapshot(to: NodeId, outcome: 'finished', installedIndex: number): void;
  reportSnapshot(to: NodeId, outcome: 'failed' | 'finished', installedIndex?: number): void {
    const pr = this.progress.get(to);
    if (this.role !== 'leader' || !pr || pr.state !== 'snapshot') return;
    if (outcome === 'finished') {
      assert(installedIndex !== undefined && installedIndex <= this.log.lastIndex(), () => `follower ${to} installed a snapshot at ${installedIndex}, beyond our log`);
      pr.snapshotEnded(installedIndex, this.ticks);
      this.maybeCommit();
    } else {
      pr.snapshotEnded(undefined, this.ticks);
    }
  }

  /** The shell has synced the snapshot of a Ready (index = its meta.index): the answer to the leader may go. */
  onSnapshotPersisted(index: number): void {
    const pending = this.pendingSnapshot;
    assert(pending !== undefined && pending.handedOut && pending.meta.index === index, () => `snapshot ${index} persisted, but the pending one is ${pending?.meta.index}`);
    this.pendingSnapshot = undefined;
    // The acknowledgement speaks of durable state only now; if the term moved on, the
    // leader that sent the snapshot is gone and the next one probes afresh.
    if (this.term === pending.term) this.acceptAppend(pending.leader, index);
  }

  /** The snapshot this node accepted and has not yet persisted (undefined when none). */
  pendingSnapshotMeta(): SnapshotMeta | undefined {
    return this.pendingSnapshot?.meta;
  }

  // --------------------------------------------------------------- outputs

  /**
   * Whether ready() has work. `withCommitted: false` leaves committed entries out (the
   * shell is still applying the previous batch, and takes them once it is done).
   */
  hasReady({ withCommitted = true }: { withCommitted?: boolean } = {}): boolean {
    return (
      this.outbox.length > 0 ||
      this.log.hasUnstable() ||
      (withCommitted && this.hasCommittedToApply()) ||
      this.hardStateChanged() ||
      this.grantedReads.length > 0 ||
      this.failedReads.length > 0 ||
      this.snapshotsToSend.length > 0 ||
      (this.pendingSnapshot !== undefined && !this.pendingSnapshot.handedOut) ||
      (this.role === 'leader' && (this.mayOpenReadRound() || this.hasUnsentEntries()))
    );
  }

  /**
   * Committed entries that are durable here and not yet handed out (at most
   * maxCommittedBytesPerReady of them), for a shell whose apply path takes them on its own
   * instead of through ready() (so that a commit learned while a Ready is being persisted
   * is applied at once, not after that fsync). None while a snapshot waits to be installed:
   * nothing is applied on top of a snapshot that is not yet installed.
   */
  takeCommitted(): Entry[] {
    if (this.pendingSnapshot) return [];
    return this.log.takeCommitted(this.config.maxCommittedBytesPerReady);
  }

  /** Entry bytes committed here but not yet applied by a state machine at `appliedIndex`. */
  committedBytesAfter(appliedIndex: number): number {
    return this.log.bytesBetween(Math.max(appliedIndex + 1, this.log.firstIndex()), this.log.commitIndex);
  }

  /** Whether takeCommitted() has entries. */
  hasCommittedToApply(): boolean {
    return this.pendingSnapshot === undefined && this.log.hasCommitted();
  }

  /** The next batch of work; `withCommitted: false` keeps committed entries for a later call. */
  ready({ withCommitted = true }: { withCommitted?: boolean } = {}): Ready {
    if (this.role === 'leader') {
      this.broadcastAppend();
      this.sealReadRound();
    }
    const hardState = this.hardStateChanged() ? { term: this.term, votedFor: this.votedFor } : undefined;
    if (hardState) this.lastSavedHardState = hardState;
    const snapshot = this.pendingSnapshot && !this.pendingSnapshot.handedOut ? this.pendingSnapshot.meta : undefined;
    if (this.pendingSnapshot) this.pendingSnapshot.handedOut = true;
    const ready: Ready = {
      hardState,
      entries: this.log.takeUnstable(),
      messages: this.outbox,
      committed: withCommitted ? this.takeCommitted() : [],
      reads: this.grantedReads,
      failedReads: this.failedReads,
      snapshotsToSend: this.snapshotsToSend,
      snapshot,
    };
    this.outbox = [];
    this.grantedReads = [];
    this.failedReads = [];
    this.snapshotsToSend = [];
    return ready;
  }

  // ----------------------------------------------------------- inspection

  status() {
    return {
      id: this.id,
      role: this.role,
      term: this.term,
      votedFor: this.votedFor,
      leader: this.leader,
      commitIndex: this.log.commitIndex,
      appliedIndex: this.log.appliedIndex,
      stableIndex: this.log.stableIndex,
      lastIndex: this.log.lastIndex(),
      lastTerm: this.log.lastTerm(),
      snapshotIndex: this.log.snapshotIndex(),
      firstIndex: this.log.firstIndex(),
      uncommittedBytes: this.log.uncommittedBytes(),
      campaignBlocked: this.campaignBlockedReason(),
      config: this.clusterConfig(),
      transferee: this.transferee,
      electedBy: this.role === 'leader' ? [...this.electedBy] : [],
      progress: [...this.progress].map(([id, pr]) => ({
        id,
        state: pr.state,
        matchIndex: pr.matchIndex,
        nextIndex: pr.nextIndex,
        inflight: pr.inflightCount(),
        inflightBytes: pr.inflightByteCount(),
      })),
    };
  }

  /** Read access for invariant checkers in tests. */
  entryAt(index: number): Entry | undefined {
    return index >= this.log.firstIndex() && index <= this.log.lastIndex() ? this.log.entry(index) : undefined;
  }

  // ----------------------------------------------------------------- terms

  /**
   * Applies the term rules every message passes first. Returns false when the message
   * is to be dropped.
   */
  private stepTerm(m: Message): boolean {
    const kind = m.body?.$case;
    const preVoteRequest = m.body?.$case === 'voteRequest' && m.body.value.preVote;
    const grantedPreVote = m.body?.$case === 'voteResponse' && m.body.value.preVote && m.body.value.granted;
    if (m.term > this.term) {
      const transferVote = m.body?.$case === 'voteRequest' && m.body.value.leadershipTransfer && !m.body.value.preVote;
      if (kind === 'voteRequest' && this.inLease() && !transferVote) {
        return false; // a leader we heard recently is alive: don't let a partitioned node disrupt it
      }
      if (preVoteRequest || grantedPreVote) return true; // pre-votes speak of a future term
      const fromLeader = kind === 'appendRequest' || kind === 'heartbeatRequest' || kind === 'installSnapshot';
      this.becomeFollower(m.term, fromLeader ? m.fromId : NO_NODE);
      return true;
    }
    if (m.term < this.term) {
      if (kind === 'appendRequest' || kind === 'heartbeatRequest' || kind === 'installSnapshot') {
        // A stale leader: tell it our term so it steps down (it may be cut off by
        // check-quorum or pre-vote from ever learning it otherwise).
        this.send(m.fromId, { $case: 'appendResponse', value: { index: 0, rejected: true, hintIndex: 0, hintTerm: 0 } });
      } else if (preVoteRequest) {
        this.send(m.fromId, { $case: 'voteResponse', value: { granted: false, preVote: true } });
      }
      return false;
    }
    return true;
  }

  /**
   * A follower that heard from its leader within the election timeout trusts it is
   * alive; a leader trusts itself until check-quorum says otherwise.
   */
  private inLease(): boolean {
    return (
      this.config.checkQuorum &&
      this.leader !== NO_NODE &&
      (this.role === 'follower' || this.role === 'leader') &&
      this.electionElapsedTicks < this.config.electionTimeoutTicks
    );
  }

  // ----------------------------------------------------------------- roles

  private becomeFollower(term: number, leader: NodeId): void {
    assert(term >= this.term, () => `becomeFollower to term ${term} below ${this.term}`);
    const wasLeader = this.role === 'leader';
    if (term > this.term) {
      this.currentTerm = term;
      this.currentVote = NO_NODE;
    }
    this.currentRole = 'follower';
    this.currentLeader = leader;
    this.resetElectionTimer();
    if (wasLeader) this.dropLeaderState();
  }

  private becomePreCandidate(): void {
    assert(this.role !== 'leader', 'a leader does not campaign');
    this.currentRole = 'pre-candidate';
    this.currentLeader = NO_NODE;
    this.votes = new Map();
    this.resetElectionTimer();
    this.requestVotes(true);
  }

  private becomeCandidate(leadershipTransfer = false): void {
    assert(this.role !== 'leader', 'a leader does not campaign');
    assert(this.term < MAX_TERM, () => `campaign beyond MAX_TERM from term ${this.term}`);
    this.currentTerm += 1;
    this.currentVote = this.id;
    this.currentRole = 'candidate';
    this.currentLeader = NO_NODE;
    this.votes = new Map();
    this.resetElectionTimer();
    this.requestVotes(false, leadershipTransfer);
  }

  private becomeLeader(): void {
    assert(this.role === 'candidate', () => `only a candidate becomes leader, not a ${this.role}`);
    assert(this.votedFor === this.id, 'a leader voted for itself');
    this.currentRole = 'leader';
    this.currentLeader = this.id;
    this.heartbeatElapsedTicks = 0;
    this.electionElapsedTicks = 0;
    this.committedInTerm = false;
    assert(this.mayCampaign(), () => `node ${this.id} leads without being a voter of its config`);
    this.electedBy = [...this.votes].filter(([id, granted]) => granted && isVoter(this.quorum, id)).map(([id]) => id);
    this.progress = new Map();
    this.removedMemberDeadlines.clear();
    this.syncProgressWithConfig();
    this.appendAsLeader(EntryType.ENTRY_TYPE_NOOP, new Uint8Array(0));
  }

  private dropLeaderState(): void {
    this.progress = new Map();
    this.snapshotsToSend = [];
    this.failedReads.push(...this.readsAwaitingTermCommit, ...this.openReadRound);
    for (const round of this.sealedReadRounds) this.failedReads.push(...round.readIds);
    this.readsAwaitingTermCommit = [];
    this.openReadRound = [];
    this.sealedReadRounds = [];
    this.committedInTerm = false;
    this.endTransfer();
  }

  // ------------------------------------------------------------- elections

  private tickElection(): void {
    this.electionElapsedTicks++;
    if (this.electionElapsedTicks < this.randomizedElectionTimeoutTicks) return;
    if (!this.mayCampaign()) return; // learners and removed members never campaign
    if (this.campaignBlockedReason()) {
      // Stay a follower: a leader at this term can still be followed, and no crash.
      this.becomeFollower(this.term, NO_NODE);
      return;
    }
    if (this.config.preVote) {
      this.becomePreCandidate();
    } else {
      this.becomeCandidate();
    }
    this.tallyVotes();
  }

  /** Why this node may not campaign, if it may not: its next term would pass MAX_TERM. */
  private campaignBlockedReason(): string | undefined {
    if (this.term < MAX_TERM) return undefined;
    return `term ${this.term} has reached MAX_TERM (${MAX_TERM}): this node will not campaign`;
  }

  private requestVotes(preVote: boolean, leadershipTransfer = false): void {
    this.votes.set(this.id, true);
    const term = preVote ? this.term + 1 : this.term;
    const request: VoteRequest = { lastLogIndex: this.log.lastIndex(), lastLogTerm: this.log.lastTerm(), preVote, leadershipTransfer };
    for (const voter of voterIds(this.configs.latest())) {
      if (voter !== this.id) this.send(voter, { $case: 'voteRequest', value: request }, term);
    }
  }

  private handleVoteRequest(m: Message, request: VoteRequest): void {
    const alreadyVotedForIt = this.votedFor === m.fromId;
    const freeToVote = this.votedFor === NO_NODE && this.leader === NO_NODE;
    const futureTerm = request.preVote && m.term > this.term;
    const grant =
      (alreadyVotedForIt || freeToVote || futureTerm) && this.log.isUpToDate(request.lastLogIndex, request.lastLogTerm);
    if (grant && !request.preVote) {
      this.currentVote = m.fromId;
      this.electionElapsedTicks = 0;
    }
    const responseTerm = request.preVote && grant ? m.term : this.term;
    this.send(m.fromId, { $case: 'voteResponse', value: { granted: grant, preVote: request.preVote } }, responseTerm);
  }

  private handleVoteResponse(m: Message, response: VoteResponse): void {
    const expectPreVote = this.role === 'pre-candidate';
    if (this.role !== 'pre-candidate' && this.role !== 'candidate') return;
    if (response.preVote !== expectPreVote) return;
    // A granted pre-vote names our term + 1; any other is left over from an earlier round.
    if (response.preVote && response.granted && m.term !== this.term + 1) return;
    this.votes.set(m.fromId, response.granted);
    this.tallyVotes();
  }

  private tallyVotes(): void {
    const result = voteResult(this.quorum, this.votes);
    if (result === 'won') {
      if (this.role === 'pre-candidate') {
        this.becomeCandidate();
        this.tallyVotes(); // a single-node cluster wins at once
      } else if (this.role === 'candidate') {
        this.becomeLeader();
      }
    } else if (result === 'lost') {
      this.becomeFollower(this.term, NO_NODE);
    }
  }

  // ----------------------------------------------------------- replication

  private appendAsLeader(type: EntryType, data: Uint8Array): number {
    const index = this.log.lastIndex() + 1;
    this.log.appendAsLeader({ index, term: this.term, type, data: Buffer.from(data.buffer, data.byteOffset, data.byteLength) });
    if (this.aloneIsQuorum()) this.maybeCommit(); // commits once persisted
    return index;
  }

  /** Whether a new proposal of `data` would take the uncommitted tail beyond maxUncommittedBytes. */
  private uncommittedBytesExceeded(data: Uint8Array): boolean {
    const tailBytes = this.log.uncommittedBytes();
    if (tailBytes === 0) return false; // alone it always goes, or a huge entry would wait for ever
    return tailBytes + dataBytes(data) > this.config.maxUncommittedBytes;
  }

  private hasUnsentEntries(): boolean {
    for (const pr of this.progress.values()) {
      if (this.appendBudgetBytes(pr) !== undefined) return true;
    }
    return false;
  }

  /** Sends every follower what it is missing, as far as its window allows. */
  private broadcastAppend(): void {
    for (const [id, pr] of this.progress) {
      for (let budget = this.appendBudgetBytes(pr); budget !== undefined; budget = this.appendBudgetBytes(pr)) {
        this.sendAppend(id, pr, budget);
      }
    }
  }

  /**
   * The entry bytes the next AppendRequest to this follower may carry, or undefined when
   * nothing may go now: nothing is missing, the window is full by count, or the next
   * entry does not fit in the bytes left in flight. With nothing in flight the next entry
   * always goes, whatever its size; an entry larger than maxBytesPerAppend goes alone
   * (RaftLog.slice) as soon as it fits in the in-flight bytes, without draining the pipeline.
   */
  private appendBudgetBytes(pr: Progress): number | undefined {
    if (!pr.canSend() || pr.nextIndex > this.log.lastIndex()) return undefined;
    if (this.needsSnapshot(pr)) return this.config.maxBytesPerAppend;
    const availableBytes = pr.availableInflightBytes();
    if (pr.inflightCount() > 0 && entryBytes(this.log.entry(pr.nextIndex)) > availableBytes) return undefined;
    return Math.min(this.config.maxBytesPerAppend, availableBytes);
  }

  private sendAppend(to: NodeId, pr: Progress, budgetBytes: number): void {
    if (this.needsSnapshot(pr)) return this.sendSnapshot(to, pr);
    const prevLogIndex = pr.nextIndex - 1;
    const prevLogTerm = this.log.termAt(prevLogIndex);
    assert(prevLogTerm !== undefined, () => `no term for prev index ${prevLogIndex} (last ${this.log.lastIndex()})`);
    const entries = this.log.slice(pr.nextIndex, this.config.maxEntriesPerAppend, budgetBytes);
    const request: AppendRequest = { prevLogIndex, prevLogTerm, entries, commit: this.log.commitIndex };
    this.send(to, { $case: 'appendRequest', value: request });
    const lastIndex = prevLogIndex + entries.length;
    pr.sent(lastIndex, this.log.bytesBetween(pr.nextIndex, lastIndex), this.ticks);
  }

  /**
   * Whether the follower needs entries the log no longer holds: the leader cannot name
   * the term of its prev index (compacted away), so no AppendRequest can match. That is
   * where InstallSnapshot takes over.
   */
  private needsSnapshot(pr: Progress): boolean {
    return this.log.termAt(pr.nextIndex - 1) === undefined;
  }

  /** Asks the shell to stream a snapshot to `to`, and appends nothing to it meanwhile. */
  private sendSnapshot(to: NodeId, pr: Progress): void {
    pr.becomeSnapshot(this.log.snapshotIndex());
    this.snapshotsToSend.push({ to });
  }

  /**
   * A snapshot from the leader, staged whole by the shell (the term rules have passed).
   * At or below the commit index it adds nothing: the answer is the commit index, and
   * the shell discards what it staged. Otherwise it is accepted (Raft Figure 13) and
   * handed to the shell in the next Ready; the answer waits until it is durable.
   */
  private handleInstallSnapshot(m: Message, offer: SnapshotOffer): void {
    if (this.role === 'leader') return this.rejectMessage(m, `a second leader in our term ${this.term}`);
    this.becomeFollower(this.term, m.fromId);
    const meta = offer.meta!;
    if (this.pendingSnapshot !== undefined) return; // one install at a time; the leader's shell retries
    if (meta.index <= this.log.commitIndex) return this.acceptAppend(m.fromId, this.log.commitIndex);
    const { keptTail } = this.log.installSnapshot({ index: meta.index, term: meta.term, config: meta.config });
    // The snapshot's configuration is the one at its index; a kept tail's config entries follow it.
    if (keptTail) this.configs.compactTo(meta.index);
    else this.configs.reset(meta.config!); // malformedReason vetted it
    this.onConfigChanged();
    this.pendingSnapshot = { meta, handedOut: false, leader: m.fromId, term: this.term };
  }

  private handleAppendRequest(m: Message, request: AppendRequest): void {
    if (this.role === 'leader') return this.rejectMessage(m, `a second leader in our term ${this.term}`);
    this.becomeFollower(this.term, m.fromId);
    if (request.prevLogIndex < this.log.commitIndex) {
      // Everything up to our commit index matches the leader's log already.
      const skip = this.log.commitIndex - request.prevLogIndex;
      if (skip >= request.entries.length) {
        return this.acceptAppend(m.fromId, this.log.commitIndex);
      }
      request = { ...request, prevLogIndex: this.log.commitIndex, prevLogTerm: this.log.termAt(this.log.commitIndex)!, entries: request.entries.slice(skip) };
    }
    if (this.log.termAt(request.prevLogIndex) !== request.prevLogTerm) {
      return this.rejectAppend(m.fromId, request);
    }
    const firstChanged = request.entries.find((e) => this.log.termAt(e.index) !== e.term)?.index;
    const lastNewIndex = this.log.appendFromLeader(request.prevLogIndex, request.entries);
    if (firstChanged !== undefined) this.onLogChangedFrom(firstChanged);
    this.log.commitTo(Math.min(request.commit, lastNewIndex));
    this.acceptAppend(m.fromId, lastNewIndex);
  }

  private acceptAppend(leader: NodeId, index: number): void {
    this.send(leader, { $case: 'appendResponse', value: { index, rejected: false, hintIndex: 0, hintTerm: 0 } });
  }

  private rejectAppend(leader: NodeId, request: AppendRequest): void {
    const hintIndex = this.log.findConflictByTerm(
      Math.min(request.prevLogIndex, this.log.lastIndex()),
      request.prevLogTerm,
    );
    const hintTerm = this.log.termAt(hintIndex)!;
    const response: AppendResponse = { index: request.prevLogIndex, rejected: true, hintIndex, hintTerm };
    this.send(leader, { $case: 'appendResponse', value: response });
  }

  private handleAppendResponse(m: Message, response: AppendResponse): void {
    if (this.role !== 'leader') return;
    const pr = this.progress.get(m.fromId);
    if (!pr) return;
    pr.recentlyActive = true;
    if (response.index > this.log.lastIndex()) return this.rejectMessage(m, `acknowledges ${response.index} beyond our log`);
    pr.heardAtTick = this.ticks;
    if (response.rejected) {
      this.handleAppendRejection(pr, response);
    } else if (pr.acknowledge(response.index, this.ticks)) {
      this.maybeSendTimeoutNow();
      this.maybeCommit();
      if (this.role === 'leader' && !isMember(this.configs.latest(), m.fromId)) this.syncProgressWithConfig(); // a removed member caught up with its removal
    }
  }

  private handleAppendRejection(pr: Progress, response: AppendResponse): void {
    const stale = pr.state === 'replicate' ? response.index <= pr.matchIndex : response.index !== pr.nextIndex - 1;
    if (stale) return;
    const agreeUpTo = this.log.findConflictByTerm(response.hintIndex, response.hintTerm);
    pr.becomeProbe(Math.max(pr.matchIndex + 1, Math.min(agreeUpTo, response.index - 1) + 1));
  }

  /** Commits the highest index a majority holds, if it is of the current term. */
  private maybeCommit(): void {
    const quorumIndex = committedIndex(this.quorum, (id) => (id === this.id ? this.log.stableIndex : this.progress.get(id)!.matchIndex));
    assert(Number.isSafeInteger(quorumIndex), () => `quorum index ${quorumIndex} of a config without voters`);
    if (quorumIndex <= this.log.commitIndex) return;
    // Raft §5.4.2: an entry of an earlier term is committed only indirectly, by
    // committing one of the current term after it.
    if (this.log.termAt(quorumIndex) !== this.term) return;
    const configWasPending = this.configs.latestIndex() > this.log.commitIndex;
    this.log.commitTo(quorumIndex);
    if (configWasPending && this.configs.latestIndex() <= this.log.commitIndex) this.syncProgressWithConfig();
    if (!this.committedInTerm) {
      this.committedInTerm = true;
      this.openReadRound.push(...this.readsAwaitingTermCommit);
      this.readsAwaitingTermCommit = [];
      if (this.aloneIsQuorum()) this.grantSingleNodeReads();
    }
    this.maybeStepDownAfterRemoval();
  }

  private grantSingleNodeReads(): void {
    for (const readId of this.openReadRound) this.grantedReads.push({ readId, index: this.log.commitIndex });
    this.openReadRound = [];
  }

  // ------------------------------------------------- heartbeats and reads

  private tickLeader(): void {
    this.heartbeatElapsedTicks++;
    this.electionElapsedTicks++;
    if (this.removedMemberDeadlines.size > 0 && [...this.removedMemberDeadlines.values()].some((deadline) => this.ticks >= deadline)) {
      this.syncProgressWithConfig();
    }
    if (this.transferee !== NO_NODE && ++this.transferElapsedTicks >= this.config.electionTimeoutTicks) {
      this.endTransfer(); // the target did not win in time: proposals resume
    }
    if (this.electionElapsedTicks >= this.config.electionTimeoutTicks) {
      this.electionElapsedTicks = 0;
      if (this.config.checkQuorum && !this.hasActiveQuorum()) {
        this.becomeFollower(this.term, NO_NODE);
        return;
      }
    }
    if (this.heartbeatElapsedTicks >= this.config.heartbeatIntervalTicks) {
      this.heartbeatElapsedTicks = 0;
      this.broadcastHeartbeat(this.lastReadRound);
    }
  }

  private hasActiveQuorum(): boolean {
    const active = new Set([this.id]);
    for (const [id, pr] of this.progress) {
      if (pr.recentlyActive) active.add(id);
      pr.recentlyActive = false;
    }
    return hasQuorum(this.quorum, active);
  }

  private broadcastHeartbeat(readRound: number): void {
    for (const [id, pr] of this.progress) {
      const request: HeartbeatRequest = { commit: Math.min(this.log.commitIndex, pr.matchIndex), readRound };
      this.send(id, { $case: 'heartbeatRequest', value: request });
    }
  }

  /**
   * Reads that arrived since the last round share one heartbeat round, and at most
   * MAX_READ_ROUNDS_IN_FLIGHT rounds wait for their quorum at once: reads that arrive
   * meanwhile gather for the next round, which goes out as soon as one is confirmed
   * (so heartbeat rounds follow the round trip, not the rate of reads).
   */
  private sealReadRound(): void {
    if (!this.mayOpenReadRound()) return;
    const round: ReadRound = {
      round: ++this.lastReadRound,
      index: this.log.commitIndex,
      readIds: this.openReadRound,
      acks: new Set([this.id]),
    };
    this.openReadRound = [];
    this.sealedReadRounds.push(round);
    this.broadcastHeartbeat(round.round);
  }

  private mayOpenReadRound(): boolean {
    return this.openReadRound.length > 0 && this.sealedReadRounds.length < MAX_READ_ROUNDS_IN_FLIGHT;
  }

  private handleHeartbeatRequest(m: Message, request: HeartbeatRequest): void {
    if (this.role === 'leader') return this.rejectMessage(m, `a second leader in our term ${this.term}`);
    this.becomeFollower(this.term, m.fromId);
    if (request.commit > this.log.lastIndex()) return this.rejectMessage(m, `commit ${request.commit} beyond our log`);
    this.log.commitTo(request.commit);
    this.send(m.fromId, { $case: 'heartbeatResponse', value: { readRound: request.readRound } });
  }

  private handleHeartbeatResponse(m: Message, response: HeartbeatResponse): void {
    if (this.role !== 'leader') return;
    const pr = this.progress.get(m.fromId);
    if (!pr) return;
    pr.recentlyActive = true;
    pr.heardAtTick = this.ticks;
    this.resendIfStalled(pr);
    if (response.readRound > 0) this.acknowledgeReadRound(m.fromId, response.readRound);
  }

  /** A heartbeat answer shows the follower is reachable: resend what seems lost. */
  private resendIfStalled(pr: Progress): void {
    const quietTicks = Math.max(2 * this.config.heartbeatIntervalTicks, Math.ceil(this.config.electionTimeoutTicks / 2));
    if (pr.matchIndex >= this.log.lastIndex() || !pr.isStalled(this.ticks, quietTicks)) return;
    if (pr.state === 'probe') {
      pr.probeSent = false;
    } else {
      pr.becomeProbe(pr.matchIndex + 1);
    }
  }

  private acknowledgeReadRound(from: NodeId, roundId: number): void {
    let confirmedUpTo = -1;
    for (const [i, round] of this.sealedReadRounds.entries()) {
      if (round.round > roundId) break;
      round.acks.add(from);
      if (hasQuorum(this.quorum, round.acks)) confirmedUpTo = i;
    }
    if (confirmedUpTo < 0) return;
    // Confirming a later round also confirms every earlier one: leadership was
    // proven after all of their reads arrived.
    this.grantReadRounds(this.sealedReadRounds.splice(0, confirmedUpTo + 1));
  }

  /** Every read of these confirmed rounds may be served once its round's index is applied. */
  private grantReadRounds(rounds: readonly ReadRound[]): void {
    for (const round of rounds) {
      for (const readId of round.readIds) this.grantedReads.push({ readId, index: round.index });
    }
  }

  // ------------------------------------------------------------ membership

  /** The configuration in force: the latest in the log, committed or not. */
  clusterConfig(): ClusterConfig {
    return this.configs.latest();
  }

  /** The configuration in force once the log held entries up to `index`. */
  configAt(index: number): ClusterConfig {
    return this.configs.at(index);
  }

  /**
   * Leader only: logs the configuration `change` makes of the current one. It takes
   * effect here at once (on append), and on each follower as it appends the entry.
   * Refused while an earlier change is uncommitted (one at a time), before an entry of
   * this term has committed (the leader-change bug: a config entry of an earlier leader
   * could still be in flight), during a leadership transfer, for a change that makes no
   * sense, and for a promotion of a learner that has not caught up.
   */
  proposeConfigChange(change: ConfigChange): ConfigProposeResult {
    const refuse = (reason: Exclude<ConfigProposeResult, { ok: true }>['reason'], message: string, leader = this.id) =>
      ({ ok: false, reason, leader, message }) as const;
    if (this.role !== 'leader') return refuse('not-leader', 'not the leader', this.leader);
    if (!this.committedInTerm) return refuse('pending', `no entry of term ${this.term} has committed yet`);
    if (this.configs.latestIndex() > this.log.commitIndex) {
      return refuse('pending', `the configuration change at index ${this.configs.latestIndex()} has not committed yet`);
    }
    if (this.transferee !== NO_NODE) return refuse('transferring', `leadership is being transferred to ${this.transferee}`);
    const next = applyConfigChange(this.configs.latest(), change);
    if (isRefusal(next)) return { ...refuse('invalid', next.message), refusal: next.kind };
    const lagging = this.promotionLag(change);
    if (lagging) return refuse('not-caught-up', lagging);
    const index = this.appendAsLeader(EntryType.ENTRY_TYPE_CONFIG, ClusterConfig.encode(next).finish());
    const config = this.configs.record(index, next);
    if (change.type === ConfigChangeType.CONFIG_CHANGE_TYPE_ADD_LEARNER) {
      // A member added again under an id we still track (its removal's grace not over) is a
      // new machine with an empty log: what we knew of the old one's log must not be trusted
      // (a matchIndex the new one lacks stops probing below it, and it never catches up).
      this.progress.delete(change.member!.id);
      this.removedMemberDeadlines.delete(change.member!.id);
    }
    this.onConfigChanged();
    return { ok: true, index, term: this.term, config };
  }

  /**
   * Why the learner a PROMOTE names is not ready to vote, if it is not: it must have been
   * heard from within an election timeout, hold the entry that added it (the latest
   * config, committed), and be at most PROMOTE_MAX_LAG_ENTRIES behind our last index.
   */
  private promotionLag(change: ConfigChange): string | undefined {
    if (change.type !== ConfigChangeType.CONFIG_CHANGE_TYPE_PROMOTE) return undefined;
    const id = change.member!.id;
    const pr = this.progress.get(id);
    assert(pr !== undefined, () => `no progress for learner ${id}`);
    if (this.ticks - pr.heardAtTick > this.config.electionTimeoutTicks) {
      return `learner ${id} has not been heard from in the last ${this.config.electionTimeoutTicks} ticks`;
    }
    const needed = Math.max(this.configs.latestIndex(), this.log.lastIndex() - PROMOTE_MAX_LAG_ENTRIES);
    if (pr.matchIndex < needed) {
      return `learner ${id} holds the log up to ${pr.matchIndex}, it must reach ${needed} (last index ${this.log.lastIndex()}, at most ${PROMOTE_MAX_LAG_ENTRIES} behind)`;
    }
    return undefined;
  }

  /**
   * Whether this node may stand for election: it is a voter of its latest config, or its
   * own removal is not committed yet (it is a voter of the config at its commit index).
   * Votes are counted by the latest config either way, its own not among them. Without
   * the second case a leader that lost leadership while its removal was in flight, holding
   * entries the others lack, could leave a two-voter cluster with no node able to win: it
   * would not campaign, and it would refuse the other's shorter log.
   */
  private mayCampaign(): boolean {
    if (isVoter(this.quorum, this.id)) return true;
    if (this.configs.latestIndex() <= this.log.commitIndex) return false;
    return this.configs.at(this.log.commitIndex).voters.some((m) => m.id === this.id);
  }

  /** Records the config entries among the log's entries from `index` on. */
  private noteConfigEntriesFrom(index: number): void {
    for (let i = Math.max(index, this.log.firstIndex()); i <= this.log.lastIndex(); i++) {
      const entry = this.log.entry(i);
      if (entry.type === EntryType.ENTRY_TYPE_CONFIG) this.configs.record(i, decodeConfig(entry));
    }
  }

  /** A follower's log changed from `index` on (entries replaced or added): configs follow it. */
  private onLogChangedFrom(index: number): void {
    // Compared as objects, not by index: a config entry may be replaced by another at the same index.
    const before = this.configs.latest();
    this.configs.truncateFrom(index);
    this.noteConfigEntriesFrom(index);
    if (this.configs.latest() !== before) this.onConfigChanged();
  }

  private onConfigChanged(): void {
    this.quorum = quorumOf(this.configs.latest());
    if (this.role !== 'leader') return;
    this.syncProgressWithConfig();
    this.maybeCommit(); // a smaller voter set may commit at once
    // Left as the only voter, no heartbeat answer may ever come for a round in flight: this
    // node alone confirms it, as it confirms a read asked now (readIndex).
    if (this.committedInTerm && this.aloneIsQuorum()) {
      this.grantReadRounds(this.sealedReadRounds.splice(0));
      this.grantSingleNodeReads();
    }
  }

  /**
   * Leader: one Progress for every member of the config but this node, and none for
   * others. A member the latest config removed is replicated to until it holds that
   * config entry and the entry has committed; a last heartbeat then tells it so, and a
   * node that knows its removal committed never campaigns (see mayCampaign).
   */
  private syncProgressWithConfig(): void {
    const latestIndex = this.configs.latestIndex();
    const peers = new Set(peersOf(this.configs.latest(), this.id));
    if (latestIndex > this.log.commitIndex) {
      for (const id of peersOf(this.configs.at(this.log.commitIndex), this.id)) peers.add(id);
    } else {
      const removedNow = new Set(peersOf(this.configs.at(latestIndex - 1), this.id));
      for (const [id, pr] of this.progress) {
        if (!removedNow.has(id) || pr.matchIndex >= latestIndex) continue;
        // Only for a while: a removed node that is down (or gone for good) must not be
        // heartbeaten for ever. Coming back later, it learns its removal from a peer's refusal.
        const deadline = this.removedMemberDeadlines.get(id) ?? this.ticks + REMOVED_MEMBER_GRACE_ELECTION_TIMEOUTS * this.config.electionTimeoutTicks;
        this.removedMemberDeadlines.set(id, deadline);
        if (this.ticks < deadline) peers.add(id);
      }
    }
    for (const id of [...this.removedMemberDeadlines.keys()]) if (!peers.has(id) || isMember(this.configs.latest(), id)) this.removedMemberDeadlines.delete(id);
    for (const [id, pr] of [...this.progress]) {
      if (peers.has(id)) continue;
      this.send(id, { $case: 'heartbeatRequest', value: { commit: Math.min(this.log.commitIndex, pr.matchIndex), readRound: 0 } });
      this.progress.delete(id);
    }
    // A new leader probes from after its log (its no-op comes next); a member added
    // later from the config entry that added it, so that entry goes out at once.
    const nextIndex = this.role === 'leader' && this.log.lastTerm() === this.term ? this.log.lastIndex() : this.log.lastIndex() + 1;
    for (const id of peers) {
      if (this.progress.has(id)) continue;
      this.progress.set(id, new Progress(Math.max(1, nextIndex), this.config.maxInflightAppends, this.config.maxInflightBytes, this.ticks));
    }
  }

  /**
   * A leader that the latest config removed from the voters leads (without counting
   * itself) until that config commits, then steps down: it hands over to the most
   * caught-up voter with TimeoutNow, so the cluster need not wait an election timeout.
   */
  private maybeStepDownAfterRemoval(): void {
    if (this.role !== 'leader' || isVoter(this.quorum, this.id) || this.configs.latestIndex() > this.log.commitIndex) return;
    const successor = this.mostCaughtUpVoter();
    if (successor !== undefined && this.progress.get(successor)!.matchIndex === this.log.lastIndex()) {
      this.send(successor, { $case: 'timeoutNow', value: {} });
    }
    this.becomeFollower(this.term, NO_NODE);
  }

  // ---------------------------------------------------- leadership transfer

  /**
   * Leader only: hands leadership to voter `to` (default: the most caught-up voter heard
   * from recently). Proposals and config changes are refused meanwhile; once the target
   * holds our whole log it gets TimeoutNow and campaigns at once. Abandoned (proposals
   * resume) if this node still leads after an election timeout.
   */
  transferLeadership(to?: NodeId): TransferResult {
    const refuse = (reason: 'not-leader' | 'transferring' | 'invalid', message: string, leader = this.id) =>
      ({ ok: false, reason, leader, message }) as const;
    if (this.role !== 'leader') return refuse('not-leader', 'not the leader', this.leader);
    if (this.transferee !== NO_NODE) return refuse('transferring', `leadership is already being transferred to ${this.transferee}`);
    const target = to ?? this.mostCaughtUpVoter();
    if (target === undefined) return refuse('invalid', 'no other voter to transfer leadership to');
    if (target === this.id) return refuse('invalid', `node ${target} is the leader already`);
    if (!this.configs.latest().voters.some((m) => m.id === target)) return refuse('invalid', `node ${target} is not a voter`);
    this.currentTransferee = target;
    this.transferElapsedTicks = 0;
    this.timeoutNowSent = false;
    this.maybeSendTimeoutNow();
    return { ok: true, target };
  }

  /** The voter (not this node) holding the most of our log, preferring ones heard from within an election timeout. */
  private mostCaughtUpVoter(): NodeId | undefined {
    let best: NodeId | undefined;
    let bestScore = -Infinity;
    for (const id of voterIds(this.configs.latest())) {
      const pr = this.progress.get(id);
      if (id === this.id || !pr) continue;
      const active = this.ticks - pr.heardAtTick <= this.config.electionTimeoutTicks;
      const score = pr.matchIndex + (active ? MAX_INDEX : 0);
      if (score > bestScore) [best, bestScore] = [id, score];
    }
    return best;
  }

  private maybeSendTimeoutNow(): void {
    if (this.transferee === NO_NODE || this.timeoutNowSent) return;
    if (this.progress.get(this.transferee)?.matchIndex !== this.log.lastIndex()) return;
    this.timeoutNowSent = true;
    this.send(this.transferee, { $case: 'timeoutNow', value: {} });
  }

  private endTransfer(): void {
    this.currentTransferee = NO_NODE;
    this.transferElapsedTicks = 0;
    this.timeoutNowSent = false;
  }

  /** The leader asks us to campaign now: no pre-vote, and voters waive their lease. */
  private handleTimeoutNow(m: Message): void {
    if (this.role === 'leader') return this.rejectMessage(m, `TimeoutNow to a leader of term ${this.term}`);
    if (!this.mayCampaign() || this.campaignBlockedReason()) return;
    this.becomeCandidate(true);
    this.tallyVotes();
  }

  // --------------------------------------------------------------- helpers

  /** A single-voter cluster: the leader's own acknowledgement decides everything. */
  private aloneIsQuorum(): boolean {
    return hasQuorum(this.quorum, new Set([this.id]));
  }

  private resetElectionTimer(): void {
    this.electionElapsedTicks = 0;
    const timeout = this.config.electionTimeoutTicks;
    this.randomizedElectionTimeoutTicks = timeout + this.config.random.int(timeout);
  }

  private hardStateChanged(): boolean {
    return this.term !== this.lastSavedHardState.term || this.votedFor !== this.lastSavedHardState.votedFor;
  }

  private rejectMessage(m: Message, reason: string): void {
    const MAX_KEPT = 100;
    this.rejectedMessageCount++;
    if (this.rejectedMessages.length < MAX_KEPT) {
      this.rejectedMessages.push(`from ${m.fromId} term ${m.term} ${m.body?.$case ?? 'empty'}: ${reason}`);
    }
  }

  private send(to: NodeId, body: Message['body'], term = this.term): void {
    // Every term this node sends must decode on the other side (see MAX_TERM).
    assert(Number.isSafeInteger(term) && term >= 0, () => `sending term ${term}, which does not encode`);
    this.outbox.push({ fromId: this.id, to, term, body });
  }
}

function validateConfig(config: RaftConfig): void {
  const positive = [
    'electionTimeoutTicks',
    'heartbeatIntervalTicks',
    'maxInflightAppends',
    'maxInflightBytes',
    'maxEntriesPerAppend',
    'maxBytesPerAppend',
    'maxCommittedBytesPerReady',
    'maxUncommittedEntries',
    'maxUncommittedBytes',
  ] as const;
  for (const name of positive) {
    if (!Number.isSafeInteger(config[name]) || config[name] < 1) throw new RangeError(`${name} must be a positive integer`);
  }
  if (config.heartbeatIntervalTicks >= config.electionTimeoutTicks) {
    throw new RangeError('heartbeatIntervalTicks must be below electionTimeoutTicks');
  }
  // A node that joins a running cluster is not among the bootstrap voters: it learns
  // the config from the leader's log and never campaigns before it is a voter there.
  if (!Number.isSafeInteger(config.id) || config.id < 1) throw new RangeError(`node id ${config.id} must be >= 1`);
  if (new Set(config.voters).size !== config.voters.length) throw new RangeError('voters must be distinct');
  const bootstrap = config.bootstrapConfig;
  if (bootstrap) {
    const bad = badConfigReason(bootstrap);
    if (bad) throw new RangeError(`bootstrapConfig: ${bad}`);
  }
}

/** The ClusterConfig a config entry carries, or why it is not a usable one. */
function parseConfigEntry(entry: Entry): { config: ClusterConfig; problem?: undefined } | { problem: string } {
  let config: ClusterConfig;
  try {
    config = ClusterConfig.decode(entry.data);
  } catch (err) {
    return { problem: `config entry ${entry.index} does not decode: ${(err as Error).message}` };
  }
  const bad = badConfigReason(config);
  return bad ? { problem: `config entry ${entry.index}: ${bad}` } : { config };
}

/** The ClusterConfig a config entry carries; malformedReason vetted entries from peers, storage wrote the rest. */
function decodeConfig(entry: Entry): ClusterConfig {
  const parsed = parseConfigEntry(entry);
  if (parsed.problem !== undefined) assert(false, parsed.problem);
  return parsed.config;
}

/** Why a config entry's data is not a usable ClusterConfig, if it is not. */
function badConfigEntryReason(entry: Entry): string | undefined {
  return parseConfigEntry(entry).problem;
}

/** Structural checks on a peer message, before any of it is believed. */
function malformedReason(m: Message, self: NodeId): string | undefined {
  if (m.to !== self) return `addressed to ${m.to}`;
  if (m.fromId === self) return 'claims to come from this node';
  if (!m.body) return 'no body (an unknown message kind?)';
  const badNumber = badNumberReason(m);
  if (badNumber) return badNumber;
  if (m.body.$case === 'voteRequest' && m.body.value.lastLogTerm > m.term) {
    return `last log term ${m.body.value.lastLogTerm} above message term ${m.term}`;
  }
  if (m.body.$case === 'installSnapshot') {
    const meta = m.body.value.meta;
    if (!meta) return 'a snapshot offer without meta';
    if (meta.index < 1) return 'a snapshot offer at index 0';
    if (meta.term < 1 || meta.term > m.term) return `snapshot term ${meta.term} outside [1, message term ${m.term}]`;
    // The offer's config replaces ours when the log is discarded: it must be usable.
    if (!meta.config) return 'a snapshot offer without a configuration';
    const badConfig = badConfigReason(meta.config);
    if (badConfig) return `snapshot configuration: ${badConfig}`;
  }
  if (m.body.$case !== 'appendRequest') return undefined;
  const request = m.body.value;
  if (request.prevLogTerm > m.term) return `prev log term ${request.prevLogTerm} above message term ${m.term}`;
  let previousTerm = request.prevLogTerm;
  // prev log index and term, the last index and the message term are in range already
  // (badNumberReason), so these checks keep every entry's index and term in range too.
  for (let i = 0; i < request.entries.length; i++) {
    const entry = request.entries[i]!;
    if (entry.index !== request.prevLogIndex + 1 + i) return `entry ${i} has index ${entry.index}, not ${request.prevLogIndex + 1 + i}`;
    if (!(Number.isInteger(entry.term) && entry.term >= previousTerm && entry.term <= m.term)) {
      return `entry ${entry.index} has term ${entry.term} out of order`;
    }
    if (!KNOWN_ENTRY_TYPES.has(entry.type)) return `entry ${entry.index} has unknown type ${entry.type}`;
    if (entry.type === EntryType.ENTRY_TYPE_CONFIG) {
      const bad = badConfigEntryReason(entry);
      if (bad) return bad;
    }
    previousTerm = entry.term;
  }
  return undefined;
}

/**
 * Terms must lie in [0, MAX_TERM] and indexes in [0, MAX_INDEX], as integers: a message
 * naming anything else is corrupt or hostile, and believing it could leave a term that
 * cannot be incremented or encoded (see MAX_TERM).
 */
function badNumberReason(m: Message): string | undefined {
  const bad = badTerm('term', m.term);
  if (bad) return bad;
  switch (m.body?.$case) {
    case 'voteRequest':
      return badTerm('last log term', m.body.value.lastLogTerm) ?? badIndex('last log index', m.body.value.lastLogIndex);
    case 'appendRequest':
      return badAppendNumber(m.body.value);
    case 'appendResponse': {
      const response = m.body.value;
      return badIndex('index', response.index) ?? badIndex('hint index', response.hintIndex) ?? badTerm('hint term', response.hintTerm);
    }
    case 'heartbeatRequest':
      return badIndex('commit', m.body.value.commit) ?? badIndex('read round', m.body.value.readRound);
    case 'heartbeatResponse':
      return badIndex('read round', m.body.value.readRound);
    case 'installSnapshot': {
      const meta = m.body.value.meta;
      return meta ? badIndex('snapshot index', meta.index) ?? badTerm('snapshot term', meta.term) : undefined;
    }
    case 'timeoutNow':
    case undefined:
      return undefined;
  }
}

/** The AppendRequest's own numbers; malformedReason checks its entries against them. */
function badAppendNumber(request: AppendRequest): string | undefined {
  return (
    badTerm('prev log term', request.prevLogTerm) ??
    badIndex('prev log index', request.prevLogIndex) ??
    badIndex('commit', request.commit) ??
    badIndex('last entry index', request.prevLogIndex + request.entries.length)
  );
}

const KNOWN_ENTRY_TYPES: ReadonlySet<number> = new Set([EntryType.ENTRY_TYPE_NOOP, EntryType.ENTRY_TYPE_COMMAND, EntryType.ENTRY_TYPE_CONFIG]);

function badTerm(name: string, value: number): string | undefined {
  return inRange(value, MAX_TERM) ? undefined : `${name} ${value} is not an integer in [0, MAX_TERM ${MAX_TERM}]`;
}

function badIndex(name: string, value: number): string | undefined {
  return inRange(value, MAX_INDEX) ? undefined : `${name} ${value} is not an integer in [0, MAX_INDEX ${MAX_INDEX}]`;
}

function inRange(value: number, max: number): boolean {
  return Number.isInteger(value) && value >= 0 && value <= max;
}
