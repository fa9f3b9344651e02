#!/usr/bin/env node
import { logVerbosity, setLogVerbosity } from '@grpc/grpc-js';
import { Consistency } from '../../gen/cairn/kv/v1/kv';
import { buildServerConfig, SERVE_FLAGS } from '../server/config';
import { placeInStatefulSet } from '../server/statefulset';
import { createLogger } from '../server/logger';
import { CairnNode } from '../server/server';
import { VERSION } from '../server/services';
import { CairnClient } from './client';
import { NODE_STARTED_MESSAGE, runLocalCluster } from './cluster';
import { describeError } from './describe-error';
import { DEFAULT_ENDPOINTS, parseEndpoints } from './endpoints';
import { parseArgs, resolveFlags, UsageError } from './flags';
import { runShell } from './shell';
import { parseUserFlag, promptPassword } from './auth-verbs';
import { runSnapshotRestore } from './snapshot-restore';
import { runSnapshotSave } from './snapshot-save';
import { LEASE_BOOLEAN_FLAGS } from './lease-verbs';
import { ELECT_BOOLEAN_FLAGS } from './elect-verb';
import { CLIENT_TLS_FLAGS, CLIENT_TLS_USAGE, clientDialFromFlags } from './tls-options';
import { checkVerbFlags, readAll, runVerb, VERB_FLAGS, VERBS } from './verbs';
import { parseWatchCommand, runWatch, WATCH_FLAGS, WATCH_SWITCHES } from './watch-verb';

/**
 * The longest --timeout-ms: a write is retried for at most this long, well inside the 5
 * minutes a session is safe from eviction (sessions.ts sessionEvictionGraceMs), so a retry
 * never meets an evicted session and applies twice.
 */
const MAX_TIMEOUT_MS = 240_000;

/** The CLI's whole-command budget when --timeout-ms is not given. */
const DEFAULT_TIMEOUT_MS = 5000;

const USAGE = `cairn: a Raft-replicated key-value database

Usage:
  cairn serve --id ID --data-dir DIR --client-addr HOST:PORT --peer-addr HOST:PORT --peers ID=HOST:PORT,...
  cairn serve --id ID --data-dir DIR --client-addr HOST:PORT --peer-addr HOST:PORT --join HOST:PORT,... [--learner]
                                   join a running cluster (client addresses of its members)
  cairn cluster [--nodes 3] [--data-dir ./data] [--timing default|demo] [--client-port 7001] [--peer-port 7101] [--http-port 7201]
                                   start a local cluster (client ports 7001.., peer ports 7101.., status pages 7201..)
  cairn put KEY VALUE              set a key
  cairn put KEY --from-file FILE   set a key to a file's bytes
  cairn put KEY -                  set a key to stdin's bytes
  cairn get KEY                    print a key's value
  cairn del KEY                    delete a key
  cairn has KEY                    print true or false
  cairn cas KEY EXPECTED NEW       set KEY to NEW only if its value is EXPECTED; exit 1 (saying what it is) if not
  cairn txn [--from-file FILE]     a transaction from stdin: compares, blank line, success ops, blank line, failure ops
                                   (compare: value("k") = "v" | version("k") > "0" | create(..) | mod(..); ops: put K V | get K [--prefix] | del K)
  cairn list [PREFIX] [--limit N]  list keys (and values) with a prefix
  cairn watch KEY [--prefix] [--rev N] [--prev-kv] [--max-events N]
                                   print each change of KEY (or every key starting with it) as it happens, from
                                   revision N if given; one line per event, until Ctrl-C (or N events); resumes at
                                   another endpoint if its node goes away
  cairn status                     every endpoint's Raft status; exit 0 when the cluster serves
  cairn members                    the cluster's members
  cairn snapshot                   every endpoint's node snapshots and compacts its log now
  cairn member list                one member a line: id, voter or learner, peer and client address, leader
  cairn member add ID PEER_ADDR [--client-addr HOST:PORT]
                                   add a member as a learner (start it with cairn serve --join, or before)
  cairn member promote ID          make a caught-up learner a voter
  cairn member remove ID           remove a voter or learner (the leader too)
  cairn leader transfer [--to ID]  hand leadership to a voter (default: the most caught-up); prints the new leader
  cairn user add NAME [--password P]   add a user (asks for the password when --password is left out)
  cairn user delete NAME | passwd NAME [--password P] | grant-role NAME ROLE | revoke-role NAME ROLE | list
  cairn role add NAME | delete NAME | list
  cairn role grant-permission NAME read|write|readwrite KEY   (or --prefix PREFIX instead of KEY)
  cairn role revoke-permission NAME KEY                       (or --prefix PREFIX)
  cairn auth enable|disable|status turn auth on (user root must exist) or off
  cairn lease grant TTL_SECONDS     grant a lease; prints its id in hex (lease 194d77aa9e3826 granted with TTL(10s))
  cairn lease revoke ID            revoke a lease: its keys are deleted, in one revision
  cairn lease keep-alive ID [--once]   renew a lease every TTL/3 until interrupted (or once)
  cairn lease time-to-live ID [--keys] | list   a lease's remaining TTL (and keys); every lease's id
  cairn put KEY VALUE --lease ID   set a key attached to a lease (deleted when it expires or is revoked)
  cairn lock NAME [--ttl 10] -- CMD [ARGS...]   run CMD holding the lock NAME (a lease and a Txn; docs/recipes.md)
  cairn elect NAME PROPOSAL [--ttl 10]   campaign in election NAME; once leader, print "KEY<TAB>PROPOSAL" and lead
                                   until Ctrl-C or SIGTERM (resigns, exit 0) or the lease is lost (exit 3)
  cairn elect NAME --listen        print the leader ("KEY<TAB>PROPOSAL"), then a line per change of leader, until Ctrl-C
  cairn shell                      an interactive prompt with the same verbs (and SET/GET/DEL/HAS/LIST, SIGNUP/LOGIN)
  cairn snapshot save FILE         write a backup of one node's state to FILE (--help for more)
  cairn snapshot restore FILE --data-dir DIR --id N --peers ID=HOST:PORT,... --cluster-token T
                                   seed a new cluster's data dir from a snapshot file (--help for more)

Client flags:
  -e, --endpoints HOST:PORT,...    client ports; default ${DEFAULT_ENDPOINTS.join(',')} (env CAIRN_ENDPOINTS)
  --consistency linearizable|serializable   for get, has, list and shell (default linearizable)
  --timeout-ms N                   for the whole command, every endpoint and retry (default ${DEFAULT_TIMEOUT_MS});
                                   in the shell, for each line
${CLIENT_TLS_USAGE}
  --user NAME[:PASSWORD]           with auth enabled: log in first (asks for the password when it is left out)

Exit codes: 0 done; 1 failed, key not found (get) or cluster not serving (status); 2 usage error;
3 the lease of a lock or an election was lost (lock, elect).

Run "cairn serve --help" for every server flag.`;

