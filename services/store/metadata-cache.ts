/**
 * @module store/metadata-cache
 * A small in-process cache of the lookups every invocation makes (the presented key, the function's
 * version record, the tenant's limits), so a warm invocation pays no Redis round trip before it is queued.
 *
 * Freshness: every write of the metadata store publishes an invalidation on `<prefix>invalidate` (and
 * drops the entries of its own process at once); every gateway subscribes and drops what the message names.
 * Entries also expire after `ttlMs` (default 2 s), which bounds staleness if a message is lost (one in use is
 * re-read in the background past half its life, so steady use never waits for that read), and the
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
import type { TenantRecord } from './tenants.ts';

/**
 * An invalidation: `t` tenant (all of it unless `f` or `k` narrows it), `f` function name, `k` key hash;
 * `o` the publishing process (./metadata.ts: a process skips its own messages — it applied them at write time).
 */
export interface Invalidation {
  t?: string;
  f?: string;
  k?: string;
  o?: string;
}

interface Entry<T> {
  value: T;
  tenant: string;
  fn?: string;
  expires: number;
  /** a read-ahead of this entry is in flight */
  refreshing?: boolean;
}

/**
 * How long after the use that triggers it a read-ahead is sent: past the request that used the entry (a cold
 * start through the gateway takes ~5 ms here; a warm call < 1 ms), far below the half-life left (ttlMs / 2).
 */
const READ_AHEAD_DELAY_MS = 20;

/** 10,000 entries: the hot set of a busy node (keys + function versions), a few MB at most. */
const DEFAULT_MAX_ENTRIES = 10_000;

export class MetadataCache {
  private readonly keys = new Map<string, Entry<KeyRecord>>();
  private readonly fns = new Map<string, Entry<FunctionVersion>>();
  private readonly tenants = new Map<string, Entry<TenantRecord & { tenant: string }>>();
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
    if (hit && hit.expires > now) {
      // Read ahead: an entry in use past half its life is re-read in the background and served meanwhile, so
      // a key or function in steady use never makes a request wait for Redis when its entry runs out (that
      // read, 0.3–0.5 ms, landed on every ~2nd cold start of the gateway bench). What is served is never
      // older than ttlMs, as before.
      if (!hit.refreshing && hit.expires - now < this.ttlMs / 2) this.readAhead(map, id, hit, load);
      return hit.value;
    }
    const value = await load();
    if (value) {
      if (map.size >= this.maxEntries) map.delete(map.keys().next().value!); // oldest first (insertion order)
      map.set(id, { value, tenant: value.tenant, ...(fn ? { fn } : {}), expires: now + this.ttlMs });
    } else map.delete(id);
    return value;
  }

  private readAhead<T extends { tenant: string }>(map: Map<string, Entry<T>>, id: string, hit: Entry<T>, load: () => Promise<T | null>): void {
    hit.refreshing = true;
    // Not in the tick of the request that found the entry half-used: sent then, the read (and its reply, and
    // redis-server's wake-up) ran inside that request — typically a cold start, the one that follows a quiet
    // spell. READ_AHEAD_DELAY_MS later the request is answered; the entry has ≥ ttlMs/2 left, so it never runs out first.
    setTimeout(() => {
      if (map.get(id) !== hit) return; // dropped meanwhile: the next use reads through
      this.refresh(map, id, hit, load);
    }, Math.min(READ_AHEAD_DELAY_MS, this.ttlMs / 4)).unref();
  }

  private refresh<T extends { tenant: string }>(map: Map<string, Entry<T>>, id: string, hit: Entry<T>, load: () => Promise<T | null>): void {
    load().then(
      (value) => {
        // Dropped meanwhile (an invalidation, or evicted): the read may predate the change — keep nothing.
        if (map.get(id) !== hit) return;
        if (!value) map.delete(id);
        else map.set(id, { value, tenant: value.tenant, ...(hit.fn ? { fn: hit.fn } : {}), expires: Date.now() + this.ttlMs });
      },
      () => {
        hit.refreshing = false; // Redis away: the entry runs out as before, and the next use reads through
      },
    );
  }

  /** The record of a key, by its hash. */
  key(hash: string, load: () => Promise<KeyRecord | null>): Promise<KeyRecord | null> {
    return this.through(this.keys, hash, undefined, load);
  }

  /** A tenant's record (its limits). */
  async tenant(name: string, load: () => Promise<TenantRecord | null>): Promise<TenantRecord | null> {
    return this.through(this.tenants, name, undefined, async () => {
      const t = await load();
      return t ? { ...t, tenant: t.name } : null;
    });
  }

  /** A function's latest version (`version` undefined) or one version. */
  fn(tenant: string, name: string, version: number | undefined, load: () => Promise<FunctionVersion | null>): Promise<FunctionVersion | null> {
    return this.through(this.fns, `${tenant}\0${name}\0${version ?? ''}`, name, load);
  }

  /**
   * Caches `fn` as its function's latest version (and as that version), as a read through would: called
   * with what a deploy just wrote, so the function's first invocation here needs no Redis read (measured
   * 0.25–0.3 ms of a just-deployed function's ~6 ms cold start through the gateway). A later write
   * anywhere invalidates it like any entry.
   *
   * @example
   * cache.primeFn(await functions.putVersion(rec, { maxFunctions: 100 }));
   */
  primeFn(fn: FunctionVersion): void {
    if (!this.enabled) return;
    const expires = Date.now() + this.ttlMs;
    for (const id of [`${fn.tenant}\0${fn.name}\0`, `${fn.tenant}\0${fn.name}\0${fn.version}`]) {
      this.fns.delete(id);
      if (this.fns.size >= this.maxEntries) this.fns.delete(this.fns.keys().next().value!);
      this.fns.set(id, { value: fn, tenant: fn.tenant, fn: fn.name, expires });
    }
  }

  invalidate(m: Invalidation): void {
    if (m.k) this.keys.delete(m.k);
    if (m.t === undefined) return;
    const wholeTenant = m.f === undefined && m.k === undefined;
    for (const [id, e] of this.fns) if (e.tenant === m.t && (m.f === undefined || e.fn === m.f)) this.fns.delete(id);
    if (wholeTenant) {
      for (const [id, e] of this.keys) if (e.tenant === m.t) this.keys.delete(id);
      this.tenants.delete(m.t);
    }
  }

  clear(): void {
    this.keys.clear();
    this.fns.clear();
    this.tenants.clear();
  }
}
