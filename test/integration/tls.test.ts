import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { ServiceError, status as Status } from '@grpc/grpc-js';
import { MemberRole } from '../../gen/cairn/kv/v1/kv';
import { StreamResponse, RaftServiceClient } from '../../gen/cairn/raft/v1/raft';
import { CAIRN_MAIN, CliResult, ProcessCluster, waitFor } from '../support/process-cluster';
import { CertFiles, issueCert, makeCa } from '../support/test-certs';
import { DialSecurity, PLAINTEXT_DIAL, tlsDial } from '../../src/server/tls';

jest.setTimeout(120_000);

const dir = mkdtempSync(join(tmpdir(), 'cairn-tls-'));
let ca: CertFiles;
let server: CertFiles;
let client: CertFiles;
const peer: CertFiles[] = [];

beforeAll(() => {
  ca = makeCa(dir, 'ca');
  server = issueCert(dir, 'server', ca, ['IP:127.0.0.1', 'DNS:localhost']);
  client = issueCert(dir, 'client', ca, []);
  for (let id = 1; id <= 4; id++) peer[id] = issueCert(dir, `node-${id}`, ca, [`URI:cairn-node:${id}`, 'IP:127.0.0.1']);
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

const clientTlsArgs = () => ['--cert-file', server.cert, '--key-file', server.key];
const peerTlsArgs = (id: number) => ['--peer-cert-file', peer[id]!.cert, '--peer-key-file', peer[id]!.key, '--peer-ca-file', ca.cert];

function cli(args: string[]): Promise<CliResult> {
  return new Promise((resolve) =>
    execFile(process.execPath, [CAIRN_MAIN, ...args], { timeout: 30_000 }, (err, stdout, stderr) =>
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }),
    ),
  );
}

/** The certificate a TLS port serves right now: a fresh handshake each time (with a client certificate for a peer port). */
function servedCertificate(addr: string, as?: CertFiles): Promise<{ serialNumber: string; fingerprint256: string }> {
  const [host, port] = addr.split(':');
  const identity = as ? { cert: readFileSync(as.cert), key: readFileSync(as.key) } : {};
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host, port: Number(port), ca: readFileSync(ca.cert), ALPNProtocols: ['h2'], servername: undefined, ...identity }, () => {
      const cert = socket.getPeerCertificate();
      socket.destroy();
      resolve({ serialNumber: cert.serialNumber.toUpperCase(), fingerprint256: cert.fingerprint256 });
    });
    socket.once('error', reject);
  });
}

/** openssl's serial as node:crypto prints it: upper-case hex without leading zeros. */
function serialOf(certFile: string): string {
  const { X509Certificate } = require('node:crypto') as typeof import('node:crypto');
  return new X509Certificate(readFileSync(certFile)).serialNumber.toUpperCase();
}

/** Issues a new certificate into the files `into` names (SANs `sans`), each written beside and renamed over. */
function rotateCertificate(name: string, into: CertFiles = server, sans = ['IP:127.0.0.1', 'DNS:localhost']): string {
  const fresh = issueCert(dir, name, ca, sans);
  renameSync(fresh.key, into.key);
  renameSync(fresh.cert, into.cert);
  return serialOf(into.cert);
}
const rotateServerCertificate = (name: string) => rotateCertificate(name);

