import { ChannelCredentials, ClientWritableStream, credentials, makeGenericClientConstructor, sendUnaryData, ServerReadableStream, ServiceError, status } from '@grpc/grpc-js';
import {
  InstallSnapshotRequest,
  InstallSnapshotResponse,
  Message,
  RaftServiceClient,
  RaftServiceServer,
  RaftServiceService,
  SnapshotHeader,
  StreamRequest,
  StreamResponse,
} from '../../gen/cairn/raft/v1/raft';
import { MAX_SNAPSHOT_CHUNK_BYTES, Transport } from '../node/replica';
import { ErrorCode } from '../errors';
import { NodeId } from '../raft/node';
import { Logger } from './logger';
import { COMMIT_INDEX_METADATA, ERROR_CODE_METADATA } from './status';
import { withSharedWriter } from './shared-writer-serializers';
import { ipTargetChannelOptions } from './tls';

/** The generated client, with its serializers encoding through the shared protobuf writer. */
const PeerClient = makeGenericClientConstructor(withSharedWriter(RaftServiceService), 'cairn.raft.v1.RaftService') as unknown as typeof RaftServiceClient;

/**
 * Encoded bytes of messages in one stream frame. Well under the channel's message limit,
 * so that a frame of many messages never fails the stream (heartbeats included); a single
 * message larger than this goes in a frame of its own.
 */
export const MAX_FRAME_BYTES = 512 * 1024;
/** Bytes waiting for one peer; beyond this the oldest messages are dropped (Raft tolerates loss). */
export const MAX_QUEUED_BYTES_PER_PEER = 32 * 1024 * 1024;
/** Messages waiting for one peer, for the same reason. */
export const MAX_QUEUED_MESSAGES_PER_PEER = 4096;
/** Upper bound of a Message's encoded bytes besides its entries: ids, term, indexes, flags, tags. */
const MESSAGE_OVERHEAD_BOUND_BYTES = 128;
/** Upper bound of an Entry's encoded bytes besides its data: index, term, type, tags, lengths. */
const ENTRY_OVERHEAD_BOUND_BYTES = 48;
/** Upper bound of a StreamRequest's bytes besides its messages: cluster id, sender, client address. */
const FRAME_OVERHEAD_BOUND_BYTES = 1024;
const MIN_RECONNECT_DELAY_MS = 50;
/** The transport's own reconnect backoff is capped at this unless a smaller cap is given. */
export const DEFAULT_MAX_RECONNECT_DELAY_MS = 2000;
/** A stream that lived this long before failing was healthy: reconnect quickly. */
const HEALTHY_STREAM_MS = 5000;
/**
 * Only a stream that lived this long and then failed UNAVAILABLE is reported as a lost
 * peer (onPeerLost): a reconnect attempt that fails at once says nothing new, and must not
 * make a follower forget a leader over and over on a link that is merely flaky.
 */
export const PEER_LOST_MIN_STREAM_MS = 1000;
/**
 * The longest one InstallSnapshot transfer may take, end to end (the RPC's deadline):
 * a transfer cut off by it fails, and the leader sends a fresh snapshot later.
 */
export const SNAPSHOT_TRANSFER_TIMEOUT_MS = 10 * 60_000;
/** Upper bound of an InstallSnapshotRequest's bytes besides its data: the header (with its configuration) and tags. */
export const SNAPSHOT_REQUEST_OVERHEAD_BOUND_BYTES = 64 * 1024;

/** What bounds the largest Raft message a node can send (see RaftConfig and Limits). */
export interface PeerMessageBounds {
  maxBytesPerAppend: number;
  maxEntriesPerAppend: number;
  /** The largest entry data: an encoded command, at most the largest request plus its framing. */
  maxEntryDataBytes: number;
}

/** An upper bound of `message`'s encoded size, without encoding it. */
export function encodedBytesBound(message: Message): number {
  let bytes = MESSAGE_OVERHEAD_BOUND_BYTES;
  if (message.body?.$case === 'appendRequest') {
    for (const entry of message.body.value.entries) bytes += ENTRY_OVERHEAD_BOUND_BYTES + entry.data.length;
  }
  return bytes;
}

/**
 * The peer channel's message limit, on both ends: larger than any frame the transport can
 * build, i.e. MAX_FRAME_BYTES of small messages plus the largest single message.
 */
