/**
 * Issue 7 end to end: a real host (real Redis, BullMQ, native sandboxes) exporting OTLP/HTTP to a real
 * receiver on loopback. A function is invoked cold then warm, each with its own caller `traceparent`; each
 * invocation must come back as ONE trace with the spans of telemetry.ts's tree, parent links intact, the
 * caller's span as the root's parent and the right start kind; /metrics must parse as Prometheus text and
 * its counters must move by exactly what the test did.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Redis } from 'ioredis';
import { tarGz } from '../../services/cli/pack.ts';
import { Attr, SpanName } from '../../services/common/telemetry.ts';
import { startHost, type Host } from '../../services/host/index.ts';
import { hostConfig } from '../../services/host/config.ts';
import { assertNoLeaks } from '../helpers/leaks.ts';
import { startOtlpSink, type DecodedSpan, type OtlpSink } from '../helpers/otlp-sink.ts';
import { parsePromText, type PromText } from '../helpers/prom-text.ts';
import { redisUrl } from '../helpers/redis.ts';

const uid = randomBytes(4).toString('hex');
const TENANT = `otel-${uid}`;
const FN = 'hello';
const NODE_ID = `e2e-otel-${uid}`;
const PREFIX = `fnhost-otel-${uid}`;
const META_PREFIX = `fnhost-otel-${uid}:meta:`;
// OTLP span kinds (opentelemetry-proto trace.proto, SpanKind): the API's enum + 1.
const SERVER = 2;
const PRODUCER = 4;
const CONSUMER = 5;

function traceparent() {
  const traceId = randomBytes(16).toString('hex');
  const spanId = randomBytes(8).toString('hex');
  return { traceId, spanId, header: `00-${traceId}-${spanId}-01` };
}

describe('observability end to end (issue 7)', () => {
  let sink: OtlpSink;
  let host: Host;
  let stateDir: string;
  let apiKey: string;
  const savedEnv = { ...process.env };

  async function req(method: string, path: string, init: { key?: string; body?: string | FormData; headers?: Record<string, string> } = {}) {
    return fetch(host.url + path, {
      method,
      body: init.body,
      headers: { ...(init.key ? { authorization: `Bearer ${init.key}` } : {}), ...init.headers },
    });
  }
  async function scrape(): Promise<PromText> {
    const r = await req('GET', '/metrics');
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    return parsePromText(await r.text());
  }

  beforeAll(async () => {
    sink = await startOtlpSink();
    // The standard env is the only switch; a short batch delay keeps the test quick (default 5 s).
    Object.assign(process.env, sink.env, { OTEL_BSP_SCHEDULE_DELAY: '50', OTEL_SERVICE_NAME: 'fnhost-e2e' });
    stateDir = mkdtempSync(join(tmpdir(), 'fnhost-otel-e2e-'));
    host = await startHost(
      hostConfig({}, { port: '0', host: '127.0.0.1', 'state-dir': stateDir, 'redis-url': redisUrl(), 'node-id': NODE_ID }),
      { metadataPrefix: META_PREFIX, scheduler: { prefix: PREFIX }, client: { prefix: PREFIX } },
    );
    const t = await req('POST', '/v1/tenants', {
      key: host.adminKey.key,
      body: JSON.stringify({ name: TENANT }),
      headers: { 'content-type': 'application/json' },
    });
    expect(t.status).toBe(201);
    apiKey = ((await t.json()) as { apiKey: string }).apiKey;
    const form = new FormData();
    form.set('config', JSON.stringify({ runtime: 'node', handler: 'index.handler', memoryMb: 64, timeoutMs: 10_000 }));
    form.set('code', new Blob([tarGz({ 'index.js': 'exports.handler = async (e) => "hi " + e.length;' })]), 'code.tgz');
    const d = await req('PUT', `/v1/functions/${FN}`, { key: apiKey, body: form });
    expect(d.status, await d.clone().text()).toBe(201);
  }, 120_000);

  async function deploy(name: string, code: string, config: Record<string, unknown> = {}) {
    const form = new FormData();
    form.set('config', JSON.stringify({ runtime: 'node', handler: 'index.handler', memoryMb: 64, timeoutMs: 10_000, ...config }));
    form.set('code', new Blob([tarGz({ 'index.js': code })]), 'code.tgz');
    const d = await req('PUT', `/v1/functions/${name}`, { key: apiKey, body: form });
    expect(d.status, await d.clone().text()).toBe(201);
  }

  afterAll(async () => {
    try {
      await host?.close();
      await assertNoLeaks(NODE_ID);
    } finally {
      await sink?.close();
      for (const k of Object.keys(process.env)) if (!(k in savedEnv)) delete process.env[k];
      Object.assign(process.env, savedEnv);
      if (stateDir) rmSync(stateDir, { recursive: true, force: true });
      const r = new Redis(redisUrl());
      for (const pattern of [`${PREFIX}*`, `${META_PREFIX}*`]) {
        let cursor = '0';
        do {
          const [next, keys] = await r.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
          if (keys.length) await r.del(...keys);
          cursor = next;
        } while (cursor !== '0');
      }
      r.disconnect();
    }
  }, 120_000);

  it('cold then warm: one trace each with the whole span tree; /metrics counters move by exactly that', async () => {
    const before = await scrape();
    const cold = traceparent();
    const warm = traceparent();

    const r1 = await req('POST', `/v1/functions/${FN}/invoke`, { key: apiKey, body: 'abc', headers: { traceparent: cold.header } });
    expect(r1.status, await r1.clone().text()).toBe(200);
    expect(await r1.text()).toBe('hi 3');
    expect(r1.headers.get('x-fnhost-start')).toBe('cold');
    const r2 = await req('POST', `/v1/functions/${FN}/invoke`, { key: apiKey, body: 'abcd', headers: { traceparent: warm.header } });
    expect(r2.status).toBe(200);
    expect(r2.headers.get('x-fnhost-start')).toBe('warm');

    // ---- metrics: exact deltas ----
    const after = await scrape();
    const delta = (name: string, labels: Record<string, string> = {}) => after.value(name, labels) - before.value(name, labels);
    const fnLabels = { tenant: TENANT, function: FN };
    expect(delta('fnhost_invocations_total', { ...fnLabels, outcome: 'success', start: 'cold' })).toBe(1);
    expect(delta('fnhost_invocations_total', { ...fnLabels, outcome: 'success', start: 'warm' })).toBe(1);
    expect(delta('fnhost_invocations_total', fnLabels)).toBe(2);
    expect(delta('fnhost_invocation_duration_seconds_count', { ...fnLabels, start: 'cold' })).toBe(1);
    expect(delta('fnhost_invocation_duration_seconds_count', { ...fnLabels, start: 'warm' })).toBe(1);
    expect(delta('fnhost_queue_wait_seconds_count', { tenant: TENANT })).toBe(2);
    expect(delta('fnhost_specialise_seconds_count', { runtime: 'node' })).toBe(1);
    expect(delta('fnhost_oom_kills_total', fnLabels)).toBe(0);
    expect(delta('fnhost_timeouts_total', fnLabels)).toBe(0);
    // the route label is the matched pattern (its parameter name is the gateway's business), never the raw path
    const invokeRoute = after.samples.find((s) => s.name === 'fnhost_http_requests_total' && /^\/v1\/functions\/:\w+\/invoke$/.test(s.labels.route ?? ''))?.labels.route;
    expect(invokeRoute).toBeDefined();
    expect(delta('fnhost_http_requests_total', { method: 'POST', route: invokeRoute!, status: '200' })).toBe(2);
    expect(after.samples.some((s) => s.labels.route?.includes(FN))).toBe(false);
    // the first scrape is counted once it has answered
    expect(delta('fnhost_http_requests_total', { method: 'GET', route: '/metrics' })).toBe(1);
    // the warm instance is still alive and admitted
    expect(after.value('fnhost_warm_instances', fnLabels)).toBe(1);
    expect(after.value('fnhost_memory_admitted_bytes')).toBeGreaterThanOrEqual(64 * 2 ** 20);
    expect(after.value('fnhost_memory_capacity_bytes')).toBeGreaterThan(0);
    // scrape-time gauges of the scheduler: queue depth of our tenant (drained), the node pool and its refills
    // (a tenant whose calls never queued — both ran in-process — may have no queue-depth series yet)
    const depth = after.samples.filter((s) => s.name === 'fnhost_queue_depth' && s.labels.tenant === TENANT);
    expect(depth.length).toBeLessThanOrEqual(1);
    expect(depth.every((s) => s.value === 0)).toBe(true);
    expect(after.samples.some((s) => s.name === 'fnhost_pool_size' && s.labels.kind === 'node')).toBe(true);
    // the pool refills the taken slot after a short hold (services/scheduler/pool.ts), so poll for it; later scrapes
    // do not touch the deltas above
    let refills = after.value('fnhost_pool_refills_total', { kind: 'node' });
    for (const deadline = Date.now() + 5_000; !(refills >= 1) && Date.now() < deadline; ) {
      await new Promise((r) => setTimeout(r, 20));
      refills = (await scrape()).value('fnhost_pool_refills_total', { kind: 'node' });
    }
    expect(refills).toBeGreaterThanOrEqual(1);
    // no unbounded label values: no invocation ids anywhere
    const ids = [r1.headers.get('x-fnhost-invocation-id'), r2.headers.get('x-fnhost-invocation-id')].filter(Boolean) as string[];
    expect(ids).toHaveLength(2);
    expect(after.samples.some((s) => Object.values(s.labels).some((v) => ids.some((id) => v.includes(id))))).toBe(false);

    // ---- traces ----
    // Sync calls the host's own scheduler can place at once skip the queue (services/scheduler/local-dispatch.ts):
    // http request → 'local dispatch' → pool claim + specialise | warm pick → run → result delivery.
    // The async case of the next test crosses the queue (enqueue → queue wait + scheduler pickup).
    const coldNames = [
      SpanName.httpRequest, SpanName.localDispatch, SpanName.poolClaim,
      SpanName.specialise, SpanName.cgroupCaps, SpanName.mount, SpanName.runtimeLoad, SpanName.run, SpanName.resultDelivery,
    ];
    const warmNames = [SpanName.httpRequest, SpanName.localDispatch, SpanName.warmPick, SpanName.run, SpanName.resultDelivery];
    const has = (spans: DecodedSpan[], traceId: string, names: string[]) => names.every((n) => spans.some((s) => s.traceId === traceId && s.name === n));
    const all = await sink.waitFor((spans) => has(spans, cold.traceId, coldNames) && has(spans, warm.traceId, warmNames), 15_000);

    const check = (t: { traceId: string; spanId: string }, start: 'cold' | 'warm', invocationId: string) => {
      const spans = all.filter((s) => s.traceId === t.traceId);
      const one = (name: string) => {
        const found = spans.filter((s) => s.name === name);
        expect(found, `${start}: exactly one '${name}' in [${spans.map((s) => s.name)}]`).toHaveLength(1);
        return found[0]!;
      };
      const http = one(SpanName.httpRequest);
      const local = one(SpanName.localDispatch);
      const run = one(SpanName.run);
      const delivery = one(SpanName.resultDelivery);
      // the caller's traceparent is honoured: same trace, its span is our root's parent
      expect(http.parentSpanId).toBe(t.spanId);
      expect(http.kind).toBe(SERVER);
      expect(http.attributes).toMatchObject({ [Attr.httpMethod]: 'POST', [Attr.httpRoute]: invokeRoute, [Attr.httpStatus]: 200, [Attr.urlPath]: `/v1/functions/${FN}/invoke` });
      // the invocation's attributes live on 'local dispatch' only (exported bytes per invocation)
      for (const k of [Attr.tenant, Attr.function, Attr.version, Attr.mode, Attr.start, Attr.invocationId]) expect(http.attributes[k], k).toBeUndefined();
      // declared-but-unset late attributes are not exported (a success has no error type; sandbox id only with a handle)
      expect(Object.keys(local.attributes)).not.toContain(Attr.errorType);
      // no queue crossed: no enqueue / queue wait / scheduler pickup spans
      for (const n of [SpanName.enqueue, SpanName.queueWait, SpanName.pickup]) expect(spans.some((s) => s.name === n), n).toBe(false);
      expect(local.parentSpanId).toBe(http.spanId);
      expect(run.parentSpanId).toBe(local.spanId);
      expect(delivery.parentSpanId).toBe(local.spanId);
      expect(local.attributes).toMatchObject({
        [Attr.tenant]: TENANT,
        [Attr.function]: FN,
        [Attr.version]: 1,
        [Attr.memoryMb]: 64,
        [Attr.start]: start,
        [Attr.outcome]: 'success',
        [Attr.invocationId]: invocationId,
        [Attr.runtime]: 'node',
        [Attr.mode]: 'sync',
      });
      expect(local.attributes[Attr.sandboxId]).toEqual(expect.any(String));
      if (start === 'cold') {
        const claim = one(SpanName.poolClaim);
        const spec = one(SpanName.specialise);
        expect(claim.parentSpanId).toBe(local.spanId);
        expect(spec.parentSpanId).toBe(local.spanId);
        for (const step of [SpanName.cgroupCaps, SpanName.mount, SpanName.runtimeLoad]) expect(one(step).parentSpanId).toBe(spec.spanId);
        expect(spans.some((s) => s.name === SpanName.warmPick)).toBe(false);
      } else {
        expect(one(SpanName.warmPick).parentSpanId).toBe(local.spanId);
        expect(spans.some((s) => s.name === SpanName.specialise || s.name === SpanName.poolClaim)).toBe(false);
      }
      // every span of the trace links to another span of it, except the root whose parent is the caller's
      const ids = new Set(spans.map((s) => s.spanId));
      for (const s of spans) expect(s === http ? s.parentSpanId === t.spanId : ids.has(s.parentSpanId ?? ''), `${s.name} parent`).toBe(true);
      for (const s of spans) expect(s.service).toBe('fnhost-e2e');
      for (const s of spans) expect(s.endNs).toBeGreaterThanOrEqual(s.startNs);
    };
    check(cold, 'cold', ids[0]!);
    check(warm, 'warm', ids[1]!);
    expect(sink.rejected).toBe(0);
  });

  it('failures and async: outcome counters (FunctionError, OutOfMemory, Timeout) and a trace across an async hop', async () => {
    await deploy('boom', 'exports.handler = async () => { throw new TypeError("nope"); };');
    // 64 MB cap; keeps allocating touched memory until the kernel's OOM killer ends it
    await deploy('hog', 'exports.handler = async () => { const a = []; for (;;) { a.push(Buffer.alloc(8 << 20, 1)); } };');
    await deploy('sleepy', 'exports.handler = () => new Promise((r) => setTimeout(r, 60_000));', { timeoutMs: 1000 });
    const before = await scrape();

    const boom = traceparent();
    const r1 = await req('POST', '/v1/functions/boom/invoke', { key: apiKey, body: 'x', headers: { traceparent: boom.header } });
    expect(r1.status).toBe(502);
    expect(((await r1.json()) as { error: { type: string } }).error.type).toBe('FunctionError');
    const hog = traceparent();
    const r2 = await req('POST', '/v1/functions/hog/invoke', { key: apiKey, body: 'x', headers: { traceparent: hog.header } });
    expect(((await r2.json()) as { error: { type: string } }).error.type).toBe('OutOfMemory');
    const r3 = await req('POST', '/v1/functions/sleepy/invoke', { key: apiKey, body: 'x' });
    expect(((await r3.json()) as { error: { type: string } }).error.type).toBe('Timeout');

    // async: the trace continues through the job data; the warm instance of the first test serves it
    const asy = traceparent();
    const a = await req('POST', `/v1/functions/${FN}/invoke?mode=async`, { key: apiKey, body: 'zz', headers: { traceparent: asy.header } });
    expect(a.status).toBe(202);
    const { invocationId } = (await a.json()) as { invocationId: string };
    const deadline = Date.now() + 15_000;
    for (;;) {
      const g = (await (await req('GET', `/v1/invocations/${invocationId}`, { key: apiKey })).json()) as { status: string };
      if (g.status === 'succeeded') break;
      expect(g.status).not.toBe('failed');
      if (Date.now() > deadline) throw new Error(`async invocation still ${g.status}`);
      await new Promise((r) => setTimeout(r, 25));
    }

    const after = await scrape();
    const delta = (name: string, labels: Record<string, string> = {}) => after.value(name, labels) - before.value(name, labels);
    const t = { tenant: TENANT };
    expect(delta('fnhost_invocations_total', { ...t, function: 'boom', outcome: 'FunctionError', start: 'cold' })).toBe(1);
    expect(delta('fnhost_invocations_total', { ...t, function: 'hog', outcome: 'OutOfMemory' })).toBe(1);
    expect(delta('fnhost_invocations_total', { ...t, function: 'sleepy', outcome: 'Timeout' })).toBe(1);
    expect(delta('fnhost_invocations_total', { ...t, function: FN, outcome: 'success', start: 'warm' })).toBe(1);
    expect(delta('fnhost_invocations_total', t)).toBe(4);
    expect(delta('fnhost_oom_kills_total', { ...t, function: 'hog' })).toBe(1);
    expect(delta('fnhost_oom_kills_total', t)).toBe(1);
    expect(delta('fnhost_timeouts_total', { ...t, function: 'sleepy' })).toBe(1);
    expect(delta('fnhost_timeouts_total', t)).toBe(1);

    const spans = await sink.waitFor(
      (all) =>
        [SpanName.httpRequest, SpanName.enqueue, SpanName.queueWait, SpanName.pickup, SpanName.run, SpanName.resultDelivery].every((n) => all.some((s) => s.traceId === asy.traceId && s.name === n)) &&
        [SpanName.localDispatch, SpanName.run].every((n) => all.some((s) => s.traceId === boom.traceId && s.name === n)) &&
        [SpanName.localDispatch, SpanName.run].every((n) => all.some((s) => s.traceId === hog.traceId && s.name === n)),
      15_000,
    );
    const of = (traceId: string, name: string) => spans.filter((s) => s.traceId === traceId && s.name === name);
    // async: the 202 request and the run it caused are one trace, linked through 'enqueue' (the queue path)
    const [http] = of(asy.traceId, SpanName.httpRequest);
    const [enq] = of(asy.traceId, SpanName.enqueue);
    const [pickup] = of(asy.traceId, SpanName.pickup);
    const [qwait] = of(asy.traceId, SpanName.queueWait);
    expect(http!.parentSpanId).toBe(asy.spanId);
    expect(http!.attributes[Attr.httpStatus]).toBe(202);
    expect(enq!.attributes[Attr.invocationId]).toBe(invocationId);
    expect(enq!.parentSpanId).toBe(http!.spanId);
    expect(enq!.kind).toBe(PRODUCER);
    expect(qwait!.parentSpanId).toBe(enq!.spanId);
    expect(pickup!.parentSpanId).toBe(enq!.spanId);
    expect(pickup!.kind).toBe(CONSUMER);
    expect(of(asy.traceId, SpanName.run)[0]!.parentSpanId).toBe(pickup!.spanId);
    expect(of(asy.traceId, SpanName.resultDelivery)[0]!.parentSpanId).toBe(pickup!.spanId);
    expect(of(asy.traceId, SpanName.localDispatch)).toHaveLength(0);
    expect(pickup!.attributes).toMatchObject({ [Attr.mode]: 'async', [Attr.start]: 'warm', [Attr.outcome]: 'success' });
    // a failure says why, on the 'local dispatch' span (these sync calls ran in-process) and on the run span
    const [bp] = of(boom.traceId, SpanName.localDispatch);
    const [brun] = of(boom.traceId, SpanName.run);
    expect(bp!.attributes).toMatchObject({ [Attr.outcome]: 'FunctionError', [Attr.errorType]: 'FunctionError', [Attr.start]: 'cold' });
    expect(brun!.status.code).toBe(2); // OTLP STATUS_CODE_ERROR
    expect(brun!.attributes[Attr.errorType]).toBe('FunctionError');
    expect(of(boom.traceId, SpanName.httpRequest)[0]!.attributes[Attr.httpStatus]).toBe(502);
    // an OOM kill: the memory cap and the peak the kernel saw (≥ half the 64 MiB cap) are on the trace
    const [hp] = of(hog.traceId, SpanName.localDispatch);
    const [hrun] = of(hog.traceId, SpanName.run);
    expect(hp!.attributes).toMatchObject({ [Attr.outcome]: 'OutOfMemory', [Attr.memoryMb]: 64 });
    expect(hrun!.attributes[Attr.peakMemoryBytes]).toBeGreaterThanOrEqual(32 * 2 ** 20);
  });
});
