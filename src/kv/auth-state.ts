import { AuthCommand, CommandError, PasswordHash, Permission, PermissionType } from '../../gen/cairn/kv/v1/kv';
import { AuthRole, AuthState, AuthUser } from '../../gen/cairn/storage/v1/storage';
import { ErrorCode } from '../errors';
import { Db, DbOp } from '../storage/db';

/**
 * The auth state (users, roles, permissions, whether auth is on, the token signing key): a
 * part of the replicated state, kept whole in memory and stored as one AuthState record
 * under AUTH_STATE_KEY in the generational `auth` sublevel, so it is in every snapshot and
 * a snapshot install switches it with the rest of the state. Applying an AuthCommand is
 * deterministic: it only checks names and bounds and stores what the command carries
 * (password hashes and the signing key are computed by the proposing node).
 */

export const AUTH_STATE_KEY = Buffer.from('state');
/** The built-in role that may do everything; user root gets it when added. */
export const ROOT_ROLE = 'root';
export const ROOT_USER = 'root';

/** Bounds of the auth state. They shape the replicated state: every replica must use the same. */
export const MAX_AUTH_NAME_BYTES = 128;
export const MAX_AUTH_USERS = 1000;
export const MAX_AUTH_ROLES = 1000;
export const MAX_ROLES_PER_USER = 64;
export const MAX_PERMISSIONS_PER_ROLE = 256;
/**
 * The encoded AuthState record may not grow past this (it is rewritten by every auth
 * command). It is one record, and a snapshot chunk holds a record whole, so it must stay
 * well below MAX_SNAPSHOT_CHUNK_BYTES (1 MiB): a bigger one could never be sent to a
 * follower (asserted in test/unit/auth-state.test.ts).
 */
export const MAX_AUTH_STATE_BYTES = 512 * 1024;
/** The longest key a permission names (checked before proposing, and again at apply). */
export const MAX_PERMISSION_KEY_BYTES = 4096;

export type Access = 'read' | 'write';

/** A key interval [start, end); end undefined = to the end of the key space. */
interface Interval {
  start: Buffer;
  end: Buffer | undefined;
}

/** An immutable view of the auth state with lookups; apply() returns a new one. */
export class AuthView {
  private readonly users: Map<string, AuthUser>;
  private readonly roles: Map<string, AuthRole>;
  /** Memoized permitted intervals per user and access, for this view only. */
  private readonly intervals = new Map<string, Interval[]>();

  constructor(readonly record: AuthState) {
    this.users = new Map(record.users.map((u) => [u.name, u]));
    this.roles = new Map(record.roles.map((r) => [r.name, r]));
  }

  static empty(): AuthView {
    return new AuthView({ enabled: false, signingKey: Buffer.alloc(0), users: [], roles: [] });
  }

  static async load(db: Db): Promise<AuthView> {
    const value = await db.get('auth', AUTH_STATE_KEY);
    return value ? new AuthView(AuthState.decode(value)) : AuthView.empty();
  }

  get enabled(): boolean {
    return this.record.enabled;
  }

  get signingKey(): Buffer {
    return Buffer.from(this.record.signingKey);
  }

  user(name: string): AuthUser | undefined {
    return this.users.get(name);
  }

  /** Users in name order, without their hashes. */
  listUsers(): { name: string; roles: string[] }[] {
    return this.record.users.map((u) => ({ name: u.name, roles: [...u.roles] }));
  }

  /** Roles in name order, root first (built in, no explicit permissions). */
  listRoles(): { name: string; permissions: Permission[] }[] {
    return [{ name: ROOT_ROLE, permissions: [] }, ...this.record.roles.map((r) => ({ name: r.name, permissions: r.permissions }))];
  }

  isRoot(userName: string): boolean {
    return this.users.get(userName)?.roles.includes(ROOT_ROLE) ?? false;
  }

  /** Whether `userName` may read or write every key of [start, end) (end undefined: to the end of the key space). */
  permits(userName: string, access: Access, start: Uint8Array, end: Uint8Array | undefined): boolean {
    if (this.isRoot(userName)) return true;
    return covers(this.permittedIntervals(userName, access), Buffer.from(start), end === undefined ? undefined : Buffer.from(end));
  }

  /** Whether `userName` may read or write the one key `key`. */
  permitsKey(userName: string, access: Access, key: Uint8Array): boolean {
    return this.permits(userName, access, key, keySuccessor(key));
  }

