import { Command, CommandResult, KeyValue } from '../../gen/cairn/kv/v1/kv';
import { Entry, EntryType } from '../../gen/cairn/raft/v1/raft';
import { InvariantViolation } from '../../src/assert';
import { AppliedState, KeyRecord, SessionRecord, SnapshotBatch, SnapshotRecord } from '../../gen/cairn/storage/v1/storage';
import { CairnError } from '../../src/errors';
import { DEFAULT_SESSION_LIMITS, SessionLimits } from '../../src/kv/sessions';
import { ApplyOutcome, KvStateMachine, RANGE_ENTRY_OVERHEAD_BYTES } from '../../src/kv/state-machine';
import { CACHED_RECORD_OVERHEAD_BYTES, DEFAULT_STATE_CACHE_BYTES } from '../../src/kv/record-cache';
import { FsmSnapshot } from '../../src/node/fsm';
import { Db, GENERATIONAL_SUBLEVELS, LevelDb } from '../../src/storage/db';
import { SimDisk } from '../sim/sim-disk';
import { BACKENDS } from '../support/db-backends';

// ---------------------------------------------------------------------------
// Builders
// ---------------------------------------------------------------------------

type Key = string | Buffer;

function bytes(key: Key): Buffer {
  return typeof key === 'string' ? Buffer.from(key) : key;
}

interface WriteOptions {
  prevKv?: boolean;
  clientId?: string;
  sequence?: number;
  /** 0 (the default) = the write's own sequence. */
  lowest?: number;
  /** The leader's stamp (log time). */
  at?: number;
}

function put(key: Key, value: Key, options: WriteOptions = {}): Command {
  return {
    op: {
      $case: 'put',
      value: {
        key: bytes(key),
        value: bytes(value),
        prevKv: options.prevKv ?? false,
        clientId: options.clientId ?? '',
        sequence: options.sequence ?? 0,
        lowestUnansweredSequence: options.lowest ?? 0,
      },
    },
    proposedAtUnixMs: options.at ?? 0,
  };
}

function del(key: Key, options: WriteOptions = {}): Command {
  return {
    op: {
      $case: 'delete',
      value: {
        key: bytes(key),
        prevKv: options.prevKv ?? false,
        clientId: options.clientId ?? '',
        sequence: options.sequence ?? 0,
        lowestUnansweredSequence: options.lowest ?? 0,
      },
    },
    proposedAtUnixMs: options.at ?? 0,
  };
}

function commandEntry(index: number, command: Command, term = 1): Entry {
  return { index, term, type: EntryType.ENTRY_TYPE_COMMAND, data: Buffer.from(Command.encode(command).finish()) };
}

function noopEntry(index: number, term = 1): Entry {
  return { index, term, type: EntryType.ENTRY_TYPE_NOOP, data: Buffer.alloc(0) };
}

function rawEntry(index: number, data: number[], term = 1): Entry {
  return { index, term, type: EntryType.ENTRY_TYPE_COMMAND, data: Buffer.from(data) };
}

/** Byte strings that Command.decode rejects (invalid wire type, truncated length-delimited fields). */
const GARBAGE: number[][] = [[0x0f], [0x0a, 0x05, 0x01], [0xff, 0xff, 0xff, 0xff], [0x0a, 0x02, 0x0a]];

type Item = Command | 'noop';

/** Builds entries for the items at consecutive indexes starting after the machine's applied index. */
function entriesFor(sm: KvStateMachine, items: readonly Item[], term = 1): Entry[] {
  let index = sm.appliedIndex();
  return items.map((item) => {
    index++;
    return item === 'noop' ? noopEntry(index, term) : commandEntry(index, item, term);
  });
}

/** Applies the items in one apply() call and returns the command results (undefined for no-ops). */
async function applyAll(sm: KvStateMachine, ...items: Item[]): Promise<(CommandResult | undefined)[]> {
  const entries = entriesFor(sm, items);
  const outcomes = await sm.apply(entries);
  expect(outcomes.map((o) => o.index)).toEqual(entries.map((e) => e.index));
  return outcomes.map((o) => o.result);
}

/** Applies one command in its own apply() call and returns its result. */
async function applyOne(sm: KvStateMachine, command: Command): Promise<CommandResult> {
  const [result] = await applyAll(sm, command);
  expect(result).toBeDefined();
  return result!;
}

function putOp(result: CommandResult | undefined) {
  expect(result?.op?.$case).toBe('put');
  if (result?.op?.$case !== 'put') throw new Error('not a put result');
  return result.op.value;
}

function deleteOp(result: CommandResult | undefined) {
  expect(result?.op?.$case).toBe('delete');
  if (result?.op?.$case !== 'delete') throw new Error('not a delete result');
  return result.op.value;
}

function kv(key: Key, value: Key, createRevision: number, modRevision: number, version: number): KeyValue {
  return { key: bytes(key), value: bytes(value), createRevision, modRevision, version };
}

/** A comparable snapshot of everything a client can observe. */
async function observe(sm: KvStateMachine) {
  const { kvs, more } = await sm.range({ start: Buffer.alloc(0), limit: 1_000_000, keysOnly: false });
  return {
    appliedIndex: sm.appliedIndex(),
    revision: sm.revision(),
    more,
    kvs: kvs.map((k) => ({ ...k, key: k.key.toString('hex'), value: k.value.toString('hex') })),
  };
}

async function sessionIds(db: Db): Promise<string[]> {
  const ids: string[] = [];
  for await (const [key] of db.entries('sessions')) ids.push(key.toString());
  return ids;
}

async function sessionDump(db: Db): Promise<Record<string, unknown>> {
  const dump: Record<string, unknown> = {};
  for await (const [key, value] of db.entries('sessions')) dump[key.toString()] = SessionRecord.toJSON(SessionRecord.decode(value));
  return dump;
}

function hexKeys(kvs: KeyValue[]): string[] {
  return kvs.map((k) => k.key.toString('hex'));
}

// ---------------------------------------------------------------------------
// The contract
// ---------------------------------------------------------------------------

/**
 * Every backend with the record cache at its default size, off, and so small (a few
 * records) that nearly every read and apply misses and evicts: the results must not differ.
 */
const VARIANTS = BACKENDS.flatMap((backend) =>
  [DEFAULT_STATE_CACHE_BYTES, 0, 4 * CACHED_RECORD_OVERHEAD_BYTES].map((cacheBytes) => ({ ...backend, cacheBytes, name: `${backend.name}, state cache of ${cacheBytes} bytes` })),
);

