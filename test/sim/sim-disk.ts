import {
  Db,
  DbOp,
  DbSnapshot,
  GenerationalSublevel,
  isGenerational,
  KeyRange,
  LevelDb,
  physicalSublevelName,
  ReadOptions,
  SublevelName,
} from '../../src/storage/db';

/** A write as it reaches the disk: every `kv`/`sessions` op names its generation. */
type DiskOp = DbOp | { type: 'clear'; sublevel: GenerationalSublevel; generation: number };

interface DurableRecord {
  sublevel: SublevelName;
  generation?: number;
  key: Buffer;
  value: Buffer;
}

/**
 * A node's disk in the simulator: memory-level underneath, plus a record of what has
 * reached "stable storage". A synced write makes itself and every earlier write
 * durable (as LevelDB's write-ahead log does); on a crash, the unsynced writes since
 * the last sync survive only as a prefix of random length, and a write in flight at
 * the crash may or may not be part of it. Records are kept by physical sublevel (a
 * generation of `kv` / `sessions` is its own sublevel), so a restore's staging and its
 * generation switch crash exactly as they would on LevelDB.
 */
export class SimDisk {
  private durable = new Map<string, DurableRecord>();
  /** Writes issued since the last completed sync, oldest first. */
  private unsynced: DiskOp[][] = [];
  private handle: SimDb | undefined;

  constructor(private readonly writeLatency: () => Promise<void>) {}

  /** Opens the disk as it is after the last crash (or empty). */
  async open(): Promise<Db> {
    const inner = await LevelDb.openMemory();
    const ops: DbOp[] = [...this.durable.values()].map((record) => ({ type: 'put', ...record }));
    await inner.write(ops, { sync: false });
    // As LevelDb.over does at open: generations other than the current one go. (On disk
    // that deletion is unsynced, but it is redone at every open and made durable by the
    // next sync, before anything could be staged into those generations again.)
    await inner.clearStaleGenerations();
    for (const [id, record] of this.durable) {
      if (isGenerational(record.sublevel) && record.generation !== inner.generation()) this.durable.delete(id);
    }
    this.handle = new SimDb(inner, this);
    return this.handle;
  }

  /** Power loss: keeps what was synced and a random prefix of the rest. */
  crash(keepUnsyncedBatches: (count: number) => number): void {
    this.handle?.kill();
    this.handle = undefined;
    const keep = keepUnsyncedBatches(this.unsynced.length);
    this.makeDurable(this.unsynced.slice(0, keep));
    this.unsynced = [];
  }

  /** @internal */
  issued(ops: DiskOp[]): void {
    this.unsynced.push(ops);
  }

  /** @internal A synced write completed: it and everything issued before it is durable. */
  synced(ops: DiskOp[]): void {
    const position = this.unsynced.indexOf(ops);
    if (position < 0) return; // already made durable by a later sync
    this.makeDurable(this.unsynced.splice(0, position + 1));
  }

  /** Some write was issued since the last sync completed: a crash now may lose it. */
  hasUnsyncedWrites(): boolean {
    return this.unsynced.length > 0;
  }

  latency(): Promise<void> {
    return this.writeLatency();
  }

  private makeDurable(batches: DiskOp[][]): void {
    for (const ops of batches) {
      for (const op of ops) {
        if (op.type === 'clear') {
          for (const [id, record] of this.durable) {
            if (record.sublevel === op.sublevel && record.generation === op.generation) this.durable.delete(id);
          }
          continue;
        }
        const id = `${physicalSublevelName(op.sublevel, op.generation)}/${Buffer.from(op.key).toString('hex')}`;
        if (op.type === 'put') {
          this.durable.set(id, { sublevel: op.sublevel, generation: op.generation, key: Buffer.from(op.key), value: Buffer.from(op.value) });
        } else {
          this.durable.delete(id);
        }
      }
    }
  }
}

class DiskCrashed extends Error {
  override name = 'DiskCrashed';
}

/** One open of a SimDisk; after a crash every call fails, so a dead node cannot write. */
class SimDb implements Db {
  private dead = false;

  constructor(
    private readonly inner: LevelDb,
    private readonly disk: SimDisk,
  ) {}

  kill(): void {
    this.dead = true;
  }

  async get(sublevel: SublevelName, key: Uint8Array, options?: ReadOptions): Promise<Buffer | undefined> {
    this.check();
    return this.inner.get(sublevel, key, options);
  }

  async getMany(sublevel: SublevelName, keys: readonly Uint8Array[], options?: ReadOptions): Promise<(Buffer | undefined)[]> {
    this.check();
    return this.inner.getMany(sublevel, keys, options);
  }

  async *entries(sublevel: SublevelName, range?: KeyRange & ReadOptions): AsyncIterable<[Buffer, Buffer]> {
    this.check();
    yield* this.inner.entries(sublevel, range);
  }

  async write(ops: readonly DbOp[], options: { sync: boolean }): Promise<void> {
    this.check();
    // The generation a `kv`/`sessions` op lands in is fixed when it is issued.
    const batch: DbOp[] = ops.map((op) => (isGenerational(op.sublevel) ? { ...op, generation: op.generation ?? this.inner.generation() } : op));
    this.disk.issued(batch);
    await this.inner.write(batch, options);
    await this.disk.latency();
    this.check();
    if (options.sync) this.disk.synced(batch);
  }

  generation(): number {
    return this.inner.generation();
  }

  async clearGeneration(sublevel: GenerationalSublevel, generation: number): Promise<void> {
    this.check();
    const write: DiskOp[] = [{ type: 'clear', sublevel, generation }];
    this.disk.issued(write);
    await this.inner.clearGeneration(sublevel, generation);
    await this.disk.latency();
    this.check();
  }

  async snapshot(): Promise<DbSnapshot> {
    this.check();
    return this.inner.snapshot();
  }

  /** SimDisk keeps a prefix of the writes on a crash, so an earlier write never outlives a later synced one. */
  async flushToDisk(): Promise<void> {
    this.check();
  }

  async close(): Promise<void> {
    this.dead = true;
    await this.inner.close();
  }

  private check(): void {
    if (this.dead) throw new DiskCrashed('the simulated node crashed');
  }
}
