/**
 * The load generator: a process of its own (never sharing an event loop with a server),
 * started by bench/run.ts with one job as JSON in argv[2]; prints its result as one line of
 * JSON on stdout and exits. The same closed loop drives cairn and etcd: `concurrency`
 * workers, each with one request in flight, spread over `channels` gRPC connections.
 *
 * Retry policy (the same for both systems): on an error a worker moves to the next
 * endpoint, pauses RETRY_PAUSE_MS, and goes on with its next request. A request whose call
 * failed is never counted as acknowledged.
 *
 * Every loop is bounded in time (the job's durations, plus one request timeout to drain)
 * and, for the fill and the read-back, in count. Traffic goes only to the job's endpoints,
 * which run.ts puts on 127.0.0.1.
 */
import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { LatencyHistogram, SerializedHistogram } from './stats';
import { errorMessage, KvChannel, SystemName } from './targets';

export const RETRY_PAUSE_MS = 20;
/** Error messages kept per run (the count covers all of them). */
const FIRST_ERRORS_KEPT = 5;
/** Attempts per key in the fill and in the read-back before it counts as failed. */
const MAX_ATTEMPTS_PER_KEY = 10;
/** Requests in flight while reading back acknowledged writes after a failover. */
const READBACK_CONCURRENCY = 64;
/** Keys are exactly this long: "k" and a zero-padded index. */
export const KEY_BYTES = 16;
/** How long the generator waits for a new leader before reading back. */
const NEW_LEADER_DEADLINE_MS = 30_000;

export type SteadyWorkload = 'put' | 'get' | 'sget' | 'mix' | 'fill' | 'rate';

interface JobBase {
  system: SystemName;
  /** Client addresses of the nodes (127.0.0.1:port). */
  endpoints: string[];
  /** The endpoint every worker starts on (the leader when the run begins). */
  startEndpoint: number;
  concurrency: number;
  channels: number;
  keys: number;
  valueBytes: number;
  requestTimeoutMs: number;
  /** Server processes whose CPU time and RSS are sampled over the measured window. */
  serverPids: number[];
}

export interface SteadyJob extends JobBase {
  kind: 'steady';
  workload: SteadyWorkload;
  warmupMs: number;
  durationMs: number;
  /** For 'mix': the share of requests that are (linearizable) reads. */
  readFraction: number;
  /** For 'rate': puts per second, spread over the workers (each waits for its slot). */
  ratePerSec?: number;
}

export interface FailoverJob extends JobBase {
  kind: 'failover';
  /** Put load before the kill (a warm-up; not measured). */
  preKillMs: number;
  /** Put load kept up after the first acknowledged post-kill write. */
  postRecoveryMs: number;
  /** Longest wait for a post-kill write to be acknowledged before giving up. */
  maxRecoveryMs: number;
  leaderPid: number;
}

export type GeneratorJob = SteadyJob | FailoverJob;

export interface ProcessSample {
  pid: number;
  cpuSeconds: number;
  rssMiB: number;
}

export interface SteadyResult {
  kind: 'steady';
  ops: number;
  measuredSeconds: number;
  opsPerSec: number;
  errors: number;
  firstErrors: string[];
  /** Reads that found no value (after a fill every read should hit). */
  misses: number;
  histogram: SerializedHistogram;
  serverCpuSeconds: number[];
  serverRssMiB: number[];
  generatorCpuSeconds: number;
  /** The machine's CPU time stolen by the hypervisor during the window, as a percentage of all CPU time (NaN where /proc/stat has no steal column). */
  stealPercent: number;
}

export interface FailoverResult {
  kind: 'failover';
  /** From the kill to the first acknowledgement of a write issued after the kill; null if none came. */
  failoverMs: number | null;
  ackedWrites: number;
  keysChecked: number;
  lost: number;
  firstLost: string[];
  /** Acknowledged keys whose read-back never succeeded (neither lost nor confirmed). */
  unverified: number;
  errors: number;
  firstErrors: string[];
}

