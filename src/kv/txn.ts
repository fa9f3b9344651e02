import {
  Compare,
  CompareResult,
  CompareTarget,
  DeleteRequest,
  DeleteResponse,
  KeyValue,
  PutRequest,
  PutResponse,
  RangeRequest,
  RangeResponse,
  RequestOp,
  ResponseOp,
  TxnRequest,
  TxnResponse,
} from '../../gen/cairn/kv/v1/kv';
import { KeyRecord } from '../../gen/cairn/storage/v1/storage';
import { assert } from '../assert';
import { prefixEnd } from './auth-state';

/**
 * Transactions (KV.Txn): compares, then one branch of puts, deletes and ranges, applied
 * inside one log entry. Everything here runs inside apply, on every replica alike, so its
 * bounds are constants, not flags: they shape the replicated results.
 */

/**
 * Most compares, and most operations in each branch, of one Txn (etcd's --max-txn-ops
 * default). A nested txn counts in the branch holding it as one operation plus all of its
 * own compares and operations (both branches, every level below), so no path through a
 * txn tree writes more than MAX_TXN_OPS keys, as for a flat txn.
 */
export const MAX_TXN_OPS = 128;
/** Most levels of txns nested in one another (request_txn), the outermost being level 1. */
export const MAX_TXN_DEPTH = 4;
/** Most keys one range inside a Txn returns (its limit 0 means this). */
export const MAX_TXN_RANGE_KEYS = 1000;
/**
 * Budget for the keys and values all ranges of one Txn return (each entry also counted
 * with TXN_RANGE_ENTRY_OVERHEAD_BYTES): a range stops before the entry that would go over it
 * and sets `more`. A Txn's result is kept in its client session, so this bounds what one
 * answer holds there; the first entry of each range is returned whatever its size.
 */
export const MAX_TXN_READ_BYTES = 512 * 1024;
/** What one KeyValue adds to a response beyond its key and value. */
export const TXN_RANGE_ENTRY_OVERHEAD_BYTES = 64;
/**
 * Most stored or staged entries all ranges of one Txn look at (live ones, and those the
 * batch's writes deleted): bounds a Txn's apply work whatever the earlier entries of its
 * batch wrote. Past it a range stops with `more`.
 */
export const MAX_TXN_RANGE_SCAN_ENTRIES = 4 * MAX_TXN_RANGE_KEYS;

/**
 * What is left of one Txn's read budget. `firstEntryFree`: the Txn's first range entry is
 * returned whatever its size (a value may be larger than the budget), once per Txn.
 */
export interface TxnBudget {
  bytes: number;
  scanEntries: number;
  firstEntryFree: boolean;
}

/** What a Txn needs of the state as its batch leaves it (its own earlier writes included). */
export interface TxnState {
  read(key: Buffer): Promise<KeyRecord | undefined>;
  /**
   * Keys in [start, end) (end undefined: to the end), in order, at most `limit`, with `more`;
   * it looks at no more than `budget.scanEntries` stored or staged entries (and takes them
   * off), stopping with `more` when they run out.
   */
  range(start: Buffer, end: Buffer | undefined, limit: number, budget: TxnBudget): Promise<{ entries: [Buffer, KeyRecord][]; more: boolean }>;
  /** Writes `record` under `key` (null deletes it). */
  write(key: Buffer, record: KeyRecord | null): void;
}

/**
 * The keys [start, end) a range request names (end undefined: to the end of the key space):
 * with `prefix`, those starting with `key` (all keys for an empty one); with no range_end,
 * the one key; a range_end of one 0x00 byte, everything from `key` on. The server validates
 * requests with the same reading (src/server/validate.ts).
 */
export function rangeBounds(request: Pick<RangeRequest, 'key' | 'rangeEnd' | 'prefix'>): { start: Buffer; end: Buffer | undefined } {
  const start = Buffer.from(request.key);
  if (request.prefix) return { start, end: start.length === 0 ? undefined : prefixEnd(start) };
  if (request.rangeEnd.length === 0) return { start, end: Buffer.concat([start, Buffer.from([0])]) };
  if (request.rangeEnd.length === 1 && request.rangeEnd[0] === 0) return { start, end: undefined };
  return { start, end: Buffer.from(request.rangeEnd) };
}

