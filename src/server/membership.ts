import { Member, MemberRole } from '../../gen/cairn/kv/v1/kv';
import { ClusterConfig, ClusterMember, ConfigChange } from '../../gen/cairn/raft/v1/raft';
import { CairnError, ErrorCode } from '../errors';
import { NodeId } from '../raft/node';

/**
 * What the server needs of the Replica for membership (the issue 8 contract's names):
 * the configuration, changes to it, and leadership transfer.
 */
export interface MembershipReplica {
  /** The latest configuration in the log (committed or not), else the snapshot's, else the bootstrap one. */
  clusterConfig(): ClusterConfig;
  /** The configuration as of the commit index: one that a majority holds and no leader can undo. */
  committedConfig(): ClusterConfig;
  /** This node's commit index. */
  commitIndex(): number;
  /** Resolves with the new configuration once the change is applied here. */
  proposeConfigChange(change: ConfigChange, signal?: AbortSignal): Promise<ClusterConfig>;
  /** Resolves with the new leader. */
  transferLeadership(to?: NodeId, signal?: AbortSignal): Promise<NodeId>;
}

export function configMembers(config: ClusterConfig): ClusterMember[] {
  return [...config.voters, ...config.learners].sort((a, b) => a.id - b.id);
}

export function hasMember(config: ClusterConfig, id: NodeId): boolean {
  return config.voters.some((m) => m.id === id) || config.learners.some((m) => m.id === id);
}

export function isVoter(config: ClusterConfig, id: NodeId): boolean {
  return config.voters.some((m) => m.id === id);
}

/** The configuration `--peers` describes: every named node a voter, no client addresses yet. */
export function configFromPeers(peers: ReadonlyMap<NodeId, string>): ClusterConfig {
  const voters = [...peers].sort(([a], [b]) => a - b).map(([id, peerAddr]) => ({ id, peerAddr, clientAddr: '' }));
  return { voters, learners: [] };
}

/**
 * The server's view of membership: who the members are (from the Replica's current
 * configuration), where they serve clients (from the configuration, else as they report it on
 * their peer streams), which senders the peer service accepts, and which nodes are being
 * added right now.
 */
export class ClusterMembership {
  /** Client addresses members reported on their peer streams. */
  private readonly reportedClientAddrs = new Map<NodeId, string>();
  /** Members whose MemberAdd this node is carrying out: accepted as senders before their entry is in the log. */
  private readonly pendingJoins = new Map<NodeId, number>();
  /** Every node this process has seen in a configuration: the ones that can have been removed. */
  private readonly everMembers = new Set<NodeId>();

  constructor(
    readonly selfId: NodeId,
    private readonly selfClientAddr: string,
    private readonly replica: MembershipReplica,
  ) {
    this.noteConfig(replica.clusterConfig());
  }

  config(): ClusterConfig {
    return this.replica.clusterConfig();
  }

  /** The Replica's configuration changed (Replica.open's onConfigChange). */
  noteConfig(config: ClusterConfig): void {
    for (const member of configMembers(config)) this.everMembers.add(member.id);
  }

  /** Every member but this node, by peer address: what the peer transport links to. */
  peerAddrs(config = this.config()): Map<NodeId, string> {
    return new Map(configMembers(config).filter((m) => m.id !== this.selfId).map((m) => [m.id, m.peerAddr]));
  }

  /** The members as Cluster.MemberList and Status report them, in id order. */
  members(leader: NodeId, config = this.config()): Member[] {
    const member = (m: ClusterMember, role: MemberRole): Member => ({
      id: m.id,
      peerAddr: m.peerAddr,
      clientAddr: this.clientAddrOf(m.id, config) ?? '',
      isLeader: m.id === leader,
      role,
    });
    return [
      ...config.voters.map((m) => member(m, MemberRole.MEMBER_ROLE_VOTER)),
      ...config.learners.map((m) => member(m, MemberRole.MEMBER_ROLE_LEARNER)),
    ].sort((a, b) => a.id - b.id);
  }

  /** Where `id` serves clients: its own flag for this node, the configuration's, else what it reported. */
  clientAddrOf(id: NodeId, config = this.config()): string | undefined {
    if (id === this.selfId) return this.selfClientAddr;
    const configured = configMembers(config).find((m) => m.id === id)?.clientAddr;
    return configured || this.reportedClientAddrs.get(id);
  }

  /** A peer said where it serves clients (on its stream frames); kept only for members. */
  noteClientAddr(id: NodeId, addr: string): void {
    if (this.reportedClientAddrs.get(id) === addr || !this.isAcceptedSender(id)) return;
    this.reportedClientAddrs.set(id, addr);
  }

  /**
   * Refuses a peer that may not talk to this node: PERMISSION_DENIED with MEMBER_REMOVED
   * when a committed configuration no longer has a node that was a member (it stops when it
   * hears that), WRONG_CLUSTER for any other non-member. Accepted: the members of the
   * current configuration and the nodes this node is adding. The bootstrap members need no
   * clause of their own: while the log holds no configuration they are the current one, and
   * one of them missing from a later configuration was removed by it.
   */
  checkSender(from: NodeId): void {
    if (this.isAcceptedSender(from)) return;
    if (this.everMembers.has(from) && !hasMember(this.replica.committedConfig(), from)) {
      const commitIndex = this.replica.commitIndex();
      throw new CairnError(ErrorCode.MEMBER_REMOVED, `node ${from} was removed from the cluster (a committed configuration no longer has it; commit index ${commitIndex})`, { commitIndex });
    }
    throw new CairnError(ErrorCode.WRONG_CLUSTER, `node ${from} is not a member of this cluster`);
  }

  private isAcceptedSender(id: NodeId): boolean {
    return this.pendingJoins.has(id) || hasMember(this.config(), id);
  }

  /** Runs a MemberAdd of `id` with that node accepted as a sender meanwhile. */
  async whileJoining<T>(id: NodeId, add: () => Promise<T>): Promise<T> {
    this.pendingJoins.set(id, (this.pendingJoins.get(id) ?? 0) + 1);
    try {
      return await add();
    } finally {
      const left = this.pendingJoins.get(id)! - 1;
      if (left > 0) this.pendingJoins.set(id, left);
      else this.pendingJoins.delete(id);
    }
  }
}
