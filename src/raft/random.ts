/**
 * Randomness for the core comes from outside, so that the simulator can replay a
 * run exactly from its seed. Production seeds it from the node id and the clock.
 */
export interface Random {
  /** A uniformly distributed integer in [0, bound). */
  int(bound: number): number;
}

/** SplitMix32-style generator: small, fast, and good enough to spread timeouts. */
export class SeededRandom implements Random {
  private state: number;

  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  next32(): number {
    this.state = (this.state + 0x9e3779b9) >>> 0;
    let z = this.state;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  }

  int(bound: number): number {
    if (!Number.isInteger(bound) || bound <= 0) throw new RangeError(`bound must be a positive integer, got ${bound}`);
    return this.next32() % bound;
  }

  /** A float in [0, 1). */
  float(): number {
    return this.next32() / 0x1_0000_0000;
  }

  chance(probability: number): boolean {
    return this.float() < probability;
  }

  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new RangeError('pick from an empty list');
    return items[this.int(items.length)]!;
  }
}
