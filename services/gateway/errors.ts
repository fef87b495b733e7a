/**
 * @module gateway/errors
 * The one place errors become HTTP responses: `{"error": {"type", "message", ...details}}` with the status
 * of the type (services/common/errors.ts). Anything that is not a typed error is a server fault (500, its
 * text logged, not shown), except Redis being unreachable, which is 503 `Unavailable`.
 */
import type { Context, ErrorHandler, NotFoundHandler } from 'hono';
import { HTTPException } from 'hono/http-exception';
import { FnhostError, Internal, InvalidRequest, NotFound, PayloadTooLarge, Unauthorized, Unavailable, isFnhostError } from '../common/errors.ts';
import type { Logger } from '../common/log.ts';

/**
 * ioredis failures that mean "Redis is not there" rather than "the command was wrong": connection refused or
 * reset, the reconnect budget spent (MaxRetriesPerRequestError), the offline queue refused, or the command
 * timed out (commandTimeout).
 */
export function isRedisUnavailable(e: unknown): boolean {
  if (!(e instanceof Error)) return false;
  if (e.name === 'MaxRetriesPerRequestError') return true;
  const code = (e as { code?: string }).code;
  if (code && ['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EHOSTUNREACH'].includes(code)) return true;
  return /Connection is closed|Stream isn't writeable|Command timed out|connect ECONNREFUSED|Reached the max retries/.test(e.message);
}

/** Maps anything thrown to a typed error. */
export function toFnhostError(e: unknown): FnhostError {
  if (isFnhostError(e)) return e;
  if (e instanceof HTTPException) {
    if (e.status === 413) return new PayloadTooLarge(e.message || 'request body too large');
    if (e.status === 401) return new Unauthorized(e.message || 'unauthorized');
    if (e.status < 500) return new InvalidRequest(e.message || 'invalid request');
  }
  if (isRedisUnavailable(e)) return new Unavailable('the metadata store (Redis) is unreachable; retry shortly', {}, { cause: e });
  return new Internal('internal error', {}, { cause: e });
}

export function errorResponse(c: Context, err: FnhostError): Response {
  const headers: Record<string, string> = { 'content-type': 'application/json; charset=utf-8' };
  const id = err.details.invocationId;
  if (typeof id === 'string') headers['x-fnhost-invocation-id'] = id;
  // A server fault's details (errno, syscall, host paths, stacks) are for the operator's log, not the caller.
  if (err.type === 'Internal') {
    const body = { error: { type: 'Internal', message: 'internal error', ...(typeof id === 'string' ? { invocationId: id } : {}) } };
    return c.body(JSON.stringify(body), 500, headers);
  }
  if (err.type === 'TooManyRequests' || err.type === 'Unavailable') headers['retry-after'] = '1';
  if (err.type === 'Unauthorized') headers['www-authenticate'] = 'Bearer';
  return c.body(JSON.stringify(err.toJSON()), err.status as 400, headers);
}

/** The app's onError: typed JSON for every failure; server faults are logged with their cause. */
export function renderError(logger?: Logger): ErrorHandler {
  return function onError(e, c) {
    const err = toFnhostError(e);
    // The function's own failures are the caller's business (and the invocation's record); ours are logged.
    if (err.type === 'Internal') logger?.error({ err: e, method: c.req.method, path: c.req.path }, 'request failed');
    else if (err.type === 'Unavailable') logger?.warn({ err: (e as Error)?.message, method: c.req.method, path: c.req.path }, 'dependency unavailable');
    return errorResponse(c, err);
  };
}

export function renderNotFound(): NotFoundHandler {
  return function notFound(c) {
    return errorResponse(c, new NotFound(`no route for ${c.req.method} ${c.req.path}`));
  };
}
