import { randomBytes } from 'node:crypto';
import { Metadata, ServerDuplexStream } from '@grpc/grpc-js';
import {
  Command,
  LeaseGrantResponse,
  LeaseKeepAliveRequest,
  LeaseKeepAliveResponse,
  LeaseRenewResponse,
  LeaseServer,
  LeaseService,
  LeaseTimeToLiveResponse,
} from '../../gen/cairn/kv/v1/kv';
import { isInvariantViolation } from '../assert';
import { CairnError, ErrorCode, isCairnError } from '../errors';
import { LEASE_CHECK_INTERVAL_MS, LeaseKeeper } from '../kv/lease-keeper';
import { formatLeaseId, MAX_LEASE_ID, MIN_LEASE_TTL_SECONDS } from '../kv/leases';
import { commandAuthOf } from './auth';
import { RequestScope } from './router';
import { authGateOf, callIdentityOf, header, onLeader, ServiceContext, throwIfRefused, unaryCalls } from './services';
import { toGrpcError } from './status';
import { validateLeaseGrant, validateLeaseId } from './validate';

/** Most LeaseKeepAlive streams one node serves at once; past it a new stream is refused (RESOURCE_EXHAUSTED). */
export const MAX_KEEP_ALIVE_STREAMS = 1_000;
/** Keep-alive requests of one stream waiting for their answer; past it the stream ends (RESOURCE_EXHAUSTED). */
export const MAX_PENDING_KEEP_ALIVES_PER_STREAM = 64;
/** Tries at a random lease id before giving up, should one be taken already. */
const RANDOM_ID_ATTEMPTS = 3;

/** A random lease id in [1, 2^53 - 1] (ids are JavaScript numbers in cairn). */
export function randomLeaseId(): number {
  const id = Number(randomBytes(8).readBigUInt64BE() & BigInt(MAX_LEASE_ID));
  return id === 0 ? 1 : id;
}

/** The Lease service and the leader's deadline keeper behind it; stop() ends the keeper's timer. */
export function leaseServiceOf(context: ServiceContext): { service: LeaseServer; keeper: LeaseKeeper; stop(): void } {
  const replica = context.replica;
  const keeper = new LeaseKeeper(
    {
      leadership: () => ({ leading: replica.node.role === 'leader', term: replica.node.term }),
      table: () => replica.stateMachine.leaseTable(),
      proposeExpire: (id, grantedIndex) => replica.propose({ op: { $case: 'leaseExpire', value: { id, grantedIndex } }, proposedAtUnixMs: 0 }, undefined, AbortSignal.timeout(context.requestTimeoutMs)),
    },
    { monotonicMs: () => performance.now() },
  );
  const timer = setInterval(() => {
    try {
      keeper.check();
    } catch (err) {
      if (isInvariantViolation(err)) replica.halt(err);
    }
  }, LEASE_CHECK_INTERVAL_MS);
  timer.unref();
  return { service: leaseService(context, keeper), keeper, stop: () => clearInterval(timer) };
}

