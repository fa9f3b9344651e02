import { Command, EventType, WatchResponse } from '../../gen/cairn/kv/v1/kv';
import { Entry, EntryType } from '../../gen/cairn/raft/v1/raft';
import { KvStateMachine } from '../../src/kv/state-machine';
import { CANCEL_REASON_COMPACTED, CANCEL_REASON_SNAPSHOT, CANCEL_REASON_TOO_SLOW, WatchHub, WatchSpec, WatchStream } from '../../src/kv/watch-hub';
import { LevelDb } from '../../src/storage/db';
import { prefixEnd } from '../../src/server/validate';

const b = (text: string) => Buffer.from(text);
const noSession = { clientId: '', sequence: 0, lowestUnansweredSequence: 0 };
const put = (key: string, v: string): Command => ({ op: { $case: 'put', value: { key: b(key), value: b(v), prevKv: false, ...noSession } }, proposedAtUnixMs: 0 });
const del = (key: string): Command => ({ op: { $case: 'delete', value: { key: b(key), prevKv: false, ...noSession } }, proposedAtUnixMs: 0 });
const compact = (revision: number): Command => ({ op: { $case: 'compact', value: { revision } }, proposedAtUnixMs: 0 });

const everything = (startRevision = 0, extra: Partial<WatchSpec> = {}): WatchSpec => ({ start: Buffer.alloc(0), end: undefined, startRevision, prevKv: false, progressNotify: false, ...extra });
const prefix = (p: string, startRevision = 0): WatchSpec => ({ ...everything(startRevision), start: b(p), end: prefixEnd(b(p)) });

/** A deterministic generator for the interleavings. */
function seeded(seed: number): () => number {
  let state = seed >>> 0 || 1;
  return () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 2 ** 32;
  };
}

class Node {
  private index = 0;
  /** Applies run one at a time, in order, as the shell runs them. */
  private chain: Promise<unknown> = Promise.resolve();
  constructor(
    readonly db: LevelDb,
    readonly sm: KvStateMachine,
    readonly hub: WatchHub,
  ) {
    sm.setHistoryListener(hub);
    this.index = sm.appliedIndex();
  }
  static async open(limits?: Partial<WatchHub['limits']>): Promise<Node> {
    const db = await LevelDb.openMemory();
    const sm = await KvStateMachine.open(db);
    return new Node(db, sm, new WatchHub(sm, { maxWatchesPerStream: 100, maxStreamsPerNode: 10, maxWatchBufferBytes: 1 << 20, ...limits }));
  }
  apply(...commands: Command[]): Promise<unknown> {
    const entries: Entry[] = commands.map((c) => ({ index: ++this.index, term: 1, type: EntryType.ENTRY_TYPE_COMMAND, data: Buffer.from(Command.encode(c).finish()) }));
    this.chain = this.chain.then(() => this.sm.apply(entries));
    return this.chain;
  }
  /** Every stored event from `from` as "rev/index PUT key=value" text. */
  async history(from: number): Promise<string[]> {
    const events: string[] = [];
    for await (const e of this.sm.history(from, this.sm.revision())) events.push(`${e.revision} ${EventType[e.event.type]} ${Buffer.from(e.event.key).toString()}=${e.event.record ? Buffer.from(e.event.record.value).toString() : ''}`);
    return events;
  }
}

/** Drains a stream as a client would, recording responses. */
class Recorder {
  readonly responses: WatchResponse[] = [];
  constructor(readonly stream: WatchStream) {}
  drain(): void {
    for (let r = this.stream.shift(); r; r = this.stream.shift()) this.responses.push(r);
  }
  eventsOf(watchId: number): string[] {
    this.drain();
    return this.responses
      .filter((r) => r.watchId === watchId)
      .flatMap((r) => r.events.map((e) => `${e.type === EventType.EVENT_TYPE_PUT ? e.kv!.modRevision : e.kv!.modRevision} ${EventType[e.type]} ${Buffer.from(e.kv!.key).toString()}=${Buffer.from(e.kv!.value).toString()}`));
  }
  cancelOf(watchId: number): WatchResponse | undefined {
    this.drain();
    return this.responses.find((r) => r.watchId === watchId && r.canceled);
  }
}

