import { randomBytes } from 'node:crypto';
import { Metadata } from '@grpc/grpc-js';
import { AuthCommand, AuthServer, Command } from '../../gen/cairn/kv/v1/kv';
import { Access, authNameProblem, AuthView, MAX_PERMISSION_KEY_BYTES, MIN_SIGNING_KEY_BYTES } from '../kv/auth-state';
import { describeKey } from '../kv/state-machine';
import { CairnError, ErrorCode } from '../errors';
import { DEFAULT_AUTH_TOKEN_TTL_MS, signToken, unauthenticated, verifyToken } from './auth-tokens';
import { checkPasswordInput, hashPassword, verifyPassword } from './passwords';
import { RequestScope } from './router';

/** The gRPC metadata that carries a token: `authorization: Bearer TOKEN`. */
export const AUTHORIZATION_METADATA = 'authorization';

/** Failed logins of one user allowed per FAILED_LOGIN_WINDOW_MS; past it, logins are refused unchecked until the window ends. */
export const MAX_FAILED_LOGINS_PER_WINDOW = 5;
export const FAILED_LOGIN_WINDOW_MS = 60_000;
/**
 * Tokens whose signature a node remembers having checked (an HMAC and its encodings cost tens
 * of µs, about a unary call's own cost); past it the cache starts over.
 */
export const MAX_VERIFIED_TOKENS = 10_000;
/** Users whose failed logins are tracked at once (only existing users are: at most MAX_AUTH_USERS). */
export const MAX_TRACKED_LOGIN_USERS = 10_000;

/** Counts failed logins per user, in fixed windows of the node's clock (local, not replicated: it only slows guessing). */
export class LoginLimiter {
  private readonly failures = new Map<string, { windowStartMs: number; count: number }>();

  constructor(
    private readonly maxFailures = MAX_FAILED_LOGINS_PER_WINDOW,
    private readonly windowMs = FAILED_LOGIN_WINDOW_MS,
  ) {}

  /**
   * Counts one login attempt for `user` before its password is checked, so that attempts
   * still hashing count too (checking after the hash let 40 concurrent guesses past a limit
   * of 5); a success clears the count. Unknown names are counted alike, so the refusal says
   * nothing about which users exist. Throws AUTH_RATE_LIMITED once the window's attempts are
   * used up.
   */
  attempt(user: string, nowMs: number): void {
    let entry = this.failures.get(user);
    if (entry && nowMs - entry.windowStartMs >= this.windowMs) {
      this.failures.delete(user);
      entry = undefined;
    }
    if (entry && entry.count >= this.maxFailures) {
      const waitMs = entry.windowStartMs + this.windowMs - nowMs;
      throw new CairnError(ErrorCode.AUTH_RATE_LIMITED, `too many failed logins for user ${JSON.stringify(user)} (MAX_FAILED_LOGINS_PER_WINDOW ${this.maxFailures} per ${this.windowMs} ms): retry in ${waitMs} ms`);
    }
    if (entry) {
      entry.count++;
      return;
    }
    if (this.failures.size >= MAX_TRACKED_LOGIN_USERS) this.forgetExpired(nowMs);
    if (this.failures.size < MAX_TRACKED_LOGIN_USERS) this.failures.set(user, { windowStartMs: nowMs, count: 1 });
  }

  noteSuccess(user: string): void {
    this.failures.delete(user);
  }

  private forgetExpired(nowMs: number): void {
    for (const [user, entry] of this.failures) if (nowMs - entry.windowStartMs >= this.windowMs) this.failures.delete(user);
  }
}

export interface AuthGateOptions {
  tokenTtlMs?: number;
  /**
   * With client-certificate auth on (the TLS work): a call with no token but a verified
   * client certificate is the user its common name names, as in etcd.
   */
  trustCertificateCommonName?: boolean;
  nowMs?: () => number;
}

/**
 * An authenticated caller: its user and, when a token named it, the password index the
 * token was signed for (a command carries both, and apply refuses it if the password has
 * changed since: see Command.auth_password_index in kv.proto).
 */
export interface Caller {
  user: string;
  passwordIndex?: number;
}