  private permittedIntervals(userName: string, access: Access): Interval[] {
    const memo = `${access}\u0000${userName}`;
    let found = this.intervals.get(memo);
    if (!found) {
      found = [];
      for (const roleName of this.users.get(userName)?.roles ?? []) {
        for (const permission of this.roles.get(roleName)?.permissions ?? []) {
          if (allows(permission.type, access)) found.push(intervalOf(permission));
        }
      }
      found.sort((a, b) => Buffer.compare(a.start, b.start));
      this.intervals.set(memo, found);
    }
    return found;
  }

  /**
   * Applies one auth command at log index `index`: the new view, or the refusal every
   * replica makes alike (the state is then unchanged).
   */
  apply(command: AuthCommand, index: number): AuthView | CommandError {
    const next = this.applyOp(command, index);
    if (!(next instanceof AuthView)) return next;
    const bytes = AuthState.encode(next.record).finish().length;
    if (bytes > MAX_AUTH_STATE_BYTES) return refusal(ErrorCode.AUTH_LIMIT, `the auth state would be ${bytes} bytes, over MAX_AUTH_STATE_BYTES ${MAX_AUTH_STATE_BYTES}`);
    return next;
  }

  /** The write that stores this view. */
  storeOp(): DbOp {
    return { type: 'put', sublevel: 'auth', key: AUTH_STATE_KEY, value: AuthState.encode(this.record).finish() };
  }

  private applyOp(command: AuthCommand, index: number): AuthView | CommandError {
    const op = command.op;
    switch (op?.$case) {
      case 'userAdd':
        return this.addUser(op.value.name, op.value.passwordHash, index);
      case 'userDelete':
        return this.deleteUser(op.value.name);
      case 'userChangePassword':
        return this.changePassword(op.value.name, op.value.passwordHash, index);
      case 'userGrantRole':
        return this.grantRole(op.value.user, op.value.role);
      case 'userRevokeRole':
        return this.revokeRole(op.value.user, op.value.role);
      case 'roleAdd':
        return this.addRole(op.value.name);
      case 'roleDelete':
        return this.deleteRole(op.value.name);
      case 'roleGrantPermission':
        return this.grantPermission(op.value.name, op.value.permission);
      case 'roleRevokePermission':
        return this.revokePermission(op.value.name, Buffer.from(op.value.key), op.value.prefix);
      case 'authEnable':
        return this.enable(Buffer.from(op.value.signingKey));
      case 'authDisable':
        return this.with({ enabled: false, signingKey: Buffer.alloc(0) });
      case undefined:
        return refusal(ErrorCode.INVALID_ARGUMENT, 'auth command has no operation');
    }
  }

  private addUser(name: string, hash: PasswordHash | undefined, index: number): AuthView | CommandError {
    const bad = badName('user', name) ?? badHash(hash);
    if (bad) return bad;
    if (this.users.has(name)) return refusal(ErrorCode.AUTH_EXISTS, `user ${JSON.stringify(name)} exists already`);
    if (this.users.size >= MAX_AUTH_USERS) return refusal(ErrorCode.AUTH_LIMIT, `there are MAX_AUTH_USERS (${MAX_AUTH_USERS}) users already`);
    const user: AuthUser = { name, passwordHash: hash, roles: name === ROOT_USER ? [ROOT_ROLE] : [], passwordIndex: index };
    return this.with({ users: sortedByName([...this.record.users, user]) });
  }

  private deleteUser(name: string): AuthView | CommandError {
    if (!this.users.has(name)) return notFound('user', name);
    if (name === ROOT_USER && this.enabled) return refusal(ErrorCode.AUTH_ROOT_REQUIRED, 'user root cannot be deleted while auth is enabled');
    return this.with({ users: this.record.users.filter((u) => u.name !== name) });
  }

  private changePassword(name: string, hash: PasswordHash | undefined, index: number): AuthView | CommandError {
    const user = this.users.get(name);
    if (!user) return notFound('user', name);
    const bad = badHash(hash);
    if (bad) return bad;
    return this.withUser({ ...user, passwordHash: hash, passwordIndex: index });
  }

  private grantRole(userName: string, role: string): AuthView | CommandError {
    const user = this.users.get(userName);
    if (!user) return notFound('user', userName);
    if (role !== ROOT_ROLE && !this.roles.has(role)) return notFound('role', role);
    if (user.roles.includes(role)) return this;
    if (user.roles.length >= MAX_ROLES_PER_USER) return refusal(ErrorCode.AUTH_LIMIT, `user ${JSON.stringify(userName)} has MAX_ROLES_PER_USER (${MAX_ROLES_PER_USER}) roles already`);
    return this.withUser({ ...user, roles: [...user.roles, role].sort(compareStrings) });
  }

