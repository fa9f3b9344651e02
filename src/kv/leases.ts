import { Command, CommandResult } from '../../gen/cairn/kv/v1/kv';
import { KeyRecord, LeaseRecord } from '../../gen/cairn/storage/v1/storage';
import { assert } from '../assert';
import { ErrorCode } from '../errors';
import { Db, DbOp } from '../storage/db';
import { encodeMessage } from '../proto-writer';

/**
 * The replicated lease table (issue 12): lease id -> its TTL and the keys attached to it,
 * in the generational `leases` sublevel (so it travels in snapshots) and, whole, in memory
 * (it is bounded: MAX_LEASES leases of at most MAX_KEYS_PER_LEASE keys each).
 *
 * The table holds no deadlines: expiry is decided by the leader alone, on its monotonic
 * clock (src/kv/lease-keeper.ts), and arrives here as an expire command in the log.
 */

/** Most leases the cluster holds at once; a grant past it is refused (LEASE_LIMIT). */
export const MAX_LEASES = 10_000;
/** Most keys attached to one lease; a put past it is refused (LEASE_LIMIT). */
export const MAX_KEYS_PER_LEASE = 1_000;
/**
 * Most bytes of keys attached to leases, all leases together: the table is kept in memory
 * whole (a key attached to a lease is held there once more). Past it, LEASE_LIMIT.
 */
export const MAX_LEASED_KEY_BYTES = 64 * 1024 * 1024;
/** Shortest TTL a lease may be granted with, in seconds (a shorter one is raised to it, as etcd does). */
export const MIN_LEASE_TTL_SECONDS = 2;
/** Longest TTL a lease may be granted with, in seconds (longer: INVALID_ARGUMENT). */
export const MAX_LEASE_TTL_SECONDS = 9_000_000;
/**
 * Lease ids are below 2^53: cairn carries uint64 fields as JavaScript numbers, exact only
 * up to Number.MAX_SAFE_INTEGER.
 */
export const MAX_LEASE_ID = Number.MAX_SAFE_INTEGER;

export interface Lease {
  readonly id: number;
  readonly ttlSeconds: number;
  /** The log index of its grant (an expire names it). */
  readonly grantedIndex: number;
  /** Attached keys by hex key. */
  readonly keys: ReadonlyMap<string, Buffer>;
}

/** The lease id as the 8-byte big-endian key of the `leases` sublevel. */
export function leaseKey(id: number): Buffer {
  const key = Buffer.alloc(8);
  key.writeBigUInt64BE(BigInt(id));
  return key;
}

/** A lease id as etcdctl prints it: lower-case hex, no prefix. */
export function formatLeaseId(id: number): string {
  return id.toString(16);
}

/** Parses a hex lease id (as printed by formatLeaseId); undefined when it is not one. */
export function parseLeaseId(text: string): number | undefined {
  if (!/^(0x)?[0-9a-fA-F]{1,14}$/.test(text)) return undefined;
  const id = parseInt(text.replace(/^0x/, ''), 16);
  return id >= 1 && id <= MAX_LEASE_ID ? id : undefined;
}

/** Throws when a snapshot's `leases` record is not one cairn writes. */
export function checkLeaseRecord(key: Buffer, value: Uint8Array): void {
  const record = LeaseRecord.decode(value);
  if (key.length !== 8 || !leaseKey(record.id).equals(key)) throw new Error(`lease record under key ${key.toString('hex')} names lease ${record.id}`);
}

function toLease(record: LeaseRecord): Lease {
  const keys = new Map<string, Buffer>();
  for (const key of record.keys) keys.set(Buffer.from(key).toString('hex'), Buffer.from(key));
  return { id: record.id, ttlSeconds: record.ttlSeconds, grantedIndex: record.grantedIndex, keys };
}

function toRecord(lease: Lease): LeaseRecord {
  // Sorted, so every replica writes the same bytes whatever order the keys came in.
  const keys = [...lease.keys.keys()].sort().map((name) => lease.keys.get(name)!);
  return { id: lease.id, ttlSeconds: lease.ttlSeconds, keys, grantedIndex: lease.grantedIndex };
}

/** The lease table as of the applied index. */
export class LeaseTable {
  private constructor(
    private readonly leases: Map<number, Lease>,
    /** Bytes of all attached keys (bounded by MAX_LEASED_KEY_BYTES). */
    public keyBytes: number,
  ) {}

