/**
 * @module tracing-setup
 * Registers the OpenTelemetry SDK for this process, only when the standard OTLP env vars ask for it:
 * `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is) or `OTEL_EXPORTER_OTLP_ENDPOINT` (+ `/v1/traces`).
 * Otherwise nothing is loaded and services/common/telemetry.ts stays on the API's no-ops.
 *
 * Pipeline: BasicTracerProvider (sampler from OTEL_TRACES_SAMPLER, default parentbased_always_on) →
 * BatchSpanProcessor (OTEL_BSP_* env) → OTLPTraceExporter (OTLP/HTTP, JSON body; headers, timeout and
 * compression from the OTEL_EXPORTER_OTLP_* env; on the event loop, or on a worker thread with
 * FNHOST_OTEL_EXPORT_THREAD=1). Context travels through an AsyncLocalStorage context
 * manager (below) and W3C `traceparent` (telemetry.ts helpers; also registered as the global propagator).
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
import { Worker } from 'node:worker_threads';
import { context, propagation, trace, diag, ROOT_CONTEXT, type Attributes, type Context, type ContextManager } from '@opentelemetry/api';
import type { ExportResult } from '@opentelemetry/core';
import type { ReadableSpan, SpanExporter } from '@opentelemetry/sdk-trace-base';
import { setTracingEnabled, TRACER_NAME } from './telemetry.ts';

/** A finished span in the compact form the export thread rebuilds (layout documented in otlp-export-worker.mjs). */
type WireSpan = unknown[];

function toWire(s: ReadableSpan): WireSpan {
  const ctx = s.spanContext();
  const p = s.parentSpanContext;
  return [
    ctx.traceId,
    ctx.spanId,
    ctx.traceFlags,
    p?.spanId ?? '',
    p?.isRemote ?? false,
    s.name,
    s.kind,
    s.startTime,
    s.endTime,
    s.attributes,
    s.droppedAttributesCount,
    s.status.code,
    s.status.message,
    s.events.length ? s.events : 0,
    s.links.length ? s.links.map((l) => ({ ...l, context: { ...l.context, traceState: undefined } })) : 0,
    s.droppedEventsCount,
    s.droppedLinksCount,
  ];
}

/**
 * A SpanExporter that hands batches to a worker thread running the stock OTLPTraceExporter (opt-in, see
 * `TracingOptions.exportThread`). OTLP JSON serialisation costs ~7 µs per span; the hand-off (structured clone)
 * ~3.5 µs on the event loop. Exports are acknowledged by the thread, so the BatchSpanProcessor's back-pressure
 * still holds.
 */
export class ThreadSpanExporter implements SpanExporter {
  private readonly worker: Worker;
  private nextId = 1;
  private readonly pending = new Map<number, (r: { code: number; error?: string }) => void>();
  private closed = false;

  constructor(resource: Attributes) {
    this.worker = new Worker(new URL('./otlp-export-worker.mjs', import.meta.url), {
      workerData: { resource, scope: { name: TRACER_NAME } },
      // the worker is plain JS: no loader needed, and none inherited (tsx / vitest hooks would only slow it)
      execArgv: [],
      stdout: false,
      stderr: false,
    });
    this.worker.on('message', (m: { id: number; code: number; error?: string }) => {
      const done = this.pending.get(m.id);
      this.pending.delete(m.id);
      done?.(m);
      if (this.pending.size === 0) this.worker.unref();
    });
    this.worker.on('error', (e) => {
      diag.error('fnhost: OTLP export thread failed', e);
      this.failAll(String(e));
    });
    this.worker.on('exit', () => this.failAll('export thread exited'));
    this.worker.unref();
  }

  private failAll(error: string): void {
    this.closed = true;
    for (const done of this.pending.values()) done({ code: 1, error });
    this.pending.clear();
  }

  private call(msg: Record<string, unknown>): Promise<{ code: number; error?: string }> {
    if (this.closed) return Promise.resolve({ code: 1, error: 'export thread closed' });
    const id = this.nextId++;
    return new Promise((resolve) => {
      this.pending.set(id, resolve);
      // keep the process alive while an export is in flight (shutdown waits for it anyway)
      this.worker.ref();
      this.worker.postMessage({ ...msg, id });
    });
  }

  export(spans: ReadableSpan[], resultCallback: (result: ExportResult) => void): void {
    const wire = new Array<WireSpan>(spans.length);
    for (let i = 0; i < spans.length; i++) wire[i] = toWire(spans[i]);
    this.call({ op: 'export', spans: wire }).then((r) =>
      resultCallback(r.code === 0 ? { code: 0 } : { code: 1, error: new Error(r.error ?? 'export failed') }),
    );
  }

  async forceFlush(): Promise<void> {
    await this.call({ op: 'flush' });
  }

  async shutdown(): Promise<void> {
    if (this.closed) return;
    await this.call({ op: 'shutdown' });
    this.closed = true;
    await this.worker.terminate();
  }
}

