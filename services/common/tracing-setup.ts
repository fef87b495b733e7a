/**
 * @module tracing-setup
 * Turns tracing on for this process, only when the standard OTLP env vars ask for it:
 * `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is) or `OTEL_EXPORTER_OTLP_ENDPOINT` (+ `/v1/traces`), unless
 * `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`. Otherwise nothing is registered and
 * services/common/telemetry.ts stays on its no-ops (no SDK, no AsyncLocalStorage, no timers).
 *
 * Pipeline (in-process):
 *   telemetry.ts → sampler (OTEL_TRACES_SAMPLER[_ARG], default parentbased_always_on)
 *     → FnSpan (trace-span.ts: implements @opentelemetry/api's Span)
 *     → on end(): into the current batch as a fixed-layout record (span-records.ts), per OTEL_BSP_* batching,
 *       bounded queue, drops counted; the sealed batch's buffers are moved (not copied) to an export thread that
 *       encodes the OTLP protobuf (otlp-records.mjs) and POSTs it on a kept-alive connection (trace-export.ts;
 *       headers, timeout, gzip from OTEL_EXPORTER_OTLP_[TRACES_]*). Without the thread (FNHOST_OTEL_EXPORT_THREAD=0),
 *       with http/json (OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL) or FNHOST_OTEL_ENCODE=loop, spans are encoded on the
 *       loop as they end (otlp-encode.ts) and only the POST leaves it (or not).
 *
 * Why not the stock SDK (BasicTracerProvider + BatchSpanProcessor + OTLPTraceExporter): measured on this
 * 2-core box it cost ~88 µs of host CPU per warm invocation (7 spans) plus ~38 µs in the collector decoding
 * OTLP JSON — the gateway bench lost ~30 % throughput. The budget once the untraced path is at ~4,000 rps is
 * ≈ 20–25 µs per invocation all in. @opentelemetry/api stays the interface: spans are API `Span`s, the
 * process's global TracerProvider is registered (so any library using the API lands in the same pipeline),
 * W3C `traceparent` is the propagation format, and an SDK `SpanExporter` can still be plugged in (`exporter`).
 *
 * Context: explicit parents by default (see telemetry.ts). `FNHOST_OTEL_CONTEXT=async` also registers an
 * AsyncLocalStorage context manager, for code that relies on implicit propagation across awaits (costs the
 * promise hooks on every promise of the process).
 *
 * Call once per process from the composition root (`fnhost start`, a scheduler node), before serving;
 * repeated calls return the same handle. `shutdown()` flushes what is buffered.
 *
 * @example
 * const tracing = await initTracing({ serviceName: 'fnhost' });
 * ...
 * await tracing.shutdown();
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import {
  context,
  diag,
  propagation,
  trace,
  ROOT_CONTEXT,
  SpanKind,
  TraceFlags,
  type Attributes,
  type Context,
  type ContextManager,
  type Span,
  type SpanContext,
  type SpanOptions,
  type Tracer,
  type TracerProvider,
} from '@opentelemetry/api';
import type { ExportResult } from '@opentelemetry/core';
import type { ReadableSpan, SpanExporter } from '@opentelemetry/sdk-trace-base';
import { metrics } from './metrics.ts';
import { contextFromTraceparent, formatTraceparent, setTracingBackend, TRACER_NAME, type TraceBackend } from './telemetry.ts';
import { OtlpHttpExporter, otlpConfigFromEnv, type ExportStats } from './trace-export.ts';
import { FnSpan, TraceIdWords, UnsampledSpan, newTraceIdWords, nowMs, samplerFromEnv, type ParentRef, type Sampler, type SpanSchema, type SpanSink, type SpanValues } from './trace-span.ts';

/**
 * The smallest ContextManager on AsyncLocalStorage (what @opentelemetry/context-async-hooks'
 * AsyncLocalStorageContextManager does, minus EventEmitter patching, which no fnhost code relies on).
 * Registered only with FNHOST_OTEL_CONTEXT=async.
 */
export class AlsContextManager implements ContextManager {
  private readonly als = new AsyncLocalStorage<Context>();

  active(): Context {
    return this.als.getStore() ?? ROOT_CONTEXT;
  }

  with<A extends unknown[], F extends (...args: A) => ReturnType<F>>(
    ctx: Context,
    fn: F,
    thisArg?: ThisParameterType<F>,
    ...args: A
  ): ReturnType<F> {
    const cb = thisArg == null ? fn : (fn.bind(thisArg) as F);
    return this.als.run(ctx, cb, ...args);
  }

