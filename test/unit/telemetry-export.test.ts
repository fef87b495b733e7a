import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SpanKind } from '@opentelemetry/api';
import { Attr, SpanName, injectTraceparent, withRemoteParent, withSpan } from '../../services/common/telemetry.ts';
import { initTracing, tracingRequested, type TracingHandle } from '../../services/common/tracing-setup.ts';
import { startOtlpSink, startOtlpSinkProcess, type OtlpSink } from '../helpers/otlp-sink.ts';

describe('tracingRequested (standard OTEL_* env)', () => {
  it.each([
    [{}, false],
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:4318' }, true],
    [{ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://127.0.0.1:4318/v1/traces' }, true],
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:4318', OTEL_SDK_DISABLED: 'true' }, false],
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:4318', OTEL_TRACES_EXPORTER: 'none' }, false],
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: '' }, false],
  ])('%j → %s', (env, want) => {
    expect(tracingRequested(env)).toBe(want);
  });
});

// The real exporter (OTLP/HTTP, JSON) configured only through env, against a real receiver on loopback.
describe.each([
  ['on the event loop (default)', '0'],
  ['on a worker thread (FNHOST_OTEL_EXPORT_THREAD=1)', '1'],
])('OTLP/HTTP export to a loopback receiver, %s', (_, thread) => {
  let sink: OtlpSink;
  let handle: TracingHandle;
  const saved = { ...process.env };

  beforeAll(async () => {
    sink = await startOtlpSink();
    Object.assign(process.env, sink.env, { OTEL_SERVICE_NAME: 'fnhost-test', OTEL_BSP_SCHEDULE_DELAY: '50', FNHOST_OTEL_EXPORT_THREAD: thread });
    handle = await initTracing();
  });
  afterAll(async () => {
    await handle?.shutdown();
    for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
    Object.assign(process.env, saved);
    await sink?.close();
  });

  it('exports spans with ids, parent links, kinds and attributes intact (batched, without forceFlush)', async () => {
    expect(handle.enabled).toBe(true);
    const caller = '00-11112222333344445555666677778888-9999aaaabbbbcccc-01';
    let tp: string | undefined;
    await withRemoteParent(caller, () =>
      withSpan(SpanName.httpRequest, { [Attr.tenant]: 'acme', [Attr.memoryMb]: 128, [Attr.start]: 'cold' }, async () => {
        tp = await withSpan(SpanName.enqueue, {}, async () => injectTraceparent(), { kind: SpanKind.PRODUCER });
      }, { kind: SpanKind.SERVER }),
    );
    const spans = await sink.waitFor((all) => all.length >= 2, 10_000);
    const http = spans.find((s) => s.name === SpanName.httpRequest)!;
    const enq = spans.find((s) => s.name === SpanName.enqueue)!;
    expect(http.traceId).toBe('11112222333344445555666677778888');
    expect(http.parentSpanId).toBe('9999aaaabbbbcccc');
    expect(enq.parentSpanId).toBe(http.spanId);
    expect(tp).toBe(`00-${http.traceId}-${enq.spanId}-01`);
    expect(http.kind).toBe(2); // OTLP SPAN_KIND_SERVER
    expect(enq.kind).toBe(4); // OTLP SPAN_KIND_PRODUCER
    expect(http.attributes).toMatchObject({ [Attr.tenant]: 'acme', [Attr.memoryMb]: 128, [Attr.start]: 'cold' });
    expect(http.service).toBe('fnhost-test');
    for (const s of [http, enq]) expect(s.endNs).toBeGreaterThanOrEqual(s.startNs);
    expect(sink.rejected).toBe(0);
  });

  it('shutdown flushes spans still buffered', async () => {
    const before = sink.spanCount;
    await withSpan('last words', { [Attr.outcome]: 'success' }, async () => {});
    await handle.shutdown();
    expect(sink.spanCount).toBe(before + 1);
    expect(sink.spans().at(-1)).toMatchObject({ name: 'last words', attributes: { [Attr.outcome]: 'success' } });
  });
});

describe('sampling from the standard env (OTEL_TRACES_SAMPLER)', () => {
  let sink: OtlpSink;
  const saved = { ...process.env };
  afterAll(async () => {
    for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
    Object.assign(process.env, saved);
    await sink?.close();
  });

  it('always_off: nothing is exported, and the unsampled decision still travels in the traceparent (flags 00)', async () => {
    sink = await startOtlpSink();
    Object.assign(process.env, sink.env, { OTEL_TRACES_SAMPLER: 'always_off', OTEL_BSP_SCHEDULE_DELAY: '20' });
    const handle = await initTracing();
    try {
      const tp = await withSpan(SpanName.enqueue, {}, async (span) => {
        expect(span.isRecording()).toBe(false);
        return injectTraceparent();
      });
      expect(tp).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-00$/);
      // downstream (parent-based default) keeps the caller's decision
      await handle.forceFlush();
    } finally {
      await handle.shutdown();
    }
    expect(sink.spanCount).toBe(0);
  });
});

describe('the OTLP sink as its own process (benchmarks)', () => {
  it('counts spans posted to it, refuses protobuf, and exits on close', async () => {
    const sink = await startOtlpSinkProcess();
    try {
      const body = {
        resourceSpans: [
          {
            resource: { attributes: [{ key: 'service.name', value: { stringValue: 'x' } }] },
            scopeSpans: [{ spans: [1, 2, 3].map((i) => ({ traceId: 'ab'.repeat(16), spanId: `0${i}`.repeat(8), name: `s${i}`, kind: 1, startTimeUnixNano: '1', endTimeUnixNano: '2' })) }],
          },
        ],
      };
      const ok = await fetch(`${sink.url}/v1/traces`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
      expect(ok.status).toBe(200);
      const proto = await fetch(`${sink.url}/v1/traces`, { method: 'POST', headers: { 'content-type': 'application/x-protobuf' }, body: new Uint8Array([10, 0]) });
      expect(proto.status).toBe(415);
      expect(await sink.waitFor(3, 5000)).toEqual({ spanCount: 3, requests: 1, rejected: 1 });
    } finally {
      await sink.close();
    }
    await expect(fetch(`${sink.url}/v1/traces`, { method: 'POST', body: '{}' })).rejects.toThrow();
  });
});
