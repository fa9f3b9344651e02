/**
 * npm run sim -- --seeds N [--from S] [--workers W] [--stop-on-failure]   runs seeds S..S+N-1
 * npm run sim -- --seed S [--nodes K]                                    replays one seed, prints its trace on failure
 *
 * Ends with `sim: N seeds passed, F failed` and exits non-zero when F > 0.
 * --stop-on-failure ends the sweep at the first failing seed and prints how to replay it.
 */
import { ChildProcess, fork } from 'node:child_process';
import { Simulation } from './simulation';
import { runRange, SeedReport, Tally } from './sweep';

interface Args {
  seeds: number;
  from: number;
  seed?: number;
  nodes?: number;
  workers: number;
  verbose: boolean;
  stopOnFailure: boolean;
}

function parseArgs(argv: string[]): Args {
  const args: Args = { seeds: 100, from: 1, workers: 1, verbose: false, stopOnFailure: false };
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
    else if (flag === '--stop-on-failure') args.stopOnFailure = true;
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

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  if (args.seed !== undefined) {
    process.exitCode = await replay(args.seed, args.nodes);
    return;
  }
  const started = Date.now();
  const tally = new Tally({ verbose: args.verbose, stopOnFailure: args.stopOnFailure, print: (line) => console.log(line) });
  const workers: ChildProcess[] = [];
  const stopAll = () => {
    for (const worker of workers) worker.kill();
  };
  const record = (report: SeedReport) => {
    const goOn = tally.record(report);
    if (!goOn) stopAll();
    return goOn;
  };
  const parts: Promise<void>[] = [];
  const perWorker = Math.ceil(args.seeds / args.workers);
  for (let w = 0; w < args.workers; w++) {
    const from = args.from + w * perWorker;
    const count = Math.min(perWorker, args.from + args.seeds - from);
    if (count <= 0) continue;
    parts.push(args.workers === 1 ? runRange(from, count, args.nodes, record) : runWorker(from, count, args, workers, record, tally));
  }
  await Promise.all(parts);
  const seconds = ((Date.now() - started) / 1000).toFixed(1);
  const notRun = args.seeds - tally.passed - tally.failed.length;
  if (tally.failed.length > 0) console.log(`failed seeds: ${tally.failed.join(' ')}`);
  if (tally.stopped) {
    const first = tally.failed[0]!;
    console.log(`stopped at the first failure (--stop-on-failure), ${notRun} seeds not run; replay: npm run sim -- --seed ${first}`);
  } else if (notRun > 0) {
    console.log(`${notRun} seeds not run`);
  }
  console.log(`(${seconds} s)`);
  console.log(`sim: ${tally.passed} seeds passed, ${tally.failed.length} failed`);
  process.exitCode = tally.failed.length > 0 ? 1 : 0;
}

/**
 * Runs seeds in a child process that reports each seed as it finishes. If the child
 * dies anyway, the seed it was running is reported as failed (with its exit code), the
 * rest of its range as failed too, and the sweep still ends in a summary.
 */
function runWorker(
  from: number,
  count: number,
  args: Args,
  workers: ChildProcess[],
  record: (report: SeedReport) => boolean,
  tally: Tally,
): Promise<void> {
  return new Promise((resolve) => {
    const child = fork(__filename, [], { env: { ...process.env, CAIRN_SIM_WORKER: JSON.stringify({ from, count, nodes: args.nodes }) } });
    workers.push(child);
    let next = from;
    child.on('message', (report: SeedReport | 'done') => {
      if (report === 'done') return;
      next = report.seed + 1;
      record(report);
    });
    // 'close', not 'exit': it comes after every message the worker sent has arrived.
    child.on('close', (code, signal) => {
      if (!tally.stopped && next < from + count) {
        record({ seed: next, ok: false, failure: `the worker running it exited (code ${code}, signal ${signal})` });
        if (next + 1 < from + count) console.log(`seeds ${next + 1}..${from + count - 1} not run: their worker died`);
      }
      resolve();
    });
  });
}

if (process.env.CAIRN_SIM_WORKER) {
  const { from, count, nodes } = JSON.parse(process.env.CAIRN_SIM_WORKER);
  const send = (report: SeedReport) => {
    process.send!(report);
    return true;
  };
  runRange(from, count, nodes, send).then(() => process.send!('done', () => process.exit(0)));
} else {
  main().catch((err) => {
    console.error(err);
    process.exitCode = 2;
  });
}