  bind<T>(ctx: Context, target: T): T {
    if (typeof target !== 'function') return target;
    const self = this;
    const fn = target as unknown as (...a: unknown[]) => unknown;
    return function bound(this: unknown, ...args: unknown[]) {
      return self.with(ctx, () => fn.apply(this, args));
    } as unknown as T;
  }

  enable(): this {
    return this;
  }

  disable(): this {
    this.als.disable();
    return this;
  }
}

/** Spans → an SDK SpanExporter (tests: InMemorySpanExporter), batched like the BatchSpanProcessor. */
class SdkExporterSink implements SpanSink {
  private batch: FnSpan[] = [];
  private timer: NodeJS.Timeout | undefined;
  private inFlight: Promise<void>[] = [];

  constructor(
    private readonly exporter: SpanExporter,
    private readonly delayMs: number,
  ) {}

  onEnd(span: FnSpan): void {
    this.batch.push(span);
    if (this.batch.length >= 512) this.flushBatch();
    else if (!this.timer) {
      this.timer = setTimeout(() => this.flushBatch(), this.delayMs);
      this.timer.unref();
    }
  }

  private flushBatch(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (!this.batch.length) return;
    const spans = this.batch as unknown as ReadableSpan[];
    this.batch = [];
    const p = new Promise<void>((resolve) => this.exporter.export(spans, (_r: ExportResult) => resolve()));
    this.inFlight.push(p);
    void p.then(() => (this.inFlight = this.inFlight.filter((x) => x !== p)));
  }

  async forceFlush(): Promise<void> {
    this.flushBatch();
    await Promise.all(this.inFlight);
    await this.exporter.forceFlush?.();
  }

  async shutdown(): Promise<void> {
    await this.forceFlush();
    await this.exporter.shutdown();
  }
}

/** Starts spans: the sampler's decision, then a recording FnSpan or a non-recording carrier of the decision. */
class Backend implements TraceBackend {
  /** reused by `recordOf` for spans of a known interval (see there); undefined when the sink keeps span objects */
  private readonly scratch: FnSpan | undefined;

  /** `retains`: the sink keeps the span objects it gets (an SDK exporter's batch), so none may be reused */
  constructor(
    private readonly sink: SpanSink,
    private readonly sampler: Sampler,
    retains: boolean,
  ) {
    this.scratch = retains ? undefined : new FnSpan(sink, '', SpanKind.INTERNAL, new TraceIdWords(0, 0, 0, 1), undefined, undefined, 0, undefined, undefined);
  }

  startOf(schema: SpanSchema, vals: SpanValues | undefined, parent: ParentRef, startMs?: number): Span {
    return this.start(schema.name, undefined, schema.kind, parent, startMs, schema, vals);
  }

  /**
   * A span whose interval is known, under `parent`. Under a span of ours (a warm call's 'warm pick' and 'result
   * delivery') nothing is allocated: the sink takes it without a span object (onEndChild: the OTLP exporter writing
   * records), or the one scratch span is filled in and handed to the sink, which copies what it needs in onEnd
   * (the exporter encoding on the loop) and keeps no reference.
   */
  recordOf(schema: SpanSchema, vals: SpanValues | undefined, parent: ParentRef, startMs: number, endMs: number): void {
    const s = this.scratch;
    if (s !== undefined && parent instanceof FnSpan) {
      if (!this.sampler.sample(parent.tid, true)) return;
      if (this.sink.onEndChild?.(parent, schema, vals, startMs, endMs)) return;
      s.reinitEnded(parent.tid, parent, schema, vals, startMs, endMs);
      this.sink.onEnd(s);
      return;
    }
    this.start(schema.name, undefined, schema.kind, parent, startMs, schema, vals).end(endMs);
  }

  start(name: string, attrs: SpanOptions['attributes'], kind: SpanKind, parent: ParentRef, startMs?: number, schema?: SpanSchema, vals?: SpanValues): Span {
    let tid: TraceIdWords;
    let parentSampled: boolean | undefined;
    if (parent instanceof FnSpan) {
      tid = parent.tid;
      parentSampled = true;
    } else if (parent instanceof UnsampledSpan) {
      tid = parent.tid;
      parentSampled = false;
    } else if (parent) {
      tid = TraceIdWords.fromHex(parent.traceId);
      parentSampled = (parent.traceFlags & TraceFlags.SAMPLED) === TraceFlags.SAMPLED;
    } else {
      tid = newTraceIdWords();
    }
    // not recorded, but its context (sampled=0) still propagates, so downstream parent-based samplers agree
    if (!this.sampler.sample(tid, parentSampled)) return new UnsampledSpan(tid);
    return new FnSpan(this.sink, name, kind, tid, parent, attrs, startMs ?? nowMs(), schema, vals);
  }
}

