import { ClusterIdentity } from '../../gen/cairn/storage/v1/storage';
import { bootstrapConfigOf, IGNORED_BOOTSTRAP_FLAGS, loadOrCreateIdentity, readIdentity, storeJoinedIdentity } from '../../src/server/identity';
import { LevelDb } from '../../src/storage/db';

const peers = (spec: string) => new Map(spec.split(',').map((part) => part.split('=') as [string, string]).map(([id, addr]) => [Number(id), addr]));
const quiet = () => ({ info: jest.fn(), warn: jest.fn() });

describe('the stored bootstrap voter set', () => {
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

  test('a restart whose --peers names other voter ids ignores them, says so, and keeps the stored set', async () => {
    const first = await loadOrCreateIdentity(db, 1, 42, peers('1=a:1,2=b:2,3=c:3'), quiet());
    for (const spec of ['1=a:1,2=b:2,4=d:4', '1=a:1,2=b:2', '1=a:1,2=b:2,3=c:3,4=d:4']) {
      const logger = quiet();
      expect(await loadOrCreateIdentity(db, 1, 42, peers(spec), logger)).toEqual(first);
      expect(logger.warn).toHaveBeenCalledWith({ stored: '1=a:1,2=b:2,3=c:3', flags: spec }, IGNORED_BOOTSTRAP_FLAGS);
    }
    expect(ClusterIdentity.decode((await db.get('meta', Buffer.from('cluster')))!)).toEqual(first);
  });

  test('a node that joined keeps the configuration it joined with, whatever --peers says', async () => {
    const joined = { voters: [{ id: 1, peerAddr: 'a:1', clientAddr: 'a:7' }], learners: [{ id: 4, peerAddr: 'd:4', clientAddr: '' }] };
    await storeJoinedIdentity(db, 4, 42, joined);
    const again = await loadOrCreateIdentity(db, 4, 99, peers('4=d:4'), quiet());
    expect(again).toEqual({ clusterId: 42, nodeId: 4, voters: [{ id: 1, peerAddr: 'a:1' }], bootstrapConfig: joined });
    expect(bootstrapConfigOf(again)).toEqual(joined);
    expect(await readIdentity(db)).toEqual(again);
  });

  test('the bootstrap configuration of a data dir bootstrapped from --peers is its voter set', async () => {
    const identity = await loadOrCreateIdentity(db, 1, 42, peers('1=a:1,2=b:2'), quiet());
    expect(bootstrapConfigOf(identity)).toEqual({ voters: [{ id: 1, peerAddr: 'a:1', clientAddr: '' }, { id: 2, peerAddr: 'b:2', clientAddr: '' }], learners: [] });
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
    expect((await loadOrCreateIdentity(db, 2, 99, peers('1=a:1,2=b:2,3=c:3'), quiet())).voters).toEqual(adopted.voters);
  });
});
