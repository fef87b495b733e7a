/**
 * @module scheduler/callback-failures
 * A tenant's failed completion callbacks — those whose POSTs ran out of attempts, or whose destination the
 * allow-list refused (./callbacks.ts) — to list, redrive and delete; the dead-letter list's counterpart for
 * callbacks. Tenant-scoped: a tenant sees and touches only delivery ids in its own list
 * (`P:callback:failed:T`, written by the delivery worker); another tenant's id is NotFound, as an unknown one.
 *
 * The list is an index over the callbacks queue's failed set (BullMQ, shared by every tenant), which stays the
 * truth: an entry whose job is gone (BullMQ's retention removed it) is dropped as it is read, one whose job is
 * not failed (a redrive in flight) is not shown. A redrive retries the same job with fresh attempts: the
 * receiver gets the same `X-Fnhost-Delivery-Id` (it was never delivered, so nothing to deduplicate against).
 *
 * @example
 * const failed = new FailedCallbacks(redis, 'fnhost');
 * const { failed: list } = await failed.list('acme', { limit: 50 });
 * await failed.redrive('acme', list[0].deliveryId);
 * await failed.remove('acme', list[1].deliveryId);
 * await failed.close();
 */
import { Job, Queue, type ConnectionOptions } from 'bullmq';
import type { Redis } from 'ioredis';
import { Conflict, InvalidRequest, NotFound } from '../common/errors.ts';
import { CALLBACK_QUEUE, type CallbackJob, type FailedCallback } from './callbacks.ts';
import { createKeys, type Keys } from './keys.ts';
import { metrics as processMetrics, type FnhostMetrics } from '../common/metrics.ts';

/** `<invocation id>.<finishedAt>` (./callbacks.ts deliveryId): invocation ids are UUIDs, finishedAt epoch ms. */
const DELIVERY_ID_RE = /^[A-Za-z0-9_-]{1,128}\.[0-9]{1,16}$/;
/** A page cursor: `<failedAt>:<delivery id>` of the last entry of the previous page. */
const CURSOR_RE = /^([0-9]{1,16}):([A-Za-z0-9_-]{1,128}\.[0-9]{1,16})$/;
/** Default and largest page of list() (one HMGET + one ZMSCORE of this many ids). */
export const FAILED_PAGE_DEFAULT = 100;
export const FAILED_PAGE_MAX = 1000;

export interface FailedCallbackPage {
  failed: FailedCallback[];
  /**
   * pass to list() for the next (older) page; absent on the last page. It names the page's last entry, so new
   * failures arriving meanwhile (at the top) do not shift the next page.
   */
  cursor?: string;
}

function checkTenant(tenant: string): void {
  if (typeof tenant !== 'string' || !tenant) throw new InvalidRequest('tenant is required', { field: 'tenant' });
}

function checkId(id: string): void {
  if (typeof id !== 'string' || !DELIVERY_ID_RE.test(id)) {
    throw new InvalidRequest('a delivery id is `<invocation id>.<finishedAt>` (X-Fnhost-Delivery-Id)', { field: 'deliveryId' });
  }
}

export class FailedCallbacks {
  private readonly queue: Queue<CallbackJob>;
  private readonly failedSet: string;
  private readonly keys: Keys;

  /**
   * `redis`: any connection (the gateway's); `prefix`: the scheduler's key prefix (the queue is under
   * `<prefix>:bull`); `metrics`: where redrives are counted (default: the process's, which GET /metrics serves).
   */
  constructor(
    private readonly redis: Redis,
    prefix: string,
    private readonly metrics: Pick<FnhostMetrics, 'callbackRedrive'> = processMetrics,
  ) {
    this.keys = createKeys(prefix);
    this.queue = new Queue<CallbackJob>(CALLBACK_QUEUE, { connection: redis as unknown as ConnectionOptions, prefix: this.keys.bullPrefix });
    this.queue.on('error', () => {});
    this.failedSet = `${this.keys.bullPrefix}:${CALLBACK_QUEUE}:failed`;
  }