/** `cairn serve` flags that take no value. */
const SERVE_SWITCHES = ['learner'];
/** Flags every client verb takes. */
const COMMON_FLAGS = ['endpoints', 'timeout-ms', 'user', ...CLIENT_TLS_FLAGS];
const SHELL_FLAGS = [...COMMON_FLAGS, 'consistency'];
/** `-e` is what a newcomer used from other tools' habits. */
const SHORT_FLAGS = { e: 'endpoints' };
const CLUSTER_USAGE = `cairn cluster [--nodes 3] [--data-dir ./data] [--timing default|demo] [--log-level info] [--host 127.0.0.1]
              [--client-port 7001] [--peer-port 7101] [--http-port 7201]

Starts --nodes local cairn serve processes: node N serves clients on port CLIENT-PORT+N-1,
peers on PEER-PORT+N-1 and HTTP (status page at /, /metrics, /healthz, /readyz) on
HTTP-PORT+N-1, keeps its data in DATA-DIR/node-N, and logs here. Ctrl-C (SIGINT or
SIGTERM) stops them all, and so does the end of the process that started cairn cluster; the
nodes also stop if cairn cluster itself is killed. A node that dies is not restarted until
the next start.`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (!command || command === '--help' || command === 'help' || command === '-h') {
    console.log(USAGE);
    return command ? 0 : 2;
  }
  if (command === '--version' || command === 'version') {
    console.log(`cairn ${VERSION}`);
    return 0;
  }
  if (command === 'serve') return serve(rest);
  if (command === 'snapshot' && rest[0] === 'restore') return runSnapshotRestore(rest.slice(1), (line) => console.log(line));
  if (command === 'snapshot' && rest[0] === 'save') return runSnapshotSave(rest.slice(1), (line) => console.log(line));
  if (command === 'cluster') {
    if (rest.includes('--help')) {
      console.log(CLUSTER_USAGE);
      return 0;
    }
    return runLocalCluster(rest, __filename);
  }
  const flagWords = rest.includes('--') ? rest.slice(0, rest.indexOf('--')) : rest;
  if (flagWords.includes('--help') || flagWords.includes('-h')) {
    console.log(USAGE);
    return 0;
  }
  if (command === 'watch') return watch(rest);
  const isShell = command === 'shell';
  if (!isShell && !VERBS.includes(command)) throw new UsageError(`unknown command "${command}"\n\n${USAGE}`);
  const { positional, flags } = parseArgs(rest, isShell ? [] : [...LEASE_BOOLEAN_FLAGS, ...ELECT_BOOLEAN_FLAGS], isShell ? SHELL_FLAGS : [...COMMON_FLAGS, ...VERB_FLAGS], SHORT_FLAGS);
  if (isShell && positional.length > 0) throw new UsageError(`cairn shell takes no arguments, got "${positional.join(' ')}"`);
  if (!isShell) checkVerbFlags(command, flags, COMMON_FLAGS);
  const user = flags.user;
  delete flags.user;
  const client = clientFromFlags(flags);
  try {
    if (user !== undefined) {
      const { name, password } = await parseUserFlag(user, promptPassword);
      await client.login(name, password);
    }
    if (isShell) return await runShell(client);
    return await runVerb(client, command, positional, flags, (line) => console.log(line), {
      readStdin: () => readAll(process.stdin),
      writeValue: writeValueToStdout,
      promptPassword,
      signal: command === 'lease' && positional[0] === 'keep-alive' ? interruptSignal() : command === 'elect' ? interruptSignal(['SIGINT', 'SIGTERM']) : undefined,
      warn: (line) => console.error(line),
    });
  } finally {
    client.close();
  }
}

