import { createHmac, timingSafeEqual } from 'node:crypto';
import { AuthView } from '../kv/auth-state';
import { CairnError, ErrorCode } from '../errors';

/**
 * Signed tokens: `cairn1.<user, base64url>.<password index>.<expiry, ms since the epoch>.<HMAC-SHA256, base64url>`,
 * signed with the key that AuthEnable put into the replicated state, so any node checks a token
 * on its own. The password index (the log index that set the user's password) ends a user's
 * tokens when its password changes or it is deleted and added again; disabling auth drops the
 * key, which ends every token.
 */
const TOKEN_VERSION = 'cairn1';
/** The longest `authorization` value looked at; a longer one is refused unread. */
export const MAX_TOKEN_BYTES = 1024;
/** Default of --auth-token-ttl-ms: how long a token from Authenticate works. */
export const DEFAULT_AUTH_TOKEN_TTL_MS = 5 * 60 * 1000;

export function signToken(signingKey: Buffer, user: string, passwordIndex: number, expiresAtUnixMs: number): string {
  const body = `${TOKEN_VERSION}.${Buffer.from(user).toString('base64url')}.${passwordIndex}.${expiresAtUnixMs}`;
  return `${body}.${mac(signingKey, body)}`;
}

/** The user a token stands for (and its expiry), under `state` at `nowMs`; anything else is UNAUTHENTICATED, saying why. */
export function verifyToken(state: AuthView, token: string, nowMs: number): { user: string; passwordIndex: number; expiresAtUnixMs: number } {
  if (token.length > MAX_TOKEN_BYTES) throw unauthenticated(`the token is over MAX_TOKEN_BYTES ${MAX_TOKEN_BYTES}`);
  const parts = token.split('.');
  if (parts.length !== 5 || parts[0] !== TOKEN_VERSION) throw unauthenticated('the token is malformed');
  const [, userPart, indexPart, expiryPart, signature] = parts as [string, string, string, string, string];
  const expected = Buffer.from(mac(state.signingKey, `${TOKEN_VERSION}.${userPart}.${indexPart}.${expiryPart}`));
  const given = Buffer.from(signature);
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) throw unauthenticated('the token\'s signature is not valid (forged, or signed before auth was last enabled)');
  const expiresAt = Number(expiryPart);
  if (!Number.isSafeInteger(expiresAt) || expiresAt <= nowMs) throw unauthenticated('the token has expired: authenticate again');
  const user = Buffer.from(userPart, 'base64url').toString();
  const record = state.user(user);
  if (!record || String(record.passwordIndex) !== indexPart) throw unauthenticated('the token was revoked (its user was deleted or changed its password): authenticate again');
  return { user, passwordIndex: record.passwordIndex, expiresAtUnixMs: expiresAt };
}

function mac(key: Buffer, body: string): string {
  return createHmac('sha256', key).update(body).digest('base64url');
}

export function unauthenticated(why: string): CairnError {
  return new CairnError(ErrorCode.UNAUTHENTICATED, `authentication failed: ${why}`);
}
