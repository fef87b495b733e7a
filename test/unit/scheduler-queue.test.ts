/**
 * The queue side of the scheduler against a real Redis with real BullMQ: client ↔ workers, result delivery,
 * records, async retries + dead letters + redrive, idempotency, logs, fair sharing, routing, retention,
 * shutdown. Sandboxes are faked (the kernel tests run real ones); everything Redis is real.
 */
import { describe, expect, it } from 'vitest';
import { Redis } from 'ioredis';
import { randomUUID } from 'node:crypto';
import { redisUrl } from '../helpers/redis.ts';
import { Queue } from 'bullmq';
import { bullConnection, createInvocationClient } from '../../services/scheduler/client.ts';
import { fastPush } from '../../services/scheduler/fast-lane.ts';
import { fnRefOf } from '../../services/scheduler/fn-refs.ts';
import { createKeys } from '../../services/scheduler/keys.ts';
import { routeTo, unpend } from '../../services/scheduler/routing.ts';
import { createScheduler, type Scheduler } from '../../services/scheduler/scheduler.ts';
import { createMetrics } from '../../services/common/metrics.ts';
import { createLogger } from '../../services/common/log.ts';
import { FakeExecutor, fnv } from '../fixtures/scheduler/fake-executor.ts';
import type { FunctionVersion } from '../../services/common/model.ts';
import type { InvocationClient } from '../../services/scheduler/types.ts';
import { until } from '../helpers/until.ts';
import { useRedis, useCleanups, keysWithoutTtl } from '../helpers/hooks.ts';

const silent = createLogger('test', 'silent');
const redis = useRedis();
const cleanups = useCleanups();

interface Env {
  prefix: string;
  client: InvocationClient;
  sched: Scheduler;
  exec: FakeExecutor;
  fn: (over?: Partial<FunctionVersion>) => FunctionVersion;
}

async function env(opts: { capacityMb?: number; tenantConcurrency?: number; nodeConcurrency?: number; nodeId?: string; keepAliveMs?: number; idleWorkerMs?: number } = {}): Promise<Env> {
  const prefix = `t-${randomUUID().slice(0, 8)}`;
  const exec = new FakeExecutor();
  const sched = createScheduler({
    redisUrl: redisUrl(), prefix, nodeId: opts.nodeId ?? 'n1', executor: exec, capacityMb: opts.capacityMb ?? 4096,
    keepAliveMs: opts.keepAliveMs ?? 60_000, tenantConcurrency: opts.tenantConcurrency, nodeConcurrency: opts.nodeConcurrency, idleWorkerMs: opts.idleWorkerMs, metrics: createMetrics({ defaultMetrics: false }), logger: silent,
    pool: { kinds: { node: { min: 1, max: 4 } } },
  });
  await sched.start();
  const client = createInvocationClient({ redisUrl: redisUrl(), prefix });
  cleanups.push(async () => {
    await client.close();
    await sched.close(5000);
    expect(exec.live.size).toBe(0);
    // nothing of this prefix without a TTL except the tenants set and BullMQ's own queue bookkeeping
    expect(await keysWithoutTtl(redis, prefix)).toEqual([]);
    const keys = await redis.keys(`${prefix}:*`);
    if (keys.length) await redis.del(...keys);
  });
  const tenant = `ten-${randomUUID().slice(0, 6)}`;
  return { prefix, client, sched, exec, fn: (over = {}) => fnv({ tenant, ...over }) };
}

const ev = (o: unknown) => ({ kind: 'event' as const, body: Buffer.from(JSON.stringify(o)) });

