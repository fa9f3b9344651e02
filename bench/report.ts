/**
 * `npm run bench:report -- FILE`: turns the JSON of `npm run bench --json FILE` into
 * docs/benchmarks-latest.md (the tables and the summary lines) and one SVG per steady-state
 * workload, docs/bench/<workload>.svg (latency percentile curves, one panel per
 * concurrency, each system a curve). Hand-written SVG, no dependency.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { clusterWarmupNote } from './options';
import type { BenchJson, FailoverMedian, MedianRecord } from './run';

function packageRoot(): string {
  for (let dir = __dirname; dir !== dirname(dir); dir = dirname(dir)) {
    if (existsSync(join(dir, 'package.json'))) return dir;
  }
  return process.cwd();
}

const f = (v: number, digits = 1) => (Number.isFinite(v) ? v.toFixed(digits) : '-');
// rate's C is its in-flight bound (RATE_MAX_IN_FLIGHT); its offered rate is in the JSON's options.
const STEADY_ORDER = ['put', 'get', 'sget', 'mix', 'rate'] as const;

function commitOf(root: string): string {
  try {
    return execFileSync('git', ['-C', root, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8', timeout: 10_000 }).trim();
  } catch {
    return 'unknown';
  }
}

function steadyTable(medians: MedianRecord[]): string[] {
  const rows = [...medians].sort(
    (a, b) => STEADY_ORDER.indexOf(a.workload) - STEADY_ORDER.indexOf(b.workload) || a.concurrency - b.concurrency || a.variant.localeCompare(b.variant),
  );
  return [
    '| workload | C | system | ops/s | p50 ms | p99 ms | p99.9 ms | server CPU ms/op (3 nodes) | generator CPU s | CPU steal % | errors | rounds |',
    '|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...rows.map(
      (m) =>
        `| ${m.workload} | ${m.concurrency} | ${m.variant} | ${Math.round(m.opsPerSec)} | ${f(m.p50Ms, 2)} | ${f(m.p99Ms, 2)} | ${f(m.p999Ms, 2)} | ${f(m.serverCpuMsPerOp, 3)} | ${f(m.generatorCpuSeconds)} | ${f(m.stealPercent)} | ${m.errors} | ${m.rounds} |`,
    ),
  ];
}

function failoverTable(medians: FailoverMedian[]): string[] {
  if (medians.length === 0) return [];
  return [
    '| system | C | trials | recovered | median ms | max ms | acked writes lost | unverified |',
    '|---|---:|---:|---:|---:|---:|---:|---:|',
    ...medians.map((m) => `| ${m.variant} | ${m.concurrency} | ${m.trials} | ${m.recovered} | ${f(m.medianMs, 0)} | ${f(m.maxMs, 0)} | ${m.lost} | ${m.unverified} |`),
  ];
}

const COLORS: Record<string, string> = { etcd: '#d62728' };
const CAIRN_COLORS = ['#1f77b4', '#6baed6', '#08306b'];

function colorOf(variant: string, variants: string[]): { color: string; dash: string } {
  if (COLORS[variant]) return { color: COLORS[variant], dash: '' };
  const cairns = variants.filter((v) => v.startsWith('cairn'));
  const i = Math.max(0, cairns.indexOf(variant));
  return { color: CAIRN_COLORS[i % CAIRN_COLORS.length], dash: i === cairns.length - 1 ? '' : '6 3' };
}

const escapeXml = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

const PANEL_WIDTH = 640;
const PANEL_HEIGHT = 260;
const MARGIN = { left: 60, right: 150, top: 30, bottom: 40 };
/** x: the "nines" of a percentile, -log10(1 - p/100): p50 at 0.3, p90 at 1, p99 at 2, p99.9 at 3. */
const nines = (p: number) => -Math.log10(1 - p / 100);
const X_TICKS = [50, 90, 99, 99.9];

