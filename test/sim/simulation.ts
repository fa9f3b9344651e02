import { createHash } from 'node:crypto';
import { AuthCommand, Command, Compare, CompareResult, CompareTarget, PermissionType, TxnRequest, TxnResponse } from '../../gen/cairn/kv/v1/kv';
import { ClusterConfig, ConfigChange, ConfigChangeType, Entry, EntryType, InstallSnapshotResponse, Message, SnapshotHeader } from '../../gen/cairn/raft/v1/raft';
import { checkLinearizable, HistoryOp } from '../../src/check/linearizability';
import { ErrorCode, isCairnError } from '../../src/errors';
import { assert } from '../../src/assert';
import { DEFAULT_SESSION_LIMITS, SessionLimits } from '../../src/kv/sessions';
import { ApplyOutcome, KvStateMachine, StateMachine } from '../../src/kv/state-machine';
import { CANCEL_REASON_SNAPSHOT, WatchHub } from '../../src/kv/watch-hub';
import { KvReplica, openKvReplica } from '../../src/kv/kv-replica';
import { FsmRestore, FsmSnapshot } from '../../src/node/fsm';
import { DEFAULT_RAFT_CONFIG, NodeId, RaftConfig } from '../../src/raft/node';
import { majoritySize } from '../../src/raft/quorum';
import { SeededRandom } from '../../src/raft/random';
import { Db } from '../../src/storage/db';
import { LevelRaftStorage } from '../../src/storage/raft-storage';
import { EventQueue } from './event-queue';
import { SimDisk } from './sim-disk';
import { SimLeases } from './sim-leases';
import { LeaseKeeper } from '../../src/kv/lease-keeper';

/** Virtual time units per Raft tick. Network delays and disk latencies are in units. */
const UNITS_PER_TICK = 10;
/** The virtual wall clock that stamps proposals (log time): a tick is 100 ms, as in production. */
const MS_PER_UNIT = 10;
const CLIENT_ATTEMPT_TIMEOUT_UNITS = 15 * UNITS_PER_TICK;
const CLIENT_OP_DEADLINE_UNITS = 60 * UNITS_PER_TICK;
/** Most writes one simulated client keeps in flight under its client id. */
const MAX_WRITES_IN_FLIGHT = 3;
/**
 * Lanes (one op at a time each) over all clients: the slowest drawn clusters (window 1,
 * batch 1, long delays) commit about one entry per round trip, and more concurrent
 * writers than this outrun them, so the log grows until the run cannot converge.
 */
const MAX_LANES = 5;
/** Client calls and returns at one simulated instant, at most (see eventTime()). */
const MAX_CLIENT_EVENTS_PER_INSTANT = 1_000_000;
const MAX_RETRY_BACKOFF_TICKS = 8;
const CONVERGENCE_DEADLINE_UNITS = 400 * UNITS_PER_TICK;
/**
 * Past the convergence deadline, a run whose snapshot streams are still moving gets up to this
 * much longer. A stream of 1-byte chunks waits a network delay per chunk and takes 100-150
 * ticks; entries proposed after the faults end (lease expiries) can make a follower that just
 * installed one snapshot need the next (seed 5729: three rounds in a row). A follower that
 * chases snapshots for ever still fails, at the end of the extension.
 */
const MAX_SNAPSHOT_STREAM_EXTENSION_UNITS = 800 * UNITS_PER_TICK;
/**
 * Snapshot streams count as moving while one is in flight or a chunk crossed the wire within
 * this long: more than the longest network delay (networkDelay: up to maxDelayUnits plus 20
 * ticks), so the gap before a leader's next transfer does not end the extension.
 */
const SNAPSHOT_STREAM_IDLE_UNITS = 30 * UNITS_PER_TICK;
const MAX_TRACE_LINES = 100_000;
/** Most brand-new nodes one seed adds to its cluster (each a learner first, then a voter). */
const MAX_JOINS_PER_SEED = 3;
/** Where replication is slow (see newNodeCanCatchUp), new nodes join only while the log is shorter than this. */
const MAX_SLOW_JOIN_LOG_ENTRIES = 100;

export interface SimOptions {
  seed: number;
  /** Override the node count the seed would choose. */
  nodes?: number;
  /** Override the fault phase length, in ticks. */
  faultTicks?: number;
  /** Test hook: runs as a crashed node starts again; a throw is a restart that fails. */
  beforeRestart?: (node: NodeId) => void;
}

export interface SimResult {
  seed: number;
  ok: boolean;
  failure?: string;
  trace: string[];
  stats: {
    nodes: number;
    ops: number;
    unknownOps: number;
    committed: number;
    leaders: number;
    crashes: number;
    virtualTicks: number;
    /** Writes that found another write of their client id in flight when sent. */
    concurrentWrites: number;
    sessionExpired: number;
    sessionLimited: number;
    /** Membership changes (add, promote, remove) applied on the leader that proposed them. */
    membershipChanges: number;
    /** Leadership transfers that ended with another leader. (`nodes` counts the bootstrap voters, not the nodes that joined.) */
    transfers: number;
    snapshotTransfers: number;
    snapshotsInstalled: number;
    restoreCrashes: number;
    /** Nodes whose log was compacted (snapshot index > 0) at the end. */
    compactedNodes: number;
    /** Auth commands applied (setup, then permission revoked and granted again); 0: auth stayed off. */
    authChanges: number;
    /** Client writes refused at apply because their user's permission was revoked. */
    deniedWrites: number;
    /** Writes refused SESSION_NOT_OWNED: their session began before auth was enabled. */
    sessionsNotOwned: number;
    /** Compare-and-swaps answered: swapped, and not (the key held something else). */
    casSwapped: number;
    casRefused: number;
    /** Of the answered CAS, those sent as a txn nested in another (either outcome). */
    casNested: number;
    /** The lease workload: leases granted, keep-alives answered alive, leases expired. */
    leasesGranted: number;
    leaseKeepAlives: number;
    leasesExpired: number;
  };
}

/** The knobs one seed draws: how hostile its network and nemesis are. */
interface FaultProfile {
  dropRate: number;
  duplicateRate: number;
  maxDelayUnits: number;
  longDelayRate: number;
  nemesisEveryUnits: number;
  crashWeight: number;
  partitionWeight: number;
  /**
   * Chance that a newly elected leader is cut off at once, before its first entries
   * spread: the precondition of the Raft paper's Figure 8 (an old-term entry counted
   * toward commit, then overwritten).
   */
  newLeaderIsolationRate: number;
  /**
   * Chance that a leader is crashed at the instant it advances its commit index: the
   * second half of Figure 8 (a commit point reached, then leadership lost before the
   * entries that justify it spread).
   */
  crashOnCommitRate: number;
  /**
   * Chance, per durable promise a node sends (a granted vote, an acknowledgement of
   * entries), that the node is crashed at that instant, before its disk syncs whatever
   * is still pending, and restarted almost at once: a vote or entry that was promised
   * but not yet durable is then forgotten while the promise is still in flight.
   */
  crashAfterVoteRate: number;
  crashAfterAckRate: number;
  /**
   * Chance, per AppendRequest with entries a leader sends, that it crashes right after
   * sending, before its own write of those entries syncs (it sends them first: thesis
   * §10.2.1). The followers may then hold, and commit, entries the leader forgot.
   */
  crashAfterEarlyAppendRate: number;
  /**
   * Chance that a leader holding an uncommitted tail is isolated; while it is cut off
   * a newer leader is elected, then that one is isolated in turn and the old one
   * restored, several times over: logs that disagree in their last terms, which is
   * what Figure 8 is made of.
   */
  tailChurnRate: number;
  /** Chance that a leader is crashed or isolated as it makes its first commit of its term. */
  cutOnFirstCommitRate: number;
}

/**
 * Compaction and InstallSnapshot, drawn per seed from their own generator: small
 * thresholds make every node compact often, so followers that fall behind (crashed,
 * partitioned) need a snapshot; the crash rates cut transfers and restores short.
 */
interface SnapshotProfile {
  snapshotEntries: number;
  snapshotCatchupEntries: number;
  /** Bytes of one snapshot chunk: small, so that a transfer is a stream of many. */
  chunkBytes: number;
  /** Chance, per chunk delivered, that the sender or the receiver crashes (mid-transfer). */
  crashMidTransferRate: number;
  /** Chance, per restore, that the receiver crashes after staging, before the synced switch batch. */
  crashBeforeSwitchRate: number;
  /** Chance, per restore, that the receiver crashes right after the switch batch, before it serves the new state. */
  crashAfterSwitchRate: number;
}

interface SimNode {
  id: NodeId;
  disk: SimDisk;
  replica?: KvReplica;
  db?: Db;
  up: boolean;
  /** A restart is under way (opening the disk is asynchronous). */
  starting: boolean;
  incarnation: number;
  /** Indexes up to which this incarnation's committed entries were checked. */
  checkedCommit: number;
  lastRole: string;
  lastTerm: number;
  /** The last term in which this node, as leader, was seen advancing commit. */
  lastCommitTerm: number;
  /** Started empty during the run, to join the cluster (not a bootstrap voter). */
  joined: boolean;
  /** Seen in a committed configuration at some point. */
  everMember: boolean;
  /** Shut down for good: a committed configuration no longer holds it. */
  removed: boolean;
  /**
   * The node's watcher (every key, from revision 1): the next revision it must see. A client
   * resume point, so it outlives incarnations: each start watches again from it.
   */
  watchNext: number;
  /** This incarnation's lease deadlines (src/kv/lease-keeper.ts), on virtual time. */
  leaseKeeper?: LeaseKeeper;
}

/** A tail churn in progress: the leader now cut off, and the term it led. */
interface TailChurn {
  isolated: SimNode;
  term: number;
  links: string[];
  roundsLeft: number;
  /** Cut the next leader once it has committed in its term, not as soon as it is elected. */
  cutAfterFirstCommit: boolean;
  giveUpUnits: number;
}

class SimulationFailure extends Error {}

/**
 * Two nodes' events of one revision ("TYPE:KEY=VALUE/PREV;" each) agree: the same events,
 * and the same previous value wherever both carry one (a replay leaves prev_kv out once the
 * previous revision was compacted, as etcd does).
 */
function sameWatchEvents(a: string, b: string): boolean {
  const split = (text: string) => text.split(';').filter(Boolean).map((event) => event.split('/') as [string, string]);
  const x = split(a);
  const y = split(b);
  return x.length === y.length && x.every(([event, prev], i) => event === y[i]![0] && (prev === '-' || y[i]![1] === '-' || prev === y[i]![1]));
}

/** The auth nemesis's role, and the user each simulated client writes as. */
const SIM_ROLE = 'writers';
const simUser = (client: number) => `user-${client}`;
/** Apply stores a password hash as given (the gate computes it): any well-formed one does. */
/**
 * A compare-and-swap as a Txn: put `value` if the key holds `expected` (null: if it does not
 * exist). `nested`: the same compare and put as a txn nested in an outer one without compares
 * (the outer one always succeeds; whether the swap happened is the nested answer's
 * `succeeded`, see casSucceeded), so the checker's model (compare, then write one key) holds.
 */
