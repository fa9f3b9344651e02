import { Command } from '../../gen/cairn/kv/v1/kv';
import { Entry, EntryType } from '../../gen/cairn/raft/v1/raft';
import { KvReplica } from '../../src/kv/kv-replica';
import { LeaseKeeper } from '../../src/kv/lease-keeper';
import { StateMachine } from '../../src/kv/state-machine';
import { SeededRandom } from '../../src/raft/random';

/**
 * The simulator's lease workload (issue 12): one client grants leases, attaches a key to
 * each, keeps it alive for a while through whichever node leads (as the Lease service does:
 * a read barrier, then the leader's keeper), then stops. Each node runs the production
 * LeaseKeeper on the simulator's virtual clock, checked at every tick.
 *
 * The invariant: a lease (and so its key) is never expired early. For every keep-alive
 * answered with ttl > 0, sent at time S, the lease's expire entry applies on no node before
 * S + TTL; and no keep-alive is answered ttl > 0 once an expire of its lease has applied.
 * The grant's proposal counts as the first keep-alive.
 */

export interface SimLeaseHost {
  nowUnits(): number;
  msPerUnit: number;
  unitsPerTick: number;
  sleep(units: number): Promise<void>;
  /** The nodes up that believe they lead, with their keepers. */
  leaders(): { replica: KvReplica; keeper: LeaseKeeper }[];
  running(): boolean;
  fail(message: string): void;
  log(line: string): void;
}

interface TrackedLease {
  ttlSeconds: number;
  /** The index its grant applied at, once seen (an expire naming another grant is not its). */
  grantedIndex?: number;
  /** The latest send time (units) of a keep-alive answered ttl > 0 (the grant's, at first). */
  aliveSentAt: number;
  /** When its expire first applied on some node, if it has. */
  expiredAt?: number;
}

export class SimLeases {
  private readonly leases = new Map<number, TrackedLease>();
  private nextId = 1;
  readonly stats = { granted: 0, keepAlives: 0, expired: 0 };

  constructor(
    private readonly rand: SeededRandom,
    private readonly host: SimLeaseHost,
  ) {}

  /** The production keeper for one node incarnation, on virtual time. */
  keeperFor(replica: KvReplica, stateMachine: StateMachine): LeaseKeeper {
    return new LeaseKeeper(
      {
        leadership: () => ({ leading: replica.node.role === 'leader', term: replica.node.term }),
        table: () => stateMachine.leaseTable(),
        proposeExpire: (id, grantedIndex) => replica.propose({ op: { $case: 'leaseExpire', value: { id, grantedIndex } }, proposedAtUnixMs: 0 }),
      },
      { monotonicMs: () => this.host.nowUnits() * this.host.msPerUnit },
    );
  }

  /** Called for every entry any node applies. */
  onApplied(entry: Entry): void {
    if (entry.type !== EntryType.ENTRY_TYPE_COMMAND) return;
    let command: Command;
    try {
      command = Command.decode(entry.data);
    } catch {
      return;
    }
    if (command.op?.$case === 'leaseGrant') {
      const granted = this.leases.get(command.op.value.id);
      if (granted && granted.grantedIndex === undefined) granted.grantedIndex = entry.index;
      return;
    }
    if (command.op?.$case !== 'leaseExpire') return;
    const lease = this.leases.get(command.op.value.id);
    if (!lease || lease.grantedIndex !== command.op.value.grantedIndex) return;
    const now = this.host.nowUnits();
    const earliest = lease.aliveSentAt + this.units(lease.ttlSeconds);
    if (now < earliest) {
      this.host.fail(`lease ${command.op.value.id} expired early: applied at ${now}, but a keep-alive sent at ${lease.aliveSentAt} was answered alive (TTL ${lease.ttlSeconds} s: not before ${earliest})`);
    }
    if (lease.expiredAt === undefined) {
      lease.expiredAt = now;
      this.stats.expired++;
      this.host.log(`lease ${command.op.value.id} expired at ${now} (last alive keep-alive sent at ${lease.aliveSentAt})`);
    }
  }

