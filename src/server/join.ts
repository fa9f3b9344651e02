import { Metadata, ServiceError, status as Status } from '@grpc/grpc-js';
import { AuthClient, ClusterClient, Member, MemberAddResponse, MemberListResponse, MemberPromoteResponse, MemberRole, StatusResponse } from '../../gen/cairn/kv/v1/kv';
import { ClusterConfig } from '../../gen/cairn/raft/v1/raft';
import { CairnError, ErrorCode } from '../errors';
import { NodeId } from '../raft/node';
import { Logger } from './logger';
import { ERROR_CODE_METADATA } from './status';
import { DialSecurity, PLAINTEXT_DIAL } from './tls';

/** How long `--join` keeps trying to reach the cluster and be added, before the node gives up and exits. */
export const JOIN_TIMEOUT_MS = 60_000;
/** How long a joined node keeps asking to be promoted (it is catching up meanwhile) before it stays a learner. */
export const PROMOTE_TIMEOUT_MS = 300_000;
/** One call to one member's client port. */
export const JOIN_ATTEMPT_TIMEOUT_MS = 5_000;
/** Retries back off from this ... */
export const JOIN_RETRY_MIN_DELAY_MS = 100;
/** ... doubling up to this. */
export const JOIN_RETRY_MAX_DELAY_MS = 2_000;

export interface JoinRequest {
  id: NodeId;
  peerAddr: string;
  clientAddr: string;
  /** Client addresses of running members. */
  endpoints: string[];
  /** TLS to their client ports (src/server/tls.ts, memberClientDial); default plaintext. */
  dial?: DialSecurity;
  /** With auth on: a user with role root to add this node as (--join-user NAME:PASSWORD). */
  user?: JoinUser;
}

export interface JoinUser {
  name: string;
  password: string;
}

export interface Joined {
  clusterId: number;
  /** The configuration after this node was added (itself a learner): its bootstrap configuration. */
  config: ClusterConfig;
}

/** The configuration a member list describes. */
export function configFromMembers(members: readonly Member[]): ClusterConfig {
  const of = (role: MemberRole) =>
    members
      .filter((m) => m.role === role)
      .map((m) => ({ id: m.id, peerAddr: m.peerAddr, clientAddr: m.clientAddr }))
      .sort((a, b) => a.id - b.id);
  return { voters: of(MemberRole.MEMBER_ROLE_VOTER), learners: of(MemberRole.MEMBER_ROLE_LEARNER) };
}

function cairnCode(err: unknown): string | undefined {
  const value = (err as ServiceError)?.metadata?.get(ERROR_CODE_METADATA)[0];
  return typeof value === 'string' ? value : undefined;
}

/** Cairn's codes worth waiting out: the change can succeed later without anyone doing anything. */
const WAIT_CODES = new Set<string>([ErrorCode.LEARNER_NOT_CAUGHT_UP, ErrorCode.CONFIG_CHANGE_PENDING, ErrorCode.LEADER_TRANSFERRING]);

type Call<T> = (client: ClusterClient, metadata: Metadata, options: { deadline: number }, done: (err: ServiceError | null, value?: T) => void) => unknown;

/**
 * Cluster calls to the running members a joining node was given: each call tries the
 * endpoints in turn until one answers, retrying with backoff (bounded by a deadline) what
 * can succeed later: unreachable members, no leader, a change in progress, a learner not
 * caught up yet.
 */
export class JoinEndpoints {
  private readonly clients: ClusterClient[];
  private readonly authClients: AuthClient[];
  /** The token from logging in as `user` (undefined: not yet, or auth is off). */
  private token: string | undefined;

  constructor(
    readonly endpoints: readonly string[],
    private readonly user?: JoinUser,
    dial: DialSecurity = PLAINTEXT_DIAL,
  ) {
    if (endpoints.length === 0) throw new CairnError(ErrorCode.INVALID_ARGUMENT, '--join names no endpoint');
    const dials = endpoints.map((e) => dial(e));
    this.clients = endpoints.map((e, i) => new ClusterClient(e, dials[i]!.credentials, dials[i]!.options));
    this.authClients = user ? endpoints.map((e, i) => new AuthClient(e, dials[i]!.credentials, dials[i]!.options)) : [];
  }

  /**
   * The metadata of a call: with a --join-user, its token, logging in first when there is
   * none (an expired or revoked one is dropped when a call is refused UNAUTHENTICATED). A
   * cluster with auth off answers the login with AUTH_ROOT_REQUIRED: no token then.
   */
  private async metadata(index: number, deadline: number): Promise<Metadata> {
    const metadata = new Metadata();
    if (this.user && this.token === undefined) {
      const user = this.user;
      try {
        const response = await new Promise<{ token: string }>((resolve, reject) =>
          this.authClients[index]!.authenticate({ name: user.name, password: user.password }, new Metadata(), { deadline }, (err, value) => (err ? reject(err) : resolve(value!))),
        );
        this.token = response.token;
      } catch (err) {
        if (cairnCode(err) !== ErrorCode.AUTH_ROOT_REQUIRED) throw err;
      }
    }
    if (this.token !== undefined) metadata.set('authorization', `Bearer ${this.token}`);
    return metadata;
  }

