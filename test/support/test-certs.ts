import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Certificates for tests, made by Debian's openssl when a test runs (never committed):
 * the same commands docs/security.md prints. Short-lived (2 days), P-256 keys.
 */
export const OPENSSL = '/usr/bin/openssl';

export interface CertFiles {
  cert: string;
  key: string;
}

function openssl(args: string[]): void {
  execFileSync(OPENSSL, args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

/** A self-signed CA in DIR: NAME.pem and NAME.key. */
export function makeCa(dir: string, name: string): CertFiles {
  const cert = join(dir, `${name}.pem`);
  const key = join(dir, `${name}.key`);
  openssl(['req', '-x509', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert, '-subj', `/CN=${name}`, '-days', '2']);
  return { cert, key };
}

/**
 * A leaf certificate signed by `ca`, good for TLS servers and clients, with the given SANs
 * (`URI:cairn-node:1`, `IP:127.0.0.1`, `DNS:localhost`); a fresh random serial each time.
 */
export function issueCert(dir: string, name: string, ca: CertFiles, sans: string[]): CertFiles {
  const cert = join(dir, `${name}.pem`);
  const key = join(dir, `${name}.key`);
  const csr = join(dir, `${name}.csr`);
  const ext = join(dir, `${name}.ext`);
  const extensions = ['basicConstraints=CA:FALSE', 'keyUsage=digitalSignature,keyEncipherment', 'extendedKeyUsage=serverAuth,clientAuth'];
  if (sans.length > 0) extensions.push(`subjectAltName=${sans.join(',')}`);
  writeFileSync(ext, extensions.join('\n') + '\n');
  openssl(['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', csr, '-subj', `/CN=${name}`]);
  const serial = `0x${randomBytes(8).toString('hex')}`;
  openssl(['x509', '-req', '-in', csr, '-CA', ca.cert, '-CAkey', ca.key, '-set_serial', serial, '-days', '2', '-out', cert, '-extfile', ext]);
  return { cert, key };
}
