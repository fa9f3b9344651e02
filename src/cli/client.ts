import { randomUUID } from 'node:crypto';
import { Metadata, ServiceError, status as Status } from '@grpc/grpc-js';
import {
  AuthClient,
  LeaseClient,
  AuthenticateResponse,
  ClusterClient,
  Consistency,
  DeleteResponse,
  GetResponse,
  KVClient,
  LeaderTransferResponse,
  MemberAddResponse,
  MemberListResponse,
  MemberPromoteResponse,
  MemberRemoveResponse,
  PutResponse,
  RangeResponse,
  ResponseHeader,
  SnapshotResponse,
  StatusResponse,
  TxnResponse,
} from '../../gen/cairn/kv/v1/kv';
import { ErrorCode } from '../errors';
import { TxnText } from './txn-text';
import { ERROR_CODE_METADATA } from '../server/status';
import { DialSecurity, PLAINTEXT_DIAL } from '../server/tls';

/** Rounds over all endpoints before a request is given up. */
const MAX_ROUNDS = 5;
const RETRY_DELAY_MS = 200;
/** With a whole-call budget, the least one attempt at one endpoint is given. */
const MIN_ATTEMPT_MS = 500;

export interface ClientOptions {
  endpoints: string[];
  /** Longest wait for one attempt at one endpoint. */
  timeoutMs: number;
  /**
   * Budget for a whole call, every endpoint and retry included (the CLI's --timeout-ms).
   * Unset: up to MAX_ROUNDS rounds of `timeoutMs` attempts.
   */
  totalTimeoutMs?: number;
  consistency: Consistency;
  /** TLS (src/cli/tls-options.ts); default plaintext. */
  dial?: DialSecurity;
}

type CallArgs<T> = [index: number, metadata: Metadata, options: { deadline: number }, callback: (err: ServiceError | null, res?: T) => void];
interface SessionFields {
  clientId: string;
  sequence: number;
  lowestUnansweredSequence: number;
}

function newClientId(): string {
  return `cli-${randomUUID()}`;
}

/** Errors worth another endpoint or another try. Writes carry a session, so a retry is safe. */
const RETRYABLE = new Set([Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED, Status.CANCELLED, Status.UNKNOWN, Status.UNIMPLEMENTED]);

/**
 * Why one attempt at one endpoint failed, from the least to the most informative: nothing
 * listened, something listened but did not answer in time, something answered that is not
 * cairn's client API (a peer port, another service), a cairn node answered with an error.
 */
export type FailureKind = 'unreachable' | 'no-answer' | 'wrong-service' | 'answered';
const RANK: Record<FailureKind, number> = { unreachable: 0, 'no-answer': 1, 'wrong-service': 2, answered: 3 };

export interface AttemptFailure {
  endpoint: string;
  kind: FailureKind;
  error: ServiceError;
  /** The deadline this attempt was given, in ms. */
  attemptMs: number;
}

export function failureKind(error: ServiceError): FailureKind {
  if (error.metadata?.get(ERROR_CODE_METADATA).length) return 'answered';
  if (error.code === Status.UNIMPLEMENTED) return 'wrong-service';
  if (error.code === Status.DEADLINE_EXCEEDED || error.code === Status.CANCELLED) return 'no-answer';
  if (error.code === Status.UNAVAILABLE) return 'unreachable';
  return 'answered';
}

/**
 * A call that failed at every endpoint it tried. It carries the most informative failure's
 * gRPC code, details and trailers (so code that matches on them keeps working), and every
 * endpoint's last failure, for a message that says what happened everywhere.
 */
export class CallFailedError extends Error implements Partial<ServiceError> {
  override name = 'CallFailedError';
  readonly code: Status;
  readonly details: string;
  readonly metadata: Metadata;

