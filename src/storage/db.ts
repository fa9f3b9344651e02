import { AbstractBatchOptions, AbstractLevel, AbstractSnapshot, AbstractSublevel } from 'abstract-level';
import { Level } from 'level';
import { assert } from '../assert';
import { CairnError, ErrorCode } from '../errors';

/**
 * The sublevels of a node's one database (DESIGN.md, "Storage"):
 *   log       8-byte big-endian index -> encoded raft Entry
 *   meta      'hard-state', 'applied', 'cluster', 'snapshot', 'generation' -> encoded records
 *   kv        user key -> encoded KeyRecord
 *   sessions  client id -> encoded SessionRecord
 *   auth      'state' -> encoded AuthState (users, roles, permissions; src/kv/auth-state.ts)
 *   history   8-byte big-endian revision + 2-byte index -> encoded HistoryEvent (src/kv/watch-history.ts)
 *   leases    8-byte big-endian lease id -> encoded LeaseRecord (src/kv/leases.ts)
 *
 * `kv`, `sessions`, `auth` and `history` are generational: each name maps to the physical sublevel of the
 * current generation (`kv`, `sessions` for generation 1, so data dirs written before
 * generations existed open unchanged; `kv.2`, `sessions.2` for generation 2, ...). A
 * snapshot restore writes the next generation and makes it current with one write of the
 * `generation` record in `meta` (the switch is atomic with whatever shares its batch).
 * `log` and `meta` are not generational.
 */
export const SUBLEVELS = ['log', 'meta', 'kv', 'sessions', 'auth', 'history', 'leases'] as const;
export type SublevelName = (typeof SUBLEVELS)[number];
export const GENERATIONAL_SUBLEVELS = ['kv', 'sessions', 'auth', 'history', 'leases'] as const;
export type GenerationalSublevel = (typeof GENERATIONAL_SUBLEVELS)[number];

/** The generation of a database that has no `generation` record. */
export const FIRST_GENERATION = 1;
/** Under `meta`: the current generation of `kv` and `sessions`, in decimal ASCII. */
export const GENERATION_KEY = Buffer.from('generation');

/**
 * One write of a batch. `generation` (only for `kv` and `sessions`) targets that
 * generation explicitly (a restore's staging generation); without it, the current one.
 */
export type DbOp =
  | { type: 'put'; sublevel: SublevelName; key: Uint8Array; value: Uint8Array; generation?: number }
  | { type: 'del'; sublevel: SublevelName; key: Uint8Array; generation?: number };

export interface KeyRange {
  gte?: Uint8Array;
  lt?: Uint8Array;
  limit?: number;
}

/**
 * A consistent, point-in-time view of the whole database (a LevelDB snapshot). Reads
 * given it see the database as it was when it was taken, in the generation current then.
 */
export interface DbSnapshot {
  /** The generation of `kv` and `sessions` when the snapshot was taken. */
  readonly generation: number;
  /** Frees the view; reads through it fail afterwards. Idempotent. */
  release(): Promise<void>;
}

export interface ReadOptions {
  /** Read the view of this snapshot instead of the latest state. */
  snapshot?: DbSnapshot;
  /** For `kv` and `sessions`: this generation (default: the snapshot's, else the current one). */
  generation?: number;
}

/**
 * The narrow database interface the storage layer uses. Every write is one atomic
 * batch across sublevels; `sync` makes it durable before the promise resolves.
 */
export interface Db {
  get(sublevel: SublevelName, key: Uint8Array, options?: ReadOptions): Promise<Buffer | undefined>;
  /** get() of many keys of one sublevel in one call; answers in the keys' order. */
  getMany(sublevel: SublevelName, keys: readonly Uint8Array[], options?: ReadOptions): Promise<(Buffer | undefined)[]>;
  entries(sublevel: SublevelName, range?: KeyRange & ReadOptions): AsyncIterable<[Buffer, Buffer]>;
  /** A batch holding generationSwitchOp(n) makes generation n current once it is written. */
  write(ops: readonly DbOp[], options: { sync: boolean }): Promise<void>;
  /** The current generation of `kv` and `sessions`. */
  generation(): number;
  /** Deletes everything in a generation other than the current one (unsynced). */
  clearGeneration(sublevel: GenerationalSublevel, generation: number): Promise<void>;
  /** A consistent view of everything as it is now (its generation read through the view itself). */
  snapshot(): Promise<DbSnapshot>;
  /**
   * Makes every earlier write durable, the unsynced ones included. A synced write alone is
   * not enough for that: it fsyncs only LevelDB's current log file, and LevelDB switches
   * log files (when its memtable fills) without syncing the old one (google/leveldb#193),
   * so after a power loss a later synced record can survive an earlier unsynced one. Call
   * it before a synced write that makes earlier unsynced writes load-bearing (compaction
   * deletes the log entries that produced them; a snapshot install switches to them).
   */
  flushToDisk(): Promise<void>;
  close(): Promise<void>;
}