export type GeneratorResult = SteadyResult | FailoverResult;

export function keyOf(index: number): Buffer {
  return Buffer.from(`k${String(index).padStart(KEY_BYTES - 1, '0')}`);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** CLK_TCK: Linux reports utime/stime in these; 100 on every mainstream kernel config. */
const CLOCK_TICKS_PER_SECOND = 100;

/** utime + stime of a process, in seconds (NaN once it is gone). */
export function processCpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // After "pid (comm) ": state is field 3, so utime (14) and stime (15) are at 11 and 12.
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SECOND;
  } catch {
    return NaN;
  }
}

/**
 * The machine's CPU times from /proc/stat's aggregate `cpu` line, in ticks: the total and
 * the steal (time the hypervisor ran someone else while this machine's vCPUs wanted to
 * run). NaN fields where the kernel does not report them.
 */
export function machineCpuTicks(): { total: number; steal: number } {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0];
    // cpu user nice system idle iowait irq softirq steal guest guest_nice (guest time is already in user)
    const fields = line.trim().split(/\s+/).slice(1, 9).map(Number);
    if (fields.length < 8 || fields.some((v) => !Number.isFinite(v))) return { total: NaN, steal: NaN };
    return { total: fields.reduce((a, b) => a + b, 0), steal: fields[7] };
  } catch {
    return { total: NaN, steal: NaN };
  }
}

/** Stolen CPU between two machineCpuTicks() samples, as a percentage of all CPU time between them. */
export function stealPercentBetween(from: { total: number; steal: number }, to: { total: number; steal: number }): number {
  const total = to.total - from.total;
  return total > 0 ? (100 * (to.steal - from.steal)) / total : NaN;
}

export function processRssMiB(pid: number): number {
  try {
    const kib = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]);
    return kib / 1024;
  } catch {
    return NaN;
  }
}

/** If the window's timers are this late, the run stops anyway (a bound on the loop). */
const WINDOW_TIMER_SLACK_MS = 30_000;

/** The measured window: CPU of the servers and of this process, sampled when it opens and closes. */
class MeasuredWindow {
  private openedAt?: number;
  private closedAt?: number;
  private cpuAtOpen: number[] = [];
  private genAtOpen = process.cpuUsage();
  private machineAtOpen = machineCpuTicks();
  serverCpuSeconds: number[] = [];
  serverRssMiB: number[] = [];
  generatorCpuSeconds = NaN;
  stealPercent = NaN;

  constructor(private readonly pids: number[]) {}

  get isOpen(): boolean {
    return this.openedAt !== undefined && this.closedAt === undefined;
  }

  get closed(): boolean {
    return this.closedAt !== undefined;
  }

  get seconds(): number {
    return this.openedAt === undefined || this.closedAt === undefined ? NaN : (this.closedAt - this.openedAt) / 1000;
  }

  open(): void {
    this.cpuAtOpen = this.pids.map(processCpuSeconds);
    this.genAtOpen = process.cpuUsage();
    this.machineAtOpen = machineCpuTicks();
    this.openedAt = performance.now();
  }

  close(): void {
    this.closedAt = performance.now();
    if (this.openedAt === undefined) return;
    const used = process.cpuUsage(this.genAtOpen);
    this.generatorCpuSeconds = (used.user + used.system) / 1e6;
    this.serverCpuSeconds = this.pids.map((pid, i) => processCpuSeconds(pid) - this.cpuAtOpen[i]);
    this.serverRssMiB = this.pids.map(processRssMiB);
    this.stealPercent = stealPercentBetween(this.machineAtOpen, machineCpuTicks());
  }
}

class Channels {
  /** channels[c][e]: channel c to endpoint e, opened on first use. */
  private readonly open: Array<Array<KvChannel | undefined>>;

  constructor(private readonly job: JobBase) {
    this.open = Array.from({ length: job.channels }, () => job.endpoints.map(() => undefined));
  }

