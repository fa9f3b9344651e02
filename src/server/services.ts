import { Deadline, Metadata, sendUnaryData, ServerReadableStream, ServerUnaryCall, ServerWritableStream, status as Status } from '@grpc/grpc-js';
import {
  ClusterServer,
  Command,
  CommandResult,
  CompactResponse,
  Consistency,
  DeleteResponse,
  KVServer,
  LeaderTransferResponse,
  MemberAddResponse,
  MemberPromoteResponse,
  MemberRemoveResponse,
  PutResponse,
  ResponseHeader,
  SnapshotSaveRequest,
  SnapshotSaveResponse,
  StatusResponse,
  TxnResponse,
} from '../../gen/cairn/kv/v1/kv';
import {
  ClusterConfig,
  ConfigChangeType,
  InstallSnapshotRequest,
  InstallSnapshotResponse,
  RaftServiceServer,
  SnapshotHeader,
  StreamRequest,
  StreamResponse,
} from '../../gen/cairn/raft/v1/raft';
import { isInvariantViolation } from '../assert';
import { badConfigReason } from '../raft/membership';
import { CairnError, ErrorCode } from '../errors';
import { KvReplica } from '../kv/kv-replica';
import { MAX_SNAPSHOT_CHUNK_BYTES } from '../node/replica';
import { Limits } from './config';
import { FORWARDED_METADATA, LeaderClients, UnaryStart } from './leader-clients';
import { ClusterMembership, MembershipReplica } from './membership';
import { requestMessageOf } from './descriptors';
import { Logger } from './logger';
import { NodeMetrics } from './metrics';
import { RateLimitedLog } from './rate-limited-log';
import { RequestRouter, RequestScope } from './router';
import { snapshotSaveCall } from './snapshot-save';
import { toGrpcError } from './status';
import { AuthGate, authService, CallIdentity, Caller, commandAuthOf, AUTHORIZATION_METADATA } from './auth';
import { findUnsupportedInteger } from './unsafe-integers';
import {
  validateCommand,
  validateDelete,
  validateGet,
  validateLeaderTransfer,
  validateMemberAdd,
  validateMemberId,
  validatePut,
  validateRange,
  validateTxn,
} from './validate';
import { txnAccesses } from '../kv/txn';
import { encodeMessageToBuffer } from '../proto-writer';
import { withSharedWriter } from './shared-writer-serializers';

export const VERSION = '0.1.0';

/** What the services need to know about the node they run on. */
export interface ServiceContext {
  replica: KvReplica;
  router: RequestRouter;
  clusterId: number;
  limits: Limits;
  requestTimeoutMs: number;
  logger: Logger;
  /** Members, their addresses, and which peers may send to this node. */
  membership: ClusterMembership;
  /** Membership changes and leadership transfer on this node's Replica. */
  membershipReplica: MembershipReplica;
  /** Carries Cluster calls a follower receives to the leader's client port. */
  leaderClients: LeaderClients;
  /** Prometheus figures (src/server/metrics.ts); absent in tests that do not look. */
  metrics?: NodeMetrics;
  /** Who a call is and what it may do (src/server/auth.ts); made from the state machine's auth state when absent. */
  auth?: AuthGate;
}

/** The context's auth gate, made once. */
export function authGateOf(context: ServiceContext): AuthGate {
  context.auth ??= new AuthGate(() => context.replica.stateMachine.authState());
  return context.auth;
}

/**
 * What the auth gate knows of a call: its metadata and, where the TLS layer verified a client
 * certificate, its common name (the hook for client-certificate auth: see docs/security.md).
 */
export function callIdentityOf(call: { metadata: Metadata; getAuthContext?: () => unknown }): CallIdentity {
  const context = call.getAuthContext?.() as { sslPeerCertificate?: { subject?: { CN?: unknown } } } | undefined;
  const commonName = context?.sslPeerCertificate?.subject?.CN;
  return { metadata: call.metadata, certificateCommonName: typeof commonName === 'string' ? commonName : undefined };
}

