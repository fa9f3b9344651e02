import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { AddressInfo, connect, createServer, Socket } from 'node:net';
import { join } from 'node:path';
import { credentials, Server, ServerCredentials, ServerReadableStream } from '@grpc/grpc-js';
import { EntryType, Message, RaftServiceClient, RaftServiceServer, RaftServiceService, StreamRequest, StreamResponse } from '../../gen/cairn/raft/v1/raft';
import { resolveFlags } from '../../src/cli/flags';
import { buildServerConfig, SERVE_FLAGS } from '../../src/server/config';
import { createLogger } from '../../src/server/logger';
import {
  encodedBytesBound,
  GrpcPeerTransport,
  IncomingPeerStreams,
  MAX_FRAME_BYTES,
  PEER_LOST_MIN_STREAM_MS,
  peerMaxMessageBytes,
  splitIntoFrames,
} from '../../src/server/peer-transport';
import { CairnNode } from '../../src/server/server';
import { freePort, waitFor } from '../support/process-cluster';

jest.setTimeout(60_000);

const logger = createLogger('silent');
const BOUNDS = { maxBytesPerAppend: 1 << 20, maxEntriesPerAppend: 512, maxEntryDataBytes: (1 << 20) + (1 << 19) };
const MAX_MESSAGE_BYTES = peerMaxMessageBytes(BOUNDS);

function append(to: number, index: number, dataBytes: number, data = Buffer.alloc(dataBytes, 0x61)): Message {
  return {
    fromId: 1,
    to,
    term: 1,
    body: { $case: 'appendRequest', value: { prevLogIndex: index - 1, prevLogTerm: 1, commit: 0, entries: [{ index, term: 1, type: EntryType.ENTRY_TYPE_COMMAND, data }] } },
  };
}

function heartbeat(to: number, commit: number): Message {
  return { fromId: 1, to, term: 1, body: { $case: 'heartbeatRequest', value: { commit, readRound: 0 } } };
}

/** A peer server that records every frame and how each stream ended. */
async function recordingPeer(maxReceiveBytes = MAX_MESSAGE_BYTES): Promise<{ server: Server; port: number; frames: StreamRequest[]; frameBytes: number[]; ends: string[] }> {
  const frames: StreamRequest[] = [];
  const frameBytes: number[] = [];
  const ends: string[] = [];
  const server = new Server({ 'grpc.max_receive_message_length': maxReceiveBytes });
  const service: RaftServiceServer = {
    stream: (call: ServerReadableStream<StreamRequest, StreamResponse>, callback) => {
      call.on('data', (frame: StreamRequest) => {
        frames.push(frame);
        frameBytes.push(StreamRequest.encode(frame).finish().length);
      });
      call.on('end', () => {
        ends.push('end');
        callback(null, {});
      });
      call.on('error', (err) => ends.push(`error: ${err.message}`));
    },
    propose: (_call, callback) => callback(null, { result: Buffer.alloc(0), term: 0 }),
    readIndex: (_call, callback) => callback(null, { index: 0 }),
    installSnapshot: (_call, callback) => callback(null, { term: 0, installed: false, reason: 'not in this test' }),
  };
  server.addService(RaftServiceService, service);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  return { server, port, frames, frameBytes, ends };
}