describe('sync invocations through BullMQ', () => {
  it('cold then warm on the same instance; records readable', async () => {
    const e = await env();
    const fn = e.fn();
    const a = await e.client.invoke({ fn, payload: ev({}), mode: 'sync' });
    expect(a.record.start).toBe('cold');
    expect(a.record.status).toBe('succeeded');
    const b = await e.client.invoke({ fn, payload: ev({}), mode: 'sync' });
    expect(b.record.start).toBe('warm');
    expect(JSON.parse(b.response.body.toString()).instance).toBe(JSON.parse(a.response.body.toString()).instance);
    const rec = await e.client.get(fn.tenant, b.record.id);
    expect(rec).toMatchObject({ status: 'succeeded', start: 'warm', attempts: 1, function: fn.name });
    expect(rec!.response!.body.equals(b.response.body)).toBe(true);
    expect(await e.client.get('other-tenant', b.record.id)).toBeNull();
  });

  it('binary and large payloads round-trip; a large one travels by reference with a TTL', async () => {
    const e = await env();
    const big = Buffer.alloc(200 * 1024);
    for (let i = 0; i < big.length; i++) big[i] = i % 251;
    const r = await e.client.invoke({ fn: e.fn(), payload: { kind: 'event', body: big }, mode: 'sync' });
    expect(Buffer.from(JSON.parse(r.response.body.toString()).echo, 'base64').equals(big)).toBe(true);
    const ttl = await redis.ttl(`${e.prefix}:payload:${r.record.id}`);
    expect(ttl).toBeGreaterThan(0);
  });

  it('typed errors come back typed with the invocation id; the next call works', async () => {
    const e = await env();
    const fn = e.fn();
    for (const type of ['FunctionError', 'OutOfMemory', 'Timeout', 'Crashed']) {
      const err = await e.client.invoke({ fn, payload: ev({ fail: type }), mode: 'sync' }).catch((x) => x);
      expect(err.type).toBe(type);
      expect(err.details.invocationId).toMatch(/-/);
      const rec = await e.client.get(fn.tenant, err.details.invocationId);
      expect(rec).toMatchObject({ status: 'failed', error: { type } });
      const ok = await e.client.invoke({ fn, payload: ev({}), mode: 'sync' });
      expect(ok.record.status).toBe('succeeded');
    }
  });

  it('bad input is InvalidRequest and enqueues nothing', async () => {
    const e = await env();
    await expect(e.client.invoke({ fn: { ...e.fn(), version: 0 }, payload: ev({}), mode: 'sync' })).rejects.toMatchObject({ type: 'InvalidRequest', details: { field: 'fn.version' } });
    await expect(e.client.invoke({ fn: e.fn(), payload: { kind: 'event', body: 'x' as unknown as Buffer }, mode: 'sync' })).rejects.toMatchObject({ type: 'InvalidRequest' });
    await expect(e.client.enqueue({ fn: e.fn(), payload: ev({}), mode: 'sync' })).rejects.toMatchObject({ type: 'InvalidRequest', details: { field: 'mode' } });
    expect(await redis.keys(`${e.prefix}:inv:*`)).toEqual([]);
  });

  it('a memory cap above the node is LimitExceeded', async () => {
    const e = await env({ capacityMb: 256 });
    await expect(e.client.invoke({ fn: e.fn({ memoryMb: 512 }), payload: ev({}), mode: 'sync' })).rejects.toMatchObject({ type: 'LimitExceeded' });
  });

  it('routes a warm function to the node that has it (both lanes)', async () => {
    const e = await env();
    const fn = e.fn();
    await e.client.invoke({ fn, payload: ev({}), mode: 'sync' });
    await until(() => redis.hget(`${e.prefix}:warm:${fn.tenant}:${fn.name}:${fn.version}`, 'n1'), (v) => v !== null);
    // fast lane: the push script picks the node's own list
    const id = randomUUID();
    const now = Date.now();
    const data = { id, mode: 'sync' as const, fn, payload: { kind: 'event' as const, body: { b64: '' } }, createdAt: now, deadline: now + 10_000 };
    const rec = JSON.stringify({ id, tenant: fn.tenant, function: fn.name, version: 1, mode: 'sync', status: 'queued', attempts: 0, createdAt: now });
    const routed = await fastPush(redis, createKeys(e.prefix), data, rec, { recordTtlS: 60, listTtlMs: 60_000, routing: true, maxPending: 64, staleMs: 3000 });
    expect(routed).toBe('n1');
    expect((await until(() => e.client.get(fn.tenant, id), (r) => r?.status === 'succeeded'))!.start).toBe('warm');
    // a node with a stale heartbeat gets nothing
    const other = { ...data, id: randomUUID() };
    await redis.zadd(`${e.prefix}:nodes`, 1, 'n1');
    expect(await fastPush(redis, createKeys(e.prefix), other, rec, { recordTtlS: 60, listTtlMs: 60_000, routing: true, maxPending: 64, staleMs: 3000 })).toBe('');
    await until(() => e.client.get(fn.tenant, other.id), (r) => r?.status === 'succeeded');
    // BullMQ lane: the routing script picks the node and counts the routed job until the node takes it
    const keys = createKeys(e.prefix);
    await until(() => redis.zscore(`${e.prefix}:nodes`, 'n1'), (s) => Number(s) > Date.now() - 2000);
    expect(await routeTo(redis, keys, fn.tenant, fn.name, fn.version, 64, 3000)).toBe('n1');
    expect(await redis.get(`${e.prefix}:nodeq:n1`)).toBe('1');
    await unpend(redis, keys, 'n1');
    expect(await routeTo(redis, keys, fn.tenant, fn.name, fn.version + 1, 64, 3000)).toBeNull(); // nobody has v2 warm
    const bull = createInvocationClient({ redisUrl: redisUrl(), prefix: e.prefix, syncLane: 'bullmq' });
    try {
      const r = await bull.invoke({ fn, payload: ev({}), mode: 'sync' });
      expect(r.record.start).toBe('warm');
      await until(() => redis.get(`${e.prefix}:nodeq:n1`), (v) => (v ?? '0') === '0');
    } finally {
      await bull.close();
    }
  });
});