export function isGenerational(sublevel: SublevelName): sublevel is GenerationalSublevel {
  return (GENERATIONAL_SUBLEVELS as readonly string[]).includes(sublevel);
}

/** The name of the physical sublevel that holds `sublevel` in `generation`. */
export function physicalSublevelName(sublevel: SublevelName, generation: number = FIRST_GENERATION): string {
  if (!isGenerational(sublevel)) {
    assert(generation === FIRST_GENERATION, () => `sublevel ${sublevel} has no generations (asked for ${generation})`);
    return sublevel;
  }
  checkGeneration(generation);
  return generation === FIRST_GENERATION ? sublevel : `${sublevel}.${generation}`;
}

/** The write that makes `generation` current (see Db.write). */
export function generationSwitchOp(generation: number): DbOp {
  checkGeneration(generation);
  return { type: 'put', sublevel: 'meta', key: GENERATION_KEY, value: Buffer.from(String(generation)) };
}

/** Reads a stored `generation` record; anything but a positive decimal integer is corruption. */
export function decodeGeneration(value: Uint8Array): number {
  const text = Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('latin1');
  const generation = /^[1-9][0-9]{0,14}$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(generation)) {
    throw new CairnError(ErrorCode.CORRUPTION, `meta/generation holds ${JSON.stringify(text)}, not a generation number`);
  }
  return generation;
}

function checkGeneration(generation: number): void {
  assert(Number.isSafeInteger(generation) && generation >= FIRST_GENERATION, () => `generation ${generation} is not an integer >= ${FIRST_GENERATION}`);
}

function isGenerationSwitch(op: DbOp): boolean {
  return op.type === 'put' && op.sublevel === 'meta' && Buffer.compare(Buffer.from(op.key), GENERATION_KEY) === 0;
}

type AnyLevel = AbstractLevel<string | Buffer | Uint8Array, Buffer, Buffer>;
type AnySublevel = AbstractSublevel<AnyLevel, string | Buffer | Uint8Array, Buffer, Buffer>;
type BatchKey = string | Buffer | Uint8Array;

/**
 * abstract-level's option types lack `sync`, which classic-level honours (memory-level
 * ignores it). `sync` is required here, so no write can leave it out by accident.
 */
export interface WriteOptions extends AbstractBatchOptions<BatchKey, Buffer> {
  sync: boolean;
}

const FLUSH_RANGE_START = Buffer.from('~');
const FLUSH_RANGE_END = Buffer.from('~~');

/** A Db over any abstract-level database: classic-level (LevelDB) or memory-level. */
/**
 * LevelDB's memtable (write buffer) size: 64 MiB, not LevelDB's 4 MiB. A node writes every
 * entry twice (the log, then the state), and a small memtable fills and is compacted into
 * level 0 over and over; compaction flushes the memtable anyway before each log compaction
 * (every --snapshot-entries), so it seldom grows near the bound. What it bought is in
 * docs/benchmarks.md ("What each change bought").
 */
export const DEFAULT_LEVELDB_WRITE_BUFFER_BYTES = 64 << 20;

export class LevelDb implements Db {
  private readonly physical = new Map<string, AnySublevel>();
  private current = FIRST_GENERATION;

  /** The backend reads synchronously (see get). */
  private readonly syncReads: boolean;

  private constructor(private readonly level: AnyLevel) {
    this.syncReads = (level.supports as { getSync?: boolean }).getSync === true;
  }

