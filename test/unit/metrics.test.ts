import { Command } from '../../gen/cairn/kv/v1/kv';
import { EntryType } from '../../gen/cairn/raft/v1/raft';
import { KvStateMachine } from '../../src/kv/state-machine';
import { LevelDb } from '../../src/storage/db';
import { LevelRaftStorage } from '../../src/storage/raft-storage';
import { Logger } from '../../src/server/logger';
import { NodeMetrics } from '../../src/server/metrics';

function putEntry(index: number, key: string) {
  const command: Command = {
    op: { $case: 'put', value: { key: Buffer.from(key), value: Buffer.from('v'), prevKv: false, clientId: '', sequence: 0, lowestUnansweredSequence: 0 } },
    proposedAtUnixMs: 1_000 + index,
  };
  return { index, term: 1, type: EntryType.ENTRY_TYPE_COMMAND, data: Buffer.from(Command.encode(command).finish()) };
}

/** A logger that records its warnings. */
function recordingLogger(): { logger: Logger; warnings: string[] } {
  const warnings: string[] = [];
  const logger = { warn: (_fields: unknown, message: string) => warnings.push(message), info: () => undefined } as unknown as Logger;
  return { logger, warnings };
}

/** One sample's value from the Prometheus text, e.g. `cairn_fsync_duration_seconds_count`. */
function sample(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(series + ' '));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

describe('NodeMetrics', () => {
  test('times synced log writes and applies, counts compactions, and logs the slow ones', async () => {
    const { logger, warnings } = recordingLogger();
    const metrics = new NodeMetrics(logger, { fsync: -1, apply: -1 }); // every write counts as slow
    const db = await LevelDb.openMemory();
    const storage = metrics.instrumentStorage(new LevelRaftStorage(db));
    const stateMachine = metrics.instrumentStateMachine(await KvStateMachine.open(db));
    const entries = [putEntry(1, 'a'), putEntry(2, 'b')];
    await storage.persist({ term: 1, votedFor: 1 }, entries);
    const decided: number[] = [];
    await stateMachine.apply(entries, (outcomes) => decided.push(...outcomes.map((o) => o.index)));
    expect(decided).toEqual([1, 2]); // the wrapper hands `decided` through
    await storage.flushToDisk();
    await storage.writeSynced(storage.stageCompaction({ index: 2, term: 1, config: { voters: [], learners: [] } }, 2));

    const { body } = await metrics.render();
    expect(sample(body, 'cairn_fsync_duration_seconds_count')).toBe(1);
    expect(sample(body, 'cairn_ready_entries_sum')).toBe(2);
    expect(sample(body, 'cairn_apply_entries_sum')).toBe(2);
    expect(sample(body, 'cairn_snapshots_total{kind="compaction"}')).toBe(1);
    expect(warnings.filter((w) => w.startsWith('slow fsync'))).toHaveLength(1);
    expect(warnings.filter((w) => w.startsWith('slow apply'))).toHaveLength(1);
    await db.close();
  });

  test('counts leader changes after the first one known, and client calls only on the client services', async () => {
    const metrics = new NodeMetrics(recordingLogger().logger);
    for (const leader of [0, 2, 0, 3]) metrics.noteLeader(leader);
    const started = performance.now();
    metrics.observeRequest('/cairn.kv.v1.KV/Put', 'OK', started);
    metrics.observeRequest('/cairn.kv.v1.KV/Put', 'INVALID_ARGUMENT', started);
    metrics.observeRequest('/cairn.raft.v1.RaftService/Propose', 'OK', started);
    const { body } = await metrics.render();
    expect(sample(body, 'cairn_leader_changes_total')).toBe(3);
    expect(sample(body, 'cairn_client_requests_total{method="/cairn.kv.v1.KV/Put",code="OK"}')).toBe(1);
    expect(sample(body, 'cairn_client_requests_total{method="/cairn.kv.v1.KV/Put",code="INVALID_ARGUMENT"}')).toBe(1);
    expect(body).not.toContain('RaftService');
  });

  test('every metric is named cairn_*, the process defaults included', async () => {
    const { body } = await new NodeMetrics(recordingLogger().logger).render();
    const names = body.split('\n').filter((l) => l.startsWith('# TYPE ')).map((l) => l.split(' ')[2]!);
    expect(names.length).toBeGreaterThan(20);
    expect(names.filter((n) => !n.startsWith('cairn_'))).toEqual([]);
    expect(names).toContain('cairn_process_cpu_seconds_total');
  });
});
