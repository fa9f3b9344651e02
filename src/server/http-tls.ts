import { Server as HttpsServer, ServerOptions } from 'node:https';
import { SecureContextOptions } from 'node:tls';
import { CertificateFiles, loadTlsFiles } from './tls';

/**
 * HTTPS for the HTTP port (--http-addr) when the client port has TLS: the same certificate
 * and key (--cert-file, --key-file), following their reloads. With --client-ca-file the
 * port asks for a client certificate but does not refuse a connection without one, so that
 * probes and Prometheus (which present none) still reach /healthz, /readyz and /metrics; the
 * gateway's routes refuse a request whose certificate the bundle did not verify
 * (gateway.ts), as the client port refuses the connection.
 */
export interface HttpTls {
  options: ServerOptions;
  /** Client certificates are asked for and checked against --client-ca-file. */
  verifiesClientCertificates: boolean;
  /** Makes `server` take the files' next versions for new connections; returns a function that stops it. */
  follow(server: HttpsServer): () => void;
}

export function httpsFollowing(files: CertificateFiles): HttpTls {
  let identity: { certificate: Buffer; privateKey: Buffer } | undefined;
  let ca: Buffer | undefined;
  const verifiesClientCertificates = Boolean(files.files.caFile);
  const contextNow = (): SecureContextOptions => ({
    cert: identity?.certificate,
    key: identity?.privateKey,
    ...(verifiesClientCertificates ? { ca } : {}),
  });
  // Checked at start already (NodeTransportSecurity.open): read again here, they load.
  const loaded = loadTlsFiles(files.files);
  identity = { certificate: loaded.cert, privateKey: loaded.key };
  ca = loaded.ca;
  return {
    options: { ...contextNow(), ...(verifiesClientCertificates ? { requestCert: true, rejectUnauthorized: false } : {}) },
    verifiesClientCertificates,
    follow(server) {
      const onIdentity = (update: { certificate: Buffer; privateKey: Buffer } | null) => {
        if (!update) return;
        identity = update;
        server.setSecureContext(contextNow());
      };
      const onCa = (update: { caCertificate: Buffer } | null) => {
        if (!update || !verifiesClientCertificates) return;
        ca = update.caCertificate;
        server.setSecureContext(contextNow());
      };
      files.addIdentityCertificateListener(onIdentity);
      files.addCaCertificateListener(onCa);
      return () => {
        files.removeIdentityCertificateListener(onIdentity);
        files.removeCaCertificateListener(onCa);
      };
    },
  };
}