describe.each(VARIANTS)('KvStateMachine contract on $name', (backend) => {
  let handle: Awaited<ReturnType<typeof backend.open>>;
  let sm: KvStateMachine;

  beforeEach(async () => {
    handle = await backend.open();
    sm = await KvStateMachine.open(handle.db, undefined, backend.cacheBytes);
  });
  afterEach(() => handle.cleanup());

  async function reopen(): Promise<KvStateMachine> {
    const db: Db = await handle.reopen();
    return KvStateMachine.open(db, undefined, backend.cacheBytes);
  }

  describe('an empty store', () => {
    test('starts at applied index 0 and revision 0 with no keys', async () => {
      expect(sm.appliedIndex()).toBe(0);
      expect(sm.revision()).toBe(0);
      expect(await sm.get(Buffer.from('a'))).toBeUndefined();
      expect(await sm.range({ start: Buffer.alloc(0), limit: 10, keysOnly: false })).toEqual({ kvs: [], more: false, revision: 0 });
    });

    test('reopens empty', async () => {
      const fresh = await reopen();
      expect(fresh.appliedIndex()).toBe(0);
      expect(fresh.revision()).toBe(0);
    });
  });

  describe('put and get', () => {
    test('put then get returns the value with createRevision, modRevision and version of the write', async () => {
      const result = await applyOne(sm, put('a', 'one'));
      expect(result.revision).toBe(1);
      expect(putOp(result).prevKv).toBeUndefined();
      expect(await sm.get(Buffer.from('a'))).toEqual(kv('a', 'one', 1, 1, 1));
      expect(await sm.get(Buffer.from('b'))).toBeUndefined();
    });

    test('version grows by one per put, createRevision stays, modRevision is the revision of the last write', async () => {
      expect((await applyOne(sm, put('a', 'a1'))).revision).toBe(1);
      expect((await applyOne(sm, put('b', 'b1'))).revision).toBe(2);
      expect((await applyOne(sm, put('a', 'a2'))).revision).toBe(3);
      expect((await applyOne(sm, put('a', 'a3'))).revision).toBe(4);
      expect(await sm.get(Buffer.from('a'))).toEqual(kv('a', 'a3', 1, 4, 3));
      expect(await sm.get(Buffer.from('b'))).toEqual(kv('b', 'b1', 2, 2, 1));
      expect(sm.revision()).toBe(4);
    });

    test('putting the same value again is still a write', async () => {
      await applyOne(sm, put('a', 'same'));
      const result = await applyOne(sm, put('a', 'same'));
      expect(result.revision).toBe(2);
      expect(await sm.get(Buffer.from('a'))).toEqual(kv('a', 'same', 1, 2, 2));
    });

    test('an empty value is stored as an empty value, not as a missing key', async () => {
      await applyOne(sm, put('a', Buffer.alloc(0)));
      expect(await sm.get(Buffer.from('a'))).toEqual(kv('a', Buffer.alloc(0), 1, 1, 1));
    });

    test('put with prevKv returns the previous KeyValue with its bookkeeping', async () => {
      await applyOne(sm, put('a', 'old'));
      await applyOne(sm, put('a', 'older-than-new'));
      const result = await applyOne(sm, put('a', 'new', { prevKv: true }));
      expect(result.revision).toBe(3);
      expect(putOp(result).prevKv).toEqual(kv('a', 'older-than-new', 1, 2, 2));
      expect(await sm.get(Buffer.from('a'))).toEqual(kv('a', 'new', 1, 3, 3));
    });

    test('put with prevKv on a missing key returns no prevKv', async () => {
      const result = await applyOne(sm, put('a', 'v', { prevKv: true }));
      expect(putOp(result).prevKv).toBeUndefined();
    });

    test('put without prevKv does not return the previous value', async () => {
      await applyOne(sm, put('a', 'old'));
      const result = await applyOne(sm, put('a', 'new'));
      expect(putOp(result).prevKv).toBeUndefined();
    });
  });

  describe('delete', () => {
    test('delete of an existing key returns deleted true, bumps the revision and removes the key', async () => {
      await applyOne(sm, put('a', 'v'));
      const result = await applyOne(sm, del('a'));
      expect(result.revision).toBe(2);
      expect(deleteOp(result).deleted).toBe(true);
      expect(deleteOp(result).prevKv).toBeUndefined();
      expect(sm.revision()).toBe(2);
      expect(await sm.get(Buffer.from('a'))).toBeUndefined();
    });

    test('delete with prevKv returns the deleted KeyValue', async () => {
      await applyOne(sm, put('a', 'v1'));
      await applyOne(sm, put('a', 'v2'));
      const result = await applyOne(sm, del('a', { prevKv: true }));
      expect(deleteOp(result)).toEqual(expect.objectContaining({ deleted: true, prevKv: kv('a', 'v2', 1, 2, 2) }));
    });

    test('delete of a missing key returns deleted false, no prevKv, and does not move the revision', async () => {
      await applyOne(sm, put('a', 'v'));
      const result = await applyOne(sm, del('b', { prevKv: true }));
      expect(deleteOp(result).deleted).toBe(false);
      expect(deleteOp(result).prevKv).toBeUndefined();
      expect(result.revision).toBe(1);
      expect(sm.revision()).toBe(1);
      expect(sm.appliedIndex()).toBe(2);
      expect(await sm.get(Buffer.from('a'))).toEqual(kv('a', 'v', 1, 1, 1));
    });

    test('deleting the same key twice deletes once', async () => {
      await applyOne(sm, put('a', 'v'));
      expect(deleteOp(await applyOne(sm, del('a'))).deleted).toBe(true);
      const second = await applyOne(sm, del('a'));
      expect(deleteOp(second).deleted).toBe(false);
      expect(second.revision).toBe(2);
      expect(sm.revision()).toBe(2);
    });

    test('delete then re-put: createRevision is new and version restarts at 1', async () => {
      await applyOne(sm, put('a', 'v1'));
      await applyOne(sm, put('a', 'v2'));
      await applyOne(sm, del('a'));
      const result = await applyOne(sm, put('a', 'v3', { prevKv: true }));
      expect(result.revision).toBe(4);
      expect(putOp(result).prevKv).toBeUndefined();
      expect(await sm.get(Buffer.from('a'))).toEqual(kv('a', 'v3', 4, 4, 1));
    });
  });

  describe('revision and applied index', () => {
    test('NOOP entries advance the applied index but not the revision', async () => {
      const results = await applyAll(sm, 'noop', put('a', 'v'), 'noop', 'noop');
      expect(results[0]).toBeUndefined();
      expect(results[1]?.revision).toBe(1);
      expect(results[2]).toBeUndefined();
      expect(results[3]).toBeUndefined();
      expect(sm.appliedIndex()).toBe(4);
      expect(sm.revision()).toBe(1);
      expect(await sm.get(Buffer.from('a'))).toEqual(kv('a', 'v', 1, 1, 1));
    });

    test('the revision counts exactly the puts and the deletes that deleted something', async () => {
      const results = await applyAll(
        sm,
        put('a', '1'), // 1
        del('zz'), // missing: stays 1
        'noop',
        put('b', '1'), // 2
        del('a'), // 3
        del('a'), // missing: stays 3
        put('a', '2'), // 4
      );
      expect(results.map((r) => r?.revision)).toEqual([1, 1, undefined, 2, 3, 3, 4]);
      expect(sm.revision()).toBe(4);
      expect(sm.appliedIndex()).toBe(7);
    });

    test('outcomes carry each entry index and term', async () => {
      const entries = [noopEntry(1, 3), commandEntry(2, put('a', 'v'), 3), commandEntry(3, put('b', 'v'), 4)];
      const outcomes: ApplyOutcome[] = await sm.apply(entries);
      expect(outcomes.map((o) => [o.index, o.term])).toEqual([
        [1, 3],
        [2, 3],
        [3, 4],
      ]);
    });

    test('several entries in one apply() that touch the same key see each other in order', async () => {
      const results = await applyAll(
        sm,
        put('a', '1'),
        put('a', '2', { prevKv: true }),
        del('a', { prevKv: true }),
        put('a', '3', { prevKv: true }),
      );
      expect(results.map((r) => r?.revision)).toEqual([1, 2, 3, 4]);
      expect(putOp(results[1]).prevKv).toEqual(kv('a', '1', 1, 1, 1));
      expect(deleteOp(results[2])).toEqual(expect.objectContaining({ deleted: true, prevKv: kv('a', '2', 1, 2, 2) }));
      expect(putOp(results[3]).prevKv).toBeUndefined();
      expect(await sm.get(Buffer.from('a'))).toEqual(kv('a', '3', 4, 4, 1));
      expect(sm.revision()).toBe(4);
      expect(sm.appliedIndex()).toBe(4);
      const fresh = await reopen();
      expect(await fresh.get(Buffer.from('a'))).toEqual(kv('a', '3', 4, 4, 1));
    });

    test('a key put then deleted within one apply() is gone, also after reopen', async () => {
      await applyAll(sm, put('a', '1'), put('b', '1'), del('a'));
      expect(await sm.get(Buffer.from('a'))).toBeUndefined();
      expect(sm.revision()).toBe(3);
      const fresh = await reopen();
      expect(await fresh.get(Buffer.from('a'))).toBeUndefined();
      expect(await fresh.get(Buffer.from('b'))).toEqual(kv('b', '1', 2, 2, 1));
      expect(fresh.revision()).toBe(3);
    });

    test('applied index, revision and data are the same after reopen', async () => {
      await applyAll(sm, put('a', 'a1'), put('b', 'b1'), 'noop');
      await applyAll(sm, put('a', 'a2'), del('b'), put('c', 'c1'), del('missing'));
      await applyAll(sm, 'noop');
      const before = await observe(sm);
      expect(before.appliedIndex).toBe(8);
      expect(before.revision).toBe(5);

      const fresh = await reopen();
      expect(await observe(fresh)).toEqual(before);
      expect(await fresh.get(Buffer.from('a'))).toEqual(kv('a', 'a2', 1, 3, 2));
      expect(await fresh.get(Buffer.from('b'))).toBeUndefined();
      expect(await fresh.get(Buffer.from('c'))).toEqual(kv('c', 'c1', 5, 5, 1));

      // And the reopened machine carries on where the old one stopped.
      const result = await applyOne(fresh, put('a', 'a3'));
      expect(result.revision).toBe(6);
      expect(fresh.appliedIndex()).toBe(9);
      expect(await fresh.get(Buffer.from('a'))).toEqual(kv('a', 'a3', 1, 6, 3));
    });

    test('an apply of only NOOPs persists the applied index', async () => {
      await applyAll(sm, put('a', 'v'));
      await applyAll(sm, 'noop', 'noop');
      const fresh = await reopen();
      expect(fresh.appliedIndex()).toBe(3);
      expect(fresh.revision()).toBe(1);
    });
  });

  describe('index invariants', () => {
    test('applying index 2 on an empty machine throws an invariant violation', async () => {
      await expect(sm.apply([commandEntry(2, put('a', 'v'))])).rejects.toThrow(InvariantViolation);
      expect(sm.appliedIndex()).toBe(0);
      expect(sm.revision()).toBe(0);
      expect(await sm.get(Buffer.from('a'))).toBeUndefined();
    });

    test('re-applying the last applied index throws', async () => {
      await applyAll(sm, put('a', 'v'), put('b', 'v'));
      await expect(sm.apply([commandEntry(2, put('b', 'again'))])).rejects.toThrow(InvariantViolation);
      await expect(sm.apply([commandEntry(1, put('a', 'again'))])).rejects.toThrow(InvariantViolation);
      expect(sm.appliedIndex()).toBe(2);
      expect(sm.revision()).toBe(2);
      expect(await sm.get(Buffer.from('b'))).toEqual(kv('b', 'v', 2, 2, 1));
    });

    test('skipping an index after earlier applies throws', async () => {
      await applyAll(sm, put('a', 'v'));
      await expect(sm.apply([commandEntry(3, put('a', 'skip'))])).rejects.toThrow(InvariantViolation);
      expect(sm.appliedIndex()).toBe(1);
    });

    test('a gap inside one batch throws and writes nothing of the batch', async () => {
      await applyAll(sm, put('a', 'v'));
      const batch = [commandEntry(2, put('a', 'in-batch')), commandEntry(3, put('b', 'in-batch')), commandEntry(5, put('c', 'x'))];
      await expect(sm.apply(batch)).rejects.toThrow(InvariantViolation);
      expect(sm.appliedIndex()).toBe(1);
      expect(sm.revision()).toBe(1);
      expect(await sm.get(Buffer.from('a'))).toEqual(kv('a', 'v', 1, 1, 1));
      expect(await sm.get(Buffer.from('b'))).toBeUndefined();
      const fresh = await reopen();
      expect(fresh.appliedIndex()).toBe(1);
      expect(await fresh.get(Buffer.from('b'))).toBeUndefined();
      // The machine is still usable at the right index.
      expect((await applyOne(fresh, put('b', 'ok'))).revision).toBe(2);
      expect(fresh.appliedIndex()).toBe(2);
    });

    test('a repeated index inside one batch throws', async () => {
      await expect(sm.apply([commandEntry(1, put('a', 'v')), commandEntry(1, put('a', 'v'))])).rejects.toThrow(
        InvariantViolation,
      );
      expect(sm.appliedIndex()).toBe(0);
      expect(await sm.get(Buffer.from('a'))).toBeUndefined();
    });
  });

  describe('range', () => {
    // Inserted out of order on purpose; byte order is 00, 42('B'), 61('a'), 6100, 6162('ab'), 62('b'), 63('c'), 64('d'), ff.
    const KEYS: Buffer[] = [
      Buffer.from('c'),
      Buffer.from([0xff]),
      Buffer.from('ab'),
      Buffer.from('a'),
      Buffer.from([0x00]),
      Buffer.from('d'),
      Buffer.from('b'),
      Buffer.from('B'),
      Buffer.from([0x61, 0x00]),
    ];
    const SORTED_HEX = ['00', '42', '61', '6100', '6162', '62', '63', '64', 'ff'];

    beforeEach(async () => {
      await applyAll(sm, ...KEYS.map((k) => put(k, Buffer.concat([Buffer.from('v:'), k]))));
    });

    test('returns every key in byte order when unbounded', async () => {
      const { kvs, more } = await sm.range({ start: Buffer.alloc(0), limit: 100, keysOnly: false });
      expect(hexKeys(kvs)).toEqual(SORTED_HEX);
      expect(more).toBe(false);
      for (const item of kvs) expect(item.value).toEqual(Buffer.concat([Buffer.from('v:'), item.key]));
    });

    test('returns full bookkeeping for each key', async () => {
      const { kvs } = await sm.range({ start: Buffer.from('c'), end: Buffer.from('d'), limit: 10, keysOnly: false });
      // 'c' was the first put of the batch: revision 1.
      expect(kvs).toEqual([kv('c', 'v:c', 1, 1, 1)]);
    });

    test('[start, end) includes start and excludes end', async () => {
      const { kvs, more } = await sm.range({ start: Buffer.from('a'), end: Buffer.from('c'), limit: 100, keysOnly: false });
      expect(hexKeys(kvs)).toEqual(['61', '6100', '6162', '62']);
      expect(more).toBe(false);
    });

    test('a start that is not a key begins at the next key', async () => {
      const { kvs } = await sm.range({ start: Buffer.from('bb'), end: Buffer.from('z'), limit: 100, keysOnly: false });
      expect(hexKeys(kvs)).toEqual(['63', '64']);
    });

    test('end undefined reads to the end of the key space', async () => {
      const { kvs, more } = await sm.range({ start: Buffer.from('c'), limit: 100, keysOnly: false });
      expect(hexKeys(kvs)).toEqual(['63', '64', 'ff']);
      expect(more).toBe(false);
    });

    test('an empty interval returns nothing', async () => {
      expect(await sm.range({ start: Buffer.from('c'), end: Buffer.from('c'), limit: 100, keysOnly: false })).toEqual({
        kvs: [],
        more: false,
        revision: sm.revision(),
      });
      expect(await sm.range({ start: Buffer.from('x'), end: Buffer.from('y'), limit: 100, keysOnly: false })).toEqual({
        kvs: [],
        more: false,
        revision: sm.revision(),
      });
    });

    test('limit exactly the number of keys in range: more is false', async () => {
      const { kvs, more } = await sm.range({ start: Buffer.from('b'), end: Buffer.from('e'), limit: 3, keysOnly: false });
      expect(hexKeys(kvs)).toEqual(['62', '63', '64']);
      expect(more).toBe(false);
    });

    test('limit one less than the keys in range: more is true', async () => {
      const { kvs, more } = await sm.range({ start: Buffer.from('b'), end: Buffer.from('e'), limit: 2, keysOnly: false });
      expect(hexKeys(kvs)).toEqual(['62', '63']);
      expect(more).toBe(true);
    });

    test('keys beyond end do not make more true', async () => {
      // 'b', 'c' are in [b, d); 'd' and 0xff exist but are outside the range.
      const { kvs, more } = await sm.range({ start: Buffer.from('b'), end: Buffer.from('d'), limit: 2, keysOnly: false });
      expect(hexKeys(kvs)).toEqual(['62', '63']);
      expect(more).toBe(false);
    });

    test('limit at the boundary with end undefined', async () => {
      const exact = await sm.range({ start: Buffer.from('c'), limit: 3, keysOnly: false });
      expect(hexKeys(exact.kvs)).toEqual(['63', '64', 'ff']);
      expect(exact.more).toBe(false);
      const short = await sm.range({ start: Buffer.from('c'), limit: 2, keysOnly: false });
      expect(hexKeys(short.kvs)).toEqual(['63', '64']);
      expect(short.more).toBe(true);
      const one = await sm.range({ start: Buffer.alloc(0), limit: 1, keysOnly: false });
      expect(hexKeys(one.kvs)).toEqual(['00']);
      expect(one.more).toBe(true);
    });

    test('keysOnly returns empty values but the keys and bookkeeping', async () => {
      await applyOne(sm, put('b', 'again'));
      const { kvs } = await sm.range({ start: Buffer.from('b'), end: Buffer.from('c'), limit: 10, keysOnly: true });
      expect(kvs).toEqual([kv('b', Buffer.alloc(0), 7, 10, 2)]);
      const all = await sm.range({ start: Buffer.alloc(0), limit: 100, keysOnly: true });
      expect(hexKeys(all.kvs)).toEqual(SORTED_HEX);
      for (const item of all.kvs) expect(item.value.length).toBe(0);
      // keysOnly does not change what is stored.
      expect((await sm.get(Buffer.from('b')))?.value).toEqual(Buffer.from('again'));
    });

    test('deleted keys disappear from ranges', async () => {
      await applyAll(sm, del('b'), del(Buffer.from([0x00])));
      const { kvs } = await sm.range({ start: Buffer.alloc(0), limit: 100, keysOnly: false });
      expect(hexKeys(kvs)).toEqual(['42', '61', '6100', '6162', '63', '64', 'ff']);
    });

    test('ranges read the same after reopen', async () => {
      const fresh = await reopen();
      const { kvs } = await fresh.range({ start: Buffer.from('a'), end: Buffer.from('b'), limit: 100, keysOnly: false });
      expect(hexKeys(kvs)).toEqual(['61', '6100', '6162']);
    });
  });

  describe('exactly-once sessions', () => {
    const c = (sequence: number, extra: WriteOptions = {}) => ({ clientId: 'client-1', sequence, ...extra });

    test('the same (clientId, sequence) in separate applies applies once and returns the first result', async () => {
      const first = await applyOne(sm, put('a', 'v', c(1)));
      expect(first.revision).toBe(1);
      const second = await applyOne(sm, put('a', 'v', c(1)));
      expect(second).toEqual(first);
      expect(sm.revision()).toBe(1);
      expect(sm.appliedIndex()).toBe(2);
      expect(await sm.get(Buffer.from('a'))).toEqual(kv('a', 'v', 1, 1, 1));
    });

    test('the same (clientId, sequence) twice in one apply applies once', async () => {
      const [first, second] = await applyAll(sm, put('a', 'v', c(1, { prevKv: true })), put('a', 'v', c(1, { prevKv: true })));
      expect(first?.revision).toBe(1);
      expect(second).toEqual(first);
      expect(sm.revision()).toBe(1);
      expect(await sm.get(Buffer.from('a'))).toEqual(kv('a', 'v', 1, 1, 1));
    });

    test('two writes in flight under one client id both apply, in log order, and a retry of each gets its original result', async () => {
      await applyOne(sm, put('a', 'v0'));
      // Sequence 2 reaches the log before sequence 1: both are unanswered (lowest 1).
      const second = await applyOne(sm, put('b', 'w2', c(2, { lowest: 1, prevKv: true })));
      const first = await applyOne(sm, put('a', 'v1', c(1, { lowest: 1, prevKv: true })));
      expect(first.error).toBeUndefined();
      expect(putOp(first).prevKv).toEqual(kv('a', 'v0', 1, 1, 1));
      expect([first.revision, second.revision]).toEqual([3, 2]);
      expect(await sm.get(Buffer.from('a'))).toEqual(kv('a', 'v1', 1, 3, 2));
      expect(await sm.get(Buffer.from('b'))).toEqual(kv('b', 'w2', 2, 2, 1));
      await applyOne(sm, put('a', 'other-writer'));
      // Retries, in any order and with the lowest the client still reports, change nothing.
      expect(await applyOne(sm, put('a', 'v1', c(1, { lowest: 1, prevKv: true })))).toEqual(first);
      expect(await applyOne(sm, put('b', 'w2', c(2, { lowest: 1, prevKv: true })))).toEqual(second);
      // Sequence 1 answered: the client now reports lowest 2, and 2's result is still kept.
      expect(await applyOne(sm, put('b', 'w2', c(2, { lowest: 2, prevKv: true })))).toEqual(second);
      expect(sm.revision()).toBe(4);
      expect(await sm.get(Buffer.from('a'))).toEqual(kv('a', 'other-writer', 1, 4, 3));
    });

    test('several in flight in one apply batch each apply once', async () => {
      const results = await applyAll(
        sm,
        put('a', '3', c(3, { lowest: 1 })),
        put('a', '1', c(1, { lowest: 1 })),
        put('a', '3', c(3, { lowest: 1 })),
        del('a', c(2, { lowest: 1 })),
        put('a', '1', c(1, { lowest: 1 })),
      );
      expect(results.map((r) => r?.revision)).toEqual([1, 2, 1, 3, 2]);
      expect(results.every((r) => r?.error === undefined)).toBe(true);
      expect(deleteOp(results[3]).deleted).toBe(true);
      expect(await sm.get(Buffer.from('a'))).toBeUndefined();
    });

    test('a retried write gets its original answer even after other writes', async () => {
      await applyOne(sm, put('a', 'v0'));
      const first = await applyOne(sm, put('a', 'v1', c(1, { prevKv: true })));
      expect(putOp(first).prevKv).toEqual(kv('a', 'v0', 1, 1, 1));
      await applyOne(sm, put('a', 'other-writer'));
      await applyOne(sm, put('b', 'other-key'));
      const retry = await applyOne(sm, put('a', 'v1', c(1, { prevKv: true })));
      expect(retry).toEqual(first);
      expect(retry.revision).toBe(2);
      expect(sm.revision()).toBe(4);
      expect(await sm.get(Buffer.from('a'))).toEqual(kv('a', 'other-writer', 1, 3, 3));
    });

    test('a retried delete gets its original answer and deletes nothing more', async () => {
      await applyOne(sm, put('a', 'v'));
      const first = await applyOne(sm, del('a', c(1, { prevKv: true })));
      expect(deleteOp(first)).toEqual(expect.objectContaining({ deleted: true, prevKv: kv('a', 'v', 1, 1, 1) }));
      await applyOne(sm, put('a', 'recreated'));
      const retry = await applyOne(sm, del('a', c(1, { prevKv: true })));
      expect(retry).toEqual(first);
      expect(sm.revision()).toBe(3);
      expect(await sm.get(Buffer.from('a'))).toEqual(kv('a', 'recreated', 3, 3, 1));
    });

    test('a higher sequence applies normally', async () => {
      await applyOne(sm, put('a', 'v1', c(1)));
      const next = await applyOne(sm, put('a', 'v2', c(2)));
      expect(next.revision).toBe(2);
      expect(sm.revision()).toBe(2);
      expect(await sm.get(Buffer.from('a'))).toEqual(kv('a', 'v2', 1, 2, 2));
      // Sequences need not be dense.
      const jump = await applyOne(sm, put('a', 'v3', c(10)));
      expect(jump.revision).toBe(3);
      expect(await sm.get(Buffer.from('a'))).toEqual(kv('a', 'v3', 1, 3, 3));
    });

    test('a write whose result was discarded gets SESSION_EXPIRED and changes nothing, put or delete', async () => {
      await applyOne(sm, put('a', 'v1', c(1)));
      // lowest 0 = the write's own sequence: the client says 1 was answered.
      await applyOne(sm, put('a', 'v2', c(2)));
      const stalePut = await applyOne(sm, put('a', 'stale', c(1)));
      expect(stalePut.error?.code).toBe('SESSION_EXPIRED');
      expect(stalePut.error?.message).toContain('discarded');
      expect(stalePut.op).toBeUndefined();
      // Also a sequence never applied, once below what the client said it saw answered.
      await applyOne(sm, put('x', 'x', c(9, { lowest: 7 })));
      for (const stale of [put('b', 'stale', c(5)), del('a', c(6)), put('a', 'stale', c(2, { lowest: 1 }))]) {
        const result = await applyOne(sm, stale);
        expect(result.error?.code).toBe('SESSION_EXPIRED');
        expect(result.revision).toBe(3);
      }
      expect(sm.revision()).toBe(3);
      expect(await sm.get(Buffer.from('a'))).toEqual(kv('a', 'v2', 1, 2, 2));
      expect(await sm.get(Buffer.from('b'))).toBeUndefined();
      // The session still answers its kept sequence and goes on.
      expect((await applyOne(sm, put('x', 'x', c(9, { lowest: 7 })))).revision).toBe(3);
      expect((await applyOne(sm, put('a', 'v10', c(10)))).revision).toBe(4);
    });

    test('a discarded sequence in the same batch as the write that discards it gets SESSION_EXPIRED', async () => {
      const [, , stale] = await applyAll(sm, put('a', 'v1', c(1)), put('a', 'v2', c(2)), put('a', 'stale', c(1)));
      expect(stale?.error?.code).toBe('SESSION_EXPIRED');
      expect(await sm.get(Buffer.from('a'))).toEqual(kv('a', 'v2', 1, 2, 2));
    });

    test('an unknown client id starts a session only when it claims no earlier answers', async () => {
      const claims = await applyOne(sm, put('a', 'v', { clientId: 'new', sequence: 4, lowest: 2 }));
      expect(claims.error?.code).toBe('SESSION_EXPIRED');
      expect(claims.error?.message).toContain('has no session');
      const own = await applyOne(sm, put('a', 'v', { clientId: 'new', sequence: 4 }));
      expect(own.error?.code).toBe('SESSION_EXPIRED');
      expect(sm.revision()).toBe(0);
      const fresh = await applyOne(sm, put('a', 'v', { clientId: 'new', sequence: 4, lowest: 1 }));
      expect(fresh.error).toBeUndefined();
      expect(fresh.revision).toBe(1);
      expect(await applyOne(sm, put('a', 'v', { clientId: 'new', sequence: 4, lowest: 3 }))).toEqual(fresh);
    });

    test('a lowest_unanswered_sequence above the sequence counts as the sequence', async () => {
      await applyOne(sm, put('a', 'v1', c(1)));
      const first = await applyOne(sm, put('a', 'v3', c(3, { lowest: 2 })));
      await applyOne(sm, put('a', 'v2', c(2, { lowest: 99 })));
      expect(await applyOne(sm, put('a', 'v3', c(3, { lowest: 3 })))).toEqual(first);
      expect(sm.revision()).toBe(3);
    });

    test('sessions are per client', async () => {
      await applyOne(sm, put('a', 'x', { clientId: 'client-x', sequence: 1 }));
      const other = await applyOne(sm, put('a', 'y', { clientId: 'client-y', sequence: 1 }));
      expect(other.revision).toBe(2);
      expect(await sm.get(Buffer.from('a'))).toEqual(kv('a', 'y', 1, 2, 2));
    });

    test('sessions survive reopen', async () => {
      await applyOne(sm, put('a', 'other'));
      const first = await applyOne(sm, put('a', 'v', c(1, { prevKv: true })));
      const inFlight = await applyOne(sm, put('b', 'w', c(3, { lowest: 1 })));
      expect(first.revision).toBe(2);

      const fresh = await reopen();
      expect(fresh.appliedIndex()).toBe(3);
      const retry = await applyOne(fresh, put('a', 'v', c(1, { prevKv: true })));
      expect(retry).toEqual(first);
      expect(await applyOne(fresh, put('b', 'w', c(3, { lowest: 1 })))).toEqual(inFlight);
      expect(fresh.revision()).toBe(3);
      expect(fresh.appliedIndex()).toBe(5);
      expect(await fresh.get(Buffer.from('a'))).toEqual(kv('a', 'v', 1, 2, 2));

      // And the session goes on from there.
      const stale = await applyOne(fresh, put('a', 'stale', c(2, { lowest: 2 })));
      expect(stale.error).toBeUndefined();
      expect((await applyOne(fresh, put('a', 'late', c(1)))).error?.code).toBe('SESSION_EXPIRED');
      expect(await fresh.get(Buffer.from('a'))).toEqual(kv('a', 'stale', 1, 4, 3));
    });

    test('a session first seen in a batch that also re-applies it survives reopen', async () => {
      await applyAll(sm, put('a', 'v', c(1, { lowest: 1 })), put('a', 'v', c(1, { lowest: 1 })), put('b', 'w', c(2, { lowest: 1 })));
      expect(sm.revision()).toBe(2);
      const fresh = await reopen();
      await applyAll(fresh, put('a', 'v', c(1, { lowest: 1 })), put('b', 'w', c(2, { lowest: 1 })));
      expect(fresh.revision()).toBe(2);
      expect(await fresh.get(Buffer.from('a'))).toEqual(kv('a', 'v', 1, 1, 1));
      expect(await fresh.get(Buffer.from('b'))).toEqual(kv('b', 'w', 2, 2, 1));
    });

    test('a session record in the old one-result form is still honoured', async () => {
      const old = await applyOne(sm, put('a', 'v', { clientId: 'legacy', sequence: 1 }));
      const legacy = SessionRecord.encode({
        sequence: 5,
        result: Buffer.from(CommandResult.encode(old).finish()),
        lowestUnansweredSequence: 0,
        results: [],
        lastActiveIndex: 0,
        lastActiveUnixMs: 0,
        owner: '',
      }).finish();
      await handle.db.write([{ type: 'put', sublevel: 'sessions', key: Buffer.from('legacy'), value: legacy }], { sync: true });
      const fresh = await reopen();
      expect(await applyOne(fresh, put('a', 'v', { clientId: 'legacy', sequence: 5 }))).toEqual(old);
      expect((await applyOne(fresh, put('a', 'v', { clientId: 'legacy', sequence: 4 }))).error?.code).toBe('SESSION_EXPIRED');
      expect((await applyOne(fresh, put('a', 'v6', { clientId: 'legacy', sequence: 6 }))).revision).toBe(2);
    });

    test('sessions from before log time began are not idle since 1970 at the first stamp', async () => {
      const machine = await KvStateMachine.open(handle.db, { ...DEFAULT_SESSION_LIMITS, sessionIdleTimeoutMs: 1_000, sessionEvictionGraceMs: 1_000 });
      const first = await applyOne(machine, put('a', 'v', { clientId: 'early', sequence: 1 }));
      // The first stamped write (a leader with a clock): log time jumps from 0.
      await applyOne(machine, put('b', 'w', { clientId: 'other', sequence: 1, at: 1_700_000_000_000 }));
      const fresh = await KvStateMachine.open(await handle.reopen(), { ...DEFAULT_SESSION_LIMITS, sessionIdleTimeoutMs: 1_000, sessionEvictionGraceMs: 1_000 });
      expect(await applyOne(fresh, put('a', 'v', { clientId: 'early', sequence: 1, at: 1_700_000_000_999 }))).toEqual(first);
      // Idle from then on like any other: 1,000 ms after its last write it is gone.
      await applyOne(fresh, put('b', 'w', { clientId: 'other', sequence: 2, at: 1_700_000_002_000 }));
      expect((await applyOne(fresh, put('a', 'v2', { clientId: 'early', sequence: 2 }))).error?.code).toBe('SESSION_EXPIRED');
    });

    test('writes with an empty clientId are never deduplicated', async () => {
      const first = await applyOne(sm, put('a', 'v', { clientId: '', sequence: 1 }));
      const second = await applyOne(sm, put('a', 'v', { clientId: '', sequence: 1 }));
      const [third, fourth] = await applyAll(sm, put('a', 'v', { clientId: '', sequence: 1 }), put('a', 'v'));
      expect([first.revision, second.revision, third?.revision, fourth?.revision]).toEqual([1, 2, 3, 4]);
      expect(sm.revision()).toBe(4);
      expect(await sm.get(Buffer.from('a'))).toEqual(kv('a', 'v', 1, 4, 4));
      const del1 = await applyOne(sm, del('a', { clientId: '', sequence: 1 }));
      const del2 = await applyOne(sm, del('a', { clientId: '', sequence: 1 }));
      expect(deleteOp(del1).deleted).toBe(true);
      expect(deleteOp(del2).deleted).toBe(false);
    });

    test('an empty clientId does not disturb a real session', async () => {
      const first = await applyOne(sm, put('a', 'v', c(1)));
      await applyOne(sm, put('a', 'anon', { clientId: '', sequence: 3 }));
      expect(await applyOne(sm, put('a', 'v', c(1)))).toEqual(first);
      expect(sm.revision()).toBe(2);
      expect(await sm.get(Buffer.from('a'))).toEqual(kv('a', 'anon', 1, 2, 2));
    });
  });

  describe('log time', () => {
    test('is the highest stamp applied, never goes back, and survives reopen', async () => {
      expect(sm.logTimeUnixMs()).toBe(0);
      await applyAll(sm, put('a', '1', { at: 5_000 }), 'noop', put('a', '2', { at: 3_000 }));
      expect(sm.logTimeUnixMs()).toBe(5_000);
      await applyOne(sm, put('a', '3'));
      expect(sm.logTimeUnixMs()).toBe(5_000);
      await applyOne(sm, put('a', '4', { at: 7_000 }));
      expect(sm.logTimeUnixMs()).toBe(7_000);
      const fresh = await reopen();
      expect(fresh.logTimeUnixMs()).toBe(7_000);
      await applyOne(fresh, put('a', '5', { at: 1 }));
      expect(fresh.logTimeUnixMs()).toBe(7_000);
    });

    test('a stamp from a clock that went back does not age sessions backwards', async () => {
      const limited = await KvStateMachine.open(handle.db, { ...DEFAULT_SESSION_LIMITS, sessionIdleTimeoutMs: 1_000, sessionEvictionGraceMs: 1_000 });
      await applyOne(limited, put('a', '1', { clientId: 'old', sequence: 1, at: 10_000 }));
      // A new leader whose clock is behind: idle age is measured from 10,000, not 2,000.
      await applyOne(limited, put('a', '2', { clientId: 'other', sequence: 1, at: 2_000 }));
      await applyOne(limited, put('a', '3', { clientId: 'other', sequence: 2, at: 10_999 }));
      expect((await applyOne(limited, put('a', 'old2', { clientId: 'old', sequence: 2 }))).error).toBeUndefined();
    });
  });

  describe('session eviction', () => {
    const limits = (overrides: Partial<SessionLimits>): SessionLimits => ({ ...DEFAULT_SESSION_LIMITS, ...overrides });
    const w = (clientId: string, sequence: number, at: number, extra: WriteOptions = {}) => put(`k-${clientId}`, `${clientId}${sequence}`, { clientId, sequence, at, ...extra });

    test('a session idle for sessionIdleTimeoutMs of log time is evicted: its next write gets SESSION_EXPIRED', async () => {
      const machine = await KvStateMachine.open(handle.db, limits({ sessionIdleTimeoutMs: 1_000, sessionEvictionGraceMs: 500 }));
      await applyOne(machine, w('a', 1, 100));
      await applyOne(machine, w('b', 1, 600));
      // 1,099 ms after a's last write: not yet.
      await applyOne(machine, w('c', 1, 1_099));
      expect((await applyOne(machine, w('a', 2, 1_099))).error).toBeUndefined();
      // a was active at 1,099; b at 600: b goes at 1,600, a stays.
      await applyOne(machine, w('c', 2, 1_600));
      expect((await applyOne(machine, w('b', 2, 1_600))).error?.code).toBe('SESSION_EXPIRED');
      expect((await applyOne(machine, w('a', 3, 1_600))).error).toBeUndefined();
      expect(await sessionIds(handle.db)).toEqual(['a', 'c']);
    });

    test('past maxSessions the least recently active session is evicted, unless it is within the grace', async () => {
      const machine = await KvStateMachine.open(handle.db, limits({ maxSessions: 2, sessionEvictionGraceMs: 500 }));
      await applyOne(machine, w('a', 1, 1_000));
      await applyOne(machine, w('b', 1, 1_100));
      // Both active within 500 ms: the third session is refused, and nothing changes.
      const refused = await applyOne(machine, w('c', 1, 1_200));
      expect(refused.error?.code).toBe('SESSION_LIMIT');
      expect(await machine.get(Buffer.from('k-c'))).toBeUndefined();
      // a touched again: b is now the least recently active.
      await applyOne(machine, w('a', 2, 1_650));
      const admitted = await applyOne(machine, w('c', 1, 1_650));
      expect(admitted.error).toBeUndefined();
      expect(await sessionIds(handle.db)).toEqual(['a', 'c']);
      expect((await applyOne(machine, w('b', 2, 1_650))).error?.code).toBe('SESSION_EXPIRED');
    });

    test('eviction is the same whatever the apply batches and restarts', async () => {
      const sessionLimits = limits({ maxSessions: 3, sessionIdleTimeoutMs: 400, sessionEvictionGraceMs: 0, maxResultsPerSession: 3 });
      const items: Command[] = [];
      let at = 0;
      for (let i = 0; i < 60; i++) {
        at += (i * 37) % 90;
        const client = `c${(i * 7) % 5}`;
        const sequence = 1 + Math.floor(i / 5);
        items.push(put(`k${i % 4}`, `v${i}`, { clientId: client, sequence, lowest: Math.max(1, sequence - (i % 3)), at, prevKv: true }));
        if (i % 4 === 0) items.push(put(`k${i % 4}`, `v${i}`, { clientId: client, sequence, lowest: 1, at }));
      }
      const oneBatch = await KvStateMachine.open(handle.db, sessionLimits);
      const all = await applyAll(oneBatch, ...items);
      const oneBatchState = { observed: await observe(oneBatch), sessions: await sessionDump(handle.db) };
      expect(all.filter((r) => r?.error?.code === 'SESSION_EXPIRED').length).toBeGreaterThan(0);
      expect(all.filter((r) => r?.error === undefined).length).toBeGreaterThan(10);

      const other = await BACKENDS[0]!.open();
      try {
        let machine = await KvStateMachine.open(other.db, sessionLimits);
        const results: (CommandResult | undefined)[] = [];
        for (let i = 0; i < items.length; ) {
          const size = 1 + (i % 4);
          const entries = entriesFor(machine, items.slice(i, i + size));
          results.push(...(await machine.apply(entries)).map((o) => o.result));
          i += size;
          if (i % 3 === 0) machine = await KvStateMachine.open(await other.reopen(), sessionLimits);
        }
        expect(results).toEqual(all);
        expect({ observed: await observe(machine), sessions: await sessionDump(other.db) }).toEqual(oneBatchState);
      } finally {
        await other.cleanup();
      }
    });

    test('a session keeps at most maxResultsPerSession results: more unanswered writes get SESSION_LIMIT until answers come', async () => {
      const machine = await KvStateMachine.open(handle.db, limits({ maxResultsPerSession: 2 }));
      const one = await applyOne(machine, w('a', 1, 0, { lowest: 1 }));
      await applyOne(machine, w('a', 2, 0, { lowest: 1 }));
      const third = await applyOne(machine, w('a', 3, 0, { lowest: 1 }));
      expect(third.error?.code).toBe('SESSION_LIMIT');
      expect(machine.revision()).toBe(2);
      // The kept ones still answer; an answer moves the window and 3 goes in.
      expect(await applyOne(machine, w('a', 1, 0, { lowest: 1 }))).toEqual(one);
      expect((await applyOne(machine, w('a', 3, 0, { lowest: 2 }))).error).toBeUndefined();
      expect(machine.revision()).toBe(3);
    });

    test('a session keeps at most maxSessionResultBytes of results', async () => {
      const machine = await KvStateMachine.open(handle.db, limits({ maxSessionResultBytes: 100 }));
      await applyOne(machine, put('big', 'x'.repeat(200)));
      // The first result passes the budget (prev_kv holds 200 bytes): it is kept, the next is refused.
      const first = await applyOne(machine, put('big', 'y', { clientId: 'a', sequence: 1, lowest: 1, prevKv: true }));
      expect(first.error).toBeUndefined();
      const refused = await applyOne(machine, put('small', 'z', { clientId: 'a', sequence: 2, lowest: 1 }));
      expect(refused.error?.code).toBe('SESSION_LIMIT');
      expect(refused.error?.message).toContain('maxSessionResultBytes 100');
      expect((await applyOne(machine, put('small', 'z', { clientId: 'a', sequence: 2, lowest: 2 }))).error).toBeUndefined();
    });

    test('limits that cannot keep the contract are refused', async () => {
      await expect(KvStateMachine.open(handle.db, limits({ sessionIdleTimeoutMs: 10, sessionEvictionGraceMs: 11 }))).rejects.toThrow('must be >= sessionEvictionGraceMs');
      await expect(KvStateMachine.open(handle.db, limits({ maxSessions: 0 }))).rejects.toThrow('maxSessions must be an integer >= 1');
    });

    test('past maxTotalSessionResultBytes the least recently active sessions are evicted', async () => {
      const machine = await KvStateMachine.open(handle.db, limits({ maxTotalSessionResultBytes: 300, sessionEvictionGraceMs: 0 }));
      await applyOne(machine, put('big', 'x'.repeat(200)));
      await applyOne(machine, put('big', 'x'.repeat(200), { clientId: 'a', sequence: 1, prevKv: true, at: 1 }));
      await applyOne(machine, put('big', 'x'.repeat(200), { clientId: 'b', sequence: 1, prevKv: true, at: 2 }));
      await applyOne(machine, put('other', 'v', { clientId: 'c', sequence: 1, at: 3 }));
      expect(await sessionIds(handle.db)).toEqual(['b', 'c']);
    });
  });

  describe('malformed commands', () => {
    test.each(GARBAGE.map((g) => [Buffer.from(g).toString('hex'), g] as const))(
      'a COMMAND entry with undecodable data (%s) does not crash apply and changes no data',
      async (_hex, garbage) => {
        await applyOne(sm, put('a', 'v'));
        const before = await observe(sm);
        const outcomes = await sm.apply([rawEntry(2, garbage), commandEntry(3, put('b', 'w'))]);
        expect(outcomes.map((o) => o.index)).toEqual([2, 3]);
        expect(outcomes[0]!.result?.revision).toBe(1);
        expect(outcomes[0]!.result?.op).toBeUndefined();
        expect(outcomes[1]!.result?.revision).toBe(2);
        expect(sm.appliedIndex()).toBe(3);
        expect(sm.revision()).toBe(2);
        expect(before.kvs).toHaveLength(1);
        expect(await sm.get(Buffer.from('a'))).toEqual(kv('a', 'v', 1, 1, 1));
        expect(await sm.get(Buffer.from('b'))).toEqual(kv('b', 'w', 2, 2, 1));
        const after = await observe(sm);
        expect(after.kvs).toHaveLength(2);
      },
    );

    test('a malformed entry alone advances only the applied index, also after reopen', async () => {
      await applyOne(sm, put('a', 'v'));
      const before = await observe(sm);
      const outcomes = await sm.apply([rawEntry(2, GARBAGE[0]!)]);
      expect(outcomes).toHaveLength(1);
      expect(await observe(sm)).toEqual({ ...before, appliedIndex: 2 });
      const fresh = await reopen();
      expect(await observe(fresh)).toEqual({ ...before, appliedIndex: 2 });
    });

    test('an empty COMMAND (no op) changes no data', async () => {
      await applyOne(sm, put('a', 'v'));
      const [result] = await applyAll(sm, { op: undefined, proposedAtUnixMs: 0 });
      expect(result?.revision).toBe(1);
      expect(sm.revision()).toBe(1);
      expect(sm.appliedIndex()).toBe(2);
      expect(await sm.get(Buffer.from('a'))).toEqual(kv('a', 'v', 1, 1, 1));
    });

    test('every replica fails a malformed entry the same way', async () => {
      const otherDb = await LevelDb.openMemory();
      try {
        const replica = await KvStateMachine.open(otherDb);
        const entries = [
          commandEntry(1, put('a', 'v', { clientId: 'c', sequence: 1 })),
          ...GARBAGE.map((g, i) => rawEntry(2 + i, g)),
          noopEntry(2 + GARBAGE.length),
          commandEntry(3 + GARBAGE.length, put('a', 'v', { clientId: 'c', sequence: 1 })),
          commandEntry(4 + GARBAGE.length, del('a', { prevKv: true })),
        ];
        const mine = await sm.apply(entries);
        const theirs = await replica.apply(entries);
        expect(theirs).toEqual(mine);
        expect(await observe(replica)).toEqual(await observe(sm));
        expect(sm.revision()).toBe(2);
      } finally {
        await otherDb.close();
      }
    });
  });

  describe('binary keys', () => {
    const BINARY_KEYS: Buffer[] = [
      Buffer.from([0x00]),
      Buffer.from([0x00, 0x00]),
      Buffer.from([0xff]),
      Buffer.from([0xff, 0xff, 0x00]),
      Buffer.from([0x61, 0x00, 0x62]),
      Buffer.from([0x00, 0xff, 0x80, 0x7f]),
      Buffer.from([0xc3, 0x28]), // invalid UTF-8
      Buffer.from([0x01, 0x02, 0x03]),
    ];

    test('keys with arbitrary bytes put, get and range in byte order', async () => {
      await applyAll(
        sm,
        ...BINARY_KEYS.map((k, i) => put(k, Buffer.from([0x00, i, 0xff]))),
      );
      for (const [i, key] of BINARY_KEYS.entries()) {
        expect(await sm.get(key)).toEqual(kv(key, Buffer.from([0x00, i, 0xff]), i + 1, i + 1, 1));
      }
      const { kvs } = await sm.range({ start: Buffer.alloc(0), limit: 100, keysOnly: false });
      const expected = [...BINARY_KEYS].sort(Buffer.compare).map((k) => k.toString('hex'));
      expect(hexKeys(kvs)).toEqual(expected);
      expect(expected[0]).toBe('00');
      expect(expected[expected.length - 1]).toBe('ffff00');
    });

    test('0x00 and 0x00 0x00 are different keys', async () => {
      await applyAll(sm, put(Buffer.from([0x00]), 'one'), put(Buffer.from([0x00, 0x00]), 'two'));
      await applyOne(sm, del(Buffer.from([0x00])));
      expect(await sm.get(Buffer.from([0x00]))).toBeUndefined();
      expect(await sm.get(Buffer.from([0x00, 0x00]))).toEqual(kv(Buffer.from([0x00, 0x00]), 'two', 2, 2, 1));
    });

    test('a range bounded by binary keys', async () => {
      await applyAll(sm, ...BINARY_KEYS.map((k) => put(k, 'v')));
      const { kvs, more } = await sm.range({
        start: Buffer.from([0x00, 0x00]),
        end: Buffer.from([0xff]),
        limit: 100,
        keysOnly: true,
      });
      expect(hexKeys(kvs)).toEqual(['0000', '00ff807f', '010203', '610062', 'c328']);
      expect(more).toBe(false);
      const tail = await sm.range({ start: Buffer.from([0xff]), limit: 100, keysOnly: false });
      expect(hexKeys(tail.kvs)).toEqual(['ff', 'ffff00']);
    });

    test('keys passed as views into larger buffers or plain Uint8Arrays are read correctly', async () => {
      const backing = Buffer.from([0x99, 0x00, 0xff, 0x00, 0x99]);
      const view = backing.subarray(1, 4); // 00 ff 00, at a nonzero byteOffset
      await applyOne(sm, put(Buffer.from(view), 'view'));
      expect(await sm.get(view)).toEqual(kv(Buffer.from([0x00, 0xff, 0x00]), 'view', 1, 1, 1));
      expect(await sm.get(new Uint8Array([0x00, 0xff, 0x00]))).toEqual(kv(Buffer.from([0x00, 0xff, 0x00]), 'view', 1, 1, 1));
      expect(await sm.get(backing)).toBeUndefined();
      const { kvs } = await sm.range({ start: new Uint8Array([0x00]), end: new Uint8Array([0x01]), limit: 10, keysOnly: false });
      expect(hexKeys(kvs)).toEqual(['00ff00']);
    });

    test('binary keys and values survive reopen and exact-once bookkeeping', async () => {
      const key = Buffer.from([0xff, 0x00, 0xff]);
      const value = Buffer.from([0x00, 0x00, 0xff, 0x00]);
      const first = await applyOne(sm, put(key, value, { clientId: 'bin', sequence: 1 }));
      const fresh = await reopen();
      expect(await fresh.get(key)).toEqual(kv(key, value, 1, 1, 1));
      expect(await applyOne(fresh, put(key, value, { clientId: 'bin', sequence: 1 }))).toEqual(first);
      expect(await fresh.get(key)).toEqual(kv(key, value, 1, 1, 1));
    });
  });
});

