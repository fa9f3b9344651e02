import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { SimResult } from './simulation';
import { runRange, runSeed, SeedReport, Tally } from './sweep';

const stats: SimResult['stats'] = { nodes: 3, ops: 1, unknownOps: 0, committed: 1, leaders: 1, crashes: 0, virtualTicks: 1, concurrentWrites: 0, sessionExpired: 0, sessionLimited: 0, membershipChanges: 0, transfers: 0, snapshotTransfers: 0, snapshotsInstalled: 0, restoreCrashes: 0, compactedNodes: 0, authChanges: 0, deniedWrites: 0, sessionsNotOwned: 0, casSwapped: 0, casRefused: 0, casNested: 0, leasesGranted: 0, leaseKeepAlives: 0, leasesExpired: 0 };

function passing(seed: number): Promise<SimResult> {
  return Promise.resolve({ seed, ok: true, trace: [], stats });
}

describe('sim sweep', () => {
  test('a simulation that throws is that seed\'s failure, and the sweep goes on', async () => {
    const reports: SeedReport[] = [];
    await runRange(1, 3, undefined, (r) => reports.push(r) > 0, (seed) => (seed === 2 ? Promise.reject(new Error('restart blew up')) : passing(seed)));
    expect(reports.map((r) => [r.seed, r.ok])).toEqual([[1, true], [2, false], [3, true]]);
    expect(reports[1]!.failure).toMatch(/^the simulation threw: Error: restart blew up/);
  });

  test('a rejection nobody handled during a seed is that seed\'s failure', () => {
    // Jest catches stray rejections itself, so this runs in a plain node process on the
    // build (npm test builds first).
    const script = `
      const { runSeed } = require(${JSON.stringify(path.resolve(__dirname, '../../dist/test/sim/sweep.js'))});
      runSeed(7, undefined, async (seed) => {
        void Promise.reject(new Error('stray restart'));
        return { seed, ok: true, trace: [], stats: {} };
      }).then((report) => console.log(JSON.stringify(report)));`;
    const out = execFileSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 20_000 });
    const report = JSON.parse(out) as SeedReport;
    expect(report.ok).toBe(false);
    expect(report.failure).toMatch(/^escaped the simulation: Error: stray restart/);
  });

  test('--stop-on-failure stops at the first failing seed and prints how to replay it', async () => {
    const lines: string[] = [];
    const tally = new Tally({ verbose: false, stopOnFailure: true, print: (line) => lines.push(line) });
    const ran: number[] = [];
    await runRange(1, 10, undefined, (r) => tally.record(r), (seed) => {
      ran.push(seed);
      return seed === 4 ? Promise.resolve({ seed, ok: false, failure: 'election safety: planted', trace: [], stats }) : passing(seed);
    });
    expect(ran).toEqual([1, 2, 3, 4]);
    expect(tally.passed).toBe(3);
    expect(tally.failed).toEqual([4]);
    expect(tally.stopped).toBe(true);
    expect(lines.join('\n')).toContain('seed 4: FAILED: election safety: planted\n  replay: npm run sim -- --seed 4');
    expect(tally.record({ seed: 9, ok: false })).toBe(false);
    expect(tally.failed).toEqual([4]);
  });

  test('without --stop-on-failure every seed runs', async () => {
    const tally = new Tally({ verbose: false, stopOnFailure: false, print: () => undefined });
    await runRange(1, 5, undefined, (r) => tally.record(r), (seed) =>
      seed % 2 === 0 ? Promise.resolve({ seed, ok: false, failure: 'x', trace: [], stats }) : passing(seed),
    );
    expect(tally.passed).toBe(3);
    expect(tally.failed).toEqual([2, 4]);
    expect(tally.stopped).toBe(false);
  });
});
