/**
 * Completion callbacks of async invocations (services/scheduler/callbacks.ts) against a real Redis with real
 * BullMQ and a real HTTP receiver on loopback: the POST's body, headers and signature; one callback after the
 * last attempt (none for retried attempts); redelivery after a 500; a redrive calling back again; the
 * allow-list refusing a destination at delivery; bad URLs refused before anything is queued; no Redis leftovers.
 * Sandboxes are faked (FakeExecutor); everything Redis and HTTP is real.
 */
import { describe, expect, it } from 'vitest';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { Queue } from 'bullmq';
import { redisUrl } from '../helpers/redis.ts';
import { until } from '../helpers/until.ts';
import { bullConnection, createInvocationClient } from '../../services/scheduler/client.ts';
import { createScheduler, type Scheduler } from '../../services/scheduler/scheduler.ts';
import { CALLBACK_QUEUE, type CallbackOptions } from '../../services/scheduler/callbacks.ts';
import { CallbackSigner, verifyCallbackSignature } from '../../services/scheduler/callback-signer.ts';
import { parseCallbackAllow } from '../../services/scheduler/callback-url.ts';
import { renderInvocation } from '../../services/scheduler/invocation-view.ts';
import { createMetrics, type FnhostMetrics } from '../../services/common/metrics.ts';
import { createLogger } from '../../services/common/log.ts';
import { FakeExecutor, fnv } from '../fixtures/scheduler/fake-executor.ts';
import type { FunctionVersion } from '../../services/common/model.ts';
import type { InvocationClient } from '../../services/scheduler/types.ts';
import { useRedis, useCleanups, keysWithoutTtl } from '../helpers/hooks.ts';
import { hookReceiver } from '../helpers/hook-receiver.ts';

const silent = createLogger('test', 'silent');
const redis = useRedis();
const cleanups = useCleanups();

interface Env {
  prefix: string;
  client: InvocationClient;
  sched: Scheduler;
  metrics: FnhostMetrics;
  fn: (over?: Partial<FunctionVersion>) => FunctionVersion;
  /** the callback queue's jobs not yet finished (waiting, delayed, active) */
  pending: () => Promise<number>;
}

async function env(callbacks: Partial<CallbackOptions> = {}): Promise<Env> {
  const prefix = `cb-${randomUUID().slice(0, 8)}`;
  const exec = new FakeExecutor();
  const metrics = createMetrics({ defaultMetrics: false });
  const sched = createScheduler({
    redisUrl: redisUrl(), prefix, nodeId: 'n1', executor: exec, capacityMb: 4096, keepAliveMs: 60_000, metrics, logger: silent,
    pool: { kinds: { node: { min: 1, max: 4 } } },
    callbacks: { backoffMs: 50, timeoutMs: 2000, ...callbacks },
  });
  await sched.start();
  const client = createInvocationClient({ redisUrl: redisUrl(), prefix });
  const q = new Queue(CALLBACK_QUEUE, { connection: bullConnection(redis), prefix: `${prefix}:bull` });
  cleanups.push(async () => {
    await q.close();
    await client.close();
    await sched.close(5000);
    expect(exec.live.size).toBe(0);
    // nothing of this prefix without a TTL but the tenants sets, BullMQ's queues and the (by design permanent) generated callback secret
    expect(await keysWithoutTtl(redis, prefix, [CallbackSigner.key(prefix)])).toEqual([]);
    const keys = await redis.keys(`${prefix}:*`);
    if (keys.length) await redis.del(...keys);
  });
  const tenant = `ten-${randomUUID().slice(0, 6)}`;
  const pending = async () => {
    const c = await q.getJobCounts('waiting', 'delayed', 'active', 'prioritized');
    return Object.values(c).reduce((a, b) => a + b, 0);
  };
  return { prefix, client, sched, metrics, fn: (over = {}) => fnv({ tenant, ...over }), pending };
}

const ev = (o: unknown) => ({ kind: 'event' as const, body: Buffer.from(JSON.stringify(o)) });

async function metricValue(m: FnhostMetrics, outcome: string): Promise<number> {
  const line = (await m.text()).split('\n').find((l) => l.startsWith(`fnhost_callbacks_total{outcome="${outcome}"}`));
  return line ? Number(line.split(' ').pop()) : 0;
}

