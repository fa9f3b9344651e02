/**
 * `npm run bench`: the same closed-loop load against fresh 3-node clusters of cairn (real
 * `cairn serve` processes, default settings, on each chosen Node.js) and, when an etcd
 * binary is on PATH, etcd (default settings); one system at a time, the generator in a
 * process of its own. Prints one line per run, then the summary lines (medians across
 * rounds) in the exact form docs/benchmarks.md documents. Exits non-zero only when
 * something is broken (a system that never answered, errors or missed reads in a
 * steady-state run, a lost write, a failover that never recovered), never on speed.
 */
import { execFileSync, spawn } from 'node:child_process';
import { cpus, loadavg, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeFileSync } from 'node:fs';
import { CairnCluster } from './cairn-cluster';
import { BenchCluster, killEverything, liveChildren } from './cluster';
import { EtcdCluster, etcdVersion, findEtcd } from './etcd-cluster';
import { FailoverJob, FailoverResult, GeneratorJob, GeneratorResult, SteadyJob, SteadyResult, SteadyWorkload } from './generator';
import { MACHINE_NODE, NodeBinary, resolveNode } from './node-binaries';
import { BenchOptions, channelsFor, CLUSTER_WARMUP_CONCURRENCY, clusterWarmupNote, parseOptions, RATE_MAX_IN_FLIGHT, Workload } from './options';
import { writeReport } from './report';
import {
  failoverSummaryLine,
  FailoverSummary,
  LatencyHistogram,
  median,
  nodePrefixed,
  percentileListMs,
  rateSummaryLine,
  steadySummaryLine,
  SteadySummary,
} from './stats';
import { SystemName } from './targets';

/** Deadline of one steady-state request; its outcome is then unknown and it counts as an error. */
const REQUEST_TIMEOUT_MS = 5000;
/** Deadline of one request during a failover: short, so a write stuck on a dead path is retried elsewhere soon. */
const FAILOVER_REQUEST_TIMEOUT_MS = 2000;
const FAILOVER_PRE_KILL_MS = 2000;
const FAILOVER_POST_RECOVERY_MS = 1000;
const FAILOVER_MAX_RECOVERY_MS = 30_000;
/** Requests in flight while filling the key space before the read workloads. */
const FILL_CONCURRENCY = 256;
/** Longest a fill may take (100,000 keys at two thousand puts per second take under a minute). */
const FILL_MAX_MS = 300_000;
/** A generator that outlives its job by this much is killed. */
const GENERATOR_GRACE_MS = 60_000;
/** The share of reads in the mix workload. */
const MIX_READ_FRACTION = 0.9;
/** The Node.js major the headline summary lines use when cairn ran on it (the container image's). */
const HEADLINE_NODE_MAJOR = 26;

/** One system as run: cairn on one Node.js binary, or etcd. */
export interface Variant {
  system: SystemName;
  /** "cairn@node26", "etcd" */
  label: string;
  node?: NodeBinary;
  etcdBinary?: string;
  runtime: string;
}

export interface RunRecord {
  system: SystemName;
  variant: string;
  /** The Node.js cairn's servers ran on (null for etcd). */
  serverNode: string | null;
  serverRuntime: string;
  generatorNode: string;
  workload: Exclude<Workload, 'failover'>;
  /** In-flight requests (for 'rate': the bound, RATE_MAX_IN_FLIGHT). */
  concurrency: number;
  /** For 'rate': the puts per second offered. */
  ratePerSec?: number;
  channels: number;
  round: number;
  ops: number;
  measuredSeconds: number;
  opsPerSec: number;
  p50Ms: number;
  p99Ms: number;
  p999Ms: number;
  meanMs: number;
  maxMs: number;
  errors: number;
  firstErrors: string[];
  misses: number;
  serverCpuSeconds: number[];
  /** All three servers' CPU per operation, in ms. */
  serverCpuMsPerOp: number;
  generatorCpuSeconds: number;
  serverRssMiB: number[];
  /** CPU time the hypervisor stole from this machine during the window, in % (machine-wide; NaN where not reported). */
  stealPercent: number;
  percentilesMs: Array<[number, number]>;
}

/** One failover trial as recorded: the generator's result and what ran it. */
export interface FailoverRecord extends Omit<FailoverResult, 'kind'> {
  system: SystemName;
  variant: string;
  serverNode: string | null;
  serverRuntime: string;
  generatorNode: string;
  concurrency: number;
  trial: number;
}

