import { Writable } from 'node:stream';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { Hono } from 'hono';
import { InMemorySpanExporter, type ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { SpanKind, SpanStatusCode, TraceFlags } from '@opentelemetry/api';
import {
  Attr,
  SpanName,
  activeTraceIds,
  contextFromTraceparent,
  formatTraceparent,
  injectTraceparent,
  parseTraceparent,
  recordSpan,
  recordSpanOf,
  remoteParent,
  SpanSchema,
  spanTime,
  startServerSpan,
  startSpan,
  startSpanUnder,
  startSpanOf,
  startServerSpanOf,
  runInSpan,
  tracingEnabled,
  withRemoteParent,
  withSpan,
} from '../../services/common/telemetry.ts';
import { initTracing, type TracingHandle } from '../../services/common/tracing-setup.ts';
import type { FnSpan } from '../../services/common/trace-span.ts';
import { createLogger, invocationLogger } from '../../services/common/log.ts';
import { OutOfMemory } from '../../services/common/errors.ts';
import { createMetrics } from '../../services/common/metrics.ts';
import { requestSpan, tracing } from '../../services/gateway/middleware/tracing.ts';
import { parsePromText } from '../helpers/prom-text.ts';
import { InstanceBase, type InvokeRequest as InstanceInvokeRequest } from '../../runtime/host/instance.ts';

const TRACE = '4bf92f3577b34da6a3ce929d0e0e4736';
const SPAN = '00f067aa0ba902b7';
const TP = `00-${TRACE}-${SPAN}-01`;

describe('traceparent parsing (W3C Trace Context §3.2)', () => {
  it.each([
    [TP, { traceId: TRACE, spanId: SPAN, traceFlags: TraceFlags.SAMPLED }],
    [`00-${TRACE}-${SPAN}-00`, { traceId: TRACE, spanId: SPAN, traceFlags: TraceFlags.NONE }],
    // unknown flag bits are dropped, only "sampled" is defined
    [`00-${TRACE}-${SPAN}-ff`, { traceId: TRACE, spanId: SPAN, traceFlags: TraceFlags.SAMPLED }],
    // a future version may append fields
    [`01-${TRACE}-${SPAN}-01-extra`, { traceId: TRACE, spanId: SPAN, traceFlags: TraceFlags.SAMPLED }],
  ])('accepts %s', (value, want) => {
    expect(parseTraceparent(value)).toEqual({ ...want, isRemote: true });
  });

  it.each([
    ['missing', undefined],
    ['empty', ''],
    ['all-zero trace id', `00-${'0'.repeat(32)}-${SPAN}-01`],
    ['all-zero span id', `00-${TRACE}-${'0'.repeat(16)}-01`],
    ['version ff', `ff-${TRACE}-${SPAN}-01`],
    ['version 00 with extra fields', `${TP}-extra`],
    ['upper-case hex', `00-${TRACE.toUpperCase()}-${SPAN}-01`],
    ['short trace id', `00-${TRACE.slice(1)}-${SPAN}-01`],
    ['garbage', 'hello world, this is definitely not a traceparent value!!'],
    ['huge', `00-${TRACE}-${SPAN}-01-${'x'.repeat(1000)}`],
  ])('rejects %s', (_, value) => {
    expect(parseTraceparent(value)).toBeUndefined();
  });

  it('formats what it parses', () => {
    expect(formatTraceparent(parseTraceparent(TP)!)).toBe(TP);
    expect(formatTraceparent({ traceId: TRACE, spanId: SPAN, traceFlags: 0 })).toBe(`00-${TRACE}-${SPAN}-00`);
  });
});

describe('with tracing off (no SDK registered)', () => {
  it('spans are no-ops, nothing is injected, work still runs', async () => {
    expect(tracingEnabled()).toBe(false);
    const got = await withSpan('x', { [Attr.tenant]: 't' }, async (span) => {
      expect(span.isRecording()).toBe(false);
      return injectTraceparent();
    });
    expect(got).toBeUndefined();
    expect(withRemoteParent(TP, () => 42)).toBe(42);
    expect(activeTraceIds()).toEqual({});
    recordSpan('nothing', 1, 2);
    // the hot-path forms hand out the one shared non-recording span: nothing allocated, nothing recorded
    const a = startSpanUnder('x', { [Attr.tenant]: 't' }, remoteParent(TP));
    expect(a.isRecording()).toBe(false);
    expect(startServerSpan('y', undefined, TP)).toBe(a);
    expect(startSpan('z')).toBe(a);
  });

  it('initTracing without an endpoint registers nothing', async () => {
    const h = await initTracing({ env: {} });
    expect(h.enabled).toBe(false);
    expect(tracingEnabled()).toBe(false);
    await h.shutdown();
  });

  it('withSpan still rethrows', async () => {
    await expect(withSpan('x', {}, async () => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
  });
});

describe('with tracing on', () => {
  const exporter = new InMemorySpanExporter();
  let handle: TracingHandle;

  beforeAll(async () => {
    handle = await initTracing({ exporter });
  });
  afterAll(async () => {
    await handle.shutdown();
    expect(tracingEnabled()).toBe(false);
  });
  beforeEach(() => exporter.reset());

  async function finished(): Promise<ReadableSpan[]> {
    await handle.forceFlush();
    return exporter.getFinishedSpans();
  }
  const byName = (spans: ReadableSpan[], name: string) => {
    const s = spans.find((x) => x.name === name);
    if (!s) throw new Error(`no span ${name} in [${spans.map((x) => x.name)}]`);
    return s;
  };

  it('is registered and idempotent', async () => {
    expect(handle.enabled).toBe(true);
    expect(tracingEnabled()).toBe(true);
    expect(await initTracing({ env: {} })).toBe(handle);
  });

  it('nests children created synchronously inside a withSpan callback under it', async () => {
    await withSpan('outer', { [Attr.tenant]: 'acme' }, async () => {
      await withSpan('inner', {}, async () => {});
    });
    const spans = await finished();
    const outer = byName(spans, 'outer');
    const inner = byName(spans, 'inner');
    expect(inner.parentSpanContext?.spanId).toBe(outer.spanContext().spanId);
    expect(inner.spanContext().traceId).toBe(outer.spanContext().traceId);
    expect(outer.attributes[Attr.tenant]).toBe('acme');
    expect(outer.parentSpanContext).toBeUndefined();
  });

  it('after an await the parent is passed explicitly; without it a span starts a new trace, never a stranger\'s', async () => {
    await withSpan('outer', {}, async (span) => {
      await new Promise((r) => setTimeout(r, 1));
      await withSpan('explicit', {}, async () => {}, { parent: span });
      recordSpan('recorded', Date.now() - 1, Date.now(), {}, span);
      await withSpan('orphan', {}, async () => {});
    });
    const spans = await finished();
    const outer = byName(spans, 'outer');
    expect(byName(spans, 'explicit').parentSpanContext?.spanId).toBe(outer.spanContext().spanId);
    expect(byName(spans, 'recorded').parentSpanContext?.spanId).toBe(outer.spanContext().spanId);
    expect(byName(spans, 'orphan').parentSpanContext).toBeUndefined();
    expect(byName(spans, 'orphan').spanContext().traceId).not.toBe(outer.spanContext().traceId);
  });

  it('interleaved invocations keep their own trees (the synchronous current span never leaks across awaits)', async () => {
    const one = (tag: string) =>
      withSpan(`root-${tag}`, {}, async (root) => {
        for (let i = 0; i < 3; i++) {
          await new Promise((r) => setImmediate(r));
          await withSpan(`child-${tag}`, {}, async (c) => {
            await null;
            await runInSpan(c, () => withSpan(`leaf-${tag}`, {}, async () => {}));
          }, { parent: root });
        }
      });
    await Promise.all(['a', 'b', 'c'].map(one));
    const spans = await finished();
    for (const tag of ['a', 'b', 'c']) {
      const root = byName(spans, `root-${tag}`);
      const children = spans.filter((s) => s.name === `child-${tag}`);
      const leaves = spans.filter((s) => s.name === `leaf-${tag}`);
      expect(children).toHaveLength(3);
      expect(leaves).toHaveLength(3);
      for (const c of children) expect(c.parentSpanContext?.spanId).toBe(root.spanContext().spanId);
      const childIds = new Set(children.map((c) => c.spanContext().spanId));
      for (const l of leaves) expect(childIds.has(l.parentSpanContext!.spanId)).toBe(true);
      for (const s of [...children, ...leaves]) expect(s.spanContext().traceId).toBe(root.spanContext().traceId);
    }
  });

  it('a traceparent handed out here and coming back in this process while its span is open finds the span (no parse), as a local parent', async () => {
    let tp: string | undefined;
    await withSpan('producer', {}, async (span) => {
      tp = injectTraceparent(span);
      // the gateway hands the call to the co-located scheduler inside its 'http request' span
      await withRemoteParent(tp, () => withSpan('consumer', {}, async () => {}));
      // a copy of the string (as after JSON through Redis) is found too
      await withRemoteParent(JSON.parse(JSON.stringify(tp)), () => withSpan('consumer2', {}, async () => {}));
    });
    expect(tp).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
    const spans = await finished();
    const producer = byName(spans, 'producer');
    expect(tp).toBe(`00-${producer.spanContext().traceId}-${producer.spanContext().spanId}-01`);
    for (const n of ['consumer', 'consumer2']) {
      const c = byName(spans, n);
      expect(c.parentSpanContext?.spanId).toBe(producer.spanContext().spanId);
      expect(c.parentSpanContext?.isRemote).toBe(false);
      expect(c.spanContext().traceId).toBe(producer.spanContext().traceId);
    }
  });

  it('startSpanUnder: the parent as an argument (span, remote context, ROOT_CONTEXT = new trace, undefined = current); start times as epoch or performance.now()', async () => {
    let tp: string | undefined;
    await withSpan('parent', {}, async (p) => {
      tp = injectTraceparent(p);
      await null; // no current span any more: only the argument counts
      startSpanUnder('explicit', { [Attr.tenant]: 'a' }, p).end();
      // the open span's own traceparent comes back as the span itself (local parent, no parse)
      startSpanUnder('by-tp', undefined, remoteParent(tp)).end();
      startSpanUnder('none', undefined, remoteParent(undefined)).end();
      startSpanUnder('bad', undefined, remoteParent('00-zz')).end();
      runInSpan(p, () => startSpanUnder('current', undefined, undefined).end());
      const t0 = performance.now();
      const epoch = spanTime();
      const s = startSpanUnder('timed', undefined, p, SpanKind.CONSUMER, t0);
      s.end(t0 + 2);
      const e = startSpanUnder('epoch', undefined, p, SpanKind.INTERNAL, epoch);
      e.end(epoch + 1);
    });
    startSpanUnder('remote', undefined, remoteParent(TP)).end();
    const spans = await finished();
    const parent = byName(spans, 'parent');
    const pid = parent.spanContext().spanId;
    for (const n of ['explicit', 'by-tp', 'current', 'timed', 'epoch']) {
      expect(byName(spans, n).parentSpanContext?.spanId, n).toBe(pid);
      expect(byName(spans, n).parentSpanContext?.isRemote, n).toBe(false);
      expect(byName(spans, n).spanContext().traceId, n).toBe(parent.spanContext().traceId);
    }
    expect(byName(spans, 'explicit').attributes[Attr.tenant]).toBe('a');
    for (const n of ['none', 'bad']) {
      expect(byName(spans, n).parentSpanContext, n).toBeUndefined();
      expect(byName(spans, n).spanContext().traceId, n).not.toBe(parent.spanContext().traceId);
    }
    const remote = byName(spans, 'remote');
    expect(remote.spanContext().traceId).toBe(TRACE);
    expect(remote.parentSpanContext).toMatchObject({ spanId: SPAN, isRemote: true });
    const timed = byName(spans, 'timed');
    expect(timed.kind).toBe(SpanKind.CONSUMER);
    const ms = (t: [number, number]) => t[0] * 1e3 + t[1] / 1e6;
    // a performance.now() value is taken on the wall-clock origin: the same instant as the epoch time read next to it
    expect(Math.abs(ms(byName(spans, 'epoch').startTime) - ms(timed.startTime))).toBeLessThan(50);
    expect(ms(timed.duration)).toBeCloseTo(2, 3);
    expect(ms(byName(spans, 'epoch').duration)).toBeCloseTo(1, 3);
  });

  it('schema spans (startSpanOf / startServerSpanOf / recordSpanOf): values by position, late stores and setAttribute seen, undefined not exported, parents intact', async () => {
    const S = new SpanSchema('schema-span', SpanKind.CONSUMER, [Attr.tenant, Attr.version, Attr.outcome, Attr.errorType]);
    const OUTCOME = S.slot(Attr.outcome);
    const REC = new SpanSchema('schema-record', SpanKind.INTERNAL, [Attr.start]);
    const SRV = new SpanSchema('schema-server', SpanKind.SERVER, [Attr.httpMethod]);
    const values = ['acme', 3, undefined, undefined];
    const srv = startServerSpanOf(SRV, ['GET'], TP);
    const span = startSpanOf(S, values, srv);
    values[OUTCOME] = 'success';
    span.setAttribute(Attr.version, 4).setAttribute(Attr.sandboxId, 'sb-1');
    const t = spanTime();
    recordSpanOf(REC, t, t + 1.5, span, ['warm']);
    recordSpanOf(REC, t + 2, t + 1, span);
    runInSpan(span, () => recordSpanOf(REC, t, t + 1));
    span.end();
    srv.end();
    expect(() => new SpanSchema('dup', SpanKind.INTERNAL, ['a', 'a'])).toThrow(/twice/);
    expect(() => S.slot('nope')).toThrow(/no attribute/);
    const spans = await finished();
    const got = byName(spans, 'schema-span');
    expect(got.kind).toBe(SpanKind.CONSUMER);
    // the late store and setAttribute on a schema key land in the values; a key outside the schema is added
    expect(got.attributes).toEqual({ [Attr.tenant]: 'acme', [Attr.version]: 4, [Attr.outcome]: 'success', [Attr.sandboxId]: 'sb-1' });
    const server = byName(spans, 'schema-server');
    expect(server.kind).toBe(SpanKind.SERVER);
    expect(server.spanContext().traceId).toBe(TRACE);
    expect(server.parentSpanContext).toMatchObject({ spanId: SPAN, isRemote: true });
    expect(got.parentSpanContext).toMatchObject({ spanId: server.spanContext().spanId, isRemote: false });
    const recs = spans.filter((x) => x.name === 'schema-record');
    expect(recs).toHaveLength(3);
    const ms = (x: [number, number]) => x[0] * 1e3 + x[1] / 1e6;
    for (const r of recs) {
      expect(r.parentSpanContext?.spanId).toBe(got.spanContext().spanId);
      expect(r.spanContext().traceId).toBe(TRACE);
    }
    expect(new Set(recs.map((r) => r.spanContext().spanId)).size).toBe(3);
    expect(recs.map((r) => r.attributes)).toEqual([{ [Attr.start]: 'warm' }, {}, {}]);
    expect(ms(recs[0]!.duration)).toBeCloseTo(1.5, 3);
    // an end before the start is clamped to the start
    expect(ms(recs[1]!.duration)).toBe(0);
  });

  it('an instance kind whose run() needs no span records its \'run\' span at the end: parent captured at the start, times, failures with status, exception and peak memory', async () => {
    class Recorded extends InstanceBase {
      protected override readonly runUsesSpan = false;
      seen: unknown[] = [];
      fail: 'no' | 'oom' | 'boom' = 'no';
      get alive() {
        return true;
      }
      async destroy() {}
      protected async run(_req: InstanceInvokeRequest, span: unknown) {
        this.seen.push(span);
        await new Promise((r) => setTimeout(r, 5));
        if (this.fail === 'oom') {
          this.peakAtDeath = 48 * 2 ** 20;
          throw new OutOfMemory('function ran out of memory', { limitMb: 64, peakMb: 48 });
        }
        if (this.fail === 'boom') throw new Error('boom');
        return { response: { status: 200, headers: {}, body: Buffer.alloc(0) }, logs: [], truncatedLogs: false, durationMs: 5 };
      }
    }
    const fn = { tenant: 't', name: 'f', version: 1, runtime: 'node', handler: 'index.handler', codeDigest: 'sha256:00', memoryMb: 64, timeoutMs: 1000, env: {}, concurrency: 1, public: false, createdAt: new Date(0).toISOString() };
    const inst = new Recorded(fn as never, { id: 'sb-rec' } as never);
    const parent = startSpan('rec-parent');
    const t0 = spanTime();
    await runInSpan(parent, () => inst.invoke({ id: 'i1', payload: { kind: 'event', body: Buffer.alloc(0) } }));
    const t1 = spanTime();
    inst.fail = 'oom';
    await expect(runInSpan(parent, () => inst.invoke({ id: 'i2', payload: { kind: 'event', body: Buffer.alloc(0) } }))).rejects.toThrow(/memory/);
    inst.fail = 'boom';
    await expect(runInSpan(parent, () => inst.invoke({ id: 'i3', payload: { kind: 'event', body: Buffer.alloc(0) } }))).rejects.toThrow('boom');
    // no current span at the call: a run span of its own trace, never another's
    inst.fail = 'no';
    await inst.invoke({ id: 'i4', payload: { kind: 'event', body: Buffer.alloc(0) } });
    parent.end();
    expect(inst.busy).toBe(false);
    // run() got no span object to hold (the non-recording one)
    for (const s of inst.seen) expect((s as { isRecording(): boolean }).isRecording()).toBe(false);
    const spans = await finished();
    const p = byName(spans, 'rec-parent');
    const runs = spans.filter((x) => x.name === SpanName.run);
    expect(runs).toHaveLength(4);
    const [ok, oom, boom, orphan] = runs;
    for (const r of [ok, oom, boom]) {
      expect(r!.parentSpanContext?.spanId).toBe(p.spanContext().spanId);
      expect(r!.spanContext().traceId).toBe(p.spanContext().traceId);
    }
    expect(orphan!.parentSpanContext).toBeUndefined();
    expect(orphan!.spanContext().traceId).not.toBe(p.spanContext().traceId);
    const ms = (x: [number, number]) => x[0] * 1e3 + x[1] / 1e6;
    expect(ms(ok!.startTime)).toBeGreaterThanOrEqual(t0);
    expect(ms(ok!.endTime)).toBeLessThanOrEqual(t1);
    expect(ms(ok!.duration)).toBeGreaterThanOrEqual(4);
    expect(ok!.status.code).toBe(SpanStatusCode.UNSET);
    expect(ok!.attributes).toEqual({});
    expect(oom!.status.code).toBe(SpanStatusCode.ERROR);
    expect(oom!.attributes).toMatchObject({ [Attr.peakMemoryBytes]: 48 * 2 ** 20, [Attr.errorType]: 'OutOfMemory' });
    expect(ms(oom!.duration)).toBeGreaterThanOrEqual(4);
    expect(boom!.status).toMatchObject({ code: SpanStatusCode.ERROR, message: 'boom' });
    expect(boom!.attributes[Attr.peakMemoryBytes]).toBeUndefined();
    expect(boom!.events.map((e) => e.name)).toEqual(['exception']);
  });

  it('startServerSpan: a SERVER span under a valid caller traceparent, else a root (never the current span)', async () => {
    await withSpan('current', {}, async () => {
      startServerSpan('with-tp', { [Attr.httpMethod]: 'POST' }, TP).end();
      startServerSpan('no-tp', undefined, undefined).end();
      startServerSpan('bad-tp', undefined, `00-${'0'.repeat(32)}-${SPAN}-01`).end();
    });
    const spans = await finished();
    const w = byName(spans, 'with-tp');
    expect(w.kind).toBe(SpanKind.SERVER);
    expect(w.spanContext().traceId).toBe(TRACE);
    expect(w.parentSpanContext).toMatchObject({ spanId: SPAN, isRemote: true });
    expect(w.attributes[Attr.httpMethod]).toBe('POST');
    const current = byName(spans, 'current');
    for (const n of ['no-tp', 'bad-tp']) {
      expect(byName(spans, n).parentSpanContext, n).toBeUndefined();
      expect(byName(spans, n).spanContext().traceId, n).not.toBe(current.spanContext().traceId);
    }
  });

  it('an ended span is not held for its traceparent: a later pick-up parses it (same trace and parent, remote)', async () => {
    let tp: string | undefined;
    let producer: FnSpan | undefined;
    await withSpan(SpanName.enqueue, {}, async (span) => {
      producer = span as FnSpan;
      tp = injectTraceparent(span);
      expect(producer.published).toBe(true);
    });
    // ended: released, so the span and what it references can die young (no GC survivors per invocation)
    expect(producer!.published).toBe(false);
    await withRemoteParent(tp, () => withSpan(SpanName.pickup, {}, async () => {}));
    const pickup = byName(await finished(), SpanName.pickup);
    expect(pickup.spanContext().traceId).toBe(producer!.spanContext().traceId);
    expect(pickup.parentSpanContext?.spanId).toBe(producer!.spanContext().spanId);
    expect(pickup.parentSpanContext?.isRemote).toBe(true);
    // injecting an ended span still names it, without holding it
    expect(injectTraceparent(producer)).toBe(tp);
    expect(producer!.published).toBe(false);
  });

  it('spans handed out and never ended are bounded: the oldest is let go (256)', async () => {
    const open = Array.from({ length: 300 }, (_, i) => startSpan(`leaked-${i}`) as FnSpan);
    const tps = open.map((s) => injectTraceparent(s)!);
    expect(open.filter((s) => s.published)).toHaveLength(256);
    expect(open[0]!.published).toBe(false);
    expect(open[299]!.published).toBe(true);
    // the oldest comes back parsed (remote parent), the newest as the span itself (local parent)
    await withRemoteParent(tps[0], () => withSpan('from-oldest', {}, async () => {}));
    await withRemoteParent(tps[299], () => withSpan('from-newest', {}, async () => {}));
    for (const s of open) s.end();
    expect(open.some((s) => s.published)).toBe(false);
    const spans = await finished();
    expect(byName(spans, 'from-oldest').parentSpanContext).toMatchObject({ spanId: open[0]!.spanContext().spanId, isRemote: true });
    expect(byName(spans, 'from-newest').parentSpanContext).toMatchObject({ spanId: open[299]!.spanContext().spanId, isRemote: false });
  });

  it('attributes set after creation join the creation-time ones; the caller\'s object is not modified', async () => {
    const given = { [Attr.tenant]: 'acme', [Attr.memoryMb]: 128 };
    await withSpan('attrs', given, async (span) => {
      span.setAttribute(Attr.start, 'warm');
      span.setAttributes({ [Attr.outcome]: 'success', [Attr.memoryMb]: 256 });
      span.setAttribute(Attr.start, 'cold');
    });
    const s = byName(await finished(), 'attrs');
    expect(s.attributes).toEqual({ [Attr.tenant]: 'acme', [Attr.memoryMb]: 256, [Attr.start]: 'cold', [Attr.outcome]: 'success' });
    expect(given).toEqual({ [Attr.tenant]: 'acme', [Attr.memoryMb]: 128 });
  });

  it('records a typed error: status, exception event and fnhost.error.type', async () => {
    await expect(withSpan('run', {}, async () => Promise.reject(new OutOfMemory('oom', { limitMb: 64 })))).rejects.toBeInstanceOf(OutOfMemory);
    const run = byName(await finished(), 'run');
    expect(run.status.code).toBe(SpanStatusCode.ERROR);
    expect(run.attributes[Attr.errorType]).toBe('OutOfMemory');
    expect(run.events.some((e) => e.name === 'exception')).toBe(true);
  });

  it('carries context across a queue hop via traceparent in job data (gateway → scheduler)', async () => {
    // Producer side: the job data is serialised, as BullMQ does.
    const job = await withSpan(SpanName.enqueue, {}, async () => JSON.stringify({ id: 'inv-1', traceparent: injectTraceparent() }), {
      kind: SpanKind.PRODUCER,
    });
    const enqueuedAt = Date.now() - 7;
    // Consumer side runs from a fresh async context (a worker callback), not under the producer's span.
    await new Promise<void>((resolve, reject) =>
      setImmediate(() => {
        const data = JSON.parse(job) as { traceparent?: string };
        withRemoteParent(data.traceparent, async () => {
          recordSpan(SpanName.queueWait, enqueuedAt, Date.now());
          await withSpan(SpanName.pickup, {}, async () => withSpan(SpanName.warmPick, {}, async () => {}), { kind: SpanKind.CONSUMER });
        }).then(resolve, reject);
      }),
    );
    const spans = await finished();
    const enqueue = byName(spans, SpanName.enqueue);
    const wait = byName(spans, SpanName.queueWait);
    const pickup = byName(spans, SpanName.pickup);
    const pick = byName(spans, SpanName.warmPick);
    for (const s of [wait, pickup, pick]) expect(s.spanContext().traceId).toBe(enqueue.spanContext().traceId);
    expect(wait.parentSpanContext?.spanId).toBe(enqueue.spanContext().spanId);
    expect(pickup.parentSpanContext?.spanId).toBe(enqueue.spanContext().spanId);
    expect(pick.parentSpanContext?.spanId).toBe(pickup.spanContext().spanId);
    expect(enqueue.kind).toBe(SpanKind.PRODUCER);
    expect(pickup.kind).toBe(SpanKind.CONSUMER);
    // queue wait covers the given interval (hrtime [s, ns]); 7 ms ago → ≥ 7 ms long
    const ms = (t: [number, number]) => t[0] * 1e3 + t[1] / 1e6;
    expect(ms(wait.endTime) - ms(wait.startTime)).toBeGreaterThanOrEqual(6.9);
    expect(Math.abs(ms(wait.startTime) - enqueuedAt)).toBeLessThan(1);
  });

  it('a missing or malformed traceparent starts a new root trace', async () => {
    await withRemoteParent('00-garbage', async () => withSpan('a', {}, async () => {}));
    await withRemoteParent(undefined, async () => withSpan('b', {}, async () => {}));
    const spans = await finished();
    expect(byName(spans, 'a').parentSpanContext).toBeUndefined();
    expect(byName(spans, 'b').parentSpanContext).toBeUndefined();
    expect(byName(spans, 'a').spanContext().traceId).not.toBe(byName(spans, 'b').spanContext().traceId);
  });

  it('contextFromTraceparent ignores whatever was active in the worker', async () => {
    await withSpan('unrelated', {}, async () => {
      const span = startSpan('job', {}, { parent: contextFromTraceparent(TP) });
      runInSpan(span, () => expect(injectTraceparent()).toMatch(new RegExp(`^00-${TRACE}-[0-9a-f]{16}-01$`)));
      span.end();
    });
    const job = byName(await finished(), 'job');
    expect(job.spanContext().traceId).toBe(TRACE);
    expect(job.parentSpanContext?.spanId).toBe(SPAN);
  });

  it('an unsampled caller (flags 00) is honoured by the parent-based sampler: nothing recorded', async () => {
    await withRemoteParent(`00-${TRACE}-${SPAN}-00`, async () => withSpan('dropped', {}, async (s) => expect(s.isRecording()).toBe(false)));
    expect((await finished()).some((s) => s.name === 'dropped')).toBe(false);
  });

  describe('gateway middleware', () => {
    function app(m = createMetrics({ defaultMetrics: false })) {
      const a = new Hono();
      a.use('*', tracing({ metrics: m }));
      a.post('/v1/functions/:name/invoke', async (c) => {
        const tp = await withSpan(SpanName.enqueue, {}, async () => injectTraceparent());
        return c.json({ tp });
      });
      // after an await there is no implicit current span: the handler reaches it through requestSpan(c)
      a.post('/late', async (c) => {
        await new Promise((r) => setTimeout(r, 1));
        requestSpan(c).setAttributes({ [Attr.tenant]: 'acme' });
        return c.json({ tp: injectTraceparent(requestSpan(c)), implicit: injectTraceparent() ?? null });
      });
      a.get('/boom', () => {
        throw new Error('handler failed');
      });
      a.onError((_e, c) => c.text('internal', 500));
      return { a, m };
    }

    it('starts the http request server span as a child of the caller traceparent, with route and status', async () => {
      const { a, m } = app();
      const res = await a.request('/v1/functions/hello/invoke', { method: 'POST', headers: { traceparent: TP } });
      expect(res.status).toBe(200);
      const { tp } = (await res.json()) as { tp: string };
      const spans = await finished();
      const http = byName(spans, SpanName.httpRequest);
      const enq = byName(spans, SpanName.enqueue);
      expect(http.kind).toBe(SpanKind.SERVER);
      expect(http.spanContext().traceId).toBe(TRACE);
      expect(http.parentSpanContext?.spanId).toBe(SPAN);
      expect(enq.parentSpanContext?.spanId).toBe(http.spanContext().spanId);
      expect(tp).toBe(`00-${TRACE}-${enq.spanContext().spanId}-01`);
      expect(http.attributes).toMatchObject({
        [Attr.httpMethod]: 'POST',
        [Attr.httpRoute]: '/v1/functions/:name/invoke',
        [Attr.httpStatus]: 200,
        [Attr.urlPath]: '/v1/functions/hello/invoke',
      });
      const p = parsePromText(await m.text());
      expect(p.value('fnhost_http_requests_total', { method: 'POST', route: '/v1/functions/:name/invoke', status: '200' })).toBe(1);
    });

    it('requestSpan(c) reaches the request span after an await (no implicit context there)', async () => {
      const { a } = app();
      const res = await a.request('/late', { method: 'POST', headers: { traceparent: TP } });
      const body = (await res.json()) as { tp: string; implicit: string | null };
      const http = byName(await finished(), SpanName.httpRequest);
      expect(body.tp).toBe(`00-${TRACE}-${http.spanContext().spanId}-01`);
      expect(body.implicit).toBeNull();
      expect(http.attributes[Attr.tenant]).toBe('acme');
      // without the middleware mounted: the shared non-recording span, never a crash
      const bare = new Hono();
      bare.get('/', (c) => c.text(String(requestSpan(c).isRecording())));
      expect(await (await bare.request('/')).text()).toBe('false');
    });

    it('without a traceparent the request is a root; 5xx marks the span as error; unmatched routes stay bounded', async () => {
      const { a, m } = app();
      expect((await a.request('/boom')).status).toBe(500);
      expect((await a.request('/no/such/path/12345')).status).toBe(404);
      const spans = (await finished()).filter((s) => s.name === SpanName.httpRequest);
      expect(spans).toHaveLength(2);
      const boom = spans.find((s) => s.attributes[Attr.urlPath] === '/boom')!;
      expect(boom.parentSpanContext).toBeUndefined();
      expect(boom.status.code).toBe(SpanStatusCode.ERROR);
      const p = parsePromText(await m.text());
      expect(p.value('fnhost_http_requests_total', { route: '/boom', status: '500' })).toBe(1);
      expect(p.value('fnhost_http_requests_total', { route: 'unmatched', status: '404' })).toBe(1);
      expect(p.samples.some((s) => s.labels.route?.includes('12345'))).toBe(false);
    });
  });

  it('log lines carry trace_id/span_id of the active span; invocation loggers keep their trace outside it', async () => {
    const raw: string[] = [];
    const sink = new Writable({
      write(chunk, _enc, cb) {
        for (const l of String(chunk).split('\n')) if (l) raw.push(l);
        cb();
      },
    });
    const base = createLogger('test', 'info', sink);
    let ids: { trace_id?: string; span_id?: string } = {};
    let inner: { trace_id?: string; span_id?: string } = {};
    let invLog: ReturnType<typeof invocationLogger> | undefined;
    await withSpan('logged', {}, async () => {
      ids = activeTraceIds();
      base.info('plain inside');
      invLog = invocationLogger(base, { invocationId: 'inv-9', tenant: 'acme', function: 'hello', version: 3 });
      invLog.info('hi');
      await withSpan('nested', {}, async () => {
        inner = activeTraceIds();
        base.info('plain nested');
      });
    });
    base.info('outside');
    invLog!.child({ part: 'x' }).info('later');
    // no duplicate keys: each raw line has trace_id at most once
    for (const l of raw) expect(l.split('"trace_id"').length, l).toBeLessThanOrEqual(2);
    const lines = raw.map((l) => JSON.parse(l) as Record<string, unknown>);
    const by = (msg: string) => lines.find((l) => l.msg === msg)!;
    expect(ids.trace_id).toMatch(/^[0-9a-f]{32}$/);
    expect(by('plain inside')).toMatchObject(ids);
    expect(by('plain nested')).toMatchObject(inner);
    expect(inner.span_id).not.toBe(ids.span_id);
    expect(by('hi')).toMatchObject({ invocation_id: 'inv-9', tenant: 'acme', function: 'hello', version: 3, ...ids });
    expect(by('outside').trace_id).toBeUndefined();
    expect(by('later')).toMatchObject({ invocation_id: 'inv-9', part: 'x', ...ids });
  });
});
