import { EventEmitter } from 'node:events';
import { IncomingMessage, ServerResponse } from 'node:http';
import { TLSSocket } from 'node:tls';
import { create, DescMessage, fromBinary, fromJson, JsonValue, toBinary, toJson } from '@bufbuild/protobuf';
import { Metadata, sendUnaryData, ServerUnaryCall, status as Status } from '@grpc/grpc-js';
import { clientMaxMessageBytes, ServerConfig } from './config';
import { descriptors } from './descriptors';
import { AUTHORIZATION_METADATA } from './auth';
import { ERROR_CODE_METADATA, GrpcError, LEADER_ID_METADATA } from './status';

/**
 * The HTTP/JSON gateway on the HTTP port (`--http-addr`): `POST /v1/kv/put` and the other
 * routes of GATEWAY_ROUTES run the very same gRPC handlers (services.ts) in-process, with a
 * call-like object made from the HTTP request. Bodies are proto3 JSON as grpcurl reads and
 * prints it (lowerCamelCase names, bytes in base64, 64-bit integers as strings), mapped by
 * @bufbuild/protobuf from the descriptors in gen/ and bridged to the generated ts-proto
 * types through their binary encoding, so no field is mapped by hand.
 */

/** Every gateway route starts with this; other paths are the operators' pages (http.ts). */
export const GATEWAY_PATH_PREFIX = '/v1/';

/**
 * The routes: HTTP path, the service it belongs to (a key of GatewayServices) and the
 * generated method name. A new RPC is one row.
 */
export const GATEWAY_ROUTES: readonly (readonly [path: string, service: string, method: string])[] = [
  ['/v1/kv/put', 'kv', 'put'],
  ['/v1/kv/get', 'kv', 'get'],
  ['/v1/kv/delete', 'kv', 'delete'],
  ['/v1/kv/range', 'kv', 'range'],
  ['/v1/kv/txn', 'kv', 'txn'],
  ['/v1/kv/compact', 'kv', 'compact'],
  ['/v1/lease/grant', 'lease', 'leaseGrant'],
  ['/v1/lease/revoke', 'lease', 'leaseRevoke'],
  ['/v1/lease/keepalive', 'lease', 'leaseRenew'],
  ['/v1/lease/timetolive', 'lease', 'leaseTimeToLive'],
  ['/v1/lease/leases', 'lease', 'leaseLeases'],
  ['/v1/auth/authenticate', 'auth', 'authenticate'],
  ['/v1/auth/status', 'auth', 'authStatus'],
  ['/v1/auth/enable', 'auth', 'authEnable'],
  ['/v1/auth/disable', 'auth', 'authDisable'],
  ['/v1/auth/user/add', 'auth', 'userAdd'],
  ['/v1/auth/user/delete', 'auth', 'userDelete'],
  ['/v1/auth/user/changepw', 'auth', 'userChangePassword'],
  ['/v1/auth/user/grant', 'auth', 'userGrantRole'],
  ['/v1/auth/user/revoke', 'auth', 'userRevokeRole'],
  ['/v1/auth/user/list', 'auth', 'userList'],
  ['/v1/auth/role/add', 'auth', 'roleAdd'],
  ['/v1/auth/role/delete', 'auth', 'roleDelete'],
  ['/v1/auth/role/grant', 'auth', 'roleGrantPermission'],
  ['/v1/auth/role/revoke', 'auth', 'roleRevokePermission'],
  ['/v1/auth/role/list', 'auth', 'roleList'],
  ['/v1/cluster/status', 'cluster', 'status'],
  ['/v1/cluster/member/list', 'cluster', 'memberList'],
  ['/v1/cluster/member/add', 'cluster', 'memberAdd'],
  ['/v1/cluster/member/promote', 'cluster', 'memberPromote'],
  ['/v1/cluster/member/remove', 'cluster', 'memberRemove'],
  ['/v1/cluster/leader/transfer', 'cluster', 'leaderTransfer'],
  ['/v1/cluster/snapshot', 'cluster', 'snapshot'],
];

/**
 * JSON bytes allowed on top of a request's largest protobuf encoding: field names, quotes,
 * braces and whitespace around the base64 text.
 */
export const GATEWAY_JSON_OVERHEAD_BYTES = 64 * 1024;

