/**
 * Per-file test hooks shared by the scheduler's tests: one Redis connection for the file, and clean-ups a test
 * registers as it creates things (schedulers, clients, keys), run after it in reverse order.
 *
 * @example
 * const redis = useRedis();
 * const cleanups = useCleanups();
 * it('…', async () => { const s = createScheduler(…); cleanups.push(() => s.close()); … });
 */
import { afterAll, afterEach } from 'vitest';
import { Redis } from 'ioredis';
import { redisUrl } from './redis.ts';

/** A connection to the run's redis-server for this file, closed after its last test. */
export function useRedis(): Redis {
  const redis = new Redis(redisUrl());
  afterAll(async () => {
    await redis.quit();
  });
  return redis;
}

/** A list the file's tests push clean-ups to; after each test they run, last pushed first. */
export function useCleanups(): Array<() => Promise<void>> {
  const cleanups: Array<() => Promise<void>> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });
  return cleanups;
}

/**
 * Keys under `prefix` with no TTL, other than the ones the scheduler keeps by design (the tenants set, its
 * BullMQ channel and BullMQ's queues) and `allowed`: anything else would outlive every retention period.
 *
 * @example
 * expect(await keysWithoutTtl(redis, prefix)).toEqual([]);
 */
export async function keysWithoutTtl(redis: Redis, prefix: string, allowed: string[] = []): Promise<string[]> {
  const out: string[] = [];
  for (const k of await redis.keys(`${prefix}:*`)) {
    if (k === `${prefix}:tenants` || k === `${prefix}:tenants:bull` || k.startsWith(`${prefix}:bull:`) || allowed.includes(k)) continue;
    if ((await redis.ttl(k)) < 0) out.push(k);
  }
  return out;
}
