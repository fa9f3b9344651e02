import { createHash } from 'node:crypto';
import { HistoryOp } from '../../src/check/linearizability';
import { LevelDb } from '../../src/storage/db';
import { RecordedOp } from './workload';

/** The recorded history in the checker's terms. */
export function toHistory(ops: readonly RecordedOp[]): HistoryOp[] {
  return ops.map((op) => ({
    client: op.client,
    kind: op.op,
    key: op.key,
    value: op.value,
    expected: op.expected,
    output: op.known ? op.output : undefined,
    call: op.call,
    ret: op.known ? op.return : undefined,
    known: op.known,
  }));
}

export interface LostWrite {
  op: RecordedOp;
  finalValue: string | null;
}

/**
 * Acknowledged writes missing from the final state. An acknowledged put (or delete) of
 * a key is lost when the key's final value is not what it wrote and no other write to
 * that key (acknowledged or of unknown outcome) could have come after it, that is, none
 * was still running or started after it was called.
 */
export function findLostWrites(ops: readonly RecordedOp[], finalState: ReadonlyMap<string, string>): LostWrite[] {
  const lost: LostWrite[] = [];
  const writesByKey = new Map<string, RecordedOp[]>();
  // A CAS known not to have swapped wrote nothing.
  const wrote = (op: RecordedOp) => op.op !== 'get' && !(op.op === 'cas' && op.known && !op.output?.succeeded);
  for (const op of ops) {
    if (!wrote(op)) continue;
    const writes = writesByKey.get(op.key) ?? [];
    writes.push(op);
    writesByKey.set(op.key, writes);
  }
  for (const write of ops) {
    if (!wrote(write) || !write.known) continue;
    const finalValue = finalState.get(write.key) ?? null;
    const expected = write.op === 'delete' ? null : write.value!;
    if (finalValue === expected) continue;
    const overwritable = writesByKey.get(write.key)!.some(
      (other) => other !== write && (other.return === undefined || other.return > write.call),
    );
    if (!overwritable) lost.push({ op: write, finalValue });
  }
  return lost;
}

/** A digest of a node's `kv` sublevel, read from its data directory while it is stopped. */
export async function kvDigest(dataDir: string): Promise<{ digest: string; keys: number }> {
  const db = await LevelDb.openDirectory(dataDir);
  try {
    const hash = createHash('sha256');
    let keys = 0;
    for await (const [key, value] of db.entries('kv')) {
      hash.update(key).update(value);
      keys++;
    }
    return { digest: hash.digest('hex').slice(0, 16), keys };
  } finally {
    await db.close();
  }
}
