import { status as Status } from '@grpc/grpc-js';
import { CompareResult, CompareTarget, EventType, KeyValue } from '../../gen/cairn/kv/v1/kv';
import { ErrorCode } from '../errors';
import { formatLeaseId } from '../kv/leases';
import { ERROR_CODE_METADATA } from '../server/status';
import { CairnClient, CallFailedError } from './client';
import { describeError } from './describe-error';
import { UsageError } from './flags';
import { KEEP_ALIVE_TTL_FRACTION } from './lease-verbs';
import { sleep } from './sleep';
import { watchEvents } from './watch-verb';

/**
 * What `cairn lock` and `cairn elect` share (docs/recipes.md): a lease kept alive for as long
 * as the command runs, a key created only if absent, and waiting for one's turn behind
 * another key, with Watch, until that key is deleted.
 */

/** The lease's TTL when --ttl is not given (lock and elect alike). */
export const DEFAULT_LEASE_TTL_SECONDS = 10;
/** The backoff between tries when no watch could tell us the holder's key went: from this, doubling... */
export const TURN_POLL_MIN_MS = 100;
/** ...up to this. */
export const TURN_POLL_MAX_MS = 1_000;
/** The longest a waiter watches the key ahead of it before it looks again anyway. */
export const TURN_WATCH_MAX_WAIT_MS = 5_000;
/** Exit code of a lock or election whose lease was lost (expired, revoked, or not renewed for a whole TTL). */
export const LEASE_LOST_EXIT_CODE = 3;
/** The longest delay Node's setTimeout and setInterval keep (2^31-1 ms, about 24.8 days): a longer one fires at once. */
export const MAX_TIMER_DELAY_MS = 2 ** 31 - 1;
/**
 * The longest --ttl lock and elect accept (2,147,483 s, about 24.8 days): the lease's timers
 * must span a whole TTL. The server itself grants up to MAX_LEASE_TTL_SECONDS (9,000,000 s).
 */
export const MAX_CLI_LEASE_TTL_SECONDS = Math.floor(MAX_TIMER_DELAY_MS / 1000);

/** `--ttl SECONDS`, a whole number from 1 to MAX_CLI_LEASE_TTL_SECONDS, DEFAULT_LEASE_TTL_SECONDS when absent. */
export function ttlSecondsFlag(flags: Record<string, string>): number {
  const ttl = Number(flags.ttl ?? DEFAULT_LEASE_TTL_SECONDS);
  if (!Number.isSafeInteger(ttl) || ttl < 1) throw new UsageError(`--ttl must be a positive integer of seconds, got ${JSON.stringify(flags.ttl)}`);
  if (ttl > MAX_CLI_LEASE_TTL_SECONDS) {
    throw new UsageError(`--ttl must be at most ${MAX_CLI_LEASE_TTL_SECONDS} seconds (MAX_CLI_LEASE_TTL_SECONDS, about 24.8 days: the longest the CLI's timers can wait), got ${ttl}`);
  }
  return ttl;
}

/** A clock that only moves forward, in ms: a step of the wall clock must not stretch how long a holder believes its lease lasts. */
export type MonotonicClock = () => number;
export const monotonicNow: MonotonicClock = () => performance.now();

/**
 * A lease granted for this process and renewed every TTL/3 until revoked. It is lost when a
 * renewal answers TTL 0 (expired or revoked), or when no renewal sent in the last TTL was
 * answered: the cluster may have expired it meanwhile, so holding on would not be safe.
 */
export class KeptAliveLease {
  private lostReason: string | undefined;
  private readonly lostListeners: ((reason: string) => void)[] = [];
  private readonly renewer: NodeJS.Timeout;
  private silenceTimer: NodeJS.Timeout | undefined;
  private revoked = false;

  private constructor(
    private readonly client: CairnClient,
    readonly id: number,
    readonly ttlSeconds: number,
    grantSentAt: number,
    private readonly now: MonotonicClock,
  ) {
    this.renewer = setInterval(() => this.renew(), Math.max(100, ttlSeconds * 1000 * KEEP_ALIVE_TTL_FRACTION));
    this.armSilenceTimer(grantSentAt);
  }

  static async grant(client: CairnClient, ttlSeconds: number, now: MonotonicClock = monotonicNow): Promise<KeptAliveLease> {
    const sentAt = now();
    const { id } = await client.leaseCall((c) => c.leaseGrant, { ttl: ttlSeconds, id: 0 });
    return new KeptAliveLease(client, id, ttlSeconds, sentAt, now);
  }

