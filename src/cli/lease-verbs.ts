import { formatLeaseId, parseLeaseId } from '../kv/leases';
import { CairnClient } from './client';
import { UsageError } from './flags';
import { sleep } from './sleep';

/** `cairn lease ...` (kv.proto, service Lease). */
export const LEASE_VERB_SPECS = {
  lease: {
    usage: ['grant TTL_SECONDS', 'revoke ID', 'keep-alive ID [--once]', 'time-to-live ID [--keys]', 'list'],
    minArgs: 1,
    maxArgs: 2,
    flags: ['once', 'keys'],
  },
} as const;

/** Flags of lease verbs that take no value. */
export const LEASE_BOOLEAN_FLAGS = ['once', 'keys'] as const;

/** How often `cairn lease keep-alive` renews, as a fraction of the lease's TTL (etcdctl: a third). */
export const KEEP_ALIVE_TTL_FRACTION = 1 / 3;

export interface LeaseVerbOptions {
  /** Ends `keep-alive` (without --once) when aborted: the CLI aborts it on SIGINT. */
  signal?: AbortSignal;
}

/** A lease id given on the command line, in hex as `cairn lease grant` prints it. */
export function leaseIdArg(text: string | undefined, what = 'ID'): number {
  const id = text === undefined ? undefined : parseLeaseId(text);
  if (id === undefined) throw new UsageError(`${what} must be a lease id in hex (as cairn lease grant prints it), below 2^53, got ${JSON.stringify(text ?? '')}`);
  return id;
}

export async function runLeaseVerb(
  client: CairnClient,
  args: string[],
  flags: Record<string, string>,
  print: (line: string) => void,
  usage: UsageError,
  options: LeaseVerbOptions = {},
): Promise<number> {
  const [sub, arg, ...rest] = args;
  if (rest.length > 0) throw usage;
  switch (sub) {
    case 'grant': {
      const ttl = Number(arg);
      if (!Number.isSafeInteger(ttl) || ttl < 1) throw new UsageError(`TTL_SECONDS must be a positive integer, got ${JSON.stringify(arg ?? '')}`);
      const granted = await client.leaseCall((c) => c.leaseGrant, { ttl, id: 0 });
      print(`lease ${formatLeaseId(granted.id)} granted with TTL(${granted.ttl}s)`);
      return 0;
    }
    case 'revoke': {
      const id = leaseIdArg(arg);
      const revoked = await client.leaseCall((c) => c.leaseRevoke, { id });
      print(`lease ${formatLeaseId(id)} revoked (${revoked.deleted} keys deleted)`);
      return 0;
    }
    case 'keep-alive':
      return keepAlive(client, leaseIdArg(arg), flags.once === 'true', print, options.signal);
    case 'time-to-live': {
      const id = leaseIdArg(arg);
      const answer = await client.leaseCall((c) => c.leaseTimeToLive, { id, keys: flags.keys === 'true' });
      if (answer.ttl < 0) {
        print(`lease ${formatLeaseId(id)} already expired`);
        return 1;
      }
      const keys = flags.keys === 'true' ? `, attached keys [${answer.keys.map((k) => Buffer.from(k).toString()).join(' ')}]` : '';
      print(`lease ${formatLeaseId(id)} granted with TTL(${answer.grantedTtl}s), remaining(${answer.ttl}s)${keys}`);
      return 0;
    }
    case 'list': {
      if (arg !== undefined) throw usage;
      const { leases } = await client.leaseCall((c) => c.leaseLeases, {});
      print(`found ${leases.length} leases`);
      for (const lease of leases) print(formatLeaseId(lease.id));
      return 0;
    }
    default:
      throw usage;
  }
}

/** Renews every TTL/3 until interrupted (or once); exits 1 once the lease is gone. */
async function keepAlive(client: CairnClient, id: number, once: boolean, print: (line: string) => void, signal?: AbortSignal): Promise<number> {
  for (;;) {
    const { ttl } = await client.leaseCall((c) => c.leaseRenew, { id });
    if (ttl <= 0) {
      print(`lease ${formatLeaseId(id)} expired or revoked`);
      return 1;
    }
    print(`lease ${formatLeaseId(id)} keepalived with TTL(${ttl})`);
    if (once) return 0;
    const stopped = await sleep(Math.max(100, ttl * 1000 * KEEP_ALIVE_TTL_FRACTION), signal);
    if (stopped) return 0;
  }
}