function msOf(t: SpanOptions['startTime']): number | undefined {
  if (t === undefined) return undefined;
  if (typeof t === 'number') return t < performance.timeOrigin / 2 ? performance.timeOrigin + t : t;
  if (t instanceof Date) return t.getTime();
  return t[0] * 1e3 + t[1] / 1e6;
}

/** The API-facing tracer (third-party code calling trace.getTracer(...)); fnhost's own code goes through telemetry.ts. */
class ApiTracer implements Tracer {
  constructor(private readonly backend: Backend) {}

  startSpan(name: string, options: SpanOptions = {}, ctx: Context = context.active()): Span {
    const ps = options.root ? undefined : trace.getSpan(ctx);
    const parent = ps instanceof FnSpan || ps instanceof UnsampledSpan ? ps : ps && trace.isSpanContextValid(ps.spanContext()) ? ps.spanContext() : undefined;
    const span = this.backend.start(name, options.attributes, options.kind ?? SpanKind.INTERNAL, parent, msOf(options.startTime));
    if (options.links?.length) span.addLinks(options.links);
    return span;
  }

  startActiveSpan<F extends (span: Span) => unknown>(name: string, ...rest: unknown[]): ReturnType<F> {
    const fn = rest[rest.length - 1] as F;
    const opts = (rest.length > 1 ? rest[0] : undefined) as SpanOptions | undefined;
    const ctx = (rest.length > 2 ? rest[1] : undefined) as Context | undefined;
    const span = this.startSpan(name, opts, ctx ?? context.active());
    return context.with(trace.setSpan(ctx ?? context.active(), span), () => fn(span)) as ReturnType<F>;
  }
}

export interface TracingOptions {
  /** `service.name` of the resource (OTEL_SERVICE_NAME wins when set). Default 'fnhost'. */
  serviceName?: string;
  /**
   * More resource attributes: what is the same for every span of this process (e.g. `{ [Attr.node]: nodeId }`)
   * belongs here, sent once per export request instead of on every span. They win over
   * OTEL_RESOURCE_ATTRIBUTES for the same key.
   */
  resource?: Attributes;
  /** environment to read (default process.env). */
  env?: NodeJS.ProcessEnv;
  /** use this SDK exporter instead of OTLP/HTTP (tests: InMemorySpanExporter); enables tracing regardless of env. */
  exporter?: SpanExporter;
  /** delay between exports, ms (default OTEL_BSP_SCHEDULE_DELAY or 5000). */
  scheduledDelayMillis?: number;
  /** 'explicit' (default; FNHOST_OTEL_CONTEXT) or 'async': also register an AsyncLocalStorage context manager. */
  context?: 'explicit' | 'async';
}

export interface TracingHandle {
  /** false when no endpoint was configured: nothing registered, every span is a no-op. */
  readonly enabled: boolean;
  /** exports every finished span now. */
  forceFlush(): Promise<void>;
  /** flushes, stops exporting and unregisters the globals (a later initTracing registers afresh). */
  shutdown(): Promise<void>;
  /** OTLP export counters (all zero with a plugged-in SDK exporter or when disabled). */
  stats(): ExportStats;
}

let current: Promise<TracingHandle> | undefined;

/** True when the env asks for OTLP trace export (and OTEL_SDK_DISABLED is not "true"). */
export function tracingRequested(env: NodeJS.ProcessEnv = process.env): boolean {
  if ((env.OTEL_SDK_DISABLED ?? '').trim().toLowerCase() === 'true') return false;
  if ((env.OTEL_TRACES_EXPORTER ?? '').trim().toLowerCase() === 'none') return false;
  return Boolean((env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT ?? '').trim() || (env.OTEL_EXPORTER_OTLP_ENDPOINT ?? '').trim());
}

/**
 * Registers tracing when the env (or `opts.exporter`) asks for it; otherwise returns a disabled handle at
 * the cost of one env lookup. Idempotent: a second call returns the first call's handle.
 */
export function initTracing(opts: TracingOptions = {}): Promise<TracingHandle> {
  current ??= Promise.resolve(register(opts));
  return current;
}

