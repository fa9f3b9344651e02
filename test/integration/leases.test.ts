import { ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { credentials } from '@grpc/grpc-js';
import { LeaseClient, LeaseKeepAliveResponse } from '../../gen/cairn/kv/v1/kv';
import { CairnClient } from '../../src/cli/client';
import { CAIRN_MAIN, ProcessCluster, waitFor } from '../support/process-cluster';

jest.setTimeout(90_000);

const execFileAsync = promisify(execFile);

async function cairn(args: string[]): Promise<{ stdout: string; stderr: string; code: number }> {
  try {
    const { stdout, stderr } = await execFileAsync(process.execPath, [CAIRN_MAIN, ...args], { timeout: 30_000 });
    return { stdout, stderr, code: 0 };
  } catch (err) {
    const e = err as { stdout: string; stderr: string; code: number };
    return { stdout: e.stdout, stderr: e.stderr, code: e.code };
  }
}

const exists = async (client: CairnClient, key: string) => (await client.get(Buffer.from(key))).kv !== undefined;

/** Renews lease `id` `rounds` times, `everyMs` apart (bounded), checking `key` is still there after each. */
async function keepAliveWhileChecking(client: CairnClient, id: number, key: string, rounds: number, everyMs: number): Promise<void> {
  for (let i = 0; i < rounds; i++) {
    const renewed = await client.leaseCall((c) => c.leaseRenew, { id });
    expect(renewed.ttl).toBeGreaterThan(0);
    expect(await exists(client, key)).toBe(true);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

describe('leases on real processes', () => {
  let cluster: ProcessCluster;
  let endpoints: string;
  let client: CairnClient;
  beforeAll(async () => {
    cluster = await ProcessCluster.start(3);
    await cluster.waitForLeader();
    endpoints = cluster.nodes.map((n) => n.clientAddr).join(',');
    client = cluster.client(undefined, undefined, 3000);
  });
  afterAll(() => cluster.stop());

  test('CLI: grant TTL 6 prints a hex id; a key put with it through a follower disappears once no one keeps the lease alive', async () => {
    const leader = await cluster.waitForLeader();
    const follower = cluster.nodes.find((n) => n.id !== leader)!.clientAddr;
    const granted = await cairn(['lease', 'grant', '6', '--endpoints', follower]);
    // 6 s, not 2: the list and time-to-live below are CLI processes of about 1 s each on a loaded CI machine, and must run before expiry.
    expect(granted).toMatchObject({ code: 0, stdout: expect.stringMatching(/^lease [0-9a-f]+ granted with TTL\(6s\)\n$/) });
    const id = granted.stdout.split(' ')[1]!;
    expect(await cairn(['put', 'session/a', 'alive', '--lease', id, '--endpoints', follower])).toMatchObject({ code: 0 });
    expect((await cairn(['lease', 'list', '--endpoints', endpoints])).stdout).toContain(id);
    expect((await cairn(['lease', 'time-to-live', id, '--keys', '--endpoints', follower])).stdout).toMatch(/granted with TTL\(6s\), remaining\(\d+s\), attached keys \[session\/a\]/);
    await waitFor('the lease`s key to be deleted at expiry', async () => !(await exists(client, 'session/a')), 20_000);
    expect(await cairn(['lease', 'keep-alive', id, '--once', '--endpoints', endpoints])).toMatchObject({ code: 1, stdout: `lease ${id} expired or revoked\n` });
    const refused = await cairn(['put', 'x', 'y', '--lease', id, '--endpoints', endpoints]);
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toMatch(/does not exist/);
  });

  test('kept alive, the key stays well past the TTL; revoke deletes it at once', async () => {
    const { id } = await client.leaseCall((c) => c.leaseGrant, { ttl: 2, id: 0 });
    await client.put(Buffer.from('kept'), Buffer.from('v'), false, id);
    await keepAliveWhileChecking(client, id, 'kept', 12, 500); // 6 s: three TTLs
    expect(await cairn(['lease', 'keep-alive', id.toString(16), '--once', '--endpoints', endpoints])).toMatchObject({ code: 0, stdout: `lease ${id.toString(16)} keepalived with TTL(2)\n` });
    expect(await cairn(['lease', 'revoke', id.toString(16), '--endpoints', endpoints])).toMatchObject({ code: 0, stdout: `lease ${id.toString(16)} revoked (1 keys deleted)\n` });
    expect(await exists(client, 'kept')).toBe(false);
  });

  test('the LeaseKeepAlive stream on a follower: each request answered with the TTL (forwarded to the leader), 0 for an unknown lease', async () => {
    const { id } = await client.leaseCall((c) => c.leaseGrant, { ttl: 5, id: 0 });
    const leader = await cluster.waitForLeader();
    const follower = cluster.nodes.find((n) => n.id !== leader)!;
    const leases = new LeaseClient(follower.clientAddr, credentials.createInsecure());
    try {
      const stream = leases.leaseKeepAlive();
      const answers: LeaseKeepAliveResponse[] = [];
      stream.on('data', (answer: LeaseKeepAliveResponse) => answers.push(answer));
      stream.write({ id });
      const unknown = id === 1 ? 2 : 1;
      stream.write({ id: unknown });
      await waitFor('two keep-alive answers', () => answers.length >= 2, 10_000);
      expect(answers.map((a) => [a.id, a.ttl])).toEqual([
        [id, 5],
        [unknown, 0],
      ]);
      expect(answers[0]!.header?.memberId).toBe(leader);
      stream.end();
    } finally {
      leases.close();
    }
    await client.leaseCall((c) => c.leaseRevoke, { id });
  });

  test('kill -9 of the leader while a lease is kept alive: the key survives; it expires only after keep-alives stop', async () => {
    const { id } = await client.leaseCall((c) => c.leaseGrant, { ttl: 3, id: 0 });
    await client.put(Buffer.from('survivor'), Buffer.from('v'), false, id);
    await keepAliveWhileChecking(client, id, 'survivor', 3, 500);
    const leader = await cluster.waitForLeader();
    await cluster.kill(leader, 'SIGKILL');
    const rest = cluster.nodes.filter((n) => n.id !== leader).map((n) => n.id);
    await cluster.waitForLeader(rest);
    const survivors = cluster.client(rest, undefined, 3000);
    await keepAliveWhileChecking(survivors, id, 'survivor', 10, 500); // 5 s under the new leader
    cluster.restart(leader);
    await waitFor('the lease`s key to be deleted once keep-alives stopped', async () => !(await exists(survivors, 'survivor')), 30_000);
  });
});

describe('cairn lock: 10 contending clients, kill -9 of the holder', () => {
  let cluster: ProcessCluster;
  const lockers: ChildProcess[] = [];
  let root: string;
  beforeAll(async () => {
    cluster = await ProcessCluster.start(3);
    await cluster.waitForLeader();
    root = mkdtempSync(join(tmpdir(), 'cairn-lock-'));
  });
  afterAll(async () => {
    for (const locker of lockers) if (locker.exitCode === null && locker.signalCode === null) killGroup(locker);
    await cluster.stop();
    rmSync(root, { recursive: true, force: true });
  });

  /** Kills a locker and the command it runs: each locker leads its own process group. */
  function killGroup(child: ChildProcess): void {
    try {
      process.kill(-child.pid!, 'SIGKILL');
    } catch {
      // gone already
    }
  }

  test('the lock is held by one client at a time and handed over exactly once per expiry', async () => {
    const CLIENTS = 10;
    const HANDOVERS = 3;
    const TTL_SECONDS = 2;
    const endpoints = cluster.nodes.map((n) => n.clientAddr).join(',');
    const starts = join(root, 'starts');
    writeFileSync(starts, '');
    // The command records that it holds the lock, then runs (bounded) until killed.
    const holder = `require('fs').appendFileSync(${JSON.stringify(starts)}, process.env.LOCKER + '\\n'); setTimeout(() => {}, 60000);`;
    for (let i = 0; i < CLIENTS; i++) {
      const child = spawn(process.execPath, [CAIRN_MAIN, 'lock', 'the-lock', '--ttl', String(TTL_SECONDS), '--endpoints', endpoints, '--', process.execPath, '-e', holder], {
        detached: true,
        stdio: 'ignore',
        env: { ...process.env, LOCKER: String(i) },
      });
      lockers.push(child);
    }
    const holders = () => readFileSync(starts, 'utf8').split('\n').filter(Boolean).map(Number);
    for (let handover = 0; handover <= HANDOVERS; handover++) {
      const current = await waitFor(`holder number ${handover + 1}`, () => (holders().length >= handover + 1 ? holders() : undefined), 30_000);
      expect(current).toHaveLength(handover + 1);
      // Held for more than two TTLs (renewed meanwhile): still no second holder.
      const heldSince = Date.now();
      await waitFor('the holder to hold for two TTLs', () => Date.now() - heldSince > 2 * TTL_SECONDS * 1000, 30_000);
      expect(holders()).toHaveLength(handover + 1);
      if (handover < HANDOVERS) killGroup(lockers[current[handover]!]!);
    }
    expect(new Set(holders()).size).toBe(HANDOVERS + 1);
  });
});
