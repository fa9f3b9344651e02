import { AuthCommand, Command, CommandResult, Compare, CompareResult, CompareTarget, PermissionType, RequestOp, TxnRequest, TxnResponse } from '../../gen/cairn/kv/v1/kv';
import { Entry, EntryType } from '../../gen/cairn/raft/v1/raft';
import { KeyRecord } from '../../gen/cairn/storage/v1/storage';
import { KvStateMachine } from '../../src/kv/state-machine';
import { Metadata } from '@grpc/grpc-js';
import { AuthView } from '../../src/kv/auth-state';
import { compareHolds, MAX_TXN_DEPTH, MAX_TXN_OPS, MAX_TXN_READ_BYTES, mergeRange, rangeBounds, txnAccesses } from '../../src/kv/txn';
import { AuthGate } from '../../src/server/auth';
import { signToken } from '../../src/server/auth-tokens';
import { validateCommand, validateTxn } from '../../src/server/validate';
import { BACKENDS } from '../support/db-backends';

const b = (text: string) => Buffer.from(text);

// ---------------------------------------------------------------------------
// Builders, shaped like what a client sends

const value = (key: string, result: CompareResult, expected: string): Compare => ({
  key: b(key),
  target: CompareTarget.COMPARE_TARGET_VALUE,
  result,
  targetUnion: { $case: 'value', value: b(expected) },
});
const version = (key: string, result: CompareResult, expected: number): Compare => ({
  key: b(key),
  target: CompareTarget.COMPARE_TARGET_VERSION,
  result,
  targetUnion: { $case: 'version', value: expected },
});
const noSession = { clientId: '', sequence: 0, lowestUnansweredSequence: 0 };
const putOp = (key: string, v: string, prevKv = false): RequestOp => ({ request: { $case: 'requestPut', value: { key: b(key), value: b(v), prevKv, ...noSession } } });
const delOp = (key: string): RequestOp => ({ request: { $case: 'requestDelete', value: { key: b(key), prevKv: false, ...noSession } } });
const rangeOp = (key: string, prefix = false, limit = 0): RequestOp => ({
  request: { $case: 'requestRange', value: { key: b(key), rangeEnd: Buffer.alloc(0), prefix, limit, keysOnly: false, consistency: 0 } },
});
const txn = (compare: Compare[], success: RequestOp[], failure: RequestOp[] = [], session = noSession): TxnRequest => ({ compare, success, failure, ...session });
const nestedOp = (request: TxnRequest): RequestOp => ({ request: { $case: 'requestTxn', value: request } });
/** A txn `levels` deep (the outermost counted), the innermost putting `key`. */
const nestedLevels = (levels: number, key = 'deep'): TxnRequest => {
  let request = txn([], [putOp(key, 'v')]);
  for (let level = 1; level < levels; level++) request = txn([], [nestedOp(request)]);
  return request;
};
const EQUAL = CompareResult.COMPARE_RESULT_EQUAL;

const command = (request: TxnRequest, authUser?: string): Command => ({ op: { $case: 'txn', value: request }, proposedAtUnixMs: 0, authUser });
const putCommand = (key: string, v: string): Command => ({ op: { $case: 'put', value: { key: b(key), value: b(v), prevKv: false, ...noSession } }, proposedAtUnixMs: 0 });
const delCommand = (key: string): Command => ({ op: { $case: 'delete', value: { key: b(key), prevKv: false, ...noSession } }, proposedAtUnixMs: 0 });
const authCommand = (op: AuthCommand['op'], authUser?: string): Command => ({ op: { $case: 'auth', value: { op } }, proposedAtUnixMs: 0, authUser });

function txnOf(result: CommandResult | undefined): TxnResponse {
  if (result?.op?.$case !== 'txn') throw new Error(`not a txn result: ${JSON.stringify(result)}`);
  return result.op.value;
}

const record = (v: string, version: number, createRevision: number, modRevision: number): KeyRecord => ({ value: b(v), version, createRevision, modRevision });

