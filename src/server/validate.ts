import { MAX_LEASE_ID, MAX_LEASE_TTL_SECONDS } from '../kv/leases';
import { Command, Compare, CompareResult, CompareTarget, Consistency, DeleteRequest, GetRequest, PutRequest, RangeRequest, RequestOp, TxnRequest } from '../../gen/cairn/kv/v1/kv';
import { CairnError, ErrorCode } from '../errors';
import { Limits } from './config';
import { MAX_AUTH_NAME_BYTES } from '../kv/auth-state';
import { MAX_TXN_DEPTH, MAX_TXN_OPS, MAX_TXN_RANGE_KEYS, rangeBounds } from '../kv/txn';
import { describeKey } from '../kv/state-machine';

/** Request checks: each failure is INVALID_ARGUMENT with a message naming the problem. */
function invalid(message: string): never {
  throw new CairnError(ErrorCode.INVALID_ARGUMENT, message);
}

function checkKey(key: Uint8Array | undefined, limits: Limits, field = 'key'): void {
  if (!key || key.length === 0) invalid(`${field} is empty`);
  if (key.length > limits.maxKeyBytes) invalid(`${field} is ${key.length} bytes, over the limit of ${limits.maxKeyBytes} (--max-key-bytes)`);
}

function checkSession(request: { clientId: string; sequence: number; lowestUnansweredSequence: number }, limits: Limits): void {
  const idBytes = Buffer.byteLength(request.clientId);
  if (idBytes > limits.maxClientIdBytes) invalid(`client_id is ${idBytes} bytes, over the limit of ${limits.maxClientIdBytes}`);
  if (request.clientId !== '' && request.sequence < 1) invalid('sequence must be >= 1 when client_id is set');
  if (request.clientId === '' && request.sequence !== 0) invalid('sequence needs a client_id');
  if (request.clientId === '' && request.lowestUnansweredSequence !== 0) invalid('lowest_unanswered_sequence needs a client_id');
  if (request.lowestUnansweredSequence > request.sequence) {
    invalid(`lowest_unanswered_sequence ${request.lowestUnansweredSequence} is above sequence ${request.sequence}: this write itself is unanswered`);
  }
}

function checkRequestSize(bytes: number, limits: Limits): void {
  if (bytes > limits.maxRequestBytes) invalid(`request is ${bytes} bytes, over the limit of ${limits.maxRequestBytes} (--max-request-bytes)`);
}

function checkConsistency(consistency: Consistency): void {
  if (consistency === Consistency.UNRECOGNIZED || !(consistency in Consistency)) invalid(`unknown consistency ${consistency}`);
}

export function validatePut(request: PutRequest, limits: Limits): void {
  checkKey(request.key, limits);
  if (request.value.length > limits.maxValueBytes) {
    invalid(`value is ${request.value.length} bytes, over the limit of ${limits.maxValueBytes} (--max-value-bytes)`);
  }
  checkSession(request, limits);
  if (request.lease) validateLeaseId(request.lease);
  checkRequestSize(request.key.length + request.value.length + Buffer.byteLength(request.clientId), limits);
}

export function validateDelete(request: DeleteRequest, limits: Limits): void {
  checkKey(request.key, limits);
  checkSession(request, limits);
}

/**
 * What a forwarded command's encoding may add to the request bytes that --max-request-bytes
 * counts (field tags, lengths, sequence numbers): unknown fields beyond it are refused,
 * since the leader logs the bytes as sent.
 */
export const MAX_COMMAND_ENVELOPE_BYTES = 1024;

/**
 * A write forwarded by a follower: `encoded` is what the leader will put in its log, so it is
 * held to the same limits as a client's write (the follower may run another version, or be a
 * stranger on the peer port).
 */
export function validateCommand(encoded: Uint8Array, limits: Limits): Command {
  const maxEncodedBytes = limits.maxRequestBytes + MAX_COMMAND_ENVELOPE_BYTES;
  if (encoded.length > maxEncodedBytes) {
    invalid(`forwarded command is ${encoded.length} bytes, over the limit of ${maxEncodedBytes} (--max-request-bytes + ${MAX_COMMAND_ENVELOPE_BYTES})`);
  }
  let command: Command;
  try {
    command = Command.decode(encoded);
  } catch (err) {
    invalid(`forwarded command does not decode: ${(err as Error).message}`);
  }
  switch (command.op?.$case) {
    case 'put':
      validatePut(command.op.value, limits);
      break;
    case 'delete':
      validateDelete(command.op.value, limits);
      break;
    case 'txn':
      validateTxn(command.op.value, limits);
      break;
    case 'compact':
    case 'auth':
      // Names and bounds are checked where it applies, alike on every replica.
      break;
    case 'leaseGrant':
      validateLeaseGrant(command.op.value);
      if (command.op.value.id === 0) invalid('forwarded lease grant has no id (the receiving node chooses it)');
      break;
    case 'leaseRevoke':
      validateLeaseId(command.op.value.id);
      break;
    case 'leaseExpire':
      // Expiry is the leader's decision alone (src/kv/lease-keeper.ts): never forwarded.
      invalid('a lease expire command is proposed by the leader only, never forwarded');
      break;
    default:
      invalid('forwarded command has no operation');
  }
  if (command.authUser !== undefined && Buffer.byteLength(command.authUser) > MAX_AUTH_NAME_BYTES) {
    invalid(`forwarded command's auth_user is over MAX_AUTH_NAME_BYTES ${MAX_AUTH_NAME_BYTES}`);
  }
  return command;
}