  constructor(
    readonly primary: AttemptFailure,
    /** Each endpoint's last failure, in endpoint order. */
    readonly failures: AttemptFailure[],
    /** A write that may have been applied although no answer said so. */
    readonly outcomeUnknown: boolean,
  ) {
    super(`${Status[primary.error.code]}: ${primary.error.details}`);
    this.code = primary.error.code;
    this.details = primary.error.details;
    this.metadata = primary.error.metadata;
  }
}

/** Cairn's codes that leave a write's outcome unknown (errors.ts), as carried in the trailer. */
const UNKNOWN_OUTCOME_CODES = new Set(['OUTCOME_UNKNOWN', 'TIMEOUT', 'STOPPED']);

function leavesOutcomeUnknown(failure: AttemptFailure): boolean {
  if (failure.kind === 'no-answer') return true;
  const code = failure.error.metadata?.get(ERROR_CODE_METADATA)[0];
  return code !== undefined && UNKNOWN_OUTCOME_CODES.has(String(code));
}

/**
 * A client of any cairn cluster: it tries the endpoints in turn, sticks with the one
 * that answered or with the leader that answer names, and retries writes with the same client id and sequence number, so a
 * write that timed out and is retried is applied once.
 */
export class CairnClient {
  private readonly kv: KVClient[];
  private readonly cluster: ClusterClient[];
  private readonly auth: AuthClient[];
  private readonly leases: LeaseClient[];
  /** The token every call carries (`authorization: Bearer TOKEN`), once logged in. */
  private token: string | undefined;
  private preferred = 0;
  /** Leader id -> its client address, as the cluster reports it (MemberList). */
  private readonly clientAddrs = new Map<number, string>();
  private clientId = newClientId();
  private sequence = 0;
  /** Sequences sent and not yet answered, by session (client id): what lowest_unanswered_sequence may claim. */
  private readonly sequencesInFlight = new Map<string, Set<number>>();

  constructor(private readonly options: ClientOptions) {
    if (options.endpoints.length === 0) throw new Error('no endpoints given');
    const dials = options.endpoints.map(options.dial ?? PLAINTEXT_DIAL);
    this.kv = options.endpoints.map((e, i) => new KVClient(e, dials[i]!.credentials, dials[i]!.options));
    this.cluster = options.endpoints.map((e, i) => new ClusterClient(e, dials[i]!.credentials, dials[i]!.options));
    this.auth = options.endpoints.map((e, i) => new AuthClient(e, dials[i]!.credentials, dials[i]!.options));
    this.leases = options.endpoints.map((e, i) => new LeaseClient(e, dials[i]!.credentials, dials[i]!.options));
  }

  /** Authenticates as `name` (Auth.Authenticate); every later call carries the token. */
  async login(name: string, password: string): Promise<void> {
    const response = await this.retry<AuthenticateResponse>((i, md, opts, cb) => this.auth[i]!.authenticate({ name, password }, md, opts, cb));
    this.token = response.token;
  }

  /** Forgets the token: later calls are anonymous. */
  logout(): void {
    this.token = undefined;
  }

  /** Calls one Auth method (src/cli/auth-verbs.ts), at any endpoint, with the usual retries. */
  authCall<Req, Res>(method: (client: AuthClient) => (request: Req, metadata: Metadata, options: { deadline: number }, callback: (err: ServiceError | null, res?: Res) => void) => unknown, request: Req): Promise<Res> {
    return this.retry((i, md, opts, cb) => {
      const client = this.auth[i]!;
      method(client).call(client, request, md, opts, cb);
    });
  }

  /**
   * Calls one Lease method (src/cli/lease-verbs.ts), at any endpoint, with the usual retries.
   * A grant carries no session: one retried after an unknown outcome may grant a second
   * lease, which nobody keeps alive and which so expires after its TTL.
   */
  leaseCall<Req, Res>(method: (client: LeaseClient) => (request: Req, metadata: Metadata, options: { deadline: number }, callback: (err: ServiceError | null, res?: Res) => void) => unknown, request: Req): Promise<Res> {
    return this.retry((i, md, opts, cb) => {
      const client = this.leases[i]!;
      method(client).call(client, request, md, opts, cb);
    });
  }

