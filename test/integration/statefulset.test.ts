import { ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parse } from 'yaml';
import { Consistency, MemberRole } from '../../gen/cairn/kv/v1/kv';
import { CairnClient } from '../../src/cli/client';
import { CAIRN_MAIN, freePort, waitFor } from '../support/process-cluster';

jest.setTimeout(180_000);

/**
 * StatefulSet mode without Kubernetes: processes get the environment a pod of
 * deploy/k8s/statefulset.yaml gets (its name as HOSTNAME, CAIRN_INITIAL_CLUSTER_SIZE, the
 * headless service, the namespace), and the pods' DNS names resolve to loopback addresses, one
 * per pod (test/support/pod-dns.ts, preloaded). The one difference from a pod: each process
 * listens on its own loopback address instead of 0.0.0.0, since they share one machine.
 */
const POD_DNS = resolve(__dirname, '../../dist/test/support/pod-dns.js');
const SET = 'cairn';
const PEER_SERVICE = 'cairn-peers'; // the headless Service in deploy/k8s (checked below through the advertised names)
const NAMESPACE = 'cairn-test';
const INITIAL_SIZE = 3;
const MAX_PODS = 5;

const podAddress = (ordinal: number) => `127.0.0.${30 + ordinal}`;
const podDnsName = (ordinal: number) => `${SET}-${ordinal}.${PEER_SERVICE}.${NAMESPACE}.svc.cluster.local`;
const key = (text: string) => Buffer.from(text);

interface Pod {
  ordinal: number;
  process?: ChildProcess;
  logs: string[];
}

const MANIFEST = resolve(__dirname, '../../deploy/k8s/statefulset.yaml');

interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: { fieldRef?: { fieldPath: string } };
}

/** The cairn container's environment in the StatefulSet, with the downward API filled in for one pod. */
function podTemplateEnv(podName: string, namespace: string): Record<string, string> {
  const statefulSet = parse(readFileSync(MANIFEST, 'utf8')) as { spec: { template: { spec: { containers: { name: string; env: EnvVar[] }[] } } } };
  const fields: Record<string, string> = { 'metadata.name': podName, 'metadata.namespace': namespace };
  const env: Record<string, string> = {};
  for (const variable of statefulSet.spec.template.spec.containers[0]!.env) {
    const fieldPath = variable.valueFrom?.fieldRef?.fieldPath;
    const value = fieldPath ? fields[fieldPath] : variable.value;
    if (value === undefined) throw new Error(`statefulset.yaml: ${variable.name} has a value this test cannot fill in`);
    env[variable.name] = value;
  }
  return env;
}

/** The test runner's own environment without CAIRN_* variables (a pod has only what its template sets). */
function withoutCairnVariables(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(env).filter(([name]) => !name.startsWith('CAIRN_')));
}

