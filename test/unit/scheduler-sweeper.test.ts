/**
 * The sweeper (services/scheduler/sweeper.ts) finishes async invocations whose outcome nobody is left to write:
 * a job BullMQ failed because it stalled out, when the nodes that saw its 'stalled' and 'failed' events died
 * before writing (simulated: real BullMQ workers fetch the job by hand and never run a handler); a record whose
 * job was never added (the gateway died between the record write and Queue.add); and it leaves live jobs and
 * final records alone. One node runs at a time (a Redis lock); every entry of the index leaves it; no key
 * without a TTL. Real Redis, real BullMQ, a real HTTP receiver on loopback; sandboxes faked (FakeExecutor).
 */
import { describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { Worker } from 'bullmq';
import { redisUrl } from '../helpers/redis.ts';
import { until } from '../helpers/until.ts';
import { bullConnection, createInvocationClient } from '../../services/scheduler/client.ts';
import { createScheduler } from '../../services/scheduler/scheduler.ts';
import { createKeys, openEntryOf, parseOpenMember, type Keys } from '../../services/scheduler/keys.ts';
import { queueRecord, setRecord } from '../../services/scheduler/records.ts';
import { Sweeper } from '../../services/scheduler/sweeper.ts';
import { CallbackSigner } from '../../services/scheduler/callback-signer.ts';
import { STALLED_OUT_REASON, type JobContext } from '../../services/scheduler/process-job.ts';
import { DEFAULT_RETENTION } from '../../services/scheduler/config.ts';
import { createMetrics, type FnhostMetrics } from '../../services/common/metrics.ts';
import { createLogger } from '../../services/common/log.ts';
import { FakeExecutor, fnv } from '../fixtures/scheduler/fake-executor.ts';
import type { FunctionVersion } from '../../services/common/model.ts';
import { useRedis, useCleanups, keysWithoutTtl } from '../helpers/hooks.ts';
import { hookReceiver } from '../helpers/hook-receiver.ts';

const silent = createLogger('test', 'silent');
const redis = useRedis();
const cleanups = useCleanups();
/** sweeps every 50 ms and looks at entries older than 100 ms (defaults: 30 s and 2 min) */
const FAST_SWEEP = { intervalMs: 50, graceMs: 100 };

/** A prefix, tenant and function of this test, a client, and a way to start schedulers; everything checked and removed after. */
async function setup() {
  const prefix = `sweep-${randomUUID().slice(0, 8)}`;
  const keys = createKeys(prefix);
  const tenant = `ten-${randomUUID().slice(0, 6)}`;
  const fn = fnv({ tenant, retries: 3 });
  const client = createInvocationClient({ redisUrl: redisUrl(), prefix });
  const conn = new Redis(redisUrl(), { maxRetriesPerRequest: null });
  const execs: FakeExecutor[] = [];
  const scheds: Array<{ close(ms?: number): Promise<void> }> = [];
  cleanups.push(async () => {
    await client.close();
    for (const s of scheds) await s.close(5000);
    await conn.quit();
    for (const e of execs) expect(e.live.size).toBe(0);
    expect(await keysWithoutTtl(redis, prefix, [CallbackSigner.key(prefix)])).toEqual([]);
    const all = await redis.keys(`${prefix}:*`);
    if (all.length) await redis.del(...all);
  });
  async function scheduler(nodeId: string, metrics: FnhostMetrics, sweeper: { intervalMs: number; graceMs: number } | false = FAST_SWEEP) {
    const exec = new FakeExecutor();
    execs.push(exec);
    const s = createScheduler({
      redisUrl: redisUrl(), prefix, nodeId, executor: exec, capacityMb: 1024, metrics, logger: silent,
      pool: { kinds: { node: { min: 0, max: 1 } } }, maxStalledCount: 0, callbacks: { backoffMs: 50 }, sweeper,
    });
    scheds.push(s);
    await s.start();
    return s;
  }
  return { prefix, keys, tenant, fn, client, conn, scheduler };
}

/**
 * Plays the nodes that die: a worker fetches the job and dies (lock 150 ms, never renewed); BullMQ's stalled-job
 * check (a bare worker, maxStalledCount 0) marks it to fail; the next worker to fetch it fails it (BullMQ does that
 * inside getNextJob) and has no 'failed' handler — as a node that dies before its handler runs. The job ends in
 * the failed set with the record still `queued`: nobody alive knows. The queue must hold only this job.
 */
async function stallOutUnseen(keys: Keys, conn: Redis, tenant: string, id: string) {
  const opts = { connection: bullConnection(conn), prefix: keys.bullPrefix, autorun: false };
  const jobKey = `${keys.bullPrefix}:${keys.tenantQueue(tenant)}:${id}`;
  const dying = new Worker(keys.tenantQueue(tenant), null, { ...opts, lockDuration: 150 });
  expect((await dying.getNextJob('dead-1'))?.id).toBe(id);
  await dying.close();
  const checker = new Worker(keys.tenantQueue(tenant), null, { ...opts, stalledInterval: 50, maxStalledCount: 0 });
  try {
    void checker.startStalledCheckTimer();
    await until(() => redis.hget(jobKey, 'defa'), (r) => r === STALLED_OUT_REASON, 3000);
  } finally {
    await checker.close();
  }
  // BullMQ's Worker fails a marked job as it fetches it and emits 'failed' on itself: this one has no handler
  const failing = new Worker(keys.tenantQueue(tenant), null, { ...opts, lockDuration: 150 });
  expect(await failing.getNextJob('dead-2', { block: false })).toBeUndefined();
  await failing.close();
  expect(await redis.hget(jobKey, 'failedReason')).toBe(STALLED_OUT_REASON);
  expect(await redis.zscore(`${keys.bullPrefix}:${keys.tenantQueue(tenant)}:failed`, id)).not.toBeNull();
}

function invocationsTotal(text: string, fnName: string): string | undefined {
  return text.split('\n').find((l) => l.startsWith('fnhost_invocations_total{') && l.includes(`function="${fnName}"`));
}

describe('the sweeper', () => {
  it('finishes a stalled-out job whose failing node died before writing: Crashed (worker-lost), dead letter, callback, counted once', async () => {
    const { keys, fn, client, conn, scheduler } = await setup();
    const r = await hookReceiver(cleanups);
    const { invocationId: id } = await client.enqueue({ fn, payload: { kind: 'event', body: Buffer.from('{}') }, mode: 'async', callbackUrl: r.url });
    // the index entry is written with the queued record
    const entry = openEntryOf(keys.record(fn.tenant, id))!;
    expect(entry.index).toBe(keys.openInvocations());
    expect(await redis.zscore(entry.index, entry.member)).not.toBeNull();
    await stallOutUnseen(keys, conn, fn.tenant, id);
    expect((await client.get(fn.tenant, id))!.status).toBe('queued');

    const m1 = createMetrics({ defaultMetrics: false });
    const m2 = createMetrics({ defaultMetrics: false });
    await scheduler('n1', m1);
    await scheduler('n2', m2);
    const rec = await until(() => client.get(fn.tenant, id), (x) => x?.status === 'failed', 5000);
    expect(rec!.error).toMatchObject({ type: 'Crashed', reason: 'worker-lost', stalls: 1 });
    expect(rec!.finishedAt).toBeGreaterThan(0);
    expect((await client.listDeadLetters(fn.tenant)).map((x) => x.id)).toEqual([id]);
    await until(() => r.hits.length, (n) => n >= 1, 5000);
    expect(JSON.parse(r.hits[0]!.body)).toMatchObject({ id, status: 'failed', error: { type: 'Crashed', reason: 'worker-lost' } });
    await until(() => redis.exists(entry.index), (n) => n === 0, 5000);
    // counted once across both nodes, whichever ran the sweep
    const lines = [invocationsTotal(await m1.text(), fn.name), invocationsTotal(await m2.text(), fn.name)].filter(Boolean);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/outcome="Crashed"/);
    expect(Number(lines[0]!.split(' ').pop())).toBe(1);
    expect(r.hits).toHaveLength(1);
  }, 15_000);

  it('finishes a record whose job was never added (gateway died before Queue.add): Crashed (job-lost), then drops it', async () => {
    const { keys, fn, client, scheduler } = await setup();
    const id = randomUUID();
    // what the client's prepare() writes before Queue.add
    const m = redis.multi();
    queueRecord(m, keys.record(fn.tenant, id), { id, tenant: fn.tenant, function: fn.name, version: fn.version, mode: 'async', status: 'queued', attempts: 0, createdAt: Date.now() }, 600);
    await m.exec();
    const metrics = createMetrics({ defaultMetrics: false });
    await scheduler('n1', metrics);
    const rec = await until(() => client.get(fn.tenant, id), (x) => x?.status === 'failed', 5000);
    expect(rec!.error).toMatchObject({ type: 'Crashed', reason: 'job-lost' });
    expect(rec).toMatchObject({ id, tenant: fn.tenant, function: fn.name, version: fn.version, mode: 'async' });
    await until(() => redis.exists(keys.openInvocations()), (n) => n === 0, 5000);
    expect(invocationsTotal(await metrics.text(), fn.name)).toMatch(/outcome="Crashed".* 1$/);
    expect(await client.listDeadLetters(fn.tenant)).toEqual([]);
  }, 15_000);

  it('finishes a job that ended without its final record (its write was lost): Crashed (result-lost) with the job state', async () => {
    const { keys, fn, client, conn, scheduler } = await setup();
    const { invocationId: id } = await client.enqueue({ fn, payload: { kind: 'event', body: Buffer.from('{}') }, mode: 'async' });
    // a worker completes the job without writing the record, then dies
    const w = new Worker(keys.tenantQueue(fn.tenant), null, { connection: bullConnection(conn), prefix: keys.bullPrefix, autorun: false });
    const job = await w.getNextJob('lost-write', { block: false });
    expect(job?.id).toBe(id);
    await job!.moveToCompleted('x', 'lost-write', false);
    await w.close();
    await scheduler('n1', createMetrics({ defaultMetrics: false }));
    const rec = await until(() => client.get(fn.tenant, id), (x) => x?.status === 'failed', 5000);
    expect(rec!.error).toMatchObject({ type: 'Crashed', reason: 'result-lost', jobState: 'completed' });
    await until(() => redis.exists(keys.openInvocations()), (n) => n === 0, 5000);
  }, 15_000);

  it('leaves a live job alone past the grace period, and a final record as it is', async () => {
    const { keys, fn, client, conn, scheduler } = await setup();
    const metrics = createMetrics({ defaultMetrics: false });
    // a job still running on a live node long after the grace period: re-scored, never finished by the sweeper
    const { invocationId: slow } = await client.enqueue({ fn, payload: { kind: 'event', body: Buffer.from('{"sleep":800}') }, mode: 'async' });
    // a job failed unseen whose record is final already (the attempt wrote it, then its node died)
    const other = fnv({ tenant: `${fn.tenant}-2`, name: 'other' });
    const { invocationId: done } = await client.enqueue({ fn: other, payload: { kind: 'event', body: Buffer.from('{}') }, mode: 'async' });
    await stallOutUnseen(keys, conn, other.tenant, done);
    const okRec = { id: done, tenant: other.tenant, function: 'other', version: 1, mode: 'async' as const, status: 'succeeded' as const, attempts: 1, createdAt: Date.now(), finishedAt: Date.now(), response: { status: 200, headers: {}, body: 'e30=' } };
    expect(await setRecord(redis, keys.record(other.tenant, done), okRec, 600, { force: true })).toBe(true);
    const slowMember = openEntryOf(keys.record(fn.tenant, slow))!.member;
    const before = Number(await redis.zscore(keys.openInvocations(), slowMember));
    await scheduler('n1', metrics);
    // the sweeper has looked at the running one: re-scored to a later time
    await until(() => redis.zscore(keys.openInvocations(), slowMember), (s) => Number(s) > before + FAST_SWEEP.graceMs, 5000);
    expect((await client.get(fn.tenant, slow))!.status).toBe('running');
    expect((await client.get(other.tenant, done))!.status).toBe('succeeded');
    const rec = await until(() => client.get(fn.tenant, slow), (x) => x?.status === 'succeeded', 5000);
    expect(rec!.error).toBeUndefined();
    await until(() => redis.exists(keys.openInvocations()), (n) => n === 0, 5000);
    expect((await client.get(other.tenant, done))!.status).toBe('succeeded');
    expect(invocationsTotal(await metrics.text(), 'other')).toBeUndefined();
  }, 15_000);

  it('runs on one node at a time (lock with a TTL), and a redriven dead letter is indexed again', async () => {
    const { keys, fn, client, conn } = await setup();
    const { invocationId: id } = await client.enqueue({ fn, payload: { kind: 'event', body: Buffer.from('{}') }, mode: 'async' });
    await stallOutUnseen(keys, conn, fn.tenant, id);
    const ctx = (nodeId: string, metrics: FnhostMetrics) => ({ redis, keys, nodeId, retention: DEFAULT_RETENTION, log: silent, metrics }) as unknown as JobContext;
    const mA = createMetrics({ defaultMetrics: false });
    const mB = createMetrics({ defaultMetrics: false });
    const a = new Sweeper(ctx('a', mA), conn, { graceMs: 0, intervalMs: 60_000 });
    const b = new Sweeper(ctx('b', mB), conn, { graceMs: 0, intervalMs: 60_000 });
    cleanups.push(async () => {
      await a.close();
      await b.close();
    });
    const [ra, rb] = await Promise.all([a.sweep(), b.sweep()]);
    expect([ra.ran, rb.ran].sort()).toEqual([false, true]);
    const ran = ra.ran ? ra : rb;
    expect(ran).toMatchObject({ checked: 1, finished: 1, dropped: 1, live: 0 });
    const ttl = await redis.pttl(keys.sweeperLock());
    expect(ttl).toBeGreaterThan(0);
    expect(ttl).toBeLessThanOrEqual(60_000);
    expect(await redis.get(keys.sweeperLock())).toMatch(ra.ran ? /^a:/ : /^b:/);
    expect((await client.get(fn.tenant, id))!.error).toMatchObject({ type: 'Crashed', reason: 'worker-lost' });
    // while the lock is held, nobody else runs
    expect((await (ra.ran ? b : a).sweep()).ran).toBe(false);
    expect(await redis.exists(keys.openInvocations())).toBe(0);

    // redrive: the record goes back to queued and its entry comes back, so a second loss is finished too
    await client.redrive(fn.tenant, id);
    expect(await redis.zscore(keys.openInvocations(), openEntryOf(keys.record(fn.tenant, id))!.member)).not.toBeNull();
    expect(await redis.ttl(keys.openInvocations())).toBeGreaterThan(0);
    await stallOutUnseen(keys, conn, fn.tenant, id);
    await redis.del(keys.sweeperLock());
    const again = await a.sweep();
    expect(again).toMatchObject({ ran: true, finished: 1 });
    expect((await client.get(fn.tenant, id))).toMatchObject({ status: 'failed', error: { type: 'Crashed', reason: 'worker-lost' } });
  }, 15_000);

  it('finishes nothing an ordinary run finishes itself: the index empties, nothing without a TTL', async () => {
    const { keys, fn, client, scheduler } = await setup();
    await scheduler('n1', createMetrics({ defaultMetrics: false }));
    const ids = await Promise.all([0, 1, 2].map(() => client.enqueue({ fn, payload: { kind: 'event', body: Buffer.from('{}') }, mode: 'async' }).then((r) => r.invocationId)));
    const ids2 = await Promise.all([0, 1].map(() => client.enqueue({ fn, payload: { kind: 'event', body: Buffer.from('{"fail":"FunctionError"}') }, mode: 'async' }).then((r) => r.invocationId)));
    for (const id of ids) expect((await until(() => client.get(fn.tenant, id), (x) => x?.status === 'succeeded', 5000))!.error).toBeUndefined();
    for (const id of ids2) expect((await until(() => client.get(fn.tenant, id), (x) => x?.status === 'failed', 10_000))!.error!.type).toBe('FunctionError');
    await until(() => redis.exists(keys.openInvocations()), (n) => n === 0, 5000);
  }, 20_000);
});

