import { CommandResult } from '../../gen/cairn/kv/v1/kv';
import { SessionRecord, SessionResult } from '../../gen/cairn/storage/v1/storage';
import { assert } from '../assert';
import { ErrorCode } from '../errors';
import { Db, DbOp } from '../storage/db';
import { encodeMessage, encodeMessageToBuffer } from '../proto-writer';

/**
 * Client sessions as in the Raft thesis §6.3 (the client contract is in kv.proto,
 * "Client sessions"). Everything here runs inside apply and depends only on the
 * applied log, so every replica keeps, answers and evicts exactly the same sessions.
 */

/**
 * Bounds on the session table. Time is log time (leader stamps), never a local clock.
 * They shape the replicated state, so every replica must use the same: they are
 * constants, not flags.
 */
export interface SessionLimits {
  /** Most sessions kept; past it the least recently active evictable one goes. */
  maxSessions: number;
  /** A session with no write for this long (log time) is evicted. */
  sessionIdleTimeoutMs: number;
  /**
   * A session active within this long (log time) is never evicted to make room: a
   * new session is refused instead. Clients stop retrying a write well within it.
   */
  sessionEvictionGraceMs: number;
  /** Most results one session keeps; past it its new writes get SESSION_LIMIT. */
  maxResultsPerSession: number;
  /** Most encoded result bytes one session keeps (the last accepted write may pass it by one result). */
  maxSessionResultBytes: number;
  /** Most encoded result bytes all sessions keep together; past it evictable sessions go. */
  maxTotalSessionResultBytes: number;
}

export const DEFAULT_SESSION_LIMITS: SessionLimits = {
  maxSessions: 10_000,
  sessionIdleTimeoutMs: 60 * 60 * 1000,
  sessionEvictionGraceMs: 5 * 60 * 1000,
  maxResultsPerSession: 256,
  maxSessionResultBytes: 1024 * 1024,
  maxTotalSessionResultBytes: 64 * 1024 * 1024,
};

/**
 * Throws when the limits cannot keep the contract. Idle eviction ignores the grace, so
 * the idle timeout must be at least the grace.
 */
export function checkSessionLimits(limits: SessionLimits): void {
  for (const [name, value] of Object.entries(limits)) {
    const min = name === 'sessionEvictionGraceMs' ? 0 : 1;
    if (!Number.isSafeInteger(value) || value < min) throw new RangeError(`session limit ${name} must be an integer >= ${min}, got ${value}`);
  }
  if (limits.sessionIdleTimeoutMs < limits.sessionEvictionGraceMs) {
    throw new RangeError(`sessionIdleTimeoutMs (${limits.sessionIdleTimeoutMs}) must be >= sessionEvictionGraceMs (${limits.sessionEvictionGraceMs})`);
  }
}

/** The part of a write that names its session. */
export interface SessionWrite {
  clientId: string;
  sequence: number;
  lowestUnansweredSequence: number;
}

/** What the table needs to know of a session without reading it: eviction order and size. */
interface SessionSummary {
  lastActiveIndex: number;
  lastActiveUnixMs: number;
  resultBytes: number;
}

/**
 * Every session's summary, in memory, in the order of its last write (log index).
 * That order is the eviction order; it is rebuilt from the records on open, so a
 * restarted replica evicts exactly as one that kept running.
 */
export class SessionTable {
  /** Map iteration order = insertion order = ascending lastActiveIndex. */
  private readonly byActivity = new Map<string, SessionSummary>();
  private totalBytes = 0;
  private highestIndex = 0;

  static async load(db: Db): Promise<SessionTable> {
    const loaded: [string, SessionSummary][] = [];
    for await (const [key, value] of db.entries('sessions')) {
      const record = readRecord(value);
      loaded.push([key.toString(), summarize(record)]);
    }
    // Ties are only legacy records (index 0): order them by client id, the order they load in.
    loaded.sort(([a, x], [b, y]) => x.lastActiveIndex - y.lastActiveIndex || (a < b ? -1 : a > b ? 1 : 0));
    const table = new SessionTable();
    for (const [clientId, summary] of loaded) table.set(clientId, summary);
    return table;
  }

  get size(): number {
    return this.byActivity.size;
  }

  get resultBytes(): number {
    return this.totalBytes;
  }

  has(clientId: string): boolean {
    return this.byActivity.has(clientId);
  }

  /** The least recently active session other than `except`. */
  oldest(except?: string): [string, SessionSummary] | undefined {
    for (const entry of this.byActivity) if (entry[0] !== except) return entry;
    return undefined;
  }

  set(clientId: string, summary: SessionSummary): void {
    assert(summary.lastActiveIndex >= this.highestIndex, () => `session ${clientId} touched at index ${summary.lastActiveIndex} after ${this.highestIndex}`);
    this.highestIndex = summary.lastActiveIndex;
    this.remove(clientId);
    this.byActivity.set(clientId, summary);
    this.totalBytes += summary.resultBytes;
  }

