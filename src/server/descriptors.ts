import { createFileRegistry, DescMessage, DescMethod, FileRegistry, fromBinary } from '@bufbuild/protobuf';
import { FileDescriptorProto, FileDescriptorSet, FileDescriptorSetSchema } from '@bufbuild/protobuf/wkt';
import { DESCRIPTOR_SET_BASE64 } from '../../gen/descriptor-set';

/**
 * The descriptors of the protos as written (field names, comments, file names), from the
 * image that `npm run gen` builds with buf into gen/descriptor-set.ts.
 */
export interface Descriptors {
  /** Every file of the image, by its name (e.g. "cairn/kv/v1/kv.proto"). */
  files: Map<string, FileDescriptorProto>;
  registry: FileRegistry;
}

let loaded: Descriptors | undefined;

export function descriptors(): Descriptors {
  if (!loaded) {
    const set: FileDescriptorSet = fromBinary(FileDescriptorSetSchema, Buffer.from(DESCRIPTOR_SET_BASE64, 'base64'));
    loaded = { files: new Map(set.file.map((file) => [file.name, file])), registry: createFileRegistry(set) };
  }
  return loaded;
}

/** The method of a gRPC method path such as "/cairn.kv.v1.KV/Put", if it is in the image. */
export function methodOf(methodPath: string): DescMethod | undefined {
  const match = /^\/([^/]+)\/([^/]+)$/.exec(methodPath);
  if (!match) return undefined;
  const service = descriptors().registry.getService(match[1]!);
  return service?.methods.find((method) => method.name === match[2]);
}

/** The request message of a gRPC method path, if it is in the image. */
export function requestMessageOf(methodPath: string): DescMessage | undefined {
  return methodOf(methodPath)?.input;
}
