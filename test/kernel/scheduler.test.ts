/**
 * The scheduler for real: real Redis + BullMQ, real sandboxes (namespaces, v1/v2 cgroups, read-only overlay),
 * real runtimes on the built base images. Every test ends with nothing of ours left: no cgroup or process
 * under fnhost/<nodeId>/, no mount naming one of the sandboxes, no Redis key of the test's prefix without a TTL
 * (BullMQ's own queue bookkeeping and the two tenant sets aside).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { redisUrl } from '../helpers/redis.ts';
import { findLeftovers } from '../helpers/leaks.ts';
import { createInvocationClient } from '../../services/scheduler/client.ts';
import { createScheduler, type Scheduler, type SchedulerOptions } from '../../services/scheduler/scheduler.ts';
import { createRuntimeExecutor } from '../../services/scheduler/runtime-executor.ts';
import { createMetrics } from '../../services/common/metrics.ts';
import { createLogger } from '../../services/common/log.ts';
import type { FunctionVersion } from '../../services/common/model.ts';
import type { ImageStore } from '../../services/store/types.ts';
import type { InvocationClient } from '../../services/scheduler/types.ts';
import { until as untilHelper } from '../helpers/until.ts';
import { useCleanups, keysWithoutTtl } from '../helpers/hooks.ts';

const ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const FNS = join(ROOT, 'test/fixtures/scheduler/fns');
const CONFORMANCE = join(ROOT, 'test/fixtures/functions');

let skip: string | null = null;
let images: ImageStore;
let stateDir: string;
let redis: Redis;
const digests: Record<string, string> = {};

function tarOf(dir: string): Buffer {
  return execFileSync('tar', ['-C', dir, '-cf', '-', '.'], { maxBuffer: 64 << 20 });
}

beforeAll(async () => {
  const sandbox = await import('../../services/sandbox/index.ts');
  skip = sandbox.sandboxUnavailableReason();
  redis = new Redis(redisUrl());
  if (skip) return;
  const { openImageStore } = await import('../../services/store/index.ts');
  stateDir = mkdtempSync(join(tmpdir(), 'fnhost-sched-state-'));
  images = await openImageStore({ stateDir });
  for (const [k, dir] of Object.entries({ token: join(FNS, 'node-behave'), cat: join(FNS, 'exec-cat'), event: join(CONFORMANCE, 'node-event') })) {
    digests[k] = (await images.addBundle(tarOf(dir))).digest;
  }
}, 60_000);

afterAll(async () => {
  await redis?.quit();
  if (stateDir) rmSync(stateDir, { recursive: true, force: true });
});

interface Env {
  prefix: string;
  nodeId: string;
  sched: Scheduler;
  client: InvocationClient;
  tenant: string;
  sandboxIds: Set<string>;
}

const cleanups = useCleanups();

async function assertNothingLeft(nodeId: string, sandboxIds: Set<string>, prefix: string) {
  const deadline = Date.now() + 5000;
  for (;;) {
    const l = findLeftovers(nodeId);
    const mounts = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((m) => [...sandboxIds].some((id) => m.includes(id)));
    const nodeDirs = ['memory', 'pids', 'cpu,cpuacct', 'unified'].map((h) => `/sys/fs/cgroup/${h}/fnhost/${nodeId}`).filter((d) => existsSync(d));
    if (!l.cgroups.length && !l.processes.length && !mounts.length && !nodeDirs.length) break;
    if (Date.now() > deadline) throw new Error(`leaked: ${JSON.stringify({ ...l, mounts, nodeDirs })}`);
    await new Promise((r) => setTimeout(r, 25));
  }
  expect(await keysWithoutTtl(redis, prefix)).toEqual([]);
}

async function env(over: Partial<SchedulerOptions> = {}): Promise<Env> {
  const prefix = `k-${randomUUID().slice(0, 8)}`;
  const nodeId = `sched-test-${process.pid}-${randomUUID().slice(0, 4)}`;
  const sandboxIds = new Set<string>();
  const { createSandbox } = await import('../../services/sandbox/index.ts');
  const executor = createRuntimeExecutor({
    images, nodeId,
    createSandbox: async () => {
      const sb = await createSandbox({ nodeId });
      sandboxIds.add(sb.id);
      return sb;
    },
  });
  const sched = createScheduler({
    redisUrl: redisUrl(), prefix, nodeId, executor, capacityMb: 2048, keepAliveMs: 60_000,
    pool: { kinds: { node: { min: 1, max: 4 }, exec: { min: 1, max: 4 }, python: { min: 0, max: 0 } } },
    metrics: createMetrics({ defaultMetrics: false }), logger: createLogger('test', process.env.FNHOST_TEST_LOG ?? 'silent'), ...over,
  });
  await sched.start();
  const client = createInvocationClient({ redisUrl: redisUrl(), prefix });
  cleanups.push(async () => {
    await client.close();
    await sched.close(5000);
    await assertNothingLeft(nodeId, sandboxIds, prefix);
    const keys = await redis.keys(`${prefix}:*`);
    if (keys.length) await redis.del(...keys);
  });
  return { prefix, nodeId, sched, client, tenant: `ten-${randomUUID().slice(0, 6)}`, sandboxIds };
}

function fnOf(e: Env, over: Partial<FunctionVersion> & { code: keyof typeof digests }): FunctionVersion {
  const { code, ...rest } = over;
  return {
    tenant: e.tenant, name: 'f', version: 1, runtime: 'node', handler: 'index.handler', codeDigest: digests[code]!,
    memoryMb: 128, timeoutMs: 10_000, env: {}, concurrency: 1, public: false, createdAt: new Date().toISOString(), ...rest,
  };
}

const ev = (o: unknown) => ({ kind: 'event' as const, body: Buffer.from(JSON.stringify(o)) });
const body = (r: { response: { body: Buffer } }) => JSON.parse(r.response.body.toString());

/** the kernel tests' deadline: real sandboxes on a loaded machine */
const until = <T>(f: () => Promise<T> | T, ok: (v: T) => boolean, ms = 10_000) => untilHelper(f, ok, ms, 25);

