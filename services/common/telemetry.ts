/**
 * @module telemetry
 * The thin tracing seam every service uses; its types are @opentelemetry/api's (`Span`, `Context`, `SpanKind`).
 * With tracing off (OTEL_EXPORTER_OTLP_ENDPOINT unset, see services/common/tracing-setup.ts) every call is a
 * no-op that costs next to nothing. Attribute names and span names live here and nowhere else.
 *
 * How a span finds its parent — no AsyncLocalStorage by default. On Node 20 an AsyncLocalStorage context
 * manager runs promise hooks on every promise of the process (measured: ~20 µs of the host's CPU per warm
 * invocation before a single span is recorded, about the whole tracing budget). So, in order:
 *   1. `{ parent }` / the `parent` argument, when given (a Span or a Context);
 *   2. the span whose callback is running synchronously (withSpan / runInSpan / withRemoteParent set it for the
 *      synchronous part of their callback: calls made before the callback's first `await` need no plumbing);
 *   3. only with FNHOST_OTEL_CONTEXT=async (tracing-setup.ts registers ALS then): the async context;
 *   4. none: a new trace.
 * So after an `await`, pass the span: `withSpan(name, attrs, fn, { parent: span })`.
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
import { performance } from 'node:perf_hooks';
import { FnSpan, SpanSchema, UnsampledSpan, setUnpublish, type ParentRef, type SpanValues } from './trace-span.ts';

export { SpanKind, SpanSchema };
export type { Attributes, Context, Span, SpanValues };

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
  // completion callbacks ('callback delivery' spans, services/scheduler/callbacks.ts)
  /** 'delivered' | 'retried' | 'failed' */
  callbackOutcome: 'fnhost.callback.outcome',
  /** 1-based POST number of one callback */
  callbackAttempt: 'fnhost.callback.attempt',
  /** the receiver's host name (semconv; never the path or query, which may carry a token) */
  serverAddress: 'server.address',
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
  /** one POST of a completion callback (services/scheduler/callbacks.ts), under the invocation's enqueue span */
  callbackDelivery: 'callback delivery',
} as const;

/**
 * What tracing-setup.ts registers: starts a span (recording, or a non-recording one carrying the sampler's
 * "no" in its flags) under `parent` (undefined = a new trace).
 */
export interface TraceBackend {
  start(name: string, attrs: Attributes | undefined, kind: SpanKind, parent: ParentRef, startMs?: number): Span;
  /** a span of `schema` with its values by position */
  startOf(schema: SpanSchema, vals: SpanValues | undefined, parent: ParentRef, startMs?: number): Span;
  /** an already ended span of `schema` over [startMs, endMs] */
  recordOf(schema: SpanSchema, vals: SpanValues | undefined, parent: ParentRef, startMs: number, endMs: number): void;
}

let backend: TraceBackend | undefined;
/** true when an AsyncLocalStorage context manager is registered (FNHOST_OTEL_CONTEXT=async) */
let alsMode = false;
/**
 * The span whose callback is running synchronously right now (withSpan / runInSpan / withRemoteParent set it
 * around the synchronous part of their callback and restore it after). It costs one assignment, needs no async
 * hooks, and is never wrong: after the first `await` it is simply unset (microtasks run on an empty stack),
 * so a span created there without `{ parent }` starts a new trace instead of joining a stranger's.
 */
let current: Span | undefined;
let cachedTracer: Tracer | undefined;
/** What withSpan hands its callback when tracing is off: one shared non-recording span, no allocation. */
export const NOOP_SPAN: Span = otTrace.wrapSpanContext(INVALID_SPAN_CONTEXT);

/**
 * True once services/common/tracing-setup.ts registered a backend. Lets hot paths skip building attribute
 * objects when nothing records them.
 */
export function tracingEnabled(): boolean {
  return backend !== undefined;
}

