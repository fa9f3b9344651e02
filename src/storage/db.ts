import { AbstractBatchOperation, AbstractBatchOptions, AbstractLevel, AbstractSublevel } from 'abstract-level';
import { Level } from 'level';
import { CairnError, ErrorCode } from '../errors';

/**
 * The sublevels of a node's one database (DESIGN.md, "Storage"):
 *   log       8-byte big-endian index -> encoded raft Entry
 *   meta      'hard-state', 'applied', 'cluster' -> encoded records
 *   kv        user key -> encoded KeyRecord
 *   sessions  client id -> encoded SessionRecord
 */
export const SUBLEVELS = ['log', 'meta', 'kv', 'sessions'] as const;
export type SublevelName = (typeof SUBLEVELS)[number];

export type DbOp =
  | { type: 'put'; sublevel: SublevelName; key: Uint8Array; value: Uint8Array }
  | { type: 'del'; sublevel: SublevelName; key: Uint8Array };

export interface KeyRange {
  gte?: Uint8Array;
  lt?: Uint8Array;
  limit?: number;
}

/**
 * The narrow database interface the storage layer uses. Every write is one atomic
 * batch across sublevels; `sync` makes it durable before the promise resolves.
 */
export interface Db {
  get(sublevel: SublevelName, key: Uint8Array): Promise<Buffer | undefined>;
  entries(sublevel: SublevelName, range?: KeyRange): AsyncIterable<[Buffer, Buffer]>;
  write(ops: readonly DbOp[], options: { sync: boolean }): Promise<void>;
  close(): Promise<void>;
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

/** A Db over any abstract-level database: classic-level (LevelDB) or memory-level. */
export class LevelDb implements Db {
  private readonly sublevels: Record<SublevelName, AnySublevel>;

  constructor(private readonly level: AnyLevel) {
    const sublevels = {} as Record<SublevelName, AnySublevel>;
    for (const name of SUBLEVELS) {
      sublevels[name] = level.sublevel<Buffer, Buffer>(name, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
    }
    this.sublevels = sublevels;
  }

  /** Opens (creating if needed) the LevelDB in `dir`. */
  static async openDirectory(dir: string): Promise<LevelDb> {
    const level = new Level<Buffer, Buffer>(dir, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
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
    return new LevelDb(level as unknown as AnyLevel);
  }

  /** Opens an in-memory database (memory-level): same code paths, no disk. */
  static async openMemory(): Promise<LevelDb> {
    // A development dependency: loaded only when asked for, never by a production node.
    const { MemoryLevel } = require('memory-level') as typeof import('memory-level');
    const level = new MemoryLevel<Buffer, Buffer>({ keyEncoding: 'buffer', valueEncoding: 'buffer' });
    await level.open();
    return new LevelDb(level as unknown as AnyLevel);
  }

  async get(sublevel: SublevelName, key: Uint8Array): Promise<Buffer | undefined> {
    return this.sublevels[sublevel].get(asBuffer(key));
  }

  async *entries(sublevel: SublevelName, range: KeyRange = {}): AsyncIterable<[Buffer, Buffer]> {
    const options: Record<string, unknown> = {};
    if (range.gte) options.gte = asBuffer(range.gte);
    if (range.lt) options.lt = asBuffer(range.lt);
    if (range.limit !== undefined) options.limit = range.limit;
    for await (const [key, value] of this.sublevels[sublevel].iterator(options)) yield [key, value];
  }

  async write(ops: readonly DbOp[], options: WriteOptions): Promise<void> {
    if (ops.length === 0) return;
    const batch = ops.map(
      (op): AbstractBatchOperation<AnyLevel, BatchKey, Buffer> =>
        op.type === 'put'
          ? { type: 'put', sublevel: this.sublevels[op.sublevel], key: asBuffer(op.key), value: asBuffer(op.value) }
          : { type: 'del', sublevel: this.sublevels[op.sublevel], key: asBuffer(op.key) },
    );
    const batchOptions: WriteOptions = { sync: options.sync };
    await this.level.batch<BatchKey, Buffer>(batch, batchOptions);
  }

  async close(): Promise<void> {
    await this.level.close();
  }
}

/** A Buffer view of the same bytes: no copy on the write path. */
function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
