import { ClientUnaryCall, Metadata, ServiceError, status as Status } from '@grpc/grpc-js';
import { Command, CommandResult } from '../../gen/cairn/kv/v1/kv';
import { ProposeResponse, ReadIndexResponse, RaftServiceClient } from '../../gen/cairn/raft/v1/raft';
import { CairnError, ErrorCode } from '../errors';
import { KvReplica } from '../kv/kv-replica';
import { NO_NODE, NodeId } from '../raft/node';
import { NodeMetrics } from './metrics';
import { GrpcPeerTransport } from './peer-transport';
import { fromGrpcError, isGrpcError } from './status';
import { encodeMessageToBuffer } from '../proto-writer';

/**
 * How long one request may take: `deadlineMs` (epoch ms) is the earlier of the client's gRPC
 * deadline and `--request-timeout-ms`, and `signal` aborts then, or when the client cancels.
 * Everything the request waits on is released when it aborts.
 */
export interface RequestScope {
  deadlineMs: number;
  signal: AbortSignal;
}

/**
 * Decides where a client request is carried out: on this node when it leads, on the
 * leader (over the peer service) when it follows. Linearizable reads on a follower ask
 * the leader for a read index and are then served from the follower's own state.
 */
export class RequestRouter {
  constructor(
    private readonly replica: KvReplica,
    private readonly transport: GrpcPeerTransport,
    private readonly clusterId: number,
    private readonly requestTimeoutMs: number,
    /** Times the proposals made here (absent in tests that do not look). */
    private readonly metrics?: NodeMetrics,
  ) {}

  /** Commits a write and returns its result, wherever the leader is. */
  async write(command: Command, scope: RequestScope = this.defaultScope()): Promise<CommandResult> {
    const leader = this.replica.node.leader;
    if (leader === this.replica.id) {
      const proposal = this.replica.propose(command, undefined, scope.signal);
      return this.metrics ? this.metrics.timeProposal(proposal) : proposal;
    }
    const client = this.leaderClient(leader);
    const request = { clusterId: this.clusterId, fromId: this.replica.id, command: encodeMessageToBuffer(Command, command) };
    const response = await forward<ProposeResponse>(leader, 'write', scope, (options, done) => client.propose(request, new Metadata(), options, done));
    return CommandResult.decode(response.result);
  }

  /** Resolves once this node may serve a linearizable read from its own state. */
  async readBarrier(scope: RequestScope = this.defaultScope()): Promise<void> {
    const leader = this.replica.node.leader;
    if (leader === this.replica.id) return this.replica.readBarrier(scope.signal);
    const client = this.leaderClient(leader);
    const request = { clusterId: this.clusterId, fromId: this.replica.id };
    const response = await forward<ReadIndexResponse>(leader, 'read', scope, (options, done) => client.readIndex(request, new Metadata(), options, done));
    await this.replica.waitForApplied(response.index, scope.signal);
  }

  private leaderClient(leader: number): RaftServiceClient {
    const client = leader === NO_NODE ? undefined : this.transport.client(leader);
    if (!client) throw new CairnError(ErrorCode.NO_LEADER, 'no leader is known right now (an election may be under way); retry shortly');
    return client;
  }

  /** For callers with no client call behind them: only --request-timeout-ms applies. */
  private defaultScope(): RequestScope {
    return { deadlineMs: Date.now() + this.requestTimeoutMs, signal: AbortSignal.timeout(this.requestTimeoutMs) };
  }
}

/** What a follower forwards: a write, a read, or a Cluster call (a membership change, a leadership transfer). */
export type Forwarded = 'write' | 'read' | 'cluster change';

/**
 * Makes one call to the leader with the request's remaining time as its deadline, cancels
 * it if the request is aborted, and turns any failure into one of cairn's errors.
 */
function forward<T>(
  leader: NodeId,
  what: Forwarded,
  scope: RequestScope,
  start: (options: { deadline: number }, done: (err: ServiceError | null, value?: T) => void) => ClientUnaryCall,
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const cancel = () => call.cancel();
    const call = start({ deadline: scope.deadlineMs }, (err, value) => {
      scope.signal.removeEventListener('abort', cancel);
      // Cancelled by us because the request's time ran out: a timeout, whatever grpc-js says.
      if (err) reject(forwardingFailure(scope.signal.aborted ? timedOut(err) : err, leader, what));
      else resolve(value!);
    });
    scope.signal.addEventListener('abort', cancel, { once: true });
  });
}

/**
 * The cairn error for a failed call to the leader. The leader's own errors (a status with a
 * `cairn-error-code` trailer) pass through. Otherwise what matters is whether the request can
 * have reached the leader: when grpc-js proves it never left (no connection, or still waiting
 * for one when the deadline passed), nothing was applied (LEADER_UNREACHABLE); after it left,
 * a write's outcome is unknown (TIMEOUT on the deadline, OUTCOME_UNKNOWN otherwise).
 */
export function forwardingFailure(err: unknown, leader: NodeId, what: Forwarded): Error {
  if (err instanceof CairnError || !isGrpcError(err)) return err as Error;
  const fromLeader = fromGrpcError(err);
  if (fromLeader) return fromLeader;
  const details = { leader, cause: err };
  const status = Status[err.code] ?? String(err.code);
  if (neverSent(err)) {
    return new CairnError(ErrorCode.LEADER_UNREACHABLE, `cannot reach the leader (node ${leader}) to forward the ${what} (gRPC ${status}); it was not carried out: retry shortly`, details);
  }
  if (err.code === Status.DEADLINE_EXCEEDED) {
    return what === 'read'
      ? new CairnError(ErrorCode.TIMEOUT, `the leader (node ${leader}) did not confirm the read in time`, details)
      : new CairnError(ErrorCode.TIMEOUT, `the ${what} forwarded to the leader (node ${leader}) did not complete in time; its outcome is unknown`, details);
  }
  if (what === 'read') return new CairnError(ErrorCode.LEADER_UNREACHABLE, `the call to the leader (node ${leader}) failed during the read (gRPC ${status}); retry shortly`, details);
  const retry = what === 'write' ? 'retry with the same client id and sequence' : 'check with cairn member list before retrying';
  return new CairnError(ErrorCode.OUTCOME_UNKNOWN, `the call to the leader (node ${leader}) failed after the ${what} was sent (gRPC ${status}); its outcome is unknown: ${retry}`, details);
}

function timedOut(err: ServiceError): ServiceError {
  return Object.assign(new Error(err.message), err, { code: Status.DEADLINE_EXCEEDED });
}

/** grpc-js failed the call before any byte of it left: no connection could be picked. */
function neverSent(err: ServiceError): boolean {
  if (err.code === Status.UNAVAILABLE) return /(^|: )No connection established/.test(err.details);
  if (err.code === Status.DEADLINE_EXCEEDED) return err.details.includes('Waiting for LB pick');
  return false;
}
