import { Server } from '@grpc/grpc-js';
import { HealthImplementation } from 'grpc-health-check';
import { AuthService, ClusterService, KVService, LeaseService } from '../../gen/cairn/kv/v1/kv';
import { ClusterConfig, RaftServiceService } from '../../gen/cairn/raft/v1/raft';
import { ClusterIdentity } from '../../gen/cairn/storage/v1/storage';
import { CairnError, ErrorCode } from '../errors';
import { KvStateMachine } from '../kv/state-machine';
import { KvReplica, openKvReplica } from '../kv/kv-replica';
import { DEFAULT_RAFT_CONFIG, NodeId, RaftConfig } from '../raft/node';
import { SeededRandom } from '../raft/random';
import { LevelDb } from '../storage/db';
import { LevelRaftStorage } from '../storage/raft-storage';
import { clientMaxMessageBytes, ServerConfig } from './config';
import { GuardedPort } from './connection-guard';
import { GatewayServices, nodeGateway } from './gateway';
import { HttpPort } from './http';
import { httpsFollowing } from './http-tls';
import { NodeMetrics } from './metrics';
import { bootstrapConfigOf, deriveClusterId, IGNORED_BOOTSTRAP_FLAGS, loadOrCreateIdentity, readIdentity, storeJoinedIdentity } from './identity';
import { joinCluster, promoteWhenCaughtUp } from './join';
import { LeaderClients } from './leader-clients';
import { ClusterMembership, configMembers, hasMember, MembershipReplica } from './membership';
import { Logger } from './logger';
import { addReflection } from './reflection';
import { GrpcPeerTransport, IncomingPeerStreams, peerMaxMessageBytes } from './peer-transport';
import { DialSecurity, NodeTransportSecurity, peerIdentityInterceptor, PeerIdentityStats, PLAINTEXT_WARNING, plaintextNetworkPorts } from './tls';
import { RequestRouter } from './router';
import { MAX_COMMAND_ENVELOPE_BYTES } from './validate';
import { NodeWatch } from './watch';
import { authServiceOf, clusterService, kvService, raftService, servedDefinition, ServiceContext } from './services';
import { leaseServiceOf } from './lease-service';
import { AuthGate } from './auth';

/** How long shutdown waits for in-flight client calls before cutting them off. */
const SHUTDOWN_GRACE_MS = 3000;
/** After a drain, how long a connection may take to write its last frames and close before it is destroyed. */
const SHUTDOWN_FLUSH_GRACE_MS = 1000;
/**
 * How long a stopping leader tries to hand leadership over, in election timeouts: a transfer
 * that has not finished by then is abandoned (the core gives up after one) and the node stops
 * anyway, leaving the others to elect.
 */
const SHUTDOWN_TRANSFER_ELECTION_TIMEOUTS = 2;
/** Leader changes the status page lists (the most recent ones, as this node saw them). */
export const MAX_LEADER_CHANGES_SHOWN = 20;
/** The health service name that follows whether this node knows a leader. */
const KV_HEALTH_SERVICE = 'cairn.kv.v1.KV';

/** How each gRPC server of a node ended: every call finished, or cut off after the grace period. */
export type ServerShutdown = 'drained' | 'forced';
export interface ShutdownOutcome {
  clientServer: ServerShutdown;
  peerServer: ServerShutdown;
  /** Incoming peer streams this node ended so that the peer server could drain. */
  peerStreamsEnded: number;
}

/** A gRPC server and the guarded port that feeds it connections. */
interface GuardedServer {
  server: Server;
  port: GuardedPort;
}

