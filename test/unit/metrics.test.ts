import { describe, expect, it } from 'vitest';
import { createMetrics, OTHER_LABEL } from '../../services/common/metrics.ts';
import { parsePromText } from '../helpers/prom-text.ts';

async function scrape(m = createMetrics({ defaultMetrics: false })) {
  return parsePromText(await m.text());
}

describe('metrics: invocations', () => {
  it('counts each attempt by function, outcome and start kind, and observes its duration', async () => {
    const m = createMetrics({ defaultMetrics: false });
    m.invocation({ tenant: 'acme', function: 'hello', start: 'cold', outcome: 'success', durationMs: 40 });
    m.invocation({ tenant: 'acme', function: 'hello', start: 'warm', outcome: 'success', durationMs: 2 });
    m.invocation({ tenant: 'acme', function: 'hello', start: 'warm', outcome: 'success', durationMs: 3 });
    m.invocation({ tenant: 'acme', function: 'hello', start: 'warm', outcome: 'FunctionError', durationMs: 3 });
    const p = await scrape(m);
    expect(p.value('fnhost_invocations_total', { tenant: 'acme', function: 'hello', outcome: 'success', start: 'cold' })).toBe(1);
    expect(p.value('fnhost_invocations_total', { tenant: 'acme', function: 'hello', outcome: 'success', start: 'warm' })).toBe(2);
    expect(p.value('fnhost_invocations_total', { outcome: 'FunctionError' })).toBe(1);
    expect(p.value('fnhost_invocation_duration_seconds_count', { start: 'warm' })).toBe(3);
    expect(p.value('fnhost_invocation_duration_seconds_sum', { start: 'cold' })).toBeCloseTo(0.04, 6);
    // 40 ms falls in the 0.05 s bucket and not in the 0.025 s one
    expect(p.value('fnhost_invocation_duration_seconds_bucket', { start: 'cold', le: '0.05' })).toBe(1);
    expect(p.value('fnhost_invocation_duration_seconds_bucket', { start: 'cold', le: '0.025' })).toBe(0);
    expect(p.types.get('fnhost_invocation_duration_seconds')).toBe('histogram');
  });

  it.each([
    ['OutOfMemory', 'fnhost_oom_kills_total', 'fnhost_timeouts_total'],
    ['Timeout', 'fnhost_timeouts_total', 'fnhost_oom_kills_total'],
  ])('outcome %s also counts %s and not %s', async (outcome, counted, notCounted) => {
    const m = createMetrics({ defaultMetrics: false });
    m.invocation({ tenant: 't', function: 'f', start: 'warm', outcome, durationMs: 5 });
    const p = await scrape(m);
    expect(p.value(counted, { tenant: 't', function: 'f' })).toBe(1);
    expect(p.value(notCounted)).toBe(0);
  });

  it('keeps outcome and start labels to their closed sets', async () => {
    const m = createMetrics({ defaultMetrics: false });
    m.invocation({ tenant: 't', function: 'f', start: 'lukewarm' as 'warm', outcome: 'inv-123 exploded', durationMs: 1 });
    m.invocation({ tenant: 't', function: 'f', start: 'none', outcome: 'TooManyRequests', durationMs: 0 });
    const p = await scrape(m);
    expect(p.value('fnhost_invocations_total', { outcome: 'Internal', start: 'none' })).toBe(1);
    expect(p.value('fnhost_invocations_total', { outcome: 'TooManyRequests', start: 'none' })).toBe(1);
    expect(p.samples.some((s) => Object.values(s.labels).some((v) => v.includes('inv-123') || v === 'lukewarm'))).toBe(false);
    // an invocation that never started has no duration to observe
    expect(p.value('fnhost_invocation_duration_seconds_count')).toBe(0);
  });

  it('folds functions past the series cap into _other', async () => {
    const m = createMetrics({ defaultMetrics: false, maxSeries: 3 });
    for (let i = 0; i < 10; i++) m.invocation({ tenant: 't', function: `f${i}`, start: 'warm', outcome: 'success', durationMs: 1 });
    m.invocation({ tenant: 't', function: 'f1', start: 'warm', outcome: 'success', durationMs: 1 });
    const p = await scrape(m);
    const fns = new Set(p.samples.filter((s) => s.name === 'fnhost_invocations_total').map((s) => s.labels.function));
    expect(fns).toEqual(new Set(['f0', 'f1', 'f2', OTHER_LABEL]));
    expect(p.value('fnhost_invocations_total', { function: OTHER_LABEL })).toBe(7);
    expect(p.value('fnhost_invocations_total', { function: 'f1' })).toBe(2);
    expect(p.value('fnhost_invocations_total')).toBe(11);
  });
});

