import pino from 'pino';

export type Logger = pino.Logger;

/**
 * Structured JSON logs on stdout, one object per line. `mixin` adds fields to every line
 * (`cairn serve` adds the node's Raft term and role, so every consensus line carries them).
 */
export function createLogger(level: string, bindings: Record<string, unknown> = {}, mixin?: () => Record<string, unknown>): Logger {
  return pino({ level, base: { pid: process.pid, ...bindings }, timestamp: pino.stdTimeFunctions.isoTime, ...(mixin ? { mixin } : {}) });
}
