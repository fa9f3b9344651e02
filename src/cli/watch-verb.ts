import { ClientDuplexStream, Metadata, ServiceError } from '@grpc/grpc-js';
import { Event, EventType, WatchClient, WatchRequest, WatchResponse } from '../../gen/cairn/kv/v1/kv';
import { UsageError } from './flags';
import { DialSecurity as Dial } from '../server/tls';

/** `cairn watch` flags besides the common ones: --prefix takes no value. */
export const WATCH_SWITCHES = ['prefix', 'prev-kv'] as const;
export const WATCH_FLAGS = ['rev', 'max-events'] as const;
export const WATCH_USAGE = 'usage: cairn watch KEY [--prefix] [--rev N] [--prev-kv] [--max-events N]';

/**
 * How many times in a row the watch may fail to (re)connect before it gives up: each failure
 * moves to the next endpoint, so this covers every endpoint several times over a leader
 * election or a node's restart.
 */
export const MAX_WATCH_RECONNECTS = 30;
/** The wait before reconnect n is n times this, capped at MAX_WATCH_RECONNECT_WAIT_MS. */
export const WATCH_RECONNECT_BACKOFF_MS = 100;
export const MAX_WATCH_RECONNECT_WAIT_MS = 1000;

export interface WatchCommand {
  key: Buffer;
  prefix: boolean;
  prevKv: boolean;
  /** 0: from now. */
  startRevision: number;
  /** Stop (exit 0) after this many events; undefined: until interrupted. */
  maxEvents: number | undefined;
}

export function parseWatchCommand(positional: string[], flags: Record<string, string>): WatchCommand {
  if (positional.length !== 1) throw new UsageError(WATCH_USAGE);
  const number = (name: string, min: number): number | undefined => {
    if (flags[name] === undefined) return undefined;
    const value = Number(flags[name]);
    if (!Number.isSafeInteger(value) || value < min) throw new UsageError(`--${name} must be an integer >= ${min}, got "${flags[name]}"`);
    return value;
  };
  return {
    key: Buffer.from(positional[0]!),
    prefix: flags.prefix !== undefined,
    prevKv: flags['prev-kv'] !== undefined,
    startRevision: number('rev', 1) ?? 0,
    maxEvents: number('max-events', 1),
  };
}

/** One line per event: `PUT app/a 1 (revision 7)`, `DELETE app/a (revision 8)`. */
export function describeEvent(event: Event): string {
  const kv = event.kv!;
  const key = Buffer.from(kv.key).toString();
  const prev = event.prevKv ? ` (previously ${Buffer.from(event.prevKv.value).toString()})` : '';
  if (event.type === EventType.EVENT_TYPE_DELETE) return `DELETE ${key} (revision ${kv.modRevision})${prev}`;
  return `PUT ${key} ${Buffer.from(kv.value).toString()} (revision ${kv.modRevision})${prev}`;
}

/**
 * Watches until interrupted (`signal`), --max-events, or a refusal. A stream that fails or
 * ends is opened again at the next endpoint, from the revision after the last one printed
 * (each response holds whole revisions), so a node's death shows only as a pause: no event
 * is lost or printed twice.
 */
export async function runWatch(
  command: WatchCommand,
  endpoints: readonly string[],
  dial: Dial,
  metadata: () => Metadata,
  print: (line: string) => void,
  signal: AbortSignal,
  warn: (line: string) => void = () => undefined,
): Promise<number> {
  let printed = 0;
  const full = () => command.maxEvents !== undefined && printed >= command.maxEvents;
  return watchEvents(command, endpoints, dial, metadata, (events) => {
    for (const event of events) {
      if (full()) break;
      print(describeEvent(event));
      printed++;
    }
    return full();
  }, signal, warn);
}

/**
 * The watch behind runWatch: `onEvents` gets each response's events (whole revisions, in
 * order) and returns true to stop. Returns 0 when stopped or aborted, 1 when refused or
 * given up.
 */
export async function watchEvents(
  command: Omit<WatchCommand, 'maxEvents'>,
  endpoints: readonly string[],
  dial: Dial,
  metadata: () => Metadata,
  onEvents: (events: Event[]) => boolean,
  signal: AbortSignal,
  warn: (line: string) => void = () => undefined,
): Promise<number> {
  let next = command.startRevision;
  let failures = 0;
  let index = 0;
  while (!signal.aborted) {
    const endpoint = endpoints[index % endpoints.length]!;
    const outcome = await watchOnce(endpoint, dial, metadata(), command, next, signal, (response) => {
      failures = 0;
      if (response.created && next === 0) next = (response.header?.revision ?? 0) + 1;
      for (const event of response.events) next = Math.max(next, event.kv!.modRevision + 1);
      return response.events.length > 0 && onEvents(response.events);
    });
    if (outcome.kind === 'done') return 0;
    if (outcome.kind === 'refused') {
      warn(`cairn watch: ${outcome.reason}`);
      return 1;
    }
    if (signal.aborted) break;
    if (++failures > MAX_WATCH_RECONNECTS) {
      warn(`cairn watch: gave up after ${MAX_WATCH_RECONNECTS} failed attempts (last, at ${endpoint}: ${outcome.reason})`);
      return 1;
    }
    warn(`cairn watch: ${endpoint}: ${outcome.reason}; resuming from revision ${next || 'now'} at the next endpoint`);
    index++;
    await wait(Math.min(MAX_WATCH_RECONNECT_WAIT_MS, failures * WATCH_RECONNECT_BACKOFF_MS), signal);
  }
  return 0;
}

type WatchOutcome = { kind: 'done' } | { kind: 'refused'; reason: string } | { kind: 'failed'; reason: string };

function watchOnce(
  endpoint: string,
  dial: Dial,
  metadata: Metadata,
  command: Omit<WatchCommand, 'maxEvents'>,
  startRevision: number,
  signal: AbortSignal,
  onResponse: (response: WatchResponse) => boolean,
): Promise<WatchOutcome> {
  const { credentials, options } = dial(endpoint);
  const client = new WatchClient(endpoint, credentials, options);
  return new Promise<WatchOutcome>((resolve) => {
    let settled = false;
    let call: ClientDuplexStream<WatchRequest, WatchResponse>;
    const settle = (outcome: WatchOutcome) => {
      if (settled) return;
      settled = true;
      signal.removeEventListener('abort', onAbort);
      call.cancel();
      client.close();
      resolve(outcome);
    };
    const onAbort = () => settle({ kind: 'done' });
    call = client.watch(metadata);
    signal.addEventListener('abort', onAbort);
    call.on('data', (response: WatchResponse) => {
      if (response.canceled) {
        // Refused at creation (compacted, bad key, no permission): watching again would not help.
        if (response.created || response.compactRevision > 0) settle({ kind: 'refused', reason: response.cancelReason });
        else settle({ kind: 'failed', reason: `the watch was canceled: ${response.cancelReason}` });
        return;
      }
      if (onResponse(response)) settle({ kind: 'done' });
    });
    call.on('error', (err: ServiceError) => settle({ kind: 'failed', reason: err.details || err.message }));
    call.on('end', () => settle({ kind: 'failed', reason: 'the stream ended' }));
    call.write({ requestUnion: { $case: 'createRequest', value: { key: command.key, rangeEnd: Buffer.alloc(0), prefix: command.prefix, startRevision, prevKv: command.prevKv, progressNotify: true } } });
  });
}

function wait(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done);
  });
}