  private revokeRole(userName: string, role: string): AuthView | CommandError {
    const user = this.users.get(userName);
    if (!user) return notFound('user', userName);
    if (!user.roles.includes(role)) return refusal(ErrorCode.AUTH_NOT_FOUND, `user ${JSON.stringify(userName)} does not have role ${JSON.stringify(role)}`);
    if (userName === ROOT_USER && role === ROOT_ROLE && this.enabled) {
      return refusal(ErrorCode.AUTH_ROOT_REQUIRED, 'role root cannot be taken from user root while auth is enabled');
    }
    return this.withUser({ ...user, roles: user.roles.filter((r) => r !== role) });
  }

  private addRole(name: string): AuthView | CommandError {
    const bad = badName('role', name);
    if (bad) return bad;
    if (name === ROOT_ROLE) return refusal(ErrorCode.AUTH_EXISTS, 'role root is built in: it exists always and may do everything');
    if (this.roles.has(name)) return refusal(ErrorCode.AUTH_EXISTS, `role ${JSON.stringify(name)} exists already`);
    if (this.roles.size >= MAX_AUTH_ROLES) return refusal(ErrorCode.AUTH_LIMIT, `there are MAX_AUTH_ROLES (${MAX_AUTH_ROLES}) roles already`);
    return this.with({ roles: sortedByName([...this.record.roles, { name, permissions: [] }]) });
  }

  private deleteRole(name: string): AuthView | CommandError {
    if (name === ROOT_ROLE) return refusal(ErrorCode.AUTH_ROOT_REQUIRED, 'role root is built in and cannot be deleted');
    if (!this.roles.has(name)) return notFound('role', name);
    return this.with({
      roles: this.record.roles.filter((r) => r.name !== name),
      users: this.record.users.map((u) => (u.roles.includes(name) ? { ...u, roles: u.roles.filter((r) => r !== name) } : u)),
    });
  }

  private grantPermission(name: string, permission: Permission | undefined): AuthView | CommandError {
    if (name === ROOT_ROLE) return refusal(ErrorCode.INVALID_ARGUMENT, 'role root has every permission already');
    if (permission && permission.key.length > MAX_PERMISSION_KEY_BYTES) {
      return refusal(ErrorCode.INVALID_ARGUMENT, `permission key is ${permission.key.length} bytes, over MAX_PERMISSION_KEY_BYTES ${MAX_PERMISSION_KEY_BYTES}`);
    }
    const role = this.roles.get(name);
    if (!role) return notFound('role', name);
    if (!permission || !allows(permission.type, 'read') && !allows(permission.type, 'write')) {
      return refusal(ErrorCode.INVALID_ARGUMENT, 'permission type must be READ, WRITE or READWRITE');
    }
    const key = Buffer.from(permission.key);
    if (key.length === 0 && !permission.prefix) return refusal(ErrorCode.INVALID_ARGUMENT, 'permission key is empty (use prefix for every key)');
    const others = role.permissions.filter((p) => !samePermissionKey(p, key, permission.prefix));
    if (others.length >= MAX_PERMISSIONS_PER_ROLE) return refusal(ErrorCode.AUTH_LIMIT, `role ${JSON.stringify(name)} has MAX_PERMISSIONS_PER_ROLE (${MAX_PERMISSIONS_PER_ROLE}) permissions already`);
    const permissions = [...others, { type: permission.type, key, prefix: permission.prefix }].sort(comparePermissions);
    return this.withRole({ name, permissions });
  }

  private revokePermission(name: string, key: Buffer, prefix: boolean): AuthView | CommandError {
    const role = this.roles.get(name);
    if (!role) return notFound('role', name);
    const permissions = role.permissions.filter((p) => !samePermissionKey(p, key, prefix));
    if (permissions.length === role.permissions.length) {
      return refusal(ErrorCode.AUTH_NOT_FOUND, `role ${JSON.stringify(name)} has no permission on ${prefix ? 'prefix' : 'key'} ${JSON.stringify(key.toString('latin1'))}`);
    }
    return this.withRole({ name, permissions });
  }

  private enable(signingKey: Buffer): AuthView | CommandError {
    if (!this.isRoot(ROOT_USER)) return refusal(ErrorCode.AUTH_ROOT_REQUIRED, 'auth cannot be enabled until user root exists and has role root (cairn user add root)');
    if (signingKey.length < MIN_SIGNING_KEY_BYTES) return refusal(ErrorCode.INVALID_ARGUMENT, `the signing key is ${signingKey.length} bytes, under ${MIN_SIGNING_KEY_BYTES}`);
    // Enabling again keeps the key: the tokens given out stay valid.
    if (this.enabled) return this;
    return this.with({ enabled: true, signingKey });
  }

