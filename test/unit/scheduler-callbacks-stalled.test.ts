/**
 * A completion callback that BullMQ fails itself: its delivery workers kept dying mid-POST (the job stalled more
 * than `maxStalledCount` times, BullMQ's default 1), so no attempt of ours ever ended. It must be listed for its
 * tenant like any other failed callback (services/scheduler/callbacks.ts, the worker's 'failed' event), counted
 * as failed, and a redrive must POST it again with fresh attempts — including a fresh stall count: BullMQ keeps
 * the job's stalls (`stc`) across a plain retry, so the redriven callback's first dying node would fail it at once
 * (services/scheduler/callback-failures.ts redrive).
 *
 * Real processes die: two delivery-only processes (test/fixtures/scheduler/callback-deliverer.ts, a real
 * `Callbacks` worker with a 400 ms lock) are killed with SIGKILL while their POST hangs on the receiver; this
 * process's own `Callbacks` runs BullMQ's stalled-job check every 100 ms. Real Redis, real BullMQ, a real
 * loopback receiver.
 */
import { describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import { Queue } from 'bullmq';
import { redisUrl } from '../helpers/redis.ts';
import { until } from '../helpers/until.ts';
import { useCleanups, useRedis, keysWithoutTtl } from '../helpers/hooks.ts';
import { parsePromText } from '../helpers/prom-text.ts';
import { bullConnection } from '../../services/scheduler/client.ts';
import { CALLBACK_QUEUE, Callbacks, callbackOptions, deliveryId } from '../../services/scheduler/callbacks.ts';
import { FailedCallbacks } from '../../services/scheduler/callback-failures.ts';
import { CallbackSigner } from '../../services/scheduler/callback-signer.ts';
import { createKeys } from '../../services/scheduler/keys.ts';
import { createMetrics } from '../../services/common/metrics.ts';
import { createLogger } from '../../services/common/log.ts';
import type { InvocationRecord } from '../../services/scheduler/types.ts';

const redis = useRedis();
const cleanups = useCleanups();
const deliverer = fileURLToPath(new URL('../fixtures/scheduler/callback-deliverer.ts', import.meta.url));
/** the dying deliverers' BullMQ lock: their death is noticed this long after (plus a check interval) */
const LOCK_MS = 400;
const CHECK_MS = 100;

/** A delivery-only process; resolves once it runs. Killed by the clean-up if the test did not. */
async function startDeliverer(prefix: string): Promise<ChildProcess> {
  const child = spawn(process.execPath, ['--import', 'tsx', deliverer, redisUrl(), prefix, String(LOCK_MS), String(CHECK_MS)], { stdio: ['ignore', 'pipe', 'inherit'] });
  cleanups.push(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
    }
  });
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => d.toString().includes('ready') && resolve());
    child.once('exit', (code) => reject(new Error(`deliverer exited (${code}) before it was ready`)));
  });
  return child;
}

async function kill9(child: ChildProcess): Promise<void> {
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGKILL');
  await exited;
}

