/**
 * `npm run bench:scheduler` — the scheduler driven through the queue (client → Redis → scheduler → real
 * sandbox → result), no HTTP. One JSON object on stdout, progress on stderr. Medians and p90s come from the
 * same run.
 *
 *   cold.{exec,node}      a function never seen before, with the warm pool holding ready sandboxes of its
 *                         kind (the pool is let refill between samples): client.invoke() round trip, after
 *                         --cold-warmup (default 10) uncounted cold starts of that kind — a running host's cold
 *                         path is JIT-compiled; those first samples are cold_first_after_start.{exec,node}
 *   warm_sequential       one node function, one call after another, same instance
 *   warm_throughput_per_s one node function, 64 calls in flight, instances pre-warmed (≤ 16 of them)
 *   refill_per_s          a fresh exec-kind pool growing from 0 to 200 with the scheduler's default settings
 *                         for an idle node (rate cap 2,000/s, 2 at once; 400/s while invocations run)
 *   idle_sandbox_kib      memory charged to a pooled exec sandbox's cgroup (kernel + init; no runtime booted),
 *                         mean over those 200; sandboxes_per_gib = 1 GiB / that
 *
 * Every call crosses the queue: the client is created without `localDispatch` (services/scheduler/local-dispatch.ts),
 * so each one is pushed to Redis and popped by the scheduler's BLMPOP. Since client and scheduler share this process
 * (as in `fnhost start`), the result is handed over in-process and the final record follows in the scheduler's
 * next write batch (services/scheduler/record-batch.ts), exactly as for the gateway's queued calls.
 *
 * Needs root, the native build and the base images (npm run setup). Starts its own redis-server.
 */
import { spawn, execFileSync } from 'node:child_process';
import { setFlagsFromString } from 'node:v8';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import { createInvocationClient } from '../../services/scheduler/client.ts';
import { createScheduler } from '../../services/scheduler/scheduler.ts';
import { createRuntimeExecutor } from '../../services/scheduler/runtime-executor.ts';
import { WarmPool, DEFAULT_POOL_CONFIG } from '../../services/scheduler/pool.ts';
import type { PooledSandbox } from '../../services/scheduler/executor.ts';
import { createMetrics } from '../../services/common/metrics.ts';
import { createLogger } from '../../services/common/log.ts';
import type { FunctionVersion } from '../../services/common/model.ts';

// The scheduler runs in this process as in a host, and `fnhost start` turns V8's allocation-site pretenuring off
// (bin/fnhost.mjs says why); the flag is read at every GC, so setting it here, before any call, is the same.
setFlagsFromString('--no-allocation-site-pretenuring');

const ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const log = (...a: unknown[]) => process.stderr.write(`[bench:scheduler] ${a.join(' ')}\n`);
const arg = (name: string, def: number) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : def;
};

function stats(xs: number[]) {
  const s = [...xs].sort((a, b) => a - b);
  const q = (p: number) => s[Math.min(s.length - 1, Math.max(0, Math.ceil(p * s.length) - 1))]!; // nearest rank
  return { median_ms: +q(0.5).toFixed(3), p90_ms: +q(0.9).toFixed(3), n: s.length };
}

async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.on('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => res(p));
    });
  });
}

async function until(cond: () => boolean | Promise<boolean>, ms: number) {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 5));
  }
}

