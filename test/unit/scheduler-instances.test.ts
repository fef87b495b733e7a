/**
 * Pure logic of one node: warm pool, warm pick, cold start, memory admission, caps, keep-alive, retirement,
 * fair waiting. A fake executor stands in for sandboxes (the kernel tests run the same paths for real).
 */
import { describe, expect, it } from 'vitest';
import { WarmPool, DEFAULT_POOL_CONFIG, type PoolConfig } from '../../services/scheduler/pool.ts';
import { Instances, type InstancesConfig, type Lease } from '../../services/scheduler/instances.ts';
import { FairQueue } from '../../services/scheduler/fair-queue.ts';
import { FakeExecutor, fnv } from '../fixtures/scheduler/fake-executor.ts';
import { useCleanups } from '../helpers/hooks.ts';

async function until(cond: () => boolean, ms = 3000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}

const cleanups = useCleanups();

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

describe('placement without waiting (co-located dispatch)', () => {
  it('tryAcquireNow: only a free warm instance, reserved synchronously; never a cold start', async () => {
    const { inst, exec } = setup();
    const fn = fnv();
    expect(inst.tryAcquireNow(fn)).toBeUndefined();
    expect(inst.list().length).toBe(0);
    const a = await inst.acquire(fn);
    expect(inst.tryAcquireNow(fn)).toBeUndefined(); // its only instance is busy (concurrency 1)
    inst.release(a.instance);
    const b = inst.tryAcquireNow(fn)!;
    expect(b).toMatchObject({ start: 'warm', waitedMs: 0 });
    expect(b.instance).toBe(a.instance);
    expect(b.instance.inFlight).toBe(1);
    expect(inst.tryAcquireNow(fn)).toBeUndefined();
    inst.release(b.instance);
    expect(exec.specialised).toBe(1);
  });

  it('acquireNow: a warm Lease at once, or a cold start reserved before the first await', async () => {
    const { inst } = setup({ capacityMb: 256 });
    const fn = fnv({ memoryMb: 128 });
    const p = inst.acquireNow(fn);
    expect(p).toBeInstanceOf(Promise);
    expect(inst.admittedMb).toBe(128); // reserved synchronously
    expect(inst.canPlaceNow(fn)).toBe('cold');
    const a = await (p as Promise<Lease>);
    expect(a.start).toBe('cold');
    inst.release(a.instance);
    expect(inst.canPlaceNow(fn)).toBe('warm');
    const b = inst.acquireNow(fn);
    expect(b).not.toBeInstanceOf(Promise);
    expect((b as Lease).instance).toBe(a.instance);
    inst.release((b as Lease).instance);
  });

  it('acquireNow: undefined where acquire would wait (memory full of busy instances, at the instance cap), nothing reserved', async () => {
    const { inst } = setup({ capacityMb: 256 });
    const a = await inst.acquire(fnv({ name: 'a', memoryMb: 128 }));
    const b = await inst.acquire(fnv({ name: 'b', memoryMb: 128 }));
    const c = fnv({ name: 'c', memoryMb: 128 });
    expect(inst.canPlaceNow(c)).toBeUndefined();
    expect(inst.acquireNow(c)).toBeUndefined();
    expect(inst.admittedMb).toBe(256);
    inst.release(b.instance); // idle now: evictable for c
    expect(inst.canPlaceNow(c)).toBe('cold');
    expect(b.instance.state).toBe('live'); // the check evicted nothing
    const capped = fnv({ name: 'a', memoryMb: 128, maxInstances: 1 });
    expect(inst.acquireNow(capped)).toBeUndefined(); // a's one instance is busy and it may not have two
    const lc = await (inst.acquireNow(c) as Promise<Lease>);
    expect(b.instance.state).toBe('dead'); // evicted (LRU idle) to make room, as acquire() would
    expect(inst.admittedMb).toBe(256);
    inst.release(lc.instance);
    inst.release(a.instance);
  });

  it('acquireNow never overtakes invocations waiting here, and never throws', async () => {
    const { inst } = setup();
    const fn = fnv({ maxInstances: 1 });
    const a = await inst.acquire(fn);
    const waiter = inst.acquire(fn);
    inst.release(a.instance);
    // the waiter was handed the instance in release(): nothing free for a newcomer
    expect(inst.tryAcquireNow(fn)).toBeUndefined();
    const w = await waiter;
    expect(w.instance).toBe(a.instance);
    const w2 = inst.acquire(fn); // waits for w
    expect(inst.waiting()).toBe(1);
    expect(inst.acquireNow(fnv({ name: 'other' }))).toBeUndefined(); // no cold start past a waiter either
    expect(inst.acquireNow(fnv({ memoryMb: 1 << 20 }))).toBeUndefined(); // above capacity: the queue path reports it
    inst.release(w.instance);
    inst.release((await w2).instance);
    await inst.close(0);
    expect(inst.acquireNow(fn)).toBeUndefined();
    expect(inst.canPlaceNow(fn)).toBeUndefined();
  });

  it('a failed cold start from acquireNow rejects typed and frees its reservation', async () => {
    const { inst, exec } = setup();
    exec.failCreate = true;
    const p = inst.acquireNow(fnv({ runtime: 'python' }));
    await expect(p).rejects.toThrow('create failed');
    expect(inst.admittedMb).toBe(0);
    expect(inst.list().length).toBe(0);
    exec.failCreate = false;
  });
});

