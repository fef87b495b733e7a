/**
 * @module store/tenants
 * Tenant records and their limits, in one Redis hash.
 *
 * Redis layout (prefix `p`): `p tenants` hash name → JSON {@link TenantRecord}.
 *
 * @example
 * const tenants = new TenantStore(redis);
 * await tenants.create('acme', { maxMemoryMb: 512 });   // Conflict when it exists
 * (await tenants.get('acme'))?.limits.maxFunctions;      // 100 (the default)
 */
import type { Redis } from 'ioredis';
import { Conflict } from '../common/errors.ts';
import type { Invalidation } from './metadata-cache.ts';

export interface TenantLimits {
  /** the largest memory cap one of the tenant's functions may ask for. */
  maxMemoryMb: number;
  /** invocations of the tenant running at the same time, across all its functions. */
  maxConcurrency: number;
  /** functions the tenant may have. */
  maxFunctions: number;
}

export interface TenantRecord {
  name: string;
  limits: TenantLimits;
  createdAt: string;
}

/**
 * Defaults for a tenant created without limits. 2048 MB: twice the largest default pool class the scheduler
 * is likely to keep, well under this machine's 24 GB; 100 concurrent invocations and 100 functions follow
 * OpenWhisk's per-namespace default of 100 concurrent activations (reference/peers.md [W1]).
 */
export const DEFAULT_LIMITS: TenantLimits = { maxMemoryMb: 2048, maxConcurrency: 100, maxFunctions: 100 };

export class TenantStore {
  constructor(
    private readonly redis: Redis,
    private readonly prefix = 'fnhost:meta:',
    private readonly onChange: (m: Invalidation) => void = () => {},
  ) {}

  /** The hash holding every tenant; other stores' scripts check membership in it. */
  get tenantsKey(): string {
    return `${this.prefix}tenants`;
  }

  /** Creates a tenant; Conflict when the name is taken. */
  async create(name: string, limits: Partial<TenantLimits> = {}): Promise<TenantRecord> {
    const rec: TenantRecord = { name, limits: { ...DEFAULT_LIMITS, ...limits }, createdAt: new Date().toISOString() };
    const created = await this.redis.hsetnx(this.tenantsKey, name, JSON.stringify(rec));
    if (created !== 1) throw new Conflict(`tenant ${name} already exists`, { field: 'name' });
    this.onChange({ t: name });
    return rec;
  }

  /** Replaces some limits of an existing tenant; null when it does not exist. */
  async updateLimits(name: string, limits: Partial<TenantLimits>): Promise<TenantRecord | null> {
    // KEYS[1] = tenants hash; ARGV[1] = name, ARGV[2] = JSON of the limits to set. Read-modify-write in one step.
    const raw = (await this.redis.eval(
      `local r = redis.call('HGET', KEYS[1], ARGV[1])
       if not r then return false end
       local t = cjson.decode(r)
       for k, v in pairs(cjson.decode(ARGV[2])) do t['limits'][k] = v end
       local out = cjson.encode(t)
       redis.call('HSET', KEYS[1], ARGV[1], out)
       return out`,
      1,
      this.tenantsKey,
      name,
      JSON.stringify(limits),
    )) as string | null;
    this.onChange({ t: name });
    return raw ? (JSON.parse(raw) as TenantRecord) : null;
  }

  async get(name: string): Promise<TenantRecord | null> {
    const raw = await this.redis.hget(this.tenantsKey, name);
    return raw ? (JSON.parse(raw) as TenantRecord) : null;
  }

  async list(): Promise<TenantRecord[]> {
    const all = await this.redis.hvals(this.tenantsKey);
    return all.map((r) => JSON.parse(r) as TenantRecord).sort((a, b) => a.name.localeCompare(b.name));
  }

  /** Removes the tenant record only (see MetadataStore.deleteTenant for the cascade); false when absent. */
  async remove(name: string): Promise<boolean> {
    const n = await this.redis.hdel(this.tenantsKey, name);
    this.onChange({ t: name });
    return n === 1;
  }
}
