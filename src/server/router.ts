import { Metadata } from '@grpc/grpc-js';
import { Command, CommandResult } from '../../gen/cairn/kv/v1/kv';
import { ProposeResponse, ReadIndexResponse } from '../../gen/cairn/raft/v1/raft';
import { CairnError, ErrorCode } from '../errors';
import { Replica } from '../node/replica';
import { NO_NODE } from '../raft/node';
import { GrpcPeerTransport } from './peer-transport';

/**
 * Decides where a client request is carried out: on this node when it leads, on the
 * leader (over the peer service) when it follows. Linearizable reads on a follower ask
 * the leader for a read index and are then served from the follower's own state.
 */
export class RequestRouter {
  constructor(
    private readonly replica: Replica,
    private readonly transport: GrpcPeerTransport,
    private readonly clusterId: number,
    private readonly requestTimeoutMs: number,
  ) {}

  /** Commits a write and returns its result, wherever the leader is. */
  async write(command: Command): Promise<CommandResult> {
    const leader = this.replica.node.leader;
    if (leader === this.replica.id) {
      return withTimeout(this.replica.propose(command), this.requestTimeoutMs, 'the write did not commit in time; its outcome is unknown');
    }
    const client = this.leaderClient(leader);
    const request = { clusterId: this.clusterId, fromId: this.replica.id, command: Buffer.from(Command.encode(command).finish()) };
    const response = await new Promise<ProposeResponse>((resolve, reject) =>
      client.propose(request, new Metadata(), { deadline: Date.now() + this.requestTimeoutMs }, (err, value) => (err ? reject(err) : resolve(value!))),
    );
    return CommandResult.decode(response.result);
  }

  /** Resolves once this node may serve a linearizable read from its own state. */
  async readBarrier(): Promise<void> {
    const leader = this.replica.node.leader;
    if (leader === this.replica.id) {
      return withTimeout(this.replica.readBarrier(), this.requestTimeoutMs, 'the read could not be confirmed in time');
    }
    const client = this.leaderClient(leader);
    const request = { clusterId: this.clusterId, fromId: this.replica.id };
    const response = await new Promise<ReadIndexResponse>((resolve, reject) =>
      client.readIndex(request, new Metadata(), { deadline: Date.now() + this.requestTimeoutMs }, (err, value) => (err ? reject(err) : resolve(value!))),
    );
    await withTimeout(this.replica.waitForApplied(response.index), this.requestTimeoutMs, 'this node did not catch up with the leader in time');
  }

  private leaderClient(leader: number) {
    const client = leader === NO_NODE ? undefined : this.transport.client(leader);
    if (!client) throw new CairnError(ErrorCode.NO_LEADER, 'no leader is known right now (an election may be under way); retry shortly');
    return client;
  }
}

export function withTimeout<T>(promise: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new CairnError(ErrorCode.TIMEOUT, message)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