describe('StatefulSet mode on real processes', () => {
  let root: string;
  let clientPort: number;
  let peerPort: number;
  const pods: Pod[] = [];
  const clients: CairnClient[] = [];

  const hosts = JSON.stringify(Object.fromEntries(Array.from({ length: MAX_PODS }, (_, i) => [podDnsName(i), podAddress(i)])));
  const clientOf = (ordinals: number[], consistency = Consistency.CONSISTENCY_LINEARIZABLE) => {
    const client = new CairnClient({ endpoints: ordinals.map((i) => `${podAddress(i)}:${clientPort}`), timeoutMs: 3000, consistency });
    clients.push(client);
    return client;
  };

  function start(ordinal: number): Pod {
    const pod = pods[ordinal] ?? { ordinal, logs: [] };
    pods[ordinal] = pod;
    const env = {
      ...withoutCairnVariables(process.env),
      // What the StatefulSet's pod template sets (deploy/k8s/statefulset.yaml), and Kubernetes itself (HOSTNAME).
      ...podTemplateEnv(`${SET}-${ordinal}`, NAMESPACE),
      HOSTNAME: `${SET}-${ordinal}`,
      // What differs on one machine: each pod's own loopback address and ports, and a data dir.
      CAIRN_DATA_DIR: join(root, `pod-${ordinal}`),
      CAIRN_CLIENT_ADDR: `${podAddress(ordinal)}:${clientPort}`,
      CAIRN_PEER_ADDR: `${podAddress(ordinal)}:${peerPort}`,
      CAIRN_HTTP_ADDR: '',
      CAIRN_TICK_MS: '50',
      NODE_OPTIONS: `--require ${POD_DNS}`,
      CAIRN_TEST_POD_HOSTS: hosts,
    };
    const child = spawn(process.execPath, [CAIRN_MAIN, 'serve'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    const keep = (chunk: Buffer) => pod.logs.push(...chunk.toString().split('\n').filter(Boolean));
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    pod.process = child;
    return pod;
  }

  async function stop(ordinal: number, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const child = pods[ordinal]?.process;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((done) => child.once('exit', done));
    child.kill(signal);
    await exited;
    pods[ordinal]!.process = undefined;
  }

  /** `cairn member list` as seen through `ordinal`: id -> role and advertised addresses. */
  async function members(ordinal: number) {
    const listed = await clientOf([ordinal]).members();
    return listed.members.map((m) => ({ id: m.id, learner: m.role === MemberRole.MEMBER_ROLE_LEARNER, peerAddr: m.peerAddr, clientAddr: m.clientAddr }));
  }

  beforeAll(async () => {
    if (!existsSync(CAIRN_MAIN) || !existsSync(POD_DNS)) throw new Error('dist/ is missing: run "npm run build" first (npm test does)');
    root = mkdtempSync(join(tmpdir(), 'cairn-sts-'));
    clientPort = await freePort();
    peerPort = await freePort();
  });

  afterAll(async () => {
    for (const client of clients) client.close();
    await Promise.all(pods.map((pod) => stop(pod.ordinal, 'SIGKILL')));
    rmSync(root, { recursive: true, force: true });
  });

  test('three pods bootstrap by their DNS names; scaling to five adds two voters; a pod restarted with its volume keeps its identity and data', async () => {
    for (let i = 0; i < INITIAL_SIZE; i++) start(i);
    const writer = clientOf([0, 1, 2]);
    await waitFor('the three founders to elect a leader and take a write', async () => (await writer.put(key('before'), key('scale')), true), 30_000);
    for (let i = 0; i < 20; i++) await writer.put(key(`k${i}`), key(`v${i}`));

    // Every founder names every founder by its pod DNS name, ids from the ordinals.
    const founders = await waitFor('pod 1 to list the members', () => members(1), 20_000);
    expect(founders.map((m) => m.id).sort()).toEqual([1, 2, 3]);
    for (const m of founders) expect(m.peerAddr).toBe(`${podDnsName(m.id - 1)}:${peerPort}`);

    // kubectl scale --replicas=5: pods 3 and 4 start with the same environment.
    start(3);
    start(4);
    await waitFor(
      'five voters, the new ones advertising their DNS names',
      async () => {
        const listed = await members(0);
        return listed.length === 5 && listed.every((m) => !m.learner) && listed.find((m) => m.id === 5)?.clientAddr === `${podDnsName(4)}:${clientPort}`;
      },
      90_000,
    );
    // Its own word for it comes once its promote call returns (the member list may say so first).
    await waitFor('pod 3 to log its promotion', () => pods[3]!.logs.some((line) => line.includes('join: promoted to voter')), 20_000);

    // The new pods serve what was written before they existed.
    const newcomer = clientOf([4]);
    expect((await newcomer.get(key('k7'))).kv?.value.toString()).toBe('v7');

    // A pod deleted and recreated with its volume: same id, same data, still a voter.
    await stop(1);
    await writer.put(key('while-down'), key('1'));
    start(1);
    const restarted = clientOf([1]);
    await waitFor('the restarted pod to serve the write it missed', async () => (await restarted.get(key('while-down'))).kv?.value.toString() === '1', 30_000);
    expect((await restarted.get(key('k19'))).kv?.value.toString()).toBe('v19');
    const status = await restarted.statusOf(0);
    expect(status.id).toBe(2);
    expect((await waitFor('the restarted pod to list the members', () => members(1), 20_000)).filter((m) => !m.learner)).toHaveLength(5);
    // Both starts of pod 1 are the same member of the same cluster (its volume, not its flags, says so).
    const starts = pods[1]!.logs.filter((line) => line.includes('"cairn node started"')).map((line) => JSON.parse(line) as { id: number; clusterId: number });
    expect(starts).toHaveLength(2);
    expect(starts.map((s) => [s.id, s.clusterId])).toEqual([[2, starts[0]!.clusterId], [2, starts[0]!.clusterId]]);
  });
});
