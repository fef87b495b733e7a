/**
 * Async invocations queued for a function version that was deleted before a scheduler picked them up
 * (services/scheduler/process-job.ts, store/functions.ts versionState): each ends `failed` with a typed NotFound
 * (`reason: 'version-deleted'`), visible through get(), in the dead-letter list, counted in
 * fnhost_invocations_total — never run, so the version's warm instance is not used again. Deleting the whole
 * function does the same to its queued jobs. A version still there runs; a tenant the metadata store does not know
 * (a scheduler paired with another store) is not checked. The delete's invalidation message makes each scheduler
 * destroy the version's idle warm instances at once (memory freed), not at the end of their keep-alive. Real Redis + BullMQ, the metadata store under the
 * scheduler's `<prefix>:meta:`; sandboxes faked.
 */
import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { createInvocationClient } from '../../services/scheduler/client.ts';
import { fnRefOf } from '../../services/scheduler/fn-refs.ts';
import { createScheduler, type Scheduler } from '../../services/scheduler/scheduler.ts';
import { createMetrics, type FnhostMetrics } from '../../services/common/metrics.ts';
import { createLogger } from '../../services/common/log.ts';
import type { FunctionVersion } from '../../services/common/model.ts';
import type { InvocationClient } from '../../services/scheduler/types.ts';
import { createMetadataStore, type MetadataStore } from '../../services/store/metadata.ts';
import { FakeExecutor } from '../fixtures/scheduler/fake-executor.ts';
import { parsePromText } from '../helpers/prom-text.ts';
import { keysHolding, redisUrl } from '../helpers/redis.ts';
import { until } from '../helpers/until.ts';
import { useCleanups, useRedis } from '../helpers/hooks.ts';

const silent = createLogger('test', 'silent');
const redis = useRedis();
const cleanups = useCleanups();

interface Env {
  prefix: string;
  client: InvocationClient;
  sched: Scheduler;
  exec: FakeExecutor;
  meta: MetadataStore;
  metrics: FnhostMetrics;
  tenant: string;
  deploy(name: string, env?: Record<string, string>): Promise<FunctionVersion>;
}

async function env(): Promise<Env> {
  const prefix = `t-${randomUUID().slice(0, 8)}`;
  const exec = new FakeExecutor();
  const metrics = createMetrics({ defaultMetrics: false });
  // caching on (it is what publishes the invalidations schedulers hear); this process's reads need no subscription
  const meta = createMetadataStore(redis, `${prefix}:meta:`, { subscribe: false });
  const sched = createScheduler({
    redisUrl: redisUrl(), prefix, nodeId: 'n1', executor: exec, capacityMb: 4096, keepAliveMs: 60_000, metrics, logger: silent,
    pool: { kinds: { node: { min: 0, max: 2 } } },
  });
  await sched.start();
  const client = createInvocationClient({ redisUrl: redisUrl(), prefix });
  cleanups.push(async () => {
    await client.close();
    await sched.close(5000);
    expect(exec.live.size).toBe(0);
    await meta.close();
    const keys = await redis.keys(`${prefix}:*`);
    if (keys.length) await redis.del(...keys);
  });
  const tenant = `ten-${randomUUID().slice(0, 6)}`;
  await meta.tenants.create(tenant);
  return {
    prefix, client, sched, exec, meta, metrics, tenant,
    deploy: (name, e = {}) =>
      meta.functions.putVersion(
        { tenant, name, runtime: 'node', handler: 'index.handler', codeDigest: 'sha256:00', memoryMb: 128, timeoutMs: 5000, env: e, concurrency: 1, public: false, createdAt: new Date().toISOString() },
        { maxFunctions: 100 },
      ),
  };
}

const ev = (o: unknown) => ({ kind: 'event' as const, body: Buffer.from(JSON.stringify(o)) });
const instanceOf = (body: Buffer | undefined) => (JSON.parse(body!.toString()) as { instance: string }).instance;

