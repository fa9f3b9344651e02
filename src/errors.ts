/**
 * The one place cairn's error codes are defined. Codes are stable: clients, logs and
 * tests match on them, never on message text.
 */
export const ErrorCode = {
  /** This node is not the leader; `leader` names the one it knows, if any. */
  NOT_LEADER: 'NOT_LEADER',
  /** The proposal's log slot was taken by another leader's entry: it was not applied. */
  PROPOSAL_DROPPED: 'PROPOSAL_DROPPED',
  /**
   * This node lost track of a write it proposed (it was superseded in the local log
   * while the node was not leading): it may or may not be applied. Retrying with the
   * same client id and sequence is safe.
   */
  OUTCOME_UNKNOWN: 'OUTCOME_UNKNOWN',
  /** Too many uncommitted entries or bytes on the leader: retry later (RESOURCE_EXHAUSTED). */
  OVERLOADED: 'OVERLOADED',
  /** Leadership was lost before a linearizable read could be confirmed. */
  READ_ABORTED: 'READ_ABORTED',
  /** The node is shutting down or has stopped; a pending write's outcome is unknown. */
  STOPPED: 'STOPPED',
  /** The request did not complete in time; a write's outcome is then unknown. */
  TIMEOUT: 'TIMEOUT',
  /** No leader is known right now (an election may be under way). */
  NO_LEADER: 'NO_LEADER',
  /**
   * A leader is known (`leader`) but this node could not reach it to forward the request;
   * the request never left this node, so it was not applied and retrying is safe.
   */
  LEADER_UNREACHABLE: 'LEADER_UNREACHABLE',
  /** A peer from another cluster, or a node that is not a member. */
  WRONG_CLUSTER: 'WRONG_CLUSTER',
  /** A peer's message names a sender other than the node its TLS certificate names (PERMISSION_DENIED). */
  PEER_IDENTITY_MISMATCH: 'PEER_IDENTITY_MISMATCH',
  /**
   * The session's result for this write was discarded (its sequence is below one the
   * client said was answered, or the session was evicted): the write was not applied
   * now. Start again with a new client id (kv.proto, "Client sessions").
   */
  SESSION_EXPIRED: 'SESSION_EXPIRED',
  /**
   * A session bound was reached (too many sessions, or too many unanswered results in
   * one): the write was not applied. Retry later, after answers advance the session.
   */
  SESSION_LIMIT: 'SESSION_LIMIT',
  /**
   * With auth on, the write's client session was started by another user (or while auth
   * was off): not applied, and none of the session's kept answers are handed out. Start
   * again with a new client id (kv.proto, "Client sessions").
   */
  SESSION_NOT_OWNED: 'SESSION_NOT_OWNED',
  /** The request is malformed or over a limit. */
  INVALID_ARGUMENT: 'INVALID_ARGUMENT',
  /** The revision asked for is below the compacted one: its history is gone (INVALID_ARGUMENT). */
  COMPACTED: 'COMPACTED',
  /** The revision asked for is above the store's current one (INVALID_ARGUMENT). */
  FUTURE_REVISION: 'FUTURE_REVISION',
  /** Another process holds the data directory. */
  DATA_DIR_LOCKED: 'DATA_DIR_LOCKED',
  /** Data on disk is not what cairn wrote. */
  CORRUPTION: 'CORRUPTION',
  /**
   * A membership change is already under way (its entry has not committed), or the
   * leader has not yet committed an entry of its term: retry shortly (FAILED_PRECONDITION).
   */
  CONFIG_CHANGE_PENDING: 'CONFIG_CHANGE_PENDING',
  /** The learner to promote has not caught up with the leader's log (or was not heard from lately). */
  LEARNER_NOT_CAUGHT_UP: 'LEARNER_NOT_CAUGHT_UP',
  /** No member with this id in the configuration. */
  MEMBER_NOT_FOUND: 'MEMBER_NOT_FOUND',
  /** A member with this id is already in the configuration. */
  MEMBER_EXISTS: 'MEMBER_EXISTS',
  /** The leader is handing leadership over and takes no proposals meanwhile: retry (UNAVAILABLE). */
  LEADER_TRANSFERRING: 'LEADER_TRANSFERRING',
  /** A leadership transfer was abandoned: the target did not win within an election timeout. */
  TRANSFER_FAILED: 'TRANSFER_FAILED',
  /**
   * A peer refused this node because a committed configuration removed it: the node is no
   * longer a member and stops (docs/architecture.md, "Membership on the server").
   */
  MEMBER_REMOVED: 'MEMBER_REMOVED',
  /** Auth is on and the call carries no valid token (none, forged, expired, revoked) or a wrong password. */
  UNAUTHENTICATED: 'UNAUTHENTICATED',
  /** The caller's roles do not allow this call on this key or range. */
  PERMISSION_DENIED: 'PERMISSION_DENIED',
  /** Too many failed logins of this user lately: wait before trying again (RESOURCE_EXHAUSTED). */
  AUTH_RATE_LIMITED: 'AUTH_RATE_LIMITED',
  /** No user or role with this name. */
  AUTH_NOT_FOUND: 'AUTH_NOT_FOUND',
  /** A user or role with this name exists already (or the role is the built-in root). */
  AUTH_EXISTS: 'AUTH_EXISTS',
  /**
   * The change would leave auth on without a usable root, or enable it before user root
   * holds role root (FAILED_PRECONDITION).
   */
  AUTH_ROOT_REQUIRED: 'AUTH_ROOT_REQUIRED',
  /** The auth state would grow past one of its bounds (users, roles, permissions, bytes). */
  AUTH_LIMIT: 'AUTH_LIMIT',
  /** No lease with this id (never granted, or revoked or expired since). */
  LEASE_NOT_FOUND: 'LEASE_NOT_FOUND',
  /** A lease with this id exists already. */
  LEASE_EXISTS: 'LEASE_EXISTS',
  /** A lease bound was reached (MAX_LEASES, MAX_KEYS_PER_LEASE): nothing was applied. */
  LEASE_LIMIT: 'LEASE_LIMIT',
} as const;

export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

export class CairnError extends Error {
  override name = 'CairnError';

  constructor(
    readonly code: ErrorCode,
    message: string,
    /** `commitIndex`: on MEMBER_REMOVED, the refusing node's commit index (it knows the log that far). */
    readonly details: { leader?: number; cause?: unknown; commitIndex?: number } = {},
  ) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
  }
}

export function isCairnError(err: unknown, code?: ErrorCode): err is CairnError {
  return err instanceof CairnError && (code === undefined || err.code === code);
}
