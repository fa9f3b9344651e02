import { MemoryLevel } from 'memory-level';
import { LevelDb } from '../../src/storage/db';

describe('LevelDb.write', () => {
  test('hands `sync` to the underlying batch, for synced and unsynced writes', async () => {
    const level = new MemoryLevel<Buffer, Buffer>({ keyEncoding: 'buffer', valueEncoding: 'buffer' });
    await level.open();
    const db = await LevelDb.over(level as unknown as Parameters<typeof LevelDb.over>[0]);
    const batch = jest.spyOn(level, 'batch');
    const op = { type: 'put' as const, sublevel: 'meta' as const, key: Buffer.from('k'), value: Buffer.from('v') };
    await db.write([op], { sync: true });
    await db.write([op], { sync: false });
    expect(batch.mock.calls.map((call) => (call as unknown[])[1])).toEqual([{ sync: true }, { sync: false }]);
    expect(await db.get('meta', Buffer.from('k'))).toEqual(Buffer.from('v'));
    // @ts-expect-error: `sync` is required, so a write cannot leave it out.
    await db.write([op], {});
    await db.close();
  });
});
