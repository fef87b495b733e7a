/**
 * @module scheduler/callbacks
 * Completion callbacks of async invocations: an invocation enqueued with `X-Callback-Url` gets one signed
 * POST to that URL when it reaches its FINAL outcome — `succeeded`, or `failed` after its last attempt (or a
 * failure no retry can fix) as it lands in the dead-letter list. Attempts that fail and will be retried call
 * back nothing. A redriven dead letter is a new run: when it ends, its new outcome is called back again (a
 * second callback, told apart by its `finishedAt` and `X-Fnhost-Delivery-Id`).
 *
 * The POST: body = the invocation record exactly as `GET /v1/invocations/:id` renders it
 * (./invocation-view.ts), `Content-Type: application/json`, and headers `X-Fnhost-Invocation-Id`,
 * `X-Fnhost-Status` (succeeded | failed), `X-Fnhost-Function`, `X-Fnhost-Delivery-Id`, `X-Fnhost-Delivery-Attempt`
 * and `X-Fnhost-Signature: sha256=<hex HMAC-SHA256 of the body>` under the tenant's key (./callback-signer.ts).
 *
 * Delivery is durable and never in an invocation's way. The callback is put into an outbox
 * (`P:callback:outbox`, a HASH delivery id → entry) by the same Lua script that writes the final record
 * (./records.ts), so no failure after that write can lose it; the scheduler then moves it to a BullMQ queue of
 * its own (`P:bull:callbacks`, shared by every node on the Redis) and deletes the entry. An entry the move did
 * not get to (Redis error right then, node died) is moved by the outbox sweep every scheduler runs at start-up
 * and every `sweepMs`. Moving is idempotent: the job id is the delivery id, and adding an existing job is a no-op.
 * Each scheduler runs a worker on the queue. A 2xx answer is delivered; anything else (status, refused
 * connection, DNS failure, timeout) is retried with exponential backoff until the attempts run out, then the job
 * stays in the queue's failed set (retained like dead letters) and in the tenant's list of failed callbacks
 * (./callback-failures.ts: list, redrive, delete). Redirects are not followed (a 3xx is a failure): a receiver
 * cannot bounce the host to a destination the allow-list (./callback-url.ts) would refuse. Each POST is a
 * 'callback delivery' span in the invocation's trace.
 *
 * @example
 * const cb = new Callbacks({ redis: bullRedis, prefix: 'fnhost', options: callbackOptions(process.env), metrics, log });
 * cb.start();                                       // the delivery worker + outbox sweep (every scheduler node runs one)
 * const o = cb.outboxEntry('https://hooks.example.com/x', finalRecord, traceparent);
 * if (await setRecord(redis, recKey, toStored(finalRecord), ttl, { outbox: o })) await cb.dispatch(o);
 * await cb.close();
 */
