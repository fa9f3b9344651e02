import { request as httpRequest } from 'node:http';
import { status as Status } from '@grpc/grpc-js';
import { ClusterService, Consistency, GetResponse, KVService, PutRequest, PutResponse, RangeRequest, StatusResponse } from '../../gen/cairn/kv/v1/kv';
import { CairnError, ErrorCode } from '../../src/errors';
import { descriptors } from '../../src/server/descriptors';
import {
  deadlineOf,
  errorBody,
  Gateway,
  GATEWAY_ROUTES,
  GatewayServices,
  HTTP_STATUS_OF_GRPC_CODE,
  maxGatewayBodyBytes,
  parseBody,
  responseJson,
} from '../../src/server/gateway';
import { HttpPort } from '../../src/server/http';
import { Logger } from '../../src/server/logger';
import { NodeMetrics } from '../../src/server/metrics';
import { RequestScope } from '../../src/server/router';
import { ServiceContext, unaryCalls, withLenientDecoding } from '../../src/server/services';
import { toGrpcError } from '../../src/server/status';
import { clientMaxMessageBytes } from '../../src/server/config';

const quietLogger = { warn: () => undefined, info: () => undefined, error: () => undefined, debug: () => undefined } as unknown as Logger;
/** A body bound small enough to cross in a test. */
const TEST_MAX_BODY_BYTES = 4096;
/** The request timeout the fake services cap deadlines at. */
const TEST_REQUEST_TIMEOUT_MS = 60_000;

/** What the fake handlers saw, for the assertions on the call-like object. */
interface Seen {
  authorization?: string;
  deadlineMs?: number;
  path?: string;
  aborted?: Promise<void>;
  request?: unknown;
}

/**
 * KV and Cluster implementations behind the real unary wrapper (services.ts unaryCalls), so
 * the gateway's call-like object goes through what the gRPC port's calls go through.
 */
function fakeServices(seen: Seen): GatewayServices {
  const unary = unaryCalls({ requestTimeoutMs: TEST_REQUEST_TIMEOUT_MS } as ServiceContext);
  const header = { revision: 2 ** 40 + 1, memberId: 2, leaderId: 1, raftTerm: 7 };
  const note = (request: unknown, scope: RequestScope, metadata: { get(k: string): unknown[] }) => {
    seen.request = request;
    seen.deadlineMs = scope.deadlineMs;
    seen.authorization = metadata.get('authorization')[0] as string | undefined;
  };
  const kv = {
    put: unary(async (request: PutRequest, scope, metadata): Promise<PutResponse> => {
      note(request, scope, metadata);
      return { header, prevKv: { key: request.key, value: request.value, createRevision: 3, modRevision: 2 ** 40 + 1, version: 2 } };
    }),
    get: unary(async (request: { key: Buffer }, scope, metadata): Promise<GetResponse> => {
      note(request, scope, metadata);
      const key = request.key.toString();
      if (key === 'denied') throw new CairnError(ErrorCode.PERMISSION_DENIED, 'user alice may not read key "denied"');
      if (key === 'no-leader') throw new CairnError(ErrorCode.NOT_LEADER, 'node 2 is not the leader; node 3 is', { leader: 3 });
      if (key === 'wait') {
        seen.aborted = new Promise((resolve) => scope.signal.addEventListener('abort', () => resolve()));
        await seen.aborted;
        throw new CairnError(ErrorCode.TIMEOUT, 'aborted');
      }
      return { header, kv: undefined };
    }),
    delete: unary(async () => ({ header, deleted: true })),
    range: unary(async (request: RangeRequest, scope, metadata) => {
      note(request, scope, metadata);
      return { header, kvs: [], more: false };
    }),
  };
  const cluster = {
    status: unary(async (): Promise<StatusResponse> => ({
      header, clusterId: 2 ** 52 + 3, id: 2, role: 'follower', term: 7, leaderId: 1, commitIndex: 10, appliedIndex: 10, lastIndex: 10,
      members: [], followers: [], version: '0.1.0', snapshotIndex: 0, firstIndex: 1, leaderTransferee: 0,
    })),
    memberList: unary(async () => ({ header, members: [] })),
    memberAdd: unary(async () => ({ header, members: [] })),
    memberPromote: unary(async () => ({ header, members: [] })),
    memberRemove: unary(async () => ({ header, members: [] })),
    leaderTransfer: unary(async () => ({ header, leaderId: 1 })),
    snapshot: unary(async () => ({ header, snapshotIndex: 5, firstIndex: 6 })),
  };
  return {
    kv: { definition: withLenientDecoding(KVService), implementation: kv },
    cluster: { definition: withLenientDecoding(ClusterService), implementation: cluster },
  };
}

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** One raw HTTP request (node:http, so that bodies, methods and headers are exactly as given). */
function send(port: number, path: string, options: { method?: string; body?: string | Buffer; headers?: Record<string, string>; chunked?: boolean } = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { 'content-type': 'application/json', ...options.headers };
    const req = httpRequest({ host: '127.0.0.1', port, path, method: options.method ?? 'POST', headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks).toString() }));
    });
    req.on('error', reject);
    req.setTimeout(10_000, () => req.destroy(new Error('no answer within 10 s')));
    if (options.chunked && options.body) {
      // No Content-Length: the bound must be counted while the body streams in.
      const body = Buffer.from(options.body);
      for (let at = 0; at < body.length; at += 1000) req.write(body.subarray(at, at + 1000));
      req.end();
    } else {
      req.end(options.body);
    }
  });
}

