import { readFile, stat } from 'node:fs/promises';
import { ServiceError } from '@grpc/grpc-js';
import { CompareResult, CompareTarget, KeyValue, Member, MemberRole, StatusResponse } from '../../gen/cairn/kv/v1/kv';
import { describeTxnResponse, parseTxnText } from './txn-text';
import { CairnClient } from './client';
import { describeFailure } from './describe-error';
import { UsageError } from './flags';
import { AUTH_VERB_SPECS, AuthVerbOptions, runAuthVerb } from './auth-verbs';
import { leaseIdArg, LEASE_VERB_SPECS, LeaseVerbOptions, runLeaseVerb } from './lease-verbs';
import { LOCK_VERB_SPECS, runLockVerb } from './lock-verb';
import { ELECT_VERB_SPECS, ElectVerbOptions, runElectVerb } from './elect-verb';

const DEFAULT_LIST_LIMIT = 1000;
/**
 * The largest value `put` reads from a file or stdin. Far above the server's default
 * --max-value-bytes (1 MiB), so the server's limit is the one users meet; this one only
 * keeps a mistaken `put k --from-file /dev/zero` from eating the machine's memory.
 */
export const MAX_INPUT_VALUE_BYTES = 64 * 1024 * 1024;

interface VerbSpec {
  /** What may follow the verb, one form each, for "usage: VERB ...". */
  usage: readonly string[];
  minArgs: number;
  maxArgs: number;
  /** Flags of this verb, besides the ones every verb takes (--endpoints, --timeout-ms). */
  flags: readonly string[];
}

const STDIN_FORM = 'KEY - (the value from stdin)';

/** `cairn member SUBCOMMAND ...`: each form's words after `member`, and how many arguments follow the subcommand. */
const MEMBER_FORMS = [
  { sub: 'list', usage: 'list', args: 0 },
  { sub: 'add', usage: 'add ID PEER_ADDR [--client-addr HOST:PORT]', args: 2 },
  { sub: 'promote', usage: 'promote ID', args: 1 },
  { sub: 'remove', usage: 'remove ID', args: 1 },
] as const;

const VERB_SPECS: Record<string, VerbSpec> = {
  put: { usage: ['KEY VALUE [--lease ID]', 'KEY --from-file FILE', STDIN_FORM], minArgs: 1, maxArgs: 2, flags: ['from-file', 'lease'] },
  get: { usage: ['KEY'], minArgs: 1, maxArgs: 1, flags: ['consistency'] },
  has: { usage: ['KEY'], minArgs: 1, maxArgs: 1, flags: ['consistency'] },
  del: { usage: ['KEY'], minArgs: 1, maxArgs: 1, flags: [] },
  cas: { usage: ['KEY EXPECTED NEW'], minArgs: 3, maxArgs: 3, flags: [] },
  txn: { usage: ['(reads compares, a blank line, success operations, a blank line, failure operations from stdin)', '--from-file FILE'], minArgs: 0, maxArgs: 0, flags: ['from-file'] },
  list: { usage: ['[PREFIX] [--limit N]'], minArgs: 0, maxArgs: 1, flags: ['limit', 'consistency'] },
  status: { usage: [''], minArgs: 0, maxArgs: 0, flags: [] },
  members: { usage: [''], minArgs: 0, maxArgs: 0, flags: [] },
  snapshot: { usage: ['(compact every endpoint\'s log now)'], minArgs: 0, maxArgs: 0, flags: [] },
  member: { usage: MEMBER_FORMS.map((f) => f.usage), minArgs: 1, maxArgs: 3, flags: ['client-addr'] },
  leader: { usage: ['transfer [--to ID]'], minArgs: 1, maxArgs: 1, flags: ['to'] },
  ...AUTH_VERB_SPECS,
  ...LEASE_VERB_SPECS,
  ...LOCK_VERB_SPECS,
  ...ELECT_VERB_SPECS,
};

export const VERBS = Object.keys(VERB_SPECS);
/** Every flag some verb takes. */
export const VERB_FLAGS = [...new Set(Object.values(VERB_SPECS).flatMap((spec) => spec.flags))];

/**
 * A flag that some verb takes but not this one is an error, not silently ignored
 * (`get k --limit 5`). `common` are the flags every verb takes.
 */
export function checkVerbFlags(
  verb: string,
  flags: Record<string, string>,
  common: readonly string[],
  typed = verb,
  available: readonly string[] = VERB_FLAGS,
): void {
  const spec = VERB_SPECS[verb];
  if (!spec) return;
  const allowed = [...spec.flags.filter((flag) => available.includes(flag)), ...common];
  for (const name of Object.keys(flags)) {
    if (!allowed.includes(name)) {
      const takes = allowed.length > 0 ? `; ${typed} takes ${allowed.map((f) => `--${f}`).join(', ')}` : `; ${typed} takes no flags`;
      throw new UsageError(`--${name} does not apply to ${typed}${takes}`);
    }
  }
}

