import { Command } from '../../gen/cairn/kv/v1/kv';

/**
 * Log time: the leader stamps every command when it proposes it
 * (Command.proposed_at_unix_ms) with a clock that continues from the log time it had
 * applied when it took over, advanced by its monotonic clock (Replica.logTimeStampMs), and
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
  const stamp = Command.encode({ op: undefined, proposedAtUnixMs: Math.max(0, Math.floor(unixMs)) }).finish();
  return Buffer.concat([encoded, stamp]);
}
