/**
 * Latency histograms, percentiles, medians and the summary lines `npm run bench` ends with.
 * Pure functions only (test/unit/bench-stats.test.ts pins the exact line forms).
 */

/** Latencies below this many microseconds get one bucket per microsecond. */
const LINEAR_LIMIT_US = 128;
/** Buckets per power of two above LINEAR_LIMIT_US: a relative error under 1/128 (0.8%). */
const SUB_BUCKETS_PER_OCTAVE = 128;
const LINEAR_LIMIT_LOG2 = 7;
/** Largest latency the histogram tells apart: 2^37 µs (about 38 hours); longer ones land in the last bucket. */
const MAX_LOG2_US = 37;
const BUCKET_COUNT = LINEAR_LIMIT_US + (MAX_LOG2_US - LINEAR_LIMIT_LOG2) * SUB_BUCKETS_PER_OCTAVE;

/** The percentiles every run records: p1..p99, then p99.9. */
export const RECORDED_PERCENTILES: readonly number[] = [...Array.from({ length: 99 }, (_, i) => i + 1), 99.9];

function bucketOf(us: number): number {
  if (!(us >= 0)) return 0;
  if (us < LINEAR_LIMIT_US) return Math.floor(us);
  const octave = Math.min(Math.floor(Math.log2(us)), MAX_LOG2_US - 1);
  const width = 2 ** (octave - LINEAR_LIMIT_LOG2);
  const sub = Math.min(Math.floor(us / width) - SUB_BUCKETS_PER_OCTAVE, SUB_BUCKETS_PER_OCTAVE - 1);
  return LINEAR_LIMIT_US + (octave - LINEAR_LIMIT_LOG2) * SUB_BUCKETS_PER_OCTAVE + Math.max(0, sub);
}

/** [lower, upper) of a bucket, in microseconds. */
function bucketBounds(index: number): [number, number] {
  if (index < LINEAR_LIMIT_US) return [index, index + 1];
  const octave = LINEAR_LIMIT_LOG2 + Math.floor((index - LINEAR_LIMIT_US) / SUB_BUCKETS_PER_OCTAVE);
  const sub = (index - LINEAR_LIMIT_US) % SUB_BUCKETS_PER_OCTAVE;
  const width = 2 ** (octave - LINEAR_LIMIT_LOG2);
  const lower = (SUB_BUCKETS_PER_OCTAVE + sub) * width;
  return [lower, lower + width];
}

/** A histogram of latencies in log buckets (HdrHistogram-like), mergeable across processes. */
export class LatencyHistogram {
  private readonly counts = new Float64Array(BUCKET_COUNT);
  count = 0;
  minUs = Infinity;
  maxUs = 0;
  sumUs = 0;

  recordUs(us: number): void {
    this.counts[bucketOf(us)]++;
    this.count++;
    if (us < this.minUs) this.minUs = us;
    if (us > this.maxUs) this.maxUs = us;
    this.sumUs += us;
  }

  merge(other: LatencyHistogram): void {
    for (let i = 0; i < BUCKET_COUNT; i++) this.counts[i] += other.counts[i];
    this.count += other.count;
    this.minUs = Math.min(this.minUs, other.minUs);
    this.maxUs = Math.max(this.maxUs, other.maxUs);
    this.sumUs += other.sumUs;
  }

  /**
   * The latency at percentile `p` (0 < p <= 100) in microseconds: the midpoint of the bucket
   * holding the sample of that rank, clamped to the exact smallest and largest samples
   * (p100 is the largest sample).
   */
  percentileUs(p: number): number {
    if (this.count === 0) return NaN;
    const rank = Math.max(1, Math.ceil((p / 100) * this.count));
    if (rank >= this.count) return this.maxUs;
    let seen = 0;
    for (let i = 0; i < BUCKET_COUNT; i++) {
      seen += this.counts[i];
      if (seen >= rank) {
        if (i === BUCKET_COUNT - 1) return this.maxUs; // the overflow bucket has no useful midpoint
        const [lower, upper] = bucketBounds(i);
        return Math.min(this.maxUs, Math.max(this.minUs, (lower + upper) / 2));
      }
    }
    return this.maxUs;
  }

  /** Sparse [bucket, count] pairs: what crosses a process boundary as JSON. */
  toJSON(): SerializedHistogram {
    const buckets: Array<[number, number]> = [];
    this.counts.forEach((n, i) => {
      if (n > 0) buckets.push([i, n]);
    });
    return { buckets, count: this.count, minUs: this.count ? this.minUs : 0, maxUs: this.maxUs, sumUs: this.sumUs };
  }

  static fromJSON(data: SerializedHistogram): LatencyHistogram {
    const histogram = new LatencyHistogram();
    for (const [i, n] of data.buckets) histogram.counts[i] = n;
    histogram.count = data.count;
    histogram.minUs = data.count ? data.minUs : Infinity;
    histogram.maxUs = data.maxUs;
    histogram.sumUs = data.sumUs;
    return histogram;
  }
}

