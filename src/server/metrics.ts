import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import { Entry, HardState } from '../../gen/cairn/raft/v1/raft';
import { KvReplica } from '../kv/kv-replica';
import { StateMachine } from '../kv/state-machine';
import { ApplyOutcome, FsmRestore, FsmSnapshot, SnapshottingFsm } from '../node/fsm';
import { CommandResult } from '../../gen/cairn/kv/v1/kv';
import { DelegatingStorage } from '../storage/delegating-storage';
import { RaftStorage } from '../storage/raft-storage';
import { Logger } from './logger';

/** A synced write of the log slower than this is logged, with its duration. */
export const SLOW_FSYNC_MS = 100;
/** An apply batch slower than this is logged, with its duration. */
export const SLOW_APPLY_MS = 100;

const LATENCY_BUCKETS_SECONDS = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5];
const SNAPSHOT_BUCKETS_SECONDS = [0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300];
const BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];
const ROLES = ['follower', 'candidate', 'leader'] as const;
/** gRPC paths of the client port's own services (KV, Cluster); peer RPCs are not client requests. */
const CLIENT_METHOD_PREFIX = '/cairn.kv.v1.';

/** What the collect-time gauges read: the node's parts, known once it has started. */
export interface MetricsSource {
  replica: KvReplica;
  dataDir: string;
}

const seconds = (startedMs: number) => (performance.now() - startedMs) / 1000;

/**
 * Prometheus metrics of one node (docs/operations.md lists them). Every name starts with
 * `cairn_`; units are in the names; counters end in `_total`. The registry is the node's own,
 * so two nodes in one process (tests) do not share figures.
 */
export class NodeMetrics {
  readonly registry = new Registry();
  private source: MetricsSource | undefined;

  private readonly leaderChanges = this.counter('cairn_leader_changes_total', 'Times the leader this node knows changed (to another node, or to none)');
  private readonly proposals = new Counter({ name: 'cairn_proposals_total', help: 'Writes proposed on this node, by outcome', labelNames: ['outcome'], registers: [this.registry] });
  private readonly proposalSeconds = this.histogram('cairn_proposal_commit_duration_seconds', 'From proposing a write here to its outcome being decided (committed and applied)', LATENCY_BUCKETS_SECONDS);
  private readonly fsyncSeconds = this.histogram('cairn_fsync_duration_seconds', 'One synced write of Raft log entries and hard state', LATENCY_BUCKETS_SECONDS);
  private readonly readyEntries = this.histogram('cairn_ready_entries', 'Log entries per synced write (the group commit)', BATCH_BUCKETS);
  private readonly readyBytes = this.histogram('cairn_ready_bytes', 'Bytes of entry data per synced write', BATCH_BUCKETS.map((n) => n * 1024));
  private readonly applySeconds = this.histogram('cairn_apply_duration_seconds', 'One apply batch, until its state write landed', LATENCY_BUCKETS_SECONDS);
  private readonly applyEntries = this.histogram('cairn_apply_entries', 'Entries per apply batch', BATCH_BUCKETS);
  private readonly snapshots = new Counter({ name: 'cairn_snapshots_total', help: 'Log compactions and installed snapshots', labelNames: ['kind'], registers: [this.registry] });
  private readonly snapshotSeconds = new Histogram({ name: 'cairn_snapshot_duration_seconds', help: 'A log compaction or a snapshot install, from the flush that starts it to its synced batch', labelNames: ['kind'], buckets: SNAPSHOT_BUCKETS_SECONDS, registers: [this.registry] });
  private readonly snapshotBytes = new Counter({ name: 'cairn_snapshot_bytes_total', help: 'Snapshot bytes received by installs and read out to send (followers, Cluster.SnapshotSave)', labelNames: ['direction'], registers: [this.registry] });
  private readonly requests = new Counter({ name: 'cairn_client_requests_total', help: 'Client gRPC calls, by method and status code', labelNames: ['method', 'code'], registers: [this.registry] });
  private readonly requestSeconds = new Histogram({ name: 'cairn_client_request_duration_seconds', help: 'Client gRPC calls, by method', labelNames: ['method'], buckets: LATENCY_BUCKETS_SECONDS, registers: [this.registry] });
  private readonly peerRoundTrip = new Histogram({ name: 'cairn_peer_round_trip_seconds', help: 'Leader only: from a heartbeat to its answer, per peer', labelNames: ['peer'], buckets: LATENCY_BUCKETS_SECONDS, registers: [this.registry] });
  private readonly dropped = new Counter({ name: 'cairn_peer_dropped_messages_total', help: 'Messages a peer link dropped because its queue was over its bounds', labelNames: ['peer'], registers: [this.registry] });
  private readonly heartbeatSentMs = new Map<number, number>();
  private lastLeader = -1;

