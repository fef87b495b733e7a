/**
 * An async invocation whose job is gone ('job-lost': never added because the gateway died mid-enqueue, or
 * removed) is finished by the sweeper (services/scheduler/sweeper.ts) — and, when it was enqueued with
 * X-Callback-Url, called back: the queued record keeps the URL in its hash (field `c`, services/scheduler/keys.ts
 * RECORD_CALLBACK_FIELD), never in the record JSON a GET renders. Real Redis, BullMQ and a loopback receiver;
 * sandboxes faked (FakeExecutor).
 */
import { describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { Queue } from 'bullmq';
import { redisUrl } from '../helpers/redis.ts';
import { until } from '../helpers/until.ts';
import { useCleanups, useRedis, keysWithoutTtl } from '../helpers/hooks.ts';
import { hookReceiver } from '../helpers/hook-receiver.ts';
import { bullConnection, createInvocationClient } from '../../services/scheduler/client.ts';
import { createScheduler } from '../../services/scheduler/scheduler.ts';
import { RECORD_CALLBACK_FIELD, createKeys } from '../../services/scheduler/keys.ts';
import { createMetrics } from '../../services/common/metrics.ts';
import { createLogger } from '../../services/common/log.ts';
import { FakeExecutor, fnv } from '../fixtures/scheduler/fake-executor.ts';

const redis = useRedis();
const cleanups = useCleanups();

describe('sweeper: a job-lost invocation', () => {
  it('is called back when it was enqueued with a callback URL; the URL is never rendered', async () => {
    const prefix = `swcb-${randomUUID().slice(0, 8)}`;
    const keys = createKeys(prefix);
    const fn = fnv({ tenant: `ten-${randomUUID().slice(0, 6)}`, retries: 3 });
    const r = await hookReceiver(cleanups);
    const client = createInvocationClient({ redisUrl: redisUrl(), prefix });
    const conn = new Redis(redisUrl(), { maxRetriesPerRequest: null });
    const q = new Queue(keys.tenantQueue(fn.tenant), { connection: bullConnection(conn), prefix: keys.bullPrefix });
    const exec = new FakeExecutor();
    const sched = createScheduler({
      redisUrl: redisUrl(), prefix, nodeId: 'n1', executor: exec, capacityMb: 1024, metrics: createMetrics({ defaultMetrics: false }),
      logger: createLogger('test', 'silent'), pool: { kinds: { node: { min: 0, max: 1 } } }, sweeper: { intervalMs: 50, graceMs: 100 },
    });
    cleanups.push(async () => {
      await client.close();
      await sched.close(5000);
      await q.close();
      await conn.quit();
      expect(exec.live.size).toBe(0);
      expect(await keysWithoutTtl(redis, prefix, [keys.callbackSecret()])).toEqual([]);
      const all = await redis.keys(`${prefix}:*`);
      if (all.length) await redis.del(...all);
    });

    // no scheduler yet: the jobs wait; then they are removed (as if never added)
    const url = `${r.url}?token=t0ken`;
    const { invocationId: withCb } = await client.enqueue({ fn, payload: { kind: 'event', body: Buffer.from('{}') }, mode: 'async', callbackUrl: url });
    const { invocationId: without } = await client.enqueue({ fn, payload: { kind: 'event', body: Buffer.from('{}') }, mode: 'async' });
    expect(await redis.hget(keys.record(fn.tenant, withCb), RECORD_CALLBACK_FIELD)).toBe(url);
    expect(await redis.hexists(keys.record(fn.tenant, without), RECORD_CALLBACK_FIELD)).toBe(0);
    expect(JSON.stringify(await client.get(fn.tenant, withCb))).not.toContain('t0ken');
    expect(await q.remove(withCb)).toBe(1);
    expect(await q.remove(without)).toBe(1);

    await sched.start();
    const rec = await until(() => client.get(fn.tenant, withCb), (x) => x?.status === 'failed', 5000);
    expect(rec!.error).toMatchObject({ type: 'Crashed', reason: 'job-lost' });
    await until(() => r.hits.length, (n) => n >= 1, 5000);
    const hit = r.hits[0]!;
    expect(hit.headers['x-fnhost-invocation-id']).toBe(withCb);
    expect(hit.headers['x-fnhost-status']).toBe('failed');
    expect(JSON.parse(hit.body)).toMatchObject({ id: withCb, status: 'failed', error: { type: 'Crashed', reason: 'job-lost' } });
    expect(JSON.stringify(await client.get(fn.tenant, withCb))).not.toContain('t0ken');
    // the other ends the same way, without a callback; neither is a dead letter (the payload went with the job)
    await until(() => client.get(fn.tenant, without), (x) => x?.status === 'failed', 5000);
    await until(() => redis.exists(keys.openInvocations()), (n) => n === 0, 5000);
    expect(r.hits).toHaveLength(1);
    expect(await client.listDeadLetters(fn.tenant)).toEqual([]);
  }, 20_000);
});