/** What a request that did not decode becomes, so its handler can answer INVALID_ARGUMENT. */
const MALFORMED = Symbol('malformed request');
interface Malformed {
  [MALFORMED]: string;
}

/**
 * A copy of a generated service definition whose request decoders never throw: grpc-js
 * would answer INTERNAL, but undecodable bytes are the client's mistake. A valid request with
 * a 64-bit integer beyond 2^53 - 1 (which cairn's generated code cannot hold) is named by its
 * field, found by walking the bytes against the proto's descriptor.
 */
export function withLenientDecoding<T extends Record<string, { path: string; requestDeserialize: (bytes: Buffer) => unknown }>>(definition: T): T {
  const copy: Record<string, unknown> = {};
  for (const [name, method] of Object.entries(definition)) {
    const requestMessage = requestMessageOf(method.path);
    copy[name] = {
      ...method,
      requestDeserialize: (bytes: Buffer) => {
        try {
          return method.requestDeserialize(bytes);
        } catch (err) {
          const unsupported = requestMessage && findUnsupportedInteger(requestMessage, bytes);
          return { [MALFORMED]: unsupported || `request does not decode as protobuf: ${(err as Error).message}` } satisfies Malformed;
        }
      },
    };
  }
  return copy as T;
}

/** A generated service definition as the servers register it: decoding that never throws, encoding through the shared writer. */
export function servedDefinition<T extends Record<string, { path: string; requestDeserialize: (bytes: Buffer) => unknown; requestSerialize: (value: never) => Buffer; responseSerialize: (value: never) => Buffer }>>(definition: T): T {
  return withSharedWriter(withLenientDecoding(definition));
}

export function malformedError(message: unknown): CairnError | undefined {
  const malformed = (message as Partial<Malformed> | undefined)?.[MALFORMED];
  return malformed === undefined ? undefined : new CairnError(ErrorCode.INVALID_ARGUMENT, malformed);
}

/** The epoch-ms instant a request must be answered by: the client's deadline, capped by ours. */
export function effectiveDeadlineMs(clientDeadline: Deadline, requestTimeoutMs: number, nowMs = Date.now()): number {
  const client = clientDeadline instanceof Date ? clientDeadline.getTime() : clientDeadline;
  return Math.min(Number.isNaN(client) ? Infinity : client, nowMs + requestTimeoutMs);
}

/** The longest delay setTimeout honours (a larger one fires at once): about 24.8 days. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** A scope that aborts at the effective deadline or when the client cancels; close() frees its timer. */
export function openRequestScope(
  call: Pick<ServerUnaryCall<unknown, unknown>, 'getDeadline' | 'once' | 'removeListener'>,
  requestTimeoutMs: number,
): RequestScope & { close(): void } {
  const deadlineMs = effectiveDeadlineMs(call.getDeadline(), requestTimeoutMs);
  const controller = new AbortController();
  const abort = () => controller.abort();
  const timer = setTimeout(abort, Math.min(MAX_TIMER_MS, Math.max(0, deadlineMs - Date.now())));
  call.once('cancelled', abort);
  // grpc-js emits 'cancelled' when the stream closes after the answer too: without this,
  // every answered call would still abort its signal (and build a DOMException) then.
  const close = () => {
    clearTimeout(timer);
    call.removeListener('cancelled', abort);
  };
  return { deadlineMs, signal: controller.signal, close };
}

/**
 * Makes the unary-call wrapper for a service: it answers INVALID_ARGUMENT for undecodable
 * requests, runs the handler within the request's deadline, and answers with its result or
 * its error as a gRPC status. A broken invariant halts the node (docs/architecture.md):
 * the node's state can no longer be trusted, whatever request found it out.
 */
