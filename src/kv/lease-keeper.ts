import { CairnError, ErrorCode } from '../errors';
import { LeaseTable } from './leases';

/**
 * The leader's lease deadlines (issue 12). Expiry is decided here, by the leader alone, on
 * its monotonic clock, and replicated as an expire command: no node expires a lease by its
 * own clock. Deadlines live only in the leader's memory, like etcd's lessor:
 *
 * - When this node starts leading a term, every lease gets its full TTL again from that
 *   moment (etcd's "refresh on promotion"). The old leader's deadline for a lease was at most
 *   one TTL after the last keep-alive it answered, so the new one is never earlier: a leader
 *   change can only make a lease live longer (by up to a TTL plus the election's gap).
 * - A lease this node sees applied while leading (a new grant, or one it had not applied
 *   yet when it took over) gets its full TTL from the moment it is first seen.
 * - A keep-alive renews the deadline to now + TTL; keep-alives write nothing to the log.
 *
 * No timers or clocks of its own: the shell calls check() (the server every
 * LEASE_CHECK_INTERVAL_MS; a simulator on its virtual clock) and passes the clock in.
 */

/** How often the server's leader looks for leases past their deadline, in ms (an expiry may come this much late). */
export const LEASE_CHECK_INTERVAL_MS = 100;

export interface LeaseKeeperHost {
  /** Whether this node leads now, and in which term. */
  leadership(): { leading: boolean; term: number };
  /** The lease table as of the applied index. */
  table(): LeaseTable;
  /** Proposes the expire command of lease `id`, granted at log index `grantedIndex` (this node being leader). */
  proposeExpire(id: number, grantedIndex: number): Promise<unknown>;
}

export interface LeaseClock {
  monotonicMs(): number;
}

export class LeaseKeeper {
  /** The term the deadlines were set in; undefined while not leading. */
  private term: number | undefined;
  /** Lease id -> deadline on the monotonic clock, in ms, and the grant it is for. */
  private readonly deadlines = new Map<number, { deadlineMs: number; grantedIndex: number }>();
  /**
   * Lease id -> the grant whose expire this node proposed, until the lease table no longer
   * holds that grant. Not only while the proposal is in flight: a proposer is answered once
   * the outcome is decided, before the apply's write lands and the table drops the lease,
   * and a keep-alive in between must not be answered alive (the simulator's seed 39 found it).
   */
  private readonly expiring = new Map<number, number>();

  constructor(
    private readonly host: LeaseKeeperHost,
    private readonly clock: LeaseClock,
  ) {}

  /** Proposes an expire for each lease past its deadline; follows leadership changes. */
  check(): void {
    if (!this.followLeadership()) return;
    const now = this.clock.monotonicMs();
    const table = this.host.table();
    for (const [id, { grantedIndex }] of this.deadlines) if (table.get(id)?.grantedIndex !== grantedIndex) this.deadlines.delete(id);
    for (const [id, grantedIndex] of this.expiring) if (table.get(id)?.grantedIndex !== grantedIndex) this.expiring.delete(id);
    for (const id of table.ids()) {
      const deadline = this.deadlineOf(id, table, now);
      if (now >= deadline && !this.isExpiring(id, table)) this.expire(id, table.get(id)!.grantedIndex);
    }
  }

  /** Renews lease `id` to its full TTL; returns the TTL in seconds, 0 for a lease unknown (or expiring). Leader only. */
  keepAlive(id: number): number {
    this.requireLeading();
    const table = this.host.table();
    const lease = table.get(id);
    if (!lease || this.isExpiring(id, table)) return 0;
    this.deadlines.set(id, { deadlineMs: this.clock.monotonicMs() + lease.ttlSeconds * 1000, grantedIndex: lease.grantedIndex });
    return lease.ttlSeconds;
  }

  /** The seconds lease `id` has left (rounded up) and its granted TTL; undefined when unknown. Leader only. */
  timeToLive(id: number): { remainingSeconds: number; grantedSeconds: number } | undefined {
    this.requireLeading();
    const table = this.host.table();
    const lease = table.get(id);
    if (!lease) return undefined;
    const now = this.clock.monotonicMs();
    const remainingMs = Math.max(0, this.deadlineOf(id, table, now) - now);
    return { remainingSeconds: Math.ceil(remainingMs / 1000), grantedSeconds: lease.ttlSeconds };
  }

  private deadlineOf(id: number, table: LeaseTable, now: number): number {
    const lease = table.get(id)!;
    let deadline = this.deadlines.get(id);
    if (deadline === undefined || deadline.grantedIndex !== lease.grantedIndex) {
      deadline = { deadlineMs: now + lease.ttlSeconds * 1000, grantedIndex: lease.grantedIndex };
      this.deadlines.set(id, deadline);
    }
    return deadline.deadlineMs;
  }

  /** Whether this node proposed the expire of the grant the table holds for `id`. */
  private isExpiring(id: number, table: LeaseTable): boolean {
    const expiring = this.expiring.get(id);
    return expiring !== undefined && expiring === table.get(id)?.grantedIndex;
  }

  private expire(id: number, grantedIndex: number): void {
    this.expiring.set(id, grantedIndex);
    // A failed proposal (leadership lost, overload) is retried at the next check while
    // leading; should both attempts commit, the second finds the lease gone, or granted
    // again under the same id at another index, and does nothing. A committed one stays
    // in `expiring` until check() sees the table without the grant.
    this.host.proposeExpire(id, grantedIndex).catch(() => {
      if (this.expiring.get(id) === grantedIndex) this.expiring.delete(id);
    });
  }

  /** Whether this node leads; a new term restarts every deadline at the full TTL. */
  private followLeadership(): boolean {
    const { leading, term } = this.host.leadership();
    if (!leading) {
      this.term = undefined;
      this.deadlines.clear();
      return false;
    }
    if (this.term !== term) {
      this.term = term;
      this.deadlines.clear();
    }
    return true;
  }

  private requireLeading(): void {
    if (!this.followLeadership()) throw new CairnError(ErrorCode.NOT_LEADER, 'lease keep-alives and time-to-live are answered by the leader only');
  }
}
