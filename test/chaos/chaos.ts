import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Worker } from 'node:worker_threads';
import { Consistency, MemberRole } from '../../gen/cairn/kv/v1/kv';
import { CairnClient } from '../../src/cli/client';
import { describeError } from '../../src/cli/describe-error';
import { checkLinearizable } from '../../src/check/linearizability';
import { SeededRandom } from '../../src/raft/random';
import { ProcessCluster, waitFor } from '../support/process-cluster';
import { findLostWrites, kvDigest, toHistory } from './checks';
import { FaultProxy } from './proxy';
import { RecordedOp, WorkloadConfig } from './workload';

export const FAULT_KINDS = ['kill', 'kill-leader', 'pause', 'partition', 'isolate-leader', 'bridge', 'one-way', 'slow-links', 'transfer-leader', 'member-churn'] as const;

/** How long a membership nemesis action waits for each of its steps (removal, exit, rejoin) before it moves on. */
const MEMBERSHIP_STEP_TIMEOUT_MS = 30_000;
export type FaultKind = (typeof FAULT_KINDS)[number];

export interface ChaosOptions {
  seed: number;
  nodes: number;
  durationSec: number;
  clients: number;
  faults: FaultKind[];
  outDir: string;
}

export interface ChaosResult {
  ok: boolean;
  summary: string;
  ops: number;
  unknownOps: number;
  lost: number;
  linearizable: string;
  digests: string[];
  faultsApplied: Record<string, number>;
  historyFile: string;
}

const TICK_MS = 50;
const KEYS = ['a', 'b', 'c', 'd', 'e'];

/**
 * One chaos scenario: real `cairn serve` processes whose peer links all pass through
 * fault-injecting proxies, concurrent clients recording a history, and a seeded
 * nemesis that kills, pauses and partitions nodes. Afterwards everything heals and the
 * history, the final state and every node's data are checked.
 */
export class ChaosRun {
  private readonly rand: SeededRandom;
  private readonly proxies = new Map<string, FaultProxy>();
  private cluster!: ProcessCluster;
  private readonly paused = new Set<number>();
  private readonly faultsApplied: Record<string, number> = {};
  private readonly log: string[] = [];
  private readonly started = Date.now();

  constructor(private readonly options: ChaosOptions) {
    this.rand = new SeededRandom(options.seed);
  }

  async run(): Promise<ChaosResult> {
    mkdirSync(this.options.outDir, { recursive: true });
    // A fresh cluster every run: an earlier run into the same --out left its nodes' data
    // here, and a cluster resuming from it starts with keys the history never wrote.
    rmSync(join(this.options.outDir, 'data'), { recursive: true, force: true });
    await this.startCluster();
    try {
      await this.cluster.waitForLeader();
      const workload = this.startWorkload();
      await this.nemesis(Date.now() + this.options.durationSec * 1000);
      await this.healEverything();
      const history = (await workload).sort((a, b) => a.call - b.call);
      await this.waitForConvergence();
      return await this.check(history);
    } finally {
      await this.shutdown();
      writeFileSync(join(this.options.outDir, 'nemesis.log'), this.log.join('\n') + '\n');
      for (const node of this.cluster.nodes) writeFileSync(join(this.options.outDir, `node-${node.id}.log`), node.logs.join('\n') + '\n');
    }
  }

  // ----------------------------------------------------------------- setup

  private async startCluster(): Promise<void> {
    const clusterId = 1000 + this.options.seed;
    this.cluster = await ProcessCluster.prepare(this.options.nodes, ['--tick-ms', String(TICK_MS), '--cluster-id', String(clusterId)], join(resolve(this.options.outDir), 'data'));
    // The nodes' ports are chosen but not bound until they start: a proxy listening on an
    // ephemeral port could take one of them (seen once: a node's peer port in use at start).
    const nodePorts = new Set(this.cluster.nodes.flatMap((n) => [n.clientAddr, n.peerAddr].map((addr) => Number(addr.split(':')[1]))));
    for (const from of this.cluster.nodes) {
      for (const to of this.cluster.nodes) {
        if (from === to) continue;
        const proxy = new FaultProxy(`${from.id}->${to.id}`, Number(to.peerAddr.split(':')[1]), () => this.rand.float());
        await proxy.startAvoiding(nodePorts);
        this.proxies.set(`${from.id}>${to.id}`, proxy);
      }
    }
    // Node i reaches node j through proxy i>j: partitions are real network behaviour.
    this.cluster.peersFor = (id) =>
      this.cluster.nodes.map((n) => `${n.id}=${n.id === id ? n.peerAddr : `127.0.0.1:${this.proxies.get(`${id}>${n.id}`)!.port}`}`).join(',');
    for (const node of this.cluster.nodes) this.cluster.spawn(node);
  }

