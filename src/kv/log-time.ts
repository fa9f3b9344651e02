import { Command } from '../../gen/cairn/kv/v1/kv';
import { encodeMessage } from '../proto-writer';

/**
 * Log time: the leader stamps every command when it proposes it
 * (Command.proposed_at_unix_ms) with a clock that continues from the log time it had
 * applied when it took over, advanced by its monotonic clock (LogTimeStamper, below), and
 * the state machine's clock is the highest stamp applied so far. It ages client sessions
 * identically on every replica, never goes back, and moves at the rate of real time
 * whatever the nodes' wall clocks say.
 */

/**
 * Returns `encoded` (an encoded Command) with its proposed_at_unix_ms set to `unixMs`.
 * Appending the field is valid protobuf (the last value of a field wins), so a command
 * forwarded as bytes is stamped without decoding it, and any earlier stamp is replaced.
 */
export function stampCommand(encoded: Uint8Array, unixMs: number): Uint8Array {
  const stamp = encodeMessage(Command, { op: undefined, proposedAtUnixMs: Math.max(0, Math.floor(unixMs)) });
  // One buffer of exactly these bytes, not Buffer.concat's slice of the shared pool: the
  // leader's log keeps it until compaction (see withOwnedData in src/raft/log.ts).
  const stamped = Buffer.allocUnsafeSlow(encoded.byteLength + stamp.byteLength);
  stamped.set(encoded, 0);
  stamped.set(stamp, encoded.byteLength);
  return stamped;
}

/** The clocks log time is made from: the wall clock only seeds the first leader's stamps. */
export interface LogClockSource {
  wallUnixMs(): number;
  monotonicMs(): number;
}

export const SYSTEM_CLOCK: LogClockSource = { wallUnixMs: () => Date.now(), monotonicMs: () => performance.now() };

/**
 * Chooses the log time to stamp a proposal with. A leader's stamps continue from the log
 * time it had applied when it took over (the wall clock only for the very first leader,
 * when there is none), advanced by its monotonic clock. So log time moves at the rate real
 * time does, whatever the nodes' wall clocks say: a leader whose clock runs hours ahead
 * cannot make sessions expire early (a retried write applied twice), nor stop them
 * expiring at all. It lags real time by each election's gap, which only keeps sessions a
 * little longer.
 */
export class LogTimeStamper {
  /** Where this node's log-time stamps start in its current term as leader. */
  private leaderClock: { term: number; baseMs: number; startMonotonicMs: number } | undefined;

  constructor(
    private readonly appliedLogTimeUnixMs: () => number,
    private readonly clock: LogClockSource = SYSTEM_CLOCK,
  ) {}

  /** Starts the log-time clock of a term the moment this node is seen leading it. */
  noteLeadership(term: number, leading: boolean): void {
    if (!leading || this.leaderClock?.term === term) return;
    const applied = this.appliedLogTimeUnixMs();
    this.leaderClock = { term, baseMs: applied > 0 ? applied : this.clock.wallUnixMs(), startMonotonicMs: this.clock.monotonicMs() };
  }

  /** The stamp for a proposal made now; call noteLeadership first. */
  stampMs(): number {
    const leaderClock = this.leaderClock;
    // Not leading: the core refuses the proposal, so the stamp is never logged.
    if (!leaderClock) return 0;
    return leaderClock.baseMs + Math.max(0, this.clock.monotonicMs() - leaderClock.startMonotonicMs);
  }
}
