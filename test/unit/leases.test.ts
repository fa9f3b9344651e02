import { AuthCommand, Command, CommandResult, PermissionType, RequestOp } from '../../gen/cairn/kv/v1/kv';
import { validateCommand, validateLeaseGrant, validatePut } from '../../src/server/validate';
import { Entry, EntryType } from '../../gen/cairn/raft/v1/raft';
import { KvStateMachine } from '../../src/kv/state-machine';
import { formatLeaseId, LeaseBatch, MAX_KEYS_PER_LEASE, MAX_LEASED_KEY_BYTES, parseLeaseId } from '../../src/kv/leases';
import { Db, LevelDb } from '../../src/storage/db';
import { BACKENDS } from '../support/db-backends';

const b = (text: string) => Buffer.from(text);
const noSession = { clientId: '', sequence: 0, lowestUnansweredSequence: 0 };
const grant = (id: number, ttl: number): Command => ({ op: { $case: 'leaseGrant', value: { id, ttl } }, proposedAtUnixMs: 0 });
const revoke = (id: number): Command => ({ op: { $case: 'leaseRevoke', value: { id } }, proposedAtUnixMs: 0 });
const expire = (id: number, grantedIndex = 0): Command => ({ op: { $case: 'leaseExpire', value: { id, grantedIndex } }, proposedAtUnixMs: 0 });
const put = (key: string, value: string, lease?: number): Command => ({ op: { $case: 'put', value: { key: b(key), value: b(value), prevKv: false, lease, ...noSession } }, proposedAtUnixMs: 0 });
const del = (key: string): Command => ({ op: { $case: 'delete', value: { key: b(key), prevKv: false, ...noSession } }, proposedAtUnixMs: 0 });
const txnPut = (key: string, value: string, lease?: number): RequestOp => ({ request: { $case: 'requestPut', value: { key: b(key), value: b(value), prevKv: false, lease, ...noSession } } });
const txn = (success: RequestOp[]): Command => ({ op: { $case: 'txn', value: { compare: [], success, failure: [], ...noSession } }, proposedAtUnixMs: 0 });

const LEASE = 0x194d77aa9e3826;