export interface SerializedHistogram {
  buckets: Array<[number, number]>;
  count: number;
  minUs: number;
  maxUs: number;
  sumUs: number;
}

/** The recorded percentiles in milliseconds, as [percentile, ms] pairs (p1..p99, p99.9). */
export function percentileListMs(histogram: LatencyHistogram): Array<[number, number]> {
  return RECORDED_PERCENTILES.map((p) => [p, histogram.percentileUs(p) / 1000]);
}

/** The median of a list (the mean of the middle two for an even count); NaN when empty. */
export function median(values: readonly number[]): number {
  const finite = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  if (finite.length === 0) return NaN;
  const mid = finite.length >> 1;
  return finite.length % 2 ? finite[mid] : (finite[mid - 1] + finite[mid]) / 2;
}

/** What a summary line says of one system for one steady-state workload. */
export interface SteadySummary {
  opsPerSec: number;
  p99Ms: number;
  /** All three servers' CPU per operation. */
  serverCpuMsPerOp?: number;
}

/** What a failover line says of one system. */
export interface FailoverSummary {
  medianMs: number;
  maxMs: number;
  lost: number;
}

function steadyPart(name: string, s: SteadySummary | undefined): string {
  if (!s || !Number.isFinite(s.opsPerSec)) return `${name} -`;
  return `${name} ${Math.round(s.opsPerSec)} ops/s p99 ${Number.isFinite(s.p99Ms) ? s.p99Ms.toFixed(1) : '-'} ms`;
}

/**
 * `put c=64: cairn 5123 ops/s p99 31.2 ms | etcd 3512 ops/s p99 48.0 ms | ratio 1.46`
 * (ratio = cairn ops/s / etcd ops/s; `etcd -` and `ratio -` when a side did not run).
 */
export function steadySummaryLine(workload: string, concurrency: number, cairn: SteadySummary | undefined, etcd: SteadySummary | undefined): string {
  const ratio = cairn && etcd && etcd.opsPerSec > 0 && Number.isFinite(cairn.opsPerSec) ? (cairn.opsPerSec / etcd.opsPerSec).toFixed(2) : '-';
  return `${workload} c=${concurrency}: ${steadyPart('cairn', cairn)} | ${steadyPart('etcd', etcd)} | ratio ${ratio}`;
}

function ratePart(name: string, s: SteadySummary | undefined): string {
  if (!s || !Number.isFinite(s.serverCpuMsPerOp ?? NaN)) return `${name} -`;
  return `${name} ${s.serverCpuMsPerOp!.toFixed(3)} ms cpu/put at ${Math.round(s.opsPerSec)} puts/s p99 ${Number.isFinite(s.p99Ms) ? s.p99Ms.toFixed(1) : '-'} ms`;
}

/**
 * `rate 1000/s: cairn 0.950 ms cpu/put at 999 puts/s p99 4.1 ms | etcd 0.420 ms cpu/put at 1000 puts/s p99 2.3 ms | ratio 0.44`
 * (the servers' CPU per put at the same offered rate; ratio = etcd's / cairn's, so above
 * 1.0 cairn is the cheaper).
 */
export function rateSummaryLine(ratePerSec: number, cairn: SteadySummary | undefined, etcd: SteadySummary | undefined): string {
  const c = cairn?.serverCpuMsPerOp ?? NaN;
  const e = etcd?.serverCpuMsPerOp ?? NaN;
  const ratio = Number.isFinite(c) && Number.isFinite(e) && c > 0 ? (e / c).toFixed(2) : '-';
  return `rate ${ratePerSec}/s: ${ratePart('cairn', cairn)} | ${ratePart('etcd', etcd)} | ratio ${ratio}`;
}

function failoverPart(name: string, s: FailoverSummary | undefined): string {
  if (!s) return `${name} -`;
  const ms = (v: number) => (Number.isFinite(v) ? `${Math.round(v)} ms` : '- ms');
  return `${name} median ${ms(s.medianMs)} max ${ms(s.maxMs)} lost ${s.lost}`;
}

/** `failover c=16: cairn median 412 ms max 630 ms lost 0 | etcd median 2010 ms max 2400 ms lost 0` */
export function failoverSummaryLine(concurrency: number, cairn: FailoverSummary | undefined, etcd: FailoverSummary | undefined): string {
  return `failover c=${concurrency}: ${failoverPart('cairn', cairn)} | ${failoverPart('etcd', etcd)}`;
}

/** The line for a Node version other than the headline one: `node20 put c=64: ...`. */
export function nodePrefixed(nodeMajor: number, line: string): string {
  return `node${nodeMajor} ${line}`;
}
