/**
 * @module gateway/middleware/tracing
 * The gateway's observability middleware: the `http request` server span (child of the caller's W3C
 * `traceparent` when it sends a valid one) and the HTTP request metrics. Mount it first, so every other
 * middleware and handler runs inside the span and `injectTraceparent()` there names it.
 *
 * With tracing off (no OTLP endpoint) it only times the request for the metrics.
 *
 * Handlers reach the span with `requestSpan(c)` — after an await there is no implicit "active span" (no
 * AsyncLocalStorage, see services/common/telemetry.ts), so pass it on: `{ parentSpan: requestSpan(c) }` to an
 * in-process client, `injectTraceparent(requestSpan(c))` across processes.
 *
 * @example
 * app.use('*', tracing());
 */
import type { Context, MiddlewareHandler } from 'hono';
import { routePath } from 'hono/route';
import { SpanKind, SpanStatusCode } from '@opentelemetry/api';
import { metrics as defaultMetrics, type FnhostMetrics } from '../../common/metrics.ts';
import { Attr, NOOP_SPAN, SpanName, SpanSchema, failSpan, runInSpan, startServerSpanOf, tracingEnabled, type Span, type SpanValues } from '../../common/telemetry.ts';
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

/** the 'http request' span's attributes, by position (route and status are known at the end) */
const HTTP_REQUEST = new SpanSchema(SpanName.httpRequest, SpanKind.SERVER, [Attr.httpMethod, Attr.urlPath, Attr.httpRoute, Attr.httpStatus]);
const ROUTE = HTTP_REQUEST.slot(Attr.httpRoute);
const STATUS = HTTP_REQUEST.slot(Attr.httpStatus);

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
    // The span starts and ends on the clock reads the metrics take anyway (performance.now() values are accepted).
    // Route and status are filled in by plain stores before end() (undefined until then: not exported): the span
    // keeps this array as is and records it at end() — no setAttribute calls, no second attribute list.
    const values: SpanValues = [c.req.method, c.req.path, undefined, undefined];
    const span = startServerSpanOf(HTTP_REQUEST, values, c.req.header('traceparent'), t0);
    (c as unknown as Record<symbol, Span>)[REQUEST_SPAN] = span;
    try {
      await runInSpan(span, next);
    } catch (e) {
      failSpan(span, e);
      throw e;
    } finally {
      const route = routeOf(c);
      const status = c.res.status;
      values[ROUTE] = route;
      values[STATUS] = status;
      // OTel HTTP semconv: for server spans only 5xx is an error (4xx is the client's).
      if (status >= 500) span.setStatus({ code: SpanStatusCode.ERROR });
      const t1 = performance.now();
      span.end(t1);
      m?.httpRequest(c.req.method, route, status, t1 - t0);
    }
  };
}

const REQUEST_SPAN = Symbol('fnhost.httpRequestSpan');

/**
 * The `http request` span of this request (a non-recording span when tracing is off or the middleware is not
 * mounted): the parent for what the handler does after an await, and where request-level attributes go.
 *
 * @example
 * const span = requestSpan(c);
 * span.setAttributes({ [Attr.tenant]: fn.tenant, [Attr.function]: fn.name });
 * const req: InvokeRequest = { fn, payload, mode, parentSpan: span };
 */
export function requestSpan(c: Context): Span {
  return (c as unknown as Record<symbol, Span | undefined>)[REQUEST_SPAN] ?? NOOP_SPAN;
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
