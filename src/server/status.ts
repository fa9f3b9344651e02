import { Metadata, status as Status, ServiceError } from '@grpc/grpc-js';
import { CairnError, ErrorCode } from '../errors';

/** Trailing metadata that tells a client where the leader is. */
export const LEADER_ID_METADATA = 'cairn-leader-id';
/** Trailing metadata with cairn's own error code (errors.ts), for programs. */
export const ERROR_CODE_METADATA = 'cairn-error-code';
/** Trailing metadata on MEMBER_REMOVED: the refusing node's commit index. */
export const COMMIT_INDEX_METADATA = 'cairn-commit-index';

const STATUS_OF: Record<ErrorCode, Status> = {
  [ErrorCode.INVALID_ARGUMENT]: Status.INVALID_ARGUMENT,
  [ErrorCode.COMPACTED]: Status.INVALID_ARGUMENT,
  [ErrorCode.FUTURE_REVISION]: Status.INVALID_ARGUMENT,
  [ErrorCode.NOT_LEADER]: Status.UNAVAILABLE,
  [ErrorCode.OVERLOADED]: Status.RESOURCE_EXHAUSTED,
  [ErrorCode.PROPOSAL_DROPPED]: Status.UNAVAILABLE,
  [ErrorCode.READ_ABORTED]: Status.UNAVAILABLE,
  [ErrorCode.OUTCOME_UNKNOWN]: Status.UNAVAILABLE,
  [ErrorCode.STOPPED]: Status.UNAVAILABLE,
  [ErrorCode.TIMEOUT]: Status.DEADLINE_EXCEEDED,
  [ErrorCode.NO_LEADER]: Status.UNAVAILABLE,
  [ErrorCode.LEADER_UNREACHABLE]: Status.UNAVAILABLE,
  [ErrorCode.WRONG_CLUSTER]: Status.PERMISSION_DENIED,
  [ErrorCode.PEER_IDENTITY_MISMATCH]: Status.PERMISSION_DENIED,
  [ErrorCode.SESSION_EXPIRED]: Status.FAILED_PRECONDITION,
  [ErrorCode.SESSION_LIMIT]: Status.RESOURCE_EXHAUSTED,
  [ErrorCode.SESSION_NOT_OWNED]: Status.PERMISSION_DENIED,
  [ErrorCode.DATA_DIR_LOCKED]: Status.INTERNAL,
  [ErrorCode.CORRUPTION]: Status.DATA_LOSS,
  [ErrorCode.CONFIG_CHANGE_PENDING]: Status.FAILED_PRECONDITION,
  [ErrorCode.LEARNER_NOT_CAUGHT_UP]: Status.FAILED_PRECONDITION,
  [ErrorCode.MEMBER_NOT_FOUND]: Status.NOT_FOUND,
  [ErrorCode.MEMBER_EXISTS]: Status.ALREADY_EXISTS,
  [ErrorCode.LEADER_TRANSFERRING]: Status.UNAVAILABLE,
  [ErrorCode.TRANSFER_FAILED]: Status.ABORTED,
  [ErrorCode.MEMBER_REMOVED]: Status.PERMISSION_DENIED,
  [ErrorCode.UNAUTHENTICATED]: Status.UNAUTHENTICATED,
  [ErrorCode.PERMISSION_DENIED]: Status.PERMISSION_DENIED,
  [ErrorCode.AUTH_RATE_LIMITED]: Status.RESOURCE_EXHAUSTED,
  [ErrorCode.AUTH_NOT_FOUND]: Status.NOT_FOUND,
  [ErrorCode.AUTH_EXISTS]: Status.ALREADY_EXISTS,
  [ErrorCode.AUTH_ROOT_REQUIRED]: Status.FAILED_PRECONDITION,
  [ErrorCode.AUTH_LIMIT]: Status.RESOURCE_EXHAUSTED,
  [ErrorCode.LEASE_NOT_FOUND]: Status.NOT_FOUND,
  [ErrorCode.LEASE_EXISTS]: Status.ALREADY_EXISTS,
  [ErrorCode.LEASE_LIMIT]: Status.RESOURCE_EXHAUSTED,
};

export interface GrpcError extends Partial<ServiceError> {
  code: Status;
  details: string;
  metadata?: Metadata;
}

/** Turns any error into a gRPC status; a status error from a forwarded call passes through. */
export function toGrpcError(err: unknown): GrpcError {
  if (isGrpcError(err)) return { code: err.code, details: err.details, metadata: err.metadata };
  if (err instanceof CairnError) {
    const metadata = new Metadata();
    if (err.details.leader) metadata.set(LEADER_ID_METADATA, String(err.details.leader));
    if (err.details.commitIndex !== undefined) metadata.set(COMMIT_INDEX_METADATA, String(err.details.commitIndex));
    metadata.set(ERROR_CODE_METADATA, err.code);
    return { code: STATUS_OF[err.code], details: err.message, metadata };
  }
  return { code: Status.INTERNAL, details: `internal error: ${(err as Error)?.message ?? String(err)}` };
}

/**
 * The CairnError a status from another cairn node stands for (its `cairn-error-code` and
 * `cairn-leader-id` trailers), so a forwarded request's error is relayed as the leader gave
 * it; undefined for a status without a code this version knows.
 */
export function fromGrpcError(err: ServiceError): CairnError | undefined {
  const code = err.metadata?.get(ERROR_CODE_METADATA)[0];
  if (typeof code !== 'string' || !Object.hasOwn(STATUS_OF, code)) return undefined;
  const leader = Number(err.metadata.get(LEADER_ID_METADATA)[0] ?? 0);
  return new CairnError(code as ErrorCode, err.details, { leader: Number.isSafeInteger(leader) && leader > 0 ? leader : undefined });
}

export function isGrpcError(err: unknown): err is ServiceError {
  return typeof err === 'object' && err !== null && typeof (err as ServiceError).code === 'number' && 'details' in err && 'metadata' in err;
}