  /** Metadata for one call: the token, when logged in (also for calls made outside this client, as a backup's stream). */
  callMetadata(): Metadata {
    return this.metadata();
  }

  /** Metadata for one call: the token, when logged in. */
  private metadata(): Metadata {
    const metadata = new Metadata();
    if (this.token) metadata.set('authorization', `Bearer ${this.token}`);
    return metadata;
  }

  put(key: Buffer, value: Buffer, prevKv = false, lease?: number): Promise<PutResponse> {
    return this.write((session, i, md, opts, cb) => this.kv[i]!.put({ key, value, prevKv, lease, ...session }, md, opts, cb));
  }

  get(key: Buffer): Promise<GetResponse> {
    const request = { key, consistency: this.options.consistency };
    return this.retry((i, md, opts, cb) => this.kv[i]!.get(request, md, opts, cb));
  }

  delete(key: Buffer, prevKv = false): Promise<DeleteResponse> {
    return this.write((session, i, md, opts, cb) => this.kv[i]!.delete({ key, prevKv, ...session }, md, opts, cb));
  }

  /**
   * Sends a write under the client's session (kv.proto, "Client sessions"), retried with
   * the same sequence. Writes may run concurrently: each tells the lowest sequence still in
   * flight under the session (its own or an earlier one's), never more, or a retry of an
   * earlier write would be refused as already answered. A write that failed is never
   * retried again: the next one starts a new session rather than claim answers this one
   * never got. A write refused as SESSION_EXPIRED on its first attempt (the session was
   * evicted while idle), or SESSION_NOT_OWNED (it was started before this client logged in,
   * or auth was enabled since), was applied nowhere, so it is sent once more under a new
   * session.
   */
  private async write<T>(send: (session: SessionFields, ...call: CallArgs<T>) => void): Promise<T> {
    for (let renewed = false; ; renewed = true) {
      const sequence = ++this.sequence;
      const clientId = this.clientId;
      const inFlight = this.sequencesInFlight.get(clientId) ?? new Set<number>();
      this.sequencesInFlight.set(clientId, inFlight);
      const lowestUnansweredSequence = Math.min(sequence, ...inFlight);
      inFlight.add(sequence);
      const session = { clientId, sequence, lowestUnansweredSequence };
      const attempts = { count: 0 };
      try {
        return await this.retry((...call: CallArgs<T>) => send(session, ...call), true, attempts);
      } catch (err) {
        if (this.clientId === clientId) {
          this.clientId = newClientId();
          this.sequence = 0;
        }
        // Neither refusal applied anything: one more try, under a new session.
        const code = (err as ServiceError).metadata?.get(ERROR_CODE_METADATA)[0];
        const renewable = code === ErrorCode.SESSION_EXPIRED || code === ErrorCode.SESSION_NOT_OWNED;
        if (renewed || !renewable || attempts.count !== 1) throw err;
      } finally {
        inFlight.delete(sequence);
        if (inFlight.size === 0) this.sequencesInFlight.delete(clientId);
      }
    }
  }

  /** A transaction (KV.Txn), under the client's session like any write. */
  txn(request: TxnText): Promise<TxnResponse> {
    return this.write((session, i, md, opts, cb) => this.kv[i]!.txn({ ...request, ...session }, md, opts, cb));
  }

  /** Keys with `prefix` (all keys when empty), in order. */
  list(prefix: Buffer, limit: number, keysOnly = false): Promise<RangeResponse> {
    const request = { key: prefix, rangeEnd: Buffer.alloc(0), prefix: true, limit, keysOnly, consistency: this.options.consistency };
    return this.retry((i, md, opts, cb) => this.kv[i]!.range(request, md, opts, cb));
  }

