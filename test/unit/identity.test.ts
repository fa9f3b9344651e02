import { ClusterIdentity } from '../../gen/cairn/storage/v1/storage';
import { loadOrCreateIdentity } from '../../src/server/identity';
import { LevelDb } from '../../src/storage/db';

const peers = (spec: string) => new Map(spec.split(',').map((part) => part.split('=') as [string, string]).map(([id, addr]) => [Number(id), addr]));
const quiet = () => ({ info: jest.fn(), warn: jest.fn() });

describe('the stored voter set', () => {
  let db: LevelDb;
  beforeEach(async () => {
    db = await LevelDb.openMemory();
  });
  afterEach(() => db.close());

  test('is stored at bootstrap and read back on a restart with the same --peers', async () => {
    const first = await loadOrCreateIdentity(db, 1, 42, peers('2=b:2,1=a:1,3=c:3'), quiet());
    expect(first.voters).toEqual([{ id: 1, peerAddr: 'a:1' }, { id: 2, peerAddr: 'b:2' }, { id: 3, peerAddr: 'c:3' }]);
    const again = await loadOrCreateIdentity(db, 1, 99, peers('1=a:1,2=b:2,3=c:3'), quiet());
    expect(again).toEqual(first);
  });

  test('a restart whose --peers names other voter ids is refused, naming both sets', async () => {
    await loadOrCreateIdentity(db, 1, 42, peers('1=a:1,2=b:2,3=c:3'), quiet());
    const restart = (spec: string) => loadOrCreateIdentity(db, 1, 42, peers(spec), quiet());
    await expect(restart('1=a:1,2=b:2,4=d:4')).rejects.toThrow(
      "--peers names the voters 1=a:1,2=b:2,4=d:4 but this data dir's cluster has the voters 1=a:1,2=b:2,3=c:3",
    );
    await expect(restart('1=a:1,2=b:2')).rejects.toThrow('unsafe');
    await expect(restart('1=a:1,2=b:2,3=c:3,4=d:4')).rejects.toThrow('unsafe');
  });

  test('a changed address for the same ids is accepted and stored, with a warning', async () => {
    await loadOrCreateIdentity(db, 1, 42, peers('1=a:1,2=b:2,3=c:3'), quiet());
    const logger = quiet();
    const moved = await loadOrCreateIdentity(db, 1, 42, peers('1=a:1,2=b-new:2,3=c:3'), logger);
    expect(moved.voters[1]).toEqual({ id: 2, peerAddr: 'b-new:2' });
    expect(logger.warn).toHaveBeenCalledTimes(1);
    expect(ClusterIdentity.decode((await db.get('meta', Buffer.from('cluster')))!).voters[1]!.peerAddr).toBe('b-new:2');
  });

  test('a data dir written before voters were stored adopts --peers and stores them', async () => {
    await db.write([{ type: 'put', sublevel: 'meta', key: Buffer.from('cluster'), value: ClusterIdentity.encode({ clusterId: 7, nodeId: 2, voters: [] }).finish() }], { sync: true });
    const logger = quiet();
    const adopted = await loadOrCreateIdentity(db, 2, 99, peers('1=a:1,2=b:2'), logger);
    expect(adopted).toEqual({ clusterId: 7, nodeId: 2, voters: [{ id: 1, peerAddr: 'a:1' }, { id: 2, peerAddr: 'b:2' }] });
    expect(logger.warn).toHaveBeenCalledTimes(1);
    await expect(loadOrCreateIdentity(db, 2, 99, peers('1=a:1,2=b:2,3=c:3'), quiet())).rejects.toThrow('unsafe');
  });
});
