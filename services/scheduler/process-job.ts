/**
 * @module scheduler/process-job
 * One attempt of one invocation job, on one node: pick-up → placement (warm pick or pool claim +
 * specialise) → run → result delivery. The trace is the one observability's notes lay out:
 * 'queue wait' and 'scheduler pickup' under the job's traceparent, then 'warm pick' | 'pool claim',
 * 'specialise' and 'run' (runtimes), 'result delivery'.
 *
 * Outcomes:
 *   - success: record `succeeded` (+ response) written and published to the waiting client in one script;
 *   - typed failure, sync/http: record `failed` with the error JSON, published; the job completes (a sync
 *     invocation is never retried — the caller decides);
 *   - typed failure, async, attempts left and retryable: record back to `queued` with the last error and
 *     the attempt count, then the error is thrown so BullMQ retries with backoff;
 *   - typed failure, async, last attempt (or not retryable): record `failed`, job fails → dead-letter list.
 *     An async job whose function version was deleted since it was queued is one: NotFound
 *     (`details.reason: 'version-deleted'`), found before placement, so no instance of it is used again.
 *   - the worker died mid-job more than `maxStalledCount` times: BullMQ fails the job without running it
 *     (finishLostWorker below): record `failed` with Crashed (`details.reason: 'worker-lost'`), job failed → dead letter;
 *     should every node that hears of it die before writing, ./sweeper.ts writes it through the same path (finishLostJob).
 * Exactly once as the caller sees it: the final write refuses to replace a final record (./records.ts), and
 * a restarted attempt (stalled after a crash, or redriven) first checks whether a result already exists.
 */
