/**
 * @module gateway/functions
 * Tenant routes under /v1/functions: list, get (with versions), delete, PATCH (new version, same code),
 * and the wiring of deploy and logs, which live in their own files (invoke is registered on the root app by
 * ./app.ts, ahead of the /v1/* middleware: see ./invoke.ts).
 *
 * | route | answer |
 * | --- | --- |
 * | GET /v1/functions | 200 `{functions: [FunctionVersion & {versions: n}]}` (latest of each) |
 * | GET /v1/functions/:name (or :name:3) | 200 the version's record with `versions: [{version, createdAt, codeDigest, memoryMb, timeoutMs}]` |
 * | PATCH /v1/functions/:name `{memoryMb?, timeoutMs?, env?, concurrency?, public?, retries?, maxInstances?}` | 200 the new version |
 * | DELETE /v1/functions/:name | 204 |
 * | DELETE /v1/functions/:name/versions/:n | 204; 409 Conflict `{reason: 'latest'}` for the latest version; 404 no such version |
 *
 * Every lookup is scoped to the caller's tenant, so another tenant's function is simply NotFound.
 *
 * Deleting one version (Lambda's DeleteFunction with a Qualifier, which likewise refuses $LATEST): the latest
 * is what `name`, PATCH and the next deploy's base resolve to, so it goes only with the function; an older one goes
 * at once — `name:N` is NotFound from then on (N is never handed out again), its image and code layer are no
 * longer held by it, async invocations of it still queued fail NotFound when a scheduler picks them up
 * (services/scheduler/process-job.ts), and schedulers retire its warm instances on the store's invalidation
 * message (services/scheduler/scheduler.ts retireDeleted) — as for a deleted function.
 */
import { Hono } from 'hono';
import { Conflict, InvalidRequest, NotFound, isFnhostError } from '../common/errors.ts';
import type { FunctionVersion } from '../common/model.ts';
import type { MetadataStore } from '../store/metadata.ts';
import type { GatewayDeps, GatewayEnv, GatewayLimits } from './context.ts';
import { requireTenant, tenantOf } from './auth.ts';
import type { Admission } from './admission.ts';
import { registerDeploy } from './deploy.ts';
import { registerLogs } from './logs.ts';
import { readJson } from './json.ts';
import { parseFunctionRef, validateFunctionPatch, validateName } from './validate.ts';

/** `name` (latest) or `name:3` of `tenant`; NotFound otherwise. */
export async function resolveFunction(store: MetadataStore, tenant: string, ref: string): Promise<FunctionVersion> {
  const { name, version } = parseFunctionRef(ref);
  const fn = await store.getFunction(tenant, name, version);
  if (!fn) throw new NotFound(version === undefined ? `function ${name} not found` : `function ${name} has no version ${version}`, { field: 'name' });
  return fn;
}

/** A version number in a path: what parseFunctionRef accepts after `name:` (1..999,999,999, no sign or leading zero). */
function parseVersion(v: string): number {
  if (!/^[1-9][0-9]{0,8}$/.test(v)) throw new InvalidRequest(`version ${JSON.stringify(v)} must be a positive integer`, { field: 'version' });
  return Number(v);
}

/** Attempts of PATCH's read-merge-write when a deploy lands in between (each attempt re-reads the latest). */
const PATCH_ATTEMPTS = 3;

export function functionRoutes(deps: GatewayDeps & { admission: Admission }, limits: GatewayLimits): Hono<GatewayEnv> {
  const { store } = deps;
  const app = new Hono<GatewayEnv>();
  app.use('*', requireTenant());

  registerDeploy(app, deps, limits);
  registerLogs(app, deps);

  app.get('/', async (c) => {
    const list = await store.functions.list(tenantOf(c));
    return c.json({ functions: list.map((f) => ({ ...f.latest, versions: f.versions })) });
  });

  app.get('/:ref', async (c) => {
    const tenant = tenantOf(c);
    const fn = await resolveFunction(store, tenant, c.req.param('ref'));
    const versions = (await store.functions.versions(tenant, fn.name)).map((v) => ({
      version: v.version,
      createdAt: v.createdAt,
      codeDigest: v.codeDigest,
      runtime: v.runtime,
      memoryMb: v.memoryMb,
      timeoutMs: v.timeoutMs,
    }));
    return c.json({ ...fn, versions });
  });

  app.patch('/:name', async (c) => {
    const tenant = tenantOf(c);
    const name = validateName(c.req.param('name'));
    const body = await readJson(c.req.raw);
    for (let attempt = 1; ; attempt++) {
      const base = await store.functions.get(tenant, name);
      if (!base) throw new NotFound(`function ${name} not found`, { field: 'name' });
      const t = await store.tenants.get(tenant);
      if (!t) throw new NotFound(`tenant ${tenant} not found`);
      const cfg = validateFunctionPatch(body, base, t.limits);
      try {
        const v = await store.functions.putVersion(
          { tenant, name, ...cfg, codeDigest: base.codeDigest, createdAt: new Date().toISOString() },
          { maxFunctions: t.limits.maxFunctions, expectLatest: base.version },
        );
        return c.json(v, 200);
      } catch (e) {
        if (isFnhostError(e) && e instanceof Conflict && attempt < PATCH_ATTEMPTS) continue;
        throw e;
      }
    }
  });

  app.delete('/:name/versions/:n', async (c) => {
    const name = validateName(c.req.param('name'));
    await store.functions.deleteVersion(tenantOf(c), name, parseVersion(c.req.param('n')));
    return c.body(null, 204);
  });

  app.delete('/:name', async (c) => {
    await store.functions.delete(tenantOf(c), validateName(c.req.param('name')));
    return c.body(null, 204);
  });

  return app;
}
