/**
 * Splits argv into positional arguments and `--name value` / `--name=value` / `--flag`
 * options. With `known`, an unknown flag is a usage error (a typo must not be ignored).
 */
export function parseArgs(
  argv: readonly string[],
  booleanFlags: readonly string[] = [],
  known?: readonly string[],
): { positional: string[]; flags: Record<string, string> } {
  const positional: string[] = [];
  const flags: Record<string, string> = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith('--') || arg === '--') {
      positional.push(arg);
      continue;
    }
    const eq = arg.indexOf('=');
    const name = eq > 0 ? arg.slice(2, eq) : arg.slice(2);
    if (known && !known.includes(name) && !booleanFlags.includes(name)) {
      throw new UsageError(`unknown flag --${name} (known: ${[...known, ...booleanFlags].map((f) => `--${f}`).join(', ')})`);
    }
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
