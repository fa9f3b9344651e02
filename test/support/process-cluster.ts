import { ChildProcess, execFile, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { Consistency, StatusResponse } from '../../gen/cairn/kv/v1/kv';
import { CairnClient } from '../../src/cli/client';
import { DialSecurity } from '../../src/server/tls';

/** The package root: the nearest folder above this file with a package.json (from test/ or dist/test/). */
function packageRoot(): string {
  for (let dir = __dirname; dir !== dirname(dir); dir = dirname(dir)) {
    if (existsSync(join(dir, 'package.json'))) return dir;
  }
  throw new Error(`no package.json above ${__dirname}`);
}

export const CAIRN_MAIN = resolve(packageRoot(), 'dist/src/cli/main.js');

/**
 * Ports handed out come from below the kernel's ephemeral range (ip_local_port_range starts
 * at 32768 by default): a port the kernel picked for `listen(0)` can be taken again by any
 * outgoing connection on the machine before the node that was given it binds it (it
 * happened: a cluster whose node found its port taken). Each jest worker gets its own slice,
 * so workers do not hand out each other's ports either.
 */
const TEST_PORTS_FIRST = 20_000;
const TEST_PORTS_PER_WORKER = 1_500;
const TEST_PORT_WORKER_SLICES = 8;
const handedOut = new Set<number>();

/** A port on 127.0.0.1 that is free now, outside the ephemeral range, not handed out before by this process. */
export async function freePort(): Promise<number> {
  const worker = Number(process.env.JEST_WORKER_ID ?? 0) % TEST_PORT_WORKER_SLICES;
  const first = TEST_PORTS_FIRST + worker * TEST_PORTS_PER_WORKER;
  if (handedOut.size >= TEST_PORTS_PER_WORKER / 2) handedOut.clear();
  for (let attempt = 0; attempt < TEST_PORTS_PER_WORKER; attempt++) {
    const port = first + Math.floor(Math.random() * TEST_PORTS_PER_WORKER);
    if (handedOut.has(port) || !(await canListen(port))) continue;
    handedOut.add(port);
    return port;
  }
  throw new Error(`no free port in ${first}-${first + TEST_PORTS_PER_WORKER - 1}`);
}

function canListen(port: number): Promise<boolean> {
  return new Promise((done) => {
    const server = createServer();
    server.once('error', () => done(false));
    server.listen(port, '127.0.0.1', () => server.close(() => done(true)));
  });
}

/** Polls `condition` until it returns a truthy value or the deadline passes. */
export async function waitFor<T>(what: string, condition: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (Date.now() < deadline) {
    try {
      const value = await condition();
      if (value) return value;
    } catch (err) {
      lastError = err;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastError ? ` (last error: ${(lastError as Error).message})` : ''}`);
}

export interface ProcessNode {
  id: number;
  clientAddr: string;
  peerAddr: string;
  dataDir: string;
  process?: ChildProcess;
  logs: string[];
  extraArgs: string[];
  /** Client addresses to --join instead of naming --peers (a node added to a running cluster). */
  join?: string[];
  /** How the last process of this node exited (code, or signal), once it has. */
  exit?: { code: number | null; signal: NodeJS.Signals | null };
}

/** What one `cairn` CLI command printed, and its exit code. */
export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Real `cairn serve` processes on loopback, each with its own data directory under one
 * temporary folder, started from the built dist/.
 */
export class ProcessCluster {
  readonly nodes: ProcessNode[] = [];
  private clients: CairnClient[] = [];
  /** How node `id` names its peers: by default their real peer addresses. */
  peersFor: (id: number) => string = () => this.peers;
  /** How this harness's own clients reach the client ports (TLS tests set it); default plaintext. */
  clientDial: DialSecurity | undefined;

  private constructor(readonly root: string) {}

  /** Allocates ports and data dirs for `count` nodes without starting them. */
  static async prepare(count: number, extraArgs: string[] = [], root = mkdtempSync(join(tmpdir(), 'cairn-it-'))): Promise<ProcessCluster> {
    if (!existsSync(CAIRN_MAIN)) throw new Error(`${CAIRN_MAIN} is missing: run "npm run build" first (npm test does)`);
    const cluster = new ProcessCluster(root);
    for (let id = 1; id <= count; id++) {
      cluster.nodes.push({
        id,
        clientAddr: `127.0.0.1:${await freePort()}`,
        peerAddr: `127.0.0.1:${await freePort()}`,
        dataDir: join(cluster.root, `node-${id}`),
        logs: [],
        extraArgs,
      });
    }
    return cluster;
  }

  static async start(count: number, extraArgs: string[] = []): Promise<ProcessCluster> {
    const cluster = await ProcessCluster.prepare(count, extraArgs);
    for (const node of cluster.nodes) cluster.spawn(node);
    return cluster;
  }

  get peers(): string {
    return this.nodes.map((n) => `${n.id}=${n.peerAddr}`).join(',');
  }

  node(id: number): ProcessNode {
    const node = this.nodes.find((n) => n.id === id);
    if (!node) throw new Error(`no node ${id} in this cluster`);
    return node;
  }

  spawn(node: ProcessNode, overrides: string[] = []): void {
    const membership = node.join ? ['--join', node.join.join(',')] : ['--peers', this.peersFor(node.id)];
    const args = [
      CAIRN_MAIN, 'serve', '--id', String(node.id), '--data-dir', node.dataDir,
      '--client-addr', node.clientAddr, '--peer-addr', node.peerAddr, ...membership,
      '--tick-ms', '50', '--log-level', 'info', ...node.extraArgs, ...overrides,
    ];
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    for (const stream of [child.stdout!, child.stderr!]) {
      stream.setEncoding('utf8');
      stream.on('data', (chunk: string) => node.logs.push(...chunk.split('\n').filter(Boolean)));
    }
    node.exit = undefined;
    child.once('exit', (code, signal) => {
      node.exit = { code, signal };
      if (node.process === child) node.process = undefined;
    });
    node.process = child;
  }

  /**
   * Allocates a new node (ports, data dir) that joins the running cluster through the
   * client addresses of `through` (default: every node so far), and starts it.
   */
  async join(through: number[] = this.nodes.map((n) => n.id), extraArgs: string[] = this.nodes[0]?.extraArgs ?? []): Promise<ProcessNode> {
    const id = Math.max(0, ...this.nodes.map((n) => n.id)) + 1;
    const node: ProcessNode = {
      id,
      clientAddr: `127.0.0.1:${await freePort()}`,
      peerAddr: `127.0.0.1:${await freePort()}`,
      dataDir: join(this.root, `node-${id}`),
      logs: [],
      extraArgs,
      join: through.map((i) => this.node(i).clientAddr),
    };
    this.nodes.push(node);
    this.spawn(node);
    return node;
  }

  /** Waits for node `id`'s process to exit by itself; returns how. */
  async exited(id: number, timeoutMs = 20_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    const node = this.node(id);
    return waitFor(`node ${id} to exit`, () => node.exit, timeoutMs);
  }

  /** Runs `cairn ARGS --endpoints E` (default: every running node's client address) as a process. */
  cli(args: string[], endpoints: number[] = this.nodes.filter((n) => n.process).map((n) => n.id)): Promise<CliResult> {
    const withEndpoints = [...args, '--endpoints', endpoints.map((id) => this.node(id).clientAddr).join(',')];
    return new Promise((resolve) =>
      execFile(process.execPath, [CAIRN_MAIN, ...withEndpoints], { timeout: 30_000 }, (err, stdout, stderr) =>
        resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }),
      ),
    );
  }

  /** Sends a signal and waits for the process to exit. */
  async kill(id: number, signal: NodeJS.Signals = 'SIGKILL'): Promise<number | null> {
    const child = this.node(id).process;
    if (!child || child.exitCode !== null || child.signalCode !== null) return child?.exitCode ?? null;
    const exited = new Promise<number | null>((done) => child.once('exit', (code) => done(code)));
    child.kill(signal);
    const code = await exited;
    this.node(id).process = undefined;
    return code;
  }

  restart(id: number): void {
    this.spawn(this.node(id));
  }

  client(ids: number[] = this.nodes.map((n) => n.id), consistency = Consistency.CONSISTENCY_LINEARIZABLE, timeoutMs = 2000): CairnClient {
    const client = new CairnClient({ endpoints: ids.map((id) => this.node(id).clientAddr), timeoutMs, consistency, dial: this.clientDial });
    this.clients.push(client);
    return client;
  }

  async status(id: number): Promise<StatusResponse> {
    const client = this.client([id], Consistency.CONSISTENCY_SERIALIZABLE, 1000);
    try {
      return await client.statusOf(0);
    } finally {
      client.close();
    }
  }

  /** Waits until the running nodes agree on one leader; returns its id. */
  async waitForLeader(ids: number[] = this.nodes.filter((n) => n.process).map((n) => n.id)): Promise<number> {
    return waitFor('one leader that every running node knows', async () => {
      const statuses = await Promise.all(ids.map((id) => this.status(id)));
      const leaders = new Set(statuses.map((s) => s.leaderId));
      const leader = statuses.find((s) => s.role === 'leader');
      return leaders.size === 1 && leader && statuses.every((s) => s.term === leader.term) ? leader.id : undefined;
    });
  }

  async stop(options: { keepData?: boolean } = {}): Promise<void> {
    for (const client of this.clients) client.close();
    await Promise.all(this.nodes.map((n) => this.kill(n.id, 'SIGTERM')));
    if (!options.keepData) rmSync(this.root, { recursive: true, force: true });
  }
}
