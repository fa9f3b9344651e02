import { Metadata, ServiceError, status as Status } from '@grpc/grpc-js';
import { Event, EventType, KeyValue } from '../../gen/cairn/kv/v1/kv';
import { AttemptFailure, CairnClient, CallFailedError, failureKind } from '../../src/cli/client';
import { runElectVerb } from '../../src/cli/elect-verb';
import { UsageError } from '../../src/cli/flags';
import { deletedAfter, KeptAliveLease, MAX_CLI_LEASE_TTL_SECONDS, ttlSecondsFlag, Turn, waitForTurn } from '../../src/cli/lease-recipes';
import { sleep } from '../../src/cli/sleep';
import { runLockVerb } from '../../src/cli/lock-verb';
import { watchEvents } from '../../src/cli/watch-verb';

jest.mock('../../src/cli/watch-verb', () => ({ ...jest.requireActual('../../src/cli/watch-verb'), watchEvents: jest.fn() }));
const watchEventsMock = watchEvents as jest.MockedFunction<typeof watchEvents>;

/**
 * KeptAliveLease (what `cairn lock` and `cairn elect` hold) against a stub Lease service, on
 * jest's fake clock: when is the lease lost, and when is it not. Then the turn-taking of
 * lock and elect against stub KV calls, with Watch stubbed (watchEvents).
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

test('--ttl: up to MAX_CLI_LEASE_TTL_SECONDS (the longest a Node timer waits), refused above as a usage error naming it', () => {
  expect(MAX_CLI_LEASE_TTL_SECONDS).toBe(2_147_483);
  expect(ttlSecondsFlag({ ttl: String(MAX_CLI_LEASE_TTL_SECONDS) })).toBe(MAX_CLI_LEASE_TTL_SECONDS);
  expect(() => ttlSecondsFlag({ ttl: String(MAX_CLI_LEASE_TTL_SECONDS + 1) })).toThrow(UsageError);
  expect(() => ttlSecondsFlag({ ttl: '9000000' })).toThrow('--ttl must be at most 2147483 seconds (MAX_CLI_LEASE_TTL_SECONDS');
});

describe('KeptAliveLease on a monotonic clock', () => {
  beforeEach(() => jest.useFakeTimers());
  afterEach(() => jest.useRealTimers());

  test('the wall clock stepped back an hour while a renewal was under way: still lost a TTL after that renewal was sent', async () => {
    let answerRenewal: (() => void) | undefined;
    let renewals = 0;
    const { client } = stubClient((m) => {
      if (m === 'grant') return granted();
      // The first renewal is answered when the test says; the others never are.
      if (renewals++ > 0) return new Promise(() => undefined);
      return new Promise((resolve) => (answerRenewal = () => resolve({ id: LEASE_ID, ttl: TTL_SECONDS })));
    });
    const lease = await KeptAliveLease.grant(client, TTL_SECONDS);
    await jest.advanceTimersByTimeAsync(1000); // the first renewal is sent
    jest.setSystemTime(Date.now() - 3_600_000);
    answerRenewal!();
    await jest.advanceTimersByTimeAsync(TTL_SECONDS * 1000 + 10);
    expect(lease.lost).toBe(`no renewal of its lease 1234 was answered for ${TTL_SECONDS} s: it may have expired`);
  });
});

// ---- turn-taking against stub KV calls ----

/** A failure as the client reports it after every endpoint; `cairnCode` as a node's trailer says. */
function callFailed(code: Status, details: string, cairnCode?: string): CallFailedError {
  const metadata = new Metadata();
  if (cairnCode) metadata.set('cairn-error-code', cairnCode);
  const error = Object.assign(new Error(details), { code, details, metadata }) as ServiceError;
  const failure: AttemptFailure = { endpoint: '127.0.0.1:1', kind: failureKind(error), error, attemptMs: 500 };
  return new CallFailedError(failure, [failure], false);
}
const noLeader = () => callFailed(Status.UNAVAILABLE, 'no leader is known right now', 'NO_LEADER');
const unreachable = () => callFailed(Status.UNAVAILABLE, 'connect ECONNREFUSED');
const timedOut = () => callFailed(Status.DEADLINE_EXCEEDED, 'deadline exceeded');
const denied = () => callFailed(Status.PERMISSION_DENIED, 'no permission', 'PERMISSION_DENIED');

function keyValue(key: string, createRevision: number, value = '', lease?: number): KeyValue {
  return { key: Buffer.from(key), value: Buffer.from(value), createRevision, modRevision: createRevision, version: 1, ...(lease ? { lease } : {}) };
}

