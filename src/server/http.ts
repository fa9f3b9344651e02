import { createServer, IncomingMessage, Server, ServerResponse } from 'node:http';
import { createServer as createHttpsServer, Server as HttpsServer } from 'node:https';
import { splitHostPort } from './connection-guard';
import { Gateway } from './gateway';
import { HttpTls } from './http-tls';
import { Logger } from './logger';
import { NodeMetrics } from './metrics';
import { STATUS_PAGE_HTML } from './status-page';

/**
 * The operators' HTTP port (`--http-addr`): `/metrics` (Prometheus text), `/healthz` and
 * `/readyz` (200 or 503, for probes and load balancers), `/status.json` and a status page at
 * `/` that shows it: GET only, nothing read from bodies. Paths under /v1/ are the HTTP/JSON
 * gateway's (gateway.ts: POST, JSON bodies with a byte bound). Like the gRPC ports it faces
 * strangers, so connections, header sizes and times are bounded.
 */

/** Connections open at once on the HTTP port; more are refused by Node at accept. */
export const MAX_HTTP_CONNECTIONS = 64;
/** A request whose headers have not all arrived within this is answered 408 and closed. */
export const HTTP_HEADERS_TIMEOUT_MS = 5_000;
/** A request not finished within this (a slow body) is closed. */
export const HTTP_REQUEST_TIMEOUT_MS = 10_000;
/** An idle keep-alive connection is closed after this. */
export const HTTP_KEEP_ALIVE_TIMEOUT_MS = 5_000;
/** Largest request head (request line and headers) the port reads. */
export const MAX_HTTP_HEADER_BYTES = 8 * 1024;

/** What the HTTP port reads from the node. */
export interface HttpSource {
  metrics: NodeMetrics;
  /** The process serves: false once the node halted or is stopping. */
  live(): boolean;
  /** Why the node is not ready, or undefined when it is (see CairnNode.readiness). */
  notReadyReason(): string | undefined;
  status(): unknown;
}

export class HttpPort {
  private constructor(
    private readonly server: Server | HttpsServer,
    readonly port: number,
  ) {}

  /**
   * `gateway`: the HTTP/JSON gateway (gateway.ts), which answers every path under /v1/.
   * `tls`: serve HTTPS with the client port's certificate (http-tls.ts).
   */
  static async listen(address: string, source: HttpSource, logger: Logger, extras: { gateway?: Gateway; tls?: HttpTls } = {}): Promise<HttpPort> {
    const { gateway, tls } = extras;
    const bounds = { maxHeaderSize: MAX_HTTP_HEADER_BYTES, headersTimeout: HTTP_HEADERS_TIMEOUT_MS, requestTimeout: HTTP_REQUEST_TIMEOUT_MS };
    const onRequest = (req: IncomingMessage, res: ServerResponse) => {
      if (gateway?.handles(pathOf(req))) {
        void gateway.serve(req, res);
        return;
      }
      route(req, res, source).catch((err: unknown) => {
        logger.warn({ err: (err as Error).message, path: req.url }, 'http: request failed');
        if (!res.headersSent) send(res, 500, 'text/plain', 'internal error\n');
        else res.destroy();
      });
    };
    // A TLS handshake gets the time the headers get.
    const server = tls ? createHttpsServer({ ...bounds, handshakeTimeout: HTTP_HEADERS_TIMEOUT_MS, ...tls.options }, onRequest) : createServer(bounds, onRequest);
    const unfollow = tls && server instanceof HttpsServer ? tls.follow(server) : () => undefined;
    // Expect: 100-continue (curl sends it for bodies over 1 MiB): the gateway says 100 only to
    // a request it will read, so a body over its bound is refused before it is sent.
    server.on('checkContinue', (req: IncomingMessage, res: ServerResponse) => {
      if (gateway?.handles(pathOf(req))) {
        void gateway.serve(req, res, true);
        return;
      }
      res.writeContinue();
      onRequest(req, res);
    });
    server.once('close', unfollow);
    server.maxConnections = MAX_HTTP_CONNECTIONS;
    server.keepAliveTimeout = HTTP_KEEP_ALIVE_TIMEOUT_MS;
    const { host, port } = splitHostPort(address);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const bound = server.address();
    return new HttpPort(server, typeof bound === 'object' && bound ? bound.port : port);
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }
}

async function route(req: IncomingMessage, res: ServerResponse, source: HttpSource): Promise<void> {
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.setHeader('Allow', 'GET, HEAD');
    return send(res, 405, 'text/plain', `method ${req.method} not allowed: GET only\n`);
  }
  const path = pathOf(req);
  switch (path) {
    case '/metrics': {
      const { contentType, body } = await source.metrics.render();
      return send(res, 200, contentType, body);
    }
    case '/healthz':
      return source.live() ? send(res, 200, 'text/plain', 'ok\n') : send(res, 503, 'text/plain', 'not serving: the node is stopping or halted\n');
    case '/readyz': {
      const reason = source.notReadyReason();
      return reason === undefined ? send(res, 200, 'text/plain', 'ready\n') : send(res, 503, 'text/plain', `not ready: ${reason}\n`);
    }
    case '/status.json':
      return send(res, 200, 'application/json', JSON.stringify(source.status()));
    case '/':
      return send(res, 200, 'text/html; charset=utf-8', STATUS_PAGE_HTML);
    default:
      return send(res, 404, 'text/plain', `no such page: ${path} (try /, /metrics, /healthz, /readyz, /status.json)\n`);
  }
}

function pathOf(req: IncomingMessage): string {
  return (req.url ?? '/').split('?')[0]!;
}

function send(res: ServerResponse, code: number, contentType: string, body: string): void {
  res.writeHead(code, { 'Content-Type': contentType, 'Cache-Control': 'no-store', 'Content-Length': Buffer.byteLength(body) });
  res.end(res.req.method === 'HEAD' ? undefined : body);
}