export function unaryCalls(context: ServiceContext) {
  return <Req, Res>(handler: (request: Req, scope: RequestScope, metadata: Metadata, call: CallIdentity) => Promise<Res>) =>
    (call: ServerUnaryCall<Req, Res>, callback: sendUnaryData<Res>) => {
      const startedMs = performance.now();
      const malformed = malformedError(call.request);
      if (malformed) {
        context.metrics?.observeRequest(call.getPath(), 'INVALID_ARGUMENT', startedMs);
        callback(toGrpcError(malformed));
        return;
      }
      const scope = openRequestScope(call, context.requestTimeoutMs);
      handler(call.request, scope, call.metadata, callIdentityOf(call))
        .then(
          (response) => {
            context.metrics?.observeRequest(call.getPath(), 'OK', startedMs);
            callback(null, response);
          },
          (err) => {
            if (isInvariantViolation(err)) context.replica.halt(err);
            const status = toGrpcError(err);
            context.metrics?.observeRequest(call.getPath(), Status[status.code] ?? String(status.code), startedMs);
            callback(status);
          },
        )
        .finally(scope.close);
    };
}

export function header(context: ServiceContext, revision = context.replica.stateMachine.revision()): ResponseHeader {
  const node = context.replica.node;
  return { revision, memberId: node.id, leaderId: node.leader, raftTerm: node.term };
}

async function readBarrier(context: ServiceContext, consistency: Consistency, scope: RequestScope): Promise<void> {
  if (consistency !== Consistency.CONSISTENCY_SERIALIZABLE) await context.router.readBarrier(scope);
}

/**
 * A write refused inside apply (a session error) carries its error in the result, the
 * same on every replica: here it becomes the client's error.
 */
export function throwIfRefused(result: CommandResult): CommandResult {
  const refused = result.error;
  if (!refused) return result;
  const code = Object.values(ErrorCode).find((c) => c === refused.code);
  // A code this node does not know (a newer leader during an upgrade): still a refusal.
  if (code === undefined) throw new Error(`the write was refused (${refused.code}): ${refused.message}`);
  throw new CairnError(code, refused.message);
}

export function kvService(context: ServiceContext): KVServer {
  const unary = unaryCalls(context);
  const gate = authGateOf(context);
  // The leader stamps the log time (Replica.propose), so the command goes out unstamped.
  const write = async (op: Command['op'], scope: RequestScope, caller: Caller | undefined) =>
    throwIfRefused(await context.router.write({ op, proposedAtUnixMs: 0, ...commandAuthOf(caller) }, scope));
  return {
    put: unary(async (request, scope, _metadata, call) => {
      validatePut(request, context.limits);
      const caller = gate.requireKey(call, 'write', request.key);
      if (request.prevKv) gate.requireKey(call, 'read', request.key); // prev_kv hands back the old value
      const result = await write({ $case: 'put', value: request }, scope, caller);
      const put: PutResponse | undefined = result.op?.$case === 'put' ? result.op.value : undefined;
      return { header: header(context, result.revision), prevKv: put?.prevKv };
    }),
    delete: unary(async (request, scope, _metadata, call) => {
      validateDelete(request, context.limits);
      const caller = gate.requireKey(call, 'write', request.key);
      if (request.prevKv) gate.requireKey(call, 'read', request.key); // prev_kv hands back the old value
      const result = await write({ $case: 'delete', value: request }, scope, caller);
      const deleted: DeleteResponse | undefined = result.op?.$case === 'delete' ? result.op.value : undefined;
      return { header: header(context, result.revision), deleted: deleted?.deleted ?? false, prevKv: deleted?.prevKv };
    }),
    get: unary(async (request, scope, _metadata, call) => {
      validateGet(request, context.limits);
      gate.requireKey(call, 'read', request.key);
      await readBarrier(context, request.consistency, scope);
      // Again under the state the barrier caught up with: a permission revoked meanwhile holds.
      gate.requireKey(call, 'read', request.key);
      const { kv, revision } = await context.replica.stateMachine.getAt(request.key);
      return { header: header(context, revision), kv };
    }),
    txn: unary(async (request, scope, _metadata, call) => {
      validateTxn(request, context.limits);
      const caller = gate.requireTxn(call, txnAccesses(request));
      const result = await write({ $case: 'txn', value: request }, scope, caller);
      // A session's kept answer for this sequence that is not a Txn's: the client reused the sequence.
      if (result.op?.$case !== 'txn') throw new CairnError(ErrorCode.INVALID_ARGUMENT, `sequence ${request.sequence} of client ${request.clientId} was already used by a write that is not a txn: give each write its own sequence`);
      const txn: TxnResponse = result.op.value;
      return { header: header(context, result.revision), succeeded: txn.succeeded, responses: txn.responses };
    }),
    range: unary(async (request, scope, _metadata, call) => {
      const range = validateRange(request, context.limits);
      gate.requireRange(call, range.start, range.end);
      await readBarrier(context, request.consistency, scope);
      gate.requireRange(call, range.start, range.end);
      const { kvs, more, revision } = await context.replica.stateMachine.range({ ...range, keysOnly: request.keysOnly, maxBytes: context.limits.maxRangeBytes });
      return { header: header(context, revision), kvs, more };
    }),
    compact: unary(async (request, scope, _metadata, call) => {
      const caller = gate.requireRoot(call, 'Compact');
      return compactTo(request.revision, (op) => write(op, scope, caller), context);
    }),
  };
}

