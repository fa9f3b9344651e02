import { credentials, Metadata, ServiceError, status as Status } from '@grpc/grpc-js';
import { AuthClient, ClusterClient, Consistency, KVClient, PermissionType } from '../../gen/cairn/kv/v1/kv';
import { execFile } from 'node:child_process';
import { CAIRN_MAIN, CliResult, ProcessCluster, waitFor } from '../support/process-cluster';

jest.setTimeout(240_000);

type Unary<Req, Res> = (request: Req, metadata: Metadata, options: { deadline: number }, done: (err: ServiceError | null, res?: Res) => void) => unknown;

/** Calls a generated client method; resolves with the response or the gRPC error. */
function call<Req, Res>(client: object, method: Unary<Req, Res>, request: Req, token?: string): Promise<{ res?: Res; err?: ServiceError }> {
  const metadata = new Metadata();
  if (token) metadata.set('authorization', `Bearer ${token}`);
  return new Promise((resolve) => method.call(client, request, metadata, { deadline: Date.now() + 10_000 }, (err, res) => resolve(err ? { err } : { res })));
}

async function ok<Res>(result: Promise<{ res?: Res; err?: ServiceError }>): Promise<Res> {
  const { res, err } = await result;
  if (err) throw new Error(`call failed: ${Status[err.code]} ${err.details}`);
  return res!;
}

class Node {
  readonly kv: KVClient;
  readonly auth: AuthClient;
  readonly cluster: ClusterClient;
  constructor(addr: string) {
    this.kv = new KVClient(addr, credentials.createInsecure());
    this.auth = new AuthClient(addr, credentials.createInsecure());
    this.cluster = new ClusterClient(addr, credentials.createInsecure());
  }
  close() {
    this.kv.close();
    this.auth.close();
    this.cluster.close();
  }
  put(key: string, value: string, token?: string) {
    return call(this.kv, this.kv.put, { key: Buffer.from(key), value: Buffer.from(value), prevKv: false, clientId: '', sequence: 0, lowestUnansweredSequence: 0 }, token);
  }
  get(key: string, token?: string, consistency = Consistency.CONSISTENCY_LINEARIZABLE) {
    return call(this.kv, this.kv.get, { key: Buffer.from(key), consistency }, token);
  }
  range(prefix: string, token?: string, consistency = Consistency.CONSISTENCY_LINEARIZABLE) {
    return call(this.kv, this.kv.range, { key: Buffer.from(prefix), rangeEnd: Buffer.alloc(0), limit: 0, keysOnly: false, consistency, prefix: true }, token);
  }
  async login(name: string, password: string): Promise<string> {
    return (await ok(call(this.auth, this.auth.authenticate, { name, password }))).token;
  }
}

/** Sets up: root, user alice with readwrite on prefix "app/", auth on; returns the tokens. */
async function setUp(node: Node): Promise<{ root: string; alice: string }> {
  await ok(call(node.auth, node.auth.userAdd, { name: 'root', password: 'rootpw' }));
  await ok(call(node.auth, node.auth.userAdd, { name: 'alice', password: 'alicepw' }));
  await ok(call(node.auth, node.auth.roleAdd, { name: 'app' }));
  await ok(call(node.auth, node.auth.roleGrantPermission, { name: 'app', permission: { type: PermissionType.PERMISSION_TYPE_READWRITE, key: Buffer.from('app/'), prefix: true } }));
  await ok(call(node.auth, node.auth.userGrantRole, { user: 'alice', role: 'app' }));
  await ok(call(node.auth, node.auth.authEnable, {}));
  return { root: await node.login('root', 'rootpw'), alice: await node.login('alice', 'alicepw') };
}

function expectCode(result: { res?: unknown; err?: ServiceError }, code: Status, message?: RegExp): void {
  expect(result.res).toBeUndefined();
  expect(result.err && Status[result.err.code]).toBe(Status[code]);
  if (message) expect(result.err!.details).toMatch(message);
}

