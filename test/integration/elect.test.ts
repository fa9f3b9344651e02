import { ChildProcess, spawn } from 'node:child_process';
import { CairnClient } from '../../src/cli/client';
import { CAIRN_MAIN, ProcessCluster, waitFor } from '../support/process-cluster';

jest.setTimeout(90_000);

const TTL_SECONDS = 2;
const ELECTION = 'the-election';
/** A leader line: `election/NAME/<lease-hex><TAB>PROPOSAL`. */
const LEADER_LINE = new RegExp(`^election/${ELECTION}/([0-9a-f]+)\\t(c\\d)$`);

/** A running `cairn elect`, its stdout and stderr lines as they come. */
interface Elector {
  name: string;
  child: ChildProcess;
  stdout: string[];
  stderr: string;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

function startElector(name: string, args: string[], endpoints: string): Elector {
  const child = spawn(process.execPath, [CAIRN_MAIN, 'elect', ...args, '--endpoints', endpoints], { stdio: ['ignore', 'pipe', 'pipe'] });
  const elector: Elector = { name, child, stdout: [], stderr: '', exit: new Promise((done) => child.once('exit', (code, signal) => done({ code, signal }))) };
  let partial = '';
  child.stdout!.on('data', (chunk: Buffer) => {
    const lines = (partial + chunk.toString()).split('\n');
    partial = lines.pop()!;
    elector.stdout.push(...lines);
  });
  child.stderr!.on('data', (chunk: Buffer) => (elector.stderr += chunk.toString()));
  return elector;
}

function runCli(args: string[]): Promise<{ code: number | null; stderr: string }> {
  const elector = startElector('cli', args, '127.0.0.1:1');
  return elector.exit.then(({ code }) => ({ code, stderr: elector.stderr }));
}

describe('cairn elect: three campaigners and a --listen observer on real processes', () => {
  let cluster: ProcessCluster;
  let client: CairnClient;
  let endpoints: string;
  const electors: Elector[] = [];
  beforeAll(async () => {
    cluster = await ProcessCluster.start(3);
    await cluster.waitForLeader();
    endpoints = cluster.nodes.map((n) => n.clientAddr).join(',');
    client = cluster.client(undefined, undefined, 3000);
  });
  afterAll(async () => {
    for (const e of electors) if (e.child.exitCode === null && e.child.signalCode === null) e.child.kill('SIGKILL');
    await cluster.stop();
  });

  test('one leader at a time; one new leader per expiry after kill -9; SIGTERM resigns at once; the observer prints each leader in order', async () => {
    const observer = startElector('observer', [ELECTION, '--listen'], endpoints);
    electors.push(observer);
    const campaign = (name: string) => startElector(name, [ELECTION, name, '--ttl', String(TTL_SECONDS)], endpoints);
    const campaigners = [campaign('c0')];
    electors.push(...campaigners);
    // c0 leads and the observer has shown it before the others campaign: their keys reach the
    // observer as watch events, and it must not take a new candidate for a new leader.
    await waitFor('the observer to show c0 leading', () => observer.stdout.length >= 1, 30_000);
    expect(observer.stdout).toEqual([expect.stringMatching(LEADER_LINE)]);
    campaigners.push(campaign('c1'), campaign('c2'));
    electors.push(...campaigners.slice(1));
    const leaders: { name: string; line: string; lease: string }[] = [];
    const elected = () => campaigners.filter((c) => c.stdout.some((line) => LEADER_LINE.test(line)));

    /** Waits for leader number `n`, then checks for two TTLs that no other campaigner leads meanwhile. */
    const nextLeader = async (n: number) => {
      const now = await waitFor(`leader number ${n}`, () => (elected().length >= n ? elected() : undefined), 30_000);
      expect(now).toHaveLength(n);
      const leader = now.find((c) => !leaders.some((l) => l.name === c.name))!;
      const line = leader.stdout.find((l) => LEADER_LINE.test(l))!;
      expect(line).toMatch(new RegExp(`\\t${leader.name}$`));
      leaders.push({ name: leader.name, line, lease: LEADER_LINE.exec(line)![1]! });
      const heldSince = Date.now();
      await waitFor('the leader to lead for two TTLs', () => Date.now() - heldSince > 2 * TTL_SECONDS * 1000, 30_000);
      expect(elected()).toHaveLength(n);
      return leader;
    };

    const first = await nextLeader(1);
    first.child.kill('SIGKILL');
    const second = await nextLeader(2);

    // SIGTERM: the leader resigns (revokes its lease) before it exits 0, so its key is gone
    // at once, not a TTL later.
    second.child.kill('SIGTERM');
    expect(await second.exit).toEqual({ code: 0, signal: null });
    expect((await client.get(Buffer.from(`election/${ELECTION}/${leaders[1]!.lease}`))).kv).toBeUndefined();
    const third = await nextLeader(3);

    // A leader whose lease is revoked under it says so and exits 3.
    await client.leaseCall((c) => c.leaseRevoke, { id: parseInt(leaders[2]!.lease, 16) });
    expect(await third.exit).toEqual({ code: 3, signal: null });
    expect(third.stderr).toMatch(new RegExp(`cairn elect: no longer the leader of ${ELECTION}: .*(revoked|deleted)`));

    await waitFor('the observer to print three leaders', () => observer.stdout.length >= 3, 10_000);
    expect(observer.stdout).toEqual(leaders.map((l) => l.line));
    observer.child.kill('SIGINT');
    expect(await observer.exit).toEqual({ code: 0, signal: null });
    expect(observer.stdout).toEqual(leaders.map((l) => l.line));
  });
});

describe('cairn elect: wrong usage exits 2 with a clear message', () => {
  test.each([
    [[], 'usage: elect NAME PROPOSAL [--ttl SECONDS] | elect NAME --listen'],
    [['name'], 'elect NAME needs a PROPOSAL to campaign with (or --listen to observe)'],
    [['name', 'proposal', '--listen'], 'elect --listen observes and takes no PROPOSAL'],
    [['name', '--listen', '--ttl', '5'], '--ttl is for a campaign, not --listen'],
    [['name', 'proposal', '--ttl', '0'], '--ttl must be a positive integer of seconds'],
    [['name', 'proposal', '--ttl', '2147484'], '--ttl must be at most 2147483 seconds (MAX_CLI_LEASE_TTL_SECONDS'],
    [['', 'proposal'], 'NAME must not be empty'],
  ])('cairn elect %j', async (args, message) => {
    const { code, stderr } = await runCli(args);
    expect(code).toBe(2);
    expect(stderr).toContain(message);
  });
});