  get hex(): string {
    return formatLeaseId(this.id);
  }

  /** Why the lease was lost, once it was. */
  get lost(): string | undefined {
    return this.lostReason;
  }

  /** Calls `listener` once, when the lease is lost (at once if it is already). */
  onLost(listener: (reason: string) => void): void {
    if (this.lostReason !== undefined) listener(this.lostReason);
    else this.lostListeners.push(listener);
  }

  /** Stops renewing and revokes the lease (deleting its keys); a failed revoke leaves it to expire. */
  async revoke(): Promise<void> {
    this.stop();
    await this.client.leaseCall((c) => c.leaseRevoke, { id: this.id }).catch(() => undefined);
  }

  private renew(): void {
    const sentAt = this.now();
    this.client.leaseCall((c) => c.leaseRenew, { id: this.id }).then(
      (renewed) => {
        if (this.revoked) return;
        if (renewed.ttl <= 0) this.lose(`its lease ${this.hex} expired or was revoked`);
        else this.armSilenceTimer(sentAt);
      },
      () => undefined, // a failed renewal is retried at the next interval; the TTL covers two misses
    );
  }

  /** The cluster keeps the lease at least TTL past a renewal it answered: past that, it may be gone. */
  private armSilenceTimer(renewalSentAt: number): void {
    if (this.revoked || this.lostReason !== undefined) return;
    clearTimeout(this.silenceTimer);
    const leftMs = renewalSentAt + this.ttlSeconds * 1000 - this.now();
    this.silenceTimer = setTimeout(() => this.lose(`no renewal of its lease ${this.hex} was answered for ${this.ttlSeconds} s: it may have expired`), Math.max(0, leftMs));
  }

  private lose(reason: string): void {
    if (this.lostReason !== undefined || this.revoked) return;
    this.lostReason = reason;
    this.stop();
    for (const listener of this.lostListeners.splice(0)) listener(reason);
  }

  private stop(): void {
    this.revoked = true;
    clearInterval(this.renewer);
    clearTimeout(this.silenceTimer);
  }
}

/** Created: at `revision`. Not: `existing` as the Txn read it at `readRevision` (undefined: gone meanwhile). */
export type CreateResult = { created: true; revision: number } | { created: false; existing: KeyValue | undefined; readRevision: number };

/**
 * One Txn: put `key` = `value` with `lease` only if `key` does not exist (create_revision = 0);
 * else read it (keys only: its revisions and lease), at the revision the Txn's header names.
 */
export async function createIfAbsent(client: CairnClient, key: Buffer, value: Buffer, lease: number): Promise<CreateResult> {
  const response = await client.txn({
    compare: [{ key, target: CompareTarget.COMPARE_TARGET_CREATE_REVISION, result: CompareResult.COMPARE_RESULT_EQUAL, targetUnion: { $case: 'createRevision', value: 0 } }],
    success: [{ request: { $case: 'requestPut', value: { key, value, prevKv: false, lease, clientId: '', sequence: 0, lowestUnansweredSequence: 0 } } }],
    failure: [{ request: { $case: 'requestRange', value: { key, rangeEnd: Buffer.alloc(0), prefix: false, limit: 1, keysOnly: true, consistency: 0 } } }],
  });
  if (response.succeeded) return { created: true, revision: response.header?.revision ?? 0 };
  const read = response.responses[0]?.response;
  const existing = read?.$case === 'responseRange' ? read.value.kvs[0] : undefined;
  return { created: false, existing, readRevision: response.header?.revision ?? 0 };
}

/**
 * One look at whose turn it is: ours, behind `ahead` (wait for its deletion), or look again
 * at once. `readRevision` is the revision of the read that showed `ahead` present.
 */
export type Turn = { kind: 'ours' } | { kind: 'behind'; ahead: KeyValue; readRevision: number } | { kind: 'again' };

/**
 * Calls `look` until it says the turn is ours (true) or `stopped` says to give up (false).
 * Behind a key, it watches that key until it is deleted; a watch that cannot be opened, or
 * sees nothing for TURN_WATCH_MAX_WAIT_MS, only means looking again after a backoff (from
 * TURN_POLL_MIN_MS doubling to TURN_POLL_MAX_MS). A look the cluster cannot answer now is
 * tried again (untilAnswered).
 */
