/**
 * @module telemetry
 * The thin tracing seam every service uses. Built on @opentelemetry/api only: with no SDK registered
 * (OTEL_EXPORTER_OTLP_ENDPOINT unset, see services/common/tracing-setup.ts) every call is the API's no-op
 * and costs next to nothing. Attribute names and span names live here and nowhere else.
 *
 * The trace of one invocation (who creates which span):
 *
 * ```
 * http request            gateway, SERVER   (middleware/tracing.ts; honours an incoming traceparent)
 * └─ enqueue              scheduler client, PRODUCER (around queue.add; injectTraceparent() inside it → job data)
 *    ├─ queue wait        scheduler worker: recordSpan(job.timestamp → pick-up time)
 *    └─ scheduler pickup  scheduler worker, CONSUMER (the whole processing of one attempt)
 *       ├─ pool claim     cold: take a pooled sandbox (admission included)   ┐ exactly one
 *       ├─ warm pick      warm: take a warm instance (admission included)     ┘ of the two
 *       ├─ specialise     cold only (runtimes)
 *       │  ├─ cgroup caps
 *       │  ├─ mount
 *       │  └─ runtime load
 *       ├─ run            the handler running in the sandbox
 *       └─ result delivery
 * ```
 */
import {
  context as otContext,
  trace as otTrace,
  isSpanContextValid,
  SpanKind,
  SpanStatusCode,
  TraceFlags,
  ROOT_CONTEXT,
  INVALID_SPAN_CONTEXT,
  type Tracer,
  type Attributes,
  type Context,
  type Span,
  type SpanContext,
} from '@opentelemetry/api';

export { SpanKind };
export type { Attributes, Context, Span };

export const TRACER_NAME = 'fnhost';

/** Attribute keys, namespaced as OpenTelemetry recommends. */
export const Attr = {
  tenant: 'fnhost.tenant',
  function: 'fnhost.function.name',
  version: 'fnhost.function.version',
  invocationId: 'fnhost.invocation.id',
  mode: 'fnhost.invocation.mode',
  /** 'cold' | 'warm' */
  start: 'fnhost.invocation.start',
  /** 'success' or the error type word (FunctionError, OutOfMemory, Timeout, ...) */
  outcome: 'fnhost.invocation.outcome',
  errorType: 'fnhost.error.type',
  memoryMb: 'fnhost.memory.limit_mb',
  peakMemoryBytes: 'fnhost.memory.peak_bytes',
  runtime: 'fnhost.runtime',
  sandboxId: 'fnhost.sandbox.id',
  node: 'fnhost.node.id',
  attempt: 'fnhost.invocation.attempt',
  /** BullMQ job id (equals the invocation id when the client uses it as jobId) */
  jobId: 'messaging.message.id',
  queue: 'messaging.destination.name',
  // HTTP server attributes: OpenTelemetry semantic conventions (stable HTTP semconv, v1.23+).
  httpMethod: 'http.request.method',
  httpRoute: 'http.route',
  httpStatus: 'http.response.status_code',
  urlPath: 'url.path',
} as const;

/** Span names of one invocation's trace (see the tree in this module's header). */
export const SpanName = {
  httpRequest: 'http request',
  enqueue: 'enqueue',
  queueWait: 'queue wait',
  pickup: 'scheduler pickup',
  /** a sync call handed by the gateway straight to a scheduler in the same process (no queue) */
  localDispatch: 'local dispatch',
  poolClaim: 'pool claim',
  warmPick: 'warm pick',
  specialise: 'specialise',
  cgroupCaps: 'cgroup caps',
  mount: 'mount',
  runtimeLoad: 'runtime load',
  run: 'run',
  resultDelivery: 'result delivery',
} as const;

let enabled = false;
let cachedTracer: Tracer | undefined;
/** What withSpan hands its callback when tracing is off: one shared non-recording span, no allocation. */
const NOOP_SPAN: Span = otTrace.wrapSpanContext(INVALID_SPAN_CONTEXT);

/**
 * True once services/common/tracing-setup.ts registered an SDK. Lets hot paths skip building attribute
 * objects when nothing records them.
 */
export function tracingEnabled(): boolean {
  return enabled;
}

/** @internal called by tracing-setup.ts only. */
export function setTracingEnabled(on: boolean): void {
  enabled = on;
  // a (re-)registered provider means new tracers; drop the cached one
  cachedTracer = undefined;
}

export function tracer(): Tracer {
  return (cachedTracer ??= otTrace.getTracer(TRACER_NAME));
}

export interface SpanOptions {
  kind?: SpanKind;
  /** parent context; default the active one. */
  parent?: Context;
}

/**
 * Runs `fn` inside a span named `name` (a child of the active span, or of `opts.parent`); records an
 * exception and sets the error status when `fn` throws, and always ends the span.
 *
 * @example
 * const r = await withSpan('specialise', { [Attr.function]: name }, async (span) => { ... });
 */
export async function withSpan<T>(
  name: string,
  attrs: Attributes,
  fn: (span: Span) => Promise<T>,
  opts?: SpanOptions,
): Promise<T> {
  if (!enabled) return fn(NOOP_SPAN);
  const parent = opts?.parent ?? otContext.active();
  const span = tracer().startSpan(name, { attributes: attrs, kind: opts?.kind }, parent);
  try {
    return await otContext.with(otTrace.setSpan(parent, span), fn, undefined, span);
  } catch (e) {
    failSpan(span, e);
    throw e;
  } finally {
    span.end();
  }
}