/** One running cairn node: its database, its Raft replica, and its two gRPC servers. */
export class CairnNode {
  private ticker: NodeJS.Timeout | undefined;
  /** The Watch service and its hub (src/server/watch.ts). */
  private watch: NodeWatch | undefined;
  private lastRole = '';
  private lastTerm = -1;
  private lastLeader = -1;
  private stopping: Promise<ShutdownOutcome> | undefined;
  /** The configuration the peer links follow, as a comparable string. */
  private linkedConfig = '';
  private removalNoted = false;
  private ticksSinceProbe = 0;
  private readonly promotion = new AbortController();
  /** The HTTP port (--http-addr), once listening. */
  private httpPort: HttpPort | undefined;
  /** The ports' certificate files (src/server/tls.ts), once listening. */
  private transportSecurity: NodeTransportSecurity | undefined;
  /** Stops the lease keeper's timer (src/server/lease-service.ts). */
  private stopLeases: (() => void) | undefined;
  /** What the peer port refused for a certificate that names another node. */
  peerIdentityStats: PeerIdentityStats | undefined;
  /** Leader changes this node saw, oldest first (at most MAX_LEADER_CHANGES_SHOWN). */
  private readonly leaderChanges: { at: string; term: number; leader: number }[] = [];
  /** Readiness: a read barrier has completed since start (this node has caught up with the leader's commit index then). */
  private caughtUp = false;
  private catchingUp = false;

  private constructor(
    readonly config: ServerConfig,
    readonly clusterId: number,
    readonly replica: KvReplica,
    readonly membership: ClusterMembership,
    private readonly membershipReplica: MembershipReplica,
    private readonly leaderClients: LeaderClients,
    private readonly onRemoved: (reason: string) => void,
    private readonly db: LevelDb,
    private readonly transport: GrpcPeerTransport,
    private readonly clientServer: GuardedServer,
    private readonly peerServer: GuardedServer,
    private readonly incomingPeerStreams: IncomingPeerStreams,
    private readonly health: HealthImplementation,
    readonly clientPort: number,
    readonly peerPort: number,
    private readonly logger: Logger,
    private readonly metrics: NodeMetrics,
    private readonly router: RequestRouter,
  ) {}

  /**
   * Starts a node. `onRemoved` is called once when the node learns that a committed
   * configuration removed it (`cairn serve` then stops it and exits 0).
   */
  static async start(config: ServerConfig, logger: Logger, onFatal: (err: unknown) => void, onRemoved: (reason: string) => void = () => undefined): Promise<CairnNode> {
    const db = await LevelDb.openDirectory(config.dataDir, { writeBufferBytes: config.leveldbWriteBufferBytes });
    try {
      return await CairnNode.startOn(db, config, logger, onFatal, onRemoved);
    } catch (err) {
      await db.close().catch(() => undefined);
      throw err;
    }
  }