/** The Command fields that say who proposed it (none while auth is off). */
export function commandAuthOf(caller: Caller | undefined): { authUser?: string; authPasswordIndex?: number } {
  if (!caller) return {};
  return caller.passwordIndex === undefined ? { authUser: caller.user } : { authUser: caller.user, authPasswordIndex: caller.passwordIndex };
}

/** Who a call is. `certificateCommonName`: the verified client certificate's CN, if any. */
export interface CallIdentity {
  metadata: Metadata;
  certificateCommonName?: string;
}

/**
 * Decides, on the node that receives a call, who the caller is and whether it may do what it
 * asks, from this node's own copy of the auth state: no round trip to the leader.
 */
export class AuthGate {
  readonly limiter = new LoginLimiter();
  readonly tokenTtlMs: number;
  private readonly nowMs: () => number;
  private readonly verifiedTokens = new Map<string, { user: string; passwordIndex: number; expiresAtUnixMs: number }>();
  private verifiedUnder: AuthView | undefined;

  constructor(
    readonly state: () => AuthView,
    private readonly options: AuthGateOptions = {},
  ) {
    this.tokenTtlMs = options.tokenTtlMs ?? DEFAULT_AUTH_TOKEN_TTL_MS;
    this.nowMs = options.nowMs ?? Date.now;
  }

  /** The authenticated user of a call; undefined while auth is off. */
  identify(call: CallIdentity): string | undefined {
    return this.caller(call)?.user;
  }

  /** The authenticated caller of a call; undefined while auth is off. */
  caller(call: CallIdentity): Caller | undefined {
    const state = this.state();
    if (!state.enabled) return undefined;
    const values = call.metadata.get(AUTHORIZATION_METADATA);
    if (values.length === 0) {
      const name = this.options.trustCertificateCommonName ? call.certificateCommonName : undefined;
      if (name && state.user(name)) return { user: name };
      throw unauthenticated('auth is enabled and the call carries no token (send metadata "authorization: Bearer TOKEN", from Auth.Authenticate)');
    }
    if (values.length > 1) throw unauthenticated('the call carries more than one authorization value');
    const value = values[0];
    if (typeof value !== 'string' || !value.startsWith('Bearer ')) throw unauthenticated('the authorization metadata is not "Bearer TOKEN"');
    return this.verified(state, value.slice('Bearer '.length));
  }

  /**
   * A token's user, from the cache of tokens verified under this same auth state (any auth
   * change empties it, so a revocation holds at once); expiry is checked on every call.
   */
  private verified(state: AuthView, token: string): Caller {
    if (this.verifiedUnder !== state) {
      this.verifiedTokens.clear();
      this.verifiedUnder = state;
    }
    const now = this.nowMs();
    const cached = this.verifiedTokens.get(token);
    const verified = cached && cached.expiresAtUnixMs > now ? cached : verifyToken(state, token, now);
    if (verified !== cached) {
      if (this.verifiedTokens.size >= MAX_VERIFIED_TOKENS) this.verifiedTokens.clear();
      this.verifiedTokens.set(token, verified);
    }
    return { user: verified.user, passwordIndex: verified.passwordIndex };
  }

  /** The caller, once it may read or write `key` (undefined while auth is off). */
  requireKey(call: CallIdentity, access: Access, key: Uint8Array): Caller | undefined {
    const caller = this.caller(call);
    if (caller !== undefined && !this.state().permitsKey(caller.user, access, key)) {
      throw denied(`user ${JSON.stringify(caller.user)} may not ${access} key ${describeKey(key)}`);
    }
    return caller;
  }

  /** Throws unless the caller may read every key of [start, end). */
  requireRange(call: CallIdentity, start: Uint8Array, end: Uint8Array | undefined): void {
    const user = this.identify(call);
    if (user !== undefined && !this.state().permits(user, 'read', start, end)) {
      throw denied(`user ${JSON.stringify(user)} may not read the whole range [${describeKey(start)}, ${end === undefined ? 'end of the key space' : describeKey(end)}): ask for a range within its permissions`);
    }
  }

