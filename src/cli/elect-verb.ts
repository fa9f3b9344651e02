import { Event, EventType, KeyValue } from '../../gen/cairn/kv/v1/kv';
import { CairnClient } from './client';
import { UsageError } from './flags';
import {
  createIfAbsent,
  deletedAfter,
  KeptAliveLease,
  LEASE_LOST_EXIT_CODE,
  ttlSecondsFlag,
  Turn,
  TURN_POLL_MAX_MS,
  TURN_POLL_MIN_MS,
  untilAnswered,
  waitForTurn,
} from './lease-recipes';
import { sleep } from './sleep';
import { watchEvents } from './watch-verb';

/**
 * `cairn elect NAME PROPOSAL [--ttl S]` and `cairn elect NAME --listen`: a leader election
 * built only on Lease, Txn and Watch, as etcdctl's `elect` (docs/recipes.md). Every
 * candidate keeps a lease alive and creates its own key `election/NAME/<lease-hex>` (value:
 * its proposal); the leader is the candidate whose key has the lowest create revision. A
 * candidate waits, watching the key just ahead of it (the highest create revision below
 * its own), until no key is ahead: it then leads until interrupted (it resigns: its lease is
 * revoked, its key deleted) or until its lease or key is lost (exit LEASE_LOST_EXIT_CODE).
 * While the cluster cannot answer (an election under way, no node reachable) a candidate
 * keeps trying (untilAnswered), for as long as its lease may still be alive.
 */
export const ELECT_VERB_SPECS = {
  elect: { usage: ['NAME PROPOSAL [--ttl SECONDS]', 'NAME --listen'], minArgs: 1, maxArgs: 2, flags: ['ttl', 'listen'] },
} as const;

/** Flags of `cairn elect` that take no value. */
export const ELECT_BOOLEAN_FLAGS = ['listen'] as const;

/** Every election's keys live under this prefix: election NAME's under `election/NAME/`. */
export const ELECTION_KEY_PREFIX = 'election/';

/**
 * The most keys one look at an election reads (its candidates; for --listen, with their
 * proposals, within the server's --max-range-bytes). An election with more fails with a
 * clear error rather than deciding on part of its candidates.
 */
export const ELECTION_MAX_CANDIDATES = 1000;

export interface ElectVerbOptions {
  /** Ends the campaign or the leadership (resigning) or --listen when aborted: the CLI aborts it on SIGINT and SIGTERM. */
  signal?: AbortSignal;
  /** Where reasons for giving up go (stderr on the command line). */
  warn?: (line: string) => void;
}

export async function runElectVerb(client: CairnClient, args: string[], flags: Record<string, string>, print: (line: string) => void, usage: UsageError, options: ElectVerbOptions): Promise<number> {
  const [name, proposal] = args;
  if (!name) throw new UsageError(`NAME must not be empty; ${usage.message}`);
  const listen = flags.listen !== undefined;
  if (listen && proposal !== undefined) throw new UsageError(`elect --listen observes and takes no PROPOSAL; ${usage.message}`);
  if (listen && flags.ttl !== undefined) throw new UsageError(`--ttl is for a campaign, not --listen; ${usage.message}`);
  if (!listen && proposal === undefined) throw new UsageError(`elect NAME needs a PROPOSAL to campaign with (or --listen to observe); ${usage.message}`);
  const ttlSeconds = listen ? 0 : ttlSecondsFlag(flags);
  if (!options.signal) throw new UsageError('elect runs until interrupted; use it from the command line, not the shell');
  const warn = options.warn ?? (() => undefined);
  if (listen) return observe(client, name, print, warn, options.signal);
  return campaign(client, name, Buffer.from(proposal!), ttlSeconds, print, warn, options.signal);
}

export function electionPrefix(name: string): Buffer {
  return Buffer.from(`${ELECTION_KEY_PREFIX}${name}/`);
}

/** `KEY<TAB>PROPOSAL`, as `cairn list` prints a key: the leader's key names its lease. */
function describeLeader(kv: KeyValue): string {
  return `${Buffer.from(kv.key).toString()}\t${Buffer.from(kv.value).toString()}`;
}