  private static async startOn(db: LevelDb, config: ServerConfig, logger: Logger, onFatal: (err: unknown) => void, onRemoved: (reason: string) => void) {
    const security = NodeTransportSecurity.open(config.tls, logger);
    const identity = await resolveIdentity(db, config, logger, security.memberClientDial());
    const bootstrap = bootstrapConfigOf(identity);
    if (!hasMember(bootstrap, config.id)) {
      throw new CairnError(ErrorCode.CORRUPTION, `this data dir's bootstrap configuration does not name node ${config.id}`);
    }
    let node: CairnNode | undefined;
    const metrics = new NodeMetrics(logger);
    const peerMessageBytes = peerMaxMessageBytes({
      maxBytesPerAppend: DEFAULT_RAFT_CONFIG.maxBytesPerAppend,
      maxEntriesPerAppend: DEFAULT_RAFT_CONFIG.maxEntriesPerAppend,
      maxEntryDataBytes: config.limits.maxRequestBytes + MAX_COMMAND_ENVELOPE_BYTES,
    });
    const peerAddrs = new Map(configMembers(bootstrap).filter((m) => m.id !== config.id).map((m) => [m.id, m.peerAddr]));
    const transport = new GrpcPeerTransport({ clusterId: identity.clusterId, selfId: config.id, clientAddr: config.advertiseClientAddr }, peerAddrs, logger, {
      maxMessageBytes: peerMessageBytes,
      maxReconnectBackoffMs: reconnectBackoffBoundMs(config),
      onRemoved: (by, reason, commitIndex) => node?.noteRefusedAsRemoved(by, reason, commitIndex),
      onPeerLost: (peer) => node?.replica.peerConnectionLost(peer),
      onDropped: (peer, count) => metrics.countDropped(peer, count),
    }, security.peerChannelCredentials);
    let kvStateMachine!: KvStateMachine;
    const replica = await openKvReplica({
      config: raftConfig(config, bootstrap),
      // Links to a new member open as soon as its entry is appended, not a tick later.
      onConfigChange: () => node?.followConfig(),
      storage: metrics.instrumentStorage(new LevelRaftStorage(db)),
      stateMachine: metrics.instrumentStateMachine((kvStateMachine = await KvStateMachine.open(db, undefined, config.stateCacheBytes))),
      transport: {
        send: (messages) => {
          for (const m of messages) if (m.body?.$case === 'heartbeatRequest') metrics.noteHeartbeatSent(m.to);
          transport.send(messages);
        },
        sendSnapshot: (to, header, chunks) => transport.sendSnapshot(to, header, chunks),
      },
      onFatal,
      snapshotEntries: config.snapshotEntries,
      snapshotCatchupEntries: config.snapshotCatchupEntries,
      // After this turn's socket reads: a burst of proposals, appends or acknowledgements makes one batch.
      defer: (start) => void setImmediate(start),
    });
    metrics.bind({ replica, dataDir: config.dataDir });
    const router = new RequestRouter(replica, transport, identity.clusterId, config.requestTimeoutMs, metrics);
    const clientPortGuard = new GuardedPort('client', config.clientPortProtection, logger);
    const peerPortGuard = new GuardedPort('peer', config.peerPortProtection, logger);
    const clientServer = new Server({ 'grpc.max_receive_message_length': clientMaxMessageBytes(config.limits), ...clientPortGuard.serverOptions() });
    const peerPortOptions = peerPortGuard.serverOptions();
    const peerIdentityStats = security.peer ? new PeerIdentityStats(logger) : undefined;
    if (peerIdentityStats) {
      const identityChecked = peerIdentityInterceptor((id) => transport.peerAddrs().get(id), peerIdentityStats);
      peerPortOptions.interceptors = [...peerPortOptions.interceptors, identityChecked];
    }
    const peerServer = new Server({
      'grpc.max_receive_message_length': peerMessageBytes,
      'grpc.max_send_message_length': peerMessageBytes,
      ...peerPortOptions,
    });
    const incomingPeerStreams = new IncomingPeerStreams();
    const membershipReplica = membershipReplicaOf(replica);
    const membership = new ClusterMembership(config.id, config.advertiseClientAddr, membershipReplica);
    const leaderClients = new LeaderClients(config.id, security.memberClientDial());
    const context: ServiceContext = {
      replica,
      router,
      clusterId: identity.clusterId,
      limits: config.limits,
      requestTimeoutMs: config.requestTimeoutMs,
      logger,
      membership,
      membershipReplica,
      leaderClients,
      metrics,
      // With client certificates verified (--client-ca-file), a certificate's common name stands for the user, as in etcd.
      auth: new AuthGate(() => replica.stateMachine.authState(), { tokenTtlMs: config.authTokenTtlMs, trustCertificateCommonName: Boolean(config.tls.client?.caFile) }),
    };
    const leases = leaseServiceOf(context);
    // The gateway (--http-addr) runs the very same definitions and implementations as the client port.
    const gatewayServices = {
      lease: { definition: servedDefinition(LeaseService), implementation: leases.service },
      kv: { definition: servedDefinition(KVService), implementation: kvService(context) },
      cluster: { definition: servedDefinition(ClusterService), implementation: clusterService(context) },
      auth: { definition: servedDefinition(AuthService), implementation: authServiceOf(context) },
    } satisfies GatewayServices;
    clientServer.addService(gatewayServices.kv.definition, gatewayServices.kv.implementation);
    clientServer.addService(gatewayServices.auth.definition, gatewayServices.auth.implementation);
    clientServer.addService(gatewayServices.cluster.definition, gatewayServices.cluster.implementation);
    const watch = NodeWatch.attach(clientServer, context, kvStateMachine, config);
    clientServer.addService(gatewayServices.lease.definition, gatewayServices.lease.implementation);
    const health = addReflectionAndHealth(clientServer);
    peerServer.addService(servedDefinition(RaftServiceService), incomingPeerStreams.wrap(raftService(context)));
    let clientPort: number;
    let peerPort: number;
    try {
      clientPort = await clientPortGuard.listen(clientServer, config.clientAddr, security.clientServerCredentials());
      peerPort = await peerPortGuard.listen(peerServer, config.peerAddr, security.peerServerCredentials());
    } catch (err) {
      for (const guard of [clientPortGuard, peerPortGuard]) guard.stopAccepting();
      clientServer.forceShutdown();
      peerServer.forceShutdown();
      transport.close();
      throw err;
    }
    node = new CairnNode(
      config, identity.clusterId, replica, membership, membershipReplica, leaderClients, onRemoved, db, transport,
      { server: clientServer, port: clientPortGuard }, { server: peerServer, port: peerPortGuard },
      incomingPeerStreams, health, clientPort, peerPort, logger, metrics, router,
    );
    const started = node;
    started.transportSecurity = security;
    started.watch = watch;
    started.stopLeases = leases.stop;
    started.peerIdentityStats = peerIdentityStats;
    security.watch();
    const plaintext = plaintextNetworkPorts(config);
    if (plaintext.length > 0) logger.warn({ ports: plaintext }, PLAINTEXT_WARNING);
    if (config.httpAddr) {
      try {
        started.httpPort = await HttpPort.listen(config.httpAddr, started.httpSource(), logger, {
          gateway: nodeGateway(config, gatewayServices),
          tls: security.client && httpsFollowing(security.client),
        });
      } catch (err) {
        await started.stop().catch(() => undefined);
        throw new CairnError(ErrorCode.INVALID_ARGUMENT, `--http-addr ${config.httpAddr}: cannot listen (${(err as Error).message})`);
      }
    }
    started.followConfig();
    started.ticker = setInterval(() => started.tick(), config.tickMs);
    logger.info(
      { id: config.id, clusterId: identity.clusterId, clientAddr: config.advertiseClientAddr, peerAddr: config.advertisePeerAddr, peers: Object.fromEntries(transport.peerAddrs()), status: replica.node.status() },
      'cairn node started',
    );
    started.promoteIfJoining();
    return started;
  }