describe('peer frames', () => {
  test('the size bound is never below the encoded size', () => {
    for (const message of [heartbeat(2, 7), append(2, 1, 0), append(2, 9, 100_000)]) {
      expect(encodedBytesBound(message)).toBeGreaterThanOrEqual(Message.encode(message).finish().length);
    }
  });

  test('a batch is split by bytes; a message larger than a frame goes alone', () => {
    const batch = [heartbeat(2, 1), ...Array.from({ length: 40 }, (_, i) => append(2, i + 1, 100_000)), append(2, 41, 2 * MAX_FRAME_BYTES), heartbeat(2, 2)];
    const frames = splitIntoFrames(batch);
    expect(frames.flat()).toEqual(batch);
    for (const frame of frames) {
      const bytes = StreamRequest.encode({ clusterId: 1, fromId: 1, clientAddr: '127.0.0.1:1', messages: frame }).finish().length;
      if (frame.length > 1) expect(bytes).toBeLessThanOrEqual(MAX_FRAME_BYTES);
      else expect(bytes).toBeLessThanOrEqual(MAX_MESSAGE_BYTES);
    }
    expect(frames.some((f) => f.length === 1 && encodedBytesBound(f[0]!) > MAX_FRAME_BYTES)).toBe(true);
  });

  test('over a real stream, 20 appends of 1 MiB and the heartbeats between them all arrive, each frame under the byte cap', async () => {
    // The receiver takes messages of at most 4 MiB: far more than any frame of ours, far less
    // than the whole batch. Cut by message count, the batch went as one 20 MiB frame and the
    // stream died, heartbeats included.
    const peer = await recordingPeer(4 << 20);
    const transport = new GrpcPeerTransport({ clusterId: 1, selfId: 1, clientAddr: '127.0.0.1:1' }, new Map([[1, '127.0.0.1:1'], [2, `127.0.0.1:${peer.port}`]]), logger, {
      maxMessageBytes: MAX_MESSAGE_BYTES,
      maxReconnectBackoffMs: 100,
    });
    try {
      const data = Buffer.alloc(1 << 20, 0x62); // one buffer shared by every entry
      const batch: Message[] = [];
      for (let i = 1; i <= 20; i++) batch.push(append(2, i, 0, data), heartbeat(2, i));
      transport.send(batch);
      await waitFor('every heartbeat to arrive', () => peer.frames.flatMap((f) => f.messages).filter((m) => m.body?.$case === 'heartbeatRequest').length === 20, 20_000);
      const received = peer.frames.flatMap((f) => f.messages);
      expect(received.filter((m) => m.body?.$case === 'appendRequest')).toHaveLength(20);
      peer.frames.forEach((frame, i) => {
        if (frame.messages.length > 1) expect(peer.frameBytes[i]).toBeLessThanOrEqual(MAX_FRAME_BYTES);
      });
      expect(peer.ends).toEqual([]);
    } finally {
      transport.close();
      peer.server.forceShutdown();
    }
  });
});

describe('a peer that goes away', () => {
  test('the transport reports a peer whose process dies (its stream fails UNAVAILABLE), and only that one', async () => {
    const peer = await recordingPeer();
    // The peer behind a TCP relay: destroying the relay's sockets is what a killed process
    // does to its connections (the stream fails "Connection dropped", UNAVAILABLE).
    const sockets = new Set<Socket>();
    const relay = createServer((inbound) => {
      const outbound = connect(peer.port, '127.0.0.1');
      for (const socket of [inbound, outbound]) {
        sockets.add(socket);
        socket.on('error', () => undefined);
        socket.on('close', () => sockets.delete(socket));
      }
      inbound.pipe(outbound).pipe(inbound);
    });
    await new Promise<void>((resolve) => relay.listen(0, '127.0.0.1', resolve));
    const relayPort = (relay.address() as AddressInfo).port;
    const lost: number[] = [];
    const transport = new GrpcPeerTransport({ clusterId: 1, selfId: 1, clientAddr: '127.0.0.1:1' }, new Map([[2, `127.0.0.1:${relayPort}`]]), logger, {
      maxMessageBytes: MAX_MESSAGE_BYTES,
      maxReconnectBackoffMs: 100,
      onPeerLost: (id) => lost.push(id),
    });
    try {
      transport.send([heartbeat(2, 1)]);
      await waitFor('the first frame', () => peer.frames.length > 0);
      // A stream younger than PEER_LOST_MIN_STREAM_MS is not reported: let it age.
      const openedAt = Date.now();
      await waitFor('the stream to age', () => Date.now() - openedAt > PEER_LOST_MIN_STREAM_MS);
      expect(lost).toEqual([]);
      relay.close();
      for (const socket of sockets) socket.destroy();
      await waitFor('the loss to be reported', () => lost.length > 0);
      expect(lost).toEqual([2]);
      // The reconnect attempts, which fail at once, are not reported again. A listener on the
      // old port counts them, dropping each connection as it comes.
      let attempts = 0;
      const dropper = createServer((socket) => {
        attempts++;
        socket.destroy();
      });
      await new Promise<void>((resolve) => dropper.listen(relayPort, '127.0.0.1', resolve));
      try {
        let commit = 1;
        await waitFor('five failed reconnect attempts', () => {
          transport.send([heartbeat(2, ++commit)]);
          return attempts >= 5;
        });
      } finally {
        dropper.close();
      }
      expect(lost).toEqual([2]);
    } finally {
      transport.close();
      relay.close();
      peer.server.forceShutdown();
    }
  });
});