async function campaign(client: CairnClient, name: string, proposal: Buffer, ttlSeconds: number, print: (line: string) => void, warn: (line: string) => void, signal: AbortSignal): Promise<number> {
  const lease = await KeptAliveLease.grant(client, ttlSeconds);
  const prefix = electionPrefix(name);
  const key = Buffer.concat([prefix, Buffer.from(lease.hex)]);
  const retryWarn = (line: string) => warn(`cairn elect: ${line}`);
  try {
    const created = await untilAnswered(() => createIfAbsent(client, key, proposal, lease.id), () => lease.lost !== undefined, retryWarn, signal);
    if (signal.aborted) return 0;
    if (created === undefined) {
      warn(`cairn elect: gave up the campaign for ${name}: ${lease.lost}`);
      return LEASE_LOST_EXIT_CODE;
    }
    // Not created: a retried Txn whose first try did create it (the key is ours: its lease is).
    const revision = created.created ? created.revision : (created.existing?.createRevision ?? 0);
    let keyLost: string | undefined = revision === 0 ? `its key ${key.toString()} was deleted` : undefined;
    const lost = () => lease.lost ?? keyLost;
    const elected = await waitForTurn(
      client,
      async (): Promise<Turn> => {
        const { candidates, revision: readRevision } = await readCandidates(client, prefix, true);
        const own = candidates.find((kv) => kv.key.equals(key));
        if (!own || own.createRevision !== revision) {
          keyLost = `its key ${key.toString()} was deleted`;
          return { kind: 'again' };
        }
        const ahead = candidates.filter((kv) => kv.createRevision < revision).reduce<KeyValue | undefined>((last, kv) => (!last || kv.createRevision > last.createRevision ? kv : last), undefined);
        return ahead ? { kind: 'behind', ahead, readRevision } : { kind: 'ours' };
      },
      () => lost() !== undefined,
      signal,
      retryWarn,
    );
    if (signal.aborted) return 0;
    // A lost lease is checked again here: no leader line may follow its loss.
    if (!elected || lost() !== undefined) {
      warn(`cairn elect: gave up the campaign for ${name}: ${lost()}`);
      return LEASE_LOST_EXIT_CODE;
    }
    print(describeLeader({ key, value: proposal, createRevision: revision, modRevision: revision, version: 1 }));
    const reason = await lead(client, key, revision, lease, signal);
    if (reason === undefined) return 0;
    warn(`cairn elect: no longer the leader of ${name}: ${reason}`);
    return LEASE_LOST_EXIT_CODE;
  } finally {
    await lease.revoke();
  }
}

/**
 * Leads until `signal` aborts (undefined: resign) or leadership is lost (the reason): the
 * lease lost, or our key deleted (seen by a watch on it, which also shows an expiry at once).
 */
async function lead(client: CairnClient, key: Buffer, revision: number, lease: KeptAliveLease, signal: AbortSignal): Promise<string | undefined> {
  const stop = new AbortController();
  const abort = () => stop.abort();
  signal.addEventListener('abort', abort);
  lease.onLost(abort);
  const deleted = `its key ${key.toString()} was deleted`;
  try {
    let from = revision + 1;
    for (let delayMs = TURN_POLL_MIN_MS; !stop.signal.aborted; delayMs = Math.min(TURN_POLL_MAX_MS, delayMs * 2)) {
      if (await deletedAfter(client, key, from, Number.POSITIVE_INFINITY, stop.signal)) return deleted;
      // The watch gave up (compacted history, every endpoint failing over and over): look
      // at the key itself, and watch again from now; meanwhile the renewals still tell.
      await sleep(delayMs, stop.signal);
      if (stop.signal.aborted) break;
      const now = await client.get(key).catch(() => undefined);
      if (now && now.kv?.createRevision !== revision) return deleted;
      if (now?.header) from = now.header.revision + 1;
    }
    return signal.aborted ? undefined : lease.lost;
  } finally {
    signal.removeEventListener('abort', abort);
  }
}