/**
 * A Txn: at most MAX_TXN_OPS compares and operations per branch (a nested txn counting with
 * all it holds), at most MAX_TXN_DEPTH levels, each compare and operation checked as its own
 * request would be (with its position in the message), no key written twice on any path
 * through the tree, the session on the outermost TxnRequest only, and all its keys and
 * values within --max-request-bytes.
 */
export function validateTxn(request: TxnRequest, limits: Limits): void {
  checkSession(request, limits);
  checkTxnShape(request);
  checkTxnLevel(request, '', limits, new Map());
  // Its whole encoding, not only its keys and values: 384 compares and operations carry
  // kilobytes of tags and lengths, and a follower forwards the encoding to the leader.
  checkRequestSize(TxnRequest.encode(request).finish().length, limits);
}

/**
 * The tree's size and depth, before anything walks it in full: each list within
 * MAX_TXN_OPS entries, each branch's weight (see branchWeight) too, and no txn nested
 * deeper than MAX_TXN_DEPTH.
 */
function checkTxnShape(request: TxnRequest): void {
  for (const [field, list] of [['compare', request.compare], ['success', request.success], ['failure', request.failure]] as const) {
    if (list.length > MAX_TXN_OPS) invalid(`${field} has ${list.length} entries, over the limit of ${MAX_TXN_OPS} (MAX_TXN_OPS)`);
  }
  for (const [field, ops] of [['success', request.success], ['failure', request.failure]] as const) {
    if (branchWeight(ops, field, 1, MAX_TXN_OPS) > MAX_TXN_OPS) {
      invalid(`${field} has more than ${MAX_TXN_OPS} compares and operations counting those of its nested txns, over the limit of ${MAX_TXN_OPS} (MAX_TXN_OPS)`);
    }
  }
}

/**
 * How much of MAX_TXN_OPS the branch `ops` (at nesting level `depth`) takes: one per
 * operation, and for a nested txn its compares and both its branches' weights too. Counting
 * stops once past `cap`, so a huge tree costs no more than MAX_TXN_OPS steps to refuse.
 */
function branchWeight(ops: RequestOp[], where: string, depth: number, cap: number): number {
  let weight = 0;
  for (let i = 0; i < ops.length && weight <= cap; i++) {
    weight++;
    const request = ops[i]!.request;
    if (request?.$case !== 'requestTxn') continue;
    const at = `${where}[${i}].request_txn`;
    if (depth + 1 > MAX_TXN_DEPTH) invalid(`${at} is a txn nested ${depth + 1} levels deep, over the limit of ${MAX_TXN_DEPTH} (MAX_TXN_DEPTH, the outermost txn being level 1)`);
    const nested = request.value;
    weight += nested.compare.length;
    weight += branchWeight(nested.success, `${at}.success`, depth + 1, cap - weight);
    weight += branchWeight(nested.failure, `${at}.failure`, depth + 1, cap - weight);
  }
  return weight;
}

/**
 * Checks one level of a txn tree (`prefix`: its place in the message, '' for the outermost)
 * whose shape checkTxnShape passed. `written` maps each key some path may have written
 * before this level to where; returns that map grown by what either branch may write.
 */
function checkTxnLevel(request: TxnRequest, prefix: string, limits: Limits, written: ReadonlyMap<string, string>): Map<string, string> {
  request.compare.forEach((compare, i) => checkCompare(compare, `${prefix}compare[${i}]`, limits));
  const after = new Map(written);
  for (const [field, ops] of [['success', request.success], ['failure', request.failure]] as const) {
    // Only one branch runs: each starts from what was written before the level.
    const branch = new Map(written);
    ops.forEach((op, i) => checkTxnOp(op, `${prefix}${field}[${i}]`, limits, branch));
    for (const [name, where] of branch) if (!after.has(name)) after.set(name, where);
  }
  return after;
}