function casTxn(session: { key: Buffer; clientId: string; sequence: number; lowestUnansweredSequence: number }, expected: string | null, value: string, nested = false): TxnRequest {
  const key = session.key;
  const compare: Compare =
    expected === null
      ? { key, target: CompareTarget.COMPARE_TARGET_VERSION, result: CompareResult.COMPARE_RESULT_EQUAL, targetUnion: { $case: 'version', value: 0 } }
      : { key, target: CompareTarget.COMPARE_TARGET_VALUE, result: CompareResult.COMPARE_RESULT_EQUAL, targetUnion: { $case: 'value', value: Buffer.from(expected) } };
  const put = { key, value: Buffer.from(value), prevKv: false, clientId: '', sequence: 0, lowestUnansweredSequence: 0 };
  const sessionFields = { clientId: session.clientId, sequence: session.sequence, lowestUnansweredSequence: session.lowestUnansweredSequence };
  const swap = { compare: [compare], success: [{ request: { $case: 'requestPut' as const, value: put } }], failure: [] };
  if (!nested) return { ...swap, ...sessionFields };
  return { compare: [], success: [{ request: { $case: 'requestTxn', value: { ...swap, clientId: '', sequence: 0, lowestUnansweredSequence: 0 } } }], failure: [], ...sessionFields };
}

/** Whether a CAS from casTxn swapped: its own `succeeded`, or its nested txn's. */
function casSucceeded(response: TxnResponse): boolean {
  const nested = response.responses[0]?.response;
  return nested?.$case === 'responseTxn' ? nested.value.succeeded : response.succeeded;
}

/** Every CAS_NESTED_EVERY-th write sequence of a client that is a CAS goes as a nested txn (no draw from the seed's generator). */
const CAS_NESTED_EVERY = 3;

const SIM_PASSWORD_HASH = { salt: Buffer.from('salt'), hash: Buffer.from('hash'), cost: 16384, blockSize: 8, parallelization: 1 };

/**
 * One client id as a simulated client uses it: several writes in flight, each retried
 * with its sequence until answered, and the lowest unanswered sequence sent with each.
 */
interface ClientSession {
  clientId: string;
  nextSequence: number;
  /** Sequences sent and neither answered nor given up. */
  unanswered: Set<number>;
  /** A write of this session was answered OK: the session exists in the state machine. */
  exists: boolean;
}

/** One simulated client: lanes share its current session and issue ops concurrently. */
interface SimClient {
  id: number;
  generation: number;
  session: ClientSession;
  /** Lanes start no new op before this time: the session idles (and may be evicted). */
  pausedUntil: number;
}

/**
 * A deterministic simulation of one cairn cluster: real RaftNodes inside real Replicas
 * on memory-level disks that forget unsynced writes, a network that drops, delays,
 * duplicates, reorders and partitions, a nemesis that crashes nodes, and clients
 * whose history is checked for linearizability. Everything random comes from the seed.
 */
export class Simulation {
  private now = 0;
  /** eventTime(): the instant of the last client event, and how many client events it has had. */
  private eventInstant = -1;
  private eventsThisInstant = 0;
  private readonly queue = new EventQueue();
  private readonly rand: SeededRandom;
  /** Draws of the targeted faults only, so they do not shift the rest of a seed's draws. */
  private readonly faultRand: SeededRandom;
  private readonly nodes: SimNode[] = [];
  private readonly profile: FaultProfile;
  /** Raft tuning drawn per seed: small windows and batches expose more interleavings. */
  private readonly tuning: Pick<
    RaftConfig,
    'maxInflightAppends' | 'maxEntriesPerAppend' | 'electionTimeoutTicks' | 'heartbeatIntervalTicks' | 'checkQuorum' | 'preVote'
  > &
    Partial<Pick<RaftConfig, 'maxBytesPerAppend' | 'maxInflightBytes' | 'maxCommittedBytesPerReady' | 'maxUncommittedBytes'>>;
  private readonly faultEndUnits: number;
  private readonly clientsStopUnits: number;
  private readonly blockedLinks = new Set<string>();
  /**
   * Links cut by the targeted faults, counted (two faults may cut one link). Kept apart
   * from blockedLinks so that a random heal does not undo a schedule half-way.
   */
  private readonly cutLinks = new Map<string, number>();
  private dropRate: number;
  private duplicateRate = 0;
  private readonly history: HistoryOp[] = [];
  private readonly trace: string[] = [];
  private failure: string | undefined;
  private readonly leadersByTerm = new Map<number, NodeId>();
  /** index -> identity of the committed entry (term, type, data). */
  private readonly committed = new Map<number, string>();
  /**
   * index -> the lowest term of a node seen holding it as committed: it was committed in
   * that term or an earlier one, so every leader of a later term must hold it.
   */
  private readonly committedByTerm = new Map<number, number>();
  private clientsRunning = 0;
  private crashes = 0;
  private tailChurn: TailChurn | undefined;
  /** Terms whose leader was already considered for a tail churn. */
  private readonly churnConsideredTerms = new Set<number>();
  /** Session bounds drawn per seed: tight ones make eviction and SESSION_LIMIT happen. */
  private readonly sessionLimits: SessionLimits;
  private readonly sessionErrors = { expired: 0, limit: 0 };
  private concurrentWrites = 0;
  /** The voters every node boots with; a node that joins later is not among them. */
  private readonly bootstrapVoters: NodeId[] = [];
  /** Draws of the membership nemesis only, so they do not shift the rest of a seed's draws. */
  private readonly memberRand: SeededRandom;
  /** Mean spacing of membership actions (add, promote, remove, transfer); 0: none in this seed. */
  private readonly membershipEveryUnits: number;
  private joinsLeft: number;
  private readonly membershipStats = { changes: 0, transfers: 0 };
  /** The members of the configuration at the highest commit index any node was seen to know. */
  private latestCommittedConfig: { index: number; members: NodeId[]; seenOn: NodeId } = { index: 0, members: [], seenOn: 0 };
  private readonly snapshotProfile: SnapshotProfile;
  /** index -> the state-machine digest first seen at that applied index, and who had it. */
  private readonly digestsByIndex = new Map<number, { digest: string; who: string }>();
  private readonly snapshotStats = { transfers: 0, installed: 0, compactions: 0, restoreCrashes: 0 };
  /** When a snapshot chunk last crossed the simulated wire (see MAX_SNAPSHOT_STREAM_EXTENSION_UNITS). */
  private lastSnapshotChunkUnits = -Infinity;
  /** Snapshot transfers started and not yet ended (see MAX_SNAPSHOT_STREAM_EXTENSION_UNITS). */
  private snapshotStreamsInFlight = 0;
  /** Draws of the auth nemesis only, so they do not shift the rest of a seed's draws. */
  private readonly authRand: SeededRandom;
  /**
   * Mean spacing of permission flips once auth is on (the clients' role loses its write
   * permission, then gets it back); 0: auth stays off in this seed.
   */
  private readonly authEveryUnits: number;
  /** Whether clients also send compare-and-swap (a KV.Txn): half the seeds, from their own generator. */
  private readonly casEnabled: boolean;
  /** The value each key was last seen to hold by any client (what a CAS expects). */
  private readonly lastSeen = new Map<string, string>();
  private readonly casStats = { swapped: 0, refused: 0, nested: 0 };
  /**
   * History kept when the compactor runs (it proposes Compact to the leader every so often,
   * as --auto-compaction-revisions does); 0: none in this seed. Seeds that stream snapshots in
   * small chunks always compact: the history travels in every snapshot.
   */
  private readonly historyKeepRevisions: number;
  /** Revocations the admin has proposed: before the first, every user may write every key. */
  private revokesProposed = 0;
  private readonly authStats = { changes: 0, deniedWrites: 0, notOwned: 0 };
  /** The lease workload and its never-expired-early check (test/sim/sim-leases.ts). */
  private readonly simLeases: SimLeases;

  constructor(private readonly options: SimOptions) {
    this.rand = new SeededRandom(options.seed);
    this.faultRand = new SeededRandom(options.seed * 2_654_435_761 + 97);
    const nodeCount = options.nodes ?? this.rand.pick([1, 3, 3, 3, 3, 5, 5, 5]);
    this.profile = {
      dropRate: this.rand.pick([0, 0.01, 0.05, 0.1, 0.2]),
      duplicateRate: this.rand.pick([0, 0.02, 0.1]),
      maxDelayUnits: this.rand.pick([2, 5, 15, 30]),
      longDelayRate: this.rand.pick([0, 0.01, 0.05]),
      nemesisEveryUnits: this.rand.pick([40, 80, 150, 300, 600]),
      crashWeight: this.rand.pick([0, 1, 2]),
      partitionWeight: this.rand.pick([0, 1, 2]),
      newLeaderIsolationRate: this.rand.pick([0, 0, 0.3, 0.6]),
      crashOnCommitRate: this.rand.pick([0, 0, 0.02, 0.1]),
      ...this.drawTargetedFaults(),
    };
    this.tuning = {
      maxInflightAppends: this.rand.pick([1, 2, 4, 16]),
      maxEntriesPerAppend: this.rand.pick([1, 2, 2, 8, 64]),
      electionTimeoutTicks: this.rand.pick([5, 10, 20]),
      heartbeatIntervalTicks: this.rand.pick([1, 2]),
      // Without check-quorum a partitioned leader keeps believing it leads: safety must
      // not depend on it (ReadIndex, not leases, protects reads).
      checkQuorum: this.rand.pick([true, true, false]),
      preVote: this.rand.pick([true, true, false]),
      ...drawByteBounds(new SeededRandom(options.seed * 40_503 + 11)),
    };
    this.sessionLimits = this.drawSessionLimits();
    this.snapshotProfile = drawSnapshotProfile(new SeededRandom(options.seed * 7_919 + 3));
    this.dropRate = this.profile.dropRate;
    this.faultEndUnits = (options.faultTicks ?? 200 + this.rand.int(300)) * UNITS_PER_TICK;
    this.clientsStopUnits = this.faultEndUnits + 50 * UNITS_PER_TICK;
    for (let id = 1; id <= nodeCount; id++) {
      this.nodes.push(this.newSimNode(id, false));
      this.bootstrapVoters.push(id);
    }
    this.latestCommittedConfig = { index: 0, members: [...this.bootstrapVoters], seenOn: 0 };
    this.memberRand = new SeededRandom(options.seed * 48_271 + 5);
    this.membershipEveryUnits = this.memberRand.pick([0, 100, 200, 400]);
    this.joinsLeft = this.membershipEveryUnits === 0 ? 0 : 1 + this.memberRand.int(MAX_JOINS_PER_SEED);
    this.authRand = new SeededRandom(options.seed * 69_621 + 13);
    this.authEveryUnits = this.authRand.pick([0, 0, 60, 150]) * UNITS_PER_TICK;
    this.casEnabled = new SeededRandom(options.seed * 31_337 + 17).chance(0.5);
    const compactRand = new SeededRandom(options.seed * 7_177 + 29);
    const smallChunks = this.snapshotProfile.chunkBytes < 1 << 20;
    this.historyKeepRevisions = smallChunks || compactRand.chance(0.3) ? 5 + compactRand.int(40) : 0;
    this.simLeases = this.newSimLeases(new SeededRandom(options.seed * 16_807 + 17));
    this.log(`seed ${options.seed}: ${nodeCount} nodes, profile ${JSON.stringify(this.profile)}, tuning ${JSON.stringify(this.tuning)}, faults until tick ${this.faultEndUnits / UNITS_PER_TICK}`);
    this.log(`membership: an action every ${this.membershipEveryUnits / UNITS_PER_TICK} ticks on average (0: none), up to ${this.joinsLeft} new nodes`);
    this.log(`session limits ${JSON.stringify(this.sessionLimits)}`);
    this.log(`snapshots ${JSON.stringify(this.snapshotProfile)}`);
    this.log(`cas: ${this.casEnabled ? 'clients send compare-and-swap too' : 'off'}`);
    this.log(`auth: a permission flip every ${this.authEveryUnits / UNITS_PER_TICK} ticks on average (0: auth off)`);
  }

