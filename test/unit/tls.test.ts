import { mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { X509Certificate } from 'node:crypto';
import { PeerCertificate } from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { RaftServiceClient, RaftServiceService } from '../../gen/cairn/raft/v1/raft';
import { CairnError } from '../../src/errors';
import { IncomingPeerStreams } from '../../src/server/peer-transport';
import {
  CertificateFiles,
  certificateNodeIds,
  nodeIdentityProblem,
  PeerIdentityStats,
  peerIdentityInterceptor,
  plaintextNetworkPorts,
  tlsConfigFrom,
  tlsDial,
  TlsFiles,
} from '../../src/server/tls';
import { CertFiles, issueCert, makeCa } from '../support/test-certs';

const dir = mkdtempSync(join(tmpdir(), 'cairn-tls-unit-'));
let ca: CertFiles;
afterAll(() => rmSync(dir, { recursive: true, force: true }));
beforeAll(() => {
  ca = makeCa(dir, 'ca');
});

/** What node:tls's getPeerCertificate() gives for a certificate file (the fields the checks read). */
function peerCertificateOf(file: string): PeerCertificate {
  const x509 = new X509Certificate(readFileSync(file));
  return { raw: x509.raw, subjectaltname: x509.subjectAltName ?? '', subject: { CN: 'test' } } as unknown as PeerCertificate;
}

const quietLogger = () => {
  const lines: { level: string; fields: object; message: string }[] = [];
  const at = (level: string) => (fields: object, message: string) => lines.push({ level, fields, message });
  return { lines, logger: { info: at('info'), warn: at('warn'), error: at('error') } as never };
};

describe('tlsConfigFrom', () => {
  test('no flags: plaintext on both ports', () => {
    expect(tlsConfigFrom({})).toEqual({ pollIntervalMs: 1000 });
  });

  test('the client port takes a certificate and key, with an optional client CA', () => {
    const config = tlsConfigFrom({ 'cert-file': 'c.pem', 'key-file': 'k.pem' });
    expect(config.client).toMatchObject({ certFile: 'c.pem', keyFile: 'k.pem', caFile: '' });
    expect(config.peer).toBeUndefined();
  });

  test('half a configuration is an error naming the flags', () => {
    expect(() => tlsConfigFrom({ 'cert-file': 'c.pem' })).toThrow(/--cert-file and --key-file go together/);
    expect(() => tlsConfigFrom({ 'client-ca-file': 'ca.pem' })).toThrow(CairnError);
    expect(() => tlsConfigFrom({ 'peer-cert-file': 'c.pem', 'peer-key-file': 'k.pem' })).toThrow(/--peer-ca-file go together/);
    expect(() => tlsConfigFrom({ 'cert-poll-interval-ms': '-1' })).toThrow(/--cert-poll-interval-ms must be an integer >= 0/);
  });
});

describe('peer identity', () => {
  test('cairn-node URI SANs name node ids; other SANs do not', () => {
    expect(certificateNodeIds({ subjectaltname: 'URI:cairn-node:2, DNS:localhost, IP Address:127.0.0.1' })).toEqual([2]);
    expect(certificateNodeIds({ subjectaltname: 'URI:cairn-node:0, URI:cairn-node:x, URI:https://e.com/cairn-node:3' })).toEqual([]);
    expect(certificateNodeIds({ subjectaltname: undefined as never })).toEqual([]);
  });

  test('a certificate proves its URI SAN node and no other', () => {
    const node2 = peerCertificateOf(issueCert(dir, 'n2', ca, ['URI:cairn-node:2', 'IP:127.0.0.1']).cert);
    expect(nodeIdentityProblem(node2, 2, '127.0.0.1:1')).toBeUndefined();
    // Its IP SAN matches node 3's host too, but a URI SAN settles it.
    expect(nodeIdentityProblem(node2, 3, '127.0.0.1:2')).toMatch(/names cairn-node:2, not cairn-node:3/);
    expect(nodeIdentityProblem(undefined, 2, '127.0.0.1:1')).toMatch(/no verified certificate/);
  });

  test('without a URI SAN, a DNS SAN naming the node\'s peer host proves the node', () => {
    const pod = peerCertificateOf(issueCert(dir, 'pod1', ca, ['DNS:cairn-1.cairn-peers.db.svc.cluster.local']).cert);
    expect(nodeIdentityProblem(pod, 2, 'cairn-1.cairn-peers.db.svc.cluster.local:7101')).toBeUndefined();
    expect(nodeIdentityProblem(pod, 3, 'cairn-2.cairn-peers.db.svc.cluster.local:7101')).toMatch(/does not name node 3's peer host/);
    expect(nodeIdentityProblem(pod, 3, undefined)).toMatch(/peer address is not known/);
  });
});

describe('CertificateFiles', () => {
  function files(name: string): TlsFiles {
    const issued = issueCert(dir, name, ca, ['IP:127.0.0.1']);
    return { certFile: issued.cert, keyFile: issued.key, caFile: ca.cert, flags: { cert: '--cert-file', key: '--key-file', ca: '--client-ca-file' } };
  }

  test('a missing file or a key that does not fit fails the start, naming the flag', () => {
    const good = files('start');
    const { logger } = quietLogger();
    expect(() => new CertificateFiles({ ...good, certFile: join(dir, 'absent.pem') }, 'client', logger)).toThrow(/--cert-file .*absent.pem: no such file/);
    const other = files('other');
    expect(() => new CertificateFiles({ ...good, keyFile: other.keyFile }, 'client', logger)).toThrow(/--key-file .* does not fit --cert-file/);
  });

  test('reload publishes new files to listeners; a broken file keeps the previous certificate and is logged', async () => {
    const tlsFiles = files('rotating');
    const { logger, lines } = quietLogger();
    const certs = new CertificateFiles(tlsFiles, 'client', logger);
    const heard: Buffer[] = [];
    certs.addIdentityCertificateListener((update) => heard.push(update!.certificate));
    await Promise.resolve();
    expect(heard).toHaveLength(1);
    const first = certs.describe().serialNumber;

    expect(certs.reload('SIGHUP')).toBe(false); // nothing changed: nothing published
    const next = issueCert(dir, 'rotated', ca, ['IP:127.0.0.1']);
    writeFileSync(tlsFiles.keyFile, readFileSync(next.key));
    // The key is new, the certificate not yet: they do not fit, so the old pair keeps serving.
    expect(certs.reload('file changed')).toBe(false);
    expect(certs.describe().serialNumber).toBe(first);
    expect(lines.some((l) => l.level === 'error' && l.message.includes('certificate reload failed'))).toBe(true);
    writeFileSync(tlsFiles.certFile, readFileSync(next.cert));
    expect(certs.reload('file changed')).toBe(true);
    expect(certs.describe().serialNumber).not.toBe(first);
    expect(heard).toHaveLength(2);
    expect(heard[1]!.equals(readFileSync(next.cert))).toBe(true);
  });
});

describe('plaintextNetworkPorts', () => {
  test('names the ports that listen beyond loopback without TLS', () => {
    const tls = tlsConfigFrom({});
    expect(plaintextNetworkPorts({ clientAddr: '127.0.0.1:7001', peerAddr: '[::1]:7101', tls })).toEqual([]);
    expect(plaintextNetworkPorts({ clientAddr: 'localhost:7001', peerAddr: '0.0.0.0:7101', tls })).toEqual(['--peer-addr 0.0.0.0:7101']);
    const withClientTls = tlsConfigFrom({ 'cert-file': 'c', 'key-file': 'k' });
    expect(plaintextNetworkPorts({ clientAddr: '0.0.0.0:7001', peerAddr: '10.0.0.5:7101', tls: withClientTls })).toEqual(['--peer-addr 10.0.0.5:7101']);
    // The HTTP port carries the JSON gateway: plaintext on the network unless the client port has TLS (then it is HTTPS).
    expect(plaintextNetworkPorts({ clientAddr: '127.0.0.1:7001', peerAddr: '127.0.0.1:7101', httpAddr: '0.0.0.0:7201', tls })).toEqual(['--http-addr 0.0.0.0:7201']);
    expect(plaintextNetworkPorts({ clientAddr: '0.0.0.0:7001', peerAddr: '127.0.0.1:7101', httpAddr: '0.0.0.0:7201', tls: withClientTls })).toEqual([]);
  });
});

describe('peerIdentityInterceptor on a real TLS server', () => {
  test('a frame naming another node than the certificate is refused before the service, logged, and leaves no stream tracked', async () => {
    const server1 = issueCert(dir, 'srv-node-1', ca, ['URI:cairn-node:1', 'IP:127.0.0.1']);
    const node3 = issueCert(dir, 'cli-node-3', ca, ['URI:cairn-node:3', 'IP:127.0.0.1']);
    const { logger, lines } = quietLogger();
    const stats = new PeerIdentityStats(logger);
    const streams = new IncomingPeerStreams();
    const seen: number[] = [];
    const server = new grpc.Server({ interceptors: [peerIdentityInterceptor(() => '127.0.0.1:1', stats)] });
    const unimplemented = () => {
      throw new Error('not used');
    };
    server.addService(RaftServiceService, streams.wrap({
      stream: (call, callback) => {
        call.on('data', (frame) => seen.push(frame.fromId));
        call.on('end', () => callback(null, {}));
      },
      installSnapshot: unimplemented,
      propose: unimplemented,
      readIndex: unimplemented,
    }));
    const creds = grpc.ServerCredentials.createSsl(readFileSync(ca.cert), [{ cert_chain: readFileSync(server1.cert), private_key: readFileSync(server1.key) }], true);
    const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', creds, (err, p) => (err ? reject(err) : resolve(p))));
    const target = `127.0.0.1:${port}`;
    const dial = tlsDial(readFileSync(ca.cert), readFileSync(node3.key), readFileSync(node3.cert))(target);
    const client = new RaftServiceClient(target, dial.credentials, dial.options);
    const send = (fromId: number) =>
      new Promise<{ code?: number; details?: string }>((resolve) => {
        const call = client.stream((err) => resolve(err ?? {}));
        call.write({ clusterId: 7, fromId, clientAddr: '', messages: [] });
        call.end();
      });
    try {
      const refused = await send(2);
      expect(refused.code).toBe(grpc.status.PERMISSION_DENIED);
      expect(refused.details).toMatch(/cairn-node:3, not cairn-node:2/);
      expect(stats.refusedCalls).toBe(1);
      expect(lines.some((l) => l.level === 'warn' && l.message.includes('peer call refused'))).toBe(true);
      expect(await send(3)).toEqual({});
      expect(seen).toEqual([3]);
      await waitUntil(() => streams.count() === 0);
      expect(streams.count()).toBe(0);
    } finally {
      client.close();
      server.forceShutdown();
    }
  });
});

async function waitUntil(condition: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
}

describe('tlsDial', () => {
  test('an IP target gets a stand-in server name (Node 26 refuses an IP there); a host name does not', () => {
    expect(tlsDial(null, null, null)('127.0.0.1:7001').options).toEqual({ 'grpc.ssl_target_name_override': 'cairn-ip-target.invalid' });
    expect(tlsDial(null, null, null)('[::1]:7001').options).toEqual({ 'grpc.ssl_target_name_override': 'cairn-ip-target.invalid' });
    expect(tlsDial(null, null, null)('cairn-0.cairn-peers:7001').options).toEqual({});
  });
});