/**
 * The smallest ContextManager on AsyncLocalStorage (what @opentelemetry/context-async-hooks'
 * AsyncLocalStorageContextManager does, minus EventEmitter patching, which no fnhost code relies on).
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

export interface TracingOptions {
  /** `service.name` of the resource (OTEL_SERVICE_NAME wins when set). Default 'fnhost'. */
  serviceName?: string;
  /** environment to read (default process.env). */
  env?: NodeJS.ProcessEnv;
  /** use this exporter instead of OTLP/HTTP (tests: InMemorySpanExporter); enables tracing regardless of env. */
  exporter?: SpanExporter;
  /** BatchSpanProcessor's delay between exports, ms (default OTEL_BSP_SCHEDULE_DELAY or the SDK's 5000). */
  scheduledDelayMillis?: number;
  /**
   * Serialise and send spans on a worker thread (default false; FNHOST_OTEL_EXPORT_THREAD=1 turns it on).
   * Measured on the 2-core bench machine under c32 load: handing spans to a thread (structured clone, then the
   * same serialisation there) costs more CPU in total than serialising on the event loop, and with every core
   * busy that total is what limits throughput. On a host with idle cores the thread takes ~7 µs/span off the
   * event loop.
   */
  exportThread?: boolean;
}

export interface TracingHandle {
  /** false when no endpoint was configured: nothing registered, every span is a no-op. */
  readonly enabled: boolean;
  /** exports every finished span now. */
  forceFlush(): Promise<void>;
  /** flushes, stops exporting and unregisters the globals (a later initTracing registers afresh). */
  shutdown(): Promise<void>;
}

let current: Promise<TracingHandle> | undefined;

/** BatchSpanProcessor queue when OTEL_BSP_MAX_QUEUE_SIZE is unset (see where it is used). */
const DEFAULT_MAX_QUEUE_SIZE = 8192;

/** True when the env asks for OTLP trace export (and OTEL_SDK_DISABLED is not "true"). */
export function tracingRequested(env: NodeJS.ProcessEnv = process.env): boolean {
  if ((env.OTEL_SDK_DISABLED ?? '').trim().toLowerCase() === 'true') return false;
  if ((env.OTEL_TRACES_EXPORTER ?? '').trim().toLowerCase() === 'none') return false;
  return Boolean(env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT || env.OTEL_EXPORTER_OTLP_ENDPOINT);
}

/**
 * Registers the SDK when the env (or `opts.exporter`) asks for it; otherwise returns a disabled handle at
 * the cost of one env lookup. Idempotent: a second call returns the first call's handle.
 */
export function initTracing(opts: TracingOptions = {}): Promise<TracingHandle> {
  current ??= register(opts);
  return current;
}

async function register(opts: TracingOptions): Promise<TracingHandle> {
  const env = opts.env ?? process.env;
  if (!opts.exporter && !tracingRequested(env)) {
    return {
      enabled: false,
      forceFlush: async () => {},
      shutdown: async () => {
        current = undefined;
      },
    };
  }
  // Loaded lazily: a host without tracing never pays for parsing the SDK and the exporter.
  const [{ BasicTracerProvider, BatchSpanProcessor }, { resourceFromAttributes }, { W3CTraceContextPropagator }] = await Promise.all([
    import('@opentelemetry/sdk-trace-base'),
    import('@opentelemetry/resources'),
    import('@opentelemetry/core'),
  ]);
  const resource = resourceFromAttributes({
    'service.name': env.OTEL_SERVICE_NAME || opts.serviceName || 'fnhost',
    'process.pid': process.pid,
  });
  let exporter = opts.exporter;
  if (!exporter) {
    if (opts.exportThread ?? env.FNHOST_OTEL_EXPORT_THREAD === '1') {
      exporter = new ThreadSpanExporter(resource.attributes);
    } else {
      const { OTLPTraceExporter } = await import('@opentelemetry/exporter-trace-otlp-http');
      // No url: the exporter resolves OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT itself,
      // exactly as the spec says (signal path appended only to the generic one).
      exporter = new OTLPTraceExporter();
    }
  }
  const processor = new BatchSpanProcessor(exporter, {
    scheduledDelayMillis: opts.scheduledDelayMillis,
    // The SDK exports one batch at a time and drops spans once its queue is full. At ~1,000 warm invocations/s
    // × 8 spans its default 2,048 fills in ~250 ms — less than one export round trip on a saturated 2-core host
    // (the c32 bench lost ~20 % of spans, i.e. broken traces). 8,192 ≈ 1 s of spans at that rate, ~8 MB.
    maxQueueSize: env.OTEL_BSP_MAX_QUEUE_SIZE ? undefined : DEFAULT_MAX_QUEUE_SIZE,
  });
  const provider = new BasicTracerProvider({ resource, spanProcessors: [processor] });
  const cm = new AlsContextManager();
  if (!context.setGlobalContextManager(cm)) diag.warn('fnhost: a context manager was already registered');
  trace.setGlobalTracerProvider(provider);
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  setTracingEnabled(true);

  return {
    enabled: true,
    forceFlush: () => provider.forceFlush(),
    shutdown: async () => {
      setTracingEnabled(false);
      try {
        await provider.shutdown();
      } finally {
        trace.disable();
        context.disable();
        propagation.disable();
        current = undefined;
      }
    },
  };
}

/** Shuts down whatever `initTracing` registered (no-op when nothing is). */
export async function shutdownTracing(): Promise<void> {
  const h = current;
  if (h) await (await h).shutdown();
}
