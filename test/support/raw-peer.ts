import { credentials, makeGenericClientConstructor, ServiceError } from '@grpc/grpc-js';

const RAW = { requestSerialize: (b: Buffer) => b, requestDeserialize: (b: Buffer) => b, responseSerialize: (b: Buffer) => b, responseDeserialize: (b: Buffer) => b };

const RawRaft = makeGenericClientConstructor(
  {
    stream: { path: '/cairn.raft.v1.RaftService/Stream', requestStream: true, responseStream: false, ...RAW },
    propose: { path: '/cairn.raft.v1.RaftService/Propose', requestStream: false, responseStream: false, ...RAW },
    readIndex: { path: '/cairn.raft.v1.RaftService/ReadIndex', requestStream: false, responseStream: false, ...RAW },
  },
  'RawRaft',
);

interface RawRaftClient {
  stream(cb: (err: ServiceError | null) => void): { write(bytes: Buffer): void; end(): void };
  propose(bytes: Buffer, cb: (err: ServiceError | null) => void): void;
  readIndex(bytes: Buffer, cb: (err: ServiceError | null) => void): void;
  close(): void;
}

/** A peer that sends raw bytes, as a stranger on the peer port would: no encoding, no checks. */
export function rawPeerClient(addr: string): RawRaftClient {
  return new RawRaft(addr, credentials.createInsecure()) as unknown as RawRaftClient;
}

/** Opens a peer stream to `addr`, sends `frames` as raw bytes, and returns how the stream ended. */
export function rawPeerStream(addr: string, frames: Buffer[]): Promise<ServiceError | null> {
  const client = rawPeerClient(addr);
  return new Promise((resolve) => {
    const call = client.stream((err) => {
      client.close();
      resolve(err);
    });
    for (const frame of frames) call.write(frame);
    call.end();
  });
}

/** Sends `bytes` as one unary peer request (Propose or ReadIndex) and returns its error, if any. */
export function rawPeerUnary(addr: string, method: 'propose' | 'readIndex', bytes: Buffer): Promise<ServiceError | null> {
  const client = rawPeerClient(addr);
  return new Promise((resolve) =>
    client[method](bytes, (err) => {
      client.close();
      resolve(err);
    }),
  );
}
