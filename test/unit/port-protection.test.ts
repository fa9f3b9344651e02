import { DEFAULT_STATE_CACHE_BYTES } from '../../src/kv/record-cache';
import { DEFAULT_LEVELDB_WRITE_BUFFER_BYTES } from '../../src/storage/db';
import { resolveFlags } from '../../src/cli/flags';
import { buildServerConfig, PEER_IDLE_TIMEOUT_MS, PEER_MAX_CONCURRENT_STREAMS, SERVE_FLAGS } from '../../src/server/config';
import { createServer } from 'node:net';
import { credentials, makeGenericClientConstructor, Server } from '@grpc/grpc-js';
import { GuardedPort, splitHostPort } from '../../src/server/connection-guard';
import { createLogger } from '../../src/server/logger';

const config = (overrides: Record<string, string>, env: Record<string, string> = {}) => buildServerConfig(resolveFlags(SERVE_FLAGS, { id: '1', ...overrides }, env));

describe('port protection flags', () => {
  test('defaults, flags and environment variables reach both ports', () => {
    const defaults = config({});
    expect(defaults.clientPortProtection).toEqual({
      maxConnections: 1024,
      maxConcurrentStreams: 256,
      handshakeTimeoutMs: 5000,
      idleTimeoutMs: 300_000,
      keepaliveTimeMs: 10_000,
      keepaliveTimeoutMs: 5000,
    });
    expect(defaults.peerPortProtection).toMatchObject({ maxConnections: 64, maxConcurrentStreams: PEER_MAX_CONCURRENT_STREAMS, idleTimeoutMs: PEER_IDLE_TIMEOUT_MS });
    const tuned = config({ 'max-client-connections': '7', 'handshake-timeout-ms': '900' }, { CAIRN_KEEPALIVE_TIME_MS: '1234', CAIRN_MAX_PEER_CONNECTIONS: '3' });
    expect(tuned.clientPortProtection).toMatchObject({ maxConnections: 7, handshakeTimeoutMs: 900, keepaliveTimeMs: 1234 });
    expect(tuned.peerPortProtection).toMatchObject({ maxConnections: 3, handshakeTimeoutMs: 900, keepaliveTimeMs: 1234 });
  });

  test('a bound that is not a positive integer is refused naming the flag', () => {
    expect(() => config({ 'max-client-connections': '0' })).toThrow('--max-client-connections must be an integer >= 1');
    expect(() => config({ 'keepalive-timeout-ms': 'soon' })).toThrow('--keepalive-timeout-ms');
  });

  test('listen addresses split into host and port, IPv6 included', () => {
    expect(splitHostPort('127.0.0.1:0')).toEqual({ host: '127.0.0.1', port: 0 });
    expect(splitHostPort('[::1]:7001')).toEqual({ host: '::1', port: 7001 });
    expect(() => splitHostPort('localhost')).toThrow('is not HOST:PORT');
  });
});

test('a port in use is one clear INVALID_ARGUMENT line naming the flag', async () => {
  const squatter = createServer();
  await new Promise<void>((resolve) => squatter.listen(0, '127.0.0.1', resolve));
  const addr = `127.0.0.1:${(squatter.address() as { port: number }).port}`;
  const port = new GuardedPort('peer', config({}).peerPortProtection, createLogger('silent'));
  const server = new Server(port.serverOptions());
  await expect(port.listen(server, addr)).rejects.toMatchObject({
    code: 'INVALID_ARGUMENT',
    message: `cannot listen on --peer-addr ${addr}: the address is already in use (another process listens there)`,
  });
  server.forceShutdown();
  await new Promise<void>((resolve) => squatter.close(() => resolve()));
});

describe('storage flags', () => {
  test('--state-cache-bytes and --leveldb-write-buffer-bytes: defaults, flags, environment, bad values', () => {
    expect(config({}).stateCacheBytes).toBe(DEFAULT_STATE_CACHE_BYTES);
    expect(config({}).leveldbWriteBufferBytes).toBe(DEFAULT_LEVELDB_WRITE_BUFFER_BYTES);
    expect(config({ 'state-cache-bytes': '0' }).stateCacheBytes).toBe(0);
    expect(config({}, { CAIRN_LEVELDB_WRITE_BUFFER_BYTES: '8388608' }).leveldbWriteBufferBytes).toBe(8 << 20);
    expect(() => config({ 'leveldb-write-buffer-bytes': '1000' })).toThrow(/--leveldb-write-buffer-bytes must be an integer >= 65536/);
    expect(() => config({ 'state-cache-bytes': '-1' })).toThrow(/--state-cache-bytes must be an integer >= 0/);
  });
});

describe('shutdown', () => {
  const echo = {
    ping: {
      path: '/cairn.test.Echo/Ping',
      requestStream: false,
      responseStream: false,
      requestSerialize: (b: Buffer) => b,
      requestDeserialize: (b: Buffer) => b,
      responseSerialize: (b: Buffer) => b,
      responseDeserialize: (b: Buffer) => b,
    },
  } as const;

  // A removed leader answers MemberRemove and stops in the same moment: on Node 26 the
  // drain used to report done while the answer's last frames were unwritten, and cutting
  // the sockets then turned a success into UNAVAILABLE for the caller.
  test.each(['after', 'before'] as const)('a call answered just %s the shutdown starts reaches its caller, and the port reports drained', async (when) => {
    const port = new GuardedPort('client', config({}).clientPortProtection, createLogger('silent'));
    const server = new Server(port.serverOptions());
    let stopped: Promise<'drained' | 'forced'> | undefined;
    server.addService(echo, {
      ping: (call: { request: Buffer }, answer: (err: null, value: Buffer) => void) => {
        if (when === 'after') stopped = port.shutdown(server, 3000, 1000);
        answer(null, Buffer.concat([Buffer.from('pong:'), call.request]));
        if (when === 'before') stopped = port.shutdown(server, 3000, 1000);
      },
    });
    const portNumber = await port.listen(server, '127.0.0.1:0');
    const Client = makeGenericClientConstructor(echo, 'Echo');
    const client = new Client(`127.0.0.1:${portNumber}`, credentials.createInsecure());
    const reply = await new Promise<Buffer>((resolve, reject) =>
      (client as unknown as { ping: (req: Buffer, done: (err: Error | null, res?: Buffer) => void) => void }).ping(Buffer.from('x'), (err, res) => (err ? reject(err) : resolve(res!))),
    );
    client.close();
    expect(reply.toString()).toBe('pong:x');
    expect(await stopped).toBe('drained');
    expect(port.openConnections()).toBe(0);
  });
});