  /**
   * Mostly the defaults (nothing is evicted within a run, so SESSION_EXPIRED would be a
   * bug); sometimes tight bounds. The grace always outlasts a client's retries of one
   * write, as the client contract demands.
   */
  private drawSessionLimits(): SessionLimits {
    if (this.rand.chance(0.7)) return DEFAULT_SESSION_LIMITS;
    const graceMs = 2 * CLIENT_OP_DEADLINE_UNITS * MS_PER_UNIT;
    return {
      ...DEFAULT_SESSION_LIMITS,
      maxSessions: this.rand.pick([2, 3, 4]),
      sessionEvictionGraceMs: graceMs,
      sessionIdleTimeoutMs: this.rand.pick([graceMs, 2 * graceMs]),
      maxResultsPerSession: this.rand.pick([2, 4, 8, 256]),
    };
  }

  private tightSessions(): boolean {
    return this.sessionLimits !== DEFAULT_SESSION_LIMITS;
  }

  async run(): Promise<SimResult> {
    try {
      for (const node of this.nodes) await this.startNode(node);
      for (const node of this.nodes) this.scheduleTicks(node, 1 + this.rand.int(UNITS_PER_TICK));
      this.scheduleNemesis();
      this.scheduleMembership();
      const clientCount = 2 + this.rand.int(4);
      for (let c = 1; c <= clientCount; c++) this.startClient(c, clientCount);
      if (this.authEveryUnits > 0) void this.runAuthAdmin(clientCount);
      if (this.historyKeepRevisions > 0) void this.runHistoryCompactor();
      void this.runLeaseClient();
      await this.runUntilConverged();
      await this.checkFinalState();
    } catch (err) {
      this.failure ??= err instanceof SimulationFailure ? err.message : `${(err as Error).stack ?? err}`;
    }
    for (const node of this.nodes) node.replica?.stop().catch(() => undefined);
    const unknownOps = this.history.filter((op) => !op.known).length;
    return {
      seed: this.options.seed,
      ok: this.failure === undefined,
      failure: this.failure,
      trace: this.trace,
      stats: {
        nodes: this.bootstrapVoters.length,
        ops: this.history.length,
        unknownOps,
        committed: this.committed.size,
        leaders: this.leadersByTerm.size,
        crashes: this.crashes,
        virtualTicks: Math.round(this.now / UNITS_PER_TICK),
        concurrentWrites: this.concurrentWrites,
        sessionExpired: this.sessionErrors.expired,
        sessionLimited: this.sessionErrors.limit,
        membershipChanges: this.membershipStats.changes,
        transfers: this.membershipStats.transfers,
        snapshotTransfers: this.snapshotStats.transfers,
        snapshotsInstalled: this.snapshotStats.installed,
        restoreCrashes: this.snapshotStats.restoreCrashes,
        compactedNodes: this.nodes.filter((n) => (n.replica?.node.status().snapshotIndex ?? 0) > 0).length,
        authChanges: this.authStats.changes,
        deniedWrites: this.authStats.deniedWrites,
        sessionsNotOwned: this.authStats.notOwned,
        casSwapped: this.casStats.swapped,
        casRefused: this.casStats.refused,
        casNested: this.casStats.nested,
        leasesGranted: this.simLeases.stats.granted,
        leaseKeepAlives: this.simLeases.stats.keepAlives,
        leasesExpired: this.simLeases.stats.expired,
      },
    };
  }

  // ------------------------------------------------------------ event loop

  private async runUntilConverged(): Promise<void> {
    const deadline = this.faultEndUnits + CONVERGENCE_DEADLINE_UNITS;
    const extendedDeadline = deadline + MAX_SNAPSHOT_STREAM_EXTENSION_UNITS;
    const snapshotStreamMoving = () => this.snapshotStreamsInFlight > 0 || this.now - this.lastSnapshotChunkUnits <= SNAPSHOT_STREAM_IDLE_UNITS;
    while (this.now <= deadline || (this.now <= extendedDeadline && snapshotStreamMoving())) {
      await this.step();
      if (this.failure) throw new SimulationFailure(this.failure);
      if (this.now > this.clientsStopUnits && this.clientsRunning === 0 && this.converged()) return;
    }
    throw new SimulationFailure(`no convergence by tick ${Math.floor(this.now / UNITS_PER_TICK)}: ${this.describeNodes()}`);
  }

  /** Runs every event of the next instant, lets their async work settle, checks invariants. */
  private async step(): Promise<void> {
    const time = this.queue.peekTime();
    if (time === undefined) throw new SimulationFailure('event queue ran dry');
    this.now = time;
    while (this.queue.peekTime() === time) this.queue.pop()!.run();
    await new Promise<void>((resolve) => setImmediate(resolve));
    this.checkInvariants();
  }

  private at(delayUnits: number, run: () => void): void {
    this.queue.push(this.now + delayUnits, run);
  }

  private sleep(units: number): Promise<void> {
    return new Promise((resolve) => this.at(units, resolve));
  }

  private log(line: string): void {
    if (this.trace.length < MAX_TRACE_LINES) this.trace.push(`[t${(this.now / UNITS_PER_TICK).toFixed(1)}] ${line}`);
  }

  /** Each revision's events as the first node's watch saw them (see watchNode). */
  private readonly watchedEvents = new Map<number, string>();

  private fail(message: string): void {
    this.failure ??= message;
    this.log(`FAILURE: ${message}`);
  }

  // ----------------------------------------------------------------- nodes

  private raftConfig(node: SimNode): RaftConfig {
    return {
      ...DEFAULT_RAFT_CONFIG,
      id: node.id,
      voters: this.bootstrapVoters,
      ...this.tuning,
      random: new SeededRandom(this.options.seed * 1_000_003 + node.id * 7919 + node.incarnation),
    };
  }

  private async startNode(node: SimNode): Promise<void> {
    if (node.up || node.starting) return;
    node.starting = true;
    node.incarnation++;
    const incarnation = node.incarnation;
    if (incarnation > 1) this.options.beforeRestart?.(node.id);
    const db = await node.disk.open();
    const kvStateMachine = await KvStateMachine.open(db, this.sessionLimits);
    this.watchNode(node, incarnation, kvStateMachine);
    const stateMachine = new CheckedStateMachine(kvStateMachine, db, {
      onApply: (entry) => this.checkApplied(node, entry),
      onState: (index, digest) => this.checkDigest(`node ${node.id}`, index, digest),
      beforeSwitch: () => this.maybeCrashInRestore(node, incarnation, 'before', this.snapshotProfile.crashBeforeSwitchRate),
      afterSwitch: () => this.maybeCrashInRestore(node, incarnation, 'after', this.snapshotProfile.crashAfterSwitchRate),
    });
    const replica = await openKvReplica({
      clock: { wallUnixMs: () => this.now * MS_PER_UNIT, monotonicMs: () => this.now * MS_PER_UNIT },
      config: this.raftConfig(node),
      storage: new LevelRaftStorage(db),
      stateMachine,
      transport: {
        send: (messages) => this.transmit(node, incarnation, messages),
        sendSnapshot: (to, header, chunks) => this.transferSnapshot(node, incarnation, to, header, chunks),
      },
      snapshotEntries: this.snapshotProfile.snapshotEntries,
      snapshotCatchupEntries: this.snapshotProfile.snapshotCatchupEntries,
      snapshotChunkBytes: this.snapshotProfile.chunkBytes,
      // As the server defers it to the next turn: an event of this instant, in queue order.
      defer: (start) => this.at(0, start),
      onFatal: (err) => {
        if (node.incarnation === incarnation && node.up) this.fail(`node ${node.id} stopped on ${(err as Error).stack ?? err}`);
      },
    });
    if (node.removed) {
      // Retired while it was starting: it stays down.
      node.starting = false;
      void replica.stop();
      return;
    }
    Object.assign(node, { db, replica, up: true, starting: false, checkedCommit: replica.node.status().commitIndex, leaseKeeper: this.simLeases.keeperFor(replica, stateMachine) });
    this.log(`node ${node.id} started (incarnation ${incarnation}), ${JSON.stringify(replica.node.status())}`);
  }

  /**
   * Every node serves a watch of every key from its own state (as a follower serves one),
   * checked as it goes: each revision arrives once, in order, with no gap (every revision has
   * at least one event), and with the same events on every node (`watchedEvents`). A watch
   * canceled by a snapshot install, or ended by a crash, starts again from the next revision.
   */
  private watchNode(node: SimNode, incarnation: number, stateMachine: KvStateMachine): void {
    const hub = new WatchHub(stateMachine);
    stateMachine.setHistoryListener(hub);
    const stream = hub.openStream();
    const watch = () => stream.create({ start: Buffer.alloc(0), end: undefined, startRevision: node.watchNext, prevKv: true, progressNotify: false });
    let watchId = watch();
    stream.onReadable = () => {
      for (let response = stream.shift(); response; response = stream.shift()) {
        if (node.incarnation !== incarnation) return;
        if (response.canceled) {
          if (response.watchId !== watchId) continue;
          // A watch restarted (after a crash) from a revision the compactor dropped resumes at
          // the compaction point, as an etcd client re-syncs; anything else is a failure.
          if (response.compactRevision > 0 && this.historyKeepRevisions > 0) {
            this.log(`node ${node.id}: watch from ${node.watchNext} was compacted; resumes at ${response.compactRevision}`);
            node.watchNext = Math.max(node.watchNext, response.compactRevision);
          } else if (response.cancelReason !== CANCEL_REASON_SNAPSHOT) {
            this.fail(`node ${node.id}: its watch was canceled: ${response.cancelReason}`);
          }
          watchId = watch();
          continue;
        }
        let revision = 0;
        let text = '';
        const flush = () => {
          if (revision === 0) return;
          if (revision !== node.watchNext) this.fail(`node ${node.id}: watch saw revision ${revision} after ${node.watchNext - 1} (a gap, a duplicate or out of order)`);
          node.watchNext = revision + 1;
          const known = this.watchedEvents.get(revision);
          if (known === undefined) this.watchedEvents.set(revision, text);
          else if (!sameWatchEvents(known, text)) this.fail(`node ${node.id}: watch events of revision ${revision} differ from another node's: ${text} vs ${known}`);
        };
        for (const event of response.events) {
          const at = event.kv!.modRevision;
          if (at !== revision) {
            flush();
            revision = at;
            text = '';
          }
          text += `${event.type}:${Buffer.from(event.kv!.key).toString('hex')}=${Buffer.from(event.kv!.value).toString('hex')}/${event.prevKv ? Buffer.from(event.prevKv.value).toString('hex') : '-'};`;
        }
        flush();
      }
    };
  }

  /**
   * Restarts a crashed node. An exception while restarting (reading its disk back,
   * opening the core) is this seed's failure, not an unhandled rejection that would
   * take the whole sweep down with it.
   */
  private restartNode(node: SimNode): void {
    if (node.removed) return;
    this.startNode(node).catch((err: unknown) => {
      node.starting = false;
      this.fail(`restarting node ${node.id} threw: ${(err as Error).stack ?? err}`);
    });
  }

