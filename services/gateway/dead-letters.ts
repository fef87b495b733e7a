/**
 * @module gateway/dead-letters
 * Async invocations that used up their attempts.
 * - `GET /v1/dead-letters` → 200 `{deadLetters: [invocation]}` (the caller's tenant only)
 * - `POST /v1/dead-letters/:id/redrive` → 202 `{invocationId}`: queued again with fresh attempts;
 *   404 when the id is not one of the caller's dead letters.
 */
import { Hono } from 'hono';
import type { GatewayDeps, GatewayEnv } from './context.ts';
import { requireTenant, tenantOf } from './auth.ts';
import { renderInvocation } from '../scheduler/invocation-view.ts';

export function deadLetterRoutes(deps: GatewayDeps): Hono<GatewayEnv> {
  const app = new Hono<GatewayEnv>();
  app.use('*', requireTenant());
  app.get('/', async (c) => {
    const list = await deps.client.listDeadLetters(tenantOf(c));
    return c.json({ deadLetters: list.map(renderInvocation) });
  });
  app.post('/:id/redrive', async (c) => {
    const r = await deps.client.redrive(tenantOf(c), c.req.param('id'));
    return c.json({ invocationId: r.invocationId }, 202);
  });
  return app;
}
