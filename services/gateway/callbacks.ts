/**
 * @module gateway/callbacks
 * `GET /v1/callbacks/secret` (tenant key) → `{secret, header, algorithm}`: the key with which the tenant's
 * receivers verify completion callbacks (services/scheduler/callback-signer.ts): the `X-Fnhost-Signature`
 * header is `sha256=` + hex HMAC-SHA256 of the raw body under this secret (as UTF-8 bytes). Each tenant gets
 * its own, derived from the host secret, so no tenant can sign a callback another tenant would accept.
 */
import { Hono } from 'hono';
import { Unavailable } from '../common/errors.ts';
import type { GatewayDeps, GatewayEnv } from './context.ts';
import { requireTenant, tenantOf } from './auth.ts';

export function callbackRoutes(deps: GatewayDeps): Hono<GatewayEnv> {
  const app = new Hono<GatewayEnv>();
  app.use('*', requireTenant());
  app.get('/secret', async (c) => {
    if (!deps.callbackSecret) throw new Unavailable('completion callbacks are not configured on this gateway');
    const secret = await deps.callbackSecret(tenantOf(c));
    return c.json({ secret, header: 'X-Fnhost-Signature', algorithm: 'HMAC-SHA256', format: 'sha256=<hex of HMAC-SHA256(secret, raw body)>' });
  });
  return app;
}
