import { ChildProcess } from 'node:child_process';
import { freePort, ProcessCluster, waitFor } from '../support/process-cluster';

jest.setTimeout(60_000);

/** Resolves with the exit code once the process exits; fails after `timeoutMs`. */
function exitOf(child: ChildProcess, timeoutMs = 20_000): Promise<number | null> {
  if (child.exitCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((done, fail) => {
    const timer = setTimeout(() => fail(new Error(`process did not exit within ${timeoutMs} ms`)), timeoutMs);
    child.once('exit', (code) => {
      clearTimeout(timer);
      done(code);
    });
  });
}

describe('the voter set stored at bootstrap', () => {
  test('a restart with a different --peers exits non-zero with one line naming both sets; the stored set still starts', async () => {
    const cluster = await ProcessCluster.start(1);
    try {
      await cluster.waitForLeader();
      await cluster.client().put(Buffer.from('kept'), Buffer.from('yes'));
      expect(await cluster.kill(1, 'SIGTERM')).toBe(0);

      const node = cluster.node(1);
      const stored = `1=${node.peerAddr}`;
      const other = `${stored},2=127.0.0.1:${await freePort()}`;
      node.logs.length = 0;
      cluster.spawn(node, ['--peers', other]);
      expect(await exitOf(node.process!)).toBe(1);
      node.process = undefined;
      const errors = node.logs.filter((line) => line.startsWith('cairn serve: '));
      expect(errors).toEqual([
        expect.stringContaining(`--peers names the voters ${other} but this data dir's cluster has the voters ${stored}: changing membership`),
      ]);

      cluster.restart(1);
      await cluster.waitForLeader();
      const got = await waitFor('the key written before', async () => (await cluster.client().get(Buffer.from('kept'))).kv);
      expect(got.value.toString()).toBe('yes');
    } finally {
      await cluster.stop();
    }
  });
});
