/**
 * Failed completion callbacks through the gateway (`/v1/callbacks/failed`, services/gateway/callbacks.ts over
 * services/scheduler/callback-failures.ts): a real scheduler delivers callbacks to a real loopback receiver
 * that answers 500 until told otherwise, so they fail for real (attempts exhausted); the tenant lists them,
 * redrives one (delivered once the receiver is back), redrives all, deletes one. Tenant scoping: another
 * tenant's delivery id is 404 and changes nothing; bad ids and limits are 400. Real Redis and BullMQ;
 * sandboxes faked (FakeExecutor); the gateway through `app.request()` (gateway-harness.ts).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomUUID } from 'node:crypto';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { redisUrl } from '../helpers/redis.ts';
import { until } from '../helpers/until.ts';
import { keysWithoutTtl } from '../helpers/hooks.ts';
import { bullConnection, createInvocationClient } from '../../services/scheduler/client.ts';
import { createScheduler, type Scheduler } from '../../services/scheduler/scheduler.ts';
import { CALLBACK_QUEUE, type FailedCallback } from '../../services/scheduler/callbacks.ts';
import { FailedCallbacks } from '../../services/scheduler/callback-failures.ts';
import { CallbackSigner } from '../../services/scheduler/callback-signer.ts';
import { createLogger } from '../../services/common/log.ts';
import { FakeExecutor, fnv } from '../fixtures/scheduler/fake-executor.ts';
import type { GatewayDeps } from '../../services/gateway/context.ts';
import type { InvocationClient } from '../../services/scheduler/types.ts';
import { createHarness, type Harness } from './gateway-harness.ts';

const prefix = `cbf-${randomUUID().slice(0, 8)}`;
const A = `acme-${randomUUID().slice(0, 6)}`;
const B = `beta-${randomUUID().slice(0, 6)}`;
let h: Harness;
let keyA: string;
let keyB: string;
let redis: Redis;
let sched: Scheduler;
let exec: FakeExecutor;
let client: InvocationClient;
let failed: FailedCallbacks;
let q: Queue;
let server: Server;
let url: string;
/** the receiver answers 500 while false */
let up = false;
const hits: Array<{ headers: IncomingHttpHeaders; status: number }> = [];

