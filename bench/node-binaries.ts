/**
 * The Node.js binaries cairn runs on: the machine's own, or a major version from the npm
 * package `node@MAJOR` (npm exec downloads it into the npm cache once; its path is kept in
 * a small cache file so later runs do not ask npm again).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';

/** npm may download about 50 MB the first time. */
const NPM_EXEC_TIMEOUT_MS = 10 * 60_000;

export interface NodeBinary {
  path: string;
  /** "v26.1.0" */
  version: string;
  major: number;
}

export const MACHINE_NODE: NodeBinary = {
  path: process.execPath,
  version: process.version,
  major: Number(process.versions.node.split('.')[0]),
};

function versionOf(path: string): string | undefined {
  try {
    return execFileSync(path, ['--version'], { encoding: 'utf8', timeout: 30_000 }).trim();
  } catch {
    return undefined;
  }
}

function cacheFile(major: number): string {
  const base = process.env.XDG_CACHE_HOME || join(homedir(), '.cache');
  return join(base, 'cairn-bench', `node${major}.path`);
}

/** The binary of Node.js `major` (0: the machine's own). */
export function resolveNode(major: number): NodeBinary {
  if (major === 0 || major === MACHINE_NODE.major) return MACHINE_NODE;
  const cache = cacheFile(major);
  const cached = existsSync(cache) ? readFileSync(cache, 'utf8').trim() : '';
  let version = cached ? versionOf(cached) : undefined;
  let path = cached;
  if (!version?.startsWith(`v${major}.`)) {
    console.log(`fetching Node.js ${major} with npm exec (node@${major}) ...`);
    path = execFileSync('npm', ['exec', '--yes', `--package=node@${major}`, '--', 'node', '-p', 'process.execPath'], {
      encoding: 'utf8',
      timeout: NPM_EXEC_TIMEOUT_MS,
      stdio: ['ignore', 'pipe', 'inherit'],
    }).trim().split('\n').pop()!;
    version = versionOf(path);
    if (!version?.startsWith(`v${major}.`)) throw new Error(`npm exec --package=node@${major} gave ${path}, which reports ${version}`);
    mkdirSync(dirname(cache), { recursive: true });
    writeFileSync(cache, `${path}\n`);
  }
  return { path, version, major };
}
