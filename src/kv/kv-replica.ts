import { Command, CommandResult } from '../../gen/cairn/kv/v1/kv';
import { ClusterConfig } from '../../gen/cairn/raft/v1/raft';
import { ProposalCodec } from '../node/fsm';
import { Deferral, Replica, Transport } from '../node/replica';
import { RaftConfig } from '../raft/node';
import { RaftStorage } from '../storage/raft-storage';
import { LogClockSource, LogTimeStamper, stampCommand } from './log-time';
import { StateMachine } from './state-machine';
import { encodeMessage } from '../proto-writer';

/** The generic Replica shell driving the key-value state machine. */
export type KvReplica = Replica<Command, CommandResult, StateMachine>;

/** Encodes kv Commands and stamps each proposal with the leader's log time (see log-time.ts). */
export class KvProposalCodec implements ProposalCodec<Command> {
  private readonly logTime: LogTimeStamper;

  constructor(stateMachine: Pick<StateMachine, 'logTimeUnixMs'>, clock?: LogClockSource) {
    this.logTime = new LogTimeStamper(() => stateMachine.logTimeUnixMs(), clock);
  }

  encode(command: Command): Uint8Array {
    return encodeMessage(Command, command);
  }

  observeLeadership(term: number, leading: boolean): void {
    this.logTime.noteLeadership(term, leading);
  }

  prepare(encoded: Uint8Array): Uint8Array {
    return stampCommand(encoded, this.logTime.stampMs());
  }
}

/** Opens a Replica over the kv state machine, with the kv's proposal codec. */
export function openKvReplica(options: {
  config: RaftConfig;
  storage: RaftStorage;
  stateMachine: StateMachine;
  transport: Transport;
  onFatal: (err: unknown) => void;
  /** Called with the config in force at open and whenever it changes. */
  onConfigChange?: (config: ClusterConfig) => void;
  /** The clocks that stamp proposals with log time (the simulator passes its virtual one). */
  clock?: LogClockSource;
  /** Compaction (Replica.open): applied entries after the snapshot point that trigger it, and the tail it keeps. */
  snapshotEntries?: number;
  snapshotCatchupEntries?: number;
  snapshotChunkBytes?: number;
  maxApplyLagEntries?: number;
  maxApplyLagBytes?: number;
  /** When the persist and apply paths start (Replica.open). */
  defer?: Deferral;
}): Promise<KvReplica> {
  const { clock, ...rest } = options;
  return Replica.open<Command, CommandResult, StateMachine>({ ...rest, codec: new KvProposalCodec(options.stateMachine, clock) });
}
