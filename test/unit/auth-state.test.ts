import { Metadata } from '@grpc/grpc-js';
import { AuthCommand, Command, CommandError, PermissionType } from '../../gen/cairn/kv/v1/kv';
import { Entry, EntryType } from '../../gen/cairn/raft/v1/raft';
import { AuthView, MAX_AUTH_STATE_BYTES, MAX_PERMISSION_KEY_BYTES, MAX_PERMISSIONS_PER_ROLE } from '../../src/kv/auth-state';
import { MAX_SNAPSHOT_CHUNK_BYTES } from '../../src/node/replica';
import { KvStateMachine } from '../../src/kv/state-machine';
import { LevelDb } from '../../src/storage/db';
import { AuthGate, LoginLimiter } from '../../src/server/auth';
import { signToken } from '../../src/server/auth-tokens';
import { hashPassword, verifyPassword } from '../../src/server/passwords';

const HASH = { salt: Buffer.from('salt'), hash: Buffer.from('hash'), cost: 16384, blockSize: 8, parallelization: 1 };
const KEY = Buffer.alloc(32, 7);

function applyAll(view: AuthView, ops: AuthCommand['op'][]): AuthView {
  let index = 10;
  for (const op of ops) {
    const next = view.apply({ op }, index++);
    if (!(next instanceof AuthView)) throw new Error(`refused: ${next.code} ${next.message}`);
    view = next;
  }
  return view;
}

const grant = (name: string, type: PermissionType, key: string, prefix: boolean): AuthCommand['op'] => ({
  $case: 'roleGrantPermission',
  value: { name, permission: { type, key: Buffer.from(key), prefix } },
});

function withAlice(...grants: AuthCommand['op'][]): AuthView {
  return applyAll(AuthView.empty(), [
    { $case: 'userAdd', value: { name: 'root', passwordHash: HASH } },
    { $case: 'userAdd', value: { name: 'alice', passwordHash: HASH } },
    { $case: 'roleAdd', value: { name: 'app' } },
    ...grants,
    { $case: 'userGrantRole', value: { user: 'alice', role: 'app' } },
  ]);
}

