import { Entry, EntryType } from '../../gen/cairn/raft/v1/raft';
import { ApplyOutcome, FsmRestore, FsmSnapshot, ProposalCodec, SnapshottingFsm } from '../../src/node/fsm';
import { Db, DbOp } from '../../src/storage/db';

const STATE_KEY = Buffer.from('counter-state');

/**
 * A tiny snapshotting state machine for shell tests: it appends every command's text to
 * a list, keeps the list and its applied index under one meta key (so its switch is one
 * put), and streams the list as JSON chunks of a few items.
 */
export class CounterFsm implements SnapshottingFsm<string> {
  private applied = 0;
  items: string[] = [];
  restores = 0;

  private constructor(private readonly db: Db) {}

  static async open(db: Db): Promise<CounterFsm> {
    const fsm = new CounterFsm(db);
    const stored = await db.get('meta', STATE_KEY);
    if (stored) Object.assign(fsm, decode(stored));
    return fsm;
  }

  appliedIndex(): number {
    return this.applied;
  }

  async apply(entries: readonly Entry[]): Promise<ApplyOutcome<string>[]> {
    const outcomes: ApplyOutcome<string>[] = [];
    for (const entry of entries) {
      if (entry.index !== this.applied + 1) throw new Error(`applying ${entry.index} after ${this.applied}`);
      this.applied = entry.index;
      if (entry.type === EntryType.ENTRY_TYPE_COMMAND) {
        this.items.push(Buffer.from(entry.data).toString());
        outcomes.push({ index: entry.index, term: entry.term, result: `ok ${entry.index}` });
      } else {
        outcomes.push({ index: entry.index, term: entry.term });
      }
    }
    await this.db.write([this.stateOp(this.applied, this.items)], { sync: false });
    return outcomes;
  }

  async snapshot(): Promise<FsmSnapshot> {
    const index = this.applied;
    const items = [...this.items];
    return {
      index,
      async *chunks() {
        yield Buffer.from(JSON.stringify({ index }));
        for (let i = 0; i < items.length; i += 3) yield Buffer.from(JSON.stringify({ items: items.slice(i, i + 3) }));
      },
      release: () => undefined,
    };
  }

  async beginRestore(): Promise<FsmRestore> {
    let index = -1;
    const items: string[] = [];
    return {
      write: async (chunk) => {
        const parsed = JSON.parse(Buffer.from(chunk).toString()) as { index?: number; items?: string[] };
        if (parsed.index !== undefined) index = parsed.index;
        items.push(...(parsed.items ?? []));
      },
      appliedIndex: () => index,
      switchOps: () => [this.stateOp(index, items)],
      activate: async () => {
        this.applied = index;
        this.items = items;
        this.restores++;
      },
      abort: async () => undefined,
    };
  }

  private stateOp(index: number, items: string[]): DbOp {
    return { type: 'put', sublevel: 'meta', key: STATE_KEY, value: Buffer.from(JSON.stringify({ applied: index, items })) };
  }
}

function decode(stored: Buffer): { applied: number; items: string[] } {
  return JSON.parse(stored.toString()) as { applied: number; items: string[] };
}

export const textCodec: ProposalCodec<string> = {
  encode: (text) => Buffer.from(text),
  observeLeadership: () => undefined,
  prepare: (encoded) => encoded,
};
