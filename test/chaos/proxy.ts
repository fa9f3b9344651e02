import { createServer, Server, Socket, connect } from 'node:net';

/** What happens to bytes going one way through a link. */
export type DirectionMode =
  | { kind: 'pass' }
  | { kind: 'delay'; ms: number }
  /** Bytes vanish; the connection stays up (a one-way partition). */
  | { kind: 'blackhole' }
  /** Each chunk has this chance of killing its connection (a lossy link, as TCP sees loss it cannot hide). */
  | { kind: 'flaky'; dropChance: number };

const PASS: DirectionMode = { kind: 'pass' };

interface Pair {
  client: Socket;
  upstream: Socket;
  /** When the last chunk of each direction is due, so that bytes never overtake. */
  forwardDue: number;
  backwardDue: number;
}

/**
 * A fault-injecting TCP proxy for one peer link (from one node to another): it listens
 * on loopback and forwards to the target, and the harness can delay, blackhole or
 * break each direction, or cut the link, while connections are open.
 */
export class FaultProxy {
  private server: Server | undefined;
  private readonly pairs = new Set<Pair>();
  /** client -> target (requests) and target -> client (responses). */
  private forward: DirectionMode = PASS;
  private backward: DirectionMode = PASS;
  private cutOff = false;
  port = 0;

  constructor(
    readonly name: string,
    private readonly targetPort: number,
    private readonly random: () => number,
  ) {}

  async start(port = 0): Promise<number> {
    this.server = createServer((client) => this.accept(client));
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(port, '127.0.0.1', () => resolve());
    });
    this.port = (this.server.address() as { port: number }).port;
    return this.port;
  }

  /** Starts on an ephemeral port that is none of `reserved` (ports handed to nodes that have not bound them yet). */
  async startAvoiding(reserved: ReadonlySet<number>): Promise<number> {
    const MAX_ATTEMPTS = 20;
    for (let attempt = 1; ; attempt++) {
      const port = await this.start();
      if (!reserved.has(port)) return port;
      await new Promise<void>((resolve) => this.server!.close(() => resolve()));
      if (attempt >= MAX_ATTEMPTS) throw new Error(`proxy ${this.name}: no free port outside the nodes' after ${MAX_ATTEMPTS} attempts`);
    }
  }

  /** Sets what happens to each direction (backward defaults to the same as forward). */
  set(forward: DirectionMode, backward: DirectionMode = forward): void {
    this.forward = forward;
    this.backward = backward;
  }

  /** Drops every open connection and refuses new ones until heal(). */
  cut(): void {
    this.cutOff = true;
    for (const pair of this.pairs) this.destroy(pair);
  }

  heal(): void {
    this.cutOff = false;
    this.forward = PASS;
    this.backward = PASS;
  }

  describe(): string {
    if (this.cutOff) return 'cut';
    const text = (m: DirectionMode) => (m.kind === 'delay' ? `delay ${m.ms}ms` : m.kind === 'flaky' ? `flaky ${m.dropChance}` : m.kind);
    return `${text(this.forward)} / ${text(this.backward)}`;
  }

  async stop(): Promise<void> {
    for (const pair of this.pairs) this.destroy(pair);
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }

  private accept(client: Socket): void {
    if (this.cutOff) {
      client.destroy();
      return;
    }
    const upstream = connect(this.targetPort, '127.0.0.1');
    const pair: Pair = { client, upstream, forwardDue: 0, backwardDue: 0 };
    this.pairs.add(pair);
    client.on('data', (chunk) => this.relay(pair, chunk, 'forward'));
    upstream.on('data', (chunk) => this.relay(pair, chunk, 'backward'));
    for (const socket of [client, upstream]) {
      socket.on('error', () => this.destroy(pair));
      socket.on('close', () => this.destroy(pair));
    }
  }

  private relay(pair: Pair, chunk: Buffer, direction: 'forward' | 'backward'): void {
    if (this.cutOff) return this.destroy(pair);
    const mode = direction === 'forward' ? this.forward : this.backward;
    const to = direction === 'forward' ? pair.upstream : pair.client;
    if (mode.kind === 'blackhole') return;
    if (mode.kind === 'flaky' && this.random() < mode.dropChance) return this.destroy(pair);
    // Bytes of one direction leave in order, even when the delay changes mid-stream.
    const now = Date.now();
    const dueKey = direction === 'forward' ? 'forwardDue' : 'backwardDue';
    const due = Math.max(now + (mode.kind === 'delay' ? mode.ms : 0), pair[dueKey]);
    pair[dueKey] = due;
    if (due <= now) to.write(chunk);
    else setTimeout(() => to.writable && to.write(chunk), due - now);
  }

  private destroy(pair: Pair): void {
    this.pairs.delete(pair);
    pair.client.destroy();
    pair.upstream.destroy();
  }
}