describe('compares', () => {
  const stored = record('m', 3, 2, 7);

  test.each([
    [CompareResult.COMPARE_RESULT_EQUAL, 'm', true],
    [CompareResult.COMPARE_RESULT_NOT_EQUAL, 'm', false],
    [CompareResult.COMPARE_RESULT_LESS, 'n', true],
    [CompareResult.COMPARE_RESULT_GREATER, 'l', true],
    [CompareResult.COMPARE_RESULT_GREATER, 'm', false],
  ])('value %s %s: %s', (result, expected, holds) => {
    expect(compareHolds(value('k', result, expected), stored)).toBe(holds);
  });

  test('numbers: version, create and mod revision', () => {
    expect(compareHolds(version('k', EQUAL, 3), stored)).toBe(true);
    expect(compareHolds(version('k', CompareResult.COMPARE_RESULT_LESS, 3), stored)).toBe(false);
    const create: Compare = { key: b('k'), target: CompareTarget.COMPARE_TARGET_CREATE_REVISION, result: CompareResult.COMPARE_RESULT_LESS, targetUnion: { $case: 'createRevision', value: 3 } };
    expect(compareHolds(create, stored)).toBe(true);
    const mod: Compare = { key: b('k'), target: CompareTarget.COMPARE_TARGET_MOD_REVISION, result: CompareResult.COMPARE_RESULT_GREATER, targetUnion: { $case: 'modRevision', value: 7 } };
    expect(compareHolds(mod, stored)).toBe(false);
  });

  test('a key that does not exist: version 0, and every value compare is false (as in etcd)', () => {
    expect(compareHolds(version('k', EQUAL, 0), undefined)).toBe(true);
    expect(compareHolds(value('k', EQUAL, ''), undefined)).toBe(false);
    expect(compareHolds(value('k', CompareResult.COMPARE_RESULT_NOT_EQUAL, 'x'), undefined)).toBe(false);
  });
});

describe('range bounds and the batch overlay', () => {
  test('prefix, one key, to the end, explicit end', () => {
    expect(rangeBounds({ key: b('a/'), rangeEnd: Buffer.alloc(0), prefix: true })).toEqual({ start: b('a/'), end: b('a0') });
    expect(rangeBounds({ key: Buffer.alloc(0), rangeEnd: Buffer.alloc(0), prefix: true })).toEqual({ start: Buffer.alloc(0), end: undefined });
    expect(rangeBounds({ key: b('k'), rangeEnd: Buffer.alloc(0), prefix: false })).toEqual({ start: b('k'), end: Buffer.from([0x6b, 0]) });
    expect(rangeBounds({ key: b('k'), rangeEnd: Buffer.from([0]), prefix: false })).toEqual({ start: b('k'), end: undefined });
    expect(rangeBounds({ key: b('a'), rangeEnd: b('c'), prefix: false })).toEqual({ start: b('a'), end: b('c') });
  });

  test('mergeRange: staged puts and deletes replace what is stored, in key order, up to the limit; the scan budget stops it with more', async () => {
    const r = (v: string) => record(v, 1, 1, 1);
    // As LevelDB reads them: in key order, within [start, end).
    async function* stored(start: string, end?: string): AsyncGenerator<[Buffer, Buffer]> {
      for (const k of ['a', 'b', 'c', 'd']) if (k >= start && (end === undefined || k < end)) yield [b(k), Buffer.from(KeyRecord.encode(r(`stored-${k}`)).finish())];
    }
    const writes = new Map<string, KeyRecord | null>([[b('b').toString('hex'), null], [b('bb').toString('hex'), r('staged-bb')], [b('c').toString('hex'), r('staged-c')], [b('z').toString('hex'), r('staged-z')]]);
    const staged = { names: [...writes.keys()].sort(), get: (name: string) => writes.get(name) };
    const merged = (limit: number, scanEntries = 100, start = '', end?: string) =>
      mergeRange(stored(start, end)[Symbol.asyncIterator](), staged, b(start), end === undefined ? undefined : b(end), limit, { scanEntries });
    const names = (read: { entries: [Buffer, KeyRecord][] }) => read.entries.map(([k, rec]) => `${k}=${Buffer.from(rec.value)}`);
    const all = await merged(10);
    expect(names(all)).toEqual(['a=stored-a', 'bb=staged-bb', 'c=staged-c', 'd=stored-d', 'z=staged-z']);
    expect(all.more).toBe(false);
    const two = await merged(2);
    expect([names(two), two.more]).toEqual([['a=stored-a', 'bb=staged-bb'], true]);
    const bounded = await merged(2, 'b'.length + 1, 'a', 'c');
    expect([names(bounded), bounded.more]).toEqual([['a=stored-a'], true]);
    const lastIsDeleted = await merged(10, 100, 'b', 'bb');
    expect([names(lastIsDeleted), lastIsDeleted.more]).toEqual([[], false]);
  });

  test('a txn\'s permissions: both branches, one key as [key, key+0x00), a range to the end as end undefined', () => {
    const request = txn([version('c', EQUAL, 0)], [putOp('w', 'v')], [rangeOp('', true), delOp('d')]);
    const { reads, writes } = txnAccesses(request);
    expect(writes.map((k) => k.toString())).toEqual(['w', 'd']);
    expect(reads).toEqual([
      { start: b('c'), end: Buffer.from([0x63, 0]) },
      { start: Buffer.alloc(0), end: undefined },
    ]);
  });
});

