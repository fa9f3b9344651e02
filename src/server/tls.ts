import { readFileSync, unwatchFile, watchFile, Stats } from 'node:fs';
import { isIP } from 'node:net';
import { X509Certificate } from 'node:crypto';
import { checkServerIdentity, createSecureContext, PeerCertificate } from 'node:tls';
import { ChannelCredentials, ChannelOptions, experimental, Metadata, ServerCredentials, ServerInterceptingCall, ServerInterceptor } from '@grpc/grpc-js';
import { CairnError, ErrorCode } from '../errors';
import { splitHostPort } from './connection-guard';
import { Logger } from './logger';
import { RateLimitedLog } from './rate-limited-log';
import { toGrpcError } from './status';

/**
 * Transport security (docs/security.md, "Transport security"): TLS on the client port,
 * mutual TLS on the peer port with each peer's node id bound to its certificate, and
 * certificates reloaded from disk without a restart.
 *
 * Why grpc-js's certificate-provider credentials: the guarded ports (connection-guard.ts)
 * hand accepted sockets to a grpc-js connection injector, and an injector made with secure
 * credentials wraps each socket in TLS itself (http2.createSecureServer + 'connection'), so
 * the connection bounds keep counting raw TCP connections, TLS handshakes included. Those
 * credentials watch a CertificateProvider and call setSecureContext on the injector's TLS
 * server when it publishes new files, and the same provider feeds the peer clients' channel
 * credentials (each new connection takes the newest files). CertificateFiles is that provider.
 */

/** Default of --cert-poll-interval-ms: how often a certificate file's mtime is polled (fs.watchFile; Kubernetes swaps a Secret's files by a symlink, which fs.watch misses). */
export const CERT_FILE_POLL_INTERVAL_MS = 1000;
/**
 * The TLS server name (SNI) sent when dialling an IP address. grpc-js sends the target's
 * host, and Node 26 refuses an IP address there (ERR_INVALID_ARG_VALUE; Node 20 warns,
 * DEP0123), so the connection would never open. A cairn port serves one certificate whatever
 * the name; the certificate is still checked against the IP address (ipTargetTls).
 */
export const IP_TARGET_SERVERNAME = 'cairn-ip-target.invalid';
/** A certificate proves node N with this URI SAN: `cairn-node:N`. */
export const NODE_ID_URI_PREFIX = 'cairn-node:';
/** Lines a second the peer port may log about senders refused for their certificate. */
export const PEER_IDENTITY_LOG_LINES_PER_SECOND = 5;

/** The files of one port's TLS, as the flags name them. */
export interface TlsFiles {
  certFile: string;
  keyFile: string;
  /** CA bundle that verifies the other side's certificate; empty: none asked for (client port) */
  caFile: string;
  /** The flags, for messages: `{ cert: '--cert-file', key: '--key-file', ca: '--client-ca-file' }`. */
  flags: { cert: string; key: string; ca: string };
}

export interface TlsConfig {
  /** --cert-file, --key-file, --client-ca-file; undefined: the client port is plaintext. */
  client?: TlsFiles;
  /** --peer-cert-file, --peer-key-file, --peer-ca-file; undefined: the peer port is plaintext. */
  peer?: TlsFiles;
  /** --cert-poll-interval-ms: how often the files are checked for a change; 0: only on SIGHUP. */
  pollIntervalMs: number;
}

function invalid(message: string): CairnError {
  return new CairnError(ErrorCode.INVALID_ARGUMENT, message);
}

