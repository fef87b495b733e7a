/**
 * Completion-callback metrics at GET /metrics (services/common/metrics.ts, recorded by services/scheduler/
 * callbacks.ts and callback-failures.ts) move by exactly what the test did: callbacks delivered, retried and
 * failed; outbox entries moved by the sweep (only those whose writer's own move did not happen — an entry younger
 * than SWEEP_GRACE_MS is its writer's); redrives; and the outbox length and each tenant's failed callbacks as
 * gauges read at scrape time. Real Redis and BullMQ, real loopback receivers, the gateway's /metrics route
 * through `app.request()` (gateway-harness.ts) on its own registry.
 */
import { describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { Queue } from 'bullmq';
import { redisUrl } from '../helpers/redis.ts';
import { until } from '../helpers/until.ts';
import { useCleanups, useRedis, keysWithoutTtl } from '../helpers/hooks.ts';
import { hookReceiver } from '../helpers/hook-receiver.ts';
import { parsePromText, type PromText } from '../helpers/prom-text.ts';
import { bullConnection } from '../../services/scheduler/client.ts';
import { CALLBACK_QUEUE, Callbacks, SWEEP_GRACE_MS, callbackOptions, deliveryId } from '../../services/scheduler/callbacks.ts';
import { FailedCallbacks } from '../../services/scheduler/callback-failures.ts';
import { createKeys } from '../../services/scheduler/keys.ts';
import { setRecord, toStored } from '../../services/scheduler/records.ts';
import { createMetrics } from '../../services/common/metrics.ts';
import { createLogger } from '../../services/common/log.ts';
import { gatewayObservability } from '../../services/gateway/middleware/tracing.ts';
import type { InvocationRecord } from '../../services/scheduler/types.ts';
import { createHarness } from './gateway-harness.ts';

const redis = useRedis();
const cleanups = useCleanups();

const SERIES = {
  delivered: ['fnhost_callbacks_total', { outcome: 'delivered' }],
  retried: ['fnhost_callbacks_total', { outcome: 'retried' }],
  failed: ['fnhost_callbacks_total', { outcome: 'failed' }],
  swept: ['fnhost_callback_outbox_swept_total', {}],
  redrives: ['fnhost_callback_redrives_total', {}],
  outbox: ['fnhost_callback_outbox_entries', {}],
} as const;

describe('callback metrics', () => {
  it('/metrics moves by exactly what was done', async () => {
    const prefix = `cbm-${randomUUID().slice(0, 8)}`;
    const keys = createKeys(prefix);
    const A = `a-${randomUUID().slice(0, 6)}`;
    const B = `b-${randomUUID().slice(0, 6)}`;
    const ok = await hookReceiver(cleanups);
    const down = await hookReceiver(cleanups, { statuses: [500] });
    const metrics = createMetrics({ defaultMetrics: false });
    const conn = new Redis(redisUrl(), { maxRetriesPerRequest: null });
    const q = new Queue(CALLBACK_QUEUE, { connection: bullConnection(conn), prefix: keys.bullPrefix });
    // periodic sweeps a minute apart: the test runs the sweeps it counts itself
    const cb = new Callbacks({ redis: conn, prefix, metrics, log: createLogger('test', 'silent'), options: { ...callbackOptions({}), attempts: 2, backoffMs: 20, sweepMs: 60_000 } });
    const failed = new FailedCallbacks(redis, prefix, metrics);
    const h = await createHarness({ failedCallbacks: failed, observability: gatewayObservability(metrics) });
    cleanups.push(async () => {
      await h.close();
      await failed.close();
      await cb.close();
      await q.close();
      await conn.quit();
      expect(await keysWithoutTtl(redis, prefix, [keys.callbackSecret(), keys.tenantsBull()])).toEqual([]);
      const all = await redis.keys(`${prefix}:*`);
      if (all.length) await redis.del(...all);
    });
    const keyB = await h.tenant(B);
    const scrape = async (): Promise<PromText> => {
      const r = await h.req('GET', '/metrics');
      expect(r.status).toBe(200);
      return parsePromText(await r.text());
    };
    const v = (p: PromText, s: keyof typeof SERIES) => p.value(SERIES[s][0], SERIES[s][1]);
    const failedOf = (p: PromText, t: string) => p.value('fnhost_callbacks_failed', { tenant: t });
    const pending = async () => Object.values(await q.getJobCounts('waiting', 'delayed', 'active', 'prioritized')).reduce((a, b) => a + b, 0);

    // tenants that can have callbacks: those with a BullMQ queue (the client adds them at their first async call)
    await redis.sadd(keys.tenantsBull(), A, B);
    cb.start();
    // the start-up sweep's HLEN went out on `conn` before the records below are written on it (one connection:
    // Redis runs its commands in order), so only the sweeps the test runs move them
    const rec = (tenant: string, finishedAt: number): InvocationRecord => ({ id: randomUUID(), tenant, function: 'f', version: 1, mode: 'async', status: 'succeeded', attempts: 1, createdAt: finishedAt, finishedAt });
    const writeFinal = async (r: InvocationRecord, url: string) => {
      const o = cb.outboxEntry(url, r);
      expect(await setRecord(conn, keys.record(r.tenant, r.id), toStored(r), 600, { outbox: o })).toBe(true);
      return o;
    };
    const p0 = await scrape();
    expect(v(p0, 'outbox')).toBe(0);
    expect(failedOf(p0, A)).toBe(0);
    expect(failedOf(p0, B)).toBe(0);
    for (const s of ['delivered', 'retried', 'failed', 'swept', 'redrives'] as const) expect(v(p0, s), s).toBe(0);

    // two final records whose writer never moved their callbacks (it died), one just written (its writer moves it)
    const old1 = rec(A, Date.now() - 10_000);
    const old2 = rec(A, Date.now() - 5_000);
    await writeFinal(old1, ok.url);
    await writeFinal(old2, ok.url);
    const young = await writeFinal(rec(A, Date.now()), ok.url);
    const p1 = await scrape();
    expect(v(p1, 'outbox')).toBe(3);
    expect(v(p1, 'swept')).toBe(0);
    // a periodic sweep moves the two left behind, not the young one
    expect(await cb.sweep({ graceMs: SWEEP_GRACE_MS })).toBe(2);
    expect(await redis.hkeys(keys.callbackOutbox())).toEqual([young.field]);
    const p2 = await scrape();
    expect(v(p2, 'outbox')).toBe(1);
    expect(v(p2, 'swept')).toBe(2);
    // its writer moves it: not counted as swept
    await cb.dispatch(young);
    await until(() => ok.hits.length, (n) => n === 3, 5000);
    await until(() => pending(), (n) => n === 0);
    const p3 = await scrape();
    expect(v(p3, 'outbox')).toBe(0);
    expect(v(p3, 'swept')).toBe(2);
    expect(v(p3, 'delivered')).toBe(3);
    expect(v(p3, 'retried')).toBe(0);
    expect(v(p3, 'failed')).toBe(0);

    // two of B's callbacks to a receiver that answers 500: each one retry, then failed and listed
    const b1 = rec(B, Date.now());
    const b2 = rec(B, Date.now() + 1);
    await cb.enqueue(down.url, b1);
    await cb.enqueue(down.url, b2);
    await until(() => failed.list(B), (p) => p.failed.length === 2, 5000);
    await until(() => pending(), (n) => n === 0);
    const p4 = await scrape();
    expect(v(p4, 'retried')).toBe(2);
    expect(v(p4, 'failed')).toBe(2);
    expect(v(p4, 'delivered')).toBe(3);
    expect(failedOf(p4, B)).toBe(2);
    expect(failedOf(p4, A)).toBe(0);
    expect(down.hits).toHaveLength(4);

    // B redrives one through the gateway: it fails again (one retry, one failure) and is listed again
    const r = await h.req('POST', `/v1/callbacks/failed/${deliveryId(b1)}/redrive`, { key: keyB });
    expect(r.status).toBe(202);
    await until(() => down.hits.length, (n) => n === 6, 5000);
    await until(() => failed.list(B), (p) => p.failed.length === 2, 5000);
    await until(() => pending(), (n) => n === 0);
    const p5 = await scrape();
    expect(v(p5, 'redrives')).toBe(1);
    expect(v(p5, 'retried')).toBe(3);
    expect(v(p5, 'failed')).toBe(3);
    expect(failedOf(p5, B)).toBe(2);
    // B deletes one: the gauge follows
    expect((await h.req('DELETE', `/v1/callbacks/failed/${deliveryId(b2)}`, { key: keyB })).status).toBe(204);
    const p6 = await scrape();
    expect(failedOf(p6, B)).toBe(1);
    expect(v(p6, 'redrives')).toBe(1);
    expect(v(p6, 'delivered')).toBe(3);
    expect(p6.types.get('fnhost_callbacks_failed')).toBe('gauge');
    expect(p6.types.get('fnhost_callback_outbox_entries')).toBe('gauge');
    expect(p6.types.get('fnhost_callback_outbox_swept_total')).toBe('counter');
  }, 30_000);
});
