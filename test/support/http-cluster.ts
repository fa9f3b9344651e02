import { existsSync } from 'node:fs';
import type { Browser } from 'playwright-core';
import { chromium } from 'playwright-core';
import { freePort, ProcessCluster } from './process-cluster';

/**
 * A ProcessCluster whose nodes each serve the operators' HTTP port (`--http-addr`) on a
 * free loopback port, and the helpers that read it: a tiny Prometheus text parser and a
 * headless chromium (Debian's, driven by playwright-core, which never downloads a browser).
 */

/** Debian's chromium; CAIRN_CHROMIUM names another binary. */
export const CHROMIUM_PATH = process.env.CAIRN_CHROMIUM ?? '/usr/bin/chromium';

/** HTTP base URLs by node id, e.g. `http://127.0.0.1:20123`. */
export type HttpUrls = Map<number, string>;

/** Prepares `count` nodes (not started) with their own `--http-addr 127.0.0.1:<free port>`. */
export async function prepareHttpCluster(count: number, extraArgs: string[] = []): Promise<{ cluster: ProcessCluster; urls: HttpUrls }> {
  const cluster = await ProcessCluster.prepare(count, extraArgs);
  const urls: HttpUrls = new Map();
  for (const node of cluster.nodes) {
    const addr = `127.0.0.1:${await freePort()}`;
    // A new array per node: prepare() gives every node the same extraArgs array.
    node.extraArgs = [...node.extraArgs, '--http-addr', addr];
    urls.set(node.id, `http://${addr}`);
  }
  return { cluster, urls };
}

/**
 * Launches headless chromium. A missing browser is an error that says how to install it,
 * never a silent skip: CI installs it (.ci/install-chromium.sh).
 */
export async function launchChromium(): Promise<Browser> {
  if (!existsSync(CHROMIUM_PATH)) {
    throw new Error(`chromium is missing at ${CHROMIUM_PATH}: install Debian's chromium (apt-get install -y chromium; CI runs .ci/install-chromium.sh) or set CAIRN_CHROMIUM to a chromium binary`);
  }
  // --no-sandbox: CI runs as root, where chromium's sandbox refuses to start;
  // --disable-dev-shm-usage: containers often have a tiny /dev/shm.
  return chromium.launch({ executablePath: CHROMIUM_PATH, headless: true, args: ['--no-sandbox', '--disable-dev-shm-usage'] });
}

/** One sample of a Prometheus text exposition: name, labels, value. */
export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parses the text format's sample lines (not `#` lines). Label values here hold no escaped quotes. */
export function parseMetrics(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: \d+)?$/.exec(line);
    if (!match) throw new Error(`not a Prometheus sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const [, key, value] of (match[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)"/g)) labels[key!] = value!;
    samples.push({ name: match[1]!, labels, value: Number(match[3]) });
  }
  return samples;
}

/** The value of the sample named `name` whose labels include `labels`, or undefined when there is none. */
export function sampleValue(samples: readonly Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  const found = samples.find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  return found?.value;
}

/** GETs (or `method`s) a path of a node's HTTP port. */
export async function httpGet(url: string, method = 'GET'): Promise<{ status: number; body: string; contentType: string }> {
  const response = await fetch(url, { method, signal: AbortSignal.timeout(5_000) });
  return { status: response.status, body: await response.text(), contentType: response.headers.get('content-type') ?? '' };
}

export async function scrape(url: string): Promise<Sample[]> {
  const { status, body } = await httpGet(`${url}/metrics`);
  if (status !== 200) throw new Error(`${url}/metrics answered ${status}: ${body}`);
  return parseMetrics(body);
}
