import { ChildProcess, spawn } from 'node:child_process';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { Consistency } from '../../gen/cairn/kv/v1/kv';
import { CairnClient } from './client';
import { DEFAULT_ENDPOINTS } from './endpoints';
import { parseArgs, UsageError } from './flags';

const LEADER_WAIT_MS = 30_000;
/** How often the cluster checks that the process that started it is still there. */
const PARENT_CHECK_INTERVAL_MS = 500;
const DEFAULT_CLIENT_PORT = 7001;
const DEFAULT_PEER_PORT = 7101;
/** Node N's HTTP port (--http-addr: status page, /metrics, probes) is this + N - 1. */
const DEFAULT_HTTP_PORT = 7201;
const CLUSTER_FLAGS = ['nodes', 'data-dir', 'timing', 'log-level', 'host', 'client-port', 'peer-port', 'http-port'];

/**
 * `cairn cluster`: three (or --nodes) `cairn serve` processes on this machine, their
 * logs in one terminal, all stopped by Ctrl-C. The data stays in --data-dir, so a
 * restart picks up where it left off.
 */
export async function runLocalCluster(argv: string[], mainPath: string): Promise<number> {
  const { positional, flags } = parseArgs(argv);
  if (positional.length > 0) throw new UsageError(`cairn cluster takes no arguments, got "${positional.join(' ')}"`);
  for (const name of Object.keys(flags)) if (!CLUSTER_FLAGS.includes(name)) throw new UsageError(`unknown flag --${name}`);
  const count = Number(flags.nodes ?? 3);
  if (!Number.isSafeInteger(count) || count < 1 || count > 9) throw new UsageError('--nodes must be 1 to 9');
  const host = flags.host ?? '127.0.0.1';
  const dataDir = resolve(flags['data-dir'] ?? './data');
  const clientPort = portFlag(flags, 'client-port', DEFAULT_CLIENT_PORT, count);
  const peerPort = portFlag(flags, 'peer-port', DEFAULT_PEER_PORT, count);
  const httpPort = portFlag(flags, 'http-port', DEFAULT_HTTP_PORT, count);
  const ids = Array.from({ length: count }, (_, i) => i + 1);
  const peerAddr = (id: number) => `${host}:${peerPort + id - 1}`;
  const httpAddr = (id: number) => `${host}:${httpPort + id - 1}`;
  const peers = ids.map((id) => `${id}=${peerAddr(id)}`).join(',');
  const endpoints = ids.map((id) => `${host}:${clientPort + id - 1}`);

  const children = ids.map((id) =>
    startNode(mainPath, id, [
      'serve', '--id', String(id), '--data-dir', join(dataDir, `node-${id}`),
      '--client-addr', endpoints[id - 1]!, '--peer-addr', peerAddr(id), '--http-addr', httpAddr(id), '--peers', peers,
      '--timing', flags.timing ?? 'default', '--log-level', flags['log-level'] ?? 'info',
    ]),
  );
  const exited = Promise.all(children.map((child) => new Promise<number>((done) => child.once('exit', (code) => done(code ?? 1)))));
  let stopping = false;
  const stop = (why: string) => {
    if (stopping) return;
    stopping = true;
    console.log(`\n${why}: stopping the cluster...`);
    for (const child of children) child.kill('SIGTERM');
  };
  process.once('SIGINT', () => stop('SIGINT'));
  process.once('SIGTERM', () => stop('SIGTERM'));
  const parentWatch = watchParent(() => stop('the process that started cairn cluster is gone'));
  void exited.then(() => clearInterval(parentWatch));

  // A node that exits while the cluster starts (a port or data dir in use) means the ports
  // may answer for someone else's cluster: never print the banner then.
  let exitedEarly: number | undefined;
  children.forEach((child, i) => child.once('exit', () => (exitedEarly ??= i + 1)));
  const startingOver = () => stopping || exitedEarly !== undefined;
  await Promise.race([Promise.all(children.map(started)), exited, untilTrue(startingOver)]);
  const leader = startingOver() ? undefined : await waitForLeader(endpoints, startingOver);
  if (exitedEarly !== undefined && !stopping) stop(`node ${exitedEarly} exited while the cluster was starting (see its line above)`);
  if (stopping) return exitCode(await exited);
  console.log(`\ncairn cluster of ${count} running; data in ${dataDir}`);
  for (const [i, endpoint] of endpoints.entries()) console.log(`  node ${i + 1}: client ${endpoint}  peer ${peerAddr(i + 1)}  status page http://${httpAddr(i + 1)}/`);
  console.log(leader ? `  leader: node ${leader}` : '  no leader yet (see the logs)');
  const defaults = endpoints.join(',') === DEFAULT_ENDPOINTS.join(',');
  const e = defaults ? '' : ` -e ${endpoints.join(',')}`;
  console.log(`try: npx cairn put hello world${e} && npx cairn get hello${e}    (Ctrl-C stops the cluster)\n`);

  return exitCode(await exited);
}

