import { credentials, Metadata, ServiceError } from '@grpc/grpc-js';
import { parentPort, workerData } from 'node:worker_threads';
import { CompareResult, CompareTarget, Consistency, KVClient, TxnResponse } from '../../gen/cairn/kv/v1/kv';
import { SeededRandom } from '../../src/raft/random';
import { ERROR_CODE_METADATA } from '../../src/server/status';

/** One operation as written to history.jsonl: any external checker can read it. */
export interface RecordedOp {
  client: number;
  op: 'put' | 'get' | 'delete' | 'cas';
  key: string;
  /** put, cas: the value written (by a cas, only if it swapped). */
  value?: string;
  /** cas: the value it swaps from (null: only if the key does not exist). */
  expected?: string | null;
  /** get: { value: string | null }; delete: { existed: boolean }; cas: { succeeded: boolean }; put: {}. Absent when unknown. */
  output?: { value?: string | null; existed?: boolean; succeeded?: boolean };
  /** process.hrtime in ns (one clock for every worker: they are threads of one process). */
  call: number;
  return?: number;
  known: boolean;
}

export interface WorkloadConfig {
  client: number;
  runId: string;
  endpoints: string[];
  keys: string[];
  seed: number;
  durationMs: number;
  /** How long one operation may keep retrying before its outcome is recorded as unknown. */
  opDeadlineMs: number;
  attemptTimeoutMs: number;
  /** Upper bound on operations, whatever the duration. */
  maxOps: number;
}

/** cairn error codes that prove this attempt changed nothing (an earlier attempt may still have applied). */
const NOT_APPLIED = new Set(['NOT_LEADER', 'NO_LEADER', 'LEADER_UNREACHABLE', 'OVERLOADED', 'PROPOSAL_DROPPED', 'SESSION_EXPIRED', 'SESSION_LIMIT']);

const now = () => Number(process.hrtime.bigint());

/**
 * A chaos client: puts, gets, deletes and compare-and-swaps (KV.Txn) over a small key space through random nodes,
 * retrying a write with the same client id and sequence (exactly-once), recording each
 * operation's call and return time and whether its outcome is known.
 */
export async function runWorkload(config: WorkloadConfig): Promise<RecordedOp[]> {
  const rand = new SeededRandom(config.seed);
  const clients = config.endpoints.map((e) => new KVClient(e, credentials.createInsecure()));
  const history: RecordedOp[] = [];
  // A write that ends without an answer is never retried again, so the next write starts
  // a new session: it must not claim answers (lowest_unanswered_sequence) it never got.
  let generation = 0;
  let answered = false;
  let sequence = 0;
  // What each key was last seen to hold: a CAS swaps from it (often stale, so some fail).
  const lastSeen = new Map<string, string>();
  const end = Date.now() + config.durationMs;
  try {
    while (Date.now() < end && history.length < config.maxOps) {
      const key = rand.pick(config.keys);
      const kind = rand.pick(['put', 'put', 'get', 'get', 'delete', 'cas'] as const);
      if (kind === 'get') {
        const op = await attemptGet(clients, rand, config, key);
        if (op) history.push(op);
        if (op?.output?.value) lastSeen.set(key, op.output.value);
      } else {
        const session = { clientId: `${config.runId}-client-${config.client}-g${generation}`, sequence: ++sequence };
        const expected = kind === 'cas' ? (rand.chance(0.2) ? null : (lastSeen.get(key) ?? null)) : undefined;
        const op = await attemptWrite(clients, rand, config, kind, key, { ...session, lowestUnansweredSequence: answered ? sequence : 1 }, expected);
        if (op) history.push(op);
        if (op?.known && op.value !== undefined && (op.op === 'put' || op.output?.succeeded)) lastSeen.set(key, op.value);
        answered = op?.known === true;
        if (!answered) generation++;
      }
    }
  } finally {
    for (const client of clients) client.close();
  }
  return history;
}

