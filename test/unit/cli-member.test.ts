import { Server, ServerCredentials } from '@grpc/grpc-js';
import { ClusterServer, ClusterService, Consistency, Member, MemberRole } from '../../gen/cairn/kv/v1/kv';
import { CairnError, ErrorCode } from '../../src/errors';
import { toGrpcError } from '../../src/server/status';
import { CairnClient } from '../../src/cli/client';
import { UsageError } from '../../src/cli/flags';
import { checkVerbFlags, describeMember, runVerb } from '../../src/cli/verbs';
import { buildServerConfig, SERVE_FLAGS } from '../../src/server/config';
import { resolveFlags } from '../../src/cli/flags';

const members: Member[] = [
  { id: 1, peerAddr: '127.0.0.1:7101', clientAddr: '127.0.0.1:7001', isLeader: false, role: MemberRole.MEMBER_ROLE_VOTER },
  { id: 2, peerAddr: '127.0.0.1:7102', clientAddr: '127.0.0.1:7002', isLeader: true, role: MemberRole.MEMBER_ROLE_VOTER },
  { id: 4, peerAddr: '127.0.0.1:7104', clientAddr: '', isLeader: false, role: MemberRole.MEMBER_ROLE_LEARNER },
];

/** A client that records the Cluster calls it is asked for. */
function fakeClient() {
  const calls: unknown[][] = [];
  const client = {
    members: async () => ({ members }),
    memberAdd: async (...args: unknown[]) => (calls.push(['add', ...args]), { members }),
    memberPromote: async (...args: unknown[]) => (calls.push(['promote', ...args]), { members }),
    memberRemove: async (...args: unknown[]) => (calls.push(['remove', ...args]), { members: members.slice(0, 2) }),
    leaderTransfer: async (...args: unknown[]) => (calls.push(['transfer', ...args]), { leaderId: 3 }),
  } as unknown as CairnClient;
  return { client, calls };
}

async function run(args: string[], flags: Record<string, string> = {}) {
  const { client, calls } = fakeClient();
  const lines: string[] = [];
  const code = await runVerb(client, args[0]!, args.slice(1), flags, (line) => lines.push(line));
  return { code, lines, calls };
}

describe('cairn member and cairn leader', () => {
  test('member list: one member a line, id first, then voter or learner, peer and client address, and the leader mark', async () => {
    const { code, lines } = await run(['member', 'list']);
    expect(code).toBe(0);
    expect(lines.map((l) => l.split(/\s+/))).toEqual([
      ['1', 'voter', '127.0.0.1:7101', '127.0.0.1:7001'],
      ['2', 'voter', '127.0.0.1:7102', '127.0.0.1:7002', 'leader'],
      ['4', 'learner', '127.0.0.1:7104', '-'],
    ]);
    expect(describeMember(members[1]!)).toBe('2   voter   127.0.0.1:7102         127.0.0.1:7002         leader');
  });

  test('add, promote, remove and transfer call the cluster with what was typed', async () => {
    expect((await run(['member', 'add', '4', '127.0.0.1:7104'], { 'client-addr': '127.0.0.1:7004' })).calls).toEqual([['add', 4, '127.0.0.1:7104', '127.0.0.1:7004']]);
    const promoted = await run(['member', 'promote', '4']);
    expect(promoted.calls).toEqual([['promote', 4]]);
    expect(promoted.lines[0]).toBe('promoted node 4 to voter');
    const removed = await run(['member', 'remove', '4']);
    expect(removed.lines).toEqual(['removed node 4', expect.stringMatching(/^1 /), expect.stringMatching(/^2 /)]);
    expect(await run(['leader', 'transfer'], { to: '3' })).toEqual({ code: 0, lines: ['leader: node 3'], calls: [['transfer', 3]] });
    expect((await run(['leader', 'transfer'])).calls).toEqual([['transfer', 0]]);
  });

  test('wrong forms are usage errors that list the forms', async () => {
    const usage = expect.objectContaining({ name: 'UsageError' });
    await expect(run(['member'])).rejects.toThrow(UsageError);
    await expect(run(['member', 'list', 'x'])).rejects.toThrow('usage: member list | member add ID PEER_ADDR [--client-addr HOST:PORT] | member promote ID | member remove ID');
    await expect(run(['member', 'add', '4'])).rejects.toEqual(usage);
    await expect(run(['member', 'frobnicate', '4'])).rejects.toEqual(usage);
    await expect(run(['member', 'promote', '0'])).rejects.toThrow('ID must be a member id (an integer >= 1), got "0"');
    await expect(run(['member', 'remove', '1.5'])).rejects.toThrow('ID must be a member id');
    await expect(run(['member', 'promote', '4'], { 'client-addr': 'h:1' })).rejects.toThrow('--client-addr applies to member add only');
    await expect(run(['leader', 'elect'])).rejects.toThrow('usage: leader transfer [--to ID]');
    await expect(run(['leader', 'transfer'], { to: 'x' })).rejects.toThrow('--to must be a member id');
    expect(() => checkVerbFlags('leader', { 'client-addr': 'h:1' }, ['endpoints'])).toThrow('--client-addr does not apply to leader; leader takes --to, --endpoints');
  });

  test('cairn serve --join and --learner: parsed, and refused where they make no sense', () => {
    const config = (flags: Record<string, string>) => buildServerConfig(resolveFlags(SERVE_FLAGS, { id: '4', ...flags }, {}));
    expect(config({ join: '127.0.0.1:7001, 127.0.0.1:7002', learner: 'true' })).toMatchObject({ join: ['127.0.0.1:7001', '127.0.0.1:7002'], learner: true, peersGiven: false });
    expect(config({})).toMatchObject({ join: [], learner: false });
    expect(() => config({ join: 'nohost' })).toThrow('--join entry "nohost" is not HOST:PORT');
    expect(() => config({ join: '127.0.0.1:7001', peers: '4=127.0.0.1:7104' })).toThrow('--join and --peers exclude each other');
    expect(() => config({ learner: 'true' })).toThrow('--learner needs --join');
    expect(() => config({ join: '127.0.0.1:7001', learner: 'yes' })).toThrow('--learner is a switch');
  });
});

