import { AuthCommand, Command, CommandResult, CompactRequest, DeleteRequest, KeyValue, PutRequest, TxnRequest } from '../../gen/cairn/kv/v1/kv';
import { Entry, EntryType } from '../../gen/cairn/raft/v1/raft';
import { AppliedState, KeyRecord } from '../../gen/cairn/storage/v1/storage';
import { assert } from '../assert';
import { CairnError, ErrorCode } from '../errors';
import { ApplyOutcome as FsmApplyOutcome, Fsm, FsmRestore, FsmSnapshot, SnapshottingFsm } from '../node/fsm';
import { Db, DbOp, DbSnapshot, generationSwitchOp, GENERATIONAL_SUBLEVELS } from '../storage/db';
import { checkSessionLimits, DEFAULT_SESSION_LIMITS, SessionBatch, SessionLimits, SessionTable } from './sessions';
import { DEFAULT_STATE_CACHE_BYTES, RecordCache } from './record-cache';
import { APPLIED_KEY, EMPTY_APPLIED_STATE, openKvSnapshot, SnapshotStager } from './snapshot';
import { AuthView } from './auth-state';
import { lowerBound, mergeRange, putRecord, runTxn, txnAccesses, TxnBudget, txnPointKeys, txnPuts, TxnState } from './txn';
import { applyLeaseOp, isLeaseOp, LeaseBatch, LeaseTable, refuseTxnLeases } from './leases';
import { HistoryBatch, loadCompactedRevision, MAX_COMPACT_REVISIONS_PER_COMMAND, readHistory, RevisionEvent } from './watch-history';
import { encodeMessage } from '../proto-writer';

/** Who hears of the history as it lands (the node's watch hub, src/kv/watch-hub.ts). */
export interface HistoryListener {
  /** A batch landed: its events in revision order (compacted ones too), and the revision it leaves. */
  landed(events: readonly RevisionEvent[], revision: number): void;
  /** A snapshot install: the state jumped to `revision`, and the history now starts at `compacted`. */
  restored(revision: number, compacted: number): void;
}

/** What applying one log entry produced: a result for commands, nothing for no-ops. */
export type ApplyOutcome = FsmApplyOutcome<CommandResult>;

export interface RangeOptions {
  /** First key, inclusive. */
  start: Uint8Array;
  /** End key, exclusive; undefined reads to the end of the key space. */
  end?: Uint8Array;
  limit: number;
  keysOnly: boolean;
  /**
   * Budget for the response's keys and values (each counted with RANGE_ENTRY_OVERHEAD_BYTES):
   * the range stops before the entry that would go over it and sets `more`. The first entry
   * is always returned, so a client can page through entries of any size. Undefined: no budget.
   */
  maxBytes?: number;
}

/** What one KeyValue adds to a Range response beyond its key and value (tags, lengths, three uint64s). */
export const RANGE_ENTRY_OVERHEAD_BYTES = 64;

/** The replicated state machine: the shell applies committed entries to it, in order. */
export interface StateMachine extends Fsm<CommandResult> {
  /** The index of the last entry applied (durably, or re-applied after a crash). */
  appliedIndex(): number;
  revision(): number;
  /** Log time: the highest leader stamp applied so far (kv.proto, Command.proposed_at_unix_ms). */
  logTimeUnixMs(): number;
  /** Applies entries in one atomic write with the new applied index. */
  apply(entries: readonly Entry[], decided?: (outcomes: readonly ApplyOutcome[]) => void): Promise<ApplyOutcome[]>;
  get(key: Uint8Array): Promise<KeyValue | undefined>;
  /** get(), with the revision of the state it read (for the response header). */
  getAt(key: Uint8Array): Promise<{ kv: KeyValue | undefined; revision: number }>;
  /** `revision`: of the state the range read (for the response header). */
  range(options: RangeOptions): Promise<{ kvs: KeyValue[]; more: boolean; revision: number }>;
  /** The auth state as of the applied index (users, roles, permissions; src/kv/auth-state.ts). */
  authState(): AuthView;
  /** The lease table as of the applied index (src/kv/leases.ts). */
  leaseTable(): LeaseTable;
}

/**
 * The key-value state machine over the `kv`, `sessions` and `meta` sublevels.
 *
 * Writes are not synced: the Raft log is the durable record, and the applied index
 * is written in the same batch as the effects, so after a crash the entries after
 * the last batch that reached disk are applied again, exactly once.
 *
 * Snapshots are LevelDB snapshots of the live state (src/kv/snapshot.ts). A restore
 * stages into the next generation of `kv` and `sessions` (src/storage/db.ts), which the
 * switch batch makes current; the previous generation is then deleted in the background.
 * At most one generation other than the current one exists at any time (a restore waits
 * for the previous deletion), which is what lets LevelDb clear leftovers at open.
 */