/**
 * The largest request body the gateway reads, counted as it streams in: the client port's
 * largest gRPC message (`grpcMaxMessageBytes`) in base64 (4/3 of it) plus
 * GATEWAY_JSON_OVERHEAD_BYTES. A larger body is answered 413 without being read whole.
 */
export function maxGatewayBodyBytes(grpcMaxMessageBytes: number): number {
  return Math.ceil(grpcMaxMessageBytes / 3) * 4 + GATEWAY_JSON_OVERHEAD_BYTES;
}

/** The HTTP status grpc-gateway answers for each gRPC code (its runtime.HTTPStatusFromCode). */
export const HTTP_STATUS_OF_GRPC_CODE: Record<Status, number> = {
  [Status.OK]: 200,
  [Status.CANCELLED]: 499,
  [Status.UNKNOWN]: 500,
  [Status.INVALID_ARGUMENT]: 400,
  [Status.DEADLINE_EXCEEDED]: 504,
  [Status.NOT_FOUND]: 404,
  [Status.ALREADY_EXISTS]: 409,
  [Status.PERMISSION_DENIED]: 403,
  [Status.UNAUTHENTICATED]: 401,
  [Status.RESOURCE_EXHAUSTED]: 429,
  [Status.FAILED_PRECONDITION]: 400,
  [Status.ABORTED]: 409,
  [Status.OUT_OF_RANGE]: 400,
  [Status.UNIMPLEMENTED]: 501,
  [Status.INTERNAL]: 500,
  [Status.UNAVAILABLE]: 503,
  [Status.DATA_LOSS]: 500,
};

/** The response header (and error body field `error_code`) carrying cairn's own error code. */
export const GATEWAY_ERROR_CODE_HEADER = ERROR_CODE_METADATA;
/** The response header naming the leader on NOT_LEADER and the like, as the gRPC trailer does. */
export const GATEWAY_LEADER_ID_HEADER = LEADER_ID_METADATA;
/** The request header with a gRPC-style deadline (`500m`, `5S`: digits and a unit H M S m u n). */
export const GATEWAY_TIMEOUT_HEADER = 'grpc-timeout';

/** A unary handler as the generated service implementations hold them. */
type UnaryHandler = (call: ServerUnaryCall<unknown, unknown>, callback: sendUnaryData<unknown>) => void;

/** A method of a generated service definition (ts-proto's `KVService.put`, say). */
interface MethodDefinition {
  path: string;
  requestDeserialize: (bytes: Buffer) => unknown;
  responseSerialize: (value: never) => Buffer;
}

/** One service the gateway serves: its generated definition and the implementation the gRPC server runs. */
export interface GatewayService {
  definition: Record<string, MethodDefinition>;
  implementation: object;
}

/** The services by the names GATEWAY_ROUTES uses ("kv", "cluster"). */
export type GatewayServices = Record<string, GatewayService>;

interface Route {
  grpcPath: string;
  requestSchema: DescMessage;
  responseSchema: DescMessage;
  definition: MethodDefinition;
  handler: UnaryHandler;
}

export interface GatewayOptions {
  /** See maxGatewayBodyBytes. */
  maxBodyBytes: number;
  /**
   * The port is HTTPS with --client-ca-file: a gateway request must come over a connection
   * whose client certificate the bundle verified (else 401), as the client port refuses the
   * connection; the certificate's common name may then stand for the user (auth.ts).
   */
  requireClientCertificate?: boolean;
}

/** The gateway of a node: its limits from the node's flags. */
export function nodeGateway(config: Pick<ServerConfig, 'limits' | 'tls'>, services: GatewayServices): Gateway {
  return new Gateway(services, {
    maxBodyBytes: maxGatewayBodyBytes(clientMaxMessageBytes(config.limits)),
    requireClientCertificate: Boolean(config.tls.client?.caFile),
  });
}