describe('async jobs of a deleted version', () => {
  it('fail NotFound (typed, counted, dead letter) without running; the version still there runs; its warm instance is not used again', async () => {
    const e = await env();
    const v1 = await e.deploy('f', { V: '1' });
    const ok = await e.client.enqueue({ fn: v1, payload: ev({}), mode: 'async' });
    const first = await until(() => e.client.get(e.tenant, ok.invocationId), (r) => r?.status === 'succeeded');
    const warm = instanceOf(first!.response?.body);
    const specialised = e.exec.specialised;

    const v2 = await e.deploy('f', { V: '2' });
    await e.meta.functions.deleteVersion(e.tenant, 'f', 1);
    const gone = await e.client.enqueue({ fn: v1, payload: ev({}), mode: 'async' });
    const kept = await e.client.enqueue({ fn: v2, payload: ev({}), mode: 'async' });

    const rec = await until(() => e.client.get(e.tenant, gone.invocationId), (r) => r?.status === 'failed');
    expect(rec).toMatchObject({ status: 'failed', function: 'f', version: 1, attempts: 1, error: { type: 'NotFound', field: 'version', reason: 'version-deleted', version: 1 } });
    expect(rec!.start).toBeUndefined();
    expect(String(rec!.error?.message)).toMatch(/version 1 of function f was deleted/);
    const ran = await until(() => e.client.get(e.tenant, kept.invocationId), (r) => r?.status === 'succeeded');
    expect(instanceOf(ran!.response?.body)).not.toBe(warm);
    // v2 took one new instance; v1's warm one served nothing more
    expect(e.exec.specialised).toBe(specialised + 1);
    const dl = await e.client.listDeadLetters(e.tenant);
    expect(dl.map((r) => r.id)).toEqual([gone.invocationId]);
    const prom = parsePromText(await e.metrics.text());
    expect(prom.value('fnhost_invocations_total', { tenant: e.tenant, function: 'f', outcome: 'NotFound' })).toBe(1);
    // redriven, it fails the same way (the version does not come back)
    await e.client.redrive(e.tenant, gone.invocationId);
    await until(() => e.client.get(e.tenant, gone.invocationId), (r) => r?.status === 'failed' && r.attempts === 1 && (r.finishedAt ?? 0) > rec!.finishedAt!);
    expect((await e.client.get(e.tenant, gone.invocationId))!.error).toMatchObject({ type: 'NotFound', reason: 'version-deleted' });
  }, 20_000);

  it('deleting the whole function fails its queued jobs the same way, also after it is deployed again', async () => {
    const e = await env();
    const v1 = await e.deploy('g');
    await e.meta.functions.delete(e.tenant, 'g');
    const a = await e.client.enqueue({ fn: v1, payload: ev({}), mode: 'async' });
    expect(await until(() => e.client.get(e.tenant, a.invocationId), (r) => r?.status === 'failed')).toMatchObject({ error: { type: 'NotFound', reason: 'version-deleted' } });
    // re-created: numbering goes on (g:2), so g:1's job still finds its version gone
    expect((await e.deploy('g')).version).toBe(2);
    const b = await e.client.enqueue({ fn: v1, payload: ev({}), mode: 'async' });
    expect(await until(() => e.client.get(e.tenant, b.invocationId), (r) => r?.status === 'failed')).toMatchObject({ error: { type: 'NotFound' } });
    expect(e.exec.specialised).toBe(0);
  }, 20_000);

  it("a deleted version's idle warm instance is destroyed at once (memory freed), not at its keep-alive's end; other versions' stay", async () => {
    const e = await env();
    const v1 = await e.deploy('w', { V: '1' });
    const v2 = await e.deploy('w', { V: '2' });
    const other = await e.deploy('other');
    // an explicit older version runs beside the latest (retireOlder only retires versions older than one placed after them)
    for (const fn of [v2, v1, other]) {
      const { invocationId } = await e.client.enqueue({ fn, payload: ev({}), mode: 'async' });
      await until(() => e.client.get(e.tenant, invocationId), (r) => r?.status === 'succeeded');
    }
    const versions = () => e.sched.instances.list().map((i) => `${i.fn.name}:${i.fn.version}`).sort();
    await until(versions, (v) => v.length === 3);
    expect(versions()).toEqual(['other:1', 'w:1', 'w:2']);
    const admitted = e.sched.instances.admittedMb;
    const destroyed = e.exec.destroyed;

    await e.meta.functions.deleteVersion(e.tenant, 'w', 1);
    await until(versions, (v) => v.length === 2);
    expect(versions()).toEqual(['other:1', 'w:2']);
    expect(e.sched.instances.admittedMb).toBe(admitted - 128);
    expect(e.exec.destroyed).toBe(destroyed + 1);

    // the whole function: its last instance goes too; another function's stays
    await e.meta.functions.delete(e.tenant, 'w');
    await until(versions, (v) => v.length === 1);
    expect(versions()).toEqual(['other:1']);
  }, 20_000);

  it('nothing of a deleted version is left in Redis but invocation history: its fast-lane stash goes with it', async () => {
    const e = await env();
    const marker = `mark-${randomUUID()}`;
    const v1 = await e.deploy('s', { MARK: marker });
    await e.deploy('s');
    const sync = await e.client.invoke({ fn: v1, payload: ev({}), mode: 'sync' });
    expect(sync.record.status).toBe('succeeded');
    const { invocationId } = await e.client.enqueue({ fn: v1, payload: ev({}), mode: 'async' });
    await until(() => e.client.get(e.tenant, invocationId), (r) => r?.status === 'succeeded');
    const holding = await keysHolding(redis, `${e.prefix}:*`, marker);
    expect(holding).toContain(`${e.prefix}:fnv:${fnRefOf(v1)}`);
    expect(holding).toContain(`${e.prefix}:meta:fnv:${e.tenant}:s`);

    await e.meta.functions.deleteVersion(e.tenant, 's', 1);
    // left: invocation history only — the finished async job (BullMQ keeps it completedJobAgeS, an hour by
    // default; a dead letter, deadLetterS), which carries the record it ran with
    const history = [`${e.prefix}:bull:inv.${e.tenant}:${invocationId}`];
    expect(await until(() => keysHolding(redis, `${e.prefix}:*`, marker), (k) => k.length === history.length)).toEqual(history);
    expect(e.sched.instances.list().map((i) => i.fn.version)).toEqual([]);
  }, 20_000);

  it('a tenant the metadata store does not know is not checked (the job runs)', async () => {
    const e = await env();
    const v1 = await e.deploy('h');
    const stranger: FunctionVersion = { ...v1, tenant: `${e.tenant}-elsewhere` };
    const a = await e.client.enqueue({ fn: stranger, payload: ev({}), mode: 'async' });
    expect(await until(() => e.client.get(stranger.tenant, a.invocationId), (r) => r?.status === 'succeeded')).toMatchObject({ status: 'succeeded' });
  }, 20_000);
});