function json(answer: Answer): Record<string, unknown> {
  expect(answer.headers['content-type']).toBe('application/json');
  return JSON.parse(answer.body) as Record<string, unknown>;
}

test('the routes cover every unary RPC of KV, Cluster, Auth and Lease (streams excepted), each once', () => {
  const routed = GATEWAY_ROUTES.map(([, service, method]) => `${service}.${method}`);
  expect(new Set(routed).size).toBe(routed.length);
  const wanted: string[] = [];
  for (const [service, name] of [['kv', 'cairn.kv.v1.KV'], ['cluster', 'cairn.kv.v1.Cluster'], ['auth', 'cairn.kv.v1.Auth'], ['lease', 'cairn.kv.v1.Lease']] as const) {
    for (const method of descriptors().registry.getService(name)!.methods) {
      if (method.methodKind === 'unary') wanted.push(`${service}.${method.localName}`);
    }
  }
  expect([...routed].sort()).toEqual(wanted.sort());
});

describe('the HTTP/JSON gateway', () => {
  const seen: Seen = {};
  let port: HttpPort;

  beforeAll(async () => {
    const services = fakeServices(seen);
    // The routes the fakes serve (the real services have them all: see the coverage test below).
    const routes = GATEWAY_ROUTES.filter(([, service, method]) => method in (services[service]?.implementation ?? {}));
    const gateway = new Gateway(services, { maxBodyBytes: TEST_MAX_BODY_BYTES }, routes);
    const metrics = { render: async () => ({ contentType: 'text/plain', body: 'm 1\n' }) } as unknown as NodeMetrics;
    port = await HttpPort.listen('127.0.0.1:0', { metrics, live: () => true, notReadyReason: () => undefined, status: () => ({}) }, quietLogger, { gateway });
  });
  afterAll(() => port.close());

  test('put: bytes in base64 reach the handler as bytes; the answer is proto3 JSON (uint64 as strings, bytes as base64)', async () => {
    const key = Buffer.from([0, 1, 2, 255]);
    const answer = await send(port.port, '/v1/kv/put', { body: JSON.stringify({ key: key.toString('base64'), value: Buffer.from('bar').toString('base64'), prevKv: true, sequence: '9007199254740991' }) });
    expect(answer.status).toBe(200);
    expect(seen.request).toMatchObject({ key, value: Buffer.from('bar'), prevKv: true, sequence: Number.MAX_SAFE_INTEGER });
    expect(json(answer)).toEqual({
      header: { revision: String(2 ** 40 + 1), memberId: '2', leaderId: '1', raftTerm: '7' },
      prevKv: { key: key.toString('base64'), value: 'YmFy', createRevision: '3', modRevision: String(2 ** 40 + 1), version: '2' },
    });
  });

  test('field names in lowerCamelCase or as in the proto, as grpcurl accepts', async () => {
    for (const body of [{ key: 'YQ==', prevKv: true, clientId: 'c1' }, { key: 'YQ==', prev_kv: true, client_id: 'c1' }]) {
      expect((await send(port.port, '/v1/kv/put', { body: JSON.stringify(body) })).status).toBe(200);
      expect(seen.request).toMatchObject({ prevKv: true, clientId: 'c1' });
    }
  });

  test('64-bit integers are read as numbers or strings, as grpcurl accepts; enums by name or number', async () => {
    for (const limit of [5, '5']) {
      const answer = await send(port.port, '/v1/kv/range', { body: JSON.stringify({ key: 'YQ==', limit, consistency: limit === 5 ? 'CONSISTENCY_SERIALIZABLE' : Consistency.CONSISTENCY_SERIALIZABLE, prefix: true }) });
      expect(answer.status).toBe(200);
      expect(seen.request).toMatchObject({ key: Buffer.from('a'), limit: 5, consistency: Consistency.CONSISTENCY_SERIALIZABLE, prefix: true });
    }
  });

  test('a 64-bit integer beyond 2^53 - 1 is refused naming its field, as on the gRPC port', async () => {
    const answer = await send(port.port, '/v1/kv/put', { body: JSON.stringify({ key: 'YQ==', sequence: '18446744073709551615' }) });
    expect(answer.status).toBe(400);
    expect(json(answer)).toMatchObject({ code: Status.INVALID_ARGUMENT, message: expect.stringContaining('sequence') });
  });

  test('an empty body is the empty message; a status answer with a cluster id beyond 2^32 keeps every digit', async () => {
    const answer = await send(port.port, '/v1/cluster/status');
    expect(answer.status).toBe(200);
    expect(json(answer)).toMatchObject({ clusterId: String(2 ** 52 + 3), role: 'follower', version: '0.1.0' });
  });

  test('unknown field: 400 naming the field; malformed JSON, bad base64, a wrong type: 400 saying what is wrong', async () => {
    const unknown = await send(port.port, '/v1/kv/put', { body: '{"key": "YQ==", "valeu": "YQ=="}' });
    expect(unknown.status).toBe(400);
    expect(json(unknown)).toEqual({ code: Status.INVALID_ARGUMENT, message: expect.stringMatching(/valeu.*unknown|unknown.*valeu/), details: [] });
    const malformed = await send(port.port, '/v1/kv/get', { body: '{"key": ' });
    expect(malformed.status).toBe(400);
    expect(json(malformed).message).toMatch(/not JSON/);
    const base64 = await send(port.port, '/v1/kv/get', { body: '{"key": "not base64!"}' });
    expect(base64.status).toBe(400);
    expect(json(base64).message).toMatch(/key/);
    const wrongType = await send(port.port, '/v1/kv/range', { body: '{"limit": "many"}' });
    expect(wrongType.status).toBe(400);
    expect(json(wrongType).message).toMatch(/limit/);
    const notObject = await send(port.port, '/v1/kv/get', { body: '[1, 2]' });
    expect(notObject.status).toBe(400);
    expect(json(notObject).message).toMatch(/must be a JSON object \(a cairn.kv.v1.GetRequest\), got an array/);
  });

  test('wrong method: 405 with Allow: POST; unknown path under /v1/: 404 listing the routes; wrong content type: 415', async () => {
    const get = await send(port.port, '/v1/kv/get', { method: 'GET' });
    expect(get.status).toBe(405);
    expect(get.headers.allow).toBe('POST');
    expect(json(get)).toMatchObject({ code: Status.UNIMPLEMENTED, message: expect.stringContaining('POST') });
    const missing = await send(port.port, '/v1/kv/nothing', { body: '{}' });
    expect(missing.status).toBe(404);
    expect(json(missing)).toMatchObject({ code: Status.NOT_FOUND, message: expect.stringContaining('/v1/kv/put') });
    const form = await send(port.port, '/v1/kv/put', { body: 'key=a', headers: { 'content-type': 'application/x-www-form-urlencoded' } });
    expect(form.status).toBe(415);
    expect(json(form).message).toMatch(/application\/json/);
    const charset = await send(port.port, '/v1/cluster/status', { body: '{}', headers: { 'content-type': 'application/json; charset=utf-8' } });
    expect(charset.status).toBe(200);
  });

  test('the operators\' pages are unchanged next to the gateway', async () => {
    const health = await send(port.port, '/healthz', { method: 'GET' });
    expect(health).toMatchObject({ status: 200, body: 'ok\n' });
    expect((await send(port.port, '/metrics', { method: 'POST' })).status).toBe(405);
  });

  test('a body over the bound is refused with 413, with or without Content-Length, and the port keeps serving', async () => {
    const big = JSON.stringify({ key: 'YQ==', value: Buffer.alloc(TEST_MAX_BODY_BYTES).toString('base64') });
    for (const chunked of [false, true]) {
      const answer = await send(port.port, '/v1/kv/put', { body: big, chunked });
      expect(answer.status).toBe(413);
      expect(json(answer).message).toMatch(new RegExp(`${TEST_MAX_BODY_BYTES} bytes`));
    }
    expect((await send(port.port, '/v1/cluster/status')).status).toBe(200);
  });

  test('Expect: 100-continue: a body over the bound is refused before it is sent, one within it is invited', async () => {
    const expectContinue = (body: string) =>
      new Promise<{ continued: boolean; status: number }>((resolve, reject) => {
        let continued = false;
        const req = httpRequest({
          host: '127.0.0.1', port: port.port, path: '/v1/kv/put', method: 'POST',
          headers: { 'content-type': 'application/json', expect: '100-continue', 'content-length': String(Buffer.byteLength(body)) },
        }, (res) => {
          res.resume();
          res.on('end', () => resolve({ continued, status: res.statusCode! }));
        });
        req.on('continue', () => {
          continued = true;
          req.end(body);
        });
        req.on('error', reject);
        req.setTimeout(10_000, () => req.destroy(new Error('no answer within 10 s')));
        req.flushHeaders();
      });
    expect(await expectContinue(JSON.stringify({ key: 'YQ==', value: Buffer.alloc(TEST_MAX_BODY_BYTES).toString('base64') }))).toEqual({ continued: false, status: 413 });
    expect(await expectContinue(JSON.stringify({ key: 'YQ==' }))).toEqual({ continued: true, status: 200 });
  });

  test('errors: grpc-gateway\'s JSON body and HTTP status, cairn\'s code as error_code and a header, the leader as a header', async () => {
    const denied = await send(port.port, '/v1/kv/get', { body: JSON.stringify({ key: Buffer.from('denied').toString('base64') }) });
    expect(denied.status).toBe(403);
    expect(json(denied)).toEqual({ code: Status.PERMISSION_DENIED, message: 'user alice may not read key "denied"', details: [], error_code: 'PERMISSION_DENIED' });
    expect(denied.headers['cairn-error-code']).toBe('PERMISSION_DENIED');
    const notLeader = await send(port.port, '/v1/kv/get', { body: JSON.stringify({ key: Buffer.from('no-leader').toString('base64') }) });
    expect(notLeader.status).toBe(503);
    expect(json(notLeader)).toMatchObject({ code: Status.UNAVAILABLE, error_code: 'NOT_LEADER' });
    expect(notLeader.headers['cairn-leader-id']).toBe('3');
  });

  test('authorization passes through as metadata; grpc-timeout sets the deadline, none leaves --request-timeout-ms', async () => {
    const before = Date.now();
    await send(port.port, '/v1/kv/range', { body: '{}', headers: { authorization: 'Bearer tok', 'grpc-timeout': '2S' } });
    expect(seen.authorization).toBe('Bearer tok');
    expect(seen.deadlineMs).toBeGreaterThanOrEqual(before + 2000);
    expect(seen.deadlineMs).toBeLessThanOrEqual(Date.now() + 2000);
    await send(port.port, '/v1/kv/range', { body: '{}' });
    expect(seen.authorization).toBeUndefined();
    expect(seen.deadlineMs).toBeGreaterThan(before + TEST_REQUEST_TIMEOUT_MS - 1000);
    const bad = await send(port.port, '/v1/kv/range', { body: '{}', headers: { 'grpc-timeout': 'soon' } });
    expect(bad.status).toBe(400);
    expect(json(bad).message).toMatch(/grpc-timeout/);
  });

  test('a client that disconnects cancels the call: the handler\'s signal aborts', async () => {
    seen.aborted = undefined;
    const req = httpRequest({ host: '127.0.0.1', port: port.port, path: '/v1/kv/get', method: 'POST', headers: { 'content-type': 'application/json' } });
    req.on('error', () => undefined);
    req.end(JSON.stringify({ key: Buffer.from('wait').toString('base64') }));
    const started = Date.now();
    while (!seen.aborted && Date.now() - started < 10_000) await new Promise((r) => setTimeout(r, 10));
    expect(seen.aborted).toBeDefined();
    req.destroy();
    // Only the abort resolves it: the deadline is a minute away.
    let timer: NodeJS.Timeout | undefined;
    const noAbort = new Promise<string>((resolve) => (timer = setTimeout(() => resolve('no abort within 10 s'), 10_000)));
    expect(await Promise.race([seen.aborted!.then(() => 'aborted'), noAbort])).toBe('aborted');
    clearTimeout(timer);
  });
});

