import { UsageError } from './flags';

export const DEFAULT_ENDPOINTS = ['127.0.0.1:7001', '127.0.0.1:7002', '127.0.0.1:7003'];

/**
 * Splits `--endpoints` into HOST:PORT strings. A missing port is an error, not a silent
 * 443 (grpc-js's default for a bare host): cairn has no standard port.
 */
export function parseEndpoints(text: string): string[] {
  const endpoints = text
    .split(',')
    .map((e) => e.trim())
    .filter(Boolean);
  if (endpoints.length === 0) throw new UsageError('--endpoints names no endpoint');
  for (const endpoint of endpoints) checkEndpoint(endpoint);
  return endpoints;
}

function checkEndpoint(endpoint: string): void {
  const match = /^(\[[0-9A-Fa-f:.]+\]|[^:[\]/\s]+):(\d+)$/.exec(endpoint);
  if (!match) {
    throw new UsageError(
      `endpoint "${endpoint}" is not HOST:PORT; give each node's client port, e.g. 127.0.0.1:7001 (the local cluster's are ${DEFAULT_ENDPOINTS.join(',')})`,
    );
  }
  const port = Number(match[2]);
  if (port < 1 || port > 65535) throw new UsageError(`endpoint "${endpoint}": port ${match[2]} is not 1-65535`);
}
