/**
 * @module metrics
 * Every Prometheus metric of fnhost, defined once (prom-client), with small recording functions the gateway
 * and the scheduler call, and `metricsText()` for `GET /metrics`.
 *
 * A process's /metrics shows what that process did: the gateway's HTTP metrics where the gateway runs, the
 * scheduler's invocation/pool/memory metrics where a scheduler runs (`fnhost start` runs both in one process).
 *
 * Labels stay bounded: no invocation, sandbox or job ids, ever. Tenant and function names are bounded by
 * what is deployed, and additionally capped per metrics instance (`maxSeries`): past the cap, new values are
 * folded into `_other` so a tenant deploying thousands of functions cannot blow up the series count.
 *
 * @example
 * import { metrics } from '../common/metrics.ts';
 * metrics.invocation({ tenant, function: name, start: 'warm', outcome: 'success', durationMs: 12 });
 * app.get('/metrics', async (c) => c.body(await metrics.text(), 200, { 'content-type': metrics.contentType }));
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { ERROR_STATUS } from './errors.ts';
import { SeriesCounter, SeriesHistogram, type CounterSeries, type HistogramSeries } from './metric-series.ts';

/** 'success' or a typed error word of services/common/errors.ts; anything else is recorded as 'Internal'. */
export type Outcome = 'success' | keyof typeof ERROR_STATUS;
/** 'none' when the invocation failed before it had an instance (e.g. TooManyRequests at admission). */
export type StartLabel = 'cold' | 'warm' | 'none';

export interface InvocationObservation {
  tenant: string;
  function: string;
  start: StartLabel;
  outcome: Outcome | string;
  /** from pick-up to result (the scheduler's view); seconds in the histogram. */
  durationMs: number;
}

/** State the scheduler reports at scrape time (see `addCollector`). */
export interface SchedulerSnapshot {
  /** ready pooled sandboxes per pool kind */
  poolSize?: Record<string, number>;
  /** warm instances per function */
  warmInstances?: Array<{ tenant: string; function: string; count: number }>;
  memoryAdmittedBytes?: number;
  memoryCapacityBytes?: number;
  /** queued invocations per tenant */
  queueDepth?: Record<string, number>;
  /** completion callbacks waiting in the outbox (HLEN; cluster-wide, services/scheduler/callbacks.ts) */
  callbackOutbox?: number;
  /** failed completion callbacks listed per tenant (ZCARD of each list; cluster-wide) */
  failedCallbacks?: Record<string, number>;
}

export interface MetricsOptions {
  /** also export prom-client's process_* / nodejs_* metrics (default true). */
  defaultMetrics?: boolean;
  /** distinct values kept per label kind (tenant, function, pool kind) before folding into `_other`. */
  maxSeries?: number;
}

// Buckets in seconds. Warm invocations on this machine take ~1–5 ms end to end and the longest timeout a
// function may set is minutes, so the total spans 1 ms … 5 min; queue wait starts lower (sub-ms when idle);
// a cold start (specialisation) is 10s of ms (reference/sandbox-startup-here.md) up to seconds for big images.
const DURATION_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];
const QUEUE_WAIT_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
const SPECIALISE_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
const HTTP_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

/** Default per-label-kind cap: far above a single host's realistic function count, far below a TSDB's pain. */
const DEFAULT_MAX_SERIES = 2000;
export const OTHER_LABEL = '_other';

const OUTCOMES = new Set<string>(['success', ...Object.keys(ERROR_STATUS)]);
const STARTS = new Set<string>(['cold', 'warm', 'none']);
const REDIS_COMPONENTS = new Set<string>(['gateway', 'scheduler', 'store', 'client', 'other']);

/** Keeps at most `max` distinct values of one label kind; later newcomers become `_other`. */
class LabelCap {
  private seen = new Set<string>();
  constructor(private readonly max: number) {}
  get(value: string): string {
    if (this.seen.has(value)) return value;
    if (this.seen.size >= this.max) return OTHER_LABEL;
    this.seen.add(value);
    return value;
  }
}

type Collector = () => SchedulerSnapshot | Promise<SchedulerSnapshot>;

/** The series one invocation observation lands in (resolved once per raw label set, see `invocation`). */
interface InvocationSeries {
  count: CounterSeries;
  duration: HistogramSeries | undefined;
  /** OutOfMemory / Timeout also count in their own counter */
  extra: CounterSeries | undefined;
}
interface HttpSeries {
  count: CounterSeries;
  duration: HistogramSeries;
}

/**
 * Raw label sets remembered per hot metric. Past it the cache starts over (the series themselves stay: only
 * the lookup is redone), so callers sending ever-new names cannot grow it without bound.
 */
