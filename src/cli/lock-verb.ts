import { spawn } from 'node:child_process';
import { hostname } from 'node:os';
import { CompareResult, CompareTarget } from '../../gen/cairn/kv/v1/kv';
import { formatLeaseId } from '../kv/leases';
import { CairnClient } from './client';
import { UsageError } from './flags';
import { KEEP_ALIVE_TTL_FRACTION } from './lease-verbs';
import { runWatch } from './watch-verb';

/**
 * `cairn lock NAME [--ttl S] -- CMD ...`: runs CMD while holding the lock NAME, built only
 * on Lease, Txn and Watch (docs/recipes.md):
 *   1. grant a lease of --ttl seconds and keep it alive (every TTL/3) for as long as this runs;
 *   2. Txn: if NAME does not exist (create_revision = 0), put NAME with the lease, else read it;
 *   3. if another holder has it, watch NAME from just after the holder's write until it is
 *      deleted (released, or its lease expired), then try again; a watch that cannot be
 *      opened, or that sees nothing for LOCK_WATCH_MAX_WAIT_MS, only means trying again
 *      sooner (after LOCK_POLL_MIN_MS, doubling to LOCK_POLL_MAX_MS);
 *   4. run CMD; when it exits, revoke the lease (deleting NAME) and exit with CMD's code.
 * A holder that dies stops keeping its lease alive: the leader expires it after the TTL,
 * NAME is deleted with it, and the next poller's Txn takes the lock. A holder whose lease is
 * found expired (ttl 0) kills CMD and exits LOCK_LOST_EXIT_CODE: it no longer holds the lock.
 */
export const LOCK_VERB_SPECS = {
  lock: { usage: ['NAME [--ttl SECONDS] -- CMD [ARGS...]'], minArgs: 2, maxArgs: 10_000, flags: ['ttl'] },
} as const;

export const DEFAULT_LOCK_TTL_SECONDS = 10;
export const LOCK_POLL_MIN_MS = 100;
export const LOCK_POLL_MAX_MS = 1_000;
/** The longest a waiter watches for the holder's key to go before it tries the Txn again anyway. */
export const LOCK_WATCH_MAX_WAIT_MS = 5_000;
/** Exit code when the lock's lease expired while CMD ran (CMD was killed). */
export const LOCK_LOST_EXIT_CODE = 3;

export async function runLockVerb(client: CairnClient, args: string[], flags: Record<string, string>, print: (line: string) => void): Promise<number> {
  const [name, command, ...commandArgs] = args;
  const ttl = Number(flags.ttl ?? DEFAULT_LOCK_TTL_SECONDS);
  if (!Number.isSafeInteger(ttl) || ttl < 1) throw new UsageError(`--ttl must be a positive integer of seconds, got ${JSON.stringify(flags.ttl)}`);
  const { id } = await client.leaseCall((c) => c.leaseGrant, { ttl, id: 0 });
  const key = Buffer.from(name!);
  let lost = false;
  let onLost: () => void = () => undefined;
  const renewer = setInterval(() => {
    client.leaseCall((c) => c.leaseRenew, { id }).then(
      (renewed) => {
        if (renewed.ttl <= 0 && !lost) {
          lost = true;
          onLost();
        }
      },
      () => undefined, // a failed renewal is retried at the next interval; the TTL covers two misses
    );
  }, Math.max(100, ttl * 1000 * KEEP_ALIVE_TTL_FRACTION));
  try {
    await acquire(client, key, id, () => lost);
    if (lost) return LOCK_LOST_EXIT_CODE;
    print(`lock ${name} acquired (lease ${formatLeaseId(id)})`);
    const child = spawn(command!, commandArgs, { stdio: 'inherit' });
    onLost = () => child.kill('SIGKILL');
    const code = await new Promise<number>((resolve) => {
      child.on('exit', (exitCode, signal) => resolve(exitCode ?? (signal ? 128 : 1)));
      child.on('error', (err) => {
        print(`cairn lock: cannot run ${command}: ${err.message}`);
        resolve(127);
      });
    });
    if (lost) {
      print(`cairn lock: lock ${name} lost (its lease expired) while the command ran; it was killed`);
      return LOCK_LOST_EXIT_CODE;
    }
    return code;
  } finally {
    clearInterval(renewer);
    await client.leaseCall((c) => c.leaseRevoke, { id }).catch(() => undefined);
  }
}

/** Takes the lock: a Txn that puts NAME with our lease only if NAME does not exist; else waits for NAME to go. */
async function acquire(client: CairnClient, key: Buffer, lease: number, lost: () => boolean): Promise<void> {
  const holder = Buffer.from(`${hostname()}/${process.pid}/${formatLeaseId(lease)}`);
  for (let delayMs = LOCK_POLL_MIN_MS; !lost(); delayMs = Math.min(LOCK_POLL_MAX_MS, delayMs * 2)) {
    const response = await client.txn({
      compare: [{ key, target: CompareTarget.COMPARE_TARGET_CREATE_REVISION, result: CompareResult.COMPARE_RESULT_EQUAL, targetUnion: { $case: 'createRevision', value: 0 } }],
      success: [{ request: { $case: 'requestPut', value: { key, value: holder, prevKv: false, lease, clientId: '', sequence: 0, lowestUnansweredSequence: 0 } } }],
      failure: [{ request: { $case: 'requestRange', value: { key, rangeEnd: Buffer.alloc(0), prefix: false, limit: 1, keysOnly: true, consistency: 0 } } }],
    });
    if (response.succeeded) return;
    const read = response.responses[0]?.response;
    const held = read?.$case === 'responseRange' ? read.value.kvs[0] : undefined;
    // Gone already (between the compare and now there is nothing to wait for): try again at once.
    if (!held) continue;
    if (await deletedAfter(client, key, held.modRevision + 1)) delayMs = LOCK_POLL_MIN_MS / 2;
    else await new Promise((resolve) => setTimeout(resolve, delayMs));
  }
}

/** Watches `key` from `startRevision` until it is deleted (true) or LOCK_WATCH_MAX_WAIT_MS pass (false). */
async function deletedAfter(client: CairnClient, key: Buffer, startRevision: number): Promise<boolean> {
  const stop = new AbortController();
  const timer = setTimeout(() => stop.abort(), LOCK_WATCH_MAX_WAIT_MS);
  let deleted = false;
  try {
    const command = { key, prefix: false, startRevision, prevKv: false, maxEvents: undefined };
    await runWatch(command, client.endpoints, client.dial, () => client.callMetadata(), (line) => {
      if (!line.startsWith('DELETE ')) return;
      deleted = true;
      stop.abort();
    }, stop.signal);
    return deleted;
  } finally {
    clearTimeout(timer);
  }
}
