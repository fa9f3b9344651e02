import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command, CommandResult } from '../../gen/cairn/kv/v1/kv';
import { Entry, HardState, Message } from '../../gen/cairn/raft/v1/raft';
import { KvReplica, openKvReplica } from '../../src/kv/kv-replica';
import { KvStateMachine, StateMachine } from '../../src/kv/state-machine';
import { ApplyOutcome } from '../../src/node/fsm';
import { Deferral } from '../../src/node/replica';
import { DEFAULT_RAFT_CONFIG, NodeId, RaftNode, Ready, sendableBeforePersist } from '../../src/raft/node';
import { SeededRandom } from '../../src/raft/random';
import { Db, DbOp, LevelDb } from '../../src/storage/db';
import { LevelRaftStorage, RaftStorage } from '../../src/storage/raft-storage';
import { DelegatingStorage } from '../../src/storage/delegating-storage';
import { RaftNetwork } from '../support/raft-network';

/**
 * The write path's ordering rules (docs/architecture.md, "The write path"): a leader sends
 * its appends before its own write is durable, but never counts itself toward a commit,
 * nor applies an entry, before it is; the apply of one batch never holds up the next
 * batch's persist and sends.
 */

const data = (text: string) => Buffer.from(text);
const member = (id: NodeId) => ({ id, peerAddr: `127.0.0.1:${7100 + id}`, clientAddr: '' });


describe('the leader writes its log in parallel with replicating it (thesis §10.2.1)', () => {
  test('its appends may go before its own write; followers alone can commit; it applies only once durable', () => {
    const net = RaftNetwork.ledBy(1);
    const leader = net.node(1);
    const proposed = leader.propose(data('x'));
    if (!proposed.ok) throw new Error('not proposed');
    const ready = leader.ready(); // not persisted: onPersisted is not called for it below
    expect(ready.hardState).toBeUndefined();
    const appends = ready.messages.filter((m) => m.body?.$case === 'appendRequest');
    expect(appends.map((m) => m.to).sort()).toEqual([2, 3]);
    expect(appends.every((m) => sendableBeforePersist(ready, m))).toBe(true);

    // Both followers persist and acknowledge; the leader has not made the entry durable.
    const answers = deliverAndAnswer(net, appends);
    for (const answer of answers) leader.step(answer);
    expect(leader.status().stableIndex).toBeLessThan(proposed.index);
    expect(leader.commitIndex).toBe(proposed.index); // a majority (2 and 3) holds it durably
    expect(leader.ready().committed).toEqual([]); // but it is not durable here: not applied yet

    leader.onPersisted(proposed.index, proposed.term);
    expect(leader.ready().committed.map((e) => e.index)).toEqual([proposed.index]);
  });

  test('one follower and a leader whose write is not yet durable are not a majority', () => {
    const net = RaftNetwork.ledBy(1);
    const leader = net.node(1);
    const proposed = leader.propose(data('y'));
    if (!proposed.ok) throw new Error('not proposed');
    const appends = leader.ready().messages.filter((m) => m.body?.$case === 'appendRequest' && m.to === 2);
    for (const answer of deliverAndAnswer(net, appends)) leader.step(answer);
    expect(leader.commitIndex).toBeLessThan(proposed.index);
    leader.onPersisted(proposed.index, proposed.term); // now the leader counts itself: 1 and 2
    expect(leader.commitIndex).toBe(proposed.index);
  });

  test('nothing goes before persisting when the Ready changes the hard state, and votes and acknowledgements always wait', () => {
    const net = new RaftNetwork(3, { preVote: false });
    const candidate = net.node(1);
    for (let i = 0; i < 4 * DEFAULT_RAFT_CONFIG.electionTimeoutTicks && candidate.role !== 'candidate'; i++) candidate.tick();
    expect(candidate.role).toBe('candidate');
    const campaign = candidate.ready();
    expect(campaign.hardState).toBeDefined();
    expect(campaign.messages.length).toBeGreaterThan(0);
    expect(campaign.messages.some((m) => sendableBeforePersist(campaign, m))).toBe(false);

    // A heartbeat-shaped message is held back too when the Ready carries a new term.
    const heartbeat: Message = { fromId: 1, to: 2, term: 5, body: { $case: 'heartbeatRequest', value: { commit: 0, readRound: 0 } } };
    expect(sendableBeforePersist({ hardState: { term: 5, votedFor: 1 } }, heartbeat)).toBe(false);
    expect(sendableBeforePersist({}, heartbeat)).toBe(true);
    const ack: Message = { fromId: 2, to: 1, term: 5, body: { $case: 'appendResponse', value: { index: 3, rejected: false, hintIndex: 0, hintTerm: 0 } } };
    const vote: Message = { fromId: 2, to: 1, term: 5, body: { $case: 'voteResponse', value: { granted: true, preVote: false } } };
    expect(sendableBeforePersist({}, ack)).toBe(false);
    expect(sendableBeforePersist({}, vote)).toBe(false);
  });

  test('a leader alone among voters (with a learner) holds its first appends back until its new term is durable', () => {
    const node = new RaftNode(
      { ...DEFAULT_RAFT_CONFIG, id: 1, voters: [1], bootstrapConfig: { voters: [member(1)], learners: [member(2)] }, random: new SeededRandom(1) },
      { hardState: { term: 0, votedFor: 0 }, entries: [], appliedIndex: 0 },
    );
    for (let i = 0; i < 4 * DEFAULT_RAFT_CONFIG.electionTimeoutTicks && node.role !== 'leader'; i++) node.tick();
    expect(node.role).toBe('leader');
    const first = node.ready();
    expect(first.hardState).toBeDefined(); // its election and its first appends in one Ready
    expect(first.messages.filter((m) => sendableBeforePersist(first, m))).toEqual([]);
  });
});

