/**
 * Linearizability checker for key-value histories.
 *
 * The search is Wing & Gong's, with Lowe's "just-in-time linearization" and
 * memoization, as in Porcupine (Anish Athalye): call and return events sit in a
 * time-ordered doubly linked list; a depth-first search linearizes any op whose
 * call comes before the first pending return, unlinks it, and backtracks (relinks
 * it) when it reaches a return whose op it could not place. Each (set of
 * linearized ops, register state) pair is explored at most once.
 *
 * Keys are independent registers, so each key's sub-history is checked on its own
 * (P-compositionality): a history is linearizable iff every key's sub-history is.
 *
 * Ops with unknown outcomes are what make real histories expensive: each may take
 * effect at any time after its call, so Porcupine's treatment (a return at +inf)
 * keeps every one of them pending to the end and multiplies the states to search.
 * Two exact reductions keep that in check: writes with the same effect are
 * interchangeable, so each such group is used in call order; and a write is only
 * placed immediately before a get or delete that fails without it, with states
 * that used fewer such writes covering those that used more. Each is justified
 * where it is implemented.
 *
 * Compare-and-swap reads the state as well as writing it, which the just-in-time
 * argument does not cover, so a key whose sub-history has any CAS is checked by
 * a plain search over every op instead (see CasSearch); other keys keep the
 * reductions.
 */

import { assert } from '../assert';

/** One client operation in a recorded history. Times are in any monotonic unit (sim ticks, ns). */
export interface HistoryOp {
  client: number; // which client issued it (a client issues one op at a time)
  kind: 'put' | 'get' | 'delete' | 'cas';
  key: string;
  value?: string; // for 'put': the value written; for 'cas': the value written when the swap happens
  /** For 'cas': the value the swap requires the key to hold, or null for "the key is absent". */
  expected?: string | null;
  /**
   * For 'get': the value read, or null if the key was absent. For 'delete': optionally whether the key existed (existed).
   * For 'cas': whether the swap happened (succeeded). Absent when known === false.
   */
  output?: { value?: string | null; existed?: boolean; succeeded?: boolean };
  call: number; // invocation time
  ret?: number; // completion time; undefined when known === false
  known: boolean; // false: the outcome is unknown (timeout, connection lost): the op may or may not have taken effect, at any time after `call`
}

export type CheckResult =
  | { kind: 'linearizable'; keys: number; ops: number }
  /** ops: that key's sub-history, sorted by call; explanation: the longest linearizable prefix found and the op that could not be placed. */
  | { kind: 'not-linearizable'; key: string; ops: HistoryOp[]; explanation: string }
  /** The search budget ran out: never to be treated as a pass. */
  | { kind: 'inconclusive'; key: string; explanation: string };

export interface CheckOptions {
  /** Search budget per key, in distinct search states stored (default DEFAULT_MAX_STATES_PER_KEY). */
  maxStatesPerKey?: number;
}

export const DEFAULT_MAX_STATES_PER_KEY = 5_000_000;

export function checkLinearizable(history: readonly HistoryOp[], options: CheckOptions = {}): CheckResult {
  const budget = options.maxStatesPerKey ?? DEFAULT_MAX_STATES_PER_KEY;
  if (!(budget >= 1)) throw new Error(`maxStatesPerKey must be at least 1, got ${budget}`);
  history.forEach(validateOp);

  const byKey = groupByKey(history);
  let firstInconclusive: CheckResult | undefined;
  // Sorted so that which violation gets reported does not depend on input order.
  for (const key of [...byKey.keys()].sort()) {
    const result = checkKey(key, byKey.get(key)!, budget);
    if (result.kind === 'not-linearizable') return result;
    // Keep looking: a definite violation on another key is worth more than "don't know".
    if (result.kind === 'inconclusive') firstInconclusive ??= result;
  }
  return firstInconclusive ?? { kind: 'linearizable', keys: byKey.size, ops: history.length };
}

// ---------------------------------------------------------------------------
// Input validation and grouping

