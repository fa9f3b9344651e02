import { hostname } from 'node:os';
import { CairnError, ErrorCode } from '../errors';

/**
 * StatefulSet mode (`--initial-cluster-size N`, CAIRN_INITIAL_CLUSTER_SIZE): a pod configures
 * itself from what Kubernetes gives it, with no wrapper script (deploy/k8s, docs/deploy.md).
 *
 * - Its pod name `<set>-<ordinal>` gives its id (ordinal + 1) and the StatefulSet's name.
 * - Every pod has a stable DNS name through the headless Service:
 *   `<set>-<i>.<peer service>.<namespace>.svc.<cluster domain>`; a node advertises its own
 *   (listening on 0.0.0.0 is not an address another pod can dial).
 * - Ordinals below N bootstrap the cluster with each other as voters; an ordinal at or beyond N
 *   joins the running cluster through the first N pods' client ports as a learner and is
 *   promoted once caught up (`kubectl scale` grows the cluster). A pod restarted with its
 *   volume keeps its identity: a data dir that has state ignores the bootstrap flags.
 *
 * It works on flag values (after flags, environment and defaults are merged) and fills in the
 * ones a plain `cairn serve` would have been given.
 */
export const STATEFULSET_FLAGS = ['initial-cluster-size', 'pod-name', 'peer-service', 'namespace', 'cluster-domain'] as const;

/** The largest initial cluster StatefulSet mode bootstraps (membership changes grow it further). */
export const MAX_INITIAL_CLUSTER_SIZE = 9;

/** A DNS label (RFC 1123): what Kubernetes allows in pod, service and namespace names. */
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

function invalid(message: string): CairnError {
  return new CairnError(ErrorCode.INVALID_ARGUMENT, message);
}

/** `host:port` → port, for the ports a pod's advertised addresses reuse. */
function portOf(flag: string, address: string): string {
  const match = /:(\d+)$/.exec(address);
  if (!match) throw invalid(`--${flag} must be HOST:PORT, got "${address}"`);
  return match[1]!;
}

/** The pod's set name and ordinal, from `<set>-<ordinal>`. */
export function parsePodName(podName: string): { set: string; ordinal: number } {
  const match = /^(.+)-(\d+)$/.exec(podName);
  if (!match || !DNS_LABEL.test(podName)) {
    throw invalid(`--pod-name (CAIRN_POD_NAME, else HOSTNAME) must be a StatefulSet pod name <set>-<ordinal>, got "${podName}"`);
  }
  return { set: match[1]!, ordinal: Number(match[2]) };
}

/**
 * Returns `values` with id, peers or join, and the advertised addresses filled in from the
 * pod's place in its StatefulSet; unchanged when --initial-cluster-size is not set.
 */
export function placeInStatefulSet(values: Record<string, string>, env: NodeJS.ProcessEnv = process.env): Record<string, string> {
  const sizeText = values['initial-cluster-size'] ?? '';
  if (sizeText === '') return values;
  const size = Number(sizeText);
  if (!Number.isSafeInteger(size) || size < 1 || size > MAX_INITIAL_CLUSTER_SIZE) {
    throw invalid(`--initial-cluster-size must be an integer from 1 to ${MAX_INITIAL_CLUSTER_SIZE}, got "${sizeText}"`);
  }
  if (values.peers || values.join) throw invalid('--initial-cluster-size derives the peers (or the members to join) itself: leave out --peers and --join');
  const { set, ordinal } = parsePodName(values['pod-name'] || env.HOSTNAME || hostname());
  const id = String(ordinal + 1);
  if (values.id && values.id !== id) throw invalid(`--id ${values.id} contradicts the pod name's ordinal ${ordinal} (id ${id}): leave out --id`);
  const peerService = values['peer-service'] || `${set}-peers`;
  const namespace = values.namespace || 'default';
  for (const [flag, label] of [['peer-service', peerService], ['namespace', namespace]] as const) {
    if (!DNS_LABEL.test(label)) throw invalid(`--${flag} must be a DNS label (lowercase letters, digits, '-'), got "${label}"`);
  }
  const domain = values['cluster-domain'] || 'cluster.local';
  const host = (i: number) => `${set}-${i}.${peerService}.${namespace}.svc.${domain}`;
  const clientPort = portOf('client-addr', values['client-addr']!);
  const peerPort = portOf('peer-addr', values['peer-addr']!);
  const placed: Record<string, string> = {
    ...values,
    id,
    'advertise-client-addr': values['advertise-client-addr'] || `${host(ordinal)}:${clientPort}`,
    'advertise-peer-addr': values['advertise-peer-addr'] || `${host(ordinal)}:${peerPort}`,
  };
  const founders = Array.from({ length: size }, (_, i) => i);
  if (ordinal < size) placed.peers = founders.map((i) => `${i + 1}=${host(i)}:${peerPort}`).join(',');
  else placed.join = founders.map((i) => `${host(i)}:${clientPort}`).join(',');
  return placed;
}
