import { Command, CommandResult, EventType, RequestOp } from '../../gen/cairn/kv/v1/kv';
import { Entry, EntryType } from '../../gen/cairn/raft/v1/raft';
import { HistoryListener, KvStateMachine } from '../../src/kv/state-machine';
import { MAX_COMPACT_REVISIONS_PER_COMMAND, RevisionEvent } from '../../src/kv/watch-history';
import { Db, LevelDb } from '../../src/storage/db';
import { BACKENDS } from '../support/db-backends';

const b = (text: string) => Buffer.from(text);
const noSession = { clientId: '', sequence: 0, lowestUnansweredSequence: 0 };
const put = (key: string, v: string): Command => ({ op: { $case: 'put', value: { key: b(key), value: b(v), prevKv: false, ...noSession } }, proposedAtUnixMs: 0 });
const del = (key: string): Command => ({ op: { $case: 'delete', value: { key: b(key), prevKv: false, ...noSession } }, proposedAtUnixMs: 0 });
const compact = (revision: number): Command => ({ op: { $case: 'compact', value: { revision } }, proposedAtUnixMs: 0 });
const putOp = (key: string, v: string): RequestOp => ({ request: { $case: 'requestPut', value: { key: b(key), value: b(v), prevKv: false, ...noSession } } });
const delOp = (key: string): RequestOp => ({ request: { $case: 'requestDelete', value: { key: b(key), prevKv: false, ...noSession } } });
const txn = (...success: RequestOp[]): Command => ({ op: { $case: 'txn', value: { compare: [], success, failure: [], ...noSession } }, proposedAtUnixMs: 0 });

/** An event as text: "PUT a=1 @3 (prev 1@2)". */
function show({ revision, event }: RevisionEvent): string {
  const type = event.type === EventType.EVENT_TYPE_PUT ? 'PUT' : 'DELETE';
  const value = event.record ? `=${Buffer.from(event.record.value).toString()}` : '';
  const prev = event.prev ? ` (prev ${Buffer.from(event.prev.value).toString()}@${event.prev.modRevision})` : '';
  return `${type} ${Buffer.from(event.key).toString()}${value} @${revision}${prev}`;
}

async function historyOf(sm: KvStateMachine, from = 1, through = sm.revision()): Promise<string[]> {
  const events: string[] = [];
  for await (const event of sm.history(from, through, true)) events.push(show(event));
  return events;
}

class Applier {
  private index: number;
  constructor(public sm: KvStateMachine) {
    this.index = sm.appliedIndex();
  }
  async apply(...commands: Command[]): Promise<(CommandResult | undefined)[]> {
    const entries: Entry[] = commands.map((c) => ({ index: ++this.index, term: 1, type: EntryType.ENTRY_TYPE_COMMAND, data: Buffer.from(Command.encode(c).finish()) }));
    return (await this.sm.apply(entries)).map((o) => o.result);
  }
}