  get(channel: number, endpoint: number): KvChannel {
    const row = this.open[channel];
    return (row[endpoint] ??= new KvChannel(this.job.system, this.job.endpoints[endpoint]));
  }

  closeAll(): void {
    for (const row of this.open) for (const c of row) c?.close();
  }
}

class ErrorLog {
  count = 0;
  readonly first: string[] = [];
  add(err: unknown): void {
    this.count++;
    if (this.first.length < FIRST_ERRORS_KEPT) this.first.push(errorMessage(err));
  }
}

/** A worker's place: its channel and the endpoint it currently talks to. */
class Worker {
  endpoint: number;
  constructor(readonly channel: number, start: number, private readonly endpointCount: number) {
    this.endpoint = start;
  }
  async failedOver(): Promise<void> {
    this.endpoint = (this.endpoint + 1) % this.endpointCount;
    await sleep(RETRY_PAUSE_MS);
  }
}

function makeWorkers(job: JobBase): Worker[] {
  return Array.from({ length: job.concurrency }, (_, i) => new Worker(i % job.channels, job.startEndpoint, job.endpoints.length));
}

function fillerValue(bytes: number): Buffer {
  const value = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i++) value[i] = 97 + ((i * 7) % 26);
  return value;
}

/** A value unique to (worker, sequence), padded to `bytes`. */
function uniqueValue(worker: number, sequence: number, bytes: number): Buffer {
  const value = fillerValue(bytes);
  value.write(`w${worker}s${sequence}:`, 0);
  return value;
}

