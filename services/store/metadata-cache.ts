/**
 * @module store/metadata-cache
 * A small in-process cache of the two lookups every invocation makes (the presented key, the function's
 * version record), so a warm invocation does not pay two Redis round trips before it is even queued.
 *
 * Freshness: every write of the metadata store publishes an invalidation on `<prefix>invalidate` (and
 * drops the entries of its own process at once); every gateway subscribes and drops what the message names.
 * Entries also expire after `ttlMs` (default 2 s), which bounds staleness if a message is lost, and the
 * whole cache is dropped whenever the subscription reconnects. So a PATCHed memory cap, a deleted function
 * or a revoked key takes effect on the next request here, and within milliseconds on other gateways.
 * Misses are not cached (random keys must not fill memory); the cache holds at most `maxEntries`.
 *
 * @example
 * const cache = new MetadataCache({ ttlMs: 2000 });
 * const rec = await cache.key(hash, () => keys.lookupHash(hash));
 * cache.invalidate({ t: 'acme' });      // everything of tenant acme
 */
import type { FunctionVersion } from '../common/model.ts';
import type { KeyRecord } from './keys.ts';

/** An invalidation: `t` tenant (all of it unless `f` or `k` narrows it), `f` function name, `k` key hash. */
export interface Invalidation {
  t?: string;
  f?: string;
  k?: string;
}

interface Entry<T> {
  value: T;
  tenant: string;
  fn?: string;
  expires: number;
}

/** 10,000 entries: the hot set of a busy node (keys + function versions), a few MB at most. */
const DEFAULT_MAX_ENTRIES = 10_000;

export class MetadataCache {
  private readonly keys = new Map<string, Entry<KeyRecord>>();
  private readonly fns = new Map<string, Entry<FunctionVersion>>();
  private readonly ttlMs: number;
  private readonly maxEntries: number;

  constructor(opts: { ttlMs?: number; maxEntries?: number } = {}) {
    this.ttlMs = opts.ttlMs ?? 2000;
    this.maxEntries = opts.maxEntries ?? DEFAULT_MAX_ENTRIES;
  }

  get enabled(): boolean {
    return this.ttlMs > 0;
  }

  private async through<T extends { tenant: string }>(map: Map<string, Entry<T>>, id: string, fn: string | undefined, load: () => Promise<T | null>): Promise<T | null> {
    if (!this.enabled) return load();
    const now = Date.now();
    const hit = map.get(id);
    if (hit && hit.expires > now) return hit.value;
    const value = await load();
    if (value) {
      if (map.size >= this.maxEntries) map.delete(map.keys().next().value!); // oldest first (insertion order)
      map.set(id, { value, tenant: value.tenant, ...(fn ? { fn } : {}), expires: now + this.ttlMs });
    } else map.delete(id);
    return value;
  }

  /** The record of a key, by its hash. */
  key(hash: string, load: () => Promise<KeyRecord | null>): Promise<KeyRecord | null> {
    return this.through(this.keys, hash, undefined, load);
  }

  /** A function's latest version (`version` undefined) or one version. */
  fn(tenant: string, name: string, version: number | undefined, load: () => Promise<FunctionVersion | null>): Promise<FunctionVersion | null> {
    return this.through(this.fns, `${tenant}\0${name}\0${version ?? ''}`, name, load);
  }

  invalidate(m: Invalidation): void {
    if (m.k) this.keys.delete(m.k);
    if (m.t === undefined) return;
    const dropKeys = m.f === undefined && m.k === undefined;
    for (const [id, e] of this.fns) if (e.tenant === m.t && (m.f === undefined || e.fn === m.f)) this.fns.delete(id);
    if (dropKeys) for (const [id, e] of this.keys) if (e.tenant === m.t) this.keys.delete(id);
  }

  clear(): void {
    this.keys.clear();
    this.fns.clear();
  }
}