  /** Sessions last active before log time began (0): see SessionBatch.startLogTime. */
  unstamped(): string[] {
    return [...this.byActivity].filter(([, summary]) => summary.lastActiveUnixMs === 0).map(([clientId]) => clientId);
  }

  /** Sets a session's last log time without moving it in the eviction order. */
  restamp(clientId: string, lastActiveUnixMs: number): void {
    const summary = this.byActivity.get(clientId);
    assert(summary !== undefined, () => `restamping unknown session ${clientId}`);
    summary.lastActiveUnixMs = lastActiveUnixMs;
  }

  remove(clientId: string): void {
    const existing = this.byActivity.get(clientId);
    if (!existing) return;
    this.totalBytes -= existing.resultBytes;
    this.byActivity.delete(clientId);
  }
}

/**
 * The session changes of one apply call: records read through it see its own earlier
 * writes, and its ops go into the same atomic batch as the effects.
 */
export class SessionBatch {
  private readonly staged = new Map<string, SessionRecord | null>();
  /** Records read by prefetch, as stored before the batch. */
  private readonly stored = new Map<string, Uint8Array>();

  constructor(
    private readonly db: Db,
    private readonly table: SessionTable,
    private readonly limits: SessionLimits,
  ) {}

  /** Reads the stored records of these clients (empty ids are skipped) in one getMany. */
  async prefetch(clientIds: readonly string[]): Promise<void> {
    const wanted = [...new Set(clientIds)].filter((id) => id !== '' && this.table.has(id) && !this.staged.has(id) && !this.stored.has(id));
    const values = await this.db.getMany('sessions', wanted.map((id) => Buffer.from(id)));
    wanted.forEach((id, i) => {
      const value = values[i];
      if (value !== undefined) this.stored.set(id, value);
    });
  }

  /**
   * Log time has just begun (its first stamp, e.g. on a store written before stamps
   * existed): sessions active before it count as active now, rather than idle since 1970.
   * Runs once, on every replica at the same entry.
   */
  async startLogTime(logTimeUnixMs: number): Promise<void> {
    for (const clientId of this.table.unstamped()) {
      const record = await this.read(clientId);
      assert(record !== undefined, () => `unstamped session ${clientId} is not stored`);
      record.lastActiveUnixMs = logTimeUnixMs;
      this.staged.set(clientId, record);
      this.table.restamp(clientId, logTimeUnixMs);
    }
  }

  /** Evicts every session idle for sessionIdleTimeoutMs at `logTimeUnixMs`. */
  evictIdle(logTimeUnixMs: number): void {
    for (let oldest = this.table.oldest(); oldest; oldest = this.table.oldest()) {
      if (logTimeUnixMs - oldest[1].lastActiveUnixMs < this.limits.sessionIdleTimeoutMs) return;
      this.evict(oldest[0]);
    }
  }

  /**
   * Applies one session write: a kept sequence gets its original result, a discarded
   * one SESSION_EXPIRED; a new one runs `effect` and keeps its result. `owner`: the user
   * writing, with auth on (undefined while it is off): a session started by another user
   * is refused, since its kept results are that user's answers.
   */
  async write(
    write: SessionWrite,
    at: { index: number; logTimeUnixMs: number; revision: number },
    effect: () => Promise<CommandResult>,
    owner?: string,
  ): Promise<CommandResult> {
    const { clientId, sequence } = write;
    // 0 (not sent) means only this write is unanswered; above `sequence` makes no sense.
    const lowest = write.lowestUnansweredSequence === 0 ? sequence : Math.min(write.lowestUnansweredSequence, sequence);
    let record = await this.read(clientId);
    if (record && owner !== undefined && record.owner !== owner) {
      const startedBy = record.owner === '' ? 'a client while auth was off' : `another user`;
      return refusal(at.revision, ErrorCode.SESSION_NOT_OWNED, `client session ${clientId} was started by ${startedBy}; user ${JSON.stringify(owner)} may not write under it: start a new session with a new client_id`);
    }
    if (!record) {
      if (lowest > 1) {
        return refusal(at.revision, ErrorCode.SESSION_EXPIRED, `client ${clientId} has no session (it was evicted, or never existed) and says sequences below ${lowest} were answered: this write may be a retry of one already applied, so it is refused; start again with a new client_id`);
      }
      if (!this.makeRoom(clientId, at.logTimeUnixMs, () => this.table.size >= this.limits.maxSessions)) {
        return refusal(at.revision, ErrorCode.SESSION_LIMIT, `too many client sessions (maxSessions ${this.limits.maxSessions}), all active within the last ${this.limits.sessionEvictionGraceMs} ms: retry later`);
      }
      record = { ...emptyRecord(), owner: owner ?? '' };
    }
    forgetAnswered(record, lowest);
    record.lastActiveIndex = at.index;
    record.lastActiveUnixMs = at.logTimeUnixMs;
    const result = await this.resolve(record, write, at, effect);
    this.stage(clientId, record);
    return result;
  }

