import { Event, EventType, KeyValue } from '../../gen/cairn/kv/v1/kv';
import { HistoryCompacted, HistoryEvent, KeyRecord } from '../../gen/cairn/storage/v1/storage';
import { assert } from '../assert';
import { Db, DbOp, ReadOptions } from '../storage/db';
import { encodeMessage } from '../proto-writer';

/**
 * MVCC history: every change of a key, in the `history` sublevel, written in the same apply
 * batch as the change itself, so any revision since the last compaction can be replayed
 * (service Watch). Keys are an 8-byte big-endian revision and a 2-byte big-endian index
 * within the revision (a Txn writes several keys at one revision). The all-zero key (revision
 * 0 holds no events) keeps the compacted revision, so it survives restarts and snapshot
 * installs with the rest of the replicated state.
 */

/** How many bytes of a history key are its revision, and how many its index within the revision. */
const REVISION_BYTES = 8;
const INDEX_BYTES = 2;
export const HISTORY_KEY_BYTES = REVISION_BYTES + INDEX_BYTES;
/** The largest index within one revision (the 2-byte field); a Txn writes at most MAX_TXN_OPS keys. */
const MAX_EVENTS_PER_REVISION = 0xffff + 1;

/** Under `history`: the compacted revision (see HistoryCompacted). */
export const COMPACTED_KEY = Buffer.alloc(HISTORY_KEY_BYTES);

/**
 * The most revisions one Compact command may drop: a compaction's deletions are written in
 * one apply batch, so its work is bounded by this many revisions' events (each revision holds
 * at most MAX_TXN_OPS of them). KV.Compact and automatic compaction propose larger
 * compactions as several commands of at most this many revisions each.
 */
export const MAX_COMPACT_REVISIONS_PER_COMMAND = 1000;

export function historyKey(revision: number, index: number): Buffer {
  assert(Number.isSafeInteger(revision) && revision >= 0, () => `history revision ${revision}`);
  assert(Number.isSafeInteger(index) && index >= 0 && index < MAX_EVENTS_PER_REVISION, () => `history index ${index}`);
  const key = Buffer.alloc(HISTORY_KEY_BYTES);
  key.writeBigUInt64BE(BigInt(revision), 0);
  key.writeUInt16BE(index, REVISION_BYTES);
  return key;
}

export function revisionOfHistoryKey(key: Uint8Array): number {
  assert(key.length === HISTORY_KEY_BYTES, () => `a history key of ${key.length} bytes`);
  const revision = Buffer.from(key.buffer, key.byteOffset, key.byteLength).readBigUInt64BE(0);
  assert(revision <= BigInt(Number.MAX_SAFE_INTEGER), () => `history revision ${revision} beyond 2^53`);
  return Number(revision);
}

/** One change of one key, as the state machine applied it. */
export interface RevisionEvent {
  revision: number;
  /** The position within its revision. */
  index: number;
  event: HistoryEvent;
}

/** The history writes of one apply batch, in the order the batch made them. */
export class HistoryBatch {
  readonly events: RevisionEvent[] = [];
  private readonly deletes: Buffer[] = [];
  private compactedChanged = false;

  constructor(
    /** The compacted revision as this batch leaves it. */
    public compacted: number,
  ) {}

  /** Records a change of `key` at `revision`: `record` null is a delete. */
  record(revision: number, key: Buffer, record: KeyRecord | null, previous: KeyRecord | undefined): void {
    const last = this.events[this.events.length - 1];
    assert(!last || last.revision <= revision, () => `history event at revision ${revision} after one at ${last?.revision}`);
    const index = last && last.revision === revision ? last.index + 1 : 0;
    const event: HistoryEvent = {
      type: record ? EventType.EVENT_TYPE_PUT : EventType.EVENT_TYPE_DELETE,
      key,
      record: record ?? undefined,
      prev: previous,
      prevRevision: previous?.modRevision ?? 0,
    };
    this.events.push({ revision, index, event });
  }

  /**
   * Drops history below `revision`: the stored events in [compacted, revision) (at most
   * MAX_COMPACT_REVISIONS_PER_COMMAND revisions' worth, checked by the caller) and this
   * batch's own, which then are never written (watchers of this node still hear them live).
   */
  async compact(db: Db, revision: number): Promise<void> {
    assert(revision >= this.compacted, () => `compacting to ${revision} below ${this.compacted}`);
    const from = historyKey(Math.max(1, this.compacted), 0);
    const to = historyKey(revision, 0);
    for await (const [key] of db.entries('history', { gte: from, lt: to })) this.deletes.push(Buffer.from(key));
    this.compacted = revision;
    this.compactedChanged = true;
  }