import http from 'node:http';
import https from 'node:https';
import { lookup as dnsLookup } from 'node:dns';
import { isIP, type LookupFunction } from 'node:net';
import { Queue, UnrecoverableError, Worker, type ConnectionOptions, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import { InvalidRequest } from '../common/errors.ts';
import { Attr, SpanKind, SpanName, remoteParent, withSpan, type Span } from '../common/telemetry.ts';
import type { Logger } from '../common/log.ts';
import type { FnhostMetrics, SchedulerSnapshot } from '../common/metrics.ts';
import { renderInvocation } from './invocation-view.ts';
import { allowedAddress, allowedName, bareHost, envCallbackAllow, parseCallbackAllow, type CallbackAllow } from './callback-url.ts';
import { CallbackSigner } from './callback-signer.ts';
import { DEFAULT_RETENTION } from './config.ts';
import { createKeys, type Keys } from './keys.ts';
import type { InvocationRecord } from './types.ts';
import type { OutboxWrite } from './records.ts';

/** The BullMQ queue name (under the scheduler's BullMQ prefix; tenant queues are `inv.*`, node queues `node.*`). */
export const CALLBACK_QUEUE = 'callbacks';

/**
 * A callback's delivery id, also its job id: `<invocation id>.<finishedAt>`. The same outcome gets the same id
 * however often it is queued, and a redrive's new outcome a new one.
 */
export function deliveryId(rec: Pick<InvocationRecord, 'id' | 'finishedAt'>): string {
  return `${rec.id}.${rec.finishedAt ?? 0}`;
}

/** Entries moved per HSCAN step of the outbox sweep (each may hold a body of up to CALLBACK_BODY_MAX). */
const SWEEP_PAGE = 50;

/**
 * The periodic sweep leaves entries younger than this to their writer, which moves them right after writing
 * the record (one Redis round trip, well under 1 ms here): so what a sweep moves is what a writer failed to
 * move, and `fnhost_callback_outbox_swept_total` counts exactly that. Ages come from the delivery id's
 * finishedAt (the writer's clock): a sweeping node whose clock is behind by more than this waits that much longer.
 */
export const SWEEP_GRACE_MS = 1000;

/** A scrape reads the outbox length and the failed lists at most this long: Redis away must not hold /metrics. */
const GAUGE_READ_MS = 1000;

/**
 * A rendered record above 1 MiB goes without its `result` (`resultTruncated: true`; the receiver reads it with
 * GET /v1/invocations/:id): the body travels in the job hash through BullMQ's Lua scripts, and 1 MiB is
 * already four times the largest async request body (256 KiB, services/gateway/context.ts).
 */
export const CALLBACK_BODY_MAX = 1024 * 1024;

export interface CallbackOptions {
  /** one POST, connect to last header byte (FNHOST_CALLBACK_TIMEOUT_MS; default 10 s, GitHub's webhook timeout). */
  timeoutMs: number;
  /**
   * POSTs per callback, the first included (FNHOST_CALLBACK_ATTEMPTS; default 10: with 1 s exponential backoff the
   * last one goes ~8.5 min after the first — a receiver's restart or a short outage is ridden out).
   */
  attempts: number;
  /** first retry delay, doubled each time (FNHOST_CALLBACK_BACKOFF_MS; default 1 s, as invocation retries). */
  backoffMs: number;
  /** POSTs in flight per node (FNHOST_CALLBACK_CONCURRENCY; default 16: a slow receiver holds a slot, not a core). */
  concurrency: number;
  /**
   * How often each scheduler moves outbox entries whose own move failed (FNHOST_CALLBACK_SWEEP_MS; default 5 s:
   * a callback whose queueing hit a Redis error goes out at most this much later; one HLEN per node per period).
   */
  sweepMs: number;
  /** FNHOST_CALLBACK_SECRET: the host secret the tenants' keys derive from (unset: generated in Redis). */
  secret?: string;
  /** FNHOST_CALLBACK_ALLOW (unset: any destination). */
  allow?: CallbackAllow;
  /**
   * BullMQ's lock of a delivery in flight (no variable; default max(30 s, 2 × timeoutMs) so a slow receiver never
   * makes the job look stalled): a delivering node that died is noticed about this long after.
   */
  lockDurationMs?: number;
  /** how often this node's worker looks for stalled deliveries (default 30 s, BullMQ's). */
  stalledIntervalMs?: number;
  /** times a delivery may stall (its node died mid-POST) before BullMQ fails the callback (default 1, BullMQ's). */
  maxStalledCount?: number;
}

function intEnv(env: NodeJS.ProcessEnv, name: string, def: number, min: number, max: number): number {
  const v = env[name];
  if (v === undefined || v === '') return def;
  const n = Number(v);
  if (!/^[0-9]+$/.test(v) || n < min || n > max) throw new InvalidRequest(`${name} must be an integer from ${min} to ${max}`, { field: name });
  return n;
}

/**
 * Options from the environment (see CallbackOptions for each variable); bad values are InvalidRequest.
 * @example
 * callbackOptions({ FNHOST_CALLBACK_TIMEOUT_MS: '5000' }).timeoutMs;   // 5000
 */
export function callbackOptions(env: NodeJS.ProcessEnv = process.env): CallbackOptions {
  const o: CallbackOptions = {
    timeoutMs: intEnv(env, 'FNHOST_CALLBACK_TIMEOUT_MS', 10_000, 100, 300_000),
    attempts: intEnv(env, 'FNHOST_CALLBACK_ATTEMPTS', 10, 1, 100),
    backoffMs: intEnv(env, 'FNHOST_CALLBACK_BACKOFF_MS', 1000, 1, 3_600_000),
    concurrency: intEnv(env, 'FNHOST_CALLBACK_CONCURRENCY', 16, 1, 1000),
    sweepMs: intEnv(env, 'FNHOST_CALLBACK_SWEEP_MS', 5000, 50, 3_600_000),
  };
  if (env.FNHOST_CALLBACK_SECRET) o.secret = env.FNHOST_CALLBACK_SECRET;
  const allow = env === process.env ? envCallbackAllow(env) : parseCallbackAllow(env.FNHOST_CALLBACK_ALLOW);
  if (allow) o.allow = allow;
  return o;
}

/** One callback as it waits in the queue. */
export interface CallbackJob {
  url: string;
  tenant: string;
  function: string;
  invocationId: string;
  status: string;
  /** the JSON body, rendered once at enqueue: a redrive rewriting the record later does not change it */
  body: string;
  /** the invocation's trace (its job's traceparent): 'callback delivery' spans hang under it */
  traceparent?: string;
}

/** A callback whose attempts ran out (or whose destination was refused), as the tenant's list shows it. */
export interface FailedCallback {
  /** the delivery id (X-Fnhost-Delivery-Id; the callback job's id) */
  deliveryId: string;
  invocationId: string;
  function: string;
  url: string;
  /** the invocation's outcome the callback carried: succeeded | failed */
  status: string;
  /** POSTs made */
  attempts: number;
  lastError: string;
  /** the receiver's last answer, when it answered at all */
  lastHttpStatus?: number;
  /** epoch ms */
  failedAt: number;
}

/**
 * The most failed callbacks listed per tenant (the oldest go first): BullMQ keeps at most this many failed
 * jobs in the whole queue anyway (removeOnFail count, DEFAULT_RETENTION.failedJobCount).
 */
export const FAILED_CALLBACKS_MAX = DEFAULT_RETENTION.failedJobCount;

/** KEYS: index, info; ARGV: id, failedAt, JSON, TTL s, cap. Adds one entry, drops the oldest above the cap. */
const NOTE_FAILED_LUA = `
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[5])
if over > 0 then
  local old = redis.call('ZPOPMIN', KEYS[1], over)
  for i = 1, #old, 2 do redis.call('HDEL', KEYS[2], old[i]) end
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
`;

/**
 * Lists a callback that failed for good in its tenant's failed callbacks (./callback-failures.ts reads them):
 * `keys.failedCallbacks(T)`, an index over the callbacks queue's failed set (shared by all tenants), TTL =
 * dead-letter retention, refreshed on write.
 */
export async function noteFailedCallback(redis: Redis, keys: Keys, tenant: string, f: FailedCallback): Promise<void> {
  const k = keys.failedCallbacks(tenant);
  // EVAL, not a defined command: this runs once per failed callback, and the connection is BullMQ's
  await redis.eval(NOTE_FAILED_LUA, 2, k.index, k.info, f.deliveryId, f.failedAt, JSON.stringify(f), DEFAULT_RETENTION.deadLetterS, FAILED_CALLBACKS_MAX);
}

/** The body: the record as GET /v1/invocations/:id renders it, without an oversized result. */
export function callbackBody(rec: InvocationRecord): string {
  const out = renderInvocation(rec);
  let body = JSON.stringify(out);
  if (Buffer.byteLength(body) > CALLBACK_BODY_MAX) {
    delete out.result;
    delete out.resultEncoding;
    out.resultTruncated = true;
    body = JSON.stringify(out);
  }
  return body;
}

/** A destination the allow-list refuses: no retry can change that. */
class RefusedDestination extends Error {
  override name = 'RefusedDestination';
}

/** dns.lookup that refuses any address outside the allow-list's blocks (checked on what is connected to). */
function guardedLookup(allow: CallbackAllow): LookupFunction {
  return ((hostname: string, options: object, cb: (err: Error | null, address: unknown, family?: number) => void) => {
    dnsLookup(hostname, options as never, (err: NodeJS.ErrnoException | null, address: unknown, family?: number) => {
      if (err) return cb(err, address, family);
      const list = Array.isArray(address) ? (address as { address: string }[]) : [{ address: address as string }];
      const bad = list.find((a) => !allowedAddress(allow, a.address));
      if (bad) return cb(new RefusedDestination(`${hostname} resolves to ${bad.address}, outside FNHOST_CALLBACK_ALLOW`), address, family);
      cb(null, address, family);
    });
  }) as LookupFunction;
}

/** The origin of a URL (what logs show: a query string may carry the receiver's token). */
function origin(url: string): string {
  try {
    return new URL(url).origin;
  } catch {
    return '?';
  }
}

/** The receiver's host name (span attribute), '?' for a URL that does not parse. */
function hostOf(url: string): string {
  try {
    return bareHost(new URL(url).hostname);
  } catch {
    return '?';
  }
}

/** One POST; resolves with the status code (the body is drained and ignored). */
export function postCallback(url: string, body: string, headers: Record<string, string>, o: Pick<CallbackOptions, 'timeoutMs' | 'allow'>): Promise<number> {
  const u = new URL(url);
  const host = bareHost(u.hostname);
  let lookup: LookupFunction | undefined;
  if (o.allow) {
    if (isIP(host)) {
      if (!allowedAddress(o.allow, host)) return Promise.reject(new RefusedDestination(`${host} is outside FNHOST_CALLBACK_ALLOW`));
    } else if (!allowedName(o.allow, host)) {
      if (!o.allow.hasBlocks) return Promise.reject(new RefusedDestination(`${host} is not in FNHOST_CALLBACK_ALLOW`));
      lookup = guardedLookup(o.allow);
    }
  }
  return new Promise((resolve, reject) => {
    const req = (u.protocol === 'https:' ? https : http).request(
      u,
      {
        method: 'POST',
        // no pooled connection outlives the POST: callbacks are rare next to invocations, and a closed host holds no sockets
        agent: false,
        headers: { ...headers, 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)), 'user-agent': 'fnhost-callback/1' },
        signal: AbortSignal.timeout(o.timeoutMs),
        ...(lookup ? { lookup } : {}),
      },
      (res) => {
        res.resume();
        res.on('error', () => {});
        resolve(res.statusCode ?? 0);
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

/**
 * The connection as BullMQ takes it: the cast client.ts's `bullConnection` makes (BullMQ bundles its own ioredis
 * types). Not imported from there: client.ts imports this module (purgeTenant → dropTenantCallbacks).
 */
function connection(redis: Redis): ConnectionOptions {
  return redis as unknown as ConnectionOptions;
}

/** Jobs read at once while dropping a tenant's callbacks (each holds a rendered record of up to CALLBACK_BODY_MAX). */
const DROP_PAGE = 50;

/**
 * The scheduler's keys of a callbacks queue: its BullMQ prefix is `<prefix>:bull` (Callbacks), the outbox and the
 * failed lists live under `<prefix>`.
 */
function keysOfQueue(queue: Queue): Keys {
  return createKeys((queue.opts.prefix ?? 'bull').replace(/:bull$/, ''));
}

/**
 * Removes a tenant's callbacks not yet being delivered (waiting, delayed — between retries —, prioritized,
 * paused) from the callbacks queue `queue`, and those still in the outbox, so a deleted tenant's receivers get
 * nothing more; and its failed callbacks (jobs and list). A POST in flight (active) ends on its own; its retry,
 * if any, is not dropped. Returns how many were removed (failed ones not counted).
 * @example
 * await dropTenantCallbacks(new Queue(CALLBACK_QUEUE, { connection, prefix: `${prefix}:bull` }), 'acme');   // 3
 */
export async function dropTenantCallbacks(queue: Queue, tenant: string, keys: Keys = keysOfQueue(queue)): Promise<number> {
  // ids first (short strings), then the jobs page by page: the queue is shared by every tenant
  const ids = await queue.getRanges(['waiting', 'delayed', 'prioritized', 'paused'], 0, -1);
  let removed = 0;
  for (let i = 0; i < ids.length; i += DROP_PAGE) {
    const jobs = await Promise.all(ids.slice(i, i + DROP_PAGE).map((id) => queue.getJob(id)));
    for (const job of jobs) {
      if (!job?.id || (job.data as CallbackJob | undefined)?.tenant !== tenant) continue;
      // 0: taken by a delivery worker meanwhile (locked) or already gone
      removed += await queue.remove(job.id).catch(() => 0);
    }
  }
  const redis = (await queue.client) as unknown as Redis;
  const outbox = keys.callbackOutbox();
  let cursor = '0';
  do {
    const [next, flat] = await redis.hscan(outbox, cursor, 'COUNT', DROP_PAGE);
    cursor = next;
    for (let i = 0; i < flat.length; i += 2) {
      let t: string | undefined;
      try {
        t = (JSON.parse(flat[i + 1]!) as CallbackJob).tenant;
      } catch {
        continue;
      }
      if (t === tenant) removed += await redis.hdel(outbox, flat[i]!);
    }
  } while (cursor !== '0');
  const failed = keys.failedCallbacks(tenant);
  for (const id of await redis.zrange(failed.index, 0, -1)) await queue.remove(id).catch(() => 0);
  await redis.del(failed.index, failed.info);
  return removed;
}

export interface CallbacksDeps {
  /** a connection BullMQ accepts for workers (maxRetriesPerRequest: null); the scheduler's `bullRedis` */
  redis: Redis;
  /** the scheduler's key prefix (the queue lives under `<prefix>:bull`; every other key is named by ./keys.ts) */
  prefix: string;
  options: CallbackOptions;
  metrics?: FnhostMetrics;
  log: Logger;
}

export class Callbacks {
  readonly signer: CallbackSigner;
  private readonly queue: Queue<CallbackJob>;
  private worker: Worker<CallbackJob> | undefined;
  private readonly o: CallbackOptions;
  private sweepTimer: NodeJS.Timeout | undefined;
  private sweeping: Promise<void> | undefined;
  private readonly keys: Keys;
  private offGauges: (() => void) | undefined;

  constructor(private readonly deps: CallbacksDeps) {
    this.o = deps.options;
    this.keys = createKeys(deps.prefix);
    this.signer = new CallbackSigner(deps.redis, deps.prefix, deps.options.secret);
    this.queue = new Queue<CallbackJob>(CALLBACK_QUEUE, { connection: connection(deps.redis), prefix: this.keys.bullPrefix });
    this.queue.on('error', (e) => deps.log.warn({ err: String(e?.message ?? e) }, 'callback queue error'));
  }

  /**
   * The outbox entry of a final record's callback, to write with the record (./records.ts `setRecord`'s
   * `outbox`), then {@link dispatch}. `traceparent`: the invocation's, for the 'callback delivery' span.
   */
  outboxEntry(url: string, rec: InvocationRecord, traceparent?: string): OutboxWrite {
    const data: CallbackJob = { url, tenant: rec.tenant, function: rec.function, invocationId: rec.id, status: rec.status, body: callbackBody(rec) };
    if (traceparent) data.traceparent = traceparent;
    return { key: this.keys.callbackOutbox(), field: deliveryId(rec), entry: JSON.stringify(data) };
  }

  /**
   * Moves one outbox entry to the queue, then deletes it. Idempotent: the job id is the delivery id (adding
   * an existing job is a no-op), so a sweep on another node moving the same entry meanwhile does no harm.
   */
  async dispatch(o: OutboxWrite): Promise<void> {
    await this.add(o.field, JSON.parse(o.entry) as CallbackJob);
    await this.deps.redis.hdel(o.key, o.field);
  }

  /**
   * Moves delivery `id` from the outbox if it is still there (a restarted attempt, or a lost worker, finding
   * the final record written: its writer may have died before moving the callback). No entry: already queued.
   */
  async flush(id: string): Promise<void> {
    const key = this.keys.callbackOutbox();
    const entry = await this.deps.redis.hget(key, id);
    if (entry !== null) await this.dispatch({ key, field: id, entry });
  }

  /**
   * Moves every outbox entry to the queue (start-up: all of them; then every sweepMs: those older than
   * `graceMs`, SWEEP_GRACE_MS); returns how many it moved, also counted in `fnhost_callback_outbox_swept_total`.
   * An entry that fails to move stays for the next sweep.
   */
  async sweep(opts: { graceMs?: number } = {}): Promise<number> {
    const key = this.keys.callbackOutbox();
    const redis = this.deps.redis;
    if ((await redis.hlen(key)) === 0) return 0;
    const youngFrom = Date.now() - (opts.graceMs ?? 0);
    let moved = 0;
    let cursor = '0';
    do {
      const [next, flat] = await redis.hscan(key, cursor, 'COUNT', SWEEP_PAGE);
      cursor = next;
      for (let i = 0; i < flat.length; i += 2) {
        // the delivery id ends in the record's finishedAt (deliveryId())
        if (opts.graceMs && Number(flat[i]!.slice(flat[i]!.lastIndexOf('.') + 1)) > youngFrom) continue;
        try {
          await this.dispatch({ key, field: flat[i]!, entry: flat[i + 1]! });
          moved++;
        } catch (e) {
          this.deps.log.warn({ deliveryId: flat[i], err: String((e as Error)?.message ?? e) }, 'callback outbox: move failed; next sweep retries');
        }
      }
    } while (cursor !== '0');
    if (moved) {
      this.deps.metrics?.callbackOutboxSwept(moved);
      this.deps.log.info({ moved }, 'callback outbox: moved entries left behind to the queue');
    }
    return moved;
  }

  /**
   * Queues the callback of a final record directly, without the outbox (tools and tests; the scheduler writes
   * an outbox entry with the record and dispatches it). Same job id rules as dispatch().
   */
  async enqueue(url: string, rec: InvocationRecord): Promise<void> {
    const data: CallbackJob = { url, tenant: rec.tenant, function: rec.function, invocationId: rec.id, status: rec.status, body: callbackBody(rec) };
    await this.add(deliveryId(rec), data);
  }

  private async add(id: string, data: CallbackJob): Promise<void> {
    await this.queue.add('callback', data, {
      jobId: id,
      attempts: this.o.attempts,
      backoff: { type: 'exponential', delay: this.o.backoffMs },
      removeOnComplete: { age: DEFAULT_RETENTION.completedJobAgeS, count: DEFAULT_RETENTION.completedJobCount },
      removeOnFail: { age: DEFAULT_RETENTION.deadLetterS, count: DEFAULT_RETENTION.failedJobCount },
    });
  }

  /** Starts this node's delivery worker and outbox sweep (a first sweep at once: entries a dead node left behind). */
  start(): void {
    if (this.worker) return;
    this.worker = new Worker<CallbackJob>(CALLBACK_QUEUE, (job) => this.deliver(job), {
      connection: connection(this.deps.redis),
      prefix: this.keys.bullPrefix,
      concurrency: this.o.concurrency,
      // a POST is bounded by timeoutMs; the lock outlasts it so a slow receiver never makes the job look stalled
      lockDuration: this.o.lockDurationMs ?? Math.max(30_000, this.o.timeoutMs * 2),
      ...(this.o.stalledIntervalMs !== undefined ? { stalledInterval: this.o.stalledIntervalMs } : {}),
      ...(this.o.maxStalledCount !== undefined ? { maxStalledCount: this.o.maxStalledCount } : {}),
    });
    this.worker.on('error', (e) => this.deps.log.warn({ err: String(e?.message ?? e) }, 'callback worker error'));
    // A job whose delivery workers kept dying is failed by BullMQ without running deliver() (the message is
    // BullMQ's, as ./process-job.ts STALLED_OUT_REASON): list it like any other failed callback.
    this.worker.on('failed', (job, err) => {
      if (!job?.id || !job.data?.tenant || (err?.message ?? job.failedReason) !== 'job stalled more than allowable limit') return;
      const d = job.data;
      this.deps.metrics?.callback('failed');
      this.deps.log.warn({ invocationId: d.invocationId, status: d.status, destination: origin(d.url) }, 'callback failed: its delivery stalled out (delivering nodes died)');
      void noteFailedCallback(this.deps.redis, this.keys, d.tenant, {
        deliveryId: job.id, invocationId: d.invocationId, function: d.function, url: d.url, status: d.status,
        attempts: job.attemptsMade, lastError: 'delivery worker lost (its scheduler node died mid-POST) too many times', failedAt: Date.now(),
      }).catch(() => {});
    });
    this.runSweep(0);
    this.sweepTimer = setInterval(() => this.runSweep(SWEEP_GRACE_MS), this.o.sweepMs);
    this.sweepTimer.unref();
    this.offGauges = this.deps.metrics?.addCollector(() => this.gauges());
  }

  /**
   * The outbox length and each tenant's failed-callback count, for /metrics (one HLEN + SMEMBERS, then one ZCARD
   * per tenant with a BullMQ queue — the tenants that can have callbacks — pipelined). Nothing (the gauges keep
   * their values) when Redis does not answer within GAUGE_READ_MS.
   */
  private async gauges(): Promise<SchedulerSnapshot> {
    const redis = this.deps.redis;
    const read = (async () => {
      const [outbox, tenants] = await Promise.all([redis.hlen(this.keys.callbackOutbox()), redis.smembers(this.keys.tenantsBull())]);
      const failedCallbacks: Record<string, number> = {};
      if (tenants.length) {
        const p = redis.pipeline();
        for (const t of tenants) p.zcard(this.keys.failedCallbacks(t).index);
        const res = (await p.exec()) ?? [];
        tenants.forEach((t, i) => (failedCallbacks[t] = Number(res[i]?.[1] ?? 0)));
      }
      return { callbackOutbox: outbox, failedCallbacks };
    })();
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<SchedulerSnapshot>((r) => (timer = setTimeout(() => r({}), GAUGE_READ_MS)));
    try {
      return await Promise.race([read, late]);
    } finally {
      clearTimeout(timer);
      read.catch(() => {});
    }
  }

  /** One sweep at a time per node; close() waits for the one running. */
  private runSweep(graceMs: number): void {
    if (this.sweeping) return;
    this.sweeping = this.sweep({ graceMs })
      .catch((e) => this.deps.log.warn({ err: String((e as Error)?.message ?? e) }, 'callback outbox sweep failed'))
      .then(() => {
        this.sweeping = undefined;
      });
  }

  /** One POST, as a 'callback delivery' span in the invocation's trace (under its job's traceparent). */
  private deliver(job: Job<CallbackJob>): Promise<void> {
    const d = job.data;
    const attrs = {
      [Attr.tenant]: d.tenant, [Attr.function]: d.function, [Attr.invocationId]: d.invocationId,
      [Attr.jobId]: job.id ?? '', [Attr.callbackAttempt]: job.attemptsMade + 1, [Attr.serverAddress]: hostOf(d.url),
    };
    return withSpan(SpanName.callbackDelivery, attrs, (span) => this.post(job, span), { parent: remoteParent(d.traceparent), kind: SpanKind.CLIENT });
  }

  private async post(job: Job<CallbackJob>, span: Span): Promise<void> {
    const d = job.data;
    const attempt = job.attemptsMade + 1;
    const max = job.opts.attempts ?? 1;
    const where = { invocationId: d.invocationId, status: d.status, destination: origin(d.url), attempt };
    let err: Error;
    let httpStatus: number | undefined;
    try {
      const headers = {
        'x-fnhost-invocation-id': d.invocationId,
        'x-fnhost-status': d.status,
        'x-fnhost-function': d.function,
        'x-fnhost-delivery-id': job.id ?? d.invocationId,
        'x-fnhost-delivery-attempt': String(attempt),
        'x-fnhost-signature': await this.signer.sign(d.tenant, d.body),
      };
      httpStatus = await postCallback(d.url, d.body, headers, this.o);
      span.setAttribute(Attr.httpStatus, httpStatus);
      if (httpStatus >= 200 && httpStatus < 300) {
        span.setAttribute(Attr.callbackOutcome, 'delivered');
        this.deps.metrics?.callback('delivered');
        this.deps.log.info({ ...where, httpStatus }, 'callback delivered');
        return;
      }
      err = new Error(`receiver answered ${httpStatus}`);
    } catch (e) {
      err = e instanceof Error ? e : new Error(String(e));
    }
    const refused = err instanceof RefusedDestination;
    if (refused || attempt >= max) {
      span.setAttribute(Attr.callbackOutcome, 'failed');
      this.deps.metrics?.callback('failed');
      this.deps.log.warn({ ...where, err: err.message }, refused ? 'callback refused: destination not allowed' : 'callback failed: attempts exhausted');
      // listed for the tenant (GET /v1/callbacks/failed) before BullMQ moves the job to its failed set
      await noteFailedCallback(this.deps.redis, this.keys, d.tenant, {
        deliveryId: job.id ?? '', invocationId: d.invocationId, function: d.function, url: d.url, status: d.status, attempts: attempt,
        lastError: err.message, ...(httpStatus !== undefined ? { lastHttpStatus: httpStatus } : {}), failedAt: Date.now(),
      }).catch((e) => this.deps.log.warn({ ...where, err: String((e as Error)?.message ?? e) }, 'failed callback not listed'));
      if (refused) throw new UnrecoverableError(err.message);
    } else {
      span.setAttribute(Attr.callbackOutcome, 'retried');
      this.deps.metrics?.callback('retried');
      this.deps.log.info({ ...where, err: err.message }, 'callback attempt failed; will retry');
    }
    throw err;
  }

  /** Stops the sweep and the worker (waiting for POSTs in flight, each bounded by timeoutMs) and the queue. Queued callbacks stay in Redis. */
  async close(): Promise<void> {
    this.offGauges?.();
    this.offGauges = undefined;
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    this.sweepTimer = undefined;
    await this.sweeping;
    if (this.worker) {
      await this.worker.waitUntilReady().catch(() => {});
      await this.worker.close().catch(() => {});
    }
    await this.queue.close().catch(() => {});
  }
}
