import { readFileSync } from 'node:fs';
import { DialSecurity, PLAINTEXT_DIAL, tlsDial } from '../server/tls';
import { UsageError } from './flags';

/** The client verbs' TLS flags (docs/security.md). */
export const CLIENT_TLS_FLAGS = ['cacert', 'cert', 'key'] as const;

export const CLIENT_TLS_USAGE = `  --cacert FILE                    TLS: PEM CA bundle that verifies the nodes' certificates (env CAIRN_CACERT)
  --cert FILE, --key FILE          TLS: a client certificate and its key, for nodes started with --client-ca-file
                                   (env CAIRN_CERT, CAIRN_KEY)`;

function readFlagFile(flag: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new UsageError(`--${flag} ${path}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message}`);
  }
}

/**
 * How to dial each endpoint as --cacert, --cert and --key ask (each also from CAIRN_CACERT,
 * CAIRN_CERT, CAIRN_KEY); plaintext when none is given. Removes them from `flags`.
 */
export function clientDialFromFlags(flags: Record<string, string>, env: NodeJS.ProcessEnv = process.env): DialSecurity {
  const cacert = flags.cacert ?? env.CAIRN_CACERT ?? '';
  const cert = flags.cert ?? env.CAIRN_CERT ?? '';
  const key = flags.key ?? env.CAIRN_KEY ?? '';
  for (const name of CLIENT_TLS_FLAGS) delete flags[name];
  if (Boolean(cert) !== Boolean(key)) throw new UsageError('--cert and --key go together (a client certificate needs its key)');
  if (!cacert && !cert) return PLAINTEXT_DIAL;
  return tlsDial(
    cacert ? readFlagFile('cacert', cacert) : null,
    key ? readFlagFile('key', key) : null,
    cert ? readFlagFile('cert', cert) : null,
  );
}