  /**
   * The tenant's failed callbacks, newest first. `limit`: 1..FAILED_PAGE_MAX (default FAILED_PAGE_DEFAULT);
   * `cursor`: from the previous page. Bad values are InvalidRequest.
   */
  async list(tenant: string, opts: { limit?: number; cursor?: string } = {}): Promise<FailedCallbackPage> {
    checkTenant(tenant);
    const limit = opts.limit ?? FAILED_PAGE_DEFAULT;
    if (!Number.isInteger(limit) || limit < 1 || limit > FAILED_PAGE_MAX) throw new InvalidRequest(`limit must be an integer from 1 to ${FAILED_PAGE_MAX}`, { field: 'limit' });
    const k = this.keys.failedCallbacks(tenant);
    let off = 0;
    if (opts.cursor !== undefined) {
      const m = CURSOR_RE.exec(opts.cursor);
      if (!m) throw new InvalidRequest('cursor must be one a previous page returned', { field: 'cursor' });
      const rank = await this.redis.zrevrank(k.index, m[2]!);
      // the entry is gone (redriven, deleted, expired): start after everything newer than it
      off = rank !== null ? rank + 1 : await this.redis.zcount(k.index, `(${m[1]}`, '+inf');
    }
    const flat = await this.redis.zrevrange(k.index, off, off + limit - 1, 'WITHSCORES');
    if (flat.length === 0) return { failed: [] };
    const ids: string[] = [];
    for (let i = 0; i < flat.length; i += 2) ids.push(flat[i]!);
    const last = `${flat[flat.length - 1]}:${ids[ids.length - 1]}`;
    const p = this.redis.pipeline().hmget(k.info, ...ids).zmscore(this.failedSet, ...ids);
    for (const id of ids) p.exists(`${this.keys.bullPrefix}:${CALLBACK_QUEUE}:${id}`);
    const res = (await p.exec())!;
    const err = res.find(([e]) => e)?.[0];
    if (err) throw err;
    const infos = res[0]![1] as (string | null)[];
    const scores = res[1]![1] as (string | null)[];
    const failed: FailedCallback[] = [];
    const gone: string[] = [];
    ids.forEach((id, i) => {
      const info = infos[i];
      if (!info || res[2 + i]![1] === 0) gone.push(id);
      else if (scores[i] !== null) failed.push(JSON.parse(info) as FailedCallback);
    });
    if (gone.length) await this.forget(tenant, gone);
    return ids.length === limit ? { failed, cursor: last } : { failed };
  }

  /**
   * Queues a failed callback again with fresh attempts (same delivery id). NotFound: not in the tenant's list
   * (unknown, another tenant's, or no longer retained); Conflict: it is not failed (being redriven already).
   */
  async redrive(tenant: string, id: string): Promise<{ deliveryId: string }> {
    const job = await this.failedJob(tenant, id);
    // out of the list first: a redriven POST that fails fast lists itself again, and must stay listed
    const k = this.keys.failedCallbacks(tenant);
    const [score, info] = await Promise.all([this.redis.zscore(k.index, id), this.redis.hget(k.info, id)]);
    await this.forget(tenant, [id]);
    try {
      // A callback BullMQ failed because its delivery stalled out keeps its stall count (`stc`) in the job hash
      // across a retry: the first node to die delivering the redriven one would fail it again at once. Fresh
      // attempts start at 0 stalls (the job is failed: no worker holds it).
      await this.redis.hdel(this.queue.toKey(id), 'stc');
      await job.retry('failed', { resetAttemptsMade: true, resetAttemptsStarted: true });
    } catch (e) {
      if (score !== null && info !== null) await this.redis.multi().zadd(k.index, score, id).hset(k.info, id, info).exec();
      throw e;
    }
    this.metrics.callbackRedrive();
    return { deliveryId: id };
  }

  /** Redrives every failed callback of the tenant; returns how many went back to the queue. */
  async redriveAll(tenant: string): Promise<{ redriven: number }> {
    checkTenant(tenant);
    const ids = await this.redis.zrevrange(this.keys.failedCallbacks(tenant).index, 0, -1);
    let redriven = 0;
    for (const id of ids) {
      try {
        await this.redrive(tenant, id);
        redriven++;
      } catch (e) {
        // gone or being redriven meanwhile: not this call's to redrive
        if (!(e instanceof NotFound || e instanceof Conflict)) throw e;
      }
    }
    return { redriven };
  }

  /** Deletes a failed callback (job and list entry); errors as redrive(). */
  async remove(tenant: string, id: string): Promise<void> {
    const job = await this.failedJob(tenant, id);
    await job.remove();
    await this.forget(tenant, [id]);
  }

  /** Closes the queue handle (the connection is the caller's). */
  async close(): Promise<void> {
    await this.queue.close().catch(() => {});
  }

  /** The failed job behind one of the tenant's list entries, or the typed error. */
  private async failedJob(tenant: string, id: string): Promise<Job<CallbackJob>> {
    checkTenant(tenant);
    checkId(id);
    const k = this.keys.failedCallbacks(tenant);
    if ((await this.redis.zscore(k.index, id)) === null) throw new NotFound('no such failed callback', { deliveryId: id });
    const job = await Job.fromId<CallbackJob>(this.queue, id);
    // the list names only its tenant's jobs; the tenant check is the second lock on that door
    if (!job || job.data?.tenant !== tenant) {
      await this.forget(tenant, [id]);
      throw new NotFound('no such failed callback', { deliveryId: id });
    }
    const state = await job.getState();
    if (state !== 'failed') throw new Conflict(`the callback is ${state}, not failed`, { deliveryId: id, state });
    return job;
  }

  private async forget(tenant: string, ids: string[]): Promise<void> {
    const k = this.keys.failedCallbacks(tenant);
    await this.redis.multi().zrem(k.index, ...ids).hdel(k.info, ...ids).exec();
  }
}