function validateOp(op: HistoryOp, index: number): void {
  const fail = (why: string): never => {
    throw new Error(`history[${index}] (client ${op.client}, ${op.kind} ${JSON.stringify(op.key)}): ${why}`);
  };
  if (op.kind !== 'put' && op.kind !== 'get' && op.kind !== 'delete' && op.kind !== 'cas') {
    fail(`unknown kind ${JSON.stringify(op.kind)}`);
  }
  if (typeof op.key !== 'string') fail('key must be a string');
  if (!Number.isFinite(op.call)) fail(`call time must be a finite number, got ${op.call}`);
  if (op.known && op.ret === undefined) fail('a known op needs a ret time');
  if (op.ret !== undefined) {
    if (Number.isNaN(op.ret)) fail('ret time is NaN');
    if (op.ret < op.call) fail(`ret ${op.ret} is before call ${op.call}`);
  }
  if (op.kind === 'put' && typeof op.value !== 'string') fail('a put needs a string value');
  if (op.kind === 'get' && op.known) {
    const value = op.output?.value;
    if (value === undefined) fail('a known get needs output.value (a string, or null for absent)');
    if (value !== null && typeof value !== 'string') fail('output.value must be a string or null');
  }
  const existed = op.output?.existed;
  if (op.kind === 'delete' && existed !== undefined && typeof existed !== 'boolean') {
    fail('output.existed must be a boolean when given');
  }
  if (op.kind === 'cas') validateCas(op, fail);
}

function validateCas(op: HistoryOp, fail: (why: string) => never): void {
  if (typeof op.value !== 'string') fail('a cas needs a string value (written when the swap happens)');
  if (op.expected === undefined) fail('a cas needs expected (a string, or null for "the key is absent")');
  if (op.expected !== null && typeof op.expected !== 'string') fail('expected must be a string or null');
  if (op.known && typeof op.output?.succeeded !== 'boolean') fail('a known cas needs output.succeeded (a boolean)');
}

/** Each key's ops, sorted by call time (stable, so equal calls keep input order). */
function groupByKey(history: readonly HistoryOp[]): Map<string, HistoryOp[]> {
  const byKey = new Map<string, HistoryOp[]>();
  for (const op of history) {
    const list = byKey.get(op.key);
    if (list) list.push(op);
    else byKey.set(op.key, [op]);
  }
  for (const list of byKey.values()) list.sort((a, b) => a.call - b.call);
  return byKey;
}

// ---------------------------------------------------------------------------
// Per-key check

function checkKey(key: string, ops: HistoryOp[], budget: number): CheckResult {
  let problem: CompiledOps;
  let outcome: SearchOutcome;
  if (ops.some((op) => op.kind === 'cas')) {
    problem = compileOps(ops);
    outcome = new CasSearch(problem, budget).run();
  } else {
    const register = compileRegister(ops);
    problem = register;
    outcome = new Search(register, budget).run();
  }
  switch (outcome.kind) {
    case 'ok':
      return { kind: 'linearizable', keys: 1, ops: ops.length };
    case 'budget':
      return {
        kind: 'inconclusive',
        key,
        explanation:
          `key ${JSON.stringify(key)}: search budget of ${budget} states exhausted on ${ops.length} ops ` +
          `without finding a linearization or ruling one out`,
      };
    case 'fail':
      return { kind: 'not-linearizable', key, ops, explanation: explainFailure(key, problem, outcome.prefix) };
  }
}

// ---------------------------------------------------------------------------
// The register model, with values interned to small integers so steps are cheap.

const ABSENT = 0;
const FAIL = -1;
/** For deletes: whether the key must have been present (1), absent (0), or either (-1); for a CAS, whether it succeeded. */
const UNCHECKED = -1;

interface RegOp {
  kind: HistoryOp['kind'];
  /** put and cas: value id written; get: value id read; delete: 1/0/UNCHECKED for existed. */
  arg: number;
  /** cas only: the value id it expects (ABSENT for "absent"), and 1/0/UNCHECKED for succeeded. */
  expected: number;
  succeeded: number;
  known: boolean;
  call: number;
  /** +Infinity for unknown outcomes: the op may take effect at any time after its call, or never. */
  ret: number;
  source: HistoryOp;
}

/** Returns the state after `op`, or FAIL if `op`'s output is impossible in `state`. */
function step(state: number, op: RegOp): number {
  switch (op.kind) {
    case 'put':
      return op.arg;
    case 'get':
      return state === op.arg ? state : FAIL;
    case 'delete':
      if (op.arg !== UNCHECKED && op.arg !== (state === ABSENT ? 0 : 1)) return FAIL;
      return ABSENT;
    case 'cas': {
      const swaps = state === op.expected;
      if (op.succeeded !== UNCHECKED && op.succeeded !== (swaps ? 1 : 0)) return FAIL;
      return swaps ? op.arg : state;
    }
  }
}

/**
 * One key's search problem. Known ops must all be linearized, each within its
 * interval. Unknown ops (all writes) may be linearized at any time after their
 * call, or never; they come grouped by effect (see groupByEffect).
 */
interface Problem extends CompiledOps {
  /** Indices into `unknown`, one group per effect, each in call order. */
  groups: number[][];
}

