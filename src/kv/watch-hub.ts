import { Event, WatchResponse } from '../../gen/cairn/kv/v1/kv';
import { assert } from '../assert';
import { CairnError, ErrorCode } from '../errors';
import { HistoryListener } from './state-machine';
import { RevisionEvent, toWatchEvent } from './watch-history';

/**
 * The watch hub of one node: it hears of every apply batch once it has landed (in revision
 * order, from the node's own state machine: leader or follower alike) and hands each watcher
 * the events of its keys, exactly once and in revision order.
 *
 * Replay and live events (the unsynced/synced scheme, as in etcd). A new watcher with start
 * revision S is registered with the hub synchronously, together with reading R, the revision
 * of the landed state (`source.revision()`). From that moment every batch that lands reaches
 * the watcher live, and each such batch has a revision above R: the state machine moves its
 * revision and calls the hub in the same synchronous step once the batch is written, so a
 * batch either landed before the registration (revision <= R, and its history is in the
 * database) or reaches the watcher after it. While the watcher replays the stored history of
 * [S, R] it buffers those live events (bounded in bytes, like its queue); when the replay is
 * done it appends them, and takes live events directly from then on. Nothing of [S, R] comes
 * live and nothing above R comes from the replay: no gap, no duplicate.
 *
 * Compaction during a replay: the replay's iterator reads a LevelDB view taken when it starts
 * (in the same step as R), but to be safe a watcher whose start the compacted revision passed
 * while it replayed is canceled as compacted rather than trusted.
 *
 * A snapshot install jumps the state (and the history) to the installed revision X. A
 * watcher whose next revision the installed history still covers replays again from there
 * through X (skipping what it already queued); otherwise it is canceled with a reason, and
 * its client watches again from its last revision + 1 elsewhere or later.
 */

/** What the hub needs of the state machine. */
export interface WatchSource {
  revision(): number;
  compactedRevision(): number;
  /** `withPrev`: each event with its previous record (read back from the history). */
  history(from: number, through: number, withPrev: boolean): AsyncIterable<RevisionEvent>;
}

export interface WatchLimits {
  /** Watches on one stream at once. */
  maxWatchesPerStream: number;
  /** Watch streams open on one node at once. */
  maxStreamsPerNode: number;
  /**
   * What one watcher may have queued and not yet sent (events' keys and values, counted with
   * WATCH_EVENT_OVERHEAD_BYTES each): a watcher past it is canceled as too slow, and its
   * queue dropped. Also the bound of what it buffers while it replays.
   */
  maxWatchBufferBytes: number;
}

/** 4 MiB per watcher. */
export const MAX_WATCH_BUFFER_BYTES = 4 << 20;
export const MAX_WATCHES_PER_STREAM = 1000;
export const MAX_WATCH_STREAMS_PER_NODE = 1000;
export const DEFAULT_WATCH_LIMITS: WatchLimits = {
  maxWatchesPerStream: MAX_WATCHES_PER_STREAM,
  maxStreamsPerNode: MAX_WATCH_STREAMS_PER_NODE,
  maxWatchBufferBytes: MAX_WATCH_BUFFER_BYTES,
};
/** What an event adds to a response beyond its key and values (tags, lengths, revisions). */
export const WATCH_EVENT_OVERHEAD_BYTES = 64;
/**
 * One events response carries at most about this many bytes (it is cut only between
 * revisions, so a larger revision goes alone): the client's receive limit is 4 MiB by default.
 */
export const MAX_WATCH_RESPONSE_BYTES = 1 << 20;

export const CANCEL_REASON_CANCELED = 'canceled by the client';
export const CANCEL_REASON_COMPACTED = 'compacted: the start revision is below the oldest revision this node still holds';
export const CANCEL_REASON_TOO_SLOW = 'too slow: the watcher fell behind by more than its buffer';
export const CANCEL_REASON_SNAPSHOT = 'this node installed a snapshot whose history does not cover the watch: watch again from the last revision seen + 1';