  private crashNode(node: SimNode): void {
    if (!node.up) return;
    this.crashes++;
    node.up = false;
    node.disk.crash((count) => this.rand.int(count + 1));
    void node.replica?.stop();
    node.replica = undefined;
    this.log(`node ${node.id} CRASHED`);
    this.noticeConnectionsLost(node);
  }

  /**
   * A process that dies closes its connections: a peer that can still reach it sees its
   * stream break (gRPC UNAVAILABLE) a network delay later, as in production, unless the
   * link is down (then only the timeout tells).
   */
  private noticeConnectionsLost(crashed: SimNode): void {
    for (const peer of this.nodes) {
      if (peer === crashed || this.linkDown(peer.id, crashed.id)) continue;
      const incarnation = peer.incarnation;
      this.at(this.networkDelay(), () => {
        if (peer.up && peer.incarnation === incarnation) peer.replica?.peerConnectionLost(crashed.id);
      });
    }
  }

  private crashLeaderAfterCommit(node: SimNode): void {
    this.log(`nemesis: crash leader ${node.id} as it commits`);
    this.crashNode(node);
    this.at(1 + this.rand.int(30 * UNITS_PER_TICK), () => {
      if (!node.up && this.now < this.faultEndUnits) this.restartNode(node);
    });
  }

  private scheduleTicks(node: SimNode, firstDelay: number): void {
    const tick = () => {
      if (node.up) node.replica?.tick();
      if (node.up) node.leaseKeeper?.check();
      this.at(UNITS_PER_TICK, tick);
    };
    this.at(firstDelay, tick);
  }

  // --------------------------------------------------------------- network

  private transmit(from: SimNode, incarnation: number, messages: readonly Message[]): void {
    if (from.incarnation !== incarnation || !from.up) return;
    for (const message of messages) {
      this.maybeCrashAfterPromise(from, message);
      if (this.linkDown(message.fromId, message.to)) continue;
      if (this.rand.chance(this.dropRate)) continue;
      const wire = Message.encode(message).finish();
      const copies = this.rand.chance(this.duplicateRate) ? 2 : 1;
      for (let i = 0; i < copies; i++) this.at(this.networkDelay(), () => this.deliver(message.fromId, message.to, wire));
    }
  }

  /**
   * An InstallSnapshot stream over the simulated network: each chunk takes a network
   * delay, may be lost (the transfer fails, as a broken gRPC stream does), and is cut by
   * a partition or by a crash of either side, which the nemesis may cause mid-transfer.
   */
  private async transferSnapshot(
    from: SimNode,
    incarnation: number,
    to: NodeId,
    header: SnapshotHeader,
    chunks: AsyncIterable<Uint8Array>,
  ): Promise<InstallSnapshotResponse> {
    const target = this.nodes[to - 1]!;
    const targetIncarnation = target.incarnation;
    const receiver = target.replica;
    const alive = () => from.incarnation === incarnation && from.up && target.incarnation === targetIncarnation && target.up;
    this.snapshotStats.transfers++;
    this.log(`node ${from.id}: snapshot at ${header.meta?.index} to node ${to} starts`);
    if (!receiver || !alive() || this.linkDown(from.id, to)) throw new Error(`node ${to} is unreachable`);
    const sim = this;
    async function* wire(): AsyncIterable<Uint8Array> {
      for await (const chunk of chunks) {
        const bytes = Buffer.from(chunk); // what the wire carries, not the sender's buffer
        await sim.sleep(sim.networkDelay());
        if (sim.now < sim.faultEndUnits && sim.faultRand.chance(sim.snapshotProfile.crashMidTransferRate)) {
          const victim = sim.faultRand.chance(0.5) ? from : target;
          sim.log(`nemesis: crash node ${victim.id} mid-transfer of a snapshot to node ${to}`);
          sim.crashAndRestartSoon(victim);
        }
        if (!alive()) throw new Error('a side of the transfer crashed');
        if (sim.linkDown(from.id, to) || sim.rand.chance(sim.dropRate)) throw new Error('the snapshot stream broke');
        sim.lastSnapshotChunkUnits = sim.now;
        yield bytes;
      }
    }
    this.snapshotStreamsInFlight++;
    let response: InstallSnapshotResponse;
    try {
      response = await receiver.receiveSnapshot({ ...header, clusterId: 1 }, wire());
      await this.sleep(this.networkDelay());
    } finally {
      this.snapshotStreamsInFlight--;
    }
    if (!alive() || this.linkDown(to, from.id)) throw new Error('the answer was lost');
    if (response.installed) this.snapshotStats.installed++;
    this.log(`node ${from.id}: snapshot at ${header.meta?.index} to node ${to}: ${response.installed ? 'installed' : `not installed (${response.reason})`}`);
    return response;
  }

  /** During a restore: maybe crash the receiver at this point (with SimDisk's crash semantics), and restart it soon. */
  private maybeCrashInRestore(node: SimNode, incarnation: number, when: 'before' | 'after', rate: number): void {
    if (node.incarnation !== incarnation || !node.up || this.now >= this.faultEndUnits || !this.faultRand.chance(rate)) return;
    this.snapshotStats.restoreCrashes++;
    this.log(`nemesis: crash node ${node.id} ${when} the switch batch of a snapshot restore`);
    this.crashAndRestartSoon(node);
  }

  private crashAndRestartSoon(node: SimNode): void {
    this.crashNode(node);
    this.at(1 + this.rand.int(20 * UNITS_PER_TICK), () => {
      if (!node.up && this.now < this.faultEndUnits) this.restartNode(node);
    });
  }

  private linkDown(from: NodeId, to: NodeId): boolean {
    const link = `${from}>${to}`;
    return this.blockedLinks.has(link) || this.cutLinks.has(link);
  }

  private networkDelay(): number {
    const base = 1 + this.rand.int(this.profile.maxDelayUnits);
    return this.rand.chance(this.profile.longDelayRate) ? base + this.rand.int(20 * UNITS_PER_TICK) : base;
  }

  /** A partition also loses what was in flight on a link when it was cut. */
  private deliver(from: NodeId, to: NodeId, wire: Uint8Array): void {
    if (this.linkDown(from, to)) return;
    const node = this.nodes[to - 1]!;
    if (node.up) node.replica?.receive(Message.decode(wire));
  }

  // --------------------------------------------------------------- nemesis

  private scheduleNemesis(): void {
    const act = () => {
      if (this.now >= this.faultEndUnits) return this.healAll();
      this.nemesisAction();
      this.at(1 + this.rand.int(this.profile.nemesisEveryUnits), act);
    };
    this.at(this.rand.int(this.profile.nemesisEveryUnits), act);
  }

  private nemesisAction(): void {
    const { crashWeight, partitionWeight } = this.profile;
    const choice = this.rand.int(2 + crashWeight * 2 + partitionWeight * 3);
    if (choice < 2) return this.healNetwork();
    if (choice < 2 + crashWeight * 2) return this.crashSomeone(choice % 2 === 0);
    const kind = (choice - 2 - crashWeight * 2) % 3;
    if (kind === 0) return this.partition();
    if (kind === 1) return this.oneWayLoss();
    return this.isolateLeader();
  }

  private crashSomeone(leaderFirst: boolean): void {
    const up = this.nodes.filter((n) => n.up);
    if (up.length === 0) return;
    const leader = up.find((n) => n.replica?.node.role === 'leader');
    const victim = leaderFirst && leader ? leader : this.rand.pick(up);
    this.crashNode(victim);
    const downtime = 1 + this.rand.int(80 * UNITS_PER_TICK);
    this.at(downtime, () => {
      if (!victim.up && this.now < this.faultEndUnits) this.restartNode(victim);
    });
  }

  private partition(): void {
    this.blockedLinks.clear();
    const side = new Set(this.nodes.filter(() => this.rand.chance(0.5)).map((n) => n.id));
    for (const a of this.nodes) {
      for (const b of this.nodes) {
        if (side.has(a.id) !== side.has(b.id)) this.blockedLinks.add(`${a.id}>${b.id}`);
      }
    }
    this.log(`nemesis: partition {${[...side]}} | rest`);
  }

  private oneWayLoss(): void {
    const from = this.rand.pick(this.nodes).id;
    const to = this.rand.pick(this.nodes).id;
    if (from !== to) this.blockedLinks.add(`${from}>${to}`);
    this.log(`nemesis: one-way loss ${from} -> ${to}`);
  }

  private isolateLeader(): void {
    const leader = this.nodes.find((n) => n.up && n.replica?.node.role === 'leader');
    if (!leader) return;
    for (const other of this.nodes) {
      if (other === leader) continue;
      this.blockedLinks.add(`${leader.id}>${other.id}`);
      this.blockedLinks.add(`${other.id}>${leader.id}`);
    }
    this.log(`nemesis: isolate leader ${leader.id}`);
  }

  private isolateBriefly(node: SimNode): void {
    const links = this.nodes.filter((n) => n !== node).flatMap((n) => [`${node.id}>${n.id}`, `${n.id}>${node.id}`]);
    for (const link of links) this.blockedLinks.add(link);
    this.log(`nemesis: isolate new leader ${node.id}`);
    this.at(1 + this.rand.int(40 * UNITS_PER_TICK), () => {
      for (const link of links) this.blockedLinks.delete(link);
    });
  }

  private healNetwork(): void {
    this.blockedLinks.clear();
    this.log('nemesis: heal network');
  }

  private healAll(): void {
    this.healNetwork();
    this.dropRate = 0;
    this.duplicateRate = 0;
    this.tailChurn = undefined;
    this.cutLinks.clear();
    for (const node of this.nodes) if (!node.up) this.restartNode(node);
    this.log('nemesis: heal everything, faults over');
  }

  // ------------------------------------------------------- targeted faults
  //
  // Each aims at a window where a classic Raft slip does its damage, and which random
  // crashes and partitions hit only rarely (docs/testing.md has the planted-bug rates).

  private drawTargetedFaults(): Pick<FaultProfile, 'crashAfterVoteRate' | 'crashAfterAckRate' | 'crashAfterEarlyAppendRate' | 'tailChurnRate' | 'cutOnFirstCommitRate'> {
    return {
      crashAfterVoteRate: this.faultRand.pick([0, 0.2, 0.5, 1]),
      crashAfterAckRate: this.faultRand.pick([0, 0.005, 0.02, 0.05]),
      crashAfterEarlyAppendRate: this.faultRand.pick([0, 0, 0.002, 0.01]),
      tailChurnRate: this.faultRand.pick([0, 0.5, 1, 1]),
      cutOnFirstCommitRate: this.faultRand.pick([0, 0.2, 0.5]),
    };
  }