describe('TLS on the client port', () => {
  let cluster: ProcessCluster;
  afterEach(() => cluster?.stop());

  test('a client with --cacert reads and writes; without it the call fails and says why', async () => {
    cluster = await ProcessCluster.start(1, clientTlsArgs());
    cluster.clientDial = tlsDial(readFileSync(ca.cert), null, null);
    await cluster.waitForLeader();
    const endpoints = cluster.node(1).clientAddr;
    const put = await cli(['put', 'k', 'v', '--endpoints', endpoints, '--cacert', ca.cert]);
    expect(put).toMatchObject({ code: 0 });
    const get = await cli(['get', 'k', '--endpoints', endpoints, '--cacert', ca.cert]);
    expect(get).toMatchObject({ code: 0, stdout: 'v' });
    const plain = await cli(['get', 'k', '--endpoints', endpoints, '--timeout-ms', '2000']);
    expect(plain.code).toBe(1);
    expect(plain.stderr).toMatch(/a node that serves TLS needs --cacert/);
    const untrusted = await cli(['get', 'k', '--endpoints', endpoints, '--cacert', peer[1]!.cert, '--timeout-ms', '2000']);
    expect(untrusted.code).toBe(1);
    expect(untrusted.stderr).toMatch(/serves a TLS certificate that --cacert does not verify/);
    expect(untrusted.stderr).not.toMatch(/DeprecationWarning/);
  });

  test('--client-ca-file: a client without a certificate is refused, one with a certificate the CA signed is served', async () => {
    cluster = await ProcessCluster.start(1, [...clientTlsArgs(), '--client-ca-file', ca.cert]);
    cluster.clientDial = tlsDial(readFileSync(ca.cert), readFileSync(client.key), readFileSync(client.cert));
    await cluster.waitForLeader();
    const endpoints = cluster.node(1).clientAddr;
    const withCert = await cli(['put', 'k', 'v', '--endpoints', endpoints, '--cacert', ca.cert, '--cert', client.cert, '--key', client.key]);
    expect(withCert).toMatchObject({ code: 0 });
    const withoutCert = await cli(['get', 'k', '--endpoints', endpoints, '--cacert', ca.cert, '--timeout-ms', '2000']);
    expect(withoutCert.code).toBe(1);
    expect(withoutCert.stderr).toMatch(/requires a client certificate \(pass --cert and --key\)/);
  });

  test('a replaced certificate is served after SIGHUP (client and peer port), and after a file change, without a restart', async () => {
    cluster = await ProcessCluster.start(1, [...clientTlsArgs(), ...peerTlsArgs(1), '--cert-poll-interval-ms', '0']);
    cluster.clientDial = tlsDial(readFileSync(ca.cert), null, null);
    await cluster.waitForLeader();
    const node = cluster.node(1);
    const pid = node.process!.pid;
    expect((await servedCertificate(node.clientAddr)).serialNumber).toBe(serialOf(server.cert));

    expect((await servedCertificate(node.peerAddr, peer[2])).serialNumber).toBe(serialOf(peer[1]!.cert));
    const second = rotateServerCertificate('server-2');
    const secondPeer = rotateCertificate('node-1-2', peer[1], ['URI:cairn-node:1', 'IP:127.0.0.1']);
    // With polling off only the signal reloads: the old certificates are still served.
    expect((await servedCertificate(node.clientAddr)).serialNumber).not.toBe(second);
    expect((await servedCertificate(node.peerAddr, peer[2])).serialNumber).not.toBe(secondPeer);
    node.process!.kill('SIGHUP');
    await waitFor('the certificate after SIGHUP', async () => (await servedCertificate(node.clientAddr)).serialNumber === second);
    await waitFor('the peer certificate after SIGHUP', async () => (await servedCertificate(node.peerAddr, peer[2])).serialNumber === secondPeer);
    // The log line travels through the child's stdout pipe: it may reach us after the new certificate is served.
    await waitFor('the SIGHUP reload logged', async () => node.logs.some((l) => l.includes('certificate reloaded') && l.includes('SIGHUP')));
    expect(node.process!.pid).toBe(pid);
    await cluster.stop();

    cluster = await ProcessCluster.start(1, [...clientTlsArgs(), '--cert-poll-interval-ms', '100']);
    cluster.clientDial = tlsDial(readFileSync(ca.cert), null, null);
    await cluster.waitForLeader();
    const watched = cluster.node(1);
    expect((await servedCertificate(watched.clientAddr)).serialNumber).toBe(second);
    const third = rotateServerCertificate('server-3');
    await waitFor('the certificate after the files changed', async () => (await servedCertificate(watched.clientAddr)).serialNumber === third);
    await waitFor('the file-change reload logged', async () => watched.logs.some((l) => l.includes('certificate reloaded') && l.includes('file changed')));
    const get = await cli(['status', '--endpoints', watched.clientAddr, '--cacert', ca.cert]);
    expect(get.code).toBe(0);
  });
});