/** Watch, stubbed: `answer` decides what each watch sees; every watch's command is kept. */
type WatchCommand = Parameters<typeof watchEvents>[0];
function stubWatch(answer: (command: WatchCommand, onEvents: (events: Event[]) => boolean, signal: AbortSignal) => Promise<number>): WatchCommand[] {
  const commands: WatchCommand[] = [];
  watchEventsMock.mockImplementation(async (command, _endpoints, _dial, _metadata, onEvents, signal) => {
    commands.push(command);
    return answer(command, onEvents, signal);
  });
  return commands;
}
const deleteOf = (key: Uint8Array, revision: number): Event[] => [{ type: EventType.EVENT_TYPE_DELETE, kv: { key: Buffer.from(key), value: Buffer.alloc(0), createRevision: 0, modRevision: revision, version: 0 } }];

/** Advances jest's fake clock until `promise` settles (bounded), and returns its outcome. */
async function settle<T>(promise: Promise<T>, maxMs = 60_000): Promise<T> {
  let settled = false;
  promise.then(
    () => (settled = true),
    () => (settled = true),
  );
  for (let ms = 0; !settled && ms < maxMs; ms += 100) await jest.advanceTimersByTimeAsync(100);
  return promise;
}

/** Each test of the block on jest's fake clock, with the Watch stub's calls forgotten. */
function onFakeClockWithFreshWatch(): void {
  beforeEach(() => {
    jest.useFakeTimers();
    watchEventsMock.mockReset();
  });
  afterEach(() => jest.useRealTimers());
}

const nowhere = {} as CairnClient; // waitForTurn's client only reaches watchEvents, stubbed

describe('waitForTurn', () => {
  onFakeClockWithFreshWatch();

  test('behind a key: watches it from just after the read that showed it, not from its own (maybe compacted) mod revision', async () => {
    const commands = stubWatch(async (command, onEvents) => (onEvents(deleteOf(command.key, 61)), 0));
    const turns: Turn[] = [{ kind: 'behind', ahead: keyValue('lock', 5), readRevision: 60 }, { kind: 'ours' }];
    expect(await settle(waitForTurn(nowhere, async () => turns.shift()!, () => false))).toBe(true);
    expect(commands.map((c) => c.startRevision)).toEqual([61]);
  });

  test('looks the cluster could not answer now (no leader, unreachable, timed out) are tried again, each said on warn', async () => {
    const failures = [noLeader(), unreachable(), timedOut()];
    const warnings: string[] = [];
    const look = async (): Promise<Turn> => {
      const failure = failures.shift();
      if (failure) throw failure;
      return { kind: 'ours' };
    };
    expect(await settle(waitForTurn(nowhere, look, () => false, undefined, (line) => warnings.push(line)))).toBe(true);
    expect(warnings).toHaveLength(3);
    expect(warnings[0]).toContain('no leader is known right now (NO_LEADER); trying again in 100 ms');
    expect(warnings[2]).toContain('trying again in 400 ms');
  });

  test('a definitive refusal (permission denied) is not retried', async () => {
    let looks = 0;
    const look = async (): Promise<Turn> => {
      looks++;
      throw denied();
    };
    await expect(settle(waitForTurn(nowhere, look, () => false))).rejects.toThrow('no permission');
    expect(looks).toBe(1);
  });

  test('an outage is waited out only while not stopped (the lease lost): then false', async () => {
    let looks = 0;
    const look = async (): Promise<Turn> => {
      looks++;
      throw unreachable();
    };
    expect(await settle(waitForTurn(nowhere, look, () => looks >= 4))).toBe(false);
    expect(looks).toBe(4);
  });

  test('stopped while the look was under way: the turn it saw is not ours', async () => {
    let lost = false;
    const look = async (): Promise<Turn> => {
      lost = true;
      return { kind: 'ours' };
    };
    expect(await settle(waitForTurn(nowhere, look, () => lost))).toBe(false);
  });

  test('aborted while looking: withdraws at once, without watching the key ahead', async () => {
    stubWatch(() => new Promise<number>(() => undefined));
    const interrupt = new AbortController();
    const look = async (): Promise<Turn> => {
      interrupt.abort();
      return { kind: 'behind', ahead: keyValue('lock', 5), readRevision: 9 };
    };
    let result: boolean | undefined;
    void waitForTurn(nowhere, look, () => false, interrupt.signal).then((r) => (result = r));
    await jest.advanceTimersByTimeAsync(0);
    expect(result).toBe(false);
    expect(watchEventsMock).not.toHaveBeenCalled();
  });
});