/** Whether `compare` holds for the key's record (undefined: the key does not exist). */
export function compareHolds(compare: Compare, record: KeyRecord | undefined): boolean {
  const given = compare.targetUnion;
  let order: number;
  switch (compare.target) {
    case CompareTarget.COMPARE_TARGET_VALUE:
      // As in etcd: a value compare on a key that does not exist is false.
      if (!record) return false;
      order = Buffer.compare(Buffer.from(record.value), given?.$case === 'value' ? given.value : Buffer.alloc(0));
      break;
    case CompareTarget.COMPARE_TARGET_VERSION:
      order = Math.sign((record?.version ?? 0) - (given?.$case === 'version' ? given.value : 0));
      break;
    case CompareTarget.COMPARE_TARGET_CREATE_REVISION:
      order = Math.sign((record?.createRevision ?? 0) - (given?.$case === 'createRevision' ? given.value : 0));
      break;
    case CompareTarget.COMPARE_TARGET_MOD_REVISION:
      order = Math.sign((record?.modRevision ?? 0) - (given?.$case === 'modRevision' ? given.value : 0));
      break;
    default:
      // Validated before proposing; an unknown target in the log holds on no replica.
      return false;
  }
  switch (compare.result) {
    case CompareResult.COMPARE_RESULT_EQUAL:
      return order === 0;
    case CompareResult.COMPARE_RESULT_NOT_EQUAL:
      return order !== 0;
    case CompareResult.COMPARE_RESULT_LESS:
      return order < 0;
    case CompareResult.COMPARE_RESULT_GREATER:
      return order > 0;
    default:
      return false;
  }
}

/**
 * Runs a Txn against `state`, the store being at `revision`: its writes all get one
 * revision, the next, taken at its first write that changes anything (a delete of a key
 * that does not exist changes nothing), nested txns' writes included. Returns the response
 * and the store's revision after.
 */
export async function runTxn(request: TxnRequest, state: TxnState, revision: number): Promise<{ response: TxnResponse; revision: number }> {
  let writeRevision: number | undefined;
  const revisionForWrite = () => (writeRevision ??= revision + 1);
  // One budget for the whole tree: nesting buys no extra reads.
  const budget: TxnBudget = { bytes: MAX_TXN_READ_BYTES, scanEntries: MAX_TXN_RANGE_SCAN_ENTRIES, firstEntryFree: true };
  const response = await runLevel(request, state, revisionForWrite, budget, 1);
  return { response, revision: writeRevision ?? revision };
}

/**
 * One level of a txn tree: its compares against the state as everything before it left it,
 * then its chosen branch. `depth` (the outermost being 1) is bounded by validation; the
 * assertion keeps the recursion bounded whatever reached the log.
 */
async function runLevel(request: TxnRequest, state: TxnState, revisionForWrite: () => number, budget: TxnBudget, depth: number): Promise<TxnResponse> {
  assert(depth <= MAX_TXN_DEPTH, () => `a txn nested ${depth} levels deep, over MAX_TXN_DEPTH ${MAX_TXN_DEPTH}`);
  let succeeded = true;
  for (const compare of request.compare) {
    if (!compareHolds(compare, await state.read(compare.key))) {
      succeeded = false;
      break;
    }
  }
  const responses: ResponseOp[] = [];
  for (const op of succeeded ? request.success : request.failure) responses.push(await runOp(op, state, revisionForWrite, budget, depth));
  return { header: undefined, succeeded, responses };
}

async function runOp(op: RequestOp, state: TxnState, revisionForWrite: () => number, budget: TxnBudget, depth: number): Promise<ResponseOp> {
  const request = op.request;
  switch (request?.$case) {
    case 'requestPut':
      return { response: { $case: 'responsePut', value: await put(request.value, state, revisionForWrite) } };
    case 'requestDelete':
      return { response: { $case: 'responseDelete', value: await del(request.value, state, revisionForWrite) } };
    case 'requestRange':
      return { response: { $case: 'responseRange', value: await range(request.value, state, budget) } };
    case 'requestTxn':
      return { response: { $case: 'responseTxn', value: await runLevel(request.value, state, revisionForWrite, budget, depth + 1) } };
    default:
      // Validated before proposing: an empty op in the log does nothing on every replica.
      return { response: undefined };
  }
}