/** @internal called by tracing-setup.ts only (undefined = off). */
export function setTracingBackend(b: TraceBackend | undefined, asyncContext = false): void {
  backend = b;
  alsMode = b !== undefined && asyncContext;
  current = undefined;
  // a (re-)registered provider means new tracers; drop the cached one
  cachedTracer = undefined;
}

/** The API tracer of this process (for code that wants the raw @opentelemetry/api). */
export function tracer(): Tracer {
  return (cachedTracer ??= otTrace.getTracer(TRACER_NAME));
}

/**
 * A parent: the span itself (cheapest: what withSpan hands its callback) or an API context holding one
 * (`contextFromTraceparent(...)`; a context without a span means "start a new trace").
 */
export type Parent = Span | Context;

export interface SpanOptions {
  kind?: SpanKind;
  /**
   * Parent span or context. Default: the span whose callback is running synchronously (see `current`), else
   * — only with FNHOST_OTEL_CONTEXT=async — the AsyncLocalStorage context, else none (a new trace). After an
   * `await`, pass it: `withSpan(name, attrs, fn, { parent: span })`.
   */
  parent?: Parent;
}

function isSpan(p: Parent): p is Span {
  return typeof (p as Span).spanContext === 'function';
}

/** The span a new span hangs under when no parent is given (undefined: none). */
export function activeSpan(): Span | undefined {
  return current ?? (alsMode ? otTrace.getSpan(otContext.active()) : undefined);
}

function parentOf(p: Parent | undefined): ParentRef {
  const span = p === undefined ? activeSpan() : isSpan(p) ? p : otTrace.getSpan(p);
  if (!span) return undefined;
  // our own spans: handed over as is (ids as numbers, always valid; no hex, no regex on the hot path)
  if (span instanceof FnSpan || span instanceof UnsampledSpan) return span;
  const sc = span.spanContext();
  return isSpanContextValid(sc) ? sc : undefined;
}

function parentContextOf(p: Parent | undefined): SpanContext | undefined {
  const r = parentOf(p);
  return r instanceof FnSpan || r instanceof UnsampledSpan ? r.spanContext() : r;
}

/** Runs `fn` with `span` as the synchronous current span (and, in async-context mode, the ALS context). */
function enter<T>(span: Span | undefined, fn: () => T, ctx?: Context): T {
  const prev = current;
  current = span;
  try {
    if (!alsMode) return fn();
    return otContext.with(ctx ?? (span ? otTrace.setSpan(otContext.active(), span) : ROOT_CONTEXT), fn);
  } finally {
    current = prev;
  }
}

function asPromise<T>(r: Promise<T> | T): Promise<T> {
  return r instanceof Promise ? r : Promise.resolve(r);
}

/**
 * Runs `fn` inside a span named `name` (a child of `opts.parent`, or of the span whose callback is running
 * synchronously); records an exception and sets the error status when `fn` throws, and always ends the span.
 * Children created inside `fn` AFTER an await need `{ parent: span }`.
 *
 * @example
 * const r = await withSpan('specialise', { [Attr.function]: name }, async (span) => {
 *   await caps();
 *   await withSpan('runtime load', {}, load, { parent: span });
 * });
 */
