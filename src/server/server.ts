import { Server, ServerCredentials } from '@grpc/grpc-js';
import { HealthImplementation } from 'grpc-health-check';
import { ClusterService, KVService, Member } from '../../gen/cairn/kv/v1/kv';
import { RaftServiceService } from '../../gen/cairn/raft/v1/raft';
import { KvStateMachine } from '../kv/state-machine';
import { Replica } from '../node/replica';
import { DEFAULT_RAFT_CONFIG, RaftConfig } from '../raft/node';
import { SeededRandom } from '../raft/random';
import { LevelDb } from '../storage/db';
import { LevelRaftStorage } from '../storage/raft-storage';
import { ServerConfig } from './config';
import { deriveClusterId, loadOrCreateIdentity } from './identity';
import { Logger } from './logger';
import { addReflection } from './reflection';
import { GrpcPeerTransport, PEER_CHANNEL_OPTIONS } from './peer-transport';
import { RequestRouter } from './router';
import { clusterService, kvService, raftService, ServiceContext, withLenientDecoding } from './services';

/** How long shutdown waits for in-flight client calls before cutting them off. */
const SHUTDOWN_GRACE_MS = 3000;

/** One running cairn node: its database, its Raft replica, and its two gRPC servers. */
export class CairnNode {
  private ticker: NodeJS.Timeout | undefined;
  private lastRole = '';
  private lastTerm = -1;
  private lastLeader = -1;
  private stopping: Promise<void> | undefined;

  private constructor(
    readonly config: ServerConfig,
    readonly clusterId: number,
    readonly replica: Replica,
    private readonly db: LevelDb,
    private readonly transport: GrpcPeerTransport,
    private readonly clientServer: Server,
    private readonly peerServer: Server,
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
    const transport = new GrpcPeerTransport({ clusterId: identity.clusterId, selfId: config.id, clientAddr: config.clientAddr }, config.peers, logger);
    const replica = await Replica.open({
      config: raftConfig(config),
      storage: new LevelRaftStorage(db),
      stateMachine: await KvStateMachine.open(db),
      transport,
      onFatal,
    });
    const router = new RequestRouter(replica, transport, identity.clusterId, config.requestTimeoutMs);
    const clientServer = new Server({ 'grpc.max_receive_message_length': config.limits.maxRequestBytes * 2 + (1 << 20) });
    const peerServer = new Server(PEER_CHANNEL_OPTIONS);
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
    addReflectionAndHealth(clientServer);
    peerServer.addService(withLenientDecoding(RaftServiceService), raftService(context));
    const clientPort = await bind(clientServer, config.clientAddr);
    const peerPort = await bind(peerServer, config.peerAddr);
    const node = new CairnNode(config, identity.clusterId, replica, db, transport, clientServer, peerServer, clientPort, peerPort, logger);
    node.ticker = setInterval(() => node.tick(), config.tickMs);
    logger.info(
      { id: config.id, clusterId: identity.clusterId, clientAddr: config.clientAddr, peerAddr: config.peerAddr, peers: Object.fromEntries(config.peers), status: replica.node.status() },
      'cairn node started',
    );
    return node;
  }

  /** Stops accepting requests, lets in-flight ones finish (up to a grace period), closes LevelDB. */
  stop(): Promise<void> {
    this.stopping ??= this.shutdown();
    return this.stopping;
  }

  private async shutdown(): Promise<void> {
    this.logger.info('shutting down: no new requests; finishing those in flight');
    await shutdownServer(this.clientServer);
    clearInterval(this.ticker);
    await this.replica.stop();
    this.transport.close();
    await shutdownServer(this.peerServer);
    await this.db.close();
    this.logger.info('stopped');
  }

  private tick(): void {
    this.replica.tick();
    const { role, term, leader } = this.replica.node;
    if (role === this.lastRole && term === this.lastTerm && leader === this.lastLeader) return;
    this.lastRole = role;
    this.lastTerm = term;
    this.lastLeader = leader;
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
    .map(([id, peerAddr]) => ({ id, peerAddr, clientAddr: clientAddrs.get(id) ?? '', isLeader: id === leader }));
}

function bind(server: Server, addr: string): Promise<number> {
  return new Promise((resolve, reject) =>
    server.bindAsync(addr, ServerCredentials.createInsecure(), (err, port) => (err ? reject(new Error(`cannot listen on ${addr}: ${err.message}`)) : resolve(port))),
  );
}

function shutdownServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      server.forceShutdown();
      resolve();
    }, SHUTDOWN_GRACE_MS);
    server.tryShutdown(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/** Server reflection (for grpcurl and buf curl) and grpc.health.v1 on the client port. */
function addReflectionAndHealth(server: Server): void {
  addReflection(server, ['cairn.kv.v1.KV', 'cairn.kv.v1.Cluster', 'grpc.health.v1.Health']);
  const health = new HealthImplementation({ '': 'SERVING', 'cairn.kv.v1.KV': 'SERVING', 'cairn.kv.v1.Cluster': 'SERVING' });
  health.addToServer(server);
}
