import { execFile } from 'node:child_process';
import { resolve } from 'node:path';
import { promisify } from 'node:util';
import { credentials, Metadata, makeGenericClientConstructor, status as Status } from '@grpc/grpc-js';
import { Consistency } from '../../gen/cairn/kv/v1/kv';
import { ProcessCluster, waitFor } from '../support/process-cluster';

jest.setTimeout(120_000);

const run = promisify(execFile);
const BUF = resolve(__dirname, '../../node_modules/.bin/buf');
const key = (text: string) => Buffer.from(text);

describe('a 3-node cluster of real processes', () => {
  let cluster: ProcessCluster;
  beforeEach(async () => {
    cluster = await ProcessCluster.start(3);
  });
  afterEach(() => cluster.stop());

  test('elects one leader; a put through a follower is readable linearizably through every node', async () => {
    const leader = await cluster.waitForLeader();
    const follower = [1, 2, 3].find((id) => id !== leader)!;
    const put = await cluster.client([follower]).put(key('greeting'), key('hello'));
    expect(put.header?.leaderId).toBe(leader);
    for (const id of [1, 2, 3]) {
      const got = await cluster.client([id]).get(key('greeting'));
      expect(got.kv?.value.toString()).toBe('hello');
      expect(got.header?.memberId).toBe(id);
    }
  });

  test('kill -9 of the leader under load: a new leader, no acknowledged write lost, the old leader catches up', async () => {
    const oldLeader = await cluster.waitForLeader();
    const acked: string[] = [];
    let stop = false;
    const writers = [1, 2, 3].map(async (w) => {
      const client = cluster.client();
      // Bounded: at most 2,000 writes each, and the loop ends when the test says stop.
      for (let i = 0; i < 2000 && !stop; i++) {
        const k = `load-${w}-${i}`;
        try {
          await client.put(key(k), key(k));
          acked.push(k);
        } catch {
          // Unknown outcome: not counted as acknowledged.
        }
      }
    });
    await waitFor('100 acknowledged writes', () => acked.length >= 100);
    await cluster.kill(oldLeader, 'SIGKILL');
    const beforeKill = acked.length;
    const survivors = [1, 2, 3].filter((id) => id !== oldLeader);
    const newLeader = await cluster.waitForLeader(survivors);
    expect(newLeader).not.toBe(oldLeader);
    await waitFor('100 more acknowledged writes after the kill', () => acked.length >= beforeKill + 100, 30_000);
    stop = true;
    await Promise.all(writers);

    const reader = cluster.client(survivors);
    for (const k of acked) expect((await reader.get(key(k))).kv?.value.toString()).toBe(k);

    cluster.restart(oldLeader);
    const leaderStatus = await cluster.status(newLeader);
    await waitFor('the old leader to catch up', async () => (await cluster.status(oldLeader)).appliedIndex >= leaderStatus.commitIndex);
    const local = cluster.client([oldLeader], Consistency.CONSISTENCY_SERIALIZABLE);
    for (const k of acked.slice(-50)) expect((await local.get(key(k))).kv?.value.toString()).toBe(k);
  });

  test('a follower stopped during 1,000 writes catches up when restarted', async () => {
    const leader = await cluster.waitForLeader();
    const follower = [1, 2, 3].find((id) => id !== leader)!;
    await cluster.kill(follower, 'SIGTERM');
    const client = cluster.client([leader]);
    const batch = 50;
    for (let i = 0; i < 1000; i += batch) {
      await Promise.all(Array.from({ length: batch }, (_, j) => client.put(key(`k${i + j}`), key(`v${i + j}`))));
    }
    cluster.restart(follower);
    const target = (await cluster.status(leader)).commitIndex;
    await waitFor('the follower to apply every write', async () => (await cluster.status(follower)).appliedIndex >= target);
    const local = cluster.client([follower], Consistency.CONSISTENCY_SERIALIZABLE);
    const listed = await local.list(key('k'), 2000);
    expect(listed.kvs).toHaveLength(1000);
    expect((await local.get(key('k999'))).kv?.value.toString()).toBe('v999');
  });

  test('a whole-cluster restart keeps all data and the term', async () => {
    await cluster.waitForLeader();
    const client = cluster.client();
    for (let i = 0; i < 20; i++) await client.put(key(`durable${i}`), key(`${i}`));
    const termBefore = (await cluster.status(1)).term;
    // SIGTERM is a clean shutdown: exit code 0.
    for (const id of [1, 2, 3]) expect(await cluster.kill(id, 'SIGTERM')).toBe(0);
    for (const id of [1, 2, 3]) cluster.restart(id);
    await cluster.waitForLeader();
    expect((await cluster.status(1)).term).toBeGreaterThanOrEqual(termBefore);
    const after = cluster.client();
    const listed = await after.list(key('durable'), 100);
    expect(listed.kvs.map((kv) => kv.value.toString()).sort()).toEqual(Array.from({ length: 20 }, (_, i) => `${i}`).sort());
  });

  test('oversized, empty and malformed requests get INVALID_ARGUMENT, and the node keeps serving', async () => {
    await cluster.waitForLeader();
    const client = cluster.client([1]);
    const expectInvalid = async (promise: Promise<unknown>, message: RegExp) => {
      await expect(promise).rejects.toMatchObject({ code: Status.INVALID_ARGUMENT, details: expect.stringMatching(message) });
    };
    await expectInvalid(client.put(key(''), key('x')), /key is empty/);
    await expectInvalid(client.put(Buffer.alloc(5000, 1), key('x')), /over the limit of 4096 \(--max-key-bytes\)/);
    await expectInvalid(client.put(key('big'), Buffer.alloc(1_100_000, 1)), /--max-value-bytes/);
    await expectInvalid(client.get(key('')), /key is empty/);
    await expectInvalid(client.list(key('b'), 20_000), /--max-range-limit/);
    // Bytes that are not a protobuf message at all.
    const raw = makeGenericClientConstructor(
      { put: { path: '/cairn.kv.v1.KV/Put', requestStream: false, responseStream: false, requestSerialize: (b: Buffer) => b, requestDeserialize: (b: Buffer) => b, responseSerialize: (b: Buffer) => b, responseDeserialize: (b: Buffer) => b } },
      'KV',
    );
    const rawClient = new raw(cluster.node(1).clientAddr, credentials.createInsecure()) as unknown as {
      put(req: Buffer, md: Metadata, cb: (err: { code: number; details: string } | null) => void): void;
      close(): void;
    };
    const rawError = await new Promise<{ code: number; details: string } | null>((done) => rawClient.put(Buffer.from([0xff, 0xff, 0xff, 0x0f]), new Metadata(), done));
    rawClient.close();
    expect(rawError).toMatchObject({ code: Status.INVALID_ARGUMENT, details: expect.stringMatching(/does not decode/) });
    // Still serving.
    await client.put(key('after'), key('ok'));
    expect((await client.get(key('after'))).kv?.value.toString()).toBe('ok');
  });

  test('with no leader, a write gets UNAVAILABLE saying so, and works again once a majority is back', async () => {
    const leader = await cluster.waitForLeader();
    const [a, b] = [1, 2, 3].filter((id) => id !== leader) as [number, number];
    await cluster.kill(a, 'SIGKILL');
    await cluster.kill(b, 'SIGKILL');
    // Check-quorum: the lone leader steps down, and then nobody leads.
    await waitFor('the survivor to know no leader', async () => (await cluster.status(leader)).leaderId === 0);
    const lone = cluster.client([leader], Consistency.CONSISTENCY_LINEARIZABLE, 500);
    await expect(lone.put(key('x'), key('y'))).rejects.toMatchObject({ code: Status.UNAVAILABLE, details: expect.stringMatching(/no leader is known/) });
    cluster.restart(a);
    await cluster.waitForLeader([leader, a]);
    expect((await cluster.client([leader]).put(key('x'), key('y'))).header?.revision).toBeGreaterThan(0);
  });

  test('a real external client (buf curl) finds the services through reflection and calls them', async () => {
    await cluster.waitForLeader();
    const base = `http://${cluster.node(2).clientAddr}`;
    const flags = ['curl', '--protocol', 'grpc', '--http2-prior-knowledge'];
    const services = await run(BUF, [...flags, '--list-services', base]);
    expect(services.stdout.split('\n')).toEqual(expect.arrayContaining(['cairn.kv.v1.KV', 'cairn.kv.v1.Cluster', 'grpc.health.v1.Health']));
    const methods = await run(BUF, [...flags, '--list-methods', base]);
    expect(methods.stdout.split('\n')).toEqual(expect.arrayContaining(['cairn.kv.v1.KV/Range', 'grpc.health.v1.Health/Check']));
    const body = JSON.stringify({ key: key('via-buf').toString('base64'), value: key('yes').toString('base64') });
    const put = JSON.parse((await run(BUF, [...flags, '-d', body, `${base}/cairn.kv.v1.KV/Put`])).stdout);
    expect(Number(put.header.revision)).toBeGreaterThan(0);
    // Protobuf JSON accepts the proto field name and the JSON name alike.
    for (const spelling of ['prev_kv', 'prevKv']) {
      const again = JSON.stringify({ key: key('via-buf').toString('base64'), value: key('yes').toString('base64'), [spelling]: true });
      const answer = JSON.parse((await run(BUF, [...flags, '-d', again, `${base}/cairn.kv.v1.KV/Put`])).stdout);
      expect(Buffer.from(answer.prevKv.value, 'base64').toString()).toBe('yes');
    }
    const health = JSON.parse((await run(BUF, [...flags, '-d', '{"service":""}', `${base}/grpc.health.v1.Health/Check`])).stdout);
    expect(health.status).toBe('SERVING');
    // A uint64 beyond 2^53 - 1 is refused, naming the field and the limit.
    const huge = JSON.stringify({ key: key('via-buf').toString('base64'), limit: '18446744073709551615' });
    const refused = await run(BUF, [...flags, '-d', huge, `${base}/cairn.kv.v1.KV/Range`]).then(
      () => undefined,
      (err: { stderr: string }) => JSON.parse(err.stderr),
    );
    expect(refused).toEqual({ code: 'invalid_argument', message: expect.stringContaining('field limit (3) = 18446744073709551615 is above the largest supported value 9007199254740991') });
    const got = JSON.parse((await run(BUF, [...flags, '-d', JSON.stringify({ key: key('via-buf').toString('base64') }), `${base}/cairn.kv.v1.KV/Get`])).stdout);
    expect(Buffer.from(got.kv.value, 'base64').toString()).toBe('yes');
  });

  test('the standard health service answers SERVING', async () => {
    await cluster.waitForLeader();
    const bytes = (b: Buffer) => b;
    const Health = makeGenericClientConstructor(
      { check: { path: '/grpc.health.v1.Health/Check', requestStream: false, responseStream: false, requestSerialize: bytes, requestDeserialize: bytes, responseSerialize: bytes, responseDeserialize: bytes } },
      'Health',
    );
    const health = new Health(cluster.node(1).clientAddr, credentials.createInsecure()) as unknown as {
      check(req: Buffer, md: Metadata, cb: (err: Error | null, res?: Buffer) => void): void;
      close(): void;
    };
    // An empty HealthCheckRequest; the answer is field 1 (status) = 1 (SERVING).
    const response = await new Promise<Buffer | undefined>((done, fail) => health.check(Buffer.alloc(0), new Metadata(), (err, res) => (err ? fail(err) : done(res))));
    health.close();
    expect([...response!]).toEqual([0x08, 0x01]);
  });
});

describe('cluster identity', () => {
  test('a node started with another cluster\'s id is rejected by the others', async () => {
    const cluster = await ProcessCluster.start(3);
    try {
      const leader = await cluster.waitForLeader();
      const victim = [1, 2, 3].find((id) => id !== leader)!;
      await cluster.kill(victim, 'SIGTERM');
      const termBefore = (await cluster.status(leader)).term;
      // The same node id and addresses, a fresh data dir, and another cluster token.
      const impostor = cluster.node(victim);
      impostor.dataDir = `${impostor.dataDir}-impostor`;
      cluster.spawn(impostor, ['--cluster-token', 'some-other-cluster']);
      await waitFor('the others to log the rejection', () =>
        cluster.nodes.filter((n) => n.id !== victim).some((n) => n.logs.some((line) => line.includes('peer stream rejected'))),
      );
      expect((await cluster.status(leader)).term).toBe(termBefore);
      expect((await cluster.status(victim)).leaderId).toBe(0);
    } finally {
      await cluster.stop();
    }
  });
});
