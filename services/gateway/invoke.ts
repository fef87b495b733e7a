/**
 * @module gateway/invoke
 * `POST /v1/functions/:name/invoke` (or `:name:3`): the body is the event, any bytes.
 * - sync (default): 200 with the function's result as the body and its content type, plus
 *   `X-Fnhost-Invocation-Id`, `X-Fnhost-Start: cold|warm`, `X-Fnhost-Duration-Ms`. Failures are the typed
 *   errors of the invocation: 502 FunctionError / OutOfMemory / Crashed, 504 Timeout, 429 TooManyRequests.
 * - `?mode=async`: 202 `{invocationId, duplicate}` once the invocation is durable in Redis; an
 *   `Idempotency-Key` header makes a repeat of the same key return the first invocation's id; an
 *   `X-Callback-Url` gets the final outcome POSTed, signed (services/scheduler/callbacks.ts).
 * Bodies above 6 MB (sync) / 256 KB (async) are 413 PayloadTooLarge before anything is queued.
 */
import type { Context, Hono } from 'hono';
import { InvalidRequest } from '../common/errors.ts';
import type { FunctionVersion, InvocationMode, InvocationPayload } from '../common/model.ts';
import { NOOP_SPAN } from '../common/telemetry.ts';
import { requestSpan } from './middleware/tracing.ts';
import type { InvokeRequest, SyncResult } from '../scheduler/types.ts';
import type { Admission } from './admission.ts';
import { readBody } from './body.ts';
import type { GatewayDeps, GatewayEnv, GatewayLimits } from './context.ts';
import { authenticateTenant } from './auth.ts';
import { resolveFunction } from './functions.ts';
import { validateIdempotencyKey } from './validate.ts';
import { envCallbackAllow, validateCallbackUrl } from '../scheduler/callback-url.ts';

/**
 * The request for the scheduler client. With tracing on, it carries the gateway's 'http request' span itself
 * (the client opens its spans under it — in this process, no traceparent string to make and look up; the
 * client makes one only if the call takes the queue); with tracing off here, the caller's own traceparent
 * header passes through so a trace stays joined across nodes that do trace.
 */
export function invokeRequest(c: Context, fn: FunctionVersion, payload: InvocationPayload, mode: InvocationMode): InvokeRequest {
  // after the handler's awaits there is no implicit current span (services/common/telemetry.ts): name it
  // Tenant, function, version, mode and start kind are not repeated here: the span under this one that does
  // the work ('local dispatch' / 'scheduler pickup') carries them, and every byte is exported per invocation.
  const span = requestSpan(c);
  const req: InvokeRequest = { fn, payload, mode };
  if (span !== NOOP_SPAN) req.parentSpan = span;
  else {
    const tp = c.req.header('traceparent');
    if (tp) req.traceparent = tp;
  }
  return req;
}

/**
 * A sync or http invocation within the tenant's concurrency limit: resolves with the function's answer or
 * rejects with its typed error (TooManyRequests when the tenant is at its limit).
 */
export async function invokeSync(c: Context, deps: { client: GatewayDeps['client']; admission: Admission }, fn: FunctionVersion, payload: InvocationPayload, mode: 'sync' | 'http'): Promise<SyncResult> {
  const release = await deps.admission.admit(fn);
  try {
    // the invocation id is not repeated on 'http request': the span under it ('local dispatch' / 'enqueue') has it
    return await deps.client.invoke(invokeRequest(c, fn, payload, mode));
  } finally {
    release();
  }
}

/** The X-Fnhost-* headers of a sync answer. */
export function invocationHeaders(r: SyncResult): Record<string, string> {
  const h: Record<string, string> = { 'x-fnhost-invocation-id': r.record.id };
  if (r.record.start) h['x-fnhost-start'] = r.record.start;
  if (r.record.durationMs !== undefined) h['x-fnhost-duration-ms'] = String(Math.round(r.record.durationMs * 1000) / 1000);
  return h;
}

