/**
 * @module scheduler/fn-refs
 * Fast-lane jobs carry a reference to their function version instead of the whole record (code digest,
 * handler, limits, `env` — which may be kilobytes): the job's JSON is built, pushed through the Lua script,
 * stored in the list and parsed once per invocation, so its size is paid several times per call.
 *
 * The reference is the tenant and a content hash of the FunctionVersion (sha1 of its JSON): two different
 * records never share one, whatever their name/version say (a deleted and re-created function, test
 * fixtures). The client stashes the record once under `P:fnv:<ref>` (TTL `FN_STASH_TTL_S`, refreshed every
 * `STASH_REFRESH_MS` while in use) and sends it inline in the first job of each refresh period; a scheduler
 * caches what it has seen (`FnCache`) and reads the stash only for a reference it never saw (another node's
 * client, or it restarted). Async jobs (BullMQ) keep the full record: they may run days later, elsewhere,
 * and the dead-letter list shows it.
 *
 * @example
 * const ref = fnRefOf(fn);                       // client: memoised per object
 * const fn2 = cache.get(ref) ?? (await cache.load(redis, keys, ref));   // scheduler
 */
import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { FunctionVersion } from '../common/model.ts';
import type { Keys } from './keys.ts';

/** a stashed record lives a day after its last refresh (a function called less than daily pays one GET). */
export const FN_STASH_TTL_S = 24 * 3600;
/** the client refreshes the stash (and sends the record inline once) this often per reference. */
export const STASH_REFRESH_MS = 10 * 60_000;
/** records a scheduler keeps (oldest dropped first): far above the function versions one node runs. */
const CACHE_MAX = 10_000;

const memo = new WeakMap<FunctionVersion, string>();

/**
 * The content reference of a function version: `<tenant, URI-encoded>:<sha1 base64url>` — the tenant part lets
 * a tenant's deletion find its stashes (client.purgeTenant). Memoised per object (the gateway's metadata cache
 * hands out the same one for a while).
 */
export function fnRefOf(fn: FunctionVersion): string {
  let r = memo.get(fn);
  if (!r) {
    r = `${encodeURIComponent(fn.tenant)}:${createHash('sha1').update(JSON.stringify(fn)).digest('base64url')}`;
    memo.set(fn, r);
  }
  return r;
}

/** Client side: which references were stashed when (bounded; forgetting one only costs a re-stash). */
export class FnStash {
  private readonly at = new Map<string, number>();

  /** true when `ref` must be stashed (and sent inline) now; marks it done. */
  due(ref: string, now: number): boolean {
    const t = this.at.get(ref);
    if (t !== undefined && now - t < STASH_REFRESH_MS) return false;
    if (this.at.size >= CACHE_MAX) this.at.clear();
    this.at.set(ref, now);
    return true;
  }

  /** a stash write failed: try again with the next call. */
  forget(ref: string): void {
    this.at.delete(ref);
  }
}

/** Scheduler side: function versions by reference. */
export class FnCache {
  private readonly m = new Map<string, FunctionVersion>();

  get(ref: string): FunctionVersion | undefined {
    return this.m.get(ref);
  }

  put(ref: string, fn: FunctionVersion): void {
    if (this.m.has(ref)) return;
    if (this.m.size >= CACHE_MAX) this.m.delete(this.m.keys().next().value!);
    this.m.set(ref, fn);
  }

  /** Reads a reference this node never saw from its stash; null when it is gone. */
  async load(redis: Redis, keys: Keys, ref: string): Promise<FunctionVersion | null> {
    const j = await redis.get(keys.fnVersion(ref));
    if (!j) return null;
    const fn = JSON.parse(j) as FunctionVersion;
    this.put(ref, fn);
    return fn;
  }
}