describe('waiting', () => {
  it('waiters of one function are served FIFO as its instances free up', async () => {
    const { inst } = setup();
    const fn = fnv({ maxInstances: 2 });
    const [a, b] = await Promise.all([inst.acquire(fn), inst.acquire(fn)]);
    const order: number[] = [];
    // each waiter gives its instance back on the next turn of the event loop, as a short invocation would
    const ws = Array.from({ length: 6 }, (_, k) =>
      inst.acquire(fn).then((l) => {
        order.push(k);
        setImmediate(() => inst.release(l.instance));
        return l;
      }),
    );
    expect(inst.waiting()).toBe(6);
    inst.release(a.instance);
    inst.release(b.instance);
    const got = await Promise.all(ws);
    expect(order).toEqual([0, 1, 2, 3, 4, 5]);
    expect(got.every((l) => l.start === 'warm')).toBe(true);
    expect(inst.list().length).toBe(2);
    await until(() => inst.list().every((i) => i.inFlight === 0));
  });

  it("a freed instance is not simply handed on within the function while another tenant waits for memory", async () => {
    const { inst } = setup({ capacityMb: 256 });
    const a = fnv({ tenant: 'A', memoryMb: 128 });
    const b = fnv({ tenant: 'B', memoryMb: 128 });
    const held = [await inst.acquire(a), await inst.acquire(a)];
    const aWaiters = Array.from({ length: 3 }, () => inst.acquire(a));
    let bServed = false;
    const bWaiter = inst.acquire(b).then((l) => ((bServed = true), l));
    // A is served on its turn, then B's turn comes: A's idle instance is evicted to make room for B
    for (const l of held) {
      inst.release(l.instance);
      await new Promise((r) => setImmediate(r));
    }
    expect(bServed).toBe(true);
    const lb = await bWaiter;
    expect(lb.start).toBe('cold');
    inst.release(lb.instance);
    for (const w of aWaiters) inst.release((await w).instance);
  });

  it('expiry: each waiter gets its own limit (deadline → Timeout, maxWaitMs → TooManyRequests) from one timer', async () => {
    const { inst } = setup({ maxWaitMs: 300 });
    const fn = fnv({ maxInstances: 1 });
    const a = await inst.acquire(fn);
    const t0 = Date.now();
    const late = inst.acquire(fn).catch((e) => ({ e, at: Date.now() - t0 }));
    const soon = inst.acquire(fn, Date.now() + 40).catch((e) => ({ e, at: Date.now() - t0 }));
    const r1 = (await soon) as { e: { type: string }; at: number };
    expect(r1.e.type).toBe('Timeout');
    expect(r1.at).toBeLessThan(250);
    expect(inst.waiting()).toBe(1);
    const r2 = (await late) as { e: { type: string }; at: number };
    expect(r2.e.type).toBe('TooManyRequests');
    expect(r2.at).toBeGreaterThanOrEqual(290);
    expect(inst.waiting()).toBe(0);
    inst.release(a.instance);
    // an expired waiter is never served: the instance stays free
    expect(inst.tryAcquireNow(fn)).toBeDefined();
  });
});

