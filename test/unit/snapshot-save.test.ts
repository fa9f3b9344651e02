import { credentials, Metadata, Server, ServerCredentials } from '@grpc/grpc-js';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ClusterClient, ClusterService, Command, SnapshotSaveResponse } from '../../gen/cairn/kv/v1/kv';
import { EntryType, SnapshotMeta } from '../../gen/cairn/raft/v1/raft';
import { runSnapshotSave } from '../../src/cli/snapshot-save';
import { CairnError, ErrorCode } from '../../src/errors';
import { KvStateMachine } from '../../src/kv/state-machine';
import { SaveSnapshot, SNAPSHOT_SAVE_MESSAGE_BYTES, snapshotSaveCall } from '../../src/server/snapshot-save';
import { LevelDb } from '../../src/storage/db';
import { openSnapshotFile } from '../../src/storage/snapshot-file';
import { freePort, waitFor } from '../support/process-cluster';

const META: SnapshotMeta = { index: 0, term: 4, config: { voters: [{ id: 1, peerAddr: '127.0.0.1:1', clientAddr: '' }], learners: [] } };

function putEntry(index: number, key: string, value: Buffer) {
  const command: Command = {
    op: { $case: 'put', value: { key: Buffer.from(key), value, prevKv: false, clientId: '', sequence: 0, lowestUnansweredSequence: 0 } },
    proposedAtUnixMs: 1,
  };
  return { index, term: 4, type: EntryType.ENTRY_TYPE_COMMAND, data: Buffer.from(Command.encode(command).finish()) };
}

async function collect(items: AsyncIterable<Uint8Array>): Promise<Buffer[]> {
  const out: Buffer[] = [];
  for await (const item of items) out.push(Buffer.from(item));
  return out;
}

describe('Cluster.SnapshotSave and cairn snapshot save', () => {
  let root: string;
  let db: LevelDb;
  let sm: KvStateMachine;
  let server: Server;
  let endpoint: string;
  let releases = 0;
  let save: SaveSnapshot;

  beforeAll(async () => {
    db = await LevelDb.openMemory();
    sm = await KvStateMachine.open(db);
    // 300 small keys and one value larger than a message, so a chunk must be split.
    await sm.apply([...Array.from({ length: 300 }, (_, i) => putEntry(i + 1, `k${i}`, Buffer.from(`v${i}`))), putEntry(301, 'huge', Buffer.alloc(SNAPSHOT_SAVE_MESSAGE_BYTES + 5000, 0x5a))]);
  });
  afterAll(() => db.close());

  beforeEach(async () => {
    root = mkdtempSync(join(tmpdir(), 'cairn-save-'));
    releases = 0;
    save = async () => {
      const snapshot = await sm.snapshot();
      return { meta: { ...META, index: snapshot.index }, chunks: snapshot.chunks(4096), release: () => (releases++, snapshot.release()) };
    };
    server = new Server();
    server.addService(ClusterService, { snapshotSave: snapshotSaveCall(() => save()) } as never);
    const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))));
    endpoint = `127.0.0.1:${port}`;
  });
  afterEach(async () => {
    await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
    rmSync(root, { recursive: true, force: true });
  });

  test('writes a whole, checked file of the node state and prints one line', async () => {
    const file = join(root, 'backup.snap');
    const lines: string[] = [];
    expect(await runSnapshotSave([file, '--endpoints', endpoint], (line) => lines.push(line), {})).toBe(0);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(new RegExp(`^saved ${file} \\(index 301, term 4, \\d+ bytes\\) from ${endpoint}$`));
    expect(existsSync(`${file}.partial`)).toBe(false);
    const reader = await openSnapshotFile(file);
    expect(reader.meta).toEqual({ ...META, index: 301 });
    const fresh = await sm.snapshot();
    const [got, expected] = [await collect(reader.chunks()), await collect(fresh.chunks(4096))];
    expect(got.map((c) => c.length)).toEqual(expected.map((c) => c.length));
    expect(Buffer.concat(got).equals(Buffer.concat(expected))).toBe(true);
    fresh.release();
    await waitFor('the snapshot released', () => releases === 1, 5000);
  });

  test('messages stay within SNAPSHOT_SAVE_MESSAGE_BYTES, a chunk larger than that is split', async () => {
    const client = new ClusterClient(endpoint, credentials.createInsecure());
    try {
      const sizes: number[] = [];
      for await (const message of client.snapshotSave({}, new Metadata()) as AsyncIterable<SnapshotSaveResponse>) sizes.push(message.data.length);
      expect(Math.max(...sizes)).toBeLessThanOrEqual(SNAPSHOT_SAVE_MESSAGE_BYTES);
      expect(sizes.reduce((a, b) => a + b, 0)).toBeGreaterThan(SNAPSHOT_SAVE_MESSAGE_BYTES + 5000);
    } finally {
      client.close();
    }
  });

  test('an endpoint that does not answer is skipped for the next one', async () => {
    const file = join(root, 'next.snap');
    const dead = `127.0.0.1:${await freePort()}`;
    const lines: string[] = [];
    expect(await runSnapshotSave([file, '-e', `${dead},${endpoint}`], (line) => lines.push(line), {})).toBe(0);
    expect(lines[0]).toContain(`from ${endpoint}`);
  });

  test('a node that cannot snapshot answers with its error; no file is left', async () => {
    save = async () => {
      throw new CairnError(ErrorCode.STOPPED, 'the node is stopping');
    };
    const file = join(root, 'none.snap');
    await expect(runSnapshotSave([file, '--endpoints', endpoint], () => undefined, {})).rejects.toThrow(`cannot save a snapshot: ${endpoint}: `);
    await expect(runSnapshotSave([file, '--endpoints', endpoint], () => undefined, {})).rejects.toThrow(/the node is stopping/);
    expect(existsSync(file)).toBe(false);
    expect(existsSync(`${file}.partial`)).toBe(false);
  });

  test('a client that goes away mid-stream releases the snapshot on the node', async () => {
    const client = new ClusterClient(endpoint, credentials.createInsecure());
    const call = client.snapshotSave({}, new Metadata());
    await new Promise<void>((resolve) => call.once('data', () => resolve()));
    call.cancel();
    call.on('error', () => undefined);
    await waitFor('the snapshot released after the cancel', () => releases === 1, 5000);
    client.close();
  });

  test('usage: one FILE', async () => {
    await expect(runSnapshotSave([], () => undefined, {})).rejects.toThrow(/takes one FILE/);
  });
});
