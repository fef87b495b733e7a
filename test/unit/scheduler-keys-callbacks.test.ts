/**
 * The completion-callback keys are named in services/scheduler/keys.ts like every other key, under the names
 * they had when callbacks.ts / callback-failures.ts / callback-signer.ts built them from the prefix: data written
 * under those names before (an outbox entry, a failed-callback list, the generated secret) is still read. The
 * names are pinned here as literals. Real Redis and BullMQ.
 */
import { describe, expect, it } from 'vitest';
import { createHmac, randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { Queue } from 'bullmq';
import { redisUrl } from '../helpers/redis.ts';
import { until } from '../helpers/until.ts';
import { useCleanups, useRedis } from '../helpers/hooks.ts';
import { hookReceiver } from '../helpers/hook-receiver.ts';
import { bullConnection } from '../../services/scheduler/client.ts';
import { CALLBACK_QUEUE, Callbacks, callbackBody, callbackOptions, deliveryId, dropTenantCallbacks, type CallbackJob, type FailedCallback } from '../../services/scheduler/callbacks.ts';
import { FailedCallbacks } from '../../services/scheduler/callback-failures.ts';
import { CallbackSigner } from '../../services/scheduler/callback-signer.ts';
import { createKeys } from '../../services/scheduler/keys.ts';
import { createLogger } from '../../services/common/log.ts';
import { createMetrics } from '../../services/common/metrics.ts';
import type { InvocationRecord } from '../../services/scheduler/types.ts';

const redis = useRedis();
const cleanups = useCleanups();
const silent = createLogger('test', 'silent');

describe('callback keys', () => {
  it('are named by Keys, as before', () => {
    const k = createKeys('fnhost');
    expect(k.callbackOutbox()).toBe('fnhost:callback:outbox');
    expect(k.callbackSecret()).toBe('fnhost:callback:secret');
    expect(k.failedCallbacks('acme')).toEqual({ index: 'fnhost:callback:failed:acme', info: 'fnhost:callback:failedinfo:acme' });
    // names are encoded as every tenant-scoped key (':' can never reach into another tenant's keys); the old
    // builder was encodeURIComponent with '.' → '%2E'
    expect(k.failedCallbacks('a.b:c/é')).toEqual({ index: 'fnhost:callback:failed:a%2Eb%3Ac%2F%C3%A9', info: 'fnhost:callback:failedinfo:a%2Eb%3Ac%2F%C3%A9' });
    for (const t of ['x', 'A_b-9', 'a.b', 'a:b', 'a b', "it's", '(x)*!~', 'ü']) {
      expect(k.failedCallbacks(t).index).toBe(`fnhost:callback:failed:${encodeURIComponent(t).replace(/\./g, '%2E')}`);
    }
    expect(createKeys('p-2').callbackOutbox()).toBe('p-2:callback:outbox');
    expect(CallbackSigner.key('p-2')).toBe('p-2:callback:secret');
  });

  it('data under those names is read and written: secret, outbox entry, failed list; a tenant purge drops them', async () => {
    const prefix = `cbk-${randomUUID().slice(0, 8)}`;
    const tenant = `t.${randomUUID().slice(0, 6)}`; // a '.' exercises the encoding
    const enc = tenant.replace(/\./g, '%2E');
    const conn = new Redis(redisUrl(), { maxRetriesPerRequest: null });
    const q = new Queue<CallbackJob>(CALLBACK_QUEUE, { connection: bullConnection(conn), prefix: `${prefix}:bull` });
    const cb = new Callbacks({ redis: conn, prefix, options: { ...callbackOptions({}), attempts: 1, sweepMs: 60_000 }, log: silent });
    const failed = new FailedCallbacks(redis, prefix, createMetrics({ defaultMetrics: false }));
    cleanups.push(async () => {
      await failed.close();
      await cb.close();
      await q.close();
      await conn.quit();
      const all = await redis.keys(`${prefix}:*`);
      if (all.length) await redis.del(...all);
    });
    const r = await hookReceiver(cleanups);

    // the generated secret, as an older host stored it: used, not replaced
    const hostSecret = 'ab'.repeat(32);
    await redis.set(`${prefix}:callback:secret`, hostSecret);
    const expected = createHmac('sha256', Buffer.from(hostSecret, 'hex')).update(`fnhost-callback-v1:${tenant}`).digest('hex');
    expect(await new CallbackSigner(redis, prefix).secretFor(tenant)).toBe(expected);
    expect(await redis.get(`${prefix}:callback:secret`)).toBe(hostSecret);

    // an outbox entry, as an older scheduler left it: the sweep moves it and the callback goes out
    const at = Date.now() - 10_000;
    const rec: InvocationRecord = { id: randomUUID(), tenant, function: 'f', version: 1, mode: 'async', status: 'succeeded', attempts: 1, createdAt: at, finishedAt: at };
    const job: CallbackJob = { url: r.url, tenant, function: 'f', invocationId: rec.id, status: 'succeeded', body: callbackBody(rec) };
    await redis.hset(`${prefix}:callback:outbox`, deliveryId(rec), JSON.stringify(job));
    expect(await cb.sweep()).toBe(1);
    expect(await redis.exists(`${prefix}:callback:outbox`)).toBe(0);
    cb.start();
    await until(() => r.hits.length, (n) => n === 1, 5000);
    expect(r.hits[0]!.headers['x-fnhost-delivery-id']).toBe(deliveryId(rec));

    // a callback that fails for real (closed port, one attempt) is listed under the same names
    const bad: InvocationRecord = { ...rec, id: randomUUID() };
    await cb.enqueue('http://127.0.0.1:9/x', bad);
    const list = await until(() => failed.list(tenant), (p) => p.failed.length === 1, 5000);
    expect(list.failed[0]!.deliveryId).toBe(deliveryId(bad));
    expect(await redis.zrange(`${prefix}:callback:failed:${enc}`, 0, -1)).toEqual([deliveryId(bad)]);
    expect(await redis.hkeys(`${prefix}:callback:failedinfo:${enc}`)).toEqual([deliveryId(bad)]);
    // an entry an older worker listed (same names) is read too
    const older: FailedCallback = { ...list.failed[0]!, lastError: 'written by an older host' };
    await redis.hset(`${prefix}:callback:failedinfo:${enc}`, older.deliveryId, JSON.stringify(older));
    expect((await failed.list(tenant)).failed).toEqual([older]);

    // the tenant purge finds them there
    await dropTenantCallbacks(q as unknown as Queue, tenant);
    expect(await redis.exists(`${prefix}:callback:failed:${enc}`, `${prefix}:callback:failedinfo:${enc}`)).toBe(0);
    expect(await q.getJob(deliveryId(bad))).toBeUndefined();
  }, 20_000);
});