export interface VerbOptions extends AuthVerbOptions, LeaseVerbOptions, ElectVerbOptions {
  /** The verb as the user typed it (`SET` in the shell), for usage messages. */
  typed?: string;
  /** Reads stdin to its end; absent where stdin is not the value's (the shell). */
  readStdin?: () => Promise<Buffer>;
  /**
   * Writes a value exactly as stored (`get`), so binary values and files round-trip;
   * absent in the shell, which prints values as text lines.
   */
  writeValue?: (value: Buffer) => void;
}

/** "usage: SET KEY VALUE | SET KEY --from-file FILE", with the verb as typed. */
function usage(verb: string, typed: string, options: VerbOptions): UsageError {
  const forms = VERB_SPECS[verb]!.usage.filter((form) => form !== STDIN_FORM || options.readStdin);
  return new UsageError(`usage: ${forms.map((form) => (form ? `${typed} ${form}` : typed)).join(' | ')}`);
}

function arity(verb: string, args: string[], typed: string, options: VerbOptions): void {
  const spec = VERB_SPECS[verb]!;
  if (args.length < spec.minArgs || args.length > spec.maxArgs) throw usage(verb, typed, options);
}

function show(kv: KeyValue): string {
  return `${kv.key.toString()}\t${kv.value.toString()}`;
}

/**
 * Runs one client verb and prints its result with `print`. Returns the exit code:
 * 0 on success, 1 when the key is not found (get) or the cluster is not serving
 * (status), so scripts can tell.
 */
export async function runVerb(
  client: CairnClient,
  verb: string,
  args: string[],
  flags: Record<string, string>,
  print: (line: string) => void,
  options: VerbOptions = {},
): Promise<number> {
  const typed = options.typed ?? verb;
  if (VERB_SPECS[verb]) arity(verb, args, typed, options);
  switch (verb) {
    case 'put': {
      const value = await putValue(args, flags, typed, options);
      const response = await client.put(Buffer.from(args[0]!), value, false, flags.lease === undefined ? undefined : leaseIdArg(flags.lease, '--lease'));
      print(`OK (revision ${response.header?.revision})`);
      return 0;
    }
    case 'get': {
      const response = await client.get(Buffer.from(args[0]!));
      if (!response.kv) {
        print(`(not found: ${args[0]})`);
        return 1;
      }
      if (options.writeValue) options.writeValue(response.kv.value);
      else print(response.kv.value.toString());
      return 0;
    }
    case 'has': {
      const response = await client.get(Buffer.from(args[0]!));
      print(response.kv ? 'true' : 'false');
      return 0;
    }
    case 'del': {
      const response = await client.delete(Buffer.from(args[0]!));
      print(response.deleted ? `deleted ${args[0]}` : `(not found: ${args[0]})`);
      return 0;
    }
    case 'cas':
      return compareAndSwap(client, args as [string, string, string], print);
    case 'txn':
      return transaction(client, flags, typed, print, options);
    case 'list': {
      const limit = Number(flags.limit ?? DEFAULT_LIST_LIMIT);
      if (!Number.isSafeInteger(limit) || limit < 1) throw new UsageError('--limit must be a positive integer');
      const response = await client.list(Buffer.from(args[0] ?? ''), limit);
      for (const kv of response.kvs) print(show(kv));
      if (response.more) print(`(more keys follow; raise --limit)`);
      if (response.kvs.length === 0) print('(no keys)');
      return 0;
    }
    case 'status':
      return status(client, print);
    case 'member':
      return member(client, args, flags, print, usage('member', typed, options));
    case 'leader': {
      if (args[0] !== 'transfer') throw usage('leader', typed, options);
      const to = flags.to === undefined ? 0 : memberId(flags.to, '--to');
      const response = await client.leaderTransfer(to);
      print(`leader: node ${response.leaderId}`);
      return 0;
    }
    case 'members': {
      const response = await client.members();
      print('ID  PEER ADDRESS           CLIENT ADDRESS         LEADER');
      for (const m of response.members) {
        print(`${String(m.id).padEnd(3)} ${m.peerAddr.padEnd(22)} ${(m.clientAddr || '?').padEnd(22)} ${m.isLeader ? 'yes' : ''}`);
      }
      return 0;
    }
    case 'snapshot':
      return compactNow(client, print);
    case 'user':
    case 'role':
    case 'auth':
      return runAuthVerb(client, verb, args, flags, print, usage(verb, typed, options), options);
    case 'lease':
      return runLeaseVerb(client, args, flags, print, usage(verb, typed, options), options);
    case 'lock':
      return runLockVerb(client, args, flags, print, options.warn);
    case 'elect':
      return runElectVerb(client, args, flags, print, usage(verb, typed, options), options);
    default:
      throw new UsageError(`unknown verb "${typed}"`);
  }
}

