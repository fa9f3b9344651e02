import { Server, ServerCredentials } from '@grpc/grpc-js';
import { ClusterServer, ClusterService, Member, MemberRole, StatusResponse } from '../../gen/cairn/kv/v1/kv';
import { CairnError, ErrorCode } from '../../src/errors';
import { configFromMembers, joinCluster, promoteWhenCaughtUp } from '../../src/server/join';
import { toGrpcError } from '../../src/server/status';

jest.setTimeout(20_000);

const quiet = () => ({ info: jest.fn(), warn: jest.fn() });
const voter = (id: number): Member => ({ id, peerAddr: `p:${id}`, clientAddr: `c:${id}`, isLeader: id === 1, role: MemberRole.MEMBER_ROLE_VOTER });
const learner = (id: number, peerAddr = `p:${id}`): Member => ({ id, peerAddr, clientAddr: '', isLeader: false, role: MemberRole.MEMBER_ROLE_LEARNER });
const header = { revision: 0, memberId: 1, leaderId: 1, raftTerm: 2 };

/** A Cluster service whose answers the test scripts, one call at a time. */
function fakeCluster(overrides: Partial<Record<'memberAdd' | 'memberList' | 'memberPromote', () => { members: Member[] } | CairnError>>) {
  const calls: string[] = [];
  const answer = (name: 'memberAdd' | 'memberList' | 'memberPromote') => (_call: unknown, callback: (err: unknown, value?: unknown) => void) => {
    calls.push(name);
    const result = overrides[name]!();
    if (result instanceof CairnError) callback(toGrpcError(result));
    else callback(null, { header, ...result });
  };
  const service = {
    status: (_call: unknown, callback: (err: unknown, value?: unknown) => void) => {
      calls.push('status');
      callback(null, StatusResponse.fromPartial({ header, clusterId: 77, id: 1, role: 'leader', term: 2, leaderId: 1 }));
    },
    memberAdd: answer('memberAdd'),
    memberList: answer('memberList'),
    memberPromote: answer('memberPromote'),
  } as unknown as ClusterServer;
  return { service, calls };
}

async function serve(service: ClusterServer): Promise<{ server: Server; addr: string }> {
  const server = new Server();
  server.addService(ClusterService, service);
  const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))));
  return { server, addr: `127.0.0.1:${port}` };
}

describe('joining a running cluster', () => {
  const request = (addr: string) => ({ id: 4, peerAddr: 'p:4', clientAddr: 'c:4', endpoints: [addr] });

  test('asks for the cluster id, then MemberAdd, and starts from the configuration it was added with', async () => {
    const fake = fakeCluster({ memberAdd: () => ({ members: [voter(1), voter(2), learner(4)] }) });
    const { server, addr } = await serve(fake.service);
    try {
      const joined = await joinCluster(request(addr), quiet());
      expect(joined).toEqual({ clusterId: 77, config: configFromMembers([voter(1), voter(2), learner(4)]) });
      expect(joined.config.learners.map((m) => m.id)).toEqual([4]);
      expect(fake.calls).toEqual(['status', 'memberAdd']);
    } finally {
      server.forceShutdown();
    }
  });

  test('added already at the same peer address (an earlier start, or cairn member add): continues from MemberList; at another address: refused', async () => {
    let listed = [voter(1), learner(4)];
    const fake = fakeCluster({ memberAdd: () => new CairnError(ErrorCode.MEMBER_EXISTS, 'member 4 is already a learner'), memberList: () => ({ members: listed }) });
    const { server, addr } = await serve(fake.service);
    try {
      expect((await joinCluster(request(addr), quiet())).config).toEqual(configFromMembers(listed));
      listed = [voter(1), learner(4, 'elsewhere:1')];
      await expect(joinCluster(request(addr), quiet())).rejects.toThrow('the cluster already has a member 4 at elsewhere:1');
    } finally {
      server.forceShutdown();
    }
  });

  test('a refusal that waiting cannot cure is not retried', async () => {
    const fake = fakeCluster({ memberAdd: () => new CairnError(ErrorCode.INVALID_ARGUMENT, 'peer_addr is empty') });
    const { server, addr } = await serve(fake.service);
    try {
      await expect(joinCluster(request(addr), quiet())).rejects.toMatchObject({ details: 'peer_addr is empty' });
      expect(fake.calls).toEqual(['status', 'memberAdd']);
    } finally {
      server.forceShutdown();
    }
  });

  test('a retry that finds the node a voter already (the first answer was lost) is the promotion done, as the member list says; otherwise the refusal stands', async () => {
    let listed: Member[] = [voter(1), voter(4)];
    const answers: (CairnError | { members: Member[] })[] = [];
    const fake = fakeCluster({ memberPromote: () => answers.shift()!, memberList: () => ({ members: listed }) });
    const { server, addr } = await serve(fake.service);
    try {
      answers.push(new CairnError(ErrorCode.LEARNER_NOT_CAUGHT_UP, 'not yet'), new CairnError(ErrorCode.INVALID_ARGUMENT, 'member 4 is already a voter'));
      const config = await promoteWhenCaughtUp(4, [addr], quiet());
      expect(config.voters.map((m) => m.id)).toEqual([1, 4]);
      listed = [voter(1), learner(4)];
      answers.push(new CairnError(ErrorCode.LEARNER_NOT_CAUGHT_UP, 'not yet'), new CairnError(ErrorCode.INVALID_ARGUMENT, 'member 4 is already a voter'));
      await expect(promoteWhenCaughtUp(4, [addr], quiet())).rejects.toThrow(/already a voter/);
      answers.push(new CairnError(ErrorCode.INVALID_ARGUMENT, 'no member 4'));
      await expect(promoteWhenCaughtUp(4, [addr], quiet())).rejects.toThrow(/no member 4/); // a first answer is never second-guessed
    } finally {
      server.forceShutdown();
    }
  });

  test('promotion retries LEARNER_NOT_CAUGHT_UP and CONFIG_CHANGE_PENDING until it succeeds, and gives up at its deadline', async () => {
    const refusals = [ErrorCode.LEARNER_NOT_CAUGHT_UP, ErrorCode.CONFIG_CHANGE_PENDING, ErrorCode.LEARNER_NOT_CAUGHT_UP];
    const fake = fakeCluster({
      memberPromote: () => {
        const code = refusals.shift();
        return code ? new CairnError(code, 'not yet') : { members: [voter(1), voter(4)] };
      },
    });
    const { server, addr } = await serve(fake.service);
    try {
      const config = await promoteWhenCaughtUp(4, [addr], quiet());
      expect(config.voters.map((m) => m.id)).toEqual([1, 4]);
      expect(fake.calls.filter((c) => c === 'memberPromote')).toHaveLength(4);
      refusals.push(...Array(1000).fill(ErrorCode.LEARNER_NOT_CAUGHT_UP));
      await expect(promoteWhenCaughtUp(4, [addr], quiet(), undefined, 500)).rejects.toThrow(/MemberPromote did not succeed within the time allowed/);
    } finally {
      server.forceShutdown();
    }
  });
});