describe('open-invocation index keys', () => {
  it('maps a record key to its entry and back, for names that need encoding', () => {
    const keys = createKeys('p1');
    const e = openEntryOf(keys.record('a:b.c/ü', 'id-1'))!;
    expect(e.index).toBe('p1:invopen');
    expect(parseOpenMember(e.member)).toEqual({ tenant: 'a:b.c/ü', id: 'id-1' });
    expect(`p1:inv:${e.member}`).toBe(keys.record('a:b.c/ü', 'id-1'));
    expect(openEntryOf('p1:payload:x')).toBeNull();
    expect(parseOpenMember('no-colon')).toBeNull();
    expect(parseOpenMember('a:b:c')).toBeNull();
  });

  it('indexes async records only (sync callers get their answer or Timeout)', async () => {
    const keys = createKeys(`sweep-${randomUUID().slice(0, 8)}`);
    const m = redis.multi();
    const base = { tenant: 't', function: 'f', version: 1, status: 'queued' as const, attempts: 0, createdAt: 1 };
    queueRecord(m, keys.record('t', 's1'), { ...base, id: 's1', mode: 'sync' }, 5);
    queueRecord(m, keys.record('t', 'a1'), { ...base, id: 'a1', mode: 'async' }, 5);
    await m.exec();
    expect(await redis.zrange(keys.openInvocations(), 0, -1)).toEqual(['t:a1']);
    expect(await redis.ttl(keys.openInvocations())).toBeGreaterThan(0);
    await redis.del(keys.openInvocations(), keys.record('t', 's1'), keys.record('t', 'a1'));
  });
});