describe('scheduler on real sandboxes', () => {
  it('cold then warm on the same instance (node and exec); the pool refills after use', async (t) => {
    if (skip) return t.skip(skip);
    const e = await env();
    await until(() => e.sched.pool.idleCount('node'), (n) => n === 1);
    const fn = fnOf(e, { code: 'token' });
    const a = await e.client.invoke({ fn, payload: ev({}), mode: 'sync' });
    expect(a.record.start).toBe('cold');
    const b = await e.client.invoke({ fn, payload: ev({}), mode: 'sync' });
    expect(b.record.start).toBe('warm');
    expect(body(b).token).toBe(body(a).token);
    await until(() => e.sched.pool.idleCount('node'), (n) => n >= 1);

    const cat = fnOf(e, { code: 'cat', name: 'cat', runtime: 'exec', handler: 'run' });
    const c1 = await e.client.invoke({ fn: cat, payload: { kind: 'event', body: Buffer.from('hello \x00\xff') }, mode: 'sync' });
    expect(c1.record.start).toBe('cold');
    expect(c1.response.body.equals(Buffer.from('hello \x00\xff'))).toBe(true);
    const c2 = await e.client.invoke({ fn: cat, payload: { kind: 'event', body: Buffer.from('again') }, mode: 'sync' });
    expect(c2.record.start).toBe('warm');
    expect(c2.response.body.toString()).toBe('again');
  }, 60_000);

  it("a cold start's warm advertisement is written once no invocation runs, not during its first call", async (t) => {
    if (skip) return t.skip(skip);
    const e = await env();
    const fn = fnOf(e, { code: 'token', name: 'adv' });
    const warmKey = `${e.prefix}:warm:${fn.tenant}:${fn.name}:${fn.version}`;
    const call = e.client.invoke({ fn, payload: ev({ sleep: 150 }), mode: 'sync' });
    // the cold start is placed and its first invocation sleeps 150 ms: look while it runs
    await until(() => e.sched.instances.list().filter((i) => i.fn.name === 'adv' && i.inFlight > 0 && i.handle).length, (n) => n === 1);
    await new Promise((r) => setTimeout(r, 60));
    const seenDuringCall = await redis.hget(warmKey, e.nodeId);
    const r = await call;
    expect(r.record.start).toBe('cold');
    expect(seenDuringCall).toBeNull();
    // then it is there, until the keep-alive it advertises
    const until_ = Number(await until(() => redis.hget(warmKey, e.nodeId), (v) => v !== null, 2000));
    expect(until_).toBeGreaterThan(Date.now() + 30_000);
    expect(await redis.pttl(warmKey)).toBeGreaterThan(30_000);
  }, 60_000);

  it('keep-alive expiry destroys the instance and leaves only the pool', async (t) => {
    if (skip) return t.skip(skip);
    const e = await env({ keepAliveMs: 300 });
    const fn = fnOf(e, { code: 'token' });
    await e.client.invoke({ fn, payload: ev({}), mode: 'sync' });
    expect(e.sched.instances.list().length).toBe(1);
    await until(() => e.sched.instances.list().length, (n) => n === 0);
    expect(e.sched.instances.admittedMb).toBe(0);
    // what remains under our node: exactly the pooled sandboxes
    const sandboxesLeft = () => new Set(findLeftovers(e.nodeId).cgroups.map((c) => c.split('/').pop())).size;
    await until(() => sandboxesLeft() - e.sched.pool.idleCount(), (d) => d === 0);
    const c = await e.client.invoke({ fn, payload: ev({}), mode: 'sync' });
    expect(c.record.start).toBe('cold');
  }, 60_000);

  it('memory admission: caps summing over capacity never run together', async (t) => {
    if (skip) return t.skip(skip);
    const e = await env({ capacityMb: 256 });
    const a = fnOf(e, { code: 'token', name: 'a', memoryMb: 192 });
    const b = fnOf(e, { code: 'token', name: 'b', memoryMb: 192 });
    let maxAdmitted = 0;
    const probe = setInterval(() => (maxAdmitted = Math.max(maxAdmitted, e.sched.instances.admittedMb)), 2);
    const [ra, rb] = await Promise.all([
      e.client.invoke({ fn: a, payload: ev({ sleep: 300 }), mode: 'sync' }),
      e.client.invoke({ fn: b, payload: ev({ sleep: 300 }), mode: 'sync' }),
    ]);
    clearInterval(probe);
    const [x, y] = [body(ra), body(rb)].sort((p, q) => p.startedAt - q.startedAt);
    expect(y.startedAt).toBeGreaterThanOrEqual(x.endedAt); // never ran together
    expect(maxAdmitted).toBeLessThanOrEqual(256);
    expect(e.sched.instances.list().map((i) => i.fn.name)).toHaveLength(1); // the first was evicted for the second
  }, 60_000);

  it('a changed memory cap applies to the next call and retires the old instances', async (t) => {
    if (skip) return t.skip(skip);
    const e = await env();
    const v1 = fnOf(e, { code: 'token', memoryMb: 256 });
    const r1 = await e.client.invoke({ fn: v1, payload: ev({ alloc: 100 }), mode: 'sync' });
    expect(r1.record.status).toBe('succeeded');
    const v2 = { ...v1, version: 2, memoryMb: 64 };
    const err = await e.client.invoke({ fn: v2, payload: ev({ alloc: 100 }), mode: 'sync' }).catch((x) => x);
    expect(err.type).toBe('OutOfMemory');
    expect(e.sched.instances.list().filter((i) => i.fn.version === 1)).toEqual([]);
    const ok = await e.client.invoke({ fn: v2, payload: ev({}), mode: 'sync' });
    expect(ok.record.start).toBe('cold');
  }, 60_000);

  it('timeout, OOM and crash come back typed; the instance is never reused and the next call works', async (t) => {
    if (skip) return t.skip(skip);
    const e = await env();
    const cases = [
      { handler: 'slow.handler', type: 'Timeout', timeoutMs: 500 },
      { handler: 'oom.handler', type: 'OutOfMemory', memoryMb: 64 },
      { handler: 'exit.handler', type: 'Crashed' },
    ];
    for (const c of cases) {
      const fn = fnOf(e, { code: 'event', name: c.handler.split('.')[0]!, handler: c.handler, timeoutMs: c.timeoutMs ?? 10_000, memoryMb: c.memoryMb ?? 128 });
      const err = await e.client.invoke({ fn, payload: ev({}), mode: 'sync' }).catch((x) => x);
      expect(err.type).toBe(c.type);
      const rec = await e.client.get(e.tenant, err.details.invocationId);
      expect(rec).toMatchObject({ status: 'failed', error: { type: c.type } });
      expect(e.sched.instances.list().filter((i) => i.fn.name === fn.name)).toEqual([]);
      const echo = { ...fn, handler: 'echo.handler', version: 2 };
      const ok = await e.client.invoke({ fn: echo, payload: ev({ n: 1 }), mode: 'sync' });
      expect(body(ok)).toEqual({ n: 1 });
    }
  }, 60_000);

  it('200 concurrent invocations of 20 functions leave nothing behind', async (t) => {
    if (skip) return t.skip(skip);
    const e = await env({ keepAliveMs: 60_000, capacityMb: 8192 }); // room for all 40 instances: no eviction
    const fns = Array.from({ length: 20 }, (_, i) =>
      i % 2 ? fnOf(e, { code: 'token', name: `n${i}`, maxInstances: 2 }) : fnOf(e, { code: 'cat', name: `x${i}`, runtime: 'exec', handler: 'run', maxInstances: 2 }),
    );
    const rs = await Promise.all(Array.from({ length: 200 }, (_, k) => e.client.invoke({ fn: fns[k % 20]!, payload: ev({ k }), mode: 'sync' })));
    expect(rs.every((r) => r.record.status === 'succeeded')).toBe(true);
    expect(rs.filter((r) => r.record.start === 'cold').length).toBeLessThanOrEqual(40);
    for (const f of fns) expect(e.sched.instances.list().filter((i) => i.fn.name === f.name).length).toBeLessThanOrEqual(2);
  }, 120_000);
});