  private startWorkload(): Promise<RecordedOp[]> {
    const endpoints = this.cluster.nodes.map((n) => n.clientAddr);
    const workers = Array.from({ length: this.options.clients }, (_, i) => {
      const config: WorkloadConfig = {
        client: i + 1,
        runId: `seed${this.options.seed}`,
        endpoints,
        keys: KEYS,
        seed: this.options.seed * 101 + i,
        durationMs: this.options.durationSec * 1000,
        opDeadlineMs: 4000,
        attemptTimeoutMs: 1000,
        maxOps: 100_000,
      };
      return new Promise<RecordedOp[]>((done, fail) => {
        const worker = new Worker(join(__dirname, 'workload.js'), { workerData: config });
        worker.once('message', (message: { history?: RecordedOp[]; error?: string }) =>
          message.error ? fail(new Error(`client ${i + 1}: ${message.error}`)) : done(message.history!),
        );
        worker.once('error', fail);
      });
    });
    return Promise.all(workers).then((histories) => histories.flat());
  }

  // --------------------------------------------------------------- nemesis

  private note(line: string): void {
    this.log.push(`[${((Date.now() - this.started) / 1000).toFixed(1)}s] ${line}`);
  }

  private async nemesis(until: number): Promise<void> {
    while (Date.now() < until - 2000) {
      await sleep(500 + this.rand.int(2500));
      if (Date.now() >= until - 2000) break;
      const kind = this.rand.pick(this.options.faults);
      const holdMs = 500 + this.rand.int(4000);
      this.faultsApplied[kind] = (this.faultsApplied[kind] ?? 0) + 1;
      const undo = await this.apply(kind);
      await sleep(Math.min(holdMs, Math.max(0, until - Date.now())));
      await undo();
    }
  }

  /** Applies one fault; returns what undoes it. */
  private async apply(kind: FaultKind): Promise<() => Promise<void>> {
    const ids = this.cluster.nodes.map((n) => n.id);
    switch (kind) {
      case 'kill':
      case 'kill-leader': {
        const victim = kind === 'kill-leader' ? ((await this.leader()) ?? this.rand.pick(ids)) : this.rand.pick(ids);
        this.note(`kill -9 node ${victim}`);
        this.paused.delete(victim);
        await this.cluster.kill(victim, 'SIGKILL');
        return async () => {
          this.note(`restart node ${victim}`);
          this.cluster.restart(victim);
        };
      }
      case 'pause': {
        const victim = this.rand.chance(0.5) ? ((await this.leader()) ?? this.rand.pick(ids)) : this.rand.pick(ids);
        const child = this.cluster.node(victim).process;
        if (!child) return async () => undefined;
        this.note(`SIGSTOP node ${victim}`);
        child.kill('SIGSTOP');
        this.paused.add(victim);
        return async () => this.resume(victim);
      }
      case 'partition': {
        const minority = this.rand.int(Math.floor(ids.length / 2)) + 1;
        const shuffled = [...ids].sort(() => this.rand.float() - 0.5);
        const side = new Set(shuffled.slice(0, minority));
        this.note(`partition {${[...side]}} | {${ids.filter((id) => !side.has(id))}}`);
        return this.cutBetween((a, b) => side.has(a) !== side.has(b));
      }
      case 'isolate-leader': {
        const leader = (await this.leader()) ?? this.rand.pick(ids);
        this.note(`isolate leader ${leader}`);
        return this.cutBetween((a, b) => a === leader || b === leader);
      }
      case 'bridge': {
        // Two halves that can reach each other only through one bridge node.
        const shuffled = [...ids].sort(() => this.rand.float() - 0.5);
        const bridge = shuffled[0]!;
        const left = new Set(shuffled.slice(1, 1 + Math.floor((ids.length - 1) / 2)));
        this.note(`bridge through node ${bridge}: {${[...left]}} | {${ids.filter((id) => id !== bridge && !left.has(id))}}`);
        return this.cutBetween((a, b) => a !== bridge && b !== bridge && left.has(a) !== left.has(b));
      }
      case 'one-way': {
        const links = [...this.proxies.values()].filter(() => this.rand.chance(0.3));
        for (const proxy of links) proxy.set({ kind: 'blackhole' }, { kind: 'pass' });
        this.note(`one-way loss on ${links.map((p) => p.name).join(', ') || 'no link'}`);
        return async () => links.forEach((p) => p.heal());
      }
      case 'transfer-leader': {
        // Hands leadership to a random voter (or, 0, the most caught-up one) through any node.
        const to = this.rand.chance(0.5) ? 0 : this.rand.pick(ids);
        const answer = await this.clusterCall((c) => c.leaderTransfer(to));
        this.note(`leader transfer to ${to || 'the most caught-up voter'}: ${answer}`);
        return async () => undefined;
      }
      case 'member-churn':
        return this.memberChurn(this.rand.pick(ids));
      case 'slow-links': {
        const mode = this.rand.chance(0.5) ? { kind: 'delay' as const, ms: 20 + this.rand.int(150) } : { kind: 'flaky' as const, dropChance: 0.02 };
        for (const proxy of this.proxies.values()) proxy.set(mode);
        this.note(`all links ${mode.kind === 'delay' ? `delayed ${mode.ms} ms` : `flaky, ${mode.dropChance} per chunk`}`);
        return async () => this.proxies.forEach((p) => p.heal());
      }
    }
  }

