import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LevelDb } from '../../src/storage/db';

/**
 * Db.flushToDisk must leave every earlier write in a synced table file, not only in
 * LevelDB's write-ahead log (whose old files LevelDB does not sync when it switches to a
 * new one: google/leveldb#193). Compaction and snapshot installs call it before the synced
 * batch that makes earlier unsynced writes load-bearing.
 */
describe('Db.flushToDisk (LevelDB)', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'cairn-flush-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const tables = () => readdirSync(dir).filter((name) => name.endsWith('.ldb') || name.endsWith('.sst'));
  const logBytes = () => readdirSync(dir).filter((name) => name.endsWith('.log')).reduce((sum, name) => sum + statSync(join(dir, name)).size, 0);

  test('unsynced writes end up in a table file and the write-ahead log is left empty', async () => {
    const db = await LevelDb.openDirectory(dir);
    const ops = Array.from({ length: 1000 }, (_, i) => ({ type: 'put' as const, sublevel: 'kv' as const, key: Buffer.from(`key-${i}`), value: Buffer.alloc(100, i) }));
    await db.write(ops, { sync: false });
    expect(tables()).toEqual([]); // 100 KB: far below the memtable size, so only in the log
    expect(logBytes()).toBeGreaterThan(100_000);
    await db.flushToDisk();
    expect(tables().length).toBeGreaterThan(0);
    expect(logBytes()).toBe(0);
    expect((await db.get('kv', Buffer.from('key-999')))?.length).toBe(100);
    await db.close();
  });
});
