/**
 * @module gateway/middleware/tracing
 * The gateway's observability middleware: the `http request` server span (child of the caller's W3C
 * `traceparent` when it sends a valid one) and the HTTP request metrics. Mount it first, so every other
 * middleware and handler runs inside the span and `injectTraceparent()` there names it.
 *
 * With tracing off (no OTLP endpoint) it only times the request for the metrics.
 *
 * @example
 * app.use('*', tracing());
 */
import type { Context, MiddlewareHandler } from 'hono';
import { routePath } from 'hono/route';
import { context as otContext, trace as otTrace, SpanKind, SpanStatusCode } from '@opentelemetry/api';
import { metrics as defaultMetrics, type FnhostMetrics } from '../../common/metrics.ts';
import { Attr, SpanName, contextFromTraceparent, failSpan, tracer, tracingEnabled } from '../../common/telemetry.ts';
import type { GatewayObservability } from '../context.ts';

export interface TracingMiddlewareOptions {
  /** where HTTP metrics go (default the process-wide registry); false records none. */
  metrics?: FnhostMetrics | false;
}

/**
 * The matched route pattern (bounded: never the raw path). Middleware-only matches ('*', '/*') mean no
 * route answered, so they are reported as 'unmatched'.
 */
function routeOf(c: Context): string {
  const r = routePath(c);
  return r === '' || r === '*' || r === '/*' ? 'unmatched' : r;
}

export function tracing(opts: TracingMiddlewareOptions = {}): MiddlewareHandler {
  const m = opts.metrics === false ? undefined : (opts.metrics ?? defaultMetrics);
  return async function tracing(c, next) {
    const t0 = performance.now();
    if (!tracingEnabled()) {
      try {
        await next();
      } finally {
        m?.httpRequest(c.req.method, routeOf(c), c.res.status, performance.now() - t0);
      }
      return;
    }
    // A caller's traceparent becomes our parent; without one (or a malformed one) the request starts a trace.
    const parent = contextFromTraceparent(c.req.header('traceparent'));
    const span = tracer().startSpan(
      SpanName.httpRequest,
      { kind: SpanKind.SERVER, attributes: { [Attr.httpMethod]: c.req.method, [Attr.urlPath]: c.req.path } },
      parent,
    );
    try {
      await otContext.with(otTrace.setSpan(parent, span), next);
    } catch (e) {
      failSpan(span, e);
      throw e;
    } finally {
      const route = routeOf(c);
      const status = c.res.status;
      span.setAttribute(Attr.httpRoute, route);
      span.setAttribute(Attr.httpStatus, status);
      // OTel HTTP semconv: for server spans only 5xx is an error (4xx is the client's).
      if (status >= 500) span.setStatus({ code: SpanStatusCode.ERROR });
      span.end();
      m?.httpRequest(c.req.method, route, status, performance.now() - t0);
    }
  };
}

/**
 * The gateway's observability hooks in one call: this middleware plus the GET /metrics body, both on the
 * same registry (default the process-wide one, which the scheduler in the same process records into too).
 *
 * @example
 * const app = createGateway({ ...deps, observability: gatewayObservability() });
 */
export function gatewayObservability(m: FnhostMetrics = defaultMetrics): GatewayObservability {
  return {
    httpMiddleware: tracing({ metrics: m }),
    metrics: async () => ({ contentType: m.contentType, body: await m.text() }),
  };
}