describe('peer streams on stop', () => {
  test('closing the transport ends its streams: the peer sees a clean end', async () => {
    const peer = await recordingPeer();
    const transport = new GrpcPeerTransport({ clusterId: 1, selfId: 1, clientAddr: '127.0.0.1:1' }, new Map([[2, `127.0.0.1:${peer.port}`]]), logger, {
      maxMessageBytes: MAX_MESSAGE_BYTES,
      maxReconnectBackoffMs: 100,
    });
    transport.send([heartbeat(2, 1)]);
    await waitFor('the heartbeat to arrive', () => peer.frames.length === 1);
    transport.close();
    await waitFor('the peer to see the stream end', () => peer.ends.length === 1);
    expect(peer.ends).toEqual(['end']);
    peer.server.forceShutdown();
  });

  test('endAll answers the streams a server is serving, so that its peer clients see them finish', async () => {
    const incoming = new IncomingPeerStreams();
    const server = new Server();
    server.addService(
      RaftServiceService,
      incoming.wrap({
        stream: (call) => call.on('data', () => undefined), // never answers by itself, like a live peer stream
        propose: (_call, callback) => callback(null, { result: Buffer.alloc(0), term: 0 }),
        installSnapshot: (_call, callback) => callback(null, { term: 0, installed: false, reason: 'not in this test' }),
        readIndex: (_call, callback) => callback(null, { index: 0 }),
      }),
    );
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
    );
    const client = new RaftServiceClient(`127.0.0.1:${port}`, credentials.createInsecure());
    const finished = new Promise<string>((resolve) => {
      const call = client.stream((err) => resolve(err ? `error: ${err.message}` : 'ok'));
      call.write({ clusterId: 1, fromId: 2, clientAddr: '', messages: [] });
    });
    await waitFor('the stream to be served', () => incoming.count() === 1);
    expect(incoming.endAll()).toBe(1);
    expect(await finished).toBe('ok');
    expect(incoming.count()).toBe(0);
    client.close();
    server.forceShutdown();
  });

  test('stop() of a node whose peers are up drains its peer server instead of cutting it off after the grace period', async () => {
    const root = mkdtempSync(join(tmpdir(), 'cairn-stop-'));
    const ids = [1, 2, 3];
    const peerAddrs = new Map<number, string>();
    for (const id of ids) peerAddrs.set(id, `127.0.0.1:${await freePort()}`);
    const peers = [...peerAddrs].map(([id, addr]) => `${id}=${addr}`).join(',');
    const nodes: CairnNode[] = [];
    try {
      for (const id of ids) {
        const config = buildServerConfig(
          resolveFlags(SERVE_FLAGS, { id: String(id), 'data-dir': join(root, `n${id}`), 'client-addr': '127.0.0.1:0', 'peer-addr': peerAddrs.get(id)!, peers, 'tick-ms': '20' }, {}),
        );
        nodes.push(await CairnNode.start(config, logger, (err) => { throw err; }));
      }
      await waitFor('a leader that every node knows', () => {
        const leaders = new Set(nodes.map((n) => n.replica.node.leader));
        return leaders.size === 1 && !leaders.has(0);
      });
      const outcome = await nodes[0]!.stopReporting();
      expect(outcome).toMatchObject({ clientServer: 'drained', peerServer: 'drained' });
      // At least the leader's stream (to or from node 1) was there, and node 1 ended it.
      expect(outcome.peerStreamsEnded).toBeGreaterThanOrEqual(1);
    } finally {
      await Promise.all(nodes.map((n) => n.stop()));
      rmSync(root, { recursive: true, force: true });
    }
  });
});
