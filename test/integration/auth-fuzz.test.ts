import { Client, credentials, Metadata, ServiceError, status as Status } from '@grpc/grpc-js';
import { AuthClient, ClusterClient, Consistency, KVClient, PermissionType } from '../../gen/cairn/kv/v1/kv';
import { ProcessCluster } from '../support/process-cluster';

/**
 * 100,000 hostile requests on the client ports (FUZZ_REQUESTS; CAIRN_AUTH_FUZZ_REQUESTS sets
 * fewer, e.g. in a slow CI): no token, garbage and forged tokens, a real token outside its
 * permissions or on admin calls, oversized and repeated authorization metadata, undecodable
 * bodies, wrong passwords. Bounded by count and by FUZZ_BUDGET_MS. None may succeed, and the
 * cluster must serve afterwards with its data and auth state unchanged.
 */
const FUZZ_REQUESTS = Number(process.env.CAIRN_AUTH_FUZZ_REQUESTS ?? 100_000);
const FUZZ_BUDGET_MS = 240_000;
const IN_FLIGHT = 64;
/** Wrong-password logins run scrypt: a small share of the mix, so the run stays bounded. */
const LOGIN_SHARE = 0.002;

jest.setTimeout(FUZZ_BUDGET_MS + 120_000);

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Done = (err: ServiceError | null, res?: any) => void;

// eslint-disable-next-line @typescript-eslint/no-explicit-any
function call(start: (metadata: Metadata, options: { deadline: number }, done: Done) => unknown, metadata: Metadata): Promise<{ res?: any; err?: ServiceError }> {
  return new Promise((resolve) => start(metadata, { deadline: Date.now() + 10_000 }, (err, res) => resolve(err ? { err } : { res })));
}

function bearer(token: string): Metadata {
  const metadata = new Metadata();
  metadata.set('authorization', `Bearer ${token}`);
  return metadata;
}

