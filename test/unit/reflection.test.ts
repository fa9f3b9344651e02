import { fromBinary } from '@bufbuild/protobuf';
import { FileDescriptorProto, FileDescriptorProtoSchema } from '@bufbuild/protobuf/wkt';
import { BinaryReader, BinaryWriter } from '@bufbuild/protobuf/wire';
import { credentials, makeGenericClientConstructor, Server, ServerCredentials } from '@grpc/grpc-js';
import { addReflection } from '../../src/server/reflection';

/**
 * A reflection client that knows the wire format of grpc.reflection from its spec, not from
 * cairn's descriptors: request fields 3 file_by_filename, 4 file_containing_symbol,
 * 6 all_extension_numbers_of_type, 7 list_services; response fields 4 file_descriptor_response
 * (1: repeated bytes), 6 list_services_response (1: repeated ServiceResponse{1: name}),
 * 7 error_response (1: code, 2: message).
 */
type Answer = { files: FileDescriptorProto[]; services: string[]; error?: { code: number; message: string } };

function parseAnswer(bytes: Buffer): Answer {
  const answer: Answer = { files: [], services: [] };
  const reader = new BinaryReader(bytes);
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (field === 4 || field === 6 || field === 7) {
      const inner = new BinaryReader(reader.bytes());
      const error = { code: 0, message: '' };
      while (inner.pos < inner.len) {
        const [f, w] = inner.tag();
        if (field === 4 && f === 1) answer.files.push(fromBinary(FileDescriptorProtoSchema, inner.bytes()));
        else if (field === 6 && f === 1) answer.services.push(serviceName(inner.bytes()));
        else if (field === 7 && f === 1) error.code = inner.int32();
        else if (field === 7 && f === 2) error.message = inner.string();
        else inner.skip(w);
      }
      if (field === 7) answer.error = error;
    } else reader.skip(wireType);
  }
  return answer;
}

function serviceName(bytes: Uint8Array): string {
  const reader = new BinaryReader(bytes);
  let name = '';
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (field === 1) name = reader.string();
    else reader.skip(wireType);
  }
  return name;
}

const identity = (b: Buffer) => b;

describe('server reflection', () => {
  let server: Server;
  let port: number;
  beforeAll(async () => {
    server = new Server();
    addReflection(server, ['cairn.kv.v1.KV', 'cairn.kv.v1.Cluster', 'grpc.health.v1.Health']);
    port = await new Promise<number>((done, fail) => server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (err, p) => (err ? fail(err) : done(p))));
  });
  afterAll(() => server.forceShutdown());

  /** One request on a fresh ServerReflectionInfo stream of `version`, its one answer. */
  async function ask(version: 'v1' | 'v1alpha', request: Uint8Array): Promise<Answer> {
    const Client = makeGenericClientConstructor(
      {
        info: {
          path: `/grpc.reflection.${version}.ServerReflection/ServerReflectionInfo`,
          requestStream: true,
          responseStream: true,
          requestSerialize: identity,
          requestDeserialize: identity,
          responseSerialize: identity,
          responseDeserialize: identity,
        },
      },
      'ServerReflection',
    );
    const client = new Client(`127.0.0.1:${port}`, credentials.createInsecure()) as unknown as { info(): NodeJS.ReadWriteStream & { end(): void }; close(): void };
    try {
      const call = client.info();
      const answer = new Promise<Buffer>((done, fail) => {
        call.once('data', done);
        call.once('error', fail);
      });
      call.write(Buffer.from(request));
      const bytes = await answer;
      call.end();
      return parseAnswer(bytes);
    } finally {
      client.close();
    }
  }

  test('a request that does not decode is answered INVALID_ARGUMENT', async () => {
    await expect(ask('v1', Buffer.from([0xff, 0xff, 0xff, 0xff]))).rejects.toMatchObject({ code: 3, details: expect.stringContaining('does not decode') });
  });

  const bySymbol = (symbol: string) => new BinaryWriter().tag(4, 2).string(symbol).finish();

  test('serves kv.proto under its own name, with snake_case field names, json names and comments', async () => {
    const { files } = await ask('v1', bySymbol('cairn.kv.v1.KV'));
    const kv = files.find((f) => f.name === 'cairn/kv/v1/kv.proto');
    expect(kv).toBeDefined();
    const fields = (message: string) => kv!.messageType.find((m) => m.name === message)!.field;
    expect(fields('RangeRequest').map((f) => f.name)).toEqual(['key', 'range_end', 'limit', 'keys_only', 'consistency', 'prefix']);
    expect(fields('RangeRequest').find((f) => f.name === 'range_end')!.jsonName).toBe('rangeEnd');
    expect(fields('PutRequest').map((f) => f.name)).toContain('prev_kv');
    const comments = kv!.sourceCodeInfo!.location.map((l) => l.leadingComments);
    expect(comments).toContain(' Range reads the keys in [key, range_end) in key order, up to a limit.\n');
  });

  test('lists the served services, reflection included', async () => {
    const { services } = await ask('v1', new BinaryWriter().tag(7, 2).string('*').finish());
    expect(services.sort()).toEqual([
      'cairn.kv.v1.Cluster',
      'cairn.kv.v1.KV',
      'grpc.health.v1.Health',
      'grpc.reflection.v1.ServerReflection',
      'grpc.reflection.v1alpha.ServerReflection',
    ]);
  });

  test('v1alpha answers the same; a method, a nested field and an enum value resolve to their file', async () => {
    for (const symbol of ['cairn.kv.v1.KV.Put', 'cairn.kv.v1.PutRequest.prev_kv', 'cairn.kv.v1.CONSISTENCY_SERIALIZABLE']) {
      const { files } = await ask('v1alpha', bySymbol(symbol));
      expect(files.map((f) => f.name)).toEqual(['cairn/kv/v1/kv.proto']);
    }
  });

  test('health and reflection are described; unknown symbols and files get NOT_FOUND; storage.proto is not served', async () => {
    expect((await ask('v1', bySymbol('grpc.health.v1.Health'))).files.map((f) => f.name)).toEqual(['grpc/health/v1/health.proto']);
    expect((await ask('v1', new BinaryWriter().tag(3, 2).string('grpc/reflection/v1/reflection.proto').finish())).files).toHaveLength(1);
    expect((await ask('v1', bySymbol('cairn.kv.v1.Nope'))).error?.code).toBe(5);
    expect((await ask('v1', bySymbol('cairn.raft.v1.RaftService'))).error?.code).toBe(5);
    expect((await ask('v1', new BinaryWriter().tag(3, 2).string('cairn/storage/v1/storage.proto').finish())).error?.code).toBe(5);
  });
});