/** The TLS part of the server config, from flag values; all-or-nothing per port. */
export function tlsConfigFrom(values: Record<string, string | undefined>): TlsConfig {
  const pollText = values['cert-poll-interval-ms'] || String(CERT_FILE_POLL_INTERVAL_MS);
  const pollIntervalMs = Number(pollText);
  if (!Number.isSafeInteger(pollIntervalMs) || pollIntervalMs < 0) throw invalid(`--cert-poll-interval-ms must be an integer >= 0, got "${pollText}"`);
  const config: TlsConfig = { pollIntervalMs };
  const cert = values['cert-file'] ?? '';
  const key = values['key-file'] ?? '';
  const clientCa = values['client-ca-file'] ?? '';
  if (cert || key || clientCa) {
    if (!cert || !key) throw invalid('--cert-file and --key-file go together (TLS on the client port needs both)');
    config.client = { certFile: cert, keyFile: key, caFile: clientCa, flags: { cert: '--cert-file', key: '--key-file', ca: '--client-ca-file' } };
  }
  const peerCert = values['peer-cert-file'] ?? '';
  const peerKey = values['peer-key-file'] ?? '';
  const peerCa = values['peer-ca-file'] ?? '';
  if (peerCert || peerKey || peerCa) {
    if (!peerCert || !peerKey || !peerCa) {
      throw invalid('--peer-cert-file, --peer-key-file and --peer-ca-file go together (the peer port is mutual TLS: each side proves its node id and checks the other\'s)');
    }
    config.peer = { certFile: peerCert, keyFile: peerKey, caFile: peerCa, flags: { cert: '--peer-cert-file', key: '--peer-key-file', ca: '--peer-ca-file' } };
  }
  return config;
}

interface LoadedFiles {
  cert: Buffer;
  key: Buffer;
  ca: Buffer | undefined;
  /** Of the leaf certificate: what the logs and tests compare. */
  serialNumber: string;
  fingerprint256: string;
}

function readFlagFile(flag: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw invalid(`${flag} ${path}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message}`);
  }
}

/** Reads and checks a port's files: a certificate, its matching key, a CA bundle that parses. */
export function loadTlsFiles(files: TlsFiles): LoadedFiles {
  const cert = readFlagFile(files.flags.cert, files.certFile);
  const key = readFlagFile(files.flags.key, files.keyFile);
  const ca = files.caFile ? readFlagFile(files.flags.ca, files.caFile) : undefined;
  let leaf: X509Certificate;
  try {
    leaf = new X509Certificate(cert);
  } catch (err) {
    throw invalid(`${files.flags.cert} ${files.certFile} is not a PEM certificate: ${(err as Error).message}`);
  }
  try {
    createSecureContext({ cert, key });
  } catch (err) {
    throw invalid(`${files.flags.key} ${files.keyFile} does not fit ${files.flags.cert} ${files.certFile}: ${(err as Error).message}`);
  }
  if (ca) {
    try {
      createSecureContext({ ca });
      new X509Certificate(ca);
    } catch (err) {
      throw invalid(`${files.flags.ca} ${files.caFile} is not a PEM CA bundle: ${(err as Error).message}`);
    }
  }
  return { cert, key, ca, serialNumber: leaf.serialNumber, fingerprint256: leaf.fingerprint256 };
}

type IdentityListener = experimental.IdentityCertificateUpdateListener;
type CaListener = experimental.CaCertificateUpdateListener;

/**
 * One port's certificate, key and CA bundle, read from disk and read again on reload()
 * (SIGHUP) or when a file's mtime changes. A reload that fails (a half-written file, a key
 * that does not fit the certificate yet) is logged and the previous files keep serving;
 * a later change retries. Existing connections keep the certificate they shook hands with.
 */
export class CertificateFiles implements experimental.CertificateProvider {
  private current: LoadedFiles;
  private readonly identityListeners = new Set<IdentityListener>();
  private readonly caListeners = new Set<CaListener>();
  private readonly watched: string[] = [];
  private readonly onFileChange = (now: Stats, before: Stats) => {
    if (now.mtimeMs !== before.mtimeMs || now.ino !== before.ino || now.size !== before.size) this.reload('file changed');
  };

  constructor(
    readonly files: TlsFiles,
    private readonly port: string,
    private readonly logger: Logger,
  ) {
    this.current = loadTlsFiles(files);
  }

  /** Polls the files for changes (stop() ends it). */
  watch(intervalMs = CERT_FILE_POLL_INTERVAL_MS): void {
    for (const path of [this.files.certFile, this.files.keyFile, this.files.caFile]) {
      if (!path || this.watched.includes(path)) continue;
      watchFile(path, { persistent: false, interval: intervalMs }, this.onFileChange);
      this.watched.push(path);
    }
  }

  stop(): void {
    for (const path of this.watched.splice(0)) unwatchFile(path, this.onFileChange);
  }

  /** The serving certificate's serial and SHA-256 fingerprint. */
  describe(): { serialNumber: string; fingerprint256: string } {
    return { serialNumber: this.current.serialNumber, fingerprint256: this.current.fingerprint256 };
  }

