import { spawn } from 'node:child_process';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { resolve as resolvePath } from 'node:path';
import { connect, createServer, Socket } from 'node:net';
import { credentials, Metadata, makeGenericClientConstructor } from '@grpc/grpc-js';
import { KVClient } from '../../gen/cairn/kv/v1/kv';
import { ProcessCluster, ProcessNode, waitFor } from '../support/process-cluster';

jest.setTimeout(120_000);

const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');

/** One HTTP/2 frame: 3-byte length, type, flags, stream id, payload. */
function frame(type: number, flags: number, streamId: number, payload: Buffer): Buffer {
  const header = Buffer.alloc(9);
  header.writeUIntBE(payload.length, 0, 3);
  header[3] = type;
  header[4] = flags;
  header.writeUInt32BE(streamId, 5);
  return Buffer.concat([header, payload]);
}

/** The preface, an empty SETTINGS, and a HEADERS frame (END_HEADERS) whose block is not HPACK. */
const MALFORMED_CONNECTION = Buffer.concat([PREFACE, frame(0x4, 0, 0, Buffer.alloc(0)), frame(0x1, 0x4, 1, Buffer.from([0xff, 0xff, 0xff, 0xff]))]);

function hostPort(addr: string): { host: string; port: number } {
  const [host, port] = addr.split(':');
  return { host: host!, port: Number(port) };
}

function openFds(node: ProcessNode): number {
  return readdirSync(`/proc/${node.process!.pid}/fd`).length;
}

interface TcpSocket {
  localPort: number;
  remotePort: number;
  /** /proc/net/tcp's state: '01' is ESTABLISHED. */
  state: string;
  inode: string;
}

/** Every IPv4 TCP socket of this machine (this network namespace), from /proc/net/tcp. */
function tcpSockets(): TcpSocket[] {
  return readFileSync('/proc/net/tcp', 'utf8')
    .split('\n')
    .slice(1)
    .filter(Boolean)
    .map((line) => {
      const fields = line.trim().split(/\s+/);
      const port = (address: string) => parseInt(address.split(':')[1]!, 16);
      return { localPort: port(fields[1]!), remotePort: port(fields[2]!), state: fields[3]!, inode: fields[9]! };
    });
}

/** The local ports of process `pid`'s connections to `remotePort`. */
function clientPortsOf(pid: number, remotePort: number): number[] {
  const inodes = new Set(
    readdirSync(`/proc/${pid}/fd`)
      .map((fd) => { try { return readlinkSync(`/proc/${pid}/fd/${fd}`); } catch { return ''; } })
      .map((link) => /^socket:\[(\d+)\]$/.exec(link)?.[1])
      .filter((inode): inode is string => inode !== undefined),
  );
  return tcpSockets().filter((s) => inodes.has(s.inode) && s.remotePort === remotePort).map((s) => s.localPort);
}

/** Opens a socket and resolves once it is connected (or has failed). */
function open(addr: string): Promise<Socket> {
  return new Promise((resolve) => {
    const socket = connect(hostPort(addr));
    socket.on('error', () => undefined);
    socket.resume(); // read, so that the server closing it is seen
    socket.once('connect', () => resolve(socket));
    socket.once('close', () => resolve(socket));
  });
}

/** Writes the malformed connection, half-closes, and lets go of the socket once the server answers or 2 s pass. */
async function malformedConnection(addr: string): Promise<void> {
  const socket = await open(addr);
  socket.end(MALFORMED_CONNECTION);
  await new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, 2000);
    socket.once('data', () => resolve());
    socket.once('close', () => resolve());
    socket.once('end', () => resolve());
  }).finally(() => socket.destroy());
}

/** Sends the preface one byte at a time, `intervalMs` apart (at most the 24 bytes), until the server closes it. */
function slowloris(addr: string, intervalMs: number): Promise<'closed by server' | 'finished sending'> {
  return new Promise((resolve) => {
    const socket = connect(hostPort(addr));
    let sent = 0;
    const timer = setInterval(() => {
      if (sent === PREFACE.length) {
        clearInterval(timer);
        socket.destroy();
        resolve('finished sending');
        return;
      }
      socket.write(PREFACE.subarray(sent, sent + 1));
      sent++;
    }, intervalMs);
    socket.on('error', () => undefined);
    socket.once('close', () => {
      clearInterval(timer);
      resolve('closed by server');
    });
  });
}

const bytes = (b: Buffer) => b;
const HealthClient = makeGenericClientConstructor(
  { check: { path: '/grpc.health.v1.Health/Check', requestStream: false, responseStream: false, requestSerialize: bytes, requestDeserialize: bytes, responseSerialize: bytes, responseDeserialize: bytes } },
  'Health',
);