describe('fast-lane jobs name their function version by reference', () => {
  it('the record is stashed once and cached; a node that never saw it reads the stash; other content, other ref', async () => {
    const e = await env();
    const fn = e.fn();
    const ref = fnRefOf(fn);
    expect(fnRefOf({ ...fn })).toBe(ref); // content, not identity
    expect(fnRefOf({ ...fn, memoryMb: 256 })).not.toBe(ref);
    expect(fnRefOf({ ...fn, env: { A: '1' } })).not.toBe(ref);
    await e.client.invoke({ fn, payload: ev({}), mode: 'sync' });
    const stashKey = `${e.prefix}:fnv:${ref}`;
    expect(JSON.parse((await redis.get(stashKey))!)).toEqual(fn);
    expect(await redis.ttl(stashKey)).toBeGreaterThan(3600);
    // a job with the reference only, for a version this node has never seen inline: read from the stash
    const other = e.fn({ name: 'by-ref', env: { BIG: 'x'.repeat(4096) } });
    const oref = fnRefOf(other);
    await redis.set(`${e.prefix}:fnv:${oref}`, JSON.stringify(other), 'EX', 600);
    const id = randomUUID();
    const now = Date.now();
    const data = { id, mode: 'sync' as const, fn: other, payload: { kind: 'event' as const, body: { utf8: '{"x":1}' } }, createdAt: now, deadline: now + 10_000 };
    const rec = JSON.stringify({ id, tenant: other.tenant, function: other.name, version: 1, mode: 'sync', status: 'queued', attempts: 0, createdAt: now });
    const jobJson = JSON.stringify({ ...data, fn: undefined, fnr: oref });
    expect(jobJson.length).toBeLessThan(400); // the 4 KiB env stays out of the job
    await fastPush(redis, createKeys(e.prefix), data, rec, { recordTtlS: 60, listTtlMs: 60_000, routing: false, maxPending: 64, staleMs: 3000, jobJson });
    const done = await until(() => e.client.get(other.tenant, id), (r) => r?.status === 'succeeded');
    expect(done!.function).toBe('by-ref');
    expect(Buffer.from(JSON.parse(done!.response!.body.toString()).echo, 'base64').toString()).toBe('{"x":1}');
    expect(e.exec.specialised).toBe(2);
  });
});

