import { credentials, Metadata, ServiceError } from '@grpc/grpc-js';
import { open, rename, rm } from 'node:fs/promises';
import { ClusterClient, Consistency, SnapshotSaveResponse } from '../../gen/cairn/kv/v1/kv';
import { verifySnapshotFile } from '../storage/snapshot-file';
import { describeError } from './describe-error';
import { DEFAULT_ENDPOINTS, parseEndpoints } from './endpoints';
import { parseArgs, UsageError } from './flags';
import { parseUserFlag, promptPassword } from './auth-verbs';
import { CairnClient } from './client';

export const SNAPSHOT_SAVE_USAGE = `cairn snapshot save FILE [--endpoints HOST:PORT,...] [--user NAME[:PASSWORD]]

Writes a backup of one node's state (its keys, revisions and client sessions at the index it
has applied) to FILE: the first endpoint that answers streams it. The file is written as
FILE.partial, checked whole (SHA-256), synced and then renamed, so FILE is complete or
absent. Ask the leader for the freshest state. Restore it with cairn snapshot restore.
With auth enabled, a backup needs role root: --user root (the password is asked for when left out).`;

/** A save that receives nothing for this long is given up (the node is gone or stuck). */
export const SNAPSHOT_SAVE_IDLE_TIMEOUT_MS = 30_000;

/** `cairn snapshot save FILE`: one line on success; a failure is one line (exit 1). */
export async function runSnapshotSave(argv: readonly string[], print: (line: string) => void, env: NodeJS.ProcessEnv = process.env): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    print(SNAPSHOT_SAVE_USAGE);
    return 0;
  }
  const { positional, flags } = parseArgs(argv, [], ['endpoints', 'user'], { e: 'endpoints' });
  if (positional.length !== 1) throw new UsageError(`cairn snapshot save takes one FILE, got ${positional.length}\n\n${SNAPSHOT_SAVE_USAGE}`);
  const file = positional[0]!;
  const endpoints = parseEndpoints(flags.endpoints ?? env.CAIRN_ENDPOINTS ?? DEFAULT_ENDPOINTS.join(','));
  const metadata = flags.user === undefined ? new Metadata() : await loggedIn(endpoints, flags.user);
  const failures: string[] = [];
  for (const endpoint of endpoints) {
    const outcome = await saveFrom(endpoint, file, metadata);
    if (outcome.ok) {
      const { meta, bytes } = outcome.summary;
      print(`saved ${file} (index ${meta.index}, term ${meta.term}, ${bytes} bytes) from ${endpoint}`);
      return 0;
    }
    failures.push(`${endpoint}: ${outcome.reason}`);
    if (!outcome.retryable) break;
  }
  throw new Error(`cannot save a snapshot: ${failures.join('; ')}`);
}

type SaveOutcome = { ok: true; summary: { meta: { index: number; term: number }; bytes: number } } | { ok: false; reason: string; retryable: boolean };

/** Streams one node's snapshot into FILE.partial, checks it, and renames it to FILE. */
async function saveFrom(endpoint: string, file: string, metadata: Metadata): Promise<SaveOutcome> {
  const partial = `${file}.partial`;
  const client = new ClusterClient(endpoint, credentials.createInsecure());
  let received = 0;
  try {
    // Owner-only: a backup holds the password hashes and the token signing key (docs/security.md).
    const handle = await open(partial, 'w', 0o600);
    try {
      received = await receiveInto(client, handle, metadata);
      await handle.sync();
    } finally {
      await handle.close();
    }
    const summary = await verifySnapshotFile(partial);
    await rename(partial, file);
    return { ok: true, summary: { meta: summary.meta, bytes: received } };
  } catch (err) {
    await rm(partial, { force: true });
    // Nothing arrived: another endpoint may serve it. Part of a file, or a bad one: stop.
    const unreachable = received === 0 && (err as ServiceError).code !== undefined;
    return { ok: false, reason: describeError(err), retryable: unreachable };
  } finally {
    client.close();
  }
}

async function receiveInto(client: ClusterClient, handle: Awaited<ReturnType<typeof open>>, metadata: Metadata): Promise<number> {
  const call = client.snapshotSave({}, metadata);
  let idle: NodeJS.Timeout | undefined;
  let timedOut = false;
  const resetIdle = () => {
    clearTimeout(idle);
    idle = setTimeout(() => {
      timedOut = true;
      call.cancel();
    }, SNAPSHOT_SAVE_IDLE_TIMEOUT_MS);
  };
  let bytes = 0;
  try {
    resetIdle();
    for await (const message of call as AsyncIterable<SnapshotSaveResponse>) {
      resetIdle();
      await handle.write(message.data);
      bytes += message.data.length;
    }
  } catch (err) {
    if (timedOut) throw new Error(`no data for ${SNAPSHOT_SAVE_IDLE_TIMEOUT_MS} ms after ${bytes} bytes (SNAPSHOT_SAVE_IDLE_TIMEOUT_MS): gave up`);
    throw err;
  } finally {
    clearTimeout(idle);
  }
  return bytes;
}

/** Logs in as --user NAME[:PASSWORD] and returns the metadata that carries the token. */
async function loggedIn(endpoints: string[], user: string): Promise<Metadata> {
  const { name, password } = await parseUserFlag(user, promptPassword);
  const client = new CairnClient({ endpoints, timeoutMs: 5000, consistency: Consistency.CONSISTENCY_LINEARIZABLE });
  try {
    await client.login(name, password);
    return client.callMetadata();
  } finally {
    client.close();
  }
}
