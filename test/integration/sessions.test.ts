import { credentials, Metadata, ServiceError, status as Status } from '@grpc/grpc-js';
import { KVClient, PutRequest, PutResponse } from '../../gen/cairn/kv/v1/kv';
import { ERROR_CODE_METADATA } from '../../src/server/status';
import { ProcessCluster, waitFor } from '../support/process-cluster';

jest.setTimeout(120_000);

/**
 * Client sessions through real processes and real gRPC: several writes in flight under
 * one client id, through the leader and forwarded by a follower, and SESSION_EXPIRED as
 * the client sees it (kv.proto, "Client sessions").
 */
describe('client sessions on a 3-node cluster of real processes', () => {
  let cluster: ProcessCluster;
  const clients: KVClient[] = [];
  beforeAll(async () => {
    cluster = await ProcessCluster.start(3);
  });
  afterAll(async () => {
    for (const client of clients) client.close();
    await cluster.stop();
  });

  function kvClient(id: number): KVClient {
    const client = new KVClient(cluster.node(id).clientAddr, credentials.createInsecure());
    clients.push(client);
    return client;
  }

  function put(client: KVClient, request: Partial<PutRequest>): Promise<PutResponse> {
    const full: PutRequest = { key: Buffer.alloc(0), value: Buffer.alloc(0), prevKv: false, clientId: '', sequence: 0, lowestUnansweredSequence: 0, ...request };
    return new Promise((resolve, reject) =>
      client.put(full, new Metadata(), { deadline: Date.now() + 10_000 }, (err, res) => (err ? reject(err) : resolve(res!))),
    );
  }

  test('two writes in flight under one client id both apply; retries get the original answers; a discarded one gets FAILED_PRECONDITION / SESSION_EXPIRED', async () => {
    const leader = await cluster.waitForLeader();
    const follower = [1, 2, 3].find((id) => id !== leader)!;
    const viaLeader = kvClient(leader);
    const viaFollower = kvClient(follower);
    const session = { clientId: 'integration-client', lowestUnansweredSequence: 1 };
    // Sequence 1 and 2 in flight at once, one through each node.
    const [first, second] = await Promise.all([
      put(viaFollower, { ...session, key: Buffer.from('s1'), value: Buffer.from('one'), sequence: 1 }),
      put(viaLeader, { ...session, key: Buffer.from('s2'), value: Buffer.from('two'), sequence: 2 }),
    ]);
    // Retried the other way round: the original answers, nothing applied again.
    const retryFirst = await put(viaLeader, { ...session, key: Buffer.from('s1'), value: Buffer.from('one'), sequence: 1 });
    const retrySecond = await put(viaFollower, { ...session, key: Buffer.from('s2'), value: Buffer.from('two'), sequence: 2 });
    expect(retryFirst.header?.revision).toBe(first.header?.revision);
    expect(retrySecond.header?.revision).toBe(second.header?.revision);
    const reader = cluster.client([leader]);
    expect((await reader.get(Buffer.from('s1'))).kv).toMatchObject({ value: Buffer.from('one'), version: 1 });
    expect((await reader.get(Buffer.from('s2'))).kv).toMatchObject({ value: Buffer.from('two'), version: 1 });

    // Both answered: the client says so, and their results are discarded.
    await put(viaLeader, { clientId: session.clientId, key: Buffer.from('s3'), value: Buffer.from('three'), sequence: 3, lowestUnansweredSequence: 3 });
    for (const via of [viaLeader, viaFollower]) {
      const late = put(via, { ...session, key: Buffer.from('s1'), value: Buffer.from('late'), sequence: 1 });
      await expect(late).rejects.toMatchObject({ code: Status.FAILED_PRECONDITION, details: expect.stringContaining('discarded') });
      const err = (await late.catch((e: ServiceError) => e)) as ServiceError;
      expect(err.metadata.get(ERROR_CODE_METADATA)).toEqual(['SESSION_EXPIRED']);
    }
    expect((await reader.get(Buffer.from('s1'))).kv?.value.toString()).toBe('one');

    // An unknown client id that claims earlier answers cannot be proven fresh.
    const unknown = put(viaFollower, { clientId: 'never-seen', key: Buffer.from('u'), value: Buffer.from('x'), sequence: 5, lowestUnansweredSequence: 4 });
    await expect(unknown).rejects.toMatchObject({ code: Status.FAILED_PRECONDITION, details: expect.stringContaining('has no session') });
    expect((await reader.get(Buffer.from('u'))).kv).toBeUndefined();

    // A lowest_unanswered_sequence above the sequence is the client's mistake.
    const invalid = put(viaLeader, { clientId: 'c', key: Buffer.from('u'), value: Buffer.from('x'), sequence: 1, lowestUnansweredSequence: 2 });
    await expect(invalid).rejects.toMatchObject({ code: Status.INVALID_ARGUMENT, details: expect.stringContaining('lowest_unanswered_sequence 2 is above sequence 1') });
  });

  test('the cairn client recovers after a write that failed before its session existed', async () => {
    const leader = await cluster.waitForLeader();
    const [a, b] = [1, 2, 3].filter((id) => id !== leader) as [number, number];
    const client = cluster.client([leader], undefined, 500);
    await cluster.kill(a, 'SIGKILL');
    await cluster.kill(b, 'SIGKILL');
    await waitFor('the survivor to know no leader', async () => (await cluster.status(leader)).leaderId === 0);
    // Its first write (sequence 1) fails and is never applied: the session never comes to be.
    await expect(client.put(Buffer.from('after-outage'), Buffer.from('1'))).rejects.toMatchObject({ code: Status.UNAVAILABLE });
    cluster.restart(a);
    await cluster.waitForLeader([leader, a]);
    // Without a new session this write would claim sequence 1 was answered: SESSION_EXPIRED.
    const put = await client.put(Buffer.from('after-outage'), Buffer.from('2'));
    expect(put.header?.revision).toBeGreaterThan(0);
    expect((await client.get(Buffer.from('after-outage'))).kv?.value.toString()).toBe('2');
    cluster.restart(b);
  });
});