describe('async invocations', () => {
  it('enqueue → succeeded record; the same idempotency key is a no-op per tenant', async () => {
    const e = await env();
    const fn = e.fn();
    const a = await e.client.enqueue({ fn, payload: ev({}), mode: 'async', idempotencyKey: 'k1' });
    const b = await e.client.enqueue({ fn, payload: ev({}), mode: 'async', idempotencyKey: 'k1' });
    expect(a.duplicate).toBe(false);
    expect(b).toEqual({ invocationId: a.invocationId, duplicate: true });
    const other = await e.client.enqueue({ fn: { ...fn, tenant: fn.tenant + 'x' }, payload: ev({}), mode: 'async', idempotencyKey: 'k1' });
    expect(other.duplicate).toBe(false);
    const rec = await until(() => e.client.get(fn.tenant, a.invocationId), (r) => r?.status === 'succeeded');
    expect(rec!.attempts).toBe(1);
    expect(e.exec.specialised).toBeGreaterThanOrEqual(1);
    await until(() => e.client.get(fn.tenant + 'x', other.invocationId), (r) => r?.status === 'succeeded');
  });

  it('retries with backoff, then succeeds (attempts counted)', async () => {
    const e = await env();
    const fn = e.fn({ retries: 3 });
    const { invocationId } = await e.client.enqueue({ fn, payload: ev({ failTimes: 1, key: randomUUID() }), mode: 'async' });
    const rec = await until(() => e.client.get(fn.tenant, invocationId), (r) => r?.status === 'succeeded');
    expect(rec!.attempts).toBe(2);
  });

  it('exhausted attempts land in the dead-letter list; redrive runs it again', async () => {
    const e = await env();
    const fn = e.fn({ retries: 2 });
    const key = randomUUID();
    const { invocationId } = await e.client.enqueue({ fn, payload: ev({ failTimes: 2, key }), mode: 'async' });
    const rec = await until(() => e.client.get(fn.tenant, invocationId), (r) => r?.status === 'failed', 10_000);
    expect(rec).toMatchObject({ attempts: 2, error: { type: 'FunctionError' } });
    const dl = await e.client.listDeadLetters(fn.tenant);
    expect(dl.map((r) => r.id)).toEqual([invocationId]);
    expect(await e.client.listDeadLetters(fn.tenant + 'x')).toEqual([]);
    await expect(e.client.redrive(fn.tenant + 'x', invocationId)).rejects.toMatchObject({ type: 'NotFound' });
    await e.client.redrive(fn.tenant, invocationId);
    const after = await until(() => e.client.get(fn.tenant, invocationId), (r) => r?.status === 'succeeded', 10_000);
    expect(after!.attempts).toBe(1);
    expect(await e.client.listDeadLetters(fn.tenant)).toEqual([]);
    await expect(e.client.redrive(fn.tenant, invocationId)).rejects.toMatchObject({ type: 'Conflict' });
  }, 20_000);
});

describe('idle BullMQ workers', () => {
  it("a tenant's worker closes when idle and comes back with the next async job", async () => {
    const e = await env({ idleWorkerMs: 200 });
    const fn = e.fn();
    const q = new Queue(`inv.${encodeURIComponent(fn.tenant)}`, { connection: bullConnection(redis), prefix: `${e.prefix}:bull` });
    try {
      const a = await e.client.enqueue({ fn, payload: ev({}), mode: 'async' });
      await until(() => e.client.get(fn.tenant, a.invocationId), (r) => r?.status === 'succeeded');
      expect((await q.getWorkers()).length).toBeGreaterThan(0);
      await until(async () => (await q.getWorkers()).length, (n) => n === 0, 6000);
      const b = await e.client.enqueue({ fn, payload: ev({}), mode: 'async' });
      await until(() => e.client.get(fn.tenant, b.invocationId), (r) => r?.status === 'succeeded', 6000);
    } finally {
      await q.close();
    }
  }, 20_000);
});

describe('logs', () => {
  it('stored per function, read by invocation, followed live', async () => {
    const e = await env();
    const fn = e.fn();
    const r = await e.client.invoke({ fn, payload: ev({ log: 'hello one' }), mode: 'sync' });
    await e.client.invoke({ fn, payload: ev({ log: 'hello two' }), mode: 'sync' });
    const lines = await e.client.logs(fn.tenant, { function: fn.name, invocation: r.record.id });
    expect(lines.map((l) => l.line)).toEqual(['hello one']);
    expect((await e.client.logs(fn.tenant, {})).map((l) => l.line)).toEqual(['hello one', 'hello two']);
    expect(await e.client.logs(fn.tenant + 'x', {})).toEqual([]);
    const ttl = await redis.ttl(`${e.prefix}:logs:${fn.tenant}:${fn.name}`);
    expect(ttl).toBeGreaterThan(0);

    const ac = new AbortController();
    const seen: string[] = [];
    const done = (async () => {
      for await (const l of e.client.followLogs(fn.tenant, { function: fn.name }, ac.signal)) {
        seen.push(l.line);
        if (seen.length === 3) ac.abort();
      }
    })();
    await until(() => seen.length, (n) => n === 2);
    await e.client.invoke({ fn, payload: ev({ log: 'hello three' }), mode: 'sync' });
    await done;
    expect(seen).toEqual(['hello one', 'hello two', 'hello three']);
  });
});

