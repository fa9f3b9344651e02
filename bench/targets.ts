/**
 * One gRPC channel to one node of cairn or etcd, with the three calls the benchmark makes:
 * put, get (linearizable or serializable) and status (is this node the leader?). Both
 * systems go through the same grpc-js generic client (makeUnaryRequest), so the client-side
 * cost per call is the same; only the codecs differ (ts-proto for cairn, bench/etcd-codec.ts
 * for etcd).
 */
import { Client, credentials, ServiceError } from '@grpc/grpc-js';
import { ClusterService, Consistency, GetRequest, KVService, PutRequest, StatusRequest } from '../gen/cairn/kv/v1/kv';
import {
  decodePutResponse,
  decodeRangeResponse,
  decodeStatusResponse,
  encodePutRequest,
  encodeRangeRequest,
  encodeStatusRequest,
  ETCD_PUT_PATH,
  ETCD_RANGE_PATH,
  ETCD_STATUS_PATH,
  EtcdPutRequest,
  EtcdRangeRequest,
} from './etcd-codec';

export type SystemName = 'cairn' | 'etcd';
export const SYSTEMS: readonly SystemName[] = ['cairn', 'etcd'];

/** Requests and responses here are small; this bounds what a misbehaving server can make us buffer. */
const MAX_RECEIVE_MESSAGE_BYTES = 4 * 1024 * 1024;

export interface NodeStatus {
  isLeader: boolean;
  /** The leader this node knows of ('0' / '' when none): cairn's node id, etcd's member id. */
  leader: string;
  /** This node's own id, in the same terms as `leader`. */
  self: string;
}

const identity = (b: Buffer) => b;

/**
 * A channel of its own (a local subchannel pool: grpc-js would otherwise share one HTTP/2
 * connection among every client of the same address, and "channels" would mean nothing).
 */
export class KvChannel {
  private readonly client: Client;

  constructor(readonly system: SystemName, readonly address: string) {
    this.client = new Client(address, credentials.createInsecure(), {
      'grpc.use_local_subchannel_pool': 1,
      'grpc.max_receive_message_length': MAX_RECEIVE_MESSAGE_BYTES,
    });
  }

  private call<Req, Res>(path: string, serialize: (r: Req) => Buffer, deserialize: (b: Buffer) => Res, req: Req, timeoutMs: number): Promise<Res> {
    return new Promise((resolve, reject) => {
      this.client.makeUnaryRequest(path, serialize, deserialize, req, { deadline: Date.now() + timeoutMs }, (err: ServiceError | null, res?: Res) =>
        err ? reject(err) : resolve(res as Res),
      );
    });
  }

  async put(key: Buffer, value: Buffer, timeoutMs: number): Promise<void> {
    if (this.system === 'cairn') {
      await this.call(KVService.put.path, KVService.put.requestSerialize, identity, PutRequest.fromPartial({ key, value }), timeoutMs);
    } else {
      decodePutResponse(await this.call<EtcdPutRequest, Buffer>(ETCD_PUT_PATH, encodePutRequest, identity, { key, value }, timeoutMs));
    }
  }

  /** The key's value, or undefined when the key does not exist. */
  async get(key: Buffer, serializable: boolean, timeoutMs: number): Promise<Buffer | undefined> {
    if (this.system === 'cairn') {
      const consistency = serializable ? Consistency.CONSISTENCY_SERIALIZABLE : Consistency.CONSISTENCY_LINEARIZABLE;
      const res = await this.call(KVService.get.path, KVService.get.requestSerialize, KVService.get.responseDeserialize, GetRequest.fromPartial({ key, consistency }), timeoutMs);
      return res.kv ? Buffer.from(res.kv.value) : undefined;
    }
    const res = decodeRangeResponse(await this.call<EtcdRangeRequest, Buffer>(ETCD_RANGE_PATH, encodeRangeRequest, identity, { key, serializable }, timeoutMs));
    return res.kvs.length ? Buffer.from(res.kvs[0].value) : undefined;
  }

  async status(timeoutMs: number): Promise<NodeStatus> {
    if (this.system === 'cairn') {
      const s = await this.call(ClusterService.status.path, ClusterService.status.requestSerialize, ClusterService.status.responseDeserialize, StatusRequest.fromPartial({}), timeoutMs);
      return { isLeader: s.role === 'leader', leader: String(s.leaderId), self: String(s.id) };
    }
    const s = decodeStatusResponse(await this.call<null, Buffer>(ETCD_STATUS_PATH, encodeStatusRequest, identity, null, timeoutMs));
    const self = String(s.header?.memberId ?? 0n);
    return { isLeader: s.leader !== 0n && String(s.leader) === self, leader: String(s.leader), self };
  }

  close(): void {
    this.client.close();
  }
}

/** The short form of a gRPC error for the errors column: `14 UNAVAILABLE: details`. */
export function errorMessage(err: unknown): string {
  const e = err as Partial<ServiceError>;
  if (typeof e?.code === 'number') return `${e.code} ${e.details ?? e.message ?? ''}`.trim();
  return String((err as Error)?.message ?? err);
}

/**
 * Which of `addresses` leads, asked of each node (the one that says it is the leader, and
 * that a majority of the answers name). Undefined when none does right now.
 */
export async function findLeaderIndex(system: SystemName, addresses: readonly string[], timeoutMs = 1000): Promise<number | undefined> {
  const channels = addresses.map((a) => new KvChannel(system, a));
  try {
    const statuses = await Promise.all(channels.map((c) => c.status(timeoutMs).catch(() => undefined)));
    const index = statuses.findIndex((s) => s?.isLeader);
    if (index < 0) return undefined;
    const leaderId = statuses[index]!.self;
    const agreeing = statuses.filter((s) => s?.leader === leaderId).length;
    return agreeing * 2 > statuses.filter((s) => s).length ? index : undefined;
  } finally {
    for (const c of channels) c.close();
  }
}