  /**
   * A node that has just sent a durable promise (a granted vote, an acknowledgement of
   * entries) may crash at that very instant, before its disk syncs what is pending. In
   * correct code the promise is already durable by then, so the crash is harmless. The
   * node that collected the promise is cut off once the promise has reached it, so that
   * the rest of the cluster must get on without it and a forgotten promise decides the
   * outcome (a second leader in the term, a committed entry missing from a quorum).
   */
  private maybeCrashAfterPromise(from: SimNode, message: Message): void {
    if (this.now >= this.faultEndUnits || message.fromId === message.to) return;
    const body = message.body;
    if (body?.$case === 'appendRequest' && body.value.entries.length > 0) return this.maybeCrashAfterEarlyAppend(from);
    const vote = body?.$case === 'voteResponse' && body.value.granted && !body.value.preVote;
    const ack = body?.$case === 'appendResponse' && !body.value.rejected;
    if (!vote && !ack) return;
    if (!this.faultRand.chance(vote ? this.profile.crashAfterVoteRate : this.profile.crashAfterAckRate)) return;
    const incarnation = from.incarnation;
    this.at(0, () => {
      if (!from.up || from.incarnation !== incarnation || !from.disk.hasUnsyncedWrites()) return;
      this.log(`nemesis: crash node ${from.id} right after its ${vote ? 'vote' : 'ack'} to ${message.to}, before its writes sync`);
      this.crashNode(from);
      this.at(1 + this.faultRand.int(3 * UNITS_PER_TICK), () => {
        if (!from.up && this.now < this.faultEndUnits) this.restartNode(from);
      });
      const collector = this.nodes[message.to - 1]!;
      this.at(this.profile.maxDelayUnits + 1, () => this.isolateFor(collector, 1 + this.faultRand.int(40 * UNITS_PER_TICK), `it collected a promise from node ${from.id}`));
    });
  }

  /** A leader that has just sent entries may crash before its own write of them syncs (see crashAfterEarlyAppendRate). */
  private maybeCrashAfterEarlyAppend(from: SimNode): void {
    if (!this.faultRand.chance(this.profile.crashAfterEarlyAppendRate)) return;
    const incarnation = from.incarnation;
    this.at(0, () => {
      if (!from.up || from.incarnation !== incarnation || !from.disk.hasUnsyncedWrites()) return;
      this.log(`nemesis: crash leader ${from.id} right after sending entries, before its own write of them syncs`);
      this.crashNode(from);
      this.at(1 + this.faultRand.int(3 * UNITS_PER_TICK), () => {
        if (!from.up && this.now < this.faultEndUnits) this.restartNode(from);
      });
    });
  }

  /** Cuts a node off in both directions (what is in flight is lost too) for a while. */
  private isolateFor(node: SimNode, units: number, why: string): void {
    if (this.now >= this.faultEndUnits) return;
    const links = this.isolate(node);
    this.log(`nemesis: isolate node ${node.id} for ${(units / UNITS_PER_TICK).toFixed(1)} ticks: ${why}`);
    this.at(units, () => this.restoreLinks(links));
  }

  private isolate(node: SimNode): string[] {
    const links = this.nodes.filter((n) => n !== node).flatMap((n) => [`${node.id}>${n.id}`, `${n.id}>${node.id}`]);
    for (const link of links) this.cutLinks.set(link, (this.cutLinks.get(link) ?? 0) + 1);
    return links;
  }

  /** Undoes one isolate(); a no-op once healAll has restored everything. */
  private restoreLinks(links: readonly string[]): void {
    for (const link of links) {
      const count = this.cutLinks.get(link) ?? 0;
      if (count <= 1) this.cutLinks.delete(link);
      else this.cutLinks.set(link, count - 1);
    }
  }

  /**
   * A leader's first commit of its term is where counting an old-term entry would
   * show: cut the leader off (or crash it) right there, before its own entries spread.
   */
  private cutLeaderAtFirstCommit(node: SimNode): void {
    if (this.faultRand.chance(0.5)) {
      this.log(`nemesis: crash leader ${node.id} at its first commit of term ${node.lastCommitTerm}`);
      this.crashNode(node);
      this.at(1 + this.faultRand.int(30 * UNITS_PER_TICK), () => {
        if (!node.up && this.now < this.faultEndUnits) this.restartNode(node);
      });
    } else {
      this.isolateFor(node, 1 + this.faultRand.int(60 * UNITS_PER_TICK), `leader at its first commit of term ${node.lastCommitTerm}`);
    }
  }

  /**
   * The Figure 8 dance. Isolates a leader that holds uncommitted entries; once a newer
   * leader appears elsewhere, isolates that one and restores the one cut off before,
   * for a few rounds. Newcomers are cut alternately at once (their fresh entries stay
   * on them alone, in a higher term) and right after their first commit of the term
   * (what they committed may be an old-term entry only they and one follower hold):
   * logs whose tails come from different terms, and old leaders that come back to
   * replicate them.
   */
  private driveTailChurn(): void {
    if (this.profile.tailChurnRate === 0) return;
    const churn = this.tailChurn;
    if (!churn) return this.maybeStartTailChurn();
    const successor = this.nodes.find(
      (n) => n !== churn.isolated && n.up && n.replica?.node.role === 'leader' && n.replica.node.term > churn.term,
    );
    const term = successor?.replica!.node.term ?? 0;
    const ripe = successor !== undefined && (!churn.cutAfterFirstCommit || successor.lastCommitTerm === term);
    if (!successor || !ripe) {
      if (this.now < churn.giveUpUnits) return;
      this.restoreLinks(churn.links);
      this.log(`nemesis: tail churn: no newer leader in time; restore node ${churn.isolated.id}`);
      this.tailChurn = undefined;
      return;
    }
    const links = this.isolate(successor);
    this.restoreLinks(churn.links);
    this.log(`nemesis: tail churn: isolate leader ${successor.id} of term ${term}${churn.cutAfterFirstCommit ? ' after its first commit' : ''}, restore node ${churn.isolated.id}`);
    if (churn.roundsLeft <= 1) {
      this.at(1 + this.faultRand.int(40 * UNITS_PER_TICK), () => this.restoreLinks(links));
      this.tailChurn = undefined;
      return;
    }
    this.tailChurn = this.nextChurnRound(successor, term, links, churn.roundsLeft - 1, !churn.cutAfterFirstCommit);
  }

  private maybeStartTailChurn(): void {
    for (const node of this.nodes) {
      const status = node.up ? node.replica?.node.status() : undefined;
      // A leader that has committed in its term and has more in flight: its tail holds
      // client entries (a fresh leader's lone no-op is newLeaderIsolationRate's business).
      if (status?.role !== 'leader' || node.lastCommitTerm !== status.term || status.lastIndex <= status.commitIndex) continue;
      if (this.churnConsideredTerms.has(status.term)) continue;
      this.churnConsideredTerms.add(status.term);
      if (!this.faultRand.chance(this.profile.tailChurnRate)) continue;
      const rounds = 2 + this.faultRand.int(4);
      this.log(`nemesis: tail churn: isolate leader ${node.id} of term ${status.term} with uncommitted ${status.commitIndex + 1}..${status.lastIndex} (${rounds} rounds)`);
      this.tailChurn = this.nextChurnRound(node, status.term, this.isolate(node), rounds, this.faultRand.chance(0.5));
      return;
    }
  }

  private nextChurnRound(isolated: SimNode, term: number, links: string[], roundsLeft: number, cutAfterFirstCommit: boolean): TailChurn {
    return { isolated, term, links, roundsLeft, cutAfterFirstCommit, giveUpUnits: this.now + 100 * UNITS_PER_TICK };
  }

  // ------------------------------------------------------------ membership
  //
  // During the fault phase, now and then: a brand-new node (empty disk) joins as a
  // learner and is promoted once it has caught up; a voter (sometimes the leader) is
  // removed while a majority of the remaining voters is up; leadership is transferred.
  // A node that a committed configuration no longer holds is shut down for good, as an
  // operator would.

  private newSimNode(id: NodeId, joined: boolean): SimNode {
    const disk = new SimDisk(() => this.sleep(1 + this.rand.int(4)));
    return { id, disk, up: false, starting: false, incarnation: 0, checkedCommit: 0, lastRole: '', lastTerm: 0, lastCommitTerm: 0, joined, everMember: !joined, removed: false, watchNext: 1 };
  }

  private scheduleMembership(): void {
    if (this.membershipEveryUnits === 0) return;
    const act = () => {
      if (this.now >= this.faultEndUnits) return;
      this.membershipAction();
      this.at(1 + this.memberRand.int(2 * this.membershipEveryUnits), act);
    };
    this.at(this.memberRand.int(2 * this.membershipEveryUnits), act);
  }

  private membershipAction(): void {
    const leader = this.nodes.find((n) => n.up && n.replica?.node.role === 'leader');
    if (!leader) return;
    const config = leader.replica!.clusterConfig();
    // A node that joined and is not a voter yet: add it (again, if its add was lost) or promote it.
    const joiner = this.nodes.find((n) => n.joined && !n.removed && !config.voters.some((m) => m.id === n.id));
    if (joiner && this.memberRand.chance(0.6)) {
      const isLearner = config.learners.some((m) => m.id === joiner.id);
      return this.proposeMembership(leader, isLearner ? promoteChange(joiner.id) : addLearnerChange(joiner.id), `${isLearner ? 'promote' : 'add learner'} ${joiner.id}`);
    }
    const kind = this.memberRand.pick(['add', 'remove', 'transfer', 'transfer'] as const);
    if (kind === 'add' && this.joinsLeft > 0 && this.newNodeCanCatchUp(leader)) this.joinNewNode(leader);
    else if (kind === 'remove') this.removeVoter(leader, config);
    else if (kind === 'transfer') return this.transferLeadership(leader, config);
    else return;
    // Now and then a second change at once, which one-at-a-time must refuse while the first is uncommitted.
    if (this.memberRand.chance(0.3)) this.removeVoter(leader, leader.replica!.clusterConfig());
  }

  /**
   * Without compaction a new node copies the whole log, at the replication rate this seed
   * drew: with a window of one entry per round trip (and a lone voter whose clients
   * commit at disk speed) it could never catch up within the convergence deadline, so
   * such seeds add nodes only while the log is short.
   */
  private newNodeCanCatchUp(leader: SimNode): boolean {
    const { maxEntriesPerAppend, maxInflightAppends, maxBytesPerAppend } = this.tuning;
    const fastReplication = maxEntriesPerAppend >= 8 && maxInflightAppends >= 4 && maxBytesPerAppend === undefined;
    // A seed that compacts catches a newcomer up with a snapshot and the short tail after it.
    const compacts = this.snapshotProfile.snapshotEntries <= MAX_SLOW_JOIN_LOG_ENTRIES;
    if (fastReplication || compacts) return true;
    // A lone voter commits at disk speed, faster than a slow link copies: the learner falls ever further behind.
    return this.bootstrapVoters.length > 1 && leader.replica!.node.status().lastIndex < MAX_SLOW_JOIN_LOG_ENTRIES;
  }

  private joinNewNode(leader: SimNode): void {
    this.joinsLeft--;
    const node = this.newSimNode(this.nodes.length + 1, true);
    this.nodes.push(node);
    this.log(`nemesis: member: start new node ${node.id} (empty disk) to join`);
    this.restartNode(node);
    this.scheduleTicks(node, 1 + this.memberRand.int(UNITS_PER_TICK));
    this.proposeMembership(leader, addLearnerChange(node.id), `add learner ${node.id}`);
  }

  /**
   * Removes a voter, the leader itself now and then, keeping at least two voters (one in a
   * seed that boots with one) and a majority of the remaining voters up.
   */
  private removeVoter(leader: SimNode, config: ClusterConfig): void {
    const voters = config.voters.map((m) => m.id);
    const remaining = voters.length - 1;
    if (remaining < Math.min(2, this.bootstrapVoters.length)) return;
    const victimId = this.memberRand.chance(0.3) ? leader.id : this.memberRand.pick(voters);
    const upAfter = voters.filter((id) => id !== victimId && this.nodes[id - 1]!.up).length;
    if (upAfter < majoritySize(remaining)) return;
    this.proposeMembership(leader, removeChange(victimId), `remove ${victimId === leader.id ? 'the leader ' : 'voter '}${victimId}`);
  }

