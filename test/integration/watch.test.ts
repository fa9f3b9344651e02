import { ChildProcess, spawn } from 'node:child_process';
import { credentials, Metadata, ServiceError, status } from '@grpc/grpc-js';
import { CompactResponse, KVClient } from '../../gen/cairn/kv/v1/kv';
import { CAIRN_MAIN, ProcessCluster, waitFor } from '../support/process-cluster';

jest.setTimeout(120_000);

/** A `cairn watch` process whose stdout lines are collected as they come. */
class WatchProcess {
  readonly lines: string[] = [];
  stderr = '';
  readonly child: ChildProcess;
  readonly exited: Promise<number | null>;
  private partial = '';

  constructor(args: string[]) {
    this.child = spawn(process.execPath, [CAIRN_MAIN, 'watch', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child.stdout!.on('data', (chunk: Buffer) => {
      const text = this.partial + chunk.toString();
      const parts = text.split('\n');
      this.partial = parts.pop()!;
      this.lines.push(...parts);
    });
    this.child.stderr!.on('data', (chunk: Buffer) => (this.stderr += chunk.toString()));
    this.exited = new Promise((resolve) => this.child.once('exit', (code) => resolve(code)));
  }
}

/** `PUT w/k3 v8 (revision 12)` -> its revision. */
function revisionOf(line: string): number {
  const match = /\(revision (\d+)\)$/.exec(line);
  if (!match) throw new Error(`not an event line: ${JSON.stringify(line)}`);
  return Number(match[1]);
}

describe('watch across real processes', () => {
  let cluster: ProcessCluster;
  afterAll(() => cluster?.stop());

  test("a watch on a follower, and one whose first endpoint is the leader, see every acknowledged write once, in revision order, through the leader's kill -9; every node replays the same events", async () => {
    cluster = await ProcessCluster.start(3);
    const leader = await cluster.waitForLeader();
    const follower = cluster.nodes.find((n) => n.id !== leader)!;
    const others = cluster.nodes.filter((n) => n.id !== follower.id && n.id !== leader);
    const addr = (ids: number[]) => ids.map((id) => cluster.node(id).clientAddr).join(',');
    const onFollower = new WatchProcess(['w/', '--prefix', '--rev', '1', '--endpoints', addr([follower.id])]);
    const viaLeader = new WatchProcess(['w/', '--prefix', '--rev', '1', '--endpoints', addr([leader, follower.id, ...others.map((n) => n.id)])]);

    // The writer: bounded in count; the leader dies a third of the way in.
    const client = cluster.client(cluster.nodes.map((n) => n.id), undefined, 10_000);
    const acknowledged = new Map<number, string>();
    const failed: string[] = [];
    const WRITES = 60;
    for (let i = 1; i <= WRITES; i++) {
      if (i === 20) await cluster.kill(leader, 'SIGKILL');
      const key = `w/k${i % 5}`;
      const value = `v${i}`;
      try {
        const response = await client.put(Buffer.from(key), Buffer.from(value));
        acknowledged.set(response.header!.revision, `PUT ${key} ${value}`);
      } catch {
        failed.push(`PUT ${key} ${value}`);
      }
    }
    const lastAcked = Math.max(...acknowledged.keys());
    expect(acknowledged.size).toBeGreaterThan(WRITES / 2);

    for (const watcher of [onFollower, viaLeader]) {
      await waitFor('the watcher to print the last acknowledged write', () => watcher.lines.some((l) => revisionOf(l) === lastAcked), 30_000);
      const revisions = watcher.lines.map(revisionOf);
      // Revision order, no duplicate: each put is its own revision.
      expect(revisions).toEqual([...revisions].sort((a, b) => a - b));
      expect(new Set(revisions).size).toBe(revisions.length);
      // Every acknowledged write, exactly as acknowledged; anything else only a write whose answer was lost.
      const seen = new Map(watcher.lines.map((l) => [revisionOf(l), l.replace(/ \(revision \d+\)$/, '')]));
      for (const [revision, write] of acknowledged) expect(seen.get(revision)).toBe(write);
      for (const [revision, write] of seen) if (!acknowledged.has(revision)) expect(failed).toContain(write);
      // No gap: the revisions are 1..last with nothing missing (only w/ keys are written here).
      expect(revisions).toEqual(Array.from({ length: revisions.length }, (_, i) => i + 1));
    }
    // The watcher that started at the leader moved to another endpoint and said so.
    expect(viaLeader.stderr).toContain('resuming from revision');

    // SIGINT ends a watch with exit 0.
    onFollower.child.kill('SIGINT');
    viaLeader.child.kill('SIGINT');
    expect(await onFollower.exited).toBe(0);
    expect(await viaLeader.exited).toBe(0);

    // Every node, the restarted old leader too, replays the same events from revision 1.
    cluster.restart(leader);
    await cluster.waitForLeader(cluster.nodes.map((n) => n.id));
    const count = onFollower.lines.length;
    for (const node of cluster.nodes) {
      const replay = await waitFor(`node ${node.id} to have applied every write`, async () => {
        const result = await cluster.cli(['watch', 'w/', '--prefix', '--rev', '1', '--max-events', String(count)], [node.id]);
        return result.code === 0 ? result : undefined;
      });
      expect(replay.stdout.trimEnd().split('\n')).toEqual(onFollower.lines);
    }
  });

  test('--auto-compaction-revisions: the leader compacts, a watch from a compacted revision is refused as compacted; KV.Compact refuses a future or compacted revision', async () => {
    await cluster?.stop();
    cluster = await ProcessCluster.start(3, ['--auto-compaction-revisions', '10']);
    await cluster.waitForLeader();
    const client = cluster.client();
    for (let i = 1; i <= 30; i++) await client.put(Buffer.from(`a/${i % 3}`), Buffer.from(`${i}`));
    const refused = await waitFor('the leader to compact past revision 1', async () => {
      const result = await cluster.cli(['watch', 'a/', '--prefix', '--rev', '1', '--max-events', '1'], [1]);
      return result.code === 1 ? result : undefined;
    });
    expect(refused.stderr).toContain('compacted');
    // The last 10 revisions are still there.
    const kept = await cluster.cli(['watch', 'a/', '--prefix', '--rev', '21', '--max-events', '10'], [2]);
    expect(kept.code).toBe(0);
    expect(kept.stdout.trimEnd().split('\n').map(revisionOf)).toEqual(Array.from({ length: 10 }, (_, i) => 21 + i));

    const kv = new KVClient(cluster.node(3).clientAddr, credentials.createInsecure());
    const compact = (revision: number) =>
      new Promise<CompactResponse | ServiceError>((resolve) => kv.compact({ revision }, new Metadata(), { deadline: Date.now() + 10_000 }, (err, res) => resolve(err ?? res!)));
    const future = (await compact(1_000_000)) as ServiceError;
    expect(future.code).toBe(status.INVALID_ARGUMENT);
    expect(future.metadata.get('cairn-error-code')).toEqual(['FUTURE_REVISION']);
    const below = (await compact(1)) as ServiceError;
    expect(below.metadata.get('cairn-error-code')).toEqual(['COMPACTED']);
    const done = (await compact(25)) as CompactResponse;
    expect(done.compactRevision).toBe(25);
    kv.close();
  });

  test('with auth on, a watch needs read on its range; a bad key is refused with the reason', async () => {
    await cluster?.stop();
    cluster = await ProcessCluster.start(1);
    await cluster.waitForLeader();
    const run = async (...args: string[]) => {
      const result = await cluster.cli(args);
      return result;
    };
    for (const step of [
      ['user', 'add', 'root', '--password', 'rootpw'],
      ['role', 'add', 'app'],
      ['role', 'grant-permission', 'app', 'read', '--prefix', 'app/'],
      ['user', 'add', 'alice', '--password', 'alicepw'],
      ['user', 'grant-role', 'alice', 'app'],
      ['auth', 'enable'],
      ['put', 'app/x', '1', '--user', 'root:rootpw'],
      ['put', 'secret/y', '2', '--user', 'root:rootpw'],
    ]) {
      expect(await run(...step)).toMatchObject({ code: 0 });
    }
    const allowed = await run('watch', 'app/', '--prefix', '--rev', '1', '--max-events', '1', '--user', 'alice:alicepw');
    expect(allowed).toMatchObject({ code: 0, stdout: 'PUT app/x 1 (revision 1)\n' });
    const denied = await run('watch', 'secret/', '--prefix', '--rev', '1', '--max-events', '1', '--user', 'alice:alicepw');
    expect(denied.code).toBe(1);
    expect(denied.stderr).toContain('PERMISSION_DENIED');
    const anonymous = await run('watch', 'app/', '--prefix', '--rev', '1', '--max-events', '1');
    expect(anonymous.code).toBe(1);
    expect(anonymous.stderr).toContain('UNAUTHENTICATED');
    const empty = await run('watch', '', '--max-events', '1', '--user', 'root:rootpw');
    expect(empty.code).toBe(1);
    expect(empty.stderr).toContain('INVALID_ARGUMENT: key is empty');
  });
});
