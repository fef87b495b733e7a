/**
 * @module gateway/callbacks
 * Completion callbacks, tenant key:
 * - `GET /v1/callbacks/secret` → `{secret, header, algorithm}`: the key with which the tenant's receivers verify
 *   completion callbacks (services/scheduler/callback-signer.ts): the `X-Fnhost-Signature` header is `sha256=` +
 *   hex HMAC-SHA256 of the raw body under this secret (as UTF-8 bytes). Each tenant gets its own, derived from
 *   the host secret, so no tenant can sign a callback another tenant would accept.
 * - `GET /v1/callbacks/failed?limit=&cursor=` → 200 `{failed: [FailedCallback], cursor?}`: callbacks whose POSTs
 *   ran out of attempts (or whose destination was refused), newest first (services/scheduler/callback-failures.ts).
 * - `POST /v1/callbacks/failed/:deliveryId/redrive` → 202 `{deliveryId}`: POSTed again with fresh attempts.
 * - `POST /v1/callbacks/failed/redrive` → 202 `{redriven}`: all of them.
 * - `DELETE /v1/callbacks/failed/:deliveryId` → 204.
 * Another tenant's delivery id is 404 NotFound, as an unknown one; a malformed one 400; one being redriven 409.
 */
import { Hono } from 'hono';
import { InvalidRequest, Unavailable } from '../common/errors.ts';
import type { GatewayDeps, GatewayEnv } from './context.ts';
import { requireTenant, tenantOf } from './auth.ts';
import type { FailedCallbacks } from '../scheduler/callback-failures.ts';

/** What the failed-callback routes need (services/scheduler/callback-failures.ts FailedCallbacks). */
export type FailedCallbacksApi = Pick<FailedCallbacks, 'list' | 'redrive' | 'redriveAll' | 'remove'>;

export function callbackRoutes(deps: GatewayDeps & { failedCallbacks?: FailedCallbacksApi }): Hono<GatewayEnv> {
  const app = new Hono<GatewayEnv>();
  app.use('*', requireTenant());
  app.get('/secret', async (c) => {
    if (!deps.callbackSecret) throw new Unavailable('completion callbacks are not configured on this gateway');
    const secret = await deps.callbackSecret(tenantOf(c));
    return c.json({ secret, header: 'X-Fnhost-Signature', algorithm: 'HMAC-SHA256', format: 'sha256=<hex of HMAC-SHA256(secret, raw body)>' });
  });
  const failed = (): FailedCallbacksApi => {
    if (!deps.failedCallbacks) throw new Unavailable('completion callbacks are not configured on this gateway');
    return deps.failedCallbacks;
  };
  app.get('/failed', async (c) => {
    const limit = c.req.query('limit');
    if (limit !== undefined && !/^[0-9]{1,6}$/.test(limit)) throw new InvalidRequest('limit must be a positive integer', { field: 'limit' });
    const cursor = c.req.query('cursor');
    const page = await failed().list(tenantOf(c), { ...(limit !== undefined ? { limit: Number(limit) } : {}), ...(cursor !== undefined ? { cursor } : {}) });
    return c.json(page);
  });
  app.post('/failed/redrive', async (c) => c.json(await failed().redriveAll(tenantOf(c)), 202));
  app.post('/failed/:id/redrive', async (c) => c.json(await failed().redrive(tenantOf(c), c.req.param('id')), 202));
  app.delete('/failed/:id', async (c) => {
    await failed().remove(tenantOf(c), c.req.param('id'));
    return c.body(null, 204);
  });
  return app;
}
