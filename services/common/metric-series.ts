/**
 * @module metric-series
 * Counters and histograms for the metrics recorded on every invocation (services/common/metrics.ts), with
 * the label lookup done once per label set instead of once per observation.
 *
 * prom-client validates the labels, builds a hash string from them and allocates a closure on every
 * `inc()` / `observe()`: with five such calls per warm invocation that was ~3 % of the host's CPU at 32
 * connections (--cpu-prof, /tmp/fnhost-notes/warm.md). Here a caller resolves a {@link Series} once (by a
 * key it builds cheaply, cached) and then only adds numbers. The metrics are registered in prom-client's
 * Registry as ordinary metric objects (`get()` / `getForPromString()` of prom-client 15's shape), so the
 * exposition is prom-client's own formatting: same names, labels, order and values as its Counter and
 * Histogram (test/unit/metrics.test.ts compares the text of both for the same observations).
 *
 * @example
 * const h = new SeriesHistogram({ name: 'x_seconds', help: '…', labelNames: ['tenant'], buckets: [0.1, 1], registers: [registry] });
 * const s = h.series({ tenant: 'acme' });   // keep it: the hot path is s.observe(v)
 * s.observe(0.25);
 */
import type { Registry } from 'prom-client';

type Labels = Record<string, string>;

interface MetricValue {
  labels: Record<string, string | number>;
  sharedLabels: Labels;
  value: number;
  metricName: string | undefined;
  exemplar: null | undefined;
}

interface MetricObject {
  name: string;
  help: string;
  type: 'counter' | 'histogram';
  values: MetricValue[];
  aggregator: 'sum';
}

interface SeriesConfig {
  name: string;
  help: string;
  labelNames: readonly string[];
  registers: Registry[];
}

/** Validates like prom-client does at observation time, once per label set. */
function checkLabels(name: string, labelNames: readonly string[], labels: Labels): void {
  for (const k of Object.keys(labels)) {
    if (!labelNames.includes(k)) throw new Error(`Added label "${k}" is not included in initial labelset: ${JSON.stringify(labelNames)} (${name})`);
  }
}

/** Same as prom-client's hashObject: the label values in sorted-name order. */
function hashOf(labels: Labels, sortedNames: readonly string[]): string {
  let h = '';
  for (const k of sortedNames) {
    const v = labels[k];
    if (v !== undefined) h += `${k}:${v},`;
  }
  return h;
}

abstract class SeriesMetric<S> {
  readonly name: string;
  readonly help: string;
  readonly labelNames: readonly string[];
  readonly aggregator = 'sum' as const;
  private readonly sortedNames: readonly string[];
  /** by prom-client's hash of the labels: insertion order is the exposition order, as in prom-client */
  protected map = new Map<string, S>();

  constructor(cfg: SeriesConfig) {
    this.name = cfg.name;
    this.help = cfg.help;
    this.labelNames = cfg.labelNames;
    this.sortedNames = [...cfg.labelNames].sort();
    for (const r of cfg.registers) r.registerMetric(this as never);
  }

  protected abstract create(labels: Labels): S;

  /** The series of `labels` (created on first use; after reset() a new one). */
  series(labels: Labels): S {
    const h = hashOf(labels, this.sortedNames);
    let s = this.map.get(h);
    if (!s) {
      checkLabels(this.name, this.labelNames, labels);
      s = this.create({ ...labels });
      this.map.set(h, s);
    }
    return s;
  }

  /** Drops every series; series handed out before are marked `stale` (callers that cache them re-resolve). */
  reset(): void {
    for (const s of this.map.values()) (s as { stale: boolean }).stale = true;
    this.map = new Map();
  }

  protected abstract values(): MetricValue[];
  abstract readonly type: 'counter' | 'histogram';

  getForPromString(): MetricObject {
    return { name: this.name, help: this.help, type: this.type, values: this.values(), aggregator: this.aggregator };
  }

  /** prom-client's get() (getMetricsAsJSON): its key order, each value's labels merged into one object. */
  abstract get(): object;
}

/** One counter series: `inc(n = 1)`. */
export class CounterSeries {
  value = 0;
  /** set when the metric was reset: this series is no longer exported */
  stale = false;
  constructor(readonly labels: Labels) {}
  inc(n = 1): void {
    this.value += n;
  }
}

export class SeriesCounter extends SeriesMetric<CounterSeries> {
  readonly type = 'counter' as const;
  protected create(labels: Labels): CounterSeries {
    return new CounterSeries(labels);
  }
  protected values(): MetricValue[] {
    // no metricName: the registry uses the metric's name
    return [...this.map.values()].map((s) => ({ value: s.value, labels: s.labels, sharedLabels: {}, metricName: undefined, exemplar: undefined }));
  }
  get(): object {
    const values = [...this.map.values()].map((s) => ({ value: s.value, labels: { ...s.labels } }));
    return { help: this.help, name: this.name, type: this.type, values, aggregator: this.aggregator };
  }
}

/** One histogram series: `observe(v)` (seconds, or whatever the buckets are in). */
export class HistogramSeries {
  /** per upper bound, not cumulative; observations above the last bound only count in `count` */
  readonly buckets: Float64Array;
  sum = 0;
  count = 0;
  /** set when the metric was reset: this series is no longer exported */
  stale = false;
  constructor(
    readonly labels: Labels,
    private readonly bounds: readonly number[],
  ) {
    this.buckets = new Float64Array(bounds.length);
  }
  observe(v: number): void {
    if (!Number.isFinite(v)) throw new TypeError(`Value is not a valid number: ${v}`);
    const b = this.bounds;
    for (let i = 0; i < b.length; i++) {
      if (v <= b[i]!) {
        this.buckets[i]!++;
        break;
      }
    }
    this.sum += v;
    this.count++;
  }
}

export class SeriesHistogram extends SeriesMetric<HistogramSeries> {
  readonly type = 'histogram' as const;
  readonly upperBounds: readonly number[];
  constructor(cfg: SeriesConfig & { buckets: readonly number[] }) {
    super(cfg);
    this.upperBounds = [...cfg.buckets].sort((a, b) => a - b);
  }
  protected create(labels: Labels): HistogramSeries {
    return new HistogramSeries(labels, this.upperBounds);
  }
  protected values(): MetricValue[] {
    const out: MetricValue[] = [];
    const bucket = `${this.name}_bucket`;
    for (const s of this.map.values()) {
      let acc = 0;
      for (let i = 0; i < this.upperBounds.length; i++) {
        acc += s.buckets[i]!;
        out.push({ labels: { le: this.upperBounds[i]! }, sharedLabels: s.labels, value: acc, metricName: bucket, exemplar: null });
      }
      out.push({ labels: { le: '+Inf' }, sharedLabels: s.labels, value: s.count, metricName: bucket, exemplar: null });
      out.push({ labels: {}, sharedLabels: s.labels, value: s.sum, metricName: `${this.name}_sum`, exemplar: undefined });
      out.push({ labels: {}, sharedLabels: s.labels, value: s.count, metricName: `${this.name}_count`, exemplar: undefined });
    }
    return out;
  }
  get(): object {
    const values = this.values().map(({ labels, sharedLabels, value, metricName, exemplar }) => ({ value, metricName, exemplar, labels: { ...labels, ...sharedLabels } }));
    return { name: this.name, help: this.help, type: this.type, values, aggregator: this.aggregator };
  }
}