describe('completion callbacks', () => {
  it('a success calls back once: the GET record as body, X-Fnhost-* headers, a signature that verifies with the tenant key', async () => {
    const e = await env();
    const r = await hookReceiver(cleanups, { path: '/hook?token=abc' });
    const fn = e.fn({ retries: 3 });
    const { invocationId } = await e.client.enqueue({ fn, payload: ev({ hello: 1 }), mode: 'async', callbackUrl: r.url });
    await until(() => r.hits.length, (n) => n >= 1, 10_000);
    const hit = r.hits[0]!;
    const rec = await e.client.get(fn.tenant, invocationId);
    expect(rec!.status).toBe('succeeded');
    expect(JSON.parse(hit.body)).toEqual(JSON.parse(JSON.stringify(renderInvocation(rec!))));
    expect(JSON.parse(hit.body)).toMatchObject({ id: invocationId, status: 'succeeded', attempts: 1, start: 'cold', function: fn.name });
    expect(hit.headers).toMatchObject({
      'content-type': 'application/json', 'x-fnhost-invocation-id': invocationId, 'x-fnhost-status': 'succeeded',
      'x-fnhost-function': fn.name, 'x-fnhost-delivery-attempt': '1',
    });
    const secret = await new CallbackSigner(redis, e.prefix).secretFor(fn.tenant);
    expect(verifyCallbackSignature(secret, hit.body, hit.headers['x-fnhost-signature'] as string)).toBe(true);
    // another tenant's key does not verify it, nor does a changed body
    expect(verifyCallbackSignature(await new CallbackSigner(redis, e.prefix).secretFor(fn.tenant + 'x'), hit.body, hit.headers['x-fnhost-signature'] as string)).toBe(false);
    expect(verifyCallbackSignature(secret, hit.body.replace('succeeded', 'failed'), hit.headers['x-fnhost-signature'] as string)).toBe(false);
    await until(() => e.pending(), (n) => n === 0);
    expect(r.hits).toHaveLength(1);
    expect(await metricValue(e.metrics, 'delivered')).toBe(1);
  }, 20_000);

  it('failing every attempt calls back once, after the last, with the dead-letter outcome; a redrive that succeeds calls back again', async () => {
    const e = await env();
    const r = await hookReceiver(cleanups, { path: '/hook?token=abc' });
    const fn = e.fn({ retries: 3 });
    const key = randomUUID();
    const { invocationId } = await e.client.enqueue({ fn, payload: ev({ failTimes: 3, key }), mode: 'async', callbackUrl: r.url });
    await until(() => r.hits.length, (n) => n >= 1, 15_000);
    expect(JSON.parse(r.hits[0]!.body)).toMatchObject({ id: invocationId, status: 'failed', attempts: 3, error: { type: 'FunctionError' } });
    expect(r.hits[0]!.headers['x-fnhost-status']).toBe('failed');
    expect((await e.client.listDeadLetters(fn.tenant)).map((x) => x.id)).toEqual([invocationId]);
    await until(() => e.pending(), (n) => n === 0);
    expect(r.hits).toHaveLength(1);

    await e.client.redrive(fn.tenant, invocationId);
    await until(() => r.hits.length, (n) => n >= 2, 10_000);
    const second = r.hits[1]!;
    expect(JSON.parse(second.body)).toMatchObject({ id: invocationId, status: 'succeeded', attempts: 1 });
    expect(second.headers['x-fnhost-delivery-id']).not.toBe(r.hits[0]!.headers['x-fnhost-delivery-id']);
    await until(() => e.pending(), (n) => n === 0);
    expect(r.hits).toHaveLength(2);
  }, 30_000);

  it('a receiver answering 500 gets the same callback again, then 200 ends it', async () => {
    const e = await env();
    const r = await hookReceiver(cleanups, { statuses: [500, 200], path: '/hook?token=abc' });
    const fn = e.fn();
    const { invocationId } = await e.client.enqueue({ fn, payload: ev({}), mode: 'async', callbackUrl: r.url });
    await until(() => r.hits.length, (n) => n >= 2, 10_000);
    expect(r.hits.map((h) => h.headers['x-fnhost-delivery-attempt'])).toEqual(['1', '2']);
    expect(r.hits[1]!.body).toBe(r.hits[0]!.body);
    expect(r.hits[1]!.headers['x-fnhost-invocation-id']).toBe(invocationId);
    await until(() => e.pending(), (n) => n === 0);
    expect(r.hits).toHaveLength(2);
    expect(await metricValue(e.metrics, 'retried')).toBe(1);
    expect(await metricValue(e.metrics, 'delivered')).toBe(1);
  }, 20_000);

  it('a callback still pending when its scheduler stops is delivered by the next one (durable in Redis)', async () => {
    const e = await env({ attempts: 100, backoffMs: 100 });
    let up = false;
    const hits: string[] = [];
    const srv = createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        hits.push(String(req.headers['x-fnhost-invocation-id']));
        res.statusCode = up ? 204 : 503;
        res.end();
      });
    });
    await new Promise<void>((res) => srv.listen(0, '127.0.0.1', res));
    cleanups.push(() => new Promise<void>((res) => srv.close(() => res())));
    const fn = e.fn();
    const { invocationId } = await e.client.enqueue({ fn, payload: ev({}), mode: 'async', callbackUrl: `http://127.0.0.1:${(srv.address() as AddressInfo).port}/` });
    await until(() => hits.length, (n) => n >= 1, 10_000);
    await e.sched.close(5000);
    const refused = hits.length;
    // a new scheduler (a restarted host) on the same Redis and prefix; the receiver is back
    up = true;
    const metrics = createMetrics({ defaultMetrics: false });
    const next = createScheduler({
      redisUrl: redisUrl(), prefix: e.prefix, nodeId: 'n2', executor: new FakeExecutor(), capacityMb: 1024, metrics, logger: silent,
      pool: { kinds: { node: { min: 0, max: 1 } } }, callbacks: { backoffMs: 100 },
    });
    await next.start();
    cleanups.push(() => next.close(5000));
    await until(() => metricValue(metrics, 'delivered'), (n) => n === 1, 10_000);
    expect(hits.length).toBeGreaterThan(refused);
    expect(hits.every((h) => h === invocationId)).toBe(true);
  }, 20_000);

  it('a dead receiver fails after its attempts and never holds up invocations', async () => {
    const e = await env({ attempts: 2, timeoutMs: 300 });
    // a listener that never answers: every POST runs into the timeout
    const hang = createServer(() => {});
    await new Promise<void>((res) => hang.listen(0, '127.0.0.1', res));
    cleanups.push(() => new Promise<void>((res) => (hang.closeAllConnections(), hang.close(() => res()))));
    const url = `http://127.0.0.1:${(hang.address() as AddressInfo).port}/`;
    const fn = e.fn();
    const a = await e.client.enqueue({ fn, payload: ev({}), mode: 'async', callbackUrl: url });
    await until(() => e.client.get(fn.tenant, a.invocationId), (x) => x?.status === 'succeeded', 10_000);
    // the next invocation runs while the callback is still timing out
    const t0 = Date.now();
    const b = await e.client.enqueue({ fn, payload: ev({}), mode: 'async' });
    await until(() => e.client.get(fn.tenant, b.invocationId), (x) => x?.status === 'succeeded', 10_000);
    expect(Date.now() - t0).toBeLessThan(2000);
    await until(() => metricValue(e.metrics, 'failed'), (n) => n === 1, 10_000);
    expect(await metricValue(e.metrics, 'delivered')).toBe(0);
  }, 20_000);

  it('the allow-list refuses a destination that resolves outside it, at delivery, without retrying', async () => {
    const e = await env({ allow: parseCallbackAllow('10.0.0.0/8') });
    const r = await hookReceiver(cleanups, { path: '/hook?token=abc' });
    const fn = e.fn();
    // a name passes at enqueue (only its address can be judged), 'localhost' resolves to loopback: refused
    const url = r.url.replace('127.0.0.1', 'localhost');
    const { invocationId } = await e.client.enqueue({ fn, payload: ev({}), mode: 'async', callbackUrl: url });
    await until(() => e.client.get(fn.tenant, invocationId), (x) => x?.status === 'succeeded', 10_000);
    await until(() => metricValue(e.metrics, 'failed'), (n) => n === 1, 10_000);
    expect(await metricValue(e.metrics, 'retried')).toBe(0);
    expect(r.hits).toHaveLength(0);
  }, 20_000);

  it('a bad X-Callback-Url, or one on a sync call, is InvalidRequest and queues nothing', async () => {
    const e = await env();
    const fn = e.fn();
    const bad = ['', 'ftp://h/x', '/relative', 'http://user:pw@h/x', 'http://h/a b', `http://h/${'a'.repeat(2100)}`, 'javascript:alert(1)', 'http:///x'];
    for (const callbackUrl of bad) {
      await expect(e.client.enqueue({ fn, payload: ev({}), mode: 'async', callbackUrl }), callbackUrl).rejects.toMatchObject({ type: 'InvalidRequest', details: { field: 'X-Callback-Url' } });
    }
    await expect(e.client.invoke({ fn, payload: ev({}), mode: 'sync', callbackUrl: 'http://h/x' })).rejects.toMatchObject({ type: 'InvalidRequest', details: { field: 'X-Callback-Url' } });
    expect(await e.client.depth(fn.tenant)).toBe(0);
    expect(await redis.keys(`${e.prefix}:inv:*`)).toEqual([]);
    expect(await e.pending()).toBe(0);
  });
});
