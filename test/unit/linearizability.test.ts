import { checkLinearizable, CheckResult, HistoryOp } from '../../src/check/linearizability';

// ---------------------------------------------------------------------------
// Builders. Passing ret = undefined makes the op's outcome unknown.

function put(client: number, key: string, value: string, call: number, ret?: number): HistoryOp {
  return ret === undefined
    ? { client, kind: 'put', key, value, call, known: false }
    : { client, kind: 'put', key, value, call, ret, known: true };
}

function get(client: number, key: string, value: string | null, call: number, ret: number): HistoryOp {
  return { client, kind: 'get', key, output: { value }, call, ret, known: true };
}

function del(client: number, key: string, call: number, ret?: number, existed?: boolean): HistoryOp {
  if (ret === undefined) return { client, kind: 'delete', key, call, known: false };
  const output = existed === undefined ? undefined : { existed };
  return { client, kind: 'delete', key, call, ret, known: true, ...(output ? { output } : {}) };
}

/** A compare-and-swap; expected null requires the key absent. Omitting succeeded (and ret) makes the outcome unknown. */
function cas(
  client: number,
  key: string,
  expected: string | null,
  value: string,
  call: number,
  ret?: number,
  succeeded?: boolean,
): HistoryOp {
  if (ret === undefined) return { client, kind: 'cas', key, expected, value, call, known: false };
  return { client, kind: 'cas', key, expected, value, call, ret, known: true, output: { succeeded: succeeded! } };
}

function expectLinearizable(history: HistoryOp[]): void {
  const result = checkLinearizable(history);
  expect(result).toEqual({ kind: 'linearizable', keys: new Set(history.map((op) => op.key)).size, ops: history.length });
}

function expectViolation(history: HistoryOp[], key: string): Extract<CheckResult, { kind: 'not-linearizable' }> {
  const result = checkLinearizable(history);
  if (result.kind !== 'not-linearizable') throw new Error(`expected a violation on ${key}, got ${JSON.stringify(result)}`);
  expect(result.key).toBe(key);
  expect(result.explanation).toContain(JSON.stringify(key));
  return result;
}

