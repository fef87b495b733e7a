/**
 * @module store/metadata
 * The metadata store: tenants, their hashed API keys and their functions' versions, all in Redis so that
 * any number of gateways and schedulers can share them (DESIGN.md "Scaling past one machine").
 *
 * @example
 * const meta = createMetadataStore(redis);               // prefix "fnhost:meta:" (the scheduler owns the rest of fnhost:*)
 * const t = await meta.tenants.create('acme');
 * const { key } = await meta.keys.create('acme');
 * await meta.deleteTenant('acme');                       // keys, functions and versions go too
 */
import type { Redis } from 'ioredis';
import { FunctionStore } from './functions.ts';
import { KeyStore } from './keys.ts';
import { TenantStore } from './tenants.ts';

export interface MetadataStore {
  readonly redis: Redis;
  readonly prefix: string;
  readonly tenants: TenantStore;
  readonly keys: KeyStore;
  readonly functions: FunctionStore;
  /**
   * Deletes a tenant and everything it owns in the metadata store. Order matters: its keys go first (no
   * request of the tenant authenticates from then on), then the record (the deploy script refuses new
   * versions without it), then the functions, so the cascade cannot race with a deploy re-creating one.
   */
  deleteTenant(name: string): Promise<{ deleted: boolean; functions: string[] }>;
  /** true when Redis answers PING. */
  ping(): Promise<boolean>;
}

export function createMetadataStore(redis: Redis, prefix = 'fnhost:meta:'): MetadataStore {
  const tenants = new TenantStore(redis, prefix);
  const keys = new KeyStore(redis, prefix);
  const functions = new FunctionStore(redis, prefix);
  return {
    redis,
    prefix,
    tenants,
    keys,
    functions,
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
  };
}