describe.each(BACKENDS)('MVCC history on $name', (backend) => {
  let opened: Awaited<ReturnType<typeof backend.open>>;
  let db: Db;
  let sm: KvStateMachine;
  let applier: Applier;

  beforeEach(async () => {
    opened = await backend.open();
    db = opened.db;
    sm = await KvStateMachine.open(db);
    applier = new Applier(sm);
  });
  afterEach(() => opened.cleanup());

  test('puts, deletes and a txn of several keys at one revision are recorded with the data, with their previous records', async () => {
    await applier.apply(put('a', '1'), put('b', '1'));
    await applier.apply(put('a', '2'), del('b'), del('missing'));
    await applier.apply(txn(putOp('c', '1'), putOp('a', '3')));
    expect(sm.revision()).toBe(5);
    expect(await historyOf(sm)).toEqual(['PUT a=1 @1', 'PUT b=1 @2', 'PUT a=2 @3 (prev 1@1)', 'DELETE b @4 (prev 1@2)', 'PUT c=1 @5', 'PUT a=3 @5 (prev 2@3)']);
  });

  test('a txn writes its keys at one revision, each with its own index, in order', async () => {
    await applier.apply(put('x', '0'));
    await applier.apply(txn(putOp('y', '1'), delOp('x'), putOp('z', '1')));
    expect(await historyOf(sm)).toEqual(['PUT x=0 @1', 'PUT y=1 @2', 'DELETE x @2 (prev 0@1)', 'PUT z=1 @2']);
  });

  test('a nested txn\'s writes are events of the one revision, each with its own index, in the order the tree ran them', async () => {
    await applier.apply(put('x', '0'));
    const nested = (...ops: RequestOp[]): RequestOp => ({ request: { $case: 'requestTxn', value: { compare: [], success: ops, failure: [], ...noSession } } });
    await applier.apply(txn(putOp('y', '1'), nested(delOp('x'), nested(putOp('w', '1'))), putOp('z', '1')));
    expect(sm.revision()).toBe(2);
    expect(await historyOf(sm)).toEqual(['PUT x=0 @1', 'PUT y=1 @2', 'DELETE x @2 (prev 0@1)', 'PUT w=1 @2', 'PUT z=1 @2']);
  });

  test('replay from a revision, and the history survives a reopen', async () => {
    for (let i = 1; i <= 10; i++) await applier.apply(put(`k${i % 3}`, String(i)));
    expect(await historyOf(sm, 8, 9)).toEqual(['PUT k2=8 @8 (prev 5@5)', 'PUT k0=9 @9 (prev 6@6)']);
    const before = await historyOf(sm);
    const reopened = await KvStateMachine.open(await opened.reopen());
    expect(await historyOf(reopened)).toEqual(before);
    expect(before).toHaveLength(10);
  });

  test('compaction drops older history, refuses a revision below it or above the store, and survives a reopen', async () => {
    for (let i = 1; i <= 6; i++) await applier.apply(put('k', String(i)));
    const [done] = await applier.apply(compact(4));
    expect(done?.op).toEqual({ $case: 'compact', value: { header: undefined, compactRevision: 4 } });
    expect(sm.compactedRevision()).toBe(4);
    // Revision 3 is gone, and with it the record revision 4's event replaced (its prev).
    expect(await historyOf(sm)).toEqual(['PUT k=4 @4', 'PUT k=5 @5 (prev 4@4)', 'PUT k=6 @6 (prev 5@5)']);
    const [below, above] = await applier.apply(compact(3), compact(7));
    expect(below?.error?.code).toBe('COMPACTED');
    expect(above?.error?.code).toBe('FUTURE_REVISION');
    const reopened = await KvStateMachine.open(await opened.reopen());
    expect(reopened.compactedRevision()).toBe(4);
    expect(await historyOf(reopened)).toHaveLength(3);
  });

  test('a compaction in the same batch as the writes it drops leaves none of them stored', async () => {
    await applier.apply(put('a', '1'), put('a', '2'), compact(2), put('a', '3'));
    expect(await historyOf(sm)).toEqual(['PUT a=2 @2', 'PUT a=3 @3 (prev 2@2)']);
  });

  test('one compact command drops at most MAX_COMPACT_REVISIONS_PER_COMMAND revisions and says how far it got', async () => {
    const writes = MAX_COMPACT_REVISIONS_PER_COMMAND + 5;
    const commands = Array.from({ length: writes }, (_, i) => put('k', String(i)));
    await applier.apply(...commands);
    const [first] = await applier.apply(compact(writes));
    expect(first?.op?.$case === 'compact' && first.op.value.compactRevision).toBe(MAX_COMPACT_REVISIONS_PER_COMMAND);
    const [second] = await applier.apply(compact(writes));
    expect(second?.op?.$case === 'compact' && second.op.value.compactRevision).toBe(writes);
    expect(await historyOf(sm)).toHaveLength(1);
  });

  test('the history and the compacted revision travel in snapshots', async () => {
    for (let i = 1; i <= 5; i++) await applier.apply(put(`k${i}`, String(i)));
    await applier.apply(compact(3));
    const other = await LevelDb.openMemory();
    const target = await KvStateMachine.open(other);
    const restoredTo: [number, number][] = [];
    target.setHistoryListener({ landed: () => undefined, restored: (revision, compacted) => restoredTo.push([revision, compacted]) } satisfies HistoryListener);
    const snapshot = await sm.snapshot();
    const restore = await target.beginRestore();
    for await (const chunk of snapshot.chunks(64)) await restore.write(chunk);
    snapshot.release();
    await other.write(restore.switchOps(), { sync: true });
    await restore.activate();
    expect(target.compactedRevision()).toBe(3);
    expect(await historyOf(target)).toEqual(await historyOf(sm));
    expect(restoredTo).toEqual([[5, 3]]);
    await other.close();
  });

  test('a stored event keeps its previous record as a revision, read back on replay; live events carry it in memory', async () => {
    await applier.apply(put('a', '1'), txn(putOp('b', '1'), putOp('a', '2')));
    const stored: RevisionEvent[] = [];
    for await (const event of sm.history(1, 2)) stored.push(event);
    expect(stored.map((e) => [e.event.prevRevision, e.event.prev])).toEqual([[0, undefined], [0, undefined], [1, undefined]]);
    expect(await historyOf(sm)).toEqual(['PUT a=1 @1', 'PUT b=1 @2', 'PUT a=2 @2 (prev 1@1)']);
  });

  test('the listener hears each landed batch with its events in revision order', async () => {
    const heard: string[][] = [];
    sm.setHistoryListener({ landed: (events, revision) => heard.push([...events.map(show), `at ${revision}`]), restored: () => undefined });
    await applier.apply(put('a', '1'), del('a'));
    await applier.apply(del('a'));
    expect(heard).toEqual([['PUT a=1 @1', 'DELETE a @2 (prev 1@1)', 'at 2'], ['at 2']]);
  });
});

