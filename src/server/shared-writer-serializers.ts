/**
 * gRPC serializers that encode through the shared protobuf writer (src/proto-writer.ts)
 * instead of ts-proto's generated `Buffer.from(X.encode(value).finish())`, which regrows a
 * new writer and then copies its bytes once more.
 */
import { DescMessage } from '@bufbuild/protobuf';
import { encodeMessageToBuffer, MessageEncoder } from '../proto-writer';
import * as kvGenerated from '../../gen/cairn/kv/v1/kv';
import * as raftGenerated from '../../gen/cairn/raft/v1/raft';
import { methodOf } from './descriptors';

interface MethodDefinition {
  path: string;
  requestSerialize: (value: never) => Buffer;
  responseSerialize: (value: never) => Buffer;
}

/** A generated module's exports: its message codecs by ts-proto name ("PutResponse", "Message_Body"). */
type GeneratedModule = Record<string, unknown>;

/** The generated module of each proto file (by name, without .proto) whose services are served or called. */
const GENERATED_MODULES: Record<string, GeneratedModule> = {
  'cairn/kv/v1/kv': kvGenerated,
  'cairn/raft/v1/raft': raftGenerated,
};

/**
 * A copy of a generated service definition whose serializers encode through the shared
 * writer (server and client side alike). A method whose message codec is not found (its proto
 * file is not in GENERATED_MODULES) keeps its generated serializer.
 */
export function withSharedWriter<T extends Record<string, MethodDefinition>>(definition: T): T {
  const copy: Record<string, MethodDefinition> = {};
  for (const [name, method] of Object.entries(definition)) {
    const [request, response] = messageCodecsOf(method.path);
    copy[name] = {
      ...method,
      requestSerialize: request ? (value: never) => encodeMessageToBuffer(request, value) : method.requestSerialize,
      responseSerialize: response ? (value: never) => encodeMessageToBuffer(response, value) : method.responseSerialize,
    };
  }
  return copy as T;
}

/** The ts-proto codecs of a method's request and response messages, found by their proto names. */
function messageCodecsOf(path: string): [MessageEncoder<never>?, MessageEncoder<never>?] {
  const method = methodOf(path);
  if (!method) return [];
  return [codecOf(method.input), codecOf(method.output)];
}

function codecOf(message: DescMessage): MessageEncoder<never> | undefined {
  const module = GENERATED_MODULES[message.file.name];
  if (!module) return undefined;
  // ts-proto names a message by its path within the package: B nested in A is A_B.
  let tsName = message.name;
  for (let parent = message.parent; parent; parent = parent.parent) tsName = `${parent.name}_${tsName}`;
  const codec = module[tsName] as Partial<MessageEncoder<never>> | undefined;
  return typeof codec?.encode === 'function' ? (codec as MessageEncoder<never>) : undefined;
}
