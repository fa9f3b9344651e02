import { createServer, Server as NetServer, Socket } from 'node:net';
import { ChannelOptions, Server, ServerCredentials, ServerInterceptingCall, ServerInterceptor } from '@grpc/grpc-js';
import { CairnError, ErrorCode } from '../errors';
import { Logger } from './logger';

/**
 * What one listening port tolerates from the connections it accepts. Every field is a
 * bound on what a client that misbehaves (or vanishes) can hold on to.
 */
export interface PortProtection {
  /** Connections open at once; one beyond it is closed as soon as it is accepted. */
  maxConnections: number;
  /** HTTP/2 streams (calls) open at once on one connection (SETTINGS_MAX_CONCURRENT_STREAMS). */
  maxConcurrentStreams: number;
  /** A connection must start its first call within this, or it is destroyed. */
  handshakeTimeoutMs: number;
  /** A connection with no call open for this long is closed (GOAWAY, then close). */
  idleTimeoutMs: number;
  /** The server pings a connection after this long without a ping... */
  keepaliveTimeMs: number;
  /** ...and destroys it if the ping is not answered within this. */
  keepaliveTimeoutMs: number;
}

/** At most one log line per port and kind of rejection in this window. */
const REJECTION_LOG_INTERVAL_MS = 5000;

/**
 * Accepts a port's TCP connections itself and hands them to a grpc-js Server through a
 * connection injector, so that it can count them, refuse those beyond the bound, and
 * destroy those that never start a call.
 *
 * Why this is needed: Node's HTTP/2 layer (nghttp2) answers a connection error such as
 * a HEADERS block that does not decode (HPACK COMPRESSION_ERROR) with a GOAWAY and then
 * stops reading the socket, but it neither destroys the session nor tells JavaScript
 * (no 'error', no 'close'). The client's FIN is therefore never read and the socket
 * stays in CLOSE-WAIT for ever. grpc-js's keepalive would eventually notice (the ping
 * is never answered), but only after keepalive time; a connection that sent nothing at
 * all (half-open, slowloris) holds its descriptor until then too. The handshake timeout
 * here closes both kinds within seconds, keepalive and the idle timeout cover a session
 * that dies after it has made calls, and the connection bound caps what is left.
 */
export class GuardedPort {
  private readonly listener: NetServer;
  private readonly connections = new Map<string, Socket>();
  private readonly withoutCall = new Map<string, NodeJS.Timeout>();
  private readonly lastRejectionLogAt = new Map<string, number>();
  private injector: ReturnType<Server['createConnectionInjector']> | undefined;

  constructor(
    private readonly name: string,
    private readonly protection: PortProtection,
    private readonly logger: Logger,
  ) {
    this.listener = createServer((socket) => this.accept(socket));
  }

  /** Options for the grpc-js Server this port feeds (merge them into its constructor options). */
  serverOptions(): ChannelOptions & { interceptors: ServerInterceptor[] } {
    const { maxConcurrentStreams, idleTimeoutMs, keepaliveTimeMs, keepaliveTimeoutMs } = this.protection;
    return {
      'grpc.max_concurrent_streams': maxConcurrentStreams,
      'grpc.max_connection_idle_ms': idleTimeoutMs,
      'grpc.keepalive_time_ms': keepaliveTimeMs,
      'grpc.keepalive_timeout_ms': keepaliveTimeoutMs,
      // cairn serves no channelz service; grpc-js's per-call channelz bookkeeping is pure cost.
      'grpc.enable_channelz': 0,
      interceptors: [this.noteCall],
    };
  }

  /**
   * Listens on HOST:PORT (port 0 picks one) and feeds accepted connections to `server`;
   * with secure `credentials` the injector wraps each one in TLS (src/server/tls.ts).
   */
  listen(server: Server, addr: string, credentials: ServerCredentials = ServerCredentials.createInsecure()): Promise<number> {
    const { host, port } = splitHostPort(addr);
    this.injector = server.createConnectionInjector(credentials);
    return new Promise((resolve, reject) => {
      const fail = (err: NodeJS.ErrnoException) => reject(listenError(`--${this.name}-addr`, addr, err));
      this.listener.once('error', fail);
      this.listener.listen({ host, port }, () => {
        this.listener.off('error', fail);
        this.listener.on('error', (err) => this.logger.error({ port: this.name, err: err.message }, 'listener error'));
        resolve((this.listener.address() as { port: number }).port);
      });
    });
  }

  /** Connections open right now. */
  openConnections(): number {
    return this.connections.size;
  }

  /**
   * Stops accepting. Open connections are the grpc-js Server's to drain (tryShutdown /
   * forceShutdown); net.Server's close callback would wait for them, so it is not awaited.
   */
  stopAccepting(): void {
    this.listener.close();
  }

