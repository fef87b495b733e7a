/**
 * @module store/metadata
 * The metadata store: tenants, their hashed API keys and their functions' versions, all in Redis so that
 * any number of gateways and schedulers can share them (DESIGN.md "Scaling past one machine"), plus the
 * in-process cache of the two per-invocation lookups (./metadata-cache.ts) kept fresh by invalidations
 * published on `<prefix>invalidate`.
 *
 * @example
 * const meta = createMetadataStore(redis);               // prefix "fnhost:meta:" (the scheduler owns the rest of fnhost:*)
 * const t = await meta.tenants.create('acme');
 * const { key } = await meta.keys.create('acme');
 * await meta.lookupKey(key);                              // { tenant: 'acme', id, createdAt } (cached)
 * await meta.deleteTenant('acme');                       // keys, functions and versions go too
 * await meta.close();                                     // the invalidation subscription, when one was opened
 */
import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { FunctionVersion } from '../common/model.ts';
import { FunctionStore } from './functions.ts';
import { KeyStore, hashKey, type KeyRecord } from './keys.ts';
import { MetadataCache, type Invalidation } from './metadata-cache.ts';
import { TenantStore, type TenantRecord } from './tenants.ts';

export interface MetadataStore {
  readonly redis: Redis;
  readonly prefix: string;
  readonly tenants: TenantStore;
  readonly keys: KeyStore;
  readonly functions: FunctionStore;
  readonly cache: MetadataCache;
  /** a tenant's record (limits), through the cache. */
  getTenant(name: string): Promise<TenantRecord | null>;
  /** the key's record, through the cache (hot path of every request). */
  lookupKey(key: string): Promise<KeyRecord | null>;
  /** the same by the key's sha256 ({@link hashKey}). */
  lookupKeyHash(hash: string): Promise<KeyRecord | null>;
  /** `name` (latest) or `name:version` of `tenant`, through the cache (hot path of every invocation). */
  getFunction(tenant: string, name: string, version?: number): Promise<FunctionVersion | null>;
  /**
   * Deletes a tenant and everything it owns in the metadata store. Order matters: its keys go first (no
   * request of the tenant authenticates from then on), then the record (the deploy script refuses new
   * versions without it), then the functions, so the cascade cannot race with a deploy re-creating one.
   */
  deleteTenant(name: string): Promise<{ deleted: boolean; functions: string[] }>;
  /** true when Redis answers PING. */
  ping(): Promise<boolean>;
  close(): Promise<void>;
}

export interface MetadataStoreOptions {
  /** how long a cached key or function record may be served without a fresh read (default 2000; 0: no cache). */
  cacheTtlMs?: number;
  /**
   * subscribe to other processes' invalidations (default true when caching). Tests of a single gateway
   * may turn it off: this process's own writes invalidate its cache directly either way.
   */
  subscribe?: boolean;
}

/** The metadata store's key prefix unless told otherwise (the host passes it to its scheduler too). */
export const DEFAULT_METADATA_PREFIX = 'fnhost:meta:';

export function createMetadataStore(redis: Redis, prefix = DEFAULT_METADATA_PREFIX, opts: MetadataStoreOptions = {}): MetadataStore {
  const cache = new MetadataCache({ ttlMs: opts.cacheTtlMs ?? 2000 });
  const channel = `${prefix}invalidate`;
  /** names this process's own invalidations: their echo on the channel must not drop what `latest` primed */
  const origin = randomBytes(8).toString('hex');
  const changed = (m: Invalidation, latest?: FunctionVersion) => {
    cache.invalidate(m);
    // A deploy's new latest version is cached here at once (the first invocation after a deploy is usually
    // served by this same gateway); other processes drop their entries on the message and read it.
    if (latest) cache.primeFn(latest);
    if (cache.enabled) redis.publish(channel, JSON.stringify({ ...m, o: origin })).catch(() => {
      // other gateways' entries then expire by TTL
    });
  };
  const tenants = new TenantStore(redis, prefix, changed);
  const keys = new KeyStore(redis, prefix, changed);
  const functions = new FunctionStore(redis, prefix, changed);

  let sub: Redis | undefined;
  if (cache.enabled && opts.subscribe !== false) {
    sub = redis.duplicate();
    sub.on('error', () => {});
    // Messages sent while the subscription was down are lost: start from an empty cache after every (re)connect.
    sub.on('ready', () => cache.clear());
    sub.on('message', (_ch: string, msg: string) => {
      try {
        const m = JSON.parse(msg) as Invalidation;
        if (m.o !== origin) cache.invalidate(m);
      } catch {
        cache.clear();
      }
    });
    sub.subscribe(channel).catch(() => {});
  }

  return {
    redis,
    prefix,
    tenants,
    keys,
    functions,
    cache,
    lookupKey(key) {
      const h = hashKey(key);
      return cache.key(h, () => keys.lookupHash(h));
    },
    lookupKeyHash(h) {
      return cache.key(h, () => keys.lookupHash(h));
    },
    getFunction(tenant, name, version) {
      return cache.fn(tenant, name, version, () => functions.get(tenant, name, version));
    },
    getTenant(name) {
      return cache.tenant(name, () => tenants.get(name));
    },
    async deleteTenant(name) {
      await keys.revokeAll(name);
      const deleted = await tenants.remove(name);
      const fns = await functions.deleteAll(name);
      return { deleted, functions: fns };
    },
    async ping() {
      try {
        return (await redis.ping()) === 'PONG';
      } catch {
        return false;
      }
    },
    async close() {
      if (sub) await sub.quit().catch(() => sub!.disconnect());
      cache.clear();
    },
  };
}