const MAX_CACHED = 10_000;
/** a registry reset marks every series stale: the counter's flag stands for its entry (all reset together) */
const isStale = (s: HistogramSeries) => s.stale;
const isStaleEntry = (e: { count: CounterSeries }) => e.count.stale;

function cached<T>(m: Map<string, T>, key: string, stale: (v: T) => boolean, make: () => T): T {
  const hit = m.get(key);
  if (hit !== undefined && !stale(hit)) return hit;
  if (m.size >= MAX_CACHED) m.clear();
  const v = make();
  m.set(key, v);
  return v;
}

/**
 * One registry with every fnhost metric. Services use the process-wide `metrics` below; tests create their
 * own with `createMetrics()` to assert exact deltas without interference.
 */
export class FnhostMetrics {
  readonly registry = new Registry();
  readonly contentType: string;
  private readonly tenants: LabelCap;
  private readonly functions: LabelCap;
  private readonly kinds: LabelCap;
  private readonly collectors = new Set<Collector>();

  private readonly invocations: SeriesCounter;
  private readonly duration: SeriesHistogram;
  private readonly queueWaitH: SeriesHistogram;
  private readonly specialiseH: Histogram<'runtime'>;
  private readonly oomKills: Counter<'tenant' | 'function'>;
  private readonly timeouts: Counter<'tenant' | 'function'>;
  private readonly poolSize: Gauge<'kind'>;
  private readonly poolRefills: Counter<'kind'>;
  private readonly warm: Gauge<'tenant' | 'function'>;
  private readonly memAdmitted: Gauge;
  private readonly memCapacity: Gauge;
  private readonly queueDepthG: Gauge<'tenant'>;
  private readonly redisErrors: Counter<'component'>;
  private readonly traceDropped: Counter;
  private readonly traceFailed: Counter;
  private readonly callbacks: Counter<'outcome'>;
  private readonly callbackRedrives: Counter;
  private readonly callbackSwept: Counter;
  private readonly callbackOutboxG: Gauge;
  private readonly callbacksFailedG: Gauge<'tenant'>;
  private readonly httpRequests: SeriesCounter;
  private readonly httpDuration: SeriesHistogram;
  private readonly invocationCache = new Map<string, InvocationSeries>();
  private readonly queueWaitCache = new Map<string, HistogramSeries>();
  private readonly httpCache = new Map<string, HttpSeries>();

