import { waitFor } from '../support/process-cluster';
import { credentials, Server, ServerCredentials, ServiceError, status as Status } from '@grpc/grpc-js';
import { InstallSnapshotResponse, Message, RaftServiceClient, RaftServiceService, SnapshotHeader, StreamRequest } from '../../gen/cairn/raft/v1/raft';
import { CairnError, ErrorCode } from '../../src/errors';
import { KvReplica } from '../../src/kv/kv-replica';
import { MAX_SNAPSHOT_CHUNK_BYTES } from '../../src/node/replica';
import { createLogger } from '../../src/server/logger';
import { streamSnapshot } from '../../src/server/peer-transport';
import { PeerInputStats, raftService, ServiceContext, withLenientDecoding } from '../../src/server/services';

jest.setTimeout(30_000);

const CLUSTER_ID = 7;
const META = { index: 10, term: 2, config: { voters: [1, 2].map((id) => ({ id, peerAddr: '', clientAddr: '' })), learners: [] } };
const header = (overrides: Partial<SnapshotHeader> = {}): SnapshotHeader => ({ clusterId: CLUSTER_ID, fromId: 1, to: 2, term: 2, meta: META, ...overrides });

/** A stand-in for the Replica: records what the peer service hands it. */
class FakeReplica {
  readonly id = 2;
  readonly received: Message[] = [];
  readonly transfers: { header: SnapshotHeader; chunks: string[] }[] = [];
  /** Resolves the current transfer's answer (after its chunks are read) when set. */
  hold: Promise<void> | undefined;

  receive(message: Message): void {
    this.received.push(message);
  }

  async receiveSnapshot(h: SnapshotHeader, chunks: AsyncIterable<Uint8Array>): Promise<InstallSnapshotResponse> {
    const transfer = { header: h, chunks: [] as string[] };
    this.transfers.push(transfer);
    try {
      for await (const chunk of chunks) transfer.chunks.push(Buffer.from(chunk).toString());
    } catch (err) {
      return { term: 2, installed: false, reason: (err as Error).message };
    }
    await this.hold;
    return { term: 2, installed: true, reason: '' };
  }
}

async function peerServer(): Promise<{ client: RaftServiceClient; replica: FakeReplica; stats: PeerInputStats; close(): void }> {
  const replica = new FakeReplica();
  const logger = createLogger('silent');
  const context = {
    replica: replica as unknown as KvReplica,
    clusterId: CLUSTER_ID,
    logger,
    membership: {
      checkSender: (from: number) => {
        if (![1, 2, 3].includes(from)) throw new CairnError(ErrorCode.WRONG_CLUSTER, `node ${from} is not a member of this cluster`);
      },
      noteClientAddr: () => undefined,
    },
    requestTimeoutMs: 1000,
  } as unknown as ServiceContext;
  const stats = new PeerInputStats(logger);
  const server = new Server({ 'grpc.max_receive_message_length': 4 << 20 });
  server.addService(withLenientDecoding(RaftServiceService), raftService(context, stats));
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  const client = new RaftServiceClient(`127.0.0.1:${port}`, credentials.createInsecure(), { 'grpc.max_send_message_length': 4 << 20 });
  return { client, replica, stats, close: () => (client.close(), server.forceShutdown()) };
}

async function* chunksOf(...texts: string[]): AsyncIterable<Uint8Array> {
  for (const text of texts) yield Buffer.from(text);
}

/** Sends raw InstallSnapshot requests, for the malformed cases streamSnapshot never produces. */
function rawTransfer(client: RaftServiceClient, requests: { header?: SnapshotHeader; data: Buffer; done: boolean }[]): Promise<InstallSnapshotResponse> {
  return new Promise((resolve, reject) => {
    const call = client.installSnapshot((err, response) => (err ? reject(err) : resolve(response)));
    for (const request of requests) call.write(request);
    call.end();
  });
}

