/**
 * services/scheduler/callback-failures.ts against real Redis and BullMQ: callbacks fail for real (one attempt
 * each, to a loopback port nothing listens on: connection refused), the delivery worker lists them, and the
 * page cursor names the last entry seen — a failure arriving between two pages, or the cursor's own entry
 * being deleted meanwhile, neither repeats nor skips an entry. Bad input is InvalidRequest and changes nothing.
 */
import { describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { redisUrl } from '../helpers/redis.ts';
import { until } from '../helpers/until.ts';
import { useCleanups, useRedis, keysWithoutTtl } from '../helpers/hooks.ts';
import { Callbacks, callbackOptions, deliveryId } from '../../services/scheduler/callbacks.ts';
import { createKeys } from '../../services/scheduler/keys.ts';
import { FailedCallbacks } from '../../services/scheduler/callback-failures.ts';
import { CallbackSigner } from '../../services/scheduler/callback-signer.ts';
import { createLogger } from '../../services/common/log.ts';
import type { InvocationRecord } from '../../services/scheduler/types.ts';

const redis = useRedis();
const cleanups = useCleanups();

function finalRecord(tenant: string, finishedAt: number): InvocationRecord {
  return { id: randomUUID(), tenant, function: 'f', version: 1, mode: 'async', status: 'succeeded', attempts: 1, createdAt: finishedAt, finishedAt };
}

async function setup() {
  const prefix = `cbfl-${randomUUID().slice(0, 8)}`;
  const tenant = `t-${randomUUID().slice(0, 6)}`;
  const conn = new Redis(redisUrl(), { maxRetriesPerRequest: null });
  const cb = new Callbacks({ redis: conn, prefix, options: { ...callbackOptions({}), attempts: 1, sweepMs: 60_000 }, log: createLogger('test', 'silent') });
  const failed = new FailedCallbacks(redis, prefix);
  cleanups.push(async () => {
    await failed.close();
    await cb.close();
    await conn.quit();
    // the generated callback secret is permanent by design (services/scheduler/callback-signer.ts)
    expect(await keysWithoutTtl(redis, prefix, [CallbackSigner.key(prefix)])).toEqual([]);
    const keys = await redis.keys(`${prefix}:*`);
    if (keys.length) await redis.del(...keys);
  });
  cb.start();
  const index = createKeys(prefix).failedCallbacks(tenant).index;
  /** a callback to a closed port: refused at once, failed for good, listed */
  const fail = async (at: number) => {
    const rec = finalRecord(tenant, at);
    const before = await redis.zcard(index);
    await cb.enqueue('http://127.0.0.1:9/x', rec);
    await until(() => redis.zcard(index), (n) => n === before + 1, 5000);
    return deliveryId(rec);
  };
  return { prefix, tenant, failed, fail };
}

describe('FailedCallbacks', () => {
  it('pages by the last entry seen: new failures and a deleted cursor entry shift nothing', async () => {
    const { tenant, failed, fail } = await setup();
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) ids.push(await fail(Date.now() + i));
    // newest first
    const all = await failed.list(tenant);
    expect(all.failed.map((f) => f.deliveryId)).toEqual([...ids].reverse());
    expect(all.cursor).toBeUndefined();
    expect(all.failed[0]).toMatchObject({ function: 'f', url: 'http://127.0.0.1:9/x', status: 'succeeded', attempts: 1 });
    expect(all.failed[0]!.lastHttpStatus).toBeUndefined();
    expect(all.failed[0]!.lastError).toMatch(/ECONNREFUSED/);

    const p1 = await failed.list(tenant, { limit: 2 });
    expect(p1.failed.map((f) => f.deliveryId)).toEqual([ids[2], ids[1]]);
    expect(p1.cursor).toBeDefined();
    // a new failure lands on top between the two pages: the next page is still the oldest one, once
    const newest = await fail(Date.now() + 10);
    const p2 = await failed.list(tenant, { limit: 2, cursor: p1.cursor! });
    expect(p2.failed.map((f) => f.deliveryId)).toEqual([ids[0]]);
    expect(p2.cursor).toBeUndefined();
    // the cursor's own entry deleted meanwhile: the page after it is unchanged
    await failed.remove(tenant, ids[1]!);
    expect((await failed.list(tenant, { limit: 2, cursor: p1.cursor! })).failed.map((f) => f.deliveryId)).toEqual([ids[0]]);
    expect((await failed.list(tenant)).failed.map((f) => f.deliveryId)).toEqual([newest, ids[2], ids[0]]);
  }, 20_000);

  it('bad tenant, id, limit or cursor is InvalidRequest; an unknown or other tenant id NotFound; nothing changes', async () => {
    const { tenant, failed, fail } = await setup();
    const id = await fail(Date.now());
    const invalid = { type: 'InvalidRequest' };
    await expect(failed.list('')).rejects.toMatchObject(invalid);
    for (const limit of [0, -1, 1.5, 1001]) await expect(failed.list(tenant, { limit })).rejects.toMatchObject({ ...invalid, details: { field: 'limit' } });
    for (const cursor of ['', '12', 'x:y', `1:${id}:z`]) await expect(failed.list(tenant, { cursor })).rejects.toMatchObject({ ...invalid, details: { field: 'cursor' } });
    for (const bad of ['', 'x', 'a.b', `${id} `, '../x.1']) {
      await expect(failed.redrive(tenant, bad)).rejects.toMatchObject({ ...invalid, details: { field: 'deliveryId' } });
      await expect(failed.remove(tenant, bad)).rejects.toMatchObject(invalid);
    }
    await expect(failed.redrive(`${tenant}-other`, id)).rejects.toMatchObject({ type: 'NotFound' });
    await expect(failed.remove(`${tenant}-other`, id)).rejects.toMatchObject({ type: 'NotFound' });
    await expect(failed.redrive(tenant, `${randomUUID()}.1`)).rejects.toMatchObject({ type: 'NotFound' });
    expect((await failed.list(tenant)).failed.map((f) => f.deliveryId)).toEqual([id]);
    expect(await failed.redriveAll(`${tenant}-other`)).toEqual({ redriven: 0 });
    expect((await failed.list(tenant)).failed.map((f) => f.deliveryId)).toEqual([id]);
  }, 20_000);
});
