import { MAX_WATCH_BUFFER_BYTES } from '../kv/watch-hub';
import { DEFAULT_AUTO_COMPACTION_REVISIONS } from '../kv/watch-history';
import { DEFAULT_LEVELDB_WRITE_BUFFER_BYTES } from '../storage/db';
import { DEFAULT_STATE_CACHE_BYTES } from '../kv/record-cache';
import { CairnError, ErrorCode } from '../errors';
import { DEFAULT_AUTH_TOKEN_TTL_MS } from './auth-tokens';
import { PortProtection } from './connection-guard';
import { isHostPort } from './validate';
import { TlsConfig, tlsConfigFrom } from './tls';

/** Request limits. Going over one is INVALID_ARGUMENT naming the flag. */
export interface Limits {
  maxKeyBytes: number;
  maxValueBytes: number;
  maxRequestBytes: number;
  maxRangeLimit: number;
  /** Budget for one Range response's keys and values; beyond it the range stops and sets `more`. */
  maxRangeBytes: number;
  maxClientIdBytes: number;
}

export interface ServerConfig {
  id: number;
  dataDir: string;
  /** Where clients connect (KV, Cluster, reflection, health). */
  clientAddr: string;
  /** Where peers connect (RaftService). */
  peerAddr: string;
  /** The client address others are told (members list, forwarding, join): --advertise-client-addr, else clientAddr. */
  advertiseClientAddr: string;
  /** The peer address the cluster is told on --join: --advertise-peer-addr, else peerAddr. */
  advertisePeerAddr: string;
  /** Where HTTP is served (metrics, probes, status page); empty: not at all. */
  httpAddr: string;
  /** Every member's peer address, this node's included. */
  peers: Map<number, string>;
  /** Whether --peers was given (else `peers` is this node alone). */
  peersGiven: boolean;
  /** Client addresses of running members: join their cluster instead of bootstrapping (empty data dir only). */
  join: string[];
  /** With `join`: stay a learner instead of asking to be promoted to voter. */
  learner: boolean;
  /** Mixed into the cluster id at bootstrap: two clusters with the same peers differ by token. */
  clusterToken: string;
  /** An explicit cluster id for bootstrap, instead of deriving one (0 = derive). */
  clusterId: number;
  tickMs: number;
  electionTicks: number;
  heartbeatTicks: number;
  /** How long a write may take to commit before the client gets DEADLINE_EXCEEDED. */
  requestTimeoutMs: number;
  logLevel: string;
  limits: Limits;
  /** What the client port tolerates from its connections. */
  clientPortProtection: PortProtection;
  /** What the peer port tolerates from its connections. */
  peerPortProtection: PortProtection;
  /** Compact once this many applied entries follow the snapshot point. */
  snapshotEntries: number;
  /** Bytes of recently used key records the state machine keeps in memory (RecordCache). */
  stateCacheBytes: number;
  /** The leader keeps the history of the last this many revisions (compacting older ones); 0: never compacts. */
  autoCompactionRevisions: number;
  /** What one watcher may have queued unsent before it is canceled as too slow (MAX_WATCH_BUFFER_BYTES). */
  watchBufferBytes: number;
  /** LevelDB's memtable size. */
  leveldbWriteBufferBytes: number;
  /** Log entries kept before the snapshot point at compaction, for slow followers. */
  snapshotCatchupEntries: number;
  /** TLS on the client port, mutual TLS on the peer port (src/server/tls.ts); empty: plaintext. */
  tls: TlsConfig;
  /** How long a token from Auth.Authenticate works (--auth-token-ttl-ms). */
  authTokenTtlMs: number;
  /** With --join into a cluster with auth on: the root user to add and promote this node as (--join-user). */
  joinUser?: { name: string; password: string };
}

/**
 * Every flag of `cairn serve`, with its environment variable and default. The README's
 * configuration table lists exactly these.
 */
