import { ChannelCredentials, ClientWritableStream, credentials } from '@grpc/grpc-js';
import { Message, RaftServiceClient, StreamRequest } from '../../gen/cairn/raft/v1/raft';
import { Transport } from '../node/replica';
import { NodeId } from '../raft/node';
import { Logger } from './logger';

/** Messages waiting for one peer; beyond this the oldest are dropped (Raft tolerates loss). */
export const MAX_QUEUED_MESSAGES_PER_PEER = 4096;
/** Messages in one stream frame. */
export const MAX_MESSAGES_PER_FRAME = 256;
const MIN_RECONNECT_DELAY_MS = 50;
const MAX_RECONNECT_DELAY_MS = 2000;
/** A stream that lived this long before failing was healthy: reconnect quickly. */
const HEALTHY_STREAM_MS = 5000;

export const PEER_CHANNEL_OPTIONS = {
  'grpc.keepalive_time_ms': 10_000,
  'grpc.keepalive_timeout_ms': 5_000,
  'grpc.keepalive_permit_without_calls': 1,
  'grpc.max_receive_message_length': 64 * 1024 * 1024,
  'grpc.max_send_message_length': 64 * 1024 * 1024,
};

interface TransportIdentity {
  clusterId: number;
  selfId: NodeId;
  clientAddr: string;
}

/**
 * Sends Raft messages to peers over one long-lived gRPC stream per peer. `send` never
 * blocks: each peer has its own queue and stream, so a slow or dead peer delays only
 * itself. A broken stream is reopened with backoff; what was in flight is lost, which
 * Raft recovers from.
 */
export class GrpcPeerTransport implements Transport {
  private readonly links = new Map<NodeId, PeerLink>();

  constructor(
    identity: TransportIdentity,
    peers: Map<NodeId, string>,
    private readonly logger: Logger,
    channelCredentials: ChannelCredentials = credentials.createInsecure(),
  ) {
    for (const [id, addr] of peers) {
      if (id !== identity.selfId) this.links.set(id, new PeerLink(id, addr, identity, channelCredentials, logger));
    }
  }

  send(messages: readonly Message[]): void {
    const byPeer = new Map<NodeId, Message[]>();
    for (const message of messages) {
      const batch = byPeer.get(message.to) ?? [];
      batch.push(message);
      byPeer.set(message.to, batch);
    }
    for (const [to, batch] of byPeer) {
      const link = this.links.get(to);
      if (link) link.enqueue(batch);
      else this.logger.warn({ to }, 'message for a node that is not a member dropped');
    }
  }

  /** The gRPC client for a peer, for forwarding client requests to the leader. */
  client(id: NodeId): RaftServiceClient | undefined {
    return this.links.get(id)?.client;
  }

  close(): void {
    for (const link of this.links.values()) link.close();
  }
}

class PeerLink {
  readonly client: RaftServiceClient;
  private call: ClientWritableStream<StreamRequest> | undefined;
  private queue: Message[] = [];
  private congested = false;
  private closed = false;
  private reconnectDelayMs = MIN_RECONNECT_DELAY_MS;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private droppedMessages = 0;
  private lastErrorLoggedAt = 0;

  constructor(
    private readonly peerId: NodeId,
    private readonly addr: string,
    private readonly identity: TransportIdentity,
    channelCredentials: ChannelCredentials,
    private readonly logger: Logger,
  ) {
    this.client = new RaftServiceClient(addr, channelCredentials, PEER_CHANNEL_OPTIONS);
  }

  enqueue(messages: Message[]): void {
    if (this.closed) return;
    this.queue.push(...messages);
    const excess = this.queue.length - MAX_QUEUED_MESSAGES_PER_PEER;
    if (excess > 0) {
      this.queue.splice(0, excess);
      this.droppedMessages += excess;
    }
    this.flush();
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.reconnectTimer);
    this.call?.end();
    this.call = undefined;
    this.client.close();
  }

  private flush(): void {
    if (this.congested || this.queue.length === 0 || this.reconnectTimer) return;
    const call = this.call ?? this.open();
    while (this.queue.length > 0) {
      const frame: StreamRequest = {
        clusterId: this.identity.clusterId,
        fromId: this.identity.selfId,
        clientAddr: this.identity.clientAddr,
        messages: this.queue.splice(0, MAX_MESSAGES_PER_FRAME),
      };
      if (!call.write(frame)) {
        // HTTP/2 flow control: wait for the peer to take what we sent.
        this.congested = true;
        call.once('drain', () => {
          this.congested = false;
          this.flush();
        });
        return;
      }
    }
  }

  private open(): ClientWritableStream<StreamRequest> {
    const openedAt = Date.now();
    const call = this.client.stream((err) => {
      if (this.call !== call) return;
      this.call = undefined;
      this.congested = false;
      if (this.closed) return;
      if (err) this.logFailure(err.message);
      this.reconnectDelayMs =
        Date.now() - openedAt > HEALTHY_STREAM_MS ? MIN_RECONNECT_DELAY_MS : Math.min(this.reconnectDelayMs * 2, MAX_RECONNECT_DELAY_MS);
      this.reconnectTimer = setTimeout(() => {
        this.reconnectTimer = undefined;
        this.flush();
      }, this.reconnectDelayMs);
    });
    call.on('error', () => undefined); // reported through the callback above
    this.call = call;
    return call;
  }

  /** At most one line per peer every few seconds: a dead peer must not flood the log. */
  private logFailure(reason: string): void {
    const now = Date.now();
    if (now - this.lastErrorLoggedAt < 5000) return;
    this.lastErrorLoggedAt = now;
    this.logger.warn({ peer: this.peerId, addr: this.addr, reason, droppedMessages: this.droppedMessages }, 'peer stream failed; reconnecting');
  }
}