describe('auth state', () => {
  test('prefix and key permissions cover exactly their keys and ranges, by access type', () => {
    const view = withAlice(
      grant('app', PermissionType.PERMISSION_TYPE_READWRITE, 'app/', true),
      grant('app', PermissionType.PERMISSION_TYPE_READ, 'cfg', false),
      grant('app', PermissionType.PERMISSION_TYPE_WRITE, 'log/', true),
      grant('app', PermissionType.PERMISSION_TYPE_READ, 'b/', true),
      grant('app', PermissionType.PERMISSION_TYPE_READ, 'b0', true),
    );
    const k = (s: string) => Buffer.from(s);
    expect(view.permitsKey('alice', 'read', k('app/x'))).toBe(true);
    expect(view.permitsKey('alice', 'write', k('app/x'))).toBe(true);
    expect(view.permitsKey('alice', 'read', k('app'))).toBe(false);
    expect(view.permitsKey('alice', 'read', k('app0'))).toBe(false);
    expect(view.permitsKey('alice', 'read', k('cfg'))).toBe(true);
    expect(view.permitsKey('alice', 'write', k('cfg'))).toBe(false);
    expect(view.permitsKey('alice', 'read', k('cfg2'))).toBe(false);
    expect(view.permitsKey('alice', 'write', k('log/1'))).toBe(true);
    expect(view.permitsKey('alice', 'read', k('log/1'))).toBe(false);
    // Ranges: within a prefix, across two adjacent prefixes ('b/' ends where 'b0' starts), and beyond.
    expect(view.permits('alice', 'read', k('app/'), k('app0'))).toBe(true);
    expect(view.permits('alice', 'read', k('app/a'), k('app/z'))).toBe(true);
    expect(view.permits('alice', 'read', k('app/'), k('app1'))).toBe(false);
    expect(view.permits('alice', 'read', k('b/'), k('b1'))).toBe(true);
    expect(view.permits('alice', 'read', k('b/'), k('b2'))).toBe(false);
    expect(view.permits('alice', 'read', k('app/'), undefined)).toBe(false);
    expect(view.permits('alice', 'read', Buffer.alloc(0), undefined)).toBe(false);
    // Root may do everything; an unknown user nothing.
    expect(view.permits('root', 'write', Buffer.alloc(0), undefined)).toBe(true);
    expect(view.permitsKey('nobody', 'read', k('app/x'))).toBe(false);
    // Revoking the role takes the permissions with it.
    const revoked = applyAll(view, [{ $case: 'userRevokeRole', value: { user: 'alice', role: 'app' } }]);
    expect(revoked.permitsKey('alice', 'read', k('app/x'))).toBe(false);
    expect(view.permitsKey('alice', 'read', k('app/x'))).toBe(true);
  });

  test('a prefix of every key covers the whole key space', () => {
    const view = withAlice(grant('app', PermissionType.PERMISSION_TYPE_READ, '', true));
    expect(view.permits('alice', 'read', Buffer.alloc(0), undefined)).toBe(true);
    expect(view.permits('alice', 'write', Buffer.alloc(0), undefined)).toBe(false);
  });

  test('auth cannot be enabled before root exists; root cannot be deleted or demoted while it is on', () => {
    const refused = (view: AuthView, op: AuthCommand['op']) => view.apply({ op }, 99) as CommandError;
    expect(refused(AuthView.empty(), { $case: 'authEnable', value: { signingKey: KEY } }).code).toBe('AUTH_ROOT_REQUIRED');
    const on = applyAll(withAlice(), [{ $case: 'authEnable', value: { signingKey: KEY } }]);
    expect(on.enabled).toBe(true);
    expect(refused(on, { $case: 'userDelete', value: { name: 'root' } }).code).toBe('AUTH_ROOT_REQUIRED');
    expect(refused(on, { $case: 'userRevokeRole', value: { user: 'root', role: 'root' } }).code).toBe('AUTH_ROOT_REQUIRED');
    expect(refused(on, { $case: 'roleAdd', value: { name: 'root' } }).code).toBe('AUTH_EXISTS');
    expect(refused(on, { $case: 'userAdd', value: { name: 'alice', passwordHash: HASH } }).code).toBe('AUTH_EXISTS');
    expect(refused(on, { $case: 'userGrantRole', value: { user: 'alice', role: 'nope' } }).code).toBe('AUTH_NOT_FOUND');
    expect(refused(on, { $case: 'userAdd', value: { name: 'a:b', passwordHash: HASH } }).code).toBe('INVALID_ARGUMENT');
    const off = applyAll(on, [{ $case: 'authDisable', value: {} }]);
    expect(off.enabled).toBe(false);
    expect(off.signingKey.length).toBe(0);
  });

  test('a role holds at most MAX_PERMISSIONS_PER_ROLE permissions', () => {
    let view = withAlice();
    for (let i = 0; i < MAX_PERMISSIONS_PER_ROLE; i++) view = applyAll(view, [grant('app', PermissionType.PERMISSION_TYPE_READ, `k${i}`, false)]);
    const over = view.apply({ op: grant('app', PermissionType.PERMISSION_TYPE_READ, 'one-more', false) }, 1) as CommandError;
    expect(over.code).toBe('AUTH_LIMIT');
    // Granting an existing key again replaces it, within the bound.
    expect(view.apply({ op: grant('app', PermissionType.PERMISSION_TYPE_READWRITE, 'k0', false) }, 1)).toBeInstanceOf(AuthView);
  });
});

