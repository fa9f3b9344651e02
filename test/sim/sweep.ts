import { Simulation, SimResult } from './simulation';

/** What a sweep records for each seed it ran. */
export interface SeedReport {
  seed: number;
  ok: boolean;
  failure?: string;
  stats?: SimResult['stats'];
}

export type Simulate = (seed: number, nodes: number | undefined) => Promise<SimResult>;

const simulate: Simulate = (seed, nodes) => new Simulation({ seed, nodes }).run();

/**
 * Runs one seed. Whatever escapes the simulation while it runs (an exception, a
 * rejection nobody handled) is that seed's failure, so a sweep always ends in a summary.
 */
export async function runSeed(seed: number, nodes: number | undefined, run: Simulate = simulate): Promise<SeedReport> {
  let escaped: unknown;
  const onEscape = (err: unknown) => {
    escaped ??= err;
  };
  process.on('unhandledRejection', onEscape);
  process.on('uncaughtException', onEscape);
  try {
    const result = await run(seed, nodes);
    // Let stray continuations of this seed surface before its verdict is given.
    await new Promise<void>((resolve) => setImmediate(resolve));
    if (escaped !== undefined) return { seed, ok: false, failure: `escaped the simulation: ${describe(escaped)}` };
    return { seed, ok: result.ok, failure: result.failure, stats: result.stats };
  } catch (err) {
    return { seed, ok: false, failure: `the simulation threw: ${describe(err)}` };
  } finally {
    process.off('unhandledRejection', onEscape);
    process.off('uncaughtException', onEscape);
  }
}

function describe(err: unknown): string {
  return err instanceof Error ? (err.stack ?? err.message) : String(err);
}

/** A sweep's tally; `stopped` once a failure ended it early (--stop-on-failure). */
export class Tally {
  passed = 0;
  readonly failed: number[] = [];
  stopped = false;

  constructor(
    private readonly options: { verbose: boolean; stopOnFailure: boolean; print: (line: string) => void },
  ) {}

  /** Records a report; returns false once the sweep should stop. */
  record(report: SeedReport): boolean {
    if (this.stopped) return false;
    if (report.ok) {
      this.passed++;
      if (this.options.verbose) this.options.print(`seed ${report.seed}: ok ${JSON.stringify(report.stats)}`);
      return true;
    }
    this.failed.push(report.seed);
    this.options.print(`seed ${report.seed}: FAILED: ${report.failure}\n  replay: npm run sim -- --seed ${report.seed}`);
    if (this.options.stopOnFailure) this.stopped = true;
    return !this.stopped;
  }
}

/** Runs seeds [from, from + count) one after another until `onReport` says stop. */
export async function runRange(
  from: number,
  count: number,
  nodes: number | undefined,
  onReport: (report: SeedReport) => boolean,
  run: Simulate = simulate,
): Promise<void> {
  for (let seed = from; seed < from + count; seed++) {
    if (!onReport(await runSeed(seed, nodes, run))) return;
  }
}
