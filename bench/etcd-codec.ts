/**
 * The few etcd v3 gRPC messages the benchmark sends, encoded by hand on the protobuf wire
 * (@bufbuild/protobuf/wire). Field numbers are etcd's api/etcdserverpb/rpc.proto and
 * api/mvccpb/kv.proto (checked against etcd-io/etcd): only the fields used here.
 * Decoders skip fields they do not know, as protobuf requires.
 */
import { BinaryReader, BinaryWriter, WireType } from '@bufbuild/protobuf/wire';

export const ETCD_PUT_PATH = '/etcdserverpb.KV/Put';
export const ETCD_RANGE_PATH = '/etcdserverpb.KV/Range';
export const ETCD_STATUS_PATH = '/etcdserverpb.Maintenance/Status';

export interface EtcdPutRequest {
  key: Uint8Array;
  value: Uint8Array;
}

export interface EtcdRangeRequest {
  key: Uint8Array;
  serializable: boolean;
}

export interface EtcdResponseHeader {
  clusterId: bigint;
  memberId: bigint;
  revision: bigint;
  raftTerm: bigint;
}

export interface EtcdKeyValue {
  key: Uint8Array;
  createRevision: bigint;
  modRevision: bigint;
  version: bigint;
  value: Uint8Array;
}

export interface EtcdRangeResponse {
  header?: EtcdResponseHeader;
  kvs: EtcdKeyValue[];
  more: boolean;
  count: bigint;
}

export interface EtcdPutResponse {
  header?: EtcdResponseHeader;
}

export interface EtcdStatusResponse {
  header?: EtcdResponseHeader;
  version: string;
  leader: bigint;
  raftIndex: bigint;
  raftTerm: bigint;
}

// PutRequest: key = 1, value = 2 (lease = 3 and prev_kv = 4 stay unset).
export function encodePutRequest(req: EtcdPutRequest): Buffer {
  const w = new BinaryWriter();
  if (req.key.length) w.tag(1, WireType.LengthDelimited).bytes(req.key);
  if (req.value.length) w.tag(2, WireType.LengthDelimited).bytes(req.value);
  return Buffer.from(w.finish());
}

// RangeRequest: key = 1, serializable = 7 (no range_end: one key).
export function encodeRangeRequest(req: EtcdRangeRequest): Buffer {
  const w = new BinaryWriter();
  if (req.key.length) w.tag(1, WireType.LengthDelimited).bytes(req.key);
  if (req.serializable) w.tag(7, WireType.Varint).bool(true);
  return Buffer.from(w.finish());
}

export function encodeStatusRequest(): Buffer {
  return Buffer.alloc(0);
}

/** Calls `field` for every field of one message; `field` returns false to have it skipped. */
function readFields(reader: BinaryReader, end: number, field: (fieldNo: number, wireType: WireType) => boolean): void {
  while (reader.pos < end) {
    const [fieldNo, wireType] = reader.tag();
    if (!field(fieldNo, wireType)) reader.skip(wireType, fieldNo);
  }
}

const u64 = (reader: BinaryReader) => BigInt(reader.uint64());
const i64 = (reader: BinaryReader) => BigInt(reader.int64());

// ResponseHeader: cluster_id = 1, member_id = 2, revision = 3 (int64), raft_term = 4.
function decodeHeader(reader: BinaryReader, length: number): EtcdResponseHeader {
  const header: EtcdResponseHeader = { clusterId: 0n, memberId: 0n, revision: 0n, raftTerm: 0n };
  readFields(reader, reader.pos + length, (no, wt) => {
    if (wt !== WireType.Varint) return false;
    if (no === 1) header.clusterId = u64(reader);
    else if (no === 2) header.memberId = u64(reader);
    else if (no === 3) header.revision = i64(reader);
    else if (no === 4) header.raftTerm = u64(reader);
    else return false;
    return true;
  });
  return header;
}

// mvccpb.KeyValue: key = 1, create_revision = 2, mod_revision = 3, version = 4, value = 5, lease = 6.
function decodeKeyValue(reader: BinaryReader, length: number): EtcdKeyValue {
  const kv: EtcdKeyValue = { key: new Uint8Array(0), createRevision: 0n, modRevision: 0n, version: 0n, value: new Uint8Array(0) };
  readFields(reader, reader.pos + length, (no, wt) => {
    if (no === 1 && wt === WireType.LengthDelimited) kv.key = reader.bytes();
    else if (no === 5 && wt === WireType.LengthDelimited) kv.value = reader.bytes();
    else if (wt !== WireType.Varint) return false;
    else if (no === 2) kv.createRevision = i64(reader);
    else if (no === 3) kv.modRevision = i64(reader);
    else if (no === 4) kv.version = i64(reader);
    else return false;
    return true;
  });
  return kv;
}

