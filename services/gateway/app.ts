/**
 * @module gateway/app
 * The gateway's composition root: one Hono app from explicit dependencies (no globals), so the same app
 * serves the host (services/host.ts), the e2e tests over a socket and the unit tests via `app.request()`.
 *
 * Routes (issue 6's contract): /v1/tenants (admin), /v1/functions (deploy, list, get, PATCH, delete, invoke,
 * logs), /v1/invocations, /v1/dead-letters, /v1/images (tenant), /fn/:tenant/:name/* (endpoint),
 * /healthz, /readyz, /metrics. Every failure is rendered once, by {@link renderError}.
 *
 * @example
 * const app = createGateway({ store: createMetadataStore(redis), client, images, adminKeyHash: hashKey(adminKey), tmpDir });
 * const res = await app.request('/v1/tenants', { method: 'POST', headers: { authorization: `Bearer ${adminKey}` }, body: '{"name":"acme"}' });
 */
import { Hono } from 'hono';
import type { GatewayDeps, GatewayEnv, GatewayLimits } from './context.ts';
import { DEFAULT_LIMITS } from './context.ts';
import { Admission } from './admission.ts';
import { authenticate } from './auth.ts';
import { deadLetterRoutes } from './dead-letters.ts';
import { callbackRoutes } from './callbacks.ts';
import { registerEndpoint } from './endpoint.ts';
import { renderError, renderNotFound } from './errors.ts';
import { functionRoutes } from './functions.ts';
import { registerHealth } from './health.ts';
import { imageRoutes } from './images.ts';
import { invocationRoutes } from './invocations.ts';
import { registerInvoke } from './invoke.ts';
import { tenantRoutes } from './tenants.ts';

export type { GatewayDeps } from './context.ts';

export function createGateway(input: GatewayDeps): Hono<GatewayEnv> {
  const limits: GatewayLimits = { ...DEFAULT_LIMITS, ...input.limits };
  const deps = { ...input, admission: input.admission ?? new Admission(input.store) };
  const app = new Hono<GatewayEnv>();
  if (deps.observability?.httpMiddleware) app.use('*', deps.observability.httpMiddleware);
  app.onError(renderError(deps.logger));
  app.notFound(renderNotFound());

  registerHealth(app, deps);
  registerEndpoint(app, deps, limits);
  // Before the /v1/* middleware: the invoke route authenticates itself (the hot path; see ./invoke.ts).
  registerInvoke(app, deps, limits);

  app.use('/v1/*', authenticate(deps));
  app.route('/v1/tenants', tenantRoutes(deps));
  app.route('/v1/functions', functionRoutes(deps, limits));
  app.route('/v1/invocations', invocationRoutes(deps));
  app.route('/v1/dead-letters', deadLetterRoutes(deps));
  app.route('/v1/callbacks', callbackRoutes(deps));
  app.route('/v1/images', imageRoutes(deps, limits));
  return app;
}
