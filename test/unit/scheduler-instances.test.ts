/**
 * Pure logic of one node: warm pool, warm pick, cold start, memory admission, caps, keep-alive, retirement,
 * fair waiting. A fake executor stands in for sandboxes (the kernel tests run the same paths for real).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { WarmPool, DEFAULT_POOL_CONFIG, type PoolConfig } from '../../services/scheduler/pool.ts';
import { Instances, type InstancesConfig } from '../../services/scheduler/instances.ts';
import { FairQueue } from '../../services/scheduler/fair-queue.ts';
import { FakeExecutor, fnv } from '../fixtures/scheduler/fake-executor.ts';

async function until(cond: () => boolean, ms = 3000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function setup(inst: Partial<InstancesConfig> = {}, pool: Partial<PoolConfig> = {}, busy?: () => boolean) {
  const exec = new FakeExecutor();
  const p = new WarmPool(exec, { ...DEFAULT_POOL_CONFIG, kinds: { node: { min: 2, max: 8 } }, default: { min: 0, max: 4 }, ...pool }, { busy });
  const i = new Instances(exec, p, { capacityMb: 1024, keepAliveMs: 60_000, maxWaitMs: 2000, maxWaitersPerFunction: 100, ...inst });
  cleanups.push(async () => {
    await i.close(0);
    await p.close();
    expect(exec.live.size).toBe(0);
  });
  return { exec, pool: p, inst: i };
}

describe('warm pool', () => {
  it('fills to min in the background and refills after a take', async () => {
    const { exec, pool } = setup();
    pool.start();
    await until(() => pool.idleCount('node') === 2);
    const sb = pool.take('node');
    expect(sb).not.toBeNull();
    await until(() => pool.idleCount('node') === 2);
    expect(exec.created).toBeGreaterThanOrEqual(3);
    await sb!.destroy();
  });

  it('grows its target with recent cold starts, bounded by max', async () => {
    const { pool } = setup();
    for (let k = 0; k < 20; k++) pool.take('node')?.destroy();
    expect(pool.target('node')).toBe(8);
    expect(pool.target('python')).toBe(0);
  });

  it('respects the refill rate', async () => {
    const { exec, pool } = setup({}, { kinds: { node: { min: 50, max: 50 } }, refillPerSec: 100, refillConcurrency: 2 });
    pool.start();
    await new Promise((r) => setTimeout(r, 200));
    // 200 ms at 100/s plus a burst of 4 tokens: never anywhere near the 50 asked for
    expect(exec.created).toBeLessThanOrEqual(30);
    expect(exec.created).toBeGreaterThanOrEqual(5);
  });

  it('refills faster while the node is idle', async () => {
    const cfg = { kinds: { node: { min: 500, max: 500 } }, refillPerSec: 100, refillConcurrency: 2, idleRefillPerSec: 2000, idleRefillConcurrency: 2 };
    const busy = setup({}, cfg, () => true);
    const idle = setup({}, cfg, () => false);
    busy.pool.start();
    idle.pool.start();
    await new Promise((r) => setTimeout(r, 200));
    expect(busy.exec.created).toBeLessThanOrEqual(30); // ≈ 0.2 s × 100/s + burst
    expect(idle.exec.created).toBeGreaterThan(2 * busy.exec.created);
  });

  it('backs off a kind whose creation fails', async () => {
    const { exec, pool } = setup();
    exec.failCreate = true;
    pool.start();
    await new Promise((r) => setTimeout(r, 300));
    expect(pool.idleCount('node')).toBe(0);
    // at 400/s without back-off this would be ~120 attempts; with 0.2 s, 0.4 s ... back-off a handful
    expect(exec.createAttempts).toBeGreaterThanOrEqual(2);
    expect(exec.createAttempts).toBeLessThanOrEqual(8);
    exec.failCreate = false;
  });
});

describe('instances', () => {
  it('cold then warm on the same instance', async () => {
    const { inst } = setup();
    const fn = fnv();
    const a = await inst.acquire(fn);
    expect(a.start).toBe('cold');
    inst.release(a.instance);
    const b = await inst.acquire(fn);
    expect(b.start).toBe('warm');
    expect(b.instance).toBe(a.instance);
    inst.release(b.instance);
  });

  it('a busy instance is not shared beyond fn.concurrency', async () => {
    const { inst } = setup();
    const a = await inst.acquire(fnv());
    const b = await inst.acquire(fnv());
    expect(b.start).toBe('cold');
    expect(b.instance).not.toBe(a.instance);
    const c2 = fnv({ name: 'g', concurrency: 2 });
    const x = await inst.acquire(c2);
    const y = await inst.acquire(c2);
    expect(y.instance).toBe(x.instance);
    expect(y.start).toBe('warm');
    for (const l of [a, b, x, y]) inst.release(l.instance);
  });

  it('memory: caps summing over capacity never run together; idle LRU is evicted first', async () => {
    const { inst, exec } = setup({ capacityMb: 256 });
    const a = await inst.acquire(fnv({ name: 'a', memoryMb: 128 }));
    const b = await inst.acquire(fnv({ name: 'b', memoryMb: 128 }));
    expect(inst.admittedMb).toBe(256);
    // c must wait: both a and b are busy
    let cDone = false;
    const cP = inst.acquire(fnv({ name: 'c', memoryMb: 128 })).then((l) => ((cDone = true), l));
    await new Promise((r) => setTimeout(r, 30));
    expect(cDone).toBe(false);
    expect(inst.admittedMb).toBeLessThanOrEqual(256);
    inst.release(a.instance); // a idle → evicted for c
    const c = await cP;
    expect(c.start).toBe('cold');
    expect(inst.list().map((i) => i.fn.name).sort()).toEqual(['b', 'c']);
    expect(inst.admittedMb).toBe(256);
    inst.release(b.instance);
    inst.release(c.instance);
    // LRU: b was released before c, so a new 128 MiB function evicts b, not c
    const d = await inst.acquire(fnv({ name: 'd', memoryMb: 128 }));
    expect(inst.list().map((i) => i.fn.name).sort()).toEqual(['c', 'd']);
    inst.release(d.instance);
    await until(() => exec.live.size === 2);
  });

  it('a cap above the node capacity is LimitExceeded at once', async () => {
    const { inst } = setup({ capacityMb: 256 });
    await expect(inst.acquire(fnv({ memoryMb: 512 }))).rejects.toMatchObject({ type: 'LimitExceeded' });
    expect(inst.admittedMb).toBe(0);
  });

  it('waiting is bounded: TooManyRequests after maxWaitMs', async () => {
    const { inst } = setup({ capacityMb: 128, maxWaitMs: 50 });
    const a = await inst.acquire(fnv({ name: 'a' }));
    await expect(inst.acquire(fnv({ name: 'b' }))).rejects.toMatchObject({ type: 'TooManyRequests' });
    inst.release(a.instance);
  });

  it('per-function instance cap: waits for the instance, never runs over the cap', async () => {
    const { inst } = setup();
    const fn = fnv({ maxInstances: 1 });
    const a = await inst.acquire(fn);
    const bP = inst.acquire(fn);
    await new Promise((r) => setTimeout(r, 20));
    expect(inst.list().length).toBe(1);
    inst.release(a.instance);
    const b = await bP;
    expect(b.start).toBe('warm');
    expect(b.instance).toBe(a.instance);
    inst.release(b.instance);
  });

  it('waiters over maxWaitersPerFunction are refused', async () => {
    const { inst } = setup({ maxWaitersPerFunction: 1 });
    const fn = fnv({ maxInstances: 1 });
    const a = await inst.acquire(fn);
    const w1 = inst.acquire(fn);
    await expect(inst.acquire(fn)).rejects.toMatchObject({ type: 'TooManyRequests' });
    inst.release(a.instance);
    inst.release((await w1).instance);
  });

  it('keep-alive expiry destroys the instance and frees its memory', async () => {
    const { inst, exec, pool } = setup({ keepAliveMs: 40 });
    inst.start(10);
    const a = await inst.acquire(fnv());
    inst.release(a.instance);
    await until(() => inst.list().length === 0);
    expect(inst.admittedMb).toBe(0);
    expect(exec.live.size).toBe(pool.idleCount());
  });

  it('a new version (changed cap) retires old instances; busy ones when they finish', async () => {
    const { inst } = setup();
    const v1 = fnv({ memoryMb: 128 });
    const idle = await inst.acquire(v1);
    const busy = await inst.acquire(v1);
    inst.release(idle.instance);
    const v2 = await inst.acquire(fnv({ version: 2, memoryMb: 256 }));
    expect(v2.start).toBe('cold');
    expect(idle.instance.state).toBe('dead');
    expect(busy.instance.state).toBe('retiring');
    inst.release(busy.instance);
    expect(busy.instance.state).toBe('dead');
    expect(inst.list().map((i) => i.memoryMb)).toEqual([256]);
    // an explicit call of the old version cold-starts it (never served by v2's instance)
    inst.release(v2.instance);
  });

  it('fatal outcomes destroy the instance; the next call is a cold start', async () => {
    const { inst, exec } = setup();
    const a = await inst.acquire(fnv());
    await expect(a.instance.handle!.invoke({ id: 'x', payload: { kind: 'event', body: Buffer.from('{"fail":"OutOfMemory"}') }, deadline: Date.now() + 1000 })).rejects.toMatchObject({ type: 'OutOfMemory' });
    inst.release(a.instance, true);
    expect(inst.list().length).toBe(0);
    const b = await inst.acquire(fnv());
    expect(b.start).toBe('cold');
    expect(b.instance).not.toBe(a.instance);
    inst.release(b.instance);
    expect(exec.live.size).toBe(1);
  });

  it('a failed specialisation frees its reservation', async () => {
    const { inst, exec } = setup();
    exec.failCreate = true;
    await expect(inst.acquire(fnv({ runtime: 'python' }))).rejects.toThrow('create failed');
    expect(inst.admittedMb).toBe(0);
    expect(inst.list().length).toBe(0);
    exec.failCreate = false;
  });

  it('close rejects waiters and leaves nothing', async () => {
    const { inst, exec } = setup({ capacityMb: 128 });
    const a = await inst.acquire(fnv({ name: 'a' }));
    const w = inst.acquire(fnv({ name: 'b' }));
    inst.release(a.instance);
    await w.then((l) => inst.release(l.instance));
    await inst.close(0);
    expect(inst.list().length).toBe(0);
    expect(exec.live.size).toBe(0);
  });
});

describe('fair queue', () => {
  it('serves tenants round-robin, FIFO within a tenant', () => {
    const q = new FairQueue<number>();
    const served: string[] = [];
    let capacity = 0;
    const mk = (tenant: string, tag: string) => ({
      tenant,
      attempt: () => (capacity > 0 ? capacity-- : undefined),
      resolve: () => served.push(tag),
      reject: () => served.push('!' + tag),
    });
    for (let i = 0; i < 5; i++) q.push(mk('A', `A${i}`));
    q.push(mk('B', 'B0'));
    q.push(mk('C', 'C0'));
    capacity = 4;
    q.pump();
    expect(served).toEqual(['A0', 'B0', 'C0', 'A1']);
    capacity = 10;
    q.pump();
    expect(served.slice(4)).toEqual(['A2', 'A3', 'A4']);
    expect(q.size).toBe(0);
  });
});