  /** Reads the files again; publishes them if they changed and are sound. True if published. */
  reload(reason: string): boolean {
    let next: LoadedFiles;
    try {
      next = loadTlsFiles(this.files);
    } catch (err) {
      this.logger.error({ port: this.port, reason, err: (err as Error).message, serving: this.describe() }, 'certificate reload failed; the previous certificate keeps serving');
      return false;
    }
    const sameCa = next.ca === undefined ? this.current.ca === undefined : this.current.ca !== undefined && next.ca.equals(this.current.ca);
    if (sameCa && next.cert.equals(this.current.cert) && next.key.equals(this.current.key)) return false;
    this.current = next;
    for (const listener of this.caListeners) listener(this.caUpdate());
    for (const listener of this.identityListeners) listener(this.identityUpdate());
    this.logger.info({ port: this.port, reason, serialNumber: next.serialNumber, fingerprint256: next.fingerprint256 }, 'certificate reloaded');
    return true;
  }

  private identityUpdate() {
    return { certificate: this.current.cert, privateKey: this.current.key };
  }

  private caUpdate() {
    return this.current.ca ? { caCertificate: this.current.ca } : null;
  }

  // A new listener hears the current files on the next microtask, not inside this call:
  // grpc-js's server credentials add their listeners before the watcher that applies what
  // they hear, so an update delivered at once would be lost and the port would drop every
  // connection as "credentials not loaded".
  addIdentityCertificateListener(listener: IdentityListener): void {
    this.identityListeners.add(listener);
    queueMicrotask(() => {
      if (this.identityListeners.has(listener)) listener(this.identityUpdate());
    });
  }

  removeIdentityCertificateListener(listener: IdentityListener): void {
    this.identityListeners.delete(listener);
  }

  addCaCertificateListener(listener: CaListener): void {
    this.caListeners.add(listener);
    queueMicrotask(() => {
      if (this.caListeners.has(listener)) listener(this.caUpdate());
    });
  }

  removeCaCertificateListener(listener: CaListener): void {
    this.caListeners.delete(listener);
  }
}

/**
 * Server credentials that follow `files`. With a CA bundle the port asks for a client
 * certificate and refuses a connection without one that the bundle verifies.
 */
export function serverCredentialsOf(files: CertificateFiles): ServerCredentials {
  const withCa = Boolean(files.files.caFile);
  // grpc-js names this function's parameters the wrong way round; what it does with them is
  // (identity provider, CA provider or null, require a client certificate).
  return experimental.createCertificateProviderServerCredentials(files, withCa ? files : null, withCa);
}

/** The node ids a certificate names with `cairn-node:N` URI SANs. */
export function certificateNodeIds(cert: Pick<PeerCertificate, 'subjectaltname'>): number[] {
  const ids: number[] = [];
  for (const entry of (cert.subjectaltname ?? '').split(/,\s*/)) {
    const uri = /^URI:"?([^"]*)"?$/.exec(entry.trim())?.[1];
    if (!uri?.startsWith(NODE_ID_URI_PREFIX)) continue;
    const id = Number(uri.slice(NODE_ID_URI_PREFIX.length));
    if (Number.isSafeInteger(id) && id >= 1) ids.push(id);
  }
  return ids;
}

/**
 * Why `cert` does not prove it belongs to node `id` (undefined: it does). A certificate
 * proves a node by a `cairn-node:ID` URI SAN; one with no such SAN proves the node whose
 * peer address (as this node knows it) has a host its DNS or IP SANs name, as a per-pod
 * certificate from cert-manager does.
 */
export function nodeIdentityProblem(cert: PeerCertificate | undefined, id: number, peerAddr: string | undefined): string | undefined {
  if (!cert || !cert.raw) return 'the peer presented no verified certificate';
  const ids = certificateNodeIds(cert);
  if (ids.length > 0) return ids.includes(id) ? undefined : `its certificate names ${ids.map((n) => NODE_ID_URI_PREFIX + n).join(', ')}, not ${NODE_ID_URI_PREFIX}${id}`;
  if (!peerAddr) return `its certificate has no ${NODE_ID_URI_PREFIX}${id} URI SAN and node ${id}'s peer address is not known here`;
  let host: string;
  try {
    host = splitHostPort(peerAddr).host;
  } catch {
    return `node ${id}'s peer address "${peerAddr}" has no host`;
  }
  const mismatch = checkServerIdentity(host, cert);
  return mismatch ? `its certificate has no ${NODE_ID_URI_PREFIX}${id} URI SAN and does not name node ${id}'s peer host ${host}` : undefined;
}

