/**
 * @module gateway/admission
 * A tenant's `maxConcurrency`: sync and HTTP-endpoint invocations of one tenant in flight at once, across
 * every gateway sharing the Redis. Past it the caller gets 429 TooManyRequests at once (async invocations
 * are not counted here: they wait in the tenant's queue, whose bound the scheduler's client enforces).
 *
 * Each admitted invocation is a member of a sorted set scored by the time it must be over by (its timeout
 * plus the longest queue wait plus slack). Admission first drops members past their time, so a gateway
 * that dies mid-invocation cannot leak the tenant's slots forever; they come back when those scores pass.
 * One Lua script reads the limit from the tenant record and admits, so a request costs one round trip.
 *
 * @example
 * const release = await admit(store, fn);   // TooManyRequests when the tenant is at its limit
 * try { ... } finally { release(); }
 */
import { randomBytes } from 'node:crypto';
import { TooManyRequests } from '../common/errors.ts';
import type { FunctionVersion } from '../common/model.ts';
import type { MetadataStore } from '../store/metadata.ts';
import { runScript } from '../store/redis-script.ts';

/** The scheduler client's default wait for an instance (services/scheduler/client.ts maxQueueWaitMs) + 5 s slack. */
const SLOT_SLACK_MS = 30_000 + 5_000;

// KEYS[1] = in-flight zset of the tenant, KEYS[2] = tenants hash; ARGV[1] = tenant, ARGV[2] = now (ms),
// ARGV[3] = this slot's expiry (ms), ARGV[4] = slot id. Returns 1 admitted, 0 at the limit, -1 no tenant.
const ADMIT = `
local raw = redis.call('HGET', KEYS[2], ARGV[1])
if not raw then return -1 end
local max = cjson.decode(raw)['limits']['maxConcurrency']
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZCARD', KEYS[1]) >= max then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 or tonumber(ARGV[2]) + ttl < tonumber(ARGV[3]) then redis.call('PEXPIREAT', KEYS[1], ARGV[3]) end
return 1`;

/** Slot ids: unique per process (random prefix) and per admission (counter), without a CSPRNG call each. */
const SLOT_PREFIX = randomBytes(6).toString('hex');
let slotSeq = 0;

/** Takes one of the tenant's slots for `fn`'s invocation; resolves with the release function. */
export async function admit(store: MetadataStore, fn: FunctionVersion): Promise<() => void> {
  const now = Date.now();
  const id = `${SLOT_PREFIX}-${(slotSeq++).toString(36)}`;
  const key = store.inflightKey(fn.tenant);
  const r = await runScript(store.redis, ADMIT, [key, store.tenants.tenantsKey], [fn.tenant, now, now + fn.timeoutMs + SLOT_SLACK_MS, id]);
  if (r === 0) throw new TooManyRequests(`tenant ${fn.tenant} is at its limit of concurrent invocations`, { limit: 'maxConcurrency' });
  // -1 (tenant deleted under us): nothing to count; the invocation fails on its own if the function went too.
  if (r !== 1) return () => {};
  let released = false;
  return () => {
    if (released) return;
    released = true;
    store.redis.zrem(key, id).catch(() => {
      // the slot's score expires it anyway
    });
  };
}