/** One SVG for one workload: a panel per concurrency, a percentile curve per system (log latency axis). */
export function workloadSvg(workload: string, medians: MedianRecord[]): string {
  const concurrencies = [...new Set(medians.map((m) => m.concurrency))].sort((a, b) => a - b);
  const variants = [...new Set(medians.map((m) => m.variant))].sort();
  const width = MARGIN.left + PANEL_WIDTH + MARGIN.right;
  const height = concurrencies.length * (PANEL_HEIGHT + MARGIN.top + MARGIN.bottom);
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="white"/>`,
  ];
  concurrencies.forEach((c, panel) => {
    const top = panel * (PANEL_HEIGHT + MARGIN.top + MARGIN.bottom) + MARGIN.top;
    const rows = medians.filter((m) => m.concurrency === c);
    const all = rows.flatMap((m) => m.percentilesMs.map(([, ms]) => ms)).filter((v) => v > 0 && Number.isFinite(v));
    const lo = Math.log10(Math.max(1e-3, Math.min(...all, 1))) ;
    const hi = Math.log10(Math.max(...all, 1) * 1.2);
    const yMin = Math.floor(lo);
    const yMax = Math.max(yMin + 1, Math.ceil(hi));
    const x = (p: number) => MARGIN.left + (nines(p) / 3) * PANEL_WIDTH;
    const y = (ms: number) => top + PANEL_HEIGHT - ((Math.log10(Math.max(ms, 10 ** yMin)) - yMin) / (yMax - yMin)) * PANEL_HEIGHT;
    parts.push(`<text x="${MARGIN.left}" y="${top - 10}" font-weight="bold">${escapeXml(`${workload} c=${c}: latency by percentile (median of rounds)`)}</text>`);
    parts.push(`<rect x="${MARGIN.left}" y="${top}" width="${PANEL_WIDTH}" height="${PANEL_HEIGHT}" fill="none" stroke="#999"/>`);
    for (let e = yMin; e <= yMax; e++) {
      for (const m of [1, 2, 5]) {
        const v = m * 10 ** e;
        if (Math.log10(v) > yMax) continue;
        parts.push(`<line x1="${MARGIN.left}" x2="${MARGIN.left + PANEL_WIDTH}" y1="${f(y(v))}" y2="${f(y(v))}" stroke="#eee"/>`);
        parts.push(`<text x="${MARGIN.left - 6}" y="${f(y(v) + 4)}" text-anchor="end">${v >= 1 ? v : v.toPrecision(1)}</text>`);
      }
    }
    for (const p of X_TICKS) {
      parts.push(`<line x1="${f(x(p))}" x2="${f(x(p))}" y1="${top}" y2="${top + PANEL_HEIGHT}" stroke="#eee"/>`);
      parts.push(`<text x="${f(x(p))}" y="${top + PANEL_HEIGHT + 16}" text-anchor="middle">p${p}</text>`);
    }
    parts.push(`<text x="14" y="${top + PANEL_HEIGHT / 2}" transform="rotate(-90 14 ${top + PANEL_HEIGHT / 2})" text-anchor="middle">latency (ms, log)</text>`);
    rows.forEach((m, i) => {
      const { color, dash } = colorOf(m.variant, variants);
      const points = m.percentilesMs.filter(([, ms]) => Number.isFinite(ms)).map(([p, ms]) => `${f(x(p))},${f(y(ms))}`).join(' ');
      parts.push(`<polyline fill="none" stroke="${color}" stroke-width="2"${dash ? ` stroke-dasharray="${dash}"` : ''} points="${points}"/>`);
      const ly = top + 16 + i * 34;
      parts.push(`<line x1="${MARGIN.left + PANEL_WIDTH + 10}" x2="${MARGIN.left + PANEL_WIDTH + 30}" y1="${ly}" y2="${ly}" stroke="${color}" stroke-width="2"${dash ? ` stroke-dasharray="${dash}"` : ''}/>`);
      parts.push(`<text x="${MARGIN.left + PANEL_WIDTH + 34}" y="${ly + 4}">${escapeXml(m.variant)}</text>`);
      parts.push(`<text x="${MARGIN.left + PANEL_WIDTH + 34}" y="${ly + 18}" fill="#555">${Math.round(m.opsPerSec)} ops/s</text>`);
    });
  });
  parts.push('</svg>');
  return `${parts.join('\n')}\n`;
}

/** Writes docs/benchmarks-latest.md and docs/bench/<workload>.svg; returns the paths written. */
export function writeReport(jsonFile: string, root = packageRoot()): string[] {
  const data = JSON.parse(readFileSync(jsonFile, 'utf8')) as BenchJson;
  const docs = join(root, 'docs');
  const svgDir = join(docs, 'bench');
  mkdirSync(svgDir, { recursive: true });
  const written: string[] = [];
  const svgLinks: string[] = [];
  for (const workload of STEADY_ORDER) {
    const rows = data.medians.filter((m) => m.workload === workload);
    if (rows.length === 0) continue;
    const file = join(svgDir, `${workload}.svg`);
    writeFileSync(file, workloadSvg(workload, rows));
    written.push(relative(root, file));
    svgLinks.push(`- [${workload}](bench/${workload}.svg)`);
  }
  const o = data.options;
  const md = [
    '# Latest benchmark run',
    '',
    `Generated by \`npm run bench:report\` from a run of \`npm run bench\` (${data.startedAt} to ${data.finishedAt}, commit ${data.commit ?? `${commitOf(root)} (when the report was made)`}). See docs/benchmarks.md for the method.`,
    '',
    `- machine: ${data.machine.nproc} cores, ${data.machine.cpuModel}, kernel ${data.machine.kernel}, data dirs in ${data.machine.disk}; load average at start ${data.machine.loadAverageAtStart.map((l) => l.toFixed(2)).join(' ')}`,
    `- generator: ${data.generatorNote}`,
    `- runs: ${o.rounds} round(s) of ${o.durationSeconds} s measured after ${o.warmupSeconds} s warm-up${clusterWarmupNote(o.clusterWarmupSeconds)}; ${o.keys} keys of 16 B, values of ${o.valueBytes} B; ${o.trials} failover trial(s)${o.quick ? '; --quick' : ''}`,
    `- server runtimes: ${[...new Set(data.runs.map((r) => `${r.variant} = ${r.serverRuntime}`).concat(data.failovers.map((r) => `${r.variant} = ${r.serverRuntime}`)))].join(', ')}`,
    '',
    '## Summary',
    '',
    '```',
    ...data.summaryLines,
    '```',
    '',
    '## Steady state (medians across rounds)',
    '',
    ...steadyTable(data.medians),
    '',
    ...(data.failoverMedians.length ? ['## Failover (kill -9 of the leader under put load)', '', ...failoverTable(data.failoverMedians), ''] : []),
    ...(svgLinks.length ? ['## Latency plots', '', ...svgLinks, ''] : []),
    ...(data.problems.length ? ['## Problems in this run', '', ...data.problems.map((p) => `- ${p}`), ''] : []),
  ].join('\n');
  const mdFile = join(docs, 'benchmarks-latest.md');
  writeFileSync(mdFile, md);
  written.unshift(relative(root, mdFile));
  return written;
}

if (require.main === module) {
  const file = process.argv[2];
  if (!file) {
    console.error('usage: npm run bench:report -- FILE (the JSON of npm run bench -- --json FILE)');
    process.exit(2);
  }
  console.log(`wrote ${writeReport(file).join(', ')}`);
}