describe('runtime executor pools', () => {
  it('exec functions draw pre-started busybox sandboxes, image:<name> functions created ones', async (t) => {
    if (skip) return t.skip(skip);
    const nodeId = `pools-test-${process.pid}-${randomUUID().slice(0, 4)}`;
    const executor = createRuntimeExecutor({ images, nodeId });
    cleanups.push(async () => {
      await executor.close?.();
      await executor.cleanupLeftovers?.(nodeId);
    });
    const base = { tenant: 'pools', name: 'f', version: 1, handler: 'run', codeDigest: digests.cat!, memoryMb: 128, timeoutMs: 5000, env: {}, concurrency: 1, public: false, createdAt: '' };
    expect(executor.kindOf({ ...base, runtime: 'exec' })).toBe('exec');
    expect(executor.kindOf({ ...base, runtime: 'image:mine' })).toBe('image');
    const state = (p: unknown) => (p as { inner: { sandbox: { state: string } } }).inner.sandbox.state;
    const pre = await executor.createPooled('exec');
    const img = await executor.createPooled('image');
    expect(state(pre)).toBe('started');
    expect(state(img)).toBe('created');
    // the pre-started one serves an exec function on its first call
    const inst = await executor.specialise(pre, { ...base, runtime: 'exec' }, () => {});
    const r = await inst.invoke({ id: `inv-${randomUUID()}`, payload: { kind: 'event', body: Buffer.from('through /var/task') }, deadline: Date.now() + 5000 });
    expect(r.response.body.toString()).toBe('through /var/task');
    await inst.destroy();
    await img.destroy();
  });
});

