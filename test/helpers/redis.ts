import type { Redis } from 'ioredis';
import { inject } from 'vitest';

/** URL of the run's real redis-server (started by test/global-setup.ts). */
export function redisUrl(): string {
  return inject('redisUrl');
}

/**
 * Keys matching `pattern` whose value contains `s` (strings, hashes, lists, sets, sorted sets, streams), sorted: what
 * of a thing is left in Redis.
 * @example
 * expect(await keysHolding(redis, `${prefix}:*`, invocationId)).toEqual([]);
 */
export async function keysHolding(redis: Redis, pattern: string, s: string): Promise<string[]> {
  const out: string[] = [];
  for (const k of await redis.keys(pattern)) {
    const type = await redis.type(k);
    let text = '';
    if (type === 'string') text = (await redis.getBuffer(k))?.toString('latin1') ?? '';
    else if (type === 'hash') text = JSON.stringify(await redis.hgetall(k));
    else if (type === 'list') text = JSON.stringify(await redis.lrange(k, 0, -1));
    else if (type === 'set') text = JSON.stringify(await redis.smembers(k));
    else if (type === 'zset') text = JSON.stringify(await redis.zrange(k, 0, -1));
    else if (type === 'stream') text = JSON.stringify(await redis.xrange(k, '-', '+'));
    if (text.includes(s)) out.push(k);
  }
  return out.sort();
}
