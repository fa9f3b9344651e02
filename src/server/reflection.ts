import { create, DescMessage, fromBinary, toBinary } from '@bufbuild/protobuf';
import { DescriptorProto, FileDescriptorProto, FileDescriptorProtoSchema } from '@bufbuild/protobuf/wkt';
import { Server, ServerDuplexStream, ServiceDefinition, status as Status } from '@grpc/grpc-js';
import { descriptors } from './descriptors';

/**
 * gRPC server reflection (grpc.reflection.v1 and v1alpha, which share one wire format) over
 * the descriptor image in gen/: clients such as grpcurl and buf curl get the .proto files as
 * written, with their own file names, snake_case field names, json names and comments.
 * (@grpc/reflection rebuilds descriptors through proto-loader and loses all of that.)
 */
const REFLECTION_SERVICES = ['grpc.reflection.v1.ServerReflection', 'grpc.reflection.v1alpha.ServerReflection'];

/** The fields of ServerReflectionRequest and ServerReflectionResponse that this service reads and writes. */
type RequestCase = 'fileByFilename' | 'fileContainingSymbol' | 'fileContainingExtension' | 'allExtensionNumbersOfType' | 'listServices';
interface ReflectionRequest {
  host: string;
  messageRequest: { case: RequestCase; value: unknown } | { case: undefined; value?: undefined };
}
interface Undecodable {
  undecodable: string;
}
type ReflectionAnswer =
  | { case: 'fileDescriptorResponse'; value: { fileDescriptorProto: Uint8Array[] } }
  | { case: 'allExtensionNumbersResponse'; value: { baseTypeName: string; extensionNumber: number[] } }
  | { case: 'listServicesResponse'; value: { service: { name: string }[] } }
  | { case: 'errorResponse'; value: { errorCode: number; errorMessage: string } };

class ReflectionError extends Error {
  constructor(
    readonly code: Status,
    message: string,
  ) {
    super(message);
  }
}

/** What reflection describes: the files that define the served services, and what they import. */
class ReflectionIndex {
  private readonly files = new Map<string, FileDescriptorProto>();
  private readonly encoded = new Map<string, Uint8Array>();
  /** Fully qualified name of every symbol (service, method, message, field, enum, value) -> its file. */
  private readonly symbols = new Map<string, string>();
  private readonly messages = new Set<string>();

  constructor(
    allFiles: Map<string, FileDescriptorProto>,
    readonly services: readonly string[],
  ) {
    const defining = (service: string) => [...allFiles.values()].find((file) => file.service.some((s) => qualify(file.package, s.name) === service));
    for (const service of services) {
      const file = defining(service);
      if (!file) throw new Error(`no descriptor of service ${service} in gen/descriptor-set.ts: run npm run gen`);
      this.addWithImports(file, allFiles);
    }
    for (const file of this.files.values()) this.indexSymbols(file);
  }

  listServices(): string[] {
    return [...this.services];
  }

  /** The file and every file it imports, transitively (clients need all of them to build descriptors). */
  fileByFilename(name: string): Uint8Array[] {
    if (!this.files.has(name)) throw new ReflectionError(Status.NOT_FOUND, `file not found: ${name}`);
    const order: string[] = [];
    const visit = (file: string) => {
      if (order.includes(file)) return;
      order.push(file);
      for (const dependency of this.files.get(file)!.dependency) visit(dependency);
    };
    visit(name);
    return order.map((file) => this.encoded.get(file)!);
  }

  fileContainingSymbol(symbol: string): Uint8Array[] {
    const file = this.symbols.get(symbol.replace(/^\./, ''));
    if (file === undefined) throw new ReflectionError(Status.NOT_FOUND, `symbol not found: ${symbol}`);
    return this.fileByFilename(file);
  }

  /** The served protos declare no extensions. */
  fileContainingExtension(type: string, number: number): Uint8Array[] {
    throw new ReflectionError(Status.NOT_FOUND, `no extension ${number} of ${type}`);
  }

  allExtensionNumbersOfType(type: string): { baseTypeName: string; extensionNumber: number[] } {
    if (!this.messages.has(type.replace(/^\./, ''))) throw new ReflectionError(Status.NOT_FOUND, `message type not found: ${type}`);
    return { baseTypeName: type, extensionNumber: [] };
  }

  private addWithImports(file: FileDescriptorProto, allFiles: Map<string, FileDescriptorProto>): void {
    if (this.files.has(file.name)) return;
    this.files.set(file.name, file);
    this.encoded.set(file.name, toBinary(FileDescriptorProtoSchema, file));
    for (const dependency of file.dependency) {
      const imported = allFiles.get(dependency);
      if (!imported) throw new Error(`${file.name} imports ${dependency}, which is not in gen/descriptor-set.ts`);
      this.addWithImports(imported, allFiles);
    }
  }