export function withSpan<T>(
  name: string,
  attrs: Attributes,
  fn: (span: Span) => Promise<T>,
  opts?: SpanOptions,
): Promise<T> {
  if (!backend) {
    try {
      return asPromise(fn(NOOP_SPAN));
    } catch (e) {
      return Promise.reject(e);
    }
  }
  const span = backend.start(name, attrs, opts?.kind ?? SpanKind.INTERNAL, parentOf(opts?.parent));
  let p: Promise<T>;
  const prev = current;
  current = span;
  try {
    p = asPromise(alsMode ? otContext.with(otTrace.setSpan(otContext.active(), span), fn, undefined, span) : fn(span));
  } catch (e) {
    failSpan(span, e);
    span.end();
    return Promise.reject(e);
  } finally {
    current = prev;
  }
  return p.then(
    (v) => {
      span.end();
      return v;
    },
    (e) => {
      failSpan(span, e);
      span.end();
      throw e;
    },
  );
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
 * Ends a span without exporting it, when it turned out to stand for nothing and no span was started under it
 * (a local dispatch that placed nothing: the call takes the queue). Other Span implementations are just ended.
 *
 * @example
 * const placed = runInSpan(span, place);
 * if (!placed) discardSpan(span);
 */
export function discardSpan(span: Span): void {
  if (span instanceof FnSpan) span.discard();
  else span.end();
}

/**
 * Starts a span you end yourself (e.g. one spanning callbacks). Pair with `runInSpan` to make it the
 * parent of the work inside, or pass it as `{ parent }`.
 *
 * @example
 * const span = startSpan('scheduler pickup', { [Attr.invocationId]: id }, { kind: SpanKind.CONSUMER, parent });
 * try { await runInSpan(span, () => process(job)); } finally { span.end(); }
 */
export function startSpan(name: string, attrs?: Attributes, opts?: SpanOptions & { startTime?: number }): Span {
  if (!backend) return NOOP_SPAN;
  return backend.start(name, attrs, opts?.kind ?? SpanKind.INTERNAL, parentOf(opts?.parent), opts?.startTime);
}

/** read once: `performance.timeOrigin` is a getter into C++ */
const TIME_ORIGIN = performance.timeOrigin;
/** below this a time is a `performance.now()` value, at or above it epoch ms (as the OpenTelemetry SDK tells them apart) */
const TIME_ORIGIN_HALF = TIME_ORIGIN / 2;

/**
 * `startSpan` for hot paths: the parent is an argument (a span, or a context — `ROOT_CONTEXT` / a
 * `remoteParent(...)` — for "not the current span"; undefined = the current span), no options object, and the
 * start time may be given (epoch ms, or a `performance.now()` value read anyway).
 *
 * @example
 * const span = startSpanUnder(SpanName.localDispatch, attrs, call.parentSpan ?? remoteParent(call.traceparent));
 * try { ... } finally { span.end(); }
 */
export function startSpanUnder(name: string, attrs: Attributes | undefined, parent: Parent | undefined, kind: SpanKind = SpanKind.INTERNAL, startTime?: number): Span {
  if (!backend) return NOOP_SPAN;
  return backend.start(name, attrs, kind, parentOf(parent), epochMs(startTime));
}

/** a start time as epoch ms: `performance.now()` values are moved onto the epoch, epoch ms and undefined stay. */
function epochMs(t: number | undefined): number | undefined {
  return t === undefined || t >= TIME_ORIGIN_HALF ? t : TIME_ORIGIN + t;
}

/**
 * The current time as span APIs take it (epoch ms with sub-ms resolution): one clock read to share between
 * spans that start or end at the same point (e.g. the end of one and the start of the next).
 */
export function spanTime(): number {
  return TIME_ORIGIN + performance.now();
}

/**
 * Starts the gateway's server span for a request: a child of the caller's `traceparent` when it is valid,
 * else the root of a new trace (never a child of whatever span is current). `startTime`: epoch ms or a
 * `performance.now()` value (default now).
 *
 * @example
 * const span = startServerSpan(SpanName.httpRequest, { [Attr.httpMethod]: 'POST' }, req.headers.traceparent);
 */
export function startServerSpan(name: string, attrs: Attributes | undefined, traceparent: string | undefined | null, startTime?: number): Span {
  if (!backend) return NOOP_SPAN;
  const sc = traceparent ? parseTraceparent(traceparent) : undefined;
  return backend.start(name, attrs, SpanKind.SERVER, sc, epochMs(startTime));
}

/**
 * Runs `fn` with `span` as the current span: spans created synchronously inside `fn` (before its first
 * await) hang under it — e.g. `runInSpan(span, () => instance.invoke(req))` gives the 'run' span its parent.
 * `undefined` = no current span inside `fn` (what `activeSpan()` returned where it was captured).
 *
 * @example
 * const parent = activeSpan();            // capture before the first await…
 * const pooled = await pool.take();
 * return runInSpan(parent, () => exec.specialise(pooled, fn));   // …and hand it on after it
 */
export function runInSpan<T>(span: Span | undefined, fn: () => T): T {
  if (!backend) return fn();
  return enter(span, fn);
}

/**
 * Records a span whose start and end are already known (epoch milliseconds), as a child of `parent` (default
 * the current span). For intervals measured elsewhere: the queue wait (BullMQ's `job.timestamp` → pick-up),
 * or steps timed by the sandbox's init and reported afterwards.
 *
 * @example
 * recordSpan(SpanName.queueWait, job.timestamp, Date.now(), { [Attr.tenant]: tenant }, pickupSpan);
 */
export function recordSpan(name: string, startMs: number, endMs: number, attrs?: Attributes, parent?: Parent): void {
  if (!backend) return;
  const span = backend.start(name, attrs, SpanKind.INTERNAL, parentOf(parent), startMs);
  span.end(Math.max(endMs, startMs));
}

/**
 * `startSpanUnder` for a call site's SpanSchema: the span's attributes are `values`, by the schema's key positions
 * (the caller's array, read when the span ends: fill in later values by plain stores before end()). Hot paths:
 * ending such a span writes its attributes by index with per-key memos kept on the schema (span-records.ts).
 *
 * @example
 * const LOCAL = new SpanSchema(SpanName.localDispatch, SpanKind.INTERNAL, [Attr.tenant, Attr.outcome]);
 * const OUTCOME = LOCAL.slot(Attr.outcome);
 * const values: SpanValues = [fn.tenant, undefined];
 * const span = startSpanOf(LOCAL, values, parentSpan, spanTime());
 * values[OUTCOME] = 'success';
 * span.end();
 */
export function startSpanOf(schema: SpanSchema, values: SpanValues | undefined, parent?: Parent, startTime?: number): Span {
  if (!backend) return NOOP_SPAN;
  return backend.startOf(schema, values, parent instanceof FnSpan ? parent : parentOf(parent), epochMs(startTime));
}

/**
 * `startServerSpan` for a SpanSchema (of kind SERVER): under the caller's `traceparent` when it is valid, else the
 * root of a new trace.
 *
 * @example
 * const span = startServerSpanOf(HTTP_REQUEST, [method, path, undefined, undefined], req.headers.traceparent, t0);
 */
export function startServerSpanOf(schema: SpanSchema, values: SpanValues | undefined, traceparent: string | undefined | null, startTime?: number): Span {
  if (!backend) return NOOP_SPAN;
  return backend.startOf(schema, values, traceparent ? parseTraceparent(traceparent) : undefined, epochMs(startTime));
}

/**
 * `recordSpan` for a SpanSchema: a span over a known interval (epoch ms; end clamped to start) under `parent`
 * (default the current span). Under one of our spans it costs no span object (tracing-setup.ts `recordOf`).
 *
 * @example
 * recordSpanOf(WARM_PICK, t0, lease.placedAt, span);
 */
export function recordSpanOf(schema: SpanSchema, startMs: number, endMs: number, parent?: Parent, values?: SpanValues): void {
  if (!backend) return;
  backend.recordOf(schema, values, parent instanceof FnSpan ? parent : parentOf(parent), startMs, endMs);
}

/** Sets attributes on the current span (no-op when there is none or it is not recording). */
export function setActiveAttributes(attrs: Attributes): void {
  if (!backend) return;
  const span = activeSpan();
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
 * The `traceparent` naming `of` (a span or a context; default the current span), to carry across the queue
 * in job data; undefined when there is none (tracing off), so nothing is stored.
 *
 * @example
 * await withSpan(SpanName.enqueue, attrs, async (span) => queue.add('invoke', { ...data, traceparent: injectTraceparent(span) }));
 */
export function injectTraceparent(of?: Parent): string | undefined {
  if (!backend) return undefined;
  const r = parentOf(of);
  if (r instanceof UnsampledSpan) return formatTraceparent(r.spanContext());
  if (!(r instanceof FnSpan)) return r ? formatTraceparent(r) : undefined;
  const tp = r.traceparent();
  if (!r.published && !r.ended) {
    if (localSpans.size >= LOCAL_SPANS_MAX) {
      // only spans that are never ended get here (a leak elsewhere): the oldest makes room (Map keeps insertion order)
      const oldest = localSpans.values().next().value!;
      localSpans.delete(oldest.traceparent());
      oldest.published = false;
    }
    localSpans.set(tp, r);
    r.published = true;
  }
  return tp;
}

/**
 * The OPEN spans whose traceparent was handed out, by that traceparent: when it comes back in this same process
 * while the span is still open (the gateway hands a call to the co-located scheduler inside its 'http request'),
 * `withRemoteParent` takes the span itself instead of parsing and re-validating the string. A span leaves the map
 * when it ends (FnSpan.end → unpublish): holding ended spans for later look-ups kept ~600 KB of them alive at every
 * young-generation GC (each then copied and promoted: scavenges 0.3 → 2.5–3.7 ms, measured with
 * --trace-gc-nvp at ~3,400 invocations/s). A traceparent whose span has ended (a job picked up after its
 * 'enqueue' span closed) is parsed: same trace and parent, marked remote. Bounded: 256 ≫ the spans open at once.
 */
const localSpans = new Map<string, FnSpan>();
const LOCAL_SPANS_MAX = 256;
setUnpublish((span) => {
  localSpans.delete(span.traceparent());
  span.published = false;
});

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
 * Runs `fn` with the remote parent named by `traceparent` as the current parent (the scheduler side of the
 * queue hop): spans created synchronously inside `fn` become children of the gateway's `enqueue` span. A
 * missing or malformed value makes them roots of a new trace, never children of whatever ran before.
 *
 * @example
 * worker = new Worker(q, (job) => withRemoteParent(job.data.traceparent, () => handle(job)), opts);
 */
export function withRemoteParent<T>(traceparent: string | undefined | null, fn: () => T): T {
  if (!backend) return fn();
  const local = traceparent ? localSpans.get(traceparent) : undefined;
  if (local) return enter(local, fn);
  const sc = parseTraceparent(traceparent);
  const span = sc ? otTrace.wrapSpanContext(sc) : undefined;
  return enter(span, fn, alsMode ? (sc ? otTrace.setSpanContext(ROOT_CONTEXT, sc) : ROOT_CONTEXT) : undefined);
}

/**
 * The parent named by `traceparent`, to pass as `{ parent }` / to `startSpanUnder`: the open span of this process
 * that handed it out (no parse), else the remote span context it names, else `ROOT_CONTEXT` (missing or
 * malformed: a new trace — never the current span). Same rules as `withRemoteParent`, without a callback.
 *
 * @example
 * const span = startSpanUnder(SpanName.pickup, attrs, remoteParent(job.data.traceparent), SpanKind.CONSUMER);
 */
export function remoteParent(traceparent: string | undefined | null): Parent {
  if (!backend || !traceparent) return ROOT_CONTEXT;
  return localSpans.get(traceparent) ?? contextFromTraceparent(traceparent);
}

/** trace_id / span_id of the current span, for log lines; empty when there is none. */
export function activeTraceIds(): { trace_id?: string; span_id?: string } {
  if (!backend) return {};
  const sc = parentContextOf(undefined);
  return sc ? { trace_id: sc.traceId, span_id: sc.spanId } : {};
}