/** Deterministic PRNG (mulberry32) so failures reproduce. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const randInt = (rand: () => number, lo: number, hi: number): number => lo + Math.floor(rand() * (hi - lo + 1));
const pick = <T>(rand: () => number, items: readonly T[]): T => items[Math.floor(rand() * items.length)]!;

// ---------------------------------------------------------------------------

describe('accepts linearizable histories', () => {
  test('empty history', () => {
    expect(checkLinearizable([])).toEqual({ kind: 'linearizable', keys: 0, ops: 0 });
  });

  test('sequential put, get, delete, get', () => {
    expectLinearizable([
      get(1, 'k', null, 0, 1),
      put(1, 'k', 'a', 2, 3),
      get(2, 'k', 'a', 4, 5),
      put(2, 'k', 'b', 6, 7),
      get(1, 'k', 'b', 8, 9),
      del(1, 'k', 10, 11, true),
      get(2, 'k', null, 12, 13),
    ]);
  });

  test.each([null, 'a'])('a get overlapping a put may see either value (%p)', (seen) => {
    expectLinearizable([put(1, 'k', 'a', 0, 10), get(2, 'k', seen, 2, 8)]);
  });

  test('a get overlapping two puts may see the put that completed first or the concurrent one', () => {
    for (const seen of ['a', 'b']) {
      expectLinearizable([put(1, 'k', 'a', 0, 5), put(2, 'k', 'b', 6, 20), get(3, 'k', seen, 7, 15)]);
    }
  });

  test('two concurrent puts: later readers agree on whichever won', () => {
    for (const winner of ['a', 'b']) {
      expectLinearizable([
        put(1, 'k', 'a', 0, 10),
        put(2, 'k', 'b', 1, 9),
        get(3, 'k', winner, 20, 21),
        get(1, 'k', winner, 22, 23),
      ]);
    }
  });

  test('a get may see an overlapping write that is later overwritten', () => {
    expectLinearizable([
      put(1, 'k', 'a', 0, 10),
      get(2, 'k', 'a', 1, 3),
      put(3, 'k', 'b', 2, 4),
      get(2, 'k', 'b', 5, 6),
    ]);
  });

  test('an unknown put observed much later by a get', () => {
    expectLinearizable([
      put(1, 'k', 'a', 0, 1),
      put(2, 'k', 'lost?', 2),
      get(3, 'k', 'a', 5, 6),
      get(3, 'k', 'a', 7, 8),
      get(3, 'k', 'lost?', 100, 101),
    ]);
  });

  test('an unknown put that is never observed', () => {
    expectLinearizable([put(1, 'k', 'a', 0, 1), put(2, 'k', 'b', 2), get(3, 'k', 'a', 5, 6), get(3, 'k', 'a', 50, 60)]);
  });

  test('an unknown put that explains a later delete finding the key present', () => {
    expectLinearizable([put(1, 'k', 'x', 0), del(2, 'k', 5, 6, true), get(2, 'k', null, 7, 8)]);
  });

  test('an unknown put of a value read elsewhere may be what a delete found', () => {
    expectLinearizable([
      put(1, 'k', 'x', 0), // may land before the delete...
      del(2, 'k', 5, 6, true),
      put(3, 'k', 'never-read', 10), // ...while this one cannot: it starts too late
      put(2, 'k', 'x', 20, 21),
      get(2, 'k', 'x', 22, 23),
    ]);
  });

  test('an unknown delete that explains a later absent read, or that never happened', () => {
    expectLinearizable([put(1, 'k', 'a', 0, 1), del(2, 'k', 2), get(3, 'k', 'a', 3, 4), get(3, 'k', null, 5, 6)]);
    expectLinearizable([put(1, 'k', 'a', 0, 1), del(2, 'k', 2), get(3, 'k', 'a', 3, 4), get(3, 'k', 'a', 5, 6)]);
  });

  test('an unknown delete does not have its existed output checked', () => {
    const unknownDelete: HistoryOp = { client: 2, kind: 'delete', key: 'k', call: 0, known: false, output: { existed: true } };
    expectLinearizable([unknownDelete, get(1, 'k', null, 5, 6)]);
  });

  test('unknown gets impose nothing, whatever they claim', () => {
    const unknownGet: HistoryOp = { client: 2, kind: 'get', key: 'k', call: 2, known: false, output: { value: 'junk' } };
    const bareUnknownGet: HistoryOp = { client: 3, kind: 'get', key: 'k', call: 2, known: false };
    expectLinearizable([put(1, 'k', 'a', 0, 1), unknownGet, bareUnknownGet, get(1, 'k', 'a', 3, 4)]);
  });

  test('deletes report existed correctly', () => {
    expectLinearizable([
      del(1, 'k', 0, 1, false),
      put(1, 'k', 'a', 2, 3),
      del(2, 'k', 4, 5, true),
      del(2, 'k', 6, 7, false),
      del(1, 'k', 8, 9), // existed not reported
      get(1, 'k', null, 10, 11),
    ]);
  });

  test('concurrent deletes: exactly one may see the key present', () => {
    expectLinearizable([put(1, 'k', 'a', 0, 1), del(2, 'k', 2, 10, true), del(3, 'k', 3, 9, false)]);
  });

  test('many keys, each fine on its own', () => {
    const history: HistoryOp[] = [];
    for (let k = 0; k < 20; k++) {
      const key = `key-${k}`;
      history.push(put(k, key, `v${k}`, k, k + 100), get(k + 1, key, `v${k}`, k + 200, k + 201));
    }
    expectLinearizable(history);
  });

  test('ops that merely touch are ordered, and instantaneous ops are allowed', () => {
    expectLinearizable([put(1, 'k', 'a', 0, 5), get(2, 'k', 'a', 5, 5), put(1, 'k', 'b', 5, 9), get(2, 'k', 'b', 9, 12)]);
  });
});

describe('rejects non-linearizable histories', () => {
  test('a stale read', () => {
    const result = expectViolation(
      [put(1, 'k', 'a', 0, 1), put(1, 'k', 'b', 2, 3), get(2, 'k', 'a', 4, 5)],
      'k',
    );
    expect(result.explanation).toContain('leaving the key = "b"');
    expect(result.explanation).toContain('client 2 get → "a" [4, 5] could not be placed');
  });

  test('a read of a value never written', () => {
    expectViolation([put(1, 'k', 'a', 0, 1), get(2, 'k', 'zzz', 2, 3)], 'k');
  });

  test('a read of a value written only by an op that started after the read returned', () => {
    expectViolation([get(1, 'k', 'a', 0, 5), put(2, 'k', 'a', 6, 7)], 'k');
  });

  test('a read touching the start of the write that produced its value', () => {
    expectViolation([get(1, 'k', 'a', 0, 5), put(2, 'k', 'a', 5, 7)], 'k');
  });

  test('a read just after a write completes must see it', () => {
    expectViolation([put(1, 'k', 'a', 0, 5), get(2, 'k', null, 5, 6)], 'k');
  });

  test('a lost write', () => {
    expectViolation([put(1, 'k', 'a', 0, 1), get(2, 'k', null, 2, 3)], 'k');
  });

  test('a lost write after earlier history', () => {
    expectViolation(
      [put(1, 'k', 'a', 0, 1), get(2, 'k', 'a', 2, 3), put(1, 'k', 'b', 4, 5), get(2, 'k', null, 6, 7)],
      'k',
    );
  });

  test('delete reporting existed=false while the key was present', () => {
    expectViolation([put(1, 'k', 'a', 0, 1), del(2, 'k', 2, 3, false)], 'k');
  });

  test('delete reporting existed=true while the key was absent', () => {
    expectViolation([del(1, 'k', 0, 1, true)], 'k');
  });

  test('two concurrent deletes cannot both find the key present', () => {
    expectViolation([put(1, 'k', 'a', 0, 1), del(2, 'k', 2, 10, true), del(3, 'k', 3, 9, true)], 'k');
  });

  test('a read after a completed delete sees the old value', () => {
    expectViolation([put(1, 'k', 'a', 0, 1), del(1, 'k', 2, 3, true), get(2, 'k', 'a', 4, 5)], 'k');
  });

  test('sequential gets see writes in an impossible order', () => {
    // put a completes before put b starts, yet a read sees b and a later read sees a.
    expectViolation(
      [put(1, 'k', 'a', 0, 10), put(2, 'k', 'b', 20, 100), get(3, 'k', 'b', 30, 40), get(3, 'k', 'a', 50, 60)],
      'k',
    );
  });

  test('readers disagree on the winner of two concurrent puts', () => {
    expectViolation(
      [put(1, 'k', 'a', 0, 10), put(2, 'k', 'b', 1, 9), get(3, 'k', 'a', 20, 21), get(1, 'k', 'b', 22, 23)],
      'k',
    );
  });

  test('an unknown put cannot take effect before it was called', () => {
    expectViolation([get(1, 'k', 'late', 0, 5), put(2, 'k', 'late', 6)], 'k');
  });

  test('an unknown put cannot take effect twice', () => {
    expectViolation(
      [put(1, 'k', 'x', 0), get(2, 'k', 'x', 5, 6), put(2, 'k', 'y', 7, 8), get(2, 'k', 'x', 9, 10)],
      'k',
    );
  });

  test('a violation on one key among many fine keys is reported for that key', () => {
    const history: HistoryOp[] = [];
    for (let k = 0; k < 10; k++) {
      history.push(put(1, `fine-${k}`, 'x', 0, 1), get(2, `fine-${k}`, 'x', 2, 3));
    }
    const bad = [put(3, 'bad', 'a', 0, 1), put(3, 'bad', 'b', 2, 3), get(4, 'bad', 'a', 4, 5)];
    history.splice(7, 0, bad[2]!, bad[0]!);
    history.push(bad[1]!);
    const result = expectViolation(history, 'bad');
    expect(result.ops).toEqual(bad); // just that key, sorted by call
  });
});

describe('compare-and-swap', () => {
  test('a successful and a failed CAS, linearizable', () => {
    expectLinearizable([
      put(1, 'k', 'a', 0, 1),
      cas(2, 'k', 'a', 'b', 2, 3, true),
      cas(1, 'k', 'a', 'c', 4, 5, false),
      get(2, 'k', 'b', 6, 7),
      cas(1, 'k', null, 'x', 8, 9, false),
      del(2, 'k', 10, 11, true),
      cas(1, 'k', null, 'x', 12, 13, true),
      get(2, 'k', 'x', 14, 15),
    ]);
  });

  test('a CAS concurrent with a put may succeed (before it) or fail (after it)', () => {
    expectLinearizable([put(1, 'k', 'a', 0, 1), put(2, 'k', 'b', 2, 10), cas(3, 'k', 'a', 'c', 3, 9, true), get(1, 'k', 'b', 11, 12)]);
    expectLinearizable([put(1, 'k', 'a', 0, 1), put(2, 'k', 'b', 2, 10), cas(3, 'k', 'a', 'c', 3, 9, false), get(1, 'k', 'b', 11, 12)]);
    // A successful swap needs a, so it came before put b, which then overwrote c.
    expectViolation([put(1, 'k', 'a', 0, 1), put(2, 'k', 'b', 2, 10), cas(3, 'k', 'a', 'c', 3, 9, true), get(1, 'k', 'c', 11, 12)], 'k');
  });

  test('a CAS that succeeded although its expected value was overwritten before its call', () => {
    const result = expectViolation([put(1, 'k', 'a', 0, 1), put(2, 'k', 'b', 2, 3), cas(3, 'k', 'a', 'c', 4, 5, true)], 'k');
    expect(result.explanation).toContain('leaving the key = "b"');
    expect(result.explanation).toContain('client 3 cas "a" → "c" (succeeded) [4, 5] could not be placed');
  });

  test('two concurrent CAS from the same expected value cannot both succeed', () => {
    const history = [put(1, 'k', 'a', 0, 1), cas(2, 'k', 'a', 'b', 2, 10, true), cas(3, 'k', 'a', 'c', 3, 9, true)];
    expectViolation(history, 'k');
    // Control: with one of them failing, either may be the winner.
    expectLinearizable([put(1, 'k', 'a', 0, 1), cas(2, 'k', 'a', 'b', 2, 10, true), cas(3, 'k', 'a', 'c', 3, 9, false)]);
    expectLinearizable([put(1, 'k', 'a', 0, 1), cas(2, 'k', 'a', 'b', 2, 10, false), cas(3, 'k', 'a', 'c', 3, 9, true)]);
  });

  test('an unknown put and an unknown CAS chain to explain a later get', () => {
    expectLinearizable([put(1, 'k', 'x', 0), cas(2, 'k', 'x', 'y', 1), get(3, 'k', 'y', 10, 11)]);
    // Each is needed: without the put the CAS never swaps, and without the CAS nothing writes y.
    expectViolation([cas(2, 'k', 'x', 'y', 1), get(3, 'k', 'y', 10, 11)], 'k');
    expectViolation([put(1, 'k', 'x', 0), cas(2, 'k', 'x', 'z', 1), get(3, 'k', 'y', 10, 11)], 'k');
  });

  test('an unknown put may take effect after the unknown CAS it would have enabled, which then fails', () => {
    // The CAS finds the key absent (so nothing happens), then the put lands: x is read.
    expectLinearizable([put(1, 'k', 'x', 0), cas(2, 'k', 'x', 'y', 1), get(3, 'k', 'x', 10, 11), get(3, 'k', 'x', 12, 13)]);
  });

  test('an unknown delete may enable a later successful CAS from absent', () => {
    expectLinearizable([put(1, 'k', 'a', 0, 1), del(2, 'k', 2), cas(3, 'k', null, 'b', 5, 6, true), get(1, 'k', 'b', 7, 8)]);
    expectViolation([put(1, 'k', 'a', 0, 1), del(2, 'k', 7), cas(3, 'k', null, 'b', 5, 6, true)], 'k');
  });

  test('a failed CAS whose expected value was the only possible state', () => {
    const result = expectViolation([put(1, 'k', 'a', 0, 1), cas(2, 'k', 'a', 'b', 2, 3, false), get(1, 'k', 'a', 4, 5)], 'k');
    expect(result.explanation).toContain('client 2 cas "a" → "b" (failed) [2, 3] could not be placed');
    // Control: with a concurrent put of another value the CAS may have found that one.
    expectLinearizable([put(1, 'k', 'a', 0, 1), put(3, 'k', 'c', 2, 4), cas(2, 'k', 'a', 'b', 2, 3, false), get(1, 'k', 'c', 5, 6)]);
  });

  test('a failed CAS from absent while the key can only be absent', () => {
    const result = expectViolation([cas(1, 'k', null, 'a', 0, 1, false)], 'k');
    expect(result.explanation).toContain('client 1 cas absent → "a" (failed) [0, 1] could not be placed');
  });

  test('an unknown CAS may never take effect, and takes effect at most once', () => {
    expectLinearizable([put(1, 'k', 'a', 0, 1), cas(2, 'k', 'a', 'b', 2), get(3, 'k', 'a', 5, 6), get(3, 'k', 'a', 50, 60)]);
    expectViolation(
      [put(1, 'k', 'a', 0, 1), cas(2, 'k', 'a', 'b', 2), get(3, 'k', 'b', 3, 4), put(1, 'k', 'a', 5, 6), get(3, 'k', 'b', 7, 8)],
      'k',
    );
  });

  test('an unknown CAS cannot take effect before it was called', () => {
    expectViolation([put(1, 'k', 'a', 0, 1), get(2, 'k', 'b', 2, 3), cas(3, 'k', 'a', 'b', 4)], 'k');
  });

  test('a value written by a CAS can be expected by another and read back', () => {
    const chain = [cas(1, 'k', null, 'a', 0, 1, true), cas(2, 'k', 'a', 'b', 2, 3, true), cas(1, 'k', 'b', 'unread', 4, 5, true)];
    expectLinearizable([...chain, cas(2, 'k', 'b', 'c', 6, 7, false)]);
    // Stale: b was swapped out.
    const result = expectViolation([...chain, get(1, 'k', 'b', 8, 9)], 'k');
    expect(result.explanation).toContain('leaving the key = "unread"');
  });

  test('keys with and without CAS are checked side by side', () => {
    const fine = [put(1, 'plain', 'a', 0, 1), get(2, 'plain', 'a', 2, 3), cas(1, 'swapped', null, 'a', 0, 1, true), get(2, 'swapped', 'a', 2, 3)];
    expectLinearizable(fine);
    expectViolation([...fine, get(3, 'plain', null, 4, 5)], 'plain');
    expectViolation([...fine, get(3, 'swapped', null, 4, 5)], 'swapped');
  });

  test('an exhausted budget on a key with CAS is inconclusive', () => {
    const history = simulate({ seed: 7, ops: 300, keys: 1, clients: 5, unknownRate: 0.1, casRate: 0.5 });
    expect(checkLinearizable(history).kind).toBe('linearizable');
    const result = checkLinearizable(history, { maxStatesPerKey: 10 });
    expect(result.kind).toBe('inconclusive');
    if (result.kind === 'inconclusive') expect(result.explanation).toContain('budget of 10 states');
  });
});

describe('search budget', () => {
  test('an exhausted budget is inconclusive, never a pass', () => {
    const history = simulate({ seed: 7, ops: 400, keys: 1, clients: 5, unknownRate: 0 });
    const result = checkLinearizable(history, { maxStatesPerKey: 10 });
    expect(result.kind).toBe('inconclusive');
    if (result.kind === 'inconclusive') {
      expect(result.key).toBe('key-0');
      expect(result.explanation).toContain('budget');
    }
  });

  test('a definite violation on another key is preferred over an inconclusive key', () => {
    const history = simulate({ seed: 7, ops: 400, keys: 1, clients: 5, unknownRate: 0 });
    history.push(put(1, 'zz', 'a', 0, 1), get(2, 'zz', null, 2, 3));
    const result = checkLinearizable(history, { maxStatesPerKey: 10 });
    expect(result.kind).toBe('not-linearizable');
  });
});

describe('input validation', () => {
  test.each<[string, HistoryOp, RegExp]>([
    ['ret before call', { client: 1, kind: 'put', key: 'k', value: 'a', call: 5, ret: 4, known: true }, /ret 4 is before call 5/],
    ['known op without ret', { client: 1, kind: 'put', key: 'k', value: 'a', call: 5, known: true }, /needs a ret/],
    ['put without value', { client: 1, kind: 'put', key: 'k', call: 5, ret: 6, known: true }, /put needs a string value/],
    ['known get without output', { client: 1, kind: 'get', key: 'k', call: 5, ret: 6, known: true }, /needs output\.value/],
    ['known get with undefined output.value', { client: 1, kind: 'get', key: 'k', output: {}, call: 5, ret: 6, known: true }, /needs output\.value/],
    ['unknown put without value', { client: 1, kind: 'put', key: 'k', call: 5, known: false }, /put needs a string value/],
    ['non-finite call', { client: 1, kind: 'delete', key: 'k', call: NaN, ret: 6, known: true }, /call time/],
    ['cas without value', { client: 1, kind: 'cas', key: 'k', expected: 'a', call: 5, ret: 6, known: true, output: { succeeded: true } }, /cas needs a string value/],
    ['cas without expected', { client: 1, kind: 'cas', key: 'k', value: 'b', call: 5, ret: 6, known: true, output: { succeeded: true } }, /cas needs expected/],
    ['cas with a non-string expected', { client: 1, kind: 'cas', key: 'k', expected: 7 as unknown as string, value: 'b', call: 5, ret: 6, known: true, output: { succeeded: true } }, /expected must be a string or null/],
    ['known cas without output', { client: 1, kind: 'cas', key: 'k', expected: 'a', value: 'b', call: 5, ret: 6, known: true }, /known cas needs output\.succeeded/],
    ['known cas with a non-boolean succeeded', { client: 1, kind: 'cas', key: 'k', expected: 'a', value: 'b', call: 5, ret: 6, known: true, output: { succeeded: 'yes' as unknown as boolean } }, /known cas needs output\.succeeded/],
    ['unknown cas without expected', { client: 1, kind: 'cas', key: 'k', value: 'b', call: 5, known: false }, /cas needs expected/],
    ['unknown kind', { client: 1, kind: 'incr' as HistoryOp['kind'], key: 'k', call: 5, ret: 6, known: true }, /unknown kind "incr"/],
  ])('%s', (_name, op, message) => {
    expect(() => checkLinearizable([put(1, 'k', 'a', 0, 1), op])).toThrow(message);
    expect(() => checkLinearizable([put(1, 'k', 'a', 0, 1), op])).toThrow(/history\[1\]/);
  });

  test('a known get reading null (absent) is valid input', () => {
    expect(() => checkLinearizable([get(1, 'k', null, 0, 1)])).not.toThrow();
  });

  test('an unknown cas needs no output, and one it carries is not checked', () => {
    const claimsSuccess: HistoryOp = { ...cas(1, 'k', 'a', 'b', 0), output: { succeeded: true } };
    expectLinearizable([claimsSuccess, get(2, 'k', null, 5, 6)]);
  });

  test('a bad budget', () => {
    expect(() => checkLinearizable([], { maxStatesPerKey: 0 })).toThrow(/maxStatesPerKey/);
  });
});

// ---------------------------------------------------------------------------
// Randomized tests

/** Runs `kinds` sequentially on a real Map: op i takes effect at time 100 * i. */
function sequentialHistory(rand: () => number, n: number, keys: string[]): { history: HistoryOp[]; at: number[] } {
  const store = new Map<string, string>();
  const history: HistoryOp[] = [];
  const at: number[] = [];
  for (let i = 0; i < n; i++) {
    const key = pick(rand, keys);
    const t = 100 * i;
    const r = rand();
    let op: HistoryOp;
    if (r < 0.4) {
      const value = `v${i}`;
      store.set(key, value);
      op = put(0, key, value, t, t);
    } else if (r < 0.55) {
      op = del(0, key, t, t, store.delete(key));
    } else {
      op = get(0, key, store.get(key) ?? null, t, t);
    }
    history.push(op);
    at.push(t);
  }
  return { history, at };
}

