import { EventEmitter } from 'node:events';
import { createServer } from 'node:net';
import {
  credentials,
  Metadata,
  Server,
  ServerCredentials,
  ServiceError,
  status as Status,
} from '@grpc/grpc-js';
import pino from 'pino';
import { Command, KVClient, KVService } from '../../gen/cairn/kv/v1/kv';
import { HardState, Entry, Message, RaftServiceClient, RaftServiceService, StreamRequest } from '../../gen/cairn/raft/v1/raft';
import { InvariantViolation } from '../../src/assert';
import { CairnError, ErrorCode } from '../../src/errors';
import { KvStateMachine } from '../../src/kv/state-machine';
import { KvReplica, openKvReplica } from '../../src/kv/kv-replica';
import { DEFAULT_RAFT_CONFIG } from '../../src/raft/node';
import { SeededRandom } from '../../src/raft/random';
import { Limits } from '../../src/server/config';
import { LeaderClients } from '../../src/server/leader-clients';
import { ClusterMembership, configFromPeers, MembershipReplica } from '../../src/server/membership';
import { GrpcPeerTransport } from '../../src/server/peer-transport';
import { RateLimitedLog } from '../../src/server/rate-limited-log';
import { forwardingFailure, RequestRouter, RequestScope } from '../../src/server/router';
import { effectiveDeadlineMs, kvService, openRequestScope, PeerInputStats, raftService, ServiceContext, withLenientDecoding } from '../../src/server/services';
import { ERROR_CODE_METADATA, fromGrpcError, LEADER_ID_METADATA, toGrpcError } from '../../src/server/status';
import { LevelDb } from '../../src/storage/db';
import { LevelRaftStorage, RaftStorage } from '../../src/storage/raft-storage';
import { DelegatingStorage } from '../../src/storage/delegating-storage';
import { rawPeerStream, rawPeerUnary } from '../support/raw-peer';

jest.setTimeout(30_000);

const CLUSTER_ID = 42;
const LIMITS: Limits = { maxKeyBytes: 64, maxValueBytes: 256, maxRequestBytes: 512, maxRangeLimit: 100, maxRangeBytes: 4096, maxClientIdBytes: 16 };

/** Storage whose writes can be held back, so proposals and reads stay pending. */
class StallableStorage extends DelegatingStorage {
  private stalled = false;
  private waiting: (() => void)[] = [];
  override async persist(hardState: HardState | undefined, entries: readonly Entry[]): Promise<void> {
    if (this.stalled) await new Promise<void>((resolve) => this.waiting.push(resolve));
    return this.inner.persist(hardState, entries);
  }
  override async writeSynced(ops: Parameters<RaftStorage['writeSynced']>[0]): Promise<void> {
    if (this.stalled) await new Promise<void>((resolve) => this.waiting.push(resolve));
    return this.inner.writeSynced(ops);
  }
  stall(): void {
    this.stalled = true;
  }
  release(): void {
    this.stalled = false;
    for (const resume of this.waiting.splice(0)) resume();
  }
}

interface Harness {
  replica: KvReplica;
  storage: StallableStorage;
  fatal: unknown[];
  close(): Promise<void>;
}

/** A single-voter replica on memory-level that leads. */
async function leaderReplica(): Promise<Harness> {
  const db = await LevelDb.openMemory();
  const storage = new StallableStorage(new LevelRaftStorage(db));
  const fatal: unknown[] = [];
  const replica = await openKvReplica({
    config: { ...DEFAULT_RAFT_CONFIG, id: 1, voters: [1], random: new SeededRandom(3) },
    storage,
    stateMachine: await KvStateMachine.open(db),
    transport: { send: () => undefined },
    onFatal: (err) => fatal.push(err),
  });
  await waitFor('leadership', async () => {
    replica.tick();
    await new Promise((resolve) => setImmediate(resolve));
    return replica.node.role === 'leader' && replica.stateMachine.appliedIndex() >= 1;
  });
  return {
    replica,
    storage,
    fatal,
    async close() {
      storage.release();
      await replica.stop();
      await db.close();
    },
  };
}