export interface MedianRecord {
  variant: string;
  system: SystemName;
  serverNode: string | null;
  workload: Exclude<Workload, 'failover'>;
  concurrency: number;
  rounds: number;
  opsPerSec: number;
  p50Ms: number;
  p99Ms: number;
  p999Ms: number;
  serverCpuMsPerOp: number;
  generatorCpuSeconds: number;
  /** Median over the rounds of each run's stolen CPU, in %. */
  stealPercent: number;
  errors: number;
  /** Median of each recorded percentile across rounds. */
  percentilesMs: Array<[number, number]>;
}

export interface FailoverMedian {
  variant: string;
  system: SystemName;
  serverNode: string | null;
  concurrency: number;
  trials: number;
  medianMs: number;
  maxMs: number;
  lost: number;
  unverified: number;
  recovered: number;
}

export interface BenchJson {
  startedAt: string;
  finishedAt: string;
  /** The commit the run was built from ("+ changes" when the work tree differed from it). */
  commit: string;
  options: BenchOptions;
  machine: { nproc: number; cpuModel: string; kernel: string; disk: string; loadAverageAtStart: number[] };
  generatorNode: string;
  generatorNote: string;
  runs: RunRecord[];
  failovers: FailoverRecord[];
  medians: MedianRecord[];
  failoverMedians: FailoverMedian[];
  summaryLines: string[];
  problems: string[];
}

const problems: string[] = [];

function currentCommit(): string {
  try {
    const git = (args: string[]) => execFileSync('git', args, { cwd: join(__dirname, '..', '..'), encoding: 'utf8', timeout: 10_000 }).trim();
    return `${git(['rev-parse', '--short', 'HEAD'])}${git(['status', '--porcelain', '--untracked-files=no']) ? ' + changes' : ''}`;
  } catch {
    return 'unknown';
  }
}

function machineInfo(): BenchJson['machine'] {
  let disk = 'unknown';
  try {
    disk = execFileSync('df', ['-h', '--output=source,fstype,size', tmpdir()], { encoding: 'utf8', timeout: 10_000 }).trim().split('\n').pop()!.replace(/\s+/g, ' ');
  } catch {
    // df missing: leave it unknown
  }
  return { nproc: cpus().length, cpuModel: cpus()[0]?.model ?? 'unknown', kernel: release(), disk: `${tmpdir()} on ${disk}`, loadAverageAtStart: loadavg() };
}

function runGenerator(job: GeneratorJob, budgetMs: number): Promise<GeneratorResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(__dirname, 'generator.js'), JSON.stringify(job)], { stdio: ['ignore', 'pipe', 'pipe'] });
    liveChildren.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), budgetMs + GENERATOR_GRACE_MS);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      liveChildren.delete(child);
      if (code === 0) {
        try {
          return resolve(JSON.parse(stdout.trim().split('\n').pop()!) as GeneratorResult);
        } catch (err) {
          return reject(new Error(`generator printed no result: ${(err as Error).message}\n${stderr}`));
        }
      }
      reject(new Error(`generator exited (code ${code}, signal ${signal}): ${stderr.trim()}`));
    });
  });
}

/**
 * Cluster starts per run: the ports are picked free and then bound by the servers, and in
 * between another process may take one (the kernel hands it out as the local port of an
 * outgoing connection). A start that fails that way is retried on new ports.
 */
const CLUSTER_START_ATTEMPTS = 3;

/** A fresh cluster with a leader, and that leader. */
async function startCluster(variant: Variant, token: string): Promise<{ cluster: BenchCluster; leader: number }> {
  for (let attempt = 1; ; attempt++) {
    const cluster =
      variant.system === 'cairn'
        ? await CairnCluster.start(variant.node!.path, variant.node!.version, token)
        : await EtcdCluster.start(variant.etcdBinary!, variant.runtime, token);
    try {
      return { cluster, leader: await cluster.waitForLeader() };
    } catch (err) {
      await cluster.stop();
      const portTaken = /address is already in use|address already in use|EADDRINUSE/i.test(String((err as Error).message));
      if (!portTaken || attempt >= CLUSTER_START_ATTEMPTS) throw err;
      console.log(`${variant.label}: a port was taken before the cluster could bind it; starting again on new ports (attempt ${attempt + 1} of ${CLUSTER_START_ATTEMPTS})`);
    }
  }
}