/**
 * Widens each op's interval around its linearization point. Real-time order then
 * still agrees with the sequential order, because each interval contains its point.
 */
function widen(rand: () => number, history: HistoryOp[], at: number[], width: number): HistoryOp[] {
  return history.map((op, i) => ({
    ...op,
    client: i % 8,
    call: at[i]! - randInt(rand, 0, width),
    ret: at[i]! + randInt(rand, 0, width),
  }));
}

describe('randomized: sequential histories with added concurrency', () => {
  test.each(Array.from({ length: 40 }, (_, seed) => seed))('seed %i', (seed) => {
    const rand = rng(seed);
    const keys = ['a', 'b', 'c'];
    const { history, at } = sequentialHistory(rand, 300, keys);
    expectLinearizable(history);
    const concurrent = widen(rand, history, at, randInt(rand, 50, 400));
    expectLinearizable(concurrent);

    const gets = concurrent.flatMap((op, i) => (op.kind === 'get' ? [i] : []));
    const victim = pick(rand, gets);
    const corrupted = concurrent.map((op, i) => (i === victim ? { ...op, output: { value: 'never-written' } } : op));
    expectViolation(corrupted, concurrent[victim]!.key);
  });
});

interface SimConfig {
  seed: number;
  ops: number;
  keys: number;
  clients: number;
  /** Fraction of writes whose outcome is lost; half of those take effect anyway. */
  unknownRate: number;
  /** Fraction of ops that are CAS, expecting the key's latest value planned so far (or absent); default none. */
  casRate?: number;
}