  async run(): Promise<void> {
    try {
      while (this.host.running()) {
        const ttlSeconds = this.rand.pick([1, 2, 3]);
        // Each attempt its own id, as the Lease service draws a random one per call: a lost
        // attempt that applied anyway is a lease nobody keeps alive, and must expire too.
        const id = await this.grant(ttlSeconds);
        if (id === undefined) return;
        this.stats.granted++;
        await this.propose({ op: { $case: 'put', value: { key: Buffer.from(`lease/${id}`), value: Buffer.from('v'), prevKv: false, lease: id, clientId: '', sequence: 0, lowestUnansweredSequence: 0 } }, proposedAtUnixMs: 0, authUser: 'root' });
        const rounds = this.rand.int(12);
        for (let round = 0; round < rounds && this.host.running(); round++) {
          await this.keepAlive(id);
          await this.host.sleep(1 + this.rand.int(this.units(ttlSeconds) / 2));
        }
        await this.host.sleep(this.rand.int(this.units(ttlSeconds)));
      }
    } catch (err) {
      this.host.fail(`lease client crashed: ${(err as Error).stack ?? err}`);
    }
  }

  private pickLeader(): { replica: KvReplica; keeper: LeaseKeeper } | undefined {
    const leaders = this.host.leaders();
    return leaders.length > 0 ? this.rand.pick(leaders) : undefined;
  }

  private async keepAlive(id: number): Promise<void> {
    const leader = this.pickLeader();
    if (!leader) return;
    const lease = this.leases.get(id)!;
    const sentAt = this.host.nowUnits();
    const answered = await this.settle(
      leader.replica.readBarrier().then(() => leader.keeper.keepAlive(id)),
      15 * this.host.unitsPerTick,
    );
    if (answered === undefined || answered === 0) return;
    this.stats.keepAlives++;
    if (lease.expiredAt !== undefined) {
      this.host.fail(`lease ${id}: a keep-alive sent at ${sentAt} was answered alive (ttl ${answered}) after the lease's expire applied at ${lease.expiredAt}`);
    }
    lease.aliveSentAt = Math.max(lease.aliveSentAt, sentAt);
  }

  /** Grants a lease, a new id per attempt, until one attempt is answered; its id. */
  private async grant(ttlSeconds: number): Promise<number | undefined> {
    while (this.host.running()) {
      const id = this.nextId++;
      this.leases.set(id, { ttlSeconds, aliveSentAt: this.host.nowUnits() });
      const leader = this.pickLeader();
      const command: Command = { op: { $case: 'leaseGrant', value: { id, ttl: ttlSeconds } }, proposedAtUnixMs: 0, authUser: 'root' };
      const answered = leader ? await this.settle(leader.replica.propose(command), 15 * this.host.unitsPerTick) : undefined;
      if (answered !== undefined) return id;
      await this.host.sleep(this.host.unitsPerTick);
    }
    return undefined;
  }

  /** Proposes through a leader until one attempt is answered; false once the clients stopped. */
  private async propose(command: Command): Promise<boolean> {
    while (this.host.running()) {
      const leader = this.pickLeader();
      const answered = leader ? await this.settle(leader.replica.propose(command), 15 * this.host.unitsPerTick) : undefined;
      if (answered !== undefined) return true;
      await this.host.sleep(this.host.unitsPerTick);
    }
    return false;
  }

  /** The value, or undefined when it failed or took longer than `units`. */
  private async settle<T>(promise: Promise<T>, units: number): Promise<T | undefined> {
    const outcome = promise.then(
      (value) => value,
      () => undefined,
    );
    return Promise.race([outcome, this.host.sleep(units).then(() => undefined)]);
  }

  private units(seconds: number): number {
    return Math.round((seconds * 1000) / this.host.msPerUnit);
  }
}
