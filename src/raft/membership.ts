import { ClusterConfig, ClusterMember, ConfigChange, ConfigChangeType } from '../../gen/cairn/raft/v1/raft';
import { assert } from '../assert';
import { QuorumConfig, quorumConfig } from './quorum';

/** A member id (node.ts's NodeId; redeclared so that this module imports nothing of the core). */
type NodeId = number;

/**
 * A learner may be promoted only while its log is at most this many entries behind the
 * leader's last index (and it was heard from recently): a voter that is far behind
 * would leave the cluster one failure from unavailability until it catches up.
 */
export const PROMOTE_MAX_LAG_ENTRIES = 1_000;

/** Why a ConfigChange cannot apply to a config: a bad request, or a member that is or is not there. */
export type ConfigChangeRefusal = { kind: 'invalid' | 'member-exists' | 'member-not-found'; message: string };

/**
 * The configuration that `change` turns `config` into (members in id order), or why it
 * cannot. Single-server changes only: one member is added (as a learner), promoted or
 * removed, so the voter sets before and after always share a majority.
 */
export function applyConfigChange(config: ClusterConfig, change: ConfigChange): ClusterConfig | ConfigChangeRefusal {
  const member = change.member;
  if (!member) return { kind: 'invalid', message: 'the change names no member' };
  const id = member.id;
  if (!Number.isSafeInteger(id) || id < 1) return { kind: 'invalid', message: `member id ${id} is not a node id (ids are >= 1)` };
  const isVoter = config.voters.some((m) => m.id === id);
  const isLearner = config.learners.some((m) => m.id === id);
  switch (change.type) {
    case ConfigChangeType.CONFIG_CHANGE_TYPE_ADD_LEARNER:
      if (isVoter || isLearner) return { kind: 'member-exists', message: `member ${id} is already a ${isVoter ? 'voter' : 'learner'}` };
      if (member.peerAddr.trim() === '') return { kind: 'invalid', message: `member ${id} needs a peer address` };
      return sortedConfig(config.voters, [...config.learners, copyMember(member)]);
    case ConfigChangeType.CONFIG_CHANGE_TYPE_PROMOTE: {
      if (isVoter) return { kind: 'invalid', message: `member ${id} is already a voter` };
      const learner = config.learners.find((m) => m.id === id);
      if (!learner) return { kind: 'member-not-found', message: `no learner ${id} in the configuration` };
      return sortedConfig([...config.voters, learner], config.learners.filter((m) => m.id !== id));
    }
    case ConfigChangeType.CONFIG_CHANGE_TYPE_REMOVE:
      if (!isVoter && !isLearner) return { kind: 'member-not-found', message: `no member ${id} in the configuration` };
      if (isVoter && config.voters.length === 1) return { kind: 'invalid', message: `member ${id} is the last voter` };
      return sortedConfig(
        config.voters.filter((m) => m.id !== id),
        config.learners.filter((m) => m.id !== id),
      );
    default:
      return { kind: 'invalid', message: `unknown change type ${change.type}` };
  }
}

export function isRefusal(result: ClusterConfig | ConfigChangeRefusal): result is ConfigChangeRefusal {
  return 'kind' in result;
}

export function quorumOf(config: ClusterConfig): QuorumConfig {
  return quorumConfig({ voters: config.voters.map((m) => m.id), learners: config.learners.map((m) => m.id) });
}

export function voterIds(config: ClusterConfig): NodeId[] {
  return config.voters.map((m) => m.id);
}

/** Every member but `self`: whom a leader replicates to. */
export function peersOf(config: ClusterConfig, self: NodeId): NodeId[] {
  return [...config.voters, ...config.learners].map((m) => m.id).filter((id) => id !== self);
}

/** The bootstrap configuration of voters known only by id (no addresses). */
export function configOfVoters(voters: readonly NodeId[]): ClusterConfig {
  return sortedConfig(
    voters.map((id) => ({ id, peerAddr: '', clientAddr: '' })),
    [],
  );
}

/**
 * Why `config` cannot be a configuration (decoded from a config entry or a snapshot):
 * ids must be node ids, distinct across voters and learners. Undefined when it is fine.
 */
export function badConfigReason(config: ClusterConfig): string | undefined {
  const ids = [...config.voters, ...config.learners].map((m) => m.id);
  for (const id of ids) if (!Number.isSafeInteger(id) || id < 1) return `member id ${id} is not a node id`;
  if (new Set(ids).size !== ids.length) return `member ids are not distinct: ${ids.join(',')}`;
  if (config.voters.length === 0) return 'no voters';
  return undefined;
}

function sortedConfig(voters: readonly ClusterMember[], learners: readonly ClusterMember[]): ClusterConfig {
  const byId = (a: ClusterMember, b: ClusterMember) => a.id - b.id;
  return { voters: voters.map(copyMember).sort(byId), learners: learners.map(copyMember).sort(byId) };
}

function copyMember(m: ClusterMember): ClusterMember {
  return { id: m.id, peerAddr: m.peerAddr, clientAddr: m.clientAddr };
}

/**
 * The configurations a node's log holds, and the one before them (from the snapshot or
 * the bootstrap). A node uses the latest, committed or not (Raft dissertation §4.1), so
 * when its log is truncated the configs of the removed entries go and the latest one
 * left is in force again.
 */
export class ConfigHistory {
  /** Config entries in the log, by increasing index. */
  private entries: { index: number; config: ClusterConfig }[] = [];

  private base: ClusterConfig;

  constructor(base: ClusterConfig) {
    this.base = frozenCopy(base);
  }

  latest(): ClusterConfig {
    return this.entries.length > 0 ? this.entries[this.entries.length - 1]!.config : this.base;
  }

  /** The index of the latest config entry; 0 when the config in force comes from before the log. */
  latestIndex(): number {
    return this.entries.length > 0 ? this.entries[this.entries.length - 1]!.index : 0;
  }

  /** The config in force once the log holds entries up to `index`. */
  at(index: number): ClusterConfig {
    for (let i = this.entries.length - 1; i >= 0; i--) {
      if (this.entries[i]!.index <= index) return this.entries[i]!.config;
    }
    return this.base;
  }

  /** Records the config entry at `index`; returns the (frozen) config now in force. */
  record(index: number, config: ClusterConfig): ClusterConfig {
    assert(index > this.latestIndex(), () => `config entry ${index} recorded after ${this.latestIndex()}`);
    const kept = frozenCopy(config);
    this.entries.push({ index, config: kept });
    return kept;
  }

  /** Entries from `index` on left the log: their configs are no longer in force. */
  truncateFrom(index: number): void {
    while (this.entries.length > 0 && this.entries[this.entries.length - 1]!.index >= index) this.entries.pop();
  }

  /** Entries up to `index` are compacted: the config at `index` becomes the base. */
  compactTo(index: number): void {
    this.base = this.at(index);
    this.entries = this.entries.filter((e) => e.index > index);
  }

  /** The whole log was replaced by a snapshot whose config is `config`. */
  reset(config: ClusterConfig): void {
    this.base = frozenCopy(config);
    this.entries = [];
  }
}

/**
 * Configs are handed out by reference (clusterConfig(), status(), onConfigChange): a
 * frozen copy, so that no caller can change the core's membership behind its back (nor
 * the core a caller's object).
 */
function frozenCopy(config: ClusterConfig): ClusterConfig {
  const voters = Object.freeze(config.voters.map((m) => Object.freeze(copyMember(m))));
  const learners = Object.freeze(config.learners.map((m) => Object.freeze(copyMember(m))));
  return Object.freeze({ voters, learners }) as ClusterConfig;
}
