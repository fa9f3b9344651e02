import { spawn } from 'node:child_process';
import { hostname } from 'node:os';
import { CairnClient } from './client';
import {
  createIfAbsent,
  KeptAliveLease,
  LEASE_LOST_EXIT_CODE,
  ttlSecondsFlag,
  Turn,
  waitForTurn,
} from './lease-recipes';

/**
 * `cairn lock NAME [--ttl S] -- CMD ...`: runs CMD while holding the lock NAME, built only
 * on Lease, Txn and Watch (docs/recipes.md):
 *   1. grant a lease of --ttl seconds and keep it alive (every TTL/3) for as long as this runs;
 *   2. Txn: if NAME does not exist (create_revision = 0), put NAME with the lease, else read it;
 *   3. if another holder has it, watch NAME from just after the Txn's read until it is
 *      deleted (released, or its lease expired), then try again; a watch that cannot be
 *      opened, or that sees nothing for TURN_WATCH_MAX_WAIT_MS, only means trying again
 *      sooner (after TURN_POLL_MIN_MS, doubling to TURN_POLL_MAX_MS); a Txn the cluster cannot
 *      answer now (no leader, out of reach) is tried again after the same backoff;
 *   4. run CMD; when it exits, revoke the lease (deleting NAME) and exit with CMD's code.
 * A holder that dies stops keeping its lease alive: the leader expires it after the TTL,
 * NAME is deleted with it, and the next poller's Txn takes the lock. A holder whose lease is
 * lost (a renewal answers TTL 0, or none is answered for a whole TTL: lease-recipes.ts) kills
 * CMD and exits LEASE_LOST_EXIT_CODE: it no longer holds the lock, or cannot know it does.
 */
export const LOCK_VERB_SPECS = {
  lock: { usage: ['NAME [--ttl SECONDS] -- CMD [ARGS...]'], minArgs: 2, maxArgs: 10_000, flags: ['ttl'] },
} as const;

export async function runLockVerb(
  client: CairnClient,
  args: string[],
  flags: Record<string, string>,
  print: (line: string) => void,
  warn: (line: string) => void = () => undefined,
): Promise<number> {
  const [name, command, ...commandArgs] = args;
  const lease = await KeptAliveLease.grant(client, ttlSecondsFlag(flags));
  const key = Buffer.from(name!);
  try {
    await acquire(client, key, lease, warn);
    if (lease.lost) return LEASE_LOST_EXIT_CODE;
    print(`lock ${name} acquired (lease ${lease.hex})`);
    const child = spawn(command!, commandArgs, { stdio: 'inherit' });
    lease.onLost(() => child.kill('SIGKILL'));
    const code = await new Promise<number>((resolve) => {
      child.on('exit', (exitCode, signal) => resolve(exitCode ?? (signal ? 128 : 1)));
      child.on('error', (err) => {
        print(`cairn lock: cannot run ${command}: ${err.message}`);
        resolve(127);
      });
    });
    if (lease.lost) {
      print(`cairn lock: lock ${name} lost (${lease.lost}) while the command ran; it was killed`);
      return LEASE_LOST_EXIT_CODE;
    }
    return code;
  } finally {
    await lease.revoke();
  }
}

/** Takes the lock: a Txn that puts NAME with our lease only if NAME does not exist; else waits for NAME to go. */
async function acquire(client: CairnClient, key: Buffer, lease: KeptAliveLease, warn: (line: string) => void): Promise<void> {
  const holder = Buffer.from(`${hostname()}/${process.pid}/${lease.hex}`);
  await waitForTurn(
    client,
    async (): Promise<Turn> => {
      const attempt = await createIfAbsent(client, key, holder, lease.id);
      if (attempt.created) return { kind: 'ours' };
      // Our lease's key: an earlier try whose answer was lost created it.
      if (attempt.existing?.lease === lease.id) return { kind: 'ours' };
      // Gone already (between the compare and now there is nothing to wait for): try again at once.
      return attempt.existing ? { kind: 'behind', ahead: attempt.existing, readRevision: attempt.readRevision } : { kind: 'again' };
    },
    () => lease.lost !== undefined,
    undefined,
    (line) => warn(`cairn lock: ${line}`),
  );
}
