/**
 * Splits argv into positional arguments and `--name value` / `--name=value` / `--flag`
 * options. With `known`, an unknown flag is a usage error (a typo must not be ignored).
 * `aliases` maps one-letter flags (`-e`) to their long names. `--` ends the flags, so a
 * value that starts with "-" can follow it; a lone `-` (stdin) and negative numbers are
 * positional.
 */
export function parseArgs(
  argv: readonly string[],
  booleanFlags: readonly string[] = [],
  known?: readonly string[],
  aliases: Readonly<Record<string, string>> = {},
): { positional: string[]; flags: Record<string, string> } {
  const positional: string[] = [];
  const flags: Record<string, string> = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      positional.push(...argv.slice(i + 1));
      break;
    }
    if (!arg.startsWith('-') || arg === '-' || /^-\d/.test(arg)) {
      positional.push(arg);
      continue;
    }
    const long = arg.startsWith('--');
    if (!long && !(arg.slice(1) in aliases)) {
      // Without a list of known flags (serve, cluster) the caller reports stray words.
      if (!known) {
        positional.push(arg);
        continue;
      }
      throw new UsageError(`unknown flag ${arg}${describeKnown(known, booleanFlags, aliases)}; put -- before a value that starts with "-"`);
    }
    const eq = long ? arg.indexOf('=') : -1;
    const name = long ? (eq > 0 ? arg.slice(2, eq) : arg.slice(2)) : aliases[arg.slice(1)]!;
    if (known && !known.includes(name) && !booleanFlags.includes(name)) {
      throw new UsageError(`unknown flag --${name}${describeKnown(known, booleanFlags, aliases)}`);
    }
    if (eq > 0) {
      flags[name] = arg.slice(eq + 1);
    } else if (booleanFlags.includes(name)) {
      flags[name] = 'true';
    } else {
      const value = argv[i + 1];
      if (value === undefined) throw new UsageError(`${arg} needs a value`);
      flags[name] = value;
      i++;
    }
  }
  return { positional, flags };
}

function describeKnown(known: readonly string[], booleanFlags: readonly string[], aliases: Readonly<Record<string, string>>): string {
  const names = [...known, ...booleanFlags].map((flag) => {
    const short = Object.keys(aliases).find((letter) => aliases[letter] === flag);
    return short ? `--${flag} (-${short})` : `--${flag}`;
  });
  return names.length > 0 ? ` (known: ${names.join(', ')})` : '';
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
