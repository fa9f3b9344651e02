/**
 * npm run chaos -- --rolling-restart [--nodes 3] [--writers 2] [--tick-ms 100] [--signal SIGTERM|SIGKILL] [--rounds 1]
 *
 * Starts real nodes on loopback, runs a bounded write load, restarts each node in turn
 * (SIGTERM by default: a leader hands leadership over before it exits) and reports the
 * longest write stall and the failed writes:
 *   rolling restart: N restarts, OPS writes, FAILED failed, longest stall MS ms, slowest write MS ms
 * With --signal SIGKILL the same restarts are crashes: the baseline that waits out an election.
 */
import { Consistency } from '../../gen/cairn/kv/v1/kv';
import { CairnClient } from '../../src/cli/client';
import { ProcessCluster, waitFor } from '../support/process-cluster';

export interface RollingOptions {
  nodes: number;
  writers: number;
  tickMs: number;
  signal: NodeJS.Signals;
  rounds: number;
}

export interface RollingResult {
  restarts: number;
  writes: number;
  failed: number;
  /** The longest time in which no write completed, while the restarts ran. */
  longestStallMs: number;
  /** The longest a single successful write took. */
  slowestWriteMs: number;
  /** Each restart: which node, whether it led, and the longest stall around it. */
  perRestart: { node: number; wasLeader: boolean; stallMs: number }[];
}

/** Bounds on the load, whatever happens: writes per writer and the whole run's time. */
const MAX_WRITES_PER_WRITER = 200_000;
const MAX_RUN_MS = 10 * 60_000;

export function parseRollingOptions(argv: string[]): RollingOptions {
  const options: RollingOptions = { nodes: 3, writers: 2, tickMs: 100, signal: 'SIGTERM', rounds: 1 };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i]!;
    if (flag === '--rolling-restart') continue;
    const value = argv[++i];
    if (value === undefined) throw new Error(`${flag} needs a value`);
    const int = (max: number) => {
      const n = Number(value);
      if (!Number.isSafeInteger(n) || n < 1 || n > max) throw new Error(`${flag} needs an integer from 1 to ${max}, got ${value}`);
      return n;
    };
    if (flag === '--nodes') options.nodes = int(9);
    else if (flag === '--writers') options.writers = int(16);
    else if (flag === '--tick-ms') options.tickMs = int(1000);
    else if (flag === '--rounds') options.rounds = int(10);
    else if (flag === '--signal') {
      if (value !== 'SIGTERM' && value !== 'SIGKILL') throw new Error(`--signal must be SIGTERM or SIGKILL, got ${value}`);
      options.signal = value;
    } else throw new Error(`unknown flag ${flag}`);
  }
  return options;
}

export async function rollingRestart(options: RollingOptions, log: (line: string) => void = console.log): Promise<RollingResult> {
  const cluster = await ProcessCluster.start(options.nodes, ['--tick-ms', String(options.tickMs), '--log-level', 'warn']);
  const completions: number[] = [];
  let failed = 0;
  let slowestWriteMs = 0;
  let stop = false;
  const runDeadline = Date.now() + MAX_RUN_MS;
  try {
    await cluster.waitForLeader();
    const ids = cluster.nodes.map((n) => n.id);
    const writers = Array.from({ length: options.writers }, async (_, w) => {
      const client = new CairnClient({ endpoints: ids.map((id) => cluster.node(id).clientAddr), timeoutMs: 1000, totalTimeoutMs: 10_000, consistency: Consistency.CONSISTENCY_LINEARIZABLE });
      try {
        for (let i = 0; i < MAX_WRITES_PER_WRITER && !stop && Date.now() < runDeadline; i++) {
          const started = Date.now();
          try {
            await client.put(Buffer.from(`w${w}-${i % 1000}`), Buffer.from(String(i)));
            const now = Date.now();
            completions.push(now);
            slowestWriteMs = Math.max(slowestWriteMs, now - started);
          } catch {
            failed++;
          }
        }
      } finally {
        client.close();
      }
    });
    await waitFor('the load to start', () => completions.length >= 50);
    const startedAt = Date.now();
    const perRestart: RollingResult['perRestart'] = [];
    for (let round = 0; round < options.rounds; round++) {
      for (const id of ids) {
        const leader = await cluster.waitForLeader();
        const from = Date.now();
        await cluster.kill(id, options.signal);
        cluster.restart(id);
        await cluster.waitForLeader();
        const target = (await cluster.status(await cluster.waitForLeader())).commitIndex;
        await waitFor(`node ${id} to catch up`, async () => (await cluster.status(id)).appliedIndex >= target, 60_000);
        // Let the load run a while in the new steady state, so a stall at the end is seen.
        const seen = completions.length;
        await waitFor('writes after the restart', () => completions.length >= seen + 50, 30_000);
        const stallMs = longestGap(completions, from, Date.now());
        perRestart.push({ node: id, wasLeader: id === leader, stallMs });
        log(`restarted node ${id}${id === leader ? ' (the leader)' : ''} with ${options.signal}: longest stall ${stallMs} ms`);
      }
    }
    const endedAt = Date.now();
    stop = true;
    await Promise.all(writers);
    return {
      restarts: perRestart.length,
      writes: completions.length,
      failed,
      longestStallMs: longestGap(completions, startedAt, endedAt),
      slowestWriteMs,
      perRestart,
    };
  } finally {
    stop = true;
    await cluster.stop();
  }
}

/** The longest interval in [from, to] in which no write completed. */
export function longestGap(sortedCompletions: readonly number[], from: number, to: number): number {
  let previous = from;
  let longest = 0;
  for (const at of sortedCompletions) {
    if (at < from) continue;
    if (at > to) break;
    longest = Math.max(longest, at - previous);
    previous = at;
  }
  return Math.max(longest, to - previous);
}
