import { resolveFlags } from '../../src/cli/flags';
import { buildServerConfig, SERVE_FLAGS } from '../../src/server/config';
import { parsePodName, placeInStatefulSet } from '../../src/server/statefulset';

/** What `cairn serve` would build from these environment variables alone (as a pod gets them). */
const configFromEnv = (env: Record<string, string>) => buildServerConfig(placeInStatefulSet(resolveFlags(SERVE_FLAGS, {}, env), env));

const POD_ENV = {
  CAIRN_INITIAL_CLUSTER_SIZE: '3',
  CAIRN_PEER_SERVICE: 'cairn-peers',
  CAIRN_NAMESPACE: 'prod',
  CAIRN_CLIENT_ADDR: '0.0.0.0:7001',
  CAIRN_PEER_ADDR: '0.0.0.0:7101',
};

describe('StatefulSet mode: a pod configures itself from its name and the headless service', () => {
  test('an ordinal below the initial size bootstraps with every founder, by DNS name, and advertises its own', () => {
    const config = configFromEnv({ ...POD_ENV, HOSTNAME: 'cairn-1' });
    expect(config.id).toBe(2);
    expect(Object.fromEntries(config.peers)).toEqual({
      1: 'cairn-0.cairn-peers.prod.svc.cluster.local:7101',
      2: 'cairn-1.cairn-peers.prod.svc.cluster.local:7101',
      3: 'cairn-2.cairn-peers.prod.svc.cluster.local:7101',
    });
    expect(config.join).toEqual([]);
    expect(config.clientAddr).toBe('0.0.0.0:7001'); // listens everywhere
    expect(config.advertiseClientAddr).toBe('cairn-1.cairn-peers.prod.svc.cluster.local:7001');
    expect(config.advertisePeerAddr).toBe('cairn-1.cairn-peers.prod.svc.cluster.local:7101');
  });

  test('an ordinal at or beyond it joins through the founders\' client ports, and asks to be promoted', () => {
    const config = configFromEnv({ ...POD_ENV, CAIRN_POD_NAME: 'cairn-4', HOSTNAME: 'ignored-0', CAIRN_CLUSTER_DOMAIN: 'k8s.example' });
    expect(config.id).toBe(5);
    expect(config.join).toEqual([0, 1, 2].map((i) => `cairn-${i}.cairn-peers.prod.svc.k8s.example:7001`));
    expect(config.learner).toBe(false);
    expect(config.peersGiven).toBe(false);
    expect(config.advertisePeerAddr).toBe('cairn-4.cairn-peers.prod.svc.k8s.example:7101');
  });

  test('every founder derives the same bootstrap configuration (and so the same cluster id)', () => {
    const peersOf = (pod: string) => JSON.stringify([...configFromEnv({ ...POD_ENV, HOSTNAME: pod }).peers]);
    expect(new Set(['cairn-0', 'cairn-1', 'cairn-2'].map(peersOf)).size).toBe(1);
  });

  test('defaults: the peer service is <set>-peers, the namespace default', () => {
    const config = configFromEnv({ CAIRN_INITIAL_CLUSTER_SIZE: '1', HOSTNAME: 'db-0' });
    expect(config.peers.get(1)).toBe('db-0.db-peers.default.svc.cluster.local:7101');
  });

  test('without --initial-cluster-size nothing changes', () => {
    const values = resolveFlags(SERVE_FLAGS, { id: '1' }, { HOSTNAME: 'cairn-2' });
    expect(placeInStatefulSet(values, { HOSTNAME: 'cairn-2' })).toBe(values);
    expect(buildServerConfig(values).advertiseClientAddr).toBe('127.0.0.1:7001');
  });

  test.each([
    [{ HOSTNAME: 'not_a_pod' }, /must be a StatefulSet pod name/],
    [{ HOSTNAME: 'cairn' }, /must be a StatefulSet pod name/],
    [{ HOSTNAME: 'cairn-0', CAIRN_INITIAL_CLUSTER_SIZE: '0' }, /from 1 to 9/],
    [{ HOSTNAME: 'cairn-0', CAIRN_INITIAL_CLUSTER_SIZE: 'three' }, /from 1 to 9/],
    [{ HOSTNAME: 'cairn-0', CAIRN_PEERS: '1=a:1' }, /leave out --peers and --join/],
    [{ HOSTNAME: 'cairn-0', CAIRN_ID: '3' }, /contradicts the pod name's ordinal 0/],
    [{ HOSTNAME: 'cairn-0', CAIRN_NAMESPACE: 'Prod' }, /--namespace must be a DNS label/],
    [{ HOSTNAME: 'cairn-0', CAIRN_CLIENT_ADDR: 'nowhere' }, /--client-addr must be HOST:PORT/],
  ])('refuses %j with a message saying what is wrong', (env, message) => {
    expect(() => configFromEnv({ ...POD_ENV, ...env } as Record<string, string>)).toThrow(message);
  });

  test('pod names', () => {
    expect(parsePodName('cairn-12')).toEqual({ set: 'cairn', ordinal: 12 });
    expect(parsePodName('my-db-0')).toEqual({ set: 'my-db', ordinal: 0 });
  });
});