export interface WatchSpec {
  /** First key, inclusive. */
  start: Buffer;
  /** End key, exclusive (undefined: to the end of the key space). */
  end: Buffer | undefined;
  /** 0: from the next write on. */
  startRevision: number;
  prevKv: boolean;
  progressNotify: boolean;
}

interface Queued {
  response: WatchResponse;
  /** The watcher whose bytes it counts against (0: the stream's own). */
  watchId: number;
  bytes: number;
}

export class WatchHub implements HistoryListener {
  private readonly streams = new Set<WatchStream>();

  constructor(
    readonly source: WatchSource,
    readonly limits: WatchLimits = DEFAULT_WATCH_LIMITS,
    /** The header of a response at `revision` (member id, leader, term). */
    readonly header: (revision: number) => WatchResponse['header'] = (revision) => ({ revision, memberId: 0, leaderId: 0, raftTerm: 0 }),
  ) {}

  /** A new stream, or OVERLOADED past maxStreamsPerNode. */
  openStream(): WatchStream {
    if (this.streams.size >= this.limits.maxStreamsPerNode) {
      throw new CairnError(ErrorCode.OVERLOADED, `this node serves ${this.streams.size} watch streams, its limit (MAX_WATCH_STREAMS_PER_NODE): try another node or later`);
    }
    const stream = new WatchStream(this, () => this.streams.delete(stream));
    this.streams.add(stream);
    return stream;
  }

  streamCount(): number {
    return this.streams.size;
  }

  watcherCount(): number {
    let count = 0;
    for (const stream of this.streams) count += stream.watcherCount();
    return count;
  }

  landed(events: readonly RevisionEvent[], revision: number): void {
    for (const stream of this.streams) stream.landed(events, revision);
  }

  restored(revision: number, compacted: number): void {
    for (const stream of this.streams) stream.restored(revision, compacted);
  }

  /** Sends a progress notification to each idle synced watcher that asked for them (called every so often). */
  notifyProgress(): void {
    for (const stream of this.streams) stream.notifyIdleProgress();
  }
}

/** The watches of one client stream, and the one ordered queue of its responses. */
export class WatchStream {
  private readonly watchers = new Map<number, Watcher>();
  private readonly queue: Queued[] = [];
  private nextWatchId = 1;
  private closed = false;
  /** A progress response is queued: another request waits for it (a client that never reads cannot grow the queue). */
  private progressQueued = false;
  /** Called when the queue gains a response. */
  onReadable: () => void = () => undefined;

  constructor(
    readonly hub: WatchHub,
    private readonly onClose: () => void,
  ) {}

  watcherCount(): number {
    return this.watchers.size;
  }

  /** Starts a watch; its `created` response (or canceled, when compacted) is queued first. */
  create(spec: WatchSpec): number {
    assert(!this.closed, 'a watch created on a closed stream');
    if (this.watchers.size >= this.hub.limits.maxWatchesPerStream) {
      throw new CairnError(ErrorCode.INVALID_ARGUMENT, `this stream has ${this.watchers.size} watches, the limit (MAX_WATCHES_PER_STREAM): cancel one or open another stream`);
    }
    const id = this.nextWatchId++;
    const watcher = new Watcher(id, spec, this);
    this.watchers.set(id, watcher);
    watcher.start();
    return id;
  }

  /** Ends a watch (a canceled response follows); false if the stream has no such watch. */
  cancel(watchId: number): boolean {
    const watcher = this.watchers.get(watchId);
    if (!watcher) return false;
    watcher.cancel(CANCEL_REASON_CANCELED);
    return true;
  }

  /**
   * Answers a progress request: a response whose header revision is one up to which every
   * watch of the stream has had all its events queued (the landed revision when all are
   * synced; the lowest of theirs otherwise).
   */
  requestProgress(): void {
    if (this.progressQueued) return;
    this.progressQueued = true;
    let revision = this.hub.source.revision();
    for (const watcher of this.watchers.values()) revision = Math.min(revision, watcher.progressRevision());
    this.push({ response: response(this.hub.header(revision), 0), watchId: 0, bytes: 0 });
  }