describe('auth in the state machine', () => {
  const entry = (index: number, command: Command): Entry => ({ index, term: 1, type: EntryType.ENTRY_TYPE_COMMAND, data: Buffer.from(Command.encode(command).finish()) });
  const auth = (op: AuthCommand['op']): Command => ({ op: { $case: 'auth', value: { op } }, proposedAtUnixMs: 0 });
  const put = (key: string, authUser?: string): Command => ({
    op: { $case: 'put', value: { key: Buffer.from(key), value: Buffer.from('v'), prevKv: false, clientId: '', sequence: 0, lowestUnansweredSequence: 0 } },
    proposedAtUnixMs: 0,
    authUser,
  });

  test('writes are checked again at apply; the auth state is stored, reloaded, and carried by a snapshot', async () => {
    const db = await LevelDb.openMemory();
    const sm = await KvStateMachine.open(db);
    const commands = [
      auth({ $case: 'userAdd', value: { name: 'root', passwordHash: HASH } }),
      auth({ $case: 'userAdd', value: { name: 'alice', passwordHash: HASH } }),
      auth({ $case: 'roleAdd', value: { name: 'app' } }),
      auth(grant('app', PermissionType.PERMISSION_TYPE_WRITE, 'app/', true)),
      auth({ $case: 'userGrantRole', value: { user: 'alice', role: 'app' } }),
      put('before-auth'),
      auth({ $case: 'authEnable', value: { signingKey: KEY } }),
      put('app/1', 'alice'),
      put('secret', 'alice'),
      put('app/2'),
      put('secret', 'root'),
    ];
    const outcomes = await sm.apply(commands.map((c, i) => entry(i + 1, c)));
    const errors = outcomes.map((o) => o.result?.error?.code ?? 'ok');
    expect(errors).toEqual(['ok', 'ok', 'ok', 'ok', 'ok', 'ok', 'ok', 'ok', 'PERMISSION_DENIED', 'PERMISSION_DENIED', 'ok']);
    expect(await sm.get(Buffer.from('secret'))).toMatchObject({ version: 1 });
    expect(await sm.get(Buffer.from('app/2'))).toBeUndefined();
    expect(sm.authState().enabled).toBe(true);

    // Reopened from the same database: the same state.
    const reopened = await KvStateMachine.open(db);
    expect(reopened.authState().record).toEqual(sm.authState().record);

    // A snapshot installed into another state machine carries it.
    const otherDb = await LevelDb.openMemory();
    const other = await KvStateMachine.open(otherDb);
    const restore = await other.beginRestore();
    for await (const chunk of (await sm.snapshot()).chunks(64)) await restore.write(chunk);
    await otherDb.write(restore.switchOps(), { sync: true });
    await restore.activate();
    expect(other.authState().enabled).toBe(true);
    expect(other.authState().record).toEqual(sm.authState().record);
    expect((await KvStateMachine.open(otherDb)).authState().record).toEqual(sm.authState().record);
  });
});

