import { ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, Server, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { CAIRN_MAIN, freePort, ProcessCluster, waitFor } from '../support/process-cluster';

jest.setTimeout(60_000);

const execFileAsync = promisify(execFile);

/** Runs the built `cairn` command; resolves with its output and exit code, never rejects. */
async function cairn(args: string[], input?: string): Promise<{ stdout: string; stderr: string; code: number }> {
  const child = execFileAsync(process.execPath, [CAIRN_MAIN, ...args], { timeout: 30_000, maxBuffer: 16 << 20 });
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
    expect(await cairn(['get', 'hello', ...e])).toMatchObject({ code: 0, stdout: 'world' });
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
    expect(await cairn(['get', 'app/color', '--consistency', 'serializable', '--endpoints', follower.clientAddr])).toMatchObject({ stdout: 'blue' });
  });

  test('cas swaps only from the expected value and says what the key held; txn runs a branch from stdin through a follower', async () => {
    const leader = await cluster.waitForLeader();
    const follower = cluster.nodes.find((n) => n.id !== leader)!.clientAddr;
    const e = ['--endpoints', follower];
    expect((await cairn(['put', 'lock', 'free', ...e])).code).toBe(0);
    expect(await cairn(['cas', 'lock', 'free', 'held-by-a', ...e])).toMatchObject({ code: 0, stdout: expect.stringMatching(/^OK \(revision \d+\)\n$/) });
    expect(await cairn(['cas', 'lock', 'free', 'held-by-b', ...e])).toMatchObject({ code: 1, stdout: 'cas: not swapped: lock is "held-by-a", not "free"\n' });
    expect(await cairn(['cas', 'no-such-key', 'x', 'y', ...e])).toMatchObject({ code: 1, stdout: 'cas: not swapped: no-such-key does not exist\n' });
    expect((await cairn(['get', 'lock', ...e])).stdout).toBe('held-by-a');

    const script = ['value("lock") = "held-by-a"', 'version("txn/n") = "0"', '', 'put txn/n 1', 'put "txn/two words" "a b"', 'get txn/ --prefix', '', 'get lock', ''].join('\n');
    const ran = await cairn(['txn', ...e], script);
    expect(ran).toMatchObject({ code: 0, stderr: '' });
    expect(ran.stdout.split('\n')).toEqual([expect.stringMatching(/^SUCCESS \(revision \d+\)$/), 'OK', 'OK', 'txn/n\t1', 'txn/two words\ta b', '']);
    const again = await cairn(['txn', ...e], script);
    expect(again.stdout.split('\n')).toEqual([expect.stringMatching(/^FAILURE \(revision \d+\)$/), 'lock\theld-by-a', '']);
    const bad = await cairn(['txn', ...e], 'value(lock) = "x"\n');
    expect(bad).toMatchObject({ code: 2, stderr: expect.stringContaining('is not a compare: write TARGET("KEY") OP "VALUE"') });
    const shell = await cairn(['shell', ...e], 'CAS lock held-by-a free\nGET lock\n');
    expect(shell.stdout).toMatch(/OK \(revision \d+\)\nfree\n/);
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
    // A budget well beyond the client's retry rounds (MAX_ROUNDS x RETRY_DELAY_MS, about 1 s), so
    // the rounds end it, not the deadline: with 200 ms a loaded machine ran out of budget first
    // and the message named the deadline instead (seen on Node 26 in CI).
    const nobody = await cairn(['get', 'k', '--endpoints', '127.0.0.1:1', '--timeout-ms', '10000']);
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
  test('-e is --endpoints; a flag another verb takes is an error here; an endpoint without a port is refused', async () => {
    const leader = await cluster.waitForLeader();
    const one = cluster.node(leader).clientAddr;
    expect(await cairn(['put', 'short', 'flag', '-e', one])).toMatchObject({ code: 0 });
    expect(await cairn(['get', 'short', '-e', one])).toMatchObject({ code: 0, stdout: 'flag' });
    expect(await cairn(['get', 'short', '--limit', '5', '-e', one])).toMatchObject({
      code: 2,
      stderr: 'cairn: --limit does not apply to get; get takes --consistency, --endpoints, --timeout-ms, --user, --cacert, --cert, --key\n',
    });
    expect(await cairn(['put', 'short', 'x', '--consistency', 'serializable', '-e', one])).toMatchObject({ code: 2, stderr: expect.stringContaining('--consistency does not apply to put') });
    const bare = await cairn(['get', 'short', '--endpoints', '127.0.0.1']);
    expect(bare).toMatchObject({ code: 2, stderr: expect.stringContaining('endpoint "127.0.0.1" is not HOST:PORT') });
  });

  test('a peer port given as an endpoint is named as one; a client port after it still serves', async () => {
    const node = cluster.node(1);
    const alone = await cairn(['get', 'short', '-e', node.peerAddr]);
    expect(alone.code).toBe(1);
    expect(alone.stderr).toContain(`${node.peerAddr} does not serve cairn's client API (UNIMPLEMENTED /cairn.kv.v1.KV/Get): is it a peer port?`);
    expect(await cairn(['get', 'short', '-e', `${node.peerAddr},${node.clientAddr}`])).toMatchObject({ code: 0, stdout: 'flag' });
  });

  test('put takes its value from a file or from stdin, beyond the size one argument may have', async () => {
    // Linux caps one argument at 128 KiB (MAX_ARG_STRLEN): this value could not be an argument.
    const value = 'v'.repeat(300_000);
    const dir = mkdtempSync(join(tmpdir(), 'cairn-cli-'));
    try {
      const file = join(dir, 'value');
      writeFileSync(file, value);
      expect(await cairn(['put', 'from-file', '--from-file', file, '-e', endpoints])).toMatchObject({ code: 0, stdout: expect.stringMatching(/^OK/) });
      expect((await cairn(['get', 'from-file', '-e', endpoints])).stdout).toBe(value);
      expect(await cairn(['put', 'from-stdin', '-', '-e', endpoints], value)).toMatchObject({ code: 0, stdout: expect.stringMatching(/^OK/) });
      expect((await cairn(['get', 'from-stdin', '-e', endpoints])).stdout).toBe(value);
      expect(await cairn(['put', 'both', 'v', '--from-file', file, '-e', endpoints])).toMatchObject({ code: 2, stderr: expect.stringContaining('give the value once') });
      expect(await cairn(['put', 'nofile', '--from-file', join(dir, 'missing'), '-e', endpoints])).toMatchObject({ code: 1, stderr: expect.stringContaining('no such file') });
      expect(await cairn(['put', 'adir', '--from-file', dir, '-e', endpoints])).toMatchObject({ code: 1, stderr: `cairn: cannot read --from-file ${dir}: not a regular file\n` });

      // Binary values round-trip byte for byte: get writes the stored bytes, no newline when piped.
      const binary = Buffer.from(Array.from({ length: 3000 }, (_, i) => (i * 151 + 7) % 256));
      writeFileSync(file, binary);
      expect(await cairn(['put', 'binary', '--from-file', file, '-e', endpoints])).toMatchObject({ code: 0 });
      const { stdout } = await execFileAsync(process.execPath, [CAIRN_MAIN, 'get', 'binary', '-e', endpoints], { encoding: 'buffer', timeout: 30_000 });
      expect(Buffer.compare(stdout, binary)).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('the shell names the verb the user typed, says when a quote is open, and a failing script exits 1', async () => {
    const script = 'SET onlykey\nSET motd "unterminated\nset fine yes\nget fine --limit 3\nGET fine\n';
    const { stdout, stderr, code } = await cairn(['shell', '-e', endpoints], script);
    expect(stderr).toContain('error (line 1): usage: SET KEY VALUE');
    expect(stderr).not.toContain('usage: put');
    expect(stderr).toContain('error (line 2): unterminated quote: the " at column 10 is never closed');
    expect(stderr).toContain('error (line 4): --limit does not apply to get');
    // The lines that could run did.
    expect(stdout).toMatch(/OK \(revision \d+\)\nyes\n/);
    expect(code).toBe(1);
  });

  test('status with one node down exits 0 and says which is down', async () => {
    const leader = await cluster.waitForLeader();
    const follower = cluster.nodes.find((n) => n.id !== leader)!;
    await cluster.kill(follower.id, 'SIGKILL');
    const status = await cairn(['status', '-e', endpoints]);
    expect(status.stdout).toContain(`${follower.clientAddr.padEnd(22)} down: refused the connection\n`);
    expect(status.stdout).toMatch(new RegExp(`cluster serving: node ${leader} leads term \\d+; 2 of 3 endpoints answered; down: ${follower.clientAddr}\\n`));
    expect(status.code).toBe(0);
  });
});

describe('the cairn command when nodes are down or do not answer', () => {
  test('with two of three nodes down, put reports the survivor\'s NO_LEADER, not the last refusal; status exits 1', async () => {
    // Node 2 runs alone: its peers never start, so it knows no leader; 1 and 3 refuse.
    const cluster = await ProcessCluster.prepare(3);
    try {
      cluster.spawn(cluster.node(2));
      const [one, two, three] = cluster.nodes.map((n) => n.clientAddr) as [string, string, string];
      await waitFor('node 2 to answer', () => cluster.status(2));
      const put = await cairn(['put', 'k', 'v', '-e', `${one},${two},${three}`]);
      expect(put.code).toBe(1);
      expect(put.stderr).toMatch(new RegExp(`^cairn: UNAVAILABLE from ${two}: no leader is known`));
      // Every refusal is named, with no stray "." after the port.
      expect(put.stderr).toContain(`; ${one} and ${three} refused the connection`);
      const status = await cairn(['status', '-e', `${one},${two},${three}`]);
      expect(status.stdout).toContain(`${one.padEnd(22)} down: refused the connection\n`);
      expect(status.stdout).toContain('cluster NOT serving: no leader known; 1 of 3 endpoints answered');
      expect(status.code).toBe(1);
    } finally {
      await cluster.stop();
    }
  });

  describe('an endpoint that accepts TCP and never answers', () => {
    let server: Server;
    let hung: string;
    const sockets = new Set<Socket>();
    beforeAll(async () => {
      server = createServer((socket) => {
        sockets.add(socket);
        socket.on('close', () => sockets.delete(socket));
      });
      await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
      hung = `127.0.0.1:${(server.address() as { port: number }).port}`;
    });
    afterAll(async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise((done) => server.close(done));
    });

    test('the command fails within --timeout-ms (plus a generous margin) with a clean message', async () => {
      const timeoutMs = 2000;
      const started = Date.now();
      const result = await cairn(['get', 'k', '-e', hung, '--timeout-ms', String(timeoutMs)]);
      const elapsedMs = Date.now() - started;
      expect(result).toMatchObject({ code: 1, stderr: `cairn: no answer from ${hung} within ${timeoutMs} ms (--timeout-ms covers the whole command)\n` });
      // Generous: process start-up included. Before the fix it took MAX_ROUNDS attempts of --timeout-ms each.
      expect(elapsedMs).toBeLessThan(timeoutMs + 5000);
    });

    test('a hung endpoint takes only its share of the budget: the next endpoint still answers', async () => {
      const cluster = await ProcessCluster.start(1);
      try {
        await cluster.waitForLeader();
        const put = await cairn(['put', 'k', 'v', '-e', `${hung},${cluster.node(1).clientAddr}`, '--timeout-ms', '4000']);
        expect(put).toMatchObject({ code: 0, stdout: expect.stringMatching(/^OK/) });
      } finally {
        await cluster.stop();
      }
    });
  });
});

/** The first of `count` consecutive ports on 127.0.0.1 that are free now (node N of a local cluster takes P + N - 1). */
async function freePortRun(count: number): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const first = await freePort();
    const rest = await Promise.all(Array.from({ length: count - 1 }, (_, i) => canListenOn(first + i + 1)));
    if (rest.every(Boolean)) return first;
  }
  throw new Error(`no run of ${count} free ports found`);
}