  /**
   * A Db over an open abstract-level database, in the generation its `meta` names. The
   * other generations that can exist (the one before it, whose deletion a crash may have
   * cut short, and the one after it, a restore's staging left by a crash) are cleared:
   * KvStateMachine keeps at most one non-current generation at a time, always a neighbour.
   */
  static async over(level: AnyLevel): Promise<LevelDb> {
    const db = new LevelDb(level);
    await db.loadGeneration();
    await db.clearStaleGenerations();
    return db;
  }

  /**
   * Opens (creating if needed) the LevelDB in `dir`. `writeBufferBytes` is LevelDB's
   * memtable size (--leveldb-write-buffer-bytes).
   */
  static async openDirectory(dir: string, { writeBufferBytes = DEFAULT_LEVELDB_WRITE_BUFFER_BYTES }: { writeBufferBytes?: number } = {}): Promise<LevelDb> {
    const level = new Level<Buffer, Buffer>(dir, { keyEncoding: 'buffer', valueEncoding: 'buffer', writeBufferSize: writeBufferBytes });
    try {
      await level.open();
    } catch (err) {
      const cause = (err as { cause?: { code?: string } }).cause;
      if (cause?.code === 'LEVEL_LOCKED') {
        throw new CairnError(ErrorCode.DATA_DIR_LOCKED, `data dir ${dir} is already in use by another cairn process`, {
          cause: err,
        });
      }
      throw err;
    }
    try {
      return await LevelDb.over(level as unknown as AnyLevel);
    } catch (err) {
      await level.close().catch(() => undefined);
      throw err;
    }
  }

  /** Opens an in-memory database (memory-level): same code paths, no disk. */
  static async openMemory(): Promise<LevelDb> {
    // A development dependency: loaded only when asked for, never by a production node.
    const { MemoryLevel } = require('memory-level') as typeof import('memory-level');
    const level = new MemoryLevel<Buffer, Buffer>({ keyEncoding: 'buffer', valueEncoding: 'buffer' });
    await level.open();
    return LevelDb.over(level as unknown as AnyLevel);
  }

  generation(): number {
    return this.current;
  }

  /** Re-reads the current generation from `meta` and clears its neighbours, as at open. */
  async clearStaleGenerations(): Promise<void> {
    await this.loadGeneration();
    for (const generation of [this.current - 1, this.current + 1]) {
      if (generation < FIRST_GENERATION) continue;
      for (const sublevel of GENERATIONAL_SUBLEVELS) await this.clearGeneration(sublevel, generation);
    }
  }

  async clearGeneration(sublevel: GenerationalSublevel, generation: number): Promise<void> {
    assert(generation !== this.current, () => `clearing ${sublevel} of generation ${generation}, the current one`);
    await this.sublevel(sublevel, generation).clear();
  }

  async snapshot(): Promise<DbSnapshot> {
    const handle = this.level.snapshot();
    try {
      // Not this.current: a switch batch may have reached the database but not yet that field.
      const value = await this.sublevel('meta').get(GENERATION_KEY, { snapshot: handle });
      return new LevelSnapshot(handle, value ? decodeGeneration(value) : FIRST_GENERATION);
    } catch (err) {
      await handle.close().catch(() => undefined);
      throw err;
    }
  }

  /**
   * Point reads are synchronous (getSync) where the backend has them, as classic-level and
   * memory-level do: a LevelDB read served from its memtable, block cache or the OS page
   * cache takes microseconds, while a trip to libuv's thread pool and back costs tens to
   * hundreds of microseconds of wake-ups and context switches on a loaded machine, and
   * reads sit on the write path (an apply reads every key it writes). A read that must
   * go to the disk holds the event loop for that long: the price of this choice.
   */
  async get(sublevel: SublevelName, key: Uint8Array, options: ReadOptions = {}): Promise<Buffer | undefined> {
    return (await this.getMany(sublevel, [key], options))[0];
  }

  /** get() of many keys of one sublevel, at once. */
  async getMany(sublevel: SublevelName, keys: readonly Uint8Array[], options: ReadOptions = {}): Promise<(Buffer | undefined)[]> {
    if (keys.length === 0) return [];
    const snapshot = levelSnapshot(options.snapshot);
    const physical = this.sublevel(sublevel, this.readGeneration(sublevel, options));
    const readOptions = snapshot ? { snapshot } : {};
    // A sublevel just created is still opening: the async read waits for it, getSync throws.
    if (this.syncReads && physical.status === 'open') return keys.map((key) => physical.getSync(asBuffer(key), readOptions));
    return physical.getMany(keys.map(asBuffer), readOptions);
  }