function baseJob(cluster: BenchCluster, leader: number, concurrency: number, opts: BenchOptions) {
  return {
    system: cluster.system, endpoints: cluster.endpoints, startEndpoint: leader, concurrency, channels: channelsFor(concurrency),
    keys: opts.keys, valueBytes: opts.valueBytes, requestTimeoutMs: REQUEST_TIMEOUT_MS, serverPids: cluster.pids(),
  };
}

function serverNodeOf(v: Variant): string | null {
  return v.node?.version ?? null;
}

function toRecord(v: Variant, workload: RunRecord['workload'], concurrency: number, round: number, r: SteadyResult): RunRecord {
  const h = LatencyHistogram.fromJSON(r.histogram);
  const cpu = r.serverCpuSeconds.reduce((a, b) => a + b, 0);
  return {
    system: v.system, variant: v.label, serverNode: serverNodeOf(v), serverRuntime: v.runtime, generatorNode: process.version,
    workload, concurrency, channels: channelsFor(concurrency), round, ops: r.ops, measuredSeconds: r.measuredSeconds, opsPerSec: r.opsPerSec,
    p50Ms: h.percentileUs(50) / 1000, p99Ms: h.percentileUs(99) / 1000, p999Ms: h.percentileUs(99.9) / 1000,
    meanMs: h.count ? h.sumUs / h.count / 1000 : NaN, maxMs: h.maxUs / 1000, errors: r.errors, firstErrors: r.firstErrors, misses: r.misses,
    serverCpuSeconds: r.serverCpuSeconds, serverCpuMsPerOp: r.ops ? (cpu * 1000) / r.ops : NaN, generatorCpuSeconds: r.generatorCpuSeconds,
    serverRssMiB: r.serverRssMiB, stealPercent: r.stealPercent ?? NaN, percentilesMs: percentileListMs(h),
  };
}

const f1 = (v: number) => (Number.isFinite(v) ? v.toFixed(1) : '-');
const f2 = (v: number) => (Number.isFinite(v) ? v.toFixed(2) : '-');

function printRun(r: RunRecord): void {
  console.log(
    `round ${r.round} ${r.variant.padEnd(14)} ${runName(r).padEnd(12)} ${String(Math.round(r.opsPerSec)).padStart(6)} ops/s` +
      `  p50 ${f2(r.p50Ms)} p99 ${f2(r.p99Ms)} p99.9 ${f2(r.p999Ms)} ms  errors ${r.errors}${r.misses ? ` misses ${r.misses}` : ''}` +
      `  cpu servers ${r.serverCpuSeconds.map(f1).join('+')} s (${f2(r.serverCpuMsPerOp)} ms/op) gen ${f1(r.generatorCpuSeconds)} s  steal ${f1(r.stealPercent)}%` +
      `  rss ${r.serverRssMiB.map((v) => Math.round(v)).join('/')} MiB${r.firstErrors.length ? `\n    first errors: ${r.firstErrors.join(' | ')}` : ''}`,
  );
}

/** "put c=64", "rate 1000/s" */
function runName(r: Pick<RunRecord, 'workload' | 'concurrency' | 'ratePerSec'>): string {
  return r.workload === 'rate' ? `rate ${r.ratePerSec}/s` : `${r.workload} c=${r.concurrency}`;
}

function checkSteady(r: RunRecord): void {
  const what = `${r.variant} ${runName(r)} round ${r.round}`;
  if (r.ops === 0) problems.push(`${what}: no request was answered`);
  if (r.errors > 0) problems.push(`${what}: ${r.errors} errors (${r.firstErrors.join(' | ')})`);
  if (r.misses > 0) problems.push(`${what}: ${r.misses} reads found no value after the fill`);
}

/** --generators applies from this concurrency up; below it one process is never the bottleneck. */
const MULTI_GENERATOR_MIN_CONCURRENCY = 64;

/** Splits `total` into `parts` near-equal positive shares. */
function shares(total: number, parts: number): number[] {
  return Array.from({ length: parts }, (_, i) => Math.floor(total / parts) + (i < total % parts ? 1 : 0)).filter((n) => n > 0);
}

