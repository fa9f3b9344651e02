import { Command } from '../../gen/cairn/kv/v1/kv';
import { EntryType } from '../../gen/cairn/raft/v1/raft';
import { LeaseKeeper } from '../../src/kv/lease-keeper';
import { KvStateMachine } from '../../src/kv/state-machine';
import { LevelDb } from '../../src/storage/db';

/** A node's view as the keeper sees it, with time and leadership set by the test (no sleeps). */
class FakeNode {
  now = 0;
  leading = false;
  term = 0;
  readonly expires: { id: number; at: number }[] = [];
  readonly keeper: LeaseKeeper;

  constructor(sm: KvStateMachine) {
    this.keeper = new LeaseKeeper(
      {
        leadership: () => ({ leading: this.leading, term: this.term }),
        table: () => sm.leaseTable(),
        proposeExpire: async (id) => void this.expires.push({ id, at: this.now }),
      },
      { monotonicMs: () => this.now },
    );
  }

  /** Starts leading `term` now (the shell checks at once on taking over). */
  lead(term: number): void {
    this.leading = true;
    this.term = term;
    this.keeper.check();
  }

  /** Checks every 100 ms of virtual time up to `until`. */
  runUntil(until: number): void {
    while (this.now < until) {
      this.now = Math.min(until, this.now + 100);
      this.keeper.check();
    }
  }
}

describe('the leader`s lease deadlines', () => {
  let db: LevelDb;
  let sm: KvStateMachine;
  const TTL_SECONDS = 10;
  const ID = 0xabc;
  beforeEach(async () => {
    db = await LevelDb.openMemory();
    sm = await KvStateMachine.open(db);
    const grant: Command = { op: { $case: 'leaseGrant', value: { id: ID, ttl: TTL_SECONDS } }, proposedAtUnixMs: 0 };
    await sm.apply([{ index: 1, term: 1, type: EntryType.ENTRY_TYPE_COMMAND, data: Buffer.from(Command.encode(grant).finish()) }]);
  });
  afterEach(() => db.close());

  test('the leader proposes expire once the TTL passes with no keep-alive, and only once', () => {
    const node = new FakeNode(sm);
    node.lead(1);
    node.runUntil(9_900);
    expect(node.expires).toEqual([]);
    node.runUntil(10_000);
    expect(node.expires).toEqual([{ id: ID, at: 10_000 }]);
  });

  test('a keep-alive renews the deadline to a full TTL; a follower never proposes expire', () => {
    const leader = new FakeNode(sm);
    leader.lead(1);
    const follower = new FakeNode(sm);
    leader.runUntil(5_000);
    expect(leader.keeper.keepAlive(ID)).toBe(TTL_SECONDS);
    expect(leader.keeper.timeToLive(ID)).toEqual({ remainingSeconds: 10, grantedSeconds: 10 });
    leader.runUntil(14_900);
    follower.runUntil(30_000);
    expect(leader.expires).toEqual([]);
    expect(follower.expires).toEqual([]);
    expect(() => follower.keeper.keepAlive(ID)).toThrow(/leader only/);
    leader.runUntil(15_000);
    expect(leader.expires).toEqual([{ id: ID, at: 15_000 }]);
    expect(leader.keeper.keepAlive(0xdead)).toBe(0);
  });

  test('the old leader dies just before the deadline: the new leader gives the lease its full TTL from its takeover', () => {
    const old = new FakeNode(sm);
    old.lead(1);
    old.runUntil(9_900);
    expect(old.expires).toEqual([]);
    // The old leader is killed at 9.9 s; the new one is elected at 11 s of the same time line.
    const next = new FakeNode(sm);
    next.now = 9_900;
    next.runUntil(11_000);
    next.lead(2);
    next.runUntil(11_000 + TTL_SECONDS * 1000 - 100);
    expect(next.expires).toEqual([]);
    next.runUntil(11_000 + TTL_SECONDS * 1000);
    expect(next.expires).toEqual([{ id: ID, at: 21_000 }]);
  });

  test('leadership lost and won back on the same node: the deadlines of the earlier term do not carry over', () => {
    const node = new FakeNode(sm);
    node.lead(1);
    node.runUntil(9_000);
    node.leading = false;
    node.term = 2;
    node.runUntil(9_500);
    node.lead(3);
    node.runUntil(19_400);
    expect(node.expires).toEqual([]);
    node.runUntil(19_500);
    expect(node.expires).toEqual([{ id: ID, at: 19_500 }]);
  });

  test('an expire decided but not yet in the table: keep-alives say 0 and no second expire goes out until it lands', async () => {
    const node = new FakeNode(sm);
    node.lead(1);
    node.runUntil(10_000);
    expect(node.expires).toEqual([{ id: ID, at: 10_000 }]);
    await new Promise((resolve) => setImmediate(resolve)); // the proposer is answered (the outcome is decided) ...
    expect(sm.leaseTable().get(ID)).toBeDefined(); // ... while the apply's write has not landed
    expect(node.keeper.keepAlive(ID)).toBe(0);
    node.runUntil(10_500);
    expect(node.expires).toHaveLength(1);
    const expire: Command = { op: { $case: 'leaseExpire', value: { id: ID, grantedIndex: 1 } }, proposedAtUnixMs: 0 };
    await sm.apply([{ index: 2, term: 1, type: EntryType.ENTRY_TYPE_COMMAND, data: Buffer.from(Command.encode(expire).finish()) }]);
    expect(sm.leaseTable().get(ID)).toBeUndefined();
    node.runUntil(10_600);
    expect(node.keeper.keepAlive(ID)).toBe(0);
    expect(node.expires).toHaveLength(1);
  });

  test('an expire proposal that fails is proposed again at a later check', async () => {
    let failures = 1;
    const proposed: number[] = [];
    let now = 0;
    const keeper = new LeaseKeeper(
      {
        leadership: () => ({ leading: true, term: 1 }),
        table: () => sm.leaseTable(),
        proposeExpire: async () => {
          proposed.push(now);
          if (failures-- > 0) throw new Error('not leader');
        },
      },
      { monotonicMs: () => now },
    );
    keeper.check();
    now = 10_000;
    keeper.check();
    expect(proposed).toEqual([10_000]);
    expect(keeper.keepAlive(ID)).toBe(0);
    await new Promise((resolve) => setImmediate(resolve)); // the failure is heard
    now = 10_100;
    keeper.check();
    expect(proposed).toEqual([10_000, 10_100]);
  });
});