describe('hot set of a short function', () => {
  const quick = { kind: 'event' as const, body: Buffer.from('{}') };
  /** one call as the scheduler makes it: acquire → invoke → release */
  async function call(inst: Instances, fn: ReturnType<typeof fnv>, payload = quick) {
    const l = await inst.acquire(fn);
    try {
      return await l.instance.handle!.invoke({ id: 'x', payload, deadline: Date.now() + 5000 });
    } finally {
      inst.release(l.instance);
    }
  }
  function hotSetup(over: Partial<InstancesConfig> = {}) {
    const s = setup({ hotInstances: 2, ...over });
    s.exec.reportRunMs = true;
    return s;
  }

  it('a short function runs on at most hotInstances at once; the others wait and are served in order', async () => {
    const { inst } = hotSetup();
    const fn = fnv({ maxInstances: 8 });
    // 8 instances exist (8 at once before the function is known to be short), then ≥ 16 short calls
    await Promise.all(Array.from({ length: 8 }, () => call(inst, fn)));
    expect(inst.list().length).toBe(8);
    for (let k = 0; k < 20; k++) await call(inst, fn);
    const leases = await Promise.all([inst.acquire(fn), inst.acquire(fn)]);
    const order: number[] = [];
    const waiting = Array.from({ length: 4 }, (_, k) => inst.acquire(fn).then((l) => (order.push(k), l)));
    await new Promise((r) => setTimeout(r, 2));
    expect(inst.waiting()).toBe(4); // 6 idle instances, yet only 2 busy
    expect(inst.list().filter((i) => i.inFlight > 0).length).toBe(2);
    expect(inst.canPlaceNow(fn)).toBe('warm'); // served by the hot set shortly: worth dispatching here
    expect(inst.tryAcquireNow(fn)).toBeUndefined();
    const viaNow = inst.acquireNow(fn);
    expect(viaNow).toBeInstanceOf(Promise); // joins the FIFO behind the 4
    for (const l of leases) inst.release(l.instance);
    await new Promise((r) => setImmediate(r));
    expect(order).toEqual([0, 1]); // two slots freed: handed to the two oldest
    // (the other two follow once these have run for HOT_STUCK_MS, or when they are released)
    const served = await Promise.all(waiting);
    expect(served.slice(0, 2).map((l) => l.instance).sort((a, b) => a.seq - b.seq)).toEqual(leases.map((l) => l.instance).sort((a, b) => a.seq - b.seq));
    for (const l of [...served, await (viaNow as Promise<Lease>)]) inst.release(l.instance);
    expect(inst.waiting()).toBe(0);
    expect(inst.list().length).toBe(8); // no cold start while the hot set served
  });

  it('a call that runs long stops counting: a waiter gets another instance within ~HOT_STUCK_MS', async () => {
    const { inst } = hotSetup();
    const fn = fnv({ maxInstances: 4 });
    await Promise.all(Array.from({ length: 4 }, () => call(inst, fn)));
    for (let k = 0; k < 20; k++) await call(inst, fn);
    const slow = { kind: 'event' as const, body: Buffer.from('{"sleep":300}') };
    const long = [call(inst, fn, slow), call(inst, fn, slow)];
    const t0 = Date.now();
    await call(inst, fn); // not stuck behind the two 300 ms calls
    expect(Date.now() - t0).toBeLessThan(200);
    await Promise.all(long);
  });

  it('after growing past its hot set (calls that looked stuck), it shrinks back: freed extra instances are not handed on', async () => {
    const { inst } = hotSetup();
    const fn = fnv({ maxInstances: 4 });
    await Promise.all(Array.from({ length: 4 }, () => call(inst, fn)));
    for (let k = 0; k < 20; k++) await call(inst, fn);
    const [a, b] = await Promise.all([inst.acquire(fn), inst.acquire(fn)]);
    // a and b are held past HOT_STUCK_MS with nothing returning: two waiters get the other two instances
    const [c, d] = await Promise.all([inst.acquire(fn), inst.acquire(fn)]);
    expect(new Set([a, b, c, d].map((l) => l.instance)).size).toBe(4);
    const later = [inst.acquire(fn), inst.acquire(fn)];
    expect(inst.waiting()).toBe(2);
    inst.release(a.instance);
    inst.release(b.instance);
    // c and d are the hot set now: a and b stay idle, the waiters wait for c and d
    expect(inst.waiting()).toBe(2);
    expect(a.instance.inFlight + b.instance.inFlight).toBe(0);
    inst.release(c.instance);
    inst.release(d.instance);
    const served = await Promise.all(later);
    expect(served.map((l) => l.instance).sort((x, y) => x.seq - y.seq)).toEqual([c.instance, d.instance].sort((x, y) => x.seq - y.seq));
    for (const l of served) inst.release(l.instance);
  });

  it('a function that is not short uses every instance it may have', async () => {
    const { inst } = hotSetup();
    const fn = fnv({ maxInstances: 6 });
    const slowish = { kind: 'event' as const, body: Buffer.from('{"sleep":5}') };
    for (let k = 0; k < 20; k++) await call(inst, fn, slowish);
    const leases = await Promise.all(Array.from({ length: 6 }, () => inst.acquire(fn)));
    expect(new Set(leases.map((l) => l.instance)).size).toBe(6);
    expect(inst.waiting()).toBe(0);
    for (const l of leases) inst.release(l.instance);
  });

  it('a function whose short calls wait (I/O) rather than compute is not held to the hot set', async () => {
    const { inst } = hotSetup();
    const fn = fnv({ maxInstances: 6 });
    const waits = { kind: 'event' as const, body: Buffer.from('{"sleep":1}') }; // ≈1 ms, under shortRunMs, blocked
    for (let k = 0; k < 20; k++) await call(inst, fn, waits);
    const leases = await Promise.all(Array.from({ length: 6 }, () => inst.acquire(fn)));
    expect(new Set(leases.map((l) => l.instance)).size).toBe(6);
    expect(inst.waiting()).toBe(0);
    for (const l of leases) inst.release(l.instance);
  });

  it('hotInstances 0 turns it off', async () => {
    const { inst } = hotSetup({ hotInstances: 0 });
    const fn = fnv({ maxInstances: 4 });
    for (let k = 0; k < 20; k++) await call(inst, fn);
    const leases = await Promise.all(Array.from({ length: 4 }, () => inst.acquire(fn)));
    expect(new Set(leases.map((l) => l.instance)).size).toBe(4);
    for (const l of leases) inst.release(l.instance);
  });
});

