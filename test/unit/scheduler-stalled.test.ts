/**
 * A job whose workers keep dying mid-invocation (stalled more than `maxStalledCount` times) is failed by BullMQ
 * on its own, without running the processor (services/scheduler/process-job.ts finishLostWorker): it must end
 * like any other final failure — record `failed` with Crashed (reason worker-lost), in the dead-letter list,
 * counted in the metrics, its completion callback POSTed — and never overwrite a record that is already final.
 *
 * The dying workers are real BullMQ workers fetching the job by hand (`getNextJob`, so no lock renewal) and
 * never finishing it, as a killed node would; a bare checker worker runs BullMQ's stalled-job check. Real
 * Redis, real BullMQ, a real HTTP receiver on loopback; sandboxes faked (FakeExecutor).
 */
import { describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { Worker } from 'bullmq';
import { redisUrl } from '../helpers/redis.ts';
import { until } from '../helpers/until.ts';
import { bullConnection, createInvocationClient } from '../../services/scheduler/client.ts';
import { createScheduler } from '../../services/scheduler/scheduler.ts';
import { createKeys } from '../../services/scheduler/keys.ts';
import { fromStored, setRecord } from '../../services/scheduler/records.ts';
import { Callbacks, callbackOptions } from '../../services/scheduler/callbacks.ts';
import { CallbackSigner } from '../../services/scheduler/callback-signer.ts';
import { STALLED_OUT_REASON } from '../../services/scheduler/process-job.ts';
import { createMetrics } from '../../services/common/metrics.ts';
import { createLogger } from '../../services/common/log.ts';
import { FakeExecutor, fnv } from '../fixtures/scheduler/fake-executor.ts';
import type { FunctionVersion } from '../../services/common/model.ts';
import { useRedis, useCleanups, keysWithoutTtl } from '../helpers/hooks.ts';
import { hookReceiver } from '../helpers/hook-receiver.ts';

const silent = createLogger('test', 'silent');
const redis = useRedis();
const cleanups = useCleanups();


/**
 * An async invocation with a callback whose job has stalled out: fetched `stalls` times by workers that never
 * finish it (their lock lapses after 150 ms), with BullMQ's stalled-job check (maxStalledCount = stalls - 1)
 * run by a bare worker every 50 ms. Returns once BullMQ has marked the job to fail at its next fetch.
 * `beforeStart` runs before the scheduler does (to plant a final record, as an attempt that died after writing it).
 */
async function stalledOut(stalls: number, beforeStart?: (ctx: { prefix: string; fn: FunctionVersion; id: string; url: string }) => Promise<void>, o: { schedulerChecks?: boolean } = {}) {
  const prefix = `stall-${randomUUID().slice(0, 8)}`;
  const keys = createKeys(prefix);
  const tenant = `ten-${randomUUID().slice(0, 6)}`;
  const fn = fnv({ tenant, retries: 3 });
  const r = await hookReceiver(cleanups);
  const client = createInvocationClient({ redisUrl: redisUrl(), prefix });
  const conn = new Redis(redisUrl(), { maxRetriesPerRequest: null });
  const metrics = createMetrics({ defaultMetrics: false });
  const exec = new FakeExecutor();
  const sched = createScheduler({
    redisUrl: redisUrl(), prefix, nodeId: 'n1', executor: exec, capacityMb: 1024, metrics, logger: silent,
    pool: { kinds: { node: { min: 0, max: 1 } } }, maxStalledCount: stalls - 1, callbacks: { backoffMs: 50 },
    ...(o.schedulerChecks ? { stalledIntervalMs: 50 } : {}),
  });
  cleanups.push(async () => {
    await client.close();
    await sched.close(5000);
    await conn.quit();
    expect(exec.live.size).toBe(0);
    expect(await keysWithoutTtl(redis, prefix, [CallbackSigner.key(prefix)])).toEqual([]);
    const all = await redis.keys(`${prefix}:*`);
    if (all.length) await redis.del(...all);
  });

  const { invocationId: id } = await client.enqueue({ fn, payload: { kind: 'event', body: Buffer.from('{}') }, mode: 'async', callbackUrl: r.url });
  const jobKey = `${keys.bullPrefix}:${keys.tenantQueue(tenant)}:${id}`;
  const opts = { connection: bullConnection(conn), prefix: keys.bullPrefix, autorun: false };
  if (o.schedulerChecks) {
    // one dying fetch; the scheduler's own stalled-job check marks the job (its 'stalled' event), its worker fails it
    expect(stalls).toBe(1);
    const dying = new Worker(keys.tenantQueue(tenant), null, { ...opts, lockDuration: 150 });
    expect((await dying.getNextJob('dead-1'))?.id).toBe(id);
    await dying.close();
    await sched.start();
    return { client, metrics, fn, id, hits: r.hits };
  }
  const checker = new Worker(keys.tenantQueue(tenant), null, { ...opts, stalledInterval: 50, maxStalledCount: stalls - 1 });
  try {
    for (let i = 1; i <= stalls; i++) {
      const dying = new Worker(keys.tenantQueue(tenant), null, { ...opts, lockDuration: 150 });
      const job = await dying.getNextJob(`dead-${i}`);
      expect(job?.id).toBe(id);
      await dying.close();
      if (i === 1) void checker.startStalledCheckTimer();
      await until(() => redis.hget(jobKey, 'stc'), (n) => Number(n) === i, 3000);
    }
    expect(await redis.hget(jobKey, 'defa')).toBe(STALLED_OUT_REASON);
  } finally {
    await checker.close();
  }
  await beforeStart?.({ prefix, fn, id, url: r.url });
  await sched.start();
  return { client, metrics, fn, id, hits: r.hits };
}

describe('a job whose worker was lost too many times', () => {
  it('ends failed with Crashed (worker-lost), as a dead letter, counted, and calls back', async () => {
    const { client, metrics, fn, id, hits } = await stalledOut(2);
    const rec = await until(() => client.get(fn.tenant, id), (x) => x?.status === 'failed', 3000);
    expect(rec!.error).toMatchObject({ type: 'Crashed', reason: 'worker-lost', stalls: 2 });
    expect(rec!.error!.message).toMatch(/worker was lost 2 times/);
    expect(rec!.finishedAt).toBeGreaterThan(0);
    expect((await client.listDeadLetters(fn.tenant)).map((x) => x.id)).toEqual([id]);
    await until(() => hits.length, (n) => n >= 1, 3000);
    expect(JSON.parse(hits[0]!.body)).toMatchObject({ id, status: 'failed', error: { type: 'Crashed' } });
    expect(hits[0]!.headers['x-fnhost-status']).toBe('failed');
    const line = (await metrics.text()).split('\n').find((l) => l.startsWith('fnhost_invocations_total{') && l.includes(`function="${fn.name}"`));
    expect(line).toMatch(/outcome="Crashed"/);
    expect(Number(line!.split(' ').pop())).toBe(1);
  }, 10_000);

  it("is finished as the scheduler's own stalled-job check marks it, and counted once", async () => {
    const { client, metrics, fn, id, hits } = await stalledOut(1, undefined, { schedulerChecks: true });
    const rec = await until(() => client.get(fn.tenant, id), (x) => x?.status === 'failed', 3000);
    expect(rec!.error).toMatchObject({ type: 'Crashed', reason: 'worker-lost', stalls: 1 });
    await until(() => client.listDeadLetters(fn.tenant), (l) => l.length === 1, 3000);
    await until(() => hits.length, (n) => n >= 1, 3000);
    expect(JSON.parse(hits[0]!.body)).toMatchObject({ id, status: 'failed' });
    const line = (await metrics.text()).split('\n').find((l) => l.startsWith('fnhost_invocations_total{') && l.includes(`function="${fn.name}"`));
    expect(Number(line!.split(' ').pop())).toBe(1);
    expect(hits).toHaveLength(1);
  }, 10_000);

  it('leaves a record that is already final as it is: its callback goes out, a success leaves the dead-letter list', async () => {
    const { client, fn, id, hits } = await stalledOut(1, async ({ prefix, fn, id, url }) => {
      // the attempt wrote its result (and, in the same script, its callback into the outbox), then its node died
      // before telling BullMQ or moving the callback to the delivery queue
      const rec = { id, tenant: fn.tenant, function: fn.name, version: fn.version, mode: 'async' as const, status: 'succeeded' as const, attempts: 1, createdAt: Date.now(), finishedAt: Date.now(), response: { status: 200, headers: {}, body: 'eyJvayI6MX0=' } };
      const cb = new Callbacks({ redis, prefix, options: callbackOptions({}), log: silent });
      try {
        const outbox = cb.outboxEntry(url, fromStored(rec));
        expect(await setRecord(redis, createKeys(prefix).record(fn.tenant, id), rec, 600, { outbox })).toBe(true);
      } finally {
        await cb.close();
      }
    });
    await until(() => hits.length, (n) => n >= 1, 3000);
    expect(JSON.parse(hits[0]!.body)).toMatchObject({ id, status: 'succeeded' });
    expect((await client.get(fn.tenant, id))!.status).toBe('succeeded');
    await until(() => client.listDeadLetters(fn.tenant), (l) => l.length === 0, 3000);
  }, 10_000);
});