export function peerMaxMessageBytes(bounds: PeerMessageBounds): number {
  // An AppendRequest stops adding entries at maxBytesPerAppend, but its first entry goes
  // in whatever its size: its data is at most the larger of the two.
  const largestMessage =
    MESSAGE_OVERHEAD_BOUND_BYTES + bounds.maxEntriesPerAppend * ENTRY_OVERHEAD_BOUND_BYTES + Math.max(bounds.maxBytesPerAppend, bounds.maxEntryDataBytes);
  const largestFrame = FRAME_OVERHEAD_BOUND_BYTES + MAX_FRAME_BYTES + largestMessage;
  return Math.max(largestFrame, MAX_SNAPSHOT_CHUNK_BYTES + SNAPSHOT_REQUEST_OVERHEAD_BOUND_BYTES);
}

/**
 * Channel options of the peer clients. The reconnect backoff (grpc-js's own, besides the
 * transport's) is capped so that a peer that restarts is reached again within about an
 * election timeout; grpc-js's default grows to 120 s.
 */
export function peerChannelOptions(maxMessageBytes: number, maxReconnectBackoffMs: number) {
  return {
    'grpc.keepalive_time_ms': 10_000,
    'grpc.keepalive_timeout_ms': 5_000,
    'grpc.keepalive_permit_without_calls': 1,
    'grpc.max_receive_message_length': maxMessageBytes,
    'grpc.max_send_message_length': maxMessageBytes,
    'grpc.initial_reconnect_backoff_ms': Math.min(MIN_RECONNECT_DELAY_MS * 2, maxReconnectBackoffMs),
    'grpc.max_reconnect_backoff_ms': maxReconnectBackoffMs,
    'grpc.enable_channelz': 0,
  };
}

export interface PeerTransportOptions {
  maxMessageBytes: number;
  /** Longest wait before trying a failed peer again. */
  maxReconnectBackoffMs: number;
  /**
   * A peer refused this node with MEMBER_REMOVED: a committed configuration removed it, as
   * far as the peer's log goes (`commitIndex`, or undefined when it did not say).
   */
  onRemoved?: (by: NodeId, reason: string, commitIndex: number | undefined) => void;
  /**
   * The stream to a peer broke with UNAVAILABLE (its process died, or the connection did):
   * the node may be following that peer (RaftNode.leaderConnectionLost).
   */
  onPeerLost?: (peer: NodeId) => void;
  /** The link to `peer` dropped `count` queued messages (its queue was over its bounds). */
  onDropped?: (peer: NodeId, count: number) => void;
}

/** Splits messages into frames of at most MAX_FRAME_BYTES (bounded, not exact); a bigger message goes alone. */
export function splitIntoFrames(messages: readonly Message[], maxFrameBytes = MAX_FRAME_BYTES): Message[][] {
  const frames: Message[][] = [];
  let frame: Message[] = [];
  let frameBytes = 0;
  for (const message of messages) {
    const bytes = encodedBytesBound(message);
    if (frame.length > 0 && frameBytes + bytes > maxFrameBytes) {
      frames.push(frame);
      frame = [];
      frameBytes = 0;
    }
    frame.push(message);
    frameBytes += bytes;
  }
  if (frame.length > 0) frames.push(frame);
  return frames;
}

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
  private closed = false;

  constructor(
    private readonly identity: TransportIdentity,
    peers: Map<NodeId, string>,
    private readonly logger: Logger,
    private readonly options: PeerTransportOptions,
    /** One for all peers, or one per peer (mutual TLS checks that a link reached the node it meant). */
    private readonly channelCredentials: ChannelCredentials | ((peer: NodeId, addr: string) => ChannelCredentials) = credentials.createInsecure(),
  ) {
    this.setPeers(peers);
  }

  /**
   * Follows the configuration: opens links to new members, closes those to members that
   * left, and reopens a link whose peer address changed. What was queued for a closed link
   * is dropped (Raft tolerates loss).
   */
  setPeers(peers: ReadonlyMap<NodeId, string>): void {
    if (this.closed) return;
    for (const [id, link] of this.links) {
      if (peers.get(id) === link.addr) continue;
      link.close();
      this.links.delete(id);
      this.logger.info({ peer: id, addr: link.addr }, 'peer link closed: no longer a member at this address');
    }
    for (const [id, addr] of peers) {
      if (id === this.identity.selfId || this.links.has(id)) continue;
      const channelCredentials = typeof this.channelCredentials === 'function' ? this.channelCredentials(id, addr) : this.channelCredentials;
      this.links.set(id, new PeerLink(id, addr, this.identity, channelCredentials, this.options, this.logger));
    }
  }

  /**
   * Sends every peer a frame with no messages: a node that its own log says is being
   * removed asks this way whether the removal committed (the peers answer MEMBER_REMOVED
   * then, and onRemoved hears it), since nobody sends it anything once it has.
   */
  probe(): void {
    for (const link of this.links.values()) link.probe();
  }

  /** The peers this transport links to, by id: for tests and status. */
  peerAddrs(): Map<NodeId, string> {
    return new Map([...this.links].map(([id, link]) => [id, link.addr]));
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
      // Expected for a short while after a removal commits: the core still tells the removed
      // member (REMOVED_MEMBER_GRACE_ELECTION_TIMEOUTS), the link is gone; the removed node
      // learns from the peers' MEMBER_REMOVED instead. Debug, not warn: ten a second otherwise.
      else this.logger.debug({ to }, 'message for a node that is not a member dropped');
    }
  }

  /**
   * Streams a snapshot to `to` on its own InstallSnapshot call (never the Raft stream):
   * the header on the first chunk, `done` on the last, flow-controlled by HTTP/2.
   */
  sendSnapshot(to: NodeId, header: SnapshotHeader, chunks: AsyncIterable<Uint8Array>): Promise<InstallSnapshotResponse> {
    const link = this.links.get(to);
    if (!link) return Promise.reject(new Error(`node ${to} is not a peer of this node`));
    return streamSnapshot(link.client, { ...header, clusterId: this.identity.clusterId }, chunks, SNAPSHOT_TRANSFER_TIMEOUT_MS);
  }

  /** The gRPC client for a peer, for forwarding client requests to the leader. */
  client(id: NodeId): RaftServiceClient | undefined {
    return this.links.get(id)?.client;
  }

  /** Ends every outgoing stream (the peers see a clean end) and closes the channels. */
  close(): void {
    this.closed = true;
    for (const link of this.links.values()) link.close();
  }
}

