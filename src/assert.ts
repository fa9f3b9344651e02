/**
 * Invariant checks. A broken invariant means a bug in cairn, never bad input: the
 * process stops loudly instead of carrying on with state it can no longer trust.
 */
export class InvariantViolation extends Error {
  override name = 'InvariantViolation';
}

export function assert(condition: unknown, message: string | (() => string)): asserts condition {
  if (!condition) {
    throw new InvariantViolation(typeof message === 'string' ? message : message());
  }
}