interface CompiledOps {
  known: RegOp[];
  unknown: RegOp[];
  /** The state id shared by all values that no get reads and no CAS expects. */
  unread: number;
}

function compileRegister(ops: HistoryOp[]): Problem {
  const compiled = compileOps(ops);
  return { ...compiled, groups: groupByEffect(compiled.unknown) };
}

function compileOps(ops: HistoryOp[]): CompiledOps {
  // An unknown get constrains nothing: it may never have been served.
  const relevant = ops.filter((op) => op.known || op.kind !== 'get');
  const values = internReadValues(relevant);
  // Values no get reads (and no CAS expects) are indistinguishable to the model,
  // so they share one id; that lets states that differ only in such a value share
  // a cache entry.
  const unread = values.size + 1;
  const compiled = relevant.map(
    (op): RegOp => ({
      kind: op.kind,
      arg:
        op.kind === 'delete'
          ? existedArg(op)
          : op.kind === 'put' || op.kind === 'cas'
            ? (values.get(op.value!) ?? unread)
            : readId(values, op.output!.value!),
      expected: op.kind === 'cas' ? readId(values, op.expected!) : ABSENT,
      succeeded: op.kind === 'cas' && op.known ? (op.output!.succeeded ? 1 : 0) : UNCHECKED,
      known: op.known,
      call: op.call,
      ret: op.known ? op.ret! : Infinity,
      source: op,
    }),
  );
  return { known: compiled.filter((op) => op.known), unknown: compiled.filter((op) => !op.known), unread };
}

/** Ids (from 1; ABSENT is 0) for the values that known gets read or CAS ops expect. */
function internReadValues(ops: HistoryOp[]): Map<string, number> {
  const ids = new Map<string, number>();
  for (const op of ops) {
    const value = op.kind === 'get' ? op.output!.value : op.kind === 'cas' ? op.expected : null;
    if (typeof value === 'string' && !ids.has(value)) ids.set(value, ids.size + 1);
  }
  return ids;
}

function readId(values: Map<string, number>, value: string | null): number {
  return value === null ? ABSENT : values.get(value)!;
}

function existedArg(op: HistoryOp): number {
  const existed = op.known ? op.output?.existed : undefined;
  return existed === undefined ? UNCHECKED : existed ? 1 : 0;
}

/** The state an unknown write leaves behind. */
function effectOf(op: RegOp): number {
  return op.kind === 'put' ? op.arg : ABSENT;
}

/**
 * Unknown writes with the same effect (same resulting state, no output checked)
 * are interchangeable, and one called earlier may go wherever one called later
 * may. So a linearization exists iff one exists that uses each group in call
 * order, and the search draws each group's members only in that order.
 */
function groupByEffect(unknown: RegOp[]): number[][] {
  const groups = new Map<number, number[]>();
  unknown.forEach((op, i) => {
    const group = groups.get(effectOf(op));
    if (group) group.push(i);
    else groups.set(effectOf(op), [i]);
  });
  return [...groups.values()];
}

// ---------------------------------------------------------------------------
// Event list (known ops only; unknown ops never have a return to meet)

interface Entry {
  /** Index into Problem.known; -1 for the head. */
  op: number;
  /** For a call entry, its return entry; null for return entries and the head. */
  match: Entry | null;
  time: number;
  rank: number;
  prev: Entry | null;
  next: Entry | null;
}

// At equal times returns sort before calls, so ops that merely touch are ordered.
// An instantaneous op's return must still follow its own call, so it sorts last.
const RANK_RETURN = 0;
const RANK_CALL = 1;
const RANK_INSTANT_RETURN = 2;

/** Builds the time-ordered call/return list and returns its head sentinel. */
function buildEventList(ops: RegOp[]): Entry {
  const entries: Entry[] = [];
  const entry = (op: number, match: Entry | null, time: number, rank: number): Entry => {
    const e: Entry = { op, match, time, rank, prev: null, next: null };
    entries.push(e);
    return e;
  };
  ops.forEach((op, i) => {
    const ret = entry(i, null, op.ret, op.ret === op.call ? RANK_INSTANT_RETURN : RANK_RETURN);
    entry(i, ret, op.call, RANK_CALL);
  });
  entries.sort((a, b) => a.time - b.time || a.rank - b.rank || a.op - b.op);
  const head: Entry = { op: -1, match: null, time: -Infinity, rank: RANK_RETURN, prev: null, next: null };
  let last = head;
  for (const e of entries) {
    e.prev = last;
    last.next = e;
    last = e;
  }
  return head;
}

/** Whether an op called at `call` may be linearized before the op returning at `ret`. */
function callPrecedes(call: number, ret: Entry): boolean {
  return call < ret.time || (call === ret.time && ret.rank > RANK_CALL);
}