async function runFill(job: SteadyJob, channels: Channels, errors: ErrorLog): Promise<SteadyResult> {
  const value = fillerValue(job.valueBytes);
  const histogram = new LatencyHistogram();
  let next = 0;
  let failedKeys = 0;
  const deadline = performance.now() + job.durationMs;
  const started = performance.now();
  await Promise.all(
    makeWorkers(job).map(async (worker) => {
      while (next < job.keys && performance.now() < deadline) {
        const key = keyOf(next++);
        let done = false;
        for (let attempt = 0; attempt < MAX_ATTEMPTS_PER_KEY && !done && performance.now() < deadline; attempt++) {
          const t0 = performance.now();
          try {
            await channels.get(worker.channel, worker.endpoint).put(key, value, job.requestTimeoutMs);
            histogram.recordUs((performance.now() - t0) * 1000);
            done = true;
          } catch (err) {
            errors.add(err);
            await worker.failedOver();
          }
        }
        if (!done) failedKeys++;
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  if (next < job.keys) errors.add(new Error(`fill stopped at its time limit after ${next} of ${job.keys} keys`));
  if (failedKeys) errors.add(new Error(`${failedKeys} keys of the fill failed ${MAX_ATTEMPTS_PER_KEY} times`));
  return {
    kind: 'steady', ops: histogram.count, measuredSeconds: seconds, opsPerSec: histogram.count / seconds, errors: errors.count, firstErrors: errors.first,
    misses: 0, histogram: histogram.toJSON(), serverCpuSeconds: [], serverRssMiB: [], generatorCpuSeconds: 0, stealPercent: NaN,
  };
}

/**
 * Hands out request start times at a fixed rate. A worker that is late takes its slot at
 * once, but never more than one interval back: a stall does not become a burst.
 */
export class Pacer {
  private readonly intervalMs: number;
  private nextAt: number;

  constructor(ratePerSec: number, private readonly now = () => performance.now(), private readonly wait = sleep) {
    this.intervalMs = 1000 / ratePerSec;
    this.nextAt = now();
  }

  async slot(): Promise<void> {
    const now = this.now();
    this.nextAt = Math.max(this.nextAt, now - this.intervalMs);
    const at = this.nextAt;
    this.nextAt += this.intervalMs;
    if (at > now) await this.wait(at - now);
  }
}

async function runSteady(job: SteadyJob): Promise<SteadyResult> {
  const channels = new Channels(job);
  const errors = new ErrorLog();
  try {
    if (job.workload === 'fill') return await runFill(job, channels, errors);
    const value = fillerValue(job.valueBytes);
    const histogram = new LatencyHistogram();
    let misses = 0;
    // The measured window is from the first sample of the servers' CPU to the second: ops
    // count when they complete inside it, so a late timer shifts the window, never skews it.
    const window = new MeasuredWindow(job.serverPids);
    const hardStop = performance.now() + job.warmupMs + job.durationMs + WINDOW_TIMER_SLACK_MS;
    const startWindow = setTimeout(() => window.open(), job.warmupMs);
    const endWindow = setTimeout(() => window.close(), job.warmupMs + job.durationMs);
    const pacer = job.workload === 'rate' && job.ratePerSec ? new Pacer(job.ratePerSec) : undefined;
    const readOf = (w: SteadyWorkload) => (w === 'get' || w === 'sget' ? true : w === 'mix' ? Math.random() < job.readFraction : false);
    await Promise.all(
      makeWorkers(job).map(async (worker) => {
        while (!window.closed && performance.now() < hardStop) {
          if (pacer) await pacer.slot();
          const key = keyOf(Math.floor(Math.random() * job.keys));
          const start = performance.now();
          try {
            const channel = channels.get(worker.channel, worker.endpoint);
            if (readOf(job.workload)) {
              const found = await channel.get(key, job.workload === 'sget', job.requestTimeoutMs);
              if (!found) misses++;
            } else {
              await channel.put(key, value, job.requestTimeoutMs);
            }
            if (window.isOpen) histogram.recordUs((performance.now() - start) * 1000);
          } catch (err) {
            errors.add(err);
            await worker.failedOver();
          }
        }
      }),
    );
    clearTimeout(startWindow);
    clearTimeout(endWindow);
    if (!window.closed) window.close();
    const seconds = window.seconds;
    return {
      kind: 'steady', ops: histogram.count, measuredSeconds: seconds, opsPerSec: histogram.count / seconds, errors: errors.count, firstErrors: errors.first,
      misses, histogram: histogram.toJSON(), serverCpuSeconds: window.serverCpuSeconds, serverRssMiB: window.serverRssMiB, generatorCpuSeconds: window.generatorCpuSeconds,
      stealPercent: window.stealPercent,
    };
  } finally {
    channels.closeAll();
  }
}

/** Per key: the last acknowledged value, and values of later writes whose outcome is unknown. */
export interface KeyHistory {
  acked?: string;
  unknownSince: string[];
}

/**
 * Whether reading `read` (undefined: no value) after the failover means an acknowledged
 * write was lost: it must be the last acknowledged value, or the value of a write issued
 * after it whose outcome is unknown (that write may have been applied and superseded it).
 */
export function isLostWrite(h: KeyHistory, read: string | undefined): boolean {
  if (h.acked === undefined) return false;
  return read !== h.acked && (read === undefined || !h.unknownSince.includes(read));
}

async function waitForNewLeader(job: FailoverJob, channels: Channels, excluded: number): Promise<number> {
  const deadline = performance.now() + NEW_LEADER_DEADLINE_MS;
  while (performance.now() < deadline) {
    for (let e = 0; e < job.endpoints.length; e++) {
      if (e === excluded) continue;
      const status = await channels.get(0, e).status(1000).catch(() => undefined);
      if (status?.isLeader) return e;
    }
    await sleep(50);
  }
  throw new Error(`no new leader among the surviving nodes within ${NEW_LEADER_DEADLINE_MS} ms`);
}

async function readBack(job: FailoverJob, channels: Channels, leader: number, history: Map<number, KeyHistory>) {
  const keys = [...history].filter(([, h]) => h.acked !== undefined);
  let next = 0;
  let lost = 0;
  let unverified = 0;
  const firstLost: string[] = [];
  await Promise.all(
    Array.from({ length: READBACK_CONCURRENCY }, async (_, i) => {
      const channel = channels.get(i % job.channels, leader);
      while (next < keys.length) {
        const [index, h] = keys[next++];
        let value: string | undefined | null = null;
        for (let attempt = 0; attempt < MAX_ATTEMPTS_PER_KEY && value === null; attempt++) {
          value = await channel.get(keyOf(index), false, job.requestTimeoutMs).then(
            (v) => v?.toString('latin1'),
            () => sleep(RETRY_PAUSE_MS).then(() => null),
          );
        }
        if (value === null) unverified++;
        else if (isLostWrite(h, value)) {
          lost++;
          if (firstLost.length < FIRST_ERRORS_KEPT) firstLost.push(`${keyOf(index)}: acked ${h.acked!.slice(0, 16)}..., read ${value === undefined ? 'nothing' : value.slice(0, 16) + '...'}`);
        }
      }
    }),
  );
  return { keysChecked: keys.length, lost, unverified, firstLost };
}

async function runFailover(job: FailoverJob): Promise<FailoverResult> {
  // kill(-1) or kill(0) would signal far more than one server.
  if (!Number.isSafeInteger(job.leaderPid) || job.leaderPid <= 1) throw new Error(`no leader process to kill (pid ${job.leaderPid})`);
  const channels = new Channels(job);
  const errors = new ErrorLog();
  const history = new Map<number, KeyHistory>();
  let ackedWrites = 0;
  let killedAt: number | undefined;
  let recoveredAt: number | undefined;
  const started = performance.now();
  const stopAt = () => (recoveredAt !== undefined ? recoveredAt + job.postRecoveryMs : killedAt !== undefined ? killedAt + job.maxRecoveryMs : Infinity);
  const killTimer = setTimeout(() => {
    killedAt = performance.now();
    process.kill(job.leaderPid, 'SIGKILL');
  }, job.preKillMs);
  try {
    await Promise.all(
      makeWorkers(job).map(async (worker, w) => {
        // Each worker owns the keys ≡ w (mod concurrency): no two writes of one key are ever in flight at once.
        const owned = Math.max(1, Math.floor((job.keys - w - 1) / job.concurrency) + 1);
        let sequence = 0;
        while (performance.now() < stopAt() && performance.now() - started < job.preKillMs + job.maxRecoveryMs + job.postRecoveryMs) {
          const index = w + job.concurrency * Math.floor(Math.random() * owned);
          const value = uniqueValue(w, ++sequence, job.valueBytes);
          const h = history.get(index) ?? { unknownSince: [] };
          history.set(index, h);
          const issuedAt = performance.now();
          try {
            await channels.get(worker.channel, worker.endpoint).put(keyOf(index), value, job.requestTimeoutMs);
            const ackedAt = performance.now();
            h.acked = value.toString('latin1');
            h.unknownSince = [];
            ackedWrites++;
            if (killedAt !== undefined && issuedAt > killedAt && (recoveredAt === undefined || ackedAt < recoveredAt)) recoveredAt = ackedAt;
          } catch (err) {
            h.unknownSince.push(value.toString('latin1'));
            errors.add(err);
            await worker.failedOver();
          }
        }
      }),
    );
    clearTimeout(killTimer);
    if (killedAt === undefined) throw new Error('the load ended before the leader was killed');
    const endpointOfKilled = job.startEndpoint;
    const leader = await waitForNewLeader(job, channels, endpointOfKilled);
    const check = await readBack(job, channels, leader, history);
    return {
      kind: 'failover', failoverMs: recoveredAt === undefined ? null : recoveredAt - killedAt, ackedWrites, ...check,
      errors: errors.count, firstErrors: errors.first,
    };
  } finally {
    clearTimeout(killTimer);
    channels.closeAll();
  }
}

async function main(): Promise<void> {
  const job = JSON.parse(process.argv[2] ?? '') as GeneratorJob;
  const result: GeneratorResult = job.kind === 'failover' ? await runFailover(job) : await runSteady(job);
  process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(0));
}

if (require.main === module) {
  main().catch((err) => {
    process.stderr.write(`generator: ${(err as Error).stack ?? err}\n`);
    process.exit(1);
  });
}