export const SERVE_FLAGS = [
  { flag: 'id', env: 'CAIRN_ID', default: '', help: 'this node\'s id (an integer >= 1, one of --peers)' },
  { flag: 'data-dir', env: 'CAIRN_DATA_DIR', default: './data', help: 'directory of this node\'s LevelDB' },
  { flag: 'client-addr', env: 'CAIRN_CLIENT_ADDR', default: '127.0.0.1:7001', help: 'HOST:PORT to serve clients on' },
  { flag: 'peer-addr', env: 'CAIRN_PEER_ADDR', default: '127.0.0.1:7101', help: 'HOST:PORT to serve peers on' },
  { flag: 'advertise-client-addr', env: 'CAIRN_ADVERTISE_CLIENT_ADDR', default: '', help: 'HOST:PORT other members and clients reach --client-addr at (default: --client-addr itself)' },
  { flag: 'advertise-peer-addr', env: 'CAIRN_ADVERTISE_PEER_ADDR', default: '', help: 'HOST:PORT peers reach --peer-addr at, told to the cluster on --join (default: --peer-addr itself)' },
  { flag: 'http-addr', env: 'CAIRN_HTTP_ADDR', default: '', help: 'HOST:PORT for HTTP: /metrics (Prometheus), /healthz, /readyz, the status page at / and the JSON gateway at /v1/ (HTTPS when the client port has TLS; default: none)' },
  { flag: 'cert-file', env: 'CAIRN_CERT_FILE', default: '', help: 'PEM certificate (chain) the client port serves TLS with; reloaded on change or SIGHUP (default: plaintext)' },
  { flag: 'key-file', env: 'CAIRN_KEY_FILE', default: '', help: 'PEM private key of --cert-file' },
  { flag: 'client-ca-file', env: 'CAIRN_CLIENT_CA_FILE', default: '', help: 'PEM CA bundle: clients must present a certificate it verifies (default: no client certificate asked for)' },
  { flag: 'peer-cert-file', env: 'CAIRN_PEER_CERT_FILE', default: '', help: 'PEM certificate of this node on the peer port (mutual TLS); names the node with a URI SAN cairn-node:ID or a DNS SAN of its peer host' },
  { flag: 'peer-key-file', env: 'CAIRN_PEER_KEY_FILE', default: '', help: 'PEM private key of --peer-cert-file' },
  { flag: 'peer-ca-file', env: 'CAIRN_PEER_CA_FILE', default: '', help: 'PEM CA bundle that verifies the other members\' peer certificates' },
  { flag: 'cert-poll-interval-ms', env: 'CAIRN_CERT_POLL_INTERVAL_MS', default: '1000', help: 'how often the certificate files are checked for a change (0: only on SIGHUP)' },
  { flag: 'peers', env: 'CAIRN_PEERS', default: '', help: 'every member as ID=HOST:PORT (peer address), comma-separated' },
  { flag: 'join', env: 'CAIRN_JOIN', default: '', help: 'client addresses (HOST:PORT,...) of running members: join their cluster as a learner, then ask to be promoted (instead of --peers; empty data dir only)' },
  { flag: 'join-user', env: 'CAIRN_JOIN_USER', default: '', help: 'with --join into a cluster with auth enabled: NAME:PASSWORD of a user with role root, to add and promote this node as' },
  { flag: 'learner', env: 'CAIRN_LEARNER', default: 'false', help: 'with --join: stay a learner (receive the log, never vote)' },
  { flag: 'initial-cluster-size', env: 'CAIRN_INITIAL_CLUSTER_SIZE', default: '', help: 'StatefulSet mode: id from the pod name, peers from the headless service; ordinals >= this join as learners (docs/deploy.md)' },
  { flag: 'pod-name', env: 'CAIRN_POD_NAME', default: '', help: 'StatefulSet mode: this pod\'s name <set>-<ordinal> (default: $HOSTNAME)' },
  { flag: 'peer-service', env: 'CAIRN_PEER_SERVICE', default: '', help: 'StatefulSet mode: the headless Service that gives pods DNS names (default: <set>-peers)' },
  { flag: 'namespace', env: 'CAIRN_NAMESPACE', default: '', help: 'StatefulSet mode: the pods\' namespace (default: default)' },
  { flag: 'cluster-domain', env: 'CAIRN_CLUSTER_DOMAIN', default: '', help: 'StatefulSet mode: the cluster\'s DNS domain (default: cluster.local)' },
  { flag: 'cluster-token', env: 'CAIRN_CLUSTER_TOKEN', default: 'cairn', help: 'mixed into the cluster id at bootstrap' },
  { flag: 'cluster-id', env: 'CAIRN_CLUSTER_ID', default: '', help: 'the cluster id to bootstrap with, instead of deriving it from the token and peers' },
  { flag: 'timing', env: 'CAIRN_TIMING', default: 'default', help: '"default" or "demo" (slow elections and heartbeats, to watch Raft)' },
  { flag: 'tick-ms', env: 'CAIRN_TICK_MS', default: '', help: 'length of one Raft tick in ms (default 100; demo 1000)' },
  { flag: 'election-ticks', env: 'CAIRN_ELECTION_TICKS', default: '', help: 'election timeout in ticks, randomized up to twice it (default 10; demo 5)' },
  { flag: 'heartbeat-ticks', env: 'CAIRN_HEARTBEAT_TICKS', default: '', help: 'heartbeat interval in ticks (default 1; demo 2)' },
  { flag: 'request-timeout-ms', env: 'CAIRN_REQUEST_TIMEOUT_MS', default: '5000', help: 'how long a request may wait to commit or be confirmed' },
  { flag: 'max-key-bytes', env: 'CAIRN_MAX_KEY_BYTES', default: '4096', help: 'largest key' },
  { flag: 'max-value-bytes', env: 'CAIRN_MAX_VALUE_BYTES', default: '1048576', help: 'largest value' },
  { flag: 'max-request-bytes', env: 'CAIRN_MAX_REQUEST_BYTES', default: '1572864', help: 'largest request (key + value + client id)' },
  { flag: 'max-range-limit', env: 'CAIRN_MAX_RANGE_LIMIT', default: '10000', help: 'most keys one Range returns (limit 0 means this)' },
  { flag: 'max-range-bytes', env: 'CAIRN_MAX_RANGE_BYTES', default: '3145728', help: 'most key and value bytes one Range returns (it then sets more; at least one key is returned)' },
  { flag: 'max-client-connections', env: 'CAIRN_MAX_CLIENT_CONNECTIONS', default: '1024', help: 'connections open at once on the client port; more are closed at once' },
  { flag: 'max-peer-connections', env: 'CAIRN_MAX_PEER_CONNECTIONS', default: '64', help: 'connections open at once on the peer port; more are closed at once' },
  { flag: 'max-concurrent-streams', env: 'CAIRN_MAX_CONCURRENT_STREAMS', default: '256', help: 'calls open at once on one client connection' },
  { flag: 'handshake-timeout-ms', env: 'CAIRN_HANDSHAKE_TIMEOUT_MS', default: '5000', help: 'a connection (either port) that starts no call within this is closed' },
  { flag: 'client-idle-timeout-ms', env: 'CAIRN_CLIENT_IDLE_TIMEOUT_MS', default: '300000', help: 'a client connection with no call open for this long is closed' },
  { flag: 'keepalive-time-ms', env: 'CAIRN_KEEPALIVE_TIME_MS', default: '10000', help: 'ping a connection (either port) after this long without one' },
  { flag: 'keepalive-timeout-ms', env: 'CAIRN_KEEPALIVE_TIMEOUT_MS', default: '5000', help: 'close a connection whose ping is not answered within this' },
  { flag: 'snapshot-entries', env: 'CAIRN_SNAPSHOT_ENTRIES', default: '10000', help: 'compact the log once this many applied entries follow the last snapshot point' },
  { flag: 'snapshot-catchup-entries', env: 'CAIRN_SNAPSHOT_CATCHUP_ENTRIES', default: '5000', help: 'log entries kept before the snapshot point at compaction, so slow followers need no snapshot' },
  { flag: 'state-cache-bytes', env: 'CAIRN_STATE_CACHE_BYTES', default: String(DEFAULT_STATE_CACHE_BYTES), help: 'bytes of recently read and written keys and values kept in memory, so reads and applies skip LevelDB (0: none)' },
  { flag: 'auto-compaction-revisions', env: 'CAIRN_AUTO_COMPACTION_REVISIONS', default: String(DEFAULT_AUTO_COMPACTION_REVISIONS), help: 'the leader compacts the watch history to keep the last this many revisions (0: never; KV.Compact still works)' },
  { flag: 'watch-buffer-bytes', env: 'CAIRN_WATCH_BUFFER_BYTES', default: String(MAX_WATCH_BUFFER_BYTES), help: 'events one watcher may have queued unsent (bytes) before it is canceled as too slow' },
  { flag: 'leveldb-write-buffer-bytes', env: 'CAIRN_LEVELDB_WRITE_BUFFER_BYTES', default: String(DEFAULT_LEVELDB_WRITE_BUFFER_BYTES), help: "LevelDB's memtable size: writes gather in memory up to this before LevelDB sorts them into a table file" },
  { flag: 'auth-token-ttl-ms', env: 'CAIRN_AUTH_TOKEN_TTL_MS', default: String(DEFAULT_AUTH_TOKEN_TTL_MS), help: 'with auth enabled: how long a token from Authenticate works' },
  { flag: 'log-level', env: 'CAIRN_LOG_LEVEL', default: 'info', help: 'trace, debug, info, warn, error' },
] as const;