describe('mutual TLS on the peer port', () => {
  let cluster: ProcessCluster;
  afterAll(() => cluster?.stop());

  /** One stream frame to node 1's peer port with the given credentials; resolves with how the call ended. */
  function sendFrame(dial: DialSecurity, clusterId: number, fromId: number): Promise<ServiceError | StreamResponse> {
    const addr = cluster.node(1).peerAddr;
    const { credentials: creds, options } = dial(addr);
    const peerClient = new RaftServiceClient(addr, creds, options);
    return new Promise((resolve) => {
      const call = peerClient.stream((err, response) => {
        peerClient.close();
        resolve(err ?? response!);
      });
      call.write({ clusterId, fromId, clientAddr: '', messages: [] });
      call.end();
    });
  }

  test('three nodes elect a leader over mTLS; a certificate for another node id, or none, is refused', async () => {
    cluster = await ProcessCluster.prepare(3);
    for (const node of cluster.nodes) node.extraArgs = peerTlsArgs(node.id);
    for (const node of cluster.nodes) cluster.spawn(node);
    await cluster.waitForLeader();
    const put = await cli(['put', 'k', 'v', '--endpoints', cluster.nodes.map((n) => n.clientAddr).join(',')]);
    expect(put.code).toBe(0);
    const { clusterId } = await cluster.status(1);

    // Node 3's certificate, claiming to be node 2.
    const asNode3 = tlsDial(readFileSync(ca.cert), readFileSync(peer[3]!.key), readFileSync(peer[3]!.cert));
    const impostor = (await sendFrame(asNode3, clusterId, 2)) as ServiceError;
    expect(impostor.code).toBe(Status.PERMISSION_DENIED);
    expect(impostor.details).toMatch(/cairn-node:3, not cairn-node:2/);
    await waitFor('the refusal in node 1\'s log', () => cluster.node(1).logs.some((l) => l.includes('peer call refused')));

    // The same certificate, honest about its node: accepted.
    const honest = await sendFrame(asNode3, clusterId, 3);
    expect((honest as ServiceError).code).toBeUndefined();

    // TLS without a client certificate: the handshake is refused.
    const noCert = (await sendFrame(tlsDial(readFileSync(ca.cert), null, null), clusterId, 2)) as ServiceError;
    expect(noCert.code).toBe(Status.UNAVAILABLE);
    // Plaintext: no TLS at all.
    const plaintext = (await sendFrame(PLAINTEXT_DIAL, clusterId, 2)) as ServiceError;
    expect(plaintext.code).toBe(Status.UNAVAILABLE);
    // The cluster still serves.
    expect((await cli(['get', 'k', '--endpoints', cluster.node(1).clientAddr])).stdout).toBe('v');
  });

  test('a node whose peer certificate names another node id is not let in by the others', async () => {
    // Node 3 of the cluster above restarts with node 2's certificate: its frames name node 3.
    await cluster.kill(3, 'SIGTERM');
    cluster.node(3).extraArgs = peerTlsArgs(2);
    cluster.restart(3);
    await waitFor('node 1 refusing node 3 for its certificate', () =>
      cluster.node(1).logs.some((l) => l.includes('peer call refused') && l.includes('"from":3')),
    );
    const { leaderId } = await cluster.status(1);
    expect([1, 2]).toContain(leaderId);
  });
});

describe('TLS on both ports, client certificates required', () => {
  let cluster: ProcessCluster;
  afterAll(() => cluster?.stop());

  test('a node joins through the TLS client ports (its calls present its peer certificate) and is promoted; forwarded Cluster calls reach the leader', async () => {
    const allTls = (id: number) => [...clientTlsArgs(), '--client-ca-file', ca.cert, ...peerTlsArgs(id)];
    cluster = await ProcessCluster.prepare(3);
    cluster.clientDial = tlsDial(readFileSync(ca.cert), readFileSync(client.key), readFileSync(client.cert));
    for (const node of cluster.nodes) node.extraArgs = allTls(node.id);
    for (const node of cluster.nodes) cluster.spawn(node);
    const leader = await cluster.waitForLeader();
    const joined = await cluster.join([leader === 1 ? 2 : 1], allTls(4));
    await waitFor('node 4 promoted to voter', async () => (await cluster.status(leader)).members.some((m) => m.id === 4 && m.role === MemberRole.MEMBER_ROLE_VOTER));
    // A follower forwards a leadership transfer to the leader's client port over TLS.
    const follower = cluster.nodes.find((n) => n.id !== leader && n.id !== joined.id)!;
    const tlsFlags = ['--cacert', ca.cert, '--cert', client.cert, '--key', client.key];
    const transfer = await cli(['leader', 'transfer', '--to', String(follower.id), '--endpoints', follower.clientAddr, ...tlsFlags]);
    expect(transfer).toMatchObject({ code: 0 });
    await waitFor('the transfer', async () => (await cluster.status(follower.id)).role === 'leader');
  });
});