/** `cairn watch`: runs until SIGINT (exit 0), --max-events, or a refusal. */
async function watch(argv: string[]): Promise<number> {
  const { positional, flags } = parseArgs(argv, WATCH_SWITCHES, [...COMMON_FLAGS, ...WATCH_FLAGS], SHORT_FLAGS);
  const command = parseWatchCommand(positional, flags);
  for (const name of [...WATCH_SWITCHES, ...WATCH_FLAGS]) delete flags[name];
  const endpoints = parseEndpoints(flags.endpoints ?? process.env.CAIRN_ENDPOINTS ?? DEFAULT_ENDPOINTS.join(','));
  const dial = clientDialFromFlags({ ...flags });
  const user = flags.user;
  delete flags.user;
  const client = clientFromFlags(flags);
  const interrupted = new AbortController();
  const stop = () => interrupted.abort();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    if (user !== undefined) {
      const { name, password } = await parseUserFlag(user, promptPassword);
      await client.login(name, password);
    }
    return await runWatch(command, endpoints, dial, () => client.callMetadata(), (line) => console.log(line), interrupted.signal, (line) => console.error(line));
  } finally {
    process.removeListener('SIGINT', stop);
    process.removeListener('SIGTERM', stop);
    client.close();
  }
}

function clientFromFlags(flags: Record<string, string>): CairnClient {
  const endpoints = parseEndpoints(flags.endpoints ?? process.env.CAIRN_ENDPOINTS ?? DEFAULT_ENDPOINTS.join(','));
  const consistencyName = (flags.consistency ?? 'linearizable').toLowerCase();
  const consistency =
    consistencyName === 'linearizable'
      ? Consistency.CONSISTENCY_LINEARIZABLE
      : consistencyName === 'serializable'
        ? Consistency.CONSISTENCY_SERIALIZABLE
        : undefined;
  if (consistency === undefined) throw new UsageError(`--consistency must be linearizable or serializable, got "${flags.consistency}"`);
  const timeoutMs = Number(flags['timeout-ms'] ?? DEFAULT_TIMEOUT_MS);
  if (!Number.isSafeInteger(timeoutMs) || timeoutMs < 1 || timeoutMs > MAX_TIMEOUT_MS) {
    throw new UsageError(`--timeout-ms must be an integer from 1 to ${MAX_TIMEOUT_MS} (a write is retried only while its session keeps the answer)`);
  }
  delete flags.endpoints;
  delete flags.consistency;
  delete flags['timeout-ms'];
  const dial = clientDialFromFlags(flags);
  return new CairnClient({ endpoints, timeoutMs, totalTimeoutMs: timeoutMs, consistency, dial });
}

