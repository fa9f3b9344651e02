/** Splits argv into positional arguments and `--name value` / `--name=value` / `--flag` options. */
export function parseArgs(argv: readonly string[], booleanFlags: readonly string[] = []): { positional: string[]; flags: Record<string, string> } {
  const positional: string[] = [];
  const flags: Record<string, string> = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith('--') || arg === '--') {
      positional.push(arg);
      continue;
    }
    const eq = arg.indexOf('=');
    if (eq > 0) {
      flags[arg.slice(2, eq)] = arg.slice(eq + 1);
    } else if (booleanFlags.includes(arg.slice(2))) {
      flags[arg.slice(2)] = 'true';
    } else {
      const value = argv[i + 1];
      if (value === undefined) throw new UsageError(`${arg} needs a value`);
      flags[arg.slice(2)] = value;
      i++;
    }
  }
  return { positional, flags };
}

export class UsageError extends Error {
  override name = 'UsageError';
}

/** Flag value, else environment variable, else default. */
export function resolveFlags(
  specs: readonly { flag: string; env: string; default: string }[],
  flags: Record<string, string>,
  env: NodeJS.ProcessEnv,
): Record<string, string> {
  const known = new Set(specs.map((s) => s.flag));
  for (const name of Object.keys(flags)) {
    if (!known.has(name)) throw new UsageError(`unknown flag --${name}`);
  }
  const values: Record<string, string> = {};
  for (const spec of specs) values[spec.flag] = flags[spec.flag] ?? env[spec.env] ?? spec.default;
  return values;
}
