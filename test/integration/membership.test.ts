import { Consistency } from '../../gen/cairn/kv/v1/kv';
import { ProcessCluster, waitFor } from '../support/process-cluster';

jest.setTimeout(120_000);

const key = (text: string) => Buffer.from(text);

/** `cairn member list` as [id, role, leader?] rows. */
function rows(stdout: string): { id: number; role: string; leader: boolean }[] {
  return stdout
    .trim()
    .split('\n')
    .map((line) => line.trim().split(/\s+/))
    .map((words) => ({ id: Number(words[0]), role: words[1]!, leader: words[words.length - 1] === 'leader' }));
}

/**
 * A bounded background writer: puts distinct keys through every running node until stopped
 * (at most `max`), remembering those acknowledged.
 */
function writer(cluster: ProcessCluster, prefix: string, max = 3000) {
  const acked: string[] = [];
  let stop = false;
  const done = (async () => {
    const client = cluster.client(cluster.nodes.map((n) => n.id));
    for (let i = 0; i < max && !stop; i++) {
      const k = `${prefix}-${i}`;
      try {
        await client.put(key(k), key(k));
        acked.push(k);
      } catch {
        // Outcome unknown or refused: not counted as acknowledged.
      }
    }
  })();
  return {
    acked,
    /** Resolves once the writer has written its `max` keys. */
    finished: () => done,
    async stop() {
      stop = true;
      await done;
    },
  };
}

/** Every acknowledged key reads back, linearizably, through each of `ids` alone. */
async function expectReadableEverywhere(cluster: ProcessCluster, ids: number[], keys: string[]): Promise<void> {
  for (const id of ids) {
    const client = cluster.client([id], Consistency.CONSISTENCY_LINEARIZABLE, 5000);
    for (const k of keys) expect({ id, k, value: (await client.get(key(k))).kv?.value.toString() }).toEqual({ id, k, value: k });
  }
}

