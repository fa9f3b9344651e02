import { KeyRecord } from '../../gen/cairn/storage/v1/storage';
import { assert } from '../assert';

/**
 * The default bound of the state machine's record cache (--state-cache-bytes): 64 MiB of
 * keys and values, e.g. every record of 200,000 keys with 256-byte values.
 */
export const DEFAULT_STATE_CACHE_BYTES = 64 << 20;
/** What one cached record costs beyond its key and value bytes: map slot, object, three numbers. */
export const CACHED_RECORD_OVERHEAD_BYTES = 96;

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
    this.records.set(hexKey, { record, bytes });
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