/**
 * Compacts to `revision` in commands of at most MAX_COMPACT_REVISIONS_PER_COMMAND revisions
 * each (the apply clamps; its answer says how far it got), so no apply batch does unbounded work.
 */
export async function compactTo(revision: number, write: (op: Command['op']) => Promise<CommandResult>, context: ServiceContext): Promise<CompactResponse> {
  for (;;) {
    const result = await write({ $case: 'compact', value: { revision } });
    const reached = result.op?.$case === 'compact' ? result.op.value.compactRevision : revision;
    if (reached >= revision) return { header: header(context, result.revision), compactRevision: reached };
  }
}

export function clusterService(context: ServiceContext): ClusterServer {
  const unary = unaryCalls(context);
  const gate = authGateOf(context);
  const saveSnapshot = snapshotSaveCall(() => context.replica.saveSnapshot());
  return {
    status: unary(async (): Promise<StatusResponse> => {
      const status = context.replica.node.status();
      return {
        header: header(context),
        clusterId: context.clusterId,
        id: status.id,
        role: status.role,
        term: status.term,
        leaderId: status.leader,
        commitIndex: status.commitIndex,
        appliedIndex: context.replica.stateMachine.appliedIndex(),
        lastIndex: status.lastIndex,
        members: context.membership.members(status.leader),
        followers: status.progress.map((p) => ({ id: p.id, matchIndex: p.matchIndex, nextIndex: p.nextIndex, state: p.state })),
        version: VERSION,
        snapshotIndex: status.snapshotIndex,
        firstIndex: status.firstIndex,
        leaderTransferee: status.transferee,
      };
    }),
    memberList: unary(async () => ({ header: header(context), members: context.membership.members(context.replica.node.leader) })),
    memberAdd: unary(async (request, scope, metadata, call) => {
      gate.requireRoot(call, 'MemberAdd');
      validateMemberAdd(request);
      return onLeader<MemberAddResponse>(context, scope, metadata, (client, md, options, done) => client.memberAdd(request, md, options, done), async () => {
        const member = { id: request.id, peerAddr: request.peerAddr, clientAddr: request.clientAddr };
        const change = { type: ConfigChangeType.CONFIG_CHANGE_TYPE_ADD_LEARNER, member };
        const config = await context.membership.whileJoining(request.id, () => context.membershipReplica.proposeConfigChange(change, scope.signal));
        return changed(context, config);
      });
    }),
    memberPromote: unary(async (request, scope, metadata, call) => {
      gate.requireRoot(call, 'MemberPromote');
      validateMemberId(request);
      return onLeader<MemberPromoteResponse>(context, scope, metadata, (client, md, options, done) => client.memberPromote(request, md, options, done), async () => {
        const change = { type: ConfigChangeType.CONFIG_CHANGE_TYPE_PROMOTE, member: { id: request.id, peerAddr: '', clientAddr: '' } };
        return changed(context, await context.membershipReplica.proposeConfigChange(change, scope.signal));
      });
    }),
    memberRemove: unary(async (request, scope, metadata, call) => {
      gate.requireRoot(call, 'MemberRemove');
      validateMemberId(request);
      return onLeader<MemberRemoveResponse>(context, scope, metadata, (client, md, options, done) => client.memberRemove(request, md, options, done), async () => {
        const change = { type: ConfigChangeType.CONFIG_CHANGE_TYPE_REMOVE, member: { id: request.id, peerAddr: '', clientAddr: '' } };
        return changed(context, await context.membershipReplica.proposeConfigChange(change, scope.signal));
      });
    }),
    leaderTransfer: unary(async (request, scope, metadata, call) => {
      gate.requireRoot(call, 'LeaderTransfer');
      validateLeaderTransfer(request);
      return onLeader<LeaderTransferResponse>(context, scope, metadata, (client, md, options, done) => client.leaderTransfer(request, md, options, done), async () => {
        // Asking the leader to hand over to itself is already done: answered, not refused.
        if (request.toId === context.replica.node.id) return { header: header(context), leaderId: request.toId };
        const leaderId = await context.membershipReplica.transferLeadership(request.toId || undefined, scope.signal);
        return { header: header(context), leaderId };
      });
    }),
    snapshot: unary(async (_request, _scope, _metadata, call) => {
      gate.requireRoot(call, 'Snapshot');
      const { snapshotIndex, firstIndex } = await context.replica.compactNow();
      return { header: header(context), snapshotIndex, firstIndex };
    }),
    snapshotSave: (call: ServerWritableStream<SnapshotSaveRequest, SnapshotSaveResponse>) => {
      // A backup holds every key: root only.
      try {
        gate.requireRoot(callIdentityOf(call), 'SnapshotSave');
      } catch (err) {
        call.emit('error', toGrpcError(err));
        return;
      }
      saveSnapshot(call);
    },
  };
}