/** Adds up the results of generator processes that ran the same job side by side. */
export function mergeSteady(results: SteadyResult[]): SteadyResult {
  if (results.length === 1) return results[0];
  const histogram = LatencyHistogram.fromJSON(results[0].histogram);
  for (const r of results.slice(1)) histogram.merge(LatencyHistogram.fromJSON(r.histogram));
  const sum = (f: (r: SteadyResult) => number) => results.reduce((a, r) => a + f(r), 0);
  return {
    kind: 'steady', ops: sum((r) => r.ops), measuredSeconds: Math.max(...results.map((r) => r.measuredSeconds)), opsPerSec: sum((r) => r.opsPerSec),
    errors: sum((r) => r.errors), firstErrors: results.flatMap((r) => r.firstErrors).slice(0, 5), misses: sum((r) => r.misses), histogram: histogram.toJSON(),
    // The windows overlap all but the processes' start-up skew: the first process's server samples stand for all.
    serverCpuSeconds: results[0].serverCpuSeconds, serverRssMiB: results[0].serverRssMiB, generatorCpuSeconds: sum((r) => r.generatorCpuSeconds),
    stealPercent: results[0].stealPercent,
  };
}

async function steadyRun(cluster: BenchCluster, v: Variant, workload: SteadyWorkload, concurrency: number, opts: BenchOptions): Promise<SteadyResult> {
  const leader = await cluster.waitForLeader();
  const fill = workload === 'fill';
  const job: SteadyJob = {
    ...baseJob(cluster, leader, concurrency, opts), kind: 'steady', workload, readFraction: MIX_READ_FRACTION, ratePerSec: opts.ratePerSec,
    warmupMs: fill ? 0 : opts.warmupSeconds * 1000, durationMs: fill ? FILL_MAX_MS : opts.durationSeconds * 1000,
  };
  const budget = job.warmupMs + job.durationMs + REQUEST_TIMEOUT_MS;
  // One process paces the rate workload: split among several, each would offer the whole rate.
  const processes = fill || workload === 'rate' || concurrency < MULTI_GENERATOR_MIN_CONCURRENCY ? 1 : opts.generators;
  const parts = shares(concurrency, processes);
  const results = await Promise.all(
    parts.map((c) => runGenerator({ ...job, concurrency: c, channels: Math.max(1, Math.round((job.channels * c) / concurrency)) }, budget)),
  );
  return mergeSteady(results as SteadyResult[]);
}

/**
 * Unmeasured put load on a fresh cluster before its first run (--cluster-warmup), for every
 * system alike. Without it the first workload of a round (put c=1) met servers whose JIT
 * had seen only its own warm-up's few hundred requests, while every later workload met
 * servers that had been under load for a while: the order of the workloads, not the
 * systems, decided part of that result. A warm-up with errors is a problem, as a fill's is.
 */
async function warmUpCluster(cluster: BenchCluster, v: Variant, round: number, opts: BenchOptions): Promise<void> {
  if (opts.clusterWarmupSeconds <= 0) return;
  const r = await steadyRun(cluster, v, 'put', CLUSTER_WARMUP_CONCURRENCY, { ...opts, warmupSeconds: 0, durationSeconds: opts.clusterWarmupSeconds });
  console.log(`round ${round} ${v.label.padEnd(14)} cluster warm-up: ${Math.round(r.opsPerSec)} puts/s at c=${CLUSTER_WARMUP_CONCURRENCY} for ${opts.clusterWarmupSeconds} s, errors ${r.errors}`);
  if (r.errors > 0 || r.ops === 0) problems.push(`${v.label} round ${round}: the cluster warm-up had ${r.errors} errors and ${r.ops} answers (${r.firstErrors.join(' | ')})`);
}