/**
 * `cairn cas KEY EXPECTED NEW`: KEY becomes NEW only if its value is EXPECTED. Exits 0 when
 * it swapped, 1 with a line saying what KEY held when it did not (as `get` exits 1 for a
 * missing key): one Txn, so nothing can slip in between the compare and the write.
 */
async function compareAndSwap(client: CairnClient, [key, expected, next]: [string, string, string], print: (line: string) => void): Promise<number> {
  const k = Buffer.from(key);
  const response = await client.txn({
    compare: [{ key: k, target: CompareTarget.COMPARE_TARGET_VALUE, result: CompareResult.COMPARE_RESULT_EQUAL, targetUnion: { $case: 'value', value: Buffer.from(expected) } }],
    success: [{ request: { $case: 'requestPut', value: { key: k, value: Buffer.from(next), prevKv: false, clientId: '', sequence: 0, lowestUnansweredSequence: 0 } } }],
    failure: [{ request: { $case: 'requestRange', value: { key: k, rangeEnd: Buffer.alloc(0), prefix: false, limit: 1, keysOnly: false, consistency: 0 } } }],
  });
  if (response.succeeded) {
    print(`OK (revision ${response.header?.revision})`);
    return 0;
  }
  const read = response.responses[0]?.response;
  const current = read?.$case === 'responseRange' ? read.value.kvs[0] : undefined;
  print(current ? `cas: not swapped: ${key} is ${JSON.stringify(current.value.toString())}, not ${JSON.stringify(expected)}` : `cas: not swapped: ${key} does not exist`);
  return 1;
}

/** `cairn txn`: the transaction's text from stdin (prompted for on a terminal) or --from-file. */
async function transaction(client: CairnClient, flags: Record<string, string>, typed: string, print: (line: string) => void, options: VerbOptions): Promise<number> {
  const file = flags['from-file'];
  let text: string;
  if (file !== undefined) text = (await readValueFile(file)).toString();
  else if (options.readStdin) text = (await options.readStdin()).toString();
  else throw new UsageError(`${typed} reads the transaction from stdin, which only works on the command line; use ${typed} --from-file FILE here`);
  const request = parseTxnText(text);
  const response = await client.txn(request);
  for (const line of describeTxnResponse(response, response.succeeded ? request.success : request.failure, response.header?.revision)) print(line);
  return 0;
}

function memberId(text: string, what: string): number {
  const id = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(id) || id < 1) throw new UsageError(`${what} must be a member id (an integer >= 1), got "${text}"`);
  return id;
}

/** One member a line: id, role, peer address, client address (- when unknown), and `leader` on the leader's line. */
export function describeMember(m: Member): string {
  const role = m.role === MemberRole.MEMBER_ROLE_LEARNER ? 'learner' : 'voter';
  return `${String(m.id).padEnd(3)} ${role.padEnd(7)} ${m.peerAddr.padEnd(22)} ${(m.clientAddr || '-').padEnd(22)}${m.isLeader ? ' leader' : ''}`.trimEnd();
}

/** `cairn member list|add|promote|remove`. */
async function member(client: CairnClient, args: string[], flags: Record<string, string>, print: (line: string) => void, usageError: UsageError): Promise<number> {
  const form = MEMBER_FORMS.find((f) => f.sub === args[0]);
  if (!form || args.length !== form.args + 1) throw usageError;
  if (flags['client-addr'] !== undefined && form.sub !== 'add') throw new UsageError(`--client-addr applies to member add only`);
  const printMembers = (members: Member[]) => members.forEach((m) => print(describeMember(m)));
  switch (form.sub) {
    case 'list':
      printMembers((await client.members()).members);
      return 0;
    case 'add': {
      const id = memberId(args[1]!, 'ID');
      const response = await client.memberAdd(id, args[2]!, flags['client-addr'] ?? '');
      print(`added node ${id} as a learner`);
      printMembers(response.members);
      return 0;
    }
    case 'promote': {
      const id = memberId(args[1]!, 'ID');
      const response = await client.memberPromote(id);
      print(`promoted node ${id} to voter`);
      printMembers(response.members);
      return 0;
    }
    case 'remove': {
      const id = memberId(args[1]!, 'ID');
      const response = await client.memberRemove(id);
      print(`removed node ${id}`);
      printMembers(response.members);
      return 0;
    }
  }
}