  /** The next response to send, if any. */
  shift(): WatchResponse | undefined {
    const item = this.queue.shift();
    if (!item) return undefined;
    if (item.watchId === 0 && item.response.watchId === 0 && !item.response.canceled) this.progressQueued = false;
    this.watchers.get(item.watchId)?.sent(item.bytes);
    return item.response;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const watcher of this.watchers.values()) watcher.stop();
    this.watchers.clear();
    this.queue.length = 0;
    this.onClose();
  }

  landed(events: readonly RevisionEvent[], revision: number): void {
    for (const watcher of this.watchers.values()) watcher.live(events, revision);
  }

  restored(revision: number, compacted: number): void {
    for (const watcher of [...this.watchers.values()]) watcher.restored(revision, compacted);
  }

  notifyIdleProgress(): void {
    for (const watcher of this.watchers.values()) watcher.notifyIfIdle();
  }

  push(item: Queued): void {
    if (this.closed) return;
    this.queue.push(item);
    this.onReadable();
  }

  /** Frees what a canceled watcher had queued (its cancel response is queued after). */
  drop(watchId: number): void {
    for (let i = this.queue.length - 1; i >= 0; i--) {
      const item = this.queue[i]!;
      if (item.watchId === watchId && item.response.events.length > 0) this.queue.splice(i, 1);
    }
  }

  forget(watchId: number): void {
    this.watchers.delete(watchId);
  }
}

function response(header: WatchResponse['header'], watchId: number, fields: Partial<WatchResponse> = {}): WatchResponse {
  return { header, watchId, created: false, canceled: false, compactRevision: 0, cancelReason: '', events: [], ...fields };
}

function eventBytes({ event }: RevisionEvent, prevKv: boolean): number {
  return event.key.length + (event.record?.value.length ?? 0) + (prevKv ? (event.prev?.value.length ?? 0) : 0) + WATCH_EVENT_OVERHEAD_BYTES;
}

/** A position in the history: the last event queued (revision, index within it). */
interface Position {
  revision: number;
  index: number;
}

function after(event: RevisionEvent, position: Position): boolean {
  return event.revision > position.revision || (event.revision === position.revision && event.index > position.index);
}

class Watcher {
  private state: 'replaying' | 'synced' | 'canceled' = 'replaying';
  /** The last event queued: nothing at or before it is queued again. */
  private queued: Position;
  /** While replaying: the revision the replay reads through (R). */
  private replayThrough = 0;
  /** While replaying: live events above replayThrough, and their bytes. */
  private buffered: RevisionEvent[] = [];
  /** While replaying: the revision of the last batch heard live. */
  private liveThrough = 0;
  private bufferedBytes = 0;
  /** Bytes of this watcher's responses queued on the stream and not yet sent. */
  private pendingBytes = 0;
  /** A snapshot install while replaying: replay again through this revision. */
  private resyncThrough: number | undefined;
  /** Events queued since the last progress check. */
  private active = false;
  /** A progress notification of this watch is queued and not yet sent: no second one. */
  private progressQueued = false;
  /** Resolves the replay's wait for the queue to drain. */
  private drained: (() => void) | undefined;

  constructor(
    readonly id: number,
    private readonly spec: WatchSpec,
    private readonly stream: WatchStream,
  ) {
    this.queued = { revision: 0, index: Number.MAX_SAFE_INTEGER };
  }

  private get source(): WatchSource {
    return this.stream.hub.source;
  }

  private get limit(): number {
    return this.stream.hub.limits.maxWatchBufferBytes;
  }

