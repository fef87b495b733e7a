/**
 * purgeTenant (services/scheduler/client.ts, tenant deletion) drops the tenant's completion callbacks that are
 * not sent yet — waiting, and delayed between retries — from the callbacks queue shared by every tenant, and
 * leaves other tenants' alone; also those still in the outbox, and its failed callbacks (jobs and list).
 * Real Redis and BullMQ; in the first test no delivery worker runs, so the callbacks stay queued.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { Queue } from 'bullmq';
import { redisUrl } from '../helpers/redis.ts';
import { bullConnection, createInvocationClient } from '../../services/scheduler/client.ts';
import { CALLBACK_QUEUE, Callbacks, callbackOptions, type CallbackJob } from '../../services/scheduler/callbacks.ts';
import { createKeys } from '../../services/scheduler/keys.ts';
import { until } from '../helpers/until.ts';
import { createLogger } from '../../services/common/log.ts';
import type { InvocationRecord } from '../../services/scheduler/types.ts';

let redis: Redis;
beforeAll(() => {
  redis = new Redis(redisUrl(), { maxRetriesPerRequest: null });
});
afterAll(async () => {
  await redis.quit();
});

function finalRecord(tenant: string): InvocationRecord {
  const now = Date.now();
  return { id: randomUUID(), tenant, function: 'f', version: 1, mode: 'async', status: 'succeeded', attempts: 1, createdAt: now, finishedAt: now };
}

describe('purgeTenant and completion callbacks', () => {
  it("drops the tenant's waiting and delayed callbacks, and only those", async () => {
    const prefix = `cbp-${randomUUID().slice(0, 8)}`;
    const gone = `gone-${randomUUID().slice(0, 6)}`;
    const kept = `kept-${randomUUID().slice(0, 6)}`;
    const cb = new Callbacks({ redis, prefix, options: callbackOptions({}), log: createLogger('test', 'silent') });
    const q = new Queue<CallbackJob>(CALLBACK_QUEUE, { connection: bullConnection(redis), prefix: `${prefix}:bull` });
    const client = createInvocationClient({ redisUrl: redisUrl(), prefix });
    try {
      await cb.enqueue('http://127.0.0.1:9/a', finalRecord(gone));
      await cb.enqueue('http://127.0.0.1:9/b', finalRecord(gone));
      const keep = finalRecord(kept);
      await cb.enqueue('http://127.0.0.1:9/c', keep);
      // a callback waiting for its next retry sits in the delayed set
      await q.add('callback', { url: 'http://127.0.0.1:9/d', tenant: gone, function: 'f', invocationId: randomUUID(), status: 'failed', body: '{}' }, { delay: 60_000 });
      expect(await q.getJobCounts('waiting', 'delayed')).toMatchObject({ waiting: 3, delayed: 1 });

      await client.purgeTenant!(gone);

      expect(await q.getJobCounts('waiting', 'delayed')).toMatchObject({ waiting: 1, delayed: 0 });
      const left = await q.getJobs(['waiting', 'delayed']);
      expect(left.map((j) => j.data.tenant)).toEqual([kept]);
      expect(left[0]!.data.invocationId).toBe(keep.id);
    } finally {
      await client.close();
      await cb.close();
      await q.obliterate({ force: true });
      await q.close();
      const all = await redis.keys(`${prefix}:*`);
      if (all.length) await redis.del(...all);
    }
  });

  it("drops the tenant's callbacks still in the outbox and its failed callbacks, and only those", async () => {
    const prefix = `cbp-${randomUUID().slice(0, 8)}`;
    const gone = `gone-${randomUUID().slice(0, 6)}`;
    const kept = `kept-${randomUUID().slice(0, 6)}`;
    // one attempt, to a port nothing listens on: refused at once, failed for good, listed
    const cb = new Callbacks({ redis, prefix, options: { ...callbackOptions({}), attempts: 1, sweepMs: 60_000 }, log: createLogger('test', 'silent') });
    const q = new Queue<CallbackJob>(CALLBACK_QUEUE, { connection: bullConnection(redis), prefix: `${prefix}:bull` });
    const client = createInvocationClient({ redisUrl: redisUrl(), prefix });
    try {
      cb.start();
      const lost = finalRecord(gone);
      const lostKept = finalRecord(kept);
      await cb.enqueue('http://127.0.0.1:9/a', lost);
      await cb.enqueue('http://127.0.0.1:9/b', lostKept);
      const failedGone = createKeys(prefix).failedCallbacks(gone);
      const failedKept = createKeys(prefix).failedCallbacks(kept);
      await until(async () => (await redis.zcard(failedGone.index)) + (await redis.zcard(failedKept.index)), (n) => n === 2, 5000);
      await until(() => q.getJobCountByTypes('failed'), (n) => n === 2, 5000);
      // entries the sweep (a minute away) has not moved yet
      const outbox = createKeys(prefix).callbackOutbox();
      for (const o of [cb.outboxEntry('http://127.0.0.1:9/c', finalRecord(gone)), cb.outboxEntry('http://127.0.0.1:9/d', finalRecord(kept))]) await redis.hset(outbox, o.field, o.entry);

      await client.purgeTenant!(gone);

      expect((await redis.hvals(outbox)).map((e) => (JSON.parse(e) as CallbackJob).tenant)).toEqual([kept]);
      expect(await redis.exists(failedGone.index, failedGone.info)).toBe(0);
      expect(await redis.zrange(failedKept.index, 0, -1)).toEqual([`${lostKept.id}.${lostKept.finishedAt}`]);
      expect((await q.getJobs(['failed'])).map((j) => j.data.tenant)).toEqual([kept]);
    } finally {
      await client.close();
      await cb.close();
      await q.obliterate({ force: true });
      await q.close();
      const all = await redis.keys(`${prefix}:*`);
      if (all.length) await redis.del(...all);
    }
  });
});