async function waitFor<T>(what: string, condition: () => Promise<T> | T, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await condition();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

const put = (key: string, value = 'v'): Command => ({
  op: { $case: 'put', value: { key: Buffer.from(key), value: Buffer.from(value), prevKv: false, clientId: '', sequence: 0, lowestUnansweredSequence: 0 } },
  proposedAtUnixMs: 0,
});

const NO_PENDING = { proposals: 0, reads: 0, appliedWaiters: 0 };
const TEST_TRANSPORT_OPTIONS = { maxMessageBytes: 4 << 20, maxReconnectBackoffMs: 1000 };

function abortedSoon(ms: number): RequestScope {
  return { deadlineMs: Date.now() + ms, signal: AbortSignal.timeout(ms) };
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

function captureLogger() {
  const lines: Record<string, unknown>[] = [];
  const logger = pino({ level: 'info' }, { write: (line: string) => lines.push(JSON.parse(line)) });
  return { logger, lines };
}

function contextFor(replica: KvReplica, router: RequestRouter, overrides: Partial<ServiceContext> = {}): ServiceContext {
  const config = configFromPeers(new Map([[1, '127.0.0.1:1'], [2, '127.0.0.1:2']]));
  const membershipReplica: MembershipReplica = {
    clusterConfig: () => config,
    committedConfig: () => config,
    commitIndex: () => 0,
    proposeConfigChange: () => Promise.reject(new Error('not in these tests')),
    transferLeadership: () => Promise.reject(new Error('not in these tests')),
  };
  return {
    replica,
    router,
    clusterId: CLUSTER_ID,
    limits: LIMITS,
    requestTimeoutMs: 60_000,
    logger: captureLogger().logger,
    membership: new ClusterMembership(1, '', membershipReplica),
    membershipReplica,
    leaderClients: new LeaderClients(1),
    ...overrides,
  };
}

function bind(server: Server): Promise<number> {
  return new Promise((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (err, port) => (err ? reject(err) : resolve(port))),
  );
}

describe('timeouts release pending work', () => {
  let harness: Harness;
  beforeEach(async () => {
    harness = await leaderReplica();
  });
  afterEach(() => harness.close());

  test('an aborted proposal, read and applied-waiter leave none of the maps behind', async () => {
    const { replica, storage } = harness;
    storage.stall();
    const controller = new AbortController();
    const write = replica.propose(put('a'), undefined, controller.signal);
    const read = replica.confirmReadIndex(controller.signal);
    const caughtUp = replica.waitForApplied(1_000_000, controller.signal);
    expect(replica.pendingCounts()).toEqual({ proposals: 1, reads: 1, appliedWaiters: 1 });
    controller.abort();
    await expect(write).rejects.toMatchObject({ code: ErrorCode.TIMEOUT, message: expect.stringContaining('outcome is unknown') });
    await expect(read).rejects.toMatchObject({ code: ErrorCode.TIMEOUT });
    await expect(caughtUp).rejects.toMatchObject({ code: ErrorCode.TIMEOUT });
    expect(replica.pendingCounts()).toEqual(NO_PENDING);
    // The write may still commit later; nobody waits for it, and nothing breaks when it does.
    storage.release();
    await waitFor('the abandoned write to apply', () => replica.stateMachine.revision() === 1);
    expect(harness.fatal).toEqual([]);
  });

  test('an already aborted signal is refused before anything is queued', async () => {
    const signal = AbortSignal.abort();
    await expect(harness.replica.propose(put('a'), undefined, signal)).rejects.toMatchObject({ code: ErrorCode.TIMEOUT });
    expect(harness.replica.node.status().lastIndex).toBe(1); // only the leader's no-op
    expect(harness.replica.pendingCounts()).toEqual(NO_PENDING);
  });

  test('the router: a write or read that runs out of time on the leader is removed from the maps', async () => {
    const { replica, storage } = harness;
    const transport = new GrpcPeerTransport({ clusterId: CLUSTER_ID, selfId: 1, clientAddr: '' }, new Map([[1, '127.0.0.1:1']]), captureLogger().logger, TEST_TRANSPORT_OPTIONS);
    const router = new RequestRouter(replica, transport, CLUSTER_ID, 60_000);
    storage.stall();
    await expect(router.write(put('b'), abortedSoon(50))).rejects.toMatchObject({ code: ErrorCode.TIMEOUT });
    await expect(router.readBarrier(abortedSoon(50))).rejects.toMatchObject({ code: ErrorCode.TIMEOUT });
    expect(replica.pendingCounts()).toEqual(NO_PENDING);
    transport.close();
  });

  test("a client's short gRPC deadline is honoured by the server: DEADLINE_EXCEEDED, and the pending maps drain", async () => {
    const { replica, storage } = harness;
    const transport = new GrpcPeerTransport({ clusterId: CLUSTER_ID, selfId: 1, clientAddr: '' }, new Map([[1, '127.0.0.1:1']]), captureLogger().logger, TEST_TRANSPORT_OPTIONS);
    // --request-timeout-ms is a minute: only the client's deadline can release the write.
    const router = new RequestRouter(replica, transport, CLUSTER_ID, 60_000);
    const server = new Server();
    server.addService(withLenientDecoding(KVService), kvService(contextFor(replica, router)));
    const port = await bind(server);
    const client = new KVClient(`127.0.0.1:${port}`, credentials.createInsecure());
    try {
      storage.stall();
      const err = await new Promise<ServiceError | null>((resolve) =>
        client.put({ key: Buffer.from('k'), value: Buffer.from('v'), prevKv: false, clientId: '', sequence: 0, lowestUnansweredSequence: 0 }, new Metadata(), { deadline: Date.now() + 300 }, (e) => resolve(e)),
      );
      expect(err?.code).toBe(Status.DEADLINE_EXCEEDED);
      await waitFor('the server to drop the abandoned write', () => replica.pendingCounts().proposals === 0, 5000);
      expect(replica.pendingCounts()).toEqual(NO_PENDING);
    } finally {
      client.close();
      server.forceShutdown();
      transport.close();
    }
  });

  test('the effective deadline is the earlier of the client deadline and --request-timeout-ms', () => {
    expect(effectiveDeadlineMs(Infinity, 5000, 1000)).toBe(6000);
    expect(effectiveDeadlineMs(3000, 5000, 1000)).toBe(3000);
    expect(effectiveDeadlineMs(new Date(9000), 5000, 1000)).toBe(6000);
    expect(effectiveDeadlineMs(new Date(2500), 5000, 1000)).toBe(2500);
  });
});

describe('a broken invariant stops the node on every path', () => {
  let harness: Harness;
  beforeEach(async () => {
    harness = await leaderReplica();
  });
  afterEach(() => harness.close());

  test('an InvariantViolation thrown inside a request handler reaches the fatal handler', async () => {
    const violation = new InvariantViolation('planted: two leaders in one term');
    const router = { write: () => Promise.reject(violation), readBarrier: () => Promise.resolve() } as unknown as RequestRouter;
    const service = kvService(contextFor(harness.replica, router));
    const call = { request: { key: Buffer.from('k'), value: Buffer.from('v'), prevKv: false, clientId: '', sequence: 0, lowestUnansweredSequence: 0 }, getDeadline: () => Infinity, once: () => undefined, removeListener: () => undefined };
    const answer = await new Promise<{ code?: Status } | null>((resolve) => (service.put as unknown as (c: unknown, cb: (e: { code?: Status } | null) => void) => void)(call, resolve));
    expect(harness.fatal).toEqual([violation]);
    expect(answer?.code).toBe(Status.INTERNAL);
    // The halted replica takes no more input.
    await expect(harness.replica.propose(put('x'))).rejects.toMatchObject({ code: ErrorCode.STOPPED });
  });

  test('ordinary errors from a handler do not stop the node', async () => {
    const router = { write: () => Promise.reject(new CairnError(ErrorCode.NO_LEADER, 'none')), readBarrier: () => Promise.resolve() } as unknown as RequestRouter;
    const service = kvService(contextFor(harness.replica, router));
    const call = { request: { key: Buffer.from('k'), value: Buffer.from('v'), prevKv: false, clientId: '', sequence: 0, lowestUnansweredSequence: 0 }, getDeadline: () => Infinity, once: () => undefined, removeListener: () => undefined };
    const answer = await new Promise<{ code?: Status } | null>((resolve) => (service.put as unknown as (c: unknown, cb: (e: { code?: Status } | null) => void) => void)(call, resolve));
    expect(answer?.code).toBe(Status.UNAVAILABLE);
    expect(harness.fatal).toEqual([]);
  });

  test('an InvariantViolation from the core on tick or receive halts the replica once', () => {
    const violation = new InvariantViolation('planted in the core');
    harness.replica.node.step = () => {
      throw violation;
    };
    harness.replica.node.tick = () => {
      throw violation;
    };
    expect(() => harness.replica.receive({ fromId: 2, to: 1, term: 1, body: undefined })).toThrow(violation);
    expect(harness.fatal).toEqual([violation]);
    harness.replica.tick(); // stopped: ignored, not reported twice
    expect(harness.fatal).toEqual([violation]);
  });
});

describe('forwarding failures become cairn errors with trailers', () => {
  const serviceError = (code: Status, details: string, metadata = new Metadata()): ServiceError =>
    Object.assign(new Error(`${code} ${Status[code]}: ${details}`), { code, details, metadata });

  test('a leader that refuses connections: LEADER_UNREACHABLE naming the leader, no grpc-js text', async () => {
    const client = new RaftServiceClient(`127.0.0.1:${await freePort()}`, credentials.createInsecure());
    const err = await new Promise<ServiceError>((resolve) =>
      client.propose({ clusterId: 1, fromId: 2, command: Buffer.alloc(0) }, new Metadata(), { deadline: Date.now() + 5000 }, (e) => resolve(e!)),
    );
    client.close();
    expect(err.details).toMatch(/No connection established/); // what grpc-js says
    const mapped = toGrpcError(forwardingFailure(err, 3, 'write'));
    expect(mapped.code).toBe(Status.UNAVAILABLE);
    expect(mapped.metadata?.get(ERROR_CODE_METADATA)).toEqual([ErrorCode.LEADER_UNREACHABLE]);
    expect(mapped.metadata?.get(LEADER_ID_METADATA)).toEqual(['3']);
    expect(mapped.details).not.toMatch(/No connection established|ECONNREFUSED/);
  });

  test('after the request left: a deadline is TIMEOUT, a broken stream is OUTCOME_UNKNOWN for a write', () => {
    const timeout = forwardingFailure(serviceError(Status.DEADLINE_EXCEEDED, 'Deadline exceeded after 5.004s,LB pick: 0.001s,remote_addr=127.0.0.1:7101'), 1, 'write');
    expect(timeout).toMatchObject({ code: ErrorCode.TIMEOUT, message: expect.stringContaining('outcome is unknown') });
    const dropped = forwardingFailure(serviceError(Status.UNAVAILABLE, 'Connection dropped'), 1, 'write');
    expect(dropped).toMatchObject({ code: ErrorCode.OUTCOME_UNKNOWN, details: { leader: 1 } });
    expect(forwardingFailure(serviceError(Status.UNAVAILABLE, 'Connection dropped'), 1, 'read')).toMatchObject({ code: ErrorCode.LEADER_UNREACHABLE });
    // Still waiting for a connection when the deadline passed: it never left.
    const neverSent = forwardingFailure(serviceError(Status.DEADLINE_EXCEEDED, 'Deadline exceeded after 1.000s,Waiting for LB pick'), 1, 'write');
    expect(neverSent).toMatchObject({ code: ErrorCode.LEADER_UNREACHABLE });
  });

  test("the leader's own errors pass through with their code and leader", () => {
    const fromLeader = toGrpcError(new CairnError(ErrorCode.NOT_LEADER, 'not the leader', { leader: 2 }));
    const relayed = forwardingFailure(serviceError(fromLeader.code, fromLeader.details, fromLeader.metadata), 1, 'write');
    expect(relayed).toBeInstanceOf(CairnError);
    expect(relayed).toMatchObject({ code: ErrorCode.NOT_LEADER, message: 'not the leader', details: { leader: 2 } });
    expect(fromGrpcError(serviceError(Status.UNAVAILABLE, 'x'))).toBeUndefined();
  });

  test('OVERLOADED is RESOURCE_EXHAUSTED', () => {
    expect(toGrpcError(new CairnError(ErrorCode.OVERLOADED, 'too many uncommitted bytes')).code).toBe(Status.RESOURCE_EXHAUSTED);
  });
});

describe('the peer port against bad input', () => {
  let harness: Harness;
  let server: Server;
  let port: number;
  let stats: PeerInputStats;
  let lines: Record<string, unknown>[];
  let transport: GrpcPeerTransport;
  const MAX_LINES = 3;

  beforeEach(async () => {
    harness = await leaderReplica();
    const captured = captureLogger();
    lines = captured.lines;
    stats = new PeerInputStats(captured.logger, MAX_LINES);
    transport = new GrpcPeerTransport({ clusterId: CLUSTER_ID, selfId: 1, clientAddr: '' }, new Map([[1, '127.0.0.1:1']]), captured.logger, TEST_TRANSPORT_OPTIONS);
    const context = contextFor(harness.replica, new RequestRouter(harness.replica, transport, CLUSTER_ID, 60_000), { logger: captured.logger });
    server = new Server();
    server.addService(withLenientDecoding(RaftServiceService), raftService(context, stats));
    port = await bind(server);
  });
  afterEach(async () => {
    server.forceShutdown();
    transport.close();
    await harness.close();
  });

  const rawStream = (frames: Buffer[]) => rawPeerStream(`127.0.0.1:${port}`, frames);

  const frame = (overrides: Partial<StreamRequest>) =>
    Buffer.from(StreamRequest.encode({ clusterId: CLUSTER_ID, fromId: 2, clientAddr: '', messages: [], ...overrides }).finish());

  test('a frame that does not decode is refused with INVALID_ARGUMENT, and the node keeps serving', async () => {
    const err = await rawStream([Buffer.from([0xff, 0xff, 0xff, 0xff])]);
    expect(err?.code).toBe(Status.INVALID_ARGUMENT);
    expect(err?.details).toMatch(/does not decode/);
    expect(stats.rejectedStreams).toBe(1);
    expect(await rawStream([frame({})])).toBeNull();
    expect(harness.fatal).toEqual([]);
  });

  test('undecodable Propose and ReadIndex requests are INVALID_ARGUMENT', async () => {
    for (const name of ['propose', 'readIndex'] as const) {
      const err = await rawPeerUnary(`127.0.0.1:${port}`, name, Buffer.from([0xff, 0xff, 0xff, 0xff]));
      expect({ name, code: err?.code, details: err?.details }).toEqual({ name, code: Status.INVALID_ARGUMENT, details: expect.stringContaining('does not decode') });
    }
  });

  test('frames from another cluster or a non-member are refused; the rejection log is rate limited', async () => {
    expect((await rawStream([frame({ clusterId: 7 })]))?.code).toBe(Status.PERMISSION_DENIED);
    expect((await rawStream([frame({ fromId: 9 })]))?.code).toBe(Status.PERMISSION_DENIED);
    // A stranger retrying fast: bounded in count, each stream rejected, few lines logged.
    const started = Date.now();
    await Promise.all(Array.from({ length: 40 }, () => rawStream([frame({ clusterId: 7 })])));
    const windows = Math.ceil((Date.now() - started) / 1000) + 1;
    expect(stats.rejectedStreams).toBe(42);
    const rejections = lines.filter((l) => l.msg === 'peer stream rejected');
    expect(rejections.length).toBeGreaterThanOrEqual(1);
    expect(rejections.length).toBeLessThanOrEqual(MAX_LINES * (windows + 1));
    expect(rejections.length).toBeLessThan(42);
  });

  test('messages whose from_id is not the frame sender are dropped and counted', async () => {
    const received: Message[] = [];
    harness.replica.receive = (message: Message) => void received.push(message);
    const own: Message = { fromId: 2, to: 1, term: 0, body: undefined };
    const forged: Message = { fromId: 3, to: 1, term: 0, body: undefined };
    expect(await rawStream([frame({ messages: [own, forged, forged] })])).toBeNull();
    expect(received).toEqual([own]);
    expect(stats.foreignMessages).toBe(2);
    expect(lines.some((l) => l.msg === 'peer frame carried messages from another sender; dropped them' && l.dropped === 2)).toBe(true);
  });

  test('a peer stream gets its response headers at once, before it ends', async () => {
    // Until headers come, grpc-js keeps every frame written on the stream for a retry
    // (up to 1 MB of them, each pinning the 64 KiB pool slab it was framed in).
    const client = new RaftServiceClient(`127.0.0.1:${port}`, credentials.createInsecure());
    try {
      const call = client.stream(() => undefined);
      const headers = new Promise<boolean>((resolve) => {
        call.on('metadata', () => resolve(true));
        setTimeout(() => resolve(false), 5_000).unref();
      });
      call.write({ clusterId: CLUSTER_ID, fromId: 2, clientAddr: '', messages: [] });
      expect(await headers).toBe(true);
      call.end();
    } finally {
      client.close();
    }
  });

  test('a forwarded Propose is held to the client limits', async () => {
    const client = new RaftServiceClient(`127.0.0.1:${port}`, credentials.createInsecure());
    const propose = (command: Buffer) =>
      new Promise<ServiceError | null>((resolve) => client.propose({ clusterId: CLUSTER_ID, fromId: 2, command }, (e) => resolve(e)));
    try {
      const tooBig = await propose(Buffer.from(Command.encode(put('k', 'x'.repeat(LIMITS.maxValueBytes + 1))).finish()));
      expect(tooBig?.code).toBe(Status.INVALID_ARGUMENT);
      expect(tooBig?.details).toMatch(/--max-value-bytes/);
      const emptyKey = await propose(Buffer.from(Command.encode(put('')).finish()));
      expect(emptyKey?.details).toMatch(/key is empty/);
      const noOp = await propose(Buffer.from(Command.encode({ op: undefined, proposedAtUnixMs: 0 }).finish()));
      expect(noOp?.details).toMatch(/no operation/);
      const garbage = await propose(Buffer.from([0xff, 0xff, 0xff]));
      expect(garbage?.code).toBe(Status.INVALID_ARGUMENT);
      expect(harness.replica.node.status().lastIndex).toBe(1); // nothing reached the log
      expect(await propose(Buffer.from(Command.encode(put('k', 'ok')).finish()))).toBeNull();
      // A stamp of the sender's own, hidden behind a 0 tag the decoder stops at, is not logged:
      // the leader encodes the command again before it stamps it.
      const forged = Buffer.concat([Command.encode({ ...put('k', 'forged'), proposedAtUnixMs: 9_000_000_000_000_000 }).finish(), Buffer.from([0])]);
      expect(await propose(forged)).toBeNull();
      expect(harness.replica.stateMachine.logTimeUnixMs()).toBeLessThan(9_000_000_000_000_000);
    } finally {
      client.close();
    }
  });
});

describe('RateLimitedLog', () => {
  test('writes at most N lines a second and reports how many it suppressed', () => {
    const written: { fields: Record<string, unknown>; message: string }[] = [];
    let now = 0;
    const log = new RateLimitedLog({ warn: (fields, message) => written.push({ fields: fields as Record<string, unknown>, message }) }, 2, () => now);
    for (let i = 0; i < 10; i++) log.warn({ i }, 'rejected');
    expect(written.map((w) => w.fields.i)).toEqual([0, 1]);
    now = 1000;
    log.warn({ i: 10 }, 'rejected');
    expect(written[2]).toEqual({ fields: { i: 10, suppressed: 8 }, message: 'rejected' });
  });
});

describe('request scopes', () => {
  const fakeCall = () => Object.assign(new EventEmitter(), { getDeadline: () => Infinity as number }) as EventEmitter & Parameters<typeof openRequestScope>[0];

  test('a client that cancels aborts the scope; an answered call that grpc-js later reports cancelled does not', () => {
    const cancelledEarly = fakeCall();
    const open = openRequestScope(cancelledEarly, 5000);
    cancelledEarly.emit('cancelled');
    expect(open.signal.aborted).toBe(true);
    open.close();

    const answered = fakeCall();
    const closed = openRequestScope(answered, 5000);
    closed.close();
    answered.emit('cancelled');
    expect(closed.signal.aborted).toBe(false);
    expect(answered.listenerCount('cancelled')).toBe(0);
  });
});