/**
 * One InstallSnapshot call: writes the chunks (each at most MAX_SNAPSHOT_CHUNK_BYTES), one
 * behind, so the last one carries `done`; waits for HTTP/2 flow control between them; and
 * resolves with the receiver's answer. The receiver may answer early (it refused): the
 * remaining chunks are not read.
 */
export function streamSnapshot(
  client: RaftServiceClient,
  header: SnapshotHeader,
  chunks: AsyncIterable<Uint8Array>,
  timeoutMs: number,
): Promise<InstallSnapshotResponse> {
  let call: ClientWritableStream<InstallSnapshotRequest> | undefined;
  let answered = false;
  const answer = new Promise<InstallSnapshotResponse>((resolve, reject) => {
    call = client.installSnapshot({ deadline: Date.now() + timeoutMs }, (err, response) => {
      answered = true;
      if (err) reject(err);
      else resolve(response);
    });
  });
  const stream = call!;
  stream.on('error', () => undefined); // reported through the callback
  const write = async (request: InstallSnapshotRequest): Promise<void> => {
    if (stream.write(request)) return;
    await Promise.race([new Promise<void>((resolve) => stream.once('drain', resolve)), answer.then(() => undefined, () => undefined)]);
  };
  const send = async (): Promise<void> => {
    let first = true;
    let held: Uint8Array | undefined;
    for await (const chunk of chunks) {
      if (answered) return;
      if (chunk.length > MAX_SNAPSHOT_CHUNK_BYTES) throw new Error(`snapshot chunk of ${chunk.length} bytes, over MAX_SNAPSHOT_CHUNK_BYTES ${MAX_SNAPSHOT_CHUNK_BYTES}`);
      if (held !== undefined) {
        await write({ header: first ? header : undefined, data: Buffer.from(held), done: false });
        first = false;
      }
      held = chunk;
    }
    if (answered) return;
    await write({ header: first ? header : undefined, data: Buffer.from(held ?? new Uint8Array(0)), done: true });
    stream.end();
  };
  send().catch((err: unknown) => {
    stream.cancel();
    void err; // the call's callback reports the cancellation
  });
  return answer;
}

interface QueuedMessage {
  message: Message;
  bytes: number;
}

class PeerLink {
  readonly client: RaftServiceClient;
  private call: ClientWritableStream<StreamRequest> | undefined;
  private queue: QueuedMessage[] = [];
  private queuedBytes = 0;
  private congested = false;
  private closed = false;
  private reconnectDelayMs = MIN_RECONNECT_DELAY_MS;
  private readonly maxReconnectDelayMs: number;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private droppedMessages = 0;
  private lastErrorLoggedAt = 0;

  constructor(
    private readonly peerId: NodeId,
    readonly addr: string,
    private readonly identity: TransportIdentity,
    channelCredentials: ChannelCredentials,
    private readonly options: PeerTransportOptions,
    private readonly logger: Logger,
  ) {
    this.maxReconnectDelayMs = Math.max(MIN_RECONNECT_DELAY_MS, Math.min(options.maxReconnectBackoffMs, DEFAULT_MAX_RECONNECT_DELAY_MS));
    // The stand-in server name for an IP address matters only to TLS credentials (tls.ts).
    const channelOptions = { ...peerChannelOptions(options.maxMessageBytes, this.maxReconnectDelayMs), ...ipTargetChannelOptions(addr) };
    this.client = new PeerClient(addr, channelCredentials, channelOptions);
  }