describe('sleep and deletedAfter on a signal aborted already', () => {
  onFakeClockWithFreshWatch();

  test('sleep returns at once', async () => {
    let slept = false;
    void sleep(60_000, AbortSignal.abort()).then(() => (slept = true));
    await jest.advanceTimersByTimeAsync(0);
    expect(slept).toBe(true);
  });

  test('deletedAfter says false at once and opens no watch', async () => {
    stubWatch(() => new Promise<number>(() => undefined));
    let result: boolean | undefined;
    void deletedAfter(nowhere, Buffer.from('k'), 7, 60_000, AbortSignal.abort()).then((r) => (result = r));
    await jest.advanceTimersByTimeAsync(0);
    expect(result).toBe(false);
    expect(watchEventsMock).not.toHaveBeenCalled();
  });
});

// ---- cairn elect and cairn lock against a stub client ----

const OWN_LEASE = 0xabc;
const ELECT_USAGE = new UsageError('usage: elect ...');

interface StubKv {
  txn?: () => Promise<unknown>;
  list?: () => Promise<unknown>;
  renew?: () => Promise<unknown>;
}

function kvClient(kv: StubKv): CairnClient {
  return {
    leaseCall: (pick: (c: Record<string, string>) => string) => {
      const method = pick({ leaseGrant: 'grant', leaseRenew: 'renew', leaseRevoke: 'revoke' });
      if (method === 'grant') return Promise.resolve({ id: OWN_LEASE, ttl: 10 });
      if (method === 'renew') return kv.renew ? kv.renew() : Promise.resolve({ id: OWN_LEASE, ttl: 10 });
      return Promise.resolve({});
    },
    txn: kv.txn ?? (() => Promise.resolve({ succeeded: true, header: { revision: 20 }, responses: [] })),
    list: kv.list,
    get: () => Promise.reject(unreachable()),
  } as unknown as CairnClient;
}

/** Answers in turn; the last one again and again. */
function answers<T>(...steps: (() => Promise<T>)[]): () => Promise<T> {
  return () => (steps.length > 1 ? steps.shift()! : steps[0]!)();
}
const listing = (revision: number, ...kvs: KeyValue[]) => (): Promise<unknown> => Promise.resolve({ kvs, more: false, header: { revision } });

