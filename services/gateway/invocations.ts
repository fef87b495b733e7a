/**
 * @module gateway/invocations
 * `GET /v1/invocations/:id` → `{id, function, version, mode, status: queued|running|succeeded|failed,
 * result?, resultEncoding?, error?, attempts, start?: cold|warm, createdAt, startedAt?, finishedAt?, durationMs?}`.
 *
 * `result` is the function's response body: the parsed value when it is JSON, the text when it is UTF-8,
 * else base64 with `resultEncoding: "base64"`. Another tenant's invocation id is NotFound (the client is
 * asked with the caller's tenant, and ids are not enumerable).
 */
import { Hono } from 'hono';
import { NotFound } from '../common/errors.ts';
import { renderInvocation } from '../scheduler/invocation-view.ts';
import type { GatewayDeps, GatewayEnv } from './context.ts';
import { requireTenant, tenantOf } from './auth.ts';

export function invocationRoutes(deps: GatewayDeps): Hono<GatewayEnv> {
  const app = new Hono<GatewayEnv>();
  app.use('*', requireTenant());
  app.get('/:id', async (c) => {
    const id = c.req.param('id');
    const rec = await deps.client.get(tenantOf(c), id);
    if (!rec) throw new NotFound(`invocation ${id} not found`, { field: 'id' });
    return c.json(renderInvocation(rec));
  });
  return app;
}
