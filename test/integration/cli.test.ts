import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { CAIRN_MAIN, ProcessCluster } from '../support/process-cluster';

jest.setTimeout(60_000);

const execFileAsync = promisify(execFile);

/** Runs the built `cairn` command; resolves with its output and exit code, never rejects. */
async function cairn(args: string[], input?: string): Promise<{ stdout: string; stderr: string; code: number }> {
  const child = execFileAsync(process.execPath, [CAIRN_MAIN, ...args], { timeout: 30_000 });
  if (input !== undefined) {
    child.child.stdin!.end(input);
  }
  try {
    const { stdout, stderr } = await child;
    return { stdout, stderr, code: 0 };
  } catch (err) {
    const e = err as { stdout: string; stderr: string; code: number };
    return { stdout: e.stdout, stderr: e.stderr, code: e.code };
  }
}

describe('the cairn command against real nodes', () => {
  let cluster: ProcessCluster;
  let endpoints: string;
  beforeAll(async () => {
    cluster = await ProcessCluster.start(3);
    await cluster.waitForLeader();
    endpoints = cluster.nodes.map((n) => n.clientAddr).join(',');
  });
  afterAll(() => cluster.stop());

  test('put, get, list, del, status and members print what the README says', async () => {
    const e = ['--endpoints', endpoints];
    expect(await cairn(['put', 'hello', 'world', ...e])).toMatchObject({ code: 0, stdout: expect.stringMatching(/^OK \(revision \d+\)/) });
    expect(await cairn(['get', 'hello', ...e])).toMatchObject({ code: 0, stdout: 'world\n' });
    await cairn(['put', 'app/color', 'blue', ...e]);
    await cairn(['put', 'app/size', 'large', ...e]);
    expect((await cairn(['list', 'app/', ...e])).stdout).toBe('app/color\tblue\napp/size\tlarge\n');
    expect((await cairn(['list', 'app/', '--limit', '1', ...e])).stdout).toContain('(more keys follow');
    expect(await cairn(['has', 'hello', ...e])).toMatchObject({ code: 0, stdout: 'true\n' });
    expect(await cairn(['del', 'hello', ...e])).toMatchObject({ code: 0, stdout: 'deleted hello\n' });
    expect(await cairn(['has', 'hello', ...e])).toMatchObject({ code: 0, stdout: 'false\n' });
    expect(await cairn(['get', 'hello', ...e])).toMatchObject({ code: 1, stdout: '(not found: hello)\n' });
    const status = await cairn(['status', ...e]);
    expect(status.stdout.match(/leader /g)).toHaveLength(1);
    expect((await cairn(['members', ...e])).stdout.split('\n').filter((l) => l.endsWith('yes'))).toHaveLength(1);
    // A follower alone, serializable.
    const leader = await cluster.waitForLeader();
    const follower = cluster.nodes.find((n) => n.id !== leader)!;
    expect(await cairn(['get', 'app/color', '--consistency', 'serializable', '--endpoints', follower.clientAddr])).toMatchObject({ stdout: 'blue\n' });
  });

  test('the client follows the leader: after a follower answers, requests go to the leader', async () => {
    const leader = await cluster.waitForLeader();
    const follower = cluster.nodes.find((n) => n.id !== leader)!;
    const client = cluster.client([follower.id, leader]);
    const first = await client.put(Buffer.from('follow'), Buffer.from('1'));
    expect(first.header?.memberId).toBe(follower.id);
    const second = await client.put(Buffer.from('follow'), Buffer.from('2'));
    expect(second.header?.memberId).toBe(leader);
  });

  test('errors are one clear line and a non-zero exit code', async () => {
    const empty = await cairn(['put', '', 'x', '--endpoints', endpoints]);
    expect(empty.code).toBe(1);
    expect(empty.stderr).toMatch(/^cairn: INVALID_ARGUMENT: key is empty/);
    const usage = await cairn(['put', 'only-key', '--endpoints', endpoints]);
    expect(usage).toMatchObject({ code: 2, stderr: expect.stringContaining('usage: put KEY VALUE') });
    const typo = await cairn(['get', 'k', '--consistancy', 'serializable', '--endpoints', endpoints]);
    expect(typo).toMatchObject({ code: 2, stderr: expect.stringContaining('unknown flag --consistancy') });
    expect(await cairn(['get', 'k', '--endpoints', ''])).toMatchObject({ code: 2, stderr: 'cairn: --endpoints names no endpoint\n' });
    const nobody = await cairn(['get', 'k', '--endpoints', '127.0.0.1:1', '--timeout-ms', '200']);
    expect(nobody.code).toBe(1);
    expect(nobody.stderr).toMatch(/cannot reach any endpoint|UNAVAILABLE/);
  });

  test('the shell takes the verbs and the text-protocol ones, in any case', async () => {
    const script = 'SET motd "hello there"\nGET motd\nHas motd\nhas nothing\nLIST mo\ndelete motd\nget motd\nexit\n';
    const { stdout, code } = await cairn(['shell', '--endpoints', endpoints], script);
    expect(code).toBe(0);
    expect(stdout).toContain('hello there');
    expect(stdout).toMatch(/true[\s\S]*false/);
    expect(stdout).toContain('motd\thello there');
    expect(stdout).toContain('deleted motd');
    expect(stdout).toContain('(not found: motd)');
  });
});