export class KvStateMachine implements StateMachine, SnapshottingFsm<CommandResult> {
  private applied: AppliedState;
  /** Applies must not overlap: each one reads the state the previous one wrote. */
  private applying = false;
  /**
   * The write of an apply whose outcomes were already given out (see apply()): reads wait
   * for it, so whoever heard of a write, and then reads here, sees it (serializable too).
   */
  private landing: Promise<void> | undefined;
  /** The restore staging now, if any: one at a time. */
  private restore: KvRestore | undefined;
  /** From a restore's switchOps() to its activate(): the database may already serve the new state. */
  private switching = false;
  /** Deletion of a generation no longer current (after a restore, or of an aborted staging). */
  private retiring: Promise<void> = Promise.resolve();
  private historyListener: HistoryListener | undefined;

  private constructor(
    private readonly db: Db,
    applied: AppliedState,
    private sessions: SessionTable,
    private readonly sessionLimits: SessionLimits,
    private readonly cache: RecordCache,
    private auth: AuthView,
    /** History below this revision was dropped (KV.Compact), as of the landed state. */
    private compacted: number,
    private leases: LeaseTable,
  ) {
    this.applied = applied;
  }

  /** Every replica of a cluster must use the same session limits: they shape the replicated state. */
  static async open(db: Db, sessionLimits: SessionLimits = DEFAULT_SESSION_LIMITS, cacheBytes = DEFAULT_STATE_CACHE_BYTES): Promise<KvStateMachine> {
    checkSessionLimits(sessionLimits);
    const applied = await loadApplied(db);
    await markPreHistoryCompacted(db, applied.revision);
    return new KvStateMachine(db, applied, await SessionTable.load(db), sessionLimits, new RecordCache(cacheBytes), await AuthView.load(db), await loadCompactedRevision(db), await LeaseTable.load(db));
  }

  /**
   * Consistent at any moment, also while a restore switches: the view's generation and its
   * applied index are both read through the LevelDB snapshot, not from this object.
   */
  async snapshot(): Promise<FsmSnapshot> {
    return openKvSnapshot(this.db);
  }

  async beginRestore(): Promise<FsmRestore> {
    if (this.restore) throw new CairnError(ErrorCode.OVERLOADED, 'a snapshot restore is already in progress on this node');
    const generation = this.db.generation() + 1;
    const restore = new KvRestore(this.db, generation, {
      switching: () => {
        assert(!this.applying, 'a restore switch while an apply is in progress');
        this.switching = true;
        this.cache.clear();
      },
      activated: async (applied) => {
        this.cache.clear();
        this.applied = applied;
        this.sessions = await SessionTable.load(this.db);
        this.auth = await AuthView.load(this.db);
        await markPreHistoryCompacted(this.db, applied.revision);
        this.compacted = await loadCompactedRevision(this.db);
        this.leases = await LeaseTable.load(this.db);
        this.switching = false;
        this.restore = undefined;
        this.retire(generation - 1);
        this.historyListener?.restored(applied.revision, this.compacted);
      },
      aborted: async () => {
        this.switching = false;
        this.restore = undefined;
        this.retire(generation);
        await this.retiring;
      },
    });
    this.restore = restore;
    try {
      // Keeps the one-spare-generation rule, and starts staging from nothing whatever a crash left.
      await this.retiring;
      await clearGeneration(this.db, generation);
    } catch (err) {
      this.restore = undefined;
      throw err;
    }
    return restore;
  }

  /** Deletes a generation in the background; what a crash cuts short is cleared at the next open. */
  private retire(generation: number): void {
    const previous = this.retiring;
    this.retiring = previous.then(() => clearGeneration(this.db, generation)).catch(() => undefined);
  }

  appliedIndex(): number {
    return this.applied.index;
  }

  /** History below this revision is gone (0: none compacted). */
  compactedRevision(): number {
    return this.compacted;
  }

  /** One listener (the watch hub) hears of every batch once it lands, and of snapshot installs. */
  setHistoryListener(listener: HistoryListener | undefined): void {
    this.historyListener = listener;
  }

  /** The stored history from `from` through `through` (revisions), in order; `withPrev`: with each event's previous record. */
  history(from: number, through: number, withPrev = false): AsyncIterable<RevisionEvent> {
    return readHistory(this.db, from, through, withPrev);
  }

  revision(): number {
    return this.applied.revision;
  }

  authState(): AuthView {
    return this.auth;
  }

