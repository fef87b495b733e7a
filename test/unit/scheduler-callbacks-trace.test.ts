/**
 * Each POST of a completion callback is a 'callback delivery' span in the invocation's trace, under its
 * 'enqueue' span (the job's traceparent travels in the callback job), with outcome / HTTP status / attempt
 * attributes and the receiver's host name only (never its path or query, which may carry a token). Real Redis,
 * BullMQ and loopback HTTP; the real tracing SDK with an in-memory exporter; sandboxes faked.
 */
import { describe, expect, it } from 'vitest';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { redisUrl } from '../helpers/redis.ts';
import { until } from '../helpers/until.ts';
import { parentOf, useTracing } from '../helpers/tracing.ts';
import { Attr, SpanName, injectTraceparent, withSpan } from '../../services/common/telemetry.ts';
import { createInvocationClient } from '../../services/scheduler/client.ts';
import { createScheduler } from '../../services/scheduler/scheduler.ts';
import { createLogger } from '../../services/common/log.ts';
import { FakeExecutor, fnv } from '../fixtures/scheduler/fake-executor.ts';

const { exporter, flush } = useTracing();

describe('callback delivery spans', () => {
  it("one per POST, under the invocation's enqueue span, with outcome, status and attempt", async () => {
    const prefix = `cbt-${randomUUID().slice(0, 8)}`;
    const statuses = [500, 200];
    let n = 0;
    const server = createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        res.statusCode = statuses[Math.min(n++, statuses.length - 1)]!;
        res.end();
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook?token=secret-t`;
    const exec = new FakeExecutor();
    const sched = createScheduler({
      redisUrl: redisUrl(), prefix, nodeId: 'n1', executor: exec, logger: createLogger('test', 'silent'),
      pool: { kinds: { node: { min: 0, max: 1 } } }, callbacks: { attempts: 3, backoffMs: 20 },
    });
    await sched.start();
    const client = createInvocationClient({ redisUrl: redisUrl(), prefix });
    const fn = fnv({ tenant: 'cbt' });
    try {
      let traceId = '';
      const { invocationId } = await withSpan('caller', {}, async (span) => {
        traceId = span.spanContext().traceId;
        return client.enqueue({ fn, payload: { kind: 'event', body: Buffer.from('{}') }, mode: 'async', callbackUrl: url, traceparent: injectTraceparent() });
      });
      const spansOf = async () => {
        await flush();
        return exporter.getFinishedSpans().filter((s) => s.spanContext().traceId === traceId);
      };
      await until(async () => (await spansOf()).filter((s) => s.name === SpanName.callbackDelivery).length, (k) => k === 2, 10_000);
      const spans = await spansOf();
      const enqueue = spans.find((s) => s.name === 'enqueue')!;
      expect(enqueue).toBeDefined();
      const deliveries = spans.filter((s) => s.name === SpanName.callbackDelivery).sort((a, b) => Number(a.attributes[Attr.callbackAttempt]) - Number(b.attributes[Attr.callbackAttempt]));
      for (const d of deliveries) {
        expect(parentOf(d)).toBe(enqueue.spanContext().spanId);
        expect(d.attributes).toMatchObject({ [Attr.invocationId]: invocationId, [Attr.tenant]: 'cbt', [Attr.function]: fn.name, [Attr.serverAddress]: '127.0.0.1' });
        expect(JSON.stringify(d.attributes)).not.toContain('secret-t');
      }
      expect(deliveries[0]!.attributes).toMatchObject({ [Attr.callbackAttempt]: 1, [Attr.callbackOutcome]: 'retried', [Attr.httpStatus]: 500 });
      expect(deliveries[0]!.status.code).toBe(2); // SpanStatusCode.ERROR
      expect(deliveries[1]!.attributes).toMatchObject({ [Attr.callbackAttempt]: 2, [Attr.callbackOutcome]: 'delivered', [Attr.httpStatus]: 200 });
      expect(deliveries[1]!.status.code).not.toBe(2);
    } finally {
      await client.close();
      await sched.close(5000);
      await new Promise<void>((r) => server.close(() => r()));
      expect(exec.live.size).toBe(0);
      const r = new Redis(redisUrl());
      const keys = await r.keys(`${prefix}:*`);
      if (keys.length) await r.del(...keys);
      await r.quit();
    }
  }, 20_000);
});