describe('authentication and authorization with real processes', () => {
  let cluster: ProcessCluster;
  const nodes: Node[] = [];
  afterEach(async () => {
    for (const node of nodes.splice(0)) node.close();
    await cluster?.stop();
  });
  const nodeOf = (id: number) => {
    const node = new Node(cluster.node(id).clientAddr);
    nodes.push(node);
    return node;
  };

  test('no token, a wrong password, an expired or forged token, or a key outside the prefix get the right code and no data; followers enforce the same', async () => {
    cluster = await ProcessCluster.start(3, ['--auth-token-ttl-ms', '3000']);
    const leaderId = await cluster.waitForLeader();
    const followerId = [1, 2, 3].find((id) => id !== leaderId)!;
    const leader = nodeOf(leaderId);
    const follower = nodeOf(followerId);
    await ok(leader.put('secret', 'top'));
    await ok(leader.put('app/one', '1'));

    // Auth cannot be enabled before root exists.
    expectCode(await call(leader.auth, leader.auth.authEnable, {}), Status.FAILED_PRECONDITION, /root/);
    // A name that could never be replicated (an entry over the peer message limit) is refused before it is proposed.
    expectCode(await call(leader.auth, leader.auth.userGrantRole, { user: 'alice', role: 'r'.repeat(3_000_000) }), Status.INVALID_ARGUMENT, /MAX_AUTH_NAME_BYTES/);
    await ok(leader.put('still-serving', '1'));
    const { root, alice } = await setUp(leader);

    for (const node of [leader, follower]) {
      expectCode(await node.get('secret'), Status.UNAUTHENTICATED, /no token/);
      expectCode(await node.get('app/one'), Status.UNAUTHENTICATED);
      expectCode(await node.put('app/x', 'v'), Status.UNAUTHENTICATED);
      expectCode(await node.get('secret', 'cairn1.Zm9v.1.99999999999999.AAAA'), Status.UNAUTHENTICATED, /signature/);
      expectCode(await node.get('secret', alice.replace(/.$/, (c) => (c === 'A' ? 'B' : 'A'))), Status.UNAUTHENTICATED);
      expectCode(await node.get('secret', alice), Status.PERMISSION_DENIED, /alice.*secret/);
      expectCode(await node.get('secret', alice, Consistency.CONSISTENCY_SERIALIZABLE), Status.PERMISSION_DENIED);
      expectCode(await node.range('', alice), Status.PERMISSION_DENIED);
      expectCode(await node.put('secret', 'stolen', alice), Status.PERMISSION_DENIED);
      expectCode(await call(node.cluster, node.cluster.snapshot, {}, alice), Status.PERMISSION_DENIED, /root/);
      expectCode(await call(node.auth, node.auth.userAdd, { name: 'mallory', password: 'x' }, alice), Status.PERMISSION_DENIED);
      expectCode(await call(node.auth, node.auth.authenticate, { name: 'alice', password: 'wrong' }), Status.UNAUTHENTICATED, /wrong user name or password/);
      // Inside its prefix alice reads and writes, on a follower as on the leader.
      await ok(node.put('app/two', '2', alice));
      expect((await ok(node.get('app/one', alice))).kv?.value.toString()).toBe('1');
      expect((await ok(node.range('app/', alice))).kvs.map((kv) => kv.key.toString())).toEqual(['app/one', 'app/two']);
      expect((await ok(node.get('secret', root))).kv?.value.toString()).toBe('top');
    }
    // Nothing alice was refused reached the data.
    expect((await ok(leader.get('secret', root))).kv?.value.toString()).toBe('top');

    // Failed logins are rate limited per user: past the limit, even the right password is refused for a while.
    for (let i = 0; i < 5; i++) await call(leader.auth, leader.auth.authenticate, { name: 'alice', password: `wrong${i}` });
    expectCode(await call(leader.auth, leader.auth.authenticate, { name: 'alice', password: 'alicepw' }), Status.RESOURCE_EXHAUSTED, /too many failed logins/);
    expect(await follower.login('alice', 'alicepw')).toMatch(/^cairn1\./);

    // Tokens expire (--auth-token-ttl-ms 3000).
    await waitFor('the token to expire', async () => (await follower.get('app/one', alice)).err?.code === Status.UNAUTHENTICATED, 20_000);
    expectCode(await leader.get('app/one', alice), Status.UNAUTHENTICATED, /expired/);

    // A password change revokes the earlier tokens at once.
    // (On the follower: the leader still refuses alice's logins, its limiter is per node.)
    const fresh = await follower.login('alice', 'alicepw');
    await ok(leader.get('app/one', fresh));
    await ok(call(leader.auth, leader.auth.userChangePassword, { name: 'alice', password: 'newpw' }, await leader.login('root', 'rootpw')));
    await waitFor('the follower applied the password change', async () => (await follower.get('app/one', fresh, Consistency.CONSISTENCY_SERIALIZABLE)).err?.code === Status.UNAUTHENTICATED);
    expectCode(await leader.get('app/one', fresh), Status.UNAUTHENTICATED, /revoked/);
    void root;
  });

  test('the auth state survives a restart and travels in a snapshot install', async () => {
    cluster = await ProcessCluster.start(3, ['--snapshot-entries', '50', '--snapshot-catchup-entries', '5']);
    const leaderId = await cluster.waitForLeader();
    const leader = nodeOf(leaderId);
    const laggard = [1, 2, 3].find((id) => id !== leaderId)!;
    await cluster.kill(laggard, 'SIGTERM');
    await setUp(leader);
    let root = await leader.login('root', 'rootpw');
    // Enough writes for the leader to compact past the stopped node: it can only catch up by snapshot.
    for (let i = 0; i < 200; i++) await ok(leader.put(`app/k${i}`, `v${i}`, root));
    await waitFor('the leader compacted', async () => Number((await cluster.status(leaderId)).firstIndex) > 20);

    cluster.node(laggard).logs.length = 0;
    cluster.restart(laggard);
    await waitFor('the laggard installed a snapshot', async () => cluster.node(laggard).logs.some((line) => line.includes('snapshot received whole')), 60_000);
    const restarted = nodeOf(laggard);
    await waitFor('the laggard applied the writes', async () => (await restarted.get('app/k199', root, Consistency.CONSISTENCY_SERIALIZABLE)).res?.kv !== undefined, 30_000);
    const alice = await restarted.login('alice', 'alicepw');
    expectCode(await restarted.get('app/k1', undefined, Consistency.CONSISTENCY_SERIALIZABLE), Status.UNAUTHENTICATED);
    expect((await ok(restarted.get('app/k1', alice, Consistency.CONSISTENCY_SERIALIZABLE))).kv?.value.toString()).toBe('v1');

    // A full restart: every node reloads users, roles and the signing key from disk.
    await Promise.all([1, 2, 3].map((id) => cluster.kill(id, 'SIGTERM')));
    for (const id of [1, 2, 3]) cluster.restart(id);
    await cluster.waitForLeader();
    for (const id of [1, 2, 3]) {
      const node = nodeOf(id);
      expectCode(await node.get('app/k1', undefined, Consistency.CONSISTENCY_SERIALIZABLE), Status.UNAUTHENTICATED);
      // Tokens signed before the restart still verify: the key is in the replicated state.
      expect((await ok(node.get('app/k2', alice, Consistency.CONSISTENCY_SERIALIZABLE))).kv?.value.toString()).toBe('v2');
      expectCode(await node.get('secret', alice, Consistency.CONSISTENCY_SERIALIZABLE), Status.PERMISSION_DENIED);
    }
    root = await nodeOf(1).login('root', 'rootpw');
    const users = await ok(call(nodes[0]!.auth, nodes[0]!.auth.userList, {}, root));
    expect(users.users).toEqual([{ name: 'alice', roles: ['app'] }, { name: 'root', roles: ['root'] }]);
  });

  test('the CLI: user, role and auth verbs, --user NAME[:PASSWORD] (asking for the password on stdin), and LOGIN in the shell', async () => {
    cluster = await ProcessCluster.start(1);
    await cluster.waitForLeader();
    const endpoints = cluster.node(1).clientAddr;
    const cli = (args: string[], input = ''): Promise<CliResult> =>
      new Promise((resolve) => {
        const child = execFile(process.execPath, [CAIRN_MAIN, ...args, '--endpoints', endpoints], { timeout: 30_000 }, (err, stdout, stderr) =>
          resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }),
        );
        child.stdin!.end(input);
      });
    const expectOk = async (args: string[], input = '') => {
      const result = await cli(args, input);
      expect({ args, ...result }).toMatchObject({ args, code: 0 });
      return result.stdout;
    };
    expect(await cli(['auth', 'enable'])).toMatchObject({ code: 1, stderr: expect.stringContaining('AUTH_ROOT_REQUIRED') });
    await expectOk(['user', 'add', 'root', '--password', 'rootpw']);
    // No --password: asked for on stdin (a pipe here, so no terminal to hide it on).
    expect(await expectOk(['user', 'add', 'alice'], 'alicepw\n')).toBe('OK\n');
    await expectOk(['role', 'add', 'app']);
    await expectOk(['role', 'grant-permission', 'app', 'readwrite', '--prefix', 'app/']);
    await expectOk(['user', 'grant-role', 'alice', 'app']);
    await expectOk(['put', 'secret', 'top']);
    await expectOk(['auth', 'enable']);

    expect(await cli(['get', 'secret'])).toMatchObject({ code: 1, stderr: expect.stringContaining('UNAUTHENTICATED') });
    expect(await cli(['get', 'secret', '--user', 'alice:alicepw'])).toMatchObject({ code: 1, stderr: expect.stringContaining('PERMISSION_DENIED') });
    expect(await cli(['get', 'secret', '--user', 'alice:nope'])).toMatchObject({ code: 1, stderr: expect.stringContaining('wrong user name or password') });
    await expectOk(['put', 'app/a', '1', '--user', 'alice:alicepw']);
    expect(await expectOk(['get', 'app/a', '--user', 'alice'], 'alicepw\n')).toBe('1');
    expect(await expectOk(['get', 'secret', '--user', 'root:rootpw'])).toBe('top');
    expect(await cli(['user', 'list', '--user', 'alice:alicepw'])).toMatchObject({ code: 1, stderr: expect.stringContaining('role root') });
    expect(await expectOk(['user', 'list', '--user', 'root:rootpw'])).toBe('alice\tapp\nroot\troot\n');
    expect(await expectOk(['role', 'list', '--user', 'root:rootpw'])).toBe('root\t(everything)\napp\treadwrite prefix app/\n');
    await expectOk(['user', 'passwd', 'alice', '--password', 'newpw', '--user', 'root:rootpw']);
    expect(await cli(['get', 'app/a', '--user', 'alice:alicepw'])).toMatchObject({ code: 1, stderr: expect.stringContaining('UNAUTHENTICATED') });

    const shell = await cli(['shell'], 'GET app/a\nLOGIN alice newpw\nGET app/a\nSET secret x\nLOGOUT\nGET app/a\n');
    expect(shell.stdout).toBe('OK (logged in as alice)\n1\nOK (logged out)\n');
    expect(shell.stderr.split('\n').filter(Boolean).map((line) => line.replace(/:.*/, ''))).toEqual(['error (line 1)', 'error (line 4)', 'error (line 6)']);
    expect(shell.stderr).toMatch(/line 4\): PERMISSION_DENIED/);
    // A backup holds every key: root only.
    const backup = `${cluster.root}/backup.snap`;
    expect(await cli(['snapshot', 'save', backup])).toMatchObject({ code: 1, stderr: expect.stringContaining('UNAUTHENTICATED') });
    expect(await cli(['snapshot', 'save', backup, '--user', 'alice:newpw'])).toMatchObject({ code: 1, stderr: expect.stringContaining('PERMISSION_DENIED') });
    expect(await expectOk(['snapshot', 'save', backup, '--user', 'root'], 'rootpw\n')).toMatch(/^saved /);
    await expectOk(['auth', 'disable', '--user', 'root:rootpw']);
    expect(await expectOk(['get', 'secret'])).toBe('top');
  });

  test('a node joins a cluster with auth on only with --join-user (a root user), and then enforces the same rules', async () => {
    cluster = await ProcessCluster.start(1);
    await cluster.waitForLeader();
    const first = nodeOf(1);
    await setUp(first);
    const alice = await first.login('alice', 'alicepw');
    await ok(first.put('app/joined', 'yes', alice));

    const refused = await cluster.join([1], []);
    const exit = await cluster.exited(refused.id, 30_000);
    expect(exit.code).toBe(1);
    expect(refused.logs.join('\n')).toMatch(/UNAUTHENTICATED|no token/);
    cluster.nodes.splice(cluster.nodes.indexOf(refused), 1);

    const joined = await cluster.join([1], ['--join-user', 'root:rootpw']);
    await waitFor('the new node promoted to voter', async () => {
      const status = await cluster.status(joined.id);
      return status.members.some((m) => m.id === joined.id && m.role === 1) && Number(status.appliedIndex) > 0;
    }, 60_000);
    const node = nodeOf(joined.id);
    await waitFor('the new node applied the write', async () => (await node.get('app/joined', alice, Consistency.CONSISTENCY_SERIALIZABLE)).res?.kv !== undefined, 30_000);
    expectCode(await node.get('app/joined', undefined, Consistency.CONSISTENCY_SERIALIZABLE), Status.UNAUTHENTICATED);
    expectCode(await node.put('secret', 'x', alice), Status.PERMISSION_DENIED);
  });
});