function exitCode(codes: number[]): number {
  return codes.every((code) => code === 0) ? 0 : 1;
}

function portFlag(flags: Record<string, string>, name: string, fallback: number, count: number): number {
  const port = Number(flags[name] ?? fallback);
  if (!Number.isSafeInteger(port) || port < 1 || port + count - 1 > 65535) throw new UsageError(`--${name} must be a port such that ${name} + nodes - 1 <= 65535`);
  return port;
}

/**
 * Calls `gone` once the process that started this one exits (the parent id changes when
 * the orphan is adopted). A signal to that parent alone (SIGINT to `npm start`) then
 * still stops the nodes. Polled: Node has no event for it.
 */
function watchParent(gone: () => void): NodeJS.Timeout {
  const parent = process.ppid;
  const timer = setInterval(() => {
    if (process.ppid !== parent) gone();
  }, PARENT_CHECK_INTERVAL_MS);
  timer.unref();
  return timer;
}

/** What `cairn serve` sends over its IPC channel once both its ports listen. */
export const NODE_STARTED_MESSAGE = 'cairn-node-started';

/** Resolves once the node says its ports listen (so they answer for it, not for another cluster). */
function started(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    const onMessage = (message: unknown) => {
      if (message !== NODE_STARTED_MESSAGE) return;
      child.off('message', onMessage);
      resolve();
    };
    child.on('message', onMessage);
  });
}

/** Resolves once `condition` holds, checked every 100 ms. */
async function untilTrue(condition: () => boolean): Promise<void> {
  while (!condition()) await new Promise((r) => setTimeout(r, 100).unref());
}

function startNode(mainPath: string, id: number, args: string[]): ChildProcess {
  // The IPC channel is the node's lifeline: it closes when this process dies, even by
  // kill -9, and the node then stops (stopWithParent in main.ts).
  const child = spawn(process.execPath, [mainPath, ...args], { stdio: ['ignore', 'pipe', 'pipe', 'ipc'] });
  for (const stream of [child.stdout!, child.stderr!]) {
    createInterface({ input: stream }).on('line', (line) => console.log(`[node ${id}] ${compact(line)}`));
  }
  child.once('exit', (code, signal) => console.log(`[node ${id}] exited (${signal ?? `code ${code}`})`));
  return child;
}

/** A JSON log line as "message key=value ...", without the noise. */
function compact(line: string): string {
  try {
    const { level, time, pid, node, msg, hostname, ...rest } = JSON.parse(line) as Record<string, unknown>;
    void level, time, pid, node, hostname;
    const fields = Object.entries(rest)
      .filter(([key]) => key !== 'status' && key !== 'peers')
      .map(([key, value]) => `${key}=${typeof value === 'object' ? JSON.stringify(value) : value}`);
    return [msg, ...fields].join(' ');
  } catch {
    return line;
  }
}

async function waitForLeader(endpoints: string[], stopped: () => boolean): Promise<number | undefined> {
  const client = new CairnClient({ endpoints, timeoutMs: 1000, consistency: Consistency.CONSISTENCY_SERIALIZABLE });
  const deadline = Date.now() + LEADER_WAIT_MS;
  try {
    while (Date.now() < deadline && !stopped()) {
      for (let i = 0; i < endpoints.length; i++) {
        const status = await client.statusOf(i).catch(() => undefined);
        if (status?.leaderId) return status.leaderId;
      }
      await new Promise((r) => setTimeout(r, 200));
    }
    return undefined;
  } finally {
    client.close();
  }
}