const TIMING_PRESETS = {
  default: { tickMs: 100, electionTicks: 10, heartbeatTicks: 1 },
  demo: { tickMs: 1000, electionTicks: 5, heartbeatTicks: 2 },
} as const;

export const MAX_CLIENT_ID_BYTES = 128;
/**
 * Calls open at once on one peer connection. A follower forwards every client write it
 * receives over its one connection to the leader, so this is well above a client's bound.
 */
export const PEER_MAX_CONCURRENT_STREAMS = 4096;
/** A peer connection with no call open this long is closed (peer streams keep live links busy). */
export const PEER_IDLE_TIMEOUT_MS = 300_000;

function invalid(message: string): CairnError {
  return new CairnError(ErrorCode.INVALID_ARGUMENT, message);
}

function integer(name: string, text: string, min: number): number {
  const value = Number(text);
  if (text.trim() === '' || !Number.isSafeInteger(value) || value < min) {
    throw invalid(`--${name} must be an integer >= ${min}, got "${text}"`);
  }
  return value;
}

/** Parses `1=host:port,2=host:port`. */
export function parsePeers(text: string): Map<number, string> {
  const peers = new Map<number, string>();
  for (const part of text.split(',').map((p) => p.trim()).filter(Boolean)) {
    const match = /^(\d+)=(.+:\d+)$/.exec(part);
    if (!match) throw invalid(`--peers entry "${part}" is not ID=HOST:PORT`);
    const id = integer('peers', match[1]!, 1);
    if (peers.has(id)) throw invalid(`--peers names node ${id} twice`);
    peers.set(id, match[2]!);
  }
  return peers;
}

