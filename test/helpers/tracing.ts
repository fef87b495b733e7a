/**
 * Tracing in tests that look at spans: the real pipeline (services/common/tracing-setup.ts) registered for this
 * file with an in-memory exporter, shut down after its last test.
 *
 * @example
 * const { exporter, flush } = useTracing();
 * // … invoke …
 * await flush();
 * const spans = exporter.getFinishedSpans();
 * expect(parentOf(spans[1]!)).toBe(spans[0]!.spanContext().spanId);
 */
import { afterAll, beforeAll } from 'vitest';
import { InMemorySpanExporter, type ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { initTracing, type TracingHandle } from '../../services/common/tracing-setup.ts';

/** The exporter every span of this file ends up in (batches go out every 10 ms), and a flush of what has ended. */
export function useTracing(): { exporter: InMemorySpanExporter; flush(): Promise<void> } {
  const exporter = new InMemorySpanExporter();
  let tracing: TracingHandle | undefined;
  beforeAll(async () => {
    tracing = await initTracing({ exporter, scheduledDelayMillis: 10 });
  });
  afterAll(async () => {
    await tracing?.shutdown();
  });
  return { exporter, flush: () => tracing!.forceFlush() };
}

/** A finished span's parent span id (SDK 2.x names it parentSpanContext, 1.x parentSpanId). */
export const parentOf = (s: ReadableSpan): string | undefined =>
  (s as unknown as { parentSpanContext?: { spanId: string } }).parentSpanContext?.spanId ?? (s as unknown as { parentSpanId?: string }).parentSpanId;