/**
 * Marks `span` as failed by `e`: exception event, error status, and the fnhost error type when `e` is a
 * typed error (services/common/errors.ts). Use it for spans you end yourself.
 *
 * @example
 * try { ... } catch (e) { failSpan(span, e); throw e; } finally { span.end(); }
 */
export function failSpan(span: Span, e: unknown): void {
  if (!span.isRecording()) return;
  span.recordException(e instanceof Error ? e : String(e));
  span.setStatus({ code: SpanStatusCode.ERROR, message: (e as Error)?.message });
  if (e && typeof e === 'object' && 'type' in e) span.setAttribute(Attr.errorType, String((e as { type: unknown }).type));
}

/**
 * Starts a span you end yourself (e.g. one spanning callbacks). Pair with `runInSpan` to make it the
 * parent of the work inside.
 *
 * @example
 * const span = startSpan('scheduler pickup', { [Attr.invocationId]: id }, { kind: SpanKind.CONSUMER, parent });
 * try { await runInSpan(span, () => process(job)); } finally { span.end(); }
 */
export function startSpan(name: string, attrs?: Attributes, opts?: SpanOptions & { startTime?: number }): Span {
  return tracer().startSpan(
    name,
    { attributes: attrs, kind: opts?.kind, startTime: opts?.startTime },
    opts?.parent ?? otContext.active(),
  );
}

/** Runs `fn` with `span` as the active span (children created inside it hang under it). */
export function runInSpan<T>(span: Span, fn: () => T): T {
  return otContext.with(otTrace.setSpan(otContext.active(), span), fn);
}

/**
 * Records a span whose start and end are already known (epoch milliseconds), as a child of the active span.
 * For intervals measured elsewhere: the queue wait (BullMQ's `job.timestamp` → pick-up), or steps timed by
 * the sandbox's init and reported afterwards.
 *
 * @example
 * recordSpan(SpanName.queueWait, job.timestamp, Date.now(), { [Attr.tenant]: tenant });
 */
export function recordSpan(name: string, startMs: number, endMs: number, attrs?: Attributes, parent?: Context): void {
  if (!enabled) return;
  const span = tracer().startSpan(name, { attributes: attrs, startTime: startMs }, parent ?? otContext.active());
  span.end(Math.max(endMs, startMs));
}

/** Sets attributes on the active span (no-op when there is none or it is not recording). */
export function setActiveAttributes(attrs: Attributes): void {
  const span = otTrace.getActiveSpan();
  if (span?.isRecording()) span.setAttributes(attrs);
}

// ---- W3C Trace Context (https://www.w3.org/TR/trace-context/#traceparent-header) ----

const TRACEPARENT_RE = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?$/;

/** Parses a `traceparent` header value; undefined when malformed or all-zero (the spec says: ignore it). */
export function parseTraceparent(value: string | undefined | null): SpanContext | undefined {
  if (!value || value.length < 55 || value.length > 512) return undefined;
  const m = TRACEPARENT_RE.exec(value.trim());
  if (!m) return undefined;
  const [, version, traceId, spanId, flags] = m;
  // Version ff is forbidden; version 00 must be exactly 55 characters (future versions may append fields).
  if (version === 'ff' || (version === '00' && value.trim().length !== 55)) return undefined;
  const sc: SpanContext = { traceId, spanId, traceFlags: parseInt(flags, 16) & TraceFlags.SAMPLED, isRemote: true };
  return isSpanContextValid(sc) ? sc : undefined;
}

/** Formats a span context as a version-00 `traceparent` value. */
export function formatTraceparent(sc: SpanContext): string {
  return `00-${sc.traceId}-${sc.spanId}-${(sc.traceFlags & 0xff).toString(16).padStart(2, '0')}`;
}

/**
 * The `traceparent` of the active span, to carry across the queue in job data; undefined when no span is
 * active (tracing off), so nothing is stored.
 *
 * @example
 * await withSpan(SpanName.enqueue, attrs, async () => queue.add('invoke', { ...data, traceparent: injectTraceparent() }));
 */
export function injectTraceparent(ctx: Context = otContext.active()): string | undefined {
  const sc = otTrace.getSpanContext(ctx);
  return sc && isSpanContextValid(sc) ? formatTraceparent(sc) : undefined;
}

/**
 * A context whose parent is the remote span named by `traceparent` (on top of `base`, default the root
 * context: a job's work must not inherit whatever happened to be active in the worker). A malformed or
 * missing value yields `base` unchanged, so the work starts a new trace.
 */
export function contextFromTraceparent(traceparent: string | undefined | null, base: Context = ROOT_CONTEXT): Context {
  const sc = parseTraceparent(traceparent);
  return sc ? otTrace.setSpanContext(base, sc) : base;
}

/**
 * Runs `fn` with the remote parent named by `traceparent` as the active context (the scheduler side of the
 * queue hop). Spans created inside become children of the gateway's `enqueue` span.
 *
 * @example
 * worker = new Worker(q, (job) => withRemoteParent(job.data.traceparent, () => handle(job)), opts);
 */
export function withRemoteParent<T>(traceparent: string | undefined | null, fn: () => T): T {
  if (!enabled) return fn();
  return otContext.with(contextFromTraceparent(traceparent), fn);
}

/** trace_id / span_id of the active span, for log lines; empty when there is none. */
export function activeTraceIds(): { trace_id?: string; span_id?: string } {
  const sc = otTrace.getSpanContext(otContext.active());
  return sc && isSpanContextValid(sc) ? { trace_id: sc.traceId, span_id: sc.spanId } : {};
}
