/**
 * Preloaded into `cairn serve` by test/integration/statefulset.test.ts (NODE_OPTIONS=--require):
 * answers DNS look-ups of the pod names in CAIRN_TEST_POD_HOSTS (JSON: name -> loopback
 * address) as a cluster's DNS would, so a node configured exactly as a StatefulSet pod
 * resolves its peers to other processes on this machine. Other names go to the real resolver.
 * grpc-js resolves through dns.promises.lookup (and resolveTxt for service config).
 */
import dns from 'node:dns';

const hosts = new Map<string, string>(Object.entries(JSON.parse(process.env.CAIRN_TEST_POD_HOSTS ?? '{}') as Record<string, string>));
for (const address of hosts.values()) {
  if (!address.startsWith('127.')) throw new Error(`pod-dns: ${address} is not a loopback address`);
}
const realLookup = dns.promises.lookup.bind(dns.promises);
const realResolveTxt = dns.promises.resolveTxt.bind(dns.promises);

type Lookup = typeof dns.promises.lookup;
dns.promises.lookup = (async (hostname: string, options?: unknown) => {
  const address = hosts.get(hostname.toLowerCase());
  if (address === undefined) return realLookup(hostname, options as dns.LookupOptions);
  const answer = { address, family: 4 };
  return typeof options === 'object' && options !== null && (options as dns.LookupOptions).all ? [answer] : answer;
}) as Lookup;

dns.promises.resolveTxt = (async (hostname: string) => {
  if (hosts.has(hostname.toLowerCase())) return [];
  return realResolveTxt(hostname);
}) as typeof dns.promises.resolveTxt;
