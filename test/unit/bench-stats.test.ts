/**
 * The benchmark's arithmetic and output forms: histogram percentiles, medians, the exact
 * summary lines scripts read, the channel rule, and the hand-written etcd wire codec.
 */
import {
  decodePutResponse,
  decodeRangeResponse,
  decodeRequestForTest,
  decodeStatusResponse,
  encodePutRequest,
  encodeRangeRequest,
  encodeRangeResponseForTest,
  encodeStatusResponseForTest,
} from '../../bench/etcd-codec';
import { isLostWrite, machineCpuTicks, Pacer, stealPercentBetween } from '../../bench/generator';
import { channelsFor, parseOptions, RATE_MAX_IN_FLIGHT } from '../../bench/options';
import { computeFailoverMedians, computeMedians, FailoverRecord, RunRecord, summaryLines, Variant } from '../../bench/run';
import { failoverSummaryLine, LatencyHistogram, median, nodePrefixed, percentileListMs, rateSummaryLine, RECORDED_PERCENTILES, steadySummaryLine } from '../../bench/stats';

/** The form docs/benchmarks.md promises for steady-state summary lines. */
const STEADY_LINE = /^(put|get|sget|mix) c=\d+: cairn (\d+ ops\/s p99 \d+\.\d ms|-) \| etcd (\d+ ops\/s p99 \d+\.\d ms|-) \| ratio (\d+\.\d\d|-)$/;

describe('LatencyHistogram', () => {
  const uniform = () => {
    const h = new LatencyHistogram();
    for (let us = 1; us <= 100_000; us++) h.recordUs(us);
    return h;
  };

  it('finds percentiles within 1% of the exact sample', () => {
    const h = uniform();
    for (const p of [1, 10, 50, 90, 99, 99.9]) {
      const exact = Math.ceil((p / 100) * 100_000);
      expect(Math.abs(h.percentileUs(p) - exact) / exact).toBeLessThan(0.01);
    }
  });

  it('is exact below 128 µs, and clamps to the smallest and largest sample', () => {
    const h = new LatencyHistogram();
    for (const us of [3, 3, 7, 90]) h.recordUs(us);
    expect(h.percentileUs(50)).toBe(3.5);
    expect(h.percentileUs(100)).toBe(90);
    const single = new LatencyHistogram();
    single.recordUs(12_345.6);
    expect(single.percentileUs(1)).toBe(12_345.6);
    expect(single.percentileUs(99.9)).toBe(12_345.6);
    expect(new LatencyHistogram().percentileUs(50)).toBeNaN();
  });

  it('keeps very long latencies in order instead of wrapping', () => {
    const h = new LatencyHistogram();
    h.recordUs(10);
    h.recordUs(5e12);
    expect(h.percentileUs(100)).toBe(5e12);
    expect(h.percentileUs(50)).toBe(10.5);
  });

  it('merges and crosses JSON without changing a percentile', () => {
    const a = new LatencyHistogram();
    const b = new LatencyHistogram();
    const all = new LatencyHistogram();
    for (let i = 1; i <= 5000; i++) {
      const us = (i * 7919) % 20_000;
      (i % 2 ? a : b).recordUs(us);
      all.recordUs(us);
    }
    const merged = LatencyHistogram.fromJSON(JSON.parse(JSON.stringify(a.toJSON())));
    merged.merge(LatencyHistogram.fromJSON(JSON.parse(JSON.stringify(b.toJSON()))));
    expect(merged.count).toBe(5000);
    for (const p of RECORDED_PERCENTILES) expect(merged.percentileUs(p)).toBe(all.percentileUs(p));
  });

  it('lists p1..p99 and p99.9 in ms, rising', () => {
    const list = percentileListMs(uniform());
    expect(list.map(([p]) => p)).toEqual([...Array.from({ length: 99 }, (_, i) => i + 1), 99.9]);
    expect(list[49][1]).toBeCloseTo(50, 0);
    for (let i = 1; i < list.length; i++) expect(list[i][1]).toBeGreaterThanOrEqual(list[i - 1][1]);
  });
});

describe('median', () => {
  it('takes the middle, or the mean of the middle two, ignoring NaN', () => {
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 3, 2])).toBe(2.5);
    expect(median([5, NaN])).toBe(5);
    expect(median([])).toBeNaN();
  });
});