describe.each(BACKENDS)('leases in the state machine ($name)', (backend) => {
  let sm: KvStateMachine;
  let db: Db;
  let reopen: () => Promise<Db>;
  let cleanup: () => Promise<void>;
  let index = 0;
  beforeEach(async () => {
    const opened = await backend.open();
    ({ db, reopen, cleanup } = opened);
    sm = await KvStateMachine.open(db);
    index = 0;
  });
  afterEach(() => cleanup());

  const entry = (c: Command): Entry => ({ index: ++index, term: 1, type: EntryType.ENTRY_TYPE_COMMAND, data: Buffer.from(Command.encode(c).finish()) });
  const apply = async (...commands: Command[]): Promise<CommandResult[]> => (await sm.apply(commands.map(entry))).map((o) => o.result!);
  /** The expire the leader proposes for lease `id`: it names the lease's grant. */
  const expireNow = (id: number) => expire(id, sm.leaseTable().get(id)?.grantedIndex ?? 0);
  const keysOf = (id: number) => [...(sm.leaseTable().get(id)?.keys.values() ?? [])].map(String).sort();

  test('grant, attach, revoke: every attached key is deleted in that one entry, at one revision', async () => {
    const [granted] = await apply(grant(LEASE, 10));
    expect(granted.error).toBeUndefined();
    expect(granted.op).toEqual({ $case: 'leaseGrant', value: { header: undefined, id: LEASE, ttl: 10 } });
    await apply(put('a', '1', LEASE), put('b', '2', LEASE), put('c', '3'));
    expect(keysOf(LEASE)).toEqual(['a', 'b']);
    expect((await sm.get(b('a')))?.lease).toBe(LEASE);
    const before = sm.revision();
    const [revoked] = await apply(revoke(LEASE));
    expect(revoked.op).toEqual({ $case: 'leaseRevoke', value: { header: undefined, deleted: 2 } });
    expect(revoked.revision).toBe(before + 1);
    expect(await sm.get(b('a'))).toBeUndefined();
    expect(await sm.get(b('b'))).toBeUndefined();
    expect((await sm.get(b('c')))?.value.toString()).toBe('3');
    expect(sm.leaseTable().get(LEASE)).toBeUndefined();
    expect((await apply(revoke(LEASE)))[0].error?.code).toBe('LEASE_NOT_FOUND');
  });

  test('expire (the leader`s command) deletes the keys; an expire of a lease already gone changes nothing', async () => {
    await apply(grant(LEASE, 5), put('k', 'v', LEASE));
    const [expired] = await apply(expireNow(LEASE));
    expect(expired.op).toEqual({ $case: 'leaseExpire', value: { header: undefined, deleted: 1 } });
    expect(await sm.get(b('k'))).toBeUndefined();
    const revision = sm.revision();
    const [again] = await apply(expire(LEASE, 1));
    expect(again.error).toBeUndefined();
    expect(again.revision).toBe(revision);
  });

  test('an expire meant for an earlier lease of the same id (revoked, granted again) does nothing to the new one', async () => {
    await apply(grant(LEASE, 5));
    const stale = expireNow(LEASE);
    await apply(revoke(LEASE), grant(LEASE, 5), put('k', 'v', LEASE));
    const [ignored] = await apply(stale);
    expect(ignored.op).toEqual({ $case: 'leaseExpire', value: { header: undefined, deleted: 0 } });
    expect((await sm.get(b('k')))?.lease).toBe(LEASE);
    await apply(expireNow(LEASE));
    expect(await sm.get(b('k'))).toBeUndefined();
  });

  test('a put with an unknown lease is refused and changes nothing; a grant of an existing id is refused', async () => {
    const [refused] = await apply(put('k', 'v', 42));
    expect(refused.error?.code).toBe('LEASE_NOT_FOUND');
    expect(await sm.get(b('k'))).toBeUndefined();
    expect(sm.revision()).toBe(0);
    await apply(grant(7, 10));
    expect((await apply(grant(7, 20)))[0].error?.code).toBe('LEASE_EXISTS');
    const [inTxn] = await apply(txn([txnPut('x', '1', 43)]));
    expect(inTxn.error?.code).toBe('LEASE_NOT_FOUND');
    expect(await sm.get(b('x'))).toBeUndefined();
  });

  test('a put without a lease detaches the key, a put with another lease moves it, a delete detaches it', async () => {
    await apply(grant(1, 10), grant(2, 10), put('k', 'v', 1), put('j', 'v', 1));
    await apply(put('k', 'v2'));
    expect(keysOf(1)).toEqual(['j']);
    expect((await sm.get(b('k')))?.lease).toBeUndefined();
    await apply(put('j', 'v2', 2));
    expect(keysOf(1)).toEqual([]);
    expect(keysOf(2)).toEqual(['j']);
    await apply(del('j'));
    expect(keysOf(2)).toEqual([]);
    await apply(revoke(1), revoke(2));
    expect((await sm.get(b('k')))?.value.toString()).toBe('v2');
  });

  test('a txn put attaches its key (the lock recipe: create-if-absent with a lease)', async () => {
    await apply(grant(LEASE, 10), txn([txnPut('lock', 'me', LEASE)]));
    expect(keysOf(LEASE)).toEqual(['lock']);
    await apply(expireNow(LEASE));
    expect(await sm.get(b('lock'))).toBeUndefined();
  });

  test('writes in the same batch as the revoke: the revoke sees them', async () => {
    await apply(grant(LEASE, 10));
    const results = await apply(put('a', '1', LEASE), revoke(LEASE), put('a', '2'));
    expect(results[1].op).toEqual({ $case: 'leaseRevoke', value: { header: undefined, deleted: 1 } });
    expect((await sm.get(b('a')))?.value.toString()).toBe('2');
    expect((await sm.get(b('a')))?.lease).toBeUndefined();
  });

  test('MAX_KEYS_PER_LEASE bounds the keys of a lease', async () => {
    await apply(grant(LEASE, 10));
    await apply(...Array.from({ length: MAX_KEYS_PER_LEASE }, (_, i) => put(`k${i}`, 'v', LEASE)));
    expect(sm.leaseTable().get(LEASE)?.keys.size).toBe(MAX_KEYS_PER_LEASE);
    expect((await apply(put('one-more', 'v', LEASE)))[0].error?.code).toBe('LEASE_LIMIT');
    // Putting a key that is attached already does not count twice.
    expect((await apply(put('k0', 'again', LEASE)))[0].error).toBeUndefined();
  });

  test('with auth on: lease commands need a user, and a revoke needs write on every attached key (checked at apply)', async () => {
    const HASH = { salt: b('s'), hash: b('h'), cost: 16384, blockSize: 8, parallelization: 1 };
    const auth = (op: AuthCommand['op']): Command => ({ op: { $case: 'auth', value: { op } }, proposedAtUnixMs: 0 });
    await apply(
      auth({ $case: 'userAdd', value: { name: 'root', passwordHash: HASH } }),
      auth({ $case: 'userAdd', value: { name: 'app', passwordHash: HASH } }),
      auth({ $case: 'roleAdd', value: { name: 'app' } }),
      auth({ $case: 'roleGrantPermission', value: { name: 'app', permission: { type: PermissionType.PERMISSION_TYPE_READWRITE, key: b('app/'), prefix: true } } }),
      auth({ $case: 'userGrantRole', value: { user: 'app', role: 'app' } }),
      auth({ $case: 'userAdd', value: { name: 'other', passwordHash: HASH } }),
      auth({ $case: 'authEnable', value: { signingKey: Buffer.alloc(32, 1) } }),
    );
    const as = (user: string | undefined, c: Command): Command => ({ ...c, authUser: user });
    expect((await apply(as(undefined, grant(1, 10))))[0].error?.code).toBe('PERMISSION_DENIED');
    expect((await apply(as('app', grant(1, 10))))[0].error).toBeUndefined();
    expect((await apply(as('app', put('app/k', 'v', 1))))[0].error).toBeUndefined();
    // "other" may grant and keep leases, but not delete app/k by revoking app's lease.
    expect((await apply(as('other', revoke(1))))[0].error?.code).toBe('PERMISSION_DENIED');
    expect(await sm.get(b('app/k'))).toBeDefined();
    // The leader's expiry needs no user.
    expect((await apply(expireNow(1)))[0].op).toEqual({ $case: 'leaseExpire', value: { header: undefined, deleted: 1 } });
    expect(await sm.get(b('app/k'))).toBeUndefined();
  });

  test('MAX_LEASED_KEY_BYTES bounds the bytes of all attached keys; the count follows attach, detach, revoke and reopen', async () => {
    await apply(grant(LEASE, 10), put('abc', 'v', LEASE), put('de', 'v', LEASE), put('abc', 'v2', LEASE));
    expect(sm.leaseTable().keyBytes).toBe(5);
    await apply(put('de', 'v'));
    expect(sm.leaseTable().keyBytes).toBe(3);
    sm = await KvStateMachine.open(await reopen());
    expect(sm.leaseTable().keyBytes).toBe(3);
    expect(new LeaseBatch(sm.leaseTable()).refuseAttach(LEASE, 1, MAX_LEASED_KEY_BYTES - 3)).toBeUndefined();
    expect(new LeaseBatch(sm.leaseTable()).refuseAttach(LEASE, 1, MAX_LEASED_KEY_BYTES - 2)?.code).toBe('LEASE_LIMIT');
    await apply(revoke(LEASE));
    expect(sm.leaseTable().keyBytes).toBe(0);
  });

  test('the lease table survives a reopen', async () => {
    await apply(grant(LEASE, 30), put('k', 'v', LEASE));
    sm = await KvStateMachine.open(await reopen());
    expect(sm.leaseTable().get(LEASE)?.ttlSeconds).toBe(30);
    expect(keysOf(LEASE)).toEqual(['k']);
    await apply(revoke(LEASE));
    expect(await sm.get(b('k'))).toBeUndefined();
  });

  test('the lease table travels in a snapshot', async () => {
    await apply(grant(LEASE, 30), put('k', 'v', LEASE));
    const snapshot = await sm.snapshot();
    const targetDb = await LevelDb.openMemory();
    const target = await KvStateMachine.open(targetDb);
    const restore = await target.beginRestore();
    for await (const chunk of snapshot.chunks(64)) await restore.write(chunk);
    await targetDb.write(restore.switchOps(), { sync: true });
    await restore.activate();
    await snapshot.release();
    expect(target.leaseTable().get(LEASE)?.ttlSeconds).toBe(30);
    expect([...(target.leaseTable().get(LEASE)?.keys.values() ?? [])].map(String)).toEqual(['k']);
    const next = { index: target.appliedIndex() + 1, term: 1, type: EntryType.ENTRY_TYPE_COMMAND, data: Buffer.from(Command.encode(revoke(LEASE)).finish()) };
    await target.apply([next]);
    expect(await target.get(b('k'))).toBeUndefined();
    await targetDb.close();
  });
});