/** An error the gateway answers before any handler runs (bad method, body, JSON). */
class GatewayRequestError extends Error {
  constructor(
    readonly httpStatus: number,
    readonly grpcCode: Status,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

export class Gateway {
  private readonly routes = new Map<string, Route>();

  constructor(
    services: GatewayServices,
    private readonly options: GatewayOptions,
    routes = GATEWAY_ROUTES,
  ) {
    for (const [path, serviceName, method] of routes) this.routes.set(path, routeOf(services, serviceName, method));
  }

  /** Whether `path` is the gateway's (answered by serve, a 404 included), not an operators' page. */
  handles(path: string): boolean {
    return path.startsWith(GATEWAY_PATH_PREFIX);
  }

  /** The routes' HTTP paths, for messages and docs. */
  paths(): string[] {
    return [...this.routes.keys()];
  }

  /**
   * Answers one gateway request; never throws (every failure is a JSON error answer).
   * `awaitingContinue`: the client sent `Expect: 100-continue` (http.ts's checkContinue) and
   * sends its body only after a 100, which is written once the request passed every check
   * that does not need the body; a refusal before it closes the connection, since the body
   * may never come.
   */
  async serve(req: IncomingMessage, res: ServerResponse, awaitingContinue = false): Promise<void> {
    let continued = !awaitingContinue;
    try {
      const route = this.routeFor(req);
      const deadline = deadlineOf(req);
      checkDeclaredLength(req, this.options.maxBodyBytes);
      if (!continued) {
        res.writeContinue();
        continued = true;
      }
      const body = await readBody(req, this.options.maxBodyBytes);
      const request = route.definition.requestDeserialize(Buffer.from(toBinary(route.requestSchema, parseBody(route.requestSchema, body))));
      await runHandler(route, request, req, res, deadline, this.options.requireClientCertificate ?? false);
    } catch (err) {
      // A body the client sends is read to its end and dropped, not left unread: closing over
      // unread bytes resets the connection, which can lose the answer before the client reads it.
      if (continued) req.resume();
      if (err instanceof GatewayRequestError) {
        sendError(res, err.httpStatus, { code: err.grpcCode, details: err.message }, continued ? err.headers : { ...err.headers, Connection: 'close' });
      } else {
        sendError(res, 500, { code: Status.INTERNAL, details: `internal error: ${(err as Error).message}` });
      }
    }
  }

  private routeFor(req: IncomingMessage): Route {
    const path = (req.url ?? '/').split('?')[0]!;
    if (this.options.requireClientCertificate && !hasVerifiedClientCertificate(req)) {
      throw new GatewayRequestError(401, Status.UNAUTHENTICATED, 'the gateway needs a client certificate that --client-ca-file verifies (as the client port does); /healthz, /readyz and /metrics do not');
    }
    const route = this.routes.get(path);
    if (!route) throw new GatewayRequestError(404, Status.NOT_FOUND, `no gateway route ${path} (routes: ${this.paths().join(', ')})`);
    if (req.method !== 'POST') throw new GatewayRequestError(405, Status.UNIMPLEMENTED, `method ${req.method} not allowed on ${path}: gateway routes take POST with a JSON body`, { Allow: 'POST' });
    const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
    // Only JSON: a browser may POST a form or text/plain to any site without asking, JSON it may not.
    if (type !== 'application/json') {
      throw new GatewayRequestError(415, Status.INVALID_ARGUMENT, `content type ${type ? `"${type}"` : 'missing'}: gateway routes take "application/json" (curl: -H 'content-type: application/json')`);
    }
    return route;
  }
}

function routeOf(services: GatewayServices, serviceName: string, method: string): Route {
  const service = services[serviceName];
  const definition = service?.definition[method];
  const handler = (service?.implementation as Record<string, unknown> | undefined)?.[method];
  if (!definition || typeof handler !== 'function') throw new Error(`gateway route to ${serviceName}.${method}: no such method`);
  const match = /^\/([^/]+)\/([^/]+)$/.exec(definition.path);
  const descriptor = match && descriptors().registry.getService(match[1]!)?.methods.find((m) => m.name === match[2]);
  if (!descriptor || descriptor.methodKind !== 'unary') throw new Error(`gateway route to ${definition.path}: not a unary method of the descriptor set`);
  return { grpcPath: definition.path, requestSchema: descriptor.input, responseSchema: descriptor.output, definition, handler: handler as UnaryHandler };
}

/** A Content-Length over the bound is refused before the body is read (what comes of it is dropped, never kept). */
function checkDeclaredLength(req: IncomingMessage, maxBytes: number): void {
  if (Number(req.headers['content-length']) > maxBytes) throw tooLarge(maxBytes);
}

/** Reads the body, counting bytes as they arrive: past `maxBytes` it stops with 413, keeping nothing more. */
function readBody(req: IncomingMessage, maxBytes: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let bytes = 0;
    const onData = (chunk: Buffer) => {
      bytes += chunk.length;
      if (bytes > maxBytes) {
        cleanUp();
        reject(tooLarge(maxBytes));
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = () => {
      cleanUp();
      resolve(Buffer.concat(chunks, bytes));
    };
    const onError = (err: Error) => {
      cleanUp();
      reject(new GatewayRequestError(400, Status.INVALID_ARGUMENT, `request body not read: ${err.message}`));
    };
    // A client gone before the end of its body: nothing will answer it, but nothing may wait either.
    const onClose = () => onError(new Error('the connection closed before the body ended'));
    const cleanUp = () => {
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onError);
      req.off('close', onClose);
    };
    req.on('data', onData);
    req.once('end', onEnd);
    req.once('error', onError);
    req.once('close', onClose);
  });
}

function tooLarge(maxBytes: number): GatewayRequestError {
  return new GatewayRequestError(413, Status.INVALID_ARGUMENT, `request body over the gateway's limit of ${maxBytes} bytes (maxGatewayBodyBytes, from --max-request-bytes)`);
}

/** The request message a body stands for: an empty body is the empty message. */
export function parseBody(schema: DescMessage, body: Buffer): ReturnType<typeof create> {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(body);
  } catch {
    throw new GatewayRequestError(400, Status.INVALID_ARGUMENT, 'request body is not UTF-8 text');
  }
  if (text.trim() === '') return create(schema);
  let json: JsonValue;
  try {
    json = JSON.parse(text) as JsonValue;
  } catch (err) {
    throw new GatewayRequestError(400, Status.INVALID_ARGUMENT, `request body is not JSON: ${(err as Error).message}`);
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) {
    throw new GatewayRequestError(400, Status.INVALID_ARGUMENT, `request body must be a JSON object (a ${schema.typeName}), got ${Array.isArray(json) ? 'an array' : JSON.stringify(json)}`);
  }
  try {
    return fromJson(schema, json);
  } catch (err) {
    // @bufbuild/protobuf names the field: `key "foo" is unknown`, `invalid base64 string`.
    throw new GatewayRequestError(400, Status.INVALID_ARGUMENT, `request body is not a ${schema.typeName} in proto3 JSON: ${(err as Error).message.replace(/^cannot decode message [\w.]+ from JSON: /, '')}`);
  }
}