describe('summary lines', () => {
  it('have the exact steady-state form', () => {
    const line = steadySummaryLine('put', 64, { opsPerSec: 5123.4, p99Ms: 31.24 }, { opsPerSec: 3512.2, p99Ms: 48 });
    expect(line).toBe('put c=64: cairn 5123 ops/s p99 31.2 ms | etcd 3512 ops/s p99 48.0 ms | ratio 1.46');
    expect(line).toMatch(STEADY_LINE);
  });

  it('say "etcd -" and "ratio -" without etcd', () => {
    const line = steadySummaryLine('sget', 64, { opsPerSec: 9000.6, p99Ms: 4 }, undefined);
    expect(line).toBe('sget c=64: cairn 9001 ops/s p99 4.0 ms | etcd - | ratio -');
    expect(line).toMatch(STEADY_LINE);
  });

  it('have the exact failover form', () => {
    expect(failoverSummaryLine(16, { medianMs: 412.4, maxMs: 630, lost: 0 }, { medianMs: 2010, maxMs: 2399.6, lost: 0 })).toBe(
      'failover c=16: cairn median 412 ms max 630 ms lost 0 | etcd median 2010 ms max 2400 ms lost 0',
    );
    expect(failoverSummaryLine(16, { medianMs: 412, maxMs: 630, lost: 2 }, undefined)).toBe('failover c=16: cairn median 412 ms max 630 ms lost 2 | etcd -');
  });

  it('put the Node 26 lines last and prefix the others', () => {
    const node = (major: number) => ({ path: `/bin/node${major}`, version: `v${major}.0.0`, major });
    const variants: Variant[] = [
      { system: 'cairn', label: 'cairn@node20', node: node(20), runtime: 'node v20.0.0' },
      { system: 'cairn', label: 'cairn@node26', node: node(26), runtime: 'node v26.0.0' },
      { system: 'etcd', label: 'etcd', runtime: 'etcd 3.4.23' },
    ];
    const run = (variant: string, round: number, opsPerSec: number, p99Ms: number): RunRecord =>
      ({ variant, system: variant === 'etcd' ? 'etcd' : 'cairn', workload: 'put', concurrency: 64, round, opsPerSec, p50Ms: 1, p99Ms, p999Ms: 1, serverCpuMsPerOp: 1, generatorCpuSeconds: 1, errors: 0, percentilesMs: [[50, 1]] }) as RunRecord;
    const runs = [run('cairn@node20', 1, 1000, 10), run('cairn@node20', 2, 3000, 30), run('cairn@node20', 3, 2000, 20), run('cairn@node26', 1, 4000, 5), run('etcd', 1, 2000, 8)];
    const trial = (variant: string, failoverMs: number | null): FailoverRecord => ({ variant, system: variant === 'etcd' ? 'etcd' : 'cairn', concurrency: 16, failoverMs, lost: 0, unverified: 0 }) as FailoverRecord;
    const failovers = computeFailoverMedians([trial('cairn@node26', 300), trial('cairn@node26', 500), trial('cairn@node26', 400), trial('etcd', 2000), trial('cairn@node20', null)]);
    const opts = { ...parseOptions([]), workloads: ['put' as const, 'failover' as const], putConcurrency: [64], failoverConcurrency: 16 };
    expect(summaryLines(variants, computeMedians(runs), failovers, opts)).toEqual([
      'node20 put c=64: cairn 2000 ops/s p99 20.0 ms | etcd 2000 ops/s p99 8.0 ms | ratio 1.00',
      'node20 failover c=16: cairn median - ms max - ms lost 0 | etcd median 2000 ms max 2000 ms lost 0',
      'put c=64: cairn 4000 ops/s p99 5.0 ms | etcd 2000 ops/s p99 8.0 ms | ratio 2.00',
      'failover c=16: cairn median 400 ms max 500 ms lost 0 | etcd median 2000 ms max 2000 ms lost 0',
    ]);
  });

  it('have the exact rate form: CPU per put at the same rate, ratio etcd / cairn', () => {
    expect(rateSummaryLine(1000, { opsPerSec: 999.4, p99Ms: 4.12, serverCpuMsPerOp: 0.95 }, { opsPerSec: 1000, p99Ms: 2.3, serverCpuMsPerOp: 0.418 })).toBe(
      'rate 1000/s: cairn 0.950 ms cpu/put at 999 puts/s p99 4.1 ms | etcd 0.418 ms cpu/put at 1000 puts/s p99 2.3 ms | ratio 0.44',
    );
    expect(rateSummaryLine(500, { opsPerSec: 500, p99Ms: 3, serverCpuMsPerOp: 1 }, undefined)).toBe('rate 500/s: cairn 1.000 ms cpu/put at 500 puts/s p99 3.0 ms | etcd - | ratio -');
  });

  it('give the rate workload its line from the medians', () => {
    const variants: Variant[] = [
      { system: 'cairn', label: 'cairn@node26', node: { path: '/bin/node26', version: 'v26.0.0', major: 26 }, runtime: 'node v26.0.0' },
      { system: 'etcd', label: 'etcd', runtime: 'etcd 3.4.23' },
    ];
    const run = (variant: string, serverCpuMsPerOp: number): RunRecord =>
      ({ variant, system: variant === 'etcd' ? 'etcd' : 'cairn', workload: 'rate', concurrency: RATE_MAX_IN_FLIGHT, ratePerSec: 800, round: 1, opsPerSec: 800, p50Ms: 1, p99Ms: 2, p999Ms: 3, serverCpuMsPerOp, generatorCpuSeconds: 1, errors: 0, percentilesMs: [[50, 1]] }) as RunRecord;
    const opts = { ...parseOptions(['--workloads', 'rate', '--rate', '800']) };
    expect(summaryLines(variants, computeMedians([run('cairn@node26', 1.2), run('etcd', 0.6)]), [], opts)).toEqual([
      'rate 800/s: cairn 1.200 ms cpu/put at 800 puts/s p99 2.0 ms | etcd 0.600 ms cpu/put at 800 puts/s p99 2.0 ms | ratio 0.50',
    ]);
  });

  it('prefix by major', () => {
    expect(nodePrefixed(20, 'get c=64: x')).toBe('node20 get c=64: x');
  });
});

