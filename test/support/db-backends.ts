import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Db, LevelDb } from '../../src/storage/db';

/**
 * Every implementation the storage contract tests run against. `reopen` simulates a
 * clean restart: close the database and open what is on disk (memory-level keeps the
 * same instance, since it has no disk).
 */
export interface Backend {
  name: string;
  open(): Promise<{ db: Db; reopen(): Promise<Db>; cleanup(): Promise<void> }>;
}

export const BACKENDS: Backend[] = [
  {
    name: 'memory-level',
    async open() {
      const db = await LevelDb.openMemory();
      return { db, reopen: async () => db, cleanup: () => db.close() };
    },
  },
  {
    name: 'LevelDB',
    async open() {
      const dir = mkdtempSync(join(tmpdir(), 'cairn-test-'));
      let current = await LevelDb.openDirectory(dir);
      return {
        db: current,
        async reopen() {
          await current.close();
          current = await LevelDb.openDirectory(dir);
          return current;
        },
        async cleanup() {
          await current.close().catch(() => undefined);
          rmSync(dir, { recursive: true, force: true });
        },
      };
    },
  },
];