  /** Status of one endpoint (no retry elsewhere: the caller asked about that node), within the whole-call budget. */
  statusOf(index: number): Promise<StatusResponse> {
    const timeoutMs = this.statusTimeoutMs;
    return new Promise((resolve, reject) =>
      this.cluster[index]!.status({}, this.metadata(), { deadline: Date.now() + timeoutMs }, (err, res) => (err ? reject(err) : resolve(res!))),
    );
  }

  /** Makes the node at endpoint `index` compact its log now (Cluster.Snapshot), within the whole-call budget. */
  snapshotOf(index: number): Promise<SnapshotResponse> {
    const timeoutMs = this.statusTimeoutMs;
    return new Promise((resolve, reject) =>
      this.cluster[index]!.snapshot({}, this.metadata(), { deadline: Date.now() + timeoutMs }, (err, res) => (err ? reject(err) : resolve(res!))),
    );
  }

  members(): Promise<MemberListResponse> {
    return this.retry((i, md, opts, cb) => this.cluster[i]!.memberList({}, md, opts, cb));
  }

  /** Adds a learner; any endpoint will do (a follower forwards to the leader). */
  memberAdd(id: number, peerAddr: string, clientAddr = ''): Promise<MemberAddResponse> {
    return this.retry((i, md, opts, cb) => this.cluster[i]!.memberAdd({ id, peerAddr, clientAddr }, md, opts, cb));
  }

  memberPromote(id: number): Promise<MemberPromoteResponse> {
    return this.retry((i, md, opts, cb) => this.cluster[i]!.memberPromote({ id }, md, opts, cb));
  }

  /**
   * Removes member `id`. When an attempt's answer was lost (the leader that removed itself
   * stopped, a connection broke) and a retry then finds no such member, the removal is done:
   * answered with the members as they are now, rather than NOT_FOUND for what was asked.
   */
  async memberRemove(id: number): Promise<MemberRemoveResponse> {
    try {
      return await this.retry((i, md, opts, cb) => this.cluster[i]!.memberRemove({ id }, md, opts, cb), true);
    } catch (err) {
      const gone = err instanceof CallFailedError && err.outcomeUnknown && err.metadata?.get(ERROR_CODE_METADATA)[0] === ErrorCode.MEMBER_NOT_FOUND;
      if (!gone) throw err;
      const { header, members } = await this.members();
      return { header, members };
    }
  }

  /** Hands leadership to `toId` (0: the most caught-up voter); resolves once it leads. */
  leaderTransfer(toId = 0): Promise<LeaderTransferResponse> {
    return this.retry((i, md, opts, cb) => this.cluster[i]!.leaderTransfer({ toId }, md, opts, cb));
  }

  /** How long statusOf waits for its one endpoint. */
  get statusTimeoutMs(): number {
    return this.options.totalTimeoutMs ?? this.options.timeoutMs;
  }

  /** How this client dials its endpoints (TLS or plaintext), for streams opened beside it (cairn watch, cairn lock). */
  get dial(): DialSecurity {
    return this.options.dial ?? PLAINTEXT_DIAL;
  }

  get endpoints(): string[] {
    return this.options.endpoints;
  }

  close(): void {
    for (const c of [...this.kv, ...this.cluster, ...this.auth, ...this.leases]) c.close();
  }

  /**
   * After an answer from a follower, prefer the leader's endpoint (when it is one of
   * ours), so the next request skips the forwarding hop.
   */
  private async followLeader(header: ResponseHeader | undefined, deadline: number): Promise<void> {
    if (!header?.leaderId || header.leaderId === header.memberId) return;
    if (!this.clientAddrs.has(header.leaderId)) {
      const members = await new Promise<MemberListResponse | undefined>((resolve) =>
        this.cluster[this.preferred]!.memberList({}, this.metadata(), { deadline: Math.min(deadline, Date.now() + this.options.timeoutMs) }, (err, res) =>
          resolve(err ? undefined : res),
        ),
      );
      for (const member of members?.members ?? []) if (member.clientAddr) this.clientAddrs.set(member.id, member.clientAddr);
    }
    const index = this.options.endpoints.indexOf(this.clientAddrs.get(header.leaderId) ?? '');
    if (index >= 0) this.preferred = index;
  }