/**
 * A linearizable execution: each client runs ops one at a time, each op takes
 * effect at a random instant inside its interval, and outputs come from applying
 * ops to a Map in order of those instants.
 */
function simulate(config: SimConfig): HistoryOp[] {
  const rand = rng(config.seed);
  const planned: { op: HistoryOp; at: number | undefined }[] = [];
  const clientFree = new Array<number>(config.clients).fill(0);
  const lastWritten = new Map<string, string>();
  for (let i = 0; i < config.ops; i++) {
    const client = i % config.clients;
    const key = `key-${randInt(rand, 0, config.keys - 1)}`;
    const call = clientFree[client]! + randInt(rand, 0, 5);
    const ret = call + randInt(rand, 0, 30);
    const at = call + rand() * (ret - call);
    const r = rand();
    // Drawn only when CAS is asked for, so that the other configurations keep their histories.
    const isCas = config.casRate !== undefined && rand() < config.casRate;
    const kind = isCas ? 'cas' : r < 0.4 ? 'put' : r < 0.5 ? 'delete' : 'get';
    const op: HistoryOp = { client, kind, key, call, ret, known: true };
    if (kind === 'put' || kind === 'cas') op.value = `c${client}-${i}`;
    if (kind === 'cas') op.expected = rand() < 0.8 ? (lastWritten.get(key) ?? null) : null;
    if (kind === 'put' || kind === 'cas') lastWritten.set(key, op.value!);
    clientFree[client] = ret;
    if (kind !== 'get' && rand() < config.unknownRate) {
      delete op.ret;
      op.known = false;
      // The lost write may land long after the client gave up, or never.
      planned.push({ op, at: rand() < 0.5 ? call + rand() * 200 : undefined });
    } else {
      planned.push({ op, at });
    }
  }
  const store = new Map<string, string>();
  const applied = planned.filter((p) => p.at !== undefined).sort((a, b) => a.at! - b.at!);
  for (const { op } of applied) {
    if (op.kind === 'put') store.set(op.key, op.value!);
    else if (op.kind === 'cas') {
      const succeeded = (store.get(op.key) ?? null) === op.expected;
      if (succeeded) store.set(op.key, op.value!);
      if (op.known) op.output = { succeeded };
    } else if (op.kind === 'delete') {
      const existed = store.delete(op.key);
      if (op.known) op.output = { existed };
    } else op.output = { value: store.get(op.key) ?? null };
  }
  return planned.map((p) => p.op);
}