  async *entries(sublevel: SublevelName, range: KeyRange & ReadOptions = {}): AsyncIterable<[Buffer, Buffer]> {
    const options: Record<string, unknown> = {};
    if (range.gte) options.gte = asBuffer(range.gte);
    if (range.lt) options.lt = asBuffer(range.lt);
    if (range.limit !== undefined) options.limit = range.limit;
    const snapshot = levelSnapshot(range.snapshot);
    if (snapshot) options.snapshot = snapshot;
    const physical = this.sublevel(sublevel, this.readGeneration(sublevel, range));
    for await (const [key, value] of physical.iterator(options)) yield [key, value];
  }

  async write(ops: readonly DbOp[], options: WriteOptions): Promise<void> {
    if (ops.length === 0) return;
    let switchTo: number | undefined;
    // A chained batch, not level.batch(array): on classic-level the array form costs about
    // 6.6 µs of main-thread time per operation against 1.7 µs, and 755 µs of process CPU per
    // batch against 330 (64 puts of 330 bytes into two sublevels; docs/benchmarks.md).
    const batch = this.level.batch();
    try {
      for (const op of ops) {
        if (op.type === 'put' && isGenerationSwitch(op)) switchTo = decodeGeneration(op.value);
        const sublevel = this.sublevel(op.sublevel, this.writeGeneration(op));
        if (op.type === 'put') batch.put(asBuffer(op.key), asBuffer(op.value), { sublevel });
        else batch.del(asBuffer(op.key), { sublevel });
      }
    } catch (err) {
      await batch.close();
      throw err;
    }
    await batch.write({ sync: options.sync });
    if (switchTo !== undefined) this.current = switchTo;
  }

  async flushToDisk(): Promise<void> {
    // LevelDB's CompactRange first writes the memtable to a synced table file (and syncs the
    // manifest), whatever the range; a range beyond every key ('~' sorts after the '!name!'
    // sublevel prefixes) then compacts nothing. memory-level has no disk: nothing to do.
    const level = this.level as unknown as { compactRange?: (start: Buffer, end: Buffer) => Promise<void> };
    if (typeof level.compactRange === 'function') await level.compactRange(FLUSH_RANGE_START, FLUSH_RANGE_END);
  }

  async close(): Promise<void> {
    await this.level.close();
  }

  private async loadGeneration(): Promise<void> {
    const value = await this.sublevel('meta').get(GENERATION_KEY);
    this.current = value ? decodeGeneration(value) : FIRST_GENERATION;
  }

  private readGeneration(sublevel: SublevelName, options: ReadOptions): number {
    if (!isGenerational(sublevel)) return FIRST_GENERATION;
    return options.generation ?? options.snapshot?.generation ?? this.current;
  }

  private writeGeneration(op: DbOp): number {
    if (!isGenerational(op.sublevel)) {
      assert(op.generation === undefined, () => `a write to ${op.sublevel} names generation ${op.generation}, but ${op.sublevel} has none`);
      return FIRST_GENERATION;
    }
    return op.generation ?? this.current;
  }

  private sublevel(name: SublevelName, generation: number = FIRST_GENERATION): AnySublevel {
    const physicalName = physicalSublevelName(name, generation);
    let sublevel = this.physical.get(physicalName);
    if (!sublevel) {
      sublevel = this.level.sublevel<Buffer, Buffer>(physicalName, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
      this.physical.set(physicalName, sublevel);
    }
    return sublevel;
  }
}

class LevelSnapshot implements DbSnapshot {
  private released = false;

  constructor(
    readonly handle: AbstractSnapshot,
    readonly generation: number,
  ) {}

  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    await this.handle.close();
  }

  isReleased(): boolean {
    return this.released;
  }
}

function levelSnapshot(snapshot: DbSnapshot | undefined): AbstractSnapshot | undefined {
  if (snapshot === undefined) return undefined;
  assert(snapshot instanceof LevelSnapshot, 'a DbSnapshot from another database');
  assert(!snapshot.isReleased(), 'reading through a released DbSnapshot');
  return snapshot.handle;
}

/** A Buffer view of the same bytes: no copy on the write path. */
function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