async function attemptWrite(
  clients: KVClient[],
  rand: SeededRandom,
  config: WorkloadConfig,
  kind: 'put' | 'delete' | 'cas',
  key: string,
  session: { clientId: string; sequence: number; lowestUnansweredSequence: number },
  expected?: string | null,
): Promise<RecordedOp | undefined> {
  const { sequence } = session;
  const value = kind !== 'delete' ? `c${config.client}-${sequence}` : undefined;
  const call = now();
  const deadline = Date.now() + config.opDeadlineMs;
  let maybeApplied = false;
  for (let attempt = 0; Date.now() < deadline; attempt++) {
    const client = rand.pick(clients);
    try {
      if (kind === 'put') {
        await unary((md, opts, cb) => client.put({ key: Buffer.from(key), value: Buffer.from(value!), prevKv: false, ...session }, md, opts, cb), config);
        return { client: config.client, op: 'put', key, value, output: {}, call, return: now(), known: true };
      }
      if (kind === 'cas') {
        const response = await unary<TxnResponse>((md, opts, cb) => client.txn({ ...casRequest(key, expected!, value!), ...session }, md, opts, cb), config);
        return { client: config.client, op: 'cas', key, value, expected, output: { succeeded: response.succeeded }, call, return: now(), known: true };
      }
      const response = await unary<{ deleted: boolean }>((md, opts, cb) => client.delete({ key: Buffer.from(key), prevKv: false, ...session }, md, opts, cb), config);
      return { client: config.client, op: 'delete', key, output: { existed: response.deleted }, call, return: now(), known: true };
    } catch (err) {
      const code = (err as ServiceError).metadata?.get(ERROR_CODE_METADATA)[0];
      if (code === 'INVALID_ARGUMENT') throw err;
      if (!NOT_APPLIED.has(String(code))) maybeApplied = true;
      await sleep(Math.min(50 * 2 ** attempt, 500));
    }
  }
  // Every attempt was refused before it could apply: the write never happened.
  return maybeApplied ? { client: config.client, op: kind, key, value, expected, call, known: false } : undefined;
}

/** Put `value` if `key` holds `expected` (null: if it does not exist), as one Txn. */
function casRequest(key: string, expected: string | null, value: string) {
  const k = Buffer.from(key);
  const compare =
    expected === null
      ? { key: k, target: CompareTarget.COMPARE_TARGET_VERSION, result: CompareResult.COMPARE_RESULT_EQUAL, targetUnion: { $case: 'version' as const, value: 0 } }
      : { key: k, target: CompareTarget.COMPARE_TARGET_VALUE, result: CompareResult.COMPARE_RESULT_EQUAL, targetUnion: { $case: 'value' as const, value: Buffer.from(expected) } };
  const put = { key: k, value: Buffer.from(value), prevKv: false, clientId: '', sequence: 0, lowestUnansweredSequence: 0 };
  return { compare: [compare], success: [{ request: { $case: 'requestPut' as const, value: put } }], failure: [] };
}

async function attemptGet(clients: KVClient[], rand: SeededRandom, config: WorkloadConfig, key: string): Promise<RecordedOp | undefined> {
  const call = now();
  const deadline = Date.now() + config.opDeadlineMs;
  for (let attempt = 0; Date.now() < deadline; attempt++) {
    const client = rand.pick(clients);
    try {
      const response = await unary<{ kv?: { value: Buffer } }>(
        (md, opts, cb) => client.get({ key: Buffer.from(key), consistency: Consistency.CONSISTENCY_LINEARIZABLE }, md, opts, cb),
        config,
      );
      return { client: config.client, op: 'get', key, output: { value: response.kv ? response.kv.value.toString() : null }, call, return: now(), known: true };
    } catch {
      await sleep(Math.min(50 * 2 ** attempt, 500));
    }
  }
  return undefined; // a read that never completed says nothing
}

function unary<T = unknown>(
  invoke: (metadata: Metadata, options: { deadline: number }, callback: (err: ServiceError | null, value?: T) => void) => void,
  config: WorkloadConfig,
): Promise<T> {
  return new Promise((resolve, reject) =>
    invoke(new Metadata(), { deadline: Date.now() + config.attemptTimeoutMs }, (err, value) => (err ? reject(err) : resolve(value as T))),
  );
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

if (parentPort && workerData) {
  runWorkload(workerData as WorkloadConfig).then(
    (history) => parentPort!.postMessage({ history }),
    (err) => parentPort!.postMessage({ error: String((err as Error).stack ?? err) }),
  );
}