describe('randomized: simulated concurrent executions', () => {
  test.each(Array.from({ length: 20 }, (_, seed) => seed))('seed %i with lost writes', (seed) => {
    const history = simulate({ seed, ops: 1000, keys: 3, clients: 6, unknownRate: 0.1 });
    expectLinearizable(history);
  });

  test.each([1, 2, 3])('a stale read is found among many lost writes (seed %i)', (seed) => {
    const history = simulate({ seed, ops: 3000, keys: 2, clients: 8, unknownRate: 0.3 });
    expectLinearizable(history);
    const victim = history.findIndex((op, i) => i > 2000 && op.kind === 'get' && op.known);
    const { key, call } = history[victim]!;
    const stale = history.find((op) => op.key === key && op.kind === 'put' && op.known && op.ret! < call - 500)!;
    const corrupted = history.map((op, i) => (i === victim ? { ...op, output: { value: stale.value! } } : op));
    const result = checkLinearizable(corrupted, { maxStatesPerKey: 1_000_000 });
    expect(result.kind).toBe('not-linearizable');
  });

  test.each(Array.from({ length: 10 }, (_, seed) => seed))('seed %i with CAS and lost writes', (seed) => {
    const history = simulate({ seed, ops: 450, keys: 3, clients: 5, unknownRate: 0.1, casRate: 0.4 });
    expect(history.filter((op) => op.kind === 'cas' && op.known && op.output!.succeeded).length).toBeGreaterThan(5);
    expectLinearizable(history);
    const victim = history.findIndex((op, i) => i > 300 && op.kind === 'get' && op.known);
    const corrupted = history.map((op, i) => (i === victim ? { ...op, output: { value: 'never-written' } } : op));
    const result = expectViolation(corrupted, history[victim]!.key);
    expect(result.explanation).toContain('get → "never-written"');
  });

  test('performance sanity: a 300-op CAS-heavy history on one key with lost writes', () => {
    const history = simulate({ seed: 44, ops: 300, keys: 1, clients: 5, unknownRate: 0.1, casRate: 0.6 });
    expect(history.filter((op) => op.kind === 'cas').length).toBeGreaterThan(150);
    expect(checkLinearizable(history).kind).toBe('linearizable');
  });

  test('performance sanity: 10,000 ops over 10 keys with 5 clients', () => {
    const history = simulate({ seed: 42, ops: 10_000, keys: 10, clients: 5, unknownRate: 0 });
    expect(checkLinearizable(history).kind).toBe('linearizable');
  });

  test('performance sanity: 20,000 ops over 5 keys with 10 clients and lost writes', () => {
    const history = simulate({ seed: 43, ops: 20_000, keys: 5, clients: 10, unknownRate: 0.05 });
    expect(checkLinearizable(history).kind).toBe('linearizable');
    // A stale read: the value of an earlier, long since overwritten put to the same key.
    const victim = history.findIndex((op, i) => i > 10_000 && op.kind === 'get' && op.known);
    const { key, call } = history[victim]!;
    const stale = history.find((op) => op.key === key && op.kind === 'put' && op.known && op.ret! < call - 1000)!;
    const corrupted = history.map((op, i) => (i === victim ? { ...op, output: { value: stale.value! } } : op));
    expectViolation(corrupted, key);
  });
});