  private transferLeadership(leader: SimNode, config: ClusterConfig): void {
    const others = config.voters.map((m) => m.id).filter((id) => id !== leader.id);
    const target = others.length > 0 && this.memberRand.chance(0.7) ? this.memberRand.pick(others) : undefined;
    this.log(`nemesis: member: transfer leadership from ${leader.id} to ${target ?? 'the most caught-up voter'}`);
    leader.replica!.transferLeadership(target).then(
      (next) => {
        this.membershipStats.transfers++;
        this.log(`member: leadership transferred from ${leader.id} to ${next}`);
      },
      (err: unknown) => this.log(`member: transfer from ${leader.id} failed: ${describeError(err)}`),
    );
  }

  private proposeMembership(leader: SimNode, change: ConfigChange, what: string): void {
    this.log(`nemesis: member: ${what} (leader ${leader.id})`);
    leader.replica!.proposeConfigChange(change).then(
      (config) => {
        this.membershipStats.changes++;
        this.log(`member: ${what} applied on ${leader.id}: voters {${config.voters.map((m) => m.id)}} learners {${config.learners.map((m) => m.id)}}`);
      },
      (err: unknown) => this.log(`member: ${what} refused or lost: ${describeError(err)}`),
    );
  }

  /**
   * Shuts down, for good, every node that was a member and that the latest committed
   * configuration (the one at the highest commit index any live node knows) no longer
   * holds. Committed configurations never go back, so this never retires a member.
   */
  private retireRemovedMembers(): void {
    if (this.membershipEveryUnits === 0) return;
    let best: { node: SimNode; commit: number } | undefined;
    for (const node of this.nodes) {
      if (!node.up || !node.replica) continue;
      const commit = node.checkedCommit;
      if (!best || commit > best.commit) best = { node, commit };
    }
    // Nodes that knew a later commit may be down now: keep the highest ever seen.
    if (best && best.commit > this.latestCommittedConfig.index) {
      this.latestCommittedConfig = { index: best.commit, members: membersOf(best.node.replica!.node.configAt(best.commit)), seenOn: best.node.id };
    }
    const committed = new Set(this.latestCommittedConfig.members);
    for (const node of this.nodes) {
      if (committed.has(node.id)) node.everMember = true;
      if (node.removed || !node.everMember || committed.has(node.id)) continue;
      node.removed = true;
      this.log(`nemesis: member: node ${node.id} is out of the committed config at ${this.latestCommittedConfig.index} (seen on ${this.latestCommittedConfig.seenOn}): shut down`);
      if (node.up) {
        node.up = false;
        void node.replica?.stop();
        node.replica = undefined;
      }
    }
  }

  // --------------------------------------------------------------- clients

  /** A client with several lanes: each lane is one op at a time, all share the client's session. */
  private lanesStarted = 0;

  private startClient(id: number, clientCount: number): void {
    const client: SimClient = { id, generation: 0, session: this.newSession(id, 0), pausedUntil: 0 };
    // Every client gets a lane; what the budget leaves, the earlier ones may share.
    const spare = MAX_LANES - this.lanesStarted - (clientCount - id);
    const lanes = Math.max(1, Math.min(1 + this.rand.int(MAX_WRITES_IN_FLIGHT), spare));
    this.lanesStarted += lanes;
    for (let lane = 1; lane <= lanes; lane++) void this.runLane(client, id * 10 + lane);
  }

  private newSession(client: number, generation: number): ClientSession {
    return { clientId: `client-${client}-g${generation}`, nextSequence: 1, unanswered: new Set(), exists: false };
  }

  /** `lane` is the history's client: one op at a time. */
  private async runLane(client: SimClient, lane: number): Promise<void> {
    this.clientsRunning++;
    const keys = ['a', 'b', 'c', 'd'];
    try {
      while (this.now < this.clientsStopUnits && !this.failure) {
        await this.sleep(this.rand.int(3 * UNITS_PER_TICK));
        if (this.now < client.pausedUntil) await this.sleep(client.pausedUntil - this.now);
        if (this.tightSessions() && this.rand.chance(0.01)) this.pauseClient(client);
        const key = this.rand.pick(keys);
        const kind = this.casEnabled ? this.rand.pick(['put', 'put', 'get', 'get', 'delete', 'cas', 'cas'] as const) : this.rand.pick(['put', 'put', 'get', 'get', 'delete'] as const);
        if (kind === 'get') await this.clientGet(lane, key);
        else await this.clientWrite(client, lane, kind, key);
      }
    } catch (err) {
      this.fail(`client ${lane} crashed: ${(err as Error).stack ?? err}`);
    } finally {
      this.clientsRunning--;
    }
  }

  /** The client stops starting ops for longer than the idle timeout: its session may be evicted. */
  private pauseClient(client: SimClient): void {
    const units = Math.ceil(this.sessionLimits.sessionIdleTimeoutMs / MS_PER_UNIT) + this.rand.int(20 * UNITS_PER_TICK);
    client.pausedUntil = Math.max(client.pausedUntil, this.now + units);
    this.log(`client ${client.id}: pauses for ${units / UNITS_PER_TICK} ticks`);
  }

  private async clientWrite(client: SimClient, lane: number, kind: 'put' | 'delete' | 'cas', key: string): Promise<void> {
    const session = client.session;
    const sequence = session.nextSequence++;
    if (session.unanswered.size > 0) this.concurrentWrites++;
    session.unanswered.add(sequence);
    const value = kind !== 'delete' ? `c${client.id}g${client.generation}s${sequence}` : undefined;
    // A CAS expects what this key was last seen to hold (often stale under concurrency), or absence.
    const expected = kind === 'cas' ? (this.rand.chance(0.2) ? null : (this.lastSeen.get(key) ?? null)) : undefined;
    const keyBytes = Buffer.from(key);
    const nestedCas = kind === 'cas' && sequence % CAS_NESTED_EVERY === 0;
    const name = `client ${lane}: ${kind}${nestedCas ? ' (nested)' : ''} ${key}${expected !== undefined ? ` if ${expected}` : ''}${value ? '=' + value : ''} (${session.clientId} #${sequence})`;
    const call = this.eventTime();
    const deadline = call + CLIENT_OP_DEADLINE_UNITS;
    let maybeApplied = false;
    let failedAttempts = 0;
    try {
      while (this.now < deadline) {
        const replica = this.pickLeader();
        if (!replica) {
          await this.sleep(UNITS_PER_TICK);
          continue;
        }
        // Sent afresh with each attempt: answers to other lanes may have raised it.
        const lowestUnansweredSequence = Math.min(...session.unanswered);
        const write = { key: keyBytes, prevKv: false, clientId: session.clientId, sequence, lowestUnansweredSequence };
        const authUser = this.authEveryUnits > 0 ? simUser(client.id) : undefined;
        const command: Command =
          kind === 'put'
            ? { op: { $case: 'put', value: { ...write, value: Buffer.from(value!) } }, proposedAtUnixMs: 0, authUser }
            : kind === 'delete'
              ? { op: { $case: 'delete', value: write }, proposedAtUnixMs: 0, authUser }
              : { op: { $case: 'txn', value: casTxn(write, expected!, value!, nestedCas) }, proposedAtUnixMs: 0, authUser };
        // Each attempt waits longer: a slow cluster's queue must not fill with retries of writes it is still committing.
        const outcome = await this.withTimeout(replica.propose(command), CLIENT_ATTEMPT_TIMEOUT_UNITS * Math.min(2 ** failedAttempts, 4));
        if (outcome.ok && outcome.value.error?.code === ErrorCode.PERMISSION_DENIED) {
          if (this.onPermissionDenied(name, outcome.value.error)) break;
        } else if (outcome.ok && outcome.value.error) {
          if (this.onSessionRefusal(client, session, name, outcome.value.error)) break;
        } else if (outcome.ok) {
          const op = outcome.value.op;
          const output = op?.$case === 'delete' ? { existed: op.value.deleted } : op?.$case === 'txn' ? { succeeded: casSucceeded(op.value) } : {};
          this.history.push({ client: lane, kind, key, value, expected, output, call, ret: this.eventTime(), known: true });
          if (value !== undefined && (kind === 'put' || output.succeeded)) this.lastSeen.set(key, value);
          if (kind === 'cas') this.casStats[output.succeeded ? 'swapped' : 'refused']++;
          if (nestedCas) this.casStats.nested++;
          session.exists = true;
          this.log(`${name} ok ${JSON.stringify(output)}`);
          return;
        } else {
          maybeApplied ||= outcome.maybeApplied;
        }
        // Back off as real clients do: with several writes in flight per client, retrying
        // every tick would grow the log faster than a slow cluster replicates it.
        await this.sleep(UNITS_PER_TICK * Math.min(2 ** failedAttempts++, MAX_RETRY_BACKOFF_TICKS));
      }
      // Given up (or expired): this attempt changed nothing, an earlier one may have.
      if (maybeApplied) {
        this.history.push({ client: lane, kind, key, value, expected, call, known: false });
        this.log(`${name} UNKNOWN`);
      }
    } finally {
      // Answered or given up: the client never retries it again.
      session.unanswered.delete(sequence);
    }
  }

  /**
   * A write refused inside apply (not applied). Returns true when the write is over:
   * SESSION_EXPIRED starts a new session; SESSION_LIMIT is retried. With the default
   * limits nothing is evicted, so only a session that may never have been created (its
   * first writes were all given up) may be refused as expired. SESSION_NOT_OWNED (a
   * session started before auth was enabled) starts a new session too, and only a seed
   * with auth on may meet it.
   */
  private onSessionRefusal(client: SimClient, session: ClientSession, name: string, error: { code: string; message: string }): boolean {
    this.log(`${name} refused: ${error.code} ${error.message}`);
    if (error.code === ErrorCode.SESSION_LIMIT) {
      this.sessionErrors.limit++;
      return false;
    }
    if (error.code === ErrorCode.SESSION_NOT_OWNED) {
      if (this.authEveryUnits === 0) this.fail(`${name} refused with ${error.code} although auth is off in this run: ${error.message}`);
      this.authStats.notOwned++;
    } else if (error.code !== ErrorCode.SESSION_EXPIRED || (session.exists && !this.tightSessions())) {
      this.fail(`${name} refused with ${error.code} although no session can be evicted in this run: ${error.message}`);
      return true;
    } else {
      this.sessionErrors.expired++;
    }
    if (client.session === session) {
      client.generation++;
      client.session = this.newSession(client.id, client.generation);
      this.log(`client ${client.id}: new session ${client.session.clientId}`);
    }
    return true;
  }

  /**
   * A write refused at apply for its user's permission: not applied, and over. Only a seed
   * with auth on, and only once the admin has proposed a revocation, may refuse one (until
   * then every user may write every key): anything else is a bug.
   */
  private onPermissionDenied(name: string, error: { code: string; message: string }): boolean {
    this.log(`${name} refused: ${error.code} ${error.message}`);
    if (this.authEveryUnits === 0 || this.revokesProposed === 0) {
      this.fail(`${name} refused with ${error.code} although no permission was ever revoked in this run: ${error.message}`);
      return true;
    }
    this.authStats.deniedWrites++;
    return true;
  }