async function roundOfVariant(v: Variant, round: number, opts: BenchOptions, runs: RunRecord[]): Promise<void> {
  const steady = opts.workloads.filter((w): w is RunRecord['workload'] => w !== 'failover');
  if (steady.length === 0) return;
  const { cluster } = await startCluster(v, `bench-${v.system}-r${round}`);
  try {
    const record = (workload: RunRecord['workload'], c: number, r: SteadyResult) => {
      const rec = toRecord(v, workload, c, round, r);
      if (workload === 'rate') rec.ratePerSec = opts.ratePerSec;
      runs.push(rec);
      printRun(rec);
      checkSteady(rec);
    };
    await warmUpCluster(cluster, v, round, opts);
    if (steady.includes('put')) for (const c of opts.putConcurrency) record('put', c, await steadyRun(cluster, v, 'put', c, opts));
    if (steady.includes('rate')) record('rate', RATE_MAX_IN_FLIGHT, await steadyRun(cluster, v, 'rate', RATE_MAX_IN_FLIGHT, opts));
    const reads = steady.filter((w) => w !== 'put' && w !== 'rate');
    if (reads.length) {
      const fill = await steadyRun(cluster, v, 'fill', FILL_CONCURRENCY, opts);
      console.log(`round ${round} ${v.label.padEnd(14)} fill of ${opts.keys} keys: ${Math.round(fill.opsPerSec)} puts/s, errors ${fill.errors}`);
      if (fill.ops < opts.keys) problems.push(`${v.label} round ${round}: the fill wrote ${fill.ops} of ${opts.keys} keys (${fill.firstErrors.join(' | ')})`);
      for (const w of reads) record(w, opts.readConcurrency, await steadyRun(cluster, v, w, opts.readConcurrency, opts));
    }
  } finally {
    await cluster.stop();
  }
}

async function failoverTrial(v: Variant, trial: number, opts: BenchOptions): Promise<FailoverRecord> {
  const { cluster, leader } = await startCluster(v, `bench-${v.system}-failover-${trial}`);
  try {
    const job: FailoverJob = {
      ...baseJob(cluster, leader, opts.failoverConcurrency, opts), kind: 'failover', requestTimeoutMs: FAILOVER_REQUEST_TIMEOUT_MS,
      preKillMs: FAILOVER_PRE_KILL_MS, postRecoveryMs: FAILOVER_POST_RECOVERY_MS, maxRecoveryMs: FAILOVER_MAX_RECOVERY_MS, leaderPid: cluster.pids()[leader],
    };
    const r = (await runGenerator(job, FAILOVER_PRE_KILL_MS + FAILOVER_MAX_RECOVERY_MS + FAILOVER_POST_RECOVERY_MS + 60_000)) as FailoverResult;
    const { kind: _kind, ...result } = r;
    const rec: FailoverRecord = {
      system: v.system, variant: v.label, serverNode: serverNodeOf(v), serverRuntime: v.runtime, generatorNode: process.version,
      concurrency: opts.failoverConcurrency, trial, ...result,
    };
    console.log(
      `trial ${trial} ${v.label.padEnd(14)} failover c=${rec.concurrency}: ${rec.failoverMs === null ? 'never recovered' : `${Math.round(rec.failoverMs)} ms`}` +
        `  acked ${rec.ackedWrites} writes on ${rec.keysChecked} keys, lost ${rec.lost}, unverified ${rec.unverified}, errors ${rec.errors}` +
        `${rec.firstLost.length ? `\n    lost: ${rec.firstLost.join(' | ')}` : ''}`,
    );
    const what = `${v.label} failover trial ${trial}`;
    if (rec.failoverMs === null) problems.push(`${what}: no write issued after the kill was acknowledged within ${FAILOVER_MAX_RECOVERY_MS} ms`);
    if (rec.lost > 0) problems.push(`${what}: ${rec.lost} acknowledged writes lost (${rec.firstLost.join(' | ')})`);
    if (rec.unverified > 0) problems.push(`${what}: ${rec.unverified} acknowledged writes could not be read back`);
    if (rec.ackedWrites === 0) problems.push(`${what}: no write was acknowledged`);
    return rec;
  } finally {
    await cluster.stop();
  }
}

function medianPercentiles(rs: RunRecord[]): Array<[number, number]> {
  return rs[0].percentilesMs.map(([p], i) => [p, median(rs.map((r) => r.percentilesMs[i][1]))]);
}

