/** The flags of `npm run bench` (docs/benchmarks.md describes them). */
import { SystemName, SYSTEMS } from './targets';

/**
 * `rate` is not in the default list: puts offered at a fixed rate (--rate), to compare the
 * servers' CPU per put at the same load. Closed-loop runs move their batch sizes with their
 * throughput, so their CPU per op is noisy (±20% here); at a fixed rate it repeats within a
 * few percent, which is what an optimization's A/B needs.
 */
export type Workload = 'put' | 'get' | 'sget' | 'mix' | 'failover' | 'rate';
export const WORKLOADS: readonly Workload[] = ['put', 'get', 'sget', 'mix', 'failover', 'rate'];
/** In-flight bound of the rate workload: a system that falls behind the rate gets at most this many requests at once. */
export const RATE_MAX_IN_FLIGHT = 256;

export interface BenchOptions {
  workloads: Workload[];
  /** Concurrencies of the put workload. */
  putConcurrency: number[];
  /** Concurrency of get, sget and mix. */
  readConcurrency: number;
  failoverConcurrency: number;
  /** Puts per second offered by the rate workload. */
  ratePerSec: number;
  durationSeconds: number;
  warmupSeconds: number;
  /** Unmeasured put load at CLUSTER_WARMUP_CONCURRENCY that every fresh cluster takes before its first run (0: none). */
  clusterWarmupSeconds: number;
  rounds: number;
  trials: number;
  valueBytes: number;
  keys: number;
  /** Node.js major versions to run cairn on; 0 stands for the machine's own node. */
  nodeMajors: number[];
  systems: SystemName[];
  /** Generator processes for steady-state runs at C >= 64 (the load and the channels are split among them). */
  generators: number;
  json?: string;
  quick: boolean;
}

export const DEFAULTS: BenchOptions = {
  workloads: ['put', 'get', 'sget', 'mix', 'failover'],
  putConcurrency: [1, 16, 64, 256],
  readConcurrency: 64,
  failoverConcurrency: 16,
  ratePerSec: 1000,
  durationSeconds: 15,
  warmupSeconds: 2,
  clusterWarmupSeconds: 5,
  rounds: 3,
  trials: 3,
  valueBytes: 256,
  keys: 100_000,
  nodeMajors: [20, 26],
  systems: ['cairn', 'etcd'],
  generators: 2,
  quick: false,
};

/** --quick: a smoke run for CI that asserts nothing about speed. */
const QUICK: Partial<BenchOptions> = {
  workloads: ['put', 'get', 'failover'],
  putConcurrency: [16],
  readConcurrency: 16,
  durationSeconds: 2,
  warmupSeconds: 1,
  clusterWarmupSeconds: 1,
  rounds: 1,
  trials: 1,
  keys: 10_000,
  nodeMajors: [0],
};

export const USAGE = `npm run bench -- [flags]
  --workloads put,get,sget,mix,failover   which workloads (default these five); also rate:
                                          puts at a fixed rate, for the servers' CPU per put
  --rate N                                puts per second of the rate workload (default 1000)
  --concurrency 1,16,64,256               in-flight requests of the put workload
  --read-concurrency N                    in-flight requests of get, sget and mix (default 64)
  --duration S                            measured seconds per run (default 15)
  --warmup S                              unmeasured seconds before each run (default 2)
  --cluster-warmup S                      unmeasured seconds of put at c=64 that each fresh
                                          cluster takes before its first run (default 5; 0: none)
  --rounds R                              rounds; the summary reports medians (default 3)
  --trials N                              failover trials per system (default 3)
  --value-bytes N                         value size (default 256)
  --keys N                                key space (default 100000)
  --node 20,26                            Node.js majors to run cairn on (default 20,26)
  --systems cairn,etcd                    systems (etcd only when an etcd binary is on PATH)
  --generators N                          generator processes for runs at C >= 64 (default 2)
  --json FILE                             write every run and the medians; then write the report
  --quick                                 CI smoke: 1 round of 2 s, put and get at c=16, 1 failover
                                          trial, 10000 keys, the machine's node; flags after it override`;

