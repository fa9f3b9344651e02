import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { credentials, Metadata, ServiceError, status as Status } from '@grpc/grpc-js';
import {
  AuthClient,
  ClusterClient,
  Consistency,
  GetResponse,
  KVClient,
  MemberListResponse,
  PermissionType,
  RangeResponse,
} from '../../gen/cairn/kv/v1/kv';
import { descriptors } from '../../src/server/descriptors';
import { responseJson } from '../../src/server/gateway';
import { HttpUrls, prepareHttpCluster } from '../support/http-cluster';
import { freePort, ProcessCluster, waitFor } from '../support/process-cluster';
import { CertFiles, issueCert, makeCa } from '../support/test-certs';

jest.setTimeout(120_000);

const b64 = (text: string) => Buffer.from(text).toString('base64');

interface Answer {
  status: number;
  headers: Headers;
  json: Record<string, any>;
}

/** What `curl -X POST -H 'content-type: application/json' -d BODY URL` does, with Node's fetch. */
async function post(url: string, body?: unknown, headers: Record<string, string> = {}): Promise<Answer> {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(15_000),
  });
  return { status: res.status, headers: res.headers, json: (await res.json()) as Record<string, any> };
}

type Unary<Req, Res> = (request: Req, metadata: Metadata, options: { deadline: number }, done: (err: ServiceError | null, res?: Res) => void) => unknown;

/** A generated client's unary call; rejects with the gRPC error. */
function grpc<Req, Res>(client: object, method: Unary<Req, Res>, request: Req, token?: string): Promise<Res> {
  const metadata = new Metadata();
  if (token) metadata.set('authorization', `Bearer ${token}`);
  return new Promise((resolve, reject) => method.call(client, request, metadata, { deadline: Date.now() + 10_000 }, (err, res) => (err ? reject(err) : resolve(res!))));
}

/** The JSON grpcurl prints for a response: proto3 JSON of its encoding, from the protos' descriptors. */
function grpcurlJson(typeName: string, encoded: Uint8Array) {
  return responseJson(descriptors().registry.getMessage(typeName)!, encoded);
}

/** `buf curl` (a grpcurl-like client, through server reflection): the JSON it prints for one call. */
function bufCurl(addr: string, method: string, body: unknown): Promise<unknown> {
  return new Promise((resolve, reject) =>
    execFile('npx', ['buf', 'curl', '--protocol', 'grpc', '--http2-prior-knowledge', `http://${addr}/${method}`, '-d', JSON.stringify(body)], { timeout: 30_000 }, (err, stdout, stderr) =>
      err ? reject(new Error(`buf curl failed: ${stderr}`)) : resolve(JSON.parse(stdout)),
    ),
  );
}