  /** Registration and R in one synchronous step (see the module comment). */
  start(): void {
    const landed = this.source.revision();
    const from = this.spec.startRevision === 0 ? landed + 1 : this.spec.startRevision;
    const compacted = this.source.compactedRevision();
    if (from < compacted) {
      this.finish(CANCEL_REASON_COMPACTED, { created: true, compactRevision: compacted }, landed);
      return;
    }
    this.queued = { revision: from - 1, index: Number.MAX_SAFE_INTEGER };
    this.stream.push({ response: response(this.stream.hub.header(landed), this.id, { created: true }), watchId: this.id, bytes: 0 });
    if (from > landed) {
      this.state = 'synced';
      return;
    }
    this.replayThrough = landed;
    void this.replay(compacted, from).catch((err) => this.cancel(`the history could not be read on this node: ${(err as Error).message}`));
  }

  private async replay(compactedAtStart: number, from: number): Promise<void> {
    for (;;) {
      const through = this.replayThrough;
      let batch: RevisionEvent[] = [];
      for await (const event of this.source.history(this.queued.revision, through, this.spec.prevKv)) {
        if (this.state !== 'replaying' || this.resyncThrough !== undefined) break;
        if (!after(event, this.queued) || !this.matches(event)) continue;
        // Cut only between revisions, so each response's header revision is complete.
        if (batch.length > 0 && event.revision !== batch[batch.length - 1]!.revision && this.bytesOf(batch) >= MAX_WATCH_RESPONSE_BYTES) {
          this.queueEvents(batch, batch[batch.length - 1]!.revision);
          batch = [];
          if (this.pendingBytes >= this.limit) await new Promise<void>((resolve) => (this.drained = resolve));
          if (this.state !== 'replaying') return;
        }
        batch.push(event);
      }
      if (this.state !== 'replaying') return;
      if (this.resyncThrough !== undefined) {
        if (batch.length > 0) this.queueEvents(batch, batch[batch.length - 1]!.revision);
        this.replayThrough = this.resyncThrough;
        this.resyncThrough = undefined;
        this.buffered = this.buffered.filter((e) => e.revision > this.replayThrough);
        this.bufferedBytes = this.bytesOf(this.buffered);
        continue;
      }
      if (batch.length > 0) this.queueEvents(batch, batch[batch.length - 1]!.revision);
      break;
    }
    const compacted = this.source.compactedRevision();
    if (compacted !== compactedAtStart && compacted > from) {
      this.finish(CANCEL_REASON_COMPACTED, { compactRevision: compacted });
      return;
    }
    // The handover: everything through replayThrough came from the replay, the rest was buffered live.
    const buffered = this.buffered;
    this.buffered = [];
    this.bufferedBytes = 0;
    this.state = 'synced';
    this.queued = { revision: this.replayThrough, index: Number.MAX_SAFE_INTEGER };
    this.queueLive(buffered, Math.max(this.replayThrough, this.liveThrough));
  }

  live(events: readonly RevisionEvent[], revision: number): void {
    if (this.state === 'canceled') return;
    const mine = events.filter((event) => after(event, this.queued) && this.matches(event));
    if (this.state === 'replaying') {
      this.liveThrough = revision;
      for (const event of mine) {
        this.buffered.push(event);
        this.bufferedBytes += eventBytes(event, this.spec.prevKv);
      }
      if (this.bufferedBytes > this.limit) this.cancel(CANCEL_REASON_TOO_SLOW);
      return;
    }
    this.queueLive(mine, revision);
  }

  /** Live events (already filtered) of batches through `revision`, grouped by response size. */
  private queueLive(events: RevisionEvent[], revision: number): void {
    let start = 0;
    let bytes = 0;
    for (let i = 0; i < events.length; i++) {
      bytes += eventBytes(events[i]!, this.spec.prevKv);
      const last = i === events.length - 1;
      const cut = !last && events[i + 1]!.revision !== events[i]!.revision && bytes >= MAX_WATCH_RESPONSE_BYTES;
      if (cut || last) {
        this.queueEvents(events.slice(start, i + 1), last ? revision : events[i]!.revision);
        if (this.state === 'canceled') return;
        start = i + 1;
        bytes = 0;
      }
    }
    if (events.length === 0) this.queued = { revision: Math.max(this.queued.revision, revision), index: Number.MAX_SAFE_INTEGER };
  }

