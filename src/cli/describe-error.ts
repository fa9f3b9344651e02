import { ServiceError, status as Status } from '@grpc/grpc-js';
import { CairnError } from '../errors';
import { AttemptFailure, CallFailedError, failureKind } from './client';
import { UsageError } from './flags';

const START_HINT = 'is the cluster running? (npm start; a node that serves TLS needs --cacert)';

/** One line that says what went wrong, for a person at a terminal. */
export function describeError(err: unknown): string {
  if (err instanceof UsageError) return err.message;
  if (err instanceof CallFailedError) return describeCallFailure(err);
  if (err instanceof CairnError) return err.code === 'INVALID_ARGUMENT' ? err.message : `${err.code}: ${err.message}`;
  const grpc = err as ServiceError;
  if (typeof grpc?.code === 'number' && typeof grpc.details === 'string') return `${Status[grpc.code]}: ${grpc.details}${cairnCodeSuffix(grpc)}`;
  // Anything else is a plain message (say, "cannot listen on ...") unless asked for the stack.
  if (err instanceof Error) return process.env.CAIRN_DEBUG ? (err.stack ?? err.message) : err.message;
  return String(err);
}

/**
 * " (LEARNER_NOT_CAUGHT_UP)": cairn's own error code from the `cairn-error-code` trailer,
 * when it says more than the gRPC status (scripts match on it; README "Membership").
 */
function cairnCodeSuffix(error: Pick<ServiceError, 'code' | 'metadata'>): string {
  const code = error.metadata?.get?.('cairn-error-code')?.[0];
  return typeof code === 'string' && code !== '' && code !== Status[error.code] ? ` (${code})` : '';
}

/**
 * The most informative failure first, then what the other endpoints did: "UNAVAILABLE from
 * 127.0.0.1:7002: no leader is known right now ...; 127.0.0.1:7001 and 127.0.0.1:7003
 * refused the connection".
 */
function describeCallFailure(err: CallFailedError): string {
  const { primary } = err;
  const others = err.failures.filter((f) => f.endpoint !== primary.endpoint);
  let line: string;
  switch (primary.kind) {
    case 'unreachable':
      line = `cannot reach any endpoint (${summarize(err.failures)}); ${START_HINT}`;
      return withOutcome(line, err);
    case 'no-answer':
      line = `no answer from ${primary.endpoint} within ${primary.attemptMs} ms (--timeout-ms covers the whole command)`;
      break;
    case 'wrong-service':
      line = wrongService(primary);
      break;
    case 'answered':
      line = `${Status[primary.error.code]}${err.failures.length > 1 ? ` from ${primary.endpoint}` : ''}: ${primary.error.details}${cairnCodeSuffix(primary.error)}`;
      break;
  }
  if (others.length > 0) line += `; ${summarize(others)}`;
  return withOutcome(line, err);
}

function withOutcome(line: string, err: CallFailedError): string {
  return err.outcomeUnknown ? `${line}; the write may or may not have been applied (check with get)` : line;
}

/** "127.0.0.1:7001 and 127.0.0.1:7003 refused the connection; 127.0.0.1:7002 did not answer in 500 ms". */
function summarize(failures: AttemptFailure[]): string {
  const groups = new Map<string, string[]>();
  for (const failure of failures) {
    const what = describeFailure(failure);
    groups.set(what, [...(groups.get(what) ?? []), failure.endpoint]);
  }
  return [...groups].map(([what, endpoints]) => `${joinAnd(endpoints)} ${what}`).join('; ');
}

function joinAnd(items: string[]): string {
  return items.length <= 1 ? (items[0] ?? '') : `${items.slice(0, -1).join(', ')} and ${items[items.length - 1]}`;
}

/** What one endpoint did, as a phrase after its address ("refused the connection"). */
export function describeFailure(failure: Pick<AttemptFailure, 'error' | 'attemptMs'> & { kind?: AttemptFailure['kind'] }): string {
  const { error } = failure;
  switch (failure.kind ?? failureKind(error)) {
    case 'unreachable':
      if (/ECONNREFUSED/.test(error.details)) return 'refused the connection';
      if (/ENOTFOUND|EAI_AGAIN|Name resolution failed|DNS resolution failed/i.test(error.details)) return 'is not a host name that resolves';
      if (/EHOSTUNREACH|ENETUNREACH/.test(error.details)) return 'is not reachable (no route)';
      {
        const tls = tlsProblem(error.details);
        if (tls) return tls;
      }
      return `is unreachable (${error.details.replace(/\s*Resolution note:.*$/s, '').trim()})`;
    case 'no-answer':
      return `did not answer within ${failure.attemptMs} ms`;
    case 'wrong-service':
      return 'answered UNIMPLEMENTED: not a cairn client port (a peer port?)';
    case 'answered':
      return `answered ${Status[error.code]}: ${error.details}`;
  }
}

function wrongService(failure: AttemptFailure): string {
  const method = /\/[\w.]+\/\w+/.exec(failure.error.details)?.[0];
  return (
    `${failure.endpoint} does not serve cairn's client API (UNIMPLEMENTED${method ? ` ${method}` : ''}): ` +
    `is it a peer port? --endpoints takes client ports (--client-addr; 7001-7003 in the local cluster), not peer ports (--peer-addr; 7101-7103)`
  );
}

/** What a failed TLS handshake means for the person typing the command, or undefined. */
function tlsProblem(details: string): string | undefined {
  if (/certificate required/i.test(details)) return 'refused the TLS handshake: it requires a client certificate (pass --cert and --key)';
  if (/unable to verify|self[- ]signed|unable to get (local )?issuer|certificate verify failed|unknown ca|bad certificate/i.test(details)) {
    return 'serves a TLS certificate that --cacert does not verify (or refused ours): pass the CA bundle that signed the node\'s certificate';
  }
  if (/wrong version number|packet length too long|unexpected eof while reading|http request/i.test(details)) return 'does not speak TLS: leave out --cacert, --cert and --key';
  if (/Hostname\/IP does not match|altnames/i.test(details)) return `serves a TLS certificate for another name (${details.replace(/\s*Resolution note:.*$/s, '').trim()})`;
  return undefined;
}