/** Checks one compare. */
function checkCompare(compare: Compare, where: string, limits: Limits): void {
  checkKey(compare.key, limits, `${where}.key`);
  if (!(compare.result in CompareResult) || compare.result === CompareResult.COMPARE_RESULT_UNSPECIFIED || compare.result === CompareResult.UNRECOGNIZED) {
    invalid(`${where}.result must be EQUAL, NOT_EQUAL, LESS or GREATER, got ${compare.result}`);
  }
  const expectedCase = {
    [CompareTarget.COMPARE_TARGET_VALUE]: 'value',
    [CompareTarget.COMPARE_TARGET_VERSION]: 'version',
    [CompareTarget.COMPARE_TARGET_CREATE_REVISION]: 'createRevision',
    [CompareTarget.COMPARE_TARGET_MOD_REVISION]: 'modRevision',
  }[compare.target as number];
  if (expectedCase === undefined) invalid(`${where}.target must be VALUE, VERSION, CREATE_REVISION or MOD_REVISION, got ${compare.target}`);
  const given = compare.targetUnion;
  if (given !== undefined && given.$case !== expectedCase) invalid(`${where}.target is ${CompareTarget[compare.target]} but the compare gives ${given.$case}`);
  if (given?.$case === 'value' && given.value.length > limits.maxValueBytes) {
    invalid(`${where}.value is ${given.value.length} bytes, over the limit of ${limits.maxValueBytes} (--max-value-bytes)`);
  }
}

/** Checks one operation of a branch; `written` (key name to where) grows by the keys it may write. */
function checkTxnOp(op: RequestOp, where: string, limits: Limits, written: Map<string, string>): void {
  const request = op.request;
  const noSession = (r: { clientId: string; sequence: number; lowestUnansweredSequence: number }, refusal = `${where}: session fields go on the TxnRequest, not on its operations`) => {
    if (r.clientId !== '' || r.sequence !== 0 || r.lowestUnansweredSequence !== 0) invalid(refusal);
  };
  // A Txn's answer is bounded by MAX_TXN_READ_BYTES, which ranges count and prev_kv could not.
  const noPrevKv = (r: { prevKv: boolean }) => {
    if (r.prevKv) invalid(`${where}.prev_kv is not taken inside a txn: put a request_range of the key before the write to read its old value`);
  };
  const writeOnce = (key: Buffer) => {
    const name = key.toString('hex');
    const first = written.get(name);
    if (first !== undefined) {
      invalid(`${where}.key ${describeKey(key)} is written twice on one path through the txn, first at ${first} (a txn may put or delete a key once per branch, nested txns included)`);
    }
    written.set(name, where);
  };
  switch (request?.$case) {
    case 'requestPut': {
      const put = request.value;
      checkKey(put.key, limits, `${where}.key`);
      if (put.value.length > limits.maxValueBytes) invalid(`${where}.value is ${put.value.length} bytes, over the limit of ${limits.maxValueBytes} (--max-value-bytes)`);
      noPrevKv(put);
      noSession(put);
      writeOnce(put.key);
      return;
    }
    case 'requestDelete':
      checkKey(request.value.key, limits, `${where}.key`);
      noPrevKv(request.value);
      noSession(request.value);
      writeOnce(request.value.key);
      return;
    case 'requestRange': {
      const range = request.value;
      if (range.consistency !== Consistency.CONSISTENCY_UNSPECIFIED) invalid(`${where}.consistency must be unset: a txn is linearizable`);
      if (range.key.length > limits.maxKeyBytes) invalid(`${where}.key is ${range.key.length} bytes, over the limit of ${limits.maxKeyBytes} (--max-key-bytes)`);
      if (range.limit > MAX_TXN_RANGE_KEYS) invalid(`${where}.limit ${range.limit} is over the limit of ${MAX_TXN_RANGE_KEYS} for a range inside a txn (MAX_TXN_RANGE_KEYS)`);
      if (range.limit > limits.maxRangeLimit) invalid(`${where}.limit ${range.limit} is over the limit of ${limits.maxRangeLimit} (--max-range-limit)`);
      checkRangeBounds(range, limits, `${where}.`);
      return;
    }
    case 'requestTxn': {
      const nested = request.value;
      // Exactly-once is the outermost request's: a nested txn's answer is part of its answer.
      noSession(nested, `${where}.request_txn: client_id, sequence and lowest_unanswered_sequence must be unset on a nested txn (the outermost TxnRequest carries the session)`);
      for (const [name, at] of checkTxnLevel(nested, `${where}.request_txn.`, limits, written)) written.set(name, at);
      return;
    }
    default:
      invalid(`${where} has no operation (request_put, request_delete, request_range or request_txn)`);
  }
}

export function validateGet(request: GetRequest, limits: Limits): void {
  checkKey(request.key, limits);
  checkConsistency(request.consistency);
}

/** The key range [start, end) a RangeRequest names; end undefined = to the end of the key space. */
export interface ResolvedRange {
  start: Buffer;
  end: Buffer | undefined;
  limit: number;
}

