import { Server } from '@grpc/grpc-js';
import { HealthImplementation } from 'grpc-health-check';
import { ClusterService, KVService, Member, MemberRole } from '../../gen/cairn/kv/v1/kv';
import { RaftServiceService } from '../../gen/cairn/raft/v1/raft';
import { KvStateMachine } from '../kv/state-machine';
import { KvReplica, openKvReplica } from '../kv/kv-replica';
import { DEFAULT_RAFT_CONFIG, RaftConfig } from '../raft/node';
import { SeededRandom } from '../raft/random';
import { LevelDb } from '../storage/db';
import { LevelRaftStorage } from '../storage/raft-storage';
import { ServerConfig } from './config';
import { GuardedPort } from './connection-guard';
import { deriveClusterId, loadOrCreateIdentity } from './identity';
import { Logger } from './logger';
import { addReflection } from './reflection';
import { GrpcPeerTransport, IncomingPeerStreams, peerMaxMessageBytes } from './peer-transport';
import { RequestRouter } from './router';
import { MAX_COMMAND_ENVELOPE_BYTES } from './validate';
import { clusterService, kvService, raftService, ServiceContext, withLenientDecoding } from './services';

/** How long shutdown waits for in-flight client calls before cutting them off. */
const SHUTDOWN_GRACE_MS = 3000;
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
  private lastRole = '';
  private lastTerm = -1;
  private lastLeader = -1;
  private stopping: Promise<ShutdownOutcome> | undefined;

  private constructor(
    readonly config: ServerConfig,
    readonly clusterId: number,
    readonly replica: KvReplica,
    private readonly db: LevelDb,
    private readonly transport: GrpcPeerTransport,
    private readonly clientServer: GuardedServer,
    private readonly peerServer: GuardedServer,
    private readonly incomingPeerStreams: IncomingPeerStreams,
    private readonly health: HealthImplementation,
    readonly clientPort: number,
    readonly peerPort: number,
    private readonly logger: Logger,
  ) {}

  static async start(config: ServerConfig, logger: Logger, onFatal: (err: unknown) => void): Promise<CairnNode> {
    const db = await LevelDb.openDirectory(config.dataDir);
    try {
      return await CairnNode.startOn(db, config, logger, onFatal);
    } catch (err) {
      await db.close().catch(() => undefined);
      throw err;
    }
  }

  private static async startOn(db: LevelDb, config: ServerConfig, logger: Logger, onFatal: (err: unknown) => void) {
    const identity = await loadOrCreateIdentity(db, config.id, config.clusterId || deriveClusterId(config.clusterToken, config.peers), config.peers, logger);
    const peerMessageBytes = peerMaxMessageBytes({
      maxBytesPerAppend: DEFAULT_RAFT_CONFIG.maxBytesPerAppend,
      maxEntriesPerAppend: DEFAULT_RAFT_CONFIG.maxEntriesPerAppend,
      maxEntryDataBytes: config.limits.maxRequestBytes + MAX_COMMAND_ENVELOPE_BYTES,
    });
    const transport = new GrpcPeerTransport({ clusterId: identity.clusterId, selfId: config.id, clientAddr: config.clientAddr }, config.peers, logger, {
      maxMessageBytes: peerMessageBytes,
      maxReconnectBackoffMs: reconnectBackoffBoundMs(config),
    });
    const replica = await openKvReplica({
      config: raftConfig(config),
      storage: new LevelRaftStorage(db),
      stateMachine: await KvStateMachine.open(db),
      transport,
      onFatal,
      snapshotEntries: config.snapshotEntries,
      snapshotCatchupEntries: config.snapshotCatchupEntries,
    });
    const router = new RequestRouter(replica, transport, identity.clusterId, config.requestTimeoutMs);
    const clientPortGuard = new GuardedPort('client', config.clientPortProtection, logger);
    const peerPortGuard = new GuardedPort('peer', config.peerPortProtection, logger);
    const clientServer = new Server({ 'grpc.max_receive_message_length': config.limits.maxRequestBytes * 2 + (1 << 20), ...clientPortGuard.serverOptions() });
    const peerServer = new Server({
      'grpc.max_receive_message_length': peerMessageBytes,
      'grpc.max_send_message_length': peerMessageBytes,
      ...peerPortGuard.serverOptions(),
    });
    const incomingPeerStreams = new IncomingPeerStreams();
    const clientAddrs = new Map<number, string>([[config.id, config.clientAddr]]);
    const context: ServiceContext = {
      replica,
      router,
      clusterId: identity.clusterId,
      limits: config.limits,
      requestTimeoutMs: config.requestTimeoutMs,
      logger,
      members: () => members(config, clientAddrs, replica.node.leader),
      noteClientAddr: (id, addr) => {
        if (config.peers.has(id) && clientAddrs.get(id) !== addr) clientAddrs.set(id, addr);
      },
    };
    clientServer.addService(withLenientDecoding(KVService), kvService(context));
    clientServer.addService(withLenientDecoding(ClusterService), clusterService(context));
    const health = addReflectionAndHealth(clientServer);
    peerServer.addService(withLenientDecoding(RaftServiceService), incomingPeerStreams.wrap(raftService(context)));
    let clientPort: number;
    let peerPort: number;
    try {
      clientPort = await clientPortGuard.listen(clientServer, config.clientAddr);
      peerPort = await peerPortGuard.listen(peerServer, config.peerAddr);
    } catch (err) {
      for (const guard of [clientPortGuard, peerPortGuard]) guard.stopAccepting();
      clientServer.forceShutdown();
      peerServer.forceShutdown();
      transport.close();
      throw err;
    }
    const node = new CairnNode(
      config, identity.clusterId, replica, db, transport,
      { server: clientServer, port: clientPortGuard }, { server: peerServer, port: peerPortGuard },
      incomingPeerStreams, health, clientPort, peerPort, logger,
    );
    node.ticker = setInterval(() => node.tick(), config.tickMs);
    logger.info(
      { id: config.id, clusterId: identity.clusterId, clientAddr: config.clientAddr, peerAddr: config.peerAddr, peers: Object.fromEntries(config.peers), status: replica.node.status() },
      'cairn node started',
    );
    return node;
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
    this.logger.info('shutting down: no new requests; finishing those in flight');
    const clientServer = await shutdownServer(this.clientServer);
    clearInterval(this.ticker);
    await this.replica.stop();
    // Peer streams never end by themselves: end ours (the peers see a clean end) and the
    // peers', so that the peer server waits only for forwarded requests still running.
    this.transport.close();
    const peerStreamsEnded = this.incomingPeerStreams.endAll();
    const peerServer = await shutdownServer(this.peerServer);
    await this.db.close();
    const outcome = { clientServer, peerServer, peerStreamsEnded };
    this.logger.info(outcome, 'stopped');
    return outcome;
  }

  private tick(): void {
    this.replica.tick();
    const { role, term, leader } = this.replica.node;
    if (role === this.lastRole && term === this.lastTerm && leader === this.lastLeader) return;
    this.lastRole = role;
    this.lastTerm = term;
    this.lastLeader = leader;
    this.health.setStatus(KV_HEALTH_SERVICE, leader ? 'SERVING' : 'NOT_SERVING');
    this.logger.info({ role, term, leader }, role === 'leader' ? 'became leader' : `now ${role}`);
  }
}