  /**
   * The caller, once it may do everything a Txn might, in both branches: read its compares'
   * keys and its ranges; write its puts' and deletes'
   * keys (undefined while auth is off).
   */
  requireTxn(call: CallIdentity, accesses: { reads: { start: Uint8Array; end: Uint8Array | undefined }[]; writes: Uint8Array[] }): Caller | undefined {
    const caller = this.caller(call);
    if (caller === undefined) return undefined;
    const state = this.state();
    const user = JSON.stringify(caller.user);
    for (const key of accesses.writes) {
      if (!state.permitsKey(caller.user, 'write', key)) throw denied(`user ${user} may not write key ${describeKey(key)} (a txn needs write on every key any branch puts or deletes, nested txns included)`);
    }
    for (const { start, end } of accesses.reads) {
      if (!state.permits(caller.user, 'read', start, end)) {
        throw denied(`user ${user} may not read [${describeKey(start)}, ${end === undefined ? 'end of the key space' : describeKey(end)}) (a txn needs read on its compares and its ranges, in every branch, nested txns included)`);
      }
    }
    return caller;
  }

  /** Throws unless auth is off or the caller has role root; returns the caller (undefined while auth is off). */
  requireRoot(call: CallIdentity, what: string): Caller | undefined {
    const caller = this.caller(call);
    if (caller !== undefined && !this.state().isRoot(caller.user)) throw denied(`${what} needs role root; user ${JSON.stringify(caller.user)} does not have it`);
    return caller;
  }

  /** Checks a password and signs a token (rate limited per user). */
  async authenticate(name: string, password: string): Promise<{ token: string; expiresAtUnixMs: number }> {
    const state = this.state();
    if (!state.enabled) throw new CairnError(ErrorCode.AUTH_ROOT_REQUIRED, 'auth is not enabled: there is nothing to authenticate for (cairn auth enable)');
    if (Buffer.byteLength(name) > 1024) throw unauthenticated('wrong user name or password');
    this.limiter.attempt(name, this.nowMs());
    const user = state.user(name);
    const ok = await verifyPassword(password, user?.passwordHash);
    // The state may have moved while scrypt ran: sign with what is current now.
    const now = this.state();
    const current = now.user(name);
    if (!ok || !current || !now.enabled || current.passwordIndex !== user?.passwordIndex) {
      throw unauthenticated('wrong user name or password');
    }
    this.limiter.noteSuccess(name);
    const expiresAtUnixMs = this.nowMs() + this.tokenTtlMs;
    return { token: signToken(now.signingKey, name, current.passwordIndex, expiresAtUnixMs), expiresAtUnixMs };
  }
}

function denied(message: string): CairnError {
  return new CairnError(ErrorCode.PERMISSION_DENIED, `permission denied: ${message}`);
}

function checkPermissionKey(key: Uint8Array): void {
  if (key.length > MAX_PERMISSION_KEY_BYTES) {
    throw new CairnError(ErrorCode.INVALID_ARGUMENT, `permission key is ${key.length} bytes, over MAX_PERMISSION_KEY_BYTES ${MAX_PERMISSION_KEY_BYTES}`);
  }
}

function checkName(what: 'user' | 'role', name: string): void {
  const problem = authNameProblem(what, name);
  if (problem) throw new CairnError(ErrorCode.INVALID_ARGUMENT, problem);
}

/** Helpers the Auth service needs from the services module (kept there: one unary wrapper for every service). */
export interface AuthServiceContext {
  gate: AuthGate;
  unary: <Req, Res>(handler: (request: Req, scope: RequestScope, call: CallIdentity) => Promise<Res>) => any;
  header: () => import('../../gen/cairn/kv/v1/kv').ResponseHeader;
  /** Proposes an auth command (through the leader) and throws its refusal, if any. */
  propose: (command: Command, scope: RequestScope) => Promise<unknown>;
  readBarrier: (scope: RequestScope) => Promise<void>;
}