  constructor(opts: MetricsOptions = {}) {
    const registers = [this.registry];
    const max = opts.maxSeries ?? DEFAULT_MAX_SERIES;
    this.tenants = new LabelCap(max);
    this.functions = new LabelCap(max);
    this.kinds = new LabelCap(Math.min(max, 64));
    this.contentType = this.registry.contentType;

    this.invocations = new SeriesCounter({
      name: 'fnhost_invocations_total',
      help: 'Invocation attempts run by this node, by function, outcome (success or error type) and start kind.',
      labelNames: ['tenant', 'function', 'outcome', 'start'],
      registers,
    });
    this.duration = new SeriesHistogram({
      name: 'fnhost_invocation_duration_seconds',
      help: 'Invocation time from scheduler pick-up to result, by function and start kind.',
      labelNames: ['tenant', 'function', 'start'],
      buckets: DURATION_BUCKETS,
      registers,
    });
    this.queueWaitH = new SeriesHistogram({
      name: 'fnhost_queue_wait_seconds',
      help: 'Time an invocation spent queued before a scheduler picked it up.',
      labelNames: ['tenant'],
      buckets: QUEUE_WAIT_BUCKETS,
      registers,
    });
    this.specialiseH = new Histogram({
      name: 'fnhost_specialise_seconds',
      help: 'Cold-start specialisation time (cgroup caps, mount, runtime load), by runtime.',
      labelNames: ['runtime'],
      buckets: SPECIALISE_BUCKETS,
      registers,
    });
    this.oomKills = new Counter({
      name: 'fnhost_oom_kills_total',
      help: 'Invocations ended by the kernel OOM killer (memory cap reached).',
      labelNames: ['tenant', 'function'],
      registers,
    });
    this.timeouts = new Counter({
      name: 'fnhost_timeouts_total',
      help: 'Invocations ended because they exceeded their timeout.',
      labelNames: ['tenant', 'function'],
      registers,
    });
    this.poolSize = new Gauge({
      name: 'fnhost_pool_size',
      help: 'Ready pooled (unspecialised) sandboxes on this node, by pool kind.',
      labelNames: ['kind'],
      registers,
    });
    this.poolRefills = new Counter({
      name: 'fnhost_pool_refills_total',
      help: 'Sandboxes created to refill the pool, by pool kind (refill rate: rate() of this).',
      labelNames: ['kind'],
      registers,
    });
    this.warm = new Gauge({
      name: 'fnhost_warm_instances',
      help: 'Warm (specialised, kept-alive) instances on this node, by function.',
      labelNames: ['tenant', 'function'],
      registers,
    });
    this.memAdmitted = new Gauge({
      name: 'fnhost_memory_admitted_bytes',
      help: 'Memory caps of the sandboxes admitted on this node (the admission budget in use).',
      registers,
    });
    this.memCapacity = new Gauge({
      name: 'fnhost_memory_capacity_bytes',
      help: 'Memory this node may admit in total.',
      registers,
    });
    this.queueDepthG = new Gauge({
      name: 'fnhost_queue_depth',
      help: 'Invocations waiting in the queue, by tenant.',
      labelNames: ['tenant'],
      registers,
    });
    this.redisErrors = new Counter({
      name: 'fnhost_redis_errors_total',
      help: 'Errors from Redis connections, by component.',
      labelNames: ['component'],
      registers,
    });
    this.traceDropped = new Counter({
      name: 'fnhost_trace_spans_dropped_total',
      help: 'Finished spans dropped because the OTLP export queue was full (collector slow or unreachable).',
      registers,
    });
    this.traceFailed = new Counter({
      name: 'fnhost_trace_spans_export_failed_total',
      help: 'Spans lost in failed OTLP exports (non-2xx answer, network error or timeout).',
      registers,
    });
    this.callbacks = new Counter({
      name: 'fnhost_callbacks_total',
      help: 'Completion-callback POSTs of async invocations (X-Callback-Url), by outcome: delivered, retried (an attempt failed, another follows) or failed (attempts exhausted or destination refused).',
      labelNames: ['outcome'],
      registers,
    });
    this.callbackRedrives = new Counter({
      name: 'fnhost_callback_redrives_total',
      help: 'Failed completion callbacks queued again by their tenant (POST /v1/callbacks/failed/…/redrive).',
      registers,
    });
    this.callbackSwept = new Counter({
      name: 'fnhost_callback_outbox_swept_total',
      help: 'Completion callbacks moved from the outbox to the delivery queue by the periodic sweep, not by the node that wrote them: non-zero means that move failed (Redis error, node died).',
      registers,
    });
    this.callbackOutboxG = new Gauge({
      name: 'fnhost_callback_outbox_entries',
      help: 'Completion callbacks waiting in the outbox to be queued (cluster-wide; read at scrape time).',
      registers,
    });
    this.callbacksFailedG = new Gauge({
      name: 'fnhost_callbacks_failed',
      help: 'Failed completion callbacks kept for redrive, by tenant (cluster-wide; read at scrape time).',
      labelNames: ['tenant'],
      registers,
    });
    this.httpRequests = new SeriesCounter({
      name: 'fnhost_http_requests_total',
      help: 'HTTP requests served by the gateway, by method, route pattern and status code.',
      labelNames: ['method', 'route', 'status'],
      registers,
    });
    this.httpDuration = new SeriesHistogram({
      name: 'fnhost_http_request_duration_seconds',
      help: 'Gateway HTTP request time, by method and route pattern.',
      labelNames: ['method', 'route'],
      buckets: HTTP_BUCKETS,
      registers,
    });
    if (opts.defaultMetrics ?? true) collectDefaultMetrics({ register: this.registry });
  }

  /**
   * One finished invocation attempt (scheduler side, once per attempt, success or not). Also counts
   * `fnhost_oom_kills_total` for outcome OutOfMemory and `fnhost_timeouts_total` for Timeout: do not
   * record those separately.
   *
   * @example
   * metrics.invocation({ tenant: 'acme', function: 'resize', start: 'cold', outcome: 'OutOfMemory', durationMs: 830 });
   */
  invocation(o: InvocationObservation): void {
    const s = cached(this.invocationCache, `${o.tenant}\0${o.function}\0${o.outcome}\0${o.start}`, isStaleEntry, () => this.invocationSeries(o));
    s.count.inc();
    s.duration?.observe(Math.max(0, o.durationMs) / 1000);
    s.extra?.inc();
  }