describe('auth at apply: what a node with an older auth state let through', () => {
  const entry = (index: number, command: Command): Entry => ({ index, term: 1, type: EntryType.ENTRY_TYPE_COMMAND, data: Buffer.from(Command.encode(command).finish()) });
  const auth = (op: AuthCommand['op'], authUser?: string): Command => ({ op: { $case: 'auth', value: { op } }, proposedAtUnixMs: 0, authUser });
  const write = (kind: 'put' | 'delete', key: string, authUser: string, prevKv: boolean): Command => {
    const value = { key: Buffer.from(key), prevKv, clientId: '', sequence: 0, lowestUnansweredSequence: 0 };
    return { op: kind === 'put' ? { $case: 'put', value: { ...value, value: Buffer.from('new') } } : { $case: 'delete', value }, proposedAtUnixMs: 0, authUser };
  };

  test('once auth is on, an auth command applies only for a root user: a stranger cannot change root\'s password or turn auth off', async () => {
    const sm = await KvStateMachine.open(await LevelDb.openMemory());
    const commands = [
      auth({ $case: 'userAdd', value: { name: 'root', passwordHash: HASH } }),
      auth({ $case: 'userAdd', value: { name: 'mallory', passwordHash: HASH } }),
      auth({ $case: 'authEnable', value: { signingKey: KEY } }),
      auth({ $case: 'userChangePassword', value: { name: 'root', passwordHash: { ...HASH, salt: Buffer.from('evil') } } }),
      auth({ $case: 'authDisable', value: {} }),
      auth({ $case: 'userGrantRole', value: { user: 'mallory', role: 'root' } }, 'mallory'),
      auth({ $case: 'roleAdd', value: { name: 'ops' } }, 'root'),
    ];
    const outcomes = await sm.apply(commands.map((c, i) => entry(i + 1, c)));
    expect(outcomes.map((o) => o.result?.error?.code ?? 'ok')).toEqual(['ok', 'ok', 'ok', 'PERMISSION_DENIED', 'PERMISSION_DENIED', 'PERMISSION_DENIED', 'ok']);
    expect(sm.authState().enabled).toBe(true);
    expect(sm.authState().isRoot('mallory')).toBe(false);
  });

  test('a write asking for prev_kv needs read access too: write-only users get no old values', async () => {
    const sm = await KvStateMachine.open(await LevelDb.openMemory());
    const setup = [
      auth({ $case: 'userAdd', value: { name: 'root', passwordHash: HASH } }),
      auth({ $case: 'userAdd', value: { name: 'w', passwordHash: HASH } }),
      auth({ $case: 'roleAdd', value: { name: 'writer' } }),
      auth(grant('writer', PermissionType.PERMISSION_TYPE_WRITE, 'log/', true)),
      auth({ $case: 'userGrantRole', value: { user: 'w', role: 'writer' } }),
      write('put', 'log/a', 'root', false),
      auth({ $case: 'authEnable', value: { signingKey: KEY } }),
      write('put', 'log/a', 'w', true),
      write('delete', 'log/a', 'w', true),
      write('put', 'log/a', 'w', false),
    ];
    const outcomes = await sm.apply(setup.map((c, i) => entry(i + 1, c)));
    expect(outcomes.slice(-3).map((o) => o.result?.error?.code ?? 'ok')).toEqual(['PERMISSION_DENIED', 'PERMISSION_DENIED', 'ok']);
    expect(outcomes.slice(-3).every((o) => o.result?.op?.value && 'prevKv' in o.result.op.value ? o.result.op.value.prevKv === undefined : true)).toBe(true);
  });

  test('a token revoked before its command applies is refused at apply: the password changed, or the user was deleted and added again', async () => {
    const sm = await KvStateMachine.open(await LevelDb.openMemory());
    const asAlice = (command: Command, passwordIndex: number): Command => ({ ...command, authPasswordIndex: passwordIndex });
    const setup = [
      auth({ $case: 'userAdd', value: { name: 'root', passwordHash: HASH } }),
      auth({ $case: 'userAdd', value: { name: 'alice', passwordHash: HASH } }), // alice's password index: 2
      auth({ $case: 'userGrantRole', value: { user: 'alice', role: 'root' } }),
      auth({ $case: 'authEnable', value: { signingKey: KEY } }),
    ];
    await sm.apply(setup.map((c, i) => entry(i + 1, c)));
    expect(sm.authState().user('alice')?.passwordIndex).toBe(2);
    const later = [
      asAlice(write('put', 'a', 'alice', false), 2), // 5: the token is current
      auth({ $case: 'userChangePassword', value: { name: 'alice', passwordHash: { ...HASH, salt: Buffer.from('new') } } }, 'root'), // 6
      asAlice(write('put', 'b', 'alice', false), 2), // 7: signed for the old password
      asAlice(auth({ $case: 'roleAdd', value: { name: 'ops' } }, 'alice'), 2), // 8: an auth command too
      asAlice(write('put', 'c', 'alice', false), 6), // 9: a token from the new password
      write('put', 'd', 'alice', false), // 10: a client certificate named alice (no index): still alice
    ];
    const outcomes = await sm.apply(later.map((c, i) => entry(i + 5, c)));
    expect(outcomes.map((o) => o.result?.error?.code ?? 'ok')).toEqual(['ok', 'ok', 'UNAUTHENTICATED', 'UNAUTHENTICATED', 'ok', 'ok']);
    expect(outcomes[2]!.result?.error?.message).toMatch(/token of user "alice" was revoked/);
    expect(await sm.get(Buffer.from('b'))).toBeUndefined();
    expect(sm.authState().listRoles().some((r) => r.name === 'ops')).toBe(false);
  });

  test('a client session belongs to the user that started it: another user\'s write under it is refused and sees none of its results', async () => {
    const sm = await KvStateMachine.open(await LevelDb.openMemory());
    const session = (command: Command, clientId: string, sequence: number): Command => {
      const op = command.op!;
      return { ...command, op: { ...op, value: { ...op.value, clientId, sequence, lowestUnansweredSequence: sequence } } as Command['op'] };
    };
    const setup = [
      auth({ $case: 'userAdd', value: { name: 'root', passwordHash: HASH } }),
      auth({ $case: 'userAdd', value: { name: 'mallory', passwordHash: HASH } }),
      auth({ $case: 'userGrantRole', value: { user: 'mallory', role: 'root' } }),
      session(write('put', 'k', 'root', false), 'before-auth', 1),
      auth({ $case: 'authEnable', value: { signingKey: KEY } }),
      session(write('put', 'k', 'root', true), 'root-session', 1),
      session(write('put', 'k', 'mallory', true), 'root-session', 1), // a replay of root's write by another user
      session(write('put', 'k', 'root', true), 'root-session', 1), // root's own retry: its kept answer
      session(write('put', 'k', 'root', false), 'before-auth', 2), // a session from before auth
      session(write('put', 'k', 'mallory', false), 'mallory-session', 1),
    ];
    const outcomes = await sm.apply(setup.map((c, i) => entry(i + 1, c)));
    const codes = outcomes.map((o) => o.result?.error?.code ?? 'ok');
    expect(codes.slice(5)).toEqual(['ok', 'SESSION_NOT_OWNED', 'ok', 'SESSION_NOT_OWNED', 'ok']);
    expect(outcomes[6]!.result?.error?.message).toMatch(/client session root-session was started by another user; user "mallory" may not write under it/);
    expect(outcomes[6]!.result?.op).toBeUndefined();
    expect(outcomes[7]!.result).toEqual(outcomes[5]!.result);
    expect(outcomes[8]!.result?.error?.message).toMatch(/started by a client while auth was off/);
    expect(await sm.get(Buffer.from('k'))).toMatchObject({ version: 3 });
  });

  test('the largest auth state fits one snapshot chunk (a record is never split), and permission keys are bounded', () => {
    expect(MAX_AUTH_STATE_BYTES + 1024).toBeLessThan(MAX_SNAPSHOT_CHUNK_BYTES);
    const view = withAlice();
    const tooLong = view.apply({ op: grant('app', PermissionType.PERMISSION_TYPE_READ, 'k'.repeat(MAX_PERMISSION_KEY_BYTES + 1), false) }, 1) as CommandError;
    expect(tooLong.code).toBe('INVALID_ARGUMENT');
  });
});

