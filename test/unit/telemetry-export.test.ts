import { randomBytes, randomUUID } from 'node:crypto';
import { readFileSync, readdirSync } from 'node:fs';
import { getPriority } from 'node:os';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import { gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SpanKind, SpanStatusCode } from '@opentelemetry/api';
import { Attr, SpanName, SpanSchema, injectTraceparent, recordSpan, recordSpanOf, spanTime, startServerSpanOf, startSpanOf, withRemoteParent, withSpan, type SpanValues } from '../../services/common/telemetry.ts';
import { initTracing, resourceOf, tracingRequested, type TracingHandle } from '../../services/common/tracing-setup.ts';
import { FnSpan, TraceIdWords, samplerFromEnv } from '../../services/common/trace-span.ts';
import { ProtoBatchHeader, ProtoWriter, nameKindId, protoBatchHeader, protoKeyValue, protoSpan } from '../../services/common/otlp-encode.ts';
import { SpanRecords, encodeRecordsHere, writeChildRecord, writeSpanRecord } from '../../services/common/span-records.ts';
import { REC_INTS } from '../../services/common/otlp-records.mjs';
import { newInvocationId } from '../../services/scheduler/client.ts';
import { createMetrics } from '../../services/common/metrics.ts';
import { DEFAULT_EXPORT_THREAD_NICE, EXPORT_THREAD_NAME, OtlpHttpExporter, exportNiceFromEnv, otlpConfigFromEnv } from '../../services/common/trace-export.ts';
import { countOtlpProto, decodeOtlpProto, startOtlpSink, startOtlpSinkProcess, type OtlpSink } from '../helpers/otlp-sink.ts';
import { parsePromText } from '../helpers/prom-text.ts';

// Their names are cached as this file loads: other tests fill the process-wide name cache (256 names), and past it
// a child cannot be written as a record (writeChildRecord returns false, the span goes whole through protoSpan).
const CHILD_BYTES = new SpanSchema('child bytes', SpanKind.INTERNAL, ['t.child.kind', 't.child.id']);
const CHILD_EMPTY = new SpanSchema('child empty', SpanKind.CLIENT, []);
for (const c of [CHILD_BYTES, CHILD_EMPTY]) c.nk = nameKindId(c.name, c.kind);

describe('the resource (per process, sent once per export request)', () => {
  it('process.pid, OTEL_RESOURCE_ATTRIBUTES, the caller\'s attributes, and service.name by the spec\'s precedence', () => {
    expect(resourceOf({})).toEqual({ 'process.pid': process.pid, 'service.name': 'fnhost' });
    expect(resourceOf({}, { serviceName: 'fnhost-scheduler', resource: { [Attr.node]: 'n1' } })).toEqual({ 'process.pid': process.pid, [Attr.node]: 'n1', 'service.name': 'fnhost-scheduler' });
    const env = { OTEL_RESOURCE_ATTRIBUTES: 'deployment.environment=prod, team=a%2Cb,service.name=from-attrs,broken,=x,fnhost.node.id=env-node' };
    expect(resourceOf(env, { serviceName: 'code', resource: { [Attr.node]: 'n1' } })).toEqual({
      'process.pid': process.pid, 'deployment.environment': 'prod', team: 'a,b', [Attr.node]: 'n1', 'service.name': 'from-attrs',
    });
    expect(resourceOf({ ...env, OTEL_SERVICE_NAME: 'from-env' })['service.name']).toBe('from-env');
    expect(resourceOf({ OTEL_RESOURCE_ATTRIBUTES: 'bad=%E0%A4%A' })).toEqual({ 'process.pid': process.pid, 'service.name': 'fnhost' });
  });
});

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