/** A membership change's answer: the configuration after it, as members. */
function changed(context: ServiceContext, config: ClusterConfig) {
  return { header: header(context), members: context.membership.members(context.replica.node.leader, config) };
}

/**
 * Runs a Cluster call on the leader: here when this node leads, else forwarded once to the
 * leader's client port (LeaderClients). A call that was forwarded already, or with no leader
 * (or its client address) known, is answered NOT_LEADER / NO_LEADER with cairn-leader-id, so
 * the client retries elsewhere. The leader's own answer, error or not, is relayed as it is.
 */
export function onLeader<Res>(
  context: ServiceContext,
  scope: RequestScope,
  metadata: Metadata,
  forward: UnaryStart<Res>,
  serve: () => Promise<Res>,
): Promise<Res> {
  const node = context.replica.node;
  if (node.role === 'leader') return serve();
  const leader = node.leader;
  if (!leader) return Promise.reject(new CairnError(ErrorCode.NO_LEADER, 'no leader is known right now (an election may be under way); retry shortly'));
  const addr = context.membership.clientAddrOf(leader);
  if (metadata.get(FORWARDED_METADATA).length > 0 || !addr) {
    return Promise.reject(new CairnError(ErrorCode.NOT_LEADER, `node ${node.id} is not the leader; node ${leader} is`, { leader }));
  }
  // The leader checks the caller's token again.
  const authorization = metadata.get(AUTHORIZATION_METADATA)[0];
  return context.leaderClients.call<Res>(leader, addr, scope, forward, typeof authorization === 'string' ? authorization : undefined);
}

/** Lines a second the peer service may log about what it refused (a stranger must not grow the logs). */
export const PEER_REJECTION_LOG_LINES_PER_SECOND = 5;