  /**
   * Stops accepting and shuts `server` down: calls in flight get up to `graceMs` to finish,
   * then every connection is cut ('forced'); once drained, the connections get up to
   * `flushGraceMs` to write their last frames and close ('drained').
   */
  shutdown(server: Server, graceMs: number, flushGraceMs: number): Promise<'drained' | 'forced'> {
    this.stopAccepting();
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        server.forceShutdown();
        this.destroyAll();
        resolve('forced');
      }, graceMs);
      server.tryShutdown(() => {
        clearTimeout(timer);
        void this.closeAll(flushGraceMs).then(() => resolve('drained'));
      });
    });
  }

  /** Destroys every connection still open (after the grace period of a shutdown). */
  destroyAll(): void {
    for (const socket of this.connections.values()) socket.destroy();
  }

  /**
   * Waits, once the grpc-js Server has drained, for every connection still open to close by
   * itself; one still open after `flushGraceMs` (a session nghttp2 gave up on, a client that
   * stopped reading) is destroyed. Touching the sockets earlier loses answers: on Node 26
   * tryShutdown reports drained while a session still has the last frames of an answer
   * (its trailers, the GOAWAY) to write, and destroying or even ending the socket then
   * drops them, so the caller sees UNAVAILABLE for a call that succeeded (seen as a removed
   * leader's lost MemberRemove answer).
   */
  closeAll(flushGraceMs: number): Promise<void> {
    const closing = [...this.connections.values()].map(
      (socket) =>
        new Promise<void>((closed) => {
          if (socket.destroyed) return closed();
          const timer = setTimeout(() => socket.destroy(), flushGraceMs);
          socket.once('close', () => {
            clearTimeout(timer);
            closed();
          });
        }),
    );
    return Promise.all(closing).then(() => undefined);
  }

  private accept(socket: Socket): void {
    if (this.connections.size >= this.protection.maxConnections) {
      this.logRejection('limit', { maxConnections: this.protection.maxConnections }, 'connection refused: too many open connections');
      socket.destroy();
      return;
    }
    const key = connectionKey(socket.remoteAddress, socket.remotePort);
    if (!this.injector || key === undefined) {
      socket.destroy();
      return;
    }
    this.connections.set(key, socket);
    const timer = setTimeout(() => {
      this.logRejection('handshake', { handshakeTimeoutMs: this.protection.handshakeTimeoutMs }, 'connection closed: no call started in time');
      socket.destroy();
    }, this.protection.handshakeTimeoutMs);
    timer.unref();
    this.withoutCall.set(key, timer);
    socket.once('close', () => {
      clearTimeout(this.withoutCall.get(key));
      this.withoutCall.delete(key);
      if (this.connections.get(key) === socket) this.connections.delete(key);
    });
    socket.on('error', () => undefined); // the session reports what matters; a reset is routine
    this.injector.injectConnection(socket);
  }

  /** A call started: its connection has shown it speaks gRPC, so it is no longer on the clock. */
  private readonly noteCall: ServerInterceptor = (_method, call) => {
    const key = call.getPeer();
    const timer = this.withoutCall.get(key);
    if (timer) {
      clearTimeout(timer);
      this.withoutCall.delete(key);
    }
    return new ServerInterceptingCall(call);
  };

  /** A stranger must not be able to grow the log: one line per kind per interval. */
  private logRejection(kind: string, fields: Record<string, unknown>, message: string): void {
    const now = Date.now();
    if (now - (this.lastRejectionLogAt.get(kind) ?? 0) < REJECTION_LOG_INTERVAL_MS) return;
    this.lastRejectionLogAt.set(kind, now);
    this.logger.warn({ port: this.name, openConnections: this.connections.size, ...fields }, message);
  }
}

const LISTEN_FAILURES: Record<string, string> = {
  EADDRINUSE: 'the address is already in use (another process listens there)',
  EADDRNOTAVAIL: 'this machine has no such address',
  EACCES: 'permission denied (ports below 1024 need privileges)',
};

/** One clear line naming the flag, not a stack trace: the configuration is at fault. */
function listenError(flag: string, addr: string, err: NodeJS.ErrnoException): CairnError {
  const reason = (err.code && LISTEN_FAILURES[err.code]) || err.message;
  return new CairnError(ErrorCode.INVALID_ARGUMENT, `cannot listen on ${flag} ${addr}: ${reason}`);
}

/** The same text grpc-js's call.getPeer() gives for a socket. */
function connectionKey(address: string | undefined, port: number | undefined): string | undefined {
  if (!address) return undefined;
  return port ? `${address}:${port}` : address;
}

/** Splits HOST:PORT, including [v6]:PORT. */
export function splitHostPort(addr: string): { host: string; port: number } {
  const match = /^\[?([^\]]*)\]?:(\d+)$/.exec(addr);
  const port = match ? Number(match[2]) : NaN;
  if (!match || !Number.isInteger(port) || port > 65535) throw new Error(`"${addr}" is not HOST:PORT`);
  return { host: match[1]!, port };
}
