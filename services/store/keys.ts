/**
 * @module store/keys
 * API keys: random 32-byte secrets handed out once, stored only as their sha256.
 *
 * A key is `fnh_<43 chars of base64url>`. Because the secret is 256 random bits, a plain (unsalted) sha256 is
 * enough to make a leaked Redis dump useless: there is nothing to brute-force, and it lets a request's key be
 * found with one HGET instead of a scan.
 *
 * Redis layout (prefix `p`, default `fnhost:meta:`):
 * - `p keys`              hash  sha256hex → JSON {tenant, id, createdAt}
 * - `p tenant-keys:<t>`   hash  key id    → sha256hex
 *
 * @example
 * const keys = new KeyStore(redis);
 * const { id, key } = await keys.create('acme');   // show `key` once, never again
 * await keys.lookup(key);                            // { tenant: 'acme', id, createdAt }
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Redis } from 'ioredis';
import { NotFound } from '../common/errors.ts';
import type { Invalidation } from './metadata-cache.ts';
import { runScript } from './redis-script.ts';

export const KEY_PREFIX_TEXT = 'fnh_';

export interface KeyRecord {
  tenant: string;
  id: string;
  createdAt: string;
}

/** A new random API key (256 bits from the OS CSPRNG). */
export function generateKey(): string {
  return KEY_PREFIX_TEXT + randomBytes(32).toString('base64url');
}

/** The stored form of a key: lowercase hex sha256 of its UTF-8 bytes. */
export function hashKey(key: string): string {
  return createHash('sha256').update(key, 'utf8').digest('hex');
}

/** Constant-time comparison of two hex digests of equal length (false when lengths differ). */
export function sameHash(a: string, b: string): boolean {
  const x = Buffer.from(a, 'hex');
  const y = Buffer.from(b, 'hex');
  return x.length === y.length && x.length > 0 && timingSafeEqual(x, y);
}

// KEYS[1] = p keys, KEYS[2] = p tenant-keys:<t>; ARGV[1] = key id. Removes one key from both hashes.
// Returns the key's hash when removed, false (nil) when the id is not the tenant's.
const REVOKE = `
local h = redis.call('HGET', KEYS[2], ARGV[1])
if not h then return false end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], h)
return h`;

// KEYS[1] = p keys, KEYS[2] = p tenant-keys:<t>. Removes all of a tenant's keys; returns how many.
const REVOKE_ALL = `
local hs = redis.call('HVALS', KEYS[2])
for _, h in ipairs(hs) do redis.call('HDEL', KEYS[1], h) end
redis.call('DEL', KEYS[2])
return #hs`;

export class KeyStore {
  constructor(
    private readonly redis: Redis,
    private readonly prefix = 'fnhost:meta:',
    private readonly onChange: (m: Invalidation) => void = () => {},
  ) {}

  private get keysKey() {
    return `${this.prefix}keys`;
  }

  private tenantKeys(tenant: string) {
    return `${this.prefix}tenant-keys:${tenant}`;
  }

  /** Creates a key for `tenant`; the plain key is returned here and nowhere else. */
  async create(tenant: string): Promise<{ id: string; key: string; createdAt: string }> {
    const key = generateKey();
    const id = randomBytes(6).toString('hex');
    const createdAt = new Date().toISOString();
    const h = hashKey(key);
    const rec: KeyRecord = { tenant, id, createdAt };
    await this.redis.multi().hset(this.keysKey, h, JSON.stringify(rec)).hset(this.tenantKeys(tenant), id, h).exec();
    return { id, key, createdAt };
  }

  /** The record of a presented key, or null when it is unknown (revoked keys are unknown). */
  async lookup(key: string): Promise<KeyRecord | null> {
    return this.lookupHash(hashKey(key));
  }

  /** The record of a key by its hash ({@link hashKey}). */
  async lookupHash(hash: string): Promise<KeyRecord | null> {
    const raw = await this.redis.hget(this.keysKey, hash);
    return raw ? (JSON.parse(raw) as KeyRecord) : null;
  }

  /** Key ids of a tenant (never the keys). */
  async list(tenant: string): Promise<string[]> {
    return (await this.redis.hkeys(this.tenantKeys(tenant))).sort();
  }

  /** Revokes one key of `tenant`; NotFound when the id is not one of its keys. */
  async revoke(tenant: string, id: string): Promise<void> {
    const h = await runScript(this.redis, REVOKE, [this.keysKey, this.tenantKeys(tenant)], [id]);
    if (typeof h !== 'string') throw new NotFound(`key ${id} not found`, { field: 'id' });
    this.onChange({ k: h });
  }

  /** Revokes every key of `tenant` (tenant deletion). */
  async revokeAll(tenant: string): Promise<number> {
    const n = (await runScript(this.redis, REVOKE_ALL, [this.keysKey, this.tenantKeys(tenant)], [])) as number;
    this.onChange({ t: tenant });
    return n;
  }
}
