import { freePort, ProcessCluster, waitFor } from '../support/process-cluster';

jest.setTimeout(60_000);

describe('the voter set stored at bootstrap', () => {
  test('a restart with a different --peers ignores it with one line saying so, and serves with the stored set', async () => {
    const cluster = await ProcessCluster.start(1);
    try {
      await cluster.waitForLeader();
      await cluster.client().put(Buffer.from('kept'), Buffer.from('yes'));
      expect(await cluster.kill(1, 'SIGTERM')).toBe(0);

      const node = cluster.node(1);
      const other = `1=${node.peerAddr},2=127.0.0.1:${await freePort()}`;
      node.logs.length = 0;
      cluster.spawn(node, ['--peers', other]);
      // Alone in its stored set, the node leads again by itself: the flag named a second voter it never waits for.
      await cluster.waitForLeader([1]);
      const got = await waitFor('the key written before', async () => (await cluster.client().get(Buffer.from('kept'))).kv);
      expect(got.value.toString()).toBe('yes');
      const ignored = node.logs.filter((line) => line.includes('data dir already has state: ignoring the bootstrap flags'));
      expect(ignored).toHaveLength(1);
      expect(node.process!.exitCode).toBeNull();
    } finally {
      await cluster.stop();
    }
  });
});