describe('fair sharing and limits', () => {
  it("tenant A's 1,000 queued invocations do not starve tenant B's one", async () => {
    const e = await env({ capacityMb: 4 * 128, tenantConcurrency: 16 });
    const a = e.fn();
    const b = { ...e.fn(), tenant: a.tenant + 'b' };
    const flood = Array.from({ length: 1000 }, () => e.client.enqueue({ fn: a, payload: ev({ sleep: 5 }), mode: 'async' }));
    await Promise.all(flood);
    expect(await e.client.depth(a.tenant)).toBeGreaterThan(100);
    const t0 = Date.now();
    const r = await e.client.invoke({ fn: b, payload: ev({}), mode: 'sync' });
    const took = Date.now() - t0;
    expect(r.record.status).toBe('succeeded');
    // A needs ≥ 1000 × 5 ms / 4 instances ≈ 1.25 s to drain; B must not wait behind it
    expect(took).toBeLessThan(500);
    expect(await e.client.depth(a.tenant)).toBeGreaterThan(0);
    await until(() => e.client.depth(a.tenant), (n) => n === 0, 20_000);
    await until(() => redis.llen(`${e.prefix}:bull:inv.${encodeURIComponent(a.tenant)}:active`), (n) => n === 0, 10_000);
  }, 30_000);
});

describe('fair sharing on the sync fast lane', () => {
  it("tenant A's 1,000 queued sync invocations do not starve tenant B's one", async () => {
    const e = await env({ capacityMb: 4 * 128 });
    const a = e.fn();
    const b = { ...e.fn(), tenant: a.tenant + 'b' };
    await e.client.invoke({ fn: b, payload: ev({}), mode: 'sync' }); // B is a known tenant, warm
    const flood = Array.from({ length: 1000 }, () => e.client.invoke({ fn: a, payload: ev({ sleep: 3 }), mode: 'sync' }));
    await until(() => e.client.depth(a.tenant), (n) => n > 200);
    const t0 = Date.now();
    const r = await e.client.invoke({ fn: b, payload: ev({}), mode: 'sync' });
    const took = Date.now() - t0;
    expect(r.record.status).toBe('succeeded');
    expect(await e.client.depth(a.tenant)).toBeGreaterThan(0); // A still queued when B was done
    expect(took).toBeLessThan(500);
    const rs = await Promise.all(flood);
    expect(rs.every((x) => x.record.status === 'succeeded')).toBe(true);
  }, 30_000);
});

describe('shutdown and metrics', () => {
  it('close() finishes an invocation in flight, then leaves nothing', async () => {
    const e = await env();
    const fn = e.fn();
    const p = e.client.invoke({ fn, payload: ev({ sleep: 300 }), mode: 'sync' });
    await until(() => e.sched.instances.list().some((i) => i.inFlight > 0), (v) => v);
    await e.sched.close(5000);
    const r = await p;
    expect(r.record.status).toBe('succeeded');
    expect(e.exec.live.size).toBe(0);
  });

  it('two concurrent enqueues with one idempotency key make one invocation', async () => {
    const e = await env();
    const fn = e.fn();
    const [a, b] = await Promise.all([0, 1].map(() => e.client.enqueue({ fn, payload: ev({}), mode: 'async', idempotencyKey: 'race' })));
    expect(a!.invocationId).toBe(b!.invocationId);
    expect([a!.duplicate, b!.duplicate].sort()).toEqual([false, true]);
  });

  it('reports pool, warm instances, admitted memory and queue depth to /metrics', async () => {
    const metrics = createMetrics({ defaultMetrics: false });
    const prefix = `t-${randomUUID().slice(0, 8)}`;
    const exec = new FakeExecutor();
    const sched = createScheduler({ redisUrl: redisUrl(), prefix, nodeId: 'm1', executor: exec, capacityMb: 1024, metrics, logger: silent, pool: { kinds: { node: { min: 1, max: 2 } } } });
    await sched.start();
    const client = createInvocationClient({ redisUrl: redisUrl(), prefix });
    try {
      await client.invoke({ fn: fnv({ tenant: 'mt' }), payload: ev({}), mode: 'sync' });
      // a cold start is counted just after its caller is answered (process-job.ts observe(later)): poll for it
      const counted = /fnhost_invocations_total\{[^}]*outcome="success"[^}]*start="cold"[^}]*\} 1/;
      const text = await until(() => metrics.text(), (t) => counted.test(t));
      expect(text).toMatch(/fnhost_warm_instances\{[^}]*tenant="mt"[^}]*\} 1/);
      expect(text).toMatch(/fnhost_memory_admitted_bytes \d+/);
      expect(text).toMatch(/fnhost_invocations_total\{[^}]*outcome="success"[^}]*start="cold"[^}]*\} 1/);
      expect(text).toMatch(/fnhost_queue_depth\{tenant="mt"\} 0/);
    } finally {
      await client.close();
      await sched.close();
      const keys = await redis.keys(`${prefix}:*`);
      if (keys.length) await redis.del(...keys);
    }
  });
});