// The real exporter configured only through env, against a real receiver on loopback, in both OTLP encodings.
describe.each([
  ['http/protobuf (default)', ''],
  ['http/json', 'http/json'],
])('OTLP/HTTP export to a loopback receiver, %s', (_, protocol) => {
  let sink: OtlpSink;
  let handle: TracingHandle;
  const saved = { ...process.env };

  beforeAll(async () => {
    sink = await startOtlpSink();
    Object.assign(process.env, sink.env, { OTEL_SERVICE_NAME: 'fnhost-test', OTEL_BSP_SCHEDULE_DELAY: '50', OTEL_EXPORTER_OTLP_PROTOCOL: protocol });
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

  it('schema spans and spans recorded through the one reused scratch span arrive intact (ids, parents, times, attributes)', async () => {
    const HTTP = new SpanSchema('schema http', SpanKind.SERVER, [Attr.httpMethod, Attr.httpStatus]);
    const LD = new SpanSchema('schema dispatch', SpanKind.INTERNAL, [Attr.tenant, Attr.invocationId, Attr.outcome]);
    const PICK = new SpanSchema('schema pick', SpanKind.INTERNAL, []);
    const DELIVERY = new SpanSchema('schema delivery', SpanKind.INTERNAL, [Attr.start]);
    const caller = '00-aaaabbbbccccddddeeeeffff00001111-2222333344445555-01';
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) {
      const hv: SpanValues = ['POST', undefined];
      const http = startServerSpanOf(HTTP, hv, caller);
      const id = randomUUID();
      ids.push(id);
      const v: SpanValues = ['acme', id, undefined];
      const ld = startSpanOf(LD, v, http);
      const t = spanTime();
      recordSpanOf(PICK, t, t + 0.25, ld);
      recordSpanOf(DELIVERY, t + 1, t + 1.5, ld, [i % 2 ? 'warm' : 'cold']);
      v[2] = 'success';
      ld.end();
      hv[1] = 200 + i;
      http.end();
    }
    const spans = await sink.waitFor((all) => all.filter((s) => s.name.startsWith('schema ')).length >= 20, 10_000);
    const mine = spans.filter((s) => s.name.startsWith('schema '));
    expect(new Set(mine.map((s) => s.spanId)).size).toBe(20);
    for (let i = 0; i < 5; i++) {
      const ld = mine.find((s) => s.name === 'schema dispatch' && s.attributes[Attr.invocationId] === ids[i])!;
      expect(ld.attributes).toEqual({ [Attr.tenant]: 'acme', [Attr.invocationId]: ids[i], [Attr.outcome]: 'success' });
      const http = mine.find((s) => s.spanId === ld.parentSpanId)!;
      expect(http).toMatchObject({ name: 'schema http', kind: 2, traceId: 'aaaabbbbccccddddeeeeffff00001111', parentSpanId: '2222333344445555' });
      expect(http.attributes).toEqual({ [Attr.httpMethod]: 'POST', [Attr.httpStatus]: 200 + i });
      const kids = mine.filter((s) => s.parentSpanId === ld.spanId);
      expect(kids.map((s) => s.name).sort()).toEqual(['schema delivery', 'schema pick']);
      const pick = kids.find((s) => s.name === 'schema pick')!;
      const delivery = kids.find((s) => s.name === 'schema delivery')!;
      expect(pick.attributes).toEqual({});
      expect(delivery.attributes).toEqual({ [Attr.start]: i % 2 ? 'warm' : 'cold' });
      expect(Number(pick.endNs - pick.startNs)).toBeCloseTo(250_000, -2);
      expect(Number(delivery.startNs - pick.startNs)).toBeCloseTo(1_000_000, -2);
      for (const k of kids) expect(k.traceId).toBe('aaaabbbbccccddddeeeeffff00001111');
    }
    expect(sink.rejected).toBe(0);
  });

  it('encodes every attribute type, events, status and long or non-ASCII strings faithfully', async () => {
    const long = 'x'.repeat(300) + 'é✓';
    const many: Record<string, number> = {};
    for (let i = 0; i < 400; i++) many[`k.${i}`] = i; // a span body > 16 KiB: 3-byte length prefixes
    await withSpan('types', { s: 'ünïcode ✓', i: 42, neg: -7, d: 1.5, b: true, arr: ['a', 'b'], nums: [1, 2], long, ...many }, async (span) => {
      span.setAttribute(Attr.peakMemoryBytes, 2 ** 40);
      span.setStatus({ code: SpanStatusCode.ERROR, message: 'bad ✗' });
      span.addEvent('ev', { why: 'because' });
    });
    recordSpan('timed', 1_700_000_000_123.25, 1_700_000_000_125.5); // exactly representable as doubles
    const spans = await sink.waitFor((all) => all.some((x) => x.name === 'types') && all.some((x) => x.name === 'timed'), 10_000);
    const t = spans.find((x) => x.name === 'types')!;
    expect(t.attributes).toMatchObject({ s: 'ünïcode ✓', i: 42, neg: -7, d: 1.5, b: true, arr: ['a', 'b'], nums: [1, 2], long, 'k.399': 399, [Attr.peakMemoryBytes]: 2 ** 40 });
    expect(Object.keys(t.attributes)).toHaveLength(8 + 400 + 1);
    expect(t.status).toEqual({ code: 2, message: 'bad ✗' });
    expect(t.events).toEqual([{ name: 'ev', attributes: { why: 'because' } }]);
    const timed = spans.find((x) => x.name === 'timed')!;
    expect(timed.startNs).toBe(1_700_000_000_123_250_000n);
    expect(timed.endNs).toBe(1_700_000_000_125_500_000n);
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

describe('sampler from OTEL_TRACES_SAMPLER', () => {
  const ids = Array.from({ length: 4000 }, () => TraceIdWords.fromHex(randomBytes(16).toString('hex')));
  it.each([
    [{}, 1, true, false],
    [{ OTEL_TRACES_SAMPLER: 'always_on' }, 1, true, true],
    [{ OTEL_TRACES_SAMPLER: 'always_off' }, 0, false, false],
    [{ OTEL_TRACES_SAMPLER: 'parentbased_always_off' }, 0, true, false],
    [{ OTEL_TRACES_SAMPLER: 'parentbased_traceidratio', OTEL_TRACES_SAMPLER_ARG: '0.25' }, 0.25, true, false],
    [{ OTEL_TRACES_SAMPLER: 'traceidratio', OTEL_TRACES_SAMPLER_ARG: '0' }, 0, false, false],
    [{ OTEL_TRACES_SAMPLER: 'no-such-sampler' }, 1, true, false],
  ])('%j: root ratio %s, follows a sampled parent %s, an unsampled one %s', (env, ratio, withSampled, withUnsampled) => {
    const s = samplerFromEnv(env);
    const kept = ids.filter((id) => s.sample(id, undefined)).length / ids.length;
    expect(Math.abs(kept - ratio)).toBeLessThan(0.05);
    expect(s.sample(ids[0]!, true)).toBe(withSampled);
    expect(s.sample(ids[0]!, false)).toBe(withUnsampled);
  });
});

describe('OTLP export under pressure and configuration', () => {
  const saved = { ...process.env };
  afterAll(() => {
    for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
    Object.assign(process.env, saved);
  });

  it('batching: few large requests by default (8,192 spans, queue of 32,768), the standard OTEL_BSP_* env wins, a batch never exceeds the queue', () => {
    const cfg = (env: NodeJS.ProcessEnv) => otlpConfigFromEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:4318', ...env }, {}, 'fnhost');
    expect(cfg({})).toMatchObject({ maxExportBatchSize: 8192, maxQueueSize: 32_768, scheduledDelayMillis: 5000 });
    expect(cfg({ OTEL_BSP_MAX_EXPORT_BATCH_SIZE: '512', OTEL_BSP_MAX_QUEUE_SIZE: '2048', OTEL_BSP_SCHEDULE_DELAY: '200' })).toMatchObject({ maxExportBatchSize: 512, maxQueueSize: 2048, scheduledDelayMillis: 200 });
    expect(cfg({ OTEL_BSP_MAX_QUEUE_SIZE: '1000' })).toMatchObject({ maxExportBatchSize: 1000, maxQueueSize: 1000 });
    expect(cfg({ OTEL_BSP_MAX_EXPORT_BATCH_SIZE: 'lots' })).toMatchObject({ maxExportBatchSize: 8192 });
  });

  it('sends OTEL_EXPORTER_OTLP_HEADERS, honours the traces endpoint and gzip', async () => {
    const seen: { url?: string; headers: IncomingHttpHeaders; spans: number }[] = [];
    const srv = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const raw = Buffer.concat(chunks);
        const body = req.headers['content-encoding'] === 'gzip' ? gunzipSync(raw) : raw;
        seen.push({ url: req.url, headers: req.headers, spans: countOtlpProto(body) });
        res.writeHead(200).end();
      });
    });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
    const port = (srv.address() as { port: number }).port;
    const handle = await initTracing({
      env: {
        OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:1', // the traces endpoint wins
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `http://127.0.0.1:${port}/custom/path`,
        OTEL_EXPORTER_OTLP_HEADERS: 'x-api-key=s%20ecret,x-other=1',
        OTEL_EXPORTER_OTLP_TRACES_HEADERS: 'x-other=2',
        OTEL_EXPORTER_OTLP_COMPRESSION: 'gzip',
      },
    });
    try {
      await withSpan('h', {}, async () => {});
      await handle.forceFlush();
    } finally {
      await handle.shutdown();
      srv.close();
    }
    expect(seen).toHaveLength(1);
    expect(seen[0]).toMatchObject({ url: '/custom/path', spans: 1 });
    expect(seen[0].headers).toMatchObject({ 'x-api-key': 's ecret', 'x-other': '2', 'content-type': 'application/x-protobuf', 'content-encoding': 'gzip' });
  });

  it('a collector that does not answer: the queue stays bounded, drops are counted (stats and /metrics)', async () => {
    let hold = true;
    const hung: import('node:http').ServerResponse[] = [];
    const srv = createServer((req, res) => {
      req.resume();
      if (hold) hung.push(res);
      else res.writeHead(200).end();
    });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
    const port = (srv.address() as { port: number }).port;
    const { metrics } = await import('../../services/common/metrics.ts');
    const droppedBefore = parsePromText(await metrics.text()).value('fnhost_trace_spans_dropped_total', {}) ?? 0;
    const handle = await initTracing({
      env: { OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${port}`, OTEL_BSP_MAX_QUEUE_SIZE: '100', OTEL_BSP_MAX_EXPORT_BATCH_SIZE: '10' },
    });
    try {
      for (let i = 0; i < 1000; i++) await withSpan('x', { i }, async () => {});
      const st = handle.stats();
      // 4 exports of 10 in flight + 6 sealed batches queued = 100 held; the other 900 dropped
      expect(st.dropped).toBe(900);
      expect(st.requests).toBe(4);
      expect(parsePromText(await metrics.text()).value('fnhost_trace_spans_dropped_total', {})).toBe(droppedBefore + 900);
      hold = false;
      for (const r of hung.splice(0)) r.writeHead(200).end();
      await handle.forceFlush();
      expect(handle.stats()).toMatchObject({ exported: 100, dropped: 900, failed: 0, requests: 10 });
    } finally {
      hold = false;
      for (const r of hung.splice(0)) r.writeHead(200).end();
      await handle.shutdown();
      srv.closeAllConnections();
      srv.close();
    }
  });

  it('an unreachable collector: exports fail and are counted, spans never pile up', async () => {
    // a port nobody listens on: bind one, then close it
    const probe = createServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', () => r()));
    const port = (probe.address() as { port: number }).port;
    await new Promise((r) => probe.close(r));
    const handle = await initTracing({ env: { OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${port}`, OTEL_BSP_MAX_EXPORT_BATCH_SIZE: '5' } });
    try {
      for (let i = 0; i < 20; i++) await withSpan('lost', {}, async () => {});
      await handle.forceFlush();
      expect(handle.stats()).toMatchObject({ exported: 0, failed: 20, dropped: 0 });
    } finally {
      await handle.shutdown();
    }
  });
});

describe('the export thread (batches POSTed off the event loop)', () => {
  /** 100 spans in batches of 10 (more batches than concurrent exports, so returned buffers are reused) */
  async function exportThrough(exp: OtlpHttpExporter, from: number, n: number): Promise<void> {
    const tid = TraceIdWords.fromHex('12'.repeat(16));
    for (let i = from; i < from + n; i++) {
      const s = new FnSpan(exp, `span ${i}`, SpanKind.INTERNAL, tid, undefined, { [Attr.tenant]: 't', i }, 1_700_000_000_000 + i);
      s.setAttribute(Attr.outcome, 'success');
      s.end(1_700_000_000_000.5 + i);
    }
    await exp.forceFlush();
  }

  it.each([
    ['on a thread, encoded there from span records (default)', {}, true, true],
    ['on a thread, encoded on the loop (FNHOST_OTEL_ENCODE=loop)', { FNHOST_OTEL_ENCODE: 'loop' }, true, false],
    ['in-thread (FNHOST_OTEL_EXPORT_THREAD=0)', { FNHOST_OTEL_EXPORT_THREAD: '0' }, false, false],
    ['on a thread, gzip', { OTEL_EXPORTER_OTLP_COMPRESSION: 'gzip' }, true, true],
    ['on a thread, http/json', { OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json' }, true, false],
  ])('%s: every span arrives once, intact, and the counters add up', async (_, extraEnv, onThread, records) => {
    const sink = await startOtlpSink();
    const exp = new OtlpHttpExporter(otlpConfigFromEnv({ ...sink.env, ...extraEnv, OTEL_BSP_MAX_EXPORT_BATCH_SIZE: '10' }, { 'service.name': 'svc' }, 'fnhost'));
    try {
      expect(exp.exportThread).toBe(onThread);
      expect(exp.encodesOnThread).toBe(records);
      await exportThrough(exp, 0, 100);
      expect(exp.stats).toEqual({ exported: 100, dropped: 0, failed: 0, requests: 10 });
      const got = sink.spans();
      expect(got.map((s) => s.name).sort()).toEqual(Array.from({ length: 100 }, (_, i) => `span ${i}`).sort());
      const s7 = got.find((s) => s.name === 'span 7')!;
      expect(s7).toMatchObject({ service: 'svc', traceId: '12'.repeat(16), attributes: { [Attr.tenant]: 't', i: 7, [Attr.outcome]: 'success' } });
      expect(String(s7.startNs)).toBe('1700000000007000000');
      expect(String(s7.endNs)).toBe('1700000000007500000');
    } finally {
      await exp.shutdown();
      await sink.close();
    }
  });

  it('the thread runs at its own nice value (default 0, FNHOST_OTEL_EXPORT_NICE); the caller\'s thread keeps its own', async () => {
    expect(DEFAULT_EXPORT_THREAD_NICE).toBe(0);
    expect([undefined, '', ' 0 ', '5', '-20', '19', 'inherit', '20', '-21', 'low'].map(exportNiceFromEnv)).toEqual([0, 0, 0, 5, -20, 19, null, 0, 0, 0]);
    expect(otlpConfigFromEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:4318', FNHOST_OTEL_EXPORT_NICE: '7' }, {}, 'fnhost').exportThreadNice).toBe(7);
    /** nice value of each thread of this process (field 19 of /proc/<pid>/task/<tid>/stat) */
    const nices = () => {
      const out = new Map<string, number>();
      for (const t of readdirSync('/proc/self/task')) {
        try {
          const st = readFileSync(`/proc/self/task/${t}/stat`, 'utf8');
          out.set(t, Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[16]));
        } catch {
          // the thread exited between readdir and read
        }
      }
      return out;
    };
    const mine = getPriority();
    const before = nices();
    const sink = await startOtlpSink();
    const exp = new OtlpHttpExporter({ ...otlpConfigFromEnv({ ...sink.env, OTEL_BSP_MAX_EXPORT_BATCH_SIZE: '10' }, {}, 'fnhost'), exportThreadNice: 7 });
    try {
      // the thread sets its nice value as it starts: poll for a new thread at 7
      const deadline = Date.now() + 5_000;
      let added: number[] = [];
      while (Date.now() < deadline) {
        added = [...nices()].filter(([t]) => !before.has(t)).map(([, n]) => n);
        if (added.includes(7)) break;
        await new Promise((r) => setTimeout(r, 5));
      }
      expect(added).toContain(7);
      expect(getPriority()).toBe(mine);
      await exportThrough(exp, 0, 20);
      expect(exp.stats).toMatchObject({ exported: 20, failed: 0 });
    } finally {
      await exp.shutdown();
      await sink.close();
    }
  });

  it('a full default batch (8,192 spans, a body past 2 MiB: a 4-byte length) goes out whole: the thread\'s bytes are the loop encoder\'s, every span once', async () => {
    // one receiver keeps the raw bodies of both exporters apart by a header
    const bodies: Record<string, Buffer[]> = { thread: [], loop: [] };
    const srv = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        bodies[String(req.headers['x-encoder'])]!.push(Buffer.concat(chunks));
        res.writeHead(200, { 'content-type': 'application/x-protobuf', 'content-length': 0 }).end();
      });
    });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
    const url = `http://127.0.0.1:${(srv.address() as { port: number }).port}`;
    const make = (which: string, env: NodeJS.ProcessEnv) =>
      new OtlpHttpExporter(otlpConfigFromEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: url, OTEL_EXPORTER_OTLP_HEADERS: `x-encoder=${which}`, ...env }, { 'service.name': 'svc' }, 'fnhost'));
    const onThread = make('thread', {});
    const onLoop = make('loop', { FNHOST_OTEL_ENCODE: 'loop' });
    try {
      expect(onThread.encodesOnThread).toBe(true);
      expect(onLoop.encodesOnThread).toBe(false);
      const both = { onEnd: (sp: FnSpan) => (onThread.onEnd(sp), onLoop.onEnd(sp)) };
      const tid = TraceIdWords.fromHex('5a'.repeat(16));
      const n = 2 * 8192 + 7;
      for (let i = 0; i < n; i++) {
        // ~300 bytes a span: a non-repeating value (inline bytes) beside cached pairs
        const sp = new FnSpan(both, `span ${i}`, SpanKind.INTERNAL, tid, undefined, { [Attr.tenant]: 't', [Attr.invocationId]: `${i}-`.padEnd(160, 'x'), i }, 1_700_000_000_000 + i);
        sp.end(1_700_000_000_000.25 + i);
      }
      await Promise.all([onThread.forceFlush(), onLoop.forceFlush()]);
      expect(onThread.stats).toEqual({ exported: n, dropped: 0, failed: 0, requests: 3 });
      expect(onLoop.stats).toEqual({ exported: n, dropped: 0, failed: 0, requests: 3 });
      // the connections may deliver the batches out of order: compare them by their first span's name
      const key = (b: Buffer) => decodeOtlpProto(b)[0]!.name;
      const sorted = (bs: Buffer[]) => [...bs].sort((a, b) => key(a).localeCompare(key(b)));
      const [t, l] = [sorted(bodies.thread!), sorted(bodies.loop!)];
      expect(t.map((b) => b.length)).toEqual(l.map((b) => b.length));
      expect(Math.max(...t.map((b) => b.length))).toBeGreaterThan(2 << 20);
      for (let k = 0; k < t.length; k++) expect(t[k]!.equals(l[k]!), `batch ${k}`).toBe(true);
      const names = t.flatMap((b) => decodeOtlpProto(b).map((d) => d.name));
      expect(names).toHaveLength(n);
      expect(new Set(names).size).toBe(n);
    } finally {
      await onThread.shutdown();
      await onLoop.shutdown();
      await new Promise<void>((r) => srv.close(() => r()));
    }
  });

  it('the thread names itself in /proc (comm) so CPU accounting and perf can find it; the caller\'s thread keeps its name', async () => {
    expect(EXPORT_THREAD_NAME.length).toBeLessThanOrEqual(15); // TASK_COMM_LEN − 1: the kernel would cut it
    const comms = () => {
      const out = new Map<string, string>();
      for (const t of readdirSync('/proc/self/task')) {
        try {
          out.set(t, readFileSync(`/proc/self/task/${t}/comm`, 'utf8').trim());
        } catch {
          // the thread exited between readdir and read
        }
      }
      return out;
    };
    const mainComm = readFileSync('/proc/thread-self/comm', 'utf8').trim();
    const before = comms();
    expect([...before.values()]).not.toContain(EXPORT_THREAD_NAME);
    const sink = await startOtlpSink();
    const exp = new OtlpHttpExporter(otlpConfigFromEnv({ ...sink.env, OTEL_BSP_MAX_EXPORT_BATCH_SIZE: '10' }, {}, 'fnhost'));
    try {
      const deadline = Date.now() + 5_000;
      let named: string[] = [];
      while (Date.now() < deadline) {
        named = [...comms()].filter(([t, c]) => !before.has(t) && c === EXPORT_THREAD_NAME).map(([t]) => t);
        if (named.length) break;
        await new Promise((r) => setTimeout(r, 5));
      }
      expect(named).toHaveLength(1);
      expect(readFileSync('/proc/thread-self/comm', 'utf8').trim()).toBe(mainComm);
      await exportThrough(exp, 0, 20);
      expect(exp.stats).toMatchObject({ exported: 20, failed: 0 });
    } finally {
      await exp.shutdown();
      await sink.close();
    }
    // gone with the thread
    expect([...comms().values()]).not.toContain(EXPORT_THREAD_NAME);
  });

  it.each([
    ['spans as records (default)', {}],
    ['spans encoded on the loop (FNHOST_OTEL_ENCODE=loop)', { FNHOST_OTEL_ENCODE: 'loop' }],
  ])('a thread that dies (%s): what it held counts as failed, spans being batched and later spans go out from the event loop', async (_, extraEnv) => {
    const sink = await startOtlpSink();
    const exp = new OtlpHttpExporter(otlpConfigFromEnv({ ...sink.env, ...extraEnv, OTEL_BSP_MAX_EXPORT_BATCH_SIZE: '10' }, { 'service.name': 'svc' }, 'fnhost'));
    try {
      await exportThrough(exp, 0, 20);
      expect(exp.stats.exported).toBe(20);
      // five spans in the batch being built when the thread goes
      const tid = TraceIdWords.fromHex('34'.repeat(16));
      for (let i = 0; i < 5; i++) new FnSpan(exp, `pending ${i}`, SpanKind.INTERNAL, tid, undefined, { i }, 1_700_000_000_000).end(1_700_000_000_001);
      await (exp as unknown as { worker: import('node:worker_threads').Worker }).worker.terminate();
      const deadline = Date.now() + 5_000;
      while (exp.exportThread && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
      expect(exp.exportThread).toBe(false);
      expect(exp.encodesOnThread).toBe(false);
      await exportThrough(exp, 20, 30);
      expect(exp.stats).toMatchObject({ exported: 55, failed: 0, dropped: 0 });
      expect(sink.spans()).toHaveLength(55);
      expect(sink.spans().filter((s) => s.name.startsWith('pending ')).map((s) => s.attributes.i).sort()).toEqual([0, 1, 2, 3, 4]);
    } finally {
      await exp.shutdown();
      await sink.close();
    }
  });
});