  private with(changes: Partial<AuthState>): AuthView {
    return new AuthView({ ...this.record, ...changes });
  }

  private withUser(user: AuthUser): AuthView {
    return this.with({ users: this.record.users.map((u) => (u.name === user.name ? user : u)) });
  }

  private withRole(role: AuthRole): AuthView {
    return this.with({ roles: this.record.roles.map((r) => (r.name === role.name ? role : r)) });
  }
}

/** The fewest bytes of HMAC key an AuthEnable may carry. */
export const MIN_SIGNING_KEY_BYTES = 32;

/** The problem with a user or role name, as a refusal; undefined when it is fine. */
export function authNameProblem(what: 'user' | 'role', name: string): string | undefined {
  const bytes = Buffer.byteLength(name);
  if (bytes === 0) return `${what} name is empty`;
  if (bytes > MAX_AUTH_NAME_BYTES) return `${what} name is ${bytes} bytes, over MAX_AUTH_NAME_BYTES ${MAX_AUTH_NAME_BYTES}`;
  // Control characters would make listings and logs lie; ':' separates user and password in --user.
  if (/[\u0000-\u001f\u007f:]/.test(name)) return `${what} name ${JSON.stringify(name)} holds a control character or ':'`;
  return undefined;
}

function badName(what: 'user' | 'role', name: string): CommandError | undefined {
  const problem = authNameProblem(what, name);
  return problem ? refusal(ErrorCode.INVALID_ARGUMENT, problem) : undefined;
}

function badHash(hash: PasswordHash | undefined): CommandError | undefined {
  if (!hash || hash.salt.length === 0 || hash.hash.length === 0) return refusal(ErrorCode.INVALID_ARGUMENT, 'the command carries no password hash');
  return undefined;
}

function notFound(what: 'user' | 'role', name: string): CommandError {
  return refusal(ErrorCode.AUTH_NOT_FOUND, `${what} ${JSON.stringify(name)} does not exist`);
}

function refusal(code: ErrorCode, message: string): CommandError {
  return { code, message };
}

function allows(type: PermissionType, access: Access): boolean {
  if (type === PermissionType.PERMISSION_TYPE_READWRITE) return true;
  return access === 'read' ? type === PermissionType.PERMISSION_TYPE_READ : type === PermissionType.PERMISSION_TYPE_WRITE;
}

function samePermissionKey(permission: Permission, key: Buffer, prefix: boolean): boolean {
  return permission.prefix === prefix && Buffer.compare(Buffer.from(permission.key), key) === 0;
}

function intervalOf(permission: Permission): Interval {
  const key = Buffer.from(permission.key);
  return permission.prefix ? { start: key, end: prefixEnd(key) } : { start: key, end: keySuccessor(key) };
}

/** The smallest key after `key`: key + 0x00. */
export function keySuccessor(key: Uint8Array): Buffer {
  return Buffer.concat([Buffer.from(key), Buffer.from([0])]);
}

/** The first key after every key with `prefix`; undefined when there is none (empty or all 0xff). */
export function prefixEnd(prefix: Uint8Array): Buffer | undefined {
  const end = Buffer.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i]! < 0xff) {
      end[i]!++;
      return end.subarray(0, i + 1);
    }
  }
  return undefined;
}

/** Whether the union of `intervals` (sorted by start) covers [start, end). */
function covers(intervals: readonly Interval[], start: Buffer, end: Buffer | undefined): boolean {
  if (end !== undefined && Buffer.compare(start, end) >= 0) return true;
  let reached = start;
  for (const interval of intervals) {
    if (Buffer.compare(interval.start, reached) > 0) return false;
    if (interval.end === undefined) return true;
    if (Buffer.compare(interval.end, reached) > 0) reached = interval.end;
    if (end !== undefined && Buffer.compare(reached, end) >= 0) return true;
  }
  return false;
}

function compareStrings(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function sortedByName<T extends { name: string }>(items: T[]): T[] {
  return items.sort((a, b) => compareStrings(a.name, b.name));
}

function comparePermissions(a: Permission, b: Permission): number {
  return Buffer.compare(Buffer.from(a.key), Buffer.from(b.key)) || Number(a.prefix) - Number(b.prefix);
}