/** Parses --join-user NAME:PASSWORD (the name ends at the first ':'); undefined when empty. */
function parseJoinUser(text: string): { name: string; password: string } | undefined {
  if (text === '') return undefined;
  const colon = text.indexOf(':');
  if (colon <= 0) throw invalid('--join-user must be NAME:PASSWORD');
  return { name: text.slice(0, colon), password: text.slice(colon + 1) };
}

/** Parses --join: client addresses of running members. */
export function parseJoin(text: string): string[] {
  const endpoints = text.split(',').map((e) => e.trim()).filter(Boolean);
  for (const endpoint of endpoints) {
    if (!isHostPort(endpoint)) throw invalid(`--join entry "${endpoint}" is not HOST:PORT (a member's client address)`);
  }
  return endpoints;
}

/** An optional HOST:PORT flag: undefined when empty. */
function optionalHostPort(name: string, text: string | undefined): string | undefined {
  if (!text) return undefined;
  if (!isHostPort(text)) throw invalid(`--${name} must be HOST:PORT, got "${text}"`);
  return text;
}

function boolean(name: string, text: string): boolean {
  if (text === 'true' || text === '1') return true;
  if (text === 'false' || text === '0' || text === '') return false;
  throw invalid(`--${name} is a switch (true or false), got "${text}"`);
}

/** The client and peer ports' connection bounds, from their flags. */
function portProtections(values: Record<string, string>): Pick<ServerConfig, 'clientPortProtection' | 'peerPortProtection'> {
  const shared = {
    handshakeTimeoutMs: integer('handshake-timeout-ms', values['handshake-timeout-ms']!, 1),
    keepaliveTimeMs: integer('keepalive-time-ms', values['keepalive-time-ms']!, 1),
    keepaliveTimeoutMs: integer('keepalive-timeout-ms', values['keepalive-timeout-ms']!, 1),
  };
  return {
    clientPortProtection: {
      ...shared,
      maxConnections: integer('max-client-connections', values['max-client-connections']!, 1),
      maxConcurrentStreams: integer('max-concurrent-streams', values['max-concurrent-streams']!, 1),
      idleTimeoutMs: integer('client-idle-timeout-ms', values['client-idle-timeout-ms']!, 1),
    },
    peerPortProtection: {
      ...shared,
      maxConnections: integer('max-peer-connections', values['max-peer-connections']!, 1),
      maxConcurrentStreams: PEER_MAX_CONCURRENT_STREAMS,
      idleTimeoutMs: PEER_IDLE_TIMEOUT_MS,
    },
  };
}

