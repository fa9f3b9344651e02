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

/** True for an InvariantViolation, also when another error carries one as its cause. */
export function isInvariantViolation(err: unknown): err is Error {
  for (let e = err, depth = 0; e instanceof Error && depth < 8; e = e.cause, depth++) {
    if (e instanceof InvariantViolation) return true;
  }
  return false;
}
