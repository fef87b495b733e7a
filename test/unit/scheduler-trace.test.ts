/**
 * One trace per invocation across the queue: the caller's span → 'enqueue' (client) → 'queue wait' and
 * 'scheduler pickup' (node) → 'pool claim' | 'warm pick' and 'result delivery'. Real Redis and the real
 * tracing SDK with an in-memory exporter; the executor is faked (its 'specialise'/'run' spans belong to
 * runtime/host and are checked there).
 */
import { describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { redisUrl } from '../helpers/redis.ts';
import { parentOf, useTracing } from '../helpers/tracing.ts';
import { Attr, injectTraceparent, startSpan, withSpan } from '../../services/common/telemetry.ts';
import { createInvocationClient } from '../../services/scheduler/client.ts';
import { createScheduler } from '../../services/scheduler/scheduler.ts';
import { runLocal, type JobContext } from '../../services/scheduler/process-job.ts';
import { createMetrics } from '../../services/common/metrics.ts';
import { createLogger } from '../../services/common/log.ts';
import { FakeExecutor, fnv } from '../fixtures/scheduler/fake-executor.ts';

const { exporter, flush } = useTracing();

describe('tracing across the queue', () => {
  it('links caller → enqueue → queue wait / scheduler pickup → pool claim | warm pick → result delivery', async () => {
    const prefix = `tr-${randomUUID().slice(0, 8)}`;
    const sched = createScheduler({
      redisUrl: redisUrl(), prefix, nodeId: 'tr1', executor: new FakeExecutor(), metrics: createMetrics({ defaultMetrics: false }),
      logger: createLogger('test', 'silent'), pool: { kinds: { node: { min: 1, max: 2 } } },
    });
    await sched.start();
    const client = createInvocationClient({ redisUrl: redisUrl(), prefix });
    const fn = fnv({ tenant: 'trace-t' });
    const traces: string[] = [];
    try {
      for (let i = 0; i < 2; i++) {
        await withSpan('caller', {}, async (span) => {
          traces.push(span.spanContext().traceId);
          await client.invoke({ fn, payload: { kind: 'event', body: Buffer.from('{}') }, mode: 'sync', traceparent: injectTraceparent() });
        });
      }
      await flush();
      for (const [i, traceId] of traces.entries()) {
        const spans = exporter.getFinishedSpans().filter((s) => s.spanContext().traceId === traceId);
        const by = (name: string) => {
          const s = spans.find((x) => x.name === name);
          expect(s, `span ${name} in trace ${i}`).toBeDefined();
          return s!;
        };
        const caller = by('caller');
        const enqueue = by('enqueue');
        const pickup = by('scheduler pickup');
        const placement = by(i === 0 ? 'pool claim' : 'warm pick');
        expect(parentOf(enqueue)).toBe(caller.spanContext().spanId);
        expect(parentOf(by('queue wait'))).toBe(enqueue.spanContext().spanId);
        expect(parentOf(pickup)).toBe(enqueue.spanContext().spanId);
        expect(parentOf(placement)).toBe(pickup.spanContext().spanId);
        expect(parentOf(by('result delivery'))).toBe(pickup.spanContext().spanId);
        expect(pickup.attributes[Attr.start]).toBe(i === 0 ? 'cold' : 'warm');
        expect(pickup.attributes[Attr.outcome]).toBe('success');
        expect(pickup.attributes[Attr.tenant]).toBe('trace-t');
      }
    } finally {
      await client.close();
      await sched.close();
      const r = new Redis(redisUrl());
      const keys = await r.keys(`${prefix}:*`);
      if (keys.length) await r.del(...keys);
      await r.quit();
    }
  });

  it('a local dispatch that places nothing leaves no span (the call takes the queue; its trace goes on under enqueue)', async () => {
    let placedUnder: string | undefined;
    const span = startSpan('caller', {});
    const caller = span.spanContext().spanId;
    // the placement runs with 'local dispatch' current, and declines
    const got = runLocal({} as JobContext, { id: 'inv-declined', fn: fnv({ tenant: 'trace-d' }), payload: { kind: 'event', body: Buffer.from('{}') }, mode: 'sync', createdAt: Date.now(), deadline: 0, parentSpan: span }, () => {
      placedUnder = injectTraceparent()?.split('-')[2];
      return undefined;
    });
    span.end();
    expect(got).toBeUndefined();
    await flush();
    const spans = exporter.getFinishedSpans();
    expect(placedUnder, 'the placement ran inside a local dispatch span').toBeDefined();
    expect(placedUnder).not.toBe(caller);
    expect(spans.some((s) => s.spanContext().spanId === caller), 'the caller span is exported').toBe(true);
    expect(spans.filter((s) => s.name === 'local dispatch' && parentOf(s) === caller)).toHaveLength(0);
    expect(spans.some((s) => s.spanContext().spanId === placedUnder)).toBe(false);
  });

  it('an in-process caller passes its span object (parentSpan): queue path and local dispatch hang under it', async () => {
    const prefix = `tr-${randomUUID().slice(0, 8)}`;
    const sched = createScheduler({
      redisUrl: redisUrl(), prefix, nodeId: 'tr2', executor: new FakeExecutor(), metrics: createMetrics({ defaultMetrics: false }),
      logger: createLogger('test', 'silent'), pool: { kinds: { node: { min: 1, max: 2 } } },
    });
    await sched.start();
    const queued = createInvocationClient({ redisUrl: redisUrl(), prefix });
    const local = createInvocationClient({ redisUrl: redisUrl(), prefix, localDispatch: true });
    const fn = fnv({ tenant: 'trace-p' });
    const req = { fn, payload: { kind: 'event' as const, body: Buffer.from('{}') }, mode: 'sync' as const };
    try {
      // the first call starts the instance (queue path); the second finds it idle and runs in-process
      const ids: string[] = [];
      for (const client of [queued, local]) {
        await withSpan('caller', {}, async (span) => {
          ids.push(span.spanContext().spanId);
          await null; // no current span: only parentSpan links the call to the caller
          await client.invoke({ ...req, parentSpan: span });
        });
      }
      await flush();
      const spans = exporter.getFinishedSpans();
      const named = (name: string, parent: string) => spans.filter((s) => s.name === name && parentOf(s) === parent);
      const [enqueue] = named('enqueue', ids[0]!);
      expect(enqueue, 'enqueue under the first caller').toBeDefined();
      expect(named('scheduler pickup', enqueue!.spanContext().spanId)).toHaveLength(1);
      const [dispatch] = named('local dispatch', ids[1]!);
      expect(dispatch, 'local dispatch under the second caller').toBeDefined();
      expect(dispatch!.attributes).toMatchObject({ [Attr.tenant]: 'trace-p', [Attr.start]: 'warm', [Attr.outcome]: 'success' });
      expect(named('warm pick', dispatch!.spanContext().spanId)).toHaveLength(1);
      expect(named('result delivery', dispatch!.spanContext().spanId)).toHaveLength(1);
      expect(named('enqueue', ids[1]!)).toHaveLength(0);
    } finally {
      await queued.close();
      await local.close();
      await sched.close();
      const r = new Redis(redisUrl());
      const keys = await r.keys(`${prefix}:*`);
      if (keys.length) await r.del(...keys);
      await r.quit();
    }
  });
});