/** Builds the config from flag values (already merged with environment and defaults). */
export function buildServerConfig(values: Record<string, string>): ServerConfig {
  const timing = TIMING_PRESETS[values.timing as keyof typeof TIMING_PRESETS];
  if (!timing) throw invalid(`--timing must be "default" or "demo", got "${values.timing}"`);
  const id = integer('id', values.id ?? '', 1);
  const peerAddr = values['peer-addr']!;
  const peers = values.peers ? parsePeers(values.peers) : new Map([[id, peerAddr]]);
  if (!peers.has(id)) throw invalid(`--peers does not name this node (--id ${id})`);
  const join = parseJoin(values.join ?? '');
  const learner = boolean('learner', values.learner ?? 'false');
  if (join.length > 0 && values.peers) throw invalid('--join and --peers exclude each other: --join joins a running cluster, --peers bootstraps a new one');
  if (learner && join.length === 0) throw invalid('--learner needs --join (a bootstrap member is a voter)');
  const config: ServerConfig = {
    id,
    dataDir: values['data-dir']!,
    clientAddr: values['client-addr']!,
    peerAddr,
    advertiseClientAddr: optionalHostPort('advertise-client-addr', values['advertise-client-addr']) ?? values['client-addr']!,
    advertisePeerAddr: optionalHostPort('advertise-peer-addr', values['advertise-peer-addr']) ?? peerAddr,
    httpAddr: optionalHostPort('http-addr', values['http-addr']) ?? '',
    peers,
    peersGiven: Boolean(values.peers),
    join,
    learner,
    clusterToken: values['cluster-token']!,
    clusterId: values['cluster-id'] ? integer('cluster-id', values['cluster-id'], 1) : 0,
    tickMs: values['tick-ms'] ? integer('tick-ms', values['tick-ms'], 1) : timing.tickMs,
    electionTicks: values['election-ticks'] ? integer('election-ticks', values['election-ticks'], 2) : timing.electionTicks,
    heartbeatTicks: values['heartbeat-ticks'] ? integer('heartbeat-ticks', values['heartbeat-ticks'], 1) : timing.heartbeatTicks,
    requestTimeoutMs: integer('request-timeout-ms', values['request-timeout-ms']!, 1),
    logLevel: values['log-level']!,
    limits: {
      maxKeyBytes: integer('max-key-bytes', values['max-key-bytes']!, 1),
      maxValueBytes: integer('max-value-bytes', values['max-value-bytes']!, 0),
      maxRequestBytes: integer('max-request-bytes', values['max-request-bytes']!, 1),
      maxRangeLimit: integer('max-range-limit', values['max-range-limit']!, 1),
      maxRangeBytes: integer('max-range-bytes', values['max-range-bytes']!, 1),
      maxClientIdBytes: MAX_CLIENT_ID_BYTES,
    },
    ...portProtections(values),
    snapshotEntries: integer('snapshot-entries', values['snapshot-entries']!, 1),
    snapshotCatchupEntries: integer('snapshot-catchup-entries', values['snapshot-catchup-entries']!, 0),
    stateCacheBytes: integer('state-cache-bytes', values['state-cache-bytes']!, 0),
    autoCompactionRevisions: integer('auto-compaction-revisions', values['auto-compaction-revisions'] ?? String(DEFAULT_AUTO_COMPACTION_REVISIONS), 0),
    watchBufferBytes: integer('watch-buffer-bytes', values['watch-buffer-bytes'] ?? String(MAX_WATCH_BUFFER_BYTES), 1024),
    leveldbWriteBufferBytes: integer('leveldb-write-buffer-bytes', values['leveldb-write-buffer-bytes']!, 64 << 10),
    tls: tlsConfigFrom(values),
    authTokenTtlMs: integer('auth-token-ttl-ms', values['auth-token-ttl-ms'] ?? String(DEFAULT_AUTH_TOKEN_TTL_MS), 1),
    joinUser: parseJoinUser(values['join-user'] ?? ''),
  };
  if (config.heartbeatTicks >= config.electionTicks) {
    throw invalid(`--heartbeat-ticks (${config.heartbeatTicks}) must be below --election-ticks (${config.electionTicks})`);
  }
  return config;
}

/**
 * The largest message the client port receives (grpc.max_receive_message_length): twice
 * --max-request-bytes plus 1 MiB of headroom, so that a request over the limit still
 * arrives and is refused by validate.ts with a message naming the limit. The HTTP/JSON
 * gateway's body bound follows from it (gateway.ts, maxGatewayBodyBytes).
 */
export function clientMaxMessageBytes(limits: Pick<Limits, 'maxRequestBytes'>): number {
  return limits.maxRequestBytes * 2 + (1 << 20);
}