// ---------------------------------------------------------------------------
// Cross-check against a brute-force oracle on tiny histories

/** Whether `a` must be linearized before `b`, by the checker's documented real-time rule. */
function mustPrecede(a: HistoryOp, b: HistoryOp): boolean {
  if (!a.known) return false;
  return a.ret! < b.call || (a.ret === b.call && a.call < a.ret);
}

/** Tries every order of every subset of unknown writes together with all known ops. */
function bruteForce(history: HistoryOp[]): boolean {
  const ops = history.filter((op) => op.known || op.kind !== 'get');
  const placed = new Array<boolean>(ops.length).fill(false);
  const knownTotal = ops.filter((op) => op.known).length;
  const search = (state: string | null, knownPlaced: number): boolean => {
    if (knownPlaced === knownTotal) return true;
    for (let i = 0; i < ops.length; i++) {
      const op = ops[i]!;
      if (placed[i] || ops.some((other, j) => !placed[j] && j !== i && mustPrecede(other, op))) continue;
      let next = state;
      if (op.kind === 'put') next = op.value!;
      else if (op.kind === 'get') {
        if (op.output!.value !== state) continue;
      } else if (op.kind === 'cas') {
        const swaps = state === op.expected;
        if (op.known && op.output!.succeeded !== swaps) continue;
        if (swaps) next = op.value!;
      } else {
        const existed = op.known ? op.output?.existed : undefined;
        if (existed !== undefined && existed !== (state !== null)) continue;
        next = null;
      }
      placed[i] = true;
      const ok = search(next, knownPlaced + (op.known ? 1 : 0));
      placed[i] = false;
      if (ok) return true;
    }
    return false;
  };
  return search(null, 0);
}

