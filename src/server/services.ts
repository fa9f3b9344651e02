import { sendUnaryData, ServerUnaryCall } from '@grpc/grpc-js';
import {
  ClusterServer,
  Command,
  CommandResult,
  Consistency,
  DeleteResponse,
  KVServer,
  Member,
  PutResponse,
  ResponseHeader,
  StatusResponse,
} from '../../gen/cairn/kv/v1/kv';
import { RaftServiceServer } from '../../gen/cairn/raft/v1/raft';
import { CairnError, ErrorCode } from '../errors';
import { Replica } from '../node/replica';
import { Limits } from './config';
import { Logger } from './logger';
import { RequestRouter, withTimeout } from './router';
import { toGrpcError } from './status';
import { validateDelete, validateGet, validatePut, validateRange } from './validate';

export const VERSION = '0.1.0';

/** What the services need to know about the node they run on. */
export interface ServiceContext {
  replica: Replica;
  router: RequestRouter;
  clusterId: number;
  limits: Limits;
  requestTimeoutMs: number;
  logger: Logger;
  /** Every member's peer address, and client address once known. */
  members(): Member[];
  /** A peer told us where it serves clients. */
  noteClientAddr(id: number, addr: string): void;
}

/** What a request that did not decode becomes, so its handler can answer INVALID_ARGUMENT. */
const MALFORMED = Symbol('malformed request');
interface Malformed {
  [MALFORMED]: string;
}

/**
 * A copy of a generated service definition whose request decoders never throw: grpc-js
 * would answer INTERNAL, but undecodable bytes are the client's mistake.
 */
export function withLenientDecoding<T extends Record<string, { requestDeserialize: (bytes: Buffer) => unknown }>>(definition: T): T {
  const copy: Record<string, unknown> = {};
  for (const [name, method] of Object.entries(definition)) {
    copy[name] = {
      ...method,
      requestDeserialize: (bytes: Buffer) => {
        try {
          return method.requestDeserialize(bytes);
        } catch (err) {
          return { [MALFORMED]: (err as Error).message } satisfies Malformed;
        }
      },
    };
  }
  return copy as T;
}

/** Runs a handler and answers the call with its result or its error as a gRPC status. */
function unary<Req, Res>(handler: (request: Req) => Promise<Res>) {
  return (call: ServerUnaryCall<Req, Res>, callback: sendUnaryData<Res>) => {
    const malformed = (call.request as Partial<Malformed>)[MALFORMED];
    if (malformed !== undefined) {
      callback(toGrpcError(new CairnError(ErrorCode.INVALID_ARGUMENT, `request does not decode as protobuf: ${malformed}`)));
      return;
    }
    handler(call.request).then(
      (response) => callback(null, response),
      (err) => callback(toGrpcError(err)),
    );
  };
}

function header(context: ServiceContext, revision = context.replica.stateMachine.revision()): ResponseHeader {
  const node = context.replica.node;
  return { revision, memberId: node.id, leaderId: node.leader, raftTerm: node.term };
}

async function readBarrier(context: ServiceContext, consistency: Consistency): Promise<void> {
  if (consistency !== Consistency.CONSISTENCY_SERIALIZABLE) await context.router.readBarrier();
}

/**
 * A write refused inside apply (a session error) carries its error in the result, the
 * same on every replica: here it becomes the client's error.
 */
function throwIfRefused(result: CommandResult): CommandResult {
  const refused = result.error;
  if (!refused) return result;
  const code = Object.values(ErrorCode).find((c) => c === refused.code);
  // A code this node does not know (a newer leader during an upgrade): still a refusal.
  if (code === undefined) throw new Error(`the write was refused (${refused.code}): ${refused.message}`);
  throw new CairnError(code, refused.message);
}