describe('cluster warm-up option', () => {
  it('defaults to 5 s (1 s with --quick), takes 0 to turn it off, and rejects the rest', () => {
    expect(parseOptions([]).clusterWarmupSeconds).toBe(5);
    expect(parseOptions(['--quick']).clusterWarmupSeconds).toBe(1);
    expect(parseOptions(['--cluster-warmup', '0']).clusterWarmupSeconds).toBe(0);
    expect(parseOptions(['--cluster-warmup', '2.5']).clusterWarmupSeconds).toBe(2.5);
    for (const bad of ['-1', 'x', '']) expect(() => parseOptions(['--cluster-warmup', bad])).toThrow('--cluster-warmup needs a number >= 0');
    expect(() => parseOptions(['--cluster-warmup'])).toThrow('--cluster-warmup needs a number >= 0');
  });
});

describe('CPU steal', () => {
  it('is the stolen share of all CPU ticks between two samples', () => {
    expect(stealPercentBetween({ total: 1000, steal: 10 }, { total: 1400, steal: 110 })).toBe(25);
    expect(stealPercentBetween({ total: 1000, steal: 10 }, { total: 1000, steal: 10 })).toBeNaN();
  });

  it('reads /proc/stat: steal never exceeds the total, and both only grow', () => {
    const first = machineCpuTicks();
    const second = machineCpuTicks();
    expect(first.total).toBeGreaterThan(0);
    expect(first.steal).toBeGreaterThanOrEqual(0);
    expect(first.steal).toBeLessThanOrEqual(first.total);
    expect(second.total).toBeGreaterThanOrEqual(first.total);
    expect(second.steal).toBeGreaterThanOrEqual(first.steal);
  });

  it('enters the medians as the median over rounds, a missing value ignored', () => {
    const run = (round: number, stealPercent: number) =>
      ({ variant: 'cairn@node26', system: 'cairn', workload: 'put', concurrency: 64, round, opsPerSec: 100, p50Ms: 1, p99Ms: 1, p999Ms: 1, serverCpuMsPerOp: 1, generatorCpuSeconds: 1, stealPercent, errors: 0, percentilesMs: [[50, 1]] }) as RunRecord;
    expect(computeMedians([run(1, 30), run(2, 2), run(3, 5)])[0].stealPercent).toBe(5);
    expect(computeMedians([run(1, 30), run(2, NaN)])[0].stealPercent).toBe(30);
  });
});

describe('options', () => {
  it('opens ceil(C/16) channels, at most 8', () => {
    expect([1, 16, 17, 64, 256, 10_000].map(channelsFor)).toEqual([1, 1, 2, 4, 8, 8]);
  });

  it('parses the documented flags and rejects bad ones', () => {
    const o = parseOptions(['--workloads', 'put,failover', '--concurrency', '1,16', '--duration', '5', '--rounds', '1', '--node', '20']);
    expect(o).toMatchObject({ workloads: ['put', 'failover'], putConcurrency: [1, 16], durationSeconds: 5, rounds: 1, nodeMajors: [20], readConcurrency: 64 });
    expect(parseOptions(['--quick'])).toMatchObject({ quick: true, rounds: 1, putConcurrency: [16], readConcurrency: 16, trials: 1, nodeMajors: [0] });
    expect(parseOptions([])).toMatchObject({ workloads: ['put', 'get', 'sget', 'mix', 'failover'], ratePerSec: 1000 });
    expect(parseOptions(['--workloads', 'rate', '--rate', '1200'])).toMatchObject({ workloads: ['rate'], ratePerSec: 1200 });
    expect(() => parseOptions(['--rate', '0'])).toThrow(/--rate needs a positive integer/);
    expect(() => parseOptions(['--workloads', 'put,scan'])).toThrow(/--workloads/);
    expect(() => parseOptions(['--rounds', '0'])).toThrow(/--rounds needs a positive integer/);
    expect(() => parseOptions(['--frobnicate', '1'])).toThrow(/unknown flag --frobnicate/);
  });
});