  enqueue(messages: Message[]): void {
    if (this.closed) return;
    for (const message of messages) {
      const bytes = encodedBytesBound(message);
      this.queue.push({ message, bytes });
      this.queuedBytes += bytes;
    }
    this.dropOldestBeyondBounds();
    this.flush();
  }

  probe(): void {
    if (this.closed || this.congested || this.reconnectTimer || this.queue.length > 0) return;
    const call = this.call ?? this.open();
    call.write({ clusterId: this.identity.clusterId, fromId: this.identity.selfId, clientAddr: this.identity.clientAddr, messages: [] } satisfies StreamRequest);
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.reconnectTimer);
    this.call?.end();
    this.call = undefined;
    this.client.close();
  }

  /** The newest message always stays, however large: it is the one most worth sending. */
  private dropOldestBeyondBounds(): void {
    let drop = 0;
    while (
      drop < this.queue.length - 1 &&
      (this.queuedBytes > MAX_QUEUED_BYTES_PER_PEER || this.queue.length - drop > MAX_QUEUED_MESSAGES_PER_PEER)
    ) {
      this.queuedBytes -= this.queue[drop]!.bytes;
      drop++;
    }
    if (drop === 0) return;
    this.queue.splice(0, drop);
    this.droppedMessages += drop;
    this.options.onDropped?.(this.peerId, drop);
  }

  /** Takes the next frame's messages off the queue: up to MAX_FRAME_BYTES, or one message alone. */
  private takeFrame(): Message[] {
    let count = 0;
    let bytes = 0;
    while (count < this.queue.length && (count === 0 || bytes + this.queue[count]!.bytes <= MAX_FRAME_BYTES)) {
      bytes += this.queue[count]!.bytes;
      count++;
    }
    this.queuedBytes -= bytes;
    return this.queue.splice(0, count).map((queued) => queued.message);
  }

  private flush(): void {
    if (this.congested || this.queue.length === 0 || this.reconnectTimer) return;
    const call = this.call ?? this.open();
    while (this.queue.length > 0) {
      const frame: StreamRequest = {
        clusterId: this.identity.clusterId,
        fromId: this.identity.selfId,
        clientAddr: this.identity.clientAddr,
        messages: this.takeFrame(),
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
      if (err && removedBy(err)) this.options.onRemoved?.(this.peerId, err.details, commitIndexOf(err));
      if (err?.code === status.UNAVAILABLE && Date.now() - openedAt >= PEER_LOST_MIN_STREAM_MS) this.options.onPeerLost?.(this.peerId);
      this.reconnectDelayMs =
        Date.now() - openedAt > HEALTHY_STREAM_MS ? MIN_RECONNECT_DELAY_MS : Math.min(this.reconnectDelayMs * 2, this.maxReconnectDelayMs);
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

function commitIndexOf(err: ServiceError): number | undefined {
  const value = Number(err.metadata?.get(COMMIT_INDEX_METADATA)[0]);
  return Number.isSafeInteger(value) && value >= 0 ? value : undefined;
}

/** Whether a peer ended our stream because a committed configuration removed this node. */
function removedBy(err: ServiceError): boolean {
  return err.metadata?.get(ERROR_CODE_METADATA)[0] === ErrorCode.MEMBER_REMOVED;
}

/**
 * The incoming peer streams a node serves. They never end by themselves (the peers keep
 * sending), so a graceful shutdown would wait its whole grace period for them: `endAll`
 * answers each one (a clean end for the peer, which reconnects elsewhere or later).
 */
export class IncomingPeerStreams {
  private readonly open = new Set<() => void>();

  /** `service` with its Stream handler tracked. */
  wrap(service: RaftServiceServer): RaftServiceServer {
    return {
      ...service,
      stream: (call: ServerReadableStream<StreamRequest, StreamResponse>, callback: sendUnaryData<StreamResponse>) => {
        let answered = false;
        const answer: sendUnaryData<StreamResponse> = (err, value) => {
          if (answered) return;
          answered = true;
          this.open.delete(end);
          callback(err, value);
        };
        const end = () => answer(null, {});
        const forget = () => this.open.delete(end);
        this.open.add(end);
        call.once('cancelled', forget);
        call.once('error', forget);
        service.stream(call, answer);
      },
    };
  }

  /** Streams being served right now. */
  count(): number {
    return this.open.size;
  }

  /** Ends every stream being served; returns how many. */
  endAll(): number {
    const ends = [...this.open];
    for (const end of ends) end();
    return ends.length;
  }
}
