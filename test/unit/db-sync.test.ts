import { MemoryLevel } from 'memory-level';
import { LevelDb } from '../../src/storage/db';

describe('LevelDb.write', () => {
  test('hands `sync` to the underlying batch, for synced and unsynced writes', async () => {
    const level = new MemoryLevel<Buffer, Buffer>({ keyEncoding: 'buffer', valueEncoding: 'buffer' });
    await level.open();
    const db = await LevelDb.over(level as unknown as Parameters<typeof LevelDb.over>[0]);
    // LevelDb writes through a chained batch: record the options each one is written with.
    const written: unknown[] = [];
    const chained = level.batch.bind(level) as () => { write(options: unknown): Promise<void> };
    jest.spyOn(level, 'batch').mockImplementation((() => {
      const batch = chained();
      const write = batch.write.bind(batch);
      batch.write = (options: unknown) => {
        written.push(options);
        return write(options);
      };
      return batch;
    }) as never);
    const op = { type: 'put' as const, sublevel: 'meta' as const, key: Buffer.from('k'), value: Buffer.from('v') };
    await db.write([op], { sync: true });
    await db.write([op], { sync: false });
    expect(written).toEqual([{ sync: true }, { sync: false }]);
    expect(await db.get('meta', Buffer.from('k'))).toEqual(Buffer.from('v'));
    // @ts-expect-error: `sync` is required, so a write cannot leave it out.
    await db.write([op], {});
    await db.close();
  });
});