  static async load(db: Db): Promise<LeaseTable> {
    const leases = new Map<number, Lease>();
    let keyBytes = 0;
    for await (const [, value] of db.entries('leases')) {
      const lease = toLease(LeaseRecord.decode(value));
      leases.set(lease.id, lease);
      for (const key of lease.keys.values()) keyBytes += key.length;
    }
    return new LeaseTable(leases, keyBytes);
  }

  get(id: number): Lease | undefined {
    return this.leases.get(id);
  }

  ids(): number[] {
    return [...this.leases.keys()].sort((a, b) => a - b);
  }

  get size(): number {
    return this.leases.size;
  }

  /** Makes a batch's changes current (after its write reached LevelDB). */
  commit(changes: ReadonlyMap<number, Lease | null>, keyBytesDelta: number): void {
    this.keyBytes += keyBytesDelta;
    for (const [id, lease] of changes) {
      if (lease) this.leases.set(id, lease);
      else this.leases.delete(id);
    }
  }
}

/** A refusal inside apply, the same on every replica. */
export interface LeaseRefusal {
  code: ErrorCode;
  message: string;
}

/** One apply batch's changes to the lease table, with reads that see them. */
export class LeaseBatch {
  private readonly changes = new Map<number, Lease | null>();
  private keyBytesDelta = 0;

  constructor(private readonly table: LeaseTable) {}

  get(id: number): Lease | undefined {
    const staged = this.changes.get(id);
    return staged === null ? undefined : (staged ?? this.table.get(id));
  }

  private count(): number {
    let count = this.table.size;
    for (const [id, lease] of this.changes) {
      const stored = this.table.get(id) !== undefined;
      if (lease && !stored) count++;
      else if (!lease && stored) count--;
    }
    return count;
  }

  grant(id: number, ttlSeconds: number, grantedIndex: number): LeaseRefusal | undefined {
    if (this.get(id)) return { code: ErrorCode.LEASE_EXISTS, message: `lease ${formatLeaseId(id)} exists already` };
    if (this.count() >= MAX_LEASES) return { code: ErrorCode.LEASE_LIMIT, message: `the cluster holds MAX_LEASES ${MAX_LEASES} leases already: revoke some first` };
    this.changes.set(id, { id, ttlSeconds, grantedIndex, keys: new Map() });
    return undefined;
  }

  remove(id: number): void {
    assert(this.get(id) !== undefined, () => `removing lease ${id}, which does not exist`);
    this.changes.set(id, null);
  }

  /** Why `extra` more keys, of `extraBytes` bytes, could not be attached to lease `id`, if they could not. */
  refuseAttach(id: number, extra: number, extraBytes: number): LeaseRefusal | undefined {
    const lease = this.get(id);
    if (!lease) return { code: ErrorCode.LEASE_NOT_FOUND, message: `lease ${formatLeaseId(id)} does not exist (never granted, or revoked or expired)` };
    if (lease.keys.size + extra > MAX_KEYS_PER_LEASE) {
      return { code: ErrorCode.LEASE_LIMIT, message: `lease ${formatLeaseId(id)} has ${lease.keys.size} keys: attaching ${extra} more passes MAX_KEYS_PER_LEASE ${MAX_KEYS_PER_LEASE}` };
    }
    const keyBytes = this.table.keyBytes + this.keyBytesDelta;
    if (keyBytes + extraBytes > MAX_LEASED_KEY_BYTES) {
      return { code: ErrorCode.LEASE_LIMIT, message: `keys attached to leases hold ${keyBytes} bytes: attaching ${extraBytes} more passes MAX_LEASED_KEY_BYTES ${MAX_LEASED_KEY_BYTES}` };
    }
    return undefined;
  }

  /** A key's record changes from lease `from` to lease `to` (0: none; the record may be gone). */
  moveKey(key: Buffer, from: number, to: number): void {
    const name = key.toString('hex');
    if (from !== 0 && from !== to) {
      const lease = this.get(from);
      assert(lease !== undefined && lease.keys.has(name), () => `key ${name} names lease ${from}, which does not list it`);
      const keys = new Map(lease.keys);
      keys.delete(name);
      this.keyBytesDelta -= key.length;
      this.changes.set(from, { ...lease, keys });
    }
    if (to !== 0 && !this.get(to)?.keys.has(name)) {
      const lease = this.get(to);
      assert(lease !== undefined, () => `attaching key ${name} to lease ${to}, which does not exist`);
      const keys = new Map(lease.keys);
      keys.set(name, Buffer.from(key));
      this.keyBytesDelta += key.length;
      this.changes.set(to, { ...lease, keys });
    }
  }

