import { KeyRecord } from '../../gen/cairn/storage/v1/storage';
import { CACHED_RECORD_OVERHEAD_BYTES, RecordCache } from '../../src/kv/record-cache';

const record = (value: string, version = 1): KeyRecord => ({ value: Buffer.from(value), createRevision: 1, modRevision: version, version });
const hex = (key: string) => Buffer.from(key).toString('hex');

describe('RecordCache', () => {
  test('holds at most maxBytes (key, value and overhead), evicting the least recently used first', () => {
    const each = 1 + 10 + CACHED_RECORD_OVERHEAD_BYTES; // key "a", 10-byte value
    const cache = new RecordCache(3 * each);
    for (const key of ['a', 'b', 'c']) cache.set(hex(key), record('0123456789'));
    expect(cache.heldBytes()).toBe(3 * each);
    expect(cache.get(hex('a'))?.value.toString()).toBe('0123456789'); // a is now the most recent
    cache.set(hex('d'), record('0123456789'));
    expect(cache.get(hex('b'))).toBeUndefined(); // b was the least recently used
    expect(cache.get(hex('a'))).toBeDefined();
    expect(cache.heldBytes()).toBeLessThanOrEqual(3 * each);
    cache.set(hex('e'), record('x'.repeat(10 * each))); // larger than the whole cache: not kept
    expect(cache.get(hex('e'))).toBeUndefined();
    expect(cache.heldBytes()).toBeLessThanOrEqual(3 * each);
  });

  test('null caches a known-absent key; a replaced record updates the byte count', () => {
    const cache = new RecordCache(10_000);
    cache.set(hex('k'), null);
    expect(cache.get(hex('k'))).toBeNull();
    cache.set(hex('k'), record('v'.repeat(100)));
    const held = cache.heldBytes();
    cache.set(hex('k'), record('v'));
    expect(cache.heldBytes()).toBe(held - 99);
  });

  test('a read that began before an apply landed does not fill the cache with what it read', () => {
    const cache = new RecordCache(10_000);
    const readEpoch = cache.epoch; // a read starts
    cache.epoch++; // an apply lands meanwhile and writes k through
    cache.set(hex('k'), record('new', 2));
    cache.set(hex('k'), record('old', 1), readEpoch); // the read comes back with the old record
    expect(cache.get(hex('k'))?.value.toString()).toBe('new');
    cache.set(hex('j'), record('old'), readEpoch); // nor a key the apply did not touch
    expect(cache.get(hex('j'))).toBeUndefined();
  });

  test('clear forgets everything and turns away reads in progress; a zero bound caches nothing', () => {
    const cache = new RecordCache(10_000);
    cache.set(hex('k'), record('v'));
    const readEpoch = cache.epoch;
    cache.clear();
    expect(cache.get(hex('k'))).toBeUndefined();
    cache.set(hex('k'), record('v'), readEpoch);
    expect(cache.get(hex('k'))).toBeUndefined();
    const none = new RecordCache(0);
    none.set(hex('k'), record('v'));
    expect(none.get(hex('k'))).toBeUndefined();
    expect(() => new RecordCache(-1)).toThrow();
  });

  test('a value that is a slice of a larger buffer is cached in a buffer of its own (the slice would keep the whole buffer alive, uncounted)', () => {
    const cache = new RecordCache(10_000);
    const frame = Buffer.alloc(8192, 0x61);
    const slice = frame.subarray(100, 110);
    cache.set(hex('k'), { ...record(''), value: slice });
    const cached = cache.get(hex('k'))!;
    expect(cached.value.buffer.byteLength).toBe(10);
    expect(Buffer.from(cached.value).equals(slice)).toBe(true);
    expect(Buffer.isBuffer(cached.value)).toBe(true);
    const own = record('x');
    own.value = Buffer.from(new Uint8Array([1, 2, 3]).buffer);
    cache.set(hex('j'), own);
    expect(cache.get(hex('j'))).toBe(own); // already its own: no copy
  });
});
