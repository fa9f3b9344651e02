import { randomBytes, scrypt, timingSafeEqual } from 'node:crypto';
import { PasswordHash } from '../../gen/cairn/kv/v1/kv';
import { CairnError, ErrorCode } from '../errors';

/**
 * Salted scrypt password hashes. scrypt is slow on purpose (tens of ms and 16 MiB per hash
 * here), so it runs only on the node that received the password, on libuv's thread pool,
 * at most MAX_CONCURRENT_PASSWORD_HASHES at a time: never inside apply.
 */
export const SCRYPT_COST = 2 ** 14;
export const SCRYPT_BLOCK_SIZE = 8;
export const SCRYPT_PARALLELIZATION = 1;
export const PASSWORD_SALT_BYTES = 16;
export const PASSWORD_HASH_BYTES = 32;
/** Largest password accepted: scrypt's work does not depend on it, but the request's size does. */
export const MAX_PASSWORD_BYTES = 1024;
/** Hashes computed at once on one node; more wait in line. */
export const MAX_CONCURRENT_PASSWORD_HASHES = 2;
/** Hashes waiting for a slot; past this a call is refused with OVERLOADED (a flood of logins must not queue without bound). */
export const MAX_QUEUED_PASSWORD_HASHES = 64;
/** Cost parameters a stored hash may name and still be checked (a forged record must not make scrypt run for minutes). */
const MAX_SCRYPT_COST = 2 ** 20;
const SCRYPT_MAX_MEMORY_BYTES = 256 * 1024 * 1024;

let running = 0;
const waiting: (() => void)[] = [];

async function withHashSlot<T>(work: () => Promise<T>): Promise<T> {
  if (running >= MAX_CONCURRENT_PASSWORD_HASHES) {
    if (waiting.length >= MAX_QUEUED_PASSWORD_HASHES) {
      throw new CairnError(ErrorCode.OVERLOADED, `too many password checks in progress on this node (MAX_QUEUED_PASSWORD_HASHES ${MAX_QUEUED_PASSWORD_HASHES}); retry later`);
    }
    await new Promise<void>((resolve) => waiting.push(resolve));
  } else {
    running++;
  }
  try {
    return await work();
  } finally {
    const next = waiting.shift();
    if (next) next();
    else running--;
  }
}

function scryptAsync(password: string, salt: Uint8Array, bytes: number, cost: number, blockSize: number, parallelization: number): Promise<Buffer> {
  return new Promise((resolve, reject) =>
    scrypt(password, salt, bytes, { N: cost, r: blockSize, p: parallelization, maxmem: SCRYPT_MAX_MEMORY_BYTES }, (err, key) => (err ? reject(err) : resolve(key))),
  );
}

export function checkPasswordInput(password: string): void {
  const bytes = Buffer.byteLength(password);
  if (bytes === 0) throw new CairnError(ErrorCode.INVALID_ARGUMENT, 'password is empty');
  if (bytes > MAX_PASSWORD_BYTES) throw new CairnError(ErrorCode.INVALID_ARGUMENT, `password is ${bytes} bytes, over MAX_PASSWORD_BYTES ${MAX_PASSWORD_BYTES}`);
}

/** A new salted hash of `password`. */
export async function hashPassword(password: string): Promise<PasswordHash> {
  checkPasswordInput(password);
  const salt = randomBytes(PASSWORD_SALT_BYTES);
  const hash = await withHashSlot(() => scryptAsync(password, salt, PASSWORD_HASH_BYTES, SCRYPT_COST, SCRYPT_BLOCK_SIZE, SCRYPT_PARALLELIZATION));
  return { salt, hash, cost: SCRYPT_COST, blockSize: SCRYPT_BLOCK_SIZE, parallelization: SCRYPT_PARALLELIZATION };
}

/** A hash no password matches, checked for unknown users so they take as long as known ones. */
const DECOY: PasswordHash = {
  salt: Buffer.alloc(PASSWORD_SALT_BYTES),
  hash: Buffer.alloc(PASSWORD_HASH_BYTES),
  cost: SCRYPT_COST,
  blockSize: SCRYPT_BLOCK_SIZE,
  parallelization: SCRYPT_PARALLELIZATION,
};

/** Whether `password` matches `stored` (undefined: an unknown user, which never matches). */
export async function verifyPassword(password: string, stored: PasswordHash | undefined): Promise<boolean> {
  const hash = stored ?? DECOY;
  const usable = hash.cost >= 2 && hash.cost <= MAX_SCRYPT_COST && (hash.cost & (hash.cost - 1)) === 0 && hash.blockSize >= 1 && hash.blockSize <= 32 && hash.parallelization >= 1 && hash.parallelization <= 16 && hash.hash.length >= 16 && hash.hash.length <= 64;
  if (!usable || Buffer.byteLength(password) > MAX_PASSWORD_BYTES) return false;
  const computed = await withHashSlot(() => scryptAsync(password, hash.salt, hash.hash.length, hash.cost, hash.blockSize, hash.parallelization));
  return timingSafeEqual(computed, Buffer.from(hash.hash)) && stored !== undefined;
}
