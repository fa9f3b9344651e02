import { AuthView } from '../../src/kv/auth-state';
import { credentials, Metadata, Server, ServerCredentials, ServiceError, status as Status } from '@grpc/grpc-js';
import pino from 'pino';
import { ClusterClient, ClusterService, MemberAddResponse, MemberRole } from '../../gen/cairn/kv/v1/kv';
import { ClusterConfig, ConfigChange, ConfigChangeType, Message, RaftServiceServer, RaftServiceService, StreamRequest } from '../../gen/cairn/raft/v1/raft';
import { CairnError, ErrorCode } from '../../src/errors';
import { KvReplica } from '../../src/kv/kv-replica';
import { Role } from '../../src/raft/node';
import { FORWARDED_METADATA, LeaderClients } from '../../src/server/leader-clients';
import { ClusterMembership, MembershipReplica } from '../../src/server/membership';
import { GrpcPeerTransport } from '../../src/server/peer-transport';
import { RequestRouter } from '../../src/server/router';
import { clusterService, raftService, ServiceContext, withLenientDecoding } from '../../src/server/services';
import { COMMIT_INDEX_METADATA, ERROR_CODE_METADATA, LEADER_ID_METADATA, toGrpcError } from '../../src/server/status';
import { rawPeerStream } from '../support/raw-peer';
import { waitFor } from '../support/process-cluster';

jest.setTimeout(30_000);

const CLUSTER_ID = 42;
const logger = pino({ level: 'silent' });
const member = (id: number, clientAddr = '') => ({ id, peerAddr: `127.0.0.1:${1000 + id}`, clientAddr });
const THREE: ClusterConfig = { voters: [member(1), member(2), member(3)], learners: [] };

/** A Replica stand-in: a role and a leader, and membership calls that record what they were asked. */
class FakeReplica implements MembershipReplica {
  role: Role = 'leader';
  leader = 1;
  current: ClusterConfig = THREE;
  committed: ClusterConfig = THREE;
  readonly changes: ConfigChange[] = [];
  readonly transfers: (number | undefined)[] = [];
  /** What a change waits for before it is applied (a test can look in between). */
  gate: Promise<void> = Promise.resolve();

  constructor(readonly id = 1) {}

  clusterConfig = () => this.current;
  committedConfig = () => this.committed;
  commitIndex = () => 7;

  async proposeConfigChange(change: ConfigChange): Promise<ClusterConfig> {
    this.changes.push(change);
    await this.gate;
    const m = change.member!;
    if (change.type === ConfigChangeType.CONFIG_CHANGE_TYPE_ADD_LEARNER) this.current = { ...this.current, learners: [...this.current.learners, m] };
    if (change.type === ConfigChangeType.CONFIG_CHANGE_TYPE_REMOVE) {
      this.current = { voters: this.current.voters.filter((v) => v.id !== m.id), learners: this.current.learners.filter((v) => v.id !== m.id) };
    }
    return this.current;
  }

  async transferLeadership(to?: number): Promise<number> {
    this.transfers.push(to);
    return to ?? 2;
  }

  asKvReplica(): KvReplica {
    const self = this;
    return {
      id: this.id,
      node: {
        id: this.id,
        get role() {
          return self.role;
        },
        get leader() {
          return self.leader;
        },
        term: 3,
        status: () => ({ id: self.id, role: self.role, term: 3, leader: self.leader, commitIndex: 7, lastIndex: 7, progress: [] }),
      },
      stateMachine: { revision: () => 5, appliedIndex: () => 7, authState: () => AuthView.empty() },
      halt: () => undefined,
      receive: () => undefined,
    } as unknown as KvReplica;
  }
}

function contextFor(fake: FakeReplica, clientAddr = ''): ServiceContext {
  const replica = fake.asKvReplica();
  return {
    replica,
    router: {} as RequestRouter,
    clusterId: CLUSTER_ID,
    limits: { maxKeyBytes: 64, maxValueBytes: 256, maxRequestBytes: 512, maxRangeLimit: 100, maxRangeBytes: 4096, maxClientIdBytes: 16 },
    requestTimeoutMs: 10_000,
    logger,
    membership: new ClusterMembership(fake.id, clientAddr, fake),
    membershipReplica: fake,
    leaderClients: new LeaderClients(fake.id),
  };
}

async function serve(add: (server: Server) => void): Promise<{ server: Server; addr: string }> {
  const server = new Server();
  add(server);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  return { server, addr: `127.0.0.1:${port}` };
}

