import { BinaryWriter } from '@bufbuild/protobuf/wire';
import { KVService, RangeRequest } from '../../gen/cairn/kv/v1/kv';
import { requestMessageOf } from '../../src/server/descriptors';
import { withLenientDecoding } from '../../src/server/services';
import { findUnsupportedInteger } from '../../src/server/unsafe-integers';

/** What withLenientDecoding hands the handler for bytes that do not decode. */
const malformedReason = (request: unknown): string | undefined => {
  const symbol = Object.getOwnPropertySymbols(request as object)[0];
  return symbol === undefined ? undefined : (request as Record<symbol, string>)[symbol];
};

const TOO_BIG = 18446744073709551615n;

describe('uint64 fields beyond 2^53 - 1', () => {
  const lenient = withLenientDecoding(KVService);

  test('a Range with limit 2^64 - 1 is refused naming the field, its number, the value and the limit', () => {
    const bytes = Buffer.from(new BinaryWriter().tag(1, 2).bytes(Buffer.from('k')).tag(3, 0).uint64(TOO_BIG).finish());
    expect(() => RangeRequest.decode(bytes)).toThrow('Value is larger than Number.MAX_SAFE_INTEGER');
    expect(malformedReason(lenient.range.requestDeserialize(bytes))).toBe(
      'field limit (3) = 18446744073709551615 is above the largest supported value 9007199254740991',
    );
  });

  test('2^53 - 1 itself decodes; 2^53 is refused', () => {
    const limit = (value: bigint) => Buffer.from(new BinaryWriter().tag(3, 0).uint64(value).finish());
    expect((lenient.range.requestDeserialize(limit(9007199254740991n)) as RangeRequest).limit).toBe(Number.MAX_SAFE_INTEGER);
    expect(malformedReason(lenient.range.requestDeserialize(limit(9007199254740992n)))).toContain('field limit (3) = 9007199254740992');
  });

  test('a Put with a huge sequence names `sequence`; garbage bytes keep the decoder\'s own message', () => {
    const put = Buffer.from(new BinaryWriter().tag(1, 2).bytes(Buffer.from('k')).tag(4, 2).string('client').tag(5, 0).uint64(TOO_BIG).finish());
    expect(malformedReason(lenient.put.requestDeserialize(put))).toMatch(/^field sequence \(5\) = 18446744073709551615 is above/);
    const garbage = Buffer.from([0xff, 0xff, 0xff, 0xff]);
    const reason = malformedReason(lenient.put.requestDeserialize(garbage));
    expect(reason).toBeDefined();
    expect(reason).not.toContain('field ');
  });

  test('nested and repeated fields are named by their path', () => {
    // StatusResponse.header.revision, and FollowerProgress in the repeated `followers`.
    const status = requestMessageOf('/cairn.kv.v1.Cluster/Status')!.file.messages.find((m) => m.name === 'StatusResponse')!;
    const header = new BinaryWriter().tag(1, 0).uint64(TOO_BIG).finish();
    expect(findUnsupportedInteger(status, new BinaryWriter().tag(1, 2).bytes(header).finish())).toMatch(/^field header\.revision \(1\) = /);
    const ok = new BinaryWriter().tag(1, 0).uint64(2).finish();
    const bad = new BinaryWriter().tag(2, 0).uint64(TOO_BIG).finish();
    const followers = new BinaryWriter().tag(11, 2).bytes(ok).tag(11, 2).bytes(bad).finish();
    expect(findUnsupportedInteger(status, followers)).toMatch(/^field followers\[1\]\.match_index \(2\) = 18446744073709551615/);
    expect(findUnsupportedInteger(status, new BinaryWriter().tag(1, 2).bytes(ok).finish())).toBeUndefined();
  });
});
