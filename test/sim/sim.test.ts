import { Simulation } from './simulation';

/**
 * A few seeds inside `npm test`, so a broken core fails fast. The wide sweep is
 * `npm run sim -- --seeds N` (CI runs 300).
 */
describe('simulator', () => {
  test.each([1, 2, 3, 4, 5, 6, 7, 8])('seed %i holds every invariant and a linearizable history', async (seed) => {
    const result = await new Simulation({ seed }).run();
    if (!result.ok) throw new Error(`seed ${seed}: ${result.failure}\n${result.trace.slice(-60).join('\n')}`);
    expect(result.stats.ops).toBeGreaterThan(0);
    expect(result.stats.committed).toBeGreaterThan(0);
  });

  test('a seed replays exactly', async () => {
    const first = await new Simulation({ seed: 14 }).run();
    const second = await new Simulation({ seed: 14 }).run();
    expect(second.trace).toEqual(first.trace);
    expect(first.stats.crashes).toBeGreaterThan(0);
  });

  test.each([
    [38, 'ack'],
    [136, 'vote'],
  ])('seed %i runs the targeted fault schedules (crash after a %s, tail churn, cut at first commit) and replays exactly', async (seed, promise) => {
    const first = await new Simulation({ seed }).run();
    const second = await new Simulation({ seed }).run();
    expect(first.failure).toBeUndefined();
    const trace = first.trace.join('\n');
    expect(trace).toContain(`right after its ${promise} to`);
    expect(trace).toContain('tail churn: isolate leader');
    expect(trace).toContain('at its first commit of term');
    expect(second.trace).toEqual(first.trace);
  });

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