function positiveInt(flag: string, text: string | undefined): number {
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value < 1) throw new Error(`${flag} needs a positive integer, got ${JSON.stringify(text)}`);
  return value;
}

function positiveNumber(flag: string, text: string | undefined): number {
  return numberFlag(flag, text, 'a positive number', (v) => v > 0);
}

function nonNegativeNumber(flag: string, text: string | undefined): number {
  return numberFlag(flag, text, 'a number >= 0', (v) => v >= 0);
}

/** A finite number that `accepts`; an empty or missing value is an error, not zero. */
function numberFlag(flag: string, text: string | undefined, what: string, accepts: (value: number) => boolean): number {
  const value = Number(text);
  if (text === undefined || text.trim() === '' || !Number.isFinite(value) || !accepts(value)) throw new Error(`${flag} needs ${what}, got ${JSON.stringify(text)}`);
  return value;
}

function list<T extends string>(flag: string, text: string | undefined, allowed: readonly T[]): T[] {
  const items = (text ?? '').split(',').filter(Boolean);
  const bad = items.filter((i) => !allowed.includes(i as T));
  if (items.length === 0 || bad.length) throw new Error(`${flag}: expected a comma-separated list of ${allowed.join(', ')}; got ${JSON.stringify(text)}`);
  return [...new Set(items as T[])];
}

export function parseOptions(argv: string[]): BenchOptions {
  const options: BenchOptions = { ...DEFAULTS };
  if (argv.includes('--quick')) Object.assign(options, QUICK, { quick: true });
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    if (flag === '--quick') continue;
    if (flag === '--help' || flag === '-h') throw new Error(USAGE);
    const value = argv[++i];
    switch (flag) {
      case '--workloads': options.workloads = list(flag, value, WORKLOADS); break;
      case '--concurrency': options.putConcurrency = (value ?? '').split(',').map((v) => positiveInt(flag, v)); break;
      case '--read-concurrency': options.readConcurrency = positiveInt(flag, value); break;
      case '--rate': options.ratePerSec = positiveInt(flag, value); break;
      case '--duration': options.durationSeconds = positiveNumber(flag, value); break;
      case '--warmup': options.warmupSeconds = positiveNumber(flag, value); break;
      case '--cluster-warmup': options.clusterWarmupSeconds = nonNegativeNumber(flag, value); break;
      case '--rounds': options.rounds = positiveInt(flag, value); break;
      case '--trials': options.trials = positiveInt(flag, value); break;
      case '--value-bytes': options.valueBytes = positiveInt(flag, value); break;
      case '--keys': options.keys = positiveInt(flag, value); break;
      case '--node': options.nodeMajors = (value ?? '').split(',').map((v) => positiveInt(flag, v)); break;
      case '--systems': options.systems = list(flag, value, SYSTEMS); break;
      case '--generators': options.generators = positiveInt(flag, value); break;
      case '--json': if (!value) throw new Error('--json needs a file name'); options.json = value; break;
      default: throw new Error(`unknown flag ${flag}\n${USAGE}`);
    }
  }
  return options;
}

/** The cluster warm-up's in-flight requests: enough for every server's hot paths to be compiled within seconds. */
export const CLUSTER_WARMUP_CONCURRENCY = 64;

/** How the run and the report describe the cluster warm-up: "" when there is none. */
export function clusterWarmupNote(clusterWarmupSeconds: number | undefined): string {
  return clusterWarmupSeconds ? ` (each fresh cluster first ${clusterWarmupSeconds} s of put at c=${CLUSTER_WARMUP_CONCURRENCY})` : '';
}

/** ceil(C/16) channels, at most 8: 1 for C <= 16, 4 at 64, 8 from 113 up. */
export const REQUESTS_PER_CHANNEL = 16;
export const MAX_CHANNELS = 8;
export function channelsFor(concurrency: number): number {
  return Math.min(MAX_CHANNELS, Math.ceil(concurrency / REQUESTS_PER_CHANNEL));
}