/** grpc.health.v1 Check of `service`: 'SERVING', 'NOT_SERVING', ... */
async function healthOf(addr: string, service: string): Promise<string> {
  const client = new HealthClient(addr, credentials.createInsecure()) as unknown as {
    check(req: Buffer, md: Metadata, opts: { deadline: number }, cb: (err: Error | null, res?: Buffer) => void): void;
    close(): void;
  };
  const name = Buffer.from(service);
  const request = name.length === 0 ? Buffer.alloc(0) : Buffer.concat([Buffer.from([0x0a, name.length]), name]);
  try {
    const response = await new Promise<Buffer>((done, fail) =>
      client.check(request, new Metadata(), { deadline: Date.now() + 2000 }, (err, res) => (err ? fail(err) : done(res!))),
    );
    // HealthCheckResponse: field 1 (status) as a varint; absent means UNKNOWN (0).
    const status = response.length >= 2 && response[0] === 0x08 ? response[1]! : 0;
    return ['UNKNOWN', 'SERVING', 'NOT_SERVING', 'SERVICE_UNKNOWN'][status]!;
  } finally {
    client.close();
  }
}

/** A KV client with its own connection (no subchannel shared with other clients). */
function ownConnectionClient(addr: string): KVClient {
  return new KVClient(addr, credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 });
}

function get(client: KVClient, key: string, timeoutMs = 2000): Promise<unknown> {
  return new Promise((done, fail) =>
    client.get({ key: Buffer.from(key), consistency: 0 }, new Metadata(), { deadline: Date.now() + timeoutMs }, (err, res) => (err ? fail(err) : done(res))),
  );
}

describe('the client port against hostile connections', () => {
  test('malformed, slowloris and silent connections are closed within seconds: the fd count returns to its baseline and clients are served', async () => {
    const cluster = await ProcessCluster.start(1, ['--handshake-timeout-ms', '1500']);
    try {
      await cluster.waitForLeader();
      const node = cluster.node(1);
      const client = ownConnectionClient(node.clientAddr);
      await get(client, 'warm-up');
      const baseline = openFds(node);

      // Bounded: 200 + 50 malformed connections (20 or 10 at a time), 50 slowloris, 20 that send nothing.
      const silent = await Promise.all(Array.from({ length: 20 }, () => open(node.clientAddr)));
      const slow = Array.from({ length: 50 }, () => slowloris(node.clientAddr, 200));
      for (let batch = 0; batch < 10; batch++) {
        await Promise.all(Array.from({ length: 20 }, () => malformedConnection(node.clientAddr)));
      }
      // The peer port has the same protection: 50 malformed connections there too.
      for (let batch = 0; batch < 5; batch++) {
        await Promise.all(Array.from({ length: 10 }, () => malformedConnection(node.peerAddr)));
      }
      expect(await Promise.all(slow)).toEqual(Array(50).fill('closed by server'));
      await waitFor('the silent connections to be closed by the server', () => silent.every((s) => s.destroyed), 15_000);
      for (const socket of silent) socket.destroy();
      await waitFor(`the server's open file descriptors to return near ${baseline}`, () => openFds(node) <= baseline + 3, 15_000);

      // The client that was connected all along still is, and a new one gets in.
      await get(client, 'after');
      const newcomer = ownConnectionClient(node.clientAddr);
      await get(newcomer, 'after');
      client.close();
      newcomer.close();
    } finally {
      await cluster.stop();
    }
  });

  test('a client that made calls and then stopped answering (a frozen process) is closed by keepalive', async () => {
    const cluster = await ProcessCluster.start(1, ['--keepalive-time-ms', '1000', '--keepalive-timeout-ms', '1000']);
    try {
      await cluster.waitForLeader();
      const node = cluster.node(1);
      const serverPort = hostPort(node.clientAddr).port;
      // A separate process, so that SIGSTOP freezes its HTTP/2 stack (no more PING acks) while its kernel keeps the TCP connection up.
      const kv = resolvePath(__dirname, '../../dist/gen/cairn/kv/v1/kv.js');
      const script = `
        const grpc = require(${JSON.stringify(require.resolve('@grpc/grpc-js'))});
        const { KVClient } = require(${JSON.stringify(kv)});
        const client = new KVClient(${JSON.stringify(node.clientAddr)}, grpc.credentials.createInsecure());
        client.get({ key: Buffer.from('k'), consistency: 0 }, (err) => console.log(err ? 'error ' + err.message : 'served'));
        setInterval(() => undefined, 1000);`;
      const frozen = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
      try {
        let output = '';
        frozen.stdout!.on('data', (chunk) => (output += chunk));
        await waitFor('the other process to be served', () => output.includes('served'));
        const [clientPort] = clientPortsOf(frozen.pid!, serverPort);
        expect(clientPort).toBeDefined();
        const serverEnd = () => tcpSockets().find((s) => s.localPort === serverPort && s.remotePort === clientPort);
        expect(serverEnd()?.state).toBe('01');
        frozen.kill('SIGSTOP');
        // The server closes its end (FIN-WAIT or gone) although the frozen client never answers.
        await waitFor("the server's end of the frozen client's connection to close", () => serverEnd()?.state !== '01', 15_000);
      } finally {
        frozen.kill('SIGKILL');
      }
    } finally {
      await cluster.stop();
    }
  });

  test('connections beyond --max-client-connections are refused while connected clients keep working', async () => {
    const bound = 12;
    const cluster = await ProcessCluster.start(1, ['--max-client-connections', String(bound), '--handshake-timeout-ms', '60000']);
    try {
      const node = cluster.node(1);
      // Only this client connects before the port is filled (no status polling, whose
      // short-lived clients' connections linger in grpc-js's subchannel pool).
      const established = ownConnectionClient(node.clientAddr);
      await waitFor('the node to serve a linearizable read', () => get(established, 'k', 1000).then(() => true));
      // Fill the port up. Some connections of the test's own clients may still be open, so
      // open more than the bound at once: those beyond it are closed by the server at once.
      const attempts = await Promise.all(Array.from({ length: bound + 8 }, () => open(node.clientAddr)));
      await waitFor('the connections beyond the bound to be closed by the server', () => attempts.filter((s) => s.destroyed).length >= 8, 10_000);
      // The server takes connections in order: once a later one is closed, every attempt has been dealt with.
      const probe = await open(node.clientAddr);
      await waitFor('a connection opened after them to be closed too', () => probe.destroyed, 10_000);
      expect(attempts.filter((s) => !s.destroyed).length).toBeLessThan(bound);
      const refused = ownConnectionClient(node.clientAddr);
      await expect(get(refused, 'k', 1000)).rejects.toThrow();
      await get(established, 'k');

      // Once the fillers go, the newcomer gets in.
      for (const socket of attempts) socket.destroy();
      await waitFor('the refused client to be served once there is room', () => get(refused, 'k', 1000).then(() => true));
      established.close();
      refused.close();
    } finally {
      await cluster.stop();
    }
  });
});

