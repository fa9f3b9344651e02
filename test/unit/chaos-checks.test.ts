import { findLostWrites } from '../chaos/checks';
import { RecordedOp } from '../chaos/workload';

const put = (client: number, key: string, value: string, call: number, ret?: number): RecordedOp => ({
  client,
  op: 'put',
  key,
  value,
  output: ret === undefined ? undefined : {},
  call,
  return: ret,
  known: ret !== undefined,
});

describe('lost-write check', () => {
  test('the last acknowledged write missing from the final state is lost', () => {
    const ops = [put(1, 'a', 'x', 0, 1), put(1, 'a', 'y', 2, 3)];
    expect(findLostWrites(ops, new Map([['a', 'x']])).map((l) => l.op.value)).toEqual(['y']);
    expect(findLostWrites(ops, new Map([['a', 'y']]))).toEqual([]);
  });

  test('a write that a concurrent or unknown write may have replaced is not lost', () => {
    const concurrent = [put(1, 'a', 'x', 0, 5), put(2, 'a', 'y', 1, 2)];
    expect(findLostWrites(concurrent, new Map([['a', 'x']]))).toEqual([]);
    const unknownLater = [put(1, 'a', 'x', 0, 1), put(2, 'a', 'z', 2)];
    expect(findLostWrites(unknownLater, new Map([['a', 'z']]))).toEqual([]);
  });

  test('an acknowledged delete must leave the key absent', () => {
    const ops: RecordedOp[] = [put(1, 'b', 'x', 0, 1), { client: 1, op: 'delete', key: 'b', output: { existed: true }, call: 2, return: 3, known: true }];
    expect(findLostWrites(ops, new Map([['b', 'x']]))).toHaveLength(1);
    expect(findLostWrites(ops, new Map())).toEqual([]);
  });

  test('a compare-and-swap that swapped is a write that must last; one that did not swap wrote nothing', () => {
    const cas = (value: string, succeeded: boolean, call: number, ret: number): RecordedOp => ({ client: 2, op: 'cas', key: 'c', value, expected: 'x', output: { succeeded }, call, return: ret, known: true });
    const swapped = [put(1, 'c', 'x', 0, 1), cas('y', true, 2, 3)];
    expect(findLostWrites(swapped, new Map([['c', 'x']])).map((l) => l.op.value)).toEqual(['y']);
    expect(findLostWrites(swapped, new Map([['c', 'y']]))).toEqual([]);
    // A CAS that did not swap, after the put: the put's value must still be there, and the CAS's must not be expected.
    const refused = [put(1, 'c', 'x', 0, 1), cas('z', false, 2, 3)];
    expect(findLostWrites(refused, new Map([['c', 'x']]))).toEqual([]);
    expect(findLostWrites(refused, new Map([['c', 'z']])).map((l) => l.op.value)).toEqual(['x']);
  });
});
