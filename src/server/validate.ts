import { Command, Consistency, DeleteRequest, GetRequest, PutRequest, RangeRequest } from '../../gen/cairn/kv/v1/kv';
import { CairnError, ErrorCode } from '../errors';
import { Limits } from './config';
import { MAX_AUTH_NAME_BYTES } from '../kv/auth-state';

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
    case 'auth':
      // Names and bounds are checked where it applies, alike on every replica.
      break;
    default:
      invalid('forwarded command has no operation');
  }
  if (command.authUser !== undefined && Buffer.byteLength(command.authUser) > MAX_AUTH_NAME_BYTES) {
    invalid(`forwarded command's auth_user is over MAX_AUTH_NAME_BYTES ${MAX_AUTH_NAME_BYTES}`);
  }
  return command;
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
  if (request.prefix) {
    if (request.rangeEnd.length > 0) invalid('range_end must be empty when prefix is set');
    const end = request.key.length === 0 ? undefined : prefixEnd(request.key);
    return { start: request.key, end: end && end.length === 1 && end[0] === 0 ? undefined : end, limit };
  }
  const toEnd = request.rangeEnd.length === 1 && request.rangeEnd[0] === 0;
  if (request.rangeEnd.length === 0) {
    checkKey(request.key, limits);
    return { start: request.key, end: Buffer.concat([request.key, Buffer.from([0])]), limit };
  }
  if (toEnd) return { start: request.key, end: undefined, limit };
  if (Buffer.compare(request.rangeEnd, request.key) <= 0) invalid('range_end must sort after key (or be a single 0x00 byte for "to the end")');
  return { start: request.key, end: request.rangeEnd, limit };
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