describe('health', () => {
  test('a single surviving node of three reports NOT_SERVING for cairn.kv.v1.KV and SERVING for ""', async () => {
    const cluster = await ProcessCluster.start(3);
    try {
      await cluster.waitForLeader();
      await waitFor('KV SERVING on node 1 while a leader is known', async () => (await healthOf(cluster.node(1).clientAddr, 'cairn.kv.v1.KV')) === 'SERVING');
      await cluster.kill(2);
      await cluster.kill(3);
      await waitFor('KV NOT_SERVING on the survivor', async () => (await healthOf(cluster.node(1).clientAddr, 'cairn.kv.v1.KV')) === 'NOT_SERVING');
      expect(await healthOf(cluster.node(1).clientAddr, '')).toBe('SERVING');
      expect(await healthOf(cluster.node(1).clientAddr, 'cairn.kv.v1.Cluster')).toBe('SERVING');
    } finally {
      await cluster.stop();
    }
  });
});

describe('peer links', () => {
  test('a follower killed with -9 and restarted hears the leader within a few election timeouts, however long it was down', async () => {
    // Election timeout: 10 ticks of 50 ms, randomized up to 1 s.
    const electionTimeoutMaxMs = 1000;
    const cluster = await ProcessCluster.start(3);
    try {
      const leader = await cluster.waitForLeader();
      const follower = [1, 2, 3].find((id) => id !== leader)!;
      await cluster.kill(follower);
      // While the follower is down, its peer port accepts and drops every connection, so the
      // leader's attempts to reach it can be counted: wait for several (each backs off more).
      let attempts = 0;
      const stand_in = createServer((socket) => {
        attempts++;
        socket.destroy();
      });
      await new Promise<void>((resolve) => stand_in.listen(hostPort(cluster.node(follower).peerAddr), resolve));
      await waitFor('the leader to fail to reach the follower 5 times', () => attempts >= 5, 60_000);
      await new Promise<void>((resolve) => stand_in.close(() => resolve()));

      cluster.restart(follower);
      await waitFor('the restarted follower to serve its client port', () => cluster.status(follower));
      await waitFor(
        'the restarted follower to know the leader',
        async () => (await cluster.status(follower)).leaderId === leader,
        3 * electionTimeoutMaxMs,
      );
    } finally {
      await cluster.stop();
    }
  });
});