describe('lease ids in hex', () => {
  test('formatted and parsed as etcdctl does, below 2^53', () => {
    expect(formatLeaseId(LEASE)).toBe('194d77aa9e3826');
    expect(parseLeaseId('194d77aa9e3826')).toBe(LEASE);
    expect(parseLeaseId('0x1f')).toBe(31);
    expect(parseLeaseId('0')).toBeUndefined();
    expect(parseLeaseId('zz')).toBeUndefined();
    expect(parseLeaseId('20000000000000')).toBeUndefined(); // 2^53
  });
});

describe('lease validation', () => {
  const limits = { maxKeyBytes: 8, maxValueBytes: 16, maxRequestBytes: 64, maxRangeLimit: 100, maxRangeBytes: 1000, maxClientIdBytes: 10 };
  test('TTL and id bounds; a forwarded expire is refused (only the leader proposes it)', () => {
    expect(() => validateLeaseGrant({ ttl: 10, id: 0 })).not.toThrow();
    expect(() => validateLeaseGrant({ ttl: 0, id: 0 })).toThrow(/lease ttl must be between 1 and MAX_LEASE_TTL_SECONDS/);
    expect(() => validateLeaseGrant({ ttl: 9_000_001, id: 0 })).toThrow(/MAX_LEASE_TTL_SECONDS/);
    expect(() => validatePut({ key: b('k'), value: b('v'), prevKv: false, lease: -1, ...noSession }, limits)).toThrow(/lease id must be between 1 and 2\^53 - 1/);
    const encode = (c: Command) => Buffer.from(Command.encode(c).finish());
    expect(validateCommand(encode(grant(5, 10)), limits).op?.$case).toBe('leaseGrant');
    expect(() => validateCommand(encode(grant(0, 10)), limits)).toThrow(/has no id/);
    expect(() => validateCommand(encode(expire(5)), limits)).toThrow(/proposed by the leader only/);
  });
});