describe.each(BACKENDS)('KvStateMachine range byte budget on $name', (backend) => {
  let handle: Awaited<ReturnType<typeof backend.open>>;
  let sm: KvStateMachine;

  beforeEach(async () => {
    handle = await backend.open();
    sm = await KvStateMachine.open(handle.db);
    // Ten keys k0..k9, each with a 100-byte value: 2 + 100 + overhead bytes per entry.
    await applyAll(sm, ...Array.from({ length: 10 }, (_, i) => put(`k${i}`, 'v'.repeat(100))));
  });
  afterEach(() => handle.cleanup());

  const entryBytes = 2 + 100 + RANGE_ENTRY_OVERHEAD_BYTES;
  const all = { start: Buffer.from('k'), end: Buffer.from('l'), limit: 100, keysOnly: false };

  test('a range stops at the byte budget and sets more; paging from the next key reads the rest', async () => {
    const first = await sm.range({ ...all, maxBytes: 3 * entryBytes + 1 });
    expect(hexKeys(first.kvs)).toEqual(['k0', 'k1', 'k2'].map((k) => Buffer.from(k).toString('hex')));
    expect(first.more).toBe(true);
    const seen = [...first.kvs];
    for (let page = 0; page < 10 && seen.length < 10; page++) {
      const next = await sm.range({ ...all, start: Buffer.concat([seen[seen.length - 1]!.key, Buffer.from([0])]), maxBytes: 3 * entryBytes + 1 });
      seen.push(...next.kvs);
      expect(next.more).toBe(seen.length < 10);
    }
    expect(seen.map((k) => k.key.toString())).toEqual(Array.from({ length: 10 }, (_, i) => `k${i}`));
  });

  test('a budget that fits exactly returns every entry without more', async () => {
    const exact = await sm.range({ ...all, maxBytes: 10 * entryBytes });
    expect(exact.kvs).toHaveLength(10);
    expect(exact.more).toBe(false);
  });

  test('the first entry is returned even when it alone is over the budget', async () => {
    const tiny = await sm.range({ ...all, maxBytes: 1 });
    expect(tiny.kvs.map((k) => k.key.toString())).toEqual(['k0']);
    expect(tiny.kvs[0]!.value.length).toBe(100);
    expect(tiny.more).toBe(true);
  });

  test('keys_only counts only the keys, so more of them fit', async () => {
    const keysOnly = await sm.range({ ...all, keysOnly: true, maxBytes: 3 * entryBytes });
    expect(keysOnly.kvs).toHaveLength(Math.min(10, Math.floor((3 * entryBytes) / (2 + RANGE_ENTRY_OVERHEAD_BYTES))));
  });
});