  constructor(
    private readonly logger: Logger,
    /** What counts as slow enough to log (SLOW_FSYNC_MS, SLOW_APPLY_MS; tests lower them). */
    readonly slowMs: { fsync: number; apply: number } = { fsync: SLOW_FSYNC_MS, apply: SLOW_APPLY_MS },
  ) {
    collectDefaultMetrics({ register: this.registry, prefix: 'cairn_' });
    this.defineCollectedGauges();
  }

  /** Starts reporting the node's state (role, indexes, lag, database size). */
  bind(source: MetricsSource): void {
    this.source = source;
  }

  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }

  /** Called on every change of role, term or leader that the node notices. */
  noteLeader(leader: number): void {
    if (this.lastLeader !== -1 && leader !== this.lastLeader) this.leaderChanges.inc();
    this.lastLeader = leader;
  }

  /** A gRPC call ended; only the client services' calls (cairn.kv.v1) are counted. */
  observeRequest(method: string, code: string, startedMs: number): void {
    if (!method.startsWith(CLIENT_METHOD_PREFIX)) return;
    this.requests.inc({ method, code });
    this.requestSeconds.observe({ method }, seconds(startedMs));
  }

  /** Times a proposal made here; the outcome is 'ok' or the error code. */
  async timeProposal(proposal: Promise<CommandResult>): Promise<CommandResult> {
    const started = performance.now();
    try {
      const result = await proposal;
      this.proposals.inc({ outcome: result.error ? result.error.code : 'ok' });
      this.proposalSeconds.observe(seconds(started));
      return result;
    } catch (err) {
      this.proposals.inc({ outcome: (err as { code?: unknown }).code === undefined ? 'error' : String((err as { code: unknown }).code) });
      throw err;
    }
  }

  countDropped(peer: number, count: number): void {
    this.dropped.inc({ peer: String(peer) }, count);
  }

  /** The leader sent peer `to` a heartbeat; its answer closes a round trip. */
  noteHeartbeatSent(to: number): void {
    if (!this.heartbeatSentMs.has(to)) this.heartbeatSentMs.set(to, performance.now());
  }

  noteHeartbeatAnswered(from: number): void {
    const sent = this.heartbeatSentMs.get(from);
    if (sent === undefined) return;
    this.heartbeatSentMs.delete(from);
    this.peerRoundTrip.observe({ peer: String(from) }, seconds(sent));
  }

  /** `storage` with its synced writes timed, and compactions and installs counted. */
  instrumentStorage(storage: RaftStorage): RaftStorage {
    return new TimedStorage(storage, this, this.logger);
  }

  /** `stateMachine` with its applies timed and snapshot bytes counted. */
  instrumentStateMachine(stateMachine: StateMachine & SnapshottingFsm<CommandResult>): StateMachine & SnapshottingFsm<CommandResult> {
    return new TimedStateMachine(stateMachine, this, this.logger);
  }

  observePersist(entries: readonly Entry[], durationMs: number): void {
    this.fsyncSeconds.observe(durationMs / 1000);
    if (entries.length === 0) return;
    this.readyEntries.observe(entries.length);
    this.readyBytes.observe(entries.reduce((sum, e) => sum + e.data.length, 0));
  }

  observeApply(entries: number, durationMs: number): void {
    this.applySeconds.observe(durationMs / 1000);
    this.applyEntries.observe(entries);
  }

  observeSnapshot(kind: 'compaction' | 'install', startedMs: number): void {
    this.snapshots.inc({ kind });
    this.snapshotSeconds.observe({ kind }, seconds(startedMs));
  }

  countSnapshotBytes(direction: 'received' | 'sent', bytes: number): void {
    this.snapshotBytes.inc({ direction }, bytes);
  }

  private counter(name: string, help: string): Counter {
    return new Counter({ name, help, registers: [this.registry] });
  }

  private histogram(name: string, help: string, buckets: number[]): Histogram {
    return new Histogram({ name, help, buckets, registers: [this.registry] });
  }

  /** Gauges read from the node when scraped. */
  private defineCollectedGauges(): void {
    const metrics = this;
    const gauge = (name: string, help: string, read: (replica: KvReplica) => number) =>
      new Gauge({
        name,
        help,
        registers: [this.registry],
        collect() {
          if (metrics.source) this.set(read(metrics.source.replica));
        },
      });
    gauge('cairn_term', 'The current Raft term', (r) => r.node.term);
    gauge('cairn_leader_id', 'The leader this node knows (0: none)', (r) => r.node.leader);
    gauge('cairn_commit_index', 'The highest log index known committed', (r) => r.node.commitIndex);
    gauge('cairn_applied_index', 'The highest log index applied to the state machine', (r) => r.stateMachine.appliedIndex());
    gauge('cairn_last_index', 'The last index in this node\'s log', (r) => r.node.lastIndex);
    gauge('cairn_snapshot_index', 'The index of the latest snapshot point (log compacted through it)', (r) => r.node.status().snapshotIndex);
    new Gauge({
      name: 'cairn_role',
      help: 'This node\'s Raft role: 1 for the current one',
      labelNames: ['role'],
      registers: [this.registry],
      collect() {
        if (!metrics.source) return;
        const role = metrics.source.replica.node.role;
        for (const each of ROLES) this.set({ role: each }, each === role ? 1 : 0);
      },
    });
    new Gauge({
      name: 'cairn_peer_replication_lag_entries',
      help: 'Leader only: entries of the leader\'s log a peer does not hold yet',
      labelNames: ['peer'],
      registers: [this.registry],
      collect() {
        this.reset();
        const status = metrics.source?.replica.node.status();
        for (const progress of status?.progress ?? []) this.set({ peer: String(progress.id) }, Math.max(0, status!.lastIndex - progress.matchIndex));
      },
    });
    new Gauge({
      name: 'cairn_db_size_bytes',
      help: 'Bytes of the data directory (LevelDB files: log, state, metadata)',
      registers: [this.registry],
      async collect() {
        if (metrics.source) this.set(await directoryBytes(metrics.source.dataDir));
      },
    });
  }
}

