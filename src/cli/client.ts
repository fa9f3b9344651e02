import { randomUUID } from 'node:crypto';
import { credentials, Metadata, ServiceError, status as Status } from '@grpc/grpc-js';
import {
  ClusterClient,
  Consistency,
  DeleteResponse,
  GetResponse,
  KVClient,
  MemberListResponse,
  PutResponse,
  RangeResponse,
  ResponseHeader,
  StatusResponse,
} from '../../gen/cairn/kv/v1/kv';
import { ErrorCode } from '../errors';
import { ERROR_CODE_METADATA } from '../server/status';

export const DEFAULT_ENDPOINTS = ['127.0.0.1:7001', '127.0.0.1:7002', '127.0.0.1:7003'];
/** Rounds over all endpoints before a request is given up. */
const MAX_ROUNDS = 5;
const RETRY_DELAY_MS = 200;

export interface ClientOptions {
  endpoints: string[];
  /** Per attempt. */
  timeoutMs: number;
  consistency: Consistency;
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
const RETRYABLE = new Set([Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED, Status.CANCELLED, Status.UNKNOWN]);

/**
 * A client of any cairn cluster: it tries the endpoints in turn, sticks with the one
 * that answered or with the leader that answer names, and retries writes with the same client id and sequence number, so a
 * write that timed out and is retried is applied once.
 */
export class CairnClient {
  private readonly kv: KVClient[];
  private readonly cluster: ClusterClient[];
  private preferred = 0;
  /** Leader id -> its client address, as the cluster reports it (MemberList). */
  private readonly clientAddrs = new Map<number, string>();
  private clientId = newClientId();
  private sequence = 0;

  constructor(private readonly options: ClientOptions) {
    if (options.endpoints.length === 0) throw new Error('no endpoints given');
    this.kv = options.endpoints.map((e) => new KVClient(e, credentials.createInsecure()));
    this.cluster = options.endpoints.map((e) => new ClusterClient(e, credentials.createInsecure()));
  }

  put(key: Buffer, value: Buffer, prevKv = false): Promise<PutResponse> {
    return this.write((session, i, md, opts, cb) => this.kv[i]!.put({ key, value, prevKv, ...session }, md, opts, cb));
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
   * the same sequence. One write is in flight at a time, so its own sequence is the lowest
   * unanswered one. A write that failed is never retried again: the next one starts a new
   * session rather than claim answers this one never got. A write refused as
   * SESSION_EXPIRED on its first attempt (the session was evicted while idle) was applied
   * nowhere, so it is sent once more under a new session.
   */
  private async write<T>(send: (session: SessionFields, ...call: CallArgs<T>) => void): Promise<T> {
    for (let renewed = false; ; renewed = true) {
      const sequence = ++this.sequence;
      const session = { clientId: this.clientId, sequence, lowestUnansweredSequence: sequence };
      const attempts = { count: 0 };
      try {
        return await this.retry((...call: CallArgs<T>) => send(session, ...call), attempts);
      } catch (err) {
        this.clientId = newClientId();
        this.sequence = 0;
        const expired = (err as ServiceError).metadata?.get(ERROR_CODE_METADATA)[0] === ErrorCode.SESSION_EXPIRED;
        if (renewed || !expired || attempts.count !== 1) throw err;
      }
    }
  }

  /** Keys with `prefix` (all keys when empty), in order. */
  list(prefix: Buffer, limit: number, keysOnly = false): Promise<RangeResponse> {
    const request = { key: prefix, rangeEnd: Buffer.alloc(0), prefix: true, limit, keysOnly, consistency: this.options.consistency };
    return this.retry((i, md, opts, cb) => this.kv[i]!.range(request, md, opts, cb));
  }

  /** Status of one endpoint (no retry elsewhere: the caller asked about that node). */
  statusOf(index: number): Promise<StatusResponse> {
    return new Promise((resolve, reject) =>
      this.cluster[index]!.status({}, new Metadata(), { deadline: Date.now() + this.options.timeoutMs }, (err, res) => (err ? reject(err) : resolve(res!))),
    );
  }

  members(): Promise<MemberListResponse> {
    return this.retry((i, md, opts, cb) => this.cluster[i]!.memberList({}, md, opts, cb));
  }

  get endpoints(): string[] {
    return this.options.endpoints;
  }

  close(): void {
    for (const c of [...this.kv, ...this.cluster]) c.close();
  }

  /**
   * After an answer from a follower, prefer the leader's endpoint (when it is one of
   * ours), so the next request skips the forwarding hop.
   */
  private async followLeader(header: ResponseHeader | undefined): Promise<void> {
    if (!header?.leaderId || header.leaderId === header.memberId) return;
    if (!this.clientAddrs.has(header.leaderId)) {
      const members = await new Promise<MemberListResponse | undefined>((resolve) =>
        this.cluster[this.preferred]!.memberList({}, new Metadata(), { deadline: Date.now() + this.options.timeoutMs }, (err, res) => resolve(err ? undefined : res)),
      );
      for (const member of members?.members ?? []) if (member.clientAddr) this.clientAddrs.set(member.id, member.clientAddr);
    }
    const index = this.options.endpoints.indexOf(this.clientAddrs.get(header.leaderId) ?? '');
    if (index >= 0) this.preferred = index;
  }

  private async retry<T>(
    call: (index: number, metadata: Metadata, options: { deadline: number }, callback: (err: ServiceError | null, res?: T) => void) => void,
    attempts = { count: 0 },
  ): Promise<T> {
    let lastError: ServiceError | undefined;
    const count = this.options.endpoints.length;
    for (let attempt = 0; attempt < MAX_ROUNDS * count; attempt++) {
      const index = (this.preferred + attempt) % count;
      attempts.count++;
      try {
        const result = await new Promise<T>((resolve, reject) =>
          call(index, new Metadata(), { deadline: Date.now() + this.options.timeoutMs }, (err, res) => (err ? reject(err) : resolve(res!))),
        );
        this.preferred = index;
        await this.followLeader((result as { header?: ResponseHeader }).header);
        return result;
      } catch (err) {
        lastError = err as ServiceError;
        if (!RETRYABLE.has(lastError.code)) throw lastError;
        if ((attempt + 1) % count === 0) await new Promise((resolve) => setTimeout(resolve, RETRY_DELAY_MS));
      }
    }
    throw lastError!;
  }
}