describe('fair queue', () => {
  it('a function whose oldest waiter cannot be served does not block the tenant\'s other functions', () => {
    const q = new FairQueue<string>();
    const served: string[] = [];
    let attempts = 0;
    const free = new Set<string>();
    const mk = (group: string, tag: string) => ({
      tenant: 'A',
      group,
      attempt: () => (attempts++, free.has(group) ? (free.delete(group), tag) : undefined),
      resolve: (v: string) => served.push(v),
      reject: () => served.push('!' + tag),
    });
    for (let i = 0; i < 50; i++) q.push(mk('x', `x${i}`));
    q.push(mk('y', 'y0'));
    expect(q.countGroup('A', 'x')).toBe(50);
    free.add('y');
    q.pump();
    expect(served).toEqual(['y0']);
    expect(attempts).toBeLessThanOrEqual(4); // x's head once per round, not each of its 50
    expect(q.shiftGroup('A', 'x')).toMatchObject({ group: 'x' });
    expect(q.countGroup('A', 'x')).toBe(49);
    expect(q.size).toBe(49);
  });

  it('random pushes, removals, hand-overs and pumps: every waiter settles once, FIFO within its group, sizes add up', () => {
    let seed = 7;
    const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) % n);
    const q = new FairQueue<number>();
    const settled = new Map<number, string>();
    const pending: Array<{ id: number; w: Parameters<typeof q.push>[0] }> = [];
    const servedOrder = new Map<string, number[]>();
    let free = 0;
    let next = 0;
    for (let step = 0; step < 5000; step++) {
      const op = rnd(10);
      if (op < 5) {
        const id = next++;
        const tenant = `t${rnd(3)}`;
        const group = `g${rnd(3)}`;
        const w = {
          tenant,
          group,
          attempt: () => (free > 0 ? (free--, id) : undefined),
          resolve: (v: number) => {
            expect(settled.has(v)).toBe(false);
            settled.set(v, 'served');
            const k = `${tenant}/${group}`;
            servedOrder.set(k, [...(servedOrder.get(k) ?? []), v]);
          },
          reject: () => settled.set(id, 'rejected'),
        };
        q.push(w);
        pending.push({ id, w });
      } else if (op < 7 && pending.length) {
        const [p] = pending.splice(rnd(pending.length), 1);
        if (q.remove(p!.w)) settled.set(p!.id, 'removed');
      } else if (op < 8 && pending.length) {
        const p = pending[rnd(pending.length)]!;
        const w = q.shiftGroup(p.w.tenant, p.w.group!);
        if (w) w.resolve(pending.find((x) => x.w === w)!.id); // the caller hands over capacity of its own
      } else {
        free += rnd(4);
        q.pump();
      }
      const waiting = pending.filter((p) => !settled.has(p.id)).length;
      expect(q.size).toBe(waiting);
    }
    for (const ids of servedOrder.values()) expect(ids).toEqual([...ids].sort((a, b) => a - b));
  });

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