  /** The compacted record of history that never existed below `revision` (markPreHistoryCompacted). */
  preHistoryOps(revision: number): DbOp[] {
    return [{ type: 'put', sublevel: 'history', key: COMPACTED_KEY, value: encodeMessage(HistoryCompacted, { revision }) }];
  }

  ops(): DbOp[] {
    const ops: DbOp[] = this.deletes.map((key) => ({ type: 'del', sublevel: 'history', key }));
    for (const { revision, index, event } of this.events) {
      if (revision < this.compacted) continue;
      ops.push({ type: 'put', sublevel: 'history', key: historyKey(revision, index), value: encodeMessage(HistoryEvent, { ...event, prev: undefined }) });
    }
    if (this.compactedChanged) ops.push({ type: 'put', sublevel: 'history', key: COMPACTED_KEY, value: encodeMessage(HistoryCompacted, { revision: this.compacted }) });
    return ops;
  }
}

/** The compacted revision stored in `history` (0: nothing compacted). */
export async function loadCompactedRevision(db: Db, options: ReadOptions = {}): Promise<number> {
  const value = await db.get('history', COMPACTED_KEY, options);
  return value ? HistoryCompacted.decode(value).revision : 0;
}

/**
 * The stored events with from <= revision <= through, in order. With `withPrev`, each event's
 * previous record (`prev`) is read back from its prev_revision's events; one compacted since
 * stays absent.
 */
export async function* readHistory(db: Db, from: number, through: number, withPrev = false): AsyncIterable<RevisionEvent> {
  if (through < from) return;
  const gte = historyKey(Math.max(1, from), 0);
  const lt = historyKey(through + 1, 0);
  for await (const [key, value] of db.entries('history', { gte, lt })) {
    const event = HistoryEvent.decode(value);
    if (withPrev && event.prevRevision > 0) event.prev = await previousRecord(db, event.key, event.prevRevision);
    yield { revision: revisionOfHistoryKey(key), index: key.readUInt16BE(REVISION_BYTES), event };
  }
}

/** The record `key` got at `revision`, from that revision's events (at most MAX_TXN_OPS of them). */
async function previousRecord(db: Db, key: Uint8Array, revision: number): Promise<KeyRecord | undefined> {
  for await (const [, value] of db.entries('history', { gte: historyKey(revision, 0), lt: historyKey(revision + 1, 0) })) {
    const event = HistoryEvent.decode(value);
    if (Buffer.compare(Buffer.from(event.key), Buffer.from(key)) === 0) return event.record;
  }
  return undefined;
}

/** Checks a `history` record of a snapshot stream (throws on anything cairn does not write). */
export function checkHistoryRecord(key: Buffer, value: Uint8Array): void {
  if (key.length !== HISTORY_KEY_BYTES) throw new Error(`history key of ${key.length} bytes, not ${HISTORY_KEY_BYTES}`);
  if (key.equals(COMPACTED_KEY)) HistoryCompacted.decode(value);
  else HistoryEvent.decode(value);
}

/** The client's view of an event (kv.proto, Event). */
export function toWatchEvent({ revision, event }: RevisionEvent, prevKv: boolean): Event {
  const key = Buffer.from(event.key);
  const kv: KeyValue =
    event.type === EventType.EVENT_TYPE_PUT && event.record
      ? { key, value: Buffer.from(event.record.value), createRevision: event.record.createRevision, modRevision: event.record.modRevision, version: event.record.version }
      : { key, value: Buffer.alloc(0), createRevision: 0, modRevision: revision, version: 0 };
  const prev = prevKv && event.prev ? { key, value: Buffer.from(event.prev.value), createRevision: event.prev.createRevision, modRevision: event.prev.modRevision, version: event.prev.version } : undefined;
  return { type: event.type, kv, prevKv: prev };
}

/**
 * --auto-compaction-revisions: the leader keeps the history of the last this many revisions
 * and proposes Compact for the older ones (every replica applies it; a replica never
 * compacts on its own, since the history is replicated state).
 */
export const DEFAULT_AUTO_COMPACTION_REVISIONS = 100_000;