/** Unlinks a call entry and its return. */
function lift(call: Entry): void {
  const ret = call.match!;
  call.prev!.next = call.next;
  call.next!.prev = call.prev;
  ret.prev!.next = ret.next;
  if (ret.next) ret.next.prev = ret.prev;
}

/** Relinks what lift() removed; valid only in reverse order of lifting. */
function unlift(call: Entry): void {
  const ret = call.match!;
  ret.prev!.next = ret;
  if (ret.next) ret.next.prev = ret;
  call.prev!.next = call;
  call.next!.prev = call;
}

// ---------------------------------------------------------------------------
// Search

type SearchOutcome = { kind: 'ok' } | { kind: 'fail'; prefix: RegOp[] } | { kind: 'budget' };

interface Frame {
  /** The known op placed, by its call entry. */
  entry: Entry;
  /** The group of the unknown write placed just before it, or -1. */
  group: number;
  write: RegOp | null;
  stateBefore: number;
}

/**
 * Depth-first search for a linearization. Each step places a known op whose call
 * precedes the first pending return; if none fits, some earlier choice was wrong,
 * so it undoes the latest one and tries that choice's successors.
 *
 * Unknown writes are placed only just in time: immediately before a get or
 * checked delete that fails without them. Any linearization can be brought to
 * that form by dropping (deferring forever) each unknown write that is instead
 * followed by another write, by an op that would succeed anyway, or by nothing.
 * A step tries all plain placements before any that use an unknown write, so
 * that states using fewer unknown writes are visited first and cover the rest.
 */
class Search {
  private readonly known: RegOp[];
  private readonly unknown: RegOp[];
  private readonly groups: number[][];
  private readonly head: Entry;
  private readonly placedKnown: Bitset;
  private readonly placedUnknown: Bitset;
  /** How many members of each group are placed: always its first ones. */
  private readonly used: Int32Array;
  /** Groups by the state their writes leave, and those that leave the key present. */
  private readonly groupLeaving = new Map<number, number>();
  private readonly presentGroups: number[] = [];
  private readonly unreadGroup: number;
  private readonly visited = new VisitedSet();
  private readonly stack: Frame[] = [];
  private readonly longest = new LongestPrefix<Frame>();
  private state = ABSENT;

  constructor(
    problem: Problem,
    private readonly budget: number,
  ) {
    ({ known: this.known, unknown: this.unknown, groups: this.groups } = problem);
    this.head = buildEventList(this.known);
    this.placedKnown = new Bitset(this.known.length);
    this.placedUnknown = new Bitset(this.unknown.length);
    this.used = new Int32Array(this.groups.length);
    this.groups.forEach((group, g) => {
      const effect = effectOf(this.unknown[group[0]!]!);
      this.groupLeaving.set(effect, g);
      if (effect !== ABSENT) this.presentGroups.push(g);
    });
    this.unreadGroup = this.groupLeaving.get(problem.unread) ?? -1;
  }

  run(): SearchOutcome {
    let entry = this.head.next;
    let withWrites = false; // second pass over the candidates of the current step
    // Done once every known op is placed: leftover unknown writes may take effect afterwards, or never.
    while (entry !== null) {
      if (this.visited.size > this.budget) return { kind: 'budget' };
      if (entry.match !== null) {
        const placed = withWrites ? this.tryWithWrite(entry, 0) : this.tryPlain(entry);
        entry = placed ? this.head.next : entry.next;
        if (placed) withWrites = false;
      } else if (!withWrites) {
        withWrites = true;
        entry = this.head.next;
      } else {
        // entry's op must be placed by now but cannot be: an earlier choice was wrong.
        const frame = this.stack.pop();
        if (frame === undefined) return { kind: 'fail', prefix: this.deepestPrefix() };
        this.undo(frame);
        withWrites = frame.group !== -1;
        if (withWrites && this.tryWithWrite(frame.entry, frame.group + 1)) {
          entry = this.head.next;
          withWrites = false;
        } else {
          entry = frame.entry.next;
        }
      }
    }
    return { kind: 'ok' };
  }

  private deepestPrefix(): RegOp[] {
    const known = this.known;
    return this.longest.frames.flatMap((f) => (f.write ? [f.write, known[f.entry.op]!] : [known[f.entry.op]!]));
  }

  private tryPlain(call: Entry): boolean {
    const next = step(this.state, this.known[call.op]!);
    return next !== FAIL && this.place(call, -1, next);
  }