/** What the peer service refused, counted for tests and metrics, and logged with a rate limit. */
export class PeerInputStats {
  /** Streams answered with an error: undecodable frames, another cluster, a non-member. */
  rejectedStreams = 0;
  /** Messages dropped because their from_id is not their frame's, or because their body may not travel on the Raft stream (installSnapshot). */
  foreignMessages = 0;
  /** InstallSnapshot calls answered with an error (another transfer in progress, a bad header or chunk). */
  refusedSnapshots = 0;
  readonly log: RateLimitedLog;

  constructor(logger: Pick<Logger, 'warn'>, maxLinesPerSecond = PEER_REJECTION_LOG_LINES_PER_SECOND) {
    this.log = new RateLimitedLog(logger, maxLinesPerSecond);
  }
}

type CheckSender = (clusterId: number, from: number) => void;

/** The peer service: Raft messages in, and writes and read-index requests from followers. */
export function raftService(context: ServiceContext, peerInput = new PeerInputStats(context.logger)): RaftServiceServer {
  const unary = unaryCalls(context);
  const snapshotSlot = { busy: false };
  const checkSender: CheckSender = (clusterId, from) => {
    if (clusterId !== context.clusterId) {
      throw new CairnError(ErrorCode.WRONG_CLUSTER, `cluster id ${clusterId} is not this cluster's (${context.clusterId})`);
    }
    context.membership.checkSender(from);
  };
  return {
    stream: (call, callback) => receivePeerStream(context, peerInput, checkSender, call, callback),
    installSnapshot: (call, callback) => receiveSnapshotStream(context, peerInput, checkSender, snapshotSlot, call, callback),
    propose: unary(async (request, scope) => {
      checkSender(request.clusterId, request.fromId);
      // The same limits as a client's write. The command is encoded again rather than logged
      // as sent: bytes the decoder skipped (after a 0 tag, say) could otherwise hide a stamp
      // of the sender's own behind the leader's (see stampCommand).
      const command = validateCommand(request.command, context.limits);
      const proposal = context.replica.propose({ ...command, proposedAtUnixMs: 0 }, undefined, scope.signal);
      const result = await (context.metrics ? context.metrics.timeProposal(proposal) : proposal);
      return { result: encodeMessageToBuffer(CommandResult, result), term: context.replica.node.term };
    }),
    readIndex: unary(async (request, scope) => {
      checkSender(request.clusterId, request.fromId);
      const index = await context.replica.confirmReadIndex(scope.signal);
      return { index };
    }),
  };
}

/**
 * One peer's stream of frames. The first frame that does not decode, names another cluster
 * or comes from a non-member ends the stream with an error (INVALID_ARGUMENT or
 * PERMISSION_DENIED); messages whose sender is not the frame's are dropped.
 */
function receivePeerStream(
  context: ServiceContext,
  stats: PeerInputStats,
  checkSender: CheckSender,
  call: ServerReadableStream<StreamRequest, StreamResponse>,
  callback: sendUnaryData<StreamResponse>,
): void {
  // Headers at once: until a client stream hears them, grpc-js keeps every frame written
  // on it for a retry (up to grpc.per_rpc_retry_buffer_size, 1 MB of frames by default,
  // each pinning the pool slab it was framed in, 64 KiB on Node 26), and a peer stream
  // runs for hours.
  call.sendMetadata(new Metadata());
  let rejected = false;
  const reject = (err: unknown, fields: Record<string, unknown>) => {
    rejected = true;
    stats.rejectedStreams++;
    stats.log.warn({ peer: call.getPeer(), ...fields, reason: (err as Error).message }, 'peer stream rejected');
    callback(toGrpcError(err));
  };
  call.on('data', (frame: StreamRequest) => {
    if (rejected) return;
    const malformed = malformedError(frame);
    if (malformed) return reject(malformed, {});
    try {
      checkSender(frame.clusterId, frame.fromId);
    } catch (err) {
      return reject(err, { from: frame.fromId, clusterId: frame.clusterId });
    }
    if (frame.clientAddr) context.membership.noteClientAddr(frame.fromId, frame.clientAddr);
    let foreign = 0;
    for (const message of frame.messages) {
      // A snapshot offer is only ever handed in by this node's own shell, once an
      // InstallSnapshot stream was staged whole; on the Raft stream it is forged.
      if (message.fromId !== frame.fromId || message.body?.$case === 'installSnapshot') {
        foreign++;
        continue;
      }
      if (message.body?.$case === 'heartbeatResponse') context.metrics?.noteHeartbeatAnswered(message.fromId);
      try {
        context.replica.receive(message);
      } catch (err) {
        // A broken invariant has halted the replica already; anything else is a bug too,
        // but one this stream's sender provoked: refuse the stream, keep serving others.
        return reject(err, { from: frame.fromId });
      }
    }
    if (foreign > 0) {
      stats.foreignMessages += foreign;
      stats.log.warn({ peer: call.getPeer(), from: frame.fromId, dropped: foreign }, 'peer frame carried messages from another sender; dropped them');
    }
  });
  call.on('end', () => {
    if (!rejected) callback(null, {});
  });
  call.on('error', () => undefined);
}