/** The record a put of `value` at `revision` leaves, over the key's `previous` one. */
export function putRecord(previous: KeyRecord | undefined, value: Buffer, revision: number, lease = 0): KeyRecord {
  // No lease is no field at all, so records without leases keep the bytes they always had.
  const record: KeyRecord = { value, createRevision: previous ? previous.createRevision : revision, modRevision: revision, version: previous ? previous.version + 1 : 1 };
  if (lease !== 0) record.lease = lease;
  return record;
}

async function put(request: PutRequest, state: TxnState, revisionForWrite: () => number): Promise<PutResponse> {
  const previous = await state.read(request.key);
  state.write(request.key, putRecord(previous, request.value, revisionForWrite(), request.lease ?? 0));
  // prev_kv is refused inside a txn (validateTxn): a range before the write reads the old value.
  return { header: undefined, prevKv: undefined };
}

async function del(request: DeleteRequest, state: TxnState, revisionForWrite: () => number): Promise<DeleteResponse> {
  const previous = await state.read(request.key);
  if (previous) {
    revisionForWrite();
    state.write(request.key, null);
  }
  return { header: undefined, deleted: !!previous, prevKv: undefined };
}

async function range(request: RangeRequest, state: TxnState, budget: TxnBudget): Promise<RangeResponse> {
  const { start, end } = rangeBounds(request);
  const limit = request.limit === 0 ? MAX_TXN_RANGE_KEYS : Math.min(request.limit, MAX_TXN_RANGE_KEYS);
  // Nothing left to give: not even a read (its answer could not be returned).
  if (budget.bytes <= 0 && !budget.firstEntryFree) return { header: undefined, kvs: [], more: true };
  const read = await state.range(start, end, limit, budget);
  const kvs: KeyValue[] = [];
  let more = read.more;
  for (const [key, record] of read.entries) {
    const kv = keyValue(key, record, request.keysOnly);
    const bytes = kv.key.length + kv.value.length + TXN_RANGE_ENTRY_OVERHEAD_BYTES;
    if (bytes > budget.bytes && !budget.firstEntryFree) {
      more = true;
      break;
    }
    budget.firstEntryFree = false;
    budget.bytes -= bytes;
    kvs.push(kv);
  }
  return { header: undefined, kvs, more };
}

function keyValue(key: Buffer, record: KeyRecord, keysOnly: boolean): KeyValue {
  return { key, value: keysOnly ? Buffer.alloc(0) : Buffer.from(record.value), createRevision: record.createRevision, modRevision: record.modRevision, version: record.version, ...(record.lease ? { lease: record.lease } : {}) };
}

/** Every level of a txn tree, the outermost first (each level's both branches). */
export function txnLevels(request: TxnRequest): TxnRequest[] {
  const levels: TxnRequest[] = [];
  // Depth-first, with a stack rather than recursion (validation bounds depth and size alike).
  const pending = [request];
  for (let level = pending.pop(); level !== undefined; level = pending.pop()) {
    levels.push(level);
    const nested: TxnRequest[] = [];
    for (const op of [...level.success, ...level.failure]) if (op.request?.$case === 'requestTxn') nested.push(op.request.value);
    pending.push(...nested.reverse());
  }
  return levels;
}

/** The operations of every branch at every level of a txn tree (nested txns themselves included). */
function txnOps(request: TxnRequest): RequestOp[] {
  return txnLevels(request).flatMap((level) => [...level.success, ...level.failure]);
}

/** The puts of a Txn, in both branches at every level (their leases are checked before it runs). */
export function txnPuts(request: TxnRequest): PutRequest[] {
  const puts: PutRequest[] = [];
  for (const op of txnOps(request)) if (op.request?.$case === 'requestPut') puts.push(op.request.value);
  return puts;
}

