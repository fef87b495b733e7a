/**
 * Instances.retire (services/scheduler/instances.ts), used when a function version is deleted: the matched
 * version's idle instance is destroyed at once and its memory leaves the admitted sum; a busy one finishes its
 * call, is never handed another, and goes on release; other versions are untouched. Pure logic over the fake executor.
 */
import { describe, expect, it } from 'vitest';
import { WarmPool, DEFAULT_POOL_CONFIG } from '../../services/scheduler/pool.ts';
import { Instances } from '../../services/scheduler/instances.ts';
import { FakeExecutor, fnv } from '../fixtures/scheduler/fake-executor.ts';
import { useCleanups } from '../helpers/hooks.ts';

const cleanups = useCleanups();

function setup(capacityMb = 1024) {
  const exec = new FakeExecutor();
  const pool = new WarmPool(exec, { ...DEFAULT_POOL_CONFIG, kinds: { node: { min: 0, max: 4 } }, default: { min: 0, max: 4 } });
  const inst = new Instances(exec, pool, { capacityMb, keepAliveMs: 60_000, maxWaitMs: 2000, maxWaitersPerFunction: 100, hotInstances: 0 });
  cleanups.push(async () => {
    await inst.close(0);
    await pool.close();
    expect(exec.live.size).toBe(0);
  });
  return { exec, inst };
}

const isV = (name: string, version: number) => (fn: { name: string; version: number }) => fn.name === name && fn.version === version;

describe('Instances.retire', () => {
  it('destroys the idle instances of the version now, frees their memory, leaves other versions', async () => {
    const { exec, inst } = setup();
    const v1 = fnv({ version: 1 });
    const v2 = fnv({ version: 2 });
    // v2 first: placing v1 after it retires nothing (retireOlder only retires versions older than the one placed)
    for (const fn of [v2, v1]) inst.release((await inst.acquire(fn, Date.now() + 2000)).instance);
    expect(inst.list().map((i) => i.fn.version).sort()).toEqual([1, 2]);
    expect(inst.admittedMb).toBe(256);
    expect(inst.retire(isV('f', 1))).toBe(1);
    expect(inst.list().map((i) => i.fn.version)).toEqual([2]);
    expect(inst.admittedMb).toBe(128);
    expect(exec.destroyed).toBe(1);
    expect(inst.retire(isV('f', 1))).toBe(0);
  });

  it('a busy instance finishes its call, gets no other, and is destroyed on release', async () => {
    const { exec, inst } = setup();
    const v1 = fnv({ version: 1, concurrency: 2 });
    const lease = await inst.acquire(v1, Date.now() + 2000);
    expect(inst.retire(isV('f', 1))).toBe(1);
    expect(lease.instance.state).toBe('retiring');
    // the next call of v1 (say, an async job checked just before the delete) gets a new instance, not this one
    const next = await inst.acquire(v1, Date.now() + 2000);
    expect(next.instance).not.toBe(lease.instance);
    expect(next.start).toBe('cold');
    inst.release(lease.instance);
    expect(lease.instance.state).toBe('dead');
    expect(exec.destroyed).toBe(1);
    inst.release(next.instance);
  });
});