async function until(condition: () => boolean | Promise<boolean>, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setImmediate(resolve));
  }
}

describe('watch hub', () => {
  test('a watch from revision 1 replays the history, then takes live events: the same events as the history', async () => {
    const node = await Node.open();
    await node.apply(put('a', '1'), put('b', '1'));
    await node.apply(del('a'));
    const recorder = new Recorder(node.hub.openStream());
    const id = recorder.stream.create(everything(1));
    await node.apply(put('c', '1'), put('a', '2'));
    await until(async () => recorder.eventsOf(id).length === 5, 'five events');
    expect(recorder.eventsOf(id)).toEqual(['1 EVENT_TYPE_PUT a=1', '2 EVENT_TYPE_PUT b=1', '3 EVENT_TYPE_DELETE a=', '4 EVENT_TYPE_PUT c=1', '5 EVENT_TYPE_PUT a=2']);
    expect(recorder.responses[0]).toMatchObject({ watchId: id, created: true });
  });

  test('replay and live handover with applies racing new watchers: no gap, no duplicate, revision order (20 interleavings)', async () => {
    for (let seed = 1; seed <= 20; seed++) {
      const random = seeded(seed);
      const node = await Node.open();
      const recorder = new Recorder(node.hub.openStream());
      const watches: { id: number; from: number; spec: WatchSpec }[] = [];
      const pending: Promise<unknown>[] = [];
      for (let step = 0; step < 60; step++) {
        const keys = Array.from({ length: 1 + Math.floor(random() * 3) }, () => `k${Math.floor(random() * 4)}`);
        pending.push(node.apply(...keys.map((k) => (random() < 0.2 ? del(k) : put(k, `${step}`)))));
        if (random() < 0.3) {
          // Started while batches are in flight: some landed, some not yet.
          const landed = node.sm.revision();
          const from = random() < 0.3 ? 0 : 1 + Math.floor(random() * (landed + 1));
          const spec = random() < 0.5 ? everything(from) : prefix('k1', from);
          watches.push({ id: recorder.stream.create(spec), from: from === 0 ? landed + 1 : from, spec });
        }
        if (random() < 0.5) await new Promise((resolve) => setImmediate(resolve));
        if (random() < 0.3) recorder.drain();
      }
      await Promise.all(pending);
      for (const watch of watches) {
        const expected = (await node.history(watch.from)).filter((e) => watch.spec.end === undefined || e.split(' ')[2]!.startsWith('k1'));
        await until(() => recorder.eventsOf(watch.id).length >= expected.length, `seed ${seed} watch ${watch.id}: ${expected.length} events`);
        expect(recorder.eventsOf(watch.id)).toEqual(expected);
      }
    }
  });

  test('a start revision below the compacted one is answered canceled, compacted, with compact_revision', async () => {
    const node = await Node.open();
    for (let i = 0; i < 5; i++) await node.apply(put('k', `${i}`));
    await node.apply(compact(4));
    const recorder = new Recorder(node.hub.openStream());
    const id = recorder.stream.create(everything(3));
    expect(recorder.cancelOf(id)).toMatchObject({ created: true, canceled: true, compactRevision: 4, cancelReason: CANCEL_REASON_COMPACTED });
    const ok = recorder.stream.create(everything(4));
    await until(() => recorder.eventsOf(ok).length === 2, 'the events from revision 4');
  });

  test('a watcher that falls behind by more than its buffer bytes is canceled as too slow, and its queue freed', async () => {
    const node = await Node.open({ maxWatchBufferBytes: 10_000 });
    const recorder = new Recorder(node.hub.openStream());
    const slow = recorder.stream.create(everything());
    for (let i = 0; i < 20; i++) await node.apply(put('big', 'x'.repeat(1000)));
    // Nothing was read from the stream: the watcher had 20 KB queued, over its 10 KB.
    expect(node.hub.watcherCount()).toBe(0);
    recorder.drain();
    const canceled = recorder.responses.find((r) => r.watchId === slow && r.canceled);
    expect(canceled?.cancelReason).toBe(CANCEL_REASON_TOO_SLOW);
    // The queued events were dropped with it, not kept in memory.
    expect(recorder.responses.filter((r) => r.events.length > 0).length).toBeLessThan(11);
  });

  test('a snapshot install the watch history covers continues the watch; one it does not cover cancels it', async () => {
    const source = await Node.open();
    for (let i = 1; i <= 6; i++) await source.apply(put(`k${i}`, `${i}`));
    const target = await Node.open();
    await target.apply(put('k1', '1'), put('k2', '2'));
    const recorder = new Recorder(target.hub.openStream());
    const covered = recorder.stream.create(everything(1));
    await until(() => recorder.eventsOf(covered).length === 2, 'the first two events');
    const install = async () => {
      const snapshot = await source.sm.snapshot();
      const restore = await target.sm.beginRestore();
      for await (const chunk of snapshot.chunks(1 << 20)) await restore.write(chunk);
      snapshot.release();
      await target.db.write(restore.switchOps(), { sync: true });
      await restore.activate();
    };
    await install();
    await until(() => recorder.eventsOf(covered).length === 6, 'revisions 3 to 6 replayed after the install');
    expect(recorder.eventsOf(covered)).toEqual(await source.history(1));
    // Now the source compacts past what a watcher on the target has seen.
    const behind = recorder.stream.create(everything(0));
    for (let i = 7; i <= 9; i++) await source.apply(put(`k${i}`, `${i}`));
    await source.apply(compact(9));
    await install();
    expect(recorder.cancelOf(behind)?.cancelReason).toBe(CANCEL_REASON_SNAPSHOT);
  });

  test('prev_kv, progress on request, cancel, and the stream and watch limits', async () => {
    const node = await Node.open({ maxStreamsPerNode: 1, maxWatchesPerStream: 1 });
    const recorder = new Recorder(node.hub.openStream());
    expect(() => node.hub.openStream()).toThrow(/MAX_WATCH_STREAMS_PER_NODE/);
    const id = recorder.stream.create({ ...everything(), prevKv: true });
    expect(() => recorder.stream.create(everything())).toThrow(/MAX_WATCHES_PER_STREAM/);
    await node.apply(put('a', '1'), put('a', '2'));
    recorder.drain();
    const events = recorder.responses.flatMap((r) => r.events);
    expect(events[1]?.prevKv?.value.toString()).toBe('1');
    recorder.stream.requestProgress();
    recorder.drain();
    expect(recorder.responses[recorder.responses.length - 1]).toMatchObject({ watchId: 0, header: { revision: 2 } });
    expect(recorder.stream.cancel(id)).toBe(true);
    expect(recorder.cancelOf(id)?.canceled).toBe(true);
    recorder.stream.close();
    expect(node.hub.streamCount()).toBe(0);
  });

  test('progress notifications go to idle synced watches that asked, and a client that never reads gets at most one queued', async () => {
    const node = await Node.open();
    const recorder = new Recorder(node.hub.openStream());
    const quiet = recorder.stream.create({ ...everything(), progressNotify: true });
    const silent = recorder.stream.create(everything());
    await node.apply(put('a', '1'));
    recorder.drain();
    recorder.responses.length = 0;
    node.hub.notifyProgress(); // a was written since the last check: not idle
    for (let i = 0; i < 100; i++) node.hub.notifyProgress();
    for (let i = 0; i < 100; i++) recorder.stream.requestProgress();
    recorder.drain();
    expect(recorder.responses.map((r) => [r.watchId, r.header?.revision, r.events.length])).toEqual([[quiet, 1, 0], [0, 1, 0]]);
    expect(recorder.responses.some((r) => r.watchId === silent)).toBe(false);
    node.hub.notifyProgress();
    recorder.drain();
    expect(recorder.responses).toHaveLength(3);
  });
});