  /**
   * A node started with --join (this time or before) that is still a learner asks the
   * cluster to promote it, in the background, until it is a voter (unless --learner).
   */
  private promoteIfJoining(): void {
    const { config } = this;
    if (config.join.length === 0 || config.learner) return;
    if (!this.membershipReplica.clusterConfig().learners.some((m) => m.id === config.id)) return;
    // The --join endpoints, and the members' client addresses as known now: the ones named at
    // the first start may have left the cluster since.
    const known = this.membership.members(this.replica.node.leader).filter((m) => m.id !== config.id && m.clientAddr).map((m) => m.clientAddr);
    const endpoints = [...new Set([...config.join, ...known])];
    promoteWhenCaughtUp(config.id, endpoints, this.logger, this.promotion.signal, undefined, config.joinUser, this.transportSecurity?.memberClientDial()).then(
      () => this.logger.info('join: promoted to voter'),
      (err) => {
        if (!this.promotion.signal.aborted) this.logger.warn({ err: (err as Error).message }, 'join: not promoted; this node stays a learner (cairn member promote can still promote it)');
      },
    );
  }

  /**
   * Points the peer links at the members of the current configuration and, while a change
   * is uncommitted, of the committed one too: the leader replicates to a member it is
   * removing until the removal commits, so that the member learns of it.
   */
  followConfig(): void {
    const config = this.membershipReplica.clusterConfig();
    const committed = this.membershipReplica.committedConfig();
    const peers = new Map([...this.membership.peerAddrs(committed), ...this.membership.peerAddrs(config)]);
    const key = [...peers].map(([id, addr]) => `${id}=${addr}`).join(',');
    if (key === this.linkedConfig) return;
    const first = this.linkedConfig === '';
    this.linkedConfig = key;
    this.membership.noteConfig(config);
    this.transport.setPeers(peers);
    if (!first) this.logger.info({ voters: config.voters.map((m) => m.id), learners: config.learners.map((m) => m.id), links: [...peers.keys()] }, 'configuration changed');
  }