  /**
   * The auth nemesis: sets up a root user, one user per client and a role that may write
   * every key, enables auth, then every so often revokes the role's permission and grants
   * it again, all through the log while the clients write. Refused writes are over and
   * not applied; every replica must decide alike (the digests cover the auth state).
   */
  private newSimLeases(rand: SeededRandom): SimLeases {
    return new SimLeases(rand, {
      nowUnits: () => this.now,
      msPerUnit: MS_PER_UNIT,
      unitsPerTick: UNITS_PER_TICK,
      sleep: (units) => this.sleep(units),
      leaders: () =>
        this.nodes
          .filter((n) => n.up && n.replica && n.leaseKeeper && n.replica.node.role === 'leader')
          .map((n) => ({ replica: n.replica!, keeper: n.leaseKeeper! })),
      running: () => this.now < this.clientsStopUnits && !this.failure,
      fail: (message) => this.fail(message),
      log: (line) => this.log(line),
    });
  }

  private async runLeaseClient(): Promise<void> {
    this.clientsRunning++;
    try {
      await this.simLeases.run();
    } finally {
      this.clientsRunning--;
    }
  }

  private async runAuthAdmin(clientCount: number): Promise<void> {
    this.clientsRunning++;
    const everyKey = { key: Buffer.alloc(0), prefix: true };
    const grant: AuthCommand['op'] = { $case: 'roleGrantPermission', value: { name: SIM_ROLE, permission: { type: PermissionType.PERMISSION_TYPE_READWRITE, ...everyKey } } };
    const revoke: AuthCommand['op'] = { $case: 'roleRevokePermission', value: { name: SIM_ROLE, ...everyKey } };
    const setup: AuthCommand['op'][] = [
      { $case: 'userAdd', value: { name: 'root', passwordHash: SIM_PASSWORD_HASH } },
      { $case: 'roleAdd', value: { name: SIM_ROLE } },
      grant,
    ];
    for (let c = 1; c <= clientCount; c++) {
      setup.push({ $case: 'userAdd', value: { name: simUser(c), passwordHash: SIM_PASSWORD_HASH } });
      setup.push({ $case: 'userGrantRole', value: { user: simUser(c), role: SIM_ROLE } });
    }
    setup.push({ $case: 'authEnable', value: { signingKey: Buffer.alloc(32, 5) } });
    try {
      for (const op of setup) if (!(await this.adminPropose(op))) return;
      while (this.now < this.clientsStopUnits && !this.failure) {
        await this.sleep(1 + this.authRand.int(2 * this.authEveryUnits));
        this.revokesProposed++;
        if (!(await this.adminPropose(revoke))) return;
        await this.sleep(1 + this.authRand.int(this.authEveryUnits));
        if (!(await this.adminPropose(grant))) return;
      }
    } catch (err) {
      this.fail(`auth admin crashed: ${(err as Error).stack ?? err}`);
    } finally {
      this.clientsRunning--;
    }
  }

  /** Every 20 ticks, asks the leader to compact the history to all but its last historyKeepRevisions revisions. */
  private async runHistoryCompactor(): Promise<void> {
    this.clientsRunning++;
    try {
      while (this.now < this.clientsStopUnits && !this.failure) {
        await this.sleep(20 * UNITS_PER_TICK);
        const replica = this.pickLeader();
        const revision = (replica?.stateMachine.revision() ?? 0) - this.historyKeepRevisions;
        if (!replica || revision <= 0) continue;
        const command: Command = { op: { $case: 'compact', value: { revision } }, proposedAtUnixMs: 0, authUser: this.authEveryUnits > 0 ? 'root' : undefined };
        const outcome = await this.withTimeout(replica.propose(command));
        if (outcome.ok) this.log(`compactor: compact to ${revision} ${outcome.value.error ? `refused: ${outcome.value.error.code}` : 'ok'}`);
      }
    } catch (err) {
      this.fail(`history compactor crashed: ${(err as Error).stack ?? err}`);
    } finally {
      this.clientsRunning--;
    }
  }

  /**
   * Proposes one auth command as root until an attempt is answered; false once the clients
   * have stopped. Auth commands carry no session: a retry after a lost answer may apply a
   * second time and be refused as a no-op (the user exists), which is fine.
   */
  private async adminPropose(op: AuthCommand['op']): Promise<boolean> {
    const command: Command = { op: { $case: 'auth', value: { op } }, proposedAtUnixMs: 0, authUser: 'root' };
    while (this.now < this.clientsStopUnits && !this.failure) {
      const replica = this.pickLeader();
      const outcome = replica ? await this.withTimeout(replica.propose(command)) : undefined;
      if (outcome?.ok) {
        this.authStats.changes++;
        this.log(`auth admin: ${op!.$case} ${outcome.value.error ? `refused: ${outcome.value.error.code} ${outcome.value.error.message}` : 'ok'}`);
        return true;
      }
      await this.sleep(UNITS_PER_TICK);
    }
    return false;
  }

  /**
   * The time of a client call or return for the history: the simulated time, plus a
   * fraction that orders the events of one instant as they happened. Many events share an
   * instant (a lone voter answers a read within it), and the checker would otherwise have
   * to guess their order (it takes returns first, which can invent a precedence).
   */
  private eventTime(): number {
    if (this.now !== this.eventInstant) {
      this.eventInstant = this.now;
      this.eventsThisInstant = 0;
    }
    assert(this.eventsThisInstant < MAX_CLIENT_EVENTS_PER_INSTANT, `more than ${MAX_CLIENT_EVENTS_PER_INSTANT} client events at one instant`);
    return this.now + this.eventsThisInstant++ / MAX_CLIENT_EVENTS_PER_INSTANT;
  }

  private async clientGet(client: number, key: string): Promise<void> {
    const call = this.eventTime();
    const deadline = call + CLIENT_OP_DEADLINE_UNITS;
    while (this.now < deadline) {
      const replica = this.pickLeader();
      if (!replica) {
        await this.sleep(UNITS_PER_TICK);
        continue;
      }
      const outcome = await this.withTimeout(replica.readBarrier().then(() => replica.stateMachine.get(Buffer.from(key))));
      if (outcome.ok) {
        const value = outcome.value ? outcome.value.value.toString() : null;
        this.history.push({ client, kind: 'get', key, output: { value }, call, ret: this.eventTime(), known: true });
        if (value !== null) this.lastSeen.set(key, value);
        this.log(`client ${client}: get ${key} -> ${value}`);
        return;
      }
      await this.sleep(UNITS_PER_TICK);
    }
  }

  /**
   * Any replica that believes it leads, deposed ones included (a client with stale
   * leader information reaches them too: that is where stale reads would show), or
   * now and then a random live one.
   */
  private pickLeader(): KvReplica | undefined {
    const up = this.nodes.filter((n) => n.up && n.replica);
    if (up.length === 0) return undefined;
    const leaders = up.filter((n) => n.replica!.node.role === 'leader');
    if (leaders.length > 0 && this.rand.chance(0.9)) return this.rand.pick(leaders).replica;
    return this.rand.pick(up).replica;
  }

  /** Settles a request, or gives up on it after the attempt timeout. */
  private async withTimeout<T>(
    promise: Promise<T>,
    timeoutUnits = CLIENT_ATTEMPT_TIMEOUT_UNITS,
  ): Promise<{ ok: true; value: T } | { ok: false; maybeApplied: boolean }> {
    const outcome = promise.then(
      (value) => ({ ok: true as const, value }),
      (err: unknown) => ({ ok: false as const, maybeApplied: !definitelyNotApplied(err) }),
    );
    const timedOut = this.sleep(timeoutUnits).then(() => ({ ok: false as const, maybeApplied: true }));
    return Promise.race([outcome, timedOut]);
  }

  // ------------------------------------------------------------ invariants

  private checkInvariants(): void {
    for (const node of this.nodes) {
      const replica = node.replica;
      if (!node.up || !replica) continue;
      const status = replica.node.status();
      if (status.role !== node.lastRole || status.term !== node.lastTerm) {
        this.log(`node ${node.id}: ${status.role} in term ${status.term} (last ${status.lastIndex}/${status.lastTerm}, commit ${status.commitIndex})`);
        node.lastRole = status.role;
        node.lastTerm = status.term;
      }
      if (replica.node.rejectedMessages.length > 0) {
        return this.fail(`node ${node.id} rejected a peer message: ${replica.node.rejectedMessages[0]}`);
      }
      if (status.role === 'leader') this.checkLeader(node, status.term);
      const advanced = status.commitIndex > node.checkedCommit;
      this.checkCommitted(node, status.commitIndex);
      if (advanced && status.role === 'leader' && this.now < this.faultEndUnits) {
        const firstInTerm = node.lastCommitTerm !== status.term;
        node.lastCommitTerm = status.term;
        if (this.rand.chance(this.profile.crashOnCommitRate)) this.crashLeaderAfterCommit(node);
        else if (firstInTerm && this.faultRand.chance(this.profile.cutOnFirstCommitRate)) this.cutLeaderAtFirstCommit(node);
      }
    }
    if (this.now < this.faultEndUnits) this.driveTailChurn();
    this.retireRemovedMembers();
  }

  /** Election safety and leader completeness. */
  private checkLeader(node: SimNode, term: number): void {
    const known = this.leadersByTerm.get(term);
    if (known === node.id) return;
    // Across configuration changes too: every node ever started, joined and removed ones included.
    if (known !== undefined) return this.fail(`election safety: nodes ${known} and ${node.id} both led term ${term}`);
    this.leadersByTerm.set(term, node.id);
    // Only voters of the leader's config vote it in: that config read from its log here, not from the core's bookkeeping.
    const { electedBy, commitIndex } = node.replica!.node.status();
    const voters = this.votersInLog(node);
    // Itself a voter of that config, or of the committed one while its own removal is in flight.
    if (!voters.includes(node.id) && !this.votersInLog(node, commitIndex).includes(node.id)) {
      return this.fail(`leader ${node.id} of term ${term} is not a voter of its config {${voters}}, nor of its committed one`);
    }
    const strangers = electedBy.filter((id) => !voters.includes(id));
    if (strangers.length > 0 || electedBy.length < majoritySize(voters.length)) {
      return this.fail(`leader ${node.id} of term ${term} was elected by {${electedBy}}, not a majority of the voters {${voters}} of its config`);
    }
    if (this.now < this.faultEndUnits && this.rand.chance(this.profile.newLeaderIsolationRate)) this.isolateBriefly(node);
    for (const [index, identity] of this.committed) {
      // A leader of an older term may be elected after a newer term committed entries
      // (its votes were cast before, delivered late); it needs only what came before it.
      if (this.committedByTerm.get(index)! >= term) continue;
      // Compacted: covered by its snapshot, whose state the digest invariant checks.
      if (index < node.replica!.node.status().firstIndex) continue;
      const entry = node.replica!.node.entryAt(index);
      if (!entry || entryIdentity(entry) !== identity) {
        return this.fail(`leader completeness: leader ${node.id} of term ${term} lacks committed entry ${index}`);
      }
    }
  }

  /** The voters of the latest config entry in a node's log up to `upTo` (the bootstrap voters when there is none). */
  private votersInLog(node: SimNode, upTo = node.replica!.node.status().lastIndex): NodeId[] {
    const core = node.replica!.node;
    for (let index = upTo; index >= 1; index--) {
      const entry = core.entryAt(index);
      if (!entry) return core.configAt(index).voters.map((m) => m.id); // compacted: the snapshot's config
      if (entry.type === EntryType.ENTRY_TYPE_CONFIG) return ClusterConfig.decode(entry.data).voters.map((m) => m.id);
    }
    return this.bootstrapVoters;
  }