export function kvService(context: ServiceContext): KVServer {
  // The leader stamps the log time (Replica.propose), so the command goes out unstamped.
  const write = async (op: Command['op']) => throwIfRefused(await context.router.write({ op, proposedAtUnixMs: 0 }));
  return {
    put: unary(async (request) => {
      validatePut(request, context.limits);
      const result = await write({ $case: 'put', value: request });
      const put: PutResponse | undefined = result.op?.$case === 'put' ? result.op.value : undefined;
      return { header: header(context, result.revision), prevKv: put?.prevKv };
    }),
    delete: unary(async (request) => {
      validateDelete(request, context.limits);
      const result = await write({ $case: 'delete', value: request });
      const deleted: DeleteResponse | undefined = result.op?.$case === 'delete' ? result.op.value : undefined;
      return { header: header(context, result.revision), deleted: deleted?.deleted ?? false, prevKv: deleted?.prevKv };
    }),
    get: unary(async (request) => {
      validateGet(request, context.limits);
      await readBarrier(context, request.consistency);
      const kv = await context.replica.stateMachine.get(request.key);
      return { header: header(context), kv };
    }),
    range: unary(async (request) => {
      const range = validateRange(request, context.limits);
      await readBarrier(context, request.consistency);
      const { kvs, more } = await context.replica.stateMachine.range({ ...range, keysOnly: request.keysOnly });
      return { header: header(context), kvs, more };
    }),
  };
}

export function clusterService(context: ServiceContext): ClusterServer {
  return {
    status: unary(async (): Promise<StatusResponse> => {
      const status = context.replica.node.status();
      return {
        header: header(context),
        clusterId: context.clusterId,
        id: status.id,
        role: status.role,
        term: status.term,
        leaderId: status.leader,
        commitIndex: status.commitIndex,
        appliedIndex: context.replica.stateMachine.appliedIndex(),
        lastIndex: status.lastIndex,
        members: context.members(),
        followers: status.progress.map((p) => ({ id: p.id, matchIndex: p.matchIndex, nextIndex: p.nextIndex, state: p.state })),
        version: VERSION,
      };
    }),
    memberList: unary(async () => ({ header: header(context), members: context.members() })),
  };
}

/** The peer service: Raft messages in, and writes and read-index requests from followers. */
export function raftService(context: ServiceContext): RaftServiceServer {
  const checkSender = (clusterId: number, from: number): void => {
    if (clusterId !== context.clusterId) {
      throw new CairnError(ErrorCode.WRONG_CLUSTER, `cluster id ${clusterId} is not this cluster's (${context.clusterId})`);
    }
    if (!context.members().some((m) => m.id === from)) {
      throw new CairnError(ErrorCode.WRONG_CLUSTER, `node ${from} is not a member of this cluster`);
    }
  };
  return {
    stream: (call, callback) => {
      let rejected = false;
      call.on('data', (frame) => {
        if (rejected) return;
        try {
          checkSender(frame.clusterId, frame.fromId);
        } catch (err) {
          rejected = true;
          context.logger.warn({ from: frame.fromId, clusterId: frame.clusterId, reason: (err as Error).message }, 'peer stream rejected');
          callback(toGrpcError(err));
          return;
        }
        if (frame.clientAddr) context.noteClientAddr(frame.fromId, frame.clientAddr);
        for (const message of frame.messages) {
          if (message.fromId === frame.fromId) context.replica.receive(message);
        }
      });
      call.on('end', () => {
        if (!rejected) callback(null, {});
      });
      call.on('error', () => undefined);
    },
    propose: unary(async (request) => {
      checkSender(request.clusterId, request.fromId);
      let command: Command;
      try {
        command = Command.decode(request.command);
      } catch (err) {
        throw new CairnError(ErrorCode.INVALID_ARGUMENT, `forwarded command does not decode: ${(err as Error).message}`);
      }
      const result = await withTimeout(context.replica.propose(command, request.command), context.requestTimeoutMs, 'the forwarded write did not commit in time; its outcome is unknown');
      return { result: Buffer.from(CommandResult.encode(result).finish()), term: context.replica.node.term };
    }),
    readIndex: unary(async (request) => {
      checkSender(request.clusterId, request.fromId);
      const index = await withTimeout(context.replica.confirmReadIndex(), context.requestTimeoutMs, 'the read index could not be confirmed in time');
      return { index };
    }),
  };
}