/** The response message as proto3 JSON, as grpcurl prints it (defaults left out, 64-bit integers as strings). */
export function responseJson(schema: DescMessage, encoded: Uint8Array): JsonValue {
  return toJson(schema, fromBinary(schema, encoded));
}

const TIMEOUT_UNIT_MS: Record<string, number> = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 1e-3, n: 1e-6 };

/**
 * The deadline of the `grpc-timeout` header (gRPC's format: up to 8 digits and a unit), or
 * Infinity when there is none: the handler then caps it at --request-timeout-ms, as for a
 * gRPC call without a deadline.
 */
export function deadlineOf(req: Pick<IncomingMessage, 'headers'>, nowMs = Date.now()): number {
  const header = req.headers[GATEWAY_TIMEOUT_HEADER];
  if (header === undefined) return Infinity;
  const match = typeof header === 'string' ? /^(\d{1,8})([HMSmun])$/.exec(header.trim()) : null;
  if (!match) throw new GatewayRequestError(400, Status.INVALID_ARGUMENT, `${GATEWAY_TIMEOUT_HEADER} header "${String(header)}" is not 1-8 digits and a unit (H, M, S, m, u, n)`);
  return nowMs + Number(match[1]) * TIMEOUT_UNIT_MS[match[2]!]!;
}

/** The gRPC metadata a request carries: only `authorization` (a bearer token) passes through. */
export function metadataOf(req: Pick<IncomingMessage, 'headers'>): Metadata {
  const metadata = new Metadata();
  const authorization = req.headers[AUTHORIZATION_METADATA];
  if (typeof authorization === 'string') metadata.set(AUTHORIZATION_METADATA, authorization);
  return metadata;
}