describe('tokens, passwords and login limits', () => {
  const view = applyAll(withAlice(), [{ $case: 'authEnable', value: { signingKey: KEY } }]);
  const identity = (token?: string) => {
    const metadata = new Metadata();
    if (token !== undefined) metadata.set('authorization', token);
    return { metadata };
  };

  test('a token verifies only with the key, before expiry, and while the password is unchanged', () => {
    let now = 1_000_000;
    const gate = new AuthGate(() => view, { nowMs: () => now });
    const alice = view.user('alice')!;
    const token = signToken(view.signingKey, 'alice', alice.passwordIndex, now + 1000);
    expect(gate.identify(identity(`Bearer ${token}`))).toBe('alice');
    expect(() => gate.identify(identity())).toThrow(/no token/);
    expect(() => gate.identify(identity(token))).toThrow(/Bearer/);
    expect(() => gate.identify(identity(`Bearer ${signToken(Buffer.alloc(32, 1), 'alice', alice.passwordIndex, now + 1000)}`))).toThrow(/signature/);
    expect(() => gate.identify(identity(`Bearer ${signToken(view.signingKey, 'alice', alice.passwordIndex + 1, now + 1000)}`))).toThrow(/revoked/);
    expect(() => gate.identify(identity(`Bearer ${'x'.repeat(5000)}`))).toThrow(/MAX_TOKEN_BYTES/);
    // Swapping the user inside a signed token breaks the signature.
    const [v, , index, expiry, mac] = token.split('.');
    expect(() => gate.identify(identity(`Bearer ${[v, Buffer.from('root').toString('base64url'), index, expiry, mac].join('.')}`))).toThrow(/signature/);
    now += 1000;
    expect(() => gate.identify(identity(`Bearer ${token}`))).toThrow(/expired/);
    expect(() => gate.requireKey(identity(`Bearer ${signToken(view.signingKey, 'alice', alice.passwordIndex, now + 1000)}`), 'read', Buffer.from('x'))).toThrow(/permission denied/);
  });

  test('a token verified once is remembered only under the same auth state, and expires all the same', () => {
    let now = 1_000_000;
    let state = view;
    const gate = new AuthGate(() => state, { nowMs: () => now });
    const token = `Bearer ${signToken(view.signingKey, 'alice', view.user('alice')!.passwordIndex, now + 1000)}`;
    expect(gate.identify(identity(token))).toBe('alice');
    expect(gate.identify(identity(token))).toBe('alice');
    state = applyAll(view, [{ $case: 'userChangePassword', value: { name: 'alice', passwordHash: HASH } }]);
    expect(() => gate.identify(identity(token))).toThrow(/revoked/);
    state = view;
    expect(gate.identify(identity(token))).toBe('alice');
    now += 1000;
    expect(() => gate.identify(identity(token))).toThrow(/expired/);
  });

  test('a client-certificate common name stands for its user only when trusted', () => {
    expect(new AuthGate(() => view, { trustCertificateCommonName: true }).identify({ ...identity(), certificateCommonName: 'alice' })).toBe('alice');
    expect(() => new AuthGate(() => view).identify({ ...identity(), certificateCommonName: 'alice' })).toThrow(/no token/);
    expect(() => new AuthGate(() => view, { trustCertificateCommonName: true }).identify({ ...identity(), certificateCommonName: 'nobody' })).toThrow(/no token/);
  });

  test('scrypt hashes are salted and verify only the right password', async () => {
    const one = await hashPassword('secret');
    const two = await hashPassword('secret');
    expect(Buffer.from(one.salt).equals(Buffer.from(two.salt))).toBe(false);
    expect(Buffer.from(one.hash).equals(Buffer.from(two.hash))).toBe(false);
    expect(await verifyPassword('secret', one)).toBe(true);
    expect(await verifyPassword('Secret', one)).toBe(false);
    expect(await verifyPassword('secret', undefined)).toBe(false);
  });

  test('failed logins are limited per user within a window', () => {
    const limiter = new LoginLimiter(2, 1000);
    // Attempts count when they start, so two still being hashed use up the window.
    limiter.attempt('a', 0);
    limiter.attempt('a', 10);
    expect(() => limiter.attempt('a', 20)).toThrow(/too many failed logins/);
    expect(() => limiter.attempt('nobody', 20)).not.toThrow();
    expect(() => limiter.attempt('a', 1000)).not.toThrow(); // a new window
    limiter.noteSuccess('a');
    limiter.attempt('a', 1001);
    expect(() => limiter.attempt('a', 1002)).not.toThrow(); // the success cleared the count
  });
});