/** RFC 9110 token (header name) and the field-value bytes node's writeHead accepts (its checkInvalidHeaderChar). */
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;

/**
 * The sync answer's headers: the function's (names lower-cased, repeats joined as Headers would), then the
 * X-Fnhost-* ones; no content-length / transfer-encoding (the server sets its own). A plain object when every
 * name and value is valid — @hono/node-server then writes it as is, without building a Headers (measured:
 * undici's Headers + their conversion were ~2 % of the host's CPU per warm call at 32 connections) —
 * otherwise a Headers, which refuses bad ones the same way as before.
 */
export function responseHeaders(r: SyncResult): Record<string, string> | Headers {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(r.response.headers ?? {})) {
    if (!TOKEN.test(k) || typeof v !== 'string' || !VALUE.test(v)) return headersObject(r);
    const lk = k.toLowerCase();
    if (lk === 'content-length' || lk === 'transfer-encoding') continue;
    out[lk] = lk in out ? `${out[lk]}, ${v.trim()}` : v.trim();
  }
  return Object.assign(out, invocationHeaders(r));
}

function headersObject(r: SyncResult): Headers {
  const headers = new Headers(r.response.headers);
  for (const [k, v] of Object.entries(invocationHeaders(r))) headers.set(k, v);
  headers.delete('content-length');
  headers.delete('transfer-encoding');
  return headers;
}

/**
 * Registers the route on the ROOT app, ahead of the `/v1/*` middleware (services/gateway/app.ts): it
 * authenticates itself by the same rules as `authenticate` + `requireTenant` (same errors, same
 * `c.var.principal`), so a call runs one handler instead of three nested async layers — each layer is a
 * promise chain and ~1 KB of garbage per call (sampling heap profile at 32 connections, ~11 KB of the
 * gateway's ~14 KB per call were middleware and dispatch; /tmp/fnhost-notes/warm.md).
 */
export function registerInvoke(app: Hono<GatewayEnv>, deps: GatewayDeps & { admission: Admission }, limits: GatewayLimits) {
  const { client, store } = deps;

  app.post('/v1/functions/:ref/invoke', async (c) => {
    const tenant = await authenticateTenant(c, deps);
    const mode = c.req.query('mode') ?? 'sync';
    if (mode !== 'sync' && mode !== 'async') throw new InvalidRequest('mode must be "sync" or "async"', { field: 'mode' });
    const idempotencyKey = validateIdempotencyKey(c.req.header('idempotency-key'));
    if (idempotencyKey !== undefined && mode !== 'async') throw new InvalidRequest('Idempotency-Key applies to async invocations only', { field: 'Idempotency-Key' });
    const callbackUrl = c.req.header('x-callback-url');
    if (callbackUrl !== undefined) {
      if (mode !== 'async') throw new InvalidRequest('X-Callback-Url applies to async invocations only', { field: 'X-Callback-Url' });
      validateCallbackUrl(callbackUrl, envCallbackAllow());
    }
    const fn = await resolveFunction(store, tenant, c.req.param('ref'));
    const body = await readBody(c.req.raw, mode === 'async' ? limits.asyncBodyBytes : limits.syncBodyBytes);
    const payload: InvocationPayload = { kind: 'event', body };
    const ct = c.req.header('content-type');
    if (ct) payload.contentType = ct;

    if (mode === 'async') {
      const req = invokeRequest(c, fn, payload, 'async');
      if (idempotencyKey) req.idempotencyKey = idempotencyKey;
      if (callbackUrl) req.callbackUrl = callbackUrl;
      const r = await client.enqueue(req);
      return c.json({ invocationId: r.invocationId, duplicate: r.duplicate }, 202, { 'x-fnhost-invocation-id': r.invocationId });
    }

    const r = await invokeSync(c, deps, fn, payload, 'sync');
    return new Response(r.response.body.length ? r.response.body : null, { status: r.response.status || 200, headers: responseHeaders(r) });
  });
}