  private invocationSeries(o: InvocationObservation): InvocationSeries {
    const tenant = this.tenants.get(o.tenant);
    const fn = this.functions.get(`${o.tenant}/${o.function}`) === OTHER_LABEL ? OTHER_LABEL : o.function;
    const outcome = OUTCOMES.has(o.outcome) ? o.outcome : 'Internal';
    const start = STARTS.has(o.start) ? o.start : 'none';
    const extraCounter = outcome === 'OutOfMemory' ? this.oomKills : outcome === 'Timeout' ? this.timeouts : undefined;
    return {
      count: this.invocations.series({ tenant, function: fn, outcome, start }),
      duration: start !== 'none' ? this.duration.series({ tenant, function: fn, start }) : undefined,
      extra: extraCounter ? counterSeries(extraCounter, { tenant, function: fn }) : undefined,
    };
  }

  /** Time from enqueue (BullMQ `job.timestamp`) to pick-up. */
  queueWait(tenant: string, ms: number): void {
    cached(this.queueWaitCache, tenant, isStale, () => this.queueWaitH.series({ tenant: this.tenants.get(tenant) })).observe(Math.max(0, ms) / 1000);
  }

  /** One cold-start specialisation (all steps together), by runtime name ('node' | 'python' | 'exec' | 'image'). */
  specialise(runtime: string, ms: number): void {
    const r = runtime.startsWith('image:') ? 'image' : runtime;
    this.specialiseH.observe({ runtime: this.kinds.get(r) }, Math.max(0, ms) / 1000);
  }

  /** `n` sandboxes were created to refill the pool of `kind`. */
  poolRefill(kind: string, n = 1): void {
    this.poolRefills.inc({ kind: this.kinds.get(kind) }, n);
  }

  /** Current ready sandboxes of one pool kind (or report it at scrape time via `addCollector`). */
  setPoolSize(kind: string, n: number): void {
    this.poolSize.set({ kind: this.kinds.get(kind) }, n);
  }

  /** Current warm instances of one function (or report them at scrape time via `addCollector`). */
  setWarmInstances(tenant: string, fn: string, n: number): void {
    const f = this.functions.get(`${tenant}/${fn}`) === OTHER_LABEL ? OTHER_LABEL : fn;
    this.warm.set({ tenant: this.tenants.get(tenant), function: f }, n);
  }

  /** Memory admitted (sum of admitted caps) and the node's capacity, in bytes. */
  setMemory(admittedBytes: number, capacityBytes: number): void {
    this.memAdmitted.set(admittedBytes);
    this.memCapacity.set(capacityBytes);
  }

  /** Queued invocations of one tenant (or report them at scrape time via `addCollector`). */
  setQueueDepth(tenant: string, n: number): void {
    this.queueDepthG.set({ tenant: this.tenants.get(tenant) }, n);
  }

  /** One error from a Redis connection. `component`: gateway | scheduler | store | client | other. */
  redisError(component: string): void {
    this.redisErrors.inc({ component: REDIS_COMPONENTS.has(component) ? component : 'other' });
  }

  /** Spans dropped by the OTLP exporter's bounded queue (services/common/trace-export.ts). */
  traceSpansDropped(n = 1): void {
    this.traceDropped.inc(n);
  }

  /** One completion-callback attempt's outcome (services/scheduler/callbacks.ts). */
  callback(outcome: 'delivered' | 'retried' | 'failed'): void {
    this.callbacks.inc({ outcome });
  }

  /** `n` failed completion callbacks redriven (services/scheduler/callback-failures.ts). */
  callbackRedrive(n = 1): void {
    this.callbackRedrives.inc(n);
  }

  /** `n` outbox entries moved by the sweep rather than by their writer (services/scheduler/callbacks.ts). */
  callbackOutboxSwept(n = 1): void {
    this.callbackSwept.inc(n);
  }

  /** Spans lost in failed OTLP exports. */
  traceExportFailed(n = 1): void {
    this.traceFailed.inc(n);
  }

  /**
   * Counts every 'error' event of a Redis client (ioredis, or BullMQ's Queue/Worker/QueueEvents) as a Redis
   * error of `component`. Returns a function that detaches the listener.
   *
   * @example
   * const stop = metrics.watchRedis(redis, 'scheduler');
   */
  watchRedis(emitter: { on(ev: 'error', fn: (e: unknown) => void): unknown; off?(ev: 'error', fn: (e: unknown) => void): unknown }, component: string): () => void {
    const onError = () => this.redisError(component);
    emitter.on('error', onError);
    return () => emitter.off?.('error', onError);
  }

  /** One HTTP request served (called by services/gateway/middleware/tracing.ts). `route` is the matched pattern, never the raw path. */
  httpRequest(method: string, route: string, status: number, ms: number): void {
    const s = cached(this.httpCache, `${method} ${status} ${route}`, isStaleEntry, () => {
      const m = HTTP_METHODS.has(method) ? method : 'OTHER';
      return { count: this.httpRequests.series({ method: m, route, status: String(status) }), duration: this.httpDuration.series({ method: m, route }) };
    });
    s.count.inc();
    s.duration.observe(Math.max(0, ms) / 1000);
  }