export function computeMedians(runs: RunRecord[]): MedianRecord[] {
  const groups = new Map<string, RunRecord[]>();
  for (const r of runs) {
    const key = `${r.variant}|${r.workload}|${r.concurrency}`;
    groups.set(key, [...(groups.get(key) ?? []), r]);
  }
  return [...groups.values()].map((rs) => ({
    variant: rs[0].variant, system: rs[0].system, serverNode: rs[0].serverNode, workload: rs[0].workload, concurrency: rs[0].concurrency, rounds: rs.length,
    opsPerSec: median(rs.map((r) => r.opsPerSec)), p50Ms: median(rs.map((r) => r.p50Ms)), p99Ms: median(rs.map((r) => r.p99Ms)),
    p999Ms: median(rs.map((r) => r.p999Ms)), serverCpuMsPerOp: median(rs.map((r) => r.serverCpuMsPerOp)),
    generatorCpuSeconds: median(rs.map((r) => r.generatorCpuSeconds)), stealPercent: median(rs.map((r) => r.stealPercent)), errors: rs.reduce((a, r) => a + r.errors, 0), percentilesMs: medianPercentiles(rs),
  }));
}

export function computeFailoverMedians(trials: FailoverRecord[]): FailoverMedian[] {
  const groups = new Map<string, FailoverRecord[]>();
  for (const t of trials) groups.set(t.variant, [...(groups.get(t.variant) ?? []), t]);
  return [...groups.values()].map((ts) => {
    const times = ts.map((t) => t.failoverMs).filter((v): v is number => v !== null);
    return {
      variant: ts[0].variant, system: ts[0].system, serverNode: ts[0].serverNode, concurrency: ts[0].concurrency, trials: ts.length,
      medianMs: median(times), maxMs: times.length ? Math.max(...times) : NaN, lost: ts.reduce((a, t) => a + t.lost, 0),
      unverified: ts.reduce((a, t) => a + t.unverified, 0), recovered: times.length,
    };
  });
}

/** The cairn variant the headline lines use: Node 26 when it ran, else the last one run. */
function headlineVariant(variants: Variant[]): Variant | undefined {
  const cairns = variants.filter((v) => v.system === 'cairn');
  return cairns.find((v) => v.node?.major === HEADLINE_NODE_MAJOR) ?? cairns[cairns.length - 1];
}

export function summaryLines(variants: Variant[], medians: MedianRecord[], failovers: FailoverMedian[], opts: BenchOptions): string[] {
  const headline = headlineVariant(variants);
  const others = variants.filter((v) => v.system === 'cairn' && v !== headline);
  const etcd = variants.find((v) => v.system === 'etcd');
  const find = (v: Variant | undefined, w: string, c: number): SteadySummary | undefined => {
    const m = v && medians.find((x) => x.variant === v.label && x.workload === w && x.concurrency === c);
    return m ? { opsPerSec: m.opsPerSec, p99Ms: m.p99Ms, serverCpuMsPerOp: m.serverCpuMsPerOp } : undefined;
  };
  const findFailover = (v: Variant | undefined): FailoverSummary | undefined => {
    const m = v && failovers.find((x) => x.variant === v.label);
    return m ? { medianMs: m.medianMs, maxMs: m.maxMs, lost: m.lost } : undefined;
  };
  const linesFor = (cairn: Variant | undefined): string[] => {
    const lines: string[] = [];
    for (const w of opts.workloads) {
      if (w === 'failover') lines.push(failoverSummaryLine(opts.failoverConcurrency, findFailover(cairn), findFailover(etcd)));
      else if (w === 'rate') lines.push(rateSummaryLine(opts.ratePerSec, find(cairn, w, RATE_MAX_IN_FLIGHT), find(etcd, w, RATE_MAX_IN_FLIGHT)));
      else for (const c of w === 'put' ? opts.putConcurrency : [opts.readConcurrency]) lines.push(steadySummaryLine(w, c, find(cairn, w, c), find(etcd, w, c)));
    }
    return lines;
  };
  return [...others.flatMap((v) => linesFor(v).map((l) => nodePrefixed(v.node!.major, l))), ...linesFor(headline)];
}

function variantsFor(opts: BenchOptions): Variant[] {
  const variants: Variant[] = [];
  if (opts.systems.includes('cairn')) {
    for (const major of opts.nodeMajors) {
      let node: NodeBinary;
      try {
        node = resolveNode(major);
      } catch (err) {
        problems.push(`Node.js ${major}: ${(err as Error).message}`);
        console.log(`Node.js ${major} is not available (${(err as Error).message}); cairn runs on the others`);
        continue;
      }
      if (variants.some((v) => v.node?.path === node.path)) continue;
      variants.push({ system: 'cairn', label: `cairn@node${node.major}`, node, runtime: `node ${node.version}` });
    }
  }
  if (opts.systems.includes('etcd')) {
    const etcdBinary = findEtcd();
    if (etcdBinary) variants.push({ system: 'etcd', label: 'etcd', etcdBinary, runtime: etcdVersion(etcdBinary) });
    else console.log('etcd: no etcd binary on PATH; running cairn only (apt-get install etcd-server)');
  }
  return variants;
}

