import { status as Status } from '@grpc/grpc-js';
import { Consistency, RangeRequest } from '../../gen/cairn/kv/v1/kv';
import { CairnError, ErrorCode } from '../../src/errors';
import { ERROR_CODE_METADATA, toGrpcError } from '../../src/server/status';
import { buildServerConfig, parsePeers, SERVE_FLAGS } from '../../src/server/config';
import { deriveClusterId } from '../../src/server/identity';
import { prefixEnd, validateDelete, validatePut, validateRange } from '../../src/server/validate';
import { parseArgs, resolveFlags } from '../../src/cli/flags';
import { splitWords } from '../../src/cli/shell';

const limits = { maxKeyBytes: 8, maxValueBytes: 16, maxRequestBytes: 20, maxRangeLimit: 100, maxRangeBytes: 1000, maxClientIdBytes: 10 };
const range = (overrides: Partial<RangeRequest>): RangeRequest => ({
  key: Buffer.from('a'),
  rangeEnd: Buffer.alloc(0),
  limit: 0,
  keysOnly: false,
  consistency: Consistency.CONSISTENCY_UNSPECIFIED,
  prefix: false,
  ...overrides,
});

describe('request validation', () => {
  test('puts: empty keys, oversized keys, values and requests, and bad sessions name the problem', () => {
    const put = (key: string, value: string, clientId = '', sequence = 0) => () =>
      validatePut({ key: Buffer.from(key), value: Buffer.from(value), prevKv: false, clientId, sequence, lowestUnansweredSequence: 0 }, limits);
    expect(put('', 'v')).toThrow('key is empty');
    expect(put('123456789', 'v')).toThrow('over the limit of 8 (--max-key-bytes)');
    expect(put('k', 'x'.repeat(17))).toThrow('--max-value-bytes');
    expect(put('12345678', 'x'.repeat(13))).toThrow('--max-request-bytes');
    expect(put('k', 'v', 'c', 0)).toThrow('sequence must be >= 1');
    expect(put('k', 'v', '', 3)).toThrow('sequence needs a client_id');
    expect(put('k', 'v', 'c'.repeat(11), 1)).toThrow('client_id is 11 bytes');
    expect(put('k', 'v', 'c', 1)).not.toThrow();
  });

  test('a session\'s lowest_unanswered_sequence must not be above the sequence, and needs a client_id', () => {
    const write = (clientId: string, sequence: number, lowestUnansweredSequence: number) => ({ key: Buffer.from('k'), prevKv: false, clientId, sequence, lowestUnansweredSequence });
    expect(() => validatePut({ ...write('c', 3, 4), value: Buffer.from('v') }, limits)).toThrow('lowest_unanswered_sequence 4 is above sequence 3');
    expect(() => validateDelete(write('c', 3, 4), limits)).toThrow('lowest_unanswered_sequence 4 is above sequence 3');
    expect(() => validateDelete(write('', 0, 1), limits)).toThrow('lowest_unanswered_sequence needs a client_id');
    for (const lowest of [0, 1, 3]) expect(() => validateDelete(write('c', 3, lowest), limits)).not.toThrow();
  });

  test('ranges: single key, to the end, [start, end), limits', () => {
    expect(validateRange(range({}), limits)).toEqual({ start: Buffer.from('a'), end: Buffer.from('a\0'), limit: 100 });
    expect(validateRange(range({ rangeEnd: Buffer.from([0]), limit: 5 }), limits)).toEqual({ start: Buffer.from('a'), end: undefined, limit: 5 });
    expect(validateRange(range({ key: Buffer.alloc(0), rangeEnd: Buffer.from([0]) }), limits).end).toBeUndefined();
    expect(() => validateRange(range({ rangeEnd: Buffer.from('a') }), limits)).toThrow('range_end must sort after key');
    expect(() => validateRange(range({ limit: 101 }), limits)).toThrow('--max-range-limit');
    expect(() => validateRange(range({ consistency: 7 as Consistency }), limits)).toThrow('unknown consistency');
    expect(() => validateRange(range({ key: Buffer.alloc(0) }), limits)).toThrow('key is empty');
    expect(validateRange(range({ key: Buffer.from('ab'), prefix: true }), limits)).toEqual({ start: Buffer.from('ab'), end: Buffer.from('ac'), limit: 100 });
    expect(validateRange(range({ key: Buffer.alloc(0), prefix: true }), limits).end).toBeUndefined();
    expect(validateRange(range({ key: Buffer.from([0xff]), prefix: true }), limits).end).toBeUndefined();
    expect(() => validateRange(range({ prefix: true, rangeEnd: Buffer.from('z') }), limits)).toThrow('range_end must be empty when prefix is set');
  });

  test('prefixEnd is the first key after every key with the prefix', () => {
    expect(prefixEnd(Buffer.from('app/'))).toEqual(Buffer.from('app0'));
    expect(prefixEnd(Buffer.from([0x61, 0xff]))).toEqual(Buffer.from([0x62]));
    expect(prefixEnd(Buffer.from([0xff, 0xff]))).toEqual(Buffer.from([0]));
  });
});

