import { SimResult, Simulation } from './simulation';

/**
 * The tests that scan seeds for a behaviour run up to a few hundred simulations: on the
 * 2-core CI machine, beside the integration tests in the other worker, that took from 26 s
 * to over 180 s. A scan that runs out of seeds fails on its assertion, not on this.
 */
const SCAN_TIMEOUT_MS = 600_000;

/**
 * A few seeds inside `npm test`, so a broken core fails fast. The wide sweep is
 * `npm run sim -- --seeds N` (CI runs 300).
 */
describe('simulator', () => {
  // Every test here runs simulations, some of them many: none may fail on jest's 60 s default under CI's load.
  jest.setTimeout(SCAN_TIMEOUT_MS);
  const stats: SimResult['stats'][] = [];

  test.each([1, 2, 3, 4, 5, 6, 7, 8])('seed %i holds every invariant and a linearizable history', async (seed) => {
    const result = await new Simulation({ seed }).run();
    if (!result.ok) throw new Error(`seed ${seed}: ${result.failure}\n${result.trace.slice(-60).join('\n')}`);
    expect(result.stats.ops).toBeGreaterThan(0);
    expect(result.stats.committed).toBeGreaterThan(0);
    stats.push(result.stats);
  });

  test('those seeds keep several writes in flight per client id, and meet session eviction and limits', () => {
    expect(stats).toHaveLength(8);
    const total = (field: 'concurrentWrites' | 'sessionExpired' | 'sessionLimited') => stats.reduce((sum, s) => sum + s[field], 0);
    expect(total('concurrentWrites')).toBeGreaterThan(0);
    expect(total('sessionExpired')).toBeGreaterThan(0);
    expect(total('sessionLimited')).toBeGreaterThan(0);
  });

  test('those seeds send compare-and-swap, some swapping and some not, some as nested txns, all checked for linearizability', () => {
    expect(stats.reduce((sum, s) => sum + s.casSwapped, 0)).toBeGreaterThan(0);
    expect(stats.reduce((sum, s) => sum + s.casRefused, 0)).toBeGreaterThan(0);
    expect(stats.reduce((sum, s) => sum + s.casNested, 0)).toBeGreaterThan(0);
  });

  test('those seeds grant leases, keep them alive across faults and expire them (never early: checked in the run)', () => {
    const total = (field: 'leasesGranted' | 'leaseKeepAlives' | 'leasesExpired') => stats.reduce((sum, s) => sum + s[field], 0);
    expect(total('leasesGranted')).toBeGreaterThan(0);
    expect(total('leaseKeepAlives')).toBeGreaterThan(0);
    expect(total('leasesExpired')).toBeGreaterThan(0);
  });

  test('a seed replays exactly', async () => {
    const first = await new Simulation({ seed: 14 }).run();
    const second = await new Simulation({ seed: 14 }).run();
    expect(second.trace).toEqual(first.trace);
    expect(first.stats.crashes).toBeGreaterThan(0);
  });

  test('the targeted fault schedules fire, and a seed that runs them replays exactly', async () => {
    // Scanned rather than pinned seeds, so a change elsewhere in what a seed does (the
    // client workload) cannot quietly leave a schedule unexercised here (the workloads added
    // for issue 12 moved the first vote-time crash to seed 117).
    const markers = ['right after its vote to', 'right after its ack to', 'tail churn: isolate leader', 'at its first commit of term'];
    const seen = new Map<string, number>();
    for (let seed = 1; seed <= 300 && seen.size < markers.length; seed++) {
      const result = await new Simulation({ seed }).run();
      if (!result.ok) throw new Error(`seed ${seed}: ${result.failure}`);
      const trace = result.trace.join('\n');
      for (const marker of markers) if (!seen.has(marker) && trace.includes(marker)) seen.set(marker, seed);
    }
    expect([...seen.keys()].sort()).toEqual([...markers].sort());
    const seed = seen.get('tail churn: isolate leader')!;
    const first = await new Simulation({ seed }).run();
    const second = await new Simulation({ seed }).run();
    expect(second.trace).toEqual(first.trace);
  }, SCAN_TIMEOUT_MS);

  test('membership changes and leadership transfers happen and succeed in faulted seeds, and such a seed replays exactly', async () => {
    const markers = {
      join: /member: add learner \d+ applied/,
      promote: /member: promote \d+ applied/,
      removeVoter: /member: remove voter \d+ applied/,
      removeLeader: /member: remove the leader \d+ applied/,
      retired: /is out of the committed config .*: shut down/,
      transfer: /member: leadership transferred from \d+ to \d+/,
    };
    const seen = new Map<string, number>();
    for (let seed = 1; seed <= 300 && seen.size < Object.keys(markers).length; seed++) {
      const result = await new Simulation({ seed }).run();
      if (!result.ok) throw new Error(`seed ${seed}: ${result.failure}`);
      for (const [name, pattern] of Object.entries(markers)) if (!seen.has(name) && result.trace.some((line) => pattern.test(line))) seen.set(name, seed);
    }
    expect([...seen.keys()].sort()).toEqual(Object.keys(markers).sort());
    const seed = seen.get('removeLeader')!;
    const first = await new Simulation({ seed }).run();
    const second = await new Simulation({ seed }).run();
    expect(second.trace).toEqual(first.trace);
  });

  test('the auth nemesis enables auth and flips a permission under load: writes are refused while it is revoked, replicas agree, and such a seed replays exactly', async () => {
    let found: number | undefined;
    for (let seed = 1; seed <= 60 && found === undefined; seed++) {
      const result = await new Simulation({ seed }).run();
      if (!result.ok) throw new Error(`seed ${seed}: ${result.failure}`);
      if (result.stats.deniedWrites > 0 && result.trace.some((line) => line.includes('auth admin: roleGrantPermission ok'))) found = seed;
    }
    expect(found).toBeDefined();
    const first = await new Simulation({ seed: found! }).run();
    const second = await new Simulation({ seed: found! }).run();
    expect(first.stats.authChanges).toBeGreaterThan(0);
    expect(second.trace).toEqual(first.trace);
  }, SCAN_TIMEOUT_MS);

  test('an exception while restarting a node is that seed\'s failure, with the node named', async () => {
    const result = await new Simulation({
      seed: 14,
      beforeRestart: (node) => {
        throw new Error(`disk of node ${node} unreadable`);
      },
    }).run();
    expect(result.ok).toBe(false);
    expect(result.failure).toMatch(/^restarting node (\d) threw: Error: disk of node \1 unreadable/);
  });

  test('5-node clusters run too', async () => {
    const result = await new Simulation({ seed: 42, nodes: 5 }).run();
    expect(result.failure).toBeUndefined();
    expect(result.stats.nodes).toBe(5);
  });
});
