/**
 * One protobuf writer for the encodes on the event loop.
 *
 * ts-proto's `X.encode(message).finish()` starts a new BinaryWriter each time. Its buffer
 * starts at 128 bytes and doubles, and each step is a new zeroed ArrayBuffer allocated off
 * the V8 heap: an AppendRequest of 17 entries is regrown seven times, and a put is encoded
 * about six times on the leader (command, log entry, its AppendRequests, state record,
 * history event, response). The shared writer keeps its buffer between encodes, so an encode
 * costs one exact-size copy. docs/benchmarks.md records what it bought.
 */
import { BinaryWriter } from '@bufbuild/protobuf/wire';

/**
 * After an encode this large the writer is replaced, so that one big message (a snapshot
 * chunk, a full AppendRequest) does not keep its buffer (up to twice its size) for ever.
 */
export const MAX_RETAINED_WRITER_BYTES = 1024 * 1024;

/** A ts-proto message codec (its encode; the writer defaults to a new one). */
export interface MessageEncoder<T> {
  encode(message: T, writer?: BinaryWriter): BinaryWriter;
}

let shared = new BinaryWriter();
let inUse = false;

/** `codec.encode(message).finish()`, through the shared writer. */
export function encodeMessage<T>(codec: MessageEncoder<T>, message: T): Uint8Array {
  // Encodes never nest (ts-proto passes the writer down to nested messages), but a fresh
  // writer keeps a nested call correct should one ever appear.
  if (inUse) return codec.encode(message).finish();
  inUse = true;
  const writer = shared;
  try {
    const bytes = codec.encode(message, writer).finish();
    if (bytes.length > MAX_RETAINED_WRITER_BYTES) shared = new BinaryWriter();
    return bytes;
  } catch (err) {
    // A value the writer refused (out of range) left it mid-message: start over with a new one.
    shared = new BinaryWriter();
    throw err;
  } finally {
    inUse = false;
  }
}

/** encodeMessage as a Buffer over the same bytes (no second copy), for gRPC serializers. */
export function encodeMessageToBuffer<T>(codec: MessageEncoder<T>, message: T): Buffer {
  const bytes = encodeMessage(codec, message);
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