describe('server configuration', () => {
  const values = (overrides: Record<string, string>) => resolveFlags(SERVE_FLAGS, overrides, {});

  test('flags beat environment variables, which beat defaults', () => {
    const resolved = resolveFlags(SERVE_FLAGS, { id: '2' }, { CAIRN_ID: '3', CAIRN_DATA_DIR: '/env' });
    expect(resolved.id).toBe('2');
    expect(resolved['data-dir']).toBe('/env');
    expect(resolved['log-level']).toBe('info');
    expect(() => resolveFlags(SERVE_FLAGS, { bogus: '1' }, {})).toThrow('unknown flag --bogus');
  });

  test('peers and timing parse, with clear errors', () => {
    expect([...parsePeers('1=a:1,2=b:2')]).toEqual([
      [1, 'a:1'],
      [2, 'b:2'],
    ]);
    expect(() => parsePeers('1=a:1,1=b:2')).toThrow('names node 1 twice');
    expect(() => parsePeers('x')).toThrow('not ID=HOST:PORT');
    expect(() => buildServerConfig(values({ id: '4', peers: '1=a:1' }))).toThrow('does not name this node');
    expect(() => buildServerConfig(values({ id: '1', timing: 'fast' }))).toThrow('--timing');
    expect(() => buildServerConfig(values({ id: '1', 'heartbeat-ticks': '10', 'election-ticks': '10' }))).toThrow('must be below');
    const demo = buildServerConfig(values({ id: '1', timing: 'demo' }));
    expect([demo.tickMs, demo.electionTicks, demo.heartbeatTicks]).toEqual([1000, 5, 2]);
    expect(buildServerConfig(values({ id: '1', timing: 'demo', 'tick-ms': '20' })).tickMs).toBe(20);
  });

  test('the cluster id depends on the token and the members, not on their order', () => {
    const a = deriveClusterId('t', parsePeers('1=a:1,2=b:2'));
    expect(deriveClusterId('t', parsePeers('2=b:2,1=a:1'))).toBe(a);
    expect(deriveClusterId('u', parsePeers('1=a:1,2=b:2'))).not.toBe(a);
    expect(deriveClusterId('t', parsePeers('1=a:1,2=c:2'))).not.toBe(a);
    expect(Number.isSafeInteger(a)).toBe(true);
  });
});

describe('command line', () => {
  test('arguments and flags in either form', () => {
    expect(parseArgs(['put', 'k', 'v', '--endpoints', 'x:1', '--limit=3'])).toEqual({ positional: ['put', 'k', 'v'], flags: { endpoints: 'x:1', limit: '3' } });
    expect(() => parseArgs(['--endpoints'])).toThrow('needs a value');
  });

  test('the shell splits quoted values', () => {
    expect(splitWords('SET motd "hello there"')).toEqual(['SET', 'motd', 'hello there']);
    expect(splitWords('  get   k ')).toEqual(['get', 'k']);
  });
});

describe('session errors as gRPC status', () => {
  test('SESSION_EXPIRED is FAILED_PRECONDITION and SESSION_LIMIT is RESOURCE_EXHAUSTED, each with its cairn-error-code trailer', () => {
    for (const [code, status] of [
      [ErrorCode.SESSION_EXPIRED, Status.FAILED_PRECONDITION],
      [ErrorCode.SESSION_LIMIT, Status.RESOURCE_EXHAUSTED],
    ] as const) {
      const grpc = toGrpcError(new CairnError(code, 'why'));
      expect(grpc.code).toBe(status);
      expect(grpc.details).toBe('why');
      expect(grpc.metadata?.get(ERROR_CODE_METADATA)).toEqual([code]);
    }
  });
});