function unary<T>(start: (md: Metadata, done: (err: ServiceError | null, value?: T) => void) => void, metadata = new Metadata()): Promise<{ err: ServiceError | null; value?: T }> {
  return new Promise((resolve) => start(metadata, (err, value) => resolve({ err, value })));
}

describe('Cluster membership RPCs', () => {
  const servers: Server[] = [];
  const clients: ClusterClient[] = [];
  const contexts: ServiceContext[] = [];
  afterEach(() => {
    servers.splice(0).forEach((s) => s.forceShutdown());
    clients.splice(0).forEach((c) => c.close());
    contexts.splice(0).forEach((c) => c.leaderClients.close());
  });

  async function node(fake: FakeReplica, clientAddr = ''): Promise<{ client: ClusterClient; addr: string; context: ServiceContext }> {
    const context = contextFor(fake, clientAddr);
    const { server, addr } = await serve((s) => s.addService(withLenientDecoding(ClusterService), clusterService(context)));
    const client = new ClusterClient(addr, credentials.createInsecure());
    servers.push(server);
    clients.push(client);
    contexts.push(context);
    return { client, addr, context };
  }

  test('bad input is INVALID_ARGUMENT naming the field, and nothing is proposed', async () => {
    const fake = new FakeReplica();
    const { client } = await node(fake);
    const cases: [string, Promise<{ err: ServiceError | null }>][] = [
      ['id must be a member id >= 1, got 0', unary((md, done) => client.memberAdd({ id: 0, peerAddr: '127.0.0.1:9', clientAddr: '' }, md, done))],
      ['peer_addr is empty', unary((md, done) => client.memberAdd({ id: 4, peerAddr: '', clientAddr: '' }, md, done))],
      ['peer_addr "nohost" is not HOST:PORT', unary((md, done) => client.memberAdd({ id: 4, peerAddr: 'nohost', clientAddr: '' }, md, done))],
      ['peer_addr "h:70000" is not HOST:PORT', unary((md, done) => client.memberAdd({ id: 4, peerAddr: 'h:70000', clientAddr: '' }, md, done))],
      ['client_addr "x y:1" is not HOST:PORT', unary((md, done) => client.memberAdd({ id: 4, peerAddr: 'h:1', clientAddr: 'x y:1' }, md, done))],
      ['id must be a member id >= 1, got 0', unary((md, done) => client.memberPromote({ id: 0 }, md, done))],
      ['id must be a member id >= 1, got 0', unary((md, done) => client.memberRemove({ id: 0 }, md, done))],
    ];
    for (const [message, call] of cases) {
      const { err } = await call;
      expect({ code: err?.code, details: err?.details }).toEqual({ code: Status.INVALID_ARGUMENT, details: expect.stringContaining(message) });
    }
    expect(fake.changes).toEqual([]);
  });

  test('on the leader: MemberAdd proposes an ADD_LEARNER, accepts the new node as a sender meanwhile, and answers with the new members', async () => {
    const fake = new FakeReplica();
    let release!: () => void;
    fake.gate = new Promise((resolve) => (release = resolve));
    const { client, context } = await node(fake, '127.0.0.1:7001');
    expect(() => context.membership.checkSender(4)).toThrow(/node 4 is not a member/);
    const answer = unary((md, done) => client.memberAdd({ id: 4, peerAddr: '127.0.0.1:1004', clientAddr: '127.0.0.1:2004' }, md, done));
    await waitFor('the change to be proposed', () => fake.changes.length === 1);
    expect(() => context.membership.checkSender(4)).not.toThrow();
    release();
    const { err, value } = await answer;
    expect(err).toBeNull();
    expect(fake.changes[0]).toEqual({ type: ConfigChangeType.CONFIG_CHANGE_TYPE_ADD_LEARNER, member: { id: 4, peerAddr: '127.0.0.1:1004', clientAddr: '127.0.0.1:2004' } });
    expect((value as MemberAddResponse).members.map((m) => [m.id, m.role, m.isLeader, m.clientAddr])).toEqual([
      [1, MemberRole.MEMBER_ROLE_VOTER, true, '127.0.0.1:7001'],
      [2, MemberRole.MEMBER_ROLE_VOTER, false, ''],
      [3, MemberRole.MEMBER_ROLE_VOTER, false, ''],
      [4, MemberRole.MEMBER_ROLE_LEARNER, false, '127.0.0.1:2004'],
    ]);
    // MemberList follows the current configuration.
    const listed = await unary<{ members: { id: number }[] }>((md, done) => client.memberList({}, md, done));
    expect(listed.value!.members.map((m) => m.id)).toEqual([1, 2, 3, 4]);
  });

  test('on the leader: promote, remove and transfer reach the Replica; its refusal is the client\'s error', async () => {
    const fake = new FakeReplica();
    const { client } = await node(fake);
    expect((await unary((md, done) => client.memberPromote({ id: 4 }, md, done))).err).toBeNull();
    expect((await unary((md, done) => client.memberRemove({ id: 3 }, md, done))).value).toMatchObject({ members: [{ id: 1 }, { id: 2 }] });
    expect(fake.changes.map((c) => [c.type, c.member?.id])).toEqual([
      [ConfigChangeType.CONFIG_CHANGE_TYPE_PROMOTE, 4],
      [ConfigChangeType.CONFIG_CHANGE_TYPE_REMOVE, 3],
    ]);
    expect((await unary<{ leaderId: number }>((md, done) => client.leaderTransfer({ toId: 3 }, md, done))).value?.leaderId).toBe(3);
    expect((await unary<{ leaderId: number }>((md, done) => client.leaderTransfer({ toId: 0 }, md, done))).value?.leaderId).toBe(2);
    // To the leader itself: nothing to do, answered with the leader.
    expect((await unary<{ leaderId: number }>((md, done) => client.leaderTransfer({ toId: 1 }, md, done))).value?.leaderId).toBe(1);
    expect(fake.transfers).toEqual([3, undefined]);

    fake.proposeConfigChange = () => Promise.reject(new CairnError(ErrorCode.INVALID_ARGUMENT, 'node 9 is not a member'));
    const { err } = await unary((md, done) => client.memberRemove({ id: 9 }, md, done));
    expect({ code: err?.code, details: err?.details }).toEqual({ code: Status.INVALID_ARGUMENT, details: 'node 9 is not a member' });
  });

  test('on a follower: forwarded once to the leader\'s client port, and the leader\'s answer relayed', async () => {
    const leaderFake = new FakeReplica(1);
    const leader = await node(leaderFake, 'unused');
    const followerFake = new FakeReplica(2);
    followerFake.role = 'follower';
    followerFake.current = followerFake.committed = { voters: [member(1, leader.addr), member(2), member(3)], learners: [] };
    const follower = await node(followerFake);
    const { err, value } = await unary<{ members: { id: number }[] }>((md, done) => follower.client.memberAdd({ id: 4, peerAddr: '127.0.0.1:1004', clientAddr: '' }, md, done));
    expect(err).toBeNull();
    expect(value!.members.map((m) => m.id)).toEqual([1, 2, 3, 4]);
    expect(leaderFake.changes).toHaveLength(1);
    expect(followerFake.changes).toHaveLength(0);

    // The leader's refusal comes back as the leader gave it.
    leaderFake.proposeConfigChange = () => Promise.reject(new CairnError(ErrorCode.NOT_LEADER, 'lost it', { leader: 3 }));
    const refused = await unary((md, done) => follower.client.memberRemove({ id: 3 }, md, done));
    expect(refused.err?.metadata.get(ERROR_CODE_METADATA)).toEqual([ErrorCode.NOT_LEADER]);
    expect(refused.err?.metadata.get(LEADER_ID_METADATA)).toEqual(['3']);
  });

  test('on a follower: a call forwarded already, or with the leader\'s client address unknown, is NOT_LEADER with cairn-leader-id; no leader is NO_LEADER', async () => {
    const fake = new FakeReplica(2);
    fake.role = 'follower';
    fake.leader = 1;
    const { client } = await node(fake);
    const forwarded = new Metadata();
    forwarded.set(FORWARDED_METADATA, '3');
    for (const metadata of [forwarded, new Metadata()]) {
      const { err } = await unary((md, done) => client.leaderTransfer({ toId: 0 }, md, done), metadata);
      expect(err?.code).toBe(Status.UNAVAILABLE);
      expect(err?.metadata.get(ERROR_CODE_METADATA)).toEqual([ErrorCode.NOT_LEADER]);
      expect(err?.metadata.get(LEADER_ID_METADATA)).toEqual(['1']);
    }
    fake.leader = 0;
    const { err } = await unary((md, done) => client.memberPromote({ id: 4 }, md, done));
    expect(err?.metadata.get(ERROR_CODE_METADATA)).toEqual([ErrorCode.NO_LEADER]);
    expect(fake.transfers).toEqual([]);
  });
});

