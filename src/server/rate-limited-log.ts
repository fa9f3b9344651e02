/** The part of the logger this needs (pino's Logger has it). */
export interface WarnSink {
  warn(fields: object, message: string): void;
}

/**
 * A warning log that writes at most `maxLinesPerSecond` lines a second, so traffic from a
 * stranger cannot grow the logs without bound. Lines over the budget are counted, and the
 * next line written carries that count as `suppressed`.
 */
export class RateLimitedLog {
  private windowStartedMs = -Infinity;
  private linesInWindow = 0;
  private suppressed = 0;

  constructor(
    private readonly logger: WarnSink,
    private readonly maxLinesPerSecond: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** Logs `message` at warn level unless this second's budget is spent; true if it was written. */
  warn(fields: Record<string, unknown>, message: string): boolean {
    const now = this.now();
    if (now - this.windowStartedMs >= 1000) {
      this.windowStartedMs = now;
      this.linesInWindow = 0;
    }
    if (this.linesInWindow >= this.maxLinesPerSecond) {
      this.suppressed++;
      return false;
    }
    this.linesInWindow++;
    const suppressed = this.suppressed;
    this.suppressed = 0;
    this.logger.warn(suppressed > 0 ? { ...fields, suppressed } : fields, message);
    return true;
  }
}