  leaseTable(): LeaseTable {
    return this.leases;
  }

  /** Log time: the highest leader stamp (proposed_at_unix_ms) applied so far. */
  logTimeUnixMs(): number {
    return this.applied.logTimeUnixMs;
  }

  async apply(entries: readonly Entry[], decided?: (outcomes: readonly ApplyOutcome[]) => void): Promise<ApplyOutcome[]> {
    assert(!this.applying, 'apply called while another apply is in progress');
    assert(!this.switching, 'apply called between a restore switch and its activation');
    this.applying = true;
    try {
      return await this.applyInOrder(entries, decided);
    } finally {
      this.applying = false;
    }
  }

  private async applyInOrder(entries: readonly Entry[], decided?: (outcomes: readonly ApplyOutcome[]) => void): Promise<ApplyOutcome[]> {
    let index = this.applied.index;
    for (const entry of entries) {
      assert(entry.index === index + 1, () => `applying index ${entry.index} after ${index}`);
      index = entry.index;
    }
    // The session table is updated as the batch goes: a failure after this point (a failed
    // write) stops the node (the shell treats it as fatal) and the state is reopened from disk.
    const sessions = new SessionBatch(this.db, this.sessions, this.sessionLimits);
    const batch = new ApplyBatch(this.db, this.applied.revision, this.applied.logTimeUnixMs, sessions, this.cache, this.auth, new HistoryBatch(this.compacted), new LeaseBatch(this.leases));
    const commands = entries.map(decodeCommand);
    await Promise.all([batch.prefetch(commands), sessions.prefetch(commands.map(clientIdOf))]);
    const outcomes: ApplyOutcome[] = [];
    for (let i = 0; i < entries.length; i++) {
      outcomes.push({ index: entries[i].index, term: entries[i].term, result: await batch.applyEntry(entries[i], commands[i]) });
    }
    const applied: AppliedState = { index, revision: batch.revision, logTimeUnixMs: batch.logTimeUnixMs };
    assert(
      applied.index >= this.applied.index && applied.revision >= this.applied.revision && applied.logTimeUnixMs >= this.applied.logTimeUnixMs,
      'applied state went back',
    );
    const written = this.db.write(batch.ops(applied), { sync: false });
    // The callers may hear now: their entries are durable in the log. Linearizable reads wait
    // for this.applied, which moves only once the batch is in LevelDB; other reads for `landing`.
    let landed!: () => void;
    this.landing = new Promise((resolve) => (landed = resolve));
    try {
      decided?.(outcomes);
      await written;
      batch.writeThrough();
      batch.leases.commit();
      this.applied = applied;
      this.auth = batch.auth;
      this.compacted = batch.history.compacted;
      this.historyListener?.landed(batch.history.events, applied.revision);
    } finally {
      // On a failed write too: the apply fails with it, and the node stops.
      this.landing = undefined;
      landed();
    }
    return outcomes;
  }

  async get(key: Uint8Array): Promise<KeyValue | undefined> {
    return (await this.getAt(key)).kv;
  }

  async getAt(key: Uint8Array): Promise<{ kv: KeyValue | undefined; revision: number }> {
    const { value: record, revision } = await this.atOneRevision((view) => this.readRecord(key, view));
    return { kv: record ? toKeyValue(Buffer.from(key), record, false) : undefined, revision };
  }

  private async readRecord(key: Uint8Array, view: DbSnapshot | undefined): Promise<KeyRecord | null> {
    if (view) {
      const value = await this.db.get('kv', key, { snapshot: view });
      return value ? KeyRecord.decode(value) : null;
    }
    const name = hex(key);
    let record = this.switching ? undefined : this.cache.get(name);
    if (record === undefined) {
      const epoch = this.cache.epoch;
      const value = await this.db.get('kv', key);
      record = value ? KeyRecord.decode(value) : null;
      this.cache.set(name, record, epoch);
    }
    return record;
  }

  async range(options: RangeOptions): Promise<{ kvs: KeyValue[]; more: boolean; revision: number }> {
    // The server turns a client's "0 = no limit" into its configured maximum.
    if (!Number.isSafeInteger(options.limit) || options.limit < 1) throw new RangeError(`range limit must be >= 1, got ${options.limit}`);
    const { value, revision } = await this.atOneRevision((view) => this.readRange(options, view));
    return { ...value, revision };
  }