describe('without a scheduler', () => {
  it('a sync call nobody picks up ends in Timeout at its deadline; its list expires', async () => {
    const prefix = `t-${randomUUID().slice(0, 8)}`;
    const client = createInvocationClient({ redisUrl: redisUrl(), prefix, maxQueueWaitMs: 100 });
    try {
      const fn = fnv({ tenant: 'lonely', timeoutMs: 100 });
      const t0 = Date.now();
      const err = await client.invoke({ fn, payload: ev({}), mode: 'sync' }).catch((e) => e);
      expect(err.type).toBe('Timeout');
      expect(Date.now() - t0).toBeGreaterThanOrEqual(200);
      expect(Date.now() - t0).toBeLessThan(3000);
      const ttl = await redis.pttl(`${prefix}:fast:lonely`);
      expect(ttl).toBeGreaterThan(0);
      expect(await client.ready()).toBe(false);
    } finally {
      await client.close();
      const keys = await redis.keys(`${prefix}:*`);
      if (keys.length) await redis.del(...keys);
    }
  });

  it('queued invocations above maxQueuedPerTenant are refused with TooManyRequests', async () => {
    const prefix = `t-${randomUUID().slice(0, 8)}`;
    const client = createInvocationClient({ redisUrl: redisUrl(), prefix, maxQueuedPerTenant: 3 });
    try {
      const fn = fnv({ tenant: 'busy' });
      for (let i = 0; i < 3; i++) await client.enqueue({ fn, payload: ev({}), mode: 'async' });
      // The count is refreshed in the background at most every 100 ms, so the bound bites within ~one refresh.
      const refused = await until(
        async () => client.enqueue({ fn, payload: ev({}), mode: 'async' }).then(() => null, (e) => e),
        (e) => e !== null,
        2000,
      );
      expect(refused).toMatchObject({ type: 'TooManyRequests', details: { limit: 3 } });
      const depth = await client.depth('busy');
      expect(depth).toBeGreaterThanOrEqual(3);
      expect(depth).toBeLessThan(20); // overshoot: what arrives within one 100 ms refresh (here one call per 20 ms poll)
      await expect(client.enqueue({ fn: { ...fn, tenant: 'calm' }, payload: ev({}), mode: 'async' })).resolves.toMatchObject({ duplicate: false });
    } finally {
      await client.close();
      const keys = await redis.keys(`${prefix}:*`);
      if (keys.length) await redis.del(...keys);
    }
  });
});