/** The keys a Txn's compares and writes name, in both branches at every level (for prefetching). */
export function txnPointKeys(request: TxnRequest): Buffer[] {
  const keys = txnLevels(request).flatMap((level) => level.compare.map((c) => c.key));
  for (const op of txnOps(request)) {
    const r = op.request;
    if (r?.$case === 'requestPut' || r?.$case === 'requestDelete') keys.push(r.value.key);
  }
  return keys;
}

/**
 * Everything a Txn may touch, in both branches at every level of nesting, as the
 * permissions it needs: reads (compares and ranges; prev_kv is refused inside a txn) and
 * writes. Every branch counts, so whether the compares hold reveals nothing a caller may
 * not read.
 */
export function txnAccesses(request: TxnRequest): { reads: { start: Buffer; end: Buffer | undefined }[]; writes: Buffer[] } {
  // A read's end undefined is the end of the key space, so one key reads as [key, key + 0x00).
  const oneKey = (key: Buffer) => ({ start: key, end: Buffer.concat([key, Buffer.from([0])]) });
  const reads: { start: Buffer; end: Buffer | undefined }[] = txnLevels(request).flatMap((level) => level.compare.map((c) => oneKey(c.key)));
  const writes: Buffer[] = [];
  for (const op of txnOps(request)) {
    const r = op.request;
    if (r?.$case === 'requestRange') reads.push(rangeBounds(r.value));
    else if (r?.$case === 'requestPut' || r?.$case === 'requestDelete') writes.push(r.value.key);
  }
  return { reads, writes };
}

/** The batch's own writes, by hex key name (hex order is byte order), kept in order. */
export interface StagedWrites {
  /** Sorted hex names of every key the batch wrote. */
  names: readonly string[];
  get(name: string): KeyRecord | null | undefined;
}

/** The index of the first name >= `name` in sorted `names`. */
export function lowerBound(names: readonly string[], name: string): number {
  let low = 0;
  let high = names.length;
  while (low < high) {
    const mid = (low + high) >>> 1;
    if (names[mid]! < name) low = mid + 1;
    else high = mid;
  }
  return low;
}

/**
 * Keys in [start, end) as the batch leaves them: the stored ones (`stored`, in key order)
 * merged with the batch's writes (a staged record replaces a stored one; null deletes it),
 * up to `limit`, looking at no more than `budget.scanEntries` candidates. `more` is exact
 * while the scan budget lasts: the next live entry is looked for before saying there is one.
 */
export async function mergeRange(
  stored: AsyncIterator<[Buffer, Buffer]>,
  staged: StagedWrites,
  start: Buffer,
  end: Buffer | undefined,
  limit: number,
  budget: { scanEntries: number },
): Promise<{ entries: [Buffer, KeyRecord][]; more: boolean }> {
  const endName = end === undefined ? undefined : end.toString('hex');
  let i = lowerBound(staged.names, start.toString('hex'));
  let next = await stored.next();
  const entries: [Buffer, KeyRecord][] = [];
  for (;;) {
    const stagedName = i < staged.names.length && (endName === undefined || staged.names[i]! < endName) ? staged.names[i]! : undefined;
    const storedName = next.done ? undefined : next.value[0].toString('hex');
    if (stagedName === undefined && storedName === undefined) return { entries, more: false };
    if (budget.scanEntries <= 0) return { entries, more: true };
    budget.scanEntries--;
    let candidate: [Buffer, KeyRecord] | undefined;
    if (stagedName !== undefined && (storedName === undefined || stagedName <= storedName)) {
      const record = staged.get(stagedName);
      if (record) candidate = [Buffer.from(stagedName, 'hex'), record];
      i++;
      if (storedName === stagedName) next = await stored.next();
    } else {
      candidate = [Buffer.from(next.value![0]), KeyRecord.decode(next.value![1])];
      next = await stored.next();
    }
    if (!candidate) continue;
    if (entries.length === limit) return { entries, more: true };
    entries.push(candidate);
  }
}
