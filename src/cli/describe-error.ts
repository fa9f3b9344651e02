import { ServiceError, status as Status } from '@grpc/grpc-js';
import { CairnError } from '../errors';
import { UsageError } from './flags';

/** One line that says what went wrong, for a person at a terminal. */
export function describeError(err: unknown): string {
  if (err instanceof UsageError) return err.message;
  if (err instanceof CairnError) return err.code === 'INVALID_ARGUMENT' ? err.message : `${err.code}: ${err.message}`;
  const grpc = err as ServiceError;
  if (typeof grpc?.code === 'number' && typeof grpc.details === 'string') {
    if (grpc.code === Status.UNAVAILABLE && /No connection established|ECONNREFUSED|connect/i.test(grpc.details)) {
      const refused = /ECONNREFUSED ([\d.:]+)/.exec(grpc.details);
      const where = refused ? `${refused[1]} refused the connection` : grpc.details.replace(/\s*Resolution note:\s*$/, '');
      return `cannot reach any endpoint (${where}); is the cluster running? (npm start)`;
    }
    return `${Status[grpc.code]}: ${grpc.details}`;
  }
  return (err as Error)?.stack ?? String(err);
}
