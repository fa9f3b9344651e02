import { KeyValue } from '../../gen/cairn/kv/v1/kv';
import { CairnClient } from './client';
import { describeError } from './describe-error';
import { UsageError } from './flags';

export const VERBS = ['put', 'get', 'del', 'has', 'list', 'status', 'members'];
const DEFAULT_LIST_LIMIT = 1000;

function arity(verb: string, args: string[], min: number, max: number, usage: string): void {
  if (args.length < min || args.length > max) throw new UsageError(`usage: ${verb} ${usage}`);
}

function show(kv: KeyValue): string {
  return `${kv.key.toString()}\t${kv.value.toString()}`;
}

/**
 * Runs one client verb and prints its result with `print`. Returns the exit code:
 * 0 on success, 1 when the key is not found (get), so scripts can tell.
 */
export async function runVerb(
  client: CairnClient,
  verb: string,
  args: string[],
  flags: Record<string, string>,
  print: (line: string) => void,
): Promise<number> {
  switch (verb) {
    case 'put': {
      arity('put', args, 2, 2, 'KEY VALUE');
      const response = await client.put(Buffer.from(args[0]!), Buffer.from(args[1]!));
      print(`OK (revision ${response.header?.revision})`);
      return 0;
    }
    case 'get': {
      arity('get', args, 1, 1, 'KEY');
      const response = await client.get(Buffer.from(args[0]!));
      if (!response.kv) {
        print(`(not found: ${args[0]})`);
        return 1;
      }
      print(response.kv.value.toString());
      return 0;
    }
    case 'has': {
      arity('has', args, 1, 1, 'KEY');
      const response = await client.get(Buffer.from(args[0]!));
      print(response.kv ? 'true' : 'false');
      return 0;
    }
    case 'del': {
      arity('del', args, 1, 1, 'KEY');
      const response = await client.delete(Buffer.from(args[0]!));
      print(response.deleted ? `deleted ${args[0]}` : `(not found: ${args[0]})`);
      return 0;
    }
    case 'list': {
      arity('list', args, 0, 1, '[PREFIX] [--limit N]');
      const limit = Number(flags.limit ?? DEFAULT_LIST_LIMIT);
      if (!Number.isSafeInteger(limit) || limit < 1) throw new UsageError('--limit must be a positive integer');
      const response = await client.list(Buffer.from(args[0] ?? ''), limit);
      for (const kv of response.kvs) print(show(kv));
      if (response.more) print(`(more keys follow; raise --limit)`);
      if (response.kvs.length === 0) print('(no keys)');
      return 0;
    }
    case 'status':
      return status(client, print);
    case 'members': {
      const response = await client.members();
      print('ID  PEER ADDRESS           CLIENT ADDRESS         LEADER');
      for (const m of response.members) {
        print(`${String(m.id).padEnd(3)} ${m.peerAddr.padEnd(22)} ${(m.clientAddr || '?').padEnd(22)} ${m.isLeader ? 'yes' : ''}`);
      }
      return 0;
    }
    default:
      throw new UsageError(`unknown verb "${verb}"`);
  }
}

async function status(client: CairnClient, print: (line: string) => void): Promise<number> {
  print('ENDPOINT               ID  ROLE           TERM  LEADER  COMMIT  APPLIED');
  let failures = 0;
  for (const [i, endpoint] of client.endpoints.entries()) {
    try {
      const s = await client.statusOf(i);
      print(`${endpoint.padEnd(22)} ${String(s.id).padEnd(3)} ${s.role.padEnd(14)} ${String(s.term).padEnd(5)} ${String(s.leaderId || '-').padEnd(7)} ${String(s.commitIndex).padEnd(7)} ${s.appliedIndex}`);
    } catch (err) {
      failures++;
      print(`${endpoint.padEnd(22)} unreachable: ${describeError(err)}`);
    }
  }
  // Non-zero when any endpoint is down, so a script notices a degraded cluster.
  return failures > 0 ? 1 : 0;
}