  /** One Cluster call through every running node's client port; what it answered, as text. */
  private async clusterCall(call: (client: CairnClient) => Promise<{ leaderId?: number; members?: unknown[] }>): Promise<string> {
    const running = this.cluster.nodes.filter((n) => n.process && !this.paused.has(n.id));
    if (running.length === 0) return 'no node running';
    const client = new CairnClient({ endpoints: running.map((n) => n.clientAddr), timeoutMs: 2000, totalTimeoutMs: 6000, consistency: Consistency.CONSISTENCY_LINEARIZABLE });
    try {
      const answer = await call(client);
      return answer.leaderId !== undefined ? `node ${answer.leaderId} leads` : 'done';
    } catch (err) {
      return `refused (${describeError(err).slice(0, 160)})`;
    } finally {
      client.close();
    }
  }

  /**
   * Removes node `victim` (the leader too) with MemberRemove; once it has stopped by itself
   * (exit 0), wipes its data dir and starts it again with --join (a new learner with the
   * same id and addresses), which asks to be promoted once caught up. The undo waits for it
   * to be a voter again. Each step is bounded; a step that fails is noted and the rest skipped.
   */
  private async memberChurn(victim: number): Promise<() => Promise<void>> {
    const node = this.cluster.node(victim);
    this.resume(victim);
    const removal = await this.clusterCall((c) => c.memberRemove(victim));
    this.note(`member remove ${victim}: ${removal}`);
    if (removal !== 'done') return async () => undefined;
    const exited = await waitFor(`node ${victim} to stop after its removal`, () => node.exit ?? (node.process ? undefined : { code: null, signal: null }), MEMBERSHIP_STEP_TIMEOUT_MS).catch(() => undefined);
    if (!exited) {
      this.note(`node ${victim} did not stop after its removal; killing it`);
      await this.cluster.kill(victim, 'SIGKILL');
    } else {
      this.note(`node ${victim} stopped after its removal (exit ${exited.code ?? exited.signal})`);
    }
    rmSync(node.dataDir, { recursive: true, force: true });
    node.join = this.cluster.nodes.filter((n) => n.id !== victim).map((n) => n.clientAddr);
    this.note(`restart node ${victim} with an empty data dir and --join`);
    this.cluster.spawn(node);
    return async () => {
      const voter = await waitFor(
        `node ${victim} to be a voter again`,
        async () => {
          const status = await this.cluster.status(victim);
          return status.members.some((m) => m.id === victim && m.role === MemberRole.MEMBER_ROLE_VOTER);
        },
        MEMBERSHIP_STEP_TIMEOUT_MS,
      ).catch(() => false);
      this.note(voter ? `node ${victim} is a voter again` : `node ${victim} is not a voter yet; moving on`);
    };
  }