/**
 * The most bytes one incoming InstallSnapshot transfer may stage (the sum of its chunks'
 * data): a bound on the disk a leader, or anyone past the sender check, can fill.
 */
export const MAX_SNAPSHOT_STAGED_BYTES = 64 * 1024 ** 3;
/** An incoming transfer logs its progress every this many staged bytes. */
export const SNAPSHOT_PROGRESS_LOG_BYTES = 64 * 1024 ** 2;

/**
 * One incoming InstallSnapshot call. The first request must carry a header for this node
 * from a member of this cluster; only one transfer is staged at a time (another is
 * RESOURCE_EXHAUSTED); chunks over MAX_SNAPSHOT_CHUNK_BYTES, a transfer over
 * MAX_SNAPSHOT_STAGED_BYTES, a second header or a stream that ends before `done` are
 * INVALID_ARGUMENT. The Replica stages the chunks, offers the snapshot to its core and
 * answers once it is installed (or why not).
 */
function receiveSnapshotStream(
  context: ServiceContext,
  stats: PeerInputStats,
  checkSender: CheckSender,
  slot: { busy: boolean },
  call: ServerReadableStream<InstallSnapshotRequest, InstallSnapshotResponse>,
  callback: sendUnaryData<InstallSnapshotResponse>,
): void {
  let answered = false;
  const answer = (err: unknown, response?: InstallSnapshotResponse) => {
    if (answered) return;
    answered = true;
    if (err) {
      stats.log.warn({ peer: call.getPeer(), reason: (err as Error).message }, 'snapshot transfer refused');
      callback(toGrpcError(err));
    } else {
      callback(null, response!);
    }
  };
  const requests = call[Symbol.asyncIterator]() as AsyncIterator<InstallSnapshotRequest>;
  call.on('error', () => undefined);
  void (async () => {
    const first = await requests.next();
    if (first.done) throw new CairnError(ErrorCode.INVALID_ARGUMENT, 'the InstallSnapshot stream ended before its first request');
    const header = openSnapshotTransfer(first.value, context, checkSender);
    if (slot.busy) {
      throw new CairnError(ErrorCode.OVERLOADED, 'another snapshot transfer is being received; retry later');
    }
    slot.busy = true;
    let streamError: CairnError | undefined;
    try {
      const chunks = snapshotChunks(first.value, requests, header, context.logger, (err) => (streamError = err));
      const response = await context.replica.receiveSnapshot(header, chunks);
      if (streamError) throw streamError;
      return response;
    } finally {
      slot.busy = false;
    }
  })().then(
    (response) => answer(null, response),
    (err) => {
      stats.refusedSnapshots++;
      answer(err);
    },
  );
}