interface TinyConfig {
  maxOps: number;
  unknownRate: number;
  values: string[];
  /** What gets may return besides null; defaults to `values`. */
  reads?: string[];
  /** Mix in CAS ops (expecting absent or one of `values`), about a third of all ops. */
  withCas?: boolean;
}

function tinyRandomHistory(rand: () => number, config: TinyConfig): HistoryOp[] {
  const history: HistoryOp[] = [];
  const n = randInt(rand, 1, config.maxOps);
  for (let i = 0; i < n; i++) {
    const call = randInt(rand, 0, 12);
    const ret = call + randInt(rand, 0, 5);
    const known = rand() >= config.unknownRate;
    const kind = config.withCas
      ? pick(rand, ['put', 'get', 'delete', 'cas', 'cas'] as const)
      : pick(rand, ['put', 'get', 'get', 'delete'] as const);
    const op: HistoryOp = { client: i, kind, key: 'k', call, known };
    if (known) op.ret = ret;
    if (kind === 'put' || kind === 'cas') op.value = pick(rand, config.values);
    if (kind === 'cas') op.expected = pick(rand, [null, ...config.values]);
    if (kind === 'cas' && known) op.output = { succeeded: rand() < 0.5 };
    if (kind === 'get' && known) op.output = { value: pick(rand, [null, ...(config.reads ?? config.values)]) };
    if (kind === 'delete' && known && rand() < 0.7) op.output = { existed: rand() < 0.5 };
    history.push(op);
  }
  return history;
}