  /** Tries placing the next member of a group (from `first` on) just before call's op, to make it succeed. */
  private tryWithWrite(call: Entry, first: number): boolean {
    const op = this.known[call.op]!;
    // If op succeeds on its own, a write just before it is pointless.
    if (step(this.state, op) !== FAIL) return false;
    const deadline = firstReturnAfter(call);
    for (const group of this.groupsThatMightFix(op, deadline)) {
      if (group < first || !this.nextIsCallable(group, deadline)) continue;
      const index = this.groups[group]![this.used[group]!]!;
      const next = step(step(this.state, this.unknown[index]!), op);
      if (next !== FAIL && this.place(call, group, next)) return true;
    }
    return false;
  }

  /** In increasing order. Only called for a failing get or checked delete. */
  private groupsThatMightFix(op: RegOp, deadline: Entry): readonly number[] {
    if (op.kind === 'delete' && op.arg === 1) {
      // Any put lets this delete find the key present. A put of a value no get
      // reads is good for nothing else, so if one is at hand, a linearization
      // using another put here can swap the two puts' places.
      const unread = this.unreadGroup;
      return unread !== -1 && this.nextIsCallable(unread, deadline) ? [unread] : this.presentGroups;
    }
    const group = this.groupLeaving.get(op.kind === 'get' ? op.arg : ABSENT);
    return group === undefined ? [] : [group];
  }

  private nextIsCallable(group: number, deadline: Entry): boolean {
    const index = this.groups[group]![this.used[group]!];
    return index !== undefined && callPrecedes(this.unknown[index]!.call, deadline);
  }

  /** Places call's op (after the next member of `group`, if not -1) unless a visited state covers the result. */
  private place(call: Entry, group: number, next: number): boolean {
    const index = group === -1 ? -1 : this.groups[group]![this.used[group]!]!;
    if (index !== -1) this.placedUnknown.set(index);
    this.placedKnown.set(call.op);
    if (!this.visited.add(this.placedKnown, this.placedUnknown, next)) {
      this.placedKnown.clear(call.op);
      if (index !== -1) this.placedUnknown.clear(index);
      return false;
    }
    if (index !== -1) this.used[group]!++;
    lift(call);
    const write = index === -1 ? null : this.unknown[index]!;
    this.stack.push({ entry: call, group, write, stateBefore: this.state });
    this.longest.pushed(this.stack);
    this.state = next;
    return true;
  }

  private undo(frame: Frame): void {
    this.longest.popped(this.stack.length);
    this.state = frame.stateBefore;
    this.placedKnown.clear(frame.entry.op);
    unlift(frame.entry);
    if (frame.group !== -1) {
      const group = frame.group;
      this.used[group]!--;
      this.placedUnknown.clear(this.groups[group]![this.used[group]!]!);
    }
  }
}

// ---------------------------------------------------------------------------
// Search for keys with compare-and-swap

interface CasFrame {
  /** The op placed (known or unknown), by its call entry; entry.op indexes CasSearch.ops. */
  entry: Entry;
  stateBefore: number;
}

/**
 * Porcupine's search, without the just-in-time reduction: a CAS reads the state,
 * so an unknown write may matter just before one (enabling a swap, making a failed
 * one fail, changing what an unknown CAS leaves), and unknown CAS ops chain.
 *
 * Every op, known or unknown, is in the event list; an unknown op's return is at
 * +Infinity, so it may be linearized at any point after its call. The search is
 * done once every known op is placed: the unknown ops left over take effect after
 * all of them (an unknown op's step never fails: no output is checked), which
 * changes nothing observed, the same as never taking effect.
 *
 * Unknown ops with the same effect (same kind and values; groupByCasEffect) are
 * interchangeable, and one called earlier may go wherever one called later may,
 * as none has a deadline: so each group is drawn in call order. (Give the k-th
 * use of a group in a linearization the group's k-th member: at the k-th use at
 * least k members were callable, since deadlines only move later along a
 * linearization, so the k-th in call order was too.)
 *
 * The visited set prunes a state (K, U, s) when a state entered before has the
 * same known ops K and register state s and a subset of the unknown ops U (in
 * each group, no more members used). Every continuation of the pruned state,
 * with each group's members renumbered to the other state's next ones (called no
 * later), is open to that state: the ops only it has left are optional and
 * constrain no other op. So its shortest successful continuation is no longer
 * than the pruned one's, and by induction on that length the search succeeds
 * once any state from which success is reachable has been entered, whether the
 * state that prunes it is finished or still on the stack.
 */