// ---------------------------------------------------------------------------
// Snapshot and restore (issue 8)
// ---------------------------------------------------------------------------

/** Streams `snapshot` into `target` and makes it live, as the shell does (one synced switch batch). */
async function restoreInto(target: KvStateMachine, targetDb: Db, snapshot: FsmSnapshot, maxChunkBytes = 1 << 20): Promise<number> {
  const restore = await target.beginRestore();
  let chunks = 0;
  for await (const chunk of snapshot.chunks(maxChunkBytes)) {
    await restore.write(chunk);
    chunks++;
  }
  expect(restore.appliedIndex()).toBe(snapshot.index);
  await targetDb.write(restore.switchOps(), { sync: true });
  await restore.activate();
  return chunks;
}

async function allChunks(snapshot: FsmSnapshot, maxChunkBytes: number): Promise<Uint8Array[]> {
  const chunks: Uint8Array[] = [];
  for await (const chunk of snapshot.chunks(maxChunkBytes)) chunks.push(chunk);
  return chunks;
}

/** Everything observable, including log time and the raw session records. */
async function observeAll(sm: KvStateMachine, db: Db) {
  return { ...(await observe(sm)), logTime: sm.logTimeUnixMs(), sessions: await sessionDump(db) };
}

/** Keys, deletions, binary data and sessions with kept results: a state worth snapshotting. */
async function buildState(sm: KvStateMachine): Promise<void> {
  await applyAll(
    sm,
    put('a', 'one', { clientId: 'alice', sequence: 1, at: 1_000 }),
    put('b', 'two', { clientId: 'alice', sequence: 2, lowest: 1, at: 1_001 }),
    'noop',
    put(Buffer.from([0x00, 0xff]), Buffer.from([0xff, 0x00]), { at: 1_002 }),
    put('c', 'three', { clientId: 'bob', sequence: 1, at: 1_003 }),
  );
  await applyOne(sm, del('c', { clientId: 'bob', sequence: 2, prevKv: true, at: 1_004 }));
  await applyOne(sm, put('a', 'uno', { clientId: 'carol', sequence: 7, at: 1_005 }));
}