describe('failover read-back', () => {
  it('counts a write lost unless the read shows it or a later write of unknown outcome', () => {
    const h = { acked: 'w1s5', unknownSince: ['w1s6'] };
    expect(isLostWrite(h, 'w1s5')).toBe(false);
    expect(isLostWrite(h, 'w1s6')).toBe(false);
    expect(isLostWrite(h, 'w1s4')).toBe(true); // an older value: the acknowledged write is gone
    expect(isLostWrite(h, undefined)).toBe(true); // the key vanished
    expect(isLostWrite({ unknownSince: ['w1s1'] }, undefined)).toBe(false); // nothing was acknowledged
  });
});

describe('etcd wire codec', () => {
  const bytes = (s: string) => Buffer.from(s);

  it('puts key in field 1 and value in field 2 (PutRequest)', () => {
    expect(encodePutRequest({ key: bytes('a'), value: bytes('b') }).toString('hex')).toBe('0a0161120162');
    const decoded = decodeRequestForTest(encodePutRequest({ key: bytes('k0001'), value: Buffer.alloc(256, 7) }));
    expect(Buffer.from(decoded.key).toString()).toBe('k0001');
    expect(Buffer.from(decoded.value)).toEqual(Buffer.alloc(256, 7));
  });

  it('sets serializable as field 7, only when asked (RangeRequest)', () => {
    expect(encodeRangeRequest({ key: bytes('a'), serializable: true }).toString('hex')).toBe('0a01613801');
    expect(encodeRangeRequest({ key: bytes('a'), serializable: false }).toString('hex')).toBe('0a0161');
    expect(decodeRequestForTest(encodeRangeRequest({ key: bytes('xyz'), serializable: true })).serializable).toBe(true);
  });

  const header = { clusterId: 0xfedcba9876543210n, memberId: 0x8e9e05c52164694dn, revision: 42n, raftTerm: 7n };

  it('round-trips a RangeResponse with 64-bit ids and skips unknown fields', () => {
    const kvs = [{ key: bytes('k1'), createRevision: 2n, modRevision: 40n, version: 3n, value: bytes('v'.repeat(256)) }];
    const encoded = Buffer.concat([encodeRangeResponseForTest({ header, kvs, more: true, count: 1n }), Buffer.from('5a0568656c6c6f', 'hex') /* field 11, "hello" */]);
    const decoded = decodeRangeResponse(encoded);
    expect(decoded.header).toEqual(header);
    expect(decoded.kvs).toHaveLength(1);
    expect(Buffer.from(decoded.kvs[0].key).toString()).toBe('k1');
    expect(Buffer.from(decoded.kvs[0].value).toString()).toBe('v'.repeat(256));
    expect(decoded.kvs[0]).toMatchObject({ createRevision: 2n, modRevision: 40n, version: 3n });
    expect(decoded.more).toBe(true);
    expect(decoded.count).toBe(1n);
    expect(decodeRangeResponse(new Uint8Array(0)).kvs).toEqual([]);
  });

  it('round-trips a StatusResponse: leader and member id as exact 64-bit values', () => {
    const decoded = decodeStatusResponse(encodeStatusResponseForTest({ header, version: '3.4.23', leader: header.memberId, raftIndex: 99n, raftTerm: 7n }));
    expect(decoded.header?.memberId).toBe(0x8e9e05c52164694dn);
    expect(decoded.leader).toBe(0x8e9e05c52164694dn);
    expect(decoded).toMatchObject({ version: '3.4.23', raftIndex: 99n, raftTerm: 7n });
  });

  it('reads the header of a PutResponse', () => {
    const encoded = encodeRangeResponseForTest({ header, kvs: [], more: false, count: 0n }); // header is field 1 in both
    expect(decodePutResponse(encoded).header).toEqual(header);
  });
});

describe('rate pacing', () => {
  it('spaces request starts by 1/rate, and a stall does not turn into a burst', async () => {
    let clock = 0;
    const waits: number[] = [];
    const pacer = new Pacer(1000, () => clock, async (ms) => void waits.push(ms));
    for (let i = 0; i < 3; i++) await pacer.slot();
    expect(waits).toEqual([1, 2]); // slots at 0, 1 and 2 ms; the first starts at once
    clock = 100; // the workers stalled for 97 ms
    waits.length = 0;
    for (let i = 0; i < 3; i++) await pacer.slot();
    expect(waits).toEqual([1]); // one slot an interval back and one due now start at once, then the pace again
  });
});
