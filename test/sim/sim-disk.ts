import { Db, DbOp, KeyRange, LevelDb, SublevelName } from '../../src/storage/db';

/**
 * A node's disk in the simulator: memory-level underneath, plus a record of what has
 * reached "stable storage". A synced write makes itself and every earlier write
 * durable (as LevelDB's write-ahead log does); on a crash, the unsynced writes since
 * the last sync survive only as a prefix of random length, and a write in flight at
 * the crash may or may not be part of it.
 */
export class SimDisk {
  private durable = new Map<string, { sublevel: SublevelName; key: Buffer; value: Buffer }>();
  /** Writes issued since the last completed sync, oldest first. */
  private unsynced: DbOp[][] = [];
  private handle: SimDb | undefined;

  constructor(private readonly writeLatency: () => Promise<void>) {}

  /** Opens the disk as it is after the last crash (or empty). */
  async open(): Promise<Db> {
    const inner = await LevelDb.openMemory();
    const ops: DbOp[] = [...this.durable.values()].map((record) => ({ type: 'put', ...record }));
    await inner.write(ops, { sync: false });
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
  issued(ops: DbOp[]): void {
    this.unsynced.push(ops);
  }

  /** @internal A synced write completed: it and everything issued before it is durable. */
  synced(ops: DbOp[]): void {
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

  private makeDurable(batches: DbOp[][]): void {
    for (const ops of batches) {
      for (const op of ops) {
        const id = `${op.sublevel}/${Buffer.from(op.key).toString('hex')}`;
        if (op.type === 'put') {
          this.durable.set(id, { sublevel: op.sublevel, key: Buffer.from(op.key), value: Buffer.from(op.value) });
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

  async get(sublevel: SublevelName, key: Uint8Array): Promise<Buffer | undefined> {
    this.check();
    return this.inner.get(sublevel, key);
  }

  async *entries(sublevel: SublevelName, range?: KeyRange): AsyncIterable<[Buffer, Buffer]> {
    this.check();
    yield* this.inner.entries(sublevel, range);
  }

  async write(ops: readonly DbOp[], options: { sync: boolean }): Promise<void> {
    this.check();
    const batch = [...ops];
    this.disk.issued(batch);
    await this.inner.write(batch, options);
    await this.disk.latency();
    this.check();
    if (options.sync) this.disk.synced(batch);
  }

  async close(): Promise<void> {
    this.dead = true;
    await this.inner.close();
  }

  private check(): void {
    if (this.dead) throw new DiskCrashed('the simulated node crashed');
  }
}