describe('tenant purge', () => {
  it('purgeTenant removes queues, dead letters, records, payloads, logs and idempotency keys of that tenant only', async () => {
    const e = await env();
    const fn = e.fn({ retries: 1 });
    const other = { ...fn, tenant: fn.tenant + 'o' };
    const big = { kind: 'event' as const, body: Buffer.alloc(40_000, 7) };
    await e.client.invoke({ fn, payload: ev({ log: 'x' }), mode: 'sync' });
    await e.client.invoke({ fn, payload: big, mode: 'sync' });
    const dead = await e.client.enqueue({ fn, payload: ev({ fail: 'FunctionError' }), mode: 'async', idempotencyKey: 'k' });
    await until(() => e.client.get(fn.tenant, dead.invocationId), (r) => r?.status === 'failed');
    const kept = await e.client.invoke({ fn: other, payload: ev({ log: 'y' }), mode: 'sync' });
    await e.client.purgeTenant!(fn.tenant);
    const left = (await redis.keys(`${e.prefix}:*`)).filter((k) => k.includes(encodeURIComponent(fn.tenant) + ':') || k.includes(`inv.${encodeURIComponent(fn.tenant)}:`));
    expect(left).toEqual([]);
    expect(await e.client.listDeadLetters(fn.tenant)).toEqual([]);
    expect(await e.client.get(other.tenant, kept.record.id)).not.toBeNull();
    expect((await e.client.logs(other.tenant, {})).map((l) => l.line)).toEqual(['y']);
  });
});

describe('nodes', () => {
  it('ready() needs a fresh scheduler heartbeat; close() removes the node', async () => {
    const e = await env();
    expect(await e.client.ready()).toBe(true);
    await e.sched.close();
    expect(await e.client.ready()).toBe(false);
    expect(await redis.exists(`${e.prefix}:node:n1`)).toBe(0);
  });

  it("jobs left in a dead node's routed list are taken over by a live node", async () => {
    const e = await env({ nodeId: 'n1' });
    const fn = e.fn();
    await e.client.invoke({ fn, payload: ev({}), mode: 'sync' }); // the tenant is known to n1
    // 'ghost' had a routed list and died: its heartbeat is an hour old
    const id = randomUUID();
    const now = Date.now();
    const data = { id, mode: 'sync' as const, fn, payload: { kind: 'event' as const, body: { b64: '' } }, createdAt: now, deadline: now + 20_000 };
    await redis.multi()
      .zadd(`${e.prefix}:nodes`, now - 3600_000 + 60_000, 'ghost')
      .sadd(`${e.prefix}:fastnodes`, 'ghost')
      .lpush(`${e.prefix}:fastn:ghost`, JSON.stringify(data))
      .hset(`${e.prefix}:inv:${encodeURIComponent(fn.tenant)}:${id}`, 's', 'queued', 'r', '{}')
      .exec();
    const rec = await until(() => e.client.get(fn.tenant, id), (r) => r?.status === 'succeeded', 8000);
    expect(rec!.start).toBe('warm');
    expect(await redis.llen(`${e.prefix}:fastn:ghost`)).toBe(0);
    await redis.multi().srem(`${e.prefix}:fastnodes`, 'ghost').zrem(`${e.prefix}:nodes`, 'ghost').exec();
    await redis.expire(`${e.prefix}:inv:${encodeURIComponent(fn.tenant)}:${id}`, 60);
  });

  it('two schedulers on one Redis share the work; start-up clears this node\'s leftovers only', async () => {
    const e = await env({ nodeId: 'n1', nodeConcurrency: 4 }); // each node takes at most 4 sync jobs at once
    const exec2 = new FakeExecutor();
    await redis.hset(`${e.prefix}:warm:x:y:1`, 'n2', String(Date.now() + 60_000), 'n1', String(Date.now() + 60_000));
    const s2 = createScheduler({ redisUrl: redisUrl(), prefix: e.prefix, nodeId: 'n2', executor: exec2, capacityMb: 1024, metrics: createMetrics({ defaultMetrics: false }), logger: silent, tenantConcurrency: 4, nodeConcurrency: 4 });
    await s2.start();
    expect(await redis.hkeys(`${e.prefix}:warm:x:y:1`)).toEqual(['n1']);
    await redis.del(`${e.prefix}:warm:x:y:1`);
    const fns = Array.from({ length: 8 }, (_, i) => e.fn({ name: `f${i}` }));
    const rs = await Promise.all(fns.flatMap((fn) => [0, 1, 2].map(() => e.client.invoke({ fn, payload: ev({ sleep: 20 }), mode: 'sync' }))));
    expect(rs.every((r) => r.record.status === 'succeeded')).toBe(true);
    expect(e.exec.specialised).toBeGreaterThan(0);
    expect(exec2.specialised).toBeGreaterThan(0);
    await s2.close();
    expect(exec2.live.size).toBe(0);
  });
});