describe('a callback whose delivery workers kept dying', () => {
  it('is failed by BullMQ, listed for its tenant, counted, and POSTed again by a redrive', async () => {
    const prefix = `cbst-${randomUUID().slice(0, 8)}`;
    const tenant = `t-${randomUUID().slice(0, 6)}`;
    const keys = createKeys(prefix);
    // the receiver holds every POST open (a slow receiver, as the node dies) until told to answer 200
    let answer = false;
    const hits: Array<{ deliveryId: string; attempt: string }> = [];
    const server = createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        hits.push({ deliveryId: String(req.headers['x-fnhost-delivery-id']), attempt: String(req.headers['x-fnhost-delivery-attempt']) });
        if (answer) res.end('ok');
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    cleanups.push(() => {
      server.closeAllConnections();
      return new Promise<void>((r) => server.close(() => r()));
    });
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`;
    const conn = new Redis(redisUrl(), { maxRetriesPerRequest: null });
    const q = new Queue(CALLBACK_QUEUE, { connection: bullConnection(conn), prefix: keys.bullPrefix });
    const metrics = createMetrics({ defaultMetrics: false });
    const failed = new FailedCallbacks(redis, prefix, metrics);
    let cb: Callbacks | undefined;
    cleanups.push(async () => {
      await failed.close();
      await cb?.close();
      await q.close();
      await conn.quit();
      expect(await keysWithoutTtl(redis, prefix, [keys.callbackSecret()])).toEqual([]);
      const all = await redis.keys(`${prefix}:*`);
      if (all.length) await redis.del(...all);
    });

    const now = Date.now();
    const rec: InvocationRecord = { id: randomUUID(), tenant, function: 'f', version: 1, mode: 'async', status: 'succeeded', attempts: 1, createdAt: now, finishedAt: now };
    const id = deliveryId(rec);
    // queued without a worker of this process: only the deliverers take it
    const producer = new Callbacks({ redis: conn, prefix, options: callbackOptions({}), log: createLogger('test', 'silent') });
    await producer.enqueue(url, rec);
    await producer.close();

    // first node: takes the callback, its POST hangs, it dies
    const first = await startDeliverer(prefix);
    await until(() => hits.length, (n) => n === 1, 10_000);
    await kill9(first);
    // second node: its stalled-job check gives the job back (stalled once: BullMQ's limit is 1), it takes it, dies
    const second = await startDeliverer(prefix);
    await until(() => hits.length, (n) => n === 2, 10_000);
    await kill9(second);
    expect(hits.map((h) => h.deliveryId)).toEqual([id, id]);
    expect(await q.getJobState(id)).toBe('active');

    // a live node (default maxStalledCount, short check interval): the second stall is one too many
    cb = new Callbacks({ redis: conn, prefix, metrics, log: createLogger('test', 'silent'), options: { ...callbackOptions({}), sweepMs: 60_000, stalledIntervalMs: CHECK_MS } });
    cb.start();
    const listed = await until(() => failed.list(tenant), (p) => p.failed.length === 1, 10_000);
    expect(listed.failed[0]).toMatchObject({ deliveryId: id, invocationId: rec.id, function: 'f', url, status: 'succeeded' });
    expect(listed.failed[0]!.lastError).toMatch(/delivery worker lost/);
    expect(await q.getJobState(id)).toBe('failed');
    expect((await q.getJob(id))?.failedReason).toBe('job stalled more than allowable limit');
    expect(hits).toHaveLength(2); // the live node failed it without a POST
    const text = parsePromText(await metrics.text());
    expect(text.value('fnhost_callbacks_total', { outcome: 'failed' })).toBe(1);
    expect(text.value('fnhost_callbacks_total', { outcome: 'delivered' })).toBe(0);

    // redrive: fresh attempts, and a fresh stall count — the next node to die mid-POST is one stall, not a third
    await cb.close();
    expect(await failed.redrive(tenant, id)).toEqual({ deliveryId: id });
    expect((await failed.list(tenant)).failed).toEqual([]);
    const third = await startDeliverer(prefix);
    await until(() => hits.length, (n) => n === 3, 10_000);
    await kill9(third);
    // a live node gives it back after that one stall and POSTs it: delivered
    answer = true;
    cb = new Callbacks({ redis: conn, prefix, metrics, log: createLogger('test', 'silent'), options: { ...callbackOptions({}), sweepMs: 60_000, stalledIntervalMs: CHECK_MS } });
    cb.start();
    await until(() => q.getJobState(id), (s) => s === 'completed' || s === 'failed', 10_000);
    expect(await q.getJobState(id)).toBe('completed');
    expect(hits).toHaveLength(4);
    expect(hits.slice(2)).toEqual([{ deliveryId: id, attempt: '1' }, { deliveryId: id, attempt: '1' }]);
    expect((await failed.list(tenant)).failed).toEqual([]);
    const after = parsePromText(await metrics.text());
    expect(after.value('fnhost_callbacks_total', { outcome: 'delivered' })).toBe(1);
    expect(after.value('fnhost_callbacks_total', { outcome: 'failed' })).toBe(1);
    expect(after.value('fnhost_callback_redrives_total')).toBe(1);
  }, 60_000);
});