describe('the OTLP sink (test/helpers/otlp-sink.ts)', () => {
  function encoded(n: number): Buffer {
    const w = new ProtoWriter();
    const sink = { onEnd: (s: FnSpan) => protoSpan(w, s) };
    for (let i = 0; i < n; i++) new FnSpan(sink, `s${i}`, SpanKind.INTERNAL, TraceIdWords.fromHex('ab'.repeat(16)), undefined, { i }, Date.now()).end();
    const spans = Buffer.from(w.bytes());
    return Buffer.concat([protoBatchHeader({ 'service.name': 'x' }, 'fnhost', spans.length), spans]);
  }

  it('our protobuf encoding decodes exactly like the OpenTelemetry SDK\'s own serializer output for the same spans', async () => {
    const { ProtobufTraceSerializer } = (await import('@opentelemetry/otlp-transformer')) as unknown as {
      ProtobufTraceSerializer: { serializeRequest(spans: unknown[]): Uint8Array };
    };
    const { resourceFromAttributes } = await import('@opentelemetry/resources');
    const spans: FnSpan[] = [];
    const w = new ProtoWriter();
    const sink = { onEnd: (s: FnSpan) => (spans.push(s), protoSpan(w, s)) };
    const tid = TraceIdWords.fromHex('0af7651916cd43dd8448eb211c80319c');
    const root = new FnSpan(sink, 'http request', SpanKind.SERVER, tid, { traceId: tid.hex, spanId: 'b7ad6b7169203331', traceFlags: 1, isRemote: true }, { s: 'ü', i: -3, d: 2.5, b: false, a: ['x', 'y'] }, 1_700_000_000_000.5);
    const child = new FnSpan(sink, 'run', SpanKind.INTERNAL, tid, root, {}, 1_700_000_000_001);
    child.setAttribute(Attr.outcome, 'FunctionError');
    child.recordException(new Error('boom'), 1_700_000_000_002);
    child.setStatus({ code: SpanStatusCode.ERROR, message: 'boom' });
    child.addLink({ context: { traceId: 'ab'.repeat(16), spanId: 'cd'.repeat(8), traceFlags: 1 }, attributes: { why: 'retry' } });
    child.end(1_700_000_000_003.25);
    root.end(1_700_000_000_004);
    const resource = resourceFromAttributes({ 'service.name': 'x' });
    const ours = Buffer.concat([protoBatchHeader({ 'service.name': 'x' }, 'fnhost', w.pos), w.bytes()]);
    const sdkSpans = spans.map((s) => ({
      name: s.name, kind: s.kind, spanContext: () => s.spanContext(), parentSpanContext: s.parentSpanContext, startTime: s.startTime, endTime: s.endTime,
      attributes: s.attributes, status: s.status, events: s.events, links: s.links, droppedAttributesCount: 0, droppedEventsCount: 0,
      droppedLinksCount: 0, resource, instrumentationScope: { name: 'fnhost' }, duration: s.duration, ended: true,
    }));
    const theirs = Buffer.from(ProtobufTraceSerializer.serializeRequest(sdkSpans));
    const norm = (b: Buffer) => decodeOtlpProto(b).map((s) => ({ ...s, startNs: String(s.startNs), endNs: String(s.endNs) }));
    expect(norm(ours)).toEqual(norm(theirs));
    expect(norm(ours).map((s) => s.name)).toEqual(['run', 'http request']);
    expect(norm(ours)[0]).toMatchObject({ parentSpanId: root.spanContext().spanId, status: { code: 2, message: 'boom' }, startNs: '1700000000001000000' });
  });

  it('the exporter\'s cached batch header is byte for byte protoBatchHeader, for every length size', () => {
    const resource = { 'service.name': 'fnhost', 'process.pid': 4242, [Attr.node]: 'node-ü' };
    const h = new ProtoBatchHeader(resource, 'fnhost');
    for (const n of [0, 1, 100, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, 5_000_000]) {
      const want = protoBatchHeader(resource, 'fnhost', n);
      const buf = Buffer.alloc(h.maxLength + 4, 0xee);
      const start = h.writeBefore(buf, h.maxLength + 2, n);
      expect(start, `spans bytes ${n}`).toBeGreaterThanOrEqual(0);
      expect(buf.subarray(start, h.maxLength + 2).equals(want), `spans bytes ${n}`).toBe(true);
      // nothing written outside the header
      expect(buf.subarray(h.maxLength + 2).every((b) => b === 0xee)).toBe(true);
    }
  });

  it('ids with the high bit set (kept as signed 32-bit words) come out exactly: hex, traceparent, protobuf', () => {
    const w = new ProtoWriter();
    const tid = TraceIdWords.fromHex('ffeeddccbbaa99887766554433221100');
    const span = new FnSpan({ onEnd: (s: FnSpan) => protoSpan(w, s) }, 'hi-bits', SpanKind.INTERNAL, tid, { traceId: tid.hex, spanId: 'deadbeefcafef00d', traceFlags: 1, isRemote: true }, {}, 1_700_000_000_000);
    for (const word of [tid.a, tid.b, tid.c, tid.d, span.hi, span.lo, span.phi, span.plo]) expect(word).toBe(word | 0);
    expect(tid.a).toBeLessThan(0);
    expect(span.parentId).toBe('deadbeefcafef00d');
    expect(new TraceIdWords(tid.a, tid.b, tid.c, tid.d).hex).toBe('ffeeddccbbaa99887766554433221100');
    expect(span.traceparent()).toBe(`00-ffeeddccbbaa99887766554433221100-${span.spanId}-01`);
    span.end(1_700_000_000_001);
    const [d] = decodeOtlpProto(Buffer.concat([protoBatchHeader({}, 'fnhost', w.pos), w.bytes()]));
    expect(d).toMatchObject({ traceId: 'ffeeddccbbaa99887766554433221100', spanId: span.spanId, parentSpanId: 'deadbeefcafef00d' });
  });

  it('string attributes that are not cached (short and long, ASCII or not, near the one-byte length limits) encode to the exact protobuf bytes', () => {
    // reference KeyValue bytes, written independently of otlp-encode.ts: field 9 {1: key, 2: AnyValue{1: string}}
    const varint = (n: number) => {
      const out: number[] = [];
      while (n > 0x7f) {
        out.push((n & 0x7f) | 0x80);
        n >>>= 7;
      }
      out.push(n);
      return out;
    };
    const ld = (tag: number, body: Buffer) => Buffer.concat([Buffer.from([tag, ...varint(body.length)]), body]);
    const kvRef = (k: string, v: string) => ld(0x4a, Buffer.concat([ld(0x0a, Buffer.from(k)), ld(0x12, ld(0x0a, Buffer.from(v)))]));
    const tid = TraceIdWords.fromHex('0af7651916cd43dd8448eb211c80319c');
    const key = 'test.fast-path.value';
    const values: string[] = [];
    // more distinct values than the pair cache keeps per key, so the later ones take the uncached path
    for (let i = 0; i < 80; i++) values.push(`v-${i}`);
    for (let n = 0; n <= 140; n++) values.push('x'.repeat(n), 'ü'.repeat(n >> 1) + 'y');
    for (const v of values) {
      const w = new ProtoWriter(64);
      const span = new FnSpan({ onEnd: (s: FnSpan) => protoSpan(w, s) }, 'fast', SpanKind.INTERNAL, tid, undefined, { [key]: v }, 1_700_000_000_000);
      span.setAttribute('test.fast-path.extra', v);
      span.end(1_700_000_000_001);
      const bytes = w.bytes();
      expect(bytes.indexOf(kvRef(key, v)), `value of ${v.length} chars`).toBeGreaterThan(0);
      expect(bytes.indexOf(kvRef('test.fast-path.extra', v)), `value of ${v.length} chars`).toBeGreaterThan(0);
      const [d] = decodeOtlpProto(Buffer.concat([protoBatchHeader({ [key]: v }, 'fnhost', w.pos), bytes]));
      expect(d!.attributes).toEqual({ [key]: v, 'test.fast-path.extra': v });
    }
  });

  it('recurring attribute values (the per-key cache of encoded pairs) come out right when values alternate, repeat, or a key stops being cached', () => {
    const w = new ProtoWriter(64);
    const tid = TraceIdWords.fromHex('0af7651916cd43dd8448eb211c80319c');
    const want: Record<string, unknown>[] = [];
    const sink = { onEnd: (s: FnSpan) => protoSpan(w, s) };
    for (let i = 0; i < 300; i++) {
      const attrs: Record<string, string | number | boolean> = {
        'test.pairs.tenant': i % 3 === 0 ? 'acme' : 'globex',
        'test.pairs.version': i % 5,
        'test.pairs.flag': i % 2 === 0,
        // a new value every span: past 64 values the key is no longer cached, mid-run
        'test.pairs.counter': `c-${i}`,
        'test.pairs.ratio': i % 4 === 0 ? 0.5 : 1.25,
      };
      const span = new FnSpan(sink, 'pairs', SpanKind.INTERNAL, tid, undefined, attrs, 1_700_000_000_000 + i);
      const outcome = i % 7 === 0 ? 'FunctionError' : 'success';
      span.setAttribute('test.pairs.outcome', outcome);
      span.end(1_700_000_000_000.5 + i);
      want.push({ ...attrs, 'test.pairs.outcome': outcome });
    }
    const got = decodeOtlpProto(Buffer.concat([protoBatchHeader({}, 'fnhost', w.pos), w.bytes()]));
    expect(got.map((s) => s.attributes)).toEqual(want);
  });

  it('span records encoded off the loop (span-records.ts → otlp-records.mjs) are byte for byte what protoSpan writes', () => {
    const direct = new ProtoWriter(64);
    const rec = new SpanRecords(600);
    const both = { onEnd: (s: FnSpan) => (protoSpan(direct, s), writeSpanRecord(rec, s)) };
    const tid = TraceIdWords.fromHex('ffeeddccbbaa99887766554433221100');
    for (let i = 0; i < 600; i++) {
      const parent = i % 3 === 0 ? undefined : i % 3 === 1 ? { traceId: tid.hex, spanId: 'b7ad6b7169203331', traceFlags: 1, isRemote: true } : { traceId: tid.hex, spanId: '80000000deadbeef', traceFlags: 1 };
      const attrs = i % 5 === 0 ? undefined : {
        [Attr.tenant]: `tenant-${i % 4}`,
        [Attr.version]: i % 7,
        [Attr.invocationId]: `inv-${i}-${'x'.repeat(i % 150)}`,
        ratio: i / 7,
        ok: i % 2 === 0,
        big: -i * 1e9,
        list: ['a', `b${i % 3}`],
        name: 'ü'.repeat(i % 70),
      };
      const span = new FnSpan(both, i % 11 === 0 ? `name ${i}` : 'run', (i % 5) as SpanKind, tid, parent, attrs, 1_700_000_000_000 + i * 1.000_37);
      if (i % 2) span.setAttribute(Attr.outcome, i % 4 === 1 ? 'success' : `Error${i}`);
      if (i % 3) span.setAttributes({ [Attr.httpStatus]: 200 + (i % 3), [Attr.sandboxId]: `sb-${i % 9}` });
      if (i % 13 === 0) span.addEvent('exception', { 'exception.message': `boom ${i}` }, 1_700_000_000_001 + i);
      if (i % 17 === 0) span.setStatus({ code: SpanStatusCode.ERROR, message: `failed ${i}` });
      if (i % 19 === 0) span.addLink({ context: { traceId: tid.hex, spanId: 'cd'.repeat(8), traceFlags: 1 } });
      span.end(1_700_000_000_000.5 + i * 1.3);
    }
    expect(rec.n).toBe(600);
    const out = new ProtoWriter(64);
    encodeRecordsHere(rec, out);
    expect(out.bytes().equals(direct.bytes())).toBe(true);
    expect(decodeOtlpProto(Buffer.concat([protoBatchHeader({}, 'fnhost', out.pos), out.bytes()]))).toHaveLength(600);
  });

  it('schema spans as records are byte for byte what protoSpan writes (values by position, memos, a key that stops being cached, ConsString and non-ASCII values)', () => {
    const direct = new ProtoWriter(64);
    const rec = new SpanRecords(700);
    const both = { onEnd: (s: FnSpan) => (protoSpan(direct, s), writeSpanRecord(rec, s)) };
    const tid = TraceIdWords.fromHex('00112233445566778899aabbccddeeff');
    // keys of their own: the per-key pair cache is process-wide
    const S = new SpanSchema('schema bytes', SpanKind.INTERNAL, ['t.schema.tenant', 't.schema.id', 't.schema.n', 't.schema.flag', 't.schema.list', 't.schema.late']);
    const LATE = S.slot('t.schema.late');
    const want: Record<string, unknown>[] = [];
    for (let i = 0; i < 700; i++) {
      // a new id every span (past 64 values the key is written inline for good); randomUUID() gives ConsStrings
      const id = i % 3 === 0 ? randomUUID() : i % 3 === 1 ? `inv-${i}` : `ü-${i}`;
      const vals = [i % 4 === 0 ? undefined : `tenant-${i % 3}`, id, i % 5, i % 2 === 0, i % 7 === 0 ? ['a', `b${i}`] : undefined, undefined];
      const span = new FnSpan(both, 'schema bytes', SpanKind.INTERNAL, tid, undefined, undefined, 1_700_000_000_000 + i, S, vals);
      if (i % 2) vals[LATE] = i % 4 === 1 ? 'success' : `Error${i % 6}`;
      if (i % 11 === 0) span.setAttribute('t.schema.extra', i);
      if (i % 13 === 0) span.setStatus({ code: SpanStatusCode.ERROR, message: 'boom' });
      if (i % 17 === 0) span.updateName(`renamed ${i % 2}`);
      span.end(1_700_000_000_000.5 + i);
      const a: Record<string, unknown> = {};
      S.keys.forEach((k, j) => {
        if (vals[j] !== undefined) a[k] = vals[j];
      });
      if (i % 11 === 0) a['t.schema.extra'] = i;
      want.push(a);
    }
    expect(rec.n).toBe(700);
    const out = new ProtoWriter(64);
    encodeRecordsHere(rec, out);
    expect(out.bytes().equals(direct.bytes())).toBe(true);
    const got = decodeOtlpProto(Buffer.concat([protoBatchHeader({}, 'fnhost', out.pos), out.bytes()]));
    expect(got.map((s) => s.attributes)).toEqual(want);
    expect(got[17]!.name).toBe('renamed 1');
    expect(got[13]!.status.code).toBe(2);
  });

  it('children written straight from their parent (writeChildRecord: no span object) are byte for byte what protoSpan writes for the same span', () => {
    const direct = new ProtoWriter(64);
    const rec = new SpanRecords(300);
    const sink = { onEnd: () => {} };
    const tid = TraceIdWords.fromHex('8899aabbccddeeff0011223344556677');
    const S = CHILD_BYTES;
    const EMPTY = CHILD_EMPTY;
    const scratch = new FnSpan(sink, '', SpanKind.INTERNAL, tid, undefined, undefined, 0);
    for (let i = 0; i < 300; i++) {
      const parent = new FnSpan(sink, 'parent', SpanKind.INTERNAL, tid, i % 2 ? { traceId: tid.hex, spanId: 'f0f0f0f0f0f0f0f0', traceFlags: 1, isRemote: true } : undefined, undefined, 1_700_000_000_000 + i);
      const schema = i % 3 === 0 ? EMPTY : S;
      const vals = schema === EMPTY ? undefined : [i % 4 ? 'warm' : undefined, `inv-${i}`];
      const start = 1_700_000_000_000.25 + i * 1.001;
      // every 7th ends before it starts: clamped to its start, as a span's end() does
      const end = i % 7 === 0 ? start - 1 : start + 0.5 + i / 1000;
      expect(writeChildRecord(rec, parent, schema, vals, start, end)).toBe(true);
      const o = (rec.n - 1) * REC_INTS;
      scratch.reinitEnded(tid, parent, schema, vals, start, end);
      // the same span id as the record drew
      Object.assign(scratch, { hi: rec.ints[o + 4], lo: rec.ints[o + 5] });
      protoSpan(direct, scratch);
      expect(rec.ints[o + 6]).toBe(parent.hi);
      expect(rec.ints[o + 7]).toBe(parent.lo);
    }
    const out = new ProtoWriter(64);
    encodeRecordsHere(rec, out);
    expect(out.bytes().equals(direct.bytes())).toBe(true);
    const got = decodeOtlpProto(Buffer.concat([protoBatchHeader({}, 'fnhost', out.pos), out.bytes()]));
    expect(got).toHaveLength(300);
    expect(new Set(got.map((g) => g.spanId)).size).toBe(300);
    for (const g of got) {
      expect(g.traceId).toBe(tid.hex);
      expect(g.endNs).toBeGreaterThanOrEqual(g.startNs);
    }
    expect(got[1]!.attributes).toEqual({ 't.child.kind': 'warm', 't.child.id': 'inv-1' });
    expect(got[3]!).toMatchObject({ name: 'child empty', attributes: {} });
  });

  it('invocation ids (newInvocationId) are version 4 UUIDs like randomUUID\'s, unique across refills, and encode as the same attribute bytes', () => {
    const seen = new Set<string>();
    for (let i = 0; i < 1000; i++) {
      const id = newInvocationId();
      expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
      seen.add(id);
    }
    expect(seen.size).toBe(1000);
    const a = new ProtoWriter(64);
    const b = new ProtoWriter(64);
    const id = newInvocationId();
    protoKeyValue(a, 9, Attr.invocationId, id);
    protoKeyValue(b, 9, Attr.invocationId, `${id.slice(0, 18)}${id.slice(18)}`);
    // the same bytes from a ConsString of the same characters (what randomUUID gives)
    expect(a.bytes().equals(b.bytes())).toBe(true);
  });

  it('a span\'s flags stay independent: remote parent, published, ended, an overridden creation attribute (the caller\'s object untouched)', () => {
    const tid = TraceIdWords.fromHex('0af7651916cd43dd8448eb211c80319c');
    const ended: FnSpan[] = [];
    const sink = { onEnd: (s: FnSpan) => void ended.push(s) };
    const attrs = { a: 1 };
    const remote = new FnSpan(sink, 'r', SpanKind.INTERNAL, tid, { traceId: tid.hex, spanId: 'b7ad6b7169203331', traceFlags: 1, isRemote: true }, attrs, 1_700_000_000_000);
    const local = new FnSpan(sink, 'l', SpanKind.INTERNAL, tid, remote, undefined, 1_700_000_000_000);
    expect([remote.parentRemote, local.parentRemote]).toEqual([true, false]);
    remote.published = true;
    expect([remote.published, remote.ended, remote.parentRemote]).toEqual([true, false, true]);
    remote.setAttribute('a', 2);
    expect(attrs).toEqual({ a: 1 });
    expect(remote.attributes).toEqual({ a: 2 });
    remote.published = false;
    expect([remote.published, remote.parentRemote]).toEqual([false, true]);
    expect(remote.spanContext()).toBe(remote.spanContext());
    expect(remote.eventList).toBeUndefined();
    remote.end(1_700_000_000_001);
    remote.end(1_700_000_000_002);
    remote.setAttribute('a', 3);
    expect([remote.ended, remote.isRecording(), remote.parentRemote, ended.length, remote.endMs]).toEqual([true, false, true, 1, 1_700_000_000_001]);
    expect(remote.attributes).toEqual({ a: 2 });
    expect(local.ended).toBe(false);
  });

  it('decodes and counts protobuf bodies; a truncated body is an error, not a count', () => {
    const body = encoded(3);
    expect(countOtlpProto(body)).toBe(3);
    expect(decodeOtlpProto(body).map((s) => [s.name, s.service, s.attributes.i])).toEqual([['s0', 'x', 0], ['s1', 'x', 1], ['s2', 'x', 2]]);
    expect(() => countOtlpProto(body.subarray(0, body.length - 5))).toThrow(/protobuf/);
  });

  it('as its own process: counts spans posted to it (protobuf and JSON), refuses other types and garbage, exits on close', async () => {
    const sink = await startOtlpSinkProcess();
    try {
      const json = {
        resourceSpans: [
          {
            resource: { attributes: [{ key: 'service.name', value: { stringValue: 'x' } }] },
            scopeSpans: [{ spans: [1, 2, 3].map((i) => ({ traceId: 'ab'.repeat(16), spanId: `0${i}`.repeat(8), name: `s${i}`, kind: 1, startTimeUnixNano: '1', endTimeUnixNano: '2' })) }],
          },
        ],
      };
      const post = (type: string, body: string | Uint8Array) => fetch(`${sink.url}/v1/traces`, { method: 'POST', headers: { 'content-type': type }, body });
      expect((await post('application/json', JSON.stringify(json))).status).toBe(200);
      expect((await post('application/x-protobuf', encoded(4))).status).toBe(200);
      expect((await post('text/plain', 'hi')).status).toBe(415);
      expect((await post('application/x-protobuf', new Uint8Array([10, 50, 1]))).status).toBe(400);
      expect(await sink.waitFor(7, 5000)).toEqual({ spanCount: 7, requests: 2, rejected: 2 });
    } finally {
      await sink.close();
    }
    await expect(fetch(`${sink.url}/v1/traces`, { method: 'POST', body: '{}' })).rejects.toThrow();
  });
});

describe('FNHOST_OTEL_CONTEXT=async (AsyncLocalStorage registered)', () => {
  it('children find their parent across awaits without being passed it', async () => {
    const { InMemorySpanExporter } = await import('@opentelemetry/sdk-trace-base');
    const exporter = new InMemorySpanExporter();
    const handle = await initTracing({ exporter, context: 'async' });
    try {
      await withSpan('outer', {}, async () => {
        await new Promise((r) => setTimeout(r, 1));
        await withSpan('inner', {}, async () => {});
      });
      await handle.forceFlush();
      const spans = exporter.getFinishedSpans();
      const outer = spans.find((s) => s.name === 'outer')!;
      expect(spans.find((s) => s.name === 'inner')!.parentSpanContext?.spanId).toBe(outer.spanContext().spanId);
    } finally {
      await handle.shutdown();
    }
  });
});