function leaseService(context: ServiceContext, keeper: LeaseKeeper): LeaseServer {
  const unary = unaryCalls(context);
  const gate = authGateOf(context);
  const write = async (op: Command['op'], scope: RequestScope, call: Parameters<typeof gate.caller>[0]) =>
    throwIfRefused(await context.router.write({ op, proposedAtUnixMs: 0, ...commandAuthOf(gate.caller(call)) }, scope));
  const renew = (id: number, scope: RequestScope, metadata: Metadata): Promise<LeaseRenewResponse> =>
    onLeader<LeaseRenewResponse>(
      context,
      scope,
      metadata,
      (client, md, options, done) => client.makeUnaryRequest(LeaseService.leaseRenew.path, LeaseService.leaseRenew.requestSerialize, LeaseService.leaseRenew.responseDeserialize, { id }, md, options, done),
      async () => {
        // Confirms leadership with a quorum and applies what was committed before answering:
        // a lease already expired in the log is answered 0, and any later leader took over
        // after this request was sent, so its full-TTL restart covers the renewal.
        await context.replica.readBarrier(scope.signal);
        return { header: header(context), id, ttl: keeper.keepAlive(id) };
      },
    );
  let keepAliveStreams = 0;
  return {
    leaseGrant: unary(async (request, scope, _metadata, call): Promise<LeaseGrantResponse> => {
      validateLeaseGrant(request);
      gate.caller(call); // with auth on: any authenticated user
      const ttl = Math.max(MIN_LEASE_TTL_SECONDS, request.ttl);
      for (let attempt = 1; ; attempt++) {
        const id = request.id || randomLeaseId();
        try {
          const result = await write({ $case: 'leaseGrant', value: { id, ttl } }, scope, call);
          return { header: header(context, result.revision), id, ttl };
        } catch (err) {
          if (request.id || attempt >= RANDOM_ID_ATTEMPTS || !isCairnError(err, ErrorCode.LEASE_EXISTS)) throw err;
        }
      }
    }),
    leaseRevoke: unary(async (request, scope, _metadata, call) => {
      validateLeaseId(request.id);
      const result = await write({ $case: 'leaseRevoke', value: { id: request.id } }, scope, call);
      const revoked = result.op?.$case === 'leaseRevoke' ? result.op.value : undefined;
      return { header: header(context, result.revision), deleted: revoked?.deleted ?? 0 };
    }),
    leaseTimeToLive: unary(async (request, scope, metadata, call) => {
      validateLeaseId(request.id);
      gate.caller(call);
      return onLeader<LeaseTimeToLiveResponse>(
        context,
        scope,
        metadata,
        (client, md, options, done) =>
          client.makeUnaryRequest(LeaseService.leaseTimeToLive.path, LeaseService.leaseTimeToLive.requestSerialize, LeaseService.leaseTimeToLive.responseDeserialize, request, md, options, done),
        async () => {
          await context.router.readBarrier(scope);
          const left = keeper.timeToLive(request.id);
          const lease = context.replica.stateMachine.leaseTable().get(request.id);
          if (!left || !lease) return { header: header(context), id: request.id, ttl: -1, grantedTtl: 0, keys: [] };
          return { header: header(context), id: request.id, ttl: left.remainingSeconds, grantedTtl: left.grantedSeconds, keys: request.keys ? [...lease.keys.values()] : [] };
        },
      );
    }),
    leaseLeases: unary(async (_request, scope, _metadata, call) => {
      gate.caller(call);
      await context.router.readBarrier(scope);
      return { header: header(context), leases: context.replica.stateMachine.leaseTable().ids().map((id) => ({ id })) };
    }),
    leaseRenew: unary(async (request, scope, metadata, call) => {
      validateLeaseId(request.id);
      gate.caller(call);
      return renew(request.id, scope, metadata);
    }),
    leaseKeepAlive: (call: ServerDuplexStream<LeaseKeepAliveRequest, LeaseKeepAliveResponse>) => {
      if (keepAliveStreams >= MAX_KEEP_ALIVE_STREAMS) {
        call.emit('error', toGrpcError(new CairnError(ErrorCode.OVERLOADED, `this node serves MAX_KEEP_ALIVE_STREAMS ${MAX_KEEP_ALIVE_STREAMS} keep-alive streams already`)));
        return;
      }
      keepAliveStreams++;
      let ended = false;
      const end = (err?: unknown) => {
        if (ended) return;
        ended = true;
        keepAliveStreams--;
        if (err === undefined) call.end();
        else call.emit('error', toGrpcError(err));
      };
      const identity = callIdentityOf(call);
      let pending = 0;
      let chain = Promise.resolve();
      call.on('data', (request: LeaseKeepAliveRequest) => {
        if (ended) return;
        if (++pending > MAX_PENDING_KEEP_ALIVES_PER_STREAM) {
          end(new CairnError(ErrorCode.OVERLOADED, `more than MAX_PENDING_KEEP_ALIVES_PER_STREAM ${MAX_PENDING_KEEP_ALIVES_PER_STREAM} keep-alives wait for their answer on this stream: wait for answers before sending more`));
          return;
        }
        chain = chain.then(async () => {
          if (ended) return;
          try {
            validateLeaseId(request.id);
            gate.caller(identity);
            const controller = new AbortController();
            const timeout = setTimeout(() => controller.abort(), context.requestTimeoutMs);
            try {
              const renewed = await renew(request.id, { deadlineMs: Date.now() + context.requestTimeoutMs, signal: controller.signal }, call.metadata);
              if (!ended) call.write({ header: renewed.header, id: request.id, ttl: renewed.ttl });
            } finally {
              clearTimeout(timeout);
            }
          } catch (err) {
            end(err);
          } finally {
            pending--;
          }
        });
      });
      call.on('end', () => void chain.then(() => end()));
      call.on('error', () => end());
      call.on('cancelled', () => end());
    },
  };
}

/** How the CLI prints a grant (etcdctl's words). */
export function describeGrant(id: number, ttl: number): string {
  return `lease ${formatLeaseId(id)} granted with TTL(${ttl}s)`;
}
