import { CairnClient } from '../../src/cli/client';
import { KeptAliveLease } from '../../src/cli/lease-recipes';

/**
 * KeptAliveLease (what `cairn lock` and `cairn elect` hold) against a stub Lease service, on
 * jest's fake clock: when is the lease lost, and when is it not.
 */

type Method = 'grant' | 'renew' | 'revoke';
const LEASE_ID = 0x1234;
const TTL_SECONDS = 3;

/** A client whose Lease calls go to `answer`; `calls` records them in order. */
function stubClient(answer: (method: Method) => Promise<unknown>): { client: CairnClient; calls: Method[] } {
  const calls: Method[] = [];
  const methods = { leaseGrant: 'grant', leaseRenew: 'renew', leaseRevoke: 'revoke' } as const;
  const client = {
    leaseCall: (pick: (c: typeof methods) => Method) => {
      const method = pick(methods);
      calls.push(method);
      return answer(method);
    },
  } as unknown as CairnClient;
  return { client, calls };
}

const granted = () => Promise.resolve({ id: LEASE_ID, ttl: TTL_SECONDS });

describe('KeptAliveLease', () => {
  beforeEach(() => jest.useFakeTimers());
  afterEach(() => jest.useRealTimers());

  test('renewed every TTL/3 and answered: never lost, however long it runs', async () => {
    const { client, calls } = stubClient((m) => (m === 'grant' ? granted() : Promise.resolve({ id: LEASE_ID, ttl: TTL_SECONDS })));
    const lease = await KeptAliveLease.grant(client, TTL_SECONDS);
    await jest.advanceTimersByTimeAsync(10 * TTL_SECONDS * 1000);
    expect(lease.lost).toBeUndefined();
    expect(calls.filter((m) => m === 'renew')).toHaveLength(30);
    await lease.revoke();
    expect(calls.at(-1)).toBe('revoke');
  });

  test('a renewal that answers TTL 0: lost at once, the listener told once, renewals stop', async () => {
    const { client, calls } = stubClient((m) => (m === 'grant' ? granted() : Promise.resolve({ id: LEASE_ID, ttl: 0 })));
    const lease = await KeptAliveLease.grant(client, TTL_SECONDS);
    const reasons: string[] = [];
    lease.onLost((reason) => reasons.push(reason));
    await jest.advanceTimersByTimeAsync(1000);
    expect(lease.lost).toBe('its lease 1234 expired or was revoked');
    expect(reasons).toEqual([lease.lost]);
    await jest.advanceTimersByTimeAsync(5 * TTL_SECONDS * 1000);
    expect(calls.filter((m) => m === 'renew')).toHaveLength(1);
    expect(reasons).toHaveLength(1);
  });

  test.each([
    ['never answered', () => new Promise(() => undefined)],
    ['refused', () => Promise.reject(new Error('UNAVAILABLE'))],
  ])('renewals %s: lost once a whole TTL passed since the last answered one was sent, not before', async (_, renewal) => {
    let answering = true;
    const { client } = stubClient((m) => (m === 'grant' ? granted() : answering ? Promise.resolve({ id: LEASE_ID, ttl: TTL_SECONDS }) : renewal()));
    const lease = await KeptAliveLease.grant(client, TTL_SECONDS);
    await jest.advanceTimersByTimeAsync(1000); // the first renewal, answered
    answering = false;
    await jest.advanceTimersByTimeAsync(TTL_SECONDS * 1000 - 10);
    expect(lease.lost).toBeUndefined();
    await jest.advanceTimersByTimeAsync(20);
    expect(lease.lost).toBe(`no renewal of its lease 1234 was answered for ${TTL_SECONDS} s: it may have expired`);
  });

  test('revoked: not lost afterwards, even with no renewal answered', async () => {
    const { client } = stubClient((m) => (m === 'grant' ? granted() : m === 'revoke' ? Promise.resolve({}) : new Promise(() => undefined)));
    const lease = await KeptAliveLease.grant(client, TTL_SECONDS);
    const reasons: string[] = [];
    lease.onLost((reason) => reasons.push(reason));
    await lease.revoke();
    await jest.advanceTimersByTimeAsync(5 * TTL_SECONDS * 1000);
    expect(lease.lost).toBeUndefined();
    expect(reasons).toEqual([]);
  });
});