describe('randomized: agrees with a brute-force oracle on tiny histories', () => {
  test.each<[string, TinyConfig]>([
    ['mostly known ops, three values', { maxOps: 7, unknownRate: 0.25, values: ['a', 'b', 'c'] }],
    ['many unknown writes, two values', { maxOps: 8, unknownRate: 0.5, values: ['a', 'b'] }],
    ['many unknown writes, some values never read', { maxOps: 8, unknownRate: 0.5, values: ['a', 'b', 'c'], reads: ['a'] }],
  ])('%s', (_name, config) => {
    const rand = rng(12345);
    let accepted = 0;
    for (let i = 0; i < 4000; i++) {
      const history = tinyRandomHistory(rand, config);
      const expected = bruteForce(history);
      const actual = checkLinearizable(history).kind;
      if (actual !== (expected ? 'linearizable' : 'not-linearizable')) {
        throw new Error(`disagreement (oracle: ${expected}) on ${JSON.stringify(history)}`);
      }
      if (expected) accepted++;
    }
    // Both verdicts must be well represented for the comparison to mean anything.
    expect(accepted).toBeGreaterThan(400);
    expect(accepted).toBeLessThan(3600);
  });
});

describe('randomized: agrees with the brute-force oracle on tiny histories with compare-and-swap', () => {
  test.each<[string, TinyConfig]>([
    ['mostly known ops, three values', { maxOps: 7, unknownRate: 0.25, values: ['a', 'b', 'c'], withCas: true }],
    ['many unknown ops, two values', { maxOps: 8, unknownRate: 0.5, values: ['a', 'b'], withCas: true }],
    ['many unknown ops, some values never read', { maxOps: 8, unknownRate: 0.5, values: ['a', 'b', 'c'], reads: ['a'], withCas: true }],
  ])('%s', (_name, config) => {
    const rand = rng(777);
    let accepted = 0;
    let withUnknownCas = 0;
    for (let i = 0; i < 4000; i++) {
      const history = tinyRandomHistory(rand, config);
      const expected = bruteForce(history);
      const actual = checkLinearizable(history).kind;
      if (actual !== (expected ? 'linearizable' : 'not-linearizable')) {
        throw new Error(`disagreement (oracle: ${expected}) on ${JSON.stringify(history)}`);
      }
      if (expected) accepted++;
      if (history.some((op) => op.kind === 'cas' && !op.known)) withUnknownCas++;
    }
    expect(accepted).toBeGreaterThan(400);
    expect(accepted).toBeLessThan(3600);
    expect(withUnknownCas).toBeGreaterThan(400);
  });
});
