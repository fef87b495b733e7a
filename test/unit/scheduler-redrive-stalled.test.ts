/**
 * A dead letter that a redrive sends back gets fresh attempts — including a fresh stall count. A job that stalled
 * out (its workers died: Crashed, reason worker-lost, services/scheduler/process-job.ts) carries BullMQ's stall
 * count (`stc`) in its hash, and a plain retry keeps it: without resetting it, the first node to die while running
 * the redriven invocation would fail it again at once instead of handing it to another node
 * (services/scheduler/client.ts redrive). Dying nodes are BullMQ workers fetching by hand and never finishing
 * (lock 150 ms, not renewed), as in scheduler-stalled.test.ts. Real Redis and BullMQ; sandboxes faked.
 */
import { describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { Worker } from 'bullmq';
import { redisUrl } from '../helpers/redis.ts';
import { until } from '../helpers/until.ts';
import { useCleanups, useRedis, keysWithoutTtl } from '../helpers/hooks.ts';
import { bullConnection, createInvocationClient } from '../../services/scheduler/client.ts';
import { createScheduler, type Scheduler } from '../../services/scheduler/scheduler.ts';
import { createKeys } from '../../services/scheduler/keys.ts';
import { createMetrics } from '../../services/common/metrics.ts';
import { createLogger } from '../../services/common/log.ts';
import { FakeExecutor, fnv } from '../fixtures/scheduler/fake-executor.ts';

const redis = useRedis();
const cleanups = useCleanups();

describe('redrive of a dead letter that stalled out', () => {
  it('starts with a fresh stall count: one more dying node is retried, not failed', async () => {
    const prefix = `rdst-${randomUUID().slice(0, 8)}`;
    const keys = createKeys(prefix);
    const fn = fnv({ tenant: `ten-${randomUUID().slice(0, 6)}`, retries: 3 });
    const client = createInvocationClient({ redisUrl: redisUrl(), prefix });
    const conn = new Redis(redisUrl(), { maxRetriesPerRequest: null });
    const execs: FakeExecutor[] = [];
    const scheds: Scheduler[] = [];
    cleanups.push(async () => {
      await client.close();
      for (const s of scheds) await s.close(5000);
      await conn.quit();
      for (const e of execs) expect(e.live.size).toBe(0);
      expect(await keysWithoutTtl(redis, prefix, [keys.callbackSecret()])).toEqual([]);
      const all = await redis.keys(`${prefix}:*`);
      if (all.length) await redis.del(...all);
    });
    /** a node with BullMQ's default stall limit (1) checking every 50 ms */
    const node = async (id: string) => {
      const exec = new FakeExecutor();
      execs.push(exec);
      const s = createScheduler({
        redisUrl: redisUrl(), prefix, nodeId: id, executor: exec, capacityMb: 1024, metrics: createMetrics({ defaultMetrics: false }),
        logger: createLogger('test', 'silent'), pool: { kinds: { node: { min: 0, max: 1 } } }, maxStalledCount: 1, stalledIntervalMs: 50, sweeper: false,
      });
      scheds.push(s);
      await s.start();
      return s;
    };
    const jobKey = (id: string) => `${keys.bullPrefix}:${keys.tenantQueue(fn.tenant)}:${id}`;
    const opts = { connection: bullConnection(conn), prefix: keys.bullPrefix, autorun: false };
    /** a node that takes the job and dies (its lock lapses after 150 ms) */
    const dies = async (id: string) => {
      const w = new Worker(keys.tenantQueue(fn.tenant), null, { ...opts, lockDuration: 150 });
      expect((await w.getNextJob(`dead-${randomUUID()}`))?.id).toBe(id);
      await w.close();
    };

    const { invocationId: id } = await client.enqueue({ fn, payload: { kind: 'event', body: Buffer.from('{}') }, mode: 'async' });
    // two nodes die running it while only a bare stalled-job check runs (limit 1): the second stall is one too many
    const checker = new Worker(keys.tenantQueue(fn.tenant), null, { ...opts, stalledInterval: 50, maxStalledCount: 1 });
    await dies(id);
    void checker.startStalledCheckTimer();
    await until(() => redis.hget(jobKey(id), 'stc'), (n) => Number(n) === 1, 5000);
    await dies(id);
    await until(() => redis.hget(jobKey(id), 'defa'), (d) => d !== null, 5000);
    await checker.close();
    // a live node fails it (worker-lost): a dead letter
    const n1 = await node('n1');
    const lost = await until(() => client.get(fn.tenant, id), (x) => x?.status === 'failed', 5000);
    expect(lost!.error).toMatchObject({ type: 'Crashed', reason: 'worker-lost' });
    await until(() => client.listDeadLetters(fn.tenant), (l) => l.length === 1, 5000);
    await n1.close(5000);

    // redriven; the first node to take it dies; a live node gives it back after that one stall and runs it
    await client.redrive(fn.tenant, id);
    await dies(id);
    await node('n2');
    const rec = await until(() => client.get(fn.tenant, id), (x) => x?.status === 'succeeded' || x?.status === 'failed', 5000);
    expect(rec!.status).toBe('succeeded');
    expect(await client.listDeadLetters(fn.tenant)).toEqual([]);
  }, 20_000);
});
