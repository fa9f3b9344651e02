import { ClientUnaryCall, Metadata, ServiceError } from '@grpc/grpc-js';
import { ClusterClient } from '../../gen/cairn/kv/v1/kv';
import { NodeId } from '../raft/node';
import { forwardingFailure, RequestScope } from './router';
import { DialSecurity, PLAINTEXT_DIAL } from './tls';

/**
 * Set on a Cluster call a follower forwards to the leader's client port, so that a node which
 * is not the leader either (leadership moved meanwhile) answers NOT_LEADER instead of
 * forwarding again: a request never travels in a loop.
 */
export const FORWARDED_METADATA = 'cairn-forwarded-by';

/** Client addresses a follower keeps a Cluster client for; beyond it the oldest is closed. */
export const MAX_LEADER_CLIENTS = 16;

export type UnaryStart<T> = (client: ClusterClient, metadata: Metadata, options: { deadline: number }, done: (err: ServiceError | null, value?: T) => void) => ClientUnaryCall;

/**
 * Forwards Cluster calls (membership changes, leadership transfer) from a follower to the
 * leader's client port: these are rare operator requests, so they take the leader's own
 * Cluster service rather than a peer RPC of their own, and the leader validates and answers
 * them exactly as if the operator had called it.
 */
export class LeaderClients {
  private readonly clients = new Map<string, ClusterClient>();

  constructor(
    private readonly selfId: NodeId,
    /** TLS when the members' client ports have it (src/server/tls.ts, memberClientDial). */
    private readonly dial: DialSecurity = PLAINTEXT_DIAL,
  ) {}

  /** `authorization`: the caller's `authorization` metadata, passed on for the leader to check. */
  call<T>(leader: NodeId, addr: string, scope: RequestScope, start: UnaryStart<T>, authorization?: string): Promise<T> {
    const client = this.clientFor(addr);
    const metadata = new Metadata();
    metadata.set(FORWARDED_METADATA, String(this.selfId));
    if (authorization !== undefined) metadata.set('authorization', authorization);
    return new Promise<T>((resolve, reject) => {
      const cancel = () => call.cancel();
      const call = start(client, metadata, { deadline: scope.deadlineMs }, (err, value) => {
        scope.signal.removeEventListener('abort', cancel);
        if (err) reject(forwardingFailure(err, leader, 'cluster change'));
        else resolve(value!);
      });
      scope.signal.addEventListener('abort', cancel, { once: true });
    });
  }

  close(): void {
    for (const client of this.clients.values()) client.close();
    this.clients.clear();
  }

  private clientFor(addr: string): ClusterClient {
    let client = this.clients.get(addr);
    if (client) return client;
    if (this.clients.size >= MAX_LEADER_CLIENTS) {
      const [oldest, stale] = this.clients.entries().next().value as [string, ClusterClient];
      stale.close();
      this.clients.delete(oldest);
    }
    const { credentials, options } = this.dial(addr);
    client = new ClusterClient(addr, credentials, options);
    this.clients.set(addr, client);
    return client;
  }
}