  private queueEvents(events: RevisionEvent[], headerRevision: number): void {
    if (events.length === 0) return;
    const bytes = this.bytesOf(events);
    const last = events[events.length - 1]!;
    this.queued = { revision: last.revision, index: last.index };
    if (this.state === 'synced' && headerRevision > last.revision) this.queued = { revision: headerRevision, index: Number.MAX_SAFE_INTEGER };
    const converted: Event[] = events.map((event) => toWatchEvent(event, this.spec.prevKv));
    this.pendingBytes += bytes;
    this.active = true;
    this.stream.push({ response: response(this.stream.hub.header(headerRevision), this.id, { events: converted }), watchId: this.id, bytes });
    if (this.pendingBytes > this.limit && this.state === 'synced') this.cancel(CANCEL_REASON_TOO_SLOW);
  }

  restored(revision: number, compacted: number): void {
    if (this.state === 'canceled') return;
    const next = this.queued.revision + (this.queued.index === Number.MAX_SAFE_INTEGER ? 1 : 0);
    if (compacted > next) {
      this.cancel(CANCEL_REASON_SNAPSHOT);
      return;
    }
    if (this.state === 'replaying') {
      this.resyncThrough = revision;
      return;
    }
    this.state = 'replaying';
    this.replayThrough = revision;
    void this.replay(compacted, next).catch((err) => this.cancel(`the history could not be read on this node: ${(err as Error).message}`));
  }

  /** The revision through which every event of this watch is queued. */
  progressRevision(): number {
    if (this.state !== 'synced') return Math.max(0, this.queued.revision - (this.queued.index === Number.MAX_SAFE_INTEGER ? 0 : 1));
    return this.source.revision();
  }

  notifyIfIdle(): void {
    if (this.state !== 'synced' || !this.spec.progressNotify) return;
    if (!this.active && !this.progressQueued && this.pendingBytes === 0) {
      this.progressQueued = true;
      this.stream.push({ response: response(this.stream.hub.header(this.source.revision()), this.id), watchId: this.id, bytes: 0 });
    }
    this.active = false;
  }

  /** A response of this watcher left the queue. */
  sent(bytes: number): void {
    if (bytes === 0) this.progressQueued = false;
    this.pendingBytes -= bytes;
    if (this.drained && this.pendingBytes < this.limit / 2) {
      const drained = this.drained;
      this.drained = undefined;
      drained();
    }
  }

  cancel(reason: string): void {
    if (this.state === 'canceled') return;
    this.finish(reason, {});
  }

  /** Ends the watch without a response (its stream closed). */
  stop(): void {
    this.state = 'canceled';
    this.buffered = [];
    this.drained?.();
  }

  private finish(reason: string, fields: Partial<WatchResponse>, revision = this.source.revision()): void {
    this.state = 'canceled';
    this.buffered = [];
    this.bufferedBytes = 0;
    this.stream.drop(this.id);
    this.pendingBytes = 0;
    this.stream.forget(this.id);
    this.stream.push({ response: response(this.stream.hub.header(revision), this.id, { canceled: true, cancelReason: reason, ...fields }), watchId: 0, bytes: 0 });
    this.drained?.();
  }

  private matches({ event }: RevisionEvent): boolean {
    const key = Buffer.from(event.key.buffer, event.key.byteOffset, event.key.byteLength);
    return Buffer.compare(key, this.spec.start) >= 0 && (this.spec.end === undefined || Buffer.compare(key, this.spec.end) < 0);
  }

  private bytesOf(events: readonly RevisionEvent[]): number {
    let bytes = 0;
    for (const event of events) bytes += eventBytes(event, this.spec.prevKv);
    return bytes;
  }
}