describe('membership changes on real processes', () => {
  let cluster: ProcessCluster;
  beforeEach(async () => {
    cluster = await ProcessCluster.start(3);
    await cluster.waitForLeader();
  });
  afterEach(() => cluster.stop());

  test('a 4th node started with --join becomes a voter by itself; leadership moves to it; an old follower is removed and exits 0; writes before and during read back from every remaining node', async () => {
    const before = writer(cluster, 'before', 50);
    await before.finished();
    expect(before.acked).toHaveLength(50);
    const during = writer(cluster, 'during');

    const joined = await cluster.join([2]);
    expect(joined.id).toBe(4);
    await waitFor('4 voters in cairn member list', async () => {
      const listed = await cluster.cli(['member', 'list'], [1, 2, 3]);
      const members = rows(listed.stdout);
      return listed.code === 0 && members.length === 4 && members.every((m) => m.role === 'voter');
    }, 60_000);
    // The node's own account of it arrives on its output stream, maybe after the list shows it.
    await waitFor('the joined node logs its promotion', async () => joined.logs.some((line) => line.includes('join: promoted to voter')), 10_000);

    const transfer = await cluster.cli(['leader', 'transfer', '--to', '4']);
    expect(transfer).toMatchObject({ code: 0, stdout: 'leader: node 4\n' });
    expect(await cluster.waitForLeader([1, 2, 3, 4])).toBe(4);

    const removed = 1;
    const removal = await cluster.cli(['member', 'remove', String(removed)], [2, 3, 4]);
    expect(removal.code).toBe(0);
    expect(removal.stdout.split('\n')[0]).toBe(`removed node ${removed}`);
    expect(await cluster.exited(removed)).toEqual({ code: 0, signal: null });
    expect(cluster.node(removed).logs.some((line) => line.includes('removed from the cluster'))).toBe(true);

    await waitFor('writes after the removal', () => during.acked.length >= 20);
    const count = during.acked.length;
    await waitFor('more writes after the removal', () => during.acked.length >= count + 20, 30_000);
    await during.stop();
    const listed = rows((await cluster.cli(['member', 'list'], [2, 3, 4])).stdout);
    expect(listed.map((m) => [m.id, m.role])).toEqual([[2, 'voter'], [3, 'voter'], [4, 'voter']]);
    await expectReadableEverywhere(cluster, [2, 3, 4], [...before.acked, ...during.acked]);
  });

  test('removing the leader: it steps down and exits 0, the rest elect and keep every write', async () => {
    const during = writer(cluster, 'w');
    await waitFor('some writes', () => during.acked.length >= 20);
    const leader = await cluster.waitForLeader();
    const rest = [1, 2, 3].filter((id) => id !== leader);
    const removal = await cluster.cli(['member', 'remove', String(leader)], rest);
    expect({ code: removal.code, stderr: removal.stderr }).toEqual({ code: 0, stderr: '' });
    expect(await cluster.exited(leader)).toEqual({ code: 0, signal: null });
    const next = await cluster.waitForLeader(rest);
    expect(rest).toContain(next);
    const count = during.acked.length;
    await waitFor('writes after the removal', () => during.acked.length >= count + 20, 30_000);
    await during.stop();
    expect(rows((await cluster.cli(['member', 'list'], rest)).stdout).map((m) => m.id)).toEqual(rest);
    await expectReadableEverywhere(cluster, rest, during.acked);
  });

  test('a member removed while it was down stops by itself when it comes back (a peer refuses it with MEMBER_REMOVED)', async () => {
    const leader = await cluster.waitForLeader();
    const victim = [1, 2, 3].find((id) => id !== leader)!;
    const rest = [1, 2, 3].filter((id) => id !== victim);
    expect(await cluster.kill(victim, 'SIGTERM')).toBe(0);
    expect((await cluster.cli(['member', 'remove', String(victim)], rest)).code).toBe(0);
    const client = cluster.client(rest);
    for (let i = 0; i < 20; i++) await client.put(key(`after-${i}`), key('x'));
    cluster.restart(victim);
    expect(await cluster.exited(victim)).toEqual({ code: 0, signal: null });
    expect(cluster.node(victim).logs.some((line) => line.includes('removed from the cluster') && line.includes('refused this node'))).toBe(true);
    expect(rows((await cluster.cli(['member', 'list'], rest)).stdout).map((m) => m.id)).toEqual(rest);
  });

  test('SIGTERM on the leader hands leadership over before it exits', async () => {
    const during = writer(cluster, 's');
    await waitFor('some writes', () => during.acked.length >= 20);
    const leader = await cluster.waitForLeader();
    const termBefore = (await cluster.status(leader)).term;
    expect(await cluster.kill(leader, 'SIGTERM')).toBe(0);
    // The old leader logs this only once its transfer resolved: it saw a leader of a later term.
    const handedOver = cluster.node(leader).logs.map((line) => JSON.parse(line.startsWith('{') ? line : '{}')).find((l) => l.msg === 'stopping: handed leadership over');
    expect(handedOver).toBeDefined();
    const rest = [1, 2, 3].filter((id) => id !== leader);
    expect(rest).toContain(handedOver.leader);
    const next = await cluster.waitForLeader(rest);
    expect((await cluster.status(next)).term).toBeGreaterThan(termBefore);
    const count = during.acked.length;
    await waitFor('writes after the restart', () => during.acked.length >= count + 20, 30_000);
    await during.stop();
    cluster.restart(leader);
    await cluster.waitForLeader();
    await expectReadableEverywhere(cluster, [1, 2, 3], during.acked.slice(-30));
  });

  test('bad membership input is a one-line usage or INVALID_ARGUMENT error, and changes nothing', async () => {
    const badAddr = await cluster.cli(['member', 'add', '9', 'no-port']);
    expect(badAddr.code).toBe(1);
    expect(badAddr.stderr).toMatch(/^cairn: INVALID_ARGUMENT: peer_addr "no-port" is not HOST:PORT/);
    expect(badAddr.stderr.trim().split('\n')).toHaveLength(1);
    const badId = await cluster.cli(['member', 'promote', 'x']);
    expect(badId).toMatchObject({ code: 2, stderr: 'cairn: ID must be a member id (an integer >= 1), got "x"\n' });
    const unknown = await cluster.cli(['member', 'remove', '9']);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/NOT_FOUND/);
    expect(rows((await cluster.cli(['member', 'list'])).stdout).map((m) => m.id)).toEqual([1, 2, 3]);
  });
});

describe('joining a cluster whose log was compacted', () => {
  test('a node started with --join catches up through a snapshot, is promoted, and serves every key', async () => {
    const cluster = await ProcessCluster.start(3, ['--snapshot-entries', '100', '--snapshot-catchup-entries', '10']);
    try {
      await cluster.waitForLeader();
      const client = cluster.client();
      const keys = Array.from({ length: 400 }, (_, i) => `snap-${i}`);
      for (let i = 0; i < keys.length; i += 50) await Promise.all(keys.slice(i, i + 50).map((k) => client.put(key(k), key(k))));
      const leader = await cluster.waitForLeader();
      await waitFor('the leader to compact its log', async () => (await cluster.status(leader)).firstIndex > 1);

      const joined = await cluster.join([1, 2, 3]);
      await waitFor('the new node to be a voter', async () => {
        const members = rows((await cluster.cli(['member', 'list'], [1, 2, 3])).stdout);
        return members.find((m) => m.id === joined.id)?.role === 'voter';
      }, 60_000);
      expect(joined.logs.some((line) => line.includes('snapshot received whole'))).toBe(true);
      const status = await cluster.status(joined.id);
      expect(status.snapshotIndex).toBeGreaterThan(0);
      const local = cluster.client([joined.id], Consistency.CONSISTENCY_SERIALIZABLE);
      await waitFor('the new node to apply the writes', async () => (await local.get(key(keys[keys.length - 1]!))).kv);
      for (const k of keys) expect((await local.get(key(k))).kv?.value.toString()).toBe(k);
    } finally {
      await cluster.stop();
    }
  });
});