  private async readRange(options: RangeOptions, view: DbSnapshot | undefined): Promise<{ kvs: KeyValue[]; more: boolean }> {
    const kvs: KeyValue[] = [];
    let more = false;
    let bytes = 0;
    const iterator = this.db.entries('kv', { gte: options.start, lt: options.end, limit: options.limit + 1, snapshot: view });
    for await (const [key, value] of iterator) {
      if (kvs.length === options.limit) {
        more = true;
        break;
      }
      const kv = toKeyValue(key, KeyRecord.decode(value), options.keysOnly);
      bytes += kv.key.length + kv.value.length + RANGE_ENTRY_OVERHEAD_BYTES;
      if (options.maxBytes !== undefined && bytes > options.maxBytes && kvs.length > 0) {
        more = true;
        break;
      }
      kvs.push(kv);
    }
    return { kvs, more };
  }

  /**
   * Runs a read and says the revision of the state it saw (response headers). Optimistic: a
   * read during which no batch was landing and the revision did not move saw exactly the
   * state of that revision (whoever hears of a write reads after it, as `landing` ensures).
   * After MAX_OPTIMISTIC_READS tries that applies kept overtaking, it reads through one
   * LevelDB snapshot, whose meta/applied says its revision.
   */
  private async atOneRevision<T>(read: (view: DbSnapshot | undefined) => Promise<T>): Promise<{ value: T; revision: number }> {
    for (let attempt = 0; attempt < MAX_OPTIMISTIC_READS; attempt++) {
      if (this.landing) await this.landing;
      if (this.landing || this.switching) continue;
      const revision = this.applied.revision;
      const value = await read(undefined);
      if (!this.landing && !this.switching && this.applied.revision === revision) return { value, revision };
    }
    const view = await this.db.snapshot();
    try {
      const applied = await this.db.get('meta', APPLIED_KEY, { snapshot: view });
      const value = await read(view);
      return { value, revision: applied ? AppliedState.decode(applied).revision : 0 };
    } finally {
      await view.release();
    }
  }
}

/** Reads that applies overtake this many times in a row go through a LevelDB snapshot instead. */
const MAX_OPTIMISTIC_READS = 3;

/**
 * A data dir (or a snapshot from a node) of a version before the history existed holds
 * revisions without events, and no compacted record: it gets one just past its revision, so
 * a watch from an older revision is refused as compacted instead of silently missing events.
 * (Each replica upgrades at its own revision, so their histories differ below that; what
 * they apply from then on is the same everywhere.)
 */
async function markPreHistoryCompacted(db: Db, revision: number): Promise<void> {
  if (revision === 0) return;
  for await (const _ of db.entries('history', { limit: 1 })) return;
  await db.write(new HistoryBatch(0).preHistoryOps(revision + 1), { sync: false });
}

async function loadApplied(db: Db): Promise<AppliedState> {
  const value = await db.get('meta', APPLIED_KEY);
  return value ? AppliedState.decode(value) : { ...EMPTY_APPLIED_STATE };
}

async function clearGeneration(db: Db, generation: number): Promise<void> {
  for (const sublevel of GENERATIONAL_SUBLEVELS) await db.clearGeneration(sublevel, generation);
}

interface RestoreHooks {
  switching(): void;
  activated(applied: AppliedState): Promise<void>;
  /** Resolves once the staged data is deleted (or its deletion failed: the next open clears it). */
  aborted(): Promise<void>;
}

/** One restore: stage chunks into `generation`, switch to it in the shell's batch, activate. */
class KvRestore implements FsmRestore {
  private phase: 'staging' | 'switching' | 'done' = 'staging';
  private readonly stager: SnapshotStager;
  private writing = false;

  constructor(
    private readonly db: Db,
    private readonly generation: number,
    private readonly hooks: RestoreHooks,
  ) {
    this.stager = new SnapshotStager(generation);
  }

  async write(chunk: Uint8Array): Promise<void> {
    assert(this.phase === 'staging', () => `restore chunk written in phase ${this.phase}`);
    assert(!this.writing, 'restore chunks written concurrently');
    this.writing = true;
    try {
      await this.db.write(this.stager.stage(chunk), { sync: false });
    } finally {
      this.writing = false;
    }
  }

  appliedIndex(): number {
    return this.stagedApplied().index;
  }

  switchOps(): DbOp[] {
    assert(this.phase === 'staging' && !this.writing, () => `restore switch in phase ${this.phase}`);
    const applied = this.stagedApplied();
    this.hooks.switching();
    this.phase = 'switching';
    return [generationSwitchOp(this.generation), { type: 'put', sublevel: 'meta', key: APPLIED_KEY, value: encodeMessage(AppliedState, applied) }];
  }

  async activate(): Promise<void> {
    assert(this.phase === 'switching', () => `restore activated in phase ${this.phase}`);
    assert(this.db.generation() === this.generation, () => `restore activated before its switch batch was written (generation ${this.db.generation()}, staged ${this.generation})`);
    this.phase = 'done';
    await this.hooks.activated(this.stagedApplied());
  }