describe('the HTTP/JSON gateway of a 3-node cluster', () => {
  let cluster: ProcessCluster;
  let urls: HttpUrls;
  let leader: number;
  let followers: number[];
  const clients: { close(): void }[] = [];
  const url = (id: number, path: string) => `${urls.get(id)!}${path}`;
  const kvClient = (id: number) => {
    const client = new KVClient(cluster.node(id).clientAddr, credentials.createInsecure());
    clients.push(client);
    return client;
  };
  const clusterClient = (id: number) => {
    const client = new ClusterClient(cluster.node(id).clientAddr, credentials.createInsecure());
    clients.push(client);
    return client;
  };

  beforeAll(async () => {
    ({ cluster, urls } = await prepareHttpCluster(3));
    for (const node of cluster.nodes) cluster.spawn(node);
    leader = await cluster.waitForLeader();
    followers = cluster.nodes.map((n) => n.id).filter((id) => id !== leader);
  });
  afterAll(async () => {
    for (const client of clients) client.close();
    await cluster.stop();
  });

  test('put on a follower\'s gateway, then a linearizable get on the other follower\'s sees it', async () => {
    const put = await post(url(followers[0]!, '/v1/kv/put'), { key: b64('greeting'), value: b64('hello') });
    expect(put.status).toBe(200);
    expect(put.json.header).toMatchObject({ leaderId: String(leader), revision: expect.stringMatching(/^\d+$/) });
    const get = await post(url(followers[1]!, '/v1/kv/get'), { key: b64('greeting') });
    expect(get.status).toBe(200);
    expect(get.json.kv).toMatchObject({ key: b64('greeting'), value: b64('hello'), version: '1' });
    expect(Number(get.json.header.revision)).toBeGreaterThanOrEqual(Number(put.json.header.revision));
  });

  test('range with a prefix, and delete', async () => {
    for (const key of ['app/a', 'app/b', 'other']) expect((await post(url(leader, '/v1/kv/put'), { key: b64(key), value: b64(`v-${key}`) })).status).toBe(200);
    const range = await post(url(followers[0]!, '/v1/kv/range'), { key: b64('app/'), prefix: true });
    expect(range.status).toBe(200);
    expect(range.json.kvs.map((kv: { key: string }) => Buffer.from(kv.key, 'base64').toString())).toEqual(['app/a', 'app/b']);
    const deleted = await post(url(followers[1]!, '/v1/kv/delete'), { key: b64('app/a'), prevKv: true });
    expect(deleted.status).toBe(200);
    expect(deleted.json).toMatchObject({ deleted: true, prevKv: { key: b64('app/a'), value: b64('v-app/a') } });
    const gone = await post(url(followers[0]!, '/v1/kv/get'), { key: b64('app/a') });
    expect(gone.status).toBe(200);
    expect(gone.json.kv).toBeUndefined();
  });

  test('the JSON is what grpcurl prints for the same call on the gRPC port (get, range, member list, status)', async () => {
    const node = followers[0]!;
    const serializable = Consistency.CONSISTENCY_SERIALIZABLE;
    // Nothing is written meanwhile, so both answers describe the same state.
    const get = await grpc(kvClient(node), kvClient(node).get, { key: Buffer.from('greeting'), consistency: serializable });
    const httpGet = await post(url(node, '/v1/kv/get'), { key: b64('greeting'), consistency: 'CONSISTENCY_SERIALIZABLE' });
    expect(httpGet.json).toEqual(grpcurlJson('cairn.kv.v1.GetResponse', GetResponse.encode(get).finish()));
    const range = await grpc(kvClient(node), kvClient(node).range, { key: Buffer.from('app/'), rangeEnd: Buffer.alloc(0), limit: 0, keysOnly: false, consistency: serializable, prefix: true });
    const httpRange = await post(url(node, '/v1/kv/range'), { key: b64('app/'), prefix: true, consistency: 'CONSISTENCY_SERIALIZABLE' });
    expect(httpRange.json).toEqual(grpcurlJson('cairn.kv.v1.RangeResponse', RangeResponse.encode(range).finish()));
    const members = await grpc(clusterClient(node), clusterClient(node).memberList, {});
    const httpMembers = await post(url(node, '/v1/cluster/member/list'));
    expect(httpMembers.status).toBe(200);
    expect(httpMembers.json).toEqual(grpcurlJson('cairn.kv.v1.MemberListResponse', MemberListResponse.encode(members).finish()));
    expect(httpMembers.json.members).toHaveLength(3);
    // And what a grpcurl-like client really prints, through reflection.
    expect(httpGet.json).toEqual(await bufCurl(cluster.node(node).clientAddr, 'cairn.kv.v1.KV/Get', { key: b64('greeting'), consistency: 'CONSISTENCY_SERIALIZABLE' }));
    const status = await post(url(node, '/v1/cluster/status'), {});
    expect(status.status).toBe(200);
    expect(status.json).toMatchObject({ id: String(node), role: 'follower', leaderId: String(leader), clusterId: expect.stringMatching(/^\d+$/) });
  });

  test('errors carry the gRPC code, cairn\'s code and the HTTP status grpc-gateway uses', async () => {
    const emptyKey = await post(url(leader, '/v1/kv/put'), { value: b64('v') });
    expect(emptyKey.status).toBe(400);
    expect(emptyKey.json).toMatchObject({ code: Status.INVALID_ARGUMENT, error_code: 'INVALID_ARGUMENT', details: [] });
    expect(emptyKey.headers.get('cairn-error-code')).toBe('INVALID_ARGUMENT');
    const missing = await post(url(followers[0]!, '/v1/cluster/member/remove'), { id: '99' });
    expect(missing.status).toBe(404);
    expect(missing.json).toMatchObject({ code: Status.NOT_FOUND, error_code: 'MEMBER_NOT_FOUND' });
    const unknownField = await post(url(leader, '/v1/kv/get'), { key: b64('k'), revision: 3 });
    expect(unknownField.status).toBe(400);
    expect(unknownField.json.message).toMatch(/"revision" is unknown/);
  });

  test('txn: a compare-and-swap through a follower\'s gateway swaps once, then runs the failure branch', async () => {
    const cas = {
      compare: [{ key: b64('gw/lock'), target: 'COMPARE_TARGET_VERSION', result: 'COMPARE_RESULT_EQUAL', version: '0' }],
      success: [{ requestPut: { key: b64('gw/lock'), value: b64('mine') } }],
      failure: [{ requestRange: { key: b64('gw/lock') } }],
    };
    const first = await post(url(followers[0]!, '/v1/kv/txn'), cas);
    expect(first.status).toBe(200);
    expect(first.json).toMatchObject({ succeeded: true, responses: [{ responsePut: {} }] });
    const second = await post(url(followers[1]!, '/v1/kv/txn'), cas);
    expect(second.status).toBe(200);
    expect(second.json.succeeded).toBeUndefined(); // false is left out, as grpcurl prints it
    expect(second.json.responses[0].responseRange.kvs[0]).toMatchObject({ key: b64('gw/lock'), value: b64('mine'), version: '1' });
    const twice = await post(url(leader, '/v1/kv/txn'), { success: [{ requestPut: { key: b64('k'), value: b64('1') } }, { requestDelete: { key: b64('k') } }] });
    expect(twice.status).toBe(400);
    expect(twice.json.message).toMatch(/success\[1\]\.key "k" is written twice on one path through the txn/);
  });

  test('txn: a nested txn through a follower\'s gateway sees the outer put; grpcurl (buf curl) prints the same JSON as the gateway for a nested txn', async () => {
    const tree = {
      compare: [{ key: b64('gw/n'), target: 'COMPARE_TARGET_VERSION', result: 'COMPARE_RESULT_EQUAL', version: '0' }],
      success: [
        { requestPut: { key: b64('gw/n'), value: b64('1') } },
        {
          requestTxn: {
            compare: [{ key: b64('gw/n'), target: 'COMPARE_TARGET_VALUE', result: 'COMPARE_RESULT_EQUAL', value: b64('1') }],
            success: [{ requestRange: { key: b64('gw/n') } }, { requestPut: { key: b64('gw/inner'), value: b64('2') } }],
            failure: [{ requestPut: { key: b64('gw/never'), value: b64('x') } }],
          },
        },
      ],
    };
    const ran = await post(url(followers[0]!, '/v1/kv/txn'), tree);
    expect(ran.status).toBe(200);
    expect(ran.json).toMatchObject({ succeeded: true, responses: [{ responsePut: {} }, { responseTxn: { succeeded: true, responses: [{ responseRange: { kvs: [{ key: b64('gw/n'), value: b64('1') }] } }, { responsePut: {} }] } }] });
    expect(ran.json.responses[1].responseTxn.header).toBeUndefined();
    const revision = ran.json.header.revision;
    const inner = await post(url(followers[1]!, '/v1/kv/get'), { key: b64('gw/inner') });
    expect(inner.json.kv).toMatchObject({ value: b64('2'), modRevision: revision, createRevision: revision });
    expect((await post(url(followers[1]!, '/v1/kv/get'), { key: b64('gw/never') })).json.kv).toBeUndefined();

    // A nested txn that only reads writes nothing, so both answers describe the same state.
    const readOnly = { success: [{ requestTxn: { compare: [{ key: b64('gw/inner'), target: 'COMPARE_TARGET_VERSION', result: 'COMPARE_RESULT_GREATER', version: '0' }], success: [{ requestRange: { key: b64('gw/'), prefix: true } }] } }] };
    const httpTxn = await post(url(leader, '/v1/kv/txn'), readOnly);
    expect(httpTxn.status).toBe(200);
    expect(httpTxn.json.responses[0].responseTxn.responses[0].responseRange.kvs).toHaveLength(3);
    expect(httpTxn.json).toEqual(await bufCurl(cluster.node(leader).clientAddr, 'cairn.kv.v1.KV/Txn', readOnly));

    const session = await post(url(leader, '/v1/kv/txn'), { success: [{ requestTxn: { clientId: 'c', sequence: '1' } }] });
    expect(session.status).toBe(400);
    expect(session.json.message).toMatch(/success\[0\]\.request_txn: client_id, sequence and lowest_unanswered_sequence must be unset on a nested txn/);
  });

  test('leases over HTTP: grant on a follower, put with the lease, keep it alive, time-to-live lists the key, revoke deletes it', async () => {
    const granted = await post(url(followers[0]!, '/v1/lease/grant'), { ttl: '30' });
    expect(granted.status).toBe(200);
    const id = granted.json.id as string;
    expect(id).toMatch(/^\d+$/);
    expect((await post(url(followers[1]!, '/v1/kv/put'), { key: b64('gw/leased'), value: b64('v'), lease: id })).status).toBe(200);
    expect((await post(url(followers[1]!, '/v1/lease/keepalive'), { id })).status).toBe(200);
    const ttl = await post(url(followers[0]!, '/v1/lease/timetolive'), { id, keys: true });
    expect(ttl.json).toMatchObject({ id, grantedTtl: '30', keys: [b64('gw/leased')] });
    expect((await post(url(leader, '/v1/lease/revoke'), { id })).status).toBe(200);
    const gone = await post(url(followers[0]!, '/v1/kv/get'), { key: b64('gw/leased') });
    expect(gone.json.kv).toBeUndefined();
  });

  test('with auth on: no token is 401 UNAUTHENTICATED, a key outside the role 403 PERMISSION_DENIED, a root-only call 403; the token passes through to the leader', async () => {
    const auth = new AuthClient(cluster.node(leader).clientAddr, credentials.createInsecure());
    clients.push(auth);
    await grpc(auth, auth.userAdd, { name: 'root', password: 'rootpw' });
    await grpc(auth, auth.userAdd, { name: 'alice', password: 'alicepw' });
    await grpc(auth, auth.roleAdd, { name: 'app' });
    await grpc(auth, auth.roleGrantPermission, { name: 'app', permission: { type: PermissionType.PERMISSION_TYPE_READWRITE, key: Buffer.from('app/'), prefix: true } });
    await grpc(auth, auth.userGrantRole, { user: 'alice', role: 'app' });
    await grpc(auth, auth.authEnable, {});
    // Logging in works over HTTP too (Auth/Authenticate at /v1/auth/authenticate).
    const login = await waitFor('a login over HTTP', async () => {
      const answer = await post(url(followers[1]!, '/v1/auth/authenticate'), { name: 'alice', password: 'alicepw' });
      return answer.status === 200 ? answer : undefined;
    });
    const token = login.json.token as string;
    expect(token).toMatch(/^cairn1\./);
    expect((await post(url(followers[1]!, '/v1/auth/authenticate'), { name: 'alice', password: 'wrong' })).status).toBe(401);
    const bearer = { authorization: `Bearer ${token}` };
    const follower = followers[0]!;

    const anonymous = await waitFor('auth on at the follower', async () => {
      const answer = await post(url(follower, '/v1/kv/get'), { key: b64('app/b') });
      return answer.status === 401 ? answer : undefined;
    });
    expect(anonymous.json).toMatchObject({ code: Status.UNAUTHENTICATED, error_code: 'UNAUTHENTICATED' });
    const outside = await post(url(follower, '/v1/kv/put'), { key: b64('other'), value: b64('x') }, bearer);
    expect(outside.status).toBe(403);
    expect(outside.json).toMatchObject({ code: Status.PERMISSION_DENIED, error_code: 'PERMISSION_DENIED' });
    // A key outside the role only in a nested txn's failure branch, which would not even run.
    const nestedOutside = await post(url(follower, '/v1/kv/txn'), { success: [{ requestTxn: { success: [{ requestPut: { key: b64('app/n'), value: b64('x') } }], failure: [{ requestDelete: { key: b64('other') } }] } }] }, bearer);
    expect(nestedOutside.status).toBe(403);
    expect(nestedOutside.json.message).toMatch(/may not write key "other"/);
    const rootOnly = await post(url(follower, '/v1/cluster/snapshot'), {}, bearer);
    expect(rootOnly.status).toBe(403);
    const inside = await post(url(follower, '/v1/kv/put'), { key: b64('app/c'), value: b64('by alice') }, bearer);
    expect(inside.status).toBe(200);
    const read = await post(url(followers[1]!, '/v1/kv/get'), { key: b64('app/c') }, bearer);
    expect(read.json.kv).toMatchObject({ value: b64('by alice') });
    // A Cluster call a follower forwards to the leader's client port carries the token there.
    const { token: rootToken } = await grpc(auth, auth.authenticate, { name: 'root', password: 'rootpw' });
    const forwarded = await post(url(follower, '/v1/cluster/leader/transfer'), { toId: String(leader) }, { authorization: `Bearer ${rootToken}` });
    expect(forwarded.status).toBe(200);
    expect(forwarded.json).toMatchObject({ leaderId: String(leader), header: { memberId: String(leader) } });
    expect((await post(url(follower, '/v1/cluster/leader/transfer'), { toId: String(leader) })).status).toBe(401);
  });
});