/** The generations other than the current one that could hold leftovers. */
async function spareGenerationRecords(db: Db): Promise<number> {
  let records = 0;
  for (const generation of [db.generation() - 1, db.generation() + 1, db.generation() + 2]) {
    if (generation < 1) continue;
    for (const sublevel of GENERATIONAL_SUBLEVELS) for await (const _ of db.entries(sublevel, { generation })) records++;
  }
  return records;
}

describe.each(BACKENDS)('KvStateMachine snapshot and restore on $name', (backend) => {
  let source: Awaited<ReturnType<typeof backend.open>>;
  let target: Awaited<ReturnType<typeof backend.open>>;
  let sm: KvStateMachine;
  let other: KvStateMachine;

  beforeEach(async () => {
    source = await backend.open();
    target = await backend.open();
    sm = await KvStateMachine.open(source.db);
    other = await KvStateMachine.open(target.db);
    // The target has a state of its own, which the restore must replace entirely.
    await applyAll(other, put('zzz', 'old'), put('a', 'stale', { clientId: 'alice', sequence: 9, at: 5 }), del('zzz'));
  });
  afterEach(async () => {
    await source.cleanup();
    await target.cleanup();
  });

  test('a restored machine answers gets, ranges, revision, log time and sessions exactly as the source', async () => {
    await buildState(sm);
    const snapshot = await sm.snapshot();
    expect(snapshot.index).toBe(sm.appliedIndex());
    await restoreInto(other, target.db, snapshot);
    snapshot.release();
    expect(await observeAll(other, target.db)).toEqual(await observeAll(sm, source.db));
    expect(other.logTimeUnixMs()).toBe(1_005);
    expect(await other.get(Buffer.from([0x00, 0xff]))).toEqual(await sm.get(Buffer.from([0x00, 0xff])));
    expect(await other.range({ start: Buffer.from('a'), end: Buffer.from('c'), limit: 1, keysOnly: true })).toEqual(
      await sm.range({ start: Buffer.from('a'), end: Buffer.from('c'), limit: 1, keysOnly: true }),
    );
    // Session answers: a retry gets its kept result, a discarded one SESSION_EXPIRED, a new one applies; same on both.
    const next = [
      put('a', 'one', { clientId: 'alice', sequence: 2, lowest: 1, at: 1_010 }),
      put('b', 'again', { clientId: 'alice', sequence: 3, lowest: 3, at: 1_011 }),
      put('b', 'late', { clientId: 'alice', sequence: 1, lowest: 3, at: 1_011 }),
      put('d', 'four', { clientId: 'bob', sequence: 3, at: 1_012 }),
      put('e', 'five', { clientId: 'dave', sequence: 1, at: 1_013 }),
    ];
    const mine = await sm.apply(entriesFor(sm, next));
    const theirs = await other.apply(entriesFor(other, next));
    expect(theirs).toEqual(mine);
    expect(mine[0]!.result?.revision).toBe(2);
    expect(mine[2]!.result?.error?.code).toBe('SESSION_EXPIRED');
    expect(await observeAll(other, target.db)).toEqual(await observeAll(sm, source.db));
  });

  test('the restored state is what reopens, in the new generation, with nothing left of the old one', async () => {
    await buildState(sm);
    const snapshot = await sm.snapshot();
    await restoreInto(other, target.db, snapshot, 64);
    snapshot.release();
    expect(target.db.generation()).toBe(2);
    // The old generation goes in the background; a new restore waits for it, so one is a barrier.
    await (await other.beginRestore()).abort();
    expect(await spareGenerationRecords(target.db)).toBe(0);
    const reopenedDb = await target.reopen();
    const reopened = await KvStateMachine.open(reopenedDb);
    expect(reopenedDb.generation()).toBe(2);
    expect(await observeAll(reopened, reopenedDb)).toEqual(await observeAll(sm, source.db));
    expect(await spareGenerationRecords(reopenedDb)).toBe(0);
  });

  test('a snapshot keeps the state it was taken at while writes go on', async () => {
    await buildState(sm);
    const before = await observeAll(sm, source.db);
    const snapshot = await sm.snapshot();
    await applyAll(
      sm,
      put('a', 'later', { clientId: 'alice', sequence: 3, lowest: 3, at: 2_000 }),
      del('b'),
      put('new', 'key', { clientId: 'erin', sequence: 1, at: 2_001 }),
    );
    expect(await observeAll(sm, source.db)).not.toEqual(before);
    expect(snapshot.index).toBe(before.appliedIndex);
    await restoreInto(other, target.db, snapshot, 100);
    snapshot.release();
    expect(await observeAll(other, target.db)).toEqual(before);
  });

  test('chunks stay within maxChunkBytes, a record larger than the budget goes alone, and records come in order', async () => {
    const maxChunkBytes = 300;
    await applyAll(sm, ...Array.from({ length: 40 }, (_, i) => put(`key-${String(i).padStart(2, '0')}`, `value-${i}`, { clientId: `c${i % 3}`, sequence: Math.floor(i / 3) + 1, at: 10 + i })));
    await applyOne(sm, put('huge', 'h'.repeat(1_000)));
    const snapshot = await sm.snapshot();
    const chunks = await allChunks(snapshot, maxChunkBytes);
    expect(chunks.length).toBeGreaterThan(5);
    const records: SnapshotRecord[] = [];
    for (const chunk of chunks) {
      const batch = SnapshotBatch.decode(chunk);
      expect(batch.records.length).toBeGreaterThan(0);
      if (chunk.length > maxChunkBytes) {
        expect(batch.records).toHaveLength(1);
        // The big put, in `kv` and as its `history` event (revision 41).
        const big = batch.records[0]!;
        expect(big.sublevel === 'history' ? Buffer.from(big.key).readUInt32BE(4) : big.key.toString()).toBe(big.sublevel === 'history' ? 41 : 'huge');
      }
      records.push(...batch.records);
    }
    expect(chunks.some((chunk) => chunk.length > maxChunkBytes)).toBe(true);
    expect(records.filter((r) => r.sublevel === 'kv')).toHaveLength(41);
    expect(records.filter((r) => r.sublevel === 'sessions').map((r) => r.key.toString())).toEqual(['c0', 'c1', 'c2']);
    expect(records[records.length - 1]).toMatchObject({ sublevel: 'meta', key: Buffer.from('applied') });
    // Iterating again reads the same view again.
    expect(await allChunks(snapshot, maxChunkBytes)).toEqual(chunks);
    snapshot.release();
    expect(await restoreInto(other, target.db, await sm.snapshot(), maxChunkBytes)).toBe(chunks.length);
    expect(await observeAll(other, target.db)).toEqual(await observeAll(sm, source.db));
  });

  test('an aborted restore leaves the old state, serving and applying, and no staged data', async () => {
    await buildState(sm);
    const before = await observeAll(other, target.db);
    const restore = await other.beginRestore();
    for await (const chunk of (await sm.snapshot()).chunks(50)) await restore.write(chunk);
    expect(restore.appliedIndex()).toBe(sm.appliedIndex());
    expect(await observeAll(other, target.db)).toEqual(before);
    await restore.abort();
    expect(target.db.generation()).toBe(1);
    expect(await observeAll(other, target.db)).toEqual(before);
    expect(await spareGenerationRecords(target.db)).toBe(0);
    await applyOne(other, put('after', 'abort'));
    expect(await other.get(Buffer.from('after'))).toEqual(kv('after', 'abort', 3, 3, 1));
    const reopened = await KvStateMachine.open(await target.reopen());
    expect(await reopened.get(Buffer.from('zzz'))).toBeUndefined();
  });

  test('entries may still be applied while a restore stages, never between its switch and activation', async () => {
    await buildState(sm);
    const restore = await other.beginRestore();
    for await (const chunk of (await sm.snapshot()).chunks(1 << 20)) await restore.write(chunk);
    await applyOne(other, put('during', 'staging'));
    const ops = restore.switchOps();
    await expect(other.apply(entriesFor(other, [put('x', 'y')]))).rejects.toThrow(InvariantViolation);
    await target.db.write(ops, { sync: true });
    // A snapshot taken in that window (a backup, say) is consistent: the new state at its index.
    const between = await other.snapshot();
    expect(between.index).toBe(sm.appliedIndex());
    const betweenKeys = (await allChunks(between, 1 << 20)).flatMap((c) => SnapshotBatch.decode(c).records.filter((r) => r.sublevel === 'kv').map((r) => r.key.toString('hex')));
    between.release();
    expect(betweenKeys).toEqual((await observe(sm)).kvs.map((k) => k.key));
    await restore.activate();
    expect(await other.get(Buffer.from('during'))).toBeUndefined();
    expect(await observeAll(other, target.db)).toEqual(await observeAll(sm, source.db));
  });

  test('one restore at a time: a second beginRestore is refused with a clear error', async () => {
    const restore = await other.beginRestore();
    await expect(other.beginRestore()).rejects.toThrow(/already in progress/);
    await restore.abort();
    await (await other.beginRestore()).abort();
  });

  describe('bad chunks give a CairnError and leave the old state', () => {
    const record = (sublevel: string, key: string, value: Uint8Array): SnapshotRecord => ({ sublevel, key: Buffer.from(key), value: Buffer.from(value) });
    const keyRecord = KeyRecord.encode({ value: Buffer.from('v'), createRevision: 1, modRevision: 1, version: 1 }).finish();
    const applied = AppliedState.encode({ index: 7, revision: 1, logTimeUnixMs: 0 }).finish();
    const encode = (...records: SnapshotRecord[]) => SnapshotBatch.encode({ records }).finish();
    const cases: [string, Uint8Array[], RegExp][] = [
      ['bytes that do not decode', [Buffer.from([0x0a, 0x05, 0x01])], /snapshot chunk 1 does not decode as a SnapshotBatch/],
      ['an unknown sublevel', [encode(record('log', 'k', keyRecord))], /unknown sublevel "log"/],
      ['a meta key other than applied', [encode(record('meta', 'hard-state', applied))], /meta key "hard-state" is not part of a snapshot/],
      ['a kv value that is not a KeyRecord', [encode(record('kv', 'k', Buffer.from([0xff, 0xff])))], /record 1 \(kv\)/],
      ['keys out of order', [encode(record('kv', 'b', keyRecord)), encode(record('kv', 'a', keyRecord))], /snapshot chunk 2 is invalid: record 2 \(kv key 61\) is out of order/],
      ['sublevels out of order', [encode(record('sessions', 's', SessionRecord.encode({ sequence: 0, result: Buffer.alloc(0), lowestUnansweredSequence: 1, results: [], lastActiveIndex: 1, lastActiveUnixMs: 0, owner: '' }).finish()), record('kv', 'a', keyRecord))], /out of order/],
      ['a record after meta/applied', [encode(record('meta', 'applied', applied), record('kv', 'z', keyRecord))], /follows meta\/applied/],
    ];

    test.each(cases)('%s', async (_name, chunks, message) => {
      const before = await observeAll(other, target.db);
      const restore = await other.beginRestore();
      let error: unknown;
      try {
        for (const chunk of chunks) await restore.write(chunk);
      } catch (err) {
        error = err;
      }
      expect(error).toBeInstanceOf(CairnError);
      expect((error as CairnError).code).toBe('INVALID_ARGUMENT');
      expect((error as Error).message).toMatch(message);
      await restore.abort();
      expect(await observeAll(other, target.db)).toEqual(before);
      expect(await spareGenerationRecords(target.db)).toBe(0);
    });

    test('a stream without meta/applied is incomplete: no switch', async () => {
      const restore = await other.beginRestore();
      await restore.write(encode(record('kv', 'a', keyRecord)));
      expect(() => restore.switchOps()).toThrow(/ended without its meta\/applied record \(after 1 records\): it is incomplete/);
      expect(() => restore.appliedIndex()).toThrow(CairnError);
      await restore.abort();
      expect(target.db.generation()).toBe(1);
    });
  });
});