/** Delivers `messages` to their followers, persists what they ask at once, and returns their answers. */
function deliverAndAnswer(net: RaftNetwork, messages: readonly Message[]): Message[] {
  const answers: Message[] = [];
  for (const message of messages) {
    const follower = net.node(message.to);
    follower.step(message);
    while (follower.hasReady()) {
      const ready: Ready = follower.ready();
      const last = ready.entries[ready.entries.length - 1];
      if (last) follower.onPersisted(last.index, last.term);
      answers.push(...ready.messages.filter((m) => m.to === 1));
    }
  }
  return answers;
}

// ---------------------------------------------------------------- the Replica's two paths

/** A gate a test opens by hand. */
function gate(): { wait: Promise<void>; open(): void } {
  let open!: () => void;
  const wait = new Promise<void>((resolve) => (open = resolve));
  return { wait, open };
}

/** Persists through LevelRaftStorage, but each persist may be held at a gate; records the order of events. */
class GatedStorage extends DelegatingStorage {
  held: { wait: Promise<void>; open(): void } | undefined;
  constructor(
    inner: RaftStorage,
    private readonly events: string[],
  ) {
    super(inner);
  }
  override async persist(hardState: HardState | undefined, entries: readonly Entry[]): Promise<void> {
    const last = entries[entries.length - 1];
    this.events.push(`persist-start ${last?.index ?? '-'}`);
    if (this.held) await this.held.wait;
    await this.inner.persist(hardState, entries);
    this.events.push(`persist-done ${last?.index ?? '-'}`);
  }
}

/** `db` for the state machine alone, whose writes may be held at a gate. */
function gatedWrites(db: Db): Db & { held?: { wait: Promise<void>; open(): void } } {
  const gated = Object.create(db) as Db & { held?: { wait: Promise<void>; open(): void } };
  gated.write = async (ops: readonly DbOp[], options: { sync: boolean }) => {
    if (gated.held) await gated.held.wait;
    return db.write(ops, options);
  };
  return gated;
}

/** The kv state machine, whose applies may be held at a gate. */
function gatedStateMachine(inner: KvStateMachine, events: string[]): StateMachine & { held?: { wait: Promise<void>; open(): void } } {
  const gated = Object.create(inner) as StateMachine & { held?: { wait: Promise<void>; open(): void } };
  gated.apply = async (entries: readonly Entry[], decided?: (outcomes: readonly ApplyOutcome<CommandResult>[]) => void) => {
    events.push(`apply-start ${entries[entries.length - 1].index}`);
    if (gated.held) await gated.held.wait;
    const outcomes = await inner.apply(entries, decided);
    events.push(`apply-done ${entries[entries.length - 1].index}`);
    return outcomes;
  };
  return gated;
}

