import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from '../../gen/cairn/kv/v1/kv';
import { ErrorCode } from '../../src/errors';
import { KvStateMachine } from '../../src/kv/state-machine';
import { KvReplica, openKvReplica } from '../../src/kv/kv-replica';
import { LogClockSource } from '../../src/kv/log-time';
import { DEFAULT_RAFT_CONFIG } from '../../src/raft/node';
import { SeededRandom } from '../../src/raft/random';
import { LevelDb } from '../../src/storage/db';
import { LevelRaftStorage } from '../../src/storage/raft-storage';

/** A single-node Replica on a real LevelDB directory, restarted for real. */
async function openReplica(dir: string, clock?: LogClockSource) {
  const db = await LevelDb.openDirectory(dir);
  const fatal: unknown[] = [];
  const replica = await openKvReplica({
    clock,
    config: { ...DEFAULT_RAFT_CONFIG, id: 1, voters: [1], random: new SeededRandom(7) },
    storage: new LevelRaftStorage(db),
    stateMachine: await KvStateMachine.open(db),
    transport: { send: () => undefined },
    onFatal: (err) => fatal.push(err),
  });
  return { db, replica, fatal };
}

async function becomeLeader(replica: KvReplica): Promise<void> {
  const deadline = Date.now() + 5000;
  while (replica.node.role !== 'leader') {
    if (Date.now() > deadline) throw new Error('no leader within 5 s');
    replica.tick();
    await new Promise((resolve) => setImmediate(resolve));
  }
}

const put = (key: string, value: string, sequence = 0): Command => ({
  op: { $case: 'put', value: { key: Buffer.from(key), value: Buffer.from(value), prevKv: false, clientId: sequence ? 'c1' : '', sequence, lowestUnansweredSequence: sequence } },
  proposedAtUnixMs: 0,
});

describe('Replica on LevelDB', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'cairn-replica-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  test('a restarted node resumes with the same term, vote, log and data, nothing applied twice', async () => {
    const first = await openReplica(dir);
    await becomeLeader(first.replica);
    const results = await Promise.all(Array.from({ length: 50 }, (_, i) => first.replica.propose(put(`k${i % 10}`, `v${i}`))));
    expect(results.map((r) => r.revision)).toEqual(Array.from({ length: 50 }, (_, i) => i + 1));
    const before = first.replica.node.status();
    await first.replica.stop();
    await first.db.close();

    const second = await openReplica(dir);
    const after = second.replica.node.status();
    expect([after.term, after.votedFor, after.lastIndex, after.lastTerm]).toEqual([before.term, before.votedFor, before.lastIndex, before.lastTerm]);
    expect(second.replica.stateMachine.appliedIndex()).toBe(before.appliedIndex);
    expect(second.replica.stateMachine.revision()).toBe(50);
    const k3 = await second.replica.stateMachine.get(Buffer.from('k3'));
    expect(k3?.value.toString()).toBe('v43');
    expect(k3?.version).toBe(5);
    // It leads again in a new term and keeps going from where it was.
    await becomeLeader(second.replica);
    expect(second.replica.node.term).toBeGreaterThan(before.term);
    const next = await second.replica.propose(put('k3', 'again'));
    expect(next.revision).toBe(51);
    await second.replica.stop();
    await second.db.close();
    expect([...first.fatal, ...second.fatal]).toEqual([]);
  });

  test('a retried write with the same client id and sequence is applied once', async () => {
    const { db, replica } = await openReplica(dir);
    await becomeLeader(replica);
    const original = await replica.propose(put('x', '1', 1));
    const retry = await replica.propose(put('x', '1', 1));
    expect(retry).toEqual(original);
    expect((await replica.stateMachine.get(Buffer.from('x')))?.version).toBe(1);
    await replica.stop();
    await db.close();
  });

  test('log time: the first leader starts from its wall clock, then only its monotonic clock moves it; a stamp the bytes carried loses', async () => {
    const clock = { wall: 1_700_000_000_000, monotonic: 100 };
    const source: LogClockSource = { wallUnixMs: () => clock.wall, monotonicMs: () => clock.monotonic };
    const first = await openReplica(dir, source);
    await becomeLeader(first.replica);
    expect(first.replica.stateMachine.logTimeUnixMs()).toBe(0);
    await first.replica.propose(put('t', '1'));
    await first.replica.readBarrier(); // the writer hears before the state write lands; log time moves with it
    expect(first.replica.stateMachine.logTimeUnixMs()).toBe(1_700_000_000_000);
    // Five seconds pass while the wall clock jumps two hours ahead: log time moves five seconds.
    clock.monotonic += 5_000;
    clock.wall += 2 * 3600_000;
    // A forwarded command arrives as bytes, perhaps with a stamp of its own: the leader's wins.
    const forwarded = { ...put('t', '2'), proposedAtUnixMs: 9_999_999_999_999 };
    await first.replica.propose(forwarded, Command.encode(forwarded).finish());
    await first.replica.readBarrier();
    expect(first.replica.stateMachine.logTimeUnixMs()).toBe(1_700_000_005_000);
    await first.replica.stop();
    await first.db.close();

    // After a restart the new term's stamps continue from the applied log time, not the wall clock.
    clock.monotonic = 0;
    const second = await openReplica(dir, source);
    await becomeLeader(second.replica);
    clock.monotonic += 1_000;
    await second.replica.propose(put('t', '3'));
    await second.replica.readBarrier();
    expect(second.replica.stateMachine.logTimeUnixMs()).toBe(1_700_000_006_000);
    await second.replica.stop();
    await second.db.close();
  });

  test('a linearizable read barrier on a single node resolves; a follower refuses it', async () => {
    const { db, replica } = await openReplica(dir);
    await expect(replica.readBarrier()).rejects.toMatchObject({ code: ErrorCode.NOT_LEADER });
    await becomeLeader(replica);
    await replica.propose(put('r', 'x'));
    await replica.readBarrier();
    expect((await replica.stateMachine.get(Buffer.from('r')))?.value.toString()).toBe('x');
    await replica.stop();
    await expect(replica.propose(put('r', 'y'))).rejects.toMatchObject({ code: ErrorCode.STOPPED });
    await db.close();
  });
});