class CasSearch {
  /** Known ops first (indices below knownCount), then unknown ones. */
  private readonly ops: RegOp[];
  private readonly knownCount: number;
  private readonly head: Entry;
  private readonly placedKnown: Bitset;
  private readonly placedUnknown: Bitset;
  /** For each unknown op (by its index less knownCount): its group, and the group's members in call order. */
  private readonly groupOf: Int32Array;
  private readonly groups: number[][];
  /** How many members of each group are placed: always its first ones. */
  private readonly used: Int32Array;
  private readonly visited = new VisitedSet();
  private readonly stack: CasFrame[] = [];
  private readonly longest = new LongestPrefix<CasFrame>();
  private placedKnownCount = 0;
  private state = ABSENT;

  constructor(
    problem: CompiledOps,
    private readonly budget: number,
  ) {
    this.ops = [...problem.known, ...problem.unknown];
    this.knownCount = problem.known.length;
    this.head = buildEventList(this.ops);
    this.placedKnown = new Bitset(this.knownCount);
    this.placedUnknown = new Bitset(problem.unknown.length);
    this.groups = groupByCasEffect(problem.unknown);
    this.groupOf = new Int32Array(problem.unknown.length);
    this.groups.forEach((group, g) => group.forEach((i) => (this.groupOf[i] = g)));
    this.used = new Int32Array(this.groups.length);
  }

  run(): SearchOutcome {
    let entry = this.head.next;
    while (this.placedKnownCount < this.knownCount) {
      if (this.visited.size > this.budget) return { kind: 'budget' };
      // An unplaced known op's return is finite, so it comes before any +Infinity one and the end.
      assert(entry !== null, 'the event list ended with known ops unplaced');
      if (entry.match !== null) {
        entry = this.tryPlace(entry) ? this.head.next : entry.next;
      } else {
        // entry's op must be placed by now but cannot be: an earlier choice was wrong.
        const frame = this.stack.pop();
        if (frame === undefined) return { kind: 'fail', prefix: this.longest.frames.map((f) => this.ops[f.entry.op]!) };
        this.undo(frame);
        entry = frame.entry.next;
      }
    }
    return { kind: 'ok' };
  }

  private tryPlace(call: Entry): boolean {
    const index = call.op;
    const unknown = index - this.knownCount;
    if (unknown >= 0 && this.groups[this.groupOf[unknown]!]![this.used[this.groupOf[unknown]!]!] !== unknown) {
      return false; // not its group's next member
    }
    const next = step(this.state, this.ops[index]!);
    if (next === FAIL) return false;
    this.mark(index, true);
    if (!this.visited.add(this.placedKnown, this.placedUnknown, next)) {
      this.mark(index, false);
      return false;
    }
    lift(call);
    this.stack.push({ entry: call, stateBefore: this.state });
    this.longest.pushed(this.stack);
    this.state = next;
    return true;
  }

  private undo(frame: CasFrame): void {
    this.longest.popped(this.stack.length);
    this.state = frame.stateBefore;
    this.mark(frame.entry.op, false);
    unlift(frame.entry);
  }

  /** Records op `index` as placed or not, in the bitsets, the known count and its group's count. */
  private mark(index: number, placed: boolean): void {
    const unknown = index - this.knownCount;
    if (unknown < 0) {
      if (placed) this.placedKnown.set(index);
      else this.placedKnown.clear(index);
      this.placedKnownCount += placed ? 1 : -1;
    } else {
      if (placed) this.placedUnknown.set(unknown);
      else this.placedUnknown.clear(unknown);
      this.used[this.groupOf[unknown]!]! += placed ? 1 : -1;
    }
  }
}

/** Like groupByEffect, for every kind of unknown op: same kind and same values, so the same step. */
function groupByCasEffect(unknown: RegOp[]): number[][] {
  const groups = new Map<string, number[]>();
  unknown.forEach((op, i) => {
    const effect = op.kind === 'cas' ? `cas ${op.expected} ${op.arg}` : op.kind === 'put' ? `put ${op.arg}` : op.kind;
    const group = groups.get(effect);
    if (group) group.push(i);
    else groups.set(effect, [i]);
  });
  return [...groups.values()];
}

function firstReturnAfter(call: Entry): Entry {
  let entry = call.next!;
  while (entry.match !== null) entry = entry.next!;
  return entry;
}

/** Tracks the deepest stack seen, copying only the part that changed since the last record. */
class LongestPrefix<F> {
  readonly frames: F[] = [];
  /** How much of the current stack is known to equal frames[]. */
  private synced = 0;

  pushed(stack: F[]): void {
    if (stack.length <= this.frames.length) return;
    for (let i = this.synced; i < stack.length; i++) this.frames[i] = stack[i]!;
    this.synced = stack.length;
  }

  popped(depth: number): void {
    if (depth < this.synced) this.synced = depth;
  }
}

// ---------------------------------------------------------------------------
// Bitset with an incrementally maintained Zobrist hash

