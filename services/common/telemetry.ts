/**
 * @module telemetry
 * The thin tracing seam every service uses. Built on @opentelemetry/api only: with no SDK registered
 * (OTEL_EXPORTER_OTLP_ENDPOINT unset) every call is the API's no-op and costs next to nothing.
 * Attribute names live here and nowhere else.
 */
import { trace as otTrace, SpanStatusCode, type Span, type Attributes } from '@opentelemetry/api';

export const TRACER_NAME = 'fnhost';

/** Attribute keys, namespaced as OpenTelemetry recommends. */
export const Attr = {
  tenant: 'fnhost.tenant',
  function: 'fnhost.function.name',
  version: 'fnhost.function.version',
  invocationId: 'fnhost.invocation.id',
  mode: 'fnhost.invocation.mode',
  start: 'fnhost.invocation.start',
  outcome: 'fnhost.invocation.outcome',
  errorType: 'fnhost.error.type',
  memoryMb: 'fnhost.memory.limit_mb',
  peakMemoryBytes: 'fnhost.memory.peak_bytes',
  runtime: 'fnhost.runtime',
  sandboxId: 'fnhost.sandbox.id',
  node: 'fnhost.node.id',
  attempt: 'fnhost.invocation.attempt',
} as const;

export function tracer() {
  return otTrace.getTracer(TRACER_NAME);
}

/**
 * Runs `fn` inside a span named `name` (a child of the active span); records an exception and sets the
 * error status when `fn` throws, and always ends the span.
 *
 * @example
 * const r = await withSpan('specialise', { [Attr.function]: name }, async (span) => { ... });
 */
export async function withSpan<T>(name: string, attrs: Attributes, fn: (span: Span) => Promise<T>): Promise<T> {
  return tracer().startActiveSpan(name, { attributes: attrs }, async (span) => {
    try {
      return await fn(span);
    } catch (e) {
      span.recordException(e as Error);
      span.setStatus({ code: SpanStatusCode.ERROR, message: (e as Error)?.message });
      if (e && typeof e === 'object' && 'type' in e) span.setAttribute(Attr.errorType, String((e as { type: unknown }).type));
      throw e;
    } finally {
      span.end();
    }
  });
}