const put = (key: string): Command => ({
  op: { $case: 'put', value: { key: Buffer.from(key), value: Buffer.from('v'), prevKv: false, clientId: '', sequence: 0, lowestUnansweredSequence: 0 } },
  proposedAtUnixMs: 0,
});

describe('Replica: the persist path and the apply path', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'cairn-pipeline-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  async function open(voters: NodeId[], options: { maxApplyLagEntries?: number; maxApplyLagBytes?: number; defer?: Deferral } = {}) {
    const db = await LevelDb.openDirectory(dir);
    const events: string[] = [];
    const sent: Message[] = [];
    const storage = new GatedStorage(new LevelRaftStorage(db), events);
    const stateDb = gatedWrites(db);
    const stateMachine = gatedStateMachine(await KvStateMachine.open(stateDb), events);
    const fatal: unknown[] = [];
    const replica = await openKvReplica({
      config: { ...DEFAULT_RAFT_CONFIG, id: 1, voters, preVote: false, random: new SeededRandom(3) },
      storage,
      stateMachine,
      transport: {
        send: (messages) => {
          for (const m of messages) {
            sent.push(m);
            events.push(`send ${m.body?.$case} to ${m.to}`);
          }
        },
      },
      onFatal: (err) => fatal.push(err),
      ...options,
    });
    return { db, replica, storage, stateDb, stateMachine, events, sent, fatal };
  }

  async function until(what: string, condition: () => boolean): Promise<void> {
    const deadline = Date.now() + 5000;
    while (!condition()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((resolve) => setImmediate(resolve));
    }
  }

  /** A follower's acknowledgement of everything through `index`. */
  function acknowledge(replica: KvReplica, from: NodeId, index: number): void {
    replica.receive({ fromId: from, to: 1, term: replica.node.term, body: { $case: 'appendResponse', value: { index, rejected: false, hintIndex: 0, hintTerm: 0 } } });
  }

  /** Makes node 1 leader of a 3-voter cluster by granting it votes by hand, and commits and applies its term's no-op. */
  async function leadThree(replica: KvReplica, events: string[]): Promise<void> {
    for (let i = 0; i < 10 * DEFAULT_RAFT_CONFIG.electionTimeoutTicks && replica.node.role === 'follower'; i++) replica.tick();
    await until('a campaign', () => events.some((e) => e.includes('voteRequest')));
    for (const from of [2, 3]) {
      replica.receive({ fromId: from, to: 1, term: replica.node.term, body: { $case: 'voteResponse', value: { granted: true, preVote: false } } });
    }
    await until('leadership', () => replica.node.role === 'leader');
    await until('the term no-op persisted', () => events.some((e) => e.startsWith('persist-done')));
    const noop = replica.node.lastIndex;
    for (const from of [2, 3]) acknowledge(replica, from, noop);
    await until('the no-op applied', () => replica.stateMachine.appliedIndex() === noop && !replica.node.hasReady());
  }

  /** Makes node 1, the only voter, leader, and applies its term's no-op. */
  async function leadAlone(replica: KvReplica, events: string[]): Promise<void> {
    for (let i = 0; i < 10 * DEFAULT_RAFT_CONFIG.electionTimeoutTicks && replica.node.role !== 'leader'; i++) replica.tick();
    await until('leadership and the no-op applied', () => replica.node.role === 'leader' && events.some((e) => e.startsWith('apply-done')));
  }

  test('a leader sends its appends while its own write of them is still in progress', async () => {
    const { db, replica, storage, events, fatal } = await open([1, 2, 3]);
    await leadThree(replica, events);

    storage.held = gate();
    events.length = 0;
    const written = replica.propose(put('a'));
    await until('the append to be sent', () => events.includes('send appendRequest to 2') && events.includes('send appendRequest to 3'));
    const index = replica.node.lastIndex;
    expect(events[0]).toBe('send appendRequest to 2');
    expect(events).toContain(`persist-start ${index}`);
    expect(events).not.toContain(`persist-done ${index}`);
    // Both followers acknowledge: committed by them, but not applied here before it is durable.
    for (const from of [2, 3]) acknowledge(replica, from, index);
    expect(replica.node.commitIndex).toBe(index);
    // Committed, not durable here: the core hands nothing out for applying (an apply would
    // have been started synchronously by the acknowledgements above, and be recorded once
    // its first step ran).
    expect(replica.node.hasCommittedToApply()).toBe(false);
    await new Promise((resolve) => setImmediate(resolve));
    expect(events.some((e) => e.startsWith('apply-start'))).toBe(false);
    storage.held.open();
    storage.held = undefined;
    const result: CommandResult = await written;
    expect(result.revision).toBe(1);
    expect(events.indexOf(`persist-done ${index}`)).toBeLessThan(events.indexOf(`apply-start ${index}`));
    await replica.stop();
    await db.close();
    expect(fatal).toEqual([]);
  });

  test('while one batch is being applied, later writes are persisted (and sent) without waiting for it', async () => {
    const { db, replica, stateMachine, events, fatal } = await open([1]);
    for (let i = 0; i < 10 * DEFAULT_RAFT_CONFIG.electionTimeoutTicks && replica.node.role !== 'leader'; i++) replica.tick();
    await until('leadership', () => replica.node.role === 'leader');
    await until('quiet', () => !replica.node.hasReady() && events.some((e) => e.startsWith('apply-done')));

    stateMachine.held = gate();
    events.length = 0;
    const first = replica.propose(put('a'));
    const firstIndex = replica.node.lastIndex;
    await until('the first apply to start', () => events.includes(`apply-start ${firstIndex}`));
    const later = [replica.propose(put('b')), replica.propose(put('c'))];
    const lastIndex = replica.node.lastIndex;
    await until('the later writes persisted', () => events.includes(`persist-done ${lastIndex}`));
    expect(events).not.toContain(`apply-done ${firstIndex}`); // the first apply is still held
    expect(replica.stateMachine.appliedIndex()).toBeLessThan(firstIndex);
    stateMachine.held.open();
    stateMachine.held = undefined;
    const results = await Promise.all([first, ...later]);
    expect(results.map((r) => r.revision)).toEqual([1, 2, 3]);
    // The later two were committed while the first was applied: one batch took both.
    expect(events.filter((e) => e.startsWith('apply-start'))).toEqual([`apply-start ${firstIndex}`, `apply-start ${lastIndex}`]);
    await replica.stop();
    await db.close();
    expect(fatal).toEqual([]);
  });

  test('a writer is answered once its outcome is decided, before the state write lands; reads still wait for that write', async () => {
    const { db, replica, stateDb, fatal } = await open([1]);
    for (let i = 0; i < 10 * DEFAULT_RAFT_CONFIG.electionTimeoutTicks && replica.node.role !== 'leader'; i++) replica.tick();
    await until('leadership and the no-op applied', () => replica.node.role === 'leader' && replica.stateMachine.appliedIndex() === replica.node.commitIndex && replica.node.commitIndex > 0);

    stateDb.held = gate();
    const written = await replica.propose(put('a'));
    const index = replica.node.lastIndex;
    expect(written.revision).toBe(1);
    expect(replica.stateMachine.appliedIndex()).toBe(index - 1); // the state write is still held
    let read: { value?: Buffer } | undefined | 'pending' = 'pending';
    const reading = replica.readBarrier().then(async () => (read = await replica.stateMachine.get(Buffer.from('a'))));
    await until('the read index confirmed', () => replica.pendingCounts().appliedWaiters > 0);
    // A serializable read (no barrier) on this node waits for the write too: it reads its writes.
    const local = replica.stateMachine.get(Buffer.from('a'));
    const listed = replica.stateMachine.range({ start: Buffer.from('a'), end: Buffer.from('b'), limit: 10, keysOnly: false });
    await new Promise((resolve) => setImmediate(resolve));
    expect(read).toBe('pending');
    stateDb.held.open();
    stateDb.held = undefined;
    await reading;
    expect(read).toMatchObject({ value: Buffer.from('v') });
    expect(await local).toMatchObject({ value: Buffer.from('v') });
    expect((await listed).kvs.map((kv) => kv.value.toString())).toEqual(['v']);
    expect(replica.stateMachine.appliedIndex()).toBe(index);
    await replica.stop();
    await db.close();
    expect(fatal).toEqual([]);
  });

  /** How a path starts, for the tests run both ways: as the server starts it (a turn later), and at once. */
  const PATH_STARTS: [string, Deferral | undefined][] = [
    ['deferred to the next turn, as the server does', (start) => void setImmediate(start)],
    ['started at once', undefined],
  ];

  test.each(PATH_STARTS)('proposals of one turn, with the persist path %s', async (_how, defer) => {
    const { db, replica, events, fatal } = await open([1], { defer });
    await leadAlone(replica, events);
    events.length = 0;
    const first = replica.node.lastIndex + 1;
    const writes = ['a', 'b', 'c', 'd'].map((key) => replica.propose(put(key)));
    const last = replica.node.lastIndex;
    expect(last).toBe(first + 3);
    expect((await Promise.all(writes)).map((r) => r.revision)).toEqual([1, 2, 3, 4]);
    const persists = events.filter((e) => e.startsWith('persist-start'));
    // Deferred: the four go out in one synced write. At once: the first goes alone, since
    // the persist path takes it before the other three are proposed.
    expect(persists).toEqual(defer ? [`persist-start ${last}`] : [`persist-start ${first}`, `persist-start ${last}`]);
    await replica.stop();
    await db.close();
    expect(fatal).toEqual([]);
  });

  test.each(PATH_STARTS)('commits learned in one turn, with the apply path %s', async (_how, defer) => {
    const { db, replica, events, fatal } = await open([1, 2, 3], { defer });
    await leadThree(replica, events);
    events.length = 0;
    const writes = [replica.propose(put('a'))];
    const a = replica.node.lastIndex;
    await until('a durable here', () => events.includes(`persist-done ${a}`));
    writes.push(replica.propose(put('b')));
    const b = replica.node.lastIndex;
    await until('b durable here', () => events.includes(`persist-done ${b}`));
    // In one turn, follower 2 acknowledges a, then b: each moves the commit index.
    acknowledge(replica, 2, a);
    expect(replica.node.commitIndex).toBe(a);
    acknowledge(replica, 2, b);
    expect(replica.node.commitIndex).toBe(b);
    expect((await Promise.all(writes)).map((r) => r.revision)).toEqual([1, 2]);
    const applies = events.filter((e) => e.startsWith('apply-start'));
    // Deferred: one batch takes both. At once: the first commit is applied alone.
    expect(applies).toEqual(defer ? [`apply-start ${b}`] : [`apply-start ${a}`, `apply-start ${b}`]);
    await replica.stop();
    await db.close();
    expect(fatal).toEqual([]);
  });

  test('applies that fall behind commits by more than the bound turn proposals away (OVERLOADED) until they catch up', async () => {
    const { db, replica, stateMachine, events, fatal } = await open([1], { maxApplyLagEntries: 3 });
    await leadAlone(replica, events);
    stateMachine.held = gate();
    const accepted: Promise<CommandResult>[] = [];
    let refused: unknown;
    for (let i = 0; i < 20 && refused === undefined; i++) {
      const write = replica.propose(put(`k${i}`));
      write.catch((err: unknown) => (refused = err));
      accepted.push(write);
      await until(`write ${i} committed`, () => replica.node.commitIndex === replica.node.lastIndex || refused !== undefined);
    }
    expect(refused).toMatchObject({ code: 'OVERLOADED' });
    expect(String((refused as Error).message)).toMatch(/behind the commit index/);
    expect(replica.node.commitIndex - replica.stateMachine.appliedIndex()).toBeGreaterThan(3);
    expect(replica.node.commitIndex - replica.stateMachine.appliedIndex()).toBeLessThanOrEqual(5);
    stateMachine.held.open();
    stateMachine.held = undefined;
    await Promise.allSettled(accepted);
    await until('caught up', () => replica.stateMachine.appliedIndex() === replica.node.commitIndex);
    await expect(replica.propose(put('after'))).resolves.toMatchObject({ revision: expect.any(Number) });
    await replica.stop();
    await db.close();
    expect(fatal).toEqual([]);
  });
});