class Bitset {
  readonly words: Uint32Array;
  hash = 0;
  private readonly zobrist: Int32Array;
  // Hints, kept at or before the first non-full word and at or after the last
  // non-zero word, so that finding them costs little as the search moves along.
  private fullHint = 0;
  private usedHint = -1;

  constructor(size: number) {
    this.words = new Uint32Array(Math.ceil(size / 32));
    this.zobrist = randomInts(size);
  }

  set(i: number): void {
    const w = i >>> 5;
    this.words[w]! |= 1 << (i & 31);
    this.hash ^= this.zobrist[i]!;
    if (w > this.usedHint) this.usedHint = w;
  }

  clear(i: number): void {
    const w = i >>> 5;
    this.words[w]! &= ~(1 << (i & 31));
    this.hash ^= this.zobrist[i]!;
    if (w < this.fullHint) this.fullHint = w;
  }

  firstNonFullWord(): number {
    while (this.fullHint < this.words.length && this.words[this.fullHint] === 0xffffffff) this.fullHint++;
    return this.fullHint;
  }

  lastNonZeroWord(): number {
    while (this.usedHint >= 0 && this.words[this.usedHint] === 0) this.usedHint--;
    return this.usedHint;
  }
}

/** Deterministic (splitmix32) so that runs are reproducible. */
function randomInts(n: number): Int32Array {
  const out = new Int32Array(n);
  let seed = 0x2545f491;
  for (let i = 0; i < n; i++) {
    seed = (seed + 0x9e3779b9) | 0;
    let z = seed;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    out[i] = z ^ (z >>> 16);
  }
  return out;
}

// ---------------------------------------------------------------------------
// Visited set

const UNRELATED = 0;
const COVERED = 1; // the stored state covers the new one
const SUPERSEDED = 2; // the new state covers the stored one
type Relation = typeof UNRELATED | typeof COVERED | typeof SUPERSEDED;

// Per entry: state, first non-full known word, known window length, unknown
// words length, arena offset, next entry in the hash chain.
const META_FIELDS = 6;

/**
 * Set of search states: (placed known ops, placed unknown ops, register state).
 * A state is covered by a stored one with the same known ops and register state
 * whose unknown ops are a subset of its own: that one had every option this one
 * has, so exploring this one cannot succeed where that one failed.
 *
 * The known-op set is stored as its window from the first non-full word to the
 * last non-zero word (all ones below, all zeros above), since whole bitsets would
 * cost O(ops) per state; everything lives in typed-array arenas, since millions
 * of small objects would strain the garbage collector.
 */
class VisitedSet {
  size = 0;
  private readonly chains = new Map<number, number>(); // hash -> newest entry
  private meta = new Int32Array(META_FIELDS * 1024);
  private arena = new Uint32Array(4096);
  private arenaUsed = 0;

  /** Adds the state; returns false if a stored state covers it. */
  add(known: Bitset, unknown: Bitset, state: number): boolean {
    const lo = known.firstNonFullWord();
    const len = Math.max(0, known.lastNonZeroWord() + 1 - lo);
    const unknownLen = unknown.lastNonZeroWord() + 1;
    // Unknown ops are left out of the hash so that covering states share a chain.
    const hash = known.hash ^ Math.imul(state + 1, 0x9e3779b1);
    let head = this.chains.get(hash) ?? -1;
    let covered = false;
    for (let e = head, prev = -1; e !== -1 && !covered; ) {
      const next = this.meta[e * META_FIELDS + 5]!;
      const relation = this.compare(e, known.words, lo, len, unknown.words, unknownLen, state);
      covered = relation === COVERED;
      if (relation !== SUPERSEDED) prev = e;
      // A stored state that this one covers will never cover anything this one does not.
      else if (prev === -1) head = next;
      else this.meta[prev * META_FIELDS + 5] = next;
      e = next;
    }
    if (!covered) {
      const knownWindow = known.words.subarray(lo, lo + len);
      this.append([state, lo, len, unknownLen], knownWindow, unknown.words.subarray(0, unknownLen), head);
      head = this.size - 1;
    }
    this.chains.set(hash, head);
    return !covered;
  }