  private async resolve(record: SessionRecord, write: SessionWrite, at: { logTimeUnixMs: number; revision: number }, effect: () => Promise<CommandResult>): Promise<CommandResult> {
    const { clientId, sequence } = write;
    const kept = record.results.find((r) => r.sequence === sequence);
    if (kept) return CommandResult.decode(kept.result);
    if (sequence < record.lowestUnansweredSequence) {
      return refusal(at.revision, ErrorCode.SESSION_EXPIRED, `sequence ${sequence} of client ${clientId} is below ${record.lowestUnansweredSequence}, and the client said every sequence below that was answered: its result, if it had one, was discarded, and it is not applied`);
    }
    const bytes = resultBytes(record);
    if (record.results.length >= this.limits.maxResultsPerSession || bytes >= this.limits.maxSessionResultBytes) {
      return refusal(at.revision, ErrorCode.SESSION_LIMIT, `client ${clientId} has ${record.results.length} unanswered results (${bytes} bytes) kept, at the limit (maxResultsPerSession ${this.limits.maxResultsPerSession}, maxSessionResultBytes ${this.limits.maxSessionResultBytes}): this write is not applied; send a higher lowest_unanswered_sequence first`);
    }
    if (!this.makeRoom(clientId, at.logTimeUnixMs, () => this.table.resultBytes >= this.limits.maxTotalSessionResultBytes)) {
      return refusal(at.revision, ErrorCode.SESSION_LIMIT, `client sessions keep ${this.table.resultBytes} bytes of results, at the limit (maxTotalSessionResultBytes ${this.limits.maxTotalSessionResultBytes}): this write is not applied; retry later`);
    }
    const result = await effect();
    const encoded = encodeMessageToBuffer(CommandResult, result);
    insertBySequence(record.results, { sequence, result: encoded });
    return result;
  }

  /** Evicts least recently active sessions (never `keep`, never one within the grace) while `full()`. */
  private makeRoom(keep: string, logTimeUnixMs: number, full: () => boolean): boolean {
    while (full()) {
      const oldest = this.table.oldest(keep);
      if (!oldest || logTimeUnixMs - oldest[1].lastActiveUnixMs < this.limits.sessionEvictionGraceMs) return false;
      this.evict(oldest[0]);
    }
    return true;
  }

  private evict(clientId: string): void {
    this.table.remove(clientId);
    this.staged.set(clientId, null);
  }

  private stage(clientId: string, record: SessionRecord): void {
    this.staged.set(clientId, record);
    this.table.set(clientId, summarize(record));
  }

  private async read(clientId: string): Promise<SessionRecord | undefined> {
    const staged = this.staged.get(clientId);
    if (staged !== undefined) return staged ?? undefined;
    if (!this.table.has(clientId)) return undefined;
    const value = this.stored.get(clientId) ?? (await this.db.get('sessions', Buffer.from(clientId)));
    assert(value !== undefined, () => `session ${clientId} is in the table but not stored`);
    return readRecord(value);
  }

  ops(): DbOp[] {
    const ops: DbOp[] = [];
    for (const [clientId, record] of this.staged) {
      const key = Buffer.from(clientId);
      ops.push(record ? { type: 'put', sublevel: 'sessions', key, value: encodeMessage(SessionRecord, record) } : { type: 'del', sublevel: 'sessions', key });
    }
    return ops;
  }
}

function emptyRecord(): SessionRecord {
  return { sequence: 0, result: Buffer.alloc(0), lowestUnansweredSequence: 1, results: [], lastActiveIndex: 0, lastActiveUnixMs: 0, owner: '' };
}

/** Decodes a stored record, turning a legacy one (one last result) into the current form. */
function readRecord(value: Uint8Array): SessionRecord {
  const record = SessionRecord.decode(value);
  if (record.sequence > 0) {
    if (record.results.length === 0) record.results = [{ sequence: record.sequence, result: record.result }];
    record.lowestUnansweredSequence = Math.max(record.lowestUnansweredSequence, record.sequence);
    record.sequence = 0;
    record.result = Buffer.alloc(0);
  }
  return record;
}

/** The client saw every answer below `lowest`: their results may go. */
function forgetAnswered(record: SessionRecord, lowest: number): void {
  if (lowest <= record.lowestUnansweredSequence) return;
  record.lowestUnansweredSequence = lowest;
  record.results = record.results.filter((r) => r.sequence >= lowest);
}

function insertBySequence(results: SessionResult[], result: SessionResult): void {
  let at = results.length;
  while (at > 0 && results[at - 1]!.sequence > result.sequence) at--;
  results.splice(at, 0, result);
}

function resultBytes(record: SessionRecord): number {
  let bytes = 0;
  for (const r of record.results) bytes += r.result.length;
  return bytes;
}

function summarize(record: SessionRecord): SessionSummary {
  return { lastActiveIndex: record.lastActiveIndex, lastActiveUnixMs: record.lastActiveUnixMs, resultBytes: resultBytes(record) };
}

/** A write refused inside apply: it changed nothing, and every replica refuses it alike. */
function refusal(revision: number, code: ErrorCode, message: string): CommandResult {
  return { revision, op: undefined, error: { code, message } };
}