describe('gateway pieces', () => {
  test('every route names a method of its service; one that does not is refused at start', () => {
    const services = fakeServices({});
    const routes = GATEWAY_ROUTES.filter(([, service, method]) => method in (services[service]?.implementation ?? {}));
    expect(new Gateway(services, { maxBodyBytes: TEST_MAX_BODY_BYTES }, routes).paths()).toEqual(routes.map(([path]) => path));
    expect(() => new Gateway(services, { maxBodyBytes: TEST_MAX_BODY_BYTES })).toThrow(/gateway route to kv\.txn: no such method/);
    expect(() => new Gateway(fakeServices({}), { maxBodyBytes: 1 }, [['/v1/kv/nope', 'kv', 'nope']])).toThrow(/no such method/);
  });

  test('JSON mapping round trip: parse then print gives the same proto3 JSON', () => {
    const schema = descriptors().registry.getMessage('cairn.kv.v1.PutRequest')!;
    const text = { key: Buffer.from([0xfb, 0xff]).toString('base64'), value: 'AA==', prevKv: true, clientId: 'c', sequence: '42', lowestUnansweredSequence: '9007199254740991' };
    const message = parseBody(schema, Buffer.from(JSON.stringify(text)));
    const encoded = PutRequest.encode(PutRequest.fromPartial({ key: Buffer.from([0xfb, 0xff]), value: Buffer.from([0]), prevKv: true, clientId: 'c', sequence: 42, lowestUnansweredSequence: Number.MAX_SAFE_INTEGER })).finish();
    expect(responseJson(schema, encoded)).toEqual(text);
    expect(message).toMatchObject({ sequence: 42n, lowestUnansweredSequence: 9007199254740991n });
  });

  test('error mapping: the HTTP status of every gRPC code is grpc-gateway\'s; every cairn error code maps to one', () => {
    expect(HTTP_STATUS_OF_GRPC_CODE[Status.INVALID_ARGUMENT]).toBe(400);
    expect(HTTP_STATUS_OF_GRPC_CODE[Status.UNAUTHENTICATED]).toBe(401);
    expect(HTTP_STATUS_OF_GRPC_CODE[Status.PERMISSION_DENIED]).toBe(403);
    expect(HTTP_STATUS_OF_GRPC_CODE[Status.NOT_FOUND]).toBe(404);
    expect(HTTP_STATUS_OF_GRPC_CODE[Status.ALREADY_EXISTS]).toBe(409);
    expect(HTTP_STATUS_OF_GRPC_CODE[Status.FAILED_PRECONDITION]).toBe(400);
    expect(HTTP_STATUS_OF_GRPC_CODE[Status.RESOURCE_EXHAUSTED]).toBe(429);
    expect(HTTP_STATUS_OF_GRPC_CODE[Status.UNAVAILABLE]).toBe(503);
    expect(HTTP_STATUS_OF_GRPC_CODE[Status.DEADLINE_EXCEEDED]).toBe(504);
    expect(HTTP_STATUS_OF_GRPC_CODE[Status.ABORTED]).toBe(409);
    for (const code of Object.values(ErrorCode)) {
      const status = toGrpcError(new CairnError(code, 'm'));
      expect({ code, http: HTTP_STATUS_OF_GRPC_CODE[status.code] }).toEqual({ code, http: expect.any(Number) });
      expect(errorBody(status)).toEqual({ code: status.code, message: 'm', details: [], error_code: code });
    }
  });

  test('grpc-timeout units', () => {
    const at = (value: string) => deadlineOf({ headers: { 'grpc-timeout': value } }, 1000);
    expect(at('3S')).toBe(4000);
    expect(at('250m')).toBe(1250);
    expect(at('1M')).toBe(61_000);
    expect(at('2000000u')).toBe(3000);
    expect(deadlineOf({ headers: {} })).toBe(Infinity);
    expect(() => at('123456789S')).toThrow(/grpc-timeout/);
  });

  test('the body bound holds the client port\'s largest message in base64', () => {
    const grpcMax = clientMaxMessageBytes({ maxRequestBytes: 1_572_864 });
    expect(maxGatewayBodyBytes(grpcMax)).toBeGreaterThanOrEqual(Math.ceil((grpcMax * 4) / 3));
  });
});