describe('metrics: scheduler and gateway recorders', () => {
  it('records queue wait, specialisation, pool refills, redis errors and HTTP requests', async () => {
    const m = createMetrics({ defaultMetrics: false });
    m.queueWait('acme', 3);
    m.specialise('node', 60);
    m.specialise('image:sha256:abc', 200);
    m.poolRefill('node');
    m.poolRefill('node', 4);
    m.redisError('scheduler');
    m.redisError('something-unknown');
    m.httpRequest('POST', '/v1/functions/:name/invoke', 200, 4);
    m.httpRequest('BREW', 'unmatched', 404, 1);
    const p = await scrape(m);
    expect(p.value('fnhost_queue_wait_seconds_count', { tenant: 'acme' })).toBe(1);
    expect(p.value('fnhost_specialise_seconds_count', { runtime: 'node' })).toBe(1);
    expect(p.value('fnhost_specialise_seconds_count', { runtime: 'image' })).toBe(1);
    expect(p.value('fnhost_pool_refills_total', { kind: 'node' })).toBe(5);
    expect(p.value('fnhost_redis_errors_total', { component: 'scheduler' })).toBe(1);
    expect(p.value('fnhost_redis_errors_total', { component: 'other' })).toBe(1);
    expect(p.value('fnhost_http_requests_total', { method: 'POST', route: '/v1/functions/:name/invoke', status: '200' })).toBe(1);
    expect(p.value('fnhost_http_requests_total', { method: 'OTHER', status: '404' })).toBe(1);
  });

  it('watchRedis counts error events until detached', async () => {
    const { EventEmitter } = await import('node:events');
    const m = createMetrics({ defaultMetrics: false });
    const redis = new EventEmitter();
    const stop = m.watchRedis(redis, 'gateway');
    redis.emit('error', new Error('ECONNREFUSED'));
    redis.emit('error', new Error('ECONNREFUSED'));
    stop();
    expect(redis.listenerCount('error')).toBe(0);
    expect((await scrape(m)).value('fnhost_redis_errors_total', { component: 'gateway' })).toBe(2);
  });

  it('collectors set gauges at scrape time: summed per node, queue depth as the max, replaced each scrape', async () => {
    const m = createMetrics({ defaultMetrics: false });
    let warm = 2;
    const offA = m.addCollector(() => ({
      poolSize: { node: 3, python: 1 },
      warmInstances: [{ tenant: 'acme', function: 'hello', count: warm }],
      memoryAdmittedBytes: 128 << 20,
      memoryCapacityBytes: 1 << 30,
      queueDepth: { acme: 5 },
    }));
    m.addCollector(async () => ({ poolSize: { node: 2 }, memoryAdmittedBytes: 64 << 20, memoryCapacityBytes: 1 << 30, queueDepth: { acme: 4, zeta: 1 } }));
    let p = await scrape(m);
    expect(p.value('fnhost_pool_size', { kind: 'node' })).toBe(5);
    expect(p.value('fnhost_pool_size', { kind: 'python' })).toBe(1);
    expect(p.value('fnhost_warm_instances', { tenant: 'acme', function: 'hello' })).toBe(2);
    expect(p.value('fnhost_memory_admitted_bytes')).toBe(192 << 20);
    expect(p.value('fnhost_memory_capacity_bytes')).toBe(2 * 2 ** 30);
    expect(p.value('fnhost_queue_depth', { tenant: 'acme' })).toBe(5);
    expect(p.value('fnhost_queue_depth', { tenant: 'zeta' })).toBe(1);

    warm = 0;
    offA();
    p = await scrape(m);
    expect(p.value('fnhost_pool_size', { kind: 'node' })).toBe(2);
    expect(p.samples.some((s) => s.name === 'fnhost_pool_size' && s.labels.kind === 'python')).toBe(false);
    expect(p.value('fnhost_queue_depth', { tenant: 'acme' })).toBe(4);
  });

  it('a failing collector does not break the scrape', async () => {
    const m = createMetrics({ defaultMetrics: false });
    m.addCollector(() => {
      throw new Error('redis down');
    });
    m.addCollector(() => ({ poolSize: { exec: 7 } }));
    const p = await scrape(m);
    expect(p.value('fnhost_pool_size', { kind: 'exec' })).toBe(7);
  });

  it('setters work without collectors', async () => {
    const m = createMetrics({ defaultMetrics: false });
    m.setPoolSize('node', 4);
    m.setWarmInstances('acme', 'hello', 1);
    m.setMemory(1024, 4096);
    m.setQueueDepth('acme', 9);
    const p = await scrape(m);
    expect(p.value('fnhost_pool_size', { kind: 'node' })).toBe(4);
    expect(p.value('fnhost_warm_instances', { function: 'hello' })).toBe(1);
    expect(p.value('fnhost_memory_admitted_bytes')).toBe(1024);
    expect(p.value('fnhost_memory_capacity_bytes')).toBe(4096);
    expect(p.value('fnhost_queue_depth', { tenant: 'acme' })).toBe(9);
  });
});

