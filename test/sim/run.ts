/**
 * npm run sim -- --seeds N [--from S] [--workers W]   runs seeds S..S+N-1
 * npm run sim -- --seed S [--nodes K]                  replays one seed, prints its trace on failure
 *
 * Ends with `sim: N seeds passed, F failed` and exits non-zero when F > 0.
 */
import { fork } from 'node:child_process';
import { Simulation } from './simulation';

interface Args {
  seeds: number;
  from: number;
  seed?: number;
  nodes?: number;
  workers: number;
  verbose: boolean;
}

function parseArgs(argv: string[]): Args {
  const args: Args = { seeds: 100, from: 1, workers: 1, verbose: false };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = () => {
      const v = Number(argv[++i]);
      if (!Number.isSafeInteger(v) || v < 0) throw new Error(`${flag} needs a non-negative integer`);
      return v;
    };
    if (flag === '--seeds') args.seeds = value();
    else if (flag === '--from') args.from = value();
    else if (flag === '--seed') args.seed = value();
    else if (flag === '--nodes') args.nodes = value();
    else if (flag === '--workers') args.workers = Math.max(1, value());
    else if (flag === '--verbose') args.verbose = true;
    else throw new Error(`unknown flag ${flag}`);
  }
  return args;
}

async function replay(seed: number, nodes: number | undefined): Promise<number> {
  const result = await new Simulation({ seed, nodes }).run();
  if (result.ok) {
    console.log(`seed ${seed}: ok ${JSON.stringify(result.stats)}`);
    console.log('sim: 1 seeds passed, 0 failed');
    return 0;
  }
  console.log(result.trace.join('\n'));
  console.log(`seed ${seed}: FAILED: ${result.failure}`);
  console.log('sim: 0 seeds passed, 1 failed');
  return 1;
}

/** Runs seeds [from, from + count) in this process; reports failures as they happen. */
async function runRange(from: number, count: number, nodes: number | undefined, verbose: boolean) {
  let passed = 0;
  const failed: number[] = [];
  for (let seed = from; seed < from + count; seed++) {
    const result = await new Simulation({ seed, nodes }).run();
    if (result.ok) {
      passed++;
      if (verbose) console.log(`seed ${seed}: ok ${JSON.stringify(result.stats)}`);
    } else {
      failed.push(seed);
      console.log(`seed ${seed}: FAILED: ${result.failure}\n  replay: npm run sim -- --seed ${seed}`);
    }
  }
  return { passed, failed };
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  if (args.seed !== undefined) {
    process.exitCode = await replay(args.seed, args.nodes);
    return;
  }
  const started = Date.now();
  const parts: Promise<{ passed: number; failed: number[] }>[] = [];
  const perWorker = Math.ceil(args.seeds / args.workers);
  for (let w = 0; w < args.workers; w++) {
    const from = args.from + w * perWorker;
    const count = Math.min(perWorker, args.from + args.seeds - from);
    if (count <= 0) continue;
    parts.push(args.workers === 1 ? runRange(from, count, args.nodes, args.verbose) : runWorker(from, count, args));
  }
  const results = await Promise.all(parts);
  const passed = results.reduce((sum, r) => sum + r.passed, 0);
  const failed = results.flatMap((r) => r.failed);
  const seconds = ((Date.now() - started) / 1000).toFixed(1);
  if (failed.length > 0) console.log(`failed seeds: ${failed.join(' ')}`);
  console.log(`(${seconds} s)`);
  console.log(`sim: ${passed} seeds passed, ${failed.length} failed`);
  process.exitCode = failed.length > 0 ? 1 : 0;
}

function runWorker(from: number, count: number, args: Args): Promise<{ passed: number; failed: number[] }> {
  return new Promise((resolve, reject) => {
    const child = fork(__filename, [], { env: { ...process.env, CAIRN_SIM_WORKER: JSON.stringify({ from, count, nodes: args.nodes, verbose: args.verbose }) } });
    child.on('message', (result) => resolve(result as { passed: number; failed: number[] }));
    child.on('exit', (code) => (code === 0 ? undefined : reject(new Error(`sim worker for seeds ${from}.. exited with ${code}`))));
  });
}

if (process.env.CAIRN_SIM_WORKER) {
  const { from, count, nodes, verbose } = JSON.parse(process.env.CAIRN_SIM_WORKER);
  runRange(from, count, nodes, verbose).then((result) => process.send!(result, () => process.exit(0)));
} else {
  main().catch((err) => {
    console.error(err);
    process.exitCode = 2;
  });
}
