import { createInterface } from 'node:readline';
import { Writable } from 'node:stream';
import { PermissionType } from '../../gen/cairn/kv/v1/kv';
import { CairnClient } from './client';
import { UsageError } from './flags';

/** `cairn user|role|auth ...`: users, roles and auth itself (kv.proto, service Auth). */
export const AUTH_VERB_SPECS = {
  user: {
    usage: ['add NAME [--password P]', 'delete NAME', 'passwd NAME [--password P]', 'grant-role NAME ROLE', 'revoke-role NAME ROLE', 'list'],
    minArgs: 1,
    maxArgs: 3,
    flags: ['password'],
  },
  role: {
    usage: ['add NAME', 'delete NAME', 'grant-permission NAME read|write|readwrite KEY', 'grant-permission NAME read|write|readwrite --prefix PREFIX', 'revoke-permission NAME KEY', 'revoke-permission NAME --prefix PREFIX', 'list'],
    minArgs: 1,
    maxArgs: 4,
    flags: ['prefix'],
  },
  auth: { usage: ['enable', 'disable', 'status'], minArgs: 1, maxArgs: 1, flags: [] },
} as const;

export interface AuthVerbOptions {
  /** Asks for a password (without echo on a terminal); absent where there is no one to ask (the shell). */
  promptPassword?: (prompt: string) => Promise<string>;
}

const PERMISSION_TYPES: Record<string, PermissionType> = {
  read: PermissionType.PERMISSION_TYPE_READ,
  write: PermissionType.PERMISSION_TYPE_WRITE,
  readwrite: PermissionType.PERMISSION_TYPE_READWRITE,
};

const TYPE_NAMES: Record<number, string> = { 1: 'read', 2: 'write', 3: 'readwrite' };

/** Runs `user`, `role` or `auth`; `usage` is the error for a form it does not know. */
export async function runAuthVerb(
  client: CairnClient,
  verb: 'user' | 'role' | 'auth',
  args: string[],
  flags: Record<string, string>,
  print: (line: string) => void,
  usage: UsageError,
  options: AuthVerbOptions,
): Promise<number> {
  const [sub, ...rest] = args;
  const need = (count: number) => {
    if (rest.length !== count) throw usage;
  };
  const done = () => {
    print('OK');
    return 0;
  };
  if (verb === 'auth') {
    need(0);
    if (sub === 'enable') return client.authCall((c) => c.authEnable, {}).then(done);
    if (sub === 'disable') return client.authCall((c) => c.authDisable, {}).then(done);
    if (sub === 'status') {
      const response = await client.authCall((c) => c.authStatus, {});
      print(response.enabled ? 'auth: enabled' : 'auth: disabled');
      return 0;
    }
    throw usage;
  }
  if (verb === 'user') {
    if (flags.password !== undefined && sub !== 'add' && sub !== 'passwd') throw new UsageError('--password applies to user add and user passwd only');
    switch (sub) {
      case 'add':
        need(1);
        return client.authCall((c) => c.userAdd, { name: rest[0]!, password: await passwordOf(flags, `password for ${rest[0]}: `, options) }).then(done);
      case 'passwd':
        need(1);
        return client.authCall((c) => c.userChangePassword, { name: rest[0]!, password: await passwordOf(flags, `new password for ${rest[0]}: `, options) }).then(done);
      case 'delete':
        need(1);
        return client.authCall((c) => c.userDelete, { name: rest[0]! }).then(done);
      case 'grant-role':
        need(2);
        return client.authCall((c) => c.userGrantRole, { user: rest[0]!, role: rest[1]! }).then(done);
      case 'revoke-role':
        need(2);
        return client.authCall((c) => c.userRevokeRole, { user: rest[0]!, role: rest[1]! }).then(done);
      case 'list': {
        need(0);
        const response = await client.authCall((c) => c.userList, {});
        for (const user of response.users) print(`${user.name}\t${user.roles.join(',') || '-'}`);
        return 0;
      }
      default:
        throw usage;
    }
  }
  const prefix = flags.prefix;
  if (prefix !== undefined && sub !== 'grant-permission' && sub !== 'revoke-permission') throw new UsageError('--prefix applies to role grant-permission and role revoke-permission only');
  switch (sub) {
    case 'add':
      need(1);
      return client.authCall((c) => c.roleAdd, { name: rest[0]! }).then(done);
    case 'delete':
      need(1);
      return client.authCall((c) => c.roleDelete, { name: rest[0]! }).then(done);
    case 'grant-permission': {
      need(prefix === undefined ? 3 : 2);
      const type = PERMISSION_TYPES[rest[1]!.toLowerCase()];
      if (type === undefined) throw new UsageError(`permission type must be read, write or readwrite, got "${rest[1]}"`);
      const key = Buffer.from(prefix ?? rest[2]!);
      return client.authCall((c) => c.roleGrantPermission, { name: rest[0]!, permission: { type, key, prefix: prefix !== undefined } }).then(done);
    }
    case 'revoke-permission': {
      need(prefix === undefined ? 2 : 1);
      const key = Buffer.from(prefix ?? rest[1]!);
      return client.authCall((c) => c.roleRevokePermission, { name: rest[0]!, key, prefix: prefix !== undefined }).then(done);
    }
    case 'list': {
      need(0);
      const response = await client.authCall((c) => c.roleList, {});
      for (const role of response.roles) {
        const permissions = role.name === 'root' ? ['(everything)'] : role.permissions.map((p) => `${TYPE_NAMES[p.type] ?? p.type} ${p.prefix ? 'prefix ' : ''}${p.key.toString()}`);
        print(`${role.name}\t${permissions.join('; ') || '-'}`);
      }
      return 0;
    }
    default:
      throw usage;
  }
}

async function passwordOf(flags: Record<string, string>, prompt: string, options: AuthVerbOptions): Promise<string> {
  if (flags.password !== undefined) return flags.password;
  if (!options.promptPassword) throw new UsageError('give the password with --password P (there is no terminal to ask on)');
  return options.promptPassword(prompt);
}

/**
 * `--user NAME[:PASSWORD]`: the name and the password (asked for when left out). The name
 * ends at the first ':' (user names may not hold one), so a password may.
 */
export async function parseUserFlag(text: string, promptPassword: (prompt: string) => Promise<string>): Promise<{ name: string; password: string }> {
  const colon = text.indexOf(':');
  const name = colon < 0 ? text : text.slice(0, colon);
  if (name === '') throw new UsageError('--user needs a user name: --user NAME[:PASSWORD]');
  const password = colon < 0 ? await promptPassword(`password for ${name}: `) : text.slice(colon + 1);
  return { name, password };
}

/**
 * Reads one line from stdin as a password: without echo on a terminal (the prompt goes to
 * stderr, so stdout stays the command's output), as it comes from a pipe.
 */
export function promptPassword(prompt: string): Promise<string> {
  const terminal = Boolean(process.stdin.isTTY);
  let muted = false;
  const output = new Writable({
    write(chunk, _encoding, callback) {
      if (!muted) process.stderr.write(chunk);
      callback();
    },
  });
  const rl = createInterface({ input: process.stdin, output, terminal });
  return new Promise((resolve, reject) => {
    let answered = false;
    rl.question(prompt, (answer) => {
      answered = true;
      rl.close();
      if (terminal) process.stderr.write('\n');
      resolve(answer);
    });
    muted = terminal;
    rl.once('close', () => {
      if (!answered) reject(new UsageError('no password given (stdin ended)'));
    });
  });
}