  private async cutBetween(separated: (a: number, b: number) => boolean): Promise<() => Promise<void>> {
    const cut: FaultProxy[] = [];
    for (const [name, proxy] of this.proxies) {
      const [a, b] = name.split('>').map(Number) as [number, number];
      if (separated(a, b)) {
        proxy.cut();
        cut.push(proxy);
      }
    }
    return async () => {
      this.note('heal partition');
      cut.forEach((p) => p.heal());
    };
  }

  private resume(id: number): void {
    if (!this.paused.delete(id)) return;
    this.note(`SIGCONT node ${id}`);
    this.cluster.node(id).process?.kill('SIGCONT');
  }

  private async leader(): Promise<number | undefined> {
    for (const node of this.cluster.nodes) {
      if (!node.process || this.paused.has(node.id)) continue;
      const status = await this.cluster.status(node.id).catch(() => undefined);
      if (status?.leaderId) return status.leaderId;
    }
    return undefined;
  }

  private async healEverything(): Promise<void> {
    this.note('heal everything');
    for (const proxy of this.proxies.values()) proxy.heal();
    for (const id of [...this.paused]) this.resume(id);
    for (const node of this.cluster.nodes) if (!node.process) this.cluster.restart(node.id);
  }

  // ---------------------------------------------------------------- checks

  private async waitForConvergence(): Promise<void> {
    await waitFor(
      'every node to hold and apply the same log',
      async () => {
        const statuses = await Promise.all(this.cluster.nodes.map((n) => this.cluster.status(n.id)));
        const leader = statuses.find((s) => s.role === 'leader');
        return leader && statuses.every((s) => s.lastIndex === leader.lastIndex && s.appliedIndex === leader.commitIndex && leader.commitIndex === leader.lastIndex);
      },
      60_000,
    );
  }

  private async check(history: RecordedOp[]): Promise<ChaosResult> {
    const historyFile = join(this.options.outDir, 'history.jsonl');
    writeFileSync(historyFile, history.map((op) => JSON.stringify(op)).join('\n') + '\n');
    const client = this.cluster.client(undefined, Consistency.CONSISTENCY_LINEARIZABLE, 3000);
    const final = await client.list(Buffer.alloc(0), 10_000);
    const finalState = new Map(final.kvs.map((kv) => [kv.key.toString(), kv.value.toString()]));
    const lost = findLostWrites(history, finalState);
    const linearizable = checkLinearizable(toHistory(history));
    for (const node of this.cluster.nodes) await this.cluster.kill(node.id, 'SIGTERM');
    const digests = await Promise.all(this.cluster.nodes.map((n) => kvDigest(n.dataDir)));
    const sameData = new Set(digests.map((d) => d.digest)).size === 1;
    const unknownOps = history.filter((op) => !op.known).length;
    const verdict = linearizable.kind === 'linearizable' ? 'linearizable' : `${linearizable.kind}: ${linearizable.explanation}`;
    const ok = linearizable.kind === 'linearizable' && lost.length === 0 && sameData;
    const problems = [
      ...(lost.length ? [`lost writes: ${lost.slice(0, 5).map((l) => JSON.stringify(l)).join('; ')}`] : []),
      ...(sameData ? [] : [`nodes differ: ${digests.map((d, i) => `node ${i + 1} ${d.digest} (${d.keys} keys)`).join(', ')}`]),
      ...(linearizable.kind === 'linearizable' ? [] : [verdict]),
    ];
    const summary = ok
      ? `chaos: ${history.length} ops, ${lost.length} lost, linearizable`
      : `chaos: FAILED (${problems.join(' | ')}); history in ${historyFile}`;
    const result: ChaosResult = { ok, summary, ops: history.length, unknownOps, lost: lost.length, linearizable: linearizable.kind, digests: digests.map((d) => d.digest), faultsApplied: this.faultsApplied, historyFile };
    writeFileSync(join(this.options.outDir, 'summary.json'), JSON.stringify({ options: this.options, ...result }, null, 2) + '\n');
    return result;
  }

  private async shutdown(): Promise<void> {
    for (const id of [...this.paused]) this.resume(id);
    await this.cluster.stop({ keepData: true });
    await Promise.all([...this.proxies.values()].map((p) => p.stop()));
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
