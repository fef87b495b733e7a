/**
 * @module scheduler/client
 * The gateway's side of the scheduler (`InvocationClient` of ./types.ts): puts invocation jobs on BullMQ,
 * waits for sync results, reads records, dead letters and logs. Holds no state another process needs: a
 * result reaches the client that waits for it through its own reply channel, and every record can be read
 * back from Redis by any client.
 *
 * Queue topology (details in ./keys.ts, ./fast-lane.ts and ./routing.ts):
 *   - sync/http ("fast lane", default): a Redis list per tenant (`P:fast:T`) and per node (`P:fastn:N`, jobs
 *     routed to a node that keeps the version warm); nodes BLMPOP them, rotating the tenant order per call;
 *   - async (and sync with `syncLane: 'bullmq'`): one BullMQ queue per tenant (`inv.T`) with attempts, backoff,
 *     dead letters and stalled-job recovery; every node runs one worker per such queue. Either way a tenant
 *     with 1,000 queued jobs holds one queue's turn and cannot starve another tenant.
 *
 * Result delivery (sync/http): the scheduler's final record write and a PUBLISH on `P:reply:<clientId>`
 * happen in one Lua script; this client holds one subscription for all its waiters. A missed message (a
 * reconnect) is covered by a fallback read of the record every second. A scheduler in the same process
 * answers in-process instead (./local-replies.ts) and writes the record in its next batch (./record-batch.ts);
 * `get()` answers from memory until then.
 *
 * Co-located dispatch (`localDispatch: true`, what `fnhost start` uses): a sync/http call the scheduler of
 * this process can place at once runs there without the queue (./local-dispatch.ts). Measured on this machine (2 cores,
 * shared): BullMQ add → worker → PUBLISH, no-op processor: 0.81 ms median sequential, ~2,900 jobs/s with 64
 * in flight; the fast lane with a no-op executor: 0.7–0.8 ms, 3,500–6,100/s (notes: /tmp/fnhost-notes/scheduler.md).
 *
 * @example
 * const client = createInvocationClient({ redisUrl: 'redis://127.0.0.1:6379' });   // add localDispatch: true next to a scheduler
 * const { record, response } = await client.invoke({ fn, payload: { kind: 'event', body: Buffer.from('{}') }, mode: 'sync' });
 * const { invocationId } = await client.enqueue({ fn, payload, mode: 'async', idempotencyKey: 'order-42' });
 */
import { randomFillSync, randomUUID } from 'node:crypto';
import { Queue, type ConnectionOptions, type JobsOptions } from 'bullmq';
import { Redis } from 'ioredis';
import type { InvocationClient, InvokeRequest, InvocationRecord, SyncResult, LogQuery } from './types.ts';
import type { LogLine } from '../common/model.ts';
import { InvalidRequest, NotFound, Timeout, Unavailable, Conflict, TooManyRequests, errorFromJSON, type FnhostError } from '../common/errors.ts';
import { createKeys, type Keys } from './keys.ts';
import { encodePayload, type FastJob, type JobData } from './job.ts';
import { FN_STASH_TTL_S, FnStash, fnRefOf } from './fn-refs.ts';
import { fromStored, getRecord, isFinal, parseReply, queueRecord, setRecord, type StoredRecord } from './records.ts';
import { readLogs, followLogs as follow } from './logs.ts';
import { Attr, SpanKind, SpanName, injectTraceparent, remoteParent, tracingEnabled, withSpan } from '../common/telemetry.ts';
import { routeTo } from './routing.ts';
import { fastPushMany, type FastPushItem } from './fast-lane.ts';
import { registerLocalClient } from './local-replies.ts';
import { localDispatcher, localKey } from './local-dispatch.ts';
import { defineScripts } from './scripts.ts';
import { envCallbackAllow, validateCallbackUrl } from './callback-url.ts';
import { CALLBACK_QUEUE, dropTenantCallbacks } from './callbacks.ts';
import { DEFAULT_ATTEMPTS, DEFAULT_BACKOFF_MS, DEFAULT_RETENTION, NODE_STALE_MS, type Retention } from './config.ts';