  async abort(): Promise<void> {
    if (this.phase === 'done') return;
    assert(this.db.generation() !== this.generation, 'restore aborted after its switch batch was written');
    this.phase = 'done';
    await this.hooks.aborted();
  }

  private stagedApplied(): AppliedState {
    const applied = this.stager.applied();
    if (!applied) throw new CairnError(ErrorCode.INVALID_ARGUMENT, `the snapshot stream ended without its meta/applied record (after ${this.stager.records} records): it is incomplete`);
    return applied;
  }
}

/** The writes of one apply call, with reads that see the batch's own earlier writes. */
class ApplyBatch implements TxnState {
  /** This batch's writes by hex key (null: deleted). */
  private readonly kv = new Map<string, KeyRecord | null>();
  /**
   * The keys of `kv`, sorted (hex order is byte order), so ranges inside a Txn find theirs by
   * binary search; built at the batch's first such range and kept up to date from then on.
   */
  private stagedNames: string[] | undefined;
  /** Records read by prefetch (null: not stored), as they were before the batch. */
  private readonly stored = new Map<string, KeyRecord | null>();

  constructor(
    private readonly db: Db,
    public revision: number,
    public logTimeUnixMs: number,
    private readonly sessions: SessionBatch,
    private readonly cache: RecordCache,
    /** The auth state as this batch's commands leave it. */
    public auth: AuthView,
    /** Every key change of the batch, for the `history` sublevel (src/kv/watch-history.ts). */
    readonly history: HistoryBatch,
    public readonly leases: LeaseBatch,
  ) {}

  private authChanged = false;

  /**
   * Reads, in one getMany, the stored records of every key the batch's commands touch, so
   * applying them waits for LevelDB once per batch rather than once per entry.
   */
  async prefetch(commands: readonly (Command | typeof UNDECODABLE | undefined)[]): Promise<void> {
    const keys = new Map<string, Buffer>();
    for (const command of commands) {
      if (command === undefined || command === UNDECODABLE || !command.op || command.op.$case === 'auth' || command.op.$case === 'compact' || isLeaseOp(command.op)) continue;
      for (const key of command.op.$case === 'txn' ? txnPointKeys(command.op.value) : [command.op.value.key]) {
        const name = hex(key);
        if (this.kv.has(name) || this.stored.has(name) || keys.has(name)) continue;
        const cached = this.cache.get(name);
        if (cached !== undefined) this.stored.set(name, cached);
        else keys.set(name, key);
      }
    }
    // Applies are the only writers and run one at a time: what this reads stays current
    // until this batch's own write, so it may go into the cache as it is.
    const values = await this.db.getMany('kv', [...keys.values()]);
    let i = 0;
    for (const name of keys.keys()) {
      const value = values[i++];
      const record = value ? KeyRecord.decode(value) : null;
      this.stored.set(name, record);
      this.cache.set(name, record);
    }
  }

  /** Once the batch is in LevelDB: its writes go into the cache, and reads in progress may not fill it. */
  writeThrough(): void {
    this.cache.epoch++;
    for (const [name, record] of this.kv) this.cache.set(name, record);
  }

  async applyEntry(entry: Entry, command: Command | typeof UNDECODABLE | undefined): Promise<CommandResult | undefined> {
    if (command === undefined) return undefined;
    // Proposals are validated before they enter the log, so an undecodable one is a bug
    // elsewhere; every node fails the same way, so the replicas stay identical.
    if (command === UNDECODABLE) return { revision: this.revision, op: undefined };
    // Log time never goes back, whatever a new leader's clock says.
    const before = this.logTimeUnixMs;
    this.logTimeUnixMs = Math.max(before, command.proposedAtUnixMs);
    if (before === 0 && this.logTimeUnixMs > 0) await this.sessions.startLogTime(this.logTimeUnixMs);
    this.sessions.evictIdle(this.logTimeUnixMs);
    if (command.op?.$case === 'auth') return this.applyAuth(command.op.value, entry.index, command);
    if (command.op?.$case === 'compact') return this.compact(command.op.value);
    if (isLeaseOp(command.op)) return this.applyLease(command, entry.index);
    const write = command.op?.value;
    if (!write || write.clientId === '' || write.sequence < 1) return this.applyCommand(command);
    const at = { index: entry.index, logTimeUnixMs: this.logTimeUnixMs, revision: this.revision };
    return this.sessions.write(write, at, () => this.applyCommand(command), this.auth.enabled ? (command.authUser ?? '') : undefined);
  }

