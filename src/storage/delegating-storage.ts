import { Entry, HardState } from '../../gen/cairn/raft/v1/raft';
import { RaftStorage } from './raft-storage';

/** A RaftStorage that hands every call to `inner`: tests override the calls they hold back or record. */
export class DelegatingStorage implements RaftStorage {
  constructor(protected readonly inner: RaftStorage) {}

  load(): ReturnType<RaftStorage['load']> {
    return this.inner.load();
  }

  persist(hardState: HardState | undefined, entries: readonly Entry[]): Promise<void> {
    return this.inner.persist(hardState, entries);
  }

  stagePersist(...args: Parameters<RaftStorage['stagePersist']>): ReturnType<RaftStorage['stagePersist']> {
    return this.inner.stagePersist(...args);
  }

  stageCompaction(...args: Parameters<RaftStorage['stageCompaction']>): ReturnType<RaftStorage['stageCompaction']> {
    return this.inner.stageCompaction(...args);
  }

  stageInstall(...args: Parameters<RaftStorage['stageInstall']>): ReturnType<RaftStorage['stageInstall']> {
    return this.inner.stageInstall(...args);
  }

  writeSynced(...args: Parameters<RaftStorage['writeSynced']>): Promise<void> {
    return this.inner.writeSynced(...args);
  }

  flushToDisk(): Promise<void> {
    return this.inner.flushToDisk();
  }
}