/** Total size of the files under `dir` (LevelDB keeps one flat directory). */
async function directoryBytes(dir: string): Promise<number> {
  let total = 0;
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    const info = await stat(join(dir, name)).catch(() => undefined);
    if (info?.isFile()) total += info.size;
  }
  return total;
}

/** Times the synced log writes; a compaction or install runs flushToDisk, stage*, writeSynced. */
class TimedStorage extends DelegatingStorage {
  private flushStartedMs: number | undefined;
  private staged: 'compaction' | 'install' | undefined;

  constructor(
    inner: RaftStorage,
    private readonly metrics: NodeMetrics,
    private readonly logger: Logger,
  ) {
    super(inner);
  }

  override async persist(hardState: HardState | undefined, entries: readonly Entry[]): Promise<void> {
    const started = performance.now();
    await super.persist(hardState, entries);
    const ms = performance.now() - started;
    this.metrics.observePersist(entries, ms);
    if (ms > this.metrics.slowMs.fsync) this.logger.warn({ ms: Math.round(ms), entries: entries.length }, 'slow fsync: a synced write of the log took longer than SLOW_FSYNC_MS');
  }

  override flushToDisk(): Promise<void> {
    this.flushStartedMs = performance.now();
    return super.flushToDisk();
  }

  override stageCompaction(...args: Parameters<RaftStorage['stageCompaction']>): ReturnType<RaftStorage['stageCompaction']> {
    this.staged = 'compaction';
    return super.stageCompaction(...args);
  }

  override stageInstall(...args: Parameters<RaftStorage['stageInstall']>): ReturnType<RaftStorage['stageInstall']> {
    this.staged = 'install';
    return super.stageInstall(...args);
  }

  override async writeSynced(...args: Parameters<RaftStorage['writeSynced']>): Promise<void> {
    const started = this.flushStartedMs ?? performance.now();
    const kind = this.staged;
    this.staged = undefined;
    this.flushStartedMs = undefined;
    await super.writeSynced(...args);
    if (kind) this.metrics.observeSnapshot(kind, started);
  }
}

/** Times applies and counts the bytes of snapshots read out or restored. */
class TimedStateMachine implements StateMachine, SnapshottingFsm<CommandResult> {
  constructor(
    private readonly inner: StateMachine & SnapshottingFsm<CommandResult>,
    private readonly metrics: NodeMetrics,
    private readonly logger: Logger,
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

  async apply(entries: readonly Entry[], decided?: (outcomes: readonly ApplyOutcome<CommandResult>[]) => void): Promise<ApplyOutcome<CommandResult>[]> {
    const started = performance.now();
    const outcomes = await this.inner.apply(entries, decided);
    const ms = performance.now() - started;
    this.metrics.observeApply(entries.length, ms);
    if (ms > this.metrics.slowMs.apply) this.logger.warn({ ms: Math.round(ms), entries: entries.length }, 'slow apply: an apply batch took longer than SLOW_APPLY_MS');
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

  async snapshot(): Promise<FsmSnapshot> {
    const snapshot = await this.inner.snapshot();
    const metrics = this.metrics;
    return {
      index: snapshot.index,
      release: () => snapshot.release(),
      async *chunks(maxChunkBytes: number) {
        for await (const chunk of snapshot.chunks(maxChunkBytes)) {
          metrics.countSnapshotBytes('sent', chunk.length);
          yield chunk;
        }
      },
    };
  }

  async beginRestore(): Promise<FsmRestore> {
    const restore = await this.inner.beginRestore();
    return {
      write: (chunk) => {
        this.metrics.countSnapshotBytes('received', chunk.length);
        return restore.write(chunk);
      },
      appliedIndex: () => restore.appliedIndex(),
      switchOps: () => restore.switchOps(),
      activate: () => restore.activate(),
      abort: () => restore.abort(),
    };
  }
}