  /** How stored entry e relates to the given state. */
  private compare(
    e: number,
    known: Uint32Array,
    lo: number,
    len: number,
    unknown: Uint32Array,
    unknownLen: number,
    state: number,
  ): Relation {
    const m = e * META_FIELDS;
    if (this.meta[m] !== state || this.meta[m + 1] !== lo || this.meta[m + 2] !== len) return UNRELATED;
    const offset = this.meta[m + 4]!;
    for (let i = 0; i < len; i++) if (this.arena[offset + i] !== known[lo + i]) return UNRELATED;
    const storedLen = this.meta[m + 3]!;
    let storedSubset = storedLen <= unknownLen;
    let storedSuperset = storedLen >= unknownLen;
    for (let i = 0; i < Math.min(storedLen, unknownLen); i++) {
      const stored = this.arena[offset + len + i]!;
      storedSubset &&= (stored & ~unknown[i]!) === 0;
      storedSuperset &&= (~stored & unknown[i]!) === 0;
    }
    return storedSubset ? COVERED : storedSuperset ? SUPERSEDED : UNRELATED;
  }

  private append(fields: number[], knownWindow: Uint32Array, unknownWords: Uint32Array, next: number): void {
    const size = knownWindow.length + unknownWords.length;
    if ((this.size + 1) * META_FIELDS > this.meta.length) this.meta = grow(this.meta, this.meta.length * 2);
    if (this.arenaUsed + size > this.arena.length) {
      this.arena = grow(this.arena, Math.max(this.arena.length * 2, this.arenaUsed + size));
    }
    this.arena.set(knownWindow, this.arenaUsed);
    this.arena.set(unknownWords, this.arenaUsed + knownWindow.length);
    this.meta.set(fields, this.size * META_FIELDS);
    this.meta[this.size * META_FIELDS + 4] = this.arenaUsed;
    this.meta[this.size * META_FIELDS + 5] = next;
    this.arenaUsed += size;
    this.size++;
  }
}

function grow<T extends Int32Array | Uint32Array>(array: T, length: number): T {
  const bigger = new (array.constructor as new (n: number) => T)(length);
  bigger.set(array);
  return bigger;
}

// ---------------------------------------------------------------------------
// Explanations

function explainFailure(key: string, problem: CompiledOps, prefix: RegOp[]): string {
  const placed = new Set(prefix);
  const completed = prefix.filter((op) => op.known).length;
  // The op whose deadline the search kept running into: the earliest-returning unplaced one.
  let blocked: RegOp | undefined;
  for (const op of problem.known) {
    if (!placed.has(op) && (blocked === undefined || op.ret < blocked.ret)) blocked = op;
  }
  const tail = prefix.slice(-3).map((op) => describeOp(op.source));
  const prefixText =
    prefix.length === 0
      ? 'the longest linearizable prefix found is empty (the key starts absent)'
      : `the longest linearizable prefix found has ${prefix.length} ops ` +
        `(${completed} of ${problem.known.length} completed ones), ` +
        `ending ${prefix.length > 3 ? '..., ' : ''}${tail.join(', ')}, leaving the key ${stateAfter(prefix)}`;
  const blockedText = blocked ? `; then ${describeOp(blocked.source)} could not be placed` : '';
  return `key ${JSON.stringify(key)} is not linearizable: ${prefixText}${blockedText}`;
}

/**
 * Shows the actual value, which the search itself may have merged with other unread ones.
 * Replaying the prefix on real values is faithful: merged values are ones no get reads
 * and no CAS expects, so no step told them apart.
 */
function stateAfter(prefix: RegOp[]): string {
  let state: string | null = null;
  for (const { source: op } of prefix) {
    if (op.kind === 'put') state = op.value!;
    else if (op.kind === 'delete') state = null;
    else if (op.kind === 'cas' && state === op.expected) state = op.value!;
  }
  return state === null ? 'absent' : `= ${JSON.stringify(state)}`;
}

/** A one-line rendering of an op, e.g. `client 2 get → "a" [30, 40]`. */
export function describeOp(op: HistoryOp): string {
  const times = `[${op.call}, ${op.known ? op.ret : '?'}]`;
  const who = `client ${op.client}`;
  switch (op.kind) {
    case 'put':
      return `${who} put ${JSON.stringify(op.value)} ${times}`;
    case 'get': {
      const seen = op.output?.value;
      return `${who} get → ${seen === null ? 'absent' : seen === undefined ? '?' : JSON.stringify(seen)} ${times}`;
    }
    case 'delete': {
      const existed = op.known ? op.output?.existed : undefined;
      const note = existed === undefined ? '' : existed ? ' (existed)' : ' (was absent)';
      return `${who} delete${note} ${times}`;
    }
    case 'cas': {
      const expected = op.expected === null ? 'absent' : JSON.stringify(op.expected);
      const succeeded = op.known ? op.output?.succeeded : undefined;
      const note = succeeded === undefined ? '' : succeeded ? ' (succeeded)' : ' (failed)';
      return `${who} cas ${expected} → ${JSON.stringify(op.value)}${note} ${times}`;
    }
  }
}
