import { ServerWritableStream } from '@grpc/grpc-js';
import { SnapshotSaveRequest, SnapshotSaveResponse } from '../../gen/cairn/kv/v1/kv';
import { SnapshotMeta } from '../../gen/cairn/raft/v1/raft';
import { encodeSnapshotFile } from '../storage/snapshot-file';
import { toGrpcError } from './status';

/**
 * The most file bytes one SnapshotSaveResponse carries: well under gRPC's default 4 MiB
 * receive limit whatever the size of a chunk (a larger chunk is split across messages).
 */
export const SNAPSHOT_SAVE_MESSAGE_BYTES = 1024 * 1024;

/** What a backup needs of the node: a consistent snapshot at its applied index (Replica.saveSnapshot). */
export type SaveSnapshot = () => Promise<{ meta: SnapshotMeta; chunks: AsyncIterable<Uint8Array>; release(): void }>;

/**
 * Cluster.SnapshotSave: streams the bytes of a snapshot file (src/storage/snapshot-file.ts)
 * of this node's state at its applied index, read lazily from a LevelDB snapshot and sent as
 * fast as the client takes them (HTTP/2 flow control: the next piece waits for `drain`).
 * The snapshot is released when the stream ends, fails or is cancelled.
 */
export function snapshotSaveCall(save: SaveSnapshot): (call: ServerWritableStream<SnapshotSaveRequest, SnapshotSaveResponse>) => void {
  return (call) => {
    void streamSnapshotFile(call, save);
  };
}

async function streamSnapshotFile(call: ServerWritableStream<SnapshotSaveRequest, SnapshotSaveResponse>, save: SaveSnapshot): Promise<void> {
  let cancelled = false;
  call.once('cancelled', () => {
    cancelled = true;
  });
  let snapshot: Awaited<ReturnType<SaveSnapshot>> | undefined;
  try {
    snapshot = await save();
    for await (const data of messages(encodeSnapshotFile(snapshot.meta, snapshot.chunks))) {
      if (cancelled) return;
      if (!call.write({ data })) await drained(call);
    }
    if (!cancelled) call.end();
  } catch (err) {
    if (!cancelled) call.emit('error', toGrpcError(err));
  } finally {
    snapshot?.release();
  }
}

/** Regroups the file's pieces into messages of at most SNAPSHOT_SAVE_MESSAGE_BYTES. */
async function* messages(pieces: AsyncIterable<Uint8Array>): AsyncIterable<Buffer> {
  let pending: Buffer[] = [];
  let bytes = 0;
  for await (const piece of pieces) {
    let rest = Buffer.from(piece.buffer, piece.byteOffset, piece.byteLength);
    while (rest.length > 0) {
      const take = rest.subarray(0, SNAPSHOT_SAVE_MESSAGE_BYTES - bytes);
      pending.push(take);
      bytes += take.length;
      rest = rest.subarray(take.length);
      if (bytes === SNAPSHOT_SAVE_MESSAGE_BYTES) {
        yield Buffer.concat(pending);
        pending = [];
        bytes = 0;
      }
    }
  }
  if (bytes > 0) yield Buffer.concat(pending);
}

/** Resolves when the stream can take more, or is cancelled (the caller then stops). */
function drained(call: ServerWritableStream<SnapshotSaveRequest, SnapshotSaveResponse>): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      call.off('drain', done);
      call.off('cancelled', done);
      call.off('close', done);
      resolve();
    };
    call.on('drain', done);
    call.on('cancelled', done);
    call.on('close', done);
  });
}
