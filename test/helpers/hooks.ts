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