describe('CairnClient.memberRemove when an answer is lost', () => {
  const header = { revision: 0, memberId: 2, leaderId: 2, raftTerm: 3 };
  type Answer = CairnError | { members: Member[] };

  /** A Cluster service answering MemberRemove and MemberList from the scripts, recording the calls. */
  async function serve(remove: () => Answer, calls: string[], name: string) {
    const reply = (result: Answer, callback: (err: unknown, value?: unknown) => void) =>
      result instanceof CairnError ? callback(toGrpcError(result)) : callback(null, { header, ...result });
    const service = {
      memberRemove: (_call: unknown, callback: (err: unknown, value?: unknown) => void) => (calls.push(`${name}:remove`), reply(remove(), callback)),
      memberList: (_call: unknown, callback: (err: unknown, value?: unknown) => void) => (calls.push(`${name}:list`), reply({ members: members.slice(0, 2) }, callback)),
    } as unknown as ClusterServer;
    const server = new Server();
    server.addService(ClusterService, service);
    const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))));
    return { server, addr: `127.0.0.1:${port}` };
  }

  async function removeThrough(first: Answer, second: Answer) {
    const calls: string[] = [];
    const a = await serve(() => first, calls, 'a');
    const b = await serve(() => second, calls, 'b');
    const client = new CairnClient({ endpoints: [a.addr, b.addr], timeoutMs: 2000, consistency: Consistency.CONSISTENCY_SERIALIZABLE });
    try {
      return { result: await client.memberRemove(4).then((r) => r, (err: Error) => err), calls };
    } finally {
      client.close();
      a.server.forceShutdown();
      b.server.forceShutdown();
    }
  }

  const lost = new CairnError(ErrorCode.OUTCOME_UNKNOWN, 'the call to the leader (node 2) failed after the cluster change was sent (gRPC UNAVAILABLE); its outcome is unknown');
  const notFound = new CairnError(ErrorCode.MEMBER_NOT_FOUND, 'cannot change membership: no member 4 in the configuration');

  test('a retry that finds the member gone after a lost answer is the removal done: answered with the members now', async () => {
    const { result, calls } = await removeThrough(lost, notFound);
    expect(result).toEqual({ header, members: members.slice(0, 2) });
    expect(calls).toEqual(['a:remove', 'b:remove', expect.stringMatching(/:list$/)]);
  });

  test('NOT_FOUND with no lost answer before it stays NOT_FOUND (the member was never there)', async () => {
    const { result, calls } = await removeThrough(notFound, notFound);
    expect(result).toMatchObject({ name: 'CallFailedError', details: 'cannot change membership: no member 4 in the configuration' });
    expect(calls).toEqual(['a:remove']);
  });
});
