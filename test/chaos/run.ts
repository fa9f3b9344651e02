/**
 * npm run chaos -- --duration 60 --nodes 3 --seed S [--clients 4] [--faults kill,pause,...] [--out DIR]
 * npm run chaos -- --rolling-restart [...]: see rolling-restart.ts
 *
 * Runs one chaos scenario against real processes on loopback and ends with
 *   chaos: OPS ops, LOST lost, linearizable
 * or says what failed and where the history is, exiting non-zero.
 */
import { join } from 'node:path';
import { ChaosRun, FAULT_KINDS, FaultKind } from './chaos';
import { parseRollingOptions, rollingRestart } from './rolling-restart';

function parse(argv: string[]) {
  const options = { seed: Date.now() % 1_000_000, nodes: 3, durationSec: 60, clients: 4, faults: [...FAULT_KINDS] as FaultKind[], outDir: '' };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = argv[++i];
    if (value === undefined) throw new Error(`${flag} needs a value`);
    const int = () => {
      const n = Number(value);
      if (!Number.isSafeInteger(n) || n < 1) throw new Error(`${flag} needs a positive integer, got ${value}`);
      return n;
    };
    if (flag === '--seed') options.seed = int();
    else if (flag === '--nodes') options.nodes = int();
    else if (flag === '--duration') options.durationSec = int();
    else if (flag === '--clients') options.clients = int();
    else if (flag === '--out') options.outDir = value;
    else if (flag === '--faults') {
      const faults = value.split(',') as FaultKind[];
      for (const f of faults) if (!FAULT_KINDS.includes(f)) throw new Error(`unknown fault ${f}; known: ${FAULT_KINDS.join(', ')}`);
      options.faults = faults;
    } else throw new Error(`unknown flag ${flag}`);
  }
  if (options.nodes > 9) throw new Error('--nodes must be at most 9');
  if (options.durationSec > 3600) throw new Error('--duration must be at most 3600 seconds');
  options.outDir ||= join('chaos-out', `seed-${options.seed}-n${options.nodes}`);
  return options;
}

async function main(): Promise<number> {
  if (process.argv.includes('--rolling-restart')) {
    const rolling = parseRollingOptions(process.argv.slice(2));
    console.log(`rolling restart: ${rolling.nodes} nodes, ${rolling.writers} writers, tick ${rolling.tickMs} ms, ${rolling.signal}, ${rolling.rounds} round(s)`);
    const result = await rollingRestart(rolling);
    console.log(
      `rolling restart: ${result.restarts} restarts, ${result.writes} writes, ${result.failed} failed, longest stall ${result.longestStallMs} ms, slowest write ${result.slowestWriteMs} ms`,
    );
    return 0;
  }
  const options = parse(process.argv.slice(2));
  console.log(`chaos: seed ${options.seed}, ${options.nodes} nodes, ${options.durationSec} s, ${options.clients} clients, faults ${options.faults.join(',')}; output in ${options.outDir}`);
  const result = await new ChaosRun(options).run();
  console.log(`faults applied: ${JSON.stringify(result.faultsApplied)}; unknown ops: ${result.unknownOps}; digests: ${result.digests.join(' ')}`);
  console.log(result.summary);
  return result.ok ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(`chaos: FAILED to run: ${(err as Error).stack ?? err}`);
    process.exit(2);
  },
);