/** Alternates the systems: cairn, etcd, cairn (other Node), ... and rotates the order each round. */
function interleave(variants: Variant[], round: number): Variant[] {
  const cairns = variants.filter((v) => v.system === 'cairn');
  const etcd = variants.filter((v) => v.system === 'etcd');
  const order: Variant[] = [];
  for (let i = 0; i < Math.max(cairns.length, etcd.length); i++) {
    if (cairns[i]) order.push(cairns[i]);
    if (i === 0 && etcd[0]) order.push(etcd[0]);
  }
  const shift = (round - 1) % order.length;
  return [...order.slice(shift), ...order.slice(0, shift)];
}

function generatorNote(opts: BenchOptions): string {
  return `on the machine's Node.js (${MACHINE_NODE.version}) for every system; one process, ${opts.generators} for steady-state runs at C >= ${MULTI_GENERATOR_MIN_CONCURRENCY} (not the fill)`;
}

async function guarded(what: string, work: () => Promise<void>): Promise<void> {
  try {
    await work();
  } catch (err) {
    problems.push(`${what}: ${(err as Error).message}`);
    console.log(`${what} failed: ${(err as Error).message}`);
  }
}

async function main(): Promise<void> {
  const opts = parseOptions(process.argv.slice(2));
  const startedAt = new Date().toISOString();
  const commit = currentCommit();
  const machine = machineInfo();
  const variants = variantsFor(opts);
  console.log(`machine: ${machine.nproc} cores, ${machine.cpuModel}, ${machine.disk}, load ${machine.loadAverageAtStart.map((l) => l.toFixed(2)).join(' ')}`);
  console.log(`generator: ${generatorNote(opts)}; systems: ${variants.map((v) => `${v.label} (${v.runtime})`).join(', ')}`);
  console.log(`method: closed loop, ${opts.keys} keys of 16 B, values of ${opts.valueBytes} B, warm-up ${opts.warmupSeconds} s${clusterWarmupNote(opts.clusterWarmupSeconds)}, measured ${opts.durationSeconds} s, leader-targeted, ceil(C/16) channels (at most 8)`);
  const runs: RunRecord[] = [];
  const failovers: FailoverRecord[] = [];
  for (let round = 1; round <= opts.rounds; round++) {
    for (const v of interleave(variants, round)) await guarded(`${v.label} round ${round}`, () => roundOfVariant(v, round, opts, runs));
  }
  if (opts.workloads.includes('failover')) {
    for (let trial = 1; trial <= opts.trials; trial++) {
      for (const v of interleave(variants, trial)) await guarded(`${v.label} failover trial ${trial}`, async () => void failovers.push(await failoverTrial(v, trial, opts)));
    }
  }
  const medians = computeMedians(runs);
  const failoverMedians = computeFailoverMedians(failovers);
  const lines = summaryLines(variants, medians, failoverMedians, opts);
  if (opts.json) {
    const json: BenchJson = {
      startedAt, finishedAt: new Date().toISOString(), commit, options: opts, machine, generatorNode: process.version,
      generatorNote: generatorNote(opts), runs, failovers, medians, failoverMedians, summaryLines: lines, problems,
    };
    writeFileSync(opts.json, `${JSON.stringify(json, null, 1)}\n`);
    const written = writeReport(opts.json);
    console.log(`wrote ${opts.json}; report: ${written.join(', ')}`);
  }
  if (problems.length) {
    console.log(`\nproblems (${problems.length}):`);
    for (const p of problems) console.log(`  ${p}`);
    process.exitCode = 1;
  }
  console.log('');
  for (const line of lines) console.log(line);
}

if (require.main === module) {
  // Children and temp dirs go with us, however we end.
  process.on('SIGINT', () => {
    killEverything();
    process.exit(130);
  });
  process.on('SIGTERM', () => {
    killEverything();
    process.exit(143);
  });
  process.on('exit', killEverything);
  main().catch((err) => {
    console.error((err as Error).message ?? err);
    killEverything();
    process.exitCode = 1;
  });
}
