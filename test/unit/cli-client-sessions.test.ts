import { Server, ServerCredentials } from '@grpc/grpc-js';
import { Consistency, KVServer, KVService, PutRequest } from '../../gen/cairn/kv/v1/kv';
import { CairnClient } from '../../src/cli/client';
import { waitFor } from '../support/process-cluster';

describe('CairnClient sessions with writes in flight at once', () => {
  test('each write claims no more than the lowest sequence still in flight, so a slow earlier write (or its retry) is never refused as answered', async () => {
    const seen: PutRequest[] = [];
    const held: (() => void)[] = [];
    const service = {
      put: (call: { request: PutRequest }, callback: (err: unknown, value?: unknown) => void) => {
        seen.push(call.request);
        const answer = () => callback(null, { header: { revision: 1, memberId: 1, leaderId: 1, raftTerm: 1 } });
        // The first write is held until the three after it are answered.
        if (seen.length === 1) held.push(answer);
        else answer();
      },
    } as unknown as KVServer;
    const server = new Server();
    server.addService(KVService, service);
    const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))));
    const client = new CairnClient({ endpoints: [`127.0.0.1:${port}`], timeoutMs: 5000, consistency: Consistency.CONSISTENCY_SERIALIZABLE });
    try {
      const slow = client.put(Buffer.from('a'), Buffer.from('1'));
      await waitFor('the first write at the server', () => seen.length === 1);
      await client.put(Buffer.from('b'), Buffer.from('2'));
      await Promise.all([client.put(Buffer.from('c'), Buffer.from('3')), client.put(Buffer.from('d'), Buffer.from('4'))]);
      held[0]!();
      await slow;
      await client.put(Buffer.from('e'), Buffer.from('5'));
      expect(seen.map((r) => [r.sequence, r.lowestUnansweredSequence])).toEqual([[1, 1], [2, 1], [3, 1], [4, 1], [5, 5]]);
      expect(new Set(seen.map((r) => r.clientId)).size).toBe(1);
    } finally {
      client.close();
      server.forceShutdown();
    }
  });
});