async function main() {
  const nCold = arg('cold', 30);
  const nColdWarmup = arg('cold-warmup', 10);
  const nWarm = arg('warm', 2000);
  const nTput = arg('tput', 10_000);
  const nRefill = arg('refill', 200);

  const dir = mkdtempSync(join(tmpdir(), 'fnhost-bench-sched-'));
  const port = await freePort();
  const redisProc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  const redisUrl = `redis://127.0.0.1:${port}`;
  const probe = new Redis(redisUrl, { lazyConnect: true, retryStrategy: () => 200 });
  probe.on('error', () => {}); // refused until redis-server listens
  await until(async () => probe.ping().then(() => true, () => false), 10_000);
  probe.disconnect();

  const { openImageStore } = await import('../../services/store/index.ts');
  const images = await openImageStore({ stateDir: join(dir, 'state') });
  const tar = (d: string) => execFileSync('tar', ['-C', d, '-cf', '-', '.']);
  const nodeCode = (await images.addBundle(tar(join(ROOT, 'test/fixtures/functions/node-event')))).digest;
  const execCode = (await images.addBundle(tar(join(ROOT, 'test/fixtures/scheduler/fns/exec-cat')))).digest;
  const nodeId = `bench-sched-${process.pid}`;
  const executor = createRuntimeExecutor({ images, nodeId });
  const out: Record<string, unknown> = {};

  try {
    // --- refill rate and idle memory: a pool of its own, nothing else running
    {
      const refillNode = `${nodeId}-refill`;
      const ex = createRuntimeExecutor({ images, nodeId: refillNode });
      await ex.cleanupLeftovers!(refillNode); // as a scheduler's start(): also builds the sandbox layer's template (warmUp)
      await ex.createPooled('exec').then((p) => p.destroy()); // resolves and leases the image once, as a running node has
      const created: PooledSandbox[] = [];
      // busy: false — the node runs nothing, so the pool refills at its idle limits, as a scheduler's pool would
      const pool = new WarmPool(ex, { ...DEFAULT_POOL_CONFIG, kinds: { exec: { min: nRefill, max: nRefill } }, default: { min: 0, max: 0 } }, { busy: () => false });
      const t0 = performance.now();
      pool.start();
      await until(() => pool.idleCount('exec') >= nRefill, 120_000);
      const secs = (performance.now() - t0) / 1000;
      out.refill_per_s = +(nRefill / secs).toFixed(1);
      log(`refill: ${nRefill} exec sandboxes in ${secs.toFixed(2)} s`);
      let total = 0;
      for (let i = 0; i < nRefill; i++) {
        const p = pool.take('exec');
        if (!p) break;
        created.push(p);
        total += await ex.pooledMemoryBytes!(p);
      }
      const kib = total / created.length / 1024;
      out.idle_sandbox_kib = +kib.toFixed(1);
      out.sandboxes_per_gib = Math.floor((1024 * 1024) / kib);
      log(`idle pooled sandbox: ${kib.toFixed(1)} KiB charged to its cgroup`);
      await Promise.all(created.map((p) => p.destroy()));
      await pool.close();
      await ex.cleanupLeftovers!(refillNode);
    }

    const sched = createScheduler({
      redisUrl, nodeId, executor, capacityMb: 16_384, keepAliveMs: 10 * 60_000,
      pool: { kinds: { node: { min: 2, max: 4 }, exec: { min: 2, max: 4 }, python: { min: 0, max: 0 } } },
      metrics: createMetrics({ defaultMetrics: false }), logger: createLogger('bench', 'warn'),
    });
    await sched.start();
    const client = createInvocationClient({ redisUrl, localDispatch: false }); // through the queue, always (see the header)
    const fn = (over: Partial<FunctionVersion>): FunctionVersion => ({
      tenant: 'bench', name: 'f', version: 1, runtime: 'node', handler: 'echo.handler', codeDigest: nodeCode,
      memoryMb: 128, timeoutMs: 10_000, env: {}, concurrency: 1, public: false, createdAt: new Date().toISOString(), ...over,
    });
    const body = Buffer.from('{"hello":"world"}');
    const call = (f: FunctionVersion) => client.invoke({ fn: f, payload: { kind: 'event', body }, mode: 'sync' });
    // one call so the tenant is known everywhere before anything is timed
    await call(fn({ name: 'prime' }));

    // --- cold starts with a warm pool
    const cold: Record<string, ReturnType<typeof stats>> = {};
    const coldFirst: Record<string, ReturnType<typeof stats>> = {};
    for (const kind of ['exec', 'node'] as const) {
      const xs: number[] = [];
      // the first nColdWarmup samples are not counted: a host that has run for a while runs its cold path as
      // JIT-compiled code; the first cold starts after process start-up run it in V8's interpreter (~0.6–1.2 ms
      // more here). cold_first_after_start reports those separately.
      const first: number[] = [];
      for (let i = -nColdWarmup; i < nCold; i++) {
        // pool warm and quiet: ready sandboxes of this kind, no refill running that would race the cold start for CPU
        await until(() => sched.pool.idleCount(kind) >= 2 && Object.values(sched.pool.stats().kinds).every((k) => k.creating === 0), 30_000);
        await new Promise((r) => setTimeout(r, 20));
        const f = kind === 'node' ? fn({ name: `cold-node-${i + nColdWarmup}` }) : fn({ name: `cold-exec-${i + nColdWarmup}`, runtime: 'exec', handler: 'run', codeDigest: execCode });
        const t0 = performance.now();
        const r = await call(f);
        (i < 0 ? first : xs).push(performance.now() - t0);
        if (r.record.start !== 'cold') throw new Error(`expected a cold start, got ${r.record.start}`);
      }
      cold[kind] = stats(xs);
      if (first.length) coldFirst[kind] = stats(first);
      log(`cold ${kind}: ${JSON.stringify(cold[kind])}`);
    }
    out.cold = cold;
    out.cold_first_after_start = coldFirst;

    // --- warm, sequential
    const warmFn = fn({ name: 'warm' });
    for (let i = 0; i < 50; i++) await call(warmFn);
    const ws: number[] = [];
    for (let i = 0; i < nWarm; i++) {
      const t0 = performance.now();
      const r = await call(warmFn);
      ws.push(performance.now() - t0);
      if (r.record.start !== 'warm') throw new Error('expected warm');
    }
    out.warm_sequential = stats(ws);
    log(`warm sequential: ${JSON.stringify(out.warm_sequential)}`);

    // --- warm throughput, 64 in flight
    const tputFn = fn({ name: 'tput', maxInstances: 16 });
    await Promise.all(Array.from({ length: 64 }, () => call(tputFn)));
    let issued = 0;
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: 64 }, async () => {
        while (issued < nTput) {
          issued++;
          await call(tputFn);
        }
      }),
    );
    out.warm_throughput_per_s = Math.round(nTput / ((performance.now() - t0) / 1000));
    log(`warm throughput: ${out.warm_throughput_per_s}/s with 64 in flight (${sched.instances.list().filter((i) => i.fn.name === 'tput').length} instances)`);

    await client.close();
    await sched.close();
  } finally {
    await executor.cleanupLeftovers?.(nodeId).catch(() => {});
    await executor.cleanupLeftovers?.(`${nodeId}-refill`).catch(() => {});
    redisProc.kill('SIGTERM');
    await new Promise((r) => redisProc.once('exit', r));
    rmSync(dir, { recursive: true, force: true });
  }
  const ordered = {
    cold: out.cold, warm_sequential: out.warm_sequential, warm_throughput_per_s: out.warm_throughput_per_s,
    refill_per_s: out.refill_per_s, idle_sandbox_kib: out.idle_sandbox_kib, sandboxes_per_gib: out.sandboxes_per_gib,
    cold_first_after_start: out.cold_first_after_start,
  };
  process.stdout.write(`${JSON.stringify(ordered)}\n`);
}

main().then(
  () => process.exit(0),
  (e) => {
    process.stderr.write(`[bench:scheduler] failed: ${(e as Error)?.stack ?? e}\n`);
    process.exit(1);
  },
);
