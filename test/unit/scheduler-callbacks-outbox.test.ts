/**
 * Durable queueing of completion callbacks (services/scheduler/callbacks.ts outbox): the callback is written
 * into the outbox by the same script as the final record, so a failure of the step that moves it to the
 * delivery queue loses nothing — the scheduler's sweep (and the next scheduler's start-up sweep) moves it.
 *
 * The failure is real: the scheduler connects as a Redis ACL user that may touch every key of its prefix except
 * the callbacks queue's id counter `P:bull:callbacks:id`, which BullMQ's add script declares (so every add to
 * that queue fails with NOPERM) and its worker scripts do not (so the delivery worker runs on). Lifting the
 * restriction (`ACL SETUSER … ~P:*`) is Redis recovering. Real Redis, real BullMQ, a real HTTP receiver on
 * loopback; sandboxes faked (FakeExecutor).
 */
import { describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { redisUrl } from '../helpers/redis.ts';
import { until } from '../helpers/until.ts';
import { bullConnection, createInvocationClient } from '../../services/scheduler/client.ts';
import { createScheduler, type Scheduler } from '../../services/scheduler/scheduler.ts';
import { createKeys } from '../../services/scheduler/keys.ts';
import { setRecord, toStored } from '../../services/scheduler/records.ts';
import { CALLBACK_QUEUE, Callbacks, callbackOptions, deliveryId, type CallbackOptions } from '../../services/scheduler/callbacks.ts';
import { CallbackSigner } from '../../services/scheduler/callback-signer.ts';
import { createLogger } from '../../services/common/log.ts';
import { FakeExecutor, fnv } from '../fixtures/scheduler/fake-executor.ts';
import type { InvocationRecord } from '../../services/scheduler/types.ts';
import { useRedis, useCleanups, keysWithoutTtl } from '../helpers/hooks.ts';
import { hookReceiver } from '../helpers/hook-receiver.ts';

const silent = createLogger('test', 'silent');
const redis = useRedis();
const cleanups = useCleanups();


/** A prefix whose keys are checked for leftovers and removed after the test; its callbacks queue. */
function prefixed() {
  const prefix = `cbo-${randomUUID().slice(0, 8)}`;
  const q = new Queue(CALLBACK_QUEUE, { connection: bullConnection(redis), prefix: `${prefix}:bull` });
  cleanups.push(async () => {
    await q.close();
    // nothing without a TTL but BullMQ's queues and the (by design permanent) generated callback secret
    expect(await keysWithoutTtl(redis, prefix, [CallbackSigner.key(prefix)])).toEqual([]);
    const keys = await redis.keys(`${prefix}:*`);
    if (keys.length) await redis.del(...keys);
  });
  const outbox = createKeys(prefix).callbackOutbox();
  const pending = async () => {
    const c = await q.getJobCounts('waiting', 'delayed', 'active', 'prioritized');
    return Object.values(c).reduce((a, b) => a + b, 0);
  };
  return { prefix, q, outbox, pending };
}

/**
 * A Redis user for `prefix` that can do everything but add to the callbacks queue (see the header); the URL
 * to connect as it, and `lift()` to grant it the whole prefix (Redis applies it to open connections at once).
 */
async function restrictedUser(prefix: string): Promise<{ url: string; lift: () => Promise<void> }> {
  const user = `cbo-${randomUUID().slice(0, 8)}`;
  const pass = randomUUID();
  const P = prefix;
  // glob patterns covering every key of the prefix except `P:bull:callbacks:id`; job ids start with a hex digit
  await redis.call('ACL', 'SETUSER', user, 'reset', 'on', `>${pass}`, '+@all', '&*',
    `~${P}:[^b]*`, `~${P}:bull:[^c]*`, `~${P}:bull:callbacks:[^i]*`, `~${P}:bull:callbacks:i[^d]*`, `~${P}:bull:callbacks:id?*`);
  // runs after the schedulers' clean-ups (pushed later, run first): deleting a user drops its connections
  cleanups.push(async () => {
    await redis.call('ACL', 'DELUSER', user);
  });
  const u = new URL(redisUrl());
  u.username = user;
  u.password = pass;
  return { url: u.toString(), lift: async () => void (await redis.call('ACL', 'SETUSER', user, `~${P}:*`)) };
}

function scheduler(url: string, prefix: string, nodeId: string, callbacks: Partial<CallbackOptions>): Scheduler {
  const exec = new FakeExecutor();
  const s = createScheduler({
    redisUrl: url, prefix, nodeId, executor: exec, capacityMb: 1024, keepAliveMs: 60_000, logger: silent,
    pool: { kinds: { node: { min: 0, max: 2 } } }, callbacks: { backoffMs: 50, ...callbacks },
  });
  cleanups.push(async () => {
    await s.close(5000);
    expect(exec.live.size).toBe(0);
  });
  return s;
}

const ev = (o: unknown) => ({ kind: 'event' as const, body: Buffer.from(JSON.stringify(o)) });

describe('completion callbacks: the outbox', () => {
  it('a callback whose queueing fails when the record is written still goes out once Redis takes it (the sweep)', async () => {
    const { prefix, outbox, pending } = prefixed();
    const user = await restrictedUser(prefix);
    const r = await hookReceiver(cleanups);
    const sched = scheduler(user.url, prefix, 'n1', { sweepMs: 100 });
    await sched.start();
    const client = createInvocationClient({ redisUrl: redisUrl(), prefix });
    cleanups.push(() => client.close());
    const fn = fnv({ tenant: `ten-${randomUUID().slice(0, 6)}` });

    const { invocationId } = await client.enqueue({ fn, payload: ev({}), mode: 'async', callbackUrl: r.url });
    const rec = await until(() => client.get(fn.tenant, invocationId), (x) => x?.status === 'succeeded', 10_000);
    // the move failed (NOPERM) and keeps failing at every sweep: the callback waits in the outbox, with a TTL
    await until(() => redis.hlen(outbox), (n) => n === 1, 3000);
    expect(await redis.hkeys(outbox)).toEqual([deliveryId(rec!)]);
    expect(await redis.ttl(outbox)).toBeGreaterThan(0);
    expect(r.hits).toHaveLength(0);

    await user.lift();
    await until(() => r.hits.length, (n) => n >= 1, 5000);
    expect(JSON.parse(r.hits[0]!.body)).toMatchObject({ id: invocationId, status: 'succeeded' });
    expect(r.hits[0]!.headers['x-fnhost-delivery-id']).toBe(deliveryId(rec!));
    await until(() => redis.exists(outbox), (n) => n === 0, 3000);
    await until(() => pending(), (n) => n === 0);
    expect(r.hits).toHaveLength(1);
  }, 20_000);

  it("a callback left in the outbox by a scheduler that stopped goes out at the next scheduler's start", async () => {
    const { prefix, outbox, pending } = prefixed();
    const user = await restrictedUser(prefix);
    const r = await hookReceiver(cleanups);
    // sweeps a minute apart: only the start-up sweep can move the entry within the test's deadline
    const first = scheduler(user.url, prefix, 'n1', { sweepMs: 60_000 });
    await first.start();
    const client = createInvocationClient({ redisUrl: redisUrl(), prefix });
    cleanups.push(() => client.close());
    const fn = fnv({ tenant: `ten-${randomUUID().slice(0, 6)}`, retries: 2 });

    const { invocationId } = await client.enqueue({ fn, payload: ev({ failTimes: 5, key: randomUUID() }), mode: 'async', callbackUrl: r.url });
    await until(() => client.get(fn.tenant, invocationId), (x) => x?.status === 'failed', 10_000);
    await until(() => redis.hlen(outbox), (n) => n === 1, 3000);
    await first.close(5000);
    expect(await redis.hlen(outbox)).toBe(1);
    expect(r.hits).toHaveLength(0);

    await user.lift();
    const next = scheduler(redisUrl(), prefix, 'n2', { sweepMs: 60_000 });
    await next.start();
    await until(() => r.hits.length, (n) => n >= 1, 5000);
    expect(JSON.parse(r.hits[0]!.body)).toMatchObject({ id: invocationId, status: 'failed', attempts: 2, error: { type: 'FunctionError' } });
    expect(await redis.exists(outbox)).toBe(0);
    await until(() => pending(), (n) => n === 0);
    expect(r.hits).toHaveLength(1);
  }, 20_000);

  it('moving is idempotent: the owner and sweeps racing on one entry queue one callback, POSTed once', async () => {
    const { prefix, q, outbox, pending } = prefixed();
    const r = await hookReceiver(cleanups);
    // a worker's connection, as the scheduler's (BullMQ blocks on it)
    const conn = new Redis(redisUrl(), { maxRetriesPerRequest: null });
    cleanups.push(async () => void (await conn.quit()));
    const cb = new Callbacks({ redis: conn, prefix, options: { ...callbackOptions({}), sweepMs: 60_000 }, log: silent });
    cleanups.push(() => cb.close());
    const now = Date.now();
    const rec: InvocationRecord = { id: randomUUID(), tenant: 't1', function: 'f', version: 1, mode: 'async', status: 'succeeded', attempts: 1, createdAt: now, finishedAt: now };
    const recKey = createKeys(prefix).record(rec.tenant, rec.id);
    const o = cb.outboxEntry(r.url, rec);
    expect(await setRecord(redis, recKey, toStored(rec), 600, { outbox: o })).toBe(true);
    expect(await redis.ttl(outbox)).toBeGreaterThan(500);
    // a second final write (a late attempt) is refused and writes no second entry
    const late = { ...rec, finishedAt: now + 1 };
    expect(await setRecord(redis, recKey, toStored(late), 600, { outbox: cb.outboxEntry(r.url, late) })).toBe(false);
    expect(await redis.hkeys(outbox)).toEqual([deliveryId(rec)]);

    await Promise.all([cb.dispatch(o), cb.dispatch(o), cb.sweep(), cb.flush(deliveryId(rec))]);
    expect(await redis.exists(outbox)).toBe(0);
    expect((await q.getJobs(['waiting'])).map((j) => j.id)).toEqual([deliveryId(rec)]);
    // a move of an entry already moved is a no-op too (the entry is gone: nothing is queued again)
    await cb.flush(deliveryId(rec));
    cb.start();
    await until(() => r.hits.length, (n) => n >= 1, 5000);
    await until(() => pending(), (n) => n === 0);
    expect(r.hits).toHaveLength(1);
    await redis.del(recKey);
  }, 20_000);
});
