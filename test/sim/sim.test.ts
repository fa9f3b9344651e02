import { SimResult, Simulation } from './simulation';

/**
 * A few seeds inside `npm test`, so a broken core fails fast. The wide sweep is
 * `npm run sim -- --seeds N` (CI runs 300).
 */
describe('simulator', () => {
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

  test('a seed replays exactly', async () => {
    const first = await new Simulation({ seed: 14 }).run();
    const second = await new Simulation({ seed: 14 }).run();
    expect(second.trace).toEqual(first.trace);
    expect(first.stats.crashes).toBeGreaterThan(0);
  });

  test('5-node clusters run too', async () => {
    const result = await new Simulation({ seed: 42, nodes: 5 }).run();
    expect(result.failure).toBeUndefined();
    expect(result.stats.nodes).toBe(5);
  });
});