  async call<T>(what: string, deadlineMs: number, call: Call<T>, onRetry?: (reason: string) => void, signal?: AbortSignal): Promise<T> {
    let delayMs = JOIN_RETRY_MIN_DELAY_MS;
    let last: unknown;
    for (let attempt = 0; Date.now() < deadlineMs; attempt++) {
      if (signal?.aborted) throw new CairnError(ErrorCode.STOPPED, `${what}: the node is stopping`);
      const client = this.clients[attempt % this.clients.length]!;
      const deadline = Math.min(deadlineMs, Date.now() + JOIN_ATTEMPT_TIMEOUT_MS);
      try {
        const metadata = await this.metadata(attempt % this.clients.length, deadline);
        return await new Promise<T>((resolve, reject) => call(client, metadata, { deadline }, (err, value) => (err ? reject(err) : resolve(value!))));
      } catch (err) {
        last = err;
        const code = cairnCode(err);
        const grpc = (err as ServiceError).code;
        // A token that expired while a learner caught up: log in again.
        const staleToken = grpc === Status.UNAUTHENTICATED && this.token !== undefined && code !== undefined;
        if (staleToken) this.token = undefined;
        const retryable = grpc === Status.UNAVAILABLE || grpc === Status.DEADLINE_EXCEEDED || staleToken || (code !== undefined && WAIT_CODES.has(code));
        if (!retryable) throw err;
        onRetry?.(`${code ?? Status[grpc]}: ${(err as ServiceError).details}`);
      }
      // A whole round over the endpoints failed: wait before the next.
      if ((attempt + 1) % this.clients.length === 0) {
        await new Promise((resolve) => setTimeout(resolve, Math.max(0, Math.min(delayMs, deadlineMs - Date.now()))));
        delayMs = Math.min(delayMs * 2, JOIN_RETRY_MAX_DELAY_MS);
      }
    }
    const reason = last ? `${(last as ServiceError).details ?? (last as Error).message}` : 'no attempt finished';
    throw new CairnError(ErrorCode.TIMEOUT, `${what} did not succeed within the time allowed (last: ${reason})`);
  }

  close(): void {
    for (const client of [...this.clients, ...this.authClients]) client.close();
  }
}

/**
 * Asks the running cluster to add this node as a learner with its addresses and returns the
 * cluster id and the configuration it was added with. A MemberAdd that finds the node added
 * already at the same peer address (a previous start was added, then stopped before it
 * stored its identity) continues from the cluster's member list.
 */
export async function joinCluster(request: JoinRequest, logger: Pick<Logger, 'info' | 'warn'>, timeoutMs = JOIN_TIMEOUT_MS): Promise<Joined> {
  const endpoints = new JoinEndpoints(request.endpoints, request.user, request.dial);
  const deadlineMs = Date.now() + timeoutMs;
  const retrying = (what: string) => (reason: string) => logger.warn({ endpoints: request.endpoints, reason }, `join: ${what} failed; retrying`);
  try {
    const status = await endpoints.call<StatusResponse>('asking the cluster for its id', deadlineMs, (c, md, o, done) => c.status({}, md, o, done), retrying('Status'));
    const member = { id: request.id, peerAddr: request.peerAddr, clientAddr: request.clientAddr };
    logger.info({ clusterId: status.clusterId, endpoints: request.endpoints }, 'join: asking the cluster to add this node as a learner');
    try {
      const added = await endpoints.call<MemberAddResponse>('MemberAdd', deadlineMs, (c, md, o, done) => c.memberAdd(member, md, o, done), retrying('MemberAdd'));
      return { clusterId: status.clusterId, config: configFromMembers(added.members) };
    } catch (err) {
      if (cairnCode(err) !== ErrorCode.MEMBER_EXISTS) throw err;
      const listed = await endpoints.call<MemberListResponse>('MemberList', deadlineMs, (c, md, o, done) => c.memberList({}, md, o, done), retrying('MemberList'));
      const existing = listed.members.find((m) => m.id === request.id);
      if (!existing || existing.peerAddr !== request.peerAddr) {
        throw new CairnError(
          ErrorCode.MEMBER_EXISTS,
          `the cluster already has a member ${request.id}${existing ? ` at ${existing.peerAddr}` : ''}: choose another --id, or remove it first (cairn member remove ${request.id})`,
        );
      }
      logger.warn({ id: request.id }, 'join: this node was added already (an earlier start); continuing with the cluster\'s configuration');
      return { clusterId: status.clusterId, config: configFromMembers(listed.members) };
    }
  } finally {
    endpoints.close();
  }
}

/**
 * Asks the cluster to promote this learner until it succeeds: the leader refuses while the
 * learner lags (LEARNER_NOT_CAUGHT_UP), so it waits with backoff, for at most `timeoutMs`.
 * Resolves with the configuration after the promotion.
 */
export async function promoteWhenCaughtUp(
  id: NodeId,
  endpoints: readonly string[],
  logger: Pick<Logger, 'info' | 'warn'>,
  signal?: AbortSignal,
  timeoutMs = PROMOTE_TIMEOUT_MS,
  user?: JoinUser,
  dial?: DialSecurity,
): Promise<ClusterConfig> {
  const clients = new JoinEndpoints(endpoints, user, dial);
  let lastReason = '';
  const deadlineMs = Date.now() + timeoutMs;
  try {
    const promoted = await clients.call<MemberPromoteResponse>('MemberPromote', deadlineMs, (c, md, o, done) => c.memberPromote({ id }, md, o, done), (reason) => {
      if (reason !== lastReason) logger.info({ reason }, 'join: not promoted yet; retrying');
      lastReason = reason;
    }, signal);
    return configFromMembers(promoted.members);
  } catch (err) {
    // A retry after a lost answer finds this node a voter already ("member N is already a
    // voter"): the promotion is done, as the member list says.
    if (lastReason === '' || signal?.aborted) throw err;
    const listed = await clients.call<MemberListResponse>('MemberList', deadlineMs, (c, md, o, done) => c.memberList({}, md, o, done), undefined, signal).catch(() => undefined);
    if (listed?.members.some((m) => m.id === id && m.role === MemberRole.MEMBER_ROLE_VOTER)) return configFromMembers(listed.members);
    throw err;
  } finally {
    clients.close();
  }
}