describe('the peer sender check follows the configuration', () => {
  const frame = (fromId: number) => Buffer.from(StreamRequest.encode({ clusterId: CLUSTER_ID, fromId, clientAddr: '', messages: [] }).finish());

  test('members pass; a stranger is WRONG_CLUSTER; a removed node is refused once its removal is in the log, with MEMBER_REMOVED once it is committed', async () => {
    const fake = new FakeReplica();
    const context = contextFor(fake);
    const { server, addr } = await serve((s) => s.addService(withLenientDecoding(RaftServiceService), raftService(context)));
    const code = async (from: number) => {
      const err = await rawPeerStream(addr, [frame(from)]);
      return err ? String(err.metadata.get(ERROR_CODE_METADATA)[0]) : 'accepted';
    };
    try {
      expect(await code(3)).toBe('accepted');
      expect(await code(9)).toBe(ErrorCode.WRONG_CLUSTER);
      fake.current = { voters: [member(1), member(2)], learners: [] }; // removal of 3 appended
      expect(await code(3)).toBe(ErrorCode.WRONG_CLUSTER);
      fake.committed = fake.current; // and committed
      expect(await code(3)).toBe(ErrorCode.MEMBER_REMOVED);
      expect((await rawPeerStream(addr, [frame(3)]))?.metadata.get(COMMIT_INDEX_METADATA)).toEqual(['7']);
      expect(await code(9)).toBe(ErrorCode.WRONG_CLUSTER);
      fake.current = { voters: [member(1), member(2)], learners: [member(5)] }; // a learner added
      expect(await code(5)).toBe('accepted');
    } finally {
      server.forceShutdown();
    }
  });
});