describe('KvStateMachine restore is atomic across crashes (SimDisk)', () => {
  /** A disk whose writes can be held in flight, so a crash can land in the middle of one. */
  function heldDisk() {
    let hold: (() => void) | undefined;
    let holding = false;
    const disk = new SimDisk(() => (holding ? new Promise<void>((resolve) => (hold = resolve)) : Promise.resolve()));
    return {
      disk,
      holdWrites: () => (holding = true),
      release: () => {
        holding = false;
        hold?.();
      },
    };
  }

  /** A durable old state on a SimDisk and a source machine with a different state to restore. */
  async function setup() {
    const held = heldDisk();
    const db = await held.disk.open();
    const old = await KvStateMachine.open(db);
    await applyAll(old, put('a', 'old'), put('gone', 'soon', { clientId: 'old-client', sequence: 1, at: 50 }), put('zz', 'old'));
    // The state machine's writes are unsynced: a synced write makes them durable.
    await db.write([{ type: 'put', sublevel: 'meta', key: Buffer.from('test-sync'), value: Buffer.from('1') }], { sync: true });
    const oldState = await observeAll(old, db);
    const sourceDb = await LevelDb.openMemory();
    const source = await KvStateMachine.open(sourceDb);
    await buildState(source);
    await applyAll(source, ...Array.from({ length: 12 }, (_, i) => put(`k${i}`, 'n'.repeat(20), { clientId: `s${i % 4}`, sequence: Math.floor(i / 4) + 1, at: 2_000 + i })));
    const newState = await observeAll(source, sourceDb);
    expect(newState).not.toEqual(oldState);
    const snapshot = await source.snapshot();
    const chunks = await allChunks(snapshot, 120);
    snapshot.release();
    await sourceDb.close();
    expect(chunks.length).toBeGreaterThan(4);
    return { ...held, db, old, oldState, newState, chunks };
  }

  /** Reopens after a crash: the state must be exactly the old or exactly the new one, with no spare generation left. */
  async function reopenAfterCrash(disk: SimDisk) {
    const db = await disk.open();
    const reopened = await KvStateMachine.open(db);
    const state = await observeAll(reopened, db);
    expect(await spareGenerationRecords(db)).toBe(0);
    return { db, state };
  }

  // Steps: 0 = after beginRestore, 1..n = after chunk k was written, n+1 = after the switch batch, n+2 = after activate.
  const KEEP = ['none', 'half', 'all'] as const;
  const keepOf = (mode: (typeof KEEP)[number]) => (count: number) => (mode === 'none' ? 0 : mode === 'all' ? count : Math.floor(count / 2));

  test.each(KEEP)('a crash after every step of a restore (unsynced writes kept: %s) reopens the old state before the switch and the new one after', async (mode) => {
    const { chunks } = await setup();
    for (let step = 0; step <= chunks.length + 2; step++) {
      const { disk, db, old, oldState, newState } = await setup();
      const restore = await old.beginRestore();
      for (let k = 0; k < Math.min(step, chunks.length); k++) await restore.write(chunks[k]!);
      if (step > chunks.length) await db.write(restore.switchOps(), { sync: true });
      if (step > chunks.length + 1) await restore.activate();
      disk.crash(keepOf(mode));
      const { state } = await reopenAfterCrash(disk);
      expect({ step, state }).toEqual({ step, state: step > chunks.length ? newState : oldState });
    }
  });

  test.each(KEEP)('a crash while the switch batch is in flight (unsynced writes kept: %s) reopens exactly the old or the new state', async (mode) => {
    const { disk, db, old, oldState, newState, chunks, holdWrites } = await setup();
    const restore = await old.beginRestore();
    for (const chunk of chunks) await restore.write(chunk);
    holdWrites();
    void db.write(restore.switchOps(), { sync: true }).catch(() => undefined);
    await Promise.resolve();
    disk.crash(keepOf(mode));
    const { state } = await reopenAfterCrash(disk);
    expect(state).toEqual(mode === 'all' ? newState : oldState);
  });

  test('a crash while the old generation is being deleted after activation reopens the new state and finishes the deletion', async () => {
    const { disk, db, old, newState, chunks, holdWrites } = await setup();
    const restore = await old.beginRestore();
    for (const chunk of chunks) await restore.write(chunk);
    await db.write(restore.switchOps(), { sync: true });
    holdWrites();
    await restore.activate();
    expect(await observeAll(old, db)).toEqual(newState);
    disk.crash((count) => count);
    const { db: reopenedDb, state } = await reopenAfterCrash(disk);
    expect(state).toEqual(newState);
    expect(reopenedDb.generation()).toBe(2);
  });

  test('restores chain: a second restore after a crash reopens in generation 3 with the second state', async () => {
    const first = await setup();
    const restore = await first.old.beginRestore();
    for (const chunk of first.chunks) await restore.write(chunk);
    await first.db.write(restore.switchOps(), { sync: true });
    await restore.activate();
    first.disk.crash((count) => count);
    const { db } = await reopenAfterCrash(first.disk);
    const machine = await KvStateMachine.open(db);
    const sourceDb = await LevelDb.openMemory();
    const source = await KvStateMachine.open(sourceDb);
    await applyAll(source, put('third', 'state'));
    const again = await machine.beginRestore();
    for await (const chunk of (await source.snapshot()).chunks(1 << 20)) await again.write(chunk);
    await db.write(again.switchOps(), { sync: true });
    await again.activate();
    expect(db.generation()).toBe(3);
    first.disk.crash(() => 0);
    const { db: last, state } = await reopenAfterCrash(first.disk);
    expect(last.generation()).toBe(3);
    expect(state).toEqual(await observeAll(source, sourceDb));
    await sourceDb.close();
  });
});