describe('forwarded auth commands', () => {
  const { validateCommand } = require('../../src/server/validate') as typeof import('../../src/server/validate');
  const limits = { maxKeyBytes: 4096, maxValueBytes: 1 << 20, maxRequestBytes: 1 << 21, maxRangeLimit: 1000, maxRangeBytes: 1 << 22, maxClientIdBytes: 128 };
  const encode = (command: Command) => Buffer.from(Command.encode(command).finish());

  test('an auth command passes the forwarding checks; an auth_user over MAX_AUTH_NAME_BYTES does not', () => {
    const auth: Command = { op: { $case: 'auth', value: { op: { $case: 'roleAdd', value: { name: 'app' } } } }, proposedAtUnixMs: 0 };
    expect(validateCommand(encode(auth), limits).op?.$case).toBe('auth');
    const put = (authUser: string): Command => ({
      op: { $case: 'put', value: { key: Buffer.from('k'), value: Buffer.from('v'), prevKv: false, clientId: '', sequence: 0, lowestUnansweredSequence: 0 } },
      proposedAtUnixMs: 0,
      authUser,
    });
    expect(validateCommand(encode(put('alice')), limits).authUser).toBe('alice');
    expect(() => validateCommand(encode(put('a'.repeat(129))), limits)).toThrow(/MAX_AUTH_NAME_BYTES/);
  });
});