  private async applyCommand(command: Command): Promise<CommandResult> {
    switch (command.op?.$case) {
      case 'put':
        return this.refusedByAuth(command, command.op.value.key, command.op.value.prevKv) ?? this.put(command.op.value);
      case 'delete':
        return this.refusedByAuth(command, command.op.value.key, command.op.value.prevKv) ?? this.delete(command.op.value);
      case 'txn':
        return this.refusedTxnByAuth(command, command.op.value) ?? this.txn(command.op.value);
      default:
        return { revision: this.revision, op: undefined };
    }
  }

  /** Lease commands carry no session: a grant names its id, so a retried one is refused (LEASE_EXISTS), not doubled. */
  private async applyLease(command: Command, index: number): Promise<CommandResult> {
    assert(isLeaseOp(command.op), 'applyLease of a command that is not a lease command');
    if (this.auth.enabled && command.op.$case !== 'leaseExpire') {
      const revoked = this.revokedAtApply(command);
      if (revoked) return revoked;
      if (!command.authUser) return this.deniedAtApply(`${describeAuthUser(undefined, 'the lease command')} may not grant or revoke leases`);
    }
    const keyWritesRefused = (keys: readonly Buffer[]) => {
      if (!this.auth.enabled || command.op?.$case === 'leaseExpire') return undefined;
      const user = command.authUser ?? '';
      const denied = keys.find((key) => !this.auth.permitsKey(user, 'write', key));
      return denied && this.deniedAtApply(`${describeAuthUser(user, 'the revoke')} may not write key ${describeKey(denied)}, attached to the lease: revoking it would delete the key`);
    };
    const self = this;
    return applyLeaseOp(command.op, index, {
      leases: this.leases,
      get revision() {
        return self.revision;
      },
      set revision(revision: number) {
        self.revision = revision;
      },
      read: (key) => this.read(key),
      // A revoke or expire deletes its keys at the revision it has just moved to.
      write: (key, record) => this.setKey(key, record, this.revision),
      refuseKeyWrites: keyWritesRefused,
    });
  }

  /**
   * With auth on, a write applies only if its user may write its key under the auth state
   * at this point of the log: the receiving node checked already, but against its own,
   * possibly older, state (a permission revoked, or auth enabled, since).
   */
  private refusedByAuth(command: Command, key: Uint8Array, prevKv: boolean): CommandResult | undefined {
    if (!this.auth.enabled) return undefined;
    const revoked = this.revokedAtApply(command);
    if (revoked) return revoked;
    const user = command.authUser;
    // prev_kv hands back the old value: a write that asks for it needs read access too (as in etcd).
    if (user && this.auth.permitsKey(user, 'write', key) && (!prevKv || this.auth.permitsKey(user, 'read', key))) return undefined;
    const what = prevKv ? 'write (and read, for prev_kv)' : 'write';
    return this.deniedAtApply(`${describeAuthUser(user, 'the write')} may not ${what} key ${describeKey(key)}`);
  }

  /** With auth on, a Txn applies only if its user may do all it might, in every branch at every level (as checked before proposing). */
  private refusedTxnByAuth(command: Command, request: TxnRequest): CommandResult | undefined {
    if (!this.auth.enabled) return undefined;
    const revoked = this.revokedAtApply(command);
    if (revoked) return revoked;
    const user = command.authUser;
    const { reads, writes } = txnAccesses(request);
    const allowed =
      user !== undefined &&
      writes.every((key) => this.auth.permitsKey(user, 'write', key)) &&
      reads.every(({ start, end }) => this.auth.permits(user, 'read', start, end));
    return allowed ? undefined : this.deniedAtApply(`${describeAuthUser(user, 'the txn')} may not do everything this txn may do (it needs read on its compares and ranges, write on its puts and deletes, in every branch, nested txns included)`);
  }

  private async txn(request: TxnRequest): Promise<CommandResult> {
    const leaseRefused = refuseTxnLeases(txnPuts(request), this.leases);
    if (leaseRefused) return { revision: this.revision, op: undefined, error: leaseRefused };
    const { response, revision } = await runTxn(request, this, this.revision);
    assert(revision === this.revision || revision === this.revision + 1, () => `a txn moved the revision from ${this.revision} to ${revision}`);
    this.revision = revision;
    return { revision, op: { $case: 'txn', value: response } };
  }