describe('cairn elect against a stub client', () => {
  const OWN_KEY = 'election/e/abc';
  onFakeClockWithFreshWatch();

  /** Runs a campaign; its own leadership watch interrupts it (SIGTERM: resign). */
  function campaignUntilLeading(kv: StubKv, aheadWatch: (command: WatchCommand, onEvents: (events: Event[]) => boolean) => number = () => 0) {
    const interrupt = new AbortController();
    const commands = stubWatch(async (command, onEvents) => {
      if (Buffer.from(command.key).toString() === OWN_KEY) {
        interrupt.abort();
        return 0;
      }
      return aheadWatch(command, onEvents);
    });
    const printed: string[] = [];
    const warnings: string[] = [];
    const exit = runElectVerb(kvClient(kv), ['e', 'p'], {}, (line) => printed.push(line), ELECT_USAGE, { signal: interrupt.signal, warn: (line) => warnings.push(line) });
    return { exit: settle(exit), printed, warnings, commands };
  }

  test('behind another candidate: watches it from just after the read that listed it', async () => {
    const other = keyValue('election/e/111', 5);
    const own = keyValue(OWN_KEY, 20);
    const run = campaignUntilLeading({ list: answers(listing(90, other, own), listing(95, own)) }, (command, onEvents) => (onEvents(deleteOf(command.key, 92)), 0));
    expect(await run.exit).toBe(0);
    expect(run.commands[0]).toMatchObject({ key: Buffer.from('election/e/111'), startRevision: 91 });
    expect(run.printed).toEqual([`${OWN_KEY}\tp`]);
  });

  test('a campaign through an election with no leader and an unreachable cluster: retried, then it leads', async () => {
    const own = keyValue(OWN_KEY, 20);
    const run = campaignUntilLeading({
      txn: answers(
        () => Promise.reject(noLeader()),
        (): Promise<unknown> => Promise.resolve({ succeeded: true, header: { revision: 20 }, responses: [] }),
      ),
      list: answers(
        () => Promise.reject(unreachable()),
        () => Promise.reject(timedOut()),
        listing(21, own),
      ),
    });
    expect(await run.exit).toBe(0);
    expect(run.printed).toEqual([`${OWN_KEY}\tp`]);
    expect(run.warnings).toHaveLength(3);
    expect(run.warnings.every((line) => line.startsWith('cairn elect: ') && /trying again in \d+ ms$/.test(line))).toBe(true);
  });

  test('a definitive refusal ends the campaign (exit 1 from the CLI: the error is thrown)', async () => {
    const run = campaignUntilLeading({ list: () => Promise.reject(denied()) });
    await expect(run.exit).rejects.toThrow('no permission');
    expect(run.printed).toEqual([]);
  });

  test('its lease lost while it looked at the candidates: no leader line, exit 3', async () => {
    let lost: () => void = () => undefined;
    const leaseLost = new Promise<void>((resolve) => (lost = resolve));
    const own = keyValue(OWN_KEY, 20);
    const run = campaignUntilLeading({
      renew: () => {
        setImmediate(lost);
        return Promise.resolve({ id: OWN_LEASE, ttl: 0 });
      },
      // The look is answered only once the lease was lost meanwhile: it shows the key at the head.
      list: () => leaseLost.then(listing(21, own)),
    });
    expect(await run.exit).toBe(3);
    expect(run.printed).toEqual([]);
    expect(run.warnings).toEqual([`cairn elect: gave up the campaign for e: its lease abc expired or was revoked`]);
  });

  test('--listen: a read answered UNAVAILABLE with NO_LEADER is waited out, not fatal', async () => {
    const interrupt = new AbortController();
    stubWatch(async () => {
      interrupt.abort();
      return 0;
    });
    const printed: string[] = [];
    const warnings: string[] = [];
    const kv = { list: answers(() => Promise.reject(noLeader()), listing(30, keyValue('election/e/111', 5, 'first'))) };
    const exit = runElectVerb(kvClient(kv), ['e'], { listen: '' }, (line) => printed.push(line), ELECT_USAGE, { signal: interrupt.signal, warn: (line) => warnings.push(line) });
    expect(await settle(exit)).toBe(0);
    expect(printed).toEqual(['election/e/111\tfirst']);
    expect(warnings).toEqual(['cairn elect: UNAVAILABLE: no leader is known right now (NO_LEADER); trying again in 100 ms']);
  });
});

/** These run on the real clock (CMD is a real process): a lock that never comes fails them soon. */
const LOCK_TEST_TIMEOUT_MS = 10_000;

describe('cairn lock against a stub client', () => {
  beforeEach(() => watchEventsMock.mockReset());
  const run = (kv: StubKv, warnings: string[] = []) => {
    const printed: string[] = [];
    return { exit: runLockVerb(kvClient(kv), ['the-lock', process.execPath, '-e', ''], {}, (line) => printed.push(line), (line) => warnings.push(line)), printed };
  };
  const held = (revision: number, kv: KeyValue) => (): Promise<unknown> =>
    Promise.resolve({ succeeded: false, header: { revision }, responses: [{ response: { $case: 'responseRange', value: { kvs: [kv], more: false, count: 1 } } }] });
  const taken = (): Promise<unknown> => Promise.resolve({ succeeded: true, header: { revision: 80 }, responses: [] });

  test('held by another: watches NAME from just after the Txn that read it, then takes it', async () => {
    const commands = stubWatch(async (command, onEvents) => (onEvents(deleteOf(command.key, 71)), 0));
    const lock = run({ txn: answers(held(70, keyValue('the-lock', 3, 'other', 0x111)), taken) });
    expect(await lock.exit).toBe(0);
    expect(commands.map((c) => c.startRevision)).toEqual([71]);
    expect(lock.printed[0]).toBe('lock the-lock acquired (lease abc)');
  }, LOCK_TEST_TIMEOUT_MS);

  test('a Txn whose answer was lost (no leader), then found holding our own lease: the lock is ours', async () => {
    const warnings: string[] = [];
    const lock = run({ txn: answers(() => Promise.reject(callFailed(Status.UNAVAILABLE, 'outcome unknown', 'OUTCOME_UNKNOWN')), held(81, keyValue('the-lock', 80, 'us', OWN_LEASE))) }, warnings);
    expect(await lock.exit).toBe(0);
    expect(lock.printed[0]).toBe('lock the-lock acquired (lease abc)');
    expect(warnings).toEqual(['cairn lock: UNAVAILABLE: outcome unknown (OUTCOME_UNKNOWN); trying again in 100 ms']);
    expect(watchEventsMock).not.toHaveBeenCalled();
  }, LOCK_TEST_TIMEOUT_MS);
});