import { UnrecoverableError, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import type { FunctionVersion, LogLine } from '../common/model.ts';
import { Crashed, FnhostError, Internal, NotFound, Timeout } from '../common/errors.ts';
import { Attr, NOOP_SPAN, discardSpan, SpanKind, SpanName, SpanSchema, recordSpan, recordSpanOf, remoteParent, runInSpan, spanTime, startSpanOf, tracingEnabled, withRemoteParent, withSpan, type Span, type SpanValues } from '../common/telemetry.ts';
import type { FnhostMetrics } from '../common/metrics.ts';
import type { Logger } from '../common/log.ts';
import type { Keys } from './keys.ts';
import { decodeInline, decodePayload, type JobData } from './job.ts';
import { getRecord, isFinal, setRecord, toStored, type StoredRecord } from './records.ts';
import { deliveryId, type Callbacks } from './callbacks.ts';
import { appendLogs, type LogRetention } from './logs.ts';
import type { Instances, Lease } from './instances.ts';
import type { ExecRequest, ExecResult } from './executor.ts';
import type { LogBuffer } from './log-buffer.ts';
import type { Retention } from './config.ts';
import { unpend } from './routing.ts';
import { localClient } from './local-replies.ts';
import type { LocalCall, LocalOutcome } from './local-dispatch.ts';
import type { RecordBatch } from './record-batch.ts';
import type { InvocationRecord } from './types.ts';

export interface JobContext {
  redis: Redis;
  keys: Keys;
  nodeId: string;
  retention: Retention;
  logRetention: LogRetention;
  instances: Instances;
  logs: LogBuffer;
  metrics?: FnhostMetrics;
  log: Logger;
  /** batched final-record writes of in-process calls (./record-batch.ts); without it each is written at once */
  records?: RecordBatch;
  /** completion callbacks of async invocations (./callbacks.ts): queued when a final record is written */
  callbacks?: Callbacks;
  /**
   * true when the function version an async job carries was deleted since it was queued (store/functions.ts
   * versionState); such a job fails NotFound instead of running. Absent: not checked.
   */
  versionGone?: (fn: FunctionVersion) => Promise<boolean>;
}

const NO_ATTRS = Object.freeze({});

/** Errors after which the instance is never reused (DESIGN.md, issue 5). */
const FATAL = new Set(['Timeout', 'OutOfMemory', 'Crashed']);
/** Async failures that another attempt cannot fix. */
const NOT_RETRYABLE = new Set(['InvalidRequest', 'NotFound', 'LimitExceeded', 'Forbidden', 'Unauthorized', 'PayloadTooLarge']);

function typed(e: unknown): FnhostError {
  if (e instanceof FnhostError) return e;
  return new Internal('scheduler fault while running the invocation', { cause: String((e as Error)?.message ?? e) }, { cause: e });
}

function baseRecord(d: JobData, attempts: number): InvocationRecord {
  return { id: d.id, tenant: d.fn.tenant, function: d.fn.name, version: d.fn.version, mode: d.mode, status: 'running', attempts, createdAt: d.createdAt };
}

/** What the scheduler knows about one attempt, whichever lane it came from. */
export interface Attempt {
  /** the queue (BullMQ queue name, or the fast-lane list) it came from */
  queueName: string;
  /** epoch ms it was queued */
  timestamp: number;
  /** 1-based */
  attempt: number;
  maxAttempts: number;
  /** the job was started before (stalled worker, lost lock, redrive): check for an existing result first */
  restarted: boolean;
}

export function attemptOfJob(job: Job<JobData>): Attempt {
  return {
    queueName: job.queueName,
    timestamp: job.timestamp,
    attempt: (job.attemptsMade ?? 0) + 1,
    maxAttempts: job.opts.attempts ?? 1,
    restarted: (job.attemptsStarted ?? 1) > 1 || (job.stalledCounter ?? 0) > 0,
  };
}

/** BullMQ worker processor. */
export function processJob(ctx: JobContext, job: Job<JobData>): Promise<void> {
  return processInvocation(ctx, job.data, attemptOfJob(job));
}

export async function processInvocation(ctx: JobContext, d: JobData, job: Attempt): Promise<void> {
  const fn = d.fn;
  const pickedAt = Date.now();
  const attempt = job.attempt;
  if (!tracingEnabled()) {
    // this path runs thousands of times a second: no span arguments, closures or attribute objects to build
    ctx.metrics?.queueWait(fn.tenant, pickedAt - job.timestamp);
    return run(ctx, job, d, fn, attempt, pickedAt, NOOP_SPAN);
  }
  const attrs = {
    [Attr.tenant]: fn.tenant, [Attr.function]: fn.name, [Attr.version]: fn.version, [Attr.invocationId]: d.id,
    [Attr.mode]: d.mode, [Attr.attempt]: attempt, [Attr.memoryMb]: fn.memoryMb, [Attr.runtime]: fn.runtime, [Attr.node]: ctx.nodeId,
  };
  return withRemoteParent(d.traceparent, async () => {
    recordSpan(SpanName.queueWait, job.timestamp, pickedAt, { [Attr.invocationId]: d.id, [Attr.tenant]: fn.tenant });
    ctx.metrics?.queueWait(fn.tenant, pickedAt - job.timestamp);
    return withSpan(SpanName.pickup, attrs, (span) => run(ctx, job, d, fn, attempt, pickedAt, span), { kind: SpanKind.CONSUMER });
  });
}

async function run(ctx: JobContext, job: Attempt, d: JobData, fn: FunctionVersion, attempt: number, pickedAt: number, span: Span): Promise<void> {
  const { redis, keys } = ctx;
  const recKey = keys.record(fn.tenant, d.id);
  const ttl = d.mode === 'async' ? ctx.retention.deadLetterS : ctx.retention.recordS;
  const reply = d.replyTo ? keys.replyChannel(d.replyTo) : undefined;
  if (d.routed && job.queueName === keys.nodeQueue(ctx.nodeId)) void unpend(redis, keys, ctx.nodeId).catch(() => {});

  // A restarted attempt (stalled worker, lost lock) may find the result already written: deliver nothing twice.
  if (job.restarted) {
    const prev = await getRecord(redis, recKey);
    if (prev && isFinal(prev.status)) {
      // the attempt that wrote it may have died before moving its callback out of the outbox: move it now
      if (d.callbackUrl) await flushCallback(ctx, d, prev);
      return;
    }
  }
  if (d.deadline > 0 && pickedAt > d.deadline) {
    const err = new Timeout('the invocation waited in the queue past its deadline and was not run', { timeoutMs: fn.timeoutMs, queuedMs: pickedAt - d.createdAt });
    await finish(ctx, d, job, recKey, ttl, reply, { ...baseRecord(d, attempt), status: 'failed', finishedAt: Date.now(), error: errJSON(err) }, []);
    observe(ctx, fn, 'none', err.type, pickedAt, span);
    return;
  }
  // Not awaited: ioredis keeps command order on one connection, so this lands before the final write.
  // Sync/http records skip 'running': their caller is waiting for the final record anyway, and one Lua call
  // less per invocation is ~5% of the fast lane's throughput (measured with test/bench/scheduler.ts).
  if (d.mode === 'async') void setRecord(redis, recKey, toStored({ ...baseRecord(d, attempt), startedAt: pickedAt }), ttl).catch(() => {});

  let lease: Lease | undefined;
  let start: 'cold' | 'warm' | 'none' = 'none';
  try {
    // An async job may wait long after its version (or function) was deleted: it ends as a typed, counted failure
    // (not retried: NOT_RETRYABLE) rather than running code its owner removed. Sync calls were resolved moments
    // ago by a waiting caller: not checked (a Redis round trip on the hot path for a race the caller started).
    if (d.mode === 'async' && ctx.versionGone && (await ctx.versionGone(fn))) {
      throw new NotFound(`version ${fn.version} of function ${fn.name} was deleted after this invocation was queued; it was not run`, { field: 'version', reason: 'version-deleted', version: fn.version });
    }
    const payload = decodeInline(d.payload) ?? (await decodePayload(d.payload, (k) => redis.getBuffer(k)));
    const t0 = Date.now();
    // Spans find their parent without AsyncLocalStorage (services/common/telemetry.ts): what runs synchronously
    // inside runInSpan (a cold start's specialisation begins so) hangs under the pickup span; later ones get it passed.
    lease = await (tracingEnabled() ? runInSpan(span, () => ctx.instances.acquire(fn, d.deadline)) : ctx.instances.acquire(fn, d.deadline));
    start = lease.start;
    span.setAttribute(Attr.start, start);
    recordSpan(start === 'warm' ? SpanName.warmPick : SpanName.poolClaim, t0, lease.placedAt, undefined, span);
    if (lease.instance.handle) span.setAttribute(Attr.sandboxId, lease.instance.handle.id);
    ctx.logs.begin(d.id);
    const runStart = Date.now();
    const res = await runOnLease(ctx, lease, span, { id: d.id, payload, deadline: runStart + fn.timeoutMs });
    const now = Date.now();
    // a literal, not `{ ...baseRecord(), … }` (two objects and a clone per call); same keys in the same order
    const rec: InvocationRecord = {
      id: d.id, tenant: fn.tenant, function: fn.name, version: fn.version, mode: d.mode, status: 'succeeded', attempts: attempt, createdAt: d.createdAt,
      start, startedAt: pickedAt, finishedAt: now, durationMs: res.durationMs ?? now - runStart, response: res.response,
    };
    const lines = ctx.logs.take(d.id);
    if (tracingEnabled()) await withSpan(SpanName.resultDelivery, {}, () => finish(ctx, d, job, recKey, ttl, reply, rec, lines), { parent: span });
    else await finish(ctx, d, job, recKey, ttl, reply, rec, lines);
    // a cold start's first call creates the function's metric series: after the caller's continuation, as runPlaced does
    observe(ctx, fn, start, 'success', pickedAt, span, start === 'cold');
  } catch (e) {
    const err = typed(e);
    const logs = ctx.logs.take(d.id);
    const lastAttempt = attempt >= job.maxAttempts;
    const retry = d.mode === 'async' && !lastAttempt && !NOT_RETRYABLE.has(err.type);
    const rec: InvocationRecord = {
      ...baseRecord(d, attempt), status: retry ? 'queued' : 'failed', start: start === 'none' ? undefined : start,
      startedAt: pickedAt, finishedAt: retry ? undefined : Date.now(), error: errJSON(err),
    };
    await withSpan(SpanName.resultDelivery, {}, () => finish(ctx, d, job, recKey, ttl, reply, rec, logs), { parent: span });
    observe(ctx, fn, start, err.type, pickedAt, span);
    if (d.mode === 'async') {
      // BullMQ's own retry/dead-letter machinery takes it from here.
      if (NOT_RETRYABLE.has(err.type)) throw new UnrecoverableError(`${err.type}: ${err.message}`);
      throw err;
    }
  }
}

/**
 * Runs one call on a leased instance (the 'run' span is opened under `span` by the runtime) and gives the
 * instance back exactly once: never to be reused after a fatal error (FATAL). Errors come back typed.
 */
async function runOnLease(ctx: JobContext, lease: Lease, span: Span, req: ExecRequest): Promise<ExecResult> {
  const handle = lease.instance.handle!;
  let res;
  try {
    res = await (tracingEnabled() ? runInSpan(span, () => handle.invoke(req)) : handle.invoke(req));
  } catch (e) {
    const err = typed(e);
    ctx.instances.release(lease.instance, FATAL.has(err.type));
    throw err;
  }
  ctx.instances.release(lease.instance, false);
  return res;
}

function errJSON(e: FnhostError): StoredRecord['error'] {
  return e.toJSON().error;
}

/** Returns whether the record was written (false: a final one was there already); true when batched (checked there). */
async function finish(ctx: JobContext, d: JobData, job: Attempt, recKey: string, ttl: number, reply: string | undefined, rec: InvocationRecord, lines: LogLine[]): Promise<boolean> {
  const final = isFinal(rec.status);
  // The waiting client lives in this process (./local-replies.ts): no PUBLISH.
  const local = final && reply ? localClient(d.replyTo) : undefined;
  if (local && ctx.records && !job.restarted && job.maxAttempts === 1) {
    // A sync job is delivered once (fast lane: popped atomically; BullMQ lane: one attempt, and a restarted
    // one was filtered above): the client is told now and the record goes out with the next batch — checked,
    // so it never replaces a final record. The client answers get() from memory until the batch is acked.
    local(d.id, rec, ctx.records.add(rec, lines, true));
    return true;
  }
  // The callback goes into the outbox in the record's own script: final record written ⇒ callback sent eventually.
  const outbox = final && d.callbackUrl && ctx.callbacks ? ctx.callbacks.outboxEntry(d.callbackUrl, rec, d.traceparent) : undefined;
  const [written] = await Promise.all([
    setRecord(ctx.redis, recKey, toStored(rec), ttl, { replyChannel: final && !local ? reply : undefined, outbox }),
    appendLogs(ctx.redis, ctx.keys, d.fn.tenant, d.fn.name, lines, ctx.logRetention),
  ]);
  // Told only if this write made the record final, as the script's PUBLISH would.
  if (local && written) local(d.id, rec, Promise.resolve());
  // Only the write that made the record final calls back: never on an attempt that will be retried, never twice.
  if (written && outbox) await queueCallback(ctx, d, () => ctx.callbacks!.dispatch(outbox));
  return written;
}

/**
 * Moves the completion callback from the outbox to the delivery queue. A failure here is logged, never the
 * invocation's outcome, and loses nothing: the entry stays in the outbox and the next sweep moves it.
 */
async function queueCallback(ctx: JobContext, d: JobData, move: () => Promise<void>): Promise<void> {
  try {
    await move();
  } catch (e) {
    ctx.log.warn({ invocationId: d.id, err: String((e as Error)?.message ?? e) }, 'callback left in the outbox; the sweep queues it');
  }
}

/** A final record found already written: its callback, if still in the outbox, is moved now. */
function flushCallback(ctx: JobContext, d: JobData, prev: StoredRecord): Promise<void> {
  const cb = ctx.callbacks;
  return cb ? queueCallback(ctx, d, () => cb.flush(deliveryId(prev))) : Promise.resolve();
}

/**
 * BullMQ's failedReason for a job whose worker stopped renewing its lock (died, or was frozen) more than
 * `maxStalledCount` times. BullMQ 5.x marks such a job as its stalled-job check moves it back to the wait list
 * (`defa` in the job hash, `job.deferredFailure`; that worker emits 'stalled'); the next worker to fetch it fails
 * it without calling the processor (and emits 'failed') — so none of run()'s outcomes above happen. Older
 * versions failed it from the stalled-job check and emitted 'failed' with this message.
 */
export const STALLED_OUT_REASON = 'job stalled more than allowable limit';

/** Whether a worker 'failed' event is BullMQ failing a job on its own because its workers kept dying. */
export function isStalledOut(job: Job<JobData> | undefined, err: Error | undefined): job is Job<JobData> {
  return !!job?.data?.fn && (job.deferredFailure === STALLED_OUT_REASON || job.failedReason === STALLED_OUT_REASON || err?.message === STALLED_OUT_REASON);
}

/**
 * Ends a job BullMQ failed because it stalled too often (isStalledOut) like any other final failure: record
 * `failed` with a Crashed error saying the invocation's worker was lost — never over a record that is already
 * final (./records.ts) —, the waiting client told (sync on the BullMQ lane), the invocation counted in the
 * metrics, and the completion callback queued. The job itself is in the failed set already: the dead-letter
 * list. When an attempt did write its final record but died before BullMQ heard of it, that record stands and
 * its callback is queued (a no-op if it was); a `succeeded` one also leaves the dead-letter list, as the
 * restarted branch of run() would have completed the job.
 */
export async function finishLostWorker(ctx: JobContext, job: Job<JobData>): Promise<boolean> {
  return finishLostJob(ctx, lostJobOf(job), workerLost(job));
}

/** The Crashed error of a job that stalled out (isStalledOut): `details: {reason: 'worker-lost', stalls}`. */
export function workerLost(job: Job<JobData>): Crashed {
  const stalls = job.stalledCounter ?? 0;
  const times = stalls > 1 ? ` ${stalls} times` : '';
  return new Crashed(`the invocation's worker was lost${times} (its scheduler node died or stopped answering mid-invocation); not retried further`, { reason: 'worker-lost', stalls });
}

/**
 * A job that ended (or vanished) without its final record, as finishLostJob needs it: BullMQ's job (lostJobOf),
 * or, for a job that is gone, what its record says (./sweeper.ts).
 */
export interface LostJob {
  data: JobData;
  attempt: Attempt;
  /** epoch ms its last attempt was picked up, if known */
  processedOn?: number;
  /** takes the job out of the dead-letter list (its record turned out `succeeded`); absent when there is no job */
  remove?: () => Promise<unknown>;
}

export function lostJobOf(job: Job<JobData>): LostJob {
  return { data: job.data, attempt: attemptOfJob(job), processedOn: job.processedOn, remove: () => job.remove() };
}

/**
 * finishLostWorker's path for any job no attempt could finish (`err`: what the record will say). Returns
 * whether this call wrote the final record (false: it was final already, or another writer won).
 */
export async function finishLostJob(ctx: JobContext, lost: LostJob, err: FnhostError): Promise<boolean> {
  const d = lost.data;
  const fn = d.fn;
  const recKey = ctx.keys.record(fn.tenant, d.id);
  const prev = await getRecord(ctx.redis, recKey);
  if (prev && isFinal(prev.status)) {
    if (d.callbackUrl) await flushCallback(ctx, d, prev);
    if (prev.status === 'succeeded') await lost.remove?.().catch(() => {});
    return false;
  }
  const attempt = lost.attempt;
  const startedAt = prev?.startedAt ?? lost.processedOn ?? Date.now();
  const rec: InvocationRecord = {
    ...baseRecord(d, prev?.attempts || attempt.attempt), status: 'failed', start: prev?.start, startedAt, finishedAt: Date.now(), error: errJSON(err),
  };
  const ttl = d.mode === 'async' ? ctx.retention.deadLetterS : ctx.retention.recordS;
  const written = await finish(ctx, d, { ...attempt, restarted: true }, recKey, ttl, d.replyTo ? ctx.keys.replyChannel(d.replyTo) : undefined, rec, []);
  // counted once: the 'stalled' and the 'failed' event (./scheduler.ts) and the sweeper may all get here; one write wins
  if (!written) return false;
  observe(ctx, fn, prev?.start ?? 'none', err.type, startedAt, NOOP_SPAN);
  ctx.log.warn({ invocationId: d.id, tenant: fn.tenant, function: fn.name, ...err.details }, `invocation failed: ${err.message}`);
  return true;
}

/**
 * `later`: count the invocation in the metrics after the caller has been answered (the local path answers right
 * after this). `values`: the 'local dispatch' span's values (runLocal): outcome / error type are stored there
 * instead of set on the span.
 */
function observe(ctx: JobContext, fn: FunctionVersion, start: 'cold' | 'warm' | 'none', outcome: string, pickedAt: number, span: Span, later = false, values?: SpanValues) {
  if (values) {
    values[LD_OUTCOME] = outcome;
    if (outcome !== 'success') values[LD_ERROR] = outcome;
  } else {
    span.setAttribute(Attr.outcome, outcome);
    if (outcome !== 'success') span.setAttribute(Attr.errorType, outcome);
  }
  const m = ctx.metrics;
  if (!m) return;
  const obs = { tenant: fn.tenant, function: fn.name, start, outcome, durationMs: Date.now() - pickedAt };
  // A function's first call creates its metric series (label sets): not on a cold start's answer path.
  if (later) setImmediate(() => m.invocation(obs));
  else m.invocation(obs);
}

/**
 * A sync/http call handed over in-process by a co-located client (./local-dispatch.ts). `place` decides and
 * reserves synchronously (Instances.acquireNow): a lease at once for a warm instance, a promise of one for a
 * cold start (begun inside the 'local dispatch' span, so 'specialise' hangs under it), or undefined — then
 * nothing ran and the caller takes the queue.
 * The trace: 'local dispatch' (under the caller's span) → 'warm pick' | 'pool claim' (+ 'specialise') →
 * 'run' → 'result delivery'. Never rejects: a failure is the outcome's `error`.
 */
export function runLocal(ctx: JobContext, call: LocalCall, place: () => Lease | Promise<Lease> | undefined): Promise<LocalOutcome> | undefined {
  if (!tracingEnabled()) {
    // no span: no clock read, attribute object or span per call (this path runs thousands of times a second)
    const got = place();
    return got ? runPlaced(ctx, call, got, 0, NOOP_SPAN) : undefined;
  }
  const fn = call.fn;
  const t0 = spanTime();
  // By LOCAL_DISPATCH's positions; what is known later (start kind, sandbox, outcome, error type) is filled in by
  // plain stores before the span ends (runPlaced, observe): the span keeps this array and records it at end().
  const values: SpanValues = [fn.tenant, fn.name, fn.version, call.id, call.mode, fn.memoryMb, fn.runtime, undefined, undefined, undefined, undefined];
  // The caller's span object when it is in this process (the gateway's 'http request'): no traceparent to parse.
  const span = startSpanOf(LOCAL_DISPATCH, values, call.parentSpan ?? remoteParent(call.traceparent), t0);
  // The placement is decided and reserved in this tick with the span current, so a cold start's
  // 'specialise' (begun synchronously inside) hangs under 'local dispatch'. runPlaced ends the span.
  const placed = runInSpan(span, place);
  if (!placed) {
    // nothing ran under it; the call's trace goes on under 'enqueue'
    discardSpan(span);
    return undefined;
  }
  return runPlaced(ctx, call, placed, t0, span, values);
}

/** The spans of a local call, by position (runLocal's values array follows this key order). */
const LOCAL_DISPATCH = new SpanSchema(SpanName.localDispatch, SpanKind.INTERNAL, [
  Attr.tenant, Attr.function, Attr.version, Attr.invocationId, Attr.mode, Attr.memoryMb, Attr.runtime,
  Attr.start, Attr.sandboxId, Attr.outcome, Attr.errorType,
]);
const LD_START = LOCAL_DISPATCH.slot(Attr.start);
const LD_SANDBOX = LOCAL_DISPATCH.slot(Attr.sandboxId);
const LD_OUTCOME = LOCAL_DISPATCH.slot(Attr.outcome);
const LD_ERROR = LOCAL_DISPATCH.slot(Attr.errorType);
const WARM_PICK = new SpanSchema(SpanName.warmPick, SpanKind.INTERNAL, []);
const POOL_CLAIM = new SpanSchema(SpanName.poolClaim, SpanKind.INTERNAL, []);
const RESULT_DELIVERY = new SpanSchema(SpanName.resultDelivery, SpanKind.INTERNAL, []);

/**
 * Runs a placed local call and ends `span` ('local dispatch'). `t0`: when the placement began (span time);
 * `values`: the span's values by LOCAL_DISPATCH's positions (undefined with tracing off).
 */
async function runPlaced(ctx: JobContext, call: LocalCall, placed: Lease | Promise<Lease>, t0: number, span: Span, values?: SpanValues): Promise<LocalOutcome> {
  const fn = call.fn;
  const pickedAt = call.createdAt;
  ctx.metrics?.queueWait(fn.tenant, 0);
  let start: 'cold' | 'warm' | 'none' = 'none';
  let lease: Lease | undefined;
  try {
    lease = placed instanceof Promise ? await placed : placed;
    start = lease.start;
    ctx.logs.begin(call.id);
    if (values) {
      values[LD_START] = start;
      recordSpanOf(start === 'warm' ? WARM_PICK : POOL_CLAIM, t0, lease.placedAt, span);
      if (lease.instance.handle) values[LD_SANDBOX] = lease.instance.handle.id;
    }
    const runStart = Date.now();
    const res = await runOnLease(ctx, lease, span, { id: call.id, payload: call.payload, deadline: runStart + fn.timeoutMs });
    const now = Date.now();
    // a literal, not a spread of a base record (two objects and a clone per call); same keys in the same order
    const record: InvocationRecord = {
      id: call.id, tenant: fn.tenant, function: fn.name, version: fn.version, mode: call.mode, status: 'succeeded', attempts: 1, createdAt: call.createdAt,
      start, startedAt: pickedAt, finishedAt: now, durationMs: res.durationMs ?? now - runStart, response: res.response,
    };
    // the outcome goes on 'local dispatch' before deliverLocal ends it
    observe(ctx, fn, start, 'success', pickedAt, span, true, values);
    return { record, written: deliverLocal(ctx, record, span) };
  } catch (e) {
    const err = typed(e);
    const error = errJSON(err)!;
    const record: InvocationRecord = {
      id: call.id, tenant: fn.tenant, function: fn.name, version: fn.version, mode: call.mode, status: 'failed', attempts: 1, createdAt: call.createdAt,
      start: start === 'none' ? undefined : start, startedAt: pickedAt, finishedAt: Date.now(), error,
    };
    observe(ctx, fn, start, err.type, pickedAt, span, true, values);
    return { record, error, written: deliverLocal(ctx, record, span) };
  }
}

/**
 * 'result delivery' on the local path, then the end of 'local dispatch' (`parent`): the caller is answered
 * in-process right away; the final record and the logs go to Redis behind it (one pipelined write, not awaited
 * here). Nothing under it makes spans, so it is recorded from two clock reads, the second shared with the end of
 * 'local dispatch' (no span object while it runs, no closures).
 */
function deliverLocal(ctx: JobContext, record: InvocationRecord, parent: Span): Promise<unknown> {
  if (parent === NOOP_SPAN) return writeLocal(ctx, record, ctx.logs.take(record.id));
  const t = spanTime();
  try {
    return writeLocal(ctx, record, ctx.logs.take(record.id));
  } finally {
    const end = spanTime();
    recordSpanOf(RESULT_DELIVERY, t, end, parent);
    parent.end(end);
  }
}

function writeLocal(ctx: JobContext, record: InvocationRecord, lines: LogLine[]): Promise<unknown> {
  const w = ctx.records
    ? ctx.records.add(record, lines)
    : Promise.all([
        setRecord(ctx.redis, ctx.keys.record(record.tenant, record.id), toStored(record), ctx.retention.recordS),
        appendLogs(ctx.redis, ctx.keys, record.tenant, record.function, lines, ctx.logRetention),
      ]);
  w.catch((e) => ctx.log.warn({ invocationId: record.id, err: String((e as Error)?.message ?? e) }, 'local dispatch: writing the final record failed'));
  return w;
}