  /**
   * With auth on, an auth command applies only if its user has role root under the auth
   * state at this point of the log: the receiving node checked already, but against its own,
   * possibly older, state (it may not have applied the AuthEnable yet).
   */
  private applyAuth(command: AuthCommand, index: number, proposed: Command): CommandResult {
    const authUser = proposed.authUser;
    const revoked = this.auth.enabled ? this.revokedAtApply(proposed) : undefined;
    if (revoked) return revoked;
    if (this.auth.enabled && !(authUser && this.auth.isRoot(authUser))) {
      return this.deniedAtApply(`${describeAuthUser(authUser, 'the command')} may not change auth: it needs role root`);
    }
    const next = this.auth.apply(command, index);
    if (!(next instanceof AuthView)) return { revision: this.revision, op: undefined, error: next };
    if (next !== this.auth) {
      this.auth = next;
      this.authChanged = true;
    }
    return { revision: this.revision, op: undefined };
  }

  /**
   * A command whose token was revoked before it applied: the user's password changed (or the
   * user was deleted and added again) after the receiving node checked the token, at a point
   * of the log that node had not reached yet.
   */
  private revokedAtApply(command: Command): CommandResult | undefined {
    if (command.authUser === undefined || command.authPasswordIndex === undefined) return undefined;
    if (this.auth.user(command.authUser)?.passwordIndex === command.authPasswordIndex) return undefined;
    const message = `authentication failed: the token of user ${JSON.stringify(command.authUser)} was revoked (its password changed, or the user was deleted) before the command applied: authenticate again`;
    return { revision: this.revision, op: undefined, error: { code: ErrorCode.UNAUTHENTICATED, message } };
  }

  /** A refusal every replica makes alike: the state is unchanged. */
  private deniedAtApply(message: string): CommandResult {
    return { revision: this.revision, op: undefined, error: { code: ErrorCode.PERMISSION_DENIED, message } };
  }

  /**
   * Drops history below the request's revision, at most MAX_COMPACT_REVISIONS_PER_COMMAND
   * revisions past the last compaction (the batch's work stays bounded): the response's
   * compact_revision says how far it got, and KV.Compact proposes again until it is there.
   * Refused alike on every replica when the revision is ahead of the store or behind the
   * last compaction.
   */
  private async compact(request: CompactRequest): Promise<CommandResult> {
    const refuse = (code: ErrorCode, message: string): CommandResult => ({ revision: this.revision, op: undefined, error: { code, message } });
    const compacted = this.history.compacted;
    if (request.revision > this.revision) return refuse(ErrorCode.FUTURE_REVISION, `compact revision ${request.revision} is above the current revision ${this.revision}`);
    if (request.revision < compacted) return refuse(ErrorCode.COMPACTED, `compact revision ${request.revision} is below the revision already compacted to, ${compacted}`);
    const reached = Math.min(request.revision, compacted + MAX_COMPACT_REVISIONS_PER_COMMAND);
    await this.history.compact(this.db, reached);
    return { revision: this.revision, op: { $case: 'compact', value: { header: undefined, compactRevision: reached } } };
  }

  /** Every key change goes through here: the data and its history event, in the same batch. */
  /**
   * Every write of a key goes through here: its record, its lease's key list, and its history
   * event at `revision`. The batch read the key first (prefetch or read()), so its old record is known.
   */
  private setKey(key: Buffer, record: KeyRecord | null, revision: number): void {
    const name = hex(key);
    const staged = this.kv.get(name);
    const previous = staged !== undefined ? staged : this.stored.get(name);
    assert(previous !== undefined, () => `key ${describeKey(key)} written before it was read in this batch`);
    const from = previous?.lease ?? 0;
    const to = record?.lease ?? 0;
    // Most keys have no lease: nothing to move (moveKey copies the key when it keeps one).
    if (from !== 0 || to !== 0) this.leases.moveKey(key, from, to);
    this.stage(name, record);
    this.history.record(revision, key, record, previous ?? undefined);
  }

  private async put(request: PutRequest): Promise<CommandResult> {
    const previous = await this.read(request.key);
    const lease = request.lease ?? 0;
    if (lease !== 0) {
      const attached = previous?.lease === lease;
      const refused = this.leases.refuseAttach(lease, attached ? 0 : 1, attached ? 0 : request.key.length);
      if (refused) return { revision: this.revision, op: undefined, error: refused };
    }
    this.revision++;
    this.setKey(request.key, putRecord(previous, request.value, this.revision, lease), this.revision);
    const prevKv = request.prevKv && previous ? toKeyValue(request.key, previous, false) : undefined;
    return { revision: this.revision, op: { $case: 'put', value: { header: undefined, prevKv } } };
  }