export function validateRange(request: RangeRequest, limits: Limits): ResolvedRange {
  checkConsistency(request.consistency);
  if (request.key.length > limits.maxKeyBytes) invalid(`key is ${request.key.length} bytes, over the limit of ${limits.maxKeyBytes} (--max-key-bytes)`);
  if (request.limit > limits.maxRangeLimit) invalid(`limit ${request.limit} is over the limit of ${limits.maxRangeLimit} (--max-range-limit)`);
  const limit = request.limit === 0 ? limits.maxRangeLimit : request.limit;
  checkRangeBounds(request, limits);
  return { ...rangeBounds(request), limit };
}

/** The checks on a range's key, range_end and prefix (the bounds are read by rangeBounds). */
function checkRangeBounds(request: Pick<RangeRequest, 'key' | 'rangeEnd' | 'prefix'>, limits: Limits, field = ''): void {
  if (request.prefix) {
    if (request.rangeEnd.length > 0) invalid(`${field}range_end must be empty when prefix is set`);
    return;
  }
  // A range_end may be one byte longer than a key: the key followed by 0x00.
  if (request.rangeEnd.length > limits.maxKeyBytes + 1) invalid(`${field}range_end is ${request.rangeEnd.length} bytes, over the limit of ${limits.maxKeyBytes + 1} (--max-key-bytes + 1)`);
  if (request.rangeEnd.length === 0) return checkKey(request.key, limits, `${field}key`);
  const toEnd = request.rangeEnd.length === 1 && request.rangeEnd[0] === 0;
  if (!toEnd && Buffer.compare(request.rangeEnd, request.key) <= 0) invalid(`${field}range_end must sort after key (or be a single 0x00 byte for "to the end")`);
}

/** The range_end that makes [prefix, range_end) the keys starting with `prefix`. */
export function prefixEnd(prefix: Uint8Array): Buffer {
  const end = Buffer.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i]! < 0xff) {
      end[i]! += 1;
      return end.subarray(0, i + 1);
    }
  }
  return Buffer.from([0]); // all 0xff: to the end
}

/** The longest peer or client address a member may have (HOST:PORT; DNS names are at most 253 bytes). */
export const MAX_MEMBER_ADDR_BYTES = 300;

/** Whether `addr` is HOST:PORT with a port 1-65535 (a bracketed IPv6 host is allowed). */
export function isHostPort(addr: string): boolean {
  const match = /^(\[[0-9A-Fa-f:.]+\]|[^:[\]/\s]+):(\d{1,5})$/.exec(addr);
  return match !== null && Number(match[2]) >= 1 && Number(match[2]) <= 65535;
}

function checkMemberId(id: number, field = 'id'): void {
  if (!Number.isSafeInteger(id) || id < 1) invalid(`${field} must be a member id >= 1, got ${id}`);
}

function checkAddr(addr: string, field: string, required: boolean): void {
  if (addr === '' && !required) return;
  if (addr === '') invalid(`${field} is empty: give HOST:PORT`);
  if (Buffer.byteLength(addr) > MAX_MEMBER_ADDR_BYTES) invalid(`${field} is over ${MAX_MEMBER_ADDR_BYTES} bytes`);
  if (!isHostPort(addr)) invalid(`${field} "${addr}" is not HOST:PORT (a port from 1 to 65535)`);
}

export function validateMemberAdd(request: { id: number; peerAddr: string; clientAddr: string }): void {
  checkMemberId(request.id);
  checkAddr(request.peerAddr, 'peer_addr', true);
  checkAddr(request.clientAddr, 'client_addr', false);
}

export function validateMemberId(request: { id: number }): void {
  checkMemberId(request.id);
}

/** to_id 0 means "the most caught-up voter". */
export function validateLeaderTransfer(request: { toId: number }): void {
  if (request.toId !== 0) checkMemberId(request.toId, 'to_id');
}

/** A lease grant: TTL within [1, MAX_LEASE_TTL_SECONDS] seconds, id 0 (choose one) or a valid id. */
export function validateLeaseGrant(request: { ttl: number; id: number }): void {
  if (!Number.isSafeInteger(request.ttl) || request.ttl < 1 || request.ttl > MAX_LEASE_TTL_SECONDS) {
    invalid(`lease ttl must be between 1 and MAX_LEASE_TTL_SECONDS ${MAX_LEASE_TTL_SECONDS} seconds, got ${request.ttl}`);
  }
  if (request.id !== 0) validateLeaseId(request.id);
}

export function validateLeaseId(id: number): void {
  if (!Number.isSafeInteger(id) || id < 1 || id > MAX_LEASE_ID) invalid(`lease id must be between 1 and 2^53 - 1, got ${id}`);
}