  /**
   * A peer refused this node with MEMBER_REMOVED. Believed when this node's own log says it
   * is removed, or when the peer's log is committed beyond all of ours (we missed the
   * removal, e.g. while down). Otherwise the peer is the one behind: it saw our removal but
   * not our later re-addition (a member removed and added again with a fresh data dir), and
   * its word is ignored until it catches up.
   */
  noteRefusedAsRemoved(by: NodeId, reason: string, peerCommitIndex: number | undefined): void {
    const removedHere = !hasMember(this.membershipReplica.clusterConfig(), this.config.id);
    const lastIndex = this.replica.node.lastIndex;
    if (removedHere || (peerCommitIndex !== undefined && peerCommitIndex > lastIndex)) {
      this.noteRemoved(`node ${by} refused this node: ${reason}`);
      return;
    }
    this.logger.warn({ by, peerCommitIndex, lastIndex, reason }, 'a peer behind our log says this node was removed; ignored (it will catch up)');
  }

  /**
   * This node is not a member any more: a committed configuration left it out (seen here, or
   * a peer refused it with MEMBER_REMOVED). Said once; the owner of the process stops it.
   */
  noteRemoved(reason: string): void {
    if (this.removalNoted || this.stopping) return;
    this.removalNoted = true;
    this.logger.warn({ reason }, 'removed from the cluster');
    this.onRemoved(reason);
  }

  /**
   * Reads the certificate files again (SIGHUP): new connections get what they hold now;
   * a file that does not load is logged and the previous certificate keeps serving.
   */
  reloadCertificates(reason = 'SIGHUP'): number {
    if (!this.transportSecurity) return 0;
    return this.transportSecurity.reload(reason);
  }

  /** Stops accepting requests, lets in-flight ones finish (up to a grace period), closes LevelDB. */
  stop(): Promise<void> {
    return this.stopReporting().then(() => undefined);
  }

  /** stop(), saying how each server ended. */
  stopReporting(): Promise<ShutdownOutcome> {
    this.stopping ??= this.shutdown();
    return this.stopping;
  }

  private async shutdown(): Promise<ShutdownOutcome> {
    this.promotion.abort();
    await this.handOverLeadership();
    this.logger.info('shutting down: no new requests; finishing those in flight');
    this.watch?.close();
    const clientServer = await shutdownServer(this.clientServer);
    clearInterval(this.ticker);
    this.stopLeases?.();
    await this.replica.stop();
    // Peer streams never end by themselves: end ours (the peers see a clean end) and the
    // peers', so that the peer server waits only for forwarded requests still running.
    this.transport.close();
    this.leaderClients.close();
    const peerStreamsEnded = this.incomingPeerStreams.endAll();
    const peerServer = await shutdownServer(this.peerServer);
    await this.httpPort?.close();
    this.transportSecurity?.stop();
    await this.db.close();
    const outcome = { clientServer, peerServer, peerStreamsEnded };
    this.logger.info(outcome, 'stopped');
    return outcome;
  }

  /**
   * A leader that stops hands leadership to another voter first, so that the cluster does not
   * wait an election timeout for it (rolling restarts). Bounded: after
   * SHUTDOWN_TRANSFER_ELECTION_TIMEOUTS election timeouts the node stops anyway.
   */
  private async handOverLeadership(): Promise<void> {
    const { replica, config } = this;
    if (replica.node.role !== 'leader') return;
    if (!this.membershipReplica.clusterConfig().voters.some((m) => m.id !== config.id)) return;
    const budgetMs = SHUTDOWN_TRANSFER_ELECTION_TIMEOUTS * config.electionTicks * config.tickMs;
    const started = Date.now();
    try {
      const leader = await this.membershipReplica.transferLeadership(undefined, AbortSignal.timeout(budgetMs));
      this.logger.info({ leader, ms: Date.now() - started }, 'stopping: handed leadership over');
    } catch (err) {
      this.logger.warn({ err: (err as Error).message, ms: Date.now() - started }, 'stopping: could not hand leadership over; stopping anyway');
    }
  }