describe('worker processes', () => {
  function spawnWorker(prefix: string, nodeId: string): Promise<ChildProcess> {
    const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'services/scheduler/main.ts')], {
      cwd: ROOT,
      env: {
        ...process.env, REDIS_URL: redisUrl(), FNHOST_PREFIX: prefix, FNHOST_NODE_ID: nodeId, FNHOST_STATE_DIR: stateDir,
        FNHOST_LOCK_MS: '1500', FNHOST_STALLED_MS: '500', FNHOST_LOG_LEVEL: 'warn', FNHOST_POOL: '{"node":{"min":1,"max":2},"exec":{"min":0,"max":0},"python":{"min":0,"max":0}}',
      },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    return new Promise((res, rej) => {
      let out = '';
      child.stdout!.on('data', (d) => {
        out += d;
        if (out.includes('"ready"')) res(child);
      });
      child.once('exit', (code) => rej(new Error(`worker exited ${code} before ready`)));
    });
  }

  it('kill -9 of a worker mid-async-invocation: another worker completes it, exactly once as the caller sees it', async (t) => {
    if (skip) return t.skip(skip);
    const prefix = `k-${randomUUID().slice(0, 8)}`;
    const nodeA = `sched-a-${process.pid}`;
    const nodeB = `sched-b-${process.pid}`;
    const client = createInvocationClient({ redisUrl: redisUrl(), prefix });
    const tenant = `ten-${randomUUID().slice(0, 6)}`;
    const children: ChildProcess[] = [];
    try {
      const a = await spawnWorker(prefix, nodeA);
      children.push(a);
      const fn: FunctionVersion = {
        tenant, name: 'slow', version: 1, runtime: 'node', handler: 'index.handler', codeDigest: digests.token!,
        memoryMb: 128, timeoutMs: 20_000, env: {}, concurrency: 1, public: false, createdAt: new Date().toISOString(),
      };
      const req = { fn, payload: ev({ sleep: 1500, log: 'started' }), mode: 'async' as const, idempotencyKey: 'once' };
      const { invocationId } = await client.enqueue(req);
      await until(() => client.get(tenant, invocationId), (r) => r?.status === 'running', 20_000);
      const b = await spawnWorker(prefix, nodeB);
      children.push(b);
      a.kill('SIGKILL');
      await new Promise((r) => a.once('exit', r));
      const rec = await until(() => client.get(tenant, invocationId), (r) => r?.status === 'succeeded', 30_000);
      expect(rec!.attempts).toBeGreaterThanOrEqual(1);
      // the caller's view: one invocation, one result; a repeated enqueue is the same invocation
      expect(await client.enqueue(req)).toEqual({ invocationId, duplicate: true });
      const again = await client.get(tenant, invocationId);
      expect(again!.response!.body.equals(rec!.response!.body)).toBe(true);
      expect(await client.listDeadLetters(tenant)).toEqual([]);
      // A's partial run left nothing the caller can see: one run's log line, from B
      expect((await client.logs(tenant, { function: 'slow', invocation: invocationId })).map((l) => l.line)).toEqual(['started']);
      // B cleans up after itself on SIGTERM
      b.kill('SIGTERM');
      expect(await new Promise((r) => b.once('exit', r))).toBe(0);
      expect(findLeftovers(nodeB).cgroups).toEqual([]);
      // A's leftovers (killed -9) are removed when a scheduler with A's node id starts
      const restarted = createScheduler({
        redisUrl: redisUrl(), prefix, nodeId: nodeA, executor: createRuntimeExecutor({ images, nodeId: nodeA }),
        pool: { kinds: { node: { min: 0, max: 0 }, exec: { min: 0, max: 0 }, python: { min: 0, max: 0 } } },
        metrics: createMetrics({ defaultMetrics: false }), logger: createLogger('test', 'silent'),
      });
      await restarted.start();
      await until(() => findLeftovers(nodeA), (l) => l.cgroups.length === 0 && l.processes.length === 0);
      await restarted.close();
    } finally {
      for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
      await client.close();
      const keys = await redis.keys(`${prefix}:*`);
      if (keys.length) await redis.del(...keys);
    }
  }, 90_000);
});