export interface InvocationClientOptions {
  /** an ioredis connection to share (the client duplicates it for its subscription); or */
  redis?: Redis;
  /** a URL to connect to (the client owns and closes the connection). */
  redisUrl?: string;
  /** key prefix (default "fnhost"); must match the schedulers'. */
  prefix?: string;
  retention?: Partial<Retention>;
  /**
   * how long a sync/http invocation may wait for a free instance before the caller gets `Timeout`
   * (default 30 s, on top of the function's own timeoutMs).
   */
  maxQueueWaitMs?: number;
  /**
   * queued invocations per tenant above which enqueue/invoke answer `TooManyRequests` (default 10,000). A soft
   * bound: the count is refreshed every 100 ms, so a burst may overshoot it by what arrives in that time.
   */
  maxQueuedPerTenant?: number;
  /** routed jobs that may wait for one node before new ones go to the tenant queue (default 64). */
  routedPendingMax?: number;
  /** turn warm-node routing off (all jobs on tenant queues). */
  routing?: boolean;
  /**
   * how sync/http invocations travel: 'fast' (default; Redis lists, ./fast-lane.ts) or 'bullmq' (jobs like
   * async ones, without retries). Async always uses BullMQ.
   */
  syncLane?: 'fast' | 'bullmq';
  /**
   * Hand sync/http calls to a scheduler running in this same process on the same Redis and prefix, when it
   * can place them at once (./local-dispatch.ts); otherwise, and for async, the queue. Default false: a
   * client measures or tests the queue unless asked (`fnhost start` turns it on).
   */
  localDispatch?: boolean;
}

interface Waiter {
  tenant: string;
  resolve: (r: SyncResult) => void;
  reject: (e: FnhostError) => void;
  timer: NodeJS.Timeout;
  since: number;
}

/**
 * bullmq 5.81 bundles its own ioredis (5.11) whose types differ nominally from ours (5.9); at run time it
 * accepts any ioredis instance (duck-typed), so this cast is the whole bridge.
 */
export function bullConnection(redis: Redis): ConnectionOptions {
  return redis as unknown as ConnectionOptions;
}

/** A typed error as it is; anything else from the Redis client means Redis is unreachable. */
function asUnavailable(e: unknown): unknown {
  if (e && typeof e === 'object' && 'type' in e) return e;
  return new Unavailable('Redis is unreachable', {}, { cause: e });
}

/** UUIDs made per refill of newInvocationId's buffers (one getrandom call each, as node's randomUUID batches 128) */
const ID_BATCH = 128;
const idRandom = Buffer.alloc(16 * ID_BATCH);
const idText = Buffer.alloc(36 * ID_BATCH);
const ID_HEX = Buffer.from('0123456789abcdef', 'latin1');
let idsLeft = 0;

/**
 * A random (version 4) UUID, as `randomUUID()` makes, but as a flat string: node builds randomUUID's result by
 * concatenating 20 pieces, a tree of ConsStrings that every reader walks or flattens again — hashing it (the
 * in-process calls map), copying it into the trace span record (~0.25 µs per id measured), writing it to Redis.
 * Here 128 ids are written as text into one buffer per refill and each is one `toString('latin1', …)` (a flat one-byte
 * string of its own: no slice of a shared parent that would keep the whole batch alive). Measured in a microbenchmark:
 * ~0.1 µs less than randomUUID alone, ~0.2 µs less than randomUUID plus a flatten.
 */
export function newInvocationId(): string {
  if (idsLeft === 0) {
    randomFillSync(idRandom);
    const hex = ID_HEX;
    for (let i = 0; i < ID_BATCH; i++) {
      const r = i * 16;
      // RFC 9562 §5.4: version 4 in the high nibble of byte 6, variant 0b10 in the high bits of byte 8
      idRandom[r + 6] = (idRandom[r + 6]! & 0x0f) | 0x40;
      idRandom[r + 8] = (idRandom[r + 8]! & 0x3f) | 0x80;
      let p = i * 36;
      for (let j = 0; j < 16; j++) {
        if (j === 4 || j === 6 || j === 8 || j === 10) idText[p++] = 0x2d;
        const b = idRandom[r + j]!;
        idText[p++] = hex[b >> 4]!;
        idText[p++] = hex[b & 15]!;
      }
    }
    idsLeft = ID_BATCH;
  }
  const off = (ID_BATCH - idsLeft--) * 36;
  return idText.toString('latin1', off, off + 36);
}

const QUEUE_DEPTH_CACHE_MS = 100; // re-count a tenant's queue at most 10×/s: the bound is a safety net, not an exact limit

/**
 * Creates the client. Cheap; connects lazily on first use.
 * @example
 * const client = createInvocationClient({ redisUrl: process.env.REDIS_URL });
 */