/** The value of a put: its second argument, a file (--from-file), or stdin (`-`). */
async function putValue(args: string[], flags: Record<string, string>, typed: string, options: VerbOptions): Promise<Buffer> {
  const file = flags['from-file'];
  if (file !== undefined && args.length === 2) throw new UsageError(`${typed}: give the value once, as an argument or with --from-file, not both`);
  if (file !== undefined) return readValueFile(file);
  if (args.length < 2) throw usage('put', typed, options);
  if (args[1] !== '-') return Buffer.from(args[1]!);
  if (!options.readStdin) throw new UsageError(`${typed} KEY - reads the value from stdin, which only works on the command line; use --from-file here`);
  return options.readStdin();
}

async function readValueFile(file: string): Promise<Buffer> {
  const size = await stat(file).then(
    (s) => s.size,
    (err: NodeJS.ErrnoException) => {
      throw new Error(`cannot read --from-file ${file}: ${err.code === 'ENOENT' ? 'no such file' : err.message}`);
    },
  );
  if (!(await stat(file)).isFile()) throw new Error(`cannot read --from-file ${file}: not a regular file`);
  if (size > MAX_INPUT_VALUE_BYTES) throw new Error(`--from-file ${file} is ${size} bytes, over the ${MAX_INPUT_VALUE_BYTES} bytes put reads`);
  return readFile(file);
}

/** Reads a stream to its end, refusing more than MAX_INPUT_VALUE_BYTES. */
export async function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let bytes = 0;
  for await (const chunk of stream) {
    const buffer = typeof chunk === 'string' ? Buffer.from(chunk) : (chunk as Buffer);
    bytes += buffer.length;
    if (bytes > MAX_INPUT_VALUE_BYTES) throw new Error(`stdin holds over ${MAX_INPUT_VALUE_BYTES} bytes, more than put reads`);
    chunks.push(buffer);
  }
  return Buffer.concat(chunks);
}

/**
 * Every endpoint's status, then one line that says whether the cluster serves. Exit code
 * 0 when a majority of the endpoints answered and one of them knows a leader (a node down
 * does not fail it), 1 when the cluster is not serving.
 */
async function status(client: CairnClient, print: (line: string) => void): Promise<number> {
  const results = await Promise.all(
    client.endpoints.map((_, i) => client.statusOf(i).then((s): StatusResponse | Error => s, (err: Error) => err)),
  );
  print('ENDPOINT               ID  ROLE           TERM  LEADER  COMMIT  APPLIED');
  const down: string[] = [];
  for (const [i, endpoint] of client.endpoints.entries()) {
    const s = results[i]!;
    if (s instanceof Error) {
      down.push(endpoint);
      print(`${endpoint.padEnd(22)} down: ${describeFailure({ error: s as ServiceError, attemptMs: client.statusTimeoutMs })}`);
      continue;
    }
    print(`${endpoint.padEnd(22)} ${String(s.id).padEnd(3)} ${s.role.padEnd(14)} ${String(s.term).padEnd(5)} ${String(s.leaderId || '-').padEnd(7)} ${String(s.commitIndex).padEnd(7)} ${s.appliedIndex}`);
  }
  const answered = results.filter((s): s is StatusResponse => !(s instanceof Error));
  // A node cut off from the rest may have a newer term and no leader: ask those that know one.
  const freshest = answered
    .filter((s) => Number(s.leaderId) !== 0)
    .reduce<StatusResponse | undefined>((best, s) => (!best || Number(s.term) > Number(best.term) ? s : best), undefined);
  const majority = answered.length > client.endpoints.length / 2;
  const leader = freshest ? Number(freshest.leaderId) : 0;
  const counts = `${answered.length} of ${client.endpoints.length} endpoints answered`;
  const downNote = down.length > 0 ? `; down: ${down.join(', ')}` : '';
  if (majority && leader) {
    print(`cluster serving: node ${leader} leads term ${freshest!.term}; ${counts}${downNote}`);
    return 0;
  }
  print(`cluster NOT serving: ${leader ? `only ${counts}` : `no leader known; ${counts}`}${downNote}`);
  return 1;
}

/**
 * `cairn snapshot`: every endpoint's node snapshots and compacts its log now; one line
 * each with its snapshot index and first index. Exit 1 when one of them failed.
 */
async function compactNow(client: CairnClient, print: (line: string) => void): Promise<number> {
  let failed = 0;
  for (const [i, endpoint] of client.endpoints.entries()) {
    try {
      const response = await client.snapshotOf(i);
      print(`${endpoint.padEnd(22)} snapshot_index ${response.snapshotIndex} first_index ${response.firstIndex}`);
    } catch (err) {
      failed++;
      print(`${endpoint.padEnd(22)} failed: ${describeFailure({ error: err as ServiceError, attemptMs: client.statusTimeoutMs })}`);
    }
  }
  return failed > 0 ? 1 : 0;
}