const ZERO_STATS: ExportStats = { exported: 0, dropped: 0, failed: 0, requests: 0 };

function register(opts: TracingOptions): TracingHandle {
  const env = opts.env ?? process.env;
  if (!opts.exporter && !tracingRequested(env)) {
    return {
      enabled: false,
      forceFlush: async () => {},
      shutdown: async () => {
        current = undefined;
      },
      stats: () => ({ ...ZERO_STATS }),
    };
  }
  const resource = resourceOf(env, opts);
  let sink: SpanSink & { forceFlush(): Promise<void>; shutdown(): Promise<void> };
  let otlp: OtlpHttpExporter | undefined;
  if (opts.exporter) {
    sink = new SdkExporterSink(opts.exporter, opts.scheduledDelayMillis ?? (Number(env.OTEL_BSP_SCHEDULE_DELAY) || 5000));
  } else {
    const cfg = otlpConfigFromEnv(env, resource, TRACER_NAME);
    if (opts.scheduledDelayMillis !== undefined) cfg.scheduledDelayMillis = opts.scheduledDelayMillis;
    otlp = new OtlpHttpExporter(cfg, {
      onDropped: (n) => metrics.traceSpansDropped(n),
      onFailed: (n) => metrics.traceExportFailed(n),
    });
    sink = otlp;
  }
  const backend = new Backend(sink, samplerFromEnv(env), sink instanceof SdkExporterSink);
  const asyncContext = (opts.context ?? env.FNHOST_OTEL_CONTEXT) === 'async';
  if (asyncContext && !context.setGlobalContextManager(new AlsContextManager())) diag.warn('fnhost: a context manager was already registered');
  const apiTracer = new ApiTracer(backend);
  const provider: TracerProvider = { getTracer: () => apiTracer };
  trace.setGlobalTracerProvider(provider);
  // a W3C propagator on the API, for libraries that inject/extract through it (fnhost's code uses telemetry.ts)
  propagation.setGlobalPropagator({
    inject(ctx, carrier, setter) {
      const sc = trace.getSpanContext(ctx);
      if (sc && trace.isSpanContextValid(sc)) setter.set(carrier, 'traceparent', formatTraceparent(sc));
    },
    extract(ctx, carrier, getter) {
      const v = getter.get(carrier, 'traceparent');
      return contextFromTraceparent(Array.isArray(v) ? v[0] : v, ctx);
    },
    fields: () => ['traceparent'],
  });
  setTracingBackend(backend, asyncContext);

  return {
    enabled: true,
    forceFlush: () => sink.forceFlush(),
    shutdown: async () => {
      setTracingBackend(undefined);
      try {
        await sink.shutdown();
      } finally {
        trace.disable();
        if (asyncContext) context.disable();
        propagation.disable();
        current = undefined;
      }
    },
    stats: () => (otlp ? { ...otlp.stats } : { ...ZERO_STATS }),
  };
}

/**
 * The process's resource: `process.pid`, OTEL_RESOURCE_ATTRIBUTES ("k1=v1,k2=v2", values URL-encoded, per the
 * spec's SDK configuration), `opts.resource`, and `service.name` = OTEL_SERVICE_NAME, else the one in
 * OTEL_RESOURCE_ATTRIBUTES, else `opts.serviceName`, else 'fnhost' (the spec's precedence for the service name).
 */
export function resourceOf(env: NodeJS.ProcessEnv, opts: Pick<TracingOptions, 'serviceName' | 'resource'> = {}): Attributes {
  const fromEnv: Attributes = {};
  for (const part of (env.OTEL_RESOURCE_ATTRIBUTES ?? '').split(',')) {
    const i = part.indexOf('=');
    if (i <= 0) continue;
    try {
      fromEnv[decodeURIComponent(part.slice(0, i).trim())] = decodeURIComponent(part.slice(i + 1).trim());
    } catch {
      diag.warn('fnhost: ignoring a malformed OTEL_RESOURCE_ATTRIBUTES entry');
    }
  }
  const serviceName = (env.OTEL_SERVICE_NAME ?? '').trim() || (fromEnv['service.name'] as string | undefined) || opts.serviceName || 'fnhost';
  return { 'process.pid': process.pid, ...fromEnv, ...opts.resource, 'service.name': serviceName };
}

/** Shuts down whatever `initTracing` registered (no-op when nothing is). */
export async function shutdownTracing(): Promise<void> {
  const h = current;
  if (h) await (await h).shutdown();
}