  /**
   * Whether this node is still a member: a committed configuration without it means it was
   * removed; while only its log says so (the removal not known committed here), it asks the
   * peers every election timeout (GrpcPeerTransport.probe).
   */
  private checkMembership(): void {
    if (!hasMember(this.membershipReplica.committedConfig(), this.config.id)) {
      this.noteRemoved('a committed configuration no longer has this node');
      return;
    }
    if (hasMember(this.membershipReplica.clusterConfig(), this.config.id)) return;
    if (++this.ticksSinceProbe < this.config.electionTicks) return;
    this.ticksSinceProbe = 0;
    this.transport.probe();
  }

  /** HOST:PORT the HTTP port listens on (its port resolved), if --http-addr was given. */
  get httpAddress(): string | undefined {
    if (!this.httpPort) return undefined;
    return `${this.config.httpAddr.replace(/:\d+$/, '')}:${this.httpPort.port}`;
  }

  /** The HTTP port's view of this node. */
  private httpSource() {
    return {
      metrics: this.metrics,
      live: () => !this.stopping && !this.replica.isHalted(),
      notReadyReason: () => this.notReadyReason(),
      status: () => this.statusReport(),
    };
  }

  /**
   * Ready (/readyz) once a leader is known and this node has applied everything the leader
   * had committed when this node first asked after starting (one read barrier): a restarted
   * node does not take traffic while it replays or catches up.
   */
  private notReadyReason(): string | undefined {
    if (this.stopping) return 'stopping';
    if (this.replica.isHalted()) return 'halted';
    if (!this.replica.node.leader) return 'no leader known';
    if (!this.caughtUp) return 'catching up with the leader\'s commit index';
    return undefined;
  }

  private catchUpOnce(): void {
    if (this.caughtUp || this.catchingUp || !this.replica.node.leader) return;
    this.catchingUp = true;
    this.router.readBarrier().then(
      () => (this.caughtUp = true),
      () => undefined, // tried again at a later tick
    ).finally(() => (this.catchingUp = false));
  }

  private noteLeaderChange(term: number, leader: number): void {
    this.metrics.noteLeader(leader);
    this.leaderChanges.push({ at: new Date().toISOString(), term, leader });
    if (this.leaderChanges.length > MAX_LEADER_CHANGES_SHOWN) this.leaderChanges.shift();
  }

  /** /status.json: what this node knows of itself and the cluster. */
  statusReport() {
    const status = this.replica.node.status();
    const progress = new Map((status.progress ?? []).map((p) => [p.id, p]));
    const config = this.membershipReplica.clusterConfig();
    const learners = new Set(config.learners.map((m) => m.id));
    const notReady = this.notReadyReason();
    return {
      id: this.config.id,
      role: status.role,
      term: status.term,
      leader: status.leader,
      commitIndex: status.commitIndex,
      appliedIndex: this.replica.stateMachine.appliedIndex(),
      lastIndex: status.lastIndex,
      snapshotIndex: status.snapshotIndex,
      ready: notReady === undefined,
      notReady: notReady ?? '',
      members: this.membership.members(status.leader).map((m) => {
        const peer = m.id === this.config.id ? undefined : progress.get(m.id);
        const self = m.id === this.config.id && status.role === 'leader';
        return {
          id: m.id,
          role: learners.has(m.id) ? 'learner' : 'voter',
          peerAddr: m.peerAddr,
          clientAddr: m.clientAddr,
          leader: m.id === status.leader,
          matchIndex: self ? status.lastIndex : peer?.matchIndex,
          lagEntries: self ? 0 : peer ? Math.max(0, status.lastIndex - peer.matchIndex) : undefined,
        };
      }),
      leaderChanges: this.leaderChanges,
    };
  }

  private tick(): void {
    this.replica.tick();
    this.followConfig();
    this.checkMembership();
    this.catchUpOnce();
    const { role, term, leader } = this.replica.node;
    if (role === this.lastRole && term === this.lastTerm && leader === this.lastLeader) return;
    // The first tick's "no leader yet" is where the node starts, not a change.
    if (leader !== this.lastLeader && !(this.lastLeader === -1 && leader === 0)) this.noteLeaderChange(term, leader);
    this.lastRole = role;
    this.lastTerm = term;
    this.lastLeader = leader;
    this.health.setStatus(KV_HEALTH_SERVICE, leader ? 'SERVING' : 'NOT_SERVING');
    this.logger.info({ role, term, leader }, role === 'leader' ? 'became leader' : `now ${role}`);
  }
}

