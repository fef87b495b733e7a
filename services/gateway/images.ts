/**
 * @module gateway/images
 * Tenant routes for imported images (`runtime: "image:<name>"`).
 * - `PUT /v1/images/:name` body: a `docker save` tar or an OCI layout tar → 201 `{name, digest, layers}`.
 *   The body is streamed to a 0600 temp file under the cap (2 GiB) and removed after the import.
 * - `GET /v1/images` → `{images: [{name, digest, layers, sizeBytes, base}]}`: the tenant's plus the base images.
 * - `DELETE /v1/images/:name` → 204; 409 while any version of a function runs on it (`functions`: the names,
 *   `versions`: ["name:N", ...] — `name:N` stays invocable while its function exists, so an old version counts), and a
 *   deploy of `image:<name>` that looked the image up before the delete never commits after it (it gets a 400
 *   no such image, or a 409 while the delete is in progress).
 */
import { randomBytes } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Hono } from 'hono';
import { Conflict, InvalidRequest } from '../common/errors.ts';
import { spoolBody } from './body.ts';
import type { GatewayDeps, GatewayEnv, GatewayLimits } from './context.ts';
import { requireTenant, tenantOf } from './auth.ts';
import { validateName } from './validate.ts';

/** The three images every tenant sees (services/store/types.ts); a tenant may not shadow them. */
const BASE_NAMES = new Set(['busybox', 'node', 'python']);

export function imageRoutes(deps: GatewayDeps, limits: GatewayLimits): Hono<GatewayEnv> {
  const app = new Hono<GatewayEnv>();
  app.use('*', requireTenant());

  app.put('/:name', async (c) => {
    const tenant = tenantOf(c);
    const name = validateName(c.req.param('name'));
    if (BASE_NAMES.has(name)) throw new Conflict(`${name} is a base image name`, { field: 'name' });
    await mkdir(deps.tmpDir, { recursive: true, mode: 0o700 });
    const file = join(deps.tmpDir, `image-upload-${randomBytes(8).toString('hex')}.tar`);
    try {
      const n = await spoolBody(c.req.raw, file, limits.imageBytes, 'image');
      if (n === 0) throw new InvalidRequest('the body must be a docker save tar or an OCI layout tar', { field: 'body' });
      const img = await deps.images.importImage(tenant, name, file);
      return c.json({ name, digest: img.digest, layers: img.layers.length }, 201);
    } finally {
      await rm(file, { force: true });
    }
  });

  app.get('/', async (c) => c.json({ images: await deps.images.listImages(tenantOf(c)) }));

  app.delete('/:name', async (c) => {
    const tenant = tenantOf(c);
    const name = validateName(c.req.param('name'));
    if (BASE_NAMES.has(name)) throw new Conflict(`${name} is a base image and cannot be deleted`, { field: 'name', image: name });
    // the users check and the delete's mark are one script, and deploys of `image:<name>` commit only when no
    // delete started since they looked the image up (services/store/functions.ts): across gateways too
    const end = await deps.store.functions.beginImageDelete(tenant, name);
    try {
      await deps.images.deleteImage(tenant, name);
    } finally {
      await end();
    }
    return c.body(null, 204);
  });

  return app;
}
