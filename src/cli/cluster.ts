import { ChildProcess, spawn } from 'node:child_process';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { Consistency } from '../../gen/cairn/kv/v1/kv';
import { CairnClient } from './client';
import { parseArgs, UsageError } from './flags';

const LEADER_WAIT_MS = 30_000;
const CLUSTER_FLAGS = ['nodes', 'data-dir', 'timing', 'log-level', 'host'];

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
  const ids = Array.from({ length: count }, (_, i) => i + 1);
  const peers = ids.map((id) => `${id}=${host}:${7100 + id}`).join(',');
  const endpoints = ids.map((id) => `${host}:${7000 + id}`);

  const children = ids.map((id) =>
    startNode(mainPath, id, [
      'serve', '--id', String(id), '--data-dir', join(dataDir, `node-${id}`),
      '--client-addr', `${host}:${7000 + id}`, '--peer-addr', `${host}:${7100 + id}`, '--peers', peers,
      '--timing', flags.timing ?? 'default', '--log-level', flags['log-level'] ?? 'info',
    ]),
  );
  const exited = Promise.all(children.map((child) => new Promise<number>((done) => child.once('exit', (code) => done(code ?? 1)))));
  const stop = () => {
    console.log('\nstopping the cluster...');
    for (const child of children) child.kill('SIGTERM');
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);

  const leader = await waitForLeader(endpoints);
  console.log(`\ncairn cluster of ${count} running; data in ${dataDir}`);
  for (const [i, endpoint] of endpoints.entries()) console.log(`  node ${i + 1}: client ${endpoint}  peer ${host}:${7101 + i}`);
  console.log(leader ? `  leader: node ${leader}` : '  no leader yet (see the logs)');
  console.log('try: npx cairn put hello world && npx cairn get hello    (Ctrl-C stops the cluster)\n');

  const codes = await exited;
  return codes.every((code) => code === 0) ? 0 : 1;
}

function startNode(mainPath: string, id: number, args: string[]): ChildProcess {
  const child = spawn(process.execPath, [mainPath, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
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

async function waitForLeader(endpoints: string[]): Promise<number | undefined> {
  const client = new CairnClient({ endpoints, timeoutMs: 1000, consistency: Consistency.CONSISTENCY_SERIALIZABLE });
  const deadline = Date.now() + LEADER_WAIT_MS;
  try {
    while (Date.now() < deadline) {
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