function raftConfig(config: ServerConfig): RaftConfig {
  return {
    ...DEFAULT_RAFT_CONFIG,
    id: config.id,
    voters: [...config.peers.keys()].sort((a, b) => a - b),
    electionTimeoutTicks: config.electionTicks,
    heartbeatIntervalTicks: config.heartbeatTicks,
    // Production randomness: seeded from the node id and the clock, so nodes differ.
    random: new SeededRandom((config.id * 2_654_435_761) ^ Date.now()),
  };
}

function members(config: ServerConfig, clientAddrs: Map<number, string>, leader: number): Member[] {
  return [...config.peers]
    .sort(([a], [b]) => a - b)
    .map(([id, peerAddr]) => ({ id, peerAddr, clientAddr: clientAddrs.get(id) ?? '', isLeader: id === leader, role: MemberRole.MEMBER_ROLE_VOTER }));
}

/**
 * The longest a peer link waits before reconnecting: half the election timeout, so a
 * restarted node hears its leader within about one election timeout.
 */
function reconnectBackoffBoundMs(config: ServerConfig): number {
  return Math.max(1, Math.floor((config.electionTicks * config.tickMs) / 2));
}

function shutdownServer({ server, port }: GuardedServer): Promise<ServerShutdown> {
  port.stopAccepting();
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      server.forceShutdown();
      port.destroyAll();
      resolve('forced');
    }, SHUTDOWN_GRACE_MS);
    server.tryShutdown(() => {
      clearTimeout(timer);
      port.destroyAll(); // connections that never started a session
      resolve('drained');
    });
  });
}

/** Server reflection (for grpcurl and buf curl) and grpc.health.v1 on the client port. */
function addReflectionAndHealth(server: Server): HealthImplementation {
  addReflection(server, ['cairn.kv.v1.KV', 'cairn.kv.v1.Cluster', 'grpc.health.v1.Health']);
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
