/**
 * What bench/run.ts needs of a 3-node cluster of either system, and the process plumbing
 * both launchers share: ports, log files, kill and wait, the leader poll.
 */
import { ChildProcess, spawn } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../test/support/process-cluster';
import { findLeaderIndex, SystemName } from './targets';

/** How long a fresh cluster may take to elect a leader every node agrees on. */
export const LEADER_DEADLINE_MS = 30_000;
const LEADER_POLL_MS = 50;
/** Lines of a node's log shown when something goes wrong. */
const LOG_TAIL_LINES = 15;
/** How long a node gets to exit after SIGKILL before we stop waiting. */
const EXIT_DEADLINE_MS = 10_000;

export interface BenchNode {
  name: string;
  clientAddr: string;
  peerAddr: string;
  dataDir: string;
  logFile: string;
  process?: ChildProcess;
}

/** Every child process and temp dir the bench made, so SIGINT and exit can clean them all up. */
export const liveChildren = new Set<ChildProcess>();
export const liveDirs = new Set<string>();

export function killEverything(): void {
  for (const child of liveChildren) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
  for (const dir of liveDirs) rmSync(dir, { recursive: true, force: true });
  liveDirs.clear();
}

export function spawnTracked(command: string, args: string[], logFile?: string): ChildProcess {
  const out = logFile ? openSync(logFile, 'a') : 'ignore';
  const child = spawn(command, args, { stdio: ['ignore', out, out] });
  if (typeof out === 'number') closeSync(out);
  liveChildren.add(child);
  child.once('exit', () => liveChildren.delete(child));
  return child;
}

export function makeRoot(prefix: string): string {
  const root = mkdtempSync(join(tmpdir(), prefix));
  liveDirs.add(root);
  return root;
}

export async function allocateNodes(root: string, count: number, namePrefix: string): Promise<BenchNode[]> {
  const nodes: BenchNode[] = [];
  for (let i = 1; i <= count; i++) {
    nodes.push({
      name: `${namePrefix}${i}`,
      clientAddr: `127.0.0.1:${await freePort()}`,
      peerAddr: `127.0.0.1:${await freePort()}`,
      dataDir: join(root, `${namePrefix}${i}`),
      logFile: join(root, `${namePrefix}${i}.log`),
    });
  }
  return nodes;
}

function logTail(node: BenchNode): string {
  try {
    return readFileSync(node.logFile, 'utf8').trimEnd().split('\n').slice(-LOG_TAIL_LINES).join('\n');
  } catch {
    return '(no log)';
  }
}

export abstract class BenchCluster {
  abstract readonly system: SystemName;
  /** What the servers run on: "node v26.1.0", "etcd 3.4.23". */
  abstract readonly runtime: string;

  constructor(readonly root: string, readonly nodes: BenchNode[]) {}

  get endpoints(): string[] {
    return this.nodes.map((n) => n.clientAddr);
  }

  pids(): number[] {
    return this.nodes.map((n) => n.process?.pid ?? -1);
  }

  /** Waits until a leader is elected and agreed on; returns its index in `nodes`. */
  async waitForLeader(excluded: number[] = []): Promise<number> {
    const deadline = Date.now() + LEADER_DEADLINE_MS;
    const candidates = this.nodes.map((_, i) => i).filter((i) => !excluded.includes(i));
    while (Date.now() < deadline) {
      const dead = this.nodes.find((n, i) => candidates.includes(i) && n.process && n.process.exitCode !== null);
      if (dead) throw new Error(`${this.system} node ${dead.name} exited (code ${dead.process!.exitCode}):\n${logTail(dead)}`);
      const leader = await findLeaderIndex(this.system, candidates.map((i) => this.endpoints[i]));
      if (leader !== undefined) return candidates[leader];
      await new Promise((r) => setTimeout(r, LEADER_POLL_MS));
    }
    throw new Error(`${this.system}: no leader within ${LEADER_DEADLINE_MS} ms\n${this.nodes.map((n) => `--- ${n.name}\n${logTail(n)}`).join('\n')}`);
  }

  logs(): string {
    return this.nodes.map((n) => `--- ${n.name}\n${logTail(n)}`).join('\n');
  }

  /** Kills every node (SIGKILL: the data is thrown away anyway) and removes the data dirs. */
  async stop(): Promise<void> {
    await Promise.all(
      this.nodes.map(async (n) => {
        const child = n.process;
        if (!child || child.exitCode !== null || child.signalCode !== null) return;
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGKILL');
        await Promise.race([exited, new Promise((r) => setTimeout(r, EXIT_DEADLINE_MS))]);
      }),
    );
    rmSync(this.root, { recursive: true, force: true });
    liveDirs.delete(this.root);
  }
}