  /** A committed entry never changes, whoever commits it. */
  private checkCommitted(node: SimNode, commitIndex: number): void {
    // Entries before the first index were compacted or replaced by an installed snapshot
    // before this check saw them: the snapshot's state is checked by its digest instead.
    const firstIndex = node.replica!.node.status().firstIndex;
    for (let index = Math.max(node.checkedCommit + 1, firstIndex); index <= commitIndex; index++) {
      const entry = node.replica!.node.entryAt(index);
      if (!entry) return this.fail(`node ${node.id} says ${commitIndex} is committed but lacks entry ${index}`);
      this.recordCommitted(`node ${node.id} committed`, index, entryIdentity(entry), node.replica!.node.term);
    }
    node.checkedCommit = Math.max(node.checkedCommit, commitIndex);
  }

  /** State-machine safety: every node applies the same entry at each index. */
  private checkApplied(node: SimNode, entry: Entry): void {
    this.simLeases.onApplied(entry);
    this.recordCommitted(`node ${node.id} applied`, entry.index, entryIdentity(entry), node.replica?.node.term ?? Infinity);
  }

  /** State-machine safety at snapshot granularity: every node's state at an applied index is the same. */
  private checkDigest(who: string, index: number, digest: string): void {
    const known = this.digestsByIndex.get(index);
    if (known === undefined) this.digestsByIndex.set(index, { digest, who });
    else if (known.digest !== digest) this.fail(`${who} holds state ${digest} at applied index ${index}, but ${known.who} held ${known.digest} there`);
  }

  private recordCommitted(who: string, index: number, identity: string, term: number): void {
    this.committedByTerm.set(index, Math.min(term, this.committedByTerm.get(index) ?? Infinity));
    const known = this.committed.get(index);
    if (known === undefined) this.committed.set(index, identity);
    else if (known !== identity) this.fail(`${who} ${identity} at index ${index}, but ${known} was committed there`);
  }

  /** Every current member (of the config the leader has committed) holds and has applied the leader's whole log. */
  private converged(): boolean {
    const leaders = this.nodes.filter((n) => n.up && n.replica?.node.role === 'leader');
    if (leaders.length === 0) return false;
    const leaderNode = leaders.reduce((a, b) => (b.replica!.node.term > a.replica!.node.term ? b : a));
    const leader = leaderNode.replica!.node.status();
    if (leader.commitIndex !== leader.lastIndex) return false;
    const members = membersOf(leader.config).map((id) => this.nodes[id - 1]!);
    if (members.some((n) => !n.up || !n.replica)) return false;
    return members
      .map((n) => n.replica!.node.status())
      .every(
        (s) => s.lastIndex === leader.lastIndex && s.appliedIndex === leader.lastIndex && this.nodes[s.id - 1]!.replica!.stateMachine.appliedIndex() === leader.lastIndex,
      );
  }

  /** The nodes of the converged cluster's configuration. */
  private currentMembers(): SimNode[] {
    const leader = this.nodes.find((n) => n.up && n.replica?.node.role === 'leader')!;
    return membersOf(leader.replica!.node.clusterConfig()).map((id) => this.nodes[id - 1]!);
  }

  private describeNodes(): string {
    return this.nodes
      .map((n) => (n.up && n.replica ? JSON.stringify({ ...n.replica.node.status(), config: undefined, progress: n.replica.node.role === "leader" ? n.replica.node.status().progress : undefined }) : `node ${n.id} down`))
      .join('; ');
  }

  // ------------------------------------------------------------ final state

  private async checkFinalState(): Promise<void> {
    this.log(`converged: ${this.describeNodes()}`);
    this.checkLogMatching();
    const digests = await Promise.all(this.currentMembers().map((n) => kvDigest(n.db!)));
    if (new Set(digests).size !== 1) throw new SimulationFailure(`replicas differ after convergence: kv digests ${digests.join(', ')}`);
    const result = checkLinearizable(this.history);
    if (result.kind !== 'linearizable') {
      throw new SimulationFailure(`history is ${result.kind} on key ${result.key}: ${result.explanation}`);
    }
  }

  /** Log matching: every pair of logs is identical (after convergence, in full). */
  private checkLogMatching(): void {
    const [first, ...rest] = this.currentMembers().map((n) => n.replica!.node);
    for (const other of rest) {
      const from = Math.max(first!.status().firstIndex, other.status().firstIndex);
      for (let index = from; index <= first!.status().lastIndex; index++) {
        const a = first!.entryAt(index);
        const b = other.entryAt(index);
        if (!a || !b || entryIdentity(a) !== entryIdentity(b)) {
          throw new SimulationFailure(`log matching: nodes ${first!.id} and ${other.id} differ at index ${index}`);
        }
      }
    }
  }
}

interface CheckHooks {
  /** Every entry applied, for the state-machine safety check. */
  onApply(entry: Entry): void;
  /** The digest of the state after each apply batch and each restore, at its applied index. */
  onState(index: number, digest: string): void;
  /** A restore's switch batch is about to be built (staging is complete). */
  beforeSwitch(): void;
  /** A restore's switch batch was written; the new state is not served yet. */
  afterSwitch(): void;
}

/**
 * The kv state machine with the simulator's checks: applied entries and the state's digest
 * at every applied index are recorded, and restores can be crashed around their switch.
 */
class CheckedStateMachine implements StateMachine {
  constructor(
    private readonly inner: KvStateMachine,
    private readonly db: Db,
    private readonly hooks: CheckHooks,
  ) {}

  appliedIndex(): number {
    return this.inner.appliedIndex();
  }

  revision(): number {
    return this.inner.revision();
  }

  logTimeUnixMs(): number {
    return this.inner.logTimeUnixMs();
  }

  async apply(entries: readonly Entry[], decided?: (outcomes: readonly ApplyOutcome[]) => void): Promise<ApplyOutcome[]> {
    for (const entry of entries) this.hooks.onApply(entry);
    const outcomes = await this.inner.apply(entries, decided);
    // The shell runs nothing else against the state machine until apply returns.
    this.hooks.onState(this.inner.appliedIndex(), await stateDigest(this.db));
    return outcomes;
  }

  get(key: Uint8Array) {
    return this.inner.get(key);
  }

  getAt(key: Uint8Array) {
    return this.inner.getAt(key);
  }

  range(options: Parameters<StateMachine['range']>[0]) {
    return this.inner.range(options);
  }

  authState() {
    return this.inner.authState();
  }

  leaseTable() {
    return this.inner.leaseTable();
  }

  snapshot(): Promise<FsmSnapshot> {
    return this.inner.snapshot();
  }

  async beginRestore(): Promise<FsmRestore> {
    const restore = await this.inner.beginRestore();
    const { hooks, db, inner } = this;
    return {
      write: (chunk) => restore.write(chunk),
      appliedIndex: () => restore.appliedIndex(),
      switchOps: () => {
        hooks.beforeSwitch();
        return restore.switchOps();
      },
      activate: async () => {
        hooks.afterSwitch();
        await restore.activate();
        hooks.onState(inner.appliedIndex(), await stateDigest(db));
      },
      abort: () => restore.abort(),
    };
  }
}

function membersOf(config: ClusterConfig): NodeId[] {
  return [...config.voters, ...config.learners].map((m) => m.id);
}

function entryIdentity(entry: Entry): string {
  return `${entry.term}/${entry.type}/${Buffer.from(entry.data).toString('hex')}`;
}

/**
 * Errors after which a write surely did not and will not take effect. (A refusal inside
 * apply, SESSION_LIMIT or SESSION_EXPIRED, is a result, not an error: onSessionRefusal.)
 */
function definitelyNotApplied(err: unknown): boolean {
  return (
    isCairnError(err, ErrorCode.NOT_LEADER) ||
    isCairnError(err, ErrorCode.OVERLOADED) ||
    isCairnError(err, ErrorCode.LEADER_TRANSFERRING) ||
    isCairnError(err, ErrorCode.PROPOSAL_DROPPED)
  );
}

const simMember = (id: NodeId) => ({ id, peerAddr: `sim-${id}`, clientAddr: '' });
const addLearnerChange = (id: NodeId): ConfigChange => ({ type: ConfigChangeType.CONFIG_CHANGE_TYPE_ADD_LEARNER, member: simMember(id) });
const promoteChange = (id: NodeId): ConfigChange => ({ type: ConfigChangeType.CONFIG_CHANGE_TYPE_PROMOTE, member: simMember(id) });
const removeChange = (id: NodeId): ConfigChange => ({ type: ConfigChangeType.CONFIG_CHANGE_TYPE_REMOVE, member: simMember(id) });

function describeError(err: unknown): string {
  return isCairnError(err) ? `${err.code} ${err.message}` : String((err as Error)?.message ?? err);
}

/** The digest of the replicated state: kv and sessions (both generational: the current generation's). */
async function stateDigest(db: Db): Promise<string> {
  const hash = createHash('sha256');
  for await (const [key, value] of db.entries('kv')) hash.update('k').update(key).update(value);
  for await (const [key, value] of db.entries('sessions')) hash.update('s').update(key).update(value);
  for await (const [key, value] of db.entries('auth')) hash.update('a').update(key).update(value);
  for await (const [key, value] of db.entries('history')) hash.update('h').update(key).update(value);
  for await (const [key, value] of db.entries('leases')) hash.update('l').update(key).update(value);
  return hash.digest('hex').slice(0, 16);
}

/**
 * Half the seeds keep the production thresholds (nothing compacts in a run); the others
 * compact every few entries, keep a short tail or none, and stream in chunks of a few records.
 */
function drawSnapshotProfile(rand: SeededRandom): SnapshotProfile {
  if (rand.float() < 0.4) {
    return { snapshotEntries: 10_000, snapshotCatchupEntries: 5_000, chunkBytes: 1 << 20, crashMidTransferRate: 0, crashBeforeSwitchRate: 0, crashAfterSwitchRate: 0 };
  }
  return {
    snapshotEntries: rand.pick([3, 5, 10, 20, 50]),
    snapshotCatchupEntries: rand.pick([0, 0, 1, 3, 10]),
    chunkBytes: rand.pick([1, 64, 256, 4096]),
    crashMidTransferRate: rand.pick([0, 0.02, 0.1]),
    crashBeforeSwitchRate: rand.pick([0, 0.2, 0.5]),
    crashAfterSwitchRate: rand.pick([0, 0.2, 0.5]),
  };
}

async function kvDigest(db: Db): Promise<string> {
  const hash = createHash('sha256');
  for await (const [key, value] of db.entries('kv')) hash.update(key).update(value);
  return hash.digest('hex').slice(0, 16);
}

/**
 * The core's byte bounds, drawn from their own generator (so the other draws of a seed stay
 * as they were): half the seeds keep the defaults, which the simulator's small values never
 * reach; the others get budgets of a few entries, so the bounds bind all the time.
 */
function drawByteBounds(rand: SeededRandom): Partial<Pick<RaftConfig, 'maxBytesPerAppend' | 'maxInflightBytes' | 'maxCommittedBytesPerReady' | 'maxUncommittedBytes'>> {
  if (rand.float() < 0.5) return {};
  return {
    maxBytesPerAppend: rand.pick([1, 60, 200]),
    maxInflightBytes: rand.pick([60, 200, 600]),
    maxCommittedBytesPerReady: rand.pick([1, 100, 400]),
    maxUncommittedBytes: rand.pick([200, 1000, 4000]),
  };
}
