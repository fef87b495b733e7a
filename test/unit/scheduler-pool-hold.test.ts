/**
 * The warm pool's refill after a take (services/scheduler/pool.ts): it waits `holdAfterTakeMs`, so the cold start
 * that took the sandbox has the CPU to itself — and the refill loop is not even woken inside that cold start.
 * Pure logic: a fake executor that counts creations.
 */
import { describe, expect, it } from 'vitest';
import { DEFAULT_POOL_CONFIG, WarmPool } from '../../services/scheduler/pool.ts';
import type { Executor, PooledSandbox } from '../../services/scheduler/executor.ts';
import { until } from '../helpers/until.ts';

function fakeExecutor() {
  let created = 0;
  const exec = {
    kindOf: () => 'exec',
    createPooled: async (kind: string): Promise<PooledSandbox> => {
      created++;
      return { kind, alive: true, destroy: async () => {} };
    },
    specialise: async () => {
      throw new Error('not used');
    },
  } as unknown as Executor;
  return { exec, created: () => created };
}

describe('warm pool refill after a take', () => {
  it('starts no creation until holdAfterTakeMs has passed, then refills', async () => {
    const f = fakeExecutor();
    const pool = new WarmPool(f.exec, { ...DEFAULT_POOL_CONFIG, kinds: { exec: { min: 2, max: 2 } }, default: { min: 0, max: 0 }, holdAfterTakeMs: 150 }, { busy: () => false });
    pool.start();
    try {
      await until(() => pool.idleCount('exec'), (n) => n === 2);
      const before = f.created();
      const t0 = Date.now();
      expect(pool.take('exec')).not.toBeNull();
      // microtasks and a few loop turns: the refill loop has not been woken (no creation, none in progress)
      for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
      expect(f.created()).toBe(before);
      expect(pool.stats().kinds.exec!.creating).toBe(0);
      await until(() => f.created(), (n) => n === before + 1, 2000, 5);
      expect(Date.now() - t0).toBeGreaterThanOrEqual(140);
      await until(() => pool.idleCount('exec'), (n) => n === 2);
    } finally {
      await pool.close();
    }
  });
});