/**
 * This data dir's identity: stored from --peers at a bootstrap's first start, from the
 * cluster at a --join's first start, read back at every later start (the bootstrap flags are
 * then ignored, with a line saying so).
 */
async function resolveIdentity(db: LevelDb, config: ServerConfig, logger: Logger, memberDial?: DialSecurity): Promise<ClusterIdentity> {
  const stored = await readIdentity(db);
  if (stored && config.join.length > 0) logger.warn({ join: config.join }, IGNORED_BOOTSTRAP_FLAGS);
  if (stored?.bootstrapConfig && config.peersGiven) logger.warn({ peers: Object.fromEntries(config.peers) }, IGNORED_BOOTSTRAP_FLAGS);
  if (!stored && config.join.length > 0) {
    const joined = await joinCluster({ id: config.id, peerAddr: config.advertisePeerAddr, clientAddr: config.advertiseClientAddr, endpoints: config.join, dial: memberDial, user: config.joinUser }, logger);
    logger.info({ clusterId: joined.clusterId, voters: joined.config.voters.map((m) => m.id), learners: joined.config.learners.map((m) => m.id) }, 'join: added to the cluster as a learner');
    return storeJoinedIdentity(db, config.id, joined.clusterId, joined.config);
  }
  return loadOrCreateIdentity(db, config.id, config.clusterId || deriveClusterId(config.clusterToken, config.peers), config.peers, logger);
}

/** The Replica's membership side as the services use it, with the configuration as of the commit index. */
function membershipReplicaOf(replica: KvReplica): MembershipReplica {
  return {
    clusterConfig: () => replica.clusterConfig(),
    committedConfig: () => replica.node.configAt(replica.node.commitIndex),
    commitIndex: () => replica.node.commitIndex,
    proposeConfigChange: (change, signal) => replica.proposeConfigChange(change, signal),
    transferLeadership: (to, signal) => replica.transferLeadership(to, signal),
  };
}

function raftConfig(config: ServerConfig, bootstrap: ClusterConfig): RaftConfig {
  return {
    ...DEFAULT_RAFT_CONFIG,
    bootstrapConfig: bootstrap,
    id: config.id,
    voters: bootstrap.voters.map((m) => m.id),
    electionTimeoutTicks: config.electionTicks,
    heartbeatIntervalTicks: config.heartbeatTicks,
    // Production randomness: seeded from the node id and the clock, so nodes differ.
    random: new SeededRandom((config.id * 2_654_435_761) ^ Date.now()),
  };
}

/**
 * The longest a peer link waits before reconnecting: half the election timeout, so a
 * restarted node hears its leader within about one election timeout.
 */
function reconnectBackoffBoundMs(config: ServerConfig): number {
  return Math.max(1, Math.floor((config.electionTicks * config.tickMs) / 2));
}

function shutdownServer({ server, port }: GuardedServer): Promise<ServerShutdown> {
  return port.shutdown(server, SHUTDOWN_GRACE_MS, SHUTDOWN_FLUSH_GRACE_MS);
}

/** Server reflection (for grpcurl and buf curl) and grpc.health.v1 on the client port. */
function addReflectionAndHealth(server: Server): HealthImplementation {
  addReflection(server, ['cairn.kv.v1.KV', 'cairn.kv.v1.Cluster', 'cairn.kv.v1.Auth', 'cairn.kv.v1.Watch', 'cairn.kv.v1.Lease', 'grpc.health.v1.Health']);
  return addHealth(server);
}

/**
 * grpc.health.v1: "" is liveness (the process serves gRPC at all) and Cluster answers
 * without a leader; KV is SERVING only while this node knows a leader (updated every tick),
 * because without one no write and no linearizable read can succeed.
 */
function addHealth(server: Server): HealthImplementation {
  const health = new HealthImplementation({ '': 'SERVING', [KV_HEALTH_SERVICE]: 'NOT_SERVING', 'cairn.kv.v1.Cluster': 'SERVING' });
  health.addToServer(server);
  return health;
}