  hasChanges(): boolean {
    return this.changes.size > 0;
  }

  ops(): DbOp[] {
    const ops: DbOp[] = [];
    for (const [id, lease] of this.changes) {
      ops.push(lease ? { type: 'put', sublevel: 'leases', key: leaseKey(id), value: encodeMessage(LeaseRecord, toRecord(lease)) } : { type: 'del', sublevel: 'leases', key: leaseKey(id) });
    }
    return ops;
  }

  /** After the batch's write: the table takes the changes. */
  commit(): void {
    this.table.commit(this.changes, this.keyBytesDelta);
  }
}

/** What applying a lease command needs of the apply batch. */
export interface LeaseApplyState {
  readonly leases: LeaseBatch;
  revision: number;
  read(key: Buffer): Promise<KeyRecord | undefined>;
  /** Writes a key's record (null: deletes it), moving it between leases as its record says. */
  write(key: Buffer, record: KeyRecord | null): void;
  /** With auth on: why the command's user may not delete these keys, if it may not. */
  refuseKeyWrites(keys: readonly Buffer[]): CommandResult | undefined;
}

export type LeaseOp = Extract<NonNullable<Command['op']>, { $case: 'leaseGrant' | 'leaseRevoke' | 'leaseExpire' }>;

export function isLeaseOp(op: Command['op']): op is LeaseOp {
  return op?.$case === 'leaseGrant' || op?.$case === 'leaseRevoke' || op?.$case === 'leaseExpire';
}

/** Applies a grant, revoke or expire: a revoke or expire deletes all the lease's keys at one revision. */
export async function applyLeaseOp(op: LeaseOp, index: number, state: LeaseApplyState): Promise<CommandResult> {
  switch (op.$case) {
    case 'leaseGrant': {
      const { id, ttl } = op.value;
      const refused = state.leases.grant(id, ttl, index);
      if (refused) return { revision: state.revision, op: undefined, error: refused };
      return { revision: state.revision, op: { $case: 'leaseGrant', value: { header: undefined, id, ttl } } };
    }
    case 'leaseRevoke': {
      const lease = state.leases.get(op.value.id);
      if (!lease) return { revision: state.revision, op: undefined, error: { code: ErrorCode.LEASE_NOT_FOUND, message: `lease ${formatLeaseId(op.value.id)} does not exist (never granted, or revoked or expired)` } };
      const denied = state.refuseKeyWrites([...lease.keys.values()]);
      if (denied) return denied;
      const deleted = await deleteLease(lease, state);
      return { revision: state.revision, op: { $case: 'leaseRevoke', value: { header: undefined, deleted } } };
    }
    case 'leaseExpire': {
      // The leader proposed it once the deadline passed. A lease revoked meanwhile is simply
      // gone; one granted again under the same id since is another lease, and stays.
      const lease = state.leases.get(op.value.id);
      const deleted = lease && lease.grantedIndex === op.value.grantedIndex ? await deleteLease(lease, state) : 0;
      return { revision: state.revision, op: { $case: 'leaseExpire', value: { header: undefined, deleted } } };
    }
  }
}

async function deleteLease(lease: Lease, state: LeaseApplyState): Promise<number> {
  const keys = [...lease.keys.values()];
  if (keys.length > 0) state.revision++;
  for (const key of keys) {
    const record = await state.read(key);
    assert(record?.lease === lease.id, () => `lease ${lease.id} lists key ${key.toString('hex')}, whose record names lease ${record?.lease}`);
    state.write(key, null);
  }
  state.leases.remove(lease.id);
  return keys.length;
}

/** Why a Txn's puts could not attach their keys, if any could not (checked before it runs, on both branches). */
export function refuseTxnLeases(puts: readonly { key: Buffer; lease?: number }[], leases: LeaseBatch): LeaseRefusal | undefined {
  const perLease = new Map<number, { count: number; bytes: number }>();
  for (const { key, lease } of puts) {
    if (!lease) continue;
    const sum = perLease.get(lease) ?? { count: 0, bytes: 0 };
    perLease.set(lease, { count: sum.count + 1, bytes: sum.bytes + key.length });
  }
  for (const [id, { count, bytes }] of perLease) {
    const refused = leases.refuseAttach(id, count, bytes);
    if (refused) return refused;
  }
  return undefined;
}