/** How to dial one target: its channel credentials and the channel options they need. */
export interface Dial {
  credentials: ChannelCredentials;
  options: ChannelOptions;
}

/** Credentials and options per target: the CLI, members calling client ports, the test harness. */
export type DialSecurity = (target: string) => Dial;

export const PLAINTEXT_DIAL: DialSecurity = () => ({ credentials: ChannelCredentials.createInsecure(), options: {} });

function hostOfTarget(target: string): string {
  try {
    return splitHostPort(target).host;
  } catch {
    return target;
  }
}

/** The channel options a TLS channel to `target` needs: a stand-in server name for an IP address. */
export function ipTargetChannelOptions(target: string): ChannelOptions {
  return isIP(hostOfTarget(target)) ? { 'grpc.ssl_target_name_override': IP_TARGET_SERVERNAME } : {};
}

/**
 * TLS to each target with these PEM contents (any may be null: the system's roots, no client
 * certificate). The server's certificate must name the target's host (DNS or IP SAN); for an
 * IP address the check is made against it here, since the server name grpc-js checks is the
 * stand-in IP_TARGET_SERVERNAME.
 */
export function tlsDial(ca: Buffer | null, key: Buffer | null, cert: Buffer | null): DialSecurity {
  return (target) => {
    const host = hostOfTarget(target);
    if (!isIP(host)) return { credentials: ChannelCredentials.createSsl(ca, key, cert), options: {} };
    return {
      credentials: ChannelCredentials.createSsl(ca, key, cert, { checkServerIdentity: (_standIn, served) => checkServerIdentity(host, served) }),
      options: ipTargetChannelOptions(target),
    };
  };
}

/**
 * The peer clients' credentials for dialling node `id`: this node's peer certificate as the
 * client certificate, the peer CA, and a check that the server answering is node `id`.
 */
export function peerChannelCredentials(files: CertificateFiles, id: number, addr: string): ChannelCredentials {
  return experimental.createCertificateProviderChannelCredentials(files, files, {
    checkServerIdentity: (_host, cert) => {
      const problem = nodeIdentityProblem(cert, id, addr);
      return problem ? new Error(`peer ${addr} is not node ${id}: ${problem}`) : undefined;
    },
  });
}

/** The sender a peer-service request names: StreamRequest, ProposeRequest, ReadIndexRequest, an InstallSnapshot header. */
function senderOf(message: unknown): number | undefined {
  const m = message as { fromId?: unknown; header?: { fromId?: unknown } } | undefined;
  if (typeof m?.fromId === 'number') return m.fromId;
  if (typeof m?.header?.fromId === 'number') return m.header.fromId;
  return undefined;
}

/** What the peer identity check refused, for tests and logs. */
export class PeerIdentityStats {
  refusedCalls = 0;
  readonly log: RateLimitedLog;

  constructor(logger: Pick<Logger, 'warn'>) {
    this.log = new RateLimitedLog(logger, PEER_IDENTITY_LOG_LINES_PER_SECOND);
  }
}

/**
 * A peer-port interceptor: every request's sender (a stream frame's from_id, an
 * InstallSnapshot header's, a forwarded proposal's) must be the node the connection's
 * verified certificate names; a call that names another is ended with PERMISSION_DENIED
 * (PEER_IDENTITY_MISMATCH) before the service sees it, and logged. Messages inside a frame
 * must match the frame's sender already (services.ts drops the others).
 */
export function peerIdentityInterceptor(peerAddrOf: (id: number) => string | undefined, stats: PeerIdentityStats): ServerInterceptor {
  return (method, call) => {
    const cert = call.getAuthContext().sslPeerCertificate;
    const proven = new Set<number>();
    let refused = false;
    return new ServerInterceptingCall(call, {
      start: (next) =>
        next({
          onReceiveMessage: (message, pass) => {
            if (refused) return;
            const from = senderOf(message);
            if (from === undefined || proven.has(from)) return pass(message);
            const problem = nodeIdentityProblem(cert, from, peerAddrOf(from));
            if (!problem) {
              proven.add(from);
              return pass(message);
            }
            refused = true;
            stats.refusedCalls++;
            stats.log.warn({ peer: call.getPeer(), method: method.path, from, subject: cert?.subject?.CN, reason: problem }, 'peer call refused: the sender is not the node its certificate names');
            const status = toGrpcError(new CairnError(ErrorCode.PEER_IDENTITY_MISMATCH, `a message from node ${from} refused: ${problem}`));
            call.sendStatus({ code: status.code, details: status.details, metadata: status.metadata ?? new Metadata() });
          },
        }),
    });
  };
}