/** The Auth service: logins anywhere, changes as Raft commands, listings after a read barrier. */
export function authService(context: AuthServiceContext): AuthServer {
  const { gate, unary } = context;
  const change = (what: string, op: (request: any) => Promise<AuthCommand['op']> | AuthCommand['op']) =>
    unary(async (request: unknown, scope: RequestScope, call: CallIdentity) => {
      // Caught up first, so a node that has not yet applied an AuthEnable does not wave a
      // stranger through; the command carries the user, and apply checks it again.
      await context.readBarrier(scope);
      const caller = gate.requireRoot(call, what);
      const command: Command = { op: { $case: 'auth', value: { op: await op(request) } }, proposedAtUnixMs: 0, ...commandAuthOf(caller) };
      await context.propose(command, scope);
      return { header: context.header() };
    });
  return {
    authenticate: unary(async (request: { name: string; password: string }, scope: RequestScope) => {
      // Caught up first, so a user just added (or a password just changed) elsewhere logs in here too.
      await context.readBarrier(scope);
      const { token, expiresAtUnixMs } = await gate.authenticate(request.name, request.password);
      return { header: context.header(), token, expiresAtUnixMs };
    }),
    authStatus: unary(async (_request: unknown, scope: RequestScope) => {
      await context.readBarrier(scope);
      return { header: context.header(), enabled: gate.state().enabled };
    }),
    authEnable: change('AuthEnable', () => ({ $case: 'authEnable', value: { signingKey: randomBytes(MIN_SIGNING_KEY_BYTES) } })),
    authDisable: change('AuthDisable', () => ({ $case: 'authDisable', value: {} })),
    userAdd: change('UserAdd', async (request: { name: string; password: string }) => {
      checkName('user', request.name);
      checkPasswordInput(request.password);
      return { $case: 'userAdd', value: { name: request.name, passwordHash: await hashPassword(request.password) } };
    }),
    userDelete: change('UserDelete', (request: { name: string }) => {
      checkName('user', request.name);
      return { $case: 'userDelete', value: { name: request.name } };
    }),
    userChangePassword: change('UserChangePassword', async (request: { name: string; password: string }) => {
      checkName('user', request.name);
      checkPasswordInput(request.password);
      return { $case: 'userChangePassword', value: { name: request.name, passwordHash: await hashPassword(request.password) } };
    }),
    userGrantRole: change('UserGrantRole', (request: { user: string; role: string }) => {
      checkName('user', request.user);
      checkName('role', request.role);
      return { $case: 'userGrantRole', value: { user: request.user, role: request.role } };
    }),
    userRevokeRole: change('UserRevokeRole', (request: { user: string; role: string }) => {
      checkName('user', request.user);
      checkName('role', request.role);
      return { $case: 'userRevokeRole', value: { user: request.user, role: request.role } };
    }),
    roleAdd: change('RoleAdd', (request: { name: string }) => {
      checkName('role', request.name);
      return { $case: 'roleAdd', value: { name: request.name } };
    }),
    roleDelete: change('RoleDelete', (request: { name: string }) => {
      checkName('role', request.name);
      return { $case: 'roleDelete', value: { name: request.name } };
    }),
    roleGrantPermission: change('RoleGrantPermission', (request: { name: string; permission?: import('../../gen/cairn/kv/v1/kv').Permission }) => {
      checkName('role', request.name);
      if (!request.permission) throw new CairnError(ErrorCode.INVALID_ARGUMENT, 'permission is missing');
      checkPermissionKey(request.permission.key);
      return { $case: 'roleGrantPermission', value: { name: request.name, permission: request.permission } };
    }),
    roleRevokePermission: change('RoleRevokePermission', (request: { name: string; key: Buffer; prefix: boolean }) => {
      checkName('role', request.name);
      checkPermissionKey(request.key);
      return { $case: 'roleRevokePermission', value: { name: request.name, key: request.key, prefix: request.prefix } };
    }),
    userList: unary(async (_request: unknown, scope: RequestScope, call: CallIdentity) => {
      gate.requireRoot(call, 'UserList');
      await context.readBarrier(scope);
      return { header: context.header(), users: gate.state().listUsers() };
    }),
    roleList: unary(async (_request: unknown, scope: RequestScope, call: CallIdentity) => {
      gate.requireRoot(call, 'RoleList');
      await context.readBarrier(scope);
      return { header: context.header(), roles: gate.state().listRoles() };
    }),
  };
}