beforeAll(async () => {
  redis = new Redis(redisUrl());
  failed = new FailedCallbacks(redis, prefix);
  h = await createHarness({ ...({ failedCallbacks: failed } as Partial<GatewayDeps>) });
  keyA = await h.tenant(A);
  keyB = await h.tenant(B);
  server = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      res.statusCode = up ? 200 : 500;
      hits.push({ headers: req.headers, status: res.statusCode });
      res.end();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook?token=secret-t`;
  exec = new FakeExecutor();
  sched = createScheduler({
    redisUrl: redisUrl(), prefix, nodeId: 'n1', executor: exec, capacityMb: 1024, keepAliveMs: 60_000, logger: createLogger('test', 'silent'),
    pool: { kinds: { node: { min: 0, max: 2 } } }, callbacks: { attempts: 2, backoffMs: 20 },
  });
  await sched.start();
  client = createInvocationClient({ redisUrl: redisUrl(), prefix });
  q = new Queue(CALLBACK_QUEUE, { connection: bullConnection(redis), prefix: `${prefix}:bull` });
});

afterAll(async () => {
  await q?.close();
  await client?.close();
  await sched?.close(5000);
  await failed?.close();
  await h?.close();
  await new Promise<void>((r) => server.close(() => r()));
  expect(exec.live.size).toBe(0);
  expect(await keysWithoutTtl(redis, prefix, [CallbackSigner.key(prefix)])).toEqual([]);
  const keys = await redis.keys(`${prefix}:*`);
  if (keys.length) await redis.del(...keys);
  await redis.quit();
});

const ev = { kind: 'event' as const, body: Buffer.from('{}') };

async function list(key: string, qs = ''): Promise<{ status: number; failed: FailedCallback[]; cursor?: string }> {
  const r = await h.req('GET', `/v1/callbacks/failed${qs}`, { key });
  const body = r.status === 200 ? ((await r.json()) as { failed: FailedCallback[]; cursor?: string }) : { failed: [] };
  return { status: r.status, ...body };
}

async function pending(): Promise<number> {
  const c = await q.getJobCounts('waiting', 'delayed', 'active', 'prioritized');
  return Object.values(c).reduce((a, b) => a + b, 0);
}

describe('failed completion callbacks', () => {
  it('are listed for their tenant only, redriven, and deleted', async () => {
    const fnA = fnv({ tenant: A, name: 'resize' });
    const a1 = await client.enqueue({ fn: fnA, payload: ev, mode: 'async', callbackUrl: url });
    const a2 = await client.enqueue({ fn: fnA, payload: ev, mode: 'async', callbackUrl: url });
    const b1 = await client.enqueue({ fn: fnv({ tenant: B }), payload: ev, mode: 'async', callbackUrl: url });

    const la = await until(() => list(keyA), (l) => l.failed.length === 2, 10_000);
    expect(la.status).toBe(200);
    expect(la.failed.map((f) => f.invocationId).sort()).toEqual([a1.invocationId, a2.invocationId].sort());
    for (const f of la.failed) {
      expect(f).toMatchObject({ function: 'resize', url, status: 'succeeded', attempts: 2, lastHttpStatus: 500, lastError: 'receiver answered 500' });
      expect(f.deliveryId).toMatch(new RegExp(`^${f.invocationId}\\.[0-9]+$`));
      expect(f.failedAt).toBeGreaterThan(0);
    }
    const lb = await until(() => list(keyB), (l) => l.failed.length === 1, 10_000);
    expect(lb.failed[0]!.invocationId).toBe(b1.invocationId);
    await until(() => pending(), (n) => n === 0);
    expect(hits).toHaveLength(6);

    // pages: newest first, a cursor while there is more
    const p1 = await list(keyA, '?limit=1');
    expect(p1.failed).toHaveLength(1);
    expect(p1.cursor).toBeDefined();
    const p2 = await list(keyA, `?limit=1&cursor=${p1.cursor}`);
    expect(p2.failed).toHaveLength(1);
    expect(p2.failed[0]!.failedAt).toBeLessThanOrEqual(p1.failed[0]!.failedAt);
    expect(new Set([p1.failed[0]!.deliveryId, p2.failed[0]!.deliveryId]).size).toBe(2);

    // another tenant's id: 404 as an unknown one, and nothing changes; bad input: 400
    const [x, y] = la.failed;
    for (const [method, path] of [['POST', `/v1/callbacks/failed/${x!.deliveryId}/redrive`], ['DELETE', `/v1/callbacks/failed/${x!.deliveryId}`]] as const) {
      const r = await h.req(method, path, { key: keyB });
      expect(r.status, `${method} ${path}`).toBe(404);
      expect(((await r.json()) as { error: { type: string } }).error.type).toBe('NotFound');
    }
    expect((await h.req('POST', `/v1/callbacks/failed/${randomUUID()}.1/redrive`, { key: keyA })).status).toBe(404);
    for (const bad of ['nodot', 'a.b', 'x y.1', `${'a'.repeat(200)}.1`]) {
      const r = await h.req('POST', `/v1/callbacks/failed/${encodeURIComponent(bad)}/redrive`, { key: keyA });
      expect(r.status, bad).toBe(400);
    }
    for (const qs of ['?limit=0', '?limit=-1', '?limit=x', '?limit=1001', '?cursor=abc']) expect((await list(keyA, qs)).status, qs).toBe(400);
    expect((await h.req('GET', '/v1/callbacks/failed')).status).toBe(401);
    expect((await list(keyA)).failed).toHaveLength(2);
    expect(await q.getJobCountByTypes('failed')).toBe(3);

    // redrive one: POSTed again with fresh attempts, the same delivery id; delivered now that the receiver is back
    up = true;
    const rr = await h.req('POST', `/v1/callbacks/failed/${x!.deliveryId}/redrive`, { key: keyA });
    expect(rr.status).toBe(202);
    expect(await rr.json()).toEqual({ deliveryId: x!.deliveryId });
    await until(() => hits.filter((t) => t.status === 200).length, (n) => n === 1, 5000);
    const ok = hits.find((t) => t.status === 200)!;
    expect(ok.headers).toMatchObject({ 'x-fnhost-delivery-id': x!.deliveryId, 'x-fnhost-delivery-attempt': '1', 'x-fnhost-invocation-id': x!.invocationId });
    expect((await list(keyA)).failed.map((f) => f.deliveryId)).toEqual([y!.deliveryId]);
    // redriven already: no longer in the list
    expect((await h.req('POST', `/v1/callbacks/failed/${x!.deliveryId}/redrive`, { key: keyA })).status).toBe(404);

    // delete one: gone from the list and from the queue's failed set; deleting again is 404
    const del = await h.req('DELETE', `/v1/callbacks/failed/${y!.deliveryId}`, { key: keyA });
    expect(del.status).toBe(204);
    expect((await list(keyA)).failed).toEqual([]);
    expect(await q.getJob(y!.deliveryId)).toBeUndefined();
    expect((await h.req('DELETE', `/v1/callbacks/failed/${y!.deliveryId}`, { key: keyA })).status).toBe(404);

    // redrive all (tenant B's one)
    const all = await h.req('POST', '/v1/callbacks/failed/redrive', { key: keyB });
    expect(all.status).toBe(202);
    expect(await all.json()).toEqual({ redriven: 1 });
    await until(() => hits.filter((t) => t.status === 200).length, (n) => n === 2, 5000);
    expect((await list(keyB)).failed).toEqual([]);
    await until(() => pending(), (n) => n === 0);
    expect(hits.filter((t) => t.status === 200)).toHaveLength(2);
  }, 30_000);
});
