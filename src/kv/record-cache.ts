import { KeyRecord } from '../../gen/cairn/storage/v1/storage';
import { assert } from '../assert';

/**
 * The default bound of the state machine's record cache (--state-cache-bytes): 128 MiB,
 * counted as below, e.g. every record of 170,000 keys of 16 bytes with 256-byte values.
 */
export const DEFAULT_STATE_CACHE_BYTES = 128 << 20;
/**
 * What one cached record costs beyond its key and value bytes, measured on Node 26 (455
 * bytes, with a 16-byte key and a 256-byte value): the map slot and hex key string, the
 * record object, the value's Buffer object and its own backing store.
 */
export const CACHED_RECORD_OVERHEAD_BYTES = 480;

/**
 * Recently read and written key records of the kv state machine, by hex key, least
 * recently used first, at most `maxBytes` of them (key, value and
 * CACHED_RECORD_OVERHEAD_BYTES each). `null` records a key known to be absent.
 *
 * It is written through by every apply, after the apply's batch is in LevelDB, so a hit
 * is always the applied state. A read that missed may fill it only if no apply landed
 * while it read (`epoch` says), or it could put back a record an apply just replaced.
 */
export class RecordCache {
  private readonly records = new Map<string, { record: KeyRecord | null; bytes: number }>();
  private bytes = 0;
  /** Moves on whenever the cached state may have changed under a read in progress. */
  epoch = 0;

  constructor(readonly maxBytes: number) {
    assert(Number.isSafeInteger(maxBytes) && maxBytes >= 0, () => `cache bytes ${maxBytes} is not a non-negative integer`);
  }

  /** The record (null: absent), or undefined when not cached. */
  get(hexKey: string): KeyRecord | null | undefined {
    const hit = this.records.get(hexKey);
    if (!hit) return undefined;
    this.records.delete(hexKey); // most recently used goes last
    this.records.set(hexKey, hit);
    return hit.record;
  }

  /** Stores what an apply wrote, or what a read found (if `readEpoch` is still current). */
  set(hexKey: string, record: KeyRecord | null, readEpoch = this.epoch): void {
    if (readEpoch !== this.epoch || this.maxBytes === 0) return;
    const bytes = hexKey.length / 2 + (record?.value.length ?? 0) + CACHED_RECORD_OVERHEAD_BYTES;
    this.remove(hexKey);
    if (bytes > this.maxBytes) return;
    this.records.set(hexKey, { record: withOwnValue(record), bytes });
    this.bytes += bytes;
    for (const [oldest, entry] of this.records) {
      if (this.bytes <= this.maxBytes) break;
      this.records.delete(oldest);
      this.bytes -= entry.bytes;
    }
    assert(this.bytes <= this.maxBytes && this.bytes >= 0, () => `record cache holds ${this.bytes} bytes, bound ${this.maxBytes}`);
  }

  /** Forgets everything (the whole state changed: a snapshot restore). */
  clear(): void {
    this.records.clear();
    this.bytes = 0;
    this.epoch++;
  }

  /** The bytes held now, for tests and metrics. */
  heldBytes(): number {
    return this.bytes;
  }

  private remove(hexKey: string): void {
    const old = this.records.get(hexKey);
    if (!old) return;
    this.records.delete(hexKey);
    this.bytes -= old.bytes;
  }
}

/**
 * The record with a value in a buffer of its own. A decoded value is a slice of Node's
 * shared 8 KiB allocation pool (or of a received frame), and a cached slice would keep the
 * whole of it alive, uncounted: a leader's 64 MiB cache was seen holding 90 MB of buffers.
 */
function withOwnValue(record: KeyRecord | null): KeyRecord | null {
  if (!record || record.value.byteLength === record.value.buffer.byteLength) return record;
  const value = Buffer.allocUnsafeSlow(record.value.byteLength);
  value.set(record.value);
  return { ...record, value };
}