describe('InstallSnapshot over gRPC', () => {
  test('the transport streams the chunks in order, header first and done last; the service hands them to the replica', async () => {
    const peer = await peerServer();
    try {
      const response = await streamSnapshot(peer.client, header(), chunksOf('a', 'bb', 'ccc'), 10_000);
      expect(response).toEqual({ term: 2, installed: true, reason: '' });
      expect(peer.replica.transfers).toHaveLength(1);
      expect(peer.replica.transfers[0]!.chunks).toEqual(['a', 'bb', 'ccc']);
      expect(peer.replica.transfers[0]!.header).toMatchObject({ fromId: 1, to: 2, term: 2, meta: { index: 10, term: 2 } });
    } finally {
      peer.close();
    }
  });

  test('another cluster or a non-member is PERMISSION_DENIED; a header for another node INVALID_ARGUMENT', async () => {
    const peer = await peerServer();
    try {
      await expect(streamSnapshot(peer.client, header({ clusterId: 99 }), chunksOf('x'), 10_000)).rejects.toMatchObject({ code: Status.PERMISSION_DENIED });
      await expect(streamSnapshot(peer.client, header({ fromId: 9 }), chunksOf('x'), 10_000)).rejects.toMatchObject({ code: Status.PERMISSION_DENIED });
      await expect(streamSnapshot(peer.client, header({ to: 3 }), chunksOf('x'), 10_000)).rejects.toMatchObject({ code: Status.INVALID_ARGUMENT, details: expect.stringMatching(/addressed to node 3/) });
      // The configuration replaces the receiver's if the snapshot is installed: checked before anything is staged.
      const twice = { id: 2, peerAddr: '', clientAddr: '' };
      const badConfig = { ...META, config: { voters: [twice, twice], learners: [] } };
      await expect(streamSnapshot(peer.client, header({ meta: badConfig }), chunksOf('x'), 10_000)).rejects.toMatchObject({ code: Status.INVALID_ARGUMENT, details: expect.stringMatching(/configuration: member ids are not distinct/) });
      await expect(streamSnapshot(peer.client, header({ meta: { index: 10, term: 2 } }), chunksOf('x'), 10_000)).rejects.toMatchObject({ code: Status.INVALID_ARGUMENT, details: expect.stringMatching(/no configuration/) });
      expect(peer.replica.transfers).toEqual([]);
    } finally {
      peer.close();
    }
  });

  test('no header, a second header, an oversized chunk, or a stream without done are INVALID_ARGUMENT', async () => {
    const peer = await peerServer();
    try {
      const data = Buffer.from('x');
      await expect(rawTransfer(peer.client, [{ data, done: true }])).rejects.toMatchObject({ code: Status.INVALID_ARGUMENT, details: expect.stringMatching(/no header/) });
      await expect(rawTransfer(peer.client, [{ header: header(), data, done: false }, { header: header(), data, done: true }])).rejects.toMatchObject({
        code: Status.INVALID_ARGUMENT,
        details: expect.stringMatching(/second header/),
      });
      await expect(rawTransfer(peer.client, [{ header: header(), data: Buffer.alloc(MAX_SNAPSHOT_CHUNK_BYTES + 1), done: true }])).rejects.toMatchObject({
        code: Status.INVALID_ARGUMENT,
        details: expect.stringMatching(/over MAX_SNAPSHOT_CHUNK_BYTES/),
      });
      await expect(rawTransfer(peer.client, [{ header: header(), data, done: false }])).rejects.toMatchObject({
        code: Status.INVALID_ARGUMENT,
        details: expect.stringMatching(/without a request marked done/),
      });
    } finally {
      peer.close();
    }
  });

  test('one incoming transfer at a time: a second is RESOURCE_EXHAUSTED while the first is staged', async () => {
    const peer = await peerServer();
    try {
      let release!: () => void;
      peer.replica.hold = new Promise<void>((resolve) => (release = resolve));
      const first = streamSnapshot(peer.client, header(), chunksOf('one'), 10_000);
      await waitFor('the first transfer to reach the replica', () => peer.replica.transfers.length > 0, 5_000);
      const second = streamSnapshot(peer.client, header(), chunksOf('two'), 10_000);
      await expect(second).rejects.toMatchObject({ code: Status.RESOURCE_EXHAUSTED });
      release();
      await expect(first).resolves.toMatchObject({ installed: true });
      expect(peer.stats.refusedSnapshots).toBe(1);
    } finally {
      peer.close();
    }
  });

  test('the Raft stream drops a message whose body is installSnapshot, counted like a foreign one', async () => {
    const peer = await peerServer();
    try {
      const offer: Message = { fromId: 1, to: 2, term: 5, body: { $case: 'installSnapshot', value: { meta: META } } };
      const heartbeat: Message = { fromId: 1, to: 2, term: 5, body: { $case: 'heartbeatRequest', value: { commit: 0, readRound: 0 } } };
      await new Promise<void>((resolve, reject) => {
        const call = peer.client.stream((err: ServiceError | null) => (err ? reject(err) : resolve()));
        const frame: StreamRequest = { clusterId: CLUSTER_ID, fromId: 1, clientAddr: '', messages: [offer, heartbeat] };
        call.write(frame);
        call.end();
      });
      expect(peer.replica.received.map((m) => m.body?.$case)).toEqual(['heartbeatRequest']);
      expect(peer.stats.foreignMessages).toBe(1);
    } finally {
      peer.close();
    }
  });
});