  private async delete(request: DeleteRequest): Promise<CommandResult> {
    const previous = await this.read(request.key);
    if (previous) {
      this.revision++;
      this.setKey(request.key, null, this.revision);
    }
    const prevKv = request.prevKv && previous ? toKeyValue(request.key, previous, false) : undefined;
    return { revision: this.revision, op: { $case: 'delete', value: { header: undefined, deleted: !!previous, prevKv } } };
  }

  /** A Txn's write, at the revision the Txn moves to (txn() sets it once runTxn returns). */
  write(key: Buffer, record: KeyRecord | null): void {
    this.setKey(key, record, this.revision + 1);
  }

  /** Every write of the batch to `kv` goes through here (from setKey). */
  private stage(name: string, record: KeyRecord | null): void {
    if (this.stagedNames && !this.kv.has(name)) this.stagedNames.splice(lowerBound(this.stagedNames, name), 0, name);
    this.kv.set(name, record);
  }

  /** Keys in [start, end) as this batch leaves them (see mergeRange). */
  async range(start: Buffer, end: Buffer | undefined, limit: number, budget: TxnBudget): Promise<{ entries: [Buffer, KeyRecord][]; more: boolean }> {
    this.stagedNames ??= [...this.kv.keys()].sort();
    const stored = this.db.entries('kv', { gte: start, lt: end })[Symbol.asyncIterator]();
    try {
      return await mergeRange(stored, { names: this.stagedNames, get: (name) => this.kv.get(name) }, start, end, limit, budget);
    } finally {
      await stored.return?.(undefined);
    }
  }

  async read(key: Buffer): Promise<KeyRecord | undefined> {
    const name = hex(key);
    const staged = this.kv.get(name);
    if (staged !== undefined) return staged ?? undefined;
    const stored = this.stored.get(name);
    if (stored !== undefined) return stored ?? undefined;
    const value = await this.db.get('kv', key);
    const record = value ? KeyRecord.decode(value) : null;
    // Not written by this batch yet (see above): the record before the batch, as prefetch keeps it.
    this.stored.set(name, record);
    return record ?? undefined;
  }

  ops(applied: AppliedState): DbOp[] {
    const ops: DbOp[] = [];
    for (const [key, record] of this.kv) {
      ops.push(
        record
          ? { type: 'put', sublevel: 'kv', key: Buffer.from(key, 'hex'), value: encodeMessage(KeyRecord, record) }
          : { type: 'del', sublevel: 'kv', key: Buffer.from(key, 'hex') },
      );
    }
    ops.push(...this.history.ops());
    ops.push(...this.sessions.ops());
    if (this.authChanged) ops.push(this.auth.storeOp());
    ops.push(...this.leases.ops());
    ops.push({ type: 'put', sublevel: 'meta', key: APPLIED_KEY, value: encodeMessage(AppliedState, applied) });
    return ops;
  }
}

/** An entry whose data does not decode as a Command. */
const UNDECODABLE = Symbol('undecodable command');

/** The command of a log entry: undefined for entries that carry none (no-ops, config changes). */
function decodeCommand(entry: Entry): Command | typeof UNDECODABLE | undefined {
  if (entry.type !== EntryType.ENTRY_TYPE_COMMAND) return undefined;
  try {
    return Command.decode(entry.data);
  } catch {
    return UNDECODABLE;
  }
}

/** The session a command writes under ('' for none). */
function clientIdOf(command: Command | typeof UNDECODABLE | undefined): string {
  if (!command || command === UNDECODABLE || !command.op || command.op.$case === 'auth' || command.op.$case === 'compact' || isLeaseOp(command.op)) return '';
  return command.op.value.clientId;
}

/** A key for an error message: printable ASCII as it is, anything else in hex. */
export function describeKey(key: Uint8Array): string {
  const buffer = Buffer.from(key);
  return /^[\x20-\x7e]*$/.test(buffer.toString('latin1')) ? JSON.stringify(buffer.toString('latin1')) : `0x${buffer.toString('hex')}`;
}

function hex(key: Uint8Array): string {
  return Buffer.from(key.buffer, key.byteOffset, key.byteLength).toString('hex');
}

function toKeyValue(key: Buffer, record: KeyRecord, keysOnly: boolean): KeyValue {
  return {
    key,
    value: keysOnly ? Buffer.alloc(0) : record.value,
    createRevision: record.createRevision,
    modRevision: record.modRevision,
    version: record.version,
    ...(record.lease ? { lease: record.lease } : {}),
  };
}

/** Who an auth refusal at apply names: the command's user, or a caller that had none. */
function describeAuthUser(authUser: string | undefined, what: string): string {
  return authUser ? `user ${JSON.stringify(authUser)}` : `an unauthenticated client (auth was enabled before ${what} applied)`;
}