export async function waitForTurn(
  client: CairnClient,
  look: () => Promise<Turn>,
  stopped: () => boolean,
  signal?: AbortSignal,
  warn: (line: string) => void = () => undefined,
): Promise<boolean> {
  for (let delayMs = TURN_POLL_MIN_MS; !stopped() && !signal?.aborted; delayMs = Math.min(TURN_POLL_MAX_MS, delayMs * 2)) {
    const turn = await untilAnswered(look, stopped, warn, signal);
    if (turn === undefined) break;
    // The lease may have been lost while the look was under way: the turn is then no one's.
    if (turn.kind === 'ours') return !stopped();
    if (turn.kind === 'again') continue;
    if (await deletedAfter(client, turn.ahead.key, watchStart(turn), TURN_WATCH_MAX_WAIT_MS, signal)) delayMs = TURN_POLL_MIN_MS / 2;
    else await sleep(delayMs, signal);
  }
  return false;
}

/**
 * Where to watch the key ahead from: just after the read that showed it present (as etcd's
 * waitDelete), which sees any later deletion and, unlike the key's own mod revision, stays
 * within history that --auto-compaction-revisions has not yet compacted away.
 */
function watchStart(turn: { ahead: KeyValue; readRevision: number }): number {
  return Math.max(turn.readRevision, turn.ahead.modRevision) + 1;
}

/** gRPC codes of a call the cluster could not answer now (no leader, no quorum, a node stepping down, no node reachable in time). */
const TRANSIENT_STATUSES: ReadonlySet<Status> = new Set([Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED, Status.CANCELLED]);
/** Cairn's codes that say "not now" under another gRPC code. */
const TRANSIENT_CAIRN_CODES: ReadonlySet<string> = new Set([ErrorCode.OVERLOADED]);

/**
 * A failure worth waiting out (an election under way, a cluster out of reach or overloaded),
 * not a definitive refusal (permission denied, invalid argument, too many candidates).
 */
export function isTransientFailure(err: unknown): boolean {
  if (!(err instanceof CallFailedError)) return false;
  const cairnCode = err.metadata?.get(ERROR_CODE_METADATA)[0];
  return TRANSIENT_STATUSES.has(err.code) || (cairnCode !== undefined && TRANSIENT_CAIRN_CODES.has(String(cairnCode)));
}

/**
 * Calls `call` until it answers, or fails definitively (thrown), or `stopped` or `signal`
 * say to give up (undefined). After a transient failure (isTransientFailure) it says so on
 * `warn` and waits, from TURN_POLL_MIN_MS doubling to TURN_POLL_MAX_MS. A lock or campaign
 * passes its lease's loss as `stopped`, so an outage is waited out for at most a TTL.
 */
export async function untilAnswered<T>(call: () => Promise<T>, stopped: () => boolean, warn: (line: string) => void, signal?: AbortSignal): Promise<T | undefined> {
  for (let delayMs = TURN_POLL_MIN_MS; !stopped() && !signal?.aborted; delayMs = Math.min(TURN_POLL_MAX_MS, delayMs * 2)) {
    try {
      return await call();
    } catch (err) {
      if (!isTransientFailure(err)) throw err;
      warn(`${describeError(err)}; trying again in ${delayMs} ms`);
      await sleep(delayMs, signal);
    }
  }
  return undefined;
}

/**
 * Watches `key` from `startRevision` until it is deleted (true), or `maxWaitMs` pass, the
 * watch gives up or `signal` aborts (false). Starting at a revision, it misses no deletion
 * that happened since.
 */
export async function deletedAfter(client: CairnClient, key: Buffer, startRevision: number, maxWaitMs: number, signal?: AbortSignal): Promise<boolean> {
  // An abort listener added to an aborted signal never runs: the watch would wait out maxWaitMs.
  if (signal?.aborted) return false;
  const stop = new AbortController();
  const abort = () => stop.abort();
  const timer = Number.isFinite(maxWaitMs) ? setTimeout(abort, maxWaitMs) : undefined;
  signal?.addEventListener('abort', abort);
  let deleted = false;
  try {
    const command = { key, prefix: false, startRevision, prevKv: false, maxEvents: undefined };
    await watchEvents(command, client.endpoints, client.dial, () => client.callMetadata(), (events) => {
      deleted = events.some((event) => event.type === EventType.EVENT_TYPE_DELETE);
      return deleted;
    }, stop.signal);
    return deleted;
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener('abort', abort);
  }
}