/** Checks an InstallSnapshot stream's first request; returns its header. */
function openSnapshotTransfer(first: InstallSnapshotRequest, context: ServiceContext, checkSender: CheckSender): SnapshotHeader {
  const malformed = malformedError(first);
  if (malformed) throw malformed;
  const header = first.header;
  if (!header) throw new CairnError(ErrorCode.INVALID_ARGUMENT, 'the first InstallSnapshot request carries no header');
  checkSender(header.clusterId, header.fromId);
  if (header.to !== context.replica.id) throw new CairnError(ErrorCode.INVALID_ARGUMENT, `snapshot addressed to node ${header.to}, this is node ${context.replica.id}`);
  if (!header.meta || header.meta.index < 1) throw new CairnError(ErrorCode.INVALID_ARGUMENT, 'the snapshot header has no meta, or index 0');
  // Checked again by the core when the staged snapshot is offered; here so nothing is staged for a bad one.
  if (!header.meta.config) throw new CairnError(ErrorCode.INVALID_ARGUMENT, 'the snapshot header has no configuration');
  const badConfig = badConfigReason(header.meta.config);
  if (badConfig) throw new CairnError(ErrorCode.INVALID_ARGUMENT, `the snapshot header's configuration: ${badConfig}`);
  return header;
}

/** The data of an InstallSnapshot stream's requests, checked as they come; a bad one ends it through `fail`. */
async function* snapshotChunks(
  first: InstallSnapshotRequest,
  rest: AsyncIterator<InstallSnapshotRequest>,
  header: SnapshotHeader,
  logger: Logger,
  fail: (err: CairnError) => void,
): AsyncIterable<Uint8Array> {
  let staged = 0;
  let nextLogAt = SNAPSHOT_PROGRESS_LOG_BYTES;
  let request: InstallSnapshotRequest | undefined = first;
  for (let position = 0; request; position++) {
    const problem = chunkProblem(request, position, staged);
    if (problem) {
      const err = new CairnError(ErrorCode.INVALID_ARGUMENT, problem);
      fail(err);
      throw err;
    }
    staged += request.data.length;
    if (staged >= nextLogAt) {
      logger.info({ from: header.fromId, index: header.meta?.index, stagedMiB: Math.floor(staged / 2 ** 20) }, 'receiving snapshot');
      nextLogAt += SNAPSHOT_PROGRESS_LOG_BYTES;
    }
    if (request.data.length > 0) yield request.data;
    if (request.done) {
      logger.info({ from: header.fromId, index: header.meta?.index, stagedBytes: staged }, 'snapshot received whole');
      return;
    }
    const next = await rest.next();
    request = next.done ? undefined : next.value;
  }
  const err = new CairnError(ErrorCode.INVALID_ARGUMENT, `the InstallSnapshot stream ended after ${staged} bytes without a request marked done`);
  fail(err);
  throw err;
}

function chunkProblem(request: InstallSnapshotRequest, position: number, stagedBytes: number): string | undefined {
  const malformed = malformedError(request);
  if (malformed) return malformed.message;
  if (position > 0 && request.header) return `InstallSnapshot request ${position} carries a second header`;
  if (request.data.length > MAX_SNAPSHOT_CHUNK_BYTES) return `snapshot chunk of ${request.data.length} bytes, over MAX_SNAPSHOT_CHUNK_BYTES ${MAX_SNAPSHOT_CHUNK_BYTES}`;
  if (stagedBytes + request.data.length > MAX_SNAPSHOT_STAGED_BYTES) return `snapshot over MAX_SNAPSHOT_STAGED_BYTES ${MAX_SNAPSHOT_STAGED_BYTES}`;
  return undefined;
}

/** The Auth service on this node (src/server/auth.ts). */
export function authServiceOf(context: ServiceContext) {
  const unary = unaryCalls(context);
  return authService({
    gate: authGateOf(context),
    unary: (handler) => unary((request: unknown, scope, _metadata, call) => handler(request as never, scope, call)),
    header: () => header(context),
    propose: async (command, scope) => throwIfRefused(await context.router.write(command, scope)),
    readBarrier: (scope) => context.router.readBarrier(scope),
  });
}