  /** One attempt's deadline: its share of the whole-call budget, never past the budget. */
  private attemptMs(callDeadline: number, nowMs: number): number {
    const { timeoutMs, totalTimeoutMs } = this.options;
    if (totalTimeoutMs === undefined) return timeoutMs;
    const share = Math.max(MIN_ATTEMPT_MS, Math.ceil(totalTimeoutMs / this.options.endpoints.length));
    return Math.max(1, Math.min(timeoutMs, share, callDeadline - nowMs));
  }

  /**
   * Tries the endpoints in turn, from the preferred one, for MAX_ROUNDS rounds or until the
   * whole-call budget runs out. An endpoint that is not cairn's client API is not tried again.
   * A failure reports the most informative error seen, not merely the last one.
   */
  private async retry<T>(
    call: (index: number, metadata: Metadata, options: { deadline: number }, callback: (err: ServiceError | null, res?: T) => void) => void,
    isWrite = false,
    attempts = { count: 0 },
  ): Promise<T> {
    const count = this.options.endpoints.length;
    const startedMs = Date.now();
    const callDeadline = startedMs + (this.options.totalTimeoutMs ?? Number.POSITIVE_INFINITY);
    const lastFailure = new Map<number, AttemptFailure>();
    let primary: AttemptFailure | undefined;
    let outcomeUnknown = false;
    const fail = () => new CallFailedError(primary!, [...lastFailure.keys()].sort((a, b) => a - b).map((i) => lastFailure.get(i)!), isWrite && outcomeUnknown);
    for (let attempt = 0; attempt < MAX_ROUNDS * count; attempt++) {
      const index = (this.preferred + attempt) % count;
      if (lastFailure.get(index)?.kind === 'wrong-service') continue;
      // The first attempt reads the clock the deadline was set from, so it gets exactly its
      // share (the clock may tick in between, and the message names the wait it was given).
      const attemptMs = this.attemptMs(callDeadline, attempt === 0 ? startedMs : Date.now());
      attempts.count++;
      try {
        const result = await new Promise<T>((resolve, reject) =>
          call(index, this.metadata(), { deadline: Date.now() + attemptMs }, (err, res) => (err ? reject(err) : resolve(res!))),
        );
        this.preferred = index;
        await this.followLeader((result as { header?: ResponseHeader }).header, callDeadline);
        return result;
      } catch (err) {
        const error = err as ServiceError;
        const kind = failureKind(error);
        const earlier = lastFailure.get(index);
        // The longest wait an endpoint was given is the one worth reporting.
        const longestMs = earlier?.kind === kind ? Math.max(earlier.attemptMs, attemptMs) : attemptMs;
        const failure: AttemptFailure = { endpoint: this.options.endpoints[index]!, kind, error, attemptMs: longestMs };
        lastFailure.set(index, failure);
        if (!primary || RANK[failure.kind] >= RANK[primary.kind]) primary = failure;
        outcomeUnknown ||= leavesOutcomeUnknown(failure);
        // A definitive answer (bad input, say) stands alone: the other endpoints do not matter.
        if (!RETRYABLE.has(error.code)) throw new CallFailedError(failure, [failure], isWrite && outcomeUnknown);
        if (Date.now() >= callDeadline) break;
        if ((attempt + 1) % count === 0) await new Promise((resolve) => setTimeout(resolve, Math.min(RETRY_DELAY_MS, Math.max(0, callDeadline - Date.now()))));
        if (Date.now() >= callDeadline) break;
      }
    }
    throw fail();
  }
}