/** grpc-js's getPeer() text for the request's socket. */
function peerOf(req: IncomingMessage): string {
  const { remoteAddress, remotePort } = req.socket;
  if (!remoteAddress) return 'unknown';
  return remoteAddress.includes(':') ? `[${remoteAddress}]:${remotePort}` : `${remoteAddress}:${remotePort}`;
}

/**
 * Runs the route's handler with a call-like object (what services.ts's unary wrapper
 * reads: request, metadata, deadline, path, auth context, and 'cancelled' when the HTTP
 * client goes away first) and answers with what it calls back.
 */
function runHandler(route: Route, request: unknown, req: IncomingMessage, res: ServerResponse, deadlineMs: number, certificatesVerified: boolean): Promise<void> {
  return new Promise((resolve) => {
    let answered = false;
    const call = Object.assign(new EventEmitter(), {
      request,
      metadata: metadataOf(req),
      getPeer: () => peerOf(req),
      getDeadline: () => deadlineMs,
      getPath: () => route.grpcPath,
      getAuthContext: () => authContextOf(req, certificatesVerified),
      cancelled: false,
    });
    const onClose = () => {
      if (answered) return;
      answered = true;
      call.cancelled = true;
      call.emit('cancelled', 'client disconnected');
      resolve();
    };
    res.once('close', onClose);
    route.handler(call as unknown as ServerUnaryCall<unknown, unknown>, (err, value) => {
      if (answered) return;
      answered = true;
      res.off('close', onClose);
      try {
        if (err) sendError(res, HTTP_STATUS_OF_GRPC_CODE[(err as GrpcError).code ?? Status.UNKNOWN] ?? 500, err as GrpcError);
        else sendJson(res, 200, responseJson(route.responseSchema, route.definition.responseSerialize(value as never)));
      } catch (failure) {
        sendError(res, 500, { code: Status.INTERNAL, details: `internal error: the answer does not encode: ${(failure as Error).message}` });
      }
      resolve();
    });
  });
}

function hasVerifiedClientCertificate(req: IncomingMessage): boolean {
  return req.socket instanceof TLSSocket && req.socket.authorized;
}

/** What services.callIdentityOf reads: a verified client certificate's subject, on a TLS socket. */
function authContextOf(req: IncomingMessage, certificatesVerified: boolean): { transportSecurityType?: string; sslPeerCertificate?: unknown } {
  const socket = req.socket;
  if (!(socket instanceof TLSSocket)) return {};
  if (!certificatesVerified || !socket.authorized) return { transportSecurityType: 'ssl' };
  return { transportSecurityType: 'ssl', sslPeerCertificate: socket.getPeerCertificate() };
}

/** The error body grpc-gateway writes, plus cairn's code as `error_code` (and as a header). */
export function errorBody(err: Pick<GrpcError, 'code' | 'details' | 'metadata'>): { code: number; message: string; details: unknown[]; error_code?: string } {
  const errorCode = err.metadata?.get(ERROR_CODE_METADATA)[0];
  return { code: err.code, message: err.details ?? '', details: [], ...(typeof errorCode === 'string' ? { error_code: errorCode } : {}) };
}

function sendError(res: ServerResponse, httpStatus: number, err: Pick<GrpcError, 'code' | 'details' | 'metadata'>, headers: Record<string, string> = {}): void {
  const body = errorBody(err);
  const extra: Record<string, string> = { ...headers };
  if (body.error_code) extra[GATEWAY_ERROR_CODE_HEADER] = body.error_code;
  const leader = err.metadata?.get(LEADER_ID_METADATA)[0];
  if (typeof leader === 'string') extra[GATEWAY_LEADER_ID_HEADER] = leader;
  sendJson(res, httpStatus, body, extra);
}

function sendJson(res: ServerResponse, httpStatus: number, value: unknown, headers: Record<string, string> = {}): void {
  if (res.headersSent || res.destroyed) return;
  const text = JSON.stringify(value);
  res.writeHead(httpStatus, { 'Content-Type': 'application/json', 'Cache-Control': 'no-store', 'Content-Length': Buffer.byteLength(text), ...headers });
  res.end(text);
}