/** A small seeded generator (mulberry32): the same mix on every run. */
function seeded(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('hostile requests with auth on', () => {
  let cluster: ProcessCluster;
  const closers: { close(): void }[] = [];
  afterEach(async () => {
    for (const c of closers.splice(0)) c.close();
    await cluster?.stop();
  });

  test(`${FUZZ_REQUESTS} malformed or hostile requests leave the cluster serving and unchanged`, async () => {
    cluster = await ProcessCluster.start(3);
    const leaderId = await cluster.waitForLeader();
    const addrs = [1, 2, 3].map((id) => cluster.node(id).clientAddr);
    const kv = addrs.map((a) => new KVClient(a, credentials.createInsecure()));
    const auth = addrs.map((a) => new AuthClient(a, credentials.createInsecure()));
    const admin = addrs.map((a) => new ClusterClient(a, credentials.createInsecure()));
    const raw = addrs.map((a) => new Client(a, credentials.createInsecure()));
    closers.push(...kv, ...auth, ...admin, ...raw);
    const leaderAuth = auth[leaderId - 1]!;
    const none = new Metadata();
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    const ok = async (result: Promise<{ res?: any; err?: ServiceError }>) => {
      const { res, err } = await result;
      if (err) throw new Error(`setup call failed: ${err.details}`);
      return res!;
    };
    await ok(call((md, o, d) => leaderAuth.userAdd({ name: 'root', password: 'rootpw' }, md, o, d), none));
    await ok(call((md, o, d) => leaderAuth.userAdd({ name: 'alice', password: 'alicepw' }, md, o, d), none));
    await ok(call((md, o, d) => leaderAuth.roleAdd({ name: 'app' }, md, o, d), none));
    await ok(call((md, o, d) => leaderAuth.roleGrantPermission({ name: 'app', permission: { type: PermissionType.PERMISSION_TYPE_READWRITE, key: Buffer.from('app/'), prefix: true } }, md, o, d), none));
    await ok(call((md, o, d) => leaderAuth.userGrantRole({ user: 'alice', role: 'app' }, md, o, d), none));
    for (let i = 0; i < 20; i++) await ok(call((md, o, d) => kv[leaderId - 1]!.put({ key: Buffer.from(`secret/${i}`), value: Buffer.from(`s${i}`), prevKv: false, clientId: '', sequence: 0, lowestUnansweredSequence: 0 }, md, o, d), none));
    await ok(call((md, o, d) => leaderAuth.authEnable({}, md, o, d), none));
    const root = (await ok(call((md, o, d) => leaderAuth.authenticate({ name: 'root', password: 'rootpw' }, md, o, d), none))).token;
    const alice = (await ok(call((md, o, d) => leaderAuth.authenticate({ name: 'alice', password: 'alicepw' }, md, o, d), none))).token;

    const observe = async () => {
      const range = await ok(call((md, o, d) => kv[leaderId - 1]!.range({ key: Buffer.alloc(0), rangeEnd: Buffer.alloc(0), limit: 0, keysOnly: false, consistency: Consistency.CONSISTENCY_LINEARIZABLE, prefix: true }, md, o, d), bearer(root)));
      const users = await ok(call((md, o, d) => leaderAuth.userList({}, md, o, d), bearer(root)));
      const roles = await ok(call((md, o, d) => leaderAuth.roleList({}, md, o, d), bearer(root)));
      return { revision: range.header!.revision, kvs: range.kvs.map((k: { key: Buffer; value: Buffer; modRevision: number }) => [k.key.toString(), k.value.toString(), k.modRevision]), users: users.users, roles: roles.roles };
    };
    const before = await observe();

    const random = seeded(11);
    const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)]!;
    const [version, userPart, indexPart, expiryPart, mac] = alice.split('.') as [string, string, string, string, string];
    const hostileTokens = () => [
      'garbage',
      '',
      `${version}.${Buffer.from('root').toString('base64url')}.${indexPart}.${expiryPart}.${mac}`,
      `${version}.${userPart}.${indexPart}.99999999999999.${mac}`,
      `${version}.${userPart}.${indexPart}.${expiryPart}.${Buffer.from(String(random())).toString('base64url')}`,
      `${version}.${Buffer.from('root').toString('base64url')}.1.99999999999999.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA`,
      'x'.repeat(2000),
      `${'a.'.repeat(400)}`,
    ];
    const secretKey = () => Buffer.from(`secret/${Math.floor(random() * 20)}`);
    const kinds: (() => Promise<{ res?: unknown; err?: ServiceError }>)[] = [
      // No token at all.
      () => call((md, o, d) => pick(kv).put({ key: Buffer.from('app/x'), value: Buffer.from('v'), prevKv: false, clientId: '', sequence: 0, lowestUnansweredSequence: 0 }, md, o, d), new Metadata()),
      () => call((md, o, d) => pick(kv).get({ key: secretKey(), consistency: pick([Consistency.CONSISTENCY_LINEARIZABLE, Consistency.CONSISTENCY_SERIALIZABLE]) }, md, o, d), new Metadata()),
      // Garbage, forged and tampered tokens.
      () => call((md, o, d) => pick(kv).get({ key: secretKey(), consistency: Consistency.CONSISTENCY_SERIALIZABLE }, md, o, d), bearer(pick(hostileTokens()))),
      () => call((md, o, d) => pick(kv).delete({ key: secretKey(), prevKv: true, clientId: '', sequence: 0, lowestUnansweredSequence: 0 }, md, o, d), bearer(pick(hostileTokens()))),
      () => call((md, o, d) => pick(auth).authDisable({}, md, o, d), bearer(pick(hostileTokens()))),
      // A real token outside its permissions.
      () => call((md, o, d) => pick(kv).put({ key: secretKey(), value: Buffer.from('stolen'), prevKv: true, clientId: '', sequence: 0, lowestUnansweredSequence: 0 }, md, o, d), bearer(alice)),
      () => call((md, o, d) => pick(kv).get({ key: secretKey(), consistency: pick([Consistency.CONSISTENCY_LINEARIZABLE, Consistency.CONSISTENCY_SERIALIZABLE]) }, md, o, d), bearer(alice)),
      () => call((md, o, d) => pick(kv).range({ key: Buffer.from('app'), rangeEnd: Buffer.from('b'), limit: 0, keysOnly: false, consistency: Consistency.CONSISTENCY_SERIALIZABLE, prefix: false }, md, o, d), bearer(alice)),
      () => call((md, o, d) => pick(auth).userAdd({ name: `mallory${Math.floor(random() * 1000)}`, password: 'x' }, md, o, d), bearer(alice)),
      () => call((md, o, d) => pick(auth).userGrantRole({ user: 'alice', role: 'root' }, md, o, d), bearer(alice)),
      () => call((md, o, d) => pick(auth).roleGrantPermission({ name: 'app', permission: { type: PermissionType.PERMISSION_TYPE_READWRITE, key: Buffer.alloc(0), prefix: true } }, md, o, d), bearer(alice)),
      () => call((md, o, d) => pick(admin).memberRemove({ id: pick([1, 2, 3]) }, md, o, d), bearer(alice)),
      () => call((md, o, d) => pick(admin).leaderTransfer({ toId: 0 }, md, o, d), new Metadata()),
      // Odd authorization metadata: another scheme, two values, over MAX_TOKEN_BYTES.
      () => {
        const md = new Metadata();
        md.set('authorization', pick([`Basic ${Buffer.from('root:rootpw').toString('base64')}`, `bearer ${alice}`, alice, `Bearer  ${alice}`]));
        return call((m, o, d) => pick(kv).get({ key: secretKey(), consistency: Consistency.CONSISTENCY_SERIALIZABLE }, m, o, d), md);
      },
      () => call((md, o, d) => pick(kv).get({ key: secretKey(), consistency: Consistency.CONSISTENCY_SERIALIZABLE }, md, o, d), bearer('y'.repeat(4000 + Math.floor(random() * 4000)))),
      // Undecodable request bodies, with and without a token.
      () => {
        const body = Buffer.from(Array.from({ length: 1 + Math.floor(random() * 40) }, () => Math.floor(random() * 256)));
        const method = pick(['/cairn.kv.v1.KV/Put', '/cairn.kv.v1.KV/Range', '/cairn.kv.v1.Auth/UserAdd', '/cairn.kv.v1.Auth/RoleGrantPermission', '/cairn.kv.v1.Auth/AuthEnable']);
        const client = pick(raw);
        return call((md, o, d) => client.makeUnaryRequest(method, (b: Buffer) => b, (b: Buffer) => b, body, md, o, d), pick([new Metadata(), bearer(alice), bearer(pick(hostileTokens()))]));
      },
    ];
    const login = () => call((md, o, d) => pick(auth).authenticate({ name: pick(['root', 'alice', 'nobody', '']), password: `guess${Math.floor(random() * 1e6)}` }, md, o, d), new Metadata());

    // On a channel of their own: metadata far past any token's size, and two authorization
    // values (which Node's HTTP/2 client refuses to send, failing its whole session: so a
    // subchannel of its own, not the one grpc-js would share with the other clients).
    const isolated = new KVClient(addrs[0]!, credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 });
    closers.push(isolated);
    const isolatedKinds = [
      () => call((md, o, d) => isolated.get({ key: secretKey(), consistency: Consistency.CONSISTENCY_SERIALIZABLE }, md, o, d), bearer('z'.repeat(16_000 + Math.floor(random() * 16_000)))),
      () => {
        const md = bearer(alice);
        md.add('authorization', `Bearer ${root}`);
        return call((m, o, d) => isolated.get({ key: secretKey(), consistency: Consistency.CONSISTENCY_SERIALIZABLE }, m, o, d), md);
      },
    ];

    const startedMs = Date.now();
    const outcomes = new Map<string, number>();
    const isolatedOutcomes = new Map<string, number>();
    const successes: string[] = [];
    const samples = new Map<string, string>();
    let sent = 0;
    const lane = async () => {
      while (sent < FUZZ_REQUESTS && Date.now() - startedMs < FUZZ_BUDGET_MS) {
        const n = sent++;
        let result: { res?: unknown; err?: ServiceError };
        let kind: string;
        if (n % 997 === 0) {
          kind = 'isolated';
          result = await pick(isolatedKinds)();
        } else if (random() < LOGIN_SHARE) {
          kind = 'login';
          result = await login();
        } else {
          const only = process.env.CAIRN_AUTH_FUZZ_KINDS?.split(',').map(Number);
        const index = only ? only[Math.floor(random() * only.length)]! : Math.floor(random() * kinds.length);
          kind = `kind${index}`;
          result = await kinds[index]!();
        }
        const code = result.err ? Status[result.err.code] : 'OK';
        const counts = kind === 'isolated' ? isolatedOutcomes : outcomes;
        counts.set(code, (counts.get(code) ?? 0) + 1);
        if (process.env.CAIRN_AUTH_FUZZ_DEBUG && result.err && !samples.has(`${code} ${kind}`)) samples.set(`${code} ${kind}`, result.err.details);
        if (!result.err && successes.length < 10) successes.push(`${kind}: ${JSON.stringify(result.res).slice(0, 200)}`);
      }
    };
    await Promise.all(Array.from({ length: IN_FLIGHT }, lane));
    const elapsedMs = Date.now() - startedMs;
    if (process.env.CAIRN_AUTH_FUZZ_DEBUG) for (const id of [1, 2, 3]) console.log(cluster.node(id).logs.filter((l) => !l.includes('"level":30')).slice(0, 20).join('\n'));
    if (samples.size > 0) console.log([...samples].map(([k, v]) => `${k}: ${v}`).join('\n'));
    console.log(`auth fuzz: ${sent} requests in ${elapsedMs} ms: ${JSON.stringify(Object.fromEntries(outcomes))}; on the isolated channel ${JSON.stringify(Object.fromEntries(isolatedOutcomes))}`);

    expect(successes).toEqual([]);
    expect(sent).toBeGreaterThanOrEqual(Math.min(FUZZ_REQUESTS, 1000));
    // Every request got a clear refusal: no dropped connection, no internal error, no timeout.
    const allowed = new Set(['UNAUTHENTICATED', 'PERMISSION_DENIED', 'INVALID_ARGUMENT', 'RESOURCE_EXHAUSTED']);
    expect([...outcomes.keys()].filter((code) => !allowed.has(code))).toEqual([]);
    expect(isolatedOutcomes.get('OK')).toBeUndefined();

    // Every node still serves, and nothing changed.
    for (const [i, client] of kv.entries()) {
      const { res, err } = await call((md, o, d) => client.get({ key: Buffer.from('secret/3'), consistency: Consistency.CONSISTENCY_LINEARIZABLE }, md, o, d), bearer(root));
      expect({ node: i + 1, err: err?.details, value: res?.kv?.value.toString() }).toEqual({ node: i + 1, err: undefined, value: 's3' });
    }
    expect(await observe()).toEqual(before);
    for (const id of [1, 2, 3]) expect(cluster.node(id).process).toBeDefined();
  });
});
