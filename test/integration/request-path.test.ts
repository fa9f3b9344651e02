import { credentials, Metadata, ServiceError, status as Status } from '@grpc/grpc-js';
import { KVClient, PutRequest } from '../../gen/cairn/kv/v1/kv';
import { ProcessCluster, waitFor } from '../support/process-cluster';
import { rawPeerStream } from '../support/raw-peer';

jest.setTimeout(120_000);

const RAW_GRPC_TEXT = /No connection established|ECONNREFUSED|Last error|Connection dropped|read ECONNRESET/;

function putRequest(key: string): PutRequest {
  return { key: Buffer.from(key), value: Buffer.from(key), prevKv: false, clientId: '', sequence: 0, lowestUnansweredSequence: 0 };
}

function put(client: KVClient, key: string, timeoutMs: number): Promise<ServiceError | null> {
  return new Promise((resolve) => client.put(putRequest(key), new Metadata(), { deadline: Date.now() + timeoutMs }, (err) => resolve(err)));
}

describe('the request path of real processes', () => {
  let cluster: ProcessCluster | undefined;
  afterEach(async () => {
    await cluster?.stop();
    cluster = undefined;
  });

  test('after kill -9 of the leader, every error a follower answers carries cairn-error-code, never raw grpc-js text', async () => {
    // The server's request timeout is well below the client's deadline, so every error
    // below is the server's answer, not the client giving up.
    cluster = await ProcessCluster.start(3, ['--request-timeout-ms', '1000']);
    const leader = await cluster.waitForLeader();
    const follower = [1, 2, 3].find((id) => id !== leader)!;
    const client = new KVClient(cluster.node(follower).clientAddr, credentials.createInsecure());
    try {
      expect(await put(client, 'before', 5000)).toBeNull();
      await cluster.kill(leader, 'SIGKILL');
      const errors: ServiceError[] = [];
      let successes = 0;
      // Bounded: at most 300 writes or 30 s, until three writes in a row succeed through a new leader.
      const deadline = Date.now() + 30_000;
      for (let i = 0; i < 300 && successes < 3 && Date.now() < deadline; i++) {
        const err = await put(client, `after-${i}`, 5000);
        if (err) {
          errors.push(err);
          successes = 0;
          await new Promise((resolve) => setTimeout(resolve, 20)); // pacing between attempts, not a wait for a condition
        } else {
          successes++;
        }
      }
      expect(successes).toBe(3);
      expect(errors.length).toBeGreaterThan(0);
      for (const err of errors) {
        expect({ code: Status[err.code], details: err.details, cairnCode: err.metadata.get('cairn-error-code') }).toEqual({
          code: expect.any(String),
          details: expect.not.stringMatching(RAW_GRPC_TEXT),
          cairnCode: [expect.any(String)],
        });
      }
      // The first failures name the dead leader: it was known, but could not be reached.
      const unreachable = errors.filter((e) => e.metadata.get('cairn-error-code')[0] === 'LEADER_UNREACHABLE');
      for (const err of unreachable) expect(err.metadata.get('cairn-leader-id')).toEqual([String(leader)]);
    } finally {
      client.close();
    }
  });

  test('a peer frame that does not decode is refused with INVALID_ARGUMENT, and the cluster keeps serving', async () => {
    cluster = await ProcessCluster.start(3);
    const leader = await cluster.waitForLeader();
    const err = await rawPeerStream(cluster.node(leader).peerAddr, [Buffer.from([0xff, 0xff, 0xff, 0xff])]);
    expect(err?.code).toBe(Status.INVALID_ARGUMENT);
    expect(err?.details).toMatch(/does not decode/);
    await waitFor('the leader to log the rejection', () => cluster!.node(leader).logs.some((line) => line.includes('peer stream rejected')));
    const client = cluster.client();
    await client.put(Buffer.from('still'), Buffer.from('serving'));
    expect((await client.get(Buffer.from('still'))).kv?.value.toString()).toBe('serving');
    expect(cluster.node(leader).process?.exitCode).toBeNull();
  });
});