  private indexSymbols(file: FileDescriptorProto): void {
    const add = (name: string) => this.symbols.set(name, file.name);
    const addEnums = (scope: string, enums: FileDescriptorProto['enumType']) => {
      for (const e of enums) {
        add(qualify(scope, e.name));
        // Enum values are siblings of their enum in protobuf's name scoping.
        for (const value of e.value) add(qualify(scope, value.name));
      }
    };
    const addMessage = (scope: string, message: DescriptorProto) => {
      const name = qualify(scope, message.name);
      add(name);
      this.messages.add(name);
      for (const field of [...message.field, ...message.extension]) add(qualify(name, field.name));
      for (const oneof of message.oneofDecl) add(qualify(name, oneof.name));
      for (const nested of message.nestedType) addMessage(name, nested);
      addEnums(name, message.enumType);
    };
    for (const message of file.messageType) addMessage(file.package, message);
    addEnums(file.package, file.enumType);
    for (const extension of file.extension) add(qualify(file.package, extension.name));
    for (const service of file.service) {
      const name = qualify(file.package, service.name);
      add(name);
      for (const method of service.method) add(qualify(name, method.name));
    }
  }
}

function qualify(scope: string, name: string): string {
  return scope ? `${scope}.${name}` : name;
}

function answer(index: ReflectionIndex, request: ReflectionRequest): ReflectionAnswer {
  try {
    const { case: kind, value } = request.messageRequest;
    switch (kind) {
      case 'fileByFilename':
        return { case: 'fileDescriptorResponse', value: { fileDescriptorProto: index.fileByFilename(value as string) } };
      case 'fileContainingSymbol':
        return { case: 'fileDescriptorResponse', value: { fileDescriptorProto: index.fileContainingSymbol(value as string) } };
      case 'fileContainingExtension': {
        const { containingType, extensionNumber } = value as { containingType: string; extensionNumber: number };
        return { case: 'fileDescriptorResponse', value: { fileDescriptorProto: index.fileContainingExtension(containingType, extensionNumber) } };
      }
      case 'allExtensionNumbersOfType':
        return { case: 'allExtensionNumbersResponse', value: index.allExtensionNumbersOfType(value as string) };
      case 'listServices':
        return { case: 'listServicesResponse', value: { service: index.listServices().map((name) => ({ name })) } };
      default:
        throw new ReflectionError(Status.INVALID_ARGUMENT, 'the reflection request names no request kind');
    }
  } catch (err) {
    if (!(err instanceof ReflectionError)) throw err;
    return { case: 'errorResponse', value: { errorCode: err.code, errorMessage: err.message } };
  }
}

/** ServerReflectionRequest and ServerReflectionResponse of one reflection package, from the image. */
function reflectionMessages(service: string): { request: DescMessage; response: DescMessage } {
  const pkg = service.replace(/\.ServerReflection$/, '');
  const request = descriptors().registry.getMessage(`${pkg}.ServerReflectionRequest`);
  const response = descriptors().registry.getMessage(`${pkg}.ServerReflectionResponse`);
  if (!request || !response) throw new Error(`no descriptors of ${service} in gen/descriptor-set.ts: run npm run gen`);
  return { request, response };
}

function reflectionDefinition(service: string, types: { request: DescMessage; response: DescMessage }): ServiceDefinition {
  return {
    ServerReflectionInfo: {
      path: `/${service}/ServerReflectionInfo`,
      requestStream: true,
      responseStream: true,
      // Undecodable bytes are the client's mistake: answered INVALID_ARGUMENT, not INTERNAL.
      requestDeserialize: (bytes: Buffer) => {
        try {
          return fromBinary(types.request, bytes);
        } catch (err) {
          return { undecodable: (err as Error).message } satisfies Undecodable;
        }
      },
      requestSerialize: (message: unknown) => Buffer.from(toBinary(types.request, message as never)),
      responseDeserialize: (bytes: Buffer) => fromBinary(types.response, bytes),
      responseSerialize: (message: unknown) => Buffer.from(toBinary(types.response, message as never)),
    },
  };
}

/**
 * Serves grpc.reflection.v1 and v1alpha on `server`, describing `services` (the ones the server
 * serves besides reflection itself) and the reflection services.
 */
export function addReflection(server: Server, services: readonly string[]): void {
  const index = new ReflectionIndex(descriptors().files, [...services, ...REFLECTION_SERVICES]);
  for (const service of REFLECTION_SERVICES) {
    const types = reflectionMessages(service);
    server.addService(reflectionDefinition(service, types), {
      ServerReflectionInfo: (call: ServerDuplexStream<ReflectionRequest | Undecodable, unknown>) => {
        call.on('data', (request: ReflectionRequest | Undecodable) => {
          if ('undecodable' in request) {
            call.emit('error', { code: Status.INVALID_ARGUMENT, details: `reflection request does not decode as protobuf: ${request.undecodable}` });
            return;
          }
          call.write(create(types.response, { validHost: request.host, originalRequest: request, messageResponse: answer(index, request) } as never));
        });
        call.on('end', () => call.end());
        call.on('error', () => undefined);
      },
    });
  }
}
