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
 * Delivery is durable and never in an invocation's way: the scheduler only adds a job to a BullMQ queue of
 * its own (`P:bull:callbacks`, shared by every node on the Redis) right after the final record is written; each
 * scheduler runs a worker on it. A 2xx answer is delivered; anything else (status, refused connection, DNS
 * failure, timeout) is retried with exponential backoff until the attempts run out, then the job stays in the
 * queue's failed set (retained like dead letters). Redirects are not followed (a 3xx is a failure): a
 * receiver cannot bounce the host to a destination the allow-list (./callback-url.ts) would refuse.
 *
 * @example
 * const cb = new Callbacks({ redis: bullRedis, prefix: 'fnhost', options: callbackOptions(process.env), metrics, log });
 * cb.start();                                       // the delivery worker (every scheduler node runs one)
 * await cb.enqueue('https://hooks.example.com/x', finalRecord);
 * await cb.close();
 */
import http from 'node:http';
import https from 'node:https';
import { lookup as dnsLookup } from 'node:dns';
import { isIP, type LookupFunction } from 'node:net';
import { Queue, UnrecoverableError, Worker, type ConnectionOptions, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import { InvalidRequest } from '../common/errors.ts';
import type { Logger } from '../common/log.ts';
import type { FnhostMetrics } from '../common/metrics.ts';
import { renderInvocation } from './invocation-view.ts';
import { allowedAddress, allowedName, bareHost, envCallbackAllow, parseCallbackAllow, type CallbackAllow } from './callback-url.ts';
import { CallbackSigner } from './callback-signer.ts';
import { DEFAULT_RETENTION } from './config.ts';
import type { InvocationRecord } from './types.ts';

/** The BullMQ queue name (under the scheduler's BullMQ prefix; tenant queues are `inv.*`, node queues `node.*`). */
export const CALLBACK_QUEUE = 'callbacks';

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
  /** FNHOST_CALLBACK_SECRET: the host secret the tenants' keys derive from (unset: generated in Redis). */
  secret?: string;
  /** FNHOST_CALLBACK_ALLOW (unset: any destination). */
  allow?: CallbackAllow;
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
 * Removes a tenant's callbacks not yet being delivered (waiting, delayed — between retries —, prioritized,
 * paused) from the callbacks queue `queue`, so a deleted tenant's receivers get nothing more. A POST in flight
 * (active) ends on its own; its retry, if any, is not dropped. Returns how many were removed.
 * @example
 * await dropTenantCallbacks(new Queue(CALLBACK_QUEUE, { connection, prefix: `${prefix}:bull` }), 'acme');   // 3
 */
export async function dropTenantCallbacks(queue: Queue, tenant: string): Promise<number> {
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
  return removed;
}

export interface CallbacksDeps {
  /** a connection BullMQ accepts for workers (maxRetriesPerRequest: null); the scheduler's `bullRedis` */
  redis: Redis;
  /** the scheduler's key prefix (the queue lives under `<prefix>:bull`, the generated secret at `<prefix>:callback:secret`) */
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

  constructor(private readonly deps: CallbacksDeps) {
    this.o = deps.options;
    this.signer = new CallbackSigner(deps.redis, deps.prefix, deps.options.secret);
    this.queue = new Queue<CallbackJob>(CALLBACK_QUEUE, { connection: connection(deps.redis), prefix: `${deps.prefix}:bull` });
    this.queue.on('error', (e) => deps.log.warn({ err: String(e?.message ?? e) }, 'callback queue error'));
  }

  /**
   * Queues the callback of a final record. The job id is `<invocation id>.<finishedAt>`: the same outcome is
   * queued once however often this is called (a restarted attempt re-queues what a crash may have lost), and
   * a redrive's new outcome is a new job.
   */
  async enqueue(url: string, rec: InvocationRecord): Promise<void> {
    const data: CallbackJob = { url, tenant: rec.tenant, function: rec.function, invocationId: rec.id, status: rec.status, body: callbackBody(rec) };
    await this.queue.add('callback', data, {
      jobId: `${rec.id}.${rec.finishedAt ?? 0}`,
      attempts: this.o.attempts,
      backoff: { type: 'exponential', delay: this.o.backoffMs },
      removeOnComplete: { age: DEFAULT_RETENTION.completedJobAgeS, count: DEFAULT_RETENTION.completedJobCount },
      removeOnFail: { age: DEFAULT_RETENTION.deadLetterS, count: DEFAULT_RETENTION.failedJobCount },
    });
  }

  /** Starts this node's delivery worker. */
  start(): void {
    if (this.worker) return;
    this.worker = new Worker<CallbackJob>(CALLBACK_QUEUE, (job) => this.deliver(job), {
      connection: connection(this.deps.redis),
      prefix: `${this.deps.prefix}:bull`,
      concurrency: this.o.concurrency,
      // a POST is bounded by timeoutMs; the lock outlasts it so a slow receiver never makes the job look stalled
      lockDuration: Math.max(30_000, this.o.timeoutMs * 2),
    });
    this.worker.on('error', (e) => this.deps.log.warn({ err: String(e?.message ?? e) }, 'callback worker error'));
  }

  private async deliver(job: Job<CallbackJob>): Promise<void> {
    const d = job.data;
    const attempt = job.attemptsMade + 1;
    const max = job.opts.attempts ?? 1;
    const where = { invocationId: d.invocationId, status: d.status, destination: origin(d.url), attempt };
    let err: Error;
    try {
      const headers = {
        'x-fnhost-invocation-id': d.invocationId,
        'x-fnhost-status': d.status,
        'x-fnhost-function': d.function,
        'x-fnhost-delivery-id': job.id ?? d.invocationId,
        'x-fnhost-delivery-attempt': String(attempt),
        'x-fnhost-signature': await this.signer.sign(d.tenant, d.body),
      };
      const status = await postCallback(d.url, d.body, headers, this.o);
      if (status >= 200 && status < 300) {
        this.deps.metrics?.callback('delivered');
        this.deps.log.info({ ...where, httpStatus: status }, 'callback delivered');
        return;
      }
      err = new Error(`receiver answered ${status}`);
    } catch (e) {
      err = e instanceof Error ? e : new Error(String(e));
    }
    const refused = err instanceof RefusedDestination;
    if (refused || attempt >= max) {
      this.deps.metrics?.callback('failed');
      this.deps.log.warn({ ...where, err: err.message }, refused ? 'callback refused: destination not allowed' : 'callback failed: attempts exhausted');
      if (refused) throw new UnrecoverableError(err.message);
    } else {
      this.deps.metrics?.callback('retried');
      this.deps.log.info({ ...where, err: err.message }, 'callback attempt failed; will retry');
    }
    throw err;
  }

  /** Stops the worker (waiting for POSTs in flight, each bounded by timeoutMs) and the queue. Queued callbacks stay in Redis. */
  async close(): Promise<void> {
    if (this.worker) {
      await this.worker.waitUntilReady().catch(() => {});
      await this.worker.close().catch(() => {});
    }
    await this.queue.close().catch(() => {});
  }
}