  /**
   * Registers a callback run at every scrape; what it returns replaces the previous values of the gauges it
   * names (pool size, warm instances, memory, queue depth). Several collectors (e.g. several schedulers in
   * one test process) are summed. Returns a function that unregisters it.
   *
   * @example
   * const off = metrics.addCollector(async () => ({ poolSize: { node: pool.ready() }, queueDepth: await depths() }));
   */
  addCollector(fn: Collector): () => void {
    this.collectors.add(fn);
    return () => {
      this.collectors.delete(fn);
    };
  }

  /** The Prometheus text exposition of this registry (runs the collectors first). */
  async text(): Promise<string> {
    if (this.collectors.size > 0) await this.runCollectors();
    return this.registry.metrics();
  }

  private async runCollectors(): Promise<void> {
    const snaps = await Promise.all(
      [...this.collectors].map(async (c) => {
        try {
          return await c();
        } catch {
          // A failing source (e.g. Redis down during a scrape) must not break /metrics; its gauges keep
          // their last values and the Redis error is counted where the client emits it.
          return null;
        }
      }),
    );
    const ok = snaps.filter((s): s is SchedulerSnapshot => s != null);
    if (ok.some((s) => s.poolSize)) {
      this.poolSize.reset();
      for (const s of ok) for (const [k, n] of Object.entries(s.poolSize ?? {})) this.poolSize.inc({ kind: this.kinds.get(k) }, n);
    }
    if (ok.some((s) => s.warmInstances)) {
      this.warm.reset();
      for (const s of ok)
        for (const w of s.warmInstances ?? []) {
          const f = this.functions.get(`${w.tenant}/${w.function}`) === OTHER_LABEL ? OTHER_LABEL : w.function;
          this.warm.inc({ tenant: this.tenants.get(w.tenant), function: f }, w.count);
        }
    }
    if (ok.some((s) => s.memoryAdmittedBytes !== undefined || s.memoryCapacityBytes !== undefined)) {
      let a = 0;
      let c = 0;
      for (const s of ok) {
        a += s.memoryAdmittedBytes ?? 0;
        c += s.memoryCapacityBytes ?? 0;
      }
      this.memAdmitted.set(a);
      this.memCapacity.set(c);
    }
    if (ok.some((s) => s.queueDepth)) {
      this.queueDepthG.reset();
      // Queue depth is cluster-wide (one Redis): several collectors report the same queue, so take the max.
      const depth = new Map<string, number>();
      for (const s of ok) for (const [t, n] of Object.entries(s.queueDepth ?? {})) depth.set(t, Math.max(depth.get(t) ?? 0, n));
      for (const [t, n] of depth) this.queueDepthG.inc({ tenant: this.tenants.get(t) }, n);
    }
    // Callback outbox and failed lists are cluster-wide too (one Redis): max across collectors, as queue depth.
    if (ok.some((s) => s.callbackOutbox !== undefined)) this.callbackOutboxG.set(Math.max(...ok.map((s) => s.callbackOutbox ?? 0)));
    if (ok.some((s) => s.failedCallbacks)) {
      this.callbacksFailedG.reset();
      const failed = new Map<string, number>();
      for (const s of ok) for (const [t, n] of Object.entries(s.failedCallbacks ?? {})) failed.set(t, Math.max(failed.get(t) ?? 0, n));
      for (const [t, n] of failed) this.callbacksFailedG.inc({ tenant: this.tenants.get(t) }, n);
    }
  }
}

/**
 * A rarely used prom-client counter (OOM kills, timeouts) behind the same `inc()` shape as a cached series:
 * the label set is bound here, prom-client still does its per-call work (these are not per warm call).
 */
function counterSeries(c: Counter<'tenant' | 'function'>, labels: { tenant: string; function: string }): CounterSeries {
  return { value: 0, stale: false, labels, inc: (n = 1) => c.inc(labels, n) } as CounterSeries;
}

const HTTP_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS']);

/** A fresh, independent metrics registry (tests; a second host in one process). */
export function createMetrics(opts?: MetricsOptions): FnhostMetrics {
  return new FnhostMetrics(opts);
}

/** The process-wide metrics every service records into, and GET /metrics serves. */
export const metrics: FnhostMetrics = createMetrics();

/** Prometheus text of the process-wide registry, for GET /metrics (content type: `metrics.contentType`). */
export function metricsText(): Promise<string> {
  return metrics.text();
}