describe('nested txn permissions at the receiving node', () => {
  const HASH = { salt: b('s'), hash: b('h'), cost: 16384, blockSize: 8, parallelization: 1 };
  const KEY = Buffer.alloc(32, 7);
  let view = AuthView.empty();
  let index = 10;
  for (const op of [
    { $case: 'userAdd', value: { name: 'root', passwordHash: HASH } },
    { $case: 'userAdd', value: { name: 'app', passwordHash: HASH } },
    { $case: 'roleAdd', value: { name: 'app' } },
    { $case: 'roleGrantPermission', value: { name: 'app', permission: { type: PermissionType.PERMISSION_TYPE_READWRITE, key: b('app/'), prefix: true } } },
    { $case: 'userGrantRole', value: { user: 'app', role: 'app' } },
    { $case: 'authEnable', value: { signingKey: KEY } },
  ] as AuthCommand['op'][]) {
    const next = view.apply({ op }, index++);
    if (!(next instanceof AuthView)) throw new Error(`refused: ${next.message}`);
    view = next;
  }
  const gate = new AuthGate(() => view);
  const metadata = new Metadata();
  metadata.set('authorization', `Bearer ${signToken(KEY, 'app', view.user('app')!.passwordIndex, Date.now() + 60_000)}`);
  const call = { metadata };

  test('txnAccesses walks every branch of every level', () => {
    const request = txn([version('c', EQUAL, 0)], [putOp('w', 'v'), nestedOp(txn([version('c2', EQUAL, 0)], [nestedOp(txn([], [delOp('w3')], [rangeOp('r3', true)]))], [putOp('w2', 'v')]))]);
    const { reads, writes } = txnAccesses(request);
    expect(writes.map((k) => k.toString()).sort()).toEqual(['w', 'w2', 'w3']);
    expect(reads.map((r) => r.start.toString()).sort()).toEqual(['c', 'c2', 'r3']);
  });

  test.each<[string, TxnRequest, RegExp]>([
    ['a write in a nested failure branch', txn([], [putOp('app/a', '1'), nestedOp(txn([version('app/a', EQUAL, 1)], [putOp('app/b', '2')], [putOp('secret', 'x')]))]), /may not write key "secret"/],
    ['a compare two levels down', txn([], [nestedOp(txn([], [nestedOp(txn([value('secret', EQUAL, 'x')], [putOp('app/b', '2')]))]))]), /may not read \["secret"/],
    ['a range in a nested success branch', txn([], [], [nestedOp(txn([], [rangeOp('', true)]))]), /may not read \["", end of the key space\)/],
  ])('refused: %s', (_name, request, message) => {
    expect(() => validateTxn(request, { maxKeyBytes: 100, maxValueBytes: 100, maxRequestBytes: 10_000, maxRangeLimit: 100, maxRangeBytes: 1000, maxClientIdBytes: 10 })).not.toThrow();
    expect(() => gate.requireTxn(call, txnAccesses(request))).toThrow(message);
  });

  test('allowed when every key of every level is within the role', () => {
    const request = txn([], [nestedOp(txn([version('app/a', EQUAL, 0)], [putOp('app/a', '1')], [rangeOp('app/', true)]))]);
    expect(gate.requireTxn(call, txnAccesses(request))?.user).toBe('app');
  });
});

/** Root and user `app` (role `app`: readwrite on the prefix app/), then auth on. */
function authOnWithAppUser(): Command[] {
  const HASH = { salt: b('s'), hash: b('h'), cost: 16384, blockSize: 8, parallelization: 1 };
  const grant = (key: string, type: PermissionType): AuthCommand['op'] => ({ $case: 'roleGrantPermission', value: { name: 'app', permission: { type, key: b(key), prefix: true } } });
  return [
    authCommand({ $case: 'userAdd', value: { name: 'root', passwordHash: HASH } }),
    authCommand({ $case: 'userAdd', value: { name: 'app', passwordHash: HASH } }),
    authCommand({ $case: 'roleAdd', value: { name: 'app' } }),
    authCommand(grant('app/', PermissionType.PERMISSION_TYPE_READWRITE)),
    authCommand({ $case: 'userGrantRole', value: { user: 'app', role: 'app' } }),
    authCommand({ $case: 'authEnable', value: { signingKey: Buffer.alloc(32, 1) } }),
  ];
}

describe.each(BACKENDS)('Txn applied ($name)', (backend) => {
  let sm: KvStateMachine;
  let cleanup: () => Promise<void>;
  let index = 0;
  beforeEach(async () => {
    const opened = await backend.open();
    cleanup = opened.cleanup;
    sm = await KvStateMachine.open(opened.db);
    index = 0;
  });
  afterEach(() => cleanup());

  const entry = (c: Command): Entry => ({ index: ++index, term: 1, type: EntryType.ENTRY_TYPE_COMMAND, data: Buffer.from(Command.encode(c).finish()) });
  const apply = async (...commands: Command[]) => (await sm.apply(commands.map(entry))).map((o) => o.result);

  test('compare-and-swap: the success branch when the value matches, the failure branch (reading the value) when not', async () => {
    await apply(putCommand('k', 'old'));
    const swapped = txnOf((await apply(command(txn([value('k', EQUAL, 'old')], [rangeOp('k'), putOp('k', 'new')], [rangeOp('k')]))))[0]);
    expect(swapped.succeeded).toBe(true);
    expect(swapped.responses[0]?.response).toMatchObject({ $case: 'responseRange', value: { kvs: [{ value: b('old') }] } });
    expect(swapped.responses[1]?.response?.$case).toBe('responsePut');
    expect((await sm.get(b('k')))?.value).toEqual(b('new'));

    const refused = txnOf((await apply(command(txn([value('k', EQUAL, 'old')], [putOp('k', 'newer')], [rangeOp('k')]))))[0]);
    expect(refused.succeeded).toBe(false);
    const read = refused.responses[0]?.response;
    expect(read?.$case === 'responseRange' && read.value.kvs.map((kv) => kv.value.toString())).toEqual(['new']);
    expect((await sm.get(b('k')))?.value).toEqual(b('new'));
  });

  test('all writes of a txn share one revision; a txn that changes nothing leaves the revision alone', async () => {
    const [first] = await apply(putCommand('x', '1'));
    expect(first?.revision).toBe(1);
    const [written] = await apply(command(txn([], [putOp('a', '1'), putOp('b', '2'), delOp('x'), delOp('missing')])));
    expect(written?.revision).toBe(2);
    expect(await sm.get(b('a'))).toMatchObject({ modRevision: 2, createRevision: 2, version: 1 });
    expect(await sm.get(b('b'))).toMatchObject({ modRevision: 2 });
    expect(await sm.get(b('x'))).toBeUndefined();
    const [readOnly] = await apply(command(txn([version('a', EQUAL, 1)], [rangeOp('', true), delOp('missing')])));
    expect(readOnly?.revision).toBe(2);
    expect(sm.revision()).toBe(2);
  });

  test('a range inside a txn sees the txn\'s earlier writes and those of earlier entries in the same apply batch', async () => {
    await apply(putCommand('p/1', 'stored'), putCommand('p/2', 'stored'));
    const results = await apply(
      putCommand('p/3', 'batch'),
      delCommand('p/1'),
      command(txn([], [putOp('p/4', 'txn'), delOp('p/2'), rangeOp('p/', true)])),
    );
    const range = txnOf(results[2]).responses[2]?.response;
    expect(range?.$case === 'responseRange' && range.value.kvs.map((kv) => `${kv.key}=${kv.value}`)).toEqual(['p/3=batch', 'p/4=txn']);
  });

  test('ranges inside a txn stop at their limit and at the txn\'s read budget, saying more; only the txn\'s first entry may pass the budget', async () => {
    const big = 'v'.repeat(200 * 1024);
    await apply(putCommand('r/1', big), putCommand('r/2', big), putCommand('r/3', big), putCommand('r/4', big));
    const limited = txnOf((await apply(command(txn([], [rangeOp('r/', true, 2)]))))[0]).responses[0]?.response;
    expect(limited?.$case === 'responseRange' && [limited.value.kvs.length, limited.value.more]).toEqual([2, true]);
    const budgeted = txnOf((await apply(command(txn([], [rangeOp('r/', true)]))))[0]).responses[0]?.response;
    if (budgeted?.$case !== 'responseRange') throw new Error('no range');
    const bytes = budgeted.value.kvs.reduce((sum, kv) => sum + kv.key.length + kv.value.length, 0);
    expect(budgeted.value.more).toBe(true);
    expect(bytes).toBeLessThanOrEqual(MAX_TXN_READ_BYTES);
    expect(budgeted.value.kvs.length).toBe(2);
    // Many one-key ranges of large values: the budget holds for the txn as a whole.
    const huge = 'h'.repeat(700 * 1024);
    await apply(putCommand('h/1', huge), putCommand('h/2', huge), putCommand('h/3', huge));
    const many = txnOf((await apply(command(txn([], [rangeOp('h/1'), rangeOp('h/2'), rangeOp('h/3')]))))[0]).responses;
    const sizes = many.map((r) => (r.response?.$case === 'responseRange' ? [r.response.value.kvs.length, r.response.value.more] : undefined));
    expect(sizes).toEqual([[1, false], [0, true], [0, true]]);
  });

  test('a range inside a txn looks at a bounded number of entries whatever the batch wrote before it', async () => {
    const deletes = Array.from({ length: 120 }, (_, i) => `d/${String(i).padStart(3, '0')}`);
    await apply(...deletes.map((k) => putCommand(k, 'v')));
    // One batch: txns deleting every key, then a txn ranging over them: all deleted, so empty.
    const chunks = [deletes.slice(0, 60), deletes.slice(60)];
    const results = await apply(...chunks.map((keys) => command(txn([], keys.map(delOp)))), command(txn([], [rangeOp('d/', true)])));
    const range = txnOf(results[2]).responses[0]?.response;
    expect(range?.$case === 'responseRange' && [range.value.kvs.length, range.value.more]).toEqual([0, false]);
  });

  test('a txn in a client session is applied once: its retry gets the first answer', async () => {
    const session = { clientId: 'c1', sequence: 1, lowestUnansweredSequence: 1 };
    const request = txn([version('n', EQUAL, 0)], [putOp('n', 'first')], [rangeOp('n')], session);
    const [first] = await apply(command(request));
    const [retry] = await apply(command(request));
    expect(txnOf(first).succeeded).toBe(true);
    expect(retry).toEqual(first);
    expect(await sm.get(b('n'))).toMatchObject({ version: 1 });
  });

  test('with auth on, apply refuses a txn whose user may not read a compared key, even one the success branch does not touch', async () => {
    await apply(...authOnWithAppUser());
    const [allowed, peeking, failureWrites] = await apply(
      command(txn([version('app/k', EQUAL, 0)], [putOp('app/k', 'v')]), 'app'),
      command(txn([value('secret', EQUAL, 'x')], [putOp('app/k', 'v2')]), 'app'),
      command(txn([version('app/k', EQUAL, 0)], [], [putOp('secret', 'y')]), 'app'),
    );
    expect(txnOf(allowed).succeeded).toBe(true);
    expect(peeking?.error?.code).toBe('PERMISSION_DENIED');
    expect(failureWrites?.error?.code).toBe('PERMISSION_DENIED');
    expect(await sm.get(b('app/k'))).toMatchObject({ version: 1 });
    expect(await sm.get(b('secret'))).toBeUndefined();
  });

  describe('nested', () => {
    const nestedOf = (response: TxnResponse, i: number): TxnResponse => {
      const r = response.responses[i]?.response;
      if (r?.$case !== 'responseTxn') throw new Error(`response ${i} is not a nested txn's: ${JSON.stringify(r)}`);
      return r.value;
    };

    test('the inner compare sees the outer txn\'s earlier put; its success branch runs and its range sees that put too', async () => {
      const [result] = await apply(command(txn([], [putOp('n/a', '1'), nestedOp(txn([value('n/a', EQUAL, '1')], [rangeOp('n/a'), putOp('n/b', 'inner')], [putOp('n/c', 'wrong')]))])));
      const outer = txnOf(result);
      expect(outer.succeeded).toBe(true);
      expect(outer.responses[0]?.response?.$case).toBe('responsePut');
      const inner = nestedOf(outer, 1);
      expect(inner.header).toBeUndefined();
      expect(inner.succeeded).toBe(true);
      const read = inner.responses[0]?.response;
      expect(read?.$case === 'responseRange' && read.value.kvs.map((kv) => kv.value.toString())).toEqual(['1']);
      expect(inner.responses[1]?.response?.$case).toBe('responsePut');
      expect((await sm.get(b('n/b')))?.value).toEqual(b('inner'));
      expect(await sm.get(b('n/c'))).toBeUndefined();
    });

    test('an inner compare that fails runs the inner failure branch, the outer one having succeeded', async () => {
      await apply(putCommand('f/k', 'stored'));
      const [result] = await apply(command(txn([version('f/k', EQUAL, 1)], [delOp('f/k'), nestedOp(txn([version('f/k', CompareResult.COMPARE_RESULT_GREATER, 0)], [putOp('f/yes', '1')], [putOp('f/no', '1'), rangeOp('f/', true)]))], [putOp('f/outer-failure', '1')])));
      const outer = txnOf(result);
      expect(outer.succeeded).toBe(true);
      const inner = nestedOf(outer, 1);
      expect(inner.succeeded).toBe(false);
      const read = inner.responses[1]?.response;
      // The range sees the inner put and not the key the outer txn deleted before it.
      expect(read?.$case === 'responseRange' && read.value.kvs.map((kv) => kv.key.toString())).toEqual(['f/no']);
      expect(await sm.get(b('f/yes'))).toBeUndefined();
      expect(await sm.get(b('f/outer-failure'))).toBeUndefined();
      expect(await sm.get(b('f/k'))).toBeUndefined();
    });

    test('every write of the tree, at every level, shares the one revision of the entry', async () => {
      const [first] = await apply(putCommand('r/x', '0'));
      expect(first?.revision).toBe(1);
      const [result] = await apply(command(txn([], [putOp('r/1', 'a'), nestedOp(txn([], [putOp('r/2', 'b'), nestedOp(txn([], [putOp('r/3', 'c'), delOp('r/x')]))]))])));
      expect(result?.revision).toBe(2);
      expect(sm.revision()).toBe(2);
      for (const key of ['r/1', 'r/2', 'r/3']) expect(await sm.get(b(key))).toMatchObject({ modRevision: 2, createRevision: 2 });
      expect(await sm.get(b('r/x'))).toBeUndefined();
      // A tree whose only write is in a nested branch moves the revision by one, too.
      const [innerOnly] = await apply(command(txn([], [rangeOp('r/1'), nestedOp(txn([], [putOp('r/4', 'd')]))])));
      expect(innerOnly?.revision).toBe(3);
    });

    test('the read budget is the whole tree\'s: a nested range gets only what the outer ranges left', async () => {
      const huge = 'h'.repeat(700 * 1024);
      await apply(putCommand('h/1', huge), putCommand('h/2', huge));
      const [result] = await apply(command(txn([], [rangeOp('h/1'), nestedOp(txn([], [rangeOp('h/2')]))])));
      const outer = txnOf(result);
      const inner = nestedOf(outer, 1).responses[0]?.response;
      expect(inner?.$case === 'responseRange' && [inner.value.kvs.length, inner.value.more]).toEqual([0, true]);
    });

    test('with auth on, apply refuses a txn whose user may not write a key that only a nested branch writes', async () => {
      await apply(...authOnWithAppUser());
      const [allowed, innerFailureWrites, innerPeeks] = await apply(
        command(txn([], [putOp('app/k', 'v'), nestedOp(txn([version('app/k', EQUAL, 1)], [putOp('app/inner', 'v')], [rangeOp('app/', true)]))]), 'app'),
        // The inner failure branch never runs here (app/k is at version 1), yet it needs the permission.
        command(txn([], [nestedOp(txn([version('app/k', EQUAL, 1)], [putOp('app/k2', 'v')], [putOp('secret', 'y')]))]), 'app'),
        command(txn([], [nestedOp(txn([], [nestedOp(txn([value('secret', EQUAL, 'x')], [putOp('app/k3', 'v')]))]))]), 'app'),
      );
      expect(nestedOf(txnOf(allowed), 1).succeeded).toBe(true);
      expect(innerFailureWrites?.error?.code).toBe('PERMISSION_DENIED');
      expect(innerPeeks?.error?.code).toBe('PERMISSION_DENIED');
      expect(await sm.get(b('app/inner'))).toMatchObject({ version: 1 });
      expect(await sm.get(b('app/k2'))).toBeUndefined();
      expect(await sm.get(b('app/k3'))).toBeUndefined();
      expect(await sm.get(b('secret'))).toBeUndefined();
    });

    test('a nested put with a lease that does not exist refuses the whole txn', async () => {
      const leased: RequestOp = { request: { $case: 'requestPut', value: { key: b('l/k'), value: b('v'), prevKv: false, lease: 12345, ...noSession } } };
      const [result] = await apply(command(txn([], [putOp('l/outer', 'v'), nestedOp(txn([], [], [leased]))])));
      expect(result?.error?.code).toBe('LEASE_NOT_FOUND');
      expect(await sm.get(b('l/outer'))).toBeUndefined();
    });
  });
});

describe('nested Txn: the memory and LevelDB state machines agree', () => {
  test('the same log gives the same results and the same store on both', async () => {
    const log: Command[] = [
      putCommand('s/a', '1'),
      command(txn([value('s/a', EQUAL, '1')], [putOp('s/b', '2'), nestedOp(txn([version('s/b', EQUAL, 1)], [delOp('s/a'), rangeOp('s/', true)], [putOp('s/never', 'x')]))], [putOp('s/c', '3')])),
      command(txn([version('s/a', EQUAL, 0)], [nestedOp(txn([value('s/b', EQUAL, 'nope')], [putOp('s/d', '4')], [putOp('s/e', '5'), nestedOp(txn([], [rangeOp('s/', true), putOp('s/f', '6')]))]))])),
      command(txn([], [nestedOp(txn([], [delOp('s/missing')]))])),
    ];
    const runs: unknown[] = [];
    for (const backend of BACKENDS) {
      const opened = await backend.open();
      try {
        const sm = await KvStateMachine.open(opened.db);
        const outcomes = await sm.apply(log.map((c, i) => ({ index: i + 1, term: 1, type: EntryType.ENTRY_TYPE_COMMAND, data: Buffer.from(Command.encode(c).finish()) })));
        const stored = await sm.range({ start: b('s/'), end: b('s0'), limit: 100, keysOnly: false, maxBytes: 1 << 20 });
        runs.push({ results: outcomes.map((o) => o.result), kvs: stored.kvs, revision: sm.revision() });
      } finally {
        await opened.cleanup();
      }
    }
    expect(runs).toHaveLength(2);
    expect(runs[1]).toEqual(runs[0]);
    expect((runs[0] as { revision: number }).revision).toBe(3);
    expect((runs[0] as { kvs: { key: Buffer }[] }).kvs.map((kv) => kv.key.toString())).toEqual(['s/b', 's/e', 's/f']);
  });
});

describe('validateTxn', () => {
  const limits = { maxKeyBytes: 8, maxValueBytes: 16, maxRequestBytes: 64, maxRangeLimit: 100, maxRangeBytes: 1000, maxClientIdBytes: 10 };
  const ok = txn([value('k', EQUAL, 'v')], [putOp('k', 'w')], [rangeOp('k')]);

  test('a well-formed txn passes, also as a forwarded command', () => {
    expect(() => validateTxn(ok, limits)).not.toThrow();
    expect(validateCommand(Buffer.from(Command.encode(command(ok)).finish()), limits).op?.$case).toBe('txn');
  });

  test.each<[string, TxnRequest, string | RegExp]>([
    ['too many compares', txn(Array.from({ length: MAX_TXN_OPS + 1 }, () => version('k', EQUAL, 0)), []), `compare has ${MAX_TXN_OPS + 1} entries, over the limit of ${MAX_TXN_OPS} (MAX_TXN_OPS)`],
    ['a key written twice', txn([], [putOp('k', '1'), delOp('k')]), 'success[1].key "k" is written twice on one path through the txn, first at success[0]'],
    ['a session on an operation', txn([], [{ request: { $case: 'requestPut', value: { key: b('k'), value: b('v'), prevKv: false, clientId: 'c', sequence: 1, lowestUnansweredSequence: 1 } } }]), 'success[0]: session fields go on the TxnRequest'],
    ['an empty operation', txn([], [], [{ request: undefined }]), 'failure[0] has no operation'],
    ['a range with a consistency', txn([], [{ request: { $case: 'requestRange', value: { key: b('k'), rangeEnd: Buffer.alloc(0), prefix: false, limit: 0, keysOnly: false, consistency: 2 } } }]), 'success[0].consistency must be unset'],
    ['a compare giving the wrong target', txn([{ key: b('k'), target: CompareTarget.COMPARE_TARGET_VERSION, result: EQUAL, targetUnion: { $case: 'value', value: b('v') } }], []), 'compare[0].target is COMPARE_TARGET_VERSION but the compare gives value'],
    ['a compare without a result', txn([{ ...version('k', EQUAL, 1), result: CompareResult.COMPARE_RESULT_UNSPECIFIED }], []), /compare\[0\]\.result must be EQUAL/],
    ['an empty compare key', txn([version('', EQUAL, 1)], []), 'compare[0].key is empty'],
    ['a key over --max-key-bytes', txn([], [putOp('k'.repeat(9), 'v')]), 'success[0].key is 9 bytes, over the limit of 8'],
    ['a txn over --max-request-bytes (its whole encoding)', txn([], [putOp('a', 'v'.repeat(16)), putOp('b', 'v'.repeat(16)), putOp('c', 'v'.repeat(16))]), 'request is 75 bytes, over the limit of 64 (--max-request-bytes)'],
    ['prev_kv inside a txn', txn([], [putOp('k', 'v', true)]), 'success[0].prev_kv is not taken inside a txn'],
    ['a range_end longer than a key can be', txn([], [{ request: { $case: 'requestRange', value: { key: b('a'), rangeEnd: b('z'.repeat(10)), prefix: false, limit: 0, keysOnly: false, consistency: 0 } } }]), 'success[0].range_end is 10 bytes, over the limit of 9'],
    ['a range limit over --max-range-limit', txn([], [rangeOp('k', false, 101)]), 'success[0].limit 101 is over the limit of 100 (--max-range-limit)'],
  ])('refused: %s', (_name, request, message) => {
    expect(() => validateTxn(request, limits)).toThrow(message);
  });
});

describe('validateTxn with nested txns', () => {
  const limits = { maxKeyBytes: 8, maxValueBytes: 16, maxRequestBytes: 64 * 1024, maxRangeLimit: 100, maxRangeBytes: 1000, maxClientIdBytes: 10 };
  const puts = (count: number, prefix: string) => Array.from({ length: count }, (_, i) => putOp(`${prefix}${i}`, 'v'));

  test('well-formed trees pass: MAX_TXN_DEPTH levels; a key in both branches of one nested txn; MAX_TXN_OPS counted with the nested txn', () => {
    expect(() => validateTxn(nestedLevels(MAX_TXN_DEPTH), limits)).not.toThrow();
    expect(() => validateTxn(txn([], [nestedOp(txn([version('k', EQUAL, 0)], [putOp('k', '1')], [delOp('k')]))]), limits)).not.toThrow();
    // 100 puts + the nested txn (1) + its compare (1) + its 26 puts = 128.
    expect(() => validateTxn(txn([], [...puts(100, 'a'), nestedOp(txn([version('k', EQUAL, 0)], puts(26, 'b')))]), limits)).not.toThrow();
    // The failure branch has its own MAX_TXN_OPS.
    expect(() => validateTxn(txn([], [...puts(100, 'a'), nestedOp(txn([], puts(27, 'b')))], puts(128, 'c')), limits)).not.toThrow();
  });

  test.each<[string, TxnRequest, string | RegExp]>([
    [`a txn nested ${MAX_TXN_DEPTH + 1} levels deep`, nestedLevels(MAX_TXN_DEPTH + 1), `success[0].request_txn.success[0].request_txn.success[0].request_txn.success[0].request_txn is a txn nested ${MAX_TXN_DEPTH + 1} levels deep, over the limit of ${MAX_TXN_DEPTH} (MAX_TXN_DEPTH`],
    ['compares and operations counted across levels', txn([], [...puts(100, 'a'), nestedOp(txn([version('k', EQUAL, 0)], puts(27, 'b')))]), `success has more than ${MAX_TXN_OPS} compares and operations counting those of its nested txns, over the limit of ${MAX_TXN_OPS} (MAX_TXN_OPS)`],
    ['a nested failure branch counted in the outer branch', txn([], [], [nestedOp(txn([], puts(64, 'a'), puts(64, 'b')))]), `failure has more than ${MAX_TXN_OPS} compares and operations`],
    ['a key the outer branch writes, written again in a nested txn', txn([], [putOp('k', '1'), nestedOp(txn([], [], [delOp('k')]))]), 'success[1].request_txn.failure[0].key "k" is written twice on one path through the txn, first at success[0]'],
    ['a key a nested txn may write, written again after it', txn([], [nestedOp(txn([], [putOp('k', '1')])), putOp('k', '2')]), 'success[1].key "k" is written twice on one path through the txn, first at success[0].request_txn.success[0]'],
    ['a key two nested txns of one branch may write', txn([], [nestedOp(txn([], [], [putOp('k', '1')])), nestedOp(txn([], [nestedOp(txn([], [delOp('k')]))]))]), 'success[1].request_txn.success[0].request_txn.success[0].key "k" is written twice on one path through the txn, first at success[0].request_txn.failure[0]'],
    ['a binary key written twice, named in hex', txn([], [{ request: { $case: 'requestPut', value: { key: Buffer.from([0, 0xff]), value: b('v'), prevKv: false, ...noSession } } }, nestedOp(txn([], [{ request: { $case: 'requestDelete', value: { key: Buffer.from([0, 0xff]), prevKv: false, ...noSession } } }]))]), 'success[1].request_txn.success[0].key 0x00ff is written twice'],
    ['a session on a nested txn', txn([], [nestedOp(txn([], [putOp('k', '1')], [], { clientId: 'c', sequence: 1, lowestUnansweredSequence: 1 }))]), 'success[0].request_txn: client_id, sequence and lowest_unanswered_sequence must be unset on a nested txn'],
    ['a sequence alone on a nested txn', txn([], [], [nestedOp(txn([], [], [], { clientId: '', sequence: 3, lowestUnansweredSequence: 0 }))]), 'failure[0].request_txn: client_id, sequence and lowest_unanswered_sequence must be unset'],
    ['a bad compare inside a nested txn', txn([], [nestedOp(txn([version('', EQUAL, 0)], []))]), 'success[0].request_txn.compare[0].key is empty'],
    ['a bad operation inside a nested txn', txn([], [nestedOp(txn([], [], [putOp('k', 'v', true)]))]), 'success[0].request_txn.failure[0].prev_kv is not taken inside a txn'],
    ['an empty operation inside a nested txn', txn([], [nestedOp(txn([], [{ request: undefined }]))]), 'success[0].request_txn.success[0] has no operation (request_put, request_delete, request_range or request_txn)'],
  ])('refused: %s', (_name, request, message) => {
    expect(() => validateTxn(request, limits)).toThrow(message);
  });

  test('the whole tree\'s encoding counts against --max-request-bytes', () => {
    const big = (key: string): RequestOp => putOp(key, 'v'.repeat(16));
    const tree = txn([], [nestedOp(txn([], [nestedOp(txn([], [big('a'), big('b'), big('c')]))]))]);
    expect(() => validateTxn(tree, { ...limits, maxRequestBytes: 200 })).not.toThrow();
    expect(() => validateTxn(tree, { ...limits, maxRequestBytes: 70 })).toThrow(/request is \d+ bytes, over the limit of 70 \(--max-request-bytes\)/);
  });

  test('a wide tree is refused after a bounded count, not a walk of all of it', () => {
    // 128 nested txns each holding 128 puts in both branches: refused by counting, well within MAX_TXN_OPS steps.
    const wide = txn([], Array.from({ length: MAX_TXN_OPS }, (_, i) => nestedOp(txn([], puts(MAX_TXN_OPS, `s${i}/`), puts(MAX_TXN_OPS, `f${i}/`)))));
    expect(() => validateTxn(wide, limits)).toThrow(/success has more than 128 compares and operations/);
  });
});