describe('response headers carry the revision of the read', () => {
  test('getAt and range name the revision of the state they read, with applies landing meanwhile', async () => {
    const db = await LevelDb.openMemory();
    const sm = await KvStateMachine.open(db);
    const applier = new Applier(sm);
    // Each write puts its own revision as the value of k: a read at revision r must see value r.
    let applying: Promise<unknown> = Promise.resolve();
    const seen: string[] = [];
    for (let i = 1; i <= 200; i++) {
      applying = applying.then(() => applier.apply(put('k', String(i))));
      if (i % 3 === 0) {
        const { kv, revision } = await sm.getAt(b('k'));
        seen.push(`${kv?.value.toString() ?? '-'}@${revision}`);
        expect(kv ? Number(kv.value.toString()) : 0).toBe(revision);
        const range = await sm.range({ start: b('k'), end: b('l'), limit: 10, keysOnly: false });
        expect(range.kvs.length ? Number(range.kvs[0]!.value.toString()) : 0).toBe(range.revision);
      }
    }
    await applying;
    expect(seen.length).toBeGreaterThan(10);
    await db.close();
  });
});

describe('a data dir from before the history existed', () => {
  test('opens with its revisions marked compacted, so a watch from them is refused rather than missing events', async () => {
    const db = await LevelDb.openMemory();
    const sm = await KvStateMachine.open(db);
    await new Applier(sm).apply(put('a', '1'), put('b', '2'));
    // What an older version left: the same data, no history.
    for await (const [key] of db.entries('history')) await db.write([{ type: 'del', sublevel: 'history', key }], { sync: false });
    const reopened = await KvStateMachine.open(db);
    expect(reopened.compactedRevision()).toBe(3);
    // A data dir with history keeps what it has.
    await new Applier(reopened).apply(put('c', '3'));
    expect((await KvStateMachine.open(db)).compactedRevision()).toBe(3);
    await db.close();
  });
});