export function createInvocationClient(opts: InvocationClientOptions): InvocationClient & { readonly clientId: string } {
  if (!opts.redis && !opts.redisUrl) throw new InvalidRequest('createInvocationClient needs redis or redisUrl', { field: 'redisUrl' });
  const keys: Keys = createKeys(opts.prefix);
  const ret: Retention = { ...DEFAULT_RETENTION, ...opts.retention };
  const ownsRedis = !opts.redis;
  const redis = defineScripts(opts.redis ?? new Redis(opts.redisUrl!, { maxRetriesPerRequest: 3, enableAutoPipelining: true }));
  const maxQueueWaitMs = opts.maxQueueWaitMs ?? 30_000;
  const maxQueued = opts.maxQueuedPerTenant ?? 10_000;
  const routedPendingMax = opts.routedPendingMax ?? 64;
  const routing = opts.routing ?? true;
  const syncLane = opts.syncLane ?? 'fast';
  const clientId = randomUUID();
  const replyChannel = keys.replyChannel(clientId);
  const queues = new Map<string, Queue>();
  /** tenants this client has announced to the schedulers: fast lane ("T"), BullMQ queue ("bull:T") */
  const announced = new Set<string>();
  const waiters = new Map<string, Waiter>();
  const fnStash = new FnStash();
  const depthCache = new Map<string, { at: number; n: number }>();
  let closed = false;
  const localDispatch = opts.localDispatch ?? false;
  const localQueues = localKey(redis, keys.prefix);
  /**
   * Calls dispatched in-process, from hand-over until Redis acknowledged their final record: `get()` answers
   * from here meanwhile (the record is written behind the response, on the scheduler's connection).
   */
  const localCalls = new Map<string, { tenant: string; record: InvocationRecord; written?: Promise<unknown> }>();
  /**
   * The ids of localCalls by the write that carries their record: the scheduler's record batch hands one
   * promise to every call in a batch (./record-batch.ts), so this is one then() per batch, not per call.
   */
  const byWrite = new Map<Promise<unknown>, string[]>();
  function forgetWhenWritten(id: string, written: Promise<unknown>) {
    const ids = byWrite.get(written);
    if (ids) {
      ids.push(id);
      return;
    }
    byWrite.set(written, [id]);
    const forget = () => {
      for (const i of byWrite.get(written)!) {
        if (localCalls.get(i)?.written === written) localCalls.delete(i);
      }
      byWrite.delete(written);
    };
    written.then(forget, forget);
  }

  /** Log lines of calls answered in-process may still be on their way to Redis: wait for those of `tenant`. */
  async function localWritesOf(tenant: string): Promise<void> {
    const pending: Promise<unknown>[] = [];
    for (const e of localCalls.values()) if (e.tenant === tenant && e.written) pending.push(e.written);
    if (pending.length) await Promise.allSettled(pending);
  }

  let sub: Redis | undefined;
  let subReady: Promise<void> | undefined;
  let subscribed = false;
  function subscribe(): Promise<void> {
    if (subReady) return subReady;
    sub = redis.duplicate();
    sub.on('message', (_ch: string, msg: string) => {
      const p = parseReply(msg);
      if (p) settle(p.id, p.rec);
    });
    // After a reconnect ioredis re-subscribes by itself; re-read what finished meanwhile.
    sub.on('ready', () => void sweep(0));
    subReady = sub.subscribe(replyChannel).then(() => {
      subscribed = true;
    });
    return subReady;
  }

  // A scheduler in this process hands results over directly (./local-replies.ts); others publish.
  const unregisterLocal = registerLocalClient(clientId, (id, rec, written) => {
    const w = waiters.get(id);
    if (!w) return;
    // get() answers from memory until Redis has the record (it may go out in the scheduler's next batch)
    localCalls.set(id, { tenant: w.tenant, record: rec, written });
    forgetWhenWritten(id, written);
    settleRecord(id, rec);
  });
  const sweepTimer = setInterval(() => void sweep(1000), 1000);
  sweepTimer.unref();

  /** Fallback read of records whose waiters have waited at least `minAgeMs`. */
  async function sweep(minAgeMs: number) {
    const now = Date.now();
    const due = [...waiters].filter(([, w]) => now - w.since >= minAgeMs);
    if (due.length === 0) return;
    try {
      const m = redis.pipeline();
      for (const [id, w] of due) m.hget(keys.record(w.tenant, id), 'r');
      const res = (await m.exec()) ?? [];
      res.forEach(([err, j], i) => {
        if (err || typeof j !== 'string') return;
        const rec = JSON.parse(j) as StoredRecord;
        if (isFinal(rec.status)) settle(due[i]![0], rec);
      });
    } catch {
      // Redis unreachable: the waiters' own deadlines answer.
    }
  }

  function settle(id: string, rec: StoredRecord) {
    if (waiters.has(id) && isFinal(rec.status)) settleRecord(id, fromStored(rec));
  }

  function settleRecord(id: string, record: InvocationRecord) {
    const w = waiters.get(id);
    if (!w || !isFinal(record.status)) return;
    waiters.delete(id);
    clearTimeout(w.timer);
    if (record.status === 'succeeded' && record.response) w.resolve({ record, response: record.response });
    else w.reject(errorFromJSON({ ...(record.error ?? { type: 'Internal', message: 'invocation failed without an error' }), invocationId: id, start: record.start }));
  }

  function queue(name: string): Queue {
    let q = queues.get(name);
    if (!q) {
      q = new Queue(name, { connection: bullConnection(redis), prefix: keys.bullPrefix });
      queues.set(name, q);
    }
    return q;
  }

  function validate(req: InvokeRequest, mode: 'sync' | 'async') {
    const fn = req?.fn;
    if (!fn || typeof fn.tenant !== 'string' || !fn.tenant || typeof fn.name !== 'string' || !fn.name) throw new InvalidRequest('fn with tenant and name is required', { field: 'fn' });
    if (!Number.isInteger(fn.version) || fn.version < 1) throw new InvalidRequest('fn.version must be a positive integer', { field: 'fn.version' });
    if (!Number.isFinite(fn.memoryMb) || fn.memoryMb <= 0) throw new InvalidRequest('fn.memoryMb must be positive', { field: 'fn.memoryMb' });
    if (!Number.isFinite(fn.timeoutMs) || fn.timeoutMs <= 0) throw new InvalidRequest('fn.timeoutMs must be positive', { field: 'fn.timeoutMs' });
    const p = req.payload;
    if (!p || (p.kind !== 'event' && p.kind !== 'http') || !Buffer.isBuffer(p.body)) throw new InvalidRequest('payload must be {kind: event|http, body: Buffer}', { field: 'payload' });
    if (mode === 'sync' && req.mode === 'async') throw new InvalidRequest('invoke() is for sync/http; use enqueue() for async', { field: 'mode' });
    if (mode === 'async' && req.mode !== 'async') throw new InvalidRequest('enqueue() is for async invocations', { field: 'mode' });
    if (req.idempotencyKey !== undefined && (typeof req.idempotencyKey !== 'string' || req.idempotencyKey.length === 0 || req.idempotencyKey.length > 255)) {
      throw new InvalidRequest('idempotencyKey must be 1..255 characters', { field: 'idempotencyKey' });
    }
    if (req.callbackUrl !== undefined) {
      if (mode !== 'async') throw new InvalidRequest('X-Callback-Url applies to async invocations only', { field: 'X-Callback-Url' });
      validateCallbackUrl(req.callbackUrl, envCallbackAllow());
    }
    if (closed) throw new Unavailable('invocation client is closed');
  }

  /**
   * The per-tenant queue bound, off the hot path: the count is refreshed in the background at most every
   * QUEUE_DEPTH_CACHE_MS and the call is judged on the last one (waiting for a fresh count would add a
   * Redis round trip to every call that comes after a quiet spell — every cold start, typically).
   */
  function checkDepth(tenant: string): void {
    const c = depthCache.get(tenant);
    const now = Date.now();
    if (!c || now - c.at >= QUEUE_DEPTH_CACHE_MS) {
      const entry = { at: now, n: c?.n ?? 0 };
      depthCache.set(tenant, entry);
      // After this call: the count must not get ahead of the push, nor delay it — nor run inside the handling
      // of the same call by a scheduler in this process (a cold start's first frames, seen in an ftrace
      // timeline: a 5-command pipeline built, sent and read between attach and spawn). 10 ms later the call
      // (a cold start ~5 ms) is answered; the count is a safety net refreshed at most every QUEUE_DEPTH_CACHE_MS.
      setTimeout(() => void depthOf(tenant).then((n) => (entry.n = n), () => {}), 10).unref();
    }
    const n = depthCache.get(tenant)!.n;
    if (n >= maxQueued) throw new TooManyRequests('too many queued invocations for this tenant', { queued: n, limit: maxQueued });
  }

  /**
   * Waiting invocations of a tenant: its fast-lane list + its BullMQ queue's wait, paused, prioritized and
   * delayed sets, read directly in one pipeline (BullMQ's getJobCounts is a script plus a chain of promises,
   * measured ~0.3 ms of event-loop time in front of a cold start's push on this loaded machine).
   */
  async function depthOf(tenant: string): Promise<number> {
    const q = `${keys.bullPrefix}:${keys.tenantQueue(tenant)}`;
    const res = (await redis.pipeline().llen(keys.fastTenant(tenant)).llen(`${q}:wait`).llen(`${q}:paused`).zcard(`${q}:prioritized`).zcard(`${q}:delayed`).exec()) ?? [];
    let n = 0;
    for (const [err, v] of res) {
      if (err) throw err;
      n += Number(v);
    }
    return n;
  }

  /** Writes the queued record (+ stashed payload, + tenant announcement) and builds the job. */
  async function prepare(req: InvokeRequest, id: string, ttlS: number): Promise<{ data: JobData; route: string | null }> {
    const fn = req.fn;
    const now = Date.now();
    const { wire, stash } = encodePayload(req.payload, keys.payload(id));
    const data: JobData = {
      id, mode: req.mode, fn, payload: wire, createdAt: now,
      deadline: req.mode === 'async' ? 0 : now + maxQueueWaitMs + fn.timeoutMs,
      traceparent: req.traceparent, idempotencyKey: req.idempotencyKey,
      replyTo: req.mode === 'async' ? undefined : clientId,
    };
    if (req.callbackUrl) data.callbackUrl = req.callbackUrl;
    const rec: StoredRecord = { id, tenant: fn.tenant, function: fn.name, version: fn.version, mode: req.mode, status: 'queued', attempts: 0, createdAt: now };
    const m = redis.multi();
    queueRecord(m, keys.record(fn.tenant, id), rec, ttlS, req.mode === 'async' ? req.callbackUrl : undefined);
    if (stash) m.set(keys.payload(id), stash, 'EX', ttlS);
    const first = !announced.has(`bull:${fn.tenant}`);
    if (first) {
      m.sadd(keys.tenantsBull(), fn.tenant);
      m.publish(keys.tenants(), `bull:${fn.tenant}`); // schedulers start a BullMQ worker for it at once (and re-scan every 2 s)
    }
    const [, route] = await Promise.all([
      m.exec(),
      routing && req.mode !== 'async' ? routeTo(redis, keys, fn.tenant, fn.name, fn.version, routedPendingMax, NODE_STALE_MS) : Promise.resolve(null),
    ]);
    if (first) announced.add(`bull:${fn.tenant}`);
    if (route) data.routed = true;
    return { data, route };
  }

  function jobOptions(req: InvokeRequest, id: string): JobsOptions {
    const async = req.mode === 'async';
    return {
      jobId: id,
      attempts: async ? Math.max(1, req.fn.retries ?? DEFAULT_ATTEMPTS) : 1,
      backoff: async ? { type: 'exponential', delay: DEFAULT_BACKOFF_MS } : undefined,
      removeOnComplete: { age: ret.completedJobAgeS, count: ret.completedJobCount },
      removeOnFail: async ? { age: ret.deadLetterS, count: ret.failedJobCount } : { age: ret.completedJobAgeS, count: ret.completedJobCount },
    };
  }

  /** Registers the waiter for `id` (before the job is visible, so no reply can be missed). */
  function wait(req: InvokeRequest, id: string, deadline: number): Promise<SyncResult> {
    return new Promise<SyncResult>((resolve, reject) => {
      const grace = 1000; // the scheduler's own result write after a Timeout needs a moment to arrive
      const timer = setTimeout(async () => {
        if (!waiters.has(id)) return;
        try {
          const rec = await getRecord(redis, keys.record(req.fn.tenant, id));
          if (rec && isFinal(rec.status)) return settle(id, rec);
        } catch {
          /* answered below */
        }
        if (!waiters.delete(id)) return;
        reject(new Timeout('the invocation did not finish before its deadline', { invocationId: id, timeoutMs: req.fn.timeoutMs, queueWaitMs: maxQueueWaitMs }));
      }, deadline - Date.now() + grace);
      waiters.set(id, { tenant: req.fn.tenant, resolve, reject, timer, since: Date.now() });
    });
  }

  function unwait(id: string) {
    const w = waiters.get(id);
    if (w) {
      clearTimeout(w.timer);
      waiters.delete(id);
    }
  }

  /** Sync/http on the fast lane: one script writes the record, routes and pushes (./fast-lane.ts). */
  async function invokeFast(req: InvokeRequest, id: string): Promise<SyncResult> {
    const fn = req.fn;
    const now = Date.now();
    const { wire, stash } = encodePayload(req.payload, keys.payload(id));
    const data: JobData = {
      id, mode: req.mode, fn, payload: wire, createdAt: now, deadline: now + maxQueueWaitMs + fn.timeoutMs,
      traceparent: req.traceparent, replyTo: clientId,
    };
    const rec: StoredRecord = { id, tenant: fn.tenant, function: fn.name, version: fn.version, mode: req.mode, status: 'queued', attempts: 0, createdAt: now };
    const result = wait(req, id, data.deadline);
    // Rejected early (close() while the push is in flight)? Then it is handled here and re-thrown to the caller below.
    result.catch(() => {});
    // The job names its function version by reference (./fn-refs.ts); the record itself goes inline (and into
    // the stash) once per refresh period.
    const fnr = fnRefOf(fn);
    const inline = fnStash.due(fnr, now);
    try {
      if (tracingEnabled()) {
        const attrs = { [Attr.tenant]: fn.tenant, [Attr.function]: fn.name, [Attr.version]: fn.version, [Attr.invocationId]: id, [Attr.mode]: req.mode };
        await withSpan(SpanName.enqueue, attrs, (span) => {
          data.traceparent = injectTraceparent(span) ?? req.traceparent;
          return pushFast(data, JSON.stringify(rec), fnr, inline, now, stash);
        }, { kind: SpanKind.PRODUCER, parent: req.parentSpan ?? remoteParent(req.traceparent) });
      } else await pushFast(data, JSON.stringify(rec), fnr, inline, now, stash);
    } catch (e) {
      if (inline) fnStash.forget(fnr);
      unwait(id);
      throw e;
    }
    return result;
  }

  /** The fast-lane push of one job (+ its stashed body, function version and tenant announcement when due). */
  function pushFast(data: JobData, recJson: string, fnr: string, inline: boolean, now: number, stash: Buffer | undefined): Promise<void> {
    const fn = data.fn;
    const job: FastJob = { ...data, fn: inline ? fn : undefined, fnr };
    // Sent back to back on one connection: ioredis keeps the order, so the body and the stashed function
    // version are there before the job.
    let pre: Promise<unknown>[] | undefined;
    if (stash || inline || !announced.has(fn.tenant)) {
      pre = [];
      if (stash) pre.push(redis.set(keys.payload(data.id), stash, 'EX', ret.recordS));
      if (inline) pre.push(redis.set(keys.fnVersion(fnr), JSON.stringify(fn), 'EX', FN_STASH_TTL_S));
      if (!announced.has(fn.tenant)) pre.push(redis.multi().sadd(keys.tenants(), fn.tenant).publish(keys.tenants(), fn.tenant).exec());
    }
    const pushed = batchPush({ data, recJson, listTtlMs: data.deadline - now + 60_000, jobJson: JSON.stringify(job) });
    const all: Promise<unknown> = pre ? Promise.all([...pre, pushed]) : pushed;
    return all.then(
      () => {
        announced.add(fn.tenant);
      },
      (e) => {
        throw asUnavailable(e);
      },
    );
  }

  /**
   * The pushes issued in one pass of the event loop go out as ONE script call (fastPushMany: one command for
   * ioredis to build and Redis to run, instead of one per call), flushed in a setImmediate — where ioredis'
   * auto-pipeline would have sent them anyway. Commands a push depends on (stashed body, function version,
   * tenant announcement) are issued at once by the caller, so they still reach Redis before the job.
   */
  let pushBatch: { items: FastPushItem[]; settle: Array<{ resolve: (v: unknown) => void; reject: (e: unknown) => void }> } | undefined;
  function batchPush(item: FastPushItem): Promise<unknown> {
    if (!pushBatch) {
      pushBatch = { items: [], settle: [] };
      setImmediate(flushPushes);
    }
    const b = pushBatch;
    b.items.push(item);
    return new Promise((resolve, reject) => b.settle.push({ resolve, reject }));
  }
  function flushPushes() {
    const b = pushBatch;
    pushBatch = undefined;
    if (!b) return;
    let sent: Promise<string[]>;
    try {
      sent = fastPushMany(redis, keys, b.items, { recordTtlS: ret.recordS, routing, maxPending: routedPendingMax, staleMs: NODE_STALE_MS });
    } catch (e) {
      sent = Promise.reject(e);
    }
    sent.then(
      (routed) => b.settle.forEach((s, i) => s.resolve(routed?.[i])),
      (e) => b.settle.forEach((s) => s.reject(e)),
    );
  }

  /** A sync/http call run by the scheduler of this process (./local-dispatch.ts), or undefined: take the queue. */
  function invokeLocal(req: InvokeRequest): Promise<SyncResult> | undefined {
    const d = localDispatcher(localQueues);
    if (!d) return undefined;
    const fn = req.fn;
    const id = newInvocationId();
    const now = Date.now();
    const run = d.tryDispatch({ id, mode: req.mode === 'http' ? 'http' : 'sync', fn, payload: req.payload, createdAt: now, deadline: now + maxQueueWaitMs + fn.timeoutMs, traceparent: req.traceparent, parentSpan: req.parentSpan });
    if (!run) return undefined;
    const entry: { tenant: string; record: InvocationRecord; written?: Promise<unknown> } = {
      tenant: fn.tenant,
      record: { id, tenant: fn.tenant, function: fn.name, version: fn.version, mode: req.mode, status: 'running', attempts: 1, createdAt: now, startedAt: now },
    };
    localCalls.set(id, entry);
    return run.then((out) => {
      entry.record = out.record;
      entry.written = out.written;
      forgetWhenWritten(id, out.written);
      if (out.error) throw errorFromJSON({ ...out.error, invocationId: id, start: out.record.start });
      return { record: out.record, response: out.record.response! };
    });
  }

  /** The 'enqueue' span (a child of the caller's traceparent); the job carries the span's own traceparent. */
  function addJob(req: InvokeRequest, queueName: string, data: JobData, id: string): Promise<unknown> {
    const attrs = { [Attr.tenant]: req.fn.tenant, [Attr.function]: req.fn.name, [Attr.version]: req.fn.version, [Attr.invocationId]: id, [Attr.mode]: req.mode };
    return withSpan(SpanName.enqueue, attrs, async (span) => {
      data.traceparent = injectTraceparent(span) ?? req.traceparent;
      return redisCall(() => queue(queueName).add(req.mode, data, jobOptions(req, id)));
    }, { kind: SpanKind.PRODUCER, parent: req.parentSpan ?? remoteParent(req.traceparent) });
  }

  async function redisCall<T>(f: () => Promise<T>): Promise<T> {
    try {
      return await f();
    } catch (e) {
      throw asUnavailable(e);
    }
  }

  const client: InvocationClient & { readonly clientId: string } = {
    clientId,

    async invoke(req) {
      validate(req, 'sync');
      if (localDispatch) {
        const local = invokeLocal(req);
        if (local) return local;
      }
      if (!subscribed) await redisCall(subscribe);
      checkDepth(req.fn.tenant);
      const id = newInvocationId();
      if (syncLane === 'fast') return invokeFast(req, id);
      const { data, route } = await redisCall(() => prepare(req, id, ret.recordS));
      const result = wait(req, id, data.deadline);
      // Rejected early (close() while the push is in flight)? Then it is handled here and re-thrown to the caller below.
      result.catch(() => {});
      try {
        await addJob(req, route ? keys.nodeQueue(route) : keys.tenantQueue(req.fn.tenant), data, id);
      } catch (e) {
        unwait(id);
        await redis.del(keys.record(req.fn.tenant, id), keys.payload(id)).catch(() => {});
        throw e;
      }
      return result;
    },

    async enqueue(req) {
      validate(req, 'async');
      const tenant = req.fn.tenant;
      checkDepth(tenant);
      const id = newInvocationId();
      if (req.idempotencyKey) {
        const ik = keys.idempotency(tenant, req.idempotencyKey);
        const set = await redisCall(() => redis.set(ik, id, 'EX', ret.idempotencyS, 'NX'));
        if (set !== 'OK') {
          const first = await redis.get(ik);
          if (first) return { invocationId: first, duplicate: true };
          throw new Conflict('idempotency key is being used concurrently; retry', { field: 'idempotencyKey' });
        }
      }
      try {
        const { data } = await redisCall(() => prepare(req, id, ret.deadLetterS));
        await addJob(req, keys.tenantQueue(tenant), data, id);
      } catch (e) {
        // Not durable: undo the key so a retry by the caller is not swallowed as a duplicate.
        const m = redis.multi().del(keys.record(tenant, id), keys.payload(id));
        if (req.idempotencyKey) m.del(keys.idempotency(tenant, req.idempotencyKey));
        await m.exec().catch(() => {});
        throw e;
      }
      return { invocationId: id, duplicate: false };
    },

    async get(tenant, invocationId) {
      const local = localCalls.get(invocationId);
      if (local && local.tenant === tenant) return local.record;
      const rec = await redisCall(() => getRecord(redis, keys.record(tenant, invocationId)));
      return rec ? fromStored(rec) : null;
    },

    async listDeadLetters(tenant) {
      const jobs = await redisCall(() => queue(keys.tenantQueue(tenant)).getFailed(0, ret.failedJobCount - 1));
      const ids = jobs.filter((j) => j && (j.data as JobData)?.mode === 'async').map((j) => j.id!);
      if (ids.length === 0) return [];
      const m = redis.pipeline();
      for (const id of ids) m.hget(keys.record(tenant, id), 'r');
      const res = (await redisCall(() => m.exec())) ?? [];
      const out: InvocationRecord[] = [];
      res.forEach(([err, j], i) => {
        if (!err && typeof j === 'string') out.push(fromStored(JSON.parse(j) as StoredRecord));
        else {
          const d = jobs.find((x) => x.id === ids[i])!;
          const data = d.data as JobData;
          out.push({
            id: ids[i]!, tenant, function: data.fn.name, version: data.fn.version, mode: 'async', status: 'failed',
            attempts: d.attemptsMade, createdAt: data.createdAt, finishedAt: d.finishedOn,
            error: { type: 'Internal', message: d.failedReason ?? 'failed' },
          });
        }
      });
      return out.sort((a, b) => (b.finishedAt ?? 0) - (a.finishedAt ?? 0));
    },

    async redrive(tenant, invocationId) {
      const q = queue(keys.tenantQueue(tenant));
      const job = await redisCall(() => q.getJob(invocationId));
      if (!job || (job.data as JobData)?.mode !== 'async' || (job.data as JobData).fn?.tenant !== tenant) {
        throw new NotFound('no such dead letter', { invocationId });
      }
      const state = await q.getJobState(invocationId);
      if (state !== 'failed') throw new Conflict(`invocation is ${state}, not in the dead-letter list`, { invocationId, state });
      const data = job.data as JobData;
      const old = await getRecord(redis, keys.record(tenant, invocationId));
      const rec: StoredRecord = {
        id: invocationId, tenant, function: data.fn.name, version: data.fn.version, mode: 'async', status: 'queued',
        attempts: old?.attempts ?? job.attemptsMade, createdAt: data.createdAt,
      };
      await redisCall(() => setRecord(redis, keys.record(tenant, invocationId), rec, ret.deadLetterS, { force: true }));
      // a dead letter that stalled out (worker-lost) keeps BullMQ's stall count `stc` across a retry: the first node
      // to die running the redriven one would fail it again at once. Fresh attempts start at 0 stalls (it is failed:
      // no worker holds it). BullMQ drops the deferred failure (`defa`) itself when it fails a job.
      await redisCall(() => redis.hdel(q.toKey(invocationId), 'stc'));
      await redisCall(() => job.retry('failed', { resetAttemptsMade: true, resetAttemptsStarted: true }));
      return { invocationId };
    },

    async logs(tenant, q: LogQuery): Promise<LogLine[]> {
      await localWritesOf(tenant);
      return redisCall(() => readLogs(redis, keys, tenant, q));
    },

    followLogs(tenant, q, signal) {
      return follow(redis, keys, tenant, q, signal);
    },

    depth(tenant) {
      return redisCall(() => depthOf(tenant));
    },

    async purgeTenant(tenant) {
      if (typeof tenant !== 'string' || !tenant) throw new InvalidRequest('tenant is required', { field: 'tenant' });
      await localWritesOf(tenant); // records of calls answered in-process may still be on their way
      await redisCall(async () => {
        await redis.multi().srem(keys.tenants(), tenant).srem(keys.tenantsBull(), tenant).del(keys.fastTenant(tenant)).exec();
        announced.delete(tenant);
        announced.delete(`bull:${tenant}`);
        await queue(keys.tenantQueue(tenant)).obliterate({ force: true });
        // its completion callbacks not sent yet — after the obliterate: no job of its queue is left to queue another
        // (one running at this moment still may; its callback then goes out)
        await dropTenantCallbacks(queue(CALLBACK_QUEUE), tenant, keys);
        // SCAN patterns: each tenant-scoped key prefix with glob characters escaped, then '*'
        const glob = (prefix: string) => `${prefix.replace(/[*?[\]\\]/g, (c) => `\\${c}`)}*`;
        const recordPrefix = keys.record(tenant, 'x').slice(0, -1);
        const prefixes = [
          recordPrefix, keys.idempotency(tenant, 'x').slice(0, -1), keys.logs(tenant, 'x').slice(0, -1), keys.warm(tenant, 'x', 0).slice(0, -3),
          keys.fnVersion(`${encodeURIComponent(tenant)}:`),
        ];
        const payloadKeys: string[] = [];
        for (const prefix of prefixes) {
          let cursor = '0';
          do {
            const [next, found] = await redis.scan(cursor, 'MATCH', glob(prefix), 'COUNT', 1000);
            cursor = next;
            if (prefix === recordPrefix) for (const k of found) payloadKeys.push(keys.payload(decodeURIComponent(k.slice(recordPrefix.length))));
            if (found.length) await redis.del(...found);
          } while (cursor !== '0');
        }
        for (let i = 0; i < payloadKeys.length; i += 1000) await redis.del(...payloadKeys.slice(i, i + 1000));
        await redis.del(keys.logFunctions(tenant));
      });
      queues.get(keys.tenantQueue(tenant))?.close().catch(() => {});
      queues.delete(keys.tenantQueue(tenant));
    },

    async ready() {
      try {
        const now = Date.now();
        const [pong, n] = await Promise.all([redis.ping(), redis.zcount(keys.nodes(), now - NODE_STALE_MS, '+inf')]);
        return pong === 'PONG' && n > 0;
      } catch {
        return false;
      }
    },

    async close() {
      if (closed) return;
      closed = true;
      clearInterval(sweepTimer);
      unregisterLocal();
      for (const [id, w] of waiters) {
        clearTimeout(w.timer);
        w.reject(new Unavailable('invocation client closed while waiting', { invocationId: id }));
      }
      waiters.clear();
      await Promise.all([...queues.values()].map((q) => q.close().catch(() => {})));
      if (sub) sub.disconnect();
      // quit() on a connection still connecting leaves a rejected promise behind in ioredis: disconnect instead.
      if (ownsRedis) {
        if (redis.status === 'ready') await redis.quit().catch(() => redis.disconnect());
        else redis.disconnect();
      }
    },
  };
  return client;
}