describe('the gateway when the client port has TLS', () => {
  const dir = mkdtempSync(join(tmpdir(), 'cairn-gateway-tls-'));
  let ca: CertFiles;
  let server: CertFiles;
  let client: CertFiles;
  let cluster: ProcessCluster;
  let httpAddr: string;

  beforeAll(async () => {
    ca = makeCa(dir, 'ca');
    server = issueCert(dir, 'server', ca, ['IP:127.0.0.1', 'DNS:localhost']);
    client = issueCert(dir, 'client', ca, []);
    httpAddr = `127.0.0.1:${await freePort()}`;
    cluster = await ProcessCluster.start(1, ['--cert-file', server.cert, '--key-file', server.key, '--client-ca-file', ca.cert, '--http-addr', httpAddr, '--cert-poll-interval-ms', '100']);
    await waitFor('the HTTPS port ready', async () => (await https('/readyz', { method: 'GET', withCert: false })).status === 200);
  });
  afterAll(async () => {
    await cluster.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  /** An HTTPS request trusting the test CA, with the client certificate when `withCert`. */
  function https(path: string, options: { method?: string; body?: unknown; withCert: boolean }): Promise<{ status: number; body: string }> {
    const [host, port] = httpAddr.split(':');
    const identity = options.withCert ? { cert: readFileSync(client.cert), key: readFileSync(client.key) } : {};
    return new Promise((resolve, reject) => {
      const req = httpsRequest(
        // agent: false: a fresh connection each time, never one (or a TLS session) a request with a certificate left behind.
        { host, port: Number(port), path, method: options.method ?? 'POST', ca: readFileSync(ca.cert), headers: { 'content-type': 'application/json' }, agent: false, ...identity },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => resolve({ status: res.statusCode!, body: Buffer.concat(chunks).toString() }));
        },
      );
      req.on('error', reject);
      req.setTimeout(10_000, () => req.destroy(new Error('no answer within 10 s')));
      req.end(options.body === undefined ? undefined : JSON.stringify(options.body));
    });
  }

  test('the port serves HTTPS with the client port\'s certificate; gateway routes need a verified client certificate, probes do not; plaintext is refused', async () => {
    expect(await https('/healthz', { method: 'GET', withCert: false })).toMatchObject({ status: 200, body: 'ok\n' });
    const anonymous = await https('/v1/kv/put', { body: { key: b64('k'), value: b64('v') }, withCert: false });
    expect({ status: anonymous.status, body: anonymous.body }).toMatchObject({ status: 401 });
    expect(JSON.parse(anonymous.body)).toMatchObject({ code: Status.UNAUTHENTICATED, message: expect.stringContaining('--client-ca-file') });
    const put = await https('/v1/kv/put', { body: { key: b64('k'), value: b64('v') }, withCert: true });
    expect(put.status).toBe(200);
    const get = await https('/v1/kv/get', { body: { key: b64('k') }, withCert: true });
    expect(JSON.parse(get.body).kv).toMatchObject({ value: b64('v') });
    // Plaintext HTTP on the same port gets no answer from the gateway.
    await expect(fetch(`http://${httpAddr}/v1/kv/get`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}', signal: AbortSignal.timeout(5000) }).then((r) => r.status)).rejects.toThrow();
  });

  test('a replaced certificate is served on the HTTP port too, without a restart', async () => {
    const servedSerial = () =>
      new Promise<string>((resolve, reject) => {
        const [host, port] = httpAddr.split(':');
        const socket = tlsConnect({ host, port: Number(port), ca: readFileSync(ca.cert) }, () => {
          const serial = socket.getPeerCertificate().serialNumber.toUpperCase();
          socket.destroy();
          resolve(serial);
        });
        socket.once('error', reject);
      });
    const serialOf = (file: string) => new X509Certificate(readFileSync(file)).serialNumber.toUpperCase();
    expect(await servedSerial()).toBe(serialOf(server.cert));
    const fresh = issueCert(dir, 'server-2', ca, ['IP:127.0.0.1', 'DNS:localhost']);
    renameSync(fresh.key, server.key);
    renameSync(fresh.cert, server.cert);
    const next = serialOf(server.cert);
    await waitFor('the HTTP port serving the new certificate', async () => (await servedSerial()) === next);
    expect((await https('/v1/kv/get', { body: { key: b64('k') }, withCert: true })).status).toBe(200);
  });
});