async function serve(argv: string[]): Promise<number> {
  if (argv.includes('--help')) {
    console.log('cairn serve flags (each also read from its environment variable):\n');
    for (const spec of SERVE_FLAGS) console.log(`  --${spec.flag.padEnd(20)} ${spec.env.padEnd(26)} ${spec.help}${spec.default ? ` (default ${spec.default})` : ''}`);
    return 0;
  }
  const { positional, flags } = parseArgs(argv, SERVE_SWITCHES);
  if (positional.length > 0) throw new UsageError(`cairn serve takes no arguments, got "${positional.join(' ')}"`);
  const config = buildServerConfig(placeInStatefulSet(resolveFlags(SERVE_FLAGS, flags, process.env)));
  // Every line carries the node's term and role once its Raft replica exists.
  let raftState: (() => Record<string, unknown>) | undefined;
  const logger = createLogger(config.logLevel, { node: config.id }, () => raftState?.() ?? {});
  let node: CairnNode;
  // A node that a committed configuration removed stops as on SIGTERM and exits 0 (etcd's
  // members stop too): nothing it could do would count any more.
  let stopRemoved: (() => void) | undefined;
  let removed = false;
  // grpc-js prints its own line for a failed bind; the error below says it once, clearly.
  const quietGrpc = !process.env.GRPC_VERBOSITY;
  if (quietGrpc) setLogVerbosity(logVerbosity.NONE);
  try {
    node = await CairnNode.start(
      config,
      logger,
      (err) => {
        logger.fatal({ err }, 'fatal error: stopping the node');
        process.exit(1);
      },
      () => {
        removed = true;
        stopRemoved?.();
      },
    );
  } catch (err) {
    // A port in use, a locked data dir: one line, not a stack trace, and no half-started
    // node (a bound port or an open database) keeping the process alive.
    console.error(`cairn serve: ${describeError(err)}`);
    process.exit(1);
  } finally {
    if (quietGrpc) setLogVerbosity(logVerbosity.ERROR);
  }
  raftState = () => ({ term: node.replica.node.term, role: node.replica.node.role });
  if (node.httpAddress) logger.info({ httpAddr: node.httpAddress }, 'http: /metrics, /healthz, /readyz, status page at /, JSON gateway at /v1/');
  // `cairn cluster` waits for this before it believes what its ports answer.
  process.send?.(NODE_STARTED_MESSAGE);
  await new Promise<void>((resolve) => {
    let stopping = false;
    const onSignal = (signal: string) => {
      logger.info({ signal }, stopping ? 'signal received; already stopping' : 'signal received');
      if (stopping) return;
      stopping = true;
      node.stop().then(resolve, (err) => {
        logger.error({ err }, 'shutdown failed');
        resolve();
      });
    };
    process.on('SIGTERM', () => onSignal('SIGTERM'));
    process.on('SIGINT', () => onSignal('SIGINT'));
    process.on('SIGHUP', () => reloadOnSighup(node, logger));
    stopRemoved = () => onSignal('removed from the cluster');
    if (removed) stopRemoved();
    stopWithParent(() => onSignal('parent gone'));
  });
  return 0;
}

/** SIGHUP reads the certificate files again (src/server/tls.ts); it never stops the node. */
function reloadOnSighup(node: CairnNode, logger: { info(fields: object, message: string): void }): void {
  const ports = node.reloadCertificates('SIGHUP');
  logger.info({ signal: 'SIGHUP', portsReloaded: ports }, 'signal received: certificate files read again');
}

/**
 * A node started with an IPC channel (as `cairn cluster` starts its nodes) stops when the
 * channel closes, which happens when its parent exits by any means, kill -9 included, so
 * no node outlives the cluster command that started it.
 */
function stopWithParent(stop: () => void): void {
  if (!process.channel) return;
  process.once('disconnect', stop);
  // The channel must not keep the process alive once the node has stopped.
  process.channel.unref();
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err) => {
      console.error(`cairn: ${describeError(err)}`);
      process.exitCode = err instanceof UsageError ? 2 : 1;
    },
  );
}

/**
 * `get` writes the value's bytes as they are, so `cairn get k > file` gives back exactly what
 * `put k --from-file file` stored; a newline follows only on a terminal, for the prompt.
 */
function writeValueToStdout(value: Buffer): void {
  process.stdout.write(value);
  if (process.stdout.isTTY) process.stdout.write('\n');
}

/**
 * Aborted at the first of `signals`: SIGINT ends `cairn lease keep-alive`, which otherwise
 * runs until interrupted; SIGTERM too ends `cairn elect` (a leader resigns, rather than
 * leaving its lease to expire).
 */
function interruptSignal(signals: readonly NodeJS.Signals[] = ['SIGINT']): AbortSignal {
  const controller = new AbortController();
  const stop = () => controller.abort();
  for (const name of signals) process.once(name, stop);
  return controller.signal;
}