function canListenOn(port: number): Promise<boolean> {
  return new Promise((done) => {
    const server = createServer();
    server.once('error', () => done(false));
    server.listen(port, '127.0.0.1', () => server.close(() => done(true)));
  });
}

describe('cairn serve and cairn cluster as processes', () => {
  test('serve on a port in use prints one clear line and exits 1', async () => {
    const holder = createServer();
    await new Promise<void>((done) => holder.listen(0, '127.0.0.1', done));
    const taken = `127.0.0.1:${(holder.address() as { port: number }).port}`;
    const dir = mkdtempSync(join(tmpdir(), 'cairn-cli-'));
    try {
      const peer = `127.0.0.1:${await freePort()}`;
      const result = await cairn(['serve', '--id', '1', '--data-dir', join(dir, 'n1'), '--client-addr', taken, '--peer-addr', peer, '--peers', `1=${peer}`]);
      expect(result.code).toBe(1);
      expect(result.stderr).toBe(`cairn serve: cannot listen on --client-addr ${taken}: the address is already in use (another process listens there)\n`);
    } finally {
      await new Promise((done) => holder.close(done));
      rmSync(dir, { recursive: true, force: true });
    }
  });

  /**
   * Starts `cairn cluster` of one node on free ports, directly or through a parent that
   * starts it and then only waits (as `npm start` does). Returns both processes' ids.
   */
  async function startLocalCluster(dir: string, viaParent: boolean): Promise<{ parent: ChildProcess; clusterPid: number; clientAddr: string }> {
    const clientPort = await freePort();
    const peerPort = await freePort();
    const httpPort = await freePort();
    const args = [CAIRN_MAIN, 'cluster', '--nodes', '1', '--client-port', String(clientPort), '--peer-port', String(peerPort), '--http-port', String(httpPort), '--data-dir', dir];
    const parentScript = `const c = require('node:child_process').spawn(process.execPath, ${JSON.stringify(args)}, { stdio: 'ignore' }); console.log(c.pid); setInterval(() => {}, 60000);`;
    const parent = viaParent ? spawn(process.execPath, ['-e', parentScript], { stdio: ['ignore', 'pipe', 'ignore'] }) : spawn(process.execPath, args, { stdio: 'ignore' });
    const clientAddr = `127.0.0.1:${clientPort}`;
    try {
      const clusterPid = viaParent ? await new Promise<number>((done) => parent.stdout!.once('data', (chunk: Buffer) => done(Number(chunk.toString().trim())))) : parent.pid!;
      await waitFor('the cluster\'s node to lead', async () => (await cairn(['status', '-e', clientAddr, '--timeout-ms', '1000'])).code === 0, 30_000);
      return { parent, clusterPid, clientAddr };
    } catch (err) {
      parent.kill('SIGKILL');
      throw err;
    }
  }

  async function expectNodeGone(clientAddr: string): Promise<void> {
    await waitFor(
      'the node to stop',
      async () => (await cairn(['status', '-e', clientAddr, '--timeout-ms', '1000'])).stdout.includes('down: refused the connection'),
      20_000,
    );
  }

  test('a local cluster whose node cannot start says so and exits 1, never claiming the cluster on the port is its own', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cairn-cli-'));
    let running: Awaited<ReturnType<typeof startLocalCluster>> | undefined;
    try {
      running = await startLocalCluster(join(dir, 'first'), false);
      const port = running.clientAddr.split(':')[1]!;
      const second = await cairn(['cluster', '--nodes', '1', '--client-port', port, '--peer-port', String(await freePort()), '--http-port', String(await freePort()), '--data-dir', join(dir, 'second')]);
      expect(second.code).toBe(1);
      expect(second.stdout).not.toContain('running');
      expect(second.stdout + second.stderr).toContain('the address is already in use');
    } finally {
      running?.parent.kill('SIGTERM');
      if (running) await expectNodeGone(running.clientAddr);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('cairn cluster gives node N a status page, /metrics and probes on --http-port P + N - 1', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cairn-cli-'));
    const [clientPort, peerPort, httpPort] = [await freePortRun(2), await freePortRun(2), await freePortRun(2)];
    const args = ['cluster', '--nodes', '2', '--client-port', String(clientPort), '--peer-port', String(peerPort), '--http-port', String(httpPort), '--data-dir', dir];
    const child = spawn(process.execPath, [CAIRN_MAIN, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
    let stdout = '';
    child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    const exited = new Promise<number | null>((done) => child.once('exit', (code) => done(code)));
    try {
      const exitedEarly = exited.then((code) => Promise.reject(new Error(`cairn cluster exited (code ${code}) before its banner; it printed:\n${stdout}`)));
      await Promise.race([waitFor('the cluster\'s banner', () => stdout.includes('cairn cluster of 2 running'), 30_000), exitedEarly]);
      for (const id of [1, 2]) {
        const http = `127.0.0.1:${httpPort + id - 1}`;
        expect(stdout).toContain(`node ${id}: client 127.0.0.1:${clientPort + id - 1}  peer 127.0.0.1:${peerPort + id - 1}  status page http://${http}/\n`);
        await waitFor(`node ${id}'s /readyz to answer 200`, async () => (await fetch(`http://${http}/readyz`)).status === 200, 30_000);
        const status = (await (await fetch(`http://${http}/status.json`)).json()) as { id: number };
        expect(status.id).toBe(id);
        expect(await (await fetch(`http://${http}/metrics`)).text()).toContain('cairn_role{role="');
      }
    } finally {
      child.kill('SIGTERM');
      await exited;
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test.each([
    ['the process that started cairn cluster is killed', true],
    ['cairn cluster itself is killed with SIGKILL', false],
  ])('the local cluster\'s nodes stop when %s', async (_what, viaParent) => {
    const dir = mkdtempSync(join(tmpdir(), 'cairn-cli-'));
    let started: Awaited<ReturnType<typeof startLocalCluster>> | undefined;
    try {
      started = await startLocalCluster(dir, viaParent);
      started.parent.kill('SIGKILL');
      await expectNodeGone(started.clientAddr);
    } finally {
      if (started) {
        started.parent.kill('SIGKILL');
        // Only if the test failed is the cluster still there to clean up.
        try {
          process.kill(started.clusterPid, 'SIGTERM');
        } catch {
          // Already gone, as it should be.
        }
      }
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