describe('peer links follow the configuration', () => {
  test('setPeers opens links to new members and closes those to members that left; a MEMBER_REMOVED refusal is reported', async () => {
    const received: StreamRequest[] = [];
    let refuse = false;
    const service: RaftServiceServer = {
      stream: (call, callback) => {
        call.on('data', (f: StreamRequest) => {
          if (refuse) return callback(toGrpcError(new CairnError(ErrorCode.MEMBER_REMOVED, 'node 1 was removed from the cluster', { commitIndex: 12 })));
          received.push(f);
        });
        call.on('end', () => callback(null, {}));
        call.on('error', () => undefined);
      },
      propose: (_c, cb) => cb(null, { result: Buffer.alloc(0), term: 0 }),
      readIndex: (_c, cb) => cb(null, { index: 0 }),
      installSnapshot: (_c, cb) => cb(null, { term: 0, installed: false, reason: '' }),
    };
    const { server, addr } = await serve((s) => s.addService(RaftServiceService, service));
    const removals: string[] = [];
    const transport = new GrpcPeerTransport({ clusterId: CLUSTER_ID, selfId: 1, clientAddr: '' }, new Map([[2, addr]]), logger, {
      maxMessageBytes: 4 << 20,
      maxReconnectBackoffMs: 100,
      onRemoved: (by, reason, commitIndex) => removals.push(`${by}: ${reason} at ${commitIndex}`),
    });
    const to = (id: number): Message => ({ fromId: 1, to: id, term: 1, body: { $case: 'heartbeatRequest', value: { commit: 0, readRound: 0 } } });
    try {
      expect([...transport.peerAddrs().keys()]).toEqual([2]);
      transport.send([to(4)]); // not a member yet: dropped
      transport.setPeers(new Map([[1, 'self:1'], [2, addr], [4, addr]]));
      expect([...transport.peerAddrs().keys()]).toEqual([2, 4]);
      transport.send([to(4)]);
      await waitFor('the new member to get its message', () => received.some((f) => f.messages[0]?.to === 4), 5000);
      expect(received.filter((f) => f.messages[0]?.to === 4)).toHaveLength(1);
      transport.setPeers(new Map([[4, addr]]));
      expect([...transport.peerAddrs().keys()]).toEqual([4]);
      refuse = true;
      transport.send([to(4)]);
      await waitFor('the refusal to be reported', () => removals.length > 0, 5000);
      expect(removals[0]).toBe('4: node 1 was removed from the cluster at 12');
    } finally {
      transport.close();
      server.forceShutdown();
    }
  });
});
