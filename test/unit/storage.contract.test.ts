import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Entry, EntryType } from '../../gen/cairn/raft/v1/raft';
import { ErrorCode, isCairnError } from '../../src/errors';
import { LevelDb } from '../../src/storage/db';
import { decodeIndexKey, encodeIndexKey, LevelHardStateStore, LevelLogStore, LevelRaftStorage } from '../../src/storage/raft-storage';
import { BACKENDS } from '../support/db-backends';

function entry(index: number, term: number, data = `e${index}t${term}`): Entry {
  return { index, term, type: EntryType.ENTRY_TYPE_COMMAND, data: Buffer.from(data) };
}

describe.each(BACKENDS)('storage contract on $name', (backend) => {
  let handle: Awaited<ReturnType<typeof backend.open>>;
  beforeEach(async () => {
    handle = await backend.open();
  });
  afterEach(() => handle.cleanup());

  test('an empty store loads as term 0, no vote, no entries', async () => {
    const storage = new LevelRaftStorage(handle.db);
    expect(await storage.load()).toEqual({ hardState: { term: 0, votedFor: 0 }, entries: [] });
  });

  test('hard state and entries survive a reopen', async () => {
    await new LevelRaftStorage(handle.db).persist({ term: 3, votedFor: 2 }, [entry(1, 1), entry(2, 3)]);
    const reopened = new LevelRaftStorage(await handle.reopen());
    const loaded = await reopened.load();
    expect(loaded.hardState).toEqual({ term: 3, votedFor: 2 });
    expect(loaded.entries.map((e) => [e.index, e.term, e.data.toString()])).toEqual([
      [1, 1, 'e1t1'],
      [2, 3, 'e2t3'],
    ]);
  });

  test('appending at an earlier index replaces the conflicting suffix', async () => {
    const storage = new LevelRaftStorage(handle.db);
    await storage.load();
    await storage.persist(undefined, [entry(1, 1), entry(2, 1), entry(3, 1), entry(4, 1)]);
    await storage.persist({ term: 2, votedFor: 0 }, [entry(2, 2, 'new')]);
    const loaded = await new LevelRaftStorage(await handle.reopen()).load();
    expect(loaded.entries.map((e) => `${e.index}/${e.term}`)).toEqual(['1/1', '2/2']);
    expect(loaded.entries[1]!.data.toString()).toBe('new');
  });

  test('a gap in appends is refused', async () => {
    const log = new LevelLogStore(handle.db);
    await log.load();
    expect(() => log.stageAppend([entry(2, 1)])).toThrow(/gap/);
  });

  test('a log with a hole on disk fails loudly on load', async () => {
    const log = new LevelLogStore(handle.db);
    await handle.db.write(log.stageAppend([entry(1, 1), entry(2, 1)]), { sync: true });
    await handle.db.write([{ type: 'del', sublevel: 'log', key: encodeIndexKey(1) }], { sync: true });
    await expect(new LevelLogStore(handle.db).load()).rejects.toThrow(/gap/);
  });

  test('a log that starts right after a snapshot point loads and takes appends after it', async () => {
    const snapshot = { index: 100, term: 3, config: { voters: [], learners: [] } };
    const storage = new LevelRaftStorage(handle.db);
    await storage.load();
    await storage.writeSynced(storage.stageInstall(snapshot, 100));
    await storage.persist({ term: 4, votedFor: 1 }, [entry(101, 3), entry(102, 4), entry(103, 4)]);
    const reopened = new LevelRaftStorage(await handle.reopen());
    const loaded = await reopened.load();
    expect(loaded.snapshot).toMatchObject({ index: 100, term: 3 });
    expect(loaded.entries.map((e) => `${e.index}/${e.term}`)).toEqual(['101/3', '102/4', '103/4']);
    await reopened.persist(undefined, [entry(103, 5)]);
    expect((await new LevelRaftStorage(await handle.reopen()).load()).entries.map((e) => `${e.index}/${e.term}`)).toEqual([
      '101/3',
      '102/4',
      '103/5',
    ]);
  });

  test('compaction records meta/snapshot and deletes through compactThrough, keeping the tail before the snapshot point', async () => {
    const storage = new LevelRaftStorage(handle.db);
    await storage.load();
    await storage.persist({ term: 2, votedFor: 1 }, Array.from({ length: 10 }, (_, i) => entry(i + 1, i < 5 ? 1 : 2)));
    const meta = { index: 8, term: 2, config: { voters: [{ id: 1, peerAddr: 'a:1', clientAddr: '' }], learners: [] } };
    await storage.writeSynced(storage.stageCompaction(meta, 6));
    const db = await handle.reopen();
    const loaded = await new LevelRaftStorage(db).load();
    expect(loaded.snapshot).toEqual(meta);
    expect(loaded.entries.map((e) => e.index)).toEqual([7, 8, 9, 10]);
    // A later compaction deletes only what is still stored, and appends continue after it.
    const again = new LevelRaftStorage(db);
    await again.load();
    await again.writeSynced([...again.stageCompaction({ ...meta, index: 10 }, 9), ...again.stagePersist(undefined, [entry(11, 2)])]);
    const reloaded = await new LevelRaftStorage(await handle.reopen()).load();
    expect([reloaded.snapshot?.index, reloaded.entries.map((e) => e.index)]).toEqual([10, [10, 11]]);
  });

  test('an install that keeps the tail deletes the entries up to the snapshot; one that discards deletes them all', async () => {
    const storage = new LevelRaftStorage(handle.db);
    await storage.load();
    await storage.persist({ term: 1, votedFor: 1 }, Array.from({ length: 6 }, (_, i) => entry(i + 1, 1)));
    await storage.writeSynced(storage.stageInstall({ index: 3, term: 1, config: undefined }, 6));
    const db = await handle.reopen();
    let loaded = await new LevelRaftStorage(db).load();
    expect([loaded.snapshot?.index, loaded.entries.map((e) => e.index)]).toEqual([3, [4, 5, 6]]);

    const next = new LevelRaftStorage(db);
    await next.load();
    await next.writeSynced([...next.stageInstall({ index: 20, term: 4, config: undefined }, 20), ...next.stagePersist({ term: 4, votedFor: 0 }, [entry(21, 4)])]);
    loaded = await new LevelRaftStorage(await handle.reopen()).load();
    expect([loaded.snapshot?.index, loaded.entries.map((e) => `${e.index}/${e.term}`), loaded.hardState.term]).toEqual([20, ['21/4'], 4]);
  });

  test('appends inside the snapshot are refused', async () => {
    const log = new LevelLogStore(handle.db);
    await log.load({ index: 100, term: 3 });
    expect(() => log.stageAppend([entry(100, 3)])).toThrow(/inside the snapshot/);
    expect(() => log.stageAppend([entry(102, 3)])).toThrow(/gap/);
  });

  test('a log after a snapshot point with a gap, starting after it, or ending before it fails loudly on load', async () => {
    const snapshot = { index: 100, term: 3 };
    const log = new LevelLogStore(handle.db);
    await log.load(snapshot);
    await handle.db.write(log.stageAppend([entry(101, 3), entry(102, 3), entry(103, 3)]), { sync: true });
    // Read back without the snapshot point, the log does not start at 1.
    await expect(new LevelLogStore(handle.db).load()).rejects.toThrow(/gap before index 101: the first stored entry must be at most 1/);
    // A snapshot point two before the first stored entry does not fit either.
    await expect(new LevelLogStore(handle.db).load({ index: 99, term: 3 })).rejects.toThrow(/first stored entry must be at most 100/);
    // One past the last stored entry: the log ends before the snapshot.
    await expect(new LevelLogStore(handle.db).load({ index: 104, term: 3 })).rejects.toThrow(/log ends at 103, before the snapshot index 104/);
    await handle.db.write([{ type: 'del', sublevel: 'log', key: encodeIndexKey(102) }], { sync: true });
    await expect(new LevelLogStore(await handle.reopen()).load(snapshot)).rejects.toThrow(/gap before index 103 \(expected 102\)/);
  });

  test('the hard state store round-trips', async () => {
    const store = new LevelHardStateStore(handle.db);
    await handle.db.write(store.stageSave({ term: 9, votedFor: 5 }), { sync: true });
    expect(await new LevelHardStateStore(await handle.reopen()).load()).toEqual({ term: 9, votedFor: 5 });
  });

  test('sublevels are separate key spaces', async () => {
    await handle.db.write(
      [
        { type: 'put', sublevel: 'kv', key: Buffer.from('k'), value: Buffer.from('kv') },
        { type: 'put', sublevel: 'meta', key: Buffer.from('k'), value: Buffer.from('meta') },
      ],
      { sync: true },
    );
    expect((await handle.db.get('kv', Buffer.from('k')))?.toString()).toBe('kv');
    expect((await handle.db.get('meta', Buffer.from('k')))?.toString()).toBe('meta');
    expect(await handle.db.get('log', Buffer.from('k'))).toBeUndefined();
  });
});

describe('log keys', () => {
  test('sort in index order and round-trip, beyond 32 bits too', () => {
    const indexes = [0, 1, 255, 256, 65_535, 2 ** 32 - 1, 2 ** 32, 2 ** 40 + 7, Number.MAX_SAFE_INTEGER];
    const keys = indexes.map(encodeIndexKey);
    expect(keys.map(decodeIndexKey)).toEqual(indexes);
    const sorted = [...keys].sort(Buffer.compare);
    expect(sorted.map(decodeIndexKey)).toEqual(indexes);
  });

  test('refuse unsafe indexes', () => {
    expect(() => encodeIndexKey(-1)).toThrow();
    expect(() => encodeIndexKey(2 ** 53)).toThrow();
  });
});

describe('data directory', () => {
  test('a second open of a held directory fails with DATA_DIR_LOCKED and a clear message', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cairn-lock-'));
    const first = await LevelDb.openDirectory(dir);
    try {
      const second = LevelDb.openDirectory(dir);
      await expect(second).rejects.toThrow(/already in use by another cairn process/);
      await second.catch((err) => expect(isCairnError(err, ErrorCode.DATA_DIR_LOCKED)).toBe(true));
    } finally {
      await first.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
