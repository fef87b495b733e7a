/**
 * @module gateway/tenants
 * Admin routes: tenants and their keys.
 *
 * | route | answer |
 * | --- | --- |
 * | POST /v1/tenants `{name, limits?}` | 201 `{name, limits, createdAt, apiKey, keyId}`; 409 when it exists |
 * | GET /v1/tenants | 200 `{tenants: [{name, limits, createdAt}]}` |
 * | GET /v1/tenants/:tenant | 200 `{name, limits, createdAt, keys: [id], functions: n}` |
 * | PATCH /v1/tenants/:tenant `{limits}` | 200 the record; applies to new deploys and invocations (existing functions keep their caps) |
 * | DELETE /v1/tenants/:tenant | 204; its keys, functions, versions, images, invocations and logs go too |
 * | POST /v1/tenants/:tenant/keys | 201 `{keyId, apiKey}` (a further key; rotate = create, then delete the old) |
 * | GET /v1/tenants/:tenant/keys | 200 `{keys: [id]}` |
 * | DELETE /v1/tenants/:tenant/keys/:id | 204 |
 */
import { Hono } from 'hono';
import { InvalidRequest, NotFound } from '../common/errors.ts';
import type { GatewayDeps, GatewayEnv } from './context.ts';
import { requireAdmin } from './auth.ts';
import { readJson } from './json.ts';
import { validateName, validateTenantLimits } from './validate.ts';

export function tenantRoutes(deps: GatewayDeps): Hono<GatewayEnv> {
  const { store } = deps;
  const app = new Hono<GatewayEnv>();
  app.use('*', requireAdmin());

  async function mustExist(name: string) {
    validateName(name, 'tenant');
    const t = await store.tenants.get(name);
    if (!t) throw new NotFound(`tenant ${name} not found`, { field: 'tenant' });
    return t;
  }

  app.post('/', async (c) => {
    const body = await readJson(c.req.raw);
    if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new InvalidRequest('body must be a JSON object', { field: 'body' });
    const input = body as Record<string, unknown>;
    for (const k of Object.keys(input)) if (k !== 'name' && k !== 'limits') throw new InvalidRequest(`unknown field ${JSON.stringify(k)}`, { field: k });
    const name = validateName(input.name);
    const limits = validateTenantLimits(input.limits);
    const rec = await store.tenants.create(name, limits);
    const key = await store.keys.create(name);
    return c.json({ ...rec, apiKey: key.key, keyId: key.id }, 201);
  });

  app.get('/', async (c) => c.json({ tenants: await store.tenants.list() }));

  app.get('/:tenant', async (c) => {
    const t = await mustExist(c.req.param('tenant'));
    const [keys, functions] = await Promise.all([store.keys.list(t.name), store.functions.count(t.name)]);
    return c.json({ ...t, keys, functions });
  });

  app.patch('/:tenant', async (c) => {
    const t = await mustExist(c.req.param('tenant'));
    const body = await readJson(c.req.raw);
    if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new InvalidRequest('body must be a JSON object', { field: 'body' });
    for (const k of Object.keys(body)) if (k !== 'limits') throw new InvalidRequest(`unknown field ${JSON.stringify(k)}`, { field: k });
    const limits = validateTenantLimits((body as { limits?: unknown }).limits);
    if (Object.keys(limits).length === 0) throw new InvalidRequest('nothing to change', { field: 'limits' });
    const rec = await store.tenants.updateLimits(t.name, limits);
    if (!rec) throw new NotFound(`tenant ${t.name} not found`, { field: 'tenant' });
    return c.json(rec);
  });

  app.delete('/:tenant', async (c) => {
    const t = await mustExist(c.req.param('tenant'));
    await store.deleteTenant(t.name);
    // Its queues, invocation records, dead letters, logs and idempotency keys go now rather than when they expire.
    await deps.client.purgeTenant?.(t.name);
    // Imported images are the tenant's too; base images are shared and stay.
    for (const img of await deps.images.listImages(t.name)) {
      if (!img.base) await deps.images.deleteImage(t.name, img.name).catch((e) => deps.logger?.warn({ err: e, tenant: t.name, image: img.name }, 'image not deleted'));
    }
    return c.body(null, 204);
  });

  app.post('/:tenant/keys', async (c) => {
    const t = await mustExist(c.req.param('tenant'));
    const key = await store.keys.create(t.name);
    return c.json({ keyId: key.id, apiKey: key.key, createdAt: key.createdAt }, 201);
  });

  app.get('/:tenant/keys', async (c) => {
    const t = await mustExist(c.req.param('tenant'));
    return c.json({ keys: await store.keys.list(t.name) });
  });

  app.delete('/:tenant/keys/:id', async (c) => {
    const t = await mustExist(c.req.param('tenant'));
    await store.keys.revoke(t.name, c.req.param('id'));
    return c.body(null, 204);
  });

  return app;
}