describe('metrics: exposition', () => {
  it('the full registry (with process metrics) parses as Prometheus text and declares every metric of issue 7', async () => {
    const m = createMetrics();
    m.invocation({ tenant: 'a "quoted"\\tenant', function: 'f\nnewline', start: 'warm', outcome: 'success', durationMs: 1 });
    const p = parsePromText(await m.text());
    for (const name of [
      'fnhost_invocations_total',
      'fnhost_invocation_duration_seconds',
      'fnhost_queue_wait_seconds',
      'fnhost_specialise_seconds',
      'fnhost_oom_kills_total',
      'fnhost_timeouts_total',
      'fnhost_pool_size',
      'fnhost_pool_refills_total',
      'fnhost_warm_instances',
      'fnhost_memory_admitted_bytes',
      'fnhost_memory_capacity_bytes',
      'fnhost_queue_depth',
      'fnhost_redis_errors_total',
      'fnhost_http_requests_total',
      'fnhost_http_request_duration_seconds',
      'process_cpu_seconds_total',
    ]) {
      expect(p.types.has(name), name).toBe(true);
    }
    // label escaping round-trips through the parser
    expect(p.value('fnhost_invocations_total', { tenant: 'a "quoted"\\tenant', function: 'f\nnewline' })).toBe(1);
    expect(m.contentType).toMatch(/^text\/plain; version=0\.0\.4/);
  });

  it('the parser rejects malformed text (so the e2e parse is a real check)', () => {
    expect(() => parsePromText('fnhost_x 1\n')).toThrow(/no # TYPE/);
    expect(() => parsePromText('# TYPE fnhost_x counter\nfnhost_x{a="1" 1\n')).toThrow(/not a sample|bad labels/);
    expect(() => parsePromText('# TYPE fnhost_x counter\nfnhost_x one\n')).toThrow(/bad value/);
    expect(() => parsePromText('# TYPE fnhost_x counter\n# TYPE fnhost_x gauge\n')).toThrow(/second TYPE/);
  });
});

describe('metrics: cached series (services/common/metric-series.ts)', () => {
  it('expose exactly what prom-client Counter / Histogram expose for the same observations', async () => {
    const { Counter, Histogram, Registry } = await import('prom-client');
    const { SeriesCounter, SeriesHistogram } = await import('../../services/common/metric-series.ts');
    const ours = new Registry();
    const ref = new Registry();
    const buckets = [0.001, 0.01, 0.1];
    const c = new SeriesCounter({ name: 'x_total', help: 'h "q"\\n', labelNames: ['a', 'b'], registers: [ours] });
    const h = new SeriesHistogram({ name: 'x_seconds', help: 'h', labelNames: ['a'], buckets, registers: [ours] });
    const rc = new Counter({ name: 'x_total', help: 'h "q"\\n', labelNames: ['a', 'b'], registers: [ref] });
    const rh = new Histogram({ name: 'x_seconds', help: 'h', labelNames: ['a'], buckets, registers: [ref] });
    const obs: Array<[string, string, number]> = [['p', 'q', 0.0005], ['p', 'q', 0.05], ['r"\\\n', 'q', 0.001], ['p', 'z', 7], ['s', 'q', 0.01]];
    for (const [a, b, v] of obs) {
      c.series({ a, b }).inc();
      h.series({ a }).observe(v);
      rc.inc({ a, b });
      rh.observe({ a }, v);
    }
    c.series({ b: 'only-b', a: 'x' }).inc(3);
    rc.inc({ b: 'only-b', a: 'x' }, 3);
    expect(await ours.metrics()).toBe(await ref.metrics());
    expect(JSON.stringify(await ours.getMetricsAsJSON())).toBe(JSON.stringify(await ref.getMetricsAsJSON()));
    // a label the metric does not declare is refused, as prom-client refuses it
    expect(() => c.series({ a: '1', nope: '2' })).toThrow(/not included/);
    expect(() => h.series({ a: '1' }).observe(Number.NaN)).toThrow(/valid number/);
    // reset: old series are stale (callers caching them re-resolve), nothing is exported until observed again
    const s = h.series({ a: 'p' });
    ours.resetMetrics();
    rh.reset();
    rc.reset();
    expect(s.stale).toBe(true);
    expect(await ours.metrics()).toBe(await ref.metrics());
  });

  it('FnhostMetrics keeps counting right after a registry reset (cached series are re-resolved)', async () => {
    const m = createMetrics({ defaultMetrics: false });
    m.invocation({ tenant: 'a', function: 'f', start: 'warm', outcome: 'success', durationMs: 1 });
    m.httpRequest('POST', '/v1/functions/:ref/invoke', 200, 1);
    m.queueWait('a', 1);
    m.registry.resetMetrics();
    m.invocation({ tenant: 'a', function: 'f', start: 'warm', outcome: 'success', durationMs: 1 });
    m.httpRequest('POST', '/v1/functions/:ref/invoke', 200, 1);
    m.queueWait('a', 1);
    const p = await scrape(m);
    expect(p.value('fnhost_invocations_total', { tenant: 'a', function: 'f' })).toBe(1);
    expect(p.value('fnhost_http_requests_total', { method: 'POST', status: '200' })).toBe(1);
    expect(p.value('fnhost_queue_wait_seconds_count', { tenant: 'a' })).toBe(1);
  });
});
