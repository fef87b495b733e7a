/**
 * @module scheduler/routing
 * Warm affinity across nodes. A node that holds an idle-capable warm instance of function version (T, F, V)
 * advertises it in `P:warm:T:F:V` (HASH node → epoch ms until which it keeps the instance; key TTL =
 * keep-alive). The client routes a sync/http invocation of that version to the node's own queue
 * (`node.N`) when:
 *   - the advertisement has not expired,
 *   - the node's heartbeat in `P:nodes` is fresh (a dead node's queue gets nothing new), and
 *   - fewer than `maxPending` routed jobs wait for that node (`P:nodeq:N`), so a flood from one tenant can
 *     never queue more than `maxPending` jobs ahead of another tenant's routed job; the rest go to the
 *     per-tenant queues, which every node serves round-robin.
 * Otherwise the job goes to the tenant's queue and any node may take it. Async invocations always go to the
 * tenant queue, so the dead-letter list lives in one queue per tenant.
 *
 * The script builds `P:nodeq:N` from the hash field; node ids are restricted to NODE_ID_RE so that is
 * exactly `keys.nodePending(N)` (this single-key-slot assumption is fine for one Redis or Sentinel; a
 * Redis Cluster deployment would need hash tags).
 */
import type { Redis } from 'ioredis';
import type { Keys } from './keys.ts';

/**
 * KEYS[1] warm hash, KEYS[2] nodes zset
 * ARGV[1] now ms, ARGV[2] stale-before ms, ARGV[3] max pending, ARGV[4] prefix
 * returns the chosen node id, or false.
 */
const ROUTE_LUA = `
local h = redis.call('HGETALL', KEYS[1])
local now = tonumber(ARGV[1])
local best, bestExp = nil, 0
for i = 1, #h, 2 do
  local exp = tonumber(h[i + 1])
  if exp > now and exp > bestExp then
    local hb = redis.call('ZSCORE', KEYS[2], h[i])
    if hb and tonumber(hb) >= tonumber(ARGV[2]) then
      local p = tonumber(redis.call('GET', ARGV[4] .. ':nodeq:' .. h[i]) or '0')
      if p < tonumber(ARGV[3]) then best, bestExp = h[i], exp end
    end
  end
end
if not best then return false end
local pk = ARGV[4] .. ':nodeq:' .. best
redis.call('INCR', pk)
redis.call('EXPIRE', pk, 3600)
return best
`;

/**
 * KEYS[1] pending counter; decrements but never below zero (a counter reset at node start-up may have
 * forgotten jobs that were already counted).
 */
const UNPEND_LUA = `
local v = tonumber(redis.call('GET', KEYS[1]) or '0')
if v > 0 then redis.call('DECR', KEYS[1]) end
return v
`;

/**
 * KEYS[1] warm hash; ARGV[1] node id, ARGV[2] epoch ms until which it keeps the instance. The key's expiry is set
 * for a new key (NX) and only ever pushed forward (GT): another node's later advertisement is never shortened.
 * One command instead of MULTI/HSET/PEXPIREAT/PEXPIREAT/EXEC (ioredis builds a Pipeline object for a MULTI).
 */
const ADVERTISE_LUA = `
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIREAT', KEYS[1], ARGV[2], 'NX')
redis.call('PEXPIREAT', KEYS[1], ARGV[2], 'GT')
return 1
`;

type WithRoute = Redis & {
  fnhostRoute(warm: string, nodes: string, now: number, staleBefore: number, maxPending: number, prefix: string): Promise<string | null>;
  fnhostUnpend(key: string): Promise<number>;
  fnhostAdvertise(warm: string, nodeId: string, untilMs: number): Promise<number>;
};

/** Defines the scripts on a connection; call before its first command. */
export function defineRoutingScripts(redis: Redis): void {
  if (typeof (redis as WithRoute).fnhostRoute !== 'function') {
    redis.defineCommand('fnhostRoute', { numberOfKeys: 2, lua: ROUTE_LUA });
    redis.defineCommand('fnhostUnpend', { numberOfKeys: 1, lua: UNPEND_LUA });
  }
  if (typeof (redis as WithRoute).fnhostAdvertise !== 'function') redis.defineCommand('fnhostAdvertise', { numberOfKeys: 1, lua: ADVERTISE_LUA });
}

function scripts(redis: Redis): WithRoute {
  defineRoutingScripts(redis);
  return redis as WithRoute;
}

/** The node that should run this version, or null for "any node, via the tenant queue". */
export async function routeTo(redis: Redis, keys: Keys, tenant: string, fn: string, version: number, maxPending: number, staleMs: number): Promise<string | null> {
  const now = Date.now();
  return scripts(redis).fnhostRoute(keys.warm(tenant, fn, version), keys.nodes(), now, now - staleMs, maxPending, keys.prefix);
}

/** Called by the node when it picks up a routed job. */
export async function unpend(redis: Redis, keys: Keys, nodeId: string): Promise<void> {
  await scripts(redis).fnhostUnpend(keys.nodePending(nodeId));
}

/** Advertise (until `untilMs`) or withdraw (untilMs = 0) a warm instance of (T, F, V) on `nodeId`. */
export async function advertiseWarm(redis: Redis, keys: Keys, nodeId: string, tenant: string, fn: string, version: number, untilMs: number): Promise<void> {
  const k = keys.warm(tenant, fn, version);
  if (untilMs <= Date.now()) {
    await redis.hdel(k, nodeId);
    return;
  }
  await scripts(redis).fnhostAdvertise(k, nodeId, untilMs);
}