/** The election's candidates (keys directly under `prefix`, not a nested election's), at one revision. */
async function readCandidates(client: CairnClient, prefix: Buffer, keysOnly: boolean): Promise<{ candidates: KeyValue[]; revision: number }> {
  const response = await client.list(prefix, ELECTION_MAX_CANDIDATES, keysOnly);
  if (response.more) throw new Error(`election ${prefix.toString()} has more than ${ELECTION_MAX_CANDIDATES} keys${keysOnly ? '' : ' (or more proposal bytes than one range returns)'} (ELECTION_MAX_CANDIDATES)`);
  return { candidates: response.kvs.filter((kv) => isCandidate(kv.key, prefix)), revision: response.header?.revision ?? 0 };
}

function isCandidate(key: Uint8Array, prefix: Buffer): boolean {
  const k = Buffer.from(key);
  return k.length > prefix.length && k.subarray(0, prefix.length).equals(prefix) && !k.subarray(prefix.length).includes('/');
}

function lowest(candidates: Iterable<KeyValue>): KeyValue | undefined {
  let first: KeyValue | undefined;
  for (const kv of candidates) if (!first || kv.createRevision < first.createRevision) first = kv;
  return first;
}

/**
 * `--listen`: prints the leader, then each new leader (or new proposal of the leader) as the
 * watch on the prefix shows it, revision by revision, so each candidate whose key headed the
 * queue is printed, in order (as etcd's observe: a killed leader's key heads it until its
 * TTL). When the watch gives up (a compaction, every endpoint down), it reads the candidates
 * again after a backoff; leaders it could not see meanwhile are not printed. A cluster that
 * cannot answer now (unreachable, no leader) is waited for; a definitive refusal ends it (exit 1).
 */
async function observe(client: CairnClient, name: string, print: (line: string) => void, warn: (line: string) => void, signal: AbortSignal): Promise<number> {
  const prefix = electionPrefix(name);
  let shown: KeyValue | undefined;
  const show = (leader: KeyValue | undefined) => {
    if (!leader || (shown && sameLeader(shown, leader))) return;
    shown = leader;
    print(describeLeader(leader));
  };
  for (let delayMs = TURN_POLL_MIN_MS; !signal.aborted; delayMs = Math.min(TURN_POLL_MAX_MS, delayMs * 2)) {
    const snapshot = await untilAnswered(() => readCandidates(client, prefix, false), () => false, (line) => warn(`cairn elect: ${line}`), signal);
    if (snapshot === undefined) break;
    const candidates = new Map(snapshot.candidates.map((kv) => [Buffer.from(kv.key).toString('hex'), kv]));
    show(lowest(candidates.values()));
    let tooMany = false;
    const command = { key: prefix, prefix: true, startRevision: snapshot.revision + 1, prevKv: false };
    await watchEvents(command, client.endpoints, client.dial, () => client.callMetadata(), (events) => {
      delayMs = TURN_POLL_MIN_MS / 2;
      events.forEach((event, i) => {
        applyEvent(candidates, event, prefix);
        // A revision's events arrive together: the leader is looked at once each whole revision.
        if (events[i + 1]?.kv?.modRevision !== event.kv?.modRevision) show(lowest(candidates.values()));
      });
      tooMany = candidates.size > ELECTION_MAX_CANDIDATES;
      return tooMany;
    }, signal);
    if (tooMany) throw new Error(`election ${prefix.toString()} has more than ${ELECTION_MAX_CANDIDATES} candidates (ELECTION_MAX_CANDIDATES)`);
    await sleep(delayMs, signal);
  }
  return 0;
}

function applyEvent(candidates: Map<string, KeyValue>, event: Event, prefix: Buffer): void {
  const kv = event.kv!;
  if (!isCandidate(kv.key, prefix)) return;
  const id = Buffer.from(kv.key).toString('hex');
  if (event.type === EventType.EVENT_TYPE_DELETE) candidates.delete(id);
  else candidates.set(id, kv);
}

function sameLeader(a: KeyValue, b: KeyValue): boolean {
  return Buffer.from(a.key).equals(Buffer.from(b.key)) && a.createRevision === b.createRevision && Buffer.from(a.value).equals(Buffer.from(b.value));
}