function headerField(reader: BinaryReader, no: number, wt: WireType, set: (h: EtcdResponseHeader) => void): boolean {
  if (no !== 1 || wt !== WireType.LengthDelimited) return false;
  set(decodeHeader(reader, reader.uint32()));
  return true;
}

// RangeResponse: header = 1, kvs = 2 (repeated), more = 3, count = 4.
export function decodeRangeResponse(bytes: Uint8Array): EtcdRangeResponse {
  const reader = new BinaryReader(bytes);
  const res: EtcdRangeResponse = { kvs: [], more: false, count: 0n };
  readFields(reader, reader.len, (no, wt) => {
    if (headerField(reader, no, wt, (h) => (res.header = h))) return true;
    if (no === 2 && wt === WireType.LengthDelimited) res.kvs.push(decodeKeyValue(reader, reader.uint32()));
    else if (no === 3 && wt === WireType.Varint) res.more = reader.bool();
    else if (no === 4 && wt === WireType.Varint) res.count = i64(reader);
    else return false;
    return true;
  });
  return res;
}

// PutResponse: header = 1 (prev_kv = 2 is never asked for).
export function decodePutResponse(bytes: Uint8Array): EtcdPutResponse {
  const reader = new BinaryReader(bytes);
  const res: EtcdPutResponse = {};
  readFields(reader, reader.len, (no, wt) => headerField(reader, no, wt, (h) => (res.header = h)));
  return res;
}

// StatusResponse: header = 1, version = 2, dbSize = 3, leader = 4, raftIndex = 5, raftTerm = 6.
export function decodeStatusResponse(bytes: Uint8Array): EtcdStatusResponse {
  const reader = new BinaryReader(bytes);
  const res: EtcdStatusResponse = { version: '', leader: 0n, raftIndex: 0n, raftTerm: 0n };
  readFields(reader, reader.len, (no, wt) => {
    if (headerField(reader, no, wt, (h) => (res.header = h))) return true;
    if (no === 2 && wt === WireType.LengthDelimited) res.version = reader.string();
    else if (wt !== WireType.Varint) return false;
    else if (no === 4) res.leader = u64(reader);
    else if (no === 5) res.raftIndex = u64(reader);
    else if (no === 6) res.raftTerm = u64(reader);
    else return false;
    return true;
  });
  return res;
}

// Encoders of the responses, for the codec's round-trip test only (no etcd server lives here).
function writeHeader(w: BinaryWriter, h: EtcdResponseHeader | undefined): void {
  if (!h) return;
  w.tag(1, WireType.LengthDelimited).fork();
  w.tag(1, WireType.Varint).uint64(h.clusterId).tag(2, WireType.Varint).uint64(h.memberId);
  w.tag(3, WireType.Varint).int64(h.revision).tag(4, WireType.Varint).uint64(h.raftTerm);
  w.join();
}

export function encodeRangeResponseForTest(res: EtcdRangeResponse): Uint8Array {
  const w = new BinaryWriter();
  writeHeader(w, res.header);
  for (const kv of res.kvs) {
    w.tag(2, WireType.LengthDelimited).fork();
    w.tag(1, WireType.LengthDelimited).bytes(kv.key);
    w.tag(2, WireType.Varint).int64(kv.createRevision).tag(3, WireType.Varint).int64(kv.modRevision);
    w.tag(4, WireType.Varint).int64(kv.version).tag(5, WireType.LengthDelimited).bytes(kv.value);
    w.join();
  }
  if (res.more) w.tag(3, WireType.Varint).bool(true);
  w.tag(4, WireType.Varint).int64(res.count);
  return w.finish();
}

export function encodeStatusResponseForTest(res: EtcdStatusResponse): Uint8Array {
  const w = new BinaryWriter();
  writeHeader(w, res.header);
  w.tag(2, WireType.LengthDelimited).string(res.version).tag(3, WireType.Varint).int64(12345);
  w.tag(4, WireType.Varint).uint64(res.leader).tag(5, WireType.Varint).uint64(res.raftIndex).tag(6, WireType.Varint).uint64(res.raftTerm);
  return w.finish();
}

/** Decodes a request as etcd would (for the round-trip test): key, value, serializable. */
export function decodeRequestForTest(bytes: Uint8Array): { key: Uint8Array; value: Uint8Array; serializable: boolean } {
  const reader = new BinaryReader(bytes);
  const out: { key: Uint8Array; value: Uint8Array; serializable: boolean } = { key: new Uint8Array(0), value: new Uint8Array(0), serializable: false };
  readFields(reader, reader.len, (no, wt) => {
    if (no === 1 && wt === WireType.LengthDelimited) out.key = reader.bytes();
    else if (no === 2 && wt === WireType.LengthDelimited) out.value = reader.bytes();
    else if (no === 7 && wt === WireType.Varint) out.serializable = reader.bool();
    else return false;
    return true;
  });
  return out;
}