/** Whether a listening host is loopback only (a plaintext port there is not on the network). */
export function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\./.test(host);
}

/**
 * A node's transport security: the client port's and the peer port's certificate files,
 * and the credentials built on them. Plaintext where the config names no files.
 */
export class NodeTransportSecurity {
  private constructor(
    readonly client: CertificateFiles | undefined,
    readonly peer: CertificateFiles | undefined,
    private readonly pollIntervalMs: number,
  ) {}

  /** Reads every configured file now: a missing or mismatched one fails the start, naming its flag. */
  static open(config: TlsConfig, logger: Logger): NodeTransportSecurity {
    return new NodeTransportSecurity(
      config.client && new CertificateFiles(config.client, 'client', logger),
      config.peer && new CertificateFiles(config.peer, 'peer', logger),
      config.pollIntervalMs,
    );
  }

  clientServerCredentials(): ServerCredentials {
    return this.client ? serverCredentialsOf(this.client) : ServerCredentials.createInsecure();
  }

  peerServerCredentials(): ServerCredentials {
    return this.peer ? serverCredentialsOf(this.peer) : ServerCredentials.createInsecure();
  }

  /** For GrpcPeerTransport: per peer, since each link checks that it reached the node it meant. */
  readonly peerChannelCredentials = (id: number, addr: string): ChannelCredentials =>
    this.peer ? peerChannelCredentials(this.peer, id, addr) : ChannelCredentials.createInsecure();

  /**
   * For this node's calls to other members' client ports (Cluster calls forwarded to the
   * leader): TLS when the client port has it, trusting the peer CA (else the client CA,
   * else the system's roots) and presenting the peer certificate, which a member's
   * --client-ca-file must then verify. Read once at start: a rotation reaches these
   * connections at the next restart (docs/security.md).
   */
  memberClientDial(): DialSecurity {
    if (!this.client) return PLAINTEXT_DIAL;
    const ca = this.peer ? loadTlsFiles(this.peer.files).ca : this.client.files.caFile ? loadTlsFiles(this.client.files).ca : undefined;
    const identity = this.peer && loadTlsFiles(this.peer.files);
    return tlsDial(ca ?? null, identity?.key ?? null, identity?.cert ?? null);
  }

  /** Polls the files for changes every --cert-poll-interval-ms (unless 0). */
  watch(): void {
    if (this.pollIntervalMs === 0) return;
    this.client?.watch(this.pollIntervalMs);
    this.peer?.watch(this.pollIntervalMs);
  }

  /** Reads every file again (SIGHUP); returns how many ports took new files. */
  reload(reason: string): number {
    let published = 0;
    for (const files of [this.client, this.peer]) if (files?.reload(reason)) published++;
    return published;
  }

  stop(): void {
    this.client?.stop();
    this.peer?.stop();
  }
}

/** The warning `cairn serve` logs for a port on the network without TLS. */
export const PLAINTEXT_WARNING = 'listening on a non-loopback address without TLS: anyone who can reach it can read and change the traffic (docs/security.md)';

/** The ports that listen beyond loopback in plaintext, by flag (the HTTP port carries the JSON gateway's KV traffic). */
export function plaintextNetworkPorts(config: { clientAddr: string; peerAddr: string; httpAddr?: string; tls: TlsConfig }): string[] {
  const open: string[] = [];
  const exposed = (addr: string) => {
    try {
      return !isLoopbackHost(splitHostPort(addr).host);
    } catch {
      return false;
    }
  };
  if (!config.tls.client && exposed(config.clientAddr)) open.push(`--client-addr ${config.clientAddr}`);
  if (!config.tls.peer && exposed(config.peerAddr)) open.push(`--peer-addr ${config.peerAddr}`);
  if (!config.tls.client && config.httpAddr && exposed(config.httpAddr)) open.push(`--http-addr ${config.httpAddr}`);
  return open;
}

