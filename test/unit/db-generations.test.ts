import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Level } from 'level';
import { CairnError } from '../../src/errors';
import { GENERATION_KEY, generationSwitchOp, LevelDb, physicalSublevelName } from '../../src/storage/db';

const k = (text: string) => Buffer.from(text);

async function values(db: LevelDb, sublevel: 'kv' | 'sessions', generation?: number): Promise<string[]> {
  const out: string[] = [];
  for await (const [key, value] of db.entries(sublevel, generation === undefined ? {} : { generation })) out.push(`${key}=${value}`);
  return out;
}

describe('Db generations (LevelDB)', () => {
  let dir: string;
  let db: LevelDb;

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'cairn-gen-'));
    db = await LevelDb.openDirectory(dir);
  });
  afterEach(async () => {
    await db.close().catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  });

  async function reopen(): Promise<LevelDb> {
    await db.close();
    db = await LevelDb.openDirectory(dir);
    return db;
  }

  test('generation 1 keeps the sublevel names data dirs were written with', async () => {
    expect(physicalSublevelName('kv', 1)).toBe('kv');
    expect(physicalSublevelName('sessions', 1)).toBe('sessions');
    expect(physicalSublevelName('kv', 2)).toBe('kv.2');
    await db.close();
    // A data dir written before generations existed: plain `kv` and `sessions` sublevels.
    const raw = new Level<Buffer, Buffer>(dir, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
    await raw.sublevel<Buffer, Buffer>('kv', { keyEncoding: 'buffer', valueEncoding: 'buffer' }).put(k('a'), k('old'));
    await raw.close();
    db = await LevelDb.openDirectory(dir);
    expect(db.generation()).toBe(1);
    expect(await db.get('kv', k('a'))).toEqual(k('old'));
  });

  test('a batch holding the switch makes the staged generation current, and it survives reopen', async () => {
    await db.write([{ type: 'put', sublevel: 'kv', key: k('a'), value: k('one') }], { sync: false });
    await db.write([{ type: 'put', sublevel: 'kv', key: k('b'), value: k('two'), generation: 2 }], { sync: false });
    expect(await values(db, 'kv')).toEqual(['a=one']);
    expect(await values(db, 'kv', 2)).toEqual(['b=two']);
    await db.write([generationSwitchOp(2), { type: 'put', sublevel: 'sessions', key: k('s'), value: k('x'), generation: 2 }], { sync: true });
    expect(db.generation()).toBe(2);
    expect(await values(db, 'kv')).toEqual(['b=two']);
    expect(await db.get('sessions', k('s'))).toEqual(k('x'));
    await reopen();
    expect(db.generation()).toBe(2);
    expect(await values(db, 'kv')).toEqual(['b=two']);
    // The previous generation is a neighbour: cleared at open.
    expect(await values(db, 'kv', 1)).toEqual([]);
  });

  test('at open, a staging generation left by a crash is cleared', async () => {
    await db.write([{ type: 'put', sublevel: 'kv', key: k('a'), value: k('live') }], { sync: true });
    await db.write([{ type: 'put', sublevel: 'kv', key: k('z'), value: k('staged'), generation: 2 }], { sync: true });
    await db.write([{ type: 'put', sublevel: 'sessions', key: k('s'), value: k('staged'), generation: 2 }], { sync: true });
    await reopen();
    expect(db.generation()).toBe(1);
    expect(await values(db, 'kv')).toEqual(['a=live']);
    expect(await values(db, 'kv', 2)).toEqual([]);
    expect(await values(db, 'sessions', 2)).toEqual([]);
  });

  test('a snapshot keeps its data and its generation across later writes and a switch', async () => {
    await db.write([{ type: 'put', sublevel: 'kv', key: k('a'), value: k('one') }], { sync: false });
    const snapshot = await db.snapshot();
    await db.write([{ type: 'put', sublevel: 'kv', key: k('a'), value: k('changed') }], { sync: false });
    await db.write([{ type: 'put', sublevel: 'kv', key: k('b'), value: k('new'), generation: 2 }, generationSwitchOp(2)], { sync: false });
    await db.clearGeneration('kv', 1);
    expect(snapshot.generation).toBe(1);
    expect(await db.get('kv', k('a'), { snapshot })).toEqual(k('one'));
    const seen: string[] = [];
    for await (const [key, value] of db.entries('kv', { snapshot })) seen.push(`${key}=${value}`);
    expect(seen).toEqual(['a=one']);
    expect(await values(db, 'kv')).toEqual(['b=new']);
    await snapshot.release();
    await snapshot.release();
    await expect(db.get('kv', k('a'), { snapshot })).rejects.toThrow(/released DbSnapshot/);
  });

  test('the current generation cannot be cleared, and log/meta have no generations', async () => {
    await expect(db.clearGeneration('kv', 1)).rejects.toThrow(/the current one/);
    await expect(db.write([{ type: 'put', sublevel: 'log', key: k('x'), value: k('y'), generation: 2 }], { sync: false })).rejects.toThrow(/has none/);
  });

  test('a corrupt generation record is refused at open with a clear message', async () => {
    // Through the Db a bad switch cannot even be written.
    await expect(db.write([{ type: 'put', sublevel: 'meta', key: GENERATION_KEY, value: k('two') }], { sync: true })).rejects.toThrow(CairnError);
    await db.close();
    const raw = new Level<Buffer, Buffer>(dir, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
    await raw.sublevel<Buffer, Buffer>('meta', { keyEncoding: 'buffer', valueEncoding: 'buffer' }).put(GENERATION_KEY, k('two'));
    await raw.close();
    const opening = LevelDb.openDirectory(dir);
    await expect(opening).rejects.toThrow(CairnError);
    await expect(opening).rejects.toThrow('meta/generation holds "two", not a generation number');
    db = await LevelDb.openMemory();
  });
});
